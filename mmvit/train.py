"""The trainer, top to bottom: validate, tasks, mesh, model, state, steps, restore, loop, test.

The trainer never asks which model it trains: a task names its modalities and head, the model
routes, and the loop only picks tasks from the schedule and calls their compiled steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mmvit import checkpointing, config as config_lib, data as data_lib, evaluate, optim
from mmvit import schedules, sharding, tasks as tasks_lib
from mmvit.models import heads as heads_lib
from mmvit.models.model import (Model, ModelSpec, average_logits, count, join_groups,
                                split_groups, task_groups)
from mmvit.writers import MetricWriter

log = logging.getLogger("mmvit")


def derive_key(seed: int, step, task_index: int) -> jax.Array:
  """Every random key is fold_in(seed, step, task): nothing random is carried in the state."""
  key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.random.fold_in(key, task_index)


def explicit_steps(config, tasks: list[tasks_lib.Task]) -> dict[str, int] | None:
  """Every task's steps (or epochs), or None when no task sets them. The one rule for every
  schedule kind: the length of training is config.total_steps or every task's steps, not both."""
  known = {t.name: t.steps for t in tasks if t.steps is not None}
  total = config.get("total_steps")
  if known and len(known) < len(tasks):
    missing = [t.name for t in tasks if t.steps is None]
    raise config_lib.ConfigError(f"tasks.{missing[0]}.steps: set steps (or epochs) for every "
                                 "task, or for none and use config.total_steps")
  if known and total is not None:
    # Which would win differs by kind (U or U_j; U or U/T updates), so refuse rather than guess.
    raise config_lib.ConfigError(
        f"config.total_steps={total} and tasks.*.steps: set one of them; every task sets steps "
        "(or epochs), which fix the length of training, so set config.total_steps=None")
  if not known and total is None:
    raise config_lib.ConfigError("config.total_steps: required unless every task sets steps "
                                 "(or epochs)")
  return known or None


def steps_per_task(config, tasks: list[tasks_lib.Task]) -> dict[str, int]:
  """U_j for each task: explicit (steps/epochs); else proportional to each task's number of
  train batches (n_j / b_j), as the weighted schedule prescribes, summing to exactly
  config.total_steps with at least one step per task."""
  known = explicit_steps(config, tasks)
  if known:
    return known
  total = config.total_steps
  if total < len(tasks):
    raise config_lib.ConfigError(f"config.total_steps={total}: fewer steps than the "
                                 f"{len(tasks)} tasks; expected at least one step per task")
  counts = schedules.largest_remainder(total, [t.num_train / t.batch_size for t in tasks])
  # A task rounded to 0 takes its step from the largest, so the plan is still total steps long.
  for i in [i for i, c in enumerate(counts) if c == 0]:
    counts[i] = 1
    counts[counts.index(max(counts))] -= 1
  return {t.name: c for t, c in zip(tasks, counts)}


def make_schedule(config, tasks) -> schedules.Schedule:
  kind = config.schedule.kind
  if kind in ("task_by_task", "weighted"):  # these are defined by the U_j
    kw = dict(steps_per_task=steps_per_task(config, tasks))
  else:  # these need only U (or, accumulated, the number of updates): take it as given
    u = explicit_steps(config, tasks)
    kw = dict(steps_per_task=u) if u else dict(total_steps=config.total_steps)
  ratios = dict(config.schedule.get("ratios") or {}) or None
  return schedules.make_schedule(kind, [t.name for t in tasks], seed=config.get("seed", 0),
                                 ratios=ratios, **kw)


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step; no data has been read yet."""
  config: ml_collections.ConfigDict
  tasks: list[tasks_lib.Task]
  schedule: schedules.Schedule
  mesh: jax.sharding.Mesh
  model_spec: ModelSpec
  graphdef: nnx.GraphDef
  state: dict
  state_shardings: dict
  groups: dict[str, tuple[str, ...]]  # task -> groups its step updates
  train_steps: dict[str, Callable]
  eval_steps: dict[str, Callable]
  accumulated_step: Callable | None
  traces: dict[str, int]  # how many times each step function was traced (compiled)
  tokenizer_specs: dict
  make_eval_step: Callable  # (task, views, drop) -> jitted eval step, for variants
  data: object  # the data module (mmvit.data, or a stand-in with the same functions)

  @property
  def task_by_name(self) -> dict[str, tasks_lib.Task]:
    return {t.name: t for t in self.tasks}


def build_model(config, tasks, tok_specs, seed: int) -> Model:
  spec = ModelSpec.from_config(config.model)
  heads = {t.name: (t.modalities, t.head, t.fusion) for t in tasks}
  return Model(spec, tok_specs, heads, rngs=nnx.Rngs(params=seed))


def parameter_report(groups: dict[str, dict], task_groups_: dict[str, tuple[str, ...]]) -> dict:
  """Total, shared, per-modality and per-task counts, and the fraction shared (seed claim 5);
  and what T separate single-task models (each: the groups its task reads) would need."""
  counts = {g: count(p) for g, p in groups.items()}
  total = sum(counts.values())
  modality, per_task = {}, {}
  for g, c in counts.items():
    top, _, name = g.partition(".")
    if top in ("tokenizers", "adapters", "stream_encoders"):
      modality[name] = modality.get(name, 0) + c
    elif top in ("heads", "bottlenecks"):
      per_task[name] = per_task.get(name, 0) + c
  single = {t: sum(counts[g] for g in gs) for t, gs in task_groups_.items()}
  return {"total": total, "shared": counts["shared"], "fraction_shared": counts["shared"] / total,
          "per_modality": modality, "per_task": per_task,
          "single_task_models": single, "single_task_total": sum(single.values()),
          "ratio_cotrained_to_single_total": total / sum(single.values())}


def prepare(config: ml_collections.ConfigDict, *, devices=None, data=None):
  """Everything that can reject a config, without building the model: validation, tasks and
  datasets, the schedule, the mesh. Returns (tasks, tokenizer specs, schedule, mesh)."""
  config_lib.validate(config)
  tasks, tok_specs = tasks_lib.resolve(config, data or data_lib)
  schedule = make_schedule(config, tasks)
  try:
    mesh = sharding.make_mesh(dict(config.get("mesh") or {}), devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  for t in tasks:
    n_batch = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if t.batch_size % n_batch:
      raise config_lib.ConfigError(f"tasks.{t.name}.batch_size={t.batch_size}: expected a "
                                   f"multiple of the data-parallel size {n_batch}")
  return tasks, tok_specs, schedule, mesh


def check_batch(task: tasks_lib.Task, batch: dict, specs: dict, step: int) -> None:
  """The door for data: shapes, dtypes, finiteness and label ranges of a host batch, with a
  one-line DataError naming the task, step, key and record."""
  where = f"task {task.name} step {step}"
  expected = {specs[m].input_key: specs[m].input_shape for m in task.modalities}
  for key, shape in expected.items():
    x = batch.get(key)
    if x is None:
      raise data_lib.DataError(f"{where}: batch has no input {key!r} (has {sorted(batch)})")
    x = np.asarray(x)
    if x.shape[1:] != tuple(shape) or x.shape[0] != task.batch_size:
      raise data_lib.DataError(f"{where}: input {key!r} has shape {x.shape}, expected "
                               f"{(task.batch_size,) + tuple(shape)}")
    if not np.issubdtype(x.dtype, np.floating):
      raise data_lib.DataError(f"{where}: input {key!r} has dtype {x.dtype}, expected float")
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
      raise data_lib.DataError(f"{where}: input {key!r} of record {int(np.argmax(bad))} in the "
                               "batch is not finite")
  for key, classes in zip(task.head.labels, task.head.num_classes):
    y = batch.get(key)
    if y is None:
      raise data_lib.DataError(f"{where}: batch has no label {key!r}")
    y = np.asarray(y)
    if task.head.kind == "multilabel":
      ok_shape, bad = y.shape == (task.batch_size, classes), ~((y == 0) | (y == 1)).all(-1)
      want = f"multi-hot of shape {(task.batch_size, classes)}"
    else:
      ok_shape = y.shape == (task.batch_size,) and np.issubdtype(y.dtype, np.integer)
      bad = (y < 0) | (y >= classes) if ok_shape else None
      want = f"integers in [0, {classes}) of shape {(task.batch_size,)}"
    if not ok_shape:
      raise data_lib.DataError(f"{where}: label {key!r} has shape {y.shape} and dtype "
                               f"{y.dtype}, expected {want}")
    if bad.any():
      i = int(np.argmax(bad))
      raise data_lib.DataError(f"{where}: label {key!r} of record {i} is {y[i].tolist()}, "
                               f"expected {want}")


def build(config: ml_collections.ConfigDict, *, devices=None, data=None) -> Experiment:
  """Validates the config, resolves tasks and builds model, state and compiled-step wrappers."""
  data = data or data_lib
  tasks, tok_specs, schedule, mesh = prepare(config, devices=devices, data=data)
  seed = int(config.get("seed", 0))
  o = config.optimizer
  model = build_model(config, tasks, tok_specs, seed)
  graphdef, params_state = nnx.split(model, nnx.Param)
  param_sh = split_groups(sharding.param_shardings(model, mesh))
  params = split_groups(nnx.to_pure_dict(params_state))
  del model

  tx = optim.group_transform(o)
  groups = {t.name: task_groups(params, t.modalities, t.name) for t in tasks}

  with jax.set_mesh(mesh):
    params = jax.device_put(params, param_sh)
    opt = {g: tx.init(p) for g, p in params.items()}
  rep = sharding.replicated(mesh)
  # Optimizer moments take the sharding of their parameters; counters are replicated.
  opt_sh = {g: optax.tree_map_params(tx, lambda _, s: s, opt[g], param_sh[g],
                                     transform_non_params=lambda _: rep)
            for g in params}
  # guard: how many updates were skipped as non-finite, and the first such (step, task).
  guard = {"skipped": jnp.zeros((), jnp.int32), "step": jnp.full((), -1, jnp.int32),
           "task": jnp.full((), -1, jnp.int32)}
  state = {"params": params, "opt": opt, "guard": guard,
           "counts": {t.name: jnp.zeros((), jnp.int32) for t in tasks}}
  state_sh = {"params": param_sh, "opt": opt_sh, "guard": {k: rep for k in guard},
              "counts": {t.name: rep for t in tasks}}
  state = jax.device_put(state, state_sh)

  horizon = schedule.batches_per_task()
  traces: dict[str, int] = {}
  grad_clip = o.get("grad_clip_norm")

  def forward_loss(task, params_all, batch, key):
    model = nnx.merge(graphdef, join_groups(params_all))
    mix_key, key = jax.random.split(key)
    batch, lam = mixup(task, batch, mix_key)
    preds = model(task.name, batch, key=key, drop_path_rate=task.stochastic_depth)
    # With one class token per stream, the training loss is the mean of the streams' losses.
    per_pred = []
    for p in preds:
      loss_p = heads_lib.loss(task.head, p, batch, task.label_smoothing)
      if lam is not None:  # mixed targets: lam * L(y) + (1 - lam) * L(y of the partner)
        partner = {k: batch[k][::-1] for k in task.head.labels}
        loss_p = lam * loss_p + (1 - lam) * heads_lib.loss(task.head, p, partner,
                                                           task.label_smoothing)
      per_pred.append(loss_p.mean())
    loss = sum(per_pred) / len(per_pred)
    first = task.head.labels[0]
    if task.head.kind == "multilabel":
      acc = jnp.float32(0)
    else:
      acc = (average_logits(preds)[first].argmax(-1) == batch[first]).mean()
    return loss * task.loss_weight, (loss, acc)

  def task_grads(task, params, batch, step):
    trainable = {g: params[g] for g in groups[task.name]}
    key = derive_key(seed, step, task.index)
    fn = lambda tr: forward_loss(task, {**params, **tr}, batch, key)
    (_, (loss, acc)), grads = jax.value_and_grad(fn, has_aux=True)(trainable)
    return grads, loss, acc

  def guarded(state, new_state, finite, step, task_index):
    """A non-finite loss or gradient never reaches the state: the update is dropped and the
    guard records it. The host decides, at its next check, whether to stop (nonfinite)."""
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    g = state["guard"]
    first = (g["step"] < 0) & ~finite
    new_state = {**keep(new_state, {k: state[k] for k in new_state if k != "guard"}),
                 "guard": {"skipped": g["skipped"] + (~finite).astype(jnp.int32),
                           "step": jnp.where(first, step, g["step"]),
                           "task": jnp.where(first, task_index, g["task"])}}
    return new_state

  def apply(state, grads, lrs):
    new_params, new_opt = dict(state["params"]), dict(state["opt"])
    for g, grad in grads.items():
      update, new_opt[g] = tx.update(grad, state["opt"][g], state["params"][g])
      new_params[g] = jax.tree.map(lambda p, u, lr=lrs[g]: p - lr * u, state["params"][g], update)
    return new_params, new_opt

  def make_train_step(task):
    def step_fn(state, batch, step):
      traces[task.name] = traces.get(task.name, 0) + 1
      grads, loss, acc = task_grads(task, state["params"], batch, step)
      grads, gnorm = optim.clip_by_global_norm(grads, grad_clip)
      c = state["counts"][task.name]
      lr = optim.lr_at(c, task.lr, task.warmup_steps, horizon[task.name], task.lr_schedule)
      new_params, new_opt = apply(state, grads, {g: lr for g in grads})
      counts = {**state["counts"], task.name: c + 1}
      new_state = {"params": new_params, "opt": new_opt, "counts": counts}
      finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
      new_state = guarded(state, new_state, finite, step, task.index)
      return new_state, {"loss": loss, "accuracy": acc, "grad_norm": gnorm, "lr": lr}
    batch_sh = None  # batches arrive already placed (sharding.shard_batch)
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh, rep),
                   out_shardings=(state_sh, rep), donate_argnums=(0,))

  def make_accumulated_step():
    owners: dict[str, list[str]] = {}
    for t in tasks:
      for g in groups[t.name]:
        owners.setdefault(g, []).append(t.name)

    def step_fn(state, batches, step):
      traces["accumulated"] = traces.get("accumulated", 0) + 1
      total: dict = {}
      metrics = {}
      for t in tasks:
        grads, loss, acc = task_grads(t, state["params"], batches[t.name], step)
        for g, gr in grads.items():
          total[g] = gr if g not in total else jax.tree.map(jnp.add, total[g], gr)
        metrics[f"{t.name}/loss"] = loss
        metrics[f"{t.name}/accuracy"] = acc
      total, gnorm = optim.clip_by_global_norm(total, grad_clip)
      by_name = {t.name: t for t in tasks}
      base = optim.lr_at(step, float(o.lr), int(o.get("warmup_steps", 0)), schedule.num_steps,
                         o.get("lr_schedule", "cosine"))
      lrs = {}
      for g in total:
        if len(owners[g]) == 1:
          t = by_name[owners[g][0]]
          lrs[g] = optim.lr_at(state["counts"][t.name], t.lr, t.warmup_steps, horizon[t.name],
                               t.lr_schedule)
        else:
          lrs[g] = base
      new_params, new_opt = apply(state, total, lrs)
      counts = {k: c + 1 for k, c in state["counts"].items()}
      metrics.update(loss=sum(metrics[f"{t.name}/loss"] * t.loss_weight for t in tasks),
                     grad_norm=gnorm, lr=base)
      new_state = {"params": new_params, "opt": new_opt, "counts": counts}
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(gnorm)
      return guarded(state, new_state, finite, step, -1), metrics
    return jax.jit(step_fn, in_shardings=(state_sh, None, rep), out_shardings=(state_sh, rep),
                   donate_argnums=(0,))

  eval_cache: dict = {}

  def make_eval_step(task, views: int = 1, drop: tuple[str, ...] = ()):
    """Built once per (task, views, drop). Logits averaged over the streams' predictions and, for multi-view test, over the
    `views` crops that the batch carries on axis 1 of every input."""
    name = "/".join([f"eval/{task.name}"] + ([f"views={views}"] if views > 1 else []) +
                    [f"without={m}" for m in drop])

    def eval_fn(params, batch):
      traces[name] = traces.get(name, 0) + 1
      model = nnx.merge(graphdef, join_groups(params))
      if views > 1:
        batch = {k: v.reshape((-1,) + v.shape[2:]) if k in task.input_keys else v
                 for k, v in batch.items()}
      logits = average_logits(model(task.name, batch, drop_modalities=drop))
      if views > 1:
        logits = {k: v.reshape((-1, views) + v.shape[1:]).mean(1) for k, v in logits.items()}
      return logits
    if (task.name, views, drop) not in eval_cache:
      eval_cache[task.name, views, drop] = jax.jit(eval_fn, in_shardings=(param_sh, None),
                                                   out_shardings=rep)
    return eval_cache[task.name, views, drop]

  train_steps = {t.name: make_train_step(t) for t in tasks}
  eval_steps = {t.name: make_eval_step(t, t.eval_views) for t in tasks}
  acc = make_accumulated_step() if schedule.kind == "accumulated" else None
  return Experiment(config=config, tasks=tasks, schedule=schedule, mesh=mesh,
                    model_spec=ModelSpec.from_config(config.model), graphdef=graphdef,
                    state=state, state_shardings=state_sh, groups=groups,
                    train_steps=train_steps, eval_steps=eval_steps, accumulated_step=acc,
                    traces=traces, data=data, make_eval_step=make_eval_step,
                    tokenizer_specs=tok_specs)


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


def task_seed(seed: int, task_index: int) -> int:
  return int(np.random.default_rng([seed, task_index, 0xDA7A]).integers(2**31 - 1))


def train_iterators(exp: Experiment) -> dict:
  cfg = exp.config
  return {t.name: exp.data.train_iterator(
      t.dataset, batch_size=t.batch_size, seed=task_seed(int(cfg.get("seed", 0)), t.index),
      data_dir=cfg.get("data_dir"), split=t.train_split, augment=dict(t.augment) or None,
      cache=bool(cfg.get("cache_data", False)), **t.data_kwargs(),
      **({"workers": int(cfg.data_workers)} if cfg.get("data_workers") else {}))
      for t in exp.tasks}


def evaluate_all(exp: Experiment, params, split: str, *, tasks: list[str] | None = None,
                 views: int | None = None, drop: tuple[str, ...] = ()
                 ) -> dict[str, dict[str, float]]:
  """Metrics of every task (or `tasks`) on `split`. `views` overrides the tasks' eval_views;
  `drop` evaluates fusion tasks with those modalities' streams removed."""
  cfg = exp.config
  bs = int(cfg.get("eval_batch_size", 256))
  n_batch = math.prod(exp.mesh.shape[a] for a in ("data", "fsdp"))
  bs = max(n_batch, bs - bs % n_batch)
  out = {}
  for t in exp.tasks:
    if tasks is not None and t.name not in tasks:
      continue
    k = t.eval_views if views is None else views
    extra = {"views": k} if k > 1 else {}
    batches = exp.data.eval_batches(t.dataset, split=split, batch_size=bs,
                                    data_dir=cfg.get("data_dir"), **extra, **t.data_kwargs())
    if k == t.eval_views and not drop:
      step = exp.eval_steps[t.name]
    else:
      step = exp.make_eval_step(t, k, tuple(m for m in drop if m in t.modalities))
    fn = lambda b, step=step: step(params, sharding.shard_batch(_inputs(b), exp.mesh))
    out[t.name] = evaluate.run(t.head, fn, batches)
  return out


def _inputs(batch: dict) -> dict:
  return {k: v for k, v in batch.items() if k != "mask"}


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class NonFiniteError(RuntimeError):
  """Training stopped on a non-finite loss or gradient."""


class Stopped(Exception):
  """A signal arrived before the first step: nothing was trained, so nothing is saved."""


class Preempted:
  """Set by SIGTERM or a first SIGINT (Ctrl-C); the loop checks it after every step. A second
  SIGINT exits at once (130), as a kill would: saves are atomic. Entered inside another one
  (main installs one before start-up) that was signalled, it stops the run (Stopped).

  Python runs signal handlers in the main thread only between bytecodes, so a Ctrl-C that lands
  while the main thread waits in C (a step, a save) would wait with it, and two that land there
  reach the handler as one. The signals are counted instead by a thread reading the wakeup fd,
  which the C-level handler writes at once on every signal, whichever thread it interrupts."""

  def __init__(self):
    self._signalled = False
    self._previous = {}
    self._wakeup = None

  @property
  def signalled(self) -> bool:
    outer = self._outer()
    return self._signalled or (outer is not None and outer.signalled)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      read, write = os.pipe()
      os.set_blocking(write, False)
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
      self._wakeup = (signal.set_wakeup_fd(write, warn_on_full_buffer=False), write,
                      threading.Thread(target=self._count, args=(read,), daemon=True,
                                       name="mmvit-signals"))
      self._wakeup[2].start()
      if getattr(self._outer(), "signalled", False):
        self.__exit__()
        raise Stopped("stopped before the first step; nothing to save")
    return self

  def _outer(self):
    outer = getattr(self._previous.get(signal.SIGTERM), "__self__", None)
    return outer if isinstance(outer, Preempted) else None

  def _handle(self, signum, frame):
    del signum, frame  # _count acts on it; this handler only keeps KeyboardInterrupt away

  def _count(self, read: int):
    with os.fdopen(read, "rb", buffering=0) as pipe:
      while signums := pipe.read(64):
        for signum in signums:
          if signum == signal.SIGINT and self.signalled:
            try:
              sys.stdout.flush()  # the log so far
            except Exception:  # noqa: BLE001  (interrupted mid-write: exit regardless)
              pass
            os.write(2, b"interrupted again: exited at once; rerun to resume from the last save\n")
            os._exit(130)
          if signum == signal.SIGINT:
            os.write(2, b"interrupted: stopping cleanly (Ctrl-C again to exit at once)\n")
          if signum in (signal.SIGINT, signal.SIGTERM):
            self._signalled = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      if previous is not None:
        signal.signal(s, previous)
    if self._wakeup is not None:
      previous_fd, write, counter = self._wakeup
      signal.set_wakeup_fd(previous_fd)
      os.close(write)  # the counter reads what is left, then the end of the pipe
      counter.join()
      self._wakeup = None
    if self._outer() is not None:  # a Ctrl-C after this one still exits at once
      self._outer()._signalled |= self._signalled


def run(config: ml_collections.ConfigDict, workdir: str | None, *, devices=None,
        stop_at: int | None = None, data=None, allow_config_change: bool = False) -> dict:
  """Trains (resuming from workdir's latest good checkpoint), evaluates on the validation and
  test splits and returns {'test': {task: metrics}, 'params': report, 'steps': n,
  'state': final state, ...}. `stop_at` ends the loop early (the schedule, hence the lr
  horizon, is unchanged). On SIGTERM or at Orbax's preemption point it saves and returns with
  summary['preempted'] = step, skipping the final evaluation."""
  # The workdir lock, writers and checkpointer are released on every path out, errors
  # included: their threads must not be left to interpreter shutdown.
  with contextlib.ExitStack() as closing:
    return _run(closing, config, workdir, devices=devices, stop_at=stop_at, data=data,
                allow_config_change=allow_config_change)


def _run(closing: contextlib.ExitStack, config, workdir, *, devices, stop_at, data,
         allow_config_change) -> dict:
  exp = build(config, devices=devices, data=data)
  cfg = exp.config
  seed = int(cfg.get("seed", 0))
  if workdir:  # one run per workdir: a second would move the first's steps and repeat metrics
    closing.enter_context(checkpointing.WorkdirLock(workdir))
  changed = checkpointing.guard_workdir(workdir, cfg, allow_config_change) if workdir else False
  writer = closing.enter_context(MetricWriter(workdir, enabled=workdir is not None))
  ckpt = closing.enter_context(checkpointing.Checkpointer(
      workdir or "", keep=int(cfg.get("keep_checkpoints", 3)), enabled=workdir is not None))
  report = parameter_report(exp.state["params"], exp.groups)
  log.info("parameters: %s", json.dumps(report))

  iters = train_iterators(exp)
  for it in iters.values():  # worker processes (data_workers) end with the run
    if hasattr(it, "close"):
      closing.callback(it.close)
  state = exp.state
  start, init_lines = 0, []
  fresh = {name: it.get_state() for name, it in iters.items()}

  def set_data(states):
    # Data states that read but do not fit (no entry for a task, a negative index, another
    # type) make the step unreadable like any damage: the previous step is tried.
    checkpointing.check_data_states(states, fresh)
    for name, it in iters.items():
      it.set_state(states[name])
  restored = (ckpt.restore_latest(checkpointing.abstract(state, exp.state_shardings), set_data)
              if ckpt.enabled else None)
  if restored is not None:
    start, state, _, meta_ = restored
    log.info("resumed from %s at step %d", ckpt.directory, start)
    init_lines = list(meta_.get("init_from", []))  # what the run was started from
  elif sources := config_lib.init_sources(cfg):
    # Only a fresh run is initialised from other runs; a resumed one continues its own params.
    abstract = checkpointing.abstract(state["params"], exp.state_shardings["params"])
    loaded, init_lines = checkpointing.load_params(sources, abstract)
    state = {**state, "params": {**state["params"], **loaded}}
    for line in init_lines:
      log.info("initialised %s", line)
  if workdir:  # only now that the checkpoints fit: a refused run leaves the workdir as it was
    checkpointing.write_config(workdir, cfg, keep_previous=changed)
    writer.drop_after(start)  # the steps after the restored one are trained (and logged) again
    with open(os.path.join(workdir, "params.json"), "w") as f:
      json.dump(report, f, indent=2)

  schedule = exp.schedule
  end = schedule.num_steps if stop_at is None else min(stop_at, schedule.num_steps)
  eval_every = int(cfg.get("eval_every", 0) or 0)
  log_every = int(cfg.get("log_every", 50) or 0)
  ckpt_every = int(cfg.get("checkpoint_every", 0) or 0)
  eval_split = cfg.get("eval_split", "validation")
  nonfinite = cfg.get("nonfinite") or {}
  max_skips = int(nonfinite.get("max_skips", 0)) if nonfinite.get("policy") == "skip" else 0
  compiled: set[str] = set()
  # Honest timing: wall time of training steps only. Steps that compile, evaluation and
  # checkpoint saves are measured and excluded; the clock is read after blocking on the state.
  train_time, timed_steps, excluded, seg_steps = 0.0, 0, 0.0, 0
  seg_start = time.perf_counter()
  last = {}

  def data_states():
    return {name: it.get_state() for name, it in iters.items()}

  def meta(step):
    return {"step": step, "seed": seed, "schedule": schedule.kind,
            "config_digest": checkpointing.config_digest(cfg), "init_from": init_lines}

  def check_finite():
    """Stops once more than max_skips updates were dropped; the state holds none of them."""
    g = jax.device_get(state["guard"])
    if int(g["skipped"]) > max_skips:
      task = "accumulated (all tasks)" if int(g["task"]) < 0 else exp.tasks[int(g["task"])].name
      good = ckpt.latest_step()
      where = f"step {good} in {ckpt.directory}" if good is not None else "none saved"
      raise NonFiniteError(
          f"non-finite loss or gradient at step {int(g['step'])} (task {task}); "
          f"{int(g['skipped'])} update(s) dropped, more than nonfinite.max_skips={max_skips}; "
          f"last good checkpoint: {where}")

  preempted = None
  by_name = exp.task_by_name
  with jax.set_mesh(exp.mesh), Preempted() as sigterm:
    for step in range(start, end):
      names = schedule.tasks_at(step)
      key = "accumulated" if schedule.kind == "accumulated" else names[0]
      t0 = time.perf_counter()
      step_arr = jnp.asarray(step, jnp.int32)
      host = {n: next(iters[n]) for n in names}
      for n in names:
        check_batch(by_name[n], host[n], exp.tokenizer_specs, step)
      if schedule.kind == "accumulated":
        batches = {n: sharding.shard_batch(b, exp.mesh) for n, b in host.items()}
        state, metrics = exp.accumulated_step(state, batches, step_arr)
      else:
        batch = sharding.shard_batch(host[key], exp.mesh)
        state, metrics = exp.train_steps[key](state, batch, step_arr)
      last[key] = metrics
      if key not in compiled:
        jax.block_until_ready(metrics)
        compiled.add(key)
        excluded += time.perf_counter() - t0
      else:
        seg_steps += 1
      done = step + 1
      if log_every and (done % log_every == 0 or done == end):
        m = jax.device_get(last[key])
        jax.block_until_ready(state["counts"])
        now = time.perf_counter()
        train_time += now - seg_start - excluded
        timed_steps += seg_steps
        seg_start, excluded, seg_steps = now, 0.0, 0
        rate = timed_steps / train_time if train_time > 0 else float("nan")
        eta = (end - done) / rate if rate == rate and rate else 0.0
        log.info("step %d/%d task=%s loss=%.4f lr=%.2e %.2f steps/s (excl. compile/eval/ckpt) "
                 "eta %s", done, end, key, float(m["loss"]), float(m["lr"]), rate,
                 _format_eta(eta))
        writer.write(done, key, "train", {k: float(v) for k, v in m.items()})
        check_finite()
      t1 = time.perf_counter()
      if sigterm.signalled or ckpt.reached_preemption(done):
        check_finite()
        ckpt.save(done, state, data_states(), meta(done), force=True)
        ckpt.wait()
        log.warning("preempted: saved step %d to %s; rerun the same command to resume", done,
                    ckpt.directory)
        preempted = done
        break
      if eval_every and done % eval_every == 0 and done != end:
        for name, res in evaluate_all(exp, state["params"], eval_split).items():
          writer.write(done, name, eval_split, res)
          log.info("eval %s step %d %s", name, done, _fmt(res))
      if ckpt_every and done % ckpt_every == 0 and done != end:
        check_finite()
        ckpt.save(done, state, data_states(), meta(done))
      excluded += time.perf_counter() - t1

    final_step = max(end, start) if preempted is None else preempted
    results = {}
    test_split = cfg.get("test_split", "test")
    if preempted is None:
      check_finite()
      if end > start:
        ckpt.save(final_step, state, data_states(), meta(final_step), force=True)
      ckpt.wait()
      for split in dict.fromkeys([eval_split, test_split]):
        results[split] = evaluate_all(exp, state["params"], split)
        for name, res in results[split].items():
          writer.write(final_step, name, split, res)
          log.info("%s %s: %s", split, name, _fmt(res))
  ckpt.close()
  writer.close()
  steps_per_s = timed_steps / train_time if train_time else float("nan")
  summary = {"test": results.get(test_split), eval_split: results.get(eval_split),
             "params": report, "steps": final_step, "steps_per_s": steps_per_s,
             "traces": dict(exp.traces), "preempted": preempted,
             "skipped_updates": int(jax.device_get(state["guard"]["skipped"])),
             "init_from": init_lines}
  if workdir and preempted is None:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(summary, f, indent=2)
  summary["state"] = state
  return summary


def _fmt(res: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4f}" if k != "num_examples" else f"n={int(v)}"
                  for k, v in res.items())
