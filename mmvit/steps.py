"""The step functions: loss, gradients, the guarded update, the accumulated update, evaluation.

Each is a module-level function of a `StepContext` (what every step of a run shares: the model
graph, the optimizer, which groups each task's step updates, the lr horizons) and its arrays;
`jit_*` below are the thin wrappers that bind a context and a task and jit them with the run's
shardings. Nothing random is carried in the state: every key is derived from (seed, step, task).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmvit import optim, sharding, tasks as tasks_lib
from mmvit.models import heads as heads_lib
from mmvit.models.model import average_logits, join_groups


def derive_key(seed: int, step, task_index: int) -> jax.Array:
  """Every random key is fold_in(seed, step, task): nothing random is carried in the state."""
  key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.random.fold_in(key, task_index)


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
  """What the steps of one run share. Hashable by identity, so jit may close over it."""
  graphdef: nnx.GraphDef
  tx: dict[str, optax.GradientTransformation]  # group -> its transform (optim.group_settings)
  tasks: tuple[tasks_lib.Task, ...]
  groups: dict[str, tuple[str, ...]]  # task -> the groups its step updates
  horizon: dict[str, int]             # task -> the batches its lr schedule spans
  seed: int
  grad_clip: float | None
  base_lr: float                      # optimizer.lr over the global step (accumulated)
  warmup_steps: int
  lr_schedule: str
  num_steps: int
  traces: dict[str, int]              # how many times each step function was traced
  rules: tuple = sharding.RULES       # logical-axis rules the steps trace under (activations)

  def count_trace(self, name: str) -> None:
    self.traces[name] = self.traces.get(name, 0) + 1

  @functools.cached_property
  def owners(self) -> dict[str, tuple[str, ...]]:
    """Group -> the tasks that read it."""
    out: dict[str, list[str]] = {}
    for t in self.tasks:
      for g in self.groups[t.name]:
        out.setdefault(g, []).append(t.name)
    return {g: tuple(ts) for g, ts in out.items()}


def mixup(task: tasks_lib.Task, batch: dict, key: jax.Array):
  """Mixes each example with its partner in the reversed batch, x = lam x + (1 - lam) x'.
  With mixmod every modality draws its own lam and the targets use their mean (MBT)."""
  if not task.mixup_alpha:
    return batch, None
  n = len(task.input_keys) if task.mixmod else 1
  lams = jax.random.beta(key, task.mixup_alpha, task.mixup_alpha, (n,))
  out = dict(batch)
  for i, k in enumerate(task.input_keys):
    lam = lams[i if task.mixmod else 0]
    out[k] = lam * batch[k] + (1 - lam) * batch[k][::-1]
  return out, lams.mean()


def device_pp(task: tasks_lib.Task, mode: str, batch: dict) -> dict:
  """The task's pp ops that run here, not in the pipeline (Task.affines): float32 inputs."""
  out = dict(batch)
  for a in task.affine(mode):
    out[a.key] = a(batch[a.key], jnp)
  return out


def forward_loss(ctx: StepContext, task: tasks_lib.Task, params_all, batch, key, classes=None):
  """(weighted loss, (loss, accuracy)) of one task's batch. `classes`: label -> the real class
  count where the head runs padded to a wider one (ClassPad), else None."""
  model = nnx.merge(ctx.graphdef, join_groups(params_all))
  batch = device_pp(task, "train", batch)
  mix_key, key = jax.random.split(key)
  batch, lam = mixup(task, batch, mix_key)
  preds = model(task.name, batch, key=key, drop_path_rate=task.stochastic_depth)
  preds = [heads_lib.mask_classes(p, classes) for p in preds]
  # With one class token per stream, the training loss is the mean of the streams' losses.
  per_pred = []
  for p in preds:
    loss_p = heads_lib.loss(task.head, p, batch, task.label_smoothing, classes)
    if lam is not None:  # mixed targets: lam * L(y) + (1 - lam) * L(y of the partner)
      partner = {k: batch[k][::-1] for k in task.head.labels}
      loss_p = lam * loss_p + (1 - lam) * heads_lib.loss(task.head, p, partner,
                                                         task.label_smoothing, classes)
    per_pred.append(loss_p.mean())
  loss = sum(per_pred) / len(per_pred)
  first = task.head.labels[0]
  if task.head.kind in ("multilabel", "regression"):  # no accuracy (their metrics: evaluate)
    acc = jnp.float32(0)
  else:
    acc = (average_logits(preds)[first].argmax(-1) == batch[first]).mean()
  return loss * task.loss_weight, (loss, acc)


def task_grads(ctx: StepContext, task: tasks_lib.Task, params, batch, step, index=None,
               classes=None):
  """Gradients of the task's weighted loss with respect to the groups its step updates.
  `index`: the task index its keys derive from (an argument where tasks share the step);
  `classes`: forward_loss's."""
  trainable = {g: params[g] for g in ctx.groups[task.name]}
  key = derive_key(ctx.seed, step, task.index if index is None else index)
  fn = lambda tr: forward_loss(ctx, task, {**params, **tr}, batch, key, classes)
  (_, (loss, acc)), grads = jax.value_and_grad(fn, has_aux=True)(trainable)
  return grads, loss, acc


def guarded(state, new_state, finite, step, task_index):
  """A non-finite loss or gradient never reaches the state: the update is dropped and the
  guard records it. The host decides, at its next check, whether to stop (nonfinite)."""
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  g = state["guard"]
  first = (g["step"] < 0) & ~finite
  return {**keep(new_state, {k: state[k] for k in new_state if k != "guard"}),
          "guard": {"skipped": g["skipped"] + (~finite).astype(jnp.int32),
                    "step": jnp.where(first, step, g["step"]),
                    "task": jnp.where(first, task_index, g["task"])}}


def apply_updates(tx, state, grads, lrs):
  """Each group's lr-free update from its own optimizer state, times -lr of that group."""
  new_params, new_opt = dict(state["params"]), dict(state["opt"])
  for g, grad in grads.items():
    update, new_opt[g] = tx[g].update(grad, state["opt"][g], state["params"][g])
    new_params[g] = jax.tree.map(lambda p, u, lr=lrs[g]: p - lr * u, state["params"][g], update)
  return new_params, new_opt


def task_args(ctx: StepContext, task: tasks_lib.Task, padded: bool = False) -> dict:
  """What of a task its train step takes as arguments, not constants: its index (its keys, the
  guard) and its lr schedule's numbers, so tasks alike in all else share one program; and
  where its head runs padded (ClassPad), each label's real class count."""
  i32 = lambda v: jnp.asarray(v, jnp.int32)
  out = {"index": i32(task.index), "lr": jnp.asarray(task.lr, jnp.float32),
         "warmup": i32(task.warmup_steps), "horizon": i32(ctx.horizon[task.name])}
  if padded:
    out["classes"] = {k: i32(c) for k, c in task.head.class_counts.items()}
  return out


def task_lr(task: tasks_lib.Task, count, args: dict):
  """The task's lr at its own step count (its warm-up and schedule over its own batches)."""
  return optim.lr_at(count, args["lr"], args["warmup"], args["horizon"], task.lr_schedule)


def train_step(ctx: StepContext, task: tasks_lib.Task, state, batch, step, args):
  """One update from one task's batch: only the groups the task reads change. `args`: the
  task's `task_args`, traced (tasks of one signature run one program; TaskStep)."""
  ctx.count_trace(task.name)
  grads, loss, acc = task_grads(ctx, task, state["params"], batch, step, args["index"],
                                args.get("classes"))
  grads, gnorm = optim.clip_by_global_norm(grads, ctx.grad_clip)
  c = state["counts"][task.name]
  lr = task_lr(task, c, args)
  new_params, new_opt = apply_updates(ctx.tx, state, grads, {g: lr for g in grads})
  counts = {**state["counts"], task.name: c + 1}
  new_state = {"params": new_params, "opt": new_opt, "counts": counts}
  finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
  new_state = guarded(state, new_state, finite, step, args["index"])
  return new_state, {"loss": loss, "accuracy": acc, "grad_norm": gnorm, "lr": lr}


def accumulated_step(ctx: StepContext, state, batches, step):
  """One update from one batch of every task (the accumulated schedule): gradients summed,
  clipped together; a group read by one task uses that task's lr, a shared one the base lr."""
  ctx.count_trace("accumulated")
  total: dict = {}
  metrics = {}
  for t in ctx.tasks:
    grads, loss, acc = task_grads(ctx, t, state["params"], batches[t.name], step)
    for g, gr in grads.items():
      total[g] = gr if g not in total else jax.tree.map(jnp.add, total[g], gr)
    metrics[f"{t.name}/loss"] = loss
    metrics[f"{t.name}/accuracy"] = acc
  total, gnorm = optim.clip_by_global_norm(total, ctx.grad_clip)
  by_name = {t.name: t for t in ctx.tasks}
  base = optim.lr_at(step, ctx.base_lr, ctx.warmup_steps, ctx.num_steps, ctx.lr_schedule)
  lrs = {}
  for g in total:
    owners = ctx.owners[g]
    t = by_name[owners[0]]
    lrs[g] = (task_lr(t, state["counts"][t.name], task_args(ctx, t)) if len(owners) == 1
              else base)
  new_params, new_opt = apply_updates(ctx.tx, state, total, lrs)
  counts = {k: c + 1 for k, c in state["counts"].items()}
  metrics.update(loss=sum(metrics[f"{t.name}/loss"] * t.loss_weight for t in ctx.tasks),
                 grad_norm=gnorm, lr=base)
  new_state = {"params": new_params, "opt": new_opt, "counts": counts}
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(gnorm)
  return guarded(state, new_state, finite, step, -1), metrics


def eval_name(task: tasks_lib.Task, views: int = 1, drop: tuple[str, ...] = ()) -> str:
  return "/".join([f"eval/{task.name}"] + ([f"views={views}"] if views > 1 else []) +
                  [f"without={m}" for m in drop])


def eval_step(ctx: StepContext, task: tasks_lib.Task, views: int, drop: tuple[str, ...],
              params, batch):
  """Logits averaged over the streams' predictions and, for a multi-view test, over the
  `views` crops that the batch carries on axis 1 of every input; `drop` removes streams."""
  ctx.count_trace(eval_name(task, views, drop))
  model = nnx.merge(ctx.graphdef, join_groups(params))
  batch = device_pp(task, "eval", batch)
  if views > 1:
    batch = {k: v.reshape((-1,) + v.shape[2:]) if k in task.input_keys else v
             for k, v in batch.items()}
  logits = average_logits(model(task.name, batch, drop_modalities=drop))
  if views > 1:
    logits = {k: v.reshape((-1, views) + v.shape[1:]).mean(1) for k, v in logits.items()}
  return logits


# ------------------------------------------------------------ jit wrappers -------------------
# Batches arrive already placed (sharding.shard_batch), so their in_shardings are None.

def _under_rules(ctx: StepContext, fn):
  """`fn` traced under the run's rules, whoever calls it (activation constraints)."""
  @functools.wraps(fn)
  def traced(*args):
    with sharding.using_rules(ctx.rules):
      return fn(*args)
  return traced


def jit_train_step(ctx: StepContext, task, state_sh, rep):
  return jax.jit(_under_rules(ctx, functools.partial(train_step, ctx, task)),
                 in_shardings=(state_sh, None, rep, rep), out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


def jit_accumulated_step(ctx: StepContext, state_sh, rep):
  return jax.jit(_under_rules(ctx, functools.partial(accumulated_step, ctx)),
                 in_shardings=(state_sh, None, rep), out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


def jit_eval_step(ctx: StepContext, task, views, drop, param_sh, rep):
  return jax.jit(_under_rules(ctx, functools.partial(eval_step, ctx, task, views, drop)),
                 in_shardings=(param_sh, None), out_shardings=rep)


# ------------------------------------------------------------ shared executables -------------
# Tasks of one signature (experiment.step_signature: the same shapes, groups layout, optimizer
# settings and hyperparameters, but for their names and lr schedules, which are arguments) run
# one compiled program, that of the first of them, the representative: a member's per-task
# groups (its head, bottleneck, task blocks) and its count are swapped into the
# representative's places in the state going in and back coming out. The swap renames dict
# keys; no array moves. With config.share_steps='pad_classes', heads that differ only in their
# class counts share too: the program is traced with each label's widest count in the group, a
# narrower head is zero-padded to it going in and cut back coming out (ClassPad), and its real
# counts are arguments that mask the extra classes (heads.mask_classes).

def swapped(tree: dict, pairs: tuple[tuple[str, str], ...]) -> dict:
  """`tree` with the keys of each pair exchanged (an involution: swapped twice is `tree`)."""
  if not pairs:
    return tree
  out = dict(tree)
  for a, b in pairs:
    out[a], out[b] = tree[b], tree[a]
  return out


def key_names(path) -> tuple:
  """A pytree path's keys as plain names."""
  return tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)


def padded_head(head_params, widths: dict):
  """ShapeDtypeStructs of a head group's parameters with each output layer's class axis at
  `widths[label]` (heads.is_class_axis)."""
  def one(path, x):
    names = key_names(path)
    shape = tuple(x.shape)
    if heads_lib.is_class_axis(names):
      shape = shape[:-1] + (widths[names[1]],)
    return jax.ShapeDtypeStruct(shape, x.dtype)
  return jax.tree_util.tree_map_with_path(one, head_params)


def _resized(x, shape):
  """`x` cut or zero-padded at the end of each axis to `shape`."""
  if tuple(x.shape) == tuple(shape):
    return x
  x = x[tuple(slice(0, min(a, b)) for a, b in zip(x.shape, shape))]
  return jnp.pad(x, [(0, b - a) for a, b in zip(x.shape, shape)])


@dataclasses.dataclass(frozen=True, eq=False)
class ClassPad:
  """The narrower heads of a group of tasks that share a program, in the places the program
  takes them, between the shapes the state holds (`own`) and the program's (`padded`):
  {"params": {group: tree of ShapeDtypeStruct}, "opt": {...}}. The padded classes are
  masked, so they get no gradient: their zeros stay zeros under momentum, Adam and weight
  decay, add nothing to the global gradient norm, and nothing of them is kept."""
  own: dict
  padded: dict
  shardings: dict  # the same keys: the groups' shardings (they name axes, not sizes)
  # (parts, to what): the state both ways around a train step, the params for an eval step.
  RESIZES = ((("opt", "params"), "padded"), (("opt", "params"), "own"), (("params",), "padded"))

  def _shapes(self, to: str) -> dict:
    return self.padded if to == "padded" else self.own

  @functools.cached_property
  def _fns(self) -> dict:
    def make(parts, to):
      shapes = {p: self._shapes(to)[p] for p in parts}
      resize = lambda tree: jax.tree.map(lambda x, t: _resized(x, t.shape), tree, shapes)
      return jax.jit(resize, out_shardings={p: self.shardings[p] for p in parts})
    return {(parts, to): make(parts, to) for parts, to in self.RESIZES}

  def _apply(self, tree: dict, parts: tuple[str, ...], to: str) -> dict:
    sub = {p: {g: tree[p][g] for g in self.own[p]} for p in parts}
    if isinstance(jax.tree.leaves(sub)[0], jax.ShapeDtypeStruct):  # lowering (mmvit.plan)
      new = jax.tree.map(lambda x, t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=x.sharding),
                         sub, {p: self._shapes(to)[p] for p in parts})
    else:
      new = self._fns[parts, to](sub)
    return {**tree, **{p: {**tree[p], **new[p]} for p in parts}}

  def compile(self) -> float:
    """Seconds to compile the three resizes (the state's both ways, the eval step's params)
    on abstract shapes, for mmvit.plan; jit's own cache is not filled by this."""
    t0 = time.perf_counter()
    for parts, to in self.RESIZES:
      src = self._shapes("own" if to == "padded" else "padded")
      args = {p: jax.tree.map(lambda t, sh: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sh),
                              src[p], self.shardings[p]) for p in parts}
      self._fns[parts, to].lower(args).compile()
    return time.perf_counter() - t0

  def pad(self, state: dict) -> dict:
    return self._apply(state, ("opt", "params"), "padded")

  def unpad(self, state: dict) -> dict:
    return self._apply(state, ("opt", "params"), "own")

  def pad_params(self, params: dict) -> dict:
    return self._apply({"params": params}, ("params",), "padded")["params"]


@dataclasses.dataclass(frozen=True, eq=False)
class TaskStep:
  """Task `name`'s train step, `(state, batch, step) -> (state, metrics)`: `fn` (jit of
  `train_step` for its signature's representative) called with the task's `args` (task_args,
  placed) and, where it runs the program of task `shares_with`, its groups and count in that
  task's places (`groups`: the group name pairs to swap); `pad`: where its head is narrower
  than the program's. `lower(...).compile()` gives the executable with the same call."""
  name: str
  fn: Callable
  args: dict
  groups: tuple[tuple[str, str], ...] = ()
  shares_with: str | None = None
  pad: ClassPad | None = None

  def swap(self, state: dict) -> dict:
    if self.shares_with is None:
      return state
    return {**state, "params": swapped(state["params"], self.groups),
            "opt": swapped(state["opt"], self.groups),
            "counts": swapped(state["counts"], ((self.name, self.shares_with),))}

  def enter(self, state: dict) -> dict:
    """The state as the program takes it."""
    state = self.swap(state)
    return self.pad.pad(state) if self.pad else state

  def leave(self, state: dict) -> dict:
    """The program's state as the run holds it."""
    return self.swap(self.pad.unpad(state) if self.pad else state)

  def __call__(self, state, batch, step):
    new, metrics = self.fn(self.enter(state), batch, step, self.args)
    return self.leave(new), metrics

  def lower(self, state, batch, step):
    return _Lowered(self.fn.lower(self.enter(state), batch, step, self.args), self)


@dataclasses.dataclass(frozen=True, eq=False)
class _Lowered:
  lowered: object
  step: TaskStep

  def compile(self):
    return _Compiled(self.lowered.compile(), self.step)

  def __getattr__(self, name):  # as_text, cost_analysis, ...
    return getattr(self.lowered, name)


@dataclasses.dataclass(frozen=True, eq=False)
class _Compiled:
  compiled: object
  step: TaskStep

  def __call__(self, state, batch, step):
    new, metrics = self.compiled(self.step.enter(state), batch, step, self.step.args)
    return self.step.leave(new), metrics

  def __getattr__(self, name):  # memory_analysis, cost_analysis, ...
    return getattr(self.compiled, name)


@dataclasses.dataclass(frozen=True, eq=False)
class EvalStep:
  """Task `name`'s eval step `(params, batch) -> logits`: `fn` (its representative's) with the
  task's groups in the representative's places; where the program's heads are padded
  (`classes`: label -> the task's count), the logits cut back to the task's classes."""
  name: str
  fn: Callable
  groups: tuple[tuple[str, str], ...] = ()
  pad: ClassPad | None = None
  classes: dict | None = None
  # (params, padded): an evaluation passes one params dict for all its batches, so its heads
  # are padded once per evaluation, not per batch.
  _padded: list = dataclasses.field(default_factory=list, repr=False)

  def _program_params(self, params):
    if not self.pad:
      return swapped(params, self.groups)
    if not self._padded or self._padded[0] is not params:
      self._padded[:] = [params, self.pad.pad_params(swapped(params, self.groups))]
    return self._padded[1]

  def __call__(self, params, batch):
    logits = self.fn(self._program_params(params), batch)
    if self.classes:  # the replicated logits cut on the devices, as every process holds them
      logits = {k: v[..., :self.classes[k]] for k, v in logits.items()}
    return logits
