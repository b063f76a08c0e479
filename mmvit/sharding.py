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


def process_rows(mesh, rows: int) -> tuple[int, int]:
  """(index, count): this process's devices hold rows [index * rows // count, (index + 1) *
  rows // count) of a global batch of `rows` under the batch sharding, so it reads and feeds
  exactly those (processes that hold the same rows, as across a tensor axis, read the same).
  (0, 1) for one process. The one place that says which examples a host reads."""
  held = batch_sharding(mesh, 1).addressable_devices_indices_map((rows,)).values()
  spans = sorted({(s[0].start or 0, rows if s[0].stop is None else s[0].stop) for s in held})
  lo, hi = spans[0][0], spans[-1][1]
  size = hi - lo
  contiguous = all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))
  if not contiguous or rows % size or lo % size:
    raise ValueError(f"mesh {dict(mesh.shape)}: the devices of process {jax.process_index()} "
                     f"hold rows {spans} of a batch of {rows}, expected one block of "
                     "rows; order the mesh's devices by process")
  return lo // size, rows // size


def shard_batch(batch: dict[str, np.ndarray], mesh, rows: int | None = None
                ) -> dict[str, jax.Array]:
  """The global arrays of a batch from this process's rows of it (`process_rows`); `rows` is
  the global batch size (several processes: required)."""
  if jax.process_count() == 1:
    return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(
      batch_sharding(mesh, np.ndim(v)), np.asarray(v), (rows,) + np.shape(v)[1:])
          for k, v in batch.items()}


def to_host(tree):
  """Global arrays as whole numpy arrays on every process (several processes: gathered)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
