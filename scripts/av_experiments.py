r"""MBT experiments on the offline audio-visual suite -> docs/results_av.json:

  uv run python scripts/av_experiments.py [--only=NAME,...] [--steps=800]
  uv run python scripts/av_experiments.py --only='pre/*'      # the pretrained rows

Rows named pre/<row> start both streams from a unimodal pretraining run (configs/av_pretrain.py,
row `pretrain`, run first when needed), as MBT starts from a pretrained ViT; the others start
from scratch.

Each row is one run of configs/av.py (its own workdir under workdirs/av, so a rerun skips
finished rows): single modalities, late, full pairwise and bottleneck fusion at several L_f on
av_digits; the same on av_xor (the synergy control); the multi-label variant (mAP); multi-view
against single-view test; mixup + SpecAugment on against off; and the fused model evaluated with
one modality missing.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import av, av_pretrain  # noqa: E402
from mmvit import train  # noqa: E402

RECIPE = dict(mixup=dict(alpha=0.3), spec_augment=dict(time_masks=2, time_width=8,
                                                        freq_masks=2, freq_width=4))
RUNS = {
    "digits/video": "av_digits,video",
    "digits/audio": "av_digits,audio",
    "digits/late": "av_digits,late",
    "digits/full_pairwise_lf2": "av_digits,full_pairwise,2",
    "digits/bottleneck_lf2": "av_digits,bottleneck,2,4",
    "digits/bottleneck_lf0": "av_digits,bottleneck,0,4",
    "digits/bottleneck_lf2_recipe": "av_digits,bottleneck,2,4",
    "xor/bottleneck_lf1": "av_xor,bottleneck,1,4",
    "xor/full_pairwise_lf1": "av_xor,full_pairwise,1",
    "xor/late": "av_xor,late",
    "xor/video": "av_xor,video",
    "xor/audio": "av_xor,audio",
    "multilabel/bottleneck_lf2": "av_multilabel,bottleneck,2,4",
    "multilabel/late": "av_multilabel,late",
}
RUNS.update({f"pre/{k}": f"{v},pretrained" for k, v in list(RUNS.items())})
RUNS.update({
    "pre/digits/bottleneck_lf1": "av_digits,bottleneck,1,4,pretrained",
    "pre/digits/bottleneck_lf3": "av_digits,bottleneck,3,4,pretrained",
    # A second fine-tuning seed (same pretrained start) for the rows at the 90% line.
    "pre/xor/bottleneck_lf1_seed1": "av_xor,bottleneck,1,4,pretrained",
    "pre/xor/full_pairwise_lf1_seed1": "av_xor,full_pairwise,1,pretrained",
})
# XOR needs both digits recognised before their parities can be combined: longer runs.
STEPS = {"digits": 1000, "xor": 2000, "multilabel": 1000}


def _row(workdir: str, config, describe) -> dict:
  """Trains `config` in `workdir` once: a finished row is read back from row.json; a SIGTERM
  (saved, resumable) exits, so rerunning the script continues this row."""
  done = os.path.join(workdir, "row.json")
  if os.path.exists(done):
    return json.load(open(done))
  out = train.run(config, workdir)
  if out["preempted"] is not None:
    sys.exit(0)
  row = describe(out)
  with open(done, "w") as f:
    json.dump(row, f, indent=2)
  return row


def pretrain(out_dir: str) -> dict:
  c = av_pretrain.get_config()
  c.eval_every = 0
  return _row(os.path.join(out_dir, "pretrain"), c, lambda out: {
      "config": "configs/av_pretrain.py", "steps": out["steps"], "test": out["test"],
      "steps_per_s": out["steps_per_s"]})


def run(name: str, arg: str, steps: int, out_dir: str) -> dict:
  c = av.get_config(arg)
  if c.get("init_from"):
    c.init_from.workdir = os.path.join(out_dir, "pretrain")
  c.tasks.av.steps = steps or STEPS[name.removeprefix("pre/").split("/")[0]]
  if "_seed" in name:
    c.seed = int(name.rsplit("_seed", 1)[1])
  c.eval_every = 0
  if name.endswith("_recipe"):
    c.tasks.av.mixup = RECIPE["mixup"]
    c.tasks.av.augment.spec_augment = RECIPE["spec_augment"]

  def describe(out):
    row = {"config": f"configs/av.py:{arg}", "seed": c.seed, "steps": c.tasks.av.steps,
           "test": out["test"]["av"], "steps_per_s": out["steps_per_s"],
           "init_from": out["init_from"]}
    if "fusion" in c.tasks.av:
      exp = train.build(c)
      params = out["state"]["params"]
      row["views4"] = train.evaluate_all(exp, params, "test", views=4)["av"]
      row["without_audio"] = train.evaluate_all(exp, params, "test", drop=("audio",))["av"]
      row["without_video"] = train.evaluate_all(exp, params, "test", drop=("video",))["av"]
    return row

  return _row(os.path.join(out_dir, name.replace("/", "_")), c, describe)


def main():
  logging.basicConfig(level=logging.WARNING)
  p = argparse.ArgumentParser()
  p.add_argument("--only", default="")
  p.add_argument("--steps", type=int, default=0, help="0: the STEPS of each dataset")
  p.add_argument("--out", default=os.path.join(ROOT, "workdirs", "av"))
  p.add_argument("--results", default=os.path.join(ROOT, "docs", "results_av.json"))
  args = p.parse_args()
  names = [n for pat in (args.only or "*").split(",") for n in fnmatch.filter(RUNS, pat)]
  results = json.load(open(args.results)) if os.path.exists(args.results) else {}
  if any(RUNS[n].endswith(",pretrained") for n in names):
    results["pretrain"] = pretrain(args.out)
    print(f"{'pretrain':32s} test {json.dumps(results['pretrain']['test'])}", flush=True)
  for name in names:
    row = run(name, RUNS[name], args.steps, args.out)
    results[name] = row
    metric = "mAP" if "mAP" in row["test"] else "top1"
    extra = {k: round(row[k][metric], 4) for k in ("views4", "without_audio", "without_video")
             if k in row}
    print(f"{name:32s} test {metric}={row['test'][metric]:.4f} {extra}", flush=True)
    with open(args.results, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
