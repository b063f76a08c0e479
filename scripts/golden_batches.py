r"""Digests of the digits suite's batches, the guard for refactoring the data pipeline:

  uv run python scripts/golden_batches.py --write    # record today's digests
  uv run python scripts/golden_batches.py            # compare against tests/golden/digits.json

For every dataset of the suite: three training batches (and the iterator state after two) with
no augmentation, with each augmentation the dataset accepts alone, with all of them together,
and with the records cached in memory; every validation batch (the AV sets also with three
views); and the `dataset_info` a task sees. A pipeline that is moved or rewritten must give the
same digests, so old checkpoints (model and iterator states) and published results stay valid.
The digests hold for data whose split fingerprints match the reference build
(`python -m mmvit.data inspect`); on other data they say nothing.

The cases are written out here, not derived from the package, so that they do not move with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GOLDEN = os.path.join(ROOT, "tests", "golden", "digits.json")

AV = ("av_digits", "av_xor", "av_multilabel")
DATASETS = ("digits_image", "digits_video", "digits_audio") + AV
# One value per augmentation, each different from its neutral setting.
VALUES = {
    "noise_std": 0.1, "max_shift": 2, "time_shift": 400, "speed": 0.2, "crop": 3, "flip": True,
    "color_jitter": 0.3, "sync": False,
    "spec_augment": {"time_masks": 2, "time_width": 4, "freq_masks": 2, "freq_width": 4},
}
_VISUAL = ("noise_std", "max_shift", "crop", "flip", "color_jitter")
ACCEPTED = {
    "digits_image": _VISUAL, "digits_video": _VISUAL,
    "digits_audio": ("noise_std", "time_shift", "speed", "spec_augment"),
    **{n: _VISUAL + ("spec_augment", "sync") for n in AV},
}
TRAIN = dict(batch_size=8, seed=7)
EVAL_BATCH = 64


def digest(batch: dict) -> str:
  """16 hex digits over every key of a batch with its dtype, shape and bytes."""
  import numpy as np  # noqa: PLC0415
  h = hashlib.sha256()
  for key in sorted(batch):
    v = np.ascontiguousarray(batch[key])
    h.update(f"{key}|{v.dtype.str}|{v.shape}|".encode())
    h.update(v.tobytes())
  return h.hexdigest()[:16]


def _state_digest(state) -> str:
  return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cases(name: str):
  """(case name, augment, cache) of one dataset's training cases."""
  yield "none", None, False
  for key in ACCEPTED[name]:
    yield key, {key: VALUES[key]}, False
  every = {k: VALUES[k] for k in ACCEPTED[name]}
  yield "all", every, False
  yield "all_cached", every, True


def measure(name: str, data_dir: str) -> dict:
  """Every digest of one dataset (see the module docstring)."""
  from mmvit import data  # noqa: PLC0415
  out: dict = {"train": {}, "eval": {}}
  for case, augment, cache in cases(name):
    it = data.train_iterator(name, data_dir=data_dir, augment=augment, cache=cache, **TRAIN)
    batches = [digest(next(it)) for _ in range(2)]
    state = _state_digest(it.get_state())
    batches.append(digest(next(it)))
    out["train"][case] = {"batches": batches, "state_after_2": state}
  for views in ((1, 3) if name in AV else (1,)):
    kw = dict(split="validation", batch_size=EVAL_BATCH, data_dir=data_dir)
    if views != 1:
      kw["views"] = views
    out["eval"][f"validation_views{views}"] = [digest(b) for b in data.eval_batches(name, **kw)]
  info = data.dataset_info(name, data_dir)
  out["info"] = {
      "splits": dict(sorted(info.splits.items())),
      "features": {k: [list(s), str(d)] for k, (s, d) in sorted(info.features.items())},
      "num_classes": dict(sorted(info.num_classes.items())),
  }
  return out


def fingerprints_match(name: str, data_dir: str) -> bool:
  """Whether every split of the built dataset is the reference build's."""
  from mmvit import data  # noqa: PLC0415
  return all(r["reference"] == r["fingerprint"] for r in data.inspect(name, data_dir).values())


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--write", action="store_true", help=f"record into {GOLDEN}")
  p.add_argument("--data_dir", default=os.environ.get("MMVIT_DATA_DIR") or "/tmp/mmvit_test_data")
  args = p.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mmvit import data  # noqa: PLC0415
  for name in DATASETS:
    data.ensure_built(name, args.data_dir)
    if not fingerprints_match(name, args.data_dir):
      print(f"{name}: its splits are not the reference build's; digests would say nothing",
            file=sys.stderr)
      return 2
  got = {name: measure(name, args.data_dir) for name in DATASETS}
  if args.write:
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
      f.write("\n")
    print("wrote", GOLDEN)
    return 0
  want = json.load(open(GOLDEN))
  bad = [n for n in DATASETS if got[n] != want.get(n)]
  print("same digests" if not bad else f"digests differ for {', '.join(bad)}")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
