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


def claims(path):
  """Mean ± std over seeds per run and task (top-1, %), and each co-trained row's difference
  from single-task with the seed-to-seed spread of that difference (std of a difference of
  means: sqrt(s_a^2/n_a + s_b^2/n_b)); 'beyond spread' when the difference exceeds twice it."""
  import numpy as np  # noqa: PLC0415
  rows = json.load(open(path))
  groups: dict[str, dict[str, list[float]]] = {}
  for name, r in rows.items():
    base = name.rsplit("_s", 1)[0]
    for t, m in r["test"].items():
      if "top1" in m:
        key = f"single_{t}{base.split(t, 1)[1]}" if base.startswith("single_") else base
        groups.setdefault(key, {}).setdefault(t, []).append(100 * m["top1"])
  tasks = sorted({t for g in groups.values() for t in g})

  def cell(v):
    return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f} (n={len(v)})" if len(v) > 1 else (
        f"{v[0]:.1f} (n=1)")
  single = {t: groups.get(f"single_{t}", {}).get(t) for t in tasks}
  out = ["| run | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks),
         "| single-task | " + " | ".join(cell(single[t]) if single[t] else "-" for t in tasks)
         + " |"]
  for key, g in groups.items():
    if key.startswith("single_") and key[len("single_"):] in tasks:
      continue
    cells = []
    for t in tasks:
      if t not in g:
        cells.append("-")
        continue
      # A low-data co-trained row is compared with the task alone on the same slice.
      lowdata = groups.get(f"single_{t}_lowdata", {}).get(t) if key.endswith("_lowdata") else None
      ref = None if key.startswith("single_") else lowdata or single[t]
      c = cell(g[t])
      if ref and len(ref) > 1 and len(g[t]) > 1:
        d = np.mean(g[t]) - np.mean(ref)
        sd = np.sqrt(np.var(g[t], ddof=1) / len(g[t]) + np.var(ref, ddof=1) / len(ref))
        c += f"; {d:+.1f} ± {sd:.1f}" + (" beyond spread" if abs(d) > 2 * sd else "")
      cells.append(c)
    out.append(f"| {key} | " + " | ".join(cells) + " |")
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
  for name, fn in (("results_cotraining.json", cotraining), ("results_claims.json", claims),
                   ("results_av.json", av)):
    path = os.path.join(docs, name)
    if os.path.exists(path):
      print(fn(path), end="\n\n")
