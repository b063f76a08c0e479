"""CLI: flags -> config -> train.run(config, workdir). Nothing else.

  python -m mmvit.main --config=configs/demo.py --workdir=/tmp/demo [--config.seed=1 ...]
Rerunning the same command continues from the latest checkpoint in the workdir.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile

from absl import app, flags

# --config.<field>=VALUE overrides, shared with mmvit.plan (mmvit.cli imports no jax).
from mmvit.cli import parse_flags, split_overrides  # noqa: F401

_CONFIG = flags.DEFINE_string("config", None, "Path to a get_config() file, optionally "
                              "followed by :<argument>. Fields: --config.<field>=VALUE.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Resume a workdir whose checkpoints were written by another config.")
# Several processes (mmvit.distributed): JAX finds these on Cloud TPU pods and under SLURM.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a run of several processes "
    "(default $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (default "
                                      "$JAX_NUM_PROCESSES, else 1 or the cluster's).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default "
                                   "$JAX_PROCESS_ID).")
_DIST_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds to wait for every process at start-up before a "
    "one-line error.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds a process may be silent before the run declares it "
    "dead and stops the others.")
flags.mark_flags_as_required(["config", "workdir"])

def check_workdir(workdir: str) -> None:
  """The door for --workdir: it is (or can be made) a directory this process can write in,
  checked before anything is built rather than at the first save."""
  from mmvit.config import ConfigError  # noqa: PLC0415
  flag = f"--workdir={workdir}" if workdir.strip() == workdir != "" else f"--workdir={workdir!r}"
  if not workdir:
    raise ConfigError(f"{flag}: expected a directory")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{flag}: is a file, not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f"{flag}: cannot create it: {parent} is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{flag}: cannot create it: {e.strerror}") from None
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ConfigError(f"{flag}: cannot write in it: {e.strerror}") from None


def _stop_at_once(signum, frame):
  """SIGTERM or SIGINT before train.run: nothing has been written, nothing to save."""
  del signum, frame
  os.write(1, b"stopped before the first step; nothing to save\n")
  os._exit(0)


def main(args) -> int:
  _, overrides = args
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                      stream=sys.stdout, force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from mmvit import checkpointing, config as config_lib, data as data_lib  # noqa: PLC0415
  from mmvit import distributed, train  # noqa: PLC0415
  ok = False  # how this process ended, for the other processes' watches

  def fail(line: str, code: int) -> int:
    distributed.finished(False)  # first: no watch's line after this process's own
    print(line, file=sys.stderr)
    return code
  try:
    config = config_lib.load(_CONFIG.value, overrides)
    check_workdir(_WORKDIR.value)
    distributed.start(distributed.Launch.from_env(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DIST_TIMEOUT.value,
        _HEARTBEAT.value))
    distributed.watch_peers(_HEARTBEAT.value)
    if prefix := distributed.log_prefix():  # process 0 prints the progress; others warnings
      logging.basicConfig(level=logging.INFO if distributed.primary() else logging.WARNING,
                          format=f"%(asctime)s {prefix}%(message)s", datefmt="%H:%M:%S",
                          stream=sys.stdout, force=True)
    # From here a signal stops the run before its first step, or saves after the current one.
    with train.Preempted():
      summary = train.run(config, _WORKDIR.value, allow_config_change=_ALLOW.value)
    ok = True
  except train.Stopped as e:
    distributed.finished(False)
    print(e)
    return 0
  except config_lib.ConfigError as e:
    return fail(f"config error: {e}", 2)
  except distributed.DistributedError as e:
    return fail(f"distributed error: {e}", 2)
  except data_lib.DataError as e:
    return fail(f"data error: {e}", 2)
  except (checkpointing.WorkdirError, checkpointing.CheckpointError) as e:
    return fail(f"checkpoint error: {e}", 2)
  except train.NonFiniteError as e:
    return fail(f"training stopped: {e}", 3)
  finally:
    distributed.finished(ok)
  if summary["preempted"] is not None:
    print(f"preempted: saved step {summary['preempted']} to "
          f"{os.path.join(os.path.abspath(_WORKDIR.value), 'checkpoints')}; rerun to resume")
    return 0
  if not distributed.primary():
    return 0
  print("test accuracy per task:")
  for task, res in summary["test"].items():
    main_metric = res.get("top1", res.get("mAP", res.get("joint_top1")))
    print(f"  {task:24s} {main_metric:.4f}  ({', '.join(f'{k}={v:.4f}' for k, v in res.items() if k != 'num_examples')})")
  return 0


if __name__ == "__main__":
  # Before anything slow (importing jax takes seconds): a signal used to kill with a traceback.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _stop_at_once)
  app.run(main, flags_parser=parse_flags)
