r"""Markdown tables from docs/results_cotraining.json and docs/results_av.json:

  uv run python scripts/tables.py
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cotraining(path):
  rows = json.load(open(path))
  tasks = sorted({t for r in rows.values() for t in r["test"]})
  single = {t: r for n, r in rows.items() if n.startswith("single_") for t in r["test"]}
  out = ["| run | " + " | ".join(tasks) + " | params | steps/s |",
         "|---|" + "---|" * (len(tasks) + 2)]
  total_single = sum(single[t]["params"]["total"] for t in tasks if t in single)
  out.append("| single-task (one model per task) | " + " | ".join(
      f"{single[t]['test'][t]['top1']:.4f}" if t in single else "-" for t in tasks) +
      f" | {total_single:,} (sum of {len(single)}) | - |")
  for name, r in rows.items():
    if name.startswith("cotrain_"):
      sched = name[len("cotrain_"):].rsplit("_s", 1)[0]
      out.append(f"| co-training, {sched} | " + " | ".join(
          f"{r['test'][t]['top1']:.4f}" for t in tasks) +
          f" | {r['params']['total']:,} | {r['steps_per_s']:.1f} |")
  return "\n".join(out)


def av(path):
  rows = json.load(open(path))
  out = ["| run | config | steps | test | 4-view test | without audio | without video |",
         "|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    if all(isinstance(v, dict) for v in r["test"].values()):  # several tasks (pretraining)
      tests = ", ".join(f"{t} top1 {v['top1']:.4f}" for t, v in r["test"].items())
      out.append(f"| {name} | `{r['config']}` | {r['steps']} | {tests} | - | - | - |")
      continue
    m = "mAP" if "mAP" in r["test"] else "top1"
    cell = lambda k: f"{r[k][m]:.4f}" if k in r else "-"
    out.append(f"| {name} | `{r['config']}` | {r['steps']} | {m} {r['test'][m]:.4f} | "
               f"{cell('views4')} | {cell('without_audio')} | {cell('without_video')} |")
  return "\n".join(out)


if __name__ == "__main__":
  docs = os.path.join(ROOT, "docs")
  for name, fn in (("results_cotraining.json", cotraining), ("results_av.json", av)):
    path = os.path.join(docs, name)
    if os.path.exists(path):
      print(fn(path), end="\n\n")
