r"""Kill a training run with SIGKILL at random points, rerun the same command, and check that
it ends bit-identical to an uninterrupted run:

  uv run python scripts/kill_resume.py --trials=20 [--seed=0]

Prints one line per trial and "k/N identical". Uses the tiny config of the tests on stand-in
data (tests/tiny_run.py), every schedule in turn, a checkpoint after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "tests", "tiny_run.py")
KINDS = ("weighted", "uniform", "alternating", "task_by_task", "accumulated")


def command(workdir, kind, steps):
  return [sys.executable, RUN, workdir, kind, f"--steps={steps}"]


def finish(workdir, kind, steps) -> dict:
  out = subprocess.run(command(workdir, kind, steps), capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
  if out.returncode:
    raise RuntimeError(f"run in {workdir} failed: {out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def train_records(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum('"split": "train"' in line for line in f)
  except FileNotFoundError:
    return 0


def kill_at(workdir, kind, steps, at_step: int, timeout=300) -> int:
  """Starts the run and SIGKILLs it once `at_step` steps have been logged."""
  proc = subprocess.Popen(command(workdir, kind, steps), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  start = time.time()
  while proc.poll() is None and train_records(workdir) < at_step:
    if time.time() - start > timeout:
      break
    time.sleep(0.005)
  if proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  return train_records(workdir)


def trial(tmp, kind, steps, at_step, reference) -> tuple[bool, str]:
  workdir = os.path.join(tmp, f"{kind}-{at_step}-{random.random():.6f}")
  seen = kill_at(workdir, kind, steps, at_step)
  resumed = finish(workdir, kind, steps)
  same = resumed["params"] == reference["params"] and resumed["test"] == reference["test"]
  return same, f"killed after {seen} logged steps"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--trials", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=4)
  args = p.parse_args()
  rng = random.Random(args.seed)
  tmp = tempfile.mkdtemp(prefix="mmvit_kill_")
  try:
    refs = {k: finish(os.path.join(tmp, f"ref-{k}"), k, args.steps) for k in KINDS}
    total = {k: (refs[k]["steps"]) for k in KINDS}
    ok = 0
    for i in range(args.trials):
      kind = KINDS[i % len(KINDS)]
      at = rng.randint(1, max(1, total[kind] - 1))
      same, how = trial(tmp, kind, args.steps, at, refs[kind])
      ok += same
      print(f"trial {i + 1}: {kind:13s} kill at step {at:2d}/{total[kind]} ({how}): "
            f"{'identical' if same else 'DIFFERENT'}", flush=True)
    print(f"{ok}/{args.trials} identical")
    return 0 if ok == args.trials else 1
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
