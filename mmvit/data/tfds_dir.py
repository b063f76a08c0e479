"""Datasets read from a prepared TFDS directory: ``tfds:NAME[/CONFIG][:VERSION]`` (any TFDS
dataset prepared elsewhere in array_record format, e.g. ImageNet) and the datasets that
``python -m mmvit.data build`` writes (`BuiltSource`). Nothing is downloaded or built here.

Their records become model inputs through a task's ``pp`` strings (`ops`): ``pp.train`` for
training, ``pp.eval`` for validation and test. Encoded images and video frames are read as
bytes and decoded by the ``decode`` op, so a pp string starts with it; labels are the
ClassLabel features (and multi-hot ones a build wrote), stored ints narrowed to int32.
"""

from __future__ import annotations

import json
import os
import re

from mmvit.data import base, ops
from mmvit.data.base import TARGET_DOC, DataError

_NAME = re.compile(r'^[a-z][a-z0-9_]*$')
_SPEC = re.compile(r'^tfds:(?P<name>[a-z][a-z0-9_]*)(?:/(?P<config>[\w.-]+))?'
                   r'(?::(?P<version>\d+\.\d+\.\d+))?$')
_VERSION = re.compile(r'^\d+\.\d+\.\d+$')
MULTI_HOT_DOC = 'multi-hot'  # the doc of a build's multi-label feature


def valid_name(name: str) -> bool:
  return bool(_NAME.match(name))


def _versions(path: str) -> list[str]:
  if not os.path.isdir(path):
    return []
  found = [v for v in os.listdir(path) if _VERSION.match(v)
           and os.path.exists(os.path.join(path, v, 'dataset_info.json'))]
  return sorted(found, key=lambda v: tuple(int(p) for p in v.split('.')))


class TfdsSource(base.Source):
  """A dataset prepared in ``data_dir/NAME[/CONFIG]/VERSION`` (the newest version if none)."""

  augment_keys = None

  def __init__(self, name: str, dataset: str, config: str | None, version: str | None):
    self.name, self.dataset, self.config, self.version = name, dataset, config, version

  @classmethod
  def from_spec(cls, spec: str) -> TfdsSource:
    m = _SPEC.match(spec)
    if not m:
      raise DataError(f'dataset {spec!r}: expected tfds:NAME[/CONFIG][:VERSION], e.g. '
                      "'tfds:food101' or 'tfds:imagenet2012:5.1.0'")
    return cls(spec, m['name'], m['config'], m['version'])

  def _dir(self, data_dir: str) -> str:
    return os.path.join(data_dir, self.dataset, *([self.config] if self.config else []))

  def _missing(self, data_dir: str) -> DataError:
    return DataError(f'{self.name}: not prepared in {self._dir(data_dir)} (prepare it there in '
                     'array_record format, e.g. `tfds build NAME --file_format=array_record '
                     '--data_dir=DIR`; nothing is downloaded at run time)')

  def builder(self, data_dir: str):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    root = self._dir(data_dir)
    versions = _versions(root)
    if self.version is not None and self.version not in versions:
      if not versions:
        raise self._missing(data_dir)
      raise DataError(f'{self.name}: version {self.version} is not in {root} (it has '
                      f'{", ".join(versions)})')
    if not versions:
      raise self._missing(data_dir)
    path = os.path.join(root, self.version or versions[-1])
    with open(os.path.join(path, 'dataset_info.json')) as f:
      meta = json.load(f)
    fmt = meta.get('fileFormat') or 'tfrecord'
    if fmt != 'array_record':
      raise DataError(f'{self.name}: {path} is stored as {fmt}; mmvit reads array_record '
                      '(grain needs random access): convert it with `tfds convert_format '
                      f'--dataset_version_dir={path} --out_file_format=array_record`')
    return tfds.builder_from_directory(path)

  def rebuild_hint(self, builder) -> str:
    return f'prepare {builder.data_dir} again'

  def decoders(self, builder):
    import tensorflow_datasets as tfds  # noqa: PLC0415
    out = {}
    for key, f in builder.info.features.items():
      if isinstance(f, (tfds.features.Image, tfds.features.Video)):
        out[key] = tfds.decode.SkipDecoding()  # the `decode` op decodes (and can crop) them
    return out or None

  def label_keys(self, builder):
    import tensorflow_datasets as tfds  # noqa: PLC0415
    out = []
    for key, f in builder.info.features.items():
      if isinstance(f, tfds.features.ClassLabel):
        out.append(key)
      elif isinstance(f, tfds.features.Tensor) and (f.doc.desc or '').startswith(
          (MULTI_HOT_DOC, TARGET_DOC)):
        out.append(key)
    return tuple(out)

  def target_stats(self, builder):
    import tensorflow_datasets as tfds  # noqa: PLC0415
    stored = dict((getattr(builder.info, 'metadata', None) or {}).get('targets') or {})
    return {key: stored.get(key, {'mean': [0.0], 'std': [1.0]})
            for key, f in builder.info.features.items()
            if isinstance(f, tfds.features.Tensor) and (f.doc.desc or '').startswith(TARGET_DOC)}

  def validate(self, augment, pp):
    if augment:
      raise ValueError('augment is the digits suite\'s; this dataset takes pp strings '
                       f'(pp.train, pp.eval), with the ops {", ".join(ops.names())}')
    pp = dict(pp or {})
    unknown = sorted(set(pp) - {'train', 'eval'})
    if unknown:
      raise ValueError(f'pp has unknown key(s) {unknown}: expected train and eval')
    for mode in ('train', 'eval'):
      if not pp.get(mode):
        raise ValueError(f'pp.{mode} is required: a pp string such as '
                         "'decode|resize(224)|value_range(-1, 1)'")
      ops.parse(pp[mode], mode)
    return {}, pp

  def train_transforms(self, augment, pp):
    return ops.to_grain(ops.parse(pp['train'], 'train'))

  def eval_transforms(self, views, pp):
    return ops.to_grain(ops.parse(pp['eval'], 'eval', views))

  def max_views(self, pp) -> int:
    return ops.MAX_VIEWS if ops.temporal(pp['eval']) else 1


class BuiltSource(TfdsSource):
  """A dataset built by ``python -m mmvit.data build --name=NAME`` into ``data_dir``."""

  def __init__(self, name: str):
    super().__init__(name, name, None, None)

  def _missing(self, data_dir: str) -> DataError:
    from mmvit.data import registry  # noqa: PLC0415
    import difflib  # noqa: PLC0415
    close = difflib.get_close_matches(self.name, registry.names(), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    return DataError(f'unknown dataset {self.name!r}{hint}: not one of '
                     f'{", ".join(registry.names())}, and no dataset of that name is built in '
                     f'{data_dir} (`python -m mmvit.data build --name={self.name} ...`; a TFDS '
                     "dataset: 'tfds:NAME')")

  def rebuild_hint(self, builder) -> str:
    return f'delete {os.path.dirname(builder.data_dir)} and rerun `python -m mmvit.data build`'
