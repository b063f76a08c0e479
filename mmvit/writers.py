"""Metric writers without TensorFlow: TensorBoard events (tensorboardX) and metrics.jsonl."""

from __future__ import annotations

import json
import os
import time


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # noqa: PLC0415  (slow import, only when writing)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

  def write(self, step: int, task: str, split: str, metrics: dict[str, float]):
    """One JSON object per line: step, task, split and the metric names."""
    if not self.enabled:
      return
    record = {"step": int(step), "task": task, "split": split, "time": time.time()}
    record.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(f"{split}/{task}/{k}", float(v), int(step))

  def drop_after(self, step: int):
    """Drops the metrics.jsonl records of steps after `step` (and any line a kill cut short),
    rewriting the file atomically: a run resumed at `step` writes those steps again, and each
    should appear once. TensorBoard events are left as they are: TensorBoard reads event files
    in the order they were written (by wall time) and drops the steps it had above a step it
    reads again (purge of orphaned data), so a curve shows each step once."""
    if self._jsonl is None:
      return
    path = self._jsonl.name
    self._jsonl.close()
    kept, dropped = [], 0
    with open(path) as f:
      for line in f:
        try:
          keep = int(json.loads(line)["step"]) <= step and line.endswith("\n")
        except (ValueError, KeyError, TypeError):
          keep = False
        if keep:
          kept.append(line)
        else:
          dropped += 1
    if dropped:
      with open(f"{path}.tmp", "w") as f:
        f.writelines(kept)
      os.replace(f"{path}.tmp", path)
    self._jsonl = open(path, "a", buffering=1)

  def close(self):
    """Idempotent. Must run before interpreter shutdown: tensorboardX flushes from a thread,
    and Python 3.12+ cannot start one then ("can't create new thread at interpreter shutdown")."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
