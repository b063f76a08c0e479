"""What every dataset source shares: the error type, the preprocessed view of a dataset, and
the interface a source implements to be read by the generic pipelines (`mmvit.data`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ('train', 'validation', 'test')


class DataError(ValueError):
  """A dataset is unknown, missing, empty, damaged or misused (one line, naming it)."""


# The doc of a float target feature `python -m mmvit.data build --targets` writes; readers
# know a regression target by it.
TARGET_DOC = 'regression target'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset looks like after preprocessing.

  Attributes:
    name: the dataset's name as a task gives it (e.g. 'digits_image', 'tfds:food101').
    splits: split name -> number of examples (from the built data).
    features: key -> (shape, dtype) of one preprocessed element (no batch dim;
      eval batches add a boolean 'mask').
    num_classes: label key -> number of classes (from the built data).
    label_names: label key -> class names, where the data names them (tfds ClassLabel).
  """

  name: str
  splits: dict[str, int]
  features: dict[str, tuple[tuple[int, ...], np.dtype]]
  num_classes: dict[str, int]
  label_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  # How a dataset built from files decoded them (rate, fps, short_side, quality): predict
  # decodes a user's file the same way. Empty for datasets without a file form.
  media: dict = dataclasses.field(default_factory=dict)
  # Label keys that are regression targets -> {'mean': [...], 'std': [...]} per output, of
  # the train split: what a regression head predicts in units of.
  targets: dict = dataclasses.field(default_factory=dict)


class Source:
  """A dataset the generic pipelines read: where its tfds builder is, which features are
  labels, and the grain transforms from a stored record to model inputs.

  Records are read from the builder's array_record files (`as_data_source`); `transforms`
  return `grain.transforms.Map` / `RandomMap` objects, one grain node each, so that grain
  seeds every random op per element and iterator states resume exactly.
  """

  name: str = ''
  # Splits that must exist and be non-empty; others a dataset has are usable too.
  required_splits: tuple[str, ...] = ('train',)
  # Keys `augment` may hold (None: this source takes no `augment`, only pp strings).
  augment_keys: tuple[str, ...] | None = None
  spec_augment_keys: tuple[str, ...] = ()

  def builder(self, data_dir: str):
    """The prepared tfds builder in `data_dir` (a self-building source builds it)."""
    raise NotImplementedError

  def rebuild_hint(self, builder) -> str:
    return f'delete {builder.data_dir} and rebuild it'

  def decoders(self, builder) -> dict | None:
    """tfds decoders for `as_data_source` (e.g. skip decoding encoded images, which a pp op
    decodes), or None for tfds' own decoding."""
    del builder
    return None

  def label_keys(self, builder) -> tuple[str, ...]:
    raise NotImplementedError

  def num_classes(self, builder, key: str) -> int:
    """Classes of a label; outputs of a regression target (1 for a scalar)."""
    feature = builder.info.features[key]
    if hasattr(feature, 'num_classes'):  # ClassLabel
      return int(feature.num_classes)
    return int(feature.shape[-1]) if feature.shape else 1  # multi-hot (C,); target () or (n,)

  def target_stats(self, builder) -> dict[str, dict[str, list[float]]]:
    """Label keys that are regression targets -> their train mean and std per output."""
    del builder
    return {}

  def label_names(self, builder, key: str) -> tuple[str, ...] | None:
    names = getattr(builder.info.features[key], 'names', None)  # ClassLabel
    return tuple(str(n) for n in names) if names else None

  def validate(self, augment: dict | None, pp: dict | None) -> tuple[dict, dict]:
    """Checked copies of a task's `augment` and `pp` (ValueError: one line)."""
    raise NotImplementedError

  def train_transforms(self, augment: dict, pp: dict) -> list:
    raise NotImplementedError

  def eval_transforms(self, views: int, pp: dict) -> list:
    raise NotImplementedError

  def max_views(self, pp: dict) -> int:
    """The most temporal views multi-view evaluation can take (1: none)."""
    del pp
    return 1

  def reference_fingerprint(self, version: str, split: str) -> str | None:
    """The fingerprint a reference build of this split had (None: nothing recorded)."""
    del version, split
    return None


def describe(value: Any) -> str:
  return ' '.join(str(value).split())[:300]
