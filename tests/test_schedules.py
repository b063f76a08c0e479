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


# FIG. 3 at sizes it does not draw: T not dividing U. U = 3 + 5 + 8 = 16 for three tasks.
U16 = {"task1": 3, "task2": 5, "task3": 8}


def counts(plan, n):
  return np.bincount(np.asarray(plan), minlength=n).tolist()


@pytest.mark.parametrize("kind", ["uniform", "alternating"])
@pytest.mark.parametrize("sizes", [U16, {f"t{j}": n for j, n in enumerate((1350, 1351, 1350, 1351))}],
                         ids=["T=3,U=16", "T=4,U=5402"])
def test_uniform_and_alternating_use_every_task_floor_u_over_t_times_before_the_remainder(
    kind, sizes):
  """FIG. 3: "the same number of batches for each of the tasks": with q, r = divmod(U, T) the
  first q*T steps hold every task exactly q times, and the r steps after them r distinct tasks."""
  tasks = tuple(sizes)
  n_tasks, total = len(tasks), sum(sizes.values())
  q, r = divmod(total, n_tasks)
  for seed in range(20):
    s = schedules.make_schedule(kind, tasks, seed=seed, steps_per_task=sizes)
    assert s.num_steps == total
    assert counts(s.plan[: q * n_tasks], n_tasks) == [q] * n_tasks
    assert len(set(s.plan[q * n_tasks:].tolist())) == r


def test_uniform_remainder_goes_to_distinct_tasks_in_a_seeded_order():
  """FIG. 3 uniform: no task is favoured by its position in the task list; which tasks get the
  U mod T extra steps, and in which order, is drawn from the seed (and the same for a seed)."""
  favoured = set()
  for seed in range(30):
    s = schedules.make_schedule("uniform", TASKS, seed=seed, steps_per_task=U16)
    again = schedules.make_schedule("uniform", TASKS, seed=seed, steps_per_task=U16)
    np.testing.assert_array_equal(s.plan, again.plan)
    n = s.batches_per_task()
    favoured.add(max(n, key=n.get))  # the one task with 6 steps; the others have 5
  assert favoured == set(TASKS)


def test_accumulated_drops_the_batches_that_cannot_fill_an_update():
  """FIG. 3 accumulating gradients: every update takes one batch of each task, so U = 16 batches
  of three tasks give floor(16/3) = 5 updates; the 16 mod 3 = 1 left-over batch is not used."""
  s = schedules.make_schedule("accumulated", TASKS, seed=0, steps_per_task=U16)
  assert s.num_steps == 5 and (s.plan == -1).all()
  assert s.batches_per_task() == {"task1": 5, "task2": 5, "task3": 5}


def test_steps_per_task_and_total_steps_together_are_refused_by_the_pure_function():
  with pytest.raises(ValueError, match="exactly one of them"):
    schedules.make_schedule("uniform", TASKS, seed=0, steps_per_task=U, total_steps=15)


# The config door: config.total_steps or every task's steps, never both, for every kind.

def config_of(kind, total_steps=None, ratios=None):
  import ml_collections  # noqa: PLC0415
  return ml_collections.ConfigDict(dict(
      seed=0, total_steps=total_steps, schedule=dict(kind=kind, ratios=ratios)))


def tasks_of(steps, num_train=(300, 500, 700), batch_size=10):
  """Stand-ins for tasks.Task: make_schedule reads only these four fields."""
  import types  # noqa: PLC0415
  return [types.SimpleNamespace(name=n, steps=s, num_train=m, batch_size=batch_size)
          for n, s, m in zip(TASKS, steps, num_train)]


RATIOS = {"task1": 1.0, "task2": 1.0, "task3": 2.0}


@pytest.mark.parametrize("kind", schedules.KINDS)
def test_total_steps_with_every_tasks_steps_is_a_one_line_error_for_every_kind(kind):
  """One rule for all of FIG. 3: U_j or U fixes the length of training, not both (15 = 3+5+7
  agreeing does not make it allowed: what total_steps means differs by kind)."""
  from mmvit import train  # noqa: PLC0415
  from mmvit.config import ConfigError  # noqa: PLC0415
  for total in (15, 20):
    with pytest.raises(ConfigError) as e:
      train.make_schedule(config_of(kind, total, RATIOS), tasks_of((3, 5, 7)))
    assert str(e.value).startswith(f"config.total_steps={total} and tasks.*.steps: set one of them")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", schedules.KINDS)
def test_total_steps_alone_is_the_plan_length_for_every_kind(kind):
  """With only config.total_steps = U, every kind runs U steps (accumulated: U updates); the
  weighted and task-by-task U_j follow the tasks' train batches and sum to U, one at least each."""
  from mmvit import train  # noqa: PLC0415
  tasks = tasks_of((None,) * 3, num_train=(10, 500, 5000))  # weights 1 : 50 : 500
  s = train.make_schedule(config_of(kind, 4, RATIOS), tasks)
  assert s.num_steps == 4
  if kind in ("weighted", "task_by_task"):
    assert s.batches_per_task() == {"task1": 1, "task2": 1, "task3": 2}


def test_every_tasks_steps_alone_give_fig_3():
  from mmvit import train  # noqa: PLC0415
  s = train.make_schedule(config_of("uniform"), tasks_of((3, 5, 7)))
  assert s.batches_per_task() == {"task1": 5, "task2": 5, "task3": 5}


# Property: every kind, random sizes and seeds.

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(kind=st.sampled_from([k for k in schedules.KINDS if k != "ratios"]),
                  sizes=st.lists(st.integers(1, 50), min_size=1, max_size=7),
                  seed=st.integers(0, 2**31 - 1))
def test_fig_3_rules_hold_for_any_sizes_and_seed(kind, sizes, seed):
  """FIG. 3 for T in 1..7 tasks of 1..50 batches: U = sum U_j, q, r = divmod(U, T).
  weighted: exactly U_j of task j; uniform and alternating: U steps, q of every task in the
  first q*T and r distinct tasks after; task_by_task: one contiguous block of U_j per task;
  accumulated: q updates from every task (the r left-over batches unused); same seed, same plan."""
  tasks = tuple(f"t{j}" for j in range(len(sizes)))
  u_j = dict(zip(tasks, sizes))
  n_tasks, total = len(tasks), sum(sizes)
  q, r = divmod(total, n_tasks)
  s = schedules.make_schedule(kind, tasks, seed=seed, steps_per_task=u_j)
  plan = s.plan.tolist()
  np.testing.assert_array_equal(
      s.plan, schedules.make_schedule(kind, tasks, seed=seed, steps_per_task=u_j).plan)
  if kind == "accumulated":
    assert plan == [-1] * q
    assert s.batches_per_task() == {t: q for t in tasks}
    return
  assert len(plan) == total
  if kind == "weighted":
    assert s.batches_per_task() == u_j
  elif kind == "task_by_task":
    blocks = runs(plan)
    assert len(blocks) == n_tasks and {tasks[i]: n for i, n in blocks} == u_j
  else:  # uniform, alternating
    assert counts(plan[: q * n_tasks], n_tasks) == [q] * n_tasks
    assert len(set(plan[q * n_tasks:])) == r
    assert sorted(s.batches_per_task().values()) == [q] * (n_tasks - r) + [q + 1] * r
