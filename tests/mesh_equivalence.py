"""Run by test_sharding.py in a subprocess with 8 simulated CPU devices: trains the tiny config
for a few steps on several meshes and prints the per-step losses and a parameter checksum."""

import json
import os
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
          "data=2,fsdp=2,tensor=2": dict(data=2, fsdp=2, tensor=2)}


def main():
  out = {}
  for name, mesh in MESHES.items():
    cfg = tiny_config("weighted", steps=3)
    cfg.mesh = mesh or dict(data=1)
    devices = jax.devices()[:1] if mesh is None else jax.devices()
    exp = train.build(cfg, devices=devices, data=FakeData())
    iters = train.train_iterators(exp)
    state, losses = exp.state, []
    with jax.set_mesh(exp.mesh):
      for step in range(exp.schedule.num_steps):
        (task,) = exp.schedule.tasks_at(step)
        batch = train.sharding.shard_batch(next(iters[task]), exp.mesh)
        state, m = exp.train_steps[task](state, batch, jnp.int32(step))
        losses.append(float(m["loss"]))
    specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state["params"])})
    out[name] = {"losses": losses,
                 "params": [float(np.asarray(x, np.float64).sum())
                            for x in jax.tree.leaves(state["params"])],
                 "specs": specs, "devices": len(exp.mesh.devices.flat)}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
