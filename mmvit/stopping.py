"""Ends of a run before its schedule's: a wall-clock budget, and early stopping on a validation
metric. Both end the way the last step does (checkpoint, validation and test evaluation)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import jax

from mmvit import distributed

log = logging.getLogger("mmvit")

# Metrics where lower is better (mode 'auto'); every other logged metric is maximised.
MINIMISED = ("mse", "mae")
# Several processes compare clocks only every this many steps (one small all-gather): they must
# stop at the same step, and one process's clock alone would not tell the others.
WALL_CHECK_EVERY = 10


class WallClock:
  """config.max_wall_time: seconds of this process's run (a rerun gets a new budget)."""

  def __init__(self, budget_s: float | None):
    self.budget, self.t0 = budget_s, time.monotonic()

  def reached(self, steps_done: int) -> bool:
    """Whether to stop after `steps_done` steps of this run (every process gets one answer)."""
    if self.budget is None:
      return False
    if jax.process_count() == 1:
      return time.monotonic() - self.t0 >= self.budget
    if steps_done % WALL_CHECK_EVERY:
      return False
    mine = time.monotonic() - self.t0 >= self.budget
    return "1" in distributed.gather_strings("1" if mine else "0")


@dataclasses.dataclass
class EarlyStopping:
  """config.early_stopping, and its history, which a checkpoint's metadata carries so that a
  resumed run decides as the uninterrupted one would."""
  metric: str  # 'task/name'
  patience: int
  min_delta: float
  maximise: bool
  best: float | None = None
  best_step: int | None = None
  bad: int = 0        # evaluations since the best
  last_step: int = -1  # of the last evaluation counted

  @classmethod
  def from_config(cls, es, saved: dict | None = None) -> EarlyStopping:
    name = es.metric.partition("/")[2]
    maximise = es.mode == "max" or (es.mode == "auto" and name not in MINIMISED)
    out = cls(es.metric, int(es.patience), float(es.min_delta), maximise)
    if saved and saved.get("metric") == es.metric:
      out.best, out.best_step = saved.get("best"), saved.get("best_step")
      out.bad, out.last_step = int(saved.get("bad", 0)), int(saved.get("last_step", -1))
    elif saved:
      log.info("early stopping on %s: the checkpoint's history is of %s, so it starts anew",
               es.metric, saved.get("metric"))
    return out

  def update(self, step: int, results: dict[str, dict[str, float]]) -> bool:
    """Counts the evaluation at `step` (every task's metrics); True: stop now."""
    task, _, name = self.metric.partition("/")
    value = float(results[task][name])
    self.last_step = step
    better = math.isfinite(value) and (self.best is None or (
        value > self.best + self.min_delta if self.maximise else
        value < self.best - self.min_delta))
    if better:
      self.best, self.best_step, self.bad = value, step, 0
      return False
    self.bad += 1
    if self.bad < self.patience:
      return False
    log.info("early stopping at step %d: %s %s, best %s at step %s, no better by more than %g "
             "in %d evaluations", step, self.metric, f"{value:.4f}",
             "none" if self.best is None else f"{self.best:.4f}", self.best_step,
             self.min_delta, self.bad)
    return True

  def state(self) -> dict:
    return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
            "bad": self.bad, "last_step": self.last_step}
