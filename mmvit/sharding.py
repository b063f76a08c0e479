"""Meshes and the one ordered list of logical-axis rules.

Parameters and activations carry logical axis names; the rules map each name to the mesh axes
it may be split over, first match wins, and a mesh axis is used at most once per array. Data
parallel, FSDP and tensor parallel differ by the mesh shape and the rule preset in the config
(`sharding.preset`, with `sharding.rules` overriding single names): a mesh axis of size 1
shards nothing.

The rules in force are a context (`using_rules`): the experiment builds shardings under the
config's rules, and the compiled steps trace under them, so activation constraints inside the
model (`constrain`) read the same names the parameters do.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes, in order of preference: the default preset (FSDP + tensor).
# Activations: batch, tokens, embed, mlp, heads; parameters: embed, mlp, heads, kv, classes.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("classes", ("tensor",)),
    ("kv", ()),
    ("tokens", ()),
    ("layers", ()),  # the leading axis of scanned (stacked) blocks: never split
)
LOGICAL_NAMES = tuple(name for name, _ in RULES)

# Named presets: what each shards beside the batch. In all of them the batch is split over
# data and fsdp (FSDP is data parallel for activations).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "data_parallel": {"embed": (), "mlp": (), "heads": (), "classes": ()},
    "fsdp": {"mlp": (), "heads": (), "classes": ()},
    "fsdp_tensor": {},
}

_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("mmvit_rules", default=RULES)


def make_rules(preset: str = "fsdp_tensor", overrides: dict | None = None) -> tuple:
  """The rule list of a preset with single names overridden ({name: mesh axes}), in RULES'
  order (a config's `sharding`)."""
  table = dict(RULES)
  table.update(PRESETS[preset])
  table.update({k: (v,) if isinstance(v, str) else tuple(v) for k, v in (overrides or {}).items()})
  return tuple((name, table[name]) for name in LOGICAL_NAMES)


def current_rules() -> tuple:
  return _ACTIVE.get()


@contextlib.contextmanager
def using_rules(rules: tuple):
  token = _ACTIVE.set(tuple(rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence | None = None,
              dcn: dict[str, int] | None = None) -> jax.sharding.Mesh:
  """`shape` maps mesh axes to sizes inside a slice or host group (ICI); one -1 takes the
  remaining devices (default data=-1). `dcn` multiplies axes across slices (Cloud TPU
  multislice) or, where devices have no slice, across processes (GPU nodes): an axis's size
  is then shape x dcn, its outer factor over the slower network."""
  devices = list(devices if devices is not None else jax.devices())
  dcn = {a: int((dcn or {}).get(a, 1)) for a in MESH_AXES}
  granules = math.prod(dcn.values())
  if len(devices) % granules:
    raise ValueError(f"mesh_dcn={dcn}: {len(devices)} devices do not split into {granules} "
                     "slices or processes")
  per_granule = len(devices) // granules
  shape = {a: int((shape or {}).get(a, 1)) for a in MESH_AXES}
  if not any(v == -1 for v in shape.values()) and math.prod(shape.values()) == 1:
    shape["data"] = -1
  fixed = math.prod(v for v in shape.values() if v != -1)
  if per_granule % fixed:
    raise ValueError(f"mesh={shape}: {per_granule} devices are not divisible by {fixed}")
  shape = {a: (per_granule // fixed if v == -1 else v) for a, v in shape.items()}
  if math.prod(shape.values()) != per_granule:
    raise ValueError(f"mesh={shape}: needs {math.prod(shape.values())} devices, have "
                     f"{per_granule}" + (f" per slice or process ({len(devices)} in all)"
                                         if granules > 1 else ""))
  types = (AxisType.Auto,) * len(MESH_AXES)
  if granules == 1:
    return jax.make_mesh(tuple(shape.values()), MESH_AXES, axis_types=types, devices=devices)
  from jax.experimental import mesh_utils  # noqa: PLC0415
  # TPU multislice: the slices; else (GPU nodes, CPU processes: one "slice") the processes.
  slices = {getattr(d, "slice_index", None) for d in devices}
  by_slice = len(slices) > 1
  n = len(slices) if by_slice else len({d.process_index for d in devices})
  if n != granules:
    raise ValueError(f"mesh_dcn={dcn}: needs {granules} slices or processes, the run has {n}")
  grid = mesh_utils.create_hybrid_device_mesh(
      tuple(shape.values()), tuple(dcn.values()), devices, process_is_granule=not by_slice)
  return jax.sharding.Mesh(grid, MESH_AXES, axis_types=types)


def logical_to_spec(names: Sequence[str | None], mesh: jax.sharding.Mesh,
                    shape: Sequence[int] | None = None, rules: tuple | None = None) -> P:
  """Maps logical axis names to a PartitionSpec under the rules in force, skipping mesh axes
  of size 1, axes already used by an earlier dimension, and splits that do not divide the
  dimension."""
  rules = dict(current_rules() if rules is None else rules)
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
  return math.prod(mesh.shape[a] for a in dict(current_rules())["batch"])


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """An activation's sharding by logical names (inside a compiled step under a mesh); where
  no mesh is set (a model called on its own) it is left to XLA."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh, x.shape))


def state_report(tree) -> dict:
  """Bytes of a tree of arrays: in all, on the device holding most, and replicated ones."""
  total = replicated = 0
  per_device: dict = {}
  for x in jax.tree.leaves(tree):
    total += x.nbytes
    if x.sharding.is_fully_replicated:
      replicated += x.nbytes
    for s in x.addressable_shards:
      per_device[s.device] = per_device.get(s.device, 0) + s.data.nbytes
  return {"bytes": total, "per_device_bytes": max(per_device.values(), default=0),
          "fraction_replicated": replicated / total if total else 0.0}


def batch_sharding(mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_rows(mesh, rows: int) -> tuple[tuple[int, ...], int]:
  """(blocks, count): a batch of `rows` splits into `count` equal blocks of rows under the batch
  sharding, and this process's devices hold `blocks` of them (ascending), so it reads and feeds
  exactly those, concatenated in that order (as `jax.make_array_from_process_local_data` lays
  them out). Usually one block per process; a mesh whose data axis interleaves processes' devices
  (TPU pod rings) gives several. Processes that hold the same rows, as across a tensor axis, read
  the same. ((0,), 1) for one process. The one place that says which examples a host reads."""
  held = batch_sharding(mesh, 1).addressable_devices_indices_map((rows,)).values()
  spans = sorted({(s[0].start or 0, rows if s[0].stop is None else s[0].stop) for s in held})
  every = batch_sharding(mesh, 1).devices_indices_map((rows,)).values()
  size = min((s[0].stop or rows) - (s[0].start or 0) for s in every)
  if any(lo % size or (hi - lo) % size for lo, hi in spans) or rows % size:
    raise ValueError(f"mesh {dict(mesh.shape)}: the devices of process {jax.process_index()} "
                     f"hold rows {spans} of a batch of {rows}, expected blocks of {size} rows")
  held_blocks = {b for lo, hi in spans for b in range(lo // size, hi // size)}
  count = rows // size
  # The coarsest aligned blocks that are wholly this process's (one per process, usually).
  m = max(m for m in range(1, count + 1) if count % m == 0 and held_blocks == {
      c * m + j for c in {b // m for b in held_blocks} for j in range(m)})
  blocks, count = sorted({b // m for b in held_blocks}), count // m
  return tuple(blocks), count


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
