r"""Per-device memory and step time of one model under data parallel, FSDP and FSDP x tensor,
on 8 simulated CPU devices, measured in one run and printed as ratios to data parallel:

  uv run python scripts/bench_sharding.py [--width=256 --depth=4 --batch=64 --steps=10]

For each mesh: per-device bytes of parameters and of optimizer state (the shards one device
holds), the fraction of those bytes that are replicated, the compiled train step's memory
(`compiled.memory_analysis()`: arguments, outputs, temporaries), and the median step time.
The model is a ViT on the digits images (image task only; inputs are random arrays of its
shape), so nothing is read from disk beyond the dataset's info.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mmvit import sharding, train  # noqa: E402

MESHES = {"data parallel (data=8)": dict(data=8), "FSDP (fsdp=8)": dict(fsdp=8),
          "FSDP x tensor (fsdp=4, tensor=2)": dict(fsdp=4, tensor=2)}


def config(args, mesh):
  c = ml_collections.ConfigDict()
  c.model = dict(width=args.width, depth=args.depth, num_heads=args.heads,
                 mlp_dim=4 * args.width, pool="token",
                 tokenizers=dict(image=dict(kind="image", patch=(4, 4))))
  c.tasks = dict(image=dict(dataset="digits_image", modalities="image", labels="label",
                            batch_size=args.batch, steps=100))
  c.schedule = dict(kind="weighted")
  c.optimizer = dict(name="adamw", lr=1e-3)
  c.mesh = mesh
  return c


def state_bytes(tree) -> tuple[int, int, int]:
  """(bytes one device holds, logical bytes, bytes of replicated arrays)."""
  held = total = replicated = 0
  for x in jax.tree.leaves(tree):
    shard = x.addressable_shards[0].data
    held += shard.nbytes
    total += x.nbytes
    if x.sharding.is_fully_replicated:
      replicated += x.nbytes
  return held, total, replicated


def measure(args, mesh):
  exp = train.build(config(args, mesh))
  (task,) = exp.tasks
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((args.batch, 32, 32, 1)).astype(np.float32),
           "label": rng.integers(0, 10, args.batch).astype(np.int32)}
  batch = sharding.shard_batch(batch, exp.mesh)
  step = exp.train_steps[task.name]
  out = {}
  for part in ("params", "opt"):
    held, total, rep = state_bytes(exp.state[part])
    out[part] = {"per_device_bytes": held, "total_bytes": total, "replicated_bytes": rep}
  with jax.set_mesh(exp.mesh):
    compiled = step.lower(exp.state, batch, jnp.int32(0)).compile()
    mem = compiled.memory_analysis()
    out["compiled"] = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
                       ("argument", "output", "temp", "generated_code")}
    state, times = exp.state, []
    for _ in range(args.steps + 2):
      t0 = time.perf_counter()
      state, m = step(state, batch, jnp.int32(0))
      jax.block_until_ready(m["loss"])
      times.append(time.perf_counter() - t0)
  out["step_s"] = statistics.median(times[2:])
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--out", default=None, help="a JSON file for the figures")
  args = p.parse_args()
  res = {name: measure(args, mesh) for name, mesh in MESHES.items()}
  base = res["data parallel (data=8)"]
  print(f"{jax.device_count()} x {jax.devices()[0].platform} devices; ViT width {args.width}, "
        f"depth {args.depth}, batch {args.batch}; ratios to data parallel")
  print(f"{'mesh':34s} {'params/dev':>11s} {'opt/dev':>9s} {'replicated':>10s} "
        f"{'step temp':>10s} {'step s':>8s} {'steps/s':>8s}")
  for name, r in res.items():
    held = r["params"]["per_device_bytes"] + r["opt"]["per_device_bytes"]
    rep = (r["params"]["replicated_bytes"] + r["opt"]["replicated_bytes"]) / (
        r["params"]["total_bytes"] + r["opt"]["total_bytes"])
    r["ratios"] = {
        "params_per_device": r["params"]["per_device_bytes"] / base["params"]["per_device_bytes"],
        "opt_per_device": r["opt"]["per_device_bytes"] / base["opt"]["per_device_bytes"],
        "state_per_device": held / (base["params"]["per_device_bytes"]
                                    + base["opt"]["per_device_bytes"]),
        "temp": r["compiled"]["temp"] / max(base["compiled"]["temp"], 1),
        "step_time": r["step_s"] / base["step_s"]}
    r["fraction_replicated"] = rep
    print(f"{name:34s} {r['ratios']['params_per_device']:10.3f}x "
          f"{r['ratios']['opt_per_device']:8.3f}x {rep:10.3f} {r['ratios']['temp']:9.3f}x "
          f"{r['ratios']['step_time']:7.2f}x {1 / r['step_s']:8.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"machine": f"{os.uname().machine}, {os.cpu_count()} cores", "args": vars(args),
                 "meshes": res}, f, indent=1)


if __name__ == "__main__":
  main()
