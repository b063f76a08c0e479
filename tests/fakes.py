"""A stand-in for mmvit.data with random inputs and the suite's shapes: fast, no build.

Used by tests of the trainer's mechanics (parameter groups, compilation counts, mesh
equivalence, resume); tests of learning use the real suite.
"""

import dataclasses

import numpy as np

from mmvit.data import DataError

FEATURES = {
    "digits_image": {"image": ((32, 32, 1), np.float32)},
    "digits_video": {"video": ((8, 32, 32, 1), np.float32)},
    "digits_audio": {"spectrogram": ((64, 32, 1), np.float32), "waveform": ((8000,), np.float32)},
    "fake_av": {"video": ((8, 32, 32, 1), np.float32), "spectrogram": ((64, 32, 1), np.float32)},
}
CLASSES = {"digits_image": {"label": 10}, "digits_video": {"direction": 8, "digit": 10},
           "digits_audio": {"label": 10}, "fake_av": {"label": 10}}


@dataclasses.dataclass
class Info:
  name: str
  splits: dict
  features: dict
  num_classes: dict


class FakeIterator:
  """Deterministic batches whose labels are learnable: label c adds +c to one input pixel."""

  def __init__(self, name, batch_size, seed):
    self.name, self.batch_size, self.seed, self.index = name, batch_size, seed, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = make_batch(self.name, self.batch_size, [self.seed, self.index])
    self.index += 1
    return batch

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


def make_batch(name, batch_size, seed):
  rng = np.random.default_rng(seed)
  batch = {k: rng.normal(size=(batch_size,) + s).astype(d) for k, (s, d) in FEATURES[name].items()}
  for k, c in CLASSES[name].items():
    batch[k] = rng.integers(0, c, batch_size).astype(np.int32)
  first = next(iter(FEATURES[name]))
  flat = batch[first].reshape(batch_size, -1)
  flat[:, 0] += 3.0 * next(iter(batch[k] for k in CLASSES[name]))
  return batch


class FakeData:
  """Module-like: ensure_built, dataset_info, train_iterator, eval_batches."""

  DataError = DataError

  def __init__(self, n_train=512, n_eval=64, missing=(), empty=(), unreadable=()):
    self.n_train, self.n_eval, self.missing, self.empty = n_train, n_eval, missing, empty
    self.unreadable = unreadable  # (dataset, split) pairs whose file is damaged
    self.iterators_made = 0
    self.checked = []  # (dataset, split) of every check_split call

  def ensure_built(self, name, data_dir=None):
    if name not in FEATURES or name in self.missing:
      raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(FEATURES)}")

  def dataset_info(self, name, data_dir=None):
    n = 0 if name in self.empty else self.n_train
    return Info(name, {"train": n, "validation": self.n_eval, "test": self.n_eval},
                FEATURES[name], CLASSES[name])

  def num_examples(self, name, split, data_dir=None):
    # 'train[:N]' slices, the form the fake's tests use.
    base, _, rest = split.partition("[")
    n = self.dataset_info(name).splits[base]
    return min(n, int(rest.strip(":]"))) if rest else n

  def check_split(self, name, split, data_dir=None):
    self.checked.append((name, split))
    if (name, split) in self.unreadable:
      raise DataError(f"{name}: split {split!r}: cannot read record 0 of /fake/{name}-{split}")

  def train_iterator(self, name, *, batch_size, seed, data_dir=None, split="train",
                     augment=None, cache=False, threads=2):
    self.iterators_made += 1
    return FakeIterator(name, batch_size, seed)

  def eval_batches(self, name, *, split, batch_size, data_dir=None, views=1):
    for i in range(0, self.n_eval, batch_size):
      b = make_batch(name, batch_size, [{"validation": 1, "test": 2}.get(split, 3), i])
      if views > 1:  # crops of one clip: the same clip, shifted in time
        for k in FEATURES[name]:
          b[k] = np.stack([np.roll(b[k], v, axis=1) for v in range(views)], axis=1)
      b["mask"] = np.arange(i, i + batch_size) < self.n_eval
      yield b
