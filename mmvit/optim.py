"""Optimizers per parameter group, and learning rates per task.

Each parameter group ("shared", "tokenizers.<m>", "adapters.<m>", "heads.<t>") has its own
optimizer state and transform: a group only one task reads takes that task's momentum, Adam
betas and weight decay where the task sets them (`group_settings`). The group transform is lr-free (momentum or Adam moments, then decoupled weight
decay); the step multiplies its output by the learning rate of the task being trained, evaluated
at that task's own step count. Hence:
  * a step of task A touches only A's groups: B's head gets no momentum, decay or count;
  * the per-task lr, warm-up and schedule apply to everything A's step updates;
  * in the accumulated schedule (one update from every task) a group read by exactly one task
    uses that task's lr; groups read by several tasks (the shared encoder, a tokenizer two tasks
    share) use the base optimizer.lr schedule over the global step. Loss weights scale each
    task's gradient before the sum. Global-norm clipping is over all gradients of the update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmvit.config import TASK_OPTIMIZER_FIELDS


def group_settings(o, tasks_cfg, owners: dict[str, tuple[str, ...]]
                   ) -> dict[str, ml_collections.ConfigDict]:
  """Group -> its optimizer settings (`o` with the task's overrides where exactly one task,
  `owners[group]`, reads the group); groups several tasks read keep `o`."""
  out = {}
  for g, ts in owners.items():
    over = {f: tasks_cfg[ts[0]][f] for f in TASK_OPTIMIZER_FIELDS
            if len(ts) == 1 and tasks_cfg[ts[0]].get(f) is not None}
    out[g] = ml_collections.ConfigDict({**o.to_dict(), **over}) if over else o
  return out


def group_transform(o) -> optax.GradientTransformation:
  """The lr-free part of the optimizer for one group (`o`: a completed config's optimizer).
  The step applies -lr afterwards."""
  wd = float(o.weight_decay or 0.0)
  # Decay matrices and kernels only; biases, norms, position embeddings and class tokens keep
  # their values (they are vectors or carry a leading singleton axis).
  mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2 and p.shape[0] != 1, params)
  if o.name == "sgd":
    base = optax.trace(decay=float(o.momentum), nesterov=bool(o.nesterov))
  else:
    base = optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2))
  if not wd:
    return base
  if o.name == "sgd":  # coupled L2, as SGD users expect: decay goes through momentum
    return optax.chain(optax.add_decayed_weights(wd, mask), base)
  return optax.chain(base, optax.add_decayed_weights(wd, mask))


def lr_at(count: jax.Array, base_lr, warmup, total, kind: str) -> jax.Array:
  """Linear warm-up over `warmup` steps, then constant / linear / cosine decay to 0 at `total`.
  `base_lr`, `warmup` and `total` may be traced (tasks that share a step pass their own)."""
  count = jnp.asarray(count, jnp.float32)
  warmup = jnp.asarray(warmup, jnp.float32)
  warm = jnp.where(warmup > 0, jnp.minimum(1.0, (count + 1.0) / jnp.maximum(warmup, 1.0)), 1.0)
  frac = jnp.clip((count - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  if kind == "cosine":
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  elif kind == "linear":
    decay = 1.0 - frac
  else:
    decay = 1.0
  return base_lr * warm * decay


def clip_by_global_norm(grads, max_norm: float | None):
  norm = optax.tree.norm(grads)
  if not max_norm:
    return grads, norm
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-12))
  return jax.tree.map(lambda g: g * scale, grads), norm
