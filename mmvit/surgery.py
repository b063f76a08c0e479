r"""Model surgery for deployment (PolyViT claims 14-20): keep what some tasks read, drop the rest.

  python -m mmvit.surgery --workdir=RUN --keep=modality:image --out=DIR
  python -m mmvit.surgery --workdir=RUN --keep=task:image,task:video_digit --out=DIR

`modality:<m>` keeps every task that reads only kept modalities; `task:<t>` keeps that task (and
so its modalities). What a kept task reads stays: tokenizers and adapters of its modalities, the
shared blocks, stream encoders, its bottleneck tokens and its head. The result is a checkpoint in
DIR/checkpoints/<step> that describes the smaller model: `mmvit.inference.load(DIR)` serves it
and a run's `init_from=dict(workdir=DIR, groups=...)` fine-tunes from it. The source workdir is
only read.
"""

from __future__ import annotations

import json
import os
import sys


from mmvit import checkpointing, inference
from mmvit.models.model import count, task_groups


class SurgeryError(ValueError):
  """A --keep or --out that cannot be honoured: one line."""


def kept_tasks(description: dict, keep: str) -> list[str]:
  """Tasks kept by `keep` ('modality:image,task:audio'), in the run's order."""
  order = [t for t in description.get("task_order", ()) if t in description["tasks"]]
  tasks = {t: description["tasks"][t] for t in order + sorted(
      set(description["tasks"]) - set(order))}
  modalities = set(description["tokenizers"])
  mods, named = set(), []
  for item in [k.strip() for k in keep.split(",") if k.strip()]:
    kind, _, name = item.partition(":")
    if kind == "modality":
      if name not in modalities:
        raise SurgeryError(f"--keep={keep}: the run has no modality {name!r}; it has "
                           f"{', '.join(sorted(modalities))}")
      mods.add(name)
    elif kind == "task":
      if name not in tasks:
        raise SurgeryError(f"--keep={keep}: the run has no task {name!r}; it has "
                           f"{', '.join(tasks)}")
      named.append(name)
    else:
      raise SurgeryError(f"--keep={keep}: {item!r}: expected modality:<name> or task:<name>")
  out = [t for t, d in tasks.items()
         if t in named or (mods and set(d["modalities"]) <= mods)]
  if not out:
    raise SurgeryError(f"--keep={keep} keeps no task: no task reads only modalities "
                       f"{', '.join(sorted(mods))} (tasks: " + "; ".join(
                           f"{t} reads {'+'.join(d['modalities'])}" for t, d in tasks.items())
                       + ")")
  return out


def cut(loaded: inference.Loaded, keep: str) -> tuple[dict, dict]:
  """(description, {group: params}) of the smaller model."""
  from flax import nnx  # noqa: PLC0415

  from mmvit.models.model import from_description, split_groups  # noqa: PLC0415
  desc = loaded.description
  tasks = kept_tasks(desc, keep)
  mods = sorted({m for t in tasks for m in desc["tasks"][t]["modalities"]})
  new = {**desc, "tokenizers": {m: desc["tokenizers"][m] for m in mods},
         "tasks": {t: desc["tasks"][t] for t in tasks}, "task_order": tasks}
  # Exactly the groups the smaller model has (a stream encoder only where a kept fused task
  # runs one), each of them one the kept tasks read.
  small = nnx.eval_shape(lambda: from_description(new))
  groups = set(split_groups(nnx.to_pure_dict(nnx.state(small, nnx.Param))))
  read = set()
  for t in tasks:
    read |= set(task_groups(loaded.groups, tuple(desc["tasks"][t]["modalities"]), t))
  kept = {g: p for g, p in loaded.groups.items() if g in groups & read}
  return new, kept


def write(out: str, step: int, description: dict, groups: dict, extra: dict) -> str:
  """A checkpoint of parameters only: <out>/checkpoints/<step>/{state, meta}."""
  import orbax.checkpoint as ocp  # noqa: PLC0415
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise SurgeryError(f"--out={out} exists and is not an empty directory: choose a new one")
  step_dir = os.path.join(os.path.abspath(out), "checkpoints", str(step))
  os.makedirs(step_dir)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(os.path.join(step_dir, "state"), {"params": groups})
  os.makedirs(os.path.join(step_dir, "meta"))
  with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
    json.dump({"step": step, "model": description, **extra}, f)
  return step_dir


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415
  p = argparse.ArgumentParser(prog="python -m mmvit.surgery", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--keep", required=True, help="modality:<m> and/or task:<t>, comma-separated")
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None)
  a = p.parse_args(argv)
  try:
    loaded = inference.load(a.workdir, a.step)
    desc, groups = cut(loaded, a.keep)
    before, after = count(loaded.groups), count(groups)
    step_dir = write(a.out, loaded.step, desc, groups, {
        "surgery": {"source": os.path.abspath(a.workdir), "step": loaded.step, "keep": a.keep,
                    "parameters_before": before, "parameters_after": after}})
  except (inference.InferenceError, SurgeryError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"kept tasks {', '.join(desc['tasks'])} (groups {', '.join(sorted(groups))})")
  print(f"parameters: {before:_} -> {after:_} ({after / before:.3f})")
  print(f"wrote {step_dir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

