r"""Co-training against single-task training on the offline digits suite -> docs/results.md.

  uv run python scripts/compare.py --out=workdirs/compare [--seeds=0]
  uv run python scripts/compare.py --plan=claims --seeds=0,1,2 --results=docs/results_claims.json

Runs configs/single_task.py:<task> for every task and configs/demo.py:<schedule> for the five
schedules (each in its own workdir, so a rerun resumes or skips finished runs), then writes the
accuracy table, the parameter counts and a plot of validation accuracy over steps
(task-by-task against weighted) into docs/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import demo  # noqa: E402

SCHEDULES = ("task_by_task", "alternating", "uniform", "weighted", "accumulated")
TASKS = tuple(sorted(demo.STEPS))


# The low-data task of the transfer rows: trained on this slice of its train split.
LOW_DATA_TASK, LOW_DATA_SPLIT = "image", "train[:10%]"


def runs(seed: int, plan: str = "all"):
  """(name, config, seed, scale, overrides) of every run of a plan. 'all': single-task and
  the five schedules. 'claims' (the seed's claims over seeds 0-2): single-task, weighted and
  accumulated on every seed, the other schedules on seed 0 only; weighted at 0.5x and 0.75x
  of the summed single-task steps (fewer total steps, P:L393); and the low-data task alone
  against co-trained (positive transfer)."""
  multi = plan == "all" or seed == 0
  for t in TASKS:
    yield f"single_{t}_s{seed}", f"configs/single_task.py:{t}", seed, 1.0, ()
  for s in SCHEDULES:
    if multi or s in ("weighted", "accumulated"):
      yield f"cotrain_{s}_s{seed}", f"configs/demo.py:{s}", seed, 1.0, ()
  if plan == "claims":
    for scale in (0.5, 0.75):
      yield f"cotrain_weighted_x{scale}_s{seed}", "configs/demo.py:weighted", seed, scale, ()
    low = (f"--config.tasks.{LOW_DATA_TASK}.train_split={LOW_DATA_SPLIT}",)
    yield (f"single_{LOW_DATA_TASK}_lowdata_s{seed}", f"configs/single_task.py:{LOW_DATA_TASK}",
           seed, 1.0, low)
    yield f"cotrain_weighted_lowdata_s{seed}", "configs/demo.py:weighted", seed, 1.0, low


# What a row's numbers depend on besides its command: the configs and the code of the package.
# A row measured with other files is stale and is run again.
_SOURCES = ("configs", "mmvit")


def sources_digest() -> str:
  """sha256 (16 hex) of every .py file under configs/ and mmvit/, by relative path."""
  h = hashlib.sha256()
  for top in _SOURCES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
      dirnames.sort()
      for fn in sorted(f for f in filenames if f.endswith(".py")):
        path = os.path.join(dirpath, fn)
        h.update(os.path.relpath(path, ROOT).encode() + b"\0")
        with open(path, "rb") as f:
          h.update(f.read() + b"\0")
  return h.hexdigest()[:16]


def run_one(name, config, seed, out_dir, eval_every, scale=1.0, overrides=()):
  workdir = os.path.join(out_dir, name)
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):  # finished earlier: its wall time is not known here
    return json.load(open(done)), None
  cmd = [sys.executable, "-m", "mmvit.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.eval_every={eval_every}", *overrides]
  tasks = [config.split(":")[1]] if "single_task" in config else TASKS
  cmd += [f"--config.tasks.{t}.steps={max(1, round(demo.STEPS[t] * scale))}" for t in tasks]
  print("+", " ".join(cmd), flush=True)
  t0 = time.time()
  subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return json.load(open(done)), time.time() - t0


def curves(workdir: str, split="validation"):
  out: dict[str, list[tuple[int, float]]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r["split"] == split and "top1" in r:
        out.setdefault(r["task"], []).append((r["step"], r["top1"]))
  return out


def plot(out_dir: str, seed: int, path: str):
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, sched in zip(axes, ("task_by_task", "weighted")):
    for task, pts in sorted(curves(os.path.join(out_dir, f"cotrain_{sched}_s{seed}")).items()):
      xs, ys = zip(*sorted(pts))
      ax.plot(xs, ys, marker="o", ms=3, label=task)
    ax.set_title(f"{sched.replace('_', '-')} (seed {seed})")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("validation top-1")
  axes[1].legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def fewer_steps(table: dict) -> dict[str, dict[float, list[float]]]:
  """Test top-1 per task against the total budget (fraction of the summed single-task
  steps) of weighted co-training: {task: {fraction: [top-1 of each seed]}}."""
  out: dict[str, dict[float, list[float]]] = {}
  for name, r in table.items():
    base = name.rsplit("_s", 1)[0]
    if base == "cotrain_weighted" or base.startswith("cotrain_weighted_x"):
      for t, m in r["test"].items():
        out.setdefault(t, {}).setdefault(r["scale"], []).append(m["top1"])
  return out


def plot_fewer_steps(table: dict, path: str):
  """The fewer-total-steps claim (P:L393): weighted co-training at 0.5x, 0.75x and 1x of the
  summed single-task steps, mean and std over seeds, against single-task at full budget."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  points = fewer_steps(table)
  if not points:
    return
  fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.4), sharey=False)
  for ax, (task, by_scale) in zip(np.atleast_1d(axes), sorted(points.items())):
    xs = sorted(by_scale)
    ys = [100 * np.mean(by_scale[x]) for x in xs]
    es = [100 * np.std(by_scale[x], ddof=1) if len(by_scale[x]) > 1 else 0.0 for x in xs]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="weighted co-training")
    single = [100 * r["test"][task]["top1"] for n, r in table.items()
              if n.startswith(f"single_{task}_s")]
    if single:
      m, sd = np.mean(single), np.std(single, ddof=1) if len(single) > 1 else 0.0
      ax.axhline(m, color="k", ls="--", lw=1, label="single-task, full budget")
      ax.axhspan(m - sd, m + sd, color="k", alpha=0.08)
    ax.set_title(task)
    ax.set_xlim(0.4, 1.05)
    ax.set_xlabel("fraction of summed single-task steps")
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].set_ylabel("test top-1 (%)")
  np.atleast_1d(axes)[-1].legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=os.path.join(ROOT, "workdirs", "compare"))
  p.add_argument("--seeds", default="0")
  p.add_argument("--eval_every", type=int, default=100)
  p.add_argument("--scale", type=float, default=1.0,
                 help="multiplies every task's steps (configs/demo.py STEPS)")
  p.add_argument("--plan", choices=("all", "claims"), default="all",
                 help="claims: seeds' table of the seed's claims (see runs())")
  p.add_argument("--results", default=os.path.join(ROOT, "docs", "results_cotraining.json"))
  p.add_argument("--accept_sources", default="",
                 help="comma-separated digests whose rows count as measured with today's sources: "
                      "only after showing that the code change between them keeps the numbers "
                      "(tests/test_data_golden.py passes and the model code is unchanged, or a rerun "
                      "of one row is identical)")
  p.add_argument("--only", default="",
                 help="comma-separated run names of the plan to run (default: all of them)")
  args = p.parse_args()
  only = set(filter(None, args.only.split(",")))
  seeds = [int(s) for s in args.seeds.split(",")]
  # Rows already in the results file are kept, and the file is rewritten after every run: a
  # plan of several hours that is stopped keeps what it measured, and a rerun skips those runs.
  # Rows are kept across sessions (the results file is committed; workdirs are not) when they
  # were measured with today's configs and package code (`sources_digest`).
  table = json.load(open(args.results)) if os.path.exists(args.results) else {}
  digest = sources_digest()
  current = {digest, *filter(None, args.accept_sources.split(","))}
  for seed in seeds:
    for name, config, s, scale, overrides in runs(seed, args.plan):
      scale *= args.scale
      if only and name not in only:
        continue
      if table.get(name, {}).get("sources") in current and table[name]["scale"] == scale:
        print(name, "kept (sources", table[name]["sources"] + ")", flush=True)
        continue
      res, secs = run_one(name, config, s, args.out, args.eval_every, scale, overrides)
      table[name] = {"config": config, "seed": s, "scale": scale, "overrides": list(overrides),
                     "sources": digest,
                     "test": res["test"],
                     "params": res["params"],
                     "steps": res["steps"], "steps_per_s": res["steps_per_s"],
                     "wall_s": secs}
      print(name, {t: round(m.get("top1", float("nan")), 4) for t, m in res["test"].items()},
            flush=True)
      with open(args.results + ".tmp", "w") as f:
        json.dump(table, f, indent=2)
      os.replace(args.results + ".tmp", args.results)
  if all(os.path.exists(os.path.join(args.out, f"cotrain_{s}_s{seeds[0]}"))
         for s in ("task_by_task", "weighted")):
    plot(args.out, seeds[0], os.path.join(ROOT, "docs", "cotraining_curves.png"))
  if args.plan == "claims":
    plot_fewer_steps(table, os.path.join(ROOT, "docs", "fewer_steps.png"))
  print("wrote", args.results)


if __name__ == "__main__":
  main()
