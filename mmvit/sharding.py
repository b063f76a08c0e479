"""Meshes and the one ordered list of logical-axis rules.

Parameters and activations carry logical axis names; RULES maps each name to the mesh axes it
may be split over, first match wins, and a mesh axis is used at most once per array. Data
parallel, FSDP and tensor parallel differ only by the mesh shape in the config: a mesh axis of
size 1 shards nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes, in order of preference.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("classes", ("tensor",)),
    ("kv", ()),
    ("tokens", ()),
)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence | None = None
              ) -> jax.sharding.Mesh:
  """`shape` maps mesh axes to sizes; one -1 takes the remaining devices (default data=-1)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = {a: int((shape or {}).get(a, 1)) for a in MESH_AXES}
  if not any(v == -1 for v in shape.values()) and math.prod(shape.values()) == 1:
    shape["data"] = -1
  fixed = math.prod(v for v in shape.values() if v != -1)
  if len(devices) % fixed:
    raise ValueError(f"mesh={shape}: {len(devices)} devices are not divisible by {fixed}")
  shape = {a: (len(devices) // fixed if v == -1 else v) for a, v in shape.items()}
  if math.prod(shape.values()) != len(devices):
    raise ValueError(f"mesh={shape}: needs {math.prod(shape.values())} devices, have "
                     f"{len(devices)}")
  return jax.make_mesh(tuple(shape.values()), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(names: Sequence[str | None], mesh: jax.sharding.Mesh,
                    shape: Sequence[int] | None = None) -> P:
  """Maps logical axis names to a PartitionSpec under RULES, skipping mesh axes of size 1, axes
  already used by an earlier dimension, and splits that do not divide the dimension."""
  rules = dict(RULES)
  used: set[str] = set()
  out = []
  for i, name in enumerate(names):
    axes = []
    size = 1
    for a in rules.get(name, ()) if name else ():
      n = mesh.shape[a]
      if n == 1 or a in used:
        continue
      if shape is not None and shape[i] % (size * n):
        continue
      axes.append(a)
      size *= n
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*out)


def param_shardings(model: nnx.Module, mesh) -> dict:
  """Pure-dict tree of NamedShardings for the model's parameters, from their logical axes."""
  state = nnx.state(model, nnx.Param)

  def one(v):
    names = v.get_metadata().get("logical_axes") or (None,) * v.get_value().ndim
    return NamedSharding(mesh, logical_to_spec(names, mesh, v.get_value().shape))

  tree = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(tree)


def data_parallel_size(mesh) -> int:
  """How many ways a batch is split: the product of the mesh axes the batch is sharded over."""
  return math.prod(mesh.shape[a] for a in dict(RULES)["batch"])


def batch_sharding(mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
