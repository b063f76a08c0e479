r"""Transfer from a checkpoint file: does starting from a pretrained ViT npz pay off?

  python scripts/transfer.py --out=/tmp/mmvit_transfer [--source=frames] [--steps=800]

1. trains the demo's model on images alone (configs/single_task.py:image): with
   --source=digits_image on the suite's image digits (32 px, filling the frame); with
   --source=frames on still frames of the video digits' train clips (the digit at the clips'
   scale and noise, no motion), written as PNG class folders and built with
   `python -m mmvit.data build --images` like any user's folder;
2. writes its image task as a big_vision ViT npz with mmvit's own writer
   (python -m mmvit.convert), the file any run's init_from.file reads;
3. trains video digits (configs/single_task.py:video_digit, optionally on --train_split and at
   each of --lrs) for --steps twice, from scratch and from that file: the 2D patch kernel inflated to tubelets (average over time), the position
   embedding repeated over time, the ViT's first block as the video adapter and the rest as the
   shared stack (group_map 'adapters.*=shared[0:1]', 'shared=shared[1:4]');
4. prints both validation curves and writes them to <out>/transfer.json.

Both fine-tunes see the same batches in the same order (same seed and data); only the initial
parameters differ. The figure in docs/results.md came from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import single_task  # noqa: E402
from mmvit import train  # noqa: E402
from mmvit.data import default_data_dir  # noqa: E402
from mmvit.data.digits import synth  # noqa: E402

FRAMES = (0, 5)  # of each train clip: two positions along its path
FRAMES_DATASET = "transfer_digit_frames"


def write_frames(root: str) -> int:
  """ROOT/<split>/<digit>/<clip>_<frame>.png from the video digits' train and validation clips
  (the generator the suite's builder calls, so the same clips)."""
  from PIL import Image  # noqa: PLC0415

  n = 0
  for split in ("train", "validation"):
    for key, ex in synth.video_examples(split):
      d = os.path.join(root, split, str(ex["digit"]))
      os.makedirs(d, exist_ok=True)
      for f in FRAMES if split == "train" else FRAMES[:1]:
        Image.fromarray(ex["video"][f, :, :, 0]).save(os.path.join(d, f"{key}_{f}.png"))
        n += 1
  return n


def frames_config(steps):
  c = single_task.get_config("image")
  t = c.tasks.image
  t.dataset = FRAMES_DATASET
  del t["augment"]  # the suite's augmentations; a folder dataset takes pp ops
  t.pp = dict(train="decode(channels=1)|value_range(-1, 1)",
              eval="decode(channels=1)|value_range(-1, 1)")
  c.test_split = "validation"  # the frames hold no test split; the target's is the figure
  if steps:
    t.steps = steps
  return c


def curve(workdir: str, task: str, split: str = "validation") -> list[tuple[int, float]]:
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r.get("task") == task and r.get("split") == split and "top1" in r:
        out.append((int(r["step"]), float(r["top1"])))
  return sorted(dict(out).items())


def first_step_at(points, level):
  return next((s for s, a in points if a >= level), None)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--source", default="digits_image", choices=("digits_image", "frames"))
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--pretrain_steps", type=int, default=None, help="default: the demo's")
  p.add_argument("--eval_every", type=int, default=50)
  p.add_argument("--train_split", default="train", help="e.g. train[:25%%]: a low-data target")
  p.add_argument("--lrs", default="", help="comma-separated peak lrs to try for both starts "
                 "(default: the demo's)")
  a = p.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  timings = {}

  pre = os.path.join(a.out, "pretrain_image")
  npz = os.path.join(a.out, "image_vit.npz")
  if not os.path.exists(npz):  # a rerun with other targets reuses the pretrained file
    if a.source == "frames":
      if not os.path.isdir(os.path.join(default_data_dir(), FRAMES_DATASET)):
        t0 = time.perf_counter()
        root = os.path.join(a.out, "frames")
        print(f"wrote {write_frames(root)} frames to {root}", flush=True)
        subprocess.run([sys.executable, "-m", "mmvit.data", "build", f"--images={root}",
                        f"--name={FRAMES_DATASET}", "--quiet"], check=True)
        timings["frames_s"] = time.perf_counter() - t0
      c = frames_config(a.pretrain_steps)
    else:
      c = single_task.get_config("image")
      if a.pretrain_steps:
        c.tasks.image.steps = a.pretrain_steps
    t0 = time.perf_counter()
    res = train.run(c, pre)
    timings["pretrain_s"] = time.perf_counter() - t0
    print(f"pretrain image ({a.source}): {c.get('test_split', 'test')} "
          f"{res['test']['image']['top1']:.4f}", flush=True)
    subprocess.run([sys.executable, "-m", "mmvit.convert", f"--workdir={pre}", "--task=image",
                    f"--out={npz}"], check=True)

  runs = {}
  lrs = [float(x) for x in a.lrs.split(",") if x] or [None]
  for lr in lrs:
    for start in ("scratch", "pretrained"):
      c = single_task.get_config("video_digit")
      c.tasks.video_digit.steps = a.steps
      c.tasks.video_digit.train_split = a.train_split
      if lr is not None:
        c.optimizer.lr = lr
      c.eval_every = a.eval_every
      c.checkpoint_every = 0
      if start == "pretrained":
        c.init_from = dict(file=npz, groups=("shared", "adapters.video", "tokenizers.video"),
                           group_map=("tokenizers.video=tokenizers.image",
                                      "adapters.*=shared[0:1]", "shared=shared[1:4]"),
                           inflate="average")
      name = start if lr is None else f"{start}_lr{lr:g}"
      wd = os.path.join(a.out, name)
      t0 = time.perf_counter()
      res = train.run(c, wd)
      timings[f"{name}_s"] = time.perf_counter() - t0
      points = curve(wd, "video_digit")
      runs[name] = {"validation": points, "test": res["test"]["video_digit"]["top1"],
                    "steps_per_s": res["steps_per_s"], "lr": c.optimizer.lr,
                    "train_split": a.train_split}
      print(f"{name}: test {runs[name]['test']:.4f}; validation "
            + " ".join(f"{s}:{acc:.3f}" for s, acc in points), flush=True)

  levels = {}
  for level in (0.5, 0.7, 0.8, 0.85, 0.9):
    levels[str(level)] = {n: first_step_at(r["validation"], level) for n, r in runs.items()}
    print(f"validation >= {level:.0%}: " + ", ".join(
        f"{n} at step {s}" for n, s in levels[str(level)].items()))
  with open(os.path.join(a.out, "transfer.json"), "w") as f:
    json.dump({"runs": runs, "first_step_at": levels, "timings_s": timings,
               "steps": a.steps, "source": a.source}, f, indent=1)


if __name__ == "__main__":
  main()
