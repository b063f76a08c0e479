"""The loop: restore, schedule, log, evaluate, save, preempt, test.

`run` trains an Experiment (mmvit.experiment) from the workdir's latest good checkpoint to the
end of its schedule, then evaluates on the validation and test splits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections

from mmvit import (checkpointing, config as config_lib, distributed, evaluate, prefetch,
                   sharding, stopping, throughput)
from mmvit.experiment import (Experiment, build, check_batch, describe, parameter_report,
                              shard_kwargs, train_iterators)
from mmvit.writers import MetricWriter

log = logging.getLogger("mmvit")


def evaluate_all(exp: Experiment, params, split: str, *, tasks: list[str] | None = None,
                 views: int | None = None, drop: tuple[str, ...] = ()
                 ) -> dict[str, dict[str, float]]:
  """Metrics of every task (or `tasks`) on `split`. `views` overrides the tasks' eval_views;
  `drop` evaluates fusion tasks with those modalities' streams removed."""
  with exp.layout():  # callers outside the loop too (scripts): the run's mesh and rules
    return _evaluate_all(exp, params, split, tasks, views, drop)


def _evaluate_all(exp: Experiment, params, split: str, tasks, views, drop):
  cfg = exp.config
  bs = int(cfg.eval_batch_size)
  n_batch = sharding.data_parallel_size(exp.mesh)
  bs = max(n_batch, bs - bs % n_batch)
  out = {}
  for t in exp.tasks:
    if tasks is not None and t.name not in tasks:
      continue
    k = t.eval_views if views is None else views
    extra = {"views": k} if k > 1 else {}
    batches = exp.data.eval_batches(t.dataset, split=split, batch_size=bs,
                                    data_dir=cfg.data_dir, **extra, **t.data_kwargs(),
                                    **shard_kwargs(exp.mesh, bs))
    if k == t.eval_views and not drop:
      step = exp.eval_steps[t.name]
    else:
      step = exp.make_eval_step(t, k, tuple(m for m in drop if m in t.modalities))
    out[t.name] = evaluate.metrics_of(t.head, _outputs(exp, t, step, params, batches, bs))
  return out


def _outputs(exp: Experiment, task, step, params, batches, rows: int):
  """(logits, batch) of every eval batch, whole on every process: each process placed its own
  rows, the step's logits are replicated, and labels and mask are gathered."""
  for b in batches:
    placed = sharding.shard_batch(b, exp.mesh, rows)
    logits = step(params, {k: v for k, v in placed.items() if k != "mask"})
    if jax.process_count() > 1:
      b = sharding.to_host({k: placed[k] for k in (*task.head.labels, "mask")})
    yield logits, b


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
  which the C-level handler writes at once on every signal, whichever thread it interrupts.

  In a run of several processes SIGTERM is left to JAX's preemption notifier, which
  jax.distributed.initialize installs: the processes agree on one step to stop at (Orbax's
  preemption sync point, checked after every step), so all save the same step and exit 0. A
  first Ctrl-C there becomes such a notice (a SIGTERM to this process)."""

  def __init__(self):
    self._signalled = False
    self._interrupted = False
    self._shared = _preemption_service()  # several processes: JAX's notifier takes SIGTERM
    self._previous = {}
    self._wakeup = None  # (the wakeup fd before ours, our pipe's write end)
    self._counter = None

  @property
  def signalled(self) -> bool:
    outer = self._outer()
    return self._signalled or (outer is not None and outer.signalled)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      read, write = os.pipe()
      os.set_blocking(write, False)
      signals = (signal.SIGINT,) if self._shared else (signal.SIGTERM, signal.SIGINT)
      self._previous = {s: signal.signal(s, self._handle) for s in signals}
      self._wakeup = (signal.set_wakeup_fd(write, warn_on_full_buffer=False), write)
      self._counter = threading.Thread(target=self._count, args=(read,), daemon=True,
                                       name="mmvit-signals")
      self._counter.start()
      if getattr(self._outer(), "signalled", False):
        self.__exit__()
        raise Stopped("stopped before the first step; nothing to save")
    return self

  def _outer(self):
    outer = getattr(self._previous.get(signal.SIGINT), "__self__", None)
    return outer if isinstance(outer, Preempted) else None

  def _handle(self, signum, frame):
    del signum, frame  # _count acts on it; this handler only keeps KeyboardInterrupt away

  def _count(self, read: int):
    with os.fdopen(read, "rb", buffering=0) as pipe:
      while signums := pipe.read(64):
        for signum in signums:  # the fd also carries any other signal Python handles
          if signum == signal.SIGTERM:
            self._signalled = True
          elif signum == signal.SIGINT:
            if self.signalled or self._interrupted:
              _exit_at_once()
            os.write(2, b"interrupted: stopping cleanly (Ctrl-C again to exit at once)\n")
            self._interrupted = True
            if self._shared:  # a preemption notice: every process stops after one step
              os.kill(os.getpid(), signal.SIGTERM)
            else:
              self._signalled = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      if previous is not None:
        signal.signal(s, previous)
    if self._wakeup is not None:
      previous_fd, write = self._wakeup
      signal.set_wakeup_fd(previous_fd)
      os.close(write)  # the counter reads what is left, then the end of the pipe
      self._counter.join()
      self._wakeup = self._counter = None
    if self._outer() is not None:  # a Ctrl-C after this one still exits at once
      self._outer()._signalled |= self._signalled


def _preemption_service() -> bool:
  """Whether JAX's preemption notifier runs (jax.distributed with its preemption service)."""
  from jax._src import distributed as jax_distributed  # noqa: PLC0415
  return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None


def _exit_at_once():
  """A second Ctrl-C: as a kill would (saves are atomic), with one line saying so."""
  try:
    sys.stdout.flush()  # the log so far
  except Exception:  # noqa: BLE001  (interrupted mid-write: exit regardless)
    pass
  os.write(2, b"interrupted again: exited at once; rerun to resume from the last save\n")
  os._exit(130)


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


def data_shards(exp: Experiment) -> dict[str, int]:
  """Task -> into how many shares its batches are read (1: one process reads them whole): a
  process reads 1/share of every batch (several blocks of it where the mesh interleaves)."""
  out = {}
  for t in exp.tasks:
    blocks, count = sharding.process_rows(exp.mesh, t.batch_size)
    out[t.name] = count // len(blocks)
  return out


def data_position(exp: Experiment, saved: dict, meta: dict) -> dict:
  """This process's iterator states from a step's saved ones ({'processes': n, 'states':
  [per process]}). Saved by as many processes reading as many row blocks: its own. Else the
  position carries over: every process of a run has read the same number k of the run's
  batches, which a pipeline without worker processes records as next_index = k x its rows;
  with data_workers the states hold the workers' positions, and a change is refused."""
  n, states = saved["processes"], saved["states"]
  old = meta.get("data_shards") or {t.name: 1 for t in exp.tasks}  # older steps: one process
  new = data_shards(exp)
  if n == jax.process_count() and old == new:
    return states[jax.process_index()]
  out = {}
  for t in exp.tasks:
    positions = {json.dumps(s.get(t.name), sort_keys=True) for s in states}
    first = states[0].get(t.name)
    if not (isinstance(first, dict) and set(first) == {"next_index"}):
      raise checkpointing.CheckpointError(
          f"the checkpoint was saved by {n} process(es) reading {old.get(t.name)} row block(s) "
          f"of task {t.name}, this run has {jax.process_count()} reading {new[t.name]}: its "
          "data position carries over only without data_workers (the workers' positions "
          "depend on their number); resume on the same processes and mesh, or with "
          "data_workers=0")
    batches = {json.loads(p)["next_index"] * old.get(t.name, 1) // t.batch_size
               for p in positions}
    if len(batches) != 1:
      raise checkpointing.CheckpointError(
          f"the data states of task {t.name} in the checkpoint disagree across its {n} "
          f"processes ({sorted(batches)} batches read): expected one position")
    out[t.name] = {"next_index": batches.pop() * t.batch_size // new[t.name]}
  log.info("data position carried over from %d process(es) to %d", n, jax.process_count())
  return out


def _restore(exp: Experiment, ckpt, iters: dict, cfg):
  """(start step, state, init_from lines, checkpoint metadata): the newest checkpoint that
  restores (its data positions into `iters`), else, for a fresh run, the parameters of
  config.init_from (and metadata {})."""
  state, fresh = exp.state, {name: it.get_state() for name, it in iters.items()}

  def set_data(saved, meta):
    states = data_position(exp, saved, meta)
    # Data states that read but do not fit (no entry for a task, a negative index, another
    # type) make the step unreadable like any damage: the previous step is tried.
    checkpointing.check_data_states(states, fresh)
    for name, it in iters.items():
      it.set_state(states[name])
  failed = None
  try:
    restored = (ckpt.restore_latest(checkpointing.abstract(state, exp.state_shardings),
                                    set_data) if ckpt.enabled else None)
  except checkpointing.CheckpointError as e:
    if jax.process_count() == 1:
      raise
    restored, failed = None, e
  if jax.process_count() > 1:  # all resume one step, or all stop: none waits in a collective
    mine = "failed" if failed else str(restored[0]) if restored else "none"
    steps = distributed.gather_strings(mine)
    if failed:
      raise failed
    if "failed" in steps:
      raise checkpointing.CheckpointError(
          f"process {steps.index('failed')} could not restore from {ckpt.directory} (its log "
          "says why); every process stops")
    if len(set(steps)) > 1:
      which = ", ".join(f"process {p}: {s}" for p, s in enumerate(steps))
      raise checkpointing.CheckpointError(
          f"the processes restored different steps of {ckpt.directory} ({which}): every "
          "process must read the same checkpoints (one filesystem for the workdir)")
  if restored is not None:
    start, state, _, meta = restored
    log.info("resumed from %s at step %d", ckpt.directory, start)
    return start, state, list(meta.get("init_from", [])), meta  # init: what it started from
  init_lines = []
  if sources := config_lib.init_sources(cfg):
    # Only a fresh run is initialised from other runs; a resumed one continues its own params.
    loaded, init_lines, rows = checkpointing.load_params(sources, state["params"],
                                                         exp.tokenizer_specs)
    state = {**state, "params": {**state["params"], **loaded}}
    for line in init_lines:
      log.info("initialised %s", line)
    exp.init_report = [r.as_dict() for r in rows]
  return 0, state, init_lines, {}


class StepTimer:
  """Honest timing: wall time of training steps only. Steps that compile, evaluation and
  checkpoint saves are measured and excluded; the clock is read after blocking on the state.
  The timed steps' work (examples, tokens, model FLOPs) gives the throughput figures."""

  def __init__(self):
    self.train_time, self.timed_steps = 0.0, 0
    self.work = throughput.Work(0, 0, 0.0)
    self._excluded, self._seg_steps = 0.0, 0
    self._seg_work = throughput.Work(0, 0, 0.0)
    self._seg_start = time.perf_counter()

  def step(self, compiled: bool, started: float, work: throughput.Work | None = None) -> None:
    """After a step begun at `started`; a step that compiled is excluded."""
    if compiled:
      self._excluded += time.perf_counter() - started
    else:
      self._seg_steps += 1
      if work is not None:
        self._seg_work = self._seg_work + work

  def exclude(self, started: float) -> None:
    self._excluded += time.perf_counter() - started

  def close_segment(self) -> float:
    """Ends a segment (the caller blocked on the state) and returns the steps/s so far."""
    now = time.perf_counter()
    self.train_time += now - self._seg_start - self._excluded
    self.timed_steps += self._seg_steps
    self.work = self.work + self._seg_work
    self._seg_start, self._excluded, self._seg_steps = now, 0.0, 0
    self._seg_work = throughput.Work(0, 0, 0.0)
    return self.rate

  @property
  def rate(self) -> float:
    return self.timed_steps / self.train_time if self.train_time > 0 else float("nan")

  def summary(self, devices: int, peak_tflops: float) -> dict:
    return throughput.summary(self.work, self.train_time, self.timed_steps, devices,
                              peak_tflops)


def _check_finite(exp: Experiment, state, max_skips: int, ckpt) -> None:
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


def _read_step(exp: Experiment, iters: dict, step: int, shards: dict[str, int]):
  """((step key, placed batches), {task: iterator state}) of the schedule's step: the host
  batches of its task(s), checked at the door and placed on the mesh (the input thread's
  work). `shards`: `data_shards(exp)`, into how many shares each task's batches are read."""
  names = exp.schedule.tasks_at(step)
  key = "accumulated" if exp.schedule.kind == "accumulated" else names[0]
  host = {n: next(iters[n]) for n in names}
  by_name = exp.task_by_name
  for n in names:  # rows: of the global batch; a process has its share
    check_batch(by_name[n], host[n], exp.tokenizer_specs, step,
                by_name[n].batch_size // shards[n])
  with exp.layout():
    batches = {n: sharding.shard_batch(b, exp.mesh, by_name[n].batch_size)
               for n, b in host.items()}
  return (key, batches), {n: iters[n].get_state() for n in names}


def _run_step(exp: Experiment, state, step: int, key: str, batches: dict):
  """(new state, metrics): the compiled step on placed batches."""
  step_arr = jnp.asarray(step, jnp.int32)
  if key == "accumulated":
    return exp.accumulated_step(state, batches, step_arr)
  return exp.train_steps[key](state, batches[key], step_arr)


def _mib(n: float) -> str:
  return f"{n / 2**20:.2f} MiB"


def state_memory(exp: Experiment) -> dict:
  """Per-device bytes of parameters and optimizer state, and the fraction replicated."""
  out = {part: sharding.state_report(exp.state[part]) for part in ("params", "opt")}
  log.info("state per device: parameters %s (%.0f%% replicated), optimizer %s (%.0f%% "
           "replicated), on a mesh of %s", _mib(out["params"]["per_device_bytes"]),
           100 * out["params"]["fraction_replicated"], _mib(out["opt"]["per_device_bytes"]),
           100 * out["opt"]["fraction_replicated"], dict(exp.mesh.shape))
  return out


def step_memory(exp: Experiment, key: str, state, batches, step: int) -> dict:
  """The compiled step's memory per device (XLA's memory_analysis; the executable is cached,
  so asking after the first call compiles nothing)."""
  step_arr = jnp.asarray(step, jnp.int32)
  fn, arg = ((exp.accumulated_step, batches) if key == "accumulated" else
             (exp.train_steps[key], batches[key]))
  try:
    m = fn.lower(state, arg, step_arr).compile().memory_analysis()
  except Exception:  # noqa: BLE001  (a backend without the analysis: nothing to report)
    return {}
  out = throughput.compiled_memory(m)
  log.info("compiled step %s per device: arguments %s, outputs %s (%s aliased), "
           "temporaries %s", key, _mib(out["argument"]), _mib(out["output"]),
           _mib(out["alias"]), _mib(out["temp"]))
  return out


def _run(closing: contextlib.ExitStack, config, workdir, *, devices, stop_at, data,
         allow_config_change) -> dict:
  config_lib.validate(config)
  # Processes of one run must train one thing: another config or code is refused before any
  # array is placed (JAX would report it then with both arrays printed in full).
  distributed.agree(config=distributed.config_digest(config_lib.complete(config)),
                    code=distributed.code_digest())
  exp = build(config, devices=devices, data=data)
  cfg = exp.config
  work = step_work(exp)
  peak = peak_tflops(exp, work)  # a CPU measures its own, on one device: before the mesh
  closing.enter_context(exp.layout())  # the mesh and the sharding rules, for all that follows
  primary = distributed.primary()  # writes the workdir's files; every process saves checkpoints
  if workdir and primary:  # one run per workdir: another would move its steps, repeat metrics
    closing.enter_context(checkpointing.WorkdirLock(workdir))
  changed = checkpointing.guard_workdir(workdir, cfg, allow_config_change) if workdir else False
  writer = closing.enter_context(MetricWriter(workdir, enabled=workdir is not None and primary))
  ckpt = closing.enter_context(checkpointing.Checkpointer(
      workdir or "", keep=int(cfg.keep_checkpoints), enabled=workdir is not None))
  report = parameter_report(exp.state["params"], exp.groups)
  memory = {"state": state_memory(exp), "steps": {}}
  log.info("parameters: %s", json.dumps(report))

  iters = train_iterators(exp)
  for it in iters.values():  # worker processes (data_workers) end with the run
    if hasattr(it, "close"):
      closing.callback(it.close)
  start, state, init_lines, saved = _restore(exp, ckpt, iters, cfg)
  if workdir and primary:  # only now the checkpoints fit: a refused run leaves the workdir as is
    checkpointing.write_config(workdir, cfg, keep_previous=changed)
    writer.drop_after(start)  # the steps after the restored one are trained (and logged) again
    with open(os.path.join(workdir, "params.json"), "w") as f:
      json.dump(report, f, indent=2)
    if exp.init_report is not None:  # what each parameter was started from (a fresh run only)
      with open(os.path.join(workdir, "init_from.json"), "w") as f:
        json.dump({"sources": init_lines, "parameters": exp.init_report}, f, indent=1)

  schedule = exp.schedule
  end = schedule.num_steps if stop_at is None else min(stop_at, schedule.num_steps)
  eval_every, log_every, ckpt_every = cfg.eval_every, cfg.log_every, cfg.checkpoint_every
  eval_split, test_split = cfg.eval_split, cfg.test_split
  wall = stopping.WallClock(cfg.max_wall_time)
  stopper = (stopping.EarlyStopping.from_config(cfg.early_stopping, saved.get("early_stopping"))
             if cfg.early_stopping else None)
  stop = None  # why the run ends before `end`: 'early_stopping' or 'max_wall_time'
  if stopper is not None and saved.get("stopped") == "early_stopping":
    log.info("the run stopped early at step %d (%s best at step %s); nothing more to train",
             start, stopper.metric, stopper.best_step)
    end, stop = start, "early_stopping"
  elif stopper is not None and eval_every and 0 < start < end and start % eval_every == 0 and (
      stopper.last_step < start):  # saved on preemption before its evaluation: make it now
    res = evaluate_all(exp, state["params"], eval_split)
    for name, r in res.items():
      writer.write(start, name, eval_split, r)
    if stopper.update(start, res):
      end, stop = start, "early_stopping"
  max_skips = int(cfg.nonfinite.max_skips) if cfg.nonfinite.policy == "skip" else 0
  compiled: set[str] = set()
  timer = StepTimer()
  last = {}

  shards = data_shards(exp)

  # The input thread reads ahead; a checkpoint saves the position after its own step.
  states = {name: it.get_state() for name, it in iters.items()}
  reader = closing.enter_context(prefetch.Prefetcher(
      lambda step: _read_step(exp, iters, step, shards), range(start, end), states,
      depth=int(cfg.prefetch)))

  description = describe(exp)  # the checkpoint rebuilds its model without any dataset

  def meta(step):
    return {"step": step, "seed": cfg.seed, "schedule": schedule.kind,
            "config_digest": checkpointing.config_digest(cfg), "init_from": init_lines,
            "processes": jax.process_count(), "devices": jax.device_count(),
            "data_shards": shards, "model": description, "stopped": stop,
            "early_stopping": stopper.state() if stopper is not None else None}

  preempted = None
  with Preempted() as sigterm:
    for step in range(start, end):
      t0 = time.perf_counter()
      item = reader.get(step)
      (key, placed), states = item.batches, item.states
      state, metrics = _run_step(exp, state, step, key, placed)
      last[key] = metrics
      if key not in compiled:
        jax.block_until_ready(metrics)
        compiled.add(key)
        log.info("compiled the %s step in %.1f s (with its first run; a persistent cache "
                 "hit is a load)", key, time.perf_counter() - t0)
        memory["steps"][key] = step_memory(exp, key, state, placed, step)
        timer.step(True, t0)
      else:
        timer.step(False, t0, work[key])
      done = step + 1
      if log_every and (done % log_every == 0 or done == end):
        m = jax.device_get(last[key])
        jax.block_until_ready(state["counts"])
        rate = timer.close_segment()
        eta = (end - done) / rate if rate == rate and rate else 0.0
        log.info("step %d/%d task=%s loss=%.4f lr=%.2e %.2f steps/s (excl. compile/eval/ckpt)%s"
                 " eta %s", done, end, key, float(m["loss"]), float(m["lr"]), rate,
                 _format_rates(timer.summary(jax.device_count(), peak)), _format_eta(eta))
        writer.write(done, key, "train", {k: float(v) for k, v in m.items()})
        _check_finite(exp, state, max_skips, ckpt)
      t1 = time.perf_counter()
      # JAX's sync point counts from 0 in every process of this run (a notice before the first
      # step agrees on 1), so it is asked about this run's steps, not the global step.
      if sigterm.signalled or ckpt.reached_preemption(done - start):
        _check_finite(exp, state, max_skips, ckpt)
        ckpt.save(done, state, states, meta(done), force=True)
        ckpt.wait()
        log.warning("preempted: saved step %d to %s; rerun the same command to resume", done,
                    ckpt.directory)
        preempted = done
        break
      if eval_every and done % eval_every == 0 and done != end:
        evals = evaluate_all(exp, state["params"], eval_split)
        for name, res in evals.items():
          writer.write(done, name, eval_split, res)
          log.info("eval %s step %d %s", name, done, _fmt(res))
        if stopper is not None and stopper.update(done, evals):
          stop = "early_stopping"
      if stop is None and done != end and wall.reached(done - start):
        log.warning("config.max_wall_time=%ss reached at step %d: saving and evaluating; "
                    "rerun the same command to continue", cfg.max_wall_time, done)
        stop = "max_wall_time"
      if ckpt_every and done % ckpt_every == 0 and done != end and stop is None:
        _check_finite(exp, state, max_skips, ckpt)
        ckpt.save(done, state, states, meta(done))
      timer.exclude(t1)
      if stop is not None:  # ends as the last step does: saved below, then evaluated
        end = done
        break

    jax.block_until_ready(state["counts"])
    timer.close_segment()  # the steps since the last progress line count too
    final_step = max(end, start) if preempted is None else preempted
    results = {}
    if preempted is None:
      _check_finite(exp, state, max_skips, ckpt)
      if end > start:
        ckpt.save(final_step, state, states, meta(final_step), force=True)
      ckpt.wait()
      for split in dict.fromkeys([eval_split, test_split]):
        results[split] = evaluate_all(exp, state["params"], split)
        for name, res in results[split].items():
          writer.write(final_step, name, split, res)
          log.info("%s %s: %s", split, name, _fmt(res))
  ckpt.close()
  writer.close()
  steps_per_s = timer.rate if timer.train_time else float("nan")
  summary = {"test": results.get(test_split), eval_split: results.get(eval_split),
             "params": report, "steps": final_step, "steps_per_s": steps_per_s,
             "traces": dict(exp.traces), "preempted": preempted, "stopped": stop,
             "early_stopping": stopper.state() if stopper is not None else None,
             "skipped_updates": int(jax.device_get(state["guard"]["skipped"])),
             "init_from": init_lines, "memory": memory,
             "throughput": {**timer.summary(jax.device_count(), peak), "peak_tflops": peak,
                            "model_tflops_per_step": {k: w.flops / 1e12
                                                      for k, w in work.items()}}}
  if workdir and preempted is None and primary:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(summary, f, indent=2)
  summary["state"] = state
  return summary


def step_work(exp: Experiment) -> dict[str, throughput.Work]:
  """Step key (task, or 'accumulated') -> the examples, tokens and model FLOPs of one step."""
  out = {t.name: throughput.task_work(exp.model_spec, t, exp.tokenizer_specs)
         for t in exp.tasks}
  if exp.schedule.kind == "accumulated":
    out = {"accumulated": sum(out.values(), throughput.Work(0, 0, 0.0))}
  return out


def peak_tflops(exp: Experiment, work: dict[str, throughput.Work]) -> float:
  """One device's peak for MFU: config.peak_tflops, else by device kind (logged with the
  steps' `work`). Simulated CPU devices share the CPU: each gets its share of the measured
  peak."""
  if exp.config.get("peak_tflops"):
    peak, source = float(exp.config.peak_tflops), "config.peak_tflops"
  else:
    device = exp.mesh.devices.flat[0]
    peak, source = throughput.device_peak_tflops(device)
    if device.platform == "cpu":
      peak /= jax.local_device_count()
      source += f", shared by {jax.local_device_count()} device(s)"
  log.info("peak %.3g TFLOP/s per device (%s); model TFLOPs per step: %s", peak, source,
           ", ".join(f"{k} {w.flops / 1e12:.3g}" for k, w in work.items()))
  return peak


def _format_rates(r: dict) -> str:
  if not r:
    return ""
  return (f" {r['examples_per_s']:.0f} ex/s {r['tokens_per_s']:.0f} tok/s "
          f"{r['tflops_per_device'] * 1e3:.3g} GFLOP/s/device MFU {r['mfu']:.2%}")


def _fmt(res: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4f}" if k != "num_examples" else f"n={int(v)}"
                  for k, v in res.items())
