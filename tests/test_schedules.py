"""FIG. 3 of WO2023059737A1: three tasks with 3, 5 and 7 batches."""

import subprocess
import sys

import numpy as np
import pytest

from mmvit import schedules

TASKS = ("task1", "task2", "task3")
U = {"task1": 3, "task2": 5, "task3": 7}


def runs(plan):
  """Contiguous runs of the same task: [(task index, length), ...]."""
  out = []
  for i in plan:
    if out and out[-1][0] == i:
      out[-1][1] += 1
    else:
      out.append([int(i), 1])
  return [tuple(r) for r in out]


def test_weighted_gives_each_task_its_own_batch_count_in_a_shuffled_order():
  s = schedules.make_schedule("weighted", TASKS, seed=0, steps_per_task=U)
  assert s.num_steps == 15
  assert s.batches_per_task() == U
  # Shuffled: not the sorted order, and different seeds give different orders.
  assert list(s.plan) != sorted(s.plan)
  orders = {tuple(schedules.make_schedule("weighted", TASKS, seed=k, steps_per_task=U).plan)
            for k in range(10)}
  assert len(orders) > 5


@pytest.mark.parametrize("kind", ["uniform", "alternating"])
def test_uniform_and_alternating_give_5_5_5_in_15_steps(kind):
  s = schedules.make_schedule(kind, TASKS, seed=0, steps_per_task=U)
  assert s.num_steps == 15
  assert s.batches_per_task() == {"task1": 5, "task2": 5, "task3": 5}


def test_alternating_is_a_fixed_repeating_order():
  s = schedules.make_schedule("alternating", TASKS, seed=3, steps_per_task=U)
  assert [s.tasks_at(i)[0] for i in range(6)] == list(TASKS) * 2


def test_uniform_is_shuffled():
  s = schedules.make_schedule("uniform", TASKS, seed=0, steps_per_task=U)
  assert list(s.plan) != [0, 1, 2] * 5 and list(s.plan) != sorted(s.plan)


def test_task_by_task_gives_contiguous_blocks_in_a_random_task_order():
  orders = set()
  for seed in range(12):
    s = schedules.make_schedule("task_by_task", TASKS, seed=seed, steps_per_task=U)
    blocks = runs(s.plan)
    assert len(blocks) == 3  # each task once, all of its batches together
    assert {TASKS[i]: n for i, n in blocks} == U
    orders.add(tuple(i for i, _ in blocks))
  assert len(orders) > 2  # the task order is random, not fixed


def test_accumulated_gives_5_updates_each_using_all_three_tasks():
  s = schedules.make_schedule("accumulated", TASKS, seed=0, steps_per_task=U)
  assert s.num_steps == 5
  assert all(s.tasks_at(i) == TASKS for i in range(5))
  assert s.batches_per_task() == {"task1": 5, "task2": 5, "task3": 5}


def test_explicit_ratios_round_to_the_total():
  s = schedules.make_schedule("ratios", TASKS, seed=0, total_steps=10,
                              ratios={"task1": 1, "task2": 1, "task3": 2})
  assert s.batches_per_task() == {"task1": 3, "task2": 2, "task3": 5} or \
      s.batches_per_task() == {"task1": 2, "task2": 3, "task3": 5}
  assert s.num_steps == 10


def test_same_seed_same_plan_different_seed_different_plan():
  a = schedules.make_schedule("weighted", TASKS, seed=1, steps_per_task=U)
  b = schedules.make_schedule("weighted", TASKS, seed=1, steps_per_task=U)
  c = schedules.make_schedule("weighted", TASKS, seed=2, steps_per_task=U)
  np.testing.assert_array_equal(a.plan, b.plan)
  assert not np.array_equal(a.plan, c.plan)


def test_plan_is_identical_in_another_process():
  """Every host derives the same plan from (kind, seed, U_j): no communication needed."""
  code = ("from mmvit import schedules;"
          "U={'task1':30,'task2':50,'task3':70};"
          "print(schedules.make_schedule('weighted',('task1','task2','task3'),seed=7,"
          "steps_per_task=U).plan.tolist())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  here = schedules.make_schedule("weighted", TASKS, seed=7,
                                 steps_per_task={"task1": 30, "task2": 50, "task3": 70})
  assert out.stdout.strip() == str(here.plan.tolist())


def test_unknown_kind_is_a_one_line_error_naming_the_field():
  with pytest.raises(ValueError, match=r"schedule.kind='roundrobin': expected one of"):
    schedules.make_schedule("roundrobin", TASKS, seed=0, steps_per_task=U)
