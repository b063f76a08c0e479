"""A tiny training run in its own process, for the fault-tolerance tests and
scripts/kill_resume.py:  python tests/tiny_run.py WORKDIR KIND [--kill_in_save_at=N] [--sleep=S]

Prints one JSON line with the final parameter checksum and test metrics.
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests import jax_cache  # noqa: E402

jax_cache.enable()

from mmvit import checkpointing, train  # noqa: E402
from tests.fakes import FakeData  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402


def digest(tree) -> str:
  h = hashlib.sha256()
  for x in jax.tree.leaves(tree):
    h.update(np.asarray(x).tobytes())
  return h.hexdigest()[:16]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("kind")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--kill_in_save_at", type=int, default=-1)
  p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step")
  p.add_argument("--sleep_in_forced_save", type=float, default=0.0,
                 help="seconds a forced save (the one a signal asks for) sleeps before it saves")
  args = p.parse_args()
  cfg = tiny_config(args.kind, steps=args.steps, checkpoint_every=1, log_every=1)
  if args.kill_in_save_at >= 0:  # die while an async save is being written
    save = checkpointing.Checkpointer.save

    def save_then_die(self, step, *a, **kw):
      out = save(self, step, *a, **kw)
      if step == args.kill_in_save_at:
        os.kill(os.getpid(), signal.SIGKILL)
      return out
    checkpointing.Checkpointer.save = save_then_die
  if args.sleep_in_forced_save:  # a slow save: a second Ctrl-C surely lands inside it
    forced = checkpointing.Checkpointer.save

    def slow_save(self, step, *a, force=False, **kw):
      if force:
        time.sleep(args.sleep_in_forced_save)
      return forced(self, step, *a, force=force, **kw)
    checkpointing.Checkpointer.save = slow_save
  if args.sleep:
    step_fn = train.sharding.shard_batch

    def slow(*a, **kw):
      time.sleep(args.sleep)
      return step_fn(*a, **kw)
    train.sharding.shard_batch = slow
  out = train.run(cfg, args.workdir, data=FakeData())
  print(json.dumps({"params": digest(out["state"]), "test": out["test"],
                    "preempted": out["preempted"], "steps": out["steps"]}), flush=True)


if __name__ == "__main__":
  main()
