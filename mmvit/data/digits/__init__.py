"""The built-in digits suite, one source among others: six small TFDS datasets generated
offline (sklearn's digit scans, espeak-ng speech), built into ``data_dir`` on first use.

* ``digits_image``: 8x8 scans upsampled to 32x32; ``label``.
* ``digits_video``: 8-frame clips of a scan moving in one of 8 directions; ``direction``,
  ``digit``. A split's clips come only from the same split's scans of digits_image.
* ``digits_audio``: "zero".."nine" spoken by espeak-ng voices with background noise;
  ``label``. Validation/test speakers (espeak-ng variants) are absent from train.
* ``av_digits``, ``av_xor``, ``av_multilabel`` (`AV_DATASETS`, for fusion): a 12-frame clip of a
  scan and 1.5 s of a spoken digit; the model sees an 8-frame window ``video`` and the log-mel
  ``spectrogram`` of 1.0 s of audio (see `preprocess`).

Building takes a file lock and tfds publishes a finished dataset with an atomic rename, so
concurrent processes are safe. Preprocessing is fixed per dataset (`preprocess`), with the
augmentations of `preprocess.AUGMENT_KEYS` set by a task's ``augment``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

from mmvit.data import base, registry
from mmvit.data.base import DataError

AV_DATASETS: tuple[str, ...] = ('av_digits', 'av_xor', 'av_multilabel')
DATASETS: tuple[str, ...] = ('digits_image', 'digits_video', 'digits_audio') + AV_DATASETS

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _file_lock(path: str):
  with open(path, 'a+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(builder) -> None:
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

  was_active = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    tfds.display_progress_bar(was_active)


class DigitsSource(base.Source):
  """One dataset of the suite; builds itself into `data_dir` when absent."""

  required_splits = base.SPLITS
  spec_augment_keys = ('time_masks', 'time_width', 'freq_masks', 'freq_width')

  def __init__(self, name: str):
    from mmvit.data.digits import preprocess  # noqa: PLC0415  (imports grain)
    self.name = name
    self.augment_keys = tuple(preprocess.AUGMENT_KEYS[name])

  def builder(self, data_dir: str):
    from mmvit.data import fingerprints  # noqa: PLC0415
    from mmvit.data.digits import builders  # noqa: PLC0415

    cls = builders.BUILDERS[self.name]

    def make():
      return cls(data_dir=data_dir, file_format='array_record')

    def prepared(builder) -> bool:
      # tfds writes into an `incomplete.*` dir and renames it when done, so a
      # version dir with its dataset_info.json is a finished build.
      return os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json'))

    builder = make()
    if not prepared(builder):
      os.makedirs(data_dir, exist_ok=True)
      with _file_lock(os.path.join(data_dir, f'.{self.name}.lock')):
        builder = make()  # another process may have built it meanwhile
        if not prepared(builder):
          t0 = time.perf_counter()
          _prepare(builder)
          _log.info('built %s in %s in %.1f s', self.name, data_dir, time.perf_counter() - t0)
          builder = make()
          version = str(builder.info.version)
          found = {}
          for split in base.SPLITS:
            found[split] = fingerprints.split_fingerprint(builder.as_data_source(split=split))
            fingerprints.check(self.name, version, split, found[split],
                               self.reference_fingerprint(version, split))
          _log.info('%s %s fingerprints: %s', self.name, version,
                    ' '.join(f'{s}={f}' for s, f in found.items()))
    return builder

  def rebuild_hint(self, builder) -> str:
    return f'delete {builder.data_dir} to rebuild'

  def label_keys(self, builder) -> tuple[str, ...]:
    from mmvit.data.digits import preprocess  # noqa: PLC0415
    return tuple(preprocess.LABEL_KEYS[self.name])

  def validate(self, augment, pp):
    from mmvit.data.digits import preprocess  # noqa: PLC0415
    if pp:
      raise ValueError(f'{self.name} has fixed preprocessing: set augment, not pp '
                       f'(augment keys: {", ".join(self.augment_keys)})')
    return preprocess.validate_augment(self.name, augment), {}

  def train_transforms(self, augment, pp):
    from mmvit.data.digits import preprocess  # noqa: PLC0415
    return preprocess.train_transforms(self.name, augment)

  def eval_transforms(self, views, pp):
    from mmvit.data.digits import preprocess  # noqa: PLC0415
    return preprocess.eval_transforms(self.name, views)

  def max_views(self, pp) -> int:
    from mmvit.data.digits import preprocess  # noqa: PLC0415
    return preprocess.AV_MAX_VIEWS if self.name in AV_DATASETS else 1

  def reference_fingerprint(self, version, split):
    from mmvit.data.digits import reference  # noqa: PLC0415
    return reference.FINGERPRINTS.get((self.name, str(version)), {}).get(split)


for _name in DATASETS:
  registry.register(DigitsSource(_name))
