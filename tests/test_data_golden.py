"""The digits suite's batches are the recorded ones (tests/golden/digits.json).

Rule: refactoring the data pipeline (issue 11 moves it into a registry, a pipeline and named
ops) changes no training batch, iterator state, evaluation batch or dataset_info of the suite,
so checkpoints and published results stay valid. `scripts/golden_batches.py --write` records
the digests; only a deliberate change of the data may rewrite them.
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
import golden_batches  # noqa: E402


@pytest.fixture(scope="module")
def golden():
  with open(golden_batches.GOLDEN) as f:
    return json.load(f)


@pytest.mark.parametrize("name", golden_batches.DATASETS)
def test_batches_states_and_info_are_the_recorded_ones(name, golden, data_dir):
  if not golden_batches.fingerprints_match(name, data_dir):
    pytest.skip(f"{name} here is not the reference build (python -m mmvit.data inspect)")
  got = golden_batches.measure(name, data_dir)
  want = golden[name]
  for kind in ("train", "eval"):
    assert sorted(got[kind]) == sorted(want[kind]), kind
    for case in want[kind]:
      assert got[kind][case] == want[kind][case], f"{kind} case {case!r}"
  assert got["info"] == want["info"]


def test_every_accepted_augmentation_has_its_own_case():
  from mmvit.data.digits import preprocess  # noqa: PLC0415
  for name in golden_batches.DATASETS:
    assert set(golden_batches.ACCEPTED[name]) == set(preprocess.AUGMENT_KEYS[name]), name
    cases = {c for c, _, _ in golden_batches.cases(name)}
    assert set(golden_batches.ACCEPTED[name]) <= cases


def test_the_digest_sees_dtype_shape_and_every_byte():
  import numpy as np  # noqa: PLC0415
  b = {"x": np.zeros((2, 3), np.float32), "y": np.arange(2, dtype=np.int32)}
  d = golden_batches.digest(b)
  assert golden_batches.digest({**b, "x": b["x"].reshape(3, 2)}) != d
  assert golden_batches.digest({**b, "y": b["y"].astype(np.int64)}) != d
  flipped = b["x"].copy()
  flipped.reshape(-1).view(np.uint8)[5] ^= 1
  assert golden_batches.digest({**b, "x": flipped}) != d
  assert golden_batches.digest(dict(reversed(b.items()))) == d
