"""Several processes, one run: start-up on JAX's own runtime, who writes, and the checks that
every process trains the same thing.

A run on P processes is the run on one: every process builds the same experiment from the same
config, reads its own rows of every global batch (`sharding.process_rows`), and takes part in
every compiled step and every Orbax save. Only process 0 writes the workdir's files (metrics,
TensorBoard, config.json, params.json, results.json) and prints the progress lines.

  python -m mmvit.main ... --num_processes=2 --process_id=0 --coordinator_address=host:port
On Cloud TPU VMs and under SLURM, JAX finds the three values itself (`--num_processes` may be
left out); elsewhere they come from the flags or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (scripts/launch/ sets them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time

import jax
import numpy as np

log = logging.getLogger("mmvit")


class DistributedError(RuntimeError):
  """Processes that cannot form one run (one line, naming the process and what to do)."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a run; None fields are left to JAX's cluster detection."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300       # to reach the coordinator and meet every process at start-up
  heartbeat_s: int = 100     # a process silent this long is declared dead, the run fails

  @classmethod
  def from_env(cls, coordinator_address=None, num_processes=None, process_id=None,
               timeout_s=300, heartbeat_s=100) -> Launch:
    """Flags first, then JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
    env = os.environ

    def number(value, name):
      if value is None or value == "":
        return None
      try:
        return int(value)
      except ValueError:
        raise DistributedError(f"{name}={value!r}: expected an integer") from None
    return cls(coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None,
               number(num_processes if num_processes is not None
                      else env.get("JAX_NUM_PROCESSES"), "num_processes"),
               number(process_id if process_id is not None else env.get("JAX_PROCESS_ID"),
                      "process_id"),
               int(timeout_s), int(heartbeat_s))

  def cluster(self) -> str | None:
    """The cluster manager JAX would take the start-up values from, when it runs several
    processes (SLURM with more than one task, a Cloud TPU VM pod); else None."""
    env = os.environ
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
      return "SLURM"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
      return "Cloud TPU pod"
    return None

  @property
  def wanted(self) -> bool:
    """Whether this run has more than one process."""
    if self.num_processes is not None:
      return self.num_processes > 1
    return self.coordinator_address is not None or self.cluster() is not None

  def check(self) -> None:
    if self.num_processes is not None and self.num_processes < 1:
      raise DistributedError(f"num_processes={self.num_processes}: expected at least 1")
    if not self.wanted:
      if self.process_id not in (None, 0):
        raise DistributedError(f"process_id={self.process_id} of a run of one process: set "
                               "num_processes (--num_processes or JAX_NUM_PROCESSES)")
      return
    if self.cluster() is None:  # nothing to detect the values from: all three are needed
      missing = [n for n, v in (("coordinator_address", self.coordinator_address),
                                ("num_processes", self.num_processes),
                                ("process_id", self.process_id)) if v is None]
      if missing:
        raise DistributedError(f"a run of several processes needs {', '.join(missing)} "
                               "(flags --coordinator_address, --num_processes, --process_id or "
                               "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if (self.num_processes is not None and self.process_id is not None
        and not 0 <= self.process_id < self.num_processes):
      raise DistributedError(f"process_id={self.process_id}: expected 0 to "
                             f"{self.num_processes - 1} (num_processes={self.num_processes})")
    if self.coordinator_address is not None and ":" not in self.coordinator_address:
      raise DistributedError(f"coordinator_address={self.coordinator_address!r}: expected "
                             "HOST:PORT")


def _advice() -> str:
  return ("start every process with the same coordinator address and process count, process 0 "
          "on the coordinator's host, and check that its port is reachable")


def start(launch: Launch) -> None:
  """jax.distributed.initialize for a run of several processes (nothing for one), before any
  device is touched. A coordinator that never answers, or a process that never comes, is a
  one-line error and exit code 2 after `launch.timeout_s`, never a hang.

  JAX's client ends the process itself (abort, a C++ log of many lines) when its deadline
  passes, so a watchdog thread says it first, in one line, and exits."""
  launch.check()
  if not launch.wanted or jax.distributed.is_initialized():
    return
  who = (f"process {launch.process_id} of {launch.num_processes}"
         if launch.process_id is not None else "this process")
  where = launch.coordinator_address or f"the coordinator {launch.cluster()} names"

  def give_up():
    os.write(2, (f"distributed error: {who} could not meet every process of the run at {where} "
                 f"within {launch.timeout_s} s (--distributed_timeout): {_advice()}\n").encode())
    os._exit(2)
  watchdog = threading.Timer(launch.timeout_s, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address=launch.coordinator_address, num_processes=launch.num_processes,
        process_id=launch.process_id, initialization_timeout=launch.timeout_s + 30,
        heartbeat_timeout_seconds=launch.heartbeat_s,
        shutdown_timeout_seconds=min(launch.timeout_s, 300))
  except Exception as e:  # noqa: BLE001  (XlaRuntimeError, ValueError...: one line either way)
    reason = " ".join(str(e).split())[:240]
    raise DistributedError(f"{who} could not join the run at {where} ({reason}): "
                           f"{_advice()}") from None
  finally:
    watchdog.cancel()
  log.info("process %d of %d joined the run at %s; %d local of %d devices",
           jax.process_index(), jax.process_count(), where, jax.local_device_count(),
           jax.device_count())


def primary() -> bool:
  """Whether this process writes the run's files and prints its progress (process 0)."""
  return jax.process_index() == 0


def log_prefix() -> str:
  """What log lines of this process start with: nothing for one process, its index else."""
  return f"[process {jax.process_index()}/{jax.process_count()}] " if jax.process_count() > 1 else ""


def config_digest(config) -> str:
  """A digest of the whole completed config, layout and paths included."""
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def code_digest() -> str:
  """A digest of mmvit's source files: processes of one run must run the same code."""
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for dirpath, dirnames, files in sorted(os.walk(root)):
    dirnames.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        h.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
          h.update(f.read())
  return h.hexdigest()[:16]


def gather_strings(value: str, width: int = 64) -> list[str]:
  """Every process's `value` (at most `width` bytes of UTF-8), in process order."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # noqa: PLC0415
  raw = value.encode()[:width].ljust(width, b"\0")
  every = np.asarray(multihost_utils.process_allgather(np.frombuffer(raw, np.uint8)))
  return [row.tobytes().rstrip(b"\0").decode(errors="replace") for row in every]


def agree(**digests: str) -> None:
  """Every process must hold the same values (the config's digest, the code's...): a one-line
  DistributedError on every process naming what differs and on which processes."""
  if jax.process_count() == 1:
    return
  me = jax.process_index()
  for name in sorted(digests):
    for p, theirs in enumerate(gather_strings(digests[name])):
      if theirs != digests[name]:
        raise DistributedError(
            f"process {p} runs another {name} ({theirs}) than process {me} "
            f"({digests[name]}): start every process with the same config and code")


_FINISHED = threading.Event()
_WATCH: list = [None]  # the watch thread, once started
_SAYING = threading.Lock()  # a watch's last line never follows this process's own last line


def watch_peers(heartbeat_s: int) -> None:
  """A thread that says, in one line, when another process of the run goes silent, and ends
  this one (exit 1). JAX's coordination service ends the survivors itself after the heartbeat
  timeout, but by aborting with a many-line C++ log; this watch, at half that timeout, speaks
  first. Every process posts a counter to the coordination service's key-value store each
  interval and reads the others'; one whose counter has not moved for heartbeat_s / 2 seconds
  of this process's clock is declared gone. Losing the store (process 0, which serves it, died)
  ends this process the same way."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # noqa: PLC0415  (the runtime's client)
  client = jax_distributed.global_state.client
  me, count = jax.process_index(), jax.process_count()
  interval, silent_after = max(heartbeat_s / 20, 0.25), max(heartbeat_s / 2, 2.0)

  def say(line: str):
    with _SAYING:
      if _FINISHED.is_set():  # this process is ending and says so itself
        return
      os.write(2, f"distributed error: process {me}: {line}; rerun every process with the "
                  "same command to resume from the last checkpoint\n".encode())
      os._exit(1)

  def watch():
    beat, heard = 0, {p: (None, time.monotonic()) for p in range(count) if p != me}
    failed_at: dict[int, float] = {}
    lost_since = None
    while not _FINISHED.is_set():
      beat += 1
      try:
        client.key_value_set(f"mmvit/beat/{me}", str(beat), allow_overwrite=True)
        # One read of every counter per pass: the coordinator serves P of them, not P^2.
        posted = dict(client.key_value_dir_get("mmvit/beat/"))
        for p, (last, since) in heard.items():
          value = posted.get(f"mmvit/beat/{p}", last)  # not posted yet: counts as silence
          if value == "done":
            continue
          if value == "failed":  # this process may be ending on the same error: a moment
            if failed_at.setdefault(p, time.monotonic()) + min(silent_after, 5) < time.monotonic():
              say(f"process {p} stopped with an error (its log says which); stopping")
            continue
          now = time.monotonic()
          if value != last:
            heard[p] = (value, now)
          elif now - since > silent_after:
            say(f"process {p} has not been heard from for {now - since:.0f} s (it died or "
                "hangs); stopping")
      except Exception as e:  # noqa: BLE001  (the store is gone with process 0)
        lost_since = lost_since or time.monotonic()
        if time.monotonic() - lost_since > min(silent_after, 5):  # not just ending together
          say(f"lost the coordination service ({' '.join(str(e).split())[:120]}); process 0 "
              "died or its host is unreachable")
      else:
        lost_since = None
      _FINISHED.wait(interval)
  _WATCH[0] = threading.Thread(target=watch, daemon=True, name="mmvit-peers")
  _WATCH[0].start()


def finished(ok: bool = True) -> None:
  """Tells the other processes' watches that this one ended, after a whole run (ok) or on an
  error (they stop at once rather than wait for a collective that will not come), and ends its
  own watch first, so that nothing it says follows this process's own last line."""
  with _SAYING:
    if _FINISHED.is_set():
      return
    _FINISHED.set()
  if _WATCH[0] is not None:  # its last beat must not land after "done"
    _WATCH[0].join(timeout=30)
  if not jax.distributed.is_initialized():
    return
  from jax._src import distributed as jax_distributed  # noqa: PLC0415
  try:
    jax_distributed.global_state.client.key_value_set(
        f"mmvit/beat/{jax.process_index()}", "done" if ok else "failed", allow_overwrite=True)
  except Exception:  # noqa: BLE001  (the run is over either way)
    pass
