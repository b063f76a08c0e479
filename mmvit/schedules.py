"""Task-sampling schedules (PolyViT, FIG. 3): which task(s) training step s uses.

A schedule is a pure function of (kind, task list, per-task batch counts, seed): the whole plan
is derived at start-up, identically on every host and after a resume, and step s simply reads
plan[s]. Nothing about it is carried in a checkpoint except the inputs that derive it.

Kinds (U_j = batches of task j, U = sum_j U_j, T = number of tasks, q, r = divmod(U, T)):
  task_by_task  tasks in a random order, all U_j batches of one task before the next (forgets).
  alternating   a fixed repeating order t_0, t_1, ..., t_{T-1}, t_0, ...; U steps.
  uniform       a random permutation of an array holding q entries of each task, then the
                remainder: r distinct tasks in a seeded random order. So the first q*T steps
                hold every task exactly q times whether or not T divides U.
  weighted      a random permutation of an array holding U_j entries of task j.
  accumulated   q steps; each makes one update from one batch of every task. The r batches left
                over cannot make a full update and are not used.
  ratios        like weighted, with U_j = U * r_j / sum(r) (largest remainder rounding).

The length of training comes from ONE source, never both: either every task's batch count U_j
(the seed's FIG. 3: U = sum U_j; accumulated takes q = U // T updates), or the number of steps
U itself (`total_steps`, the plan length for every kind; for accumulated each step is one update
from every task). task_by_task and weighted need the U_j; given only a total, the trainer
derives them (in proportion to each task's train batches) before calling make_schedule. Giving
both is an error here and, in a config, a one-line ConfigError (mmvit/train.make_schedule):
which one should win differs by kind, so neither silently does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

KINDS = ("task_by_task", "alternating", "uniform", "weighted", "accumulated", "ratios")


@dataclasses.dataclass(frozen=True)
class Schedule:
  kind: str
  tasks: tuple[str, ...]
  plan: np.ndarray  # (num_steps,) task index per step; -1 means "every task" (accumulated)

  @property
  def num_steps(self) -> int:
    return int(self.plan.shape[0])

  def tasks_at(self, step: int) -> tuple[str, ...]:
    """The tasks whose batches step `step` consumes, in a fixed order."""
    i = int(self.plan[step])
    return self.tasks if i < 0 else (self.tasks[i],)

  def batches_per_task(self) -> dict[str, int]:
    if self.kind == "accumulated":
      return {t: self.num_steps for t in self.tasks}
    counts = np.bincount(self.plan, minlength=len(self.tasks))
    return {t: int(c) for t, c in zip(self.tasks, counts)}


def _rng(seed: int) -> np.random.Generator:
  # A dedicated stream so that the plan does not depend on any other use of the seed.
  return np.random.default_rng([int(seed), 0x5C4ED])


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
  w = np.asarray(weights, np.float64)
  exact = total * w / w.sum()
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[: total - counts.sum()]] += 1
  return [int(c) for c in counts]


def _permuted(counts: Sequence[int], rng: np.random.Generator) -> np.ndarray:
  plan = np.repeat(np.arange(len(counts)), counts)
  return rng.permutation(plan)


def make_schedule(
    kind: str,
    tasks: Sequence[str],
    *,
    seed: int,
    steps_per_task: Mapping[str, int] | None = None,
    total_steps: int | None = None,
    ratios: Mapping[str, float] | None = None,
) -> Schedule:
  """Builds the plan from exactly one of `steps_per_task` (U_j) and `total_steps` (U).

  `steps_per_task` drives task_by_task and weighted (which require it), and gives U = sum U_j
  for the others. `total_steps` is the number of training steps, i.e. the plan length; for
  `accumulated` it is the number of updates, each of which uses one batch of every task.
  """
  tasks = tuple(tasks)
  if kind not in KINDS:
    raise ValueError(f"schedule.kind={kind!r}: expected one of {', '.join(KINDS)}")
  if not tasks:
    raise ValueError("schedule: no tasks to schedule")
  rng = _rng(seed)
  u_j = [int(steps_per_task[t]) for t in tasks] if steps_per_task else None
  if (total_steps is None) == (u_j is None):
    raise ValueError("schedule: give total_steps or steps per task, exactly one of them")
  if total_steps is None:
    total_steps = sum(u_j) // len(tasks) if kind == "accumulated" else sum(u_j)
  total_steps = int(total_steps)

  if kind in ("task_by_task", "weighted"):
    if u_j is None:
      raise ValueError(f"schedule.kind={kind!r} needs the number of batches of each task")
    if kind == "weighted":
      plan = _permuted(u_j, rng)
    else:
      order = rng.permutation(len(tasks))
      plan = np.concatenate([np.full(u_j[i], i) for i in order])
  elif kind == "alternating":
    plan = np.arange(total_steps) % len(tasks)
  elif kind == "uniform":
    # Balanced prefix, then the r extras as distinct tasks: shuffled in with the rest, they
    # would let the favoured tasks run ahead anywhere in training.
    q, r = divmod(total_steps, len(tasks))
    plan = np.concatenate([_permuted([q] * len(tasks), rng), rng.permutation(len(tasks))[:r]])
  elif kind == "ratios":
    if not ratios:
      raise ValueError("schedule.ratios: give a weight per task for kind='ratios'")
    plan = _permuted(largest_remainder(total_steps, [ratios[t] for t in tasks]), rng)
  else:  # accumulated
    plan = np.full(total_steps, -1)
  return Schedule(kind=kind, tasks=tasks, plan=np.asarray(plan, np.int32))
