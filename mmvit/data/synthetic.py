"""Datasets this machine does not hold, described by their shapes: `config.datasets`.

    config.datasets = dict(audioset=dict(
        features=dict(video=((8, 224, 224, 3), "float32"),
                      spectrogram=((800, 128, 1), "float32")),
        num_classes=dict(label=527), multilabel=True, splits=dict(train=1_900_000, test=18_000)))

A task whose dataset is declared there reads random batches of those shapes (as MaxText's
synthetic dataset): the planner (`mmvit.plan`) compiles every step of a paper-sized config
without its data, and the benchmark times steps without an input pipeline. Labels are random,
so nothing is learnt: only speed, memory and compilation are measured this way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmvit.data.base import DataError, DatasetInfo


@dataclasses.dataclass(frozen=True)
class Spec:
  features: dict  # key -> (shape, dtype name)
  num_classes: dict  # label key -> classes
  splits: dict
  multilabel: bool = False

  @classmethod
  def parse(cls, name: str, d) -> Spec:
    where = f"datasets.{name}"
    d = dict(d)
    unknown = set(d) - {"features", "num_classes", "splits", "multilabel"}
    if unknown:
      raise DataError(f"{where}.{sorted(unknown)[0]}: unknown field; expected features, "
                      "num_classes, splits, multilabel")
    feats = {}
    for k, v in dict(d.get("features") or {}).items():
      try:
        shape, dtype = v
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype).name
        if not shape or min(shape) < 1 or dtype not in ("float32", "bfloat16", "float16"):
          raise ValueError
      except (TypeError, ValueError):
        raise DataError(f"{where}.features.{k}={v!r}: expected (shape, float dtype), e.g. "
                        "((224, 224, 3), 'float32')") from None
      feats[k] = (shape, dtype)
    if not feats:
      raise DataError(f"{where}.features: expected at least one input")
    classes = {k: int(c) for k, c in dict(d.get("num_classes") or {}).items()}
    if not classes or min(classes.values()) < 1:
      raise DataError(f"{where}.num_classes: expected label key -> number of classes (>= 1)")
    splits = {k: int(n) for k, n in dict(d.get("splits") or {"train": 1_000_000,
                                                             "validation": 1024,
                                                             "test": 1024}).items()}
    return cls(feats, classes, splits, bool(d.get("multilabel", False)))


class _Iterator:
  """Random batches of a spec, the same for the same (seed, index); a state like grain's."""

  def __init__(self, spec: Spec, batch_size: int, seed: int, rows: int | None = None):
    self.spec, self.batch_size, self.seed, self.index = spec, batch_size, seed, 0
    self.rows = rows or batch_size

  def __iter__(self):
    return self

  def __next__(self):
    batch = make_batch(self.spec, self.rows, [self.seed, self.index])
    self.index += 1
    return batch

  def get_state(self):
    return {"next_index": self.index * self.rows}

  def set_state(self, state):
    self.index = int(state["next_index"]) // self.rows


def make_batch(spec: Spec, rows: int, seed) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for k, (shape, dtype) in spec.features.items():
    out[k] = rng.standard_normal((rows,) + shape, dtype=np.float32).astype(dtype)
  for k, c in spec.num_classes.items():
    out[k] = (rng.random((rows, c)) < 0.1).astype(np.int32) if spec.multilabel else (
        rng.integers(0, c, rows).astype(np.int32))
  return out


class SyntheticData:
  """Module-like (as mmvit.data) for the datasets of `config.datasets`; every other name goes
  to `fallback` (mmvit.data), so a run can mix declared and real datasets."""

  DataError = DataError

  def __init__(self, declared: dict, fallback):
    self.specs = {name: Spec.parse(name, d) for name, d in dict(declared or {}).items()}
    self.fallback = fallback

  def __getattr__(self, attr):  # the rest of mmvit.data's interface (ops, ...)
    return getattr(self.fallback, attr)

  def _spec(self, name):
    return self.specs.get(name) if isinstance(name, str) else None

  def ensure_built(self, name, data_dir=None):
    if self._spec(name) is None:
      self.fallback.ensure_built(name, data_dir)

  def dataset_info(self, name, data_dir=None, **kw):
    spec = self._spec(name)
    if spec is None:
      return self.fallback.dataset_info(name, data_dir, **kw)
    return DatasetInfo(name, dict(spec.splits),
                       {k: (s, np.dtype(d)) for k, (s, d) in spec.features.items()},
                       dict(spec.num_classes))

  def check_split(self, name, split, data_dir=None):
    spec = self._spec(name)
    if spec is None:
      return self.fallback.check_split(name, split, data_dir)
    if split.partition("[")[0] not in spec.splits:
      raise DataError(f"{name}: no split {split!r} (datasets.{name}.splits: "
                      f"{', '.join(spec.splits)})")
    return None

  def num_examples(self, name, split, data_dir=None):
    spec = self._spec(name)
    if spec is None:
      return self.fallback.num_examples(name, split, data_dir)
    return spec.splits[split.partition("[")[0]]

  def max_views(self, name, **kw):
    """Any number: a declared clip stands for one as long as the views need."""
    return 1_000 if self._spec(name) is not None else self.fallback.max_views(name, **kw)

  def device_affines(self, name, data_dir=None, pp=None):
    if self._spec(name) is not None:
      return {}
    return self.fallback.device_affines(name, data_dir, pp)

  def train_iterator(self, name, *, batch_size, seed, shard=(0, 1), **kw):
    spec = self._spec(name)
    if spec is None:
      return self.fallback.train_iterator(name, batch_size=batch_size, seed=seed,
                                          shard=shard, **kw)
    blocks, count = shard
    blocks = (blocks,) if isinstance(blocks, int) else blocks
    return _Iterator(spec, batch_size, seed, batch_size // count * len(blocks))

  def eval_batches(self, name, *, split, batch_size, shard=(0, 1), views=1, **kw):
    spec = self._spec(name)
    if spec is None:
      return self.fallback.eval_batches(name, split=split, batch_size=batch_size,
                                        shard=shard, views=views, **kw)
    blocks, count = shard
    rows = batch_size // count * len((blocks,) if isinstance(blocks, int) else blocks)
    n = spec.splits[split.partition("[")[0]]

    def generate():
      for i in range(-(-n // batch_size)):
        b = make_batch(spec, rows, [i, 0xE7A1])
        if views > 1:  # the views of a clip on axis 1, as the real eval batches
          for k in spec.features:
            b[k] = np.repeat(b[k][:, None], views, axis=1)
        b["mask"] = np.ones(rows, bool)
        yield b
    return generate()
