r"""A task's inference function as a serialised jax.export artifact.

  python -m mmvit.export --workdir=RUN --task=T --out=FILE [--platforms=cpu,cuda,tpu]

The exported function maps the task's preprocessed inputs (float32, batch first; the eval
pp's trailing value_range / normalize already applied) to its logits, one array per label key,
averaged over streams as the run's evaluation does. Parameters are embedded: the file is all a
server needs. The batch dimension is symbolic (`b`), so one file serves any batch size.
FILE.json beside it lists the inputs, outputs, label names and platforms.

A process that imports only jax and numpy runs it:

  exp = jax.export.deserialize(open(FILE, "rb").read())
  logits = exp.call(video_batch)          # inputs in the order FILE.json lists them
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from mmvit import checkpointing, inference

PLATFORMS = ("cpu", "cuda", "tpu")


class ExportError(ValueError):
  """A task that cannot be exported: one line."""


def export_task(loaded: inference.Loaded, task: str, platforms=PLATFORMS):
  """(jax.export.Exported, signature dict) of `task`; platforms whose lowering fails from this
  machine are dropped (and named in the signature)."""
  shapes = loaded.input_shapes(task)
  keys = list(shapes)
  labels = list(loaded.task(task)["head"]["labels"])
  fn, state = inference.logits_fn(loaded, task)
  state = jax.tree.map(jnp.asarray, state)

  def serve(*inputs):
    logits = fn(state, dict(zip(keys, inputs)))
    return tuple(logits[k] for k in labels)

  try:
    (b,) = jax.export.symbolic_shape("b")
  except Exception as e:  # noqa: BLE001
    raise ExportError(f"jax.export symbolic shapes unavailable: {e}") from None
  args = [jax.ShapeDtypeStruct((b,) + tuple(shapes[k]), jnp.float32) for k in keys]
  skipped, lowers = {}, []
  for p in platforms:  # each alone first: a failure is recorded under its own name
    try:
      jax.export.export(jax.jit(serve), platforms=(p,))(*args)
      lowers.append(p)
    except Exception as e:  # noqa: BLE001  (a backend's lowering rules missing here)
      skipped[p] = " ".join(str(e).split())[:200]
  if not lowers:
    p, why = next(iter(skipped.items()))
    raise ExportError(f"task {task!r} exports for none of {', '.join(platforms)} ({p}: {why})")
  exported = jax.export.export(jax.jit(serve), platforms=tuple(lowers))(*args)
  names = loaded.task(task).get("label_names") or {}
  signature = {
      "task": task, "workdir": os.path.abspath(loaded.workdir), "step": loaded.step,
      "inputs": [{"key": k, "shape": ["b", *shapes[k]], "dtype": "float32"} for k in keys],
      "outputs": [{"label": k, "shape": ["b", c], "names": names.get(k)}
                  for k, c in zip(labels, loaded.task(task)["head"]["num_classes"])],
      "head": loaded.task(task)["head"]["kind"],
      # The run's test averaged the logits of this many views of each input (one call each).
      "eval_views": int(loaded.task(task).get("eval_views") or 1),
      "platforms": list(exported.platforms), "not_exported_for": skipped,
      "eval_pp": loaded.task(task).get("pp_eval"),
      "eval_affine": loaded.task(task).get("eval_affine"),
  }
  return exported, signature


def write(out: str, exported, signature: dict) -> int:
  """Writes FILE and FILE.json atomically; returns the file's size in bytes."""
  data = exported.serialize()
  for path, payload, mode in ((out, data, "wb"),
                              (out + ".json", json.dumps(signature, indent=1), "w")):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, mode) as f:
      f.write(payload)
    os.replace(tmp, path)
  return len(data)


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415
  p = argparse.ArgumentParser(prog="python -m mmvit.export", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--task", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--platforms", default=",".join(PLATFORMS))
  a = p.parse_args(argv)
  t0 = time.perf_counter()
  try:
    platforms = [x for x in a.platforms.split(",") if x]
    if not platforms or any(x not in PLATFORMS for x in platforms):
      raise ExportError(f"--platforms={a.platforms}: expected some of {', '.join(PLATFORMS)}")
    if os.path.exists(a.out):
      raise ExportError(f"--out={a.out} exists: choose a new file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
      raise ExportError(f"--out={a.out}: its directory does not exist")
    loaded = inference.load(a.workdir, a.step)
    exported, sig = export_task(loaded, a.task, platforms)
    size = write(a.out, exported, sig)
  except (ExportError, inference.InferenceError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {a.out}: task {a.task}, {size:_} bytes, platforms {', '.join(sig['platforms'])}"
        + (f" (not {', '.join(sig['not_exported_for'])})" if sig["not_exported_for"] else "")
        + f", {time.perf_counter() - t0:.1f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
