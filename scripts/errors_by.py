r"""Test errors of a finished run grouped by a stored feature of the split (e.g. audio speaker):

  uv run python scripts/errors_by.py --workdir=workdirs/demo --task=audio --feature=speaker
  uv run python scripts/errors_by.py --workdir=... --task=audio --feature=speaker --part=1

`--part=1` groups by the part after '+' of the feature (espeak-ng's voice variant). Prints each
group's errors / examples, most errors first, and the most frequent (label, prediction) pairs.
The run's newest checkpoint is read; evaluation is in stored order, so row i of the split is
example i of the predictions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mmvit import checkpointing, data, evaluate, sharding, train  # noqa: E402


def predictions(workdir: str, task: str, split: str):
  """(predicted, true) class of every example of `split` for a one-label task."""
  cfg = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
  if task not in cfg.tasks:
    sys.exit(f"error: --task={task}: the run has tasks {', '.join(cfg.tasks)}")
  cfg.tasks = {task: cfg.tasks[task].to_dict()}  # only this task's head is built and read
  exp = train.build(cfg)
  (t,) = exp.tasks
  if len(t.head.labels) != 1:
    sys.exit(f"error: --task={task}: has labels {t.head.labels}; expected one")
  label = t.head.labels[0]
  abstract = checkpointing.abstract(exp.state["params"], exp.state_shardings["params"])
  loaded, _ = checkpointing.load_params([dict(workdir=workdir, step=None, groups=("*",))],
                                        abstract)
  params = {**exp.state["params"], **loaded}
  batches = data.eval_batches(t.dataset, split=split, batch_size=128, **t.data_kwargs(),
                              data_dir=cfg.get("data_dir"))
  with jax.set_mesh(exp.mesh):
    logits, labels = evaluate.collect(t.head, ((exp.eval_steps[task](
        params, sharding.shard_batch({k: v for k, v in b.items() if k != "mask"}, exp.mesh)),
        b) for b in batches))
  return t.dataset, cfg.get("data_dir"), logits[label].argmax(-1), labels[label]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--task", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--feature", required=True, help="a stored feature of the split, e.g. speaker")
  p.add_argument("--part", type=int, default=None, help="group by this '+'-separated part")
  args = p.parse_args()
  dataset, data_dir, pred, true = predictions(args.workdir, args.task, args.split)
  source = data.data_source(dataset, args.split, data_dir)
  if len(source) != len(pred):
    sys.exit(f"error: {dataset}/{args.split} has {len(source)} records, {len(pred)} predictions")
  groups = []
  for i in range(len(source)):
    record = source[i]
    if args.feature not in record:
      sys.exit(f"error: --feature={args.feature}: {dataset} stores {', '.join(sorted(record))}")
    v = record[args.feature]
    v = v.decode() if isinstance(v, bytes) else str(v)
    groups.append(v.split("+")[args.part] if args.part is not None and "+" in v else v)
  wrong, total = collections.Counter(), collections.Counter(groups)
  for g, a, b in zip(groups, pred, true):
    wrong[g] += int(a != b)
  print(f"{args.task} {args.split}: {int((pred != true).sum())} errors of {len(pred)} "
        f"(top-1 {(pred == true).mean():.4f})")
  for g in sorted(total, key=lambda g: (-wrong[g], g)):
    if wrong[g]:
      print(f"  {g:40s} {wrong[g]:4d} / {total[g]}")
  pairs = collections.Counter((int(b), int(a)) for a, b in zip(pred, true) if a != b)
  print("most frequent (label, prediction):", pairs.most_common(8))


if __name__ == "__main__":
  main()
