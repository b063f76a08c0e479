"""Orbax checkpoints in <workdir>/checkpoints: model, optimizer and task counts (one pytree),
the grain iterator state of every task, and metadata (step, seed, schedule, config digest).

The schedule and every random key are derived from (seed, step), so restoring the arrays and
the iterator states is enough to continue exactly where a run stopped.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import orbax.checkpoint as ocp


def config_digest(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, enabled: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.enabled = enabled
    self.manager = None
    if enabled:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True)
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step() if self.enabled else None

  def save(self, step: int, state, data_states: dict, meta: dict, force: bool = False) -> bool:
    if not self.enabled:
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_states),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state):
    """Restores onto the shardings of `abstract_state` (a tree of ShapeDtypeStructs)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]

  def wait(self):
    if self.enabled:
      self.manager.wait_until_finished()

  def close(self):
    if self.enabled:
      self.manager.wait_until_finished()
      self.manager.close()


def abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def save_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_json(path: str):
  with open(path) as f:
    return json.load(f)
