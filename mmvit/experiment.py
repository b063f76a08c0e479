"""The experiment: everything built from a config before the first step (validation, tasks
and datasets, schedule, mesh, model, state, compiled-step wrappers); no data is read yet.

The trainer never asks which model it trains: a task names its modalities and head, the model
routes, and the loop only picks tasks from the schedule and calls their compiled steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mmvit import config as config_lib, data as data_lib, evaluate, optim, schedules, sharding
from mmvit import steps as steps_lib, tasks as tasks_lib
from mmvit.data.synthetic import SyntheticData
from mmvit.models import heads as heads_lib
from mmvit.models.model import (PER_MODALITY, PER_TASK, Model, ModelSpec, count, split_groups,
                                task_groups)

log = logging.getLogger("mmvit")


def explicit_steps(config, tasks: list[tasks_lib.Task]) -> dict[str, int] | None:
  """Every task's steps (or epochs), or None when no task sets them. The one rule for every
  schedule kind: the length of training is config.total_steps or every task's steps, not both."""
  known = {t.name: t.steps for t in tasks if t.steps is not None}
  total = config.total_steps
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
  ratios = dict(config.schedule.ratios or {}) or None
  return schedules.make_schedule(kind, [t.name for t in tasks], seed=config.seed,
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
  rules: tuple = sharding.RULES  # the logical-axis rules of config.sharding
  init_report: list | None = None  # per-parameter rows of config.init_from (a fresh run)

  @contextlib.contextmanager
  def layout(self):
    """The context every step, placement and evaluation runs in: the mesh and the rules."""
    with jax.set_mesh(self.mesh), sharding.using_rules(self.rules):
      yield

  @property
  def task_by_name(self) -> dict[str, tasks_lib.Task]:
    return {t.name: t for t in self.tasks}


# Task fields its compiled steps do not hold: those that name it or say where its examples come
# from, and those its train step takes as arguments (steps.task_args). Tasks that differ only
# here run one program.
UNSHARED_FIELDS = ("name", "index", "dataset", "num_train", "train_split", "steps",
                   "label_names", "lr", "warmup_steps")


def step_signature(task: tasks_lib.Task, *, groups: tuple[str, ...], settings: dict,
                   params: dict, param_sh: dict, pad_classes: bool = False) -> tuple:
  """What the task's compiled train and eval steps depend on, with its per-task groups named
  by their kind: its other fields (modalities, head, batch size, pp, loss weight, ...) and the
  groups it reads with their optimizer settings, parameter shapes, dtypes and shardings.
  Equal signatures share one jitted step (steps.TaskStep); the batch shapes then follow from
  the modalities' tokenizers, and a member whose inputs came in another dtype would get a
  second program from jit (traced under the representative's name). `pad_classes`: a head of
  heads.PADDABLE_KINDS is named without its class counts (they are padded: steps.ClassPad)."""
  own = {f"{top}.{task.name}": f"{top}.*" for top in PER_TASK}
  pad = pad_classes and task.head.kind in heads_lib.PADDABLE_KINDS
  fields = dataclasses.replace(task, **{f: None for f in UNSHARED_FIELDS})
  if pad:
    fields = dataclasses.replace(fields, head=dataclasses.replace(task.head, num_classes=None))

  def shape(g, path, x) -> tuple:
    if pad and g == f"heads.{task.name}" and heads_lib.is_class_axis(steps_lib.key_names(path)):
      return tuple(x.shape[:-1]) + ("classes",)
    return tuple(x.shape)
  layout = []
  for g in groups:
    leaves = jax.tree_util.tree_leaves_with_path(params[g])
    shardings = jax.tree.leaves(param_sh[g])
    layout.append((own.get(g, g), repr(sorted(settings[g].to_dict().items())), tuple(
        (jax.tree_util.keystr(p), shape(g, p, x), str(x.dtype), str(sh))
        for (p, x), sh in zip(leaves, shardings))))
  return (fields, tuple(layout))


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
    if top in PER_MODALITY:
      modality[name] = modality.get(name, 0) + c
    elif top in PER_TASK:
      per_task[name] = per_task.get(name, 0) + c
  single = {t: sum(counts[g] for g in gs) for t, gs in task_groups_.items()}
  return {"total": total, "shared": counts["shared"], "fraction_shared": counts["shared"] / total,
          "per_modality": modality, "per_task": per_task,
          "single_task_models": single, "single_task_total": sum(single.values()),
          "ratio_cotrained_to_single_total": total / sum(single.values())}


def rules_of(config) -> tuple:
  """The logical-axis rules of a completed config (sharding.preset and sharding.rules)."""
  return sharding.make_rules(config.sharding.preset, dict(config.sharding.rules))


def prepare(config: ml_collections.ConfigDict, *, devices=None, data=None):
  """Everything that can reject a config, without building the model: validation, tasks and
  datasets, the schedule, the mesh. Returns (tasks, tokenizer specs, schedule, mesh)."""
  config_lib.validate(config)
  config = config_lib.complete(config)
  tasks, tok_specs = tasks_lib.resolve(config, data or data_lib)
  schedule = make_schedule(config, tasks)
  try:
    mesh = sharding.make_mesh(dict(config.mesh), devices, dcn=dict(config.mesh_dcn))
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  with sharding.using_rules(rules_of(config)):
    _check_batches(tasks, mesh)
  if es := config.early_stopping:
    task, _, name = es.metric.partition("/")
    known = evaluate.metric_names(next(t.head for t in tasks if t.name == task))
    if name not in known:
      raise config_lib.ConfigError(f"early_stopping.metric={es.metric!r}: task {task} reports "
                                   f"{', '.join(known)}")
  _check_attention(config.model, mesh)
  return tasks, tok_specs, schedule, mesh


def _check_attention(m, mesh) -> None:
  platforms = {d.platform for d in mesh.devices.flat}
  if m.attention == "cudnn" and platforms != {"gpu"}:
    raise config_lib.ConfigError(f"model.attention='cudnn' needs GPU devices; this run has "
                                 f"{', '.join(sorted(platforms))} (use 'xla')")
  if m.attention != "einsum" and m.attention_dropout:
    log.info("model.attention=%r: training steps use the einsum kernel, since "
             "model.attention_dropout=%s and the fused kernel takes no dropout (evaluation "
             "uses %r)", m.attention, m.attention_dropout, m.attention)


def _check_batches(tasks, mesh) -> None:
  n_batch = sharding.data_parallel_size(mesh)
  for t in tasks:
    if t.batch_size % n_batch:
      raise config_lib.ConfigError(f"tasks.{t.name}.batch_size={t.batch_size}: expected a "
                                   f"multiple of the data-parallel size {n_batch}")
  try:  # which rows each process reads: whole blocks of rows
    for t in tasks:
      sharding.process_rows(mesh, t.batch_size)
  except ValueError as e:
    raise config_lib.ConfigError(f"mesh: {e}") from None


def check_batch(task: tasks_lib.Task, batch: dict, specs: dict, step: int,
                rows: int | None = None) -> None:
  """The door for data: shapes, dtypes, finiteness and label ranges of a host batch (`rows`
  of them: this process's share, default the task's batch size), with a one-line DataError
  naming the task, step, key and record."""
  where = f"task {task.name} step {step}"
  rows = task.batch_size if rows is None else rows
  expected = {specs[m].input_key: specs[m].input_shape for m in task.modalities}
  on_device = {a.key for a in task.affine("train")}
  for key, shape in expected.items():
    x = batch.get(key)
    if x is None:
      raise data_lib.DataError(f"{where}: batch has no input {key!r} (has {sorted(batch)})")
    x = np.asarray(x)
    if x.shape[1:] != tuple(shape) or x.shape[0] != rows:
      raise data_lib.DataError(f"{where}: input {key!r} has shape {x.shape}, expected "
                               f"{(rows,) + tuple(shape)}")
    if key in on_device:  # the step maps the stored integers to floats (Task.affines)
      if x.dtype.kind not in "iuf":
        raise data_lib.DataError(f"{where}: input {key!r} has dtype {x.dtype}, expected numbers")
      if x.dtype.kind != "f":
        continue
    elif not np.issubdtype(x.dtype, np.floating):
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
    if task.head.kind == "regression":
      ok_shape = (np.issubdtype(y.dtype, np.floating) and y.ndim >= 1 and y.shape[0] == rows
                  and y.size == rows * classes)
      bad = ~np.isfinite(y.reshape(rows, -1)).all(-1) if ok_shape else None
      want = f"finite floats, {classes} per record"
    elif task.head.kind == "multilabel":
      ok_shape, bad = y.shape == (rows, classes), ~((y == 0) | (y == 1)).all(-1)
      want = f"multi-hot of shape {(rows, classes)}"
    else:
      ok_shape = y.shape == (rows,) and np.issubdtype(y.dtype, np.integer)
      bad = (y < 0) | (y >= classes) if ok_shape else None
      want = f"integers in [0, {classes}) of shape {(rows,)}"
    if not ok_shape:
      raise data_lib.DataError(f"{where}: label {key!r} has shape {y.shape} and dtype "
                               f"{y.dtype}, expected {want}")
    if bad.any():
      i = int(np.argmax(bad))
      raise data_lib.DataError(f"{where}: label {key!r} of record {i} is {y[i].tolist()}, "
                               f"expected {want}")


def compilation_cache(config) -> str | None:
  """Turns on JAX's persistent compilation cache (config.compilation_cache_dir; None: a
  `jax_cache` folder beside the data dir; '': off) unless the process already has one (set by
  JAX_COMPILATION_CACHE_DIR, or by an earlier run in this process: JAX opens one per
  process). Returns the folder in use, or None."""
  current = jax.config.jax_compilation_cache_dir
  wanted = config.get("compilation_cache_dir")
  if wanted == "" or (current and wanted is None):
    return current or None
  if wanted is None:
    data_dir = config.get("data_dir") or data_lib.default_data_dir()
    wanted = os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(data_dir))),
                          "jax_cache")
  if current and current != wanted:
    log.warning("compilation_cache_dir=%r: this process already caches in %r", wanted,
                current)
    return current
  jax.config.update("jax_compilation_cache_dir", wanted)
  return wanted


def build(config: ml_collections.ConfigDict, *, devices=None, data=None,
          abstract: bool = False) -> Experiment:
  """Validates the config, resolves tasks and builds model, state and compiled-step wrappers.
  `abstract`: the state as ShapeDtypeStructs with their shardings (nothing materialised), for
  lowering and compiling the steps (mmvit.plan). Datasets declared in config.datasets read
  random batches of their shapes (mmvit.data.synthetic)."""
  data = data or data_lib
  if config.get("datasets"):
    try:
      data = SyntheticData(config.datasets, data)
    except data_lib.DataError as e:
      raise config_lib.ConfigError(str(e)) from None
  tasks, tok_specs, schedule, mesh = prepare(config, devices=devices, data=data)
  config = config_lib.complete(config)
  if cache := compilation_cache(config):
    log.info("compilation cache: %s", cache)
  rules = rules_of(config)
  o = config.optimizer
  model = (nnx.eval_shape(lambda: build_model(config, tasks, tok_specs, config.seed))
           if abstract else build_model(config, tasks, tok_specs, config.seed))
  graphdef, params_state = nnx.split(model, nnx.Param)
  with sharding.using_rules(rules):
    param_sh = split_groups(sharding.param_shardings(model, mesh))
  params = split_groups(nnx.to_pure_dict(params_state))
  del model

  groups = {t.name: task_groups(params, t.modalities, t.name) for t in tasks}
  owners = {g: tuple(t.name for t in tasks if g in groups[t.name]) for g in params}
  settings = optim.group_settings(o, config.tasks, owners)
  for g, s in settings.items():
    if s is not o:
      log.info("optimizer of group %s: task %s's %s", g, owners[g][0], ", ".join(
          f"{f}={s[f]}" for f in config_lib.TASK_OPTIMIZER_FIELDS if s[f] != o[f]))
  tx = {g: optim.group_transform(s) for g, s in settings.items()}  # per group

  if abstract:
    opt = {g: jax.eval_shape(tx[g].init, p) for g, p in params.items()}
  else:
    with jax.set_mesh(mesh):
      params = jax.device_put(params, param_sh)
      opt = {g: tx[g].init(p) for g, p in params.items()}
  rep = sharding.replicated(mesh)
  # Optimizer moments take the sharding of their parameters; counters are replicated.
  opt_sh = {g: optax.tree_map_params(tx[g], lambda _, s: s, opt[g], param_sh[g],
                                     transform_non_params=lambda _: rep)
            for g in params}
  # guard: how many updates were skipped as non-finite, and the first such (step, task).
  guard = {"skipped": jnp.zeros((), jnp.int32), "step": jnp.full((), -1, jnp.int32),
           "task": jnp.full((), -1, jnp.int32)}
  state = {"params": params, "opt": opt, "guard": guard,
           "counts": {t.name: jnp.zeros((), jnp.int32) for t in tasks}}
  state_sh = {"params": param_sh, "opt": opt_sh, "guard": {k: rep for k in guard},
              "counts": {t.name: rep for t in tasks}}
  if abstract:
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         state, state_sh)
  else:
    state = jax.device_put(state, state_sh)

  traces: dict[str, int] = {}
  ctx = steps_lib.StepContext(
      graphdef=graphdef, tx=tx, tasks=tuple(tasks), groups=groups,
      horizon=schedule.batches_per_task(), seed=config.seed, grad_clip=o.grad_clip_norm,
      base_lr=float(o.lr), warmup_steps=int(o.warmup_steps), lr_schedule=o.lr_schedule,
      num_steps=schedule.num_steps, traces=traces, rules=rules)
  # Tasks of one signature run the program of the first of them (steps.TaskStep), traced
  # with each label's widest class count among them (config.share_steps='pad_classes').
  first: dict = {}
  for t in tasks:
    sig = (t.name,) if config.share_steps == "none" else step_signature(
        t, groups=groups[t.name], settings=settings, params=params, param_sh=param_sh,
        pad_classes=config.share_steps == "pad_classes")
    first.setdefault(sig, []).append(t)
  shares = {t.name: ts[0] for ts in first.values() for t in ts}
  task_by_name = {t.name: t for t in tasks}
  traced_as: dict = {}  # representative -> the Task its programs are traced with
  widths: dict = {}     # task -> label -> the program's class count, where padded
  for ts in first.values():
    r = ts[0]
    w = tuple(max(cs) for cs in zip(*(t.head.num_classes for t in ts)))
    traced_as[r.name] = r
    if any(t.head.num_classes != w for t in ts):
      traced_as[r.name] = dataclasses.replace(r, head=dataclasses.replace(r.head, num_classes=w))
      widths.update({t.name: dict(zip(r.head.labels, w)) for t in ts})
    if len(ts) > 1:
      log.info("tasks %s run the compiled steps of %s (same shapes, groups and settings%s)",
               ", ".join(t.name for t in ts[1:]), r.name,
               f"; heads padded to {', '.join(map(str, w))} classes" if r.name in widths else "")

  def class_pad(task) -> steps_lib.ClassPad | None:
    """The heads of the task's group narrower than its program's, in their places as the
    task's program takes the state (its own head and its representative's swapped), between
    the two shapes. Every head of the group is padded, not only the task's: the program holds
    the whole state, so each place must have one shape whichever member runs."""
    w = widths.get(task.name)
    if w is None:
      return None
    r = shares[task.name]
    place = {t.name: f"heads.{t.name}" for t in tasks if shares[t.name] is r}
    place[task.name], place[r.name] = f"heads.{r.name}", f"heads.{task.name}"
    sds = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    own, padded, shs = ({"params": {}, "opt": {}} for _ in range(3))
    for name, at in place.items():
      g = f"heads.{name}"
      if task_by_name[name].head.class_counts == w:
        continue
      wide = steps_lib.padded_head(params[g], w)
      own["params"][at], own["opt"][at] = sds(params[g]), sds(opt[g])
      padded["params"][at], padded["opt"][at] = wide, jax.eval_shape(tx[g].init, wide)
      shs["params"][at], shs["opt"][at] = param_sh[g], opt_sh[g]
    return steps_lib.ClassPad(own=own, padded=padded, shardings=shs)

  def own_pairs(task) -> tuple[tuple[str, str], ...]:
    r = shares[task.name]
    return tuple((f"{top}.{task.name}", f"{top}.{r.name}") for top in PER_TASK
                 if r is not task and f"{top}.{task.name}" in params)

  eval_cache: dict = {}

  def make_eval_step(task, views: int = 1, drop: tuple[str, ...] = ()):
    """Built once per (representative, views, drop)."""
    r = shares[task.name]
    if (r.name, views, drop) not in eval_cache:
      eval_cache[r.name, views, drop] = steps_lib.jit_eval_step(ctx, traced_as[r.name], views,
                                                                drop, param_sh, rep)
    return steps_lib.EvalStep(task.name, eval_cache[r.name, views, drop], own_pairs(task),
                              pads[task.name],
                              task.head.class_counts if task.name in widths else None)

  pads = {t.name: class_pad(t) for t in tasks}
  jitted = {t.name: steps_lib.jit_train_step(ctx, traced_as[t.name], state_sh, rep)
            for t in tasks if shares[t.name] is t}
  train_steps = {}
  for t in tasks:
    r = shares[t.name]
    train_steps[t.name] = steps_lib.TaskStep(
        t.name, jitted[r.name], steps_lib.task_args(ctx, t, padded=t.name in widths),
        own_pairs(t), None if r is t else r.name, pads[t.name])
  eval_steps = {t.name: make_eval_step(t, t.eval_views) for t in tasks}
  acc = (steps_lib.jit_accumulated_step(ctx, state_sh, rep) if schedule.kind == "accumulated"
         else None)
  return Experiment(config=config, tasks=tasks, schedule=schedule, mesh=mesh,
                    model_spec=ModelSpec.from_config(config.model), graphdef=graphdef,
                    state=state, state_shardings=state_sh, groups=groups,
                    train_steps=train_steps, eval_steps=eval_steps, accumulated_step=acc,
                    traces=traces, data=data, make_eval_step=make_eval_step,
                    tokenizer_specs=tok_specs, rules=rules)


def describe(exp: Experiment) -> dict:
  """What a checkpoint needs to rebuild its model without any dataset (JSON): the model,
  tokenizer, head and fusion specs, label names, and each task's inputs and eval preprocessing.
  `models.model.from_description` builds the model back."""
  asdict = dataclasses.asdict
  return {
      "task_order": [t.name for t in exp.tasks],  # JSON writers may sort the dicts' keys
      "model": asdict(exp.model_spec),
      "tokenizers": {m: asdict(s) for m, s in exp.tokenizer_specs.items()},
      "tasks": {t.name: {
          "modalities": list(t.modalities), "head": asdict(t.head),
          "fusion": asdict(t.fusion) if t.fusion else None, "dataset": t.dataset,
          "input_keys": list(t.input_keys), "label_names": dict(t.label_names),
          "eval_views": t.eval_views, "pp_eval": dict(t.pp).get("eval"),
          "media": dict(t.media),
          "eval_affine": [list(dataclasses.astuple(a)) for a in t.affine("eval")]}
          for t in exp.tasks},
  }


def task_seed(seed: int, task_index: int) -> int:
  return int(np.random.default_rng([seed, task_index, 0xDA7A]).integers(2**31 - 1))


def shard_kwargs(mesh, rows: int) -> dict:
  """The data functions' `shard` for this process's rows of batches of `rows` (none for one
  process, so stand-ins without it serve single-process tests)."""
  blocks, count = sharding.process_rows(mesh, rows)
  return {"shard": (blocks[0] if len(blocks) == 1 else blocks, count)} if count > 1 else {}


def data_threads(config) -> int:
  """config.data_threads, or its default: none where the loop's input thread makes the batches
  on a machine of at most 4 cores (a pool there took 1.4-4.2x the pipeline's CPU per batch,
  CPU that XLA lacks: scripts/bench.py --only=pipeline), else 2."""
  if config.get("data_threads") is not None:
    return int(config.data_threads)
  prefetch = config.get("prefetch", config_lib.DEFAULTS["prefetch"])
  return 0 if prefetch and (os.cpu_count() or 1) <= 4 else 2


def train_iterators(exp: Experiment) -> dict:
  cfg = exp.config
  threads = data_threads(cfg)
  return {t.name: exp.data.train_iterator(
      t.dataset, batch_size=t.batch_size, seed=task_seed(cfg.seed, t.index),
      data_dir=cfg.data_dir, split=t.train_split, augment=dict(t.augment) or None,
      cache=bool(cfg.cache_data), threads=threads, **t.data_kwargs(),
      **shard_kwargs(exp.mesh, t.batch_size),
      **({"workers": int(cfg.data_workers)} if cfg.data_workers else {}))
      for t in exp.tasks}
