"""Run by test_sharding.py in a subprocess with 8 simulated CPU devices: trains the tiny config
for a few steps on several meshes and saves, per mesh, the per-step losses and the final
parameters to an .npz file.

  python tests/mesh_equivalence.py OUT.npz [--break=labels|param_shards]

--break injects a sharding bug into the `data=4,tensor=2` run so that the test can show that
its comparison catches one: `labels` rotates the device shards of the inputs against those of
the labels (a batch assembled in the wrong order across devices or hosts); `param_shards`
swaps the two tensor-parallel halves of one MLP kernel (shards restored in the wrong order).
"""

import os
import re
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from tests import jax_cache  # noqa: E402

jax_cache.enable()
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmvit import train  # noqa: E402
from tests.fakes import FakeData  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

MESHES = {"1 device": None, "data=8": dict(data=8), "data=4,tensor=2": dict(data=4, tensor=2),
          "data=2,fsdp=2,tensor=2": dict(data=2, fsdp=2, tensor=2),
          # The rules from the config: a preset, and one name overridden (attention heads
          # stay whole: its parameters and activations are not split over tensor, the MLP's are).
          "fsdp=4,tensor=2 preset fsdp": dict(fsdp=4, tensor=2, sharding=dict(preset="fsdp")),
          "data=4,tensor=2 heads->()": dict(data=4, tensor=2, sharding=dict(rules=dict(heads=())))}
BROKEN = "data=4,tensor=2"


def equivalence_config():
  """The tiny config (dropout and stochastic depth on, so random bits must not depend on the
  mesh either) with SGD: its update is linear in the gradient, so a rounding difference in a
  gradient stays a rounding difference in the parameters. Adam divides by sqrt(v) and turns
  the rounding noise of a zero gradient (the attention key bias: softmax ignores a shift shared
  by all keys) into a full-size step of random sign."""
  cfg = tiny_config("weighted", steps=3)
  cfg.optimizer = dict(name="sgd", lr=0.1, momentum=0.9, warmup_steps=2, lr_schedule="cosine",
                       weight_decay=1e-4, grad_clip_norm=1.0)
  return cfg


def rotate_inputs(batch, n):
  """The inputs' n row blocks rotated by one against the labels'."""
  out = dict(batch)
  for k, v in batch.items():
    if np.issubdtype(v.dtype, np.floating):
      out[k] = np.roll(v, v.shape[0] // n, axis=0)
  return out


def swap_tensor_halves(params):
  """The first MLP kernel with its two halves over the `mlp` axis swapped."""
  block = params["shared"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]
  k = np.asarray(block["kernel"])
  half = k.shape[1] // 2
  block["kernel"] = jax.device_put(np.concatenate([k[:, half:], k[:, :half]], 1),
                                   block["kernel"].sharding)
  return params


def run(mesh, broken: str | None):
  cfg = equivalence_config()
  mesh = dict(mesh or {})
  cfg.sharding = mesh.pop("sharding", {})
  cfg.mesh = mesh or dict(data=1)
  devices = jax.devices()[:1] if not mesh else jax.devices()
  exp = train.build(cfg, devices=devices, data=FakeData())
  iters = train.train_iterators(exp)
  state, losses = exp.state, []
  if broken == "param_shards":
    state = {**state, "params": swap_tensor_halves(state["params"])}
  with jax.set_mesh(exp.mesh):
    for step in range(exp.schedule.num_steps):
      (task,) = exp.schedule.tasks_at(step)
      host = next(iters[task])
      if broken == "labels":
        host = rotate_inputs(host, exp.mesh.shape["data"])
      batch = train.sharding.shard_batch(host, exp.mesh)
      state, m = exp.train_steps[task](state, batch, jnp.int32(step))
      losses.append(float(m["loss"]))
  leaves = jax.tree_util.tree_leaves_with_path(state["params"])
  specs = sorted({str(x.sharding.spec) for _, x in leaves})
  # What the compiled step asks of its activations: the sharding constraints in its HLO.
  with jax.set_mesh(exp.mesh):  # the last step's task and batch
    hlo = exp.train_steps[task].lower(state, batch, jnp.int32(0)).as_text()
  found = re.findall(r"sdy\.sharding_constraint %\S+ <@mesh, (\[.*?\])> : tensor<(\S+?)x?f32>",
                     hlo)
  specs += sorted({f"constraint {spec} on {shape}" for spec, shape in found})
  return losses, {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}, specs


def main():
  out_path = sys.argv[1]
  broken = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--break=")), None)
  arrays = {}
  for name, mesh in MESHES.items():
    if broken and name not in ("1 device", BROKEN):
      continue
    losses, params, specs = run(mesh, broken if name == BROKEN else None)
    arrays[f"{name}|losses"] = np.asarray(losses, np.float32)
    arrays[f"{name}|specs"] = np.asarray(specs)
    arrays[f"{name}|devices"] = np.asarray(1 if mesh is None else len(jax.devices()))
    for path, x in params.items():
      arrays[f"{name}|param|{path}"] = x
  np.savez(out_path, **arrays)


if __name__ == "__main__":
  main()
