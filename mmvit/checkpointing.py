"""Orbax checkpoints in <workdir>/checkpoints: model, optimizer and task counts (one pytree),
the grain iterator state of every task, and metadata (step, seed, schedule, config digest).

The schedule and every random key are derived from (seed, step), so restoring the arrays and
the iterator states is enough to continue exactly where a run stopped. Orbax commits a step
atomically (written to a temporary directory, then renamed), so a save cut short by a kill is
never listed as a step. A step that cannot be read is moved aside (renamed, never deleted) and
the previous one is used; a step that does not fit the config is refused before anything is
moved. One run at a time holds a workdir (WorkdirLock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping

import jax
import numpy as np
import ml_collections
import orbax.checkpoint as ocp

log = logging.getLogger("mmvit")

# Fields that may change between runs in one workdir: they do not change what is trained. The
# layout fields (mesh, mesh_dcn, sharding) change where arrays live and the order of float
# sums; a run resumes on another layout (loop.data_position). So do the attention kernel and
# rematerialisation (how a step is computed, not what), the compilation cache and the peak.
HARMLESS_FIELDS = ("log_every", "eval_every", "eval_batch_size", "checkpoint_every",
                   "keep_checkpoints", "data_dir", "mesh", "mesh_dcn", "sharding",
                   "model.attention", "model.remat", "compilation_cache_dir", "peak_tflops",
                   "prefetch", "data_threads", "max_wall_time", "early_stopping")


class CheckpointError(ValueError):
  """A checkpoint that does not fit this run: the message is one line naming what differs."""


class WorkdirError(ValueError):
  """A workdir that belongs to another run."""


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def run_fields(config) -> dict:
  """The config as flat field -> value, without the fields that may change on resume."""
  flat = _flat(json.loads(config.to_json_best_effort(sort_keys=True)))
  return {k: v for k, v in flat.items() if not _harmless(k)}


def _harmless(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in HARMLESS_FIELDS)


def config_digest(config) -> str:
  return hashlib.sha256(json.dumps(run_fields(config), sort_keys=True).encode()).hexdigest()[:16]


class WorkdirLock:
  """An exclusive flock on <workdir>/.lock for the run's life, the holder's pid, host and start
  written in it: a second run on the workdir is refused with a WorkdirError naming the holder.
  The kernel drops the lock when its process dies, even by SIGKILL, so a killed run never
  blocks its rerun. (flock is advisory and needs a filesystem that supports it.)"""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, ".lock")
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "holder not recorded yet"
      os.close(fd)
      raise WorkdirError(f"workdir {workdir} is in use by another run ({holder}; lock "
                         f"{self.path}): wait for it to end, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    self.fd = fd

  def release(self):
    if self.fd is not None:
      os.close(self.fd)  # closing the descriptor releases the lock
      self.fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _checkpoint_digest(ckpts: str) -> tuple[int, str] | tuple[None, None]:
  """(step, config digest) from the `meta` item of the newest step where it reads."""
  steps = sorted((int(n) for n in os.listdir(ckpts) if n.isdigit()), reverse=True)
  for step in steps:
    try:
      with open(os.path.join(ckpts, str(step), "meta", "metadata")) as f:
        digest = json.load(f).get("config_digest")
    except (OSError, ValueError, AttributeError):
      continue
    if isinstance(digest, str):
      return step, digest
  return None, None


def _completed(saved: dict) -> dict:
  """A saved config.json with the defaults filled in, as this version's runs write it, so that
  a config that spells out a default (or was saved before that default was written) matches."""
  from mmvit import config as config_lib  # noqa: PLC0415
  try:
    return json.loads(config_lib.complete(ml_collections.ConfigDict(saved)).to_json_best_effort())
  except Exception:  # noqa: BLE001  (a config.json that is not a config: compared as it is)
    return saved


def guard_workdir(workdir: str, config, allow_config_change: bool = False) -> bool:
  """Refuses to train a different config in a workdir holding another run's checkpoints,
  judged by its config.json or, when that is missing, by the config digest in the newest
  checkpoint's meta. Writes nothing (see write_config). Returns True when a change was allowed."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  ckpts = os.path.join(workdir, "checkpoints")
  has_ckpts = os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
  if not has_ckpts:
    return False
  if os.path.exists(path):
    with open(path) as f:
      old = _flat(_completed(json.load(f)))
    old = {k: v for k, v in old.items() if not _harmless(k)}
    new = json.loads(json.dumps(run_fields(config)))
    diff = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if not diff:
      return False
    k = diff[0]
    what = (f"{k} was {old.get(k, '<unset>')!r}, now {new.get(k, '<unset>')!r}"
            + (f" (and {len(diff) - 1} more fields)" if len(diff) > 1 else ""))
  else:
    step, digest = _checkpoint_digest(ckpts)
    if digest is None or digest == config_digest(config):
      return False
    what = (f"config.json is missing and the config digest in the meta of step {step} is "
            f"{digest}, this config's is {config_digest(config)}")
  if not allow_config_change:
    raise WorkdirError(f"workdir {workdir} holds checkpoints of another config: {what}; use "
                       "another --workdir, or --allow_config_change to resume it anyway")
  log.warning("config changed in %s (%s); resuming anyway (--allow_config_change)", workdir,
              what)
  return True


def write_config(workdir: str, config, keep_previous: bool = False) -> None:
  """Saves the config beside the checkpoints, atomically (temp file + rename). Called only once
  the checkpoints were found compatible, so a refused run leaves the old config.json and the
  old command still runs. `keep_previous`: an allowed change keeps the old one, renamed."""
  path = os.path.join(workdir, "config.json")
  if keep_previous and os.path.exists(path):
    kept = os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.rename(path, kept)
    log.warning("the previous config of %s is kept as %s", workdir, kept)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def _shapes(tree, prefix="") -> dict:
  """path -> leaf, for nested mappings and sequences (orbax's metadata tree is a Mapping, and
  stores a NamedTuple as a dict of its fields, a tuple as a list, an empty node as None)."""
  if isinstance(tree, Mapping):
    items = tree.items()
  elif hasattr(tree, "_fields"):  # NamedTuple (optax states): by field name, as orbax stores it
    items = zip(tree._fields, tree)
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  elif tree is None:
    return {}
  else:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(_shapes(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def _first_mismatch(want, have, dtypes: bool = False):
  """The first leaf, in sorted path order, where two trees of arrays (or array metadata)
  differ, as (path, "missing" | "extra" | "shape" | "dtype", wanted leaf, present leaf); None
  when they match. "missing": in `want` only; "extra": in `have` only. Dtypes are compared
  only when asked (a partial restore of parameters casts them)."""
  want, have = _shapes(want), _shapes(have)
  for k in sorted(set(want) | set(have)):
    if k not in have:
      return k, "missing", want[k], None
    if k not in want:
      return k, "extra", None, have[k]
    if tuple(have[k].shape) != tuple(want[k].shape):
      return k, "shape", want[k], have[k]
    if dtypes and np.dtype(have[k].dtype) != np.dtype(want[k].dtype):
      return k, "dtype", want[k], have[k]
  return None


def check_data_states(states, fresh: dict) -> None:
  """A ValueError naming the task and field where the restored iterator states differ in form
  from `fresh` (each task's state as a new iterator gives it): no entry for a task, another key
  or type, a negative integer (grain's positions and counters are never negative)."""
  if not isinstance(states, Mapping):
    raise ValueError(f"data states are {type(states).__name__}, expected a dict by task")
  for task, like in fresh.items():
    if task not in states:
      raise ValueError(f"data states have no entry for task {task} (have "
                       f"{', '.join(map(str, states)) or 'none'})")
    leaves = _json_leaves(states[task])
    for path, want in _json_leaves(like).items():
      have = leaves.get(path, KeyError)
      where = f"data state of task {task}" + (f": {path}" if path else "")
      if have is KeyError:
        raise ValueError(f"{where} is missing")
      if type(have) is not type(want):
        raise ValueError(f"{where} is {have!r}, expected type {type(want).__name__}")
      if isinstance(have, int) and have < 0:
        raise ValueError(f"{where} is {have}, expected an integer >= 0")


def _json_leaves(x, prefix="") -> dict:
  if isinstance(x, Mapping):
    return {k: v for key, item in x.items()
            for k, v in _json_leaves(item, f"{prefix}/{key}" if prefix else str(key)).items()}
  if isinstance(x, list):
    return {k: v for i, item in enumerate(x)
            for k, v in _json_leaves(item, f"{prefix}/{i}" if prefix else str(i)).items()}
  return {prefix: x}


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs what it also raises, with tracebacks and several records for one damaged step
  (thousands of lines for one truncated file); the fallback reports each step in one line, so
  absl (Orbax's logger), orbax and asyncio are silenced while steps are read. Garbage is
  collected inside, so errors of tasks nobody awaited are dropped here too."""
  loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio")]
  levels = [lg.level for lg in loggers]
  hook = sys.unraisablehook
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda _: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = hook
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


class _NoOrbaxTracebacks(logging.Filter):
  """Orbax logs a traceback with each error it then raises (three for one failed background
  save); the run reports the error in one line, so a record whose traceback passes through
  Orbax's code keeps its message only."""

  def filter(self, record):
    tb = record.exc_info[2] if isinstance(record.exc_info, tuple) else None
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        record.exc_info = record.exc_text = None
        break
      tb = tb.tb_next
    return True


def _join_orbax_threads(timeout: float = 120.0):
  """A failed save leaves its other writers running; closing the manager under them makes
  each print tracebacks ("Event loop is closed"), so they are waited for first."""
  deadline = time.monotonic() + timeout
  for t in threading.enumerate():
    if t is not threading.current_thread() and type(t).__module__.startswith("orbax."):
      t.join(max(0.0, deadline - time.monotonic()))


class DataStatesHandler(ocp.JsonCheckpointHandler):
  """The data iterator states of every process, one JSON file each (process_<i>-of-<n>.json):
  in a run of several processes each reads its own rows, so each has its own position. Every
  process writes its file (Orbax's JSON item is written by the primary host alone); a restore
  reads them all, so that a run on another number of processes can carry the position over
  (`loop._restore`). A step saved before this handler existed (one JSON `metadata` file) reads
  as one process's."""

  async def _save_fn(self, x, directory):
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(x))

  def restore(self, directory, item=None, args=None) -> dict:
    """{'processes': n, 'states': [the states of process 0, ..., n - 1]}."""
    del item, args
    names = [p.name for p in directory.iterdir() if p.name.startswith("process_")]
    if not names and (directory / "metadata").exists():  # written by one process, before
      return {"processes": 1, "states": [json.loads((directory / "metadata").read_text())]}
    counts = {n.rsplit("-of-", 1)[-1].removesuffix(".json") for n in names}
    if len(counts) != 1 or not next(iter(counts)).isdigit():
      raise FileNotFoundError(f"{directory} holds no data states of one run ({sorted(names)})")
    count = int(counts.pop())
    states = []
    for i in range(count):
      path = directory / f"process_{i}-of-{count}.json"
      if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
      states.append(json.loads(path.read_text()))
    return {"processes": count, "states": states}


@ocp.args.register_with_handler(DataStatesHandler, for_save=True)
@dataclasses.dataclass
class DataStatesSave(ocp.args.CheckpointArgs):
  item: dict


@ocp.args.register_with_handler(DataStatesHandler, for_restore=True)
@dataclasses.dataclass
class DataStatesRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, enabled: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.enabled = enabled
    self.keep = keep
    self._pending = None  # the step whose asynchronous save may still fail
    self._filter = _NoOrbaxTracebacks()
    self.manager = None
    if enabled:
      logging.getLogger("absl").addFilter(self._filter)  # Orbax logs through absl
      self.manager = self._manager()

  def _manager(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=True)
    with _quiet_orbax():  # it reads every step's metadata; restore_latest reports damage
      return ocp.CheckpointManager(self.directory, options=options, item_handlers={
          "state": ocp.StandardCheckpointHandler(), "data": DataStatesHandler(),
          "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step() if self.manager is not None else None

  def save(self, step: int, state, data_states: dict, meta: dict, force: bool = False) -> bool:
    """Starts an asynchronous save. An OSError (a full disk...) of this save or of the previous
    one, which surfaces only now, is a one-line CheckpointError; saved steps stay as they are."""
    if not self.enabled:
      return False
    self.wait()  # Orbax would wait here too; this names the step whose write failed
    self._pending = step
    try:
      return self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=DataStatesSave(data_states),
          meta=ocp.args.JsonSave(meta)), force=force)
    except OSError as e:
      _join_orbax_threads()
      raise self._save_error(step, e) from None

  def _save_error(self, step: int, e: OSError) -> CheckpointError:
    saved = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit() and int(n) != step)
    return CheckpointError(
        f"saving checkpoint step {step} to {self.directory} failed: {' '.join(str(e).split())}; "
        f"the steps saved before ({', '.join(map(str, saved)) or 'none'}) are untouched")

  def reached_preemption(self, step: int) -> bool:
    """True at Orbax's preemption sync point (multi-host: all hosts agree on the step)."""
    return bool(self.enabled and self.manager.reached_preemption(step))

  def _state_metadata(self, step: int):
    """The array metadata tree of a step's state, or OSError when it does not read."""
    meta = self.manager.item_metadata(step)["state"]
    if meta is None:
      raise OSError("no readable metadata for 'state'")
    return getattr(meta, "tree", meta)

  def _check_compatible(self, step: int, tree, abstract_state):
    """One line naming the first array (parameter, optimizer state, count, guard) whose path,
    shape or dtype differs from what this config builds, instead of a failed restore."""
    # Parameters first: they name the model change; then optimizer state, counts and guard.
    bad = (_first_mismatch({"params": abstract_state["params"]},
                           {"params": tree.get("params")}, dtypes=True)
           or _first_mismatch(abstract_state, tree, dtypes=True))
    if bad is None:
      return
    k, kind, want, have = bad
    name = f"parameter {k[len('params/'):]}" if k.startswith("params/") else k
    what = {"missing": f"{name}: in this config only",
            "extra": f"{name}: in the checkpoint only",
            "shape": f"{name} has shape {tuple(getattr(have, 'shape', ()))}, this config expects "
                     f"{tuple(getattr(want, 'shape', ()))}",
            "dtype": f"{name} has dtype {getattr(have, 'dtype', None)}, this config expects "
                     f"{getattr(want, 'dtype', None)}"}[kind]
    raise CheckpointError(f"checkpoint step {step} in {self.directory} was written by an "
                          f"incompatible config: {what}; use the matching config or another "
                          "--workdir")

  def restore_latest(self, abstract_state, set_data=None):
    """Restores the newest readable step onto the shardings of `abstract_state`, hands its data
    states and meta to `set_data` and returns (step, state, data states, meta), or None when there is
    no checkpoint. A step whose data states `set_data` rejects (raises) is unreadable too.

    A step of an incompatible config is refused (CheckpointError) before anything is moved.
    Unreadable steps are renamed to <step>.unreadable-<time> and reported; the previous step is
    tried. When no step can be restored the run stops: it never starts over on its own."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    aside = sorted(n for n in os.listdir(self.directory) if ".unreadable-" in n)
    if not steps and aside:
      raise CheckpointError(f"{self.directory} holds only steps moved aside as unreadable "
                            f"({', '.join(aside)}) and no step to resume: inspect them, and move "
                            "them out of it to start from step 0")
    # Compatibility is judged on the newest step whose metadata reads, before any is moved.
    for step in steps:
      try:
        with _quiet_orbax():
          tree = self._state_metadata(step)
      except Exception:  # noqa: BLE001  (damaged: the loop below moves it aside)
        continue
      self._check_compatible(step, tree, abstract_state)
      break
    moved = []
    for step in steps:
      try:
        with _quiet_orbax():
          self._check_compatible(step, self._state_metadata(step), abstract_state)
          out = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=DataStatesRestore(),
              meta=ocp.args.JsonRestore()))
          if set_data is not None:
            set_data(out["data"], out["meta"])
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001  (any read failure means a damaged step)
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        if jax.process_count() > 1:  # processes cannot agree on a rename: a person moves it
          raise CheckpointError(
              f"checkpoint step {step} in {self.directory} is unreadable on process "
              f"{jax.process_index()} ({reason}); a run of several processes moves nothing "
              "aside: move that step out of the directory and rerun") from None
        target = os.path.join(self.directory, f"{step}.unreadable-{time.strftime('%H%M%S')}")
        log.error("checkpoint step %d in %s is unreadable (%s); moved it to %s and trying the "
                  "previous step", step, self.directory, reason, target)
        with _quiet_orbax():
          self.manager.close()
        os.rename(os.path.join(self.directory, str(step)), target)
        self.manager = self._manager()
        moved.append(f"{step} -> {os.path.basename(target)}")
        continue
      return step, out["state"], out["data"], out["meta"]
    if moved:
      raise CheckpointError(f"no checkpoint in {self.directory} could be restored (moved aside: "
                            f"{', '.join(moved)}); nothing was trained: inspect them, and move "
                            "them out of it to start from step 0")
    return None

  def wait(self):
    if self.manager is None:
      return
    try:
      self.manager.wait_until_finished()
    except OSError as e:
      _join_orbax_threads()
      raise self._save_error(self._pending, e) from None

  def close(self):
    """Waits for the pending save and closes Orbax's threads; idempotent. Must run on every
    path out of a run: threads left running die at interpreter shutdown, mid-write."""
    if self.manager is None:
      return
    failed = True
    try:
      self.wait()
      failed = False
    finally:
      manager, self.manager = self.manager, None
      try:
        manager.close()
      except OSError as e:
        if not failed:  # else wait() raised this save's error just now
          raise self._save_error(self._pending, e) from None
      finally:
        logging.getLogger("absl").removeFilter(self._filter)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _step_dir(path: str, step: int | None, where: str) -> str:
  """<workdir>/checkpoints/<step>, <checkpoints>/<step> or a step directory itself."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    if step is not None and os.path.basename(path) != str(step):
      raise CheckpointError(f"{where}.workdir={path} is the step directory "
                            f"{os.path.basename(path)}, not step {step}")
    return path
  ckpts = os.path.join(path, "checkpoints")
  if not os.path.isdir(ckpts):
    ckpts = path
  steps = sorted(int(d) for d in (os.listdir(ckpts) if os.path.isdir(ckpts) else ())
                 if d.isdigit() and os.path.isdir(os.path.join(ckpts, d, "state")))
  if not steps:
    raise CheckpointError(f"{where}.workdir={path}: no checkpoint found (expected "
                          "<workdir>/checkpoints/<step>/state)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f"{where}.step={step}: {ckpts} has steps {steps}")
  return os.path.join(ckpts, str(step))


def read_meta(step_dir: str) -> dict:
  """The `meta` item of a checkpoint step ({} where it does not read)."""
  try:
    with open(os.path.join(step_dir, "meta", "metadata")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return {}
  return meta if isinstance(meta, dict) else {}


def read_params(workdir: str, step: int | None = None, where: str = "workdir"
                ) -> tuple[dict, dict]:
  """(meta, {group: numpy parameters}) of a run's checkpoint (the newest step by default),
  read on the host without building anything."""
  step_dir = _step_dir(workdir, step, where)
  item = os.path.join(step_dir, "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      md = ckptr.metadata(item)
      md = getattr(md, "item_metadata", md)
      tree = getattr(md, "tree", md)
      target = {"params": tree["params"]}
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
      params = ckptr.restore(item, args=ocp.args.PyTreeRestore(
          item=target, restore_args=args, partial_restore=True))["params"]
    except Exception as e:  # noqa: BLE001
      reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
      raise CheckpointError(f"{where}: {item} is unreadable ({reason})") from None
  return read_meta(step_dir), params


def _tokenizer_infos(meta: dict) -> dict:
  """What an mmvit run's tokenizers were, from its checkpoint's model description."""
  from mmvit.convert import TokenizerInfo  # noqa: PLC0415
  out = {}
  for m, t in ((meta.get("model") or {}).get("tokenizers") or {}).items():
    try:
      dims = t["input_shape"] if t["kind"] == "waveform" else t["input_shape"][:-1]
      grid = tuple(int(d) // int(p) for d, p in zip(dims, t["patch"]))
      out[m] = TokenizerInfo(grid, bool(t["class_token"] and t["posemb_includes_cls"]))
    except (KeyError, TypeError, ValueError):
      continue
  return out


def _group_path(model_path: str) -> str:
  """'encoder/encoderblock_0/...' -> 'shared/encoderblock_0/...'; 'tokenizers/image/kernel' ->
  'tokenizers.image/kernel'."""
  parts = model_path.split("/")
  if parts[0] == "encoder":
    return "/".join(["shared"] + parts[1:])
  return "/".join([f"{parts[0]}.{parts[1]}"] + parts[2:])


def load_params(sources, params: dict, tokenizer_specs: dict | None = None
                ) -> tuple[dict, list[str], list]:
  """Parameter groups of earlier runs or checkpoint files (seed: 'initialize the shared
  self-attention blocks from a single-task network'; MBT: start every stream from a ViT
  pretrained on ImageNet-21k).

  `sources` is config.init_from as a list of {workdir | file, step, groups, group_map, inflate,
  posemb_grid}: every group of this model whose name matches a pattern of `groups` (fnmatch,
  e.g. 'shared', 'tokenizers.*') is read from the source's group of the same name, or the one
  `group_map` names ('stream_encoders.*': 'shared', 'adapters.*': 'shared[0:2]'), adapted to
  this model (mmvit.pretrained) and placed on the shardings of `params` (this model's freshly
  initialised groups); later sources override earlier ones. Groups read whole with the same
  names and shapes from a run are restored by Orbax straight onto their shardings.
  Optimizer state starts fresh. Returns ({group: params}, log lines, report rows)."""
  import fnmatch  # noqa: PLC0415

  from mmvit import convert, pretrained  # noqa: PLC0415
  from mmvit.config import ConfigError, names  # noqa: PLC0415
  loaded, lines, rows = {}, [], {}
  for i, src in enumerate(sources):
    where = f"init_from[{i}]"
    patterns = names(src.get("groups"), f"{where}.groups")
    for p in patterns:
      if not any(fnmatch.fnmatchcase(g, p) for g in params):
        raise ConfigError(f"{where}.groups: {p!r} matches no parameter group of this model "
                          f"({', '.join(params)})")
    chosen = [g for g in params if any(fnmatch.fnmatchcase(g, p) for p in patterns)]
    grid = tuple(src["posemb_grid"]) if src.get("posemb_grid") else None
    try:
      spec_of = {g: pretrained.source_of(g, src.get("group_map")) for g in chosen}
      if src.get("file"):
        path = os.path.abspath(os.path.expanduser(src["file"]))
        try:
          ckpt = convert.read_checkpoint(path, grid)
        except convert.ConversionError as e:
          raise CheckpointError(f"{where}.file={e}") from None
        origin = {_group_path(k): v for k, v in ckpt.origin.items()}
        adapter = pretrained.Adapter(f"{where} ({os.path.basename(path)})", ckpt.tokenizers,
                                     src.get("inflate") or "average", origin, grid)
        out = _adapt_groups(adapter, chosen, spec_of, ckpt.groups, params, tokenizer_specs,
                            where, path)
        label = f"{path} ({ckpt.layout} layout)"
      else:
        out, label = _from_run(src, where, chosen, spec_of, params, tokenizer_specs, grid)
    except pretrained.AdaptError as e:
      raise CheckpointError(str(e)) from None
    for g in chosen:
      for r in out[g].rows:
        rows[("skipped", r.param) if r.action == "skipped" else r.param] = r
      loaded[g] = out[g].values
    moved = [f"{g} <- {spec_of[g]}" for g in chosen if spec_of[g] != g]
    lines.append(f"{where}: {', '.join(chosen)} from {label}"
                 + (f" ({', '.join(moved)})" if moved else ""))
  all_rows = list(rows.values())
  all_rows += pretrained.fresh_rows(params, all_rows)
  if sources:
    lines.append(f"init_from: {pretrained.summary(all_rows)}")
  return loaded, lines, all_rows


def _adapt_groups(adapter, chosen, spec_of, have: dict, params, tokenizer_specs, where, item):
  """Adapts each chosen group from the source groups `have` (numpy trees) and places the
  result over this model's group (leaves the source lacks keep their initialisation)."""
  from mmvit import pretrained  # noqa: PLC0415
  out = {}
  for g in chosen:
    src_group = pretrained.parse_group(spec_of[g], f"{where}.group_map")[0]
    if src_group not in have:
      raise CheckpointError(f"{where}.groups: {item} has no parameter group {src_group}"
                            + (f" (for {g})" if src_group != g else "")
                            + f"; it has {', '.join(have)}")
    tok = None
    if g.startswith("tokenizers."):
      tok = (tokenizer_specs or {}).get(g.split(".", 1)[1])
    adapted = adapter.adapt(g, spec_of[g], have[src_group], _empty_like(params[g]), tok)
    adapted.values = _placed(adapted.values, params[g])
    out[g] = adapted
  return out


def _empty_like(tree):
  """Arrays of the tree's shapes that take no memory (for the shape checks and layouts)."""
  return jax.tree.map(lambda x: np.broadcast_to(np.zeros((), np.float32), x.shape), tree)


def _placed(values, current):
  """`current` (this model's group) with the leaves `values` has replaced, on their shardings."""
  if not isinstance(current, Mapping):
    return jax.device_put(np.asarray(values, current.dtype), current.sharding)
  return {k: (_placed(values[k], v) if k in values else v) for k, v in current.items()}


def _from_run(src, where, chosen, spec_of, params, tokenizer_specs, grid):
  """Groups of an mmvit run: restored as they are where names and shapes agree, else read on
  the host and adapted."""
  from mmvit import pretrained  # noqa: PLC0415
  from mmvit.models.encoder import layout_of  # noqa: PLC0415
  step_dir = _step_dir(src.get("workdir"), src.get("step"), where)
  item = os.path.join(step_dir, "state")
  meta = read_meta(step_dir)
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      md = ckptr.metadata(item)
    except Exception as e:  # noqa: BLE001
      reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
      raise CheckpointError(f"{where}: {item} is unreadable ({reason})") from None
    md = getattr(md, "item_metadata", md)  # StepMetadata -> TreeMetadata
    tree = getattr(md, "tree", md)
    have = tree.get("params") if isinstance(tree, Mapping) else None
    if not isinstance(have, Mapping) or not have:
      raise CheckpointError(f"{where}: {item} holds no parameter groups: expected the state of "
                            "an mmvit run")
    direct, adapt = [], []
    for g in chosen:
      src_group, lo, hi = pretrained.parse_group(spec_of[g], f"{where}.group_map")
      if src_group not in have:
        raise CheckpointError(f"{where}.groups: {item} has no parameter group {src_group}"
                              + (f" (for {g})" if src_group != g else "")
                              + f"; it has {', '.join(have)}")
      plain = (src_group == g and lo is None and hi is None
               and layout_of(params[g]) == layout_of(have[g]))
      bad = _first_mismatch(params[g], have[g]) if plain else None
      if plain and bad is None:
        direct.append(g)
      elif (plain and not g.startswith("tokenizers.")
            and not set(bad[0].split("/")) & set(pretrained.OPTIONAL)):
        _check_group(params[g], have[g], g, where, item)  # a plain mismatch: name the leaf
      else:
        adapt.append(g)
    out = {}
    if direct:
      target = {"params": {g: params[g] for g in direct}}
      restored = ckptr.restore(item, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))["params"]
      for g in direct:
        rows = [pretrained.Row(f"{g}/{'/'.join(p)}", "loaded", f"{where}: {g}/{'/'.join(p)}",
                               tuple(v.shape))
                for p, v in pretrained._flat(_loop_shapes(params[g])).items()]
        out[g] = pretrained.Adapted(restored[g], rows)
    if adapt:
      needed = sorted({pretrained.parse_group(spec_of[g], "")[0] for g in adapt})
      target = {"params": {g: have[g] for g in needed}}
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
      raw = ckptr.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=args,
                                                           partial_restore=True))["params"]
      adapter = pretrained.Adapter(where, _tokenizer_infos(meta), src.get("inflate") or "average",
                                   posemb_grid=grid)
      out.update(_adapt_groups(adapter, adapt, spec_of, raw, params, tokenizer_specs, where,
                               item))
  return out, step_dir


def _loop_shapes(tree):
  from mmvit.models.encoder import to_loop  # noqa: PLC0415
  return to_loop(_empty_like(tree))


def _check_group(want, have, g: str, where: str, item: str) -> None:
  bad = _first_mismatch(want, have)
  if bad is None:
    return
  k, kind, want_leaf, got = bad
  if kind != "shape":
    raise CheckpointError(
        f"{where}: parameter {g}/{k} is in {'this model' if kind == 'missing' else item} "
        f"only: expected the same parameters in group {g} of both models")
  raise CheckpointError(f"{where}: parameter {g}/{k} has shape {tuple(got.shape)} "
                        f"in {item}, this model expects {tuple(want_leaf.shape)}")
