"""Runs that end before their schedule: a wall-clock budget (config.max_wall_time) and early
stopping on a validation metric. Either way the run ends as at its last step (a checkpoint,
then the validation and test evaluation), and what a rerun does is stated per rule."""

import json
import os

import jax
import numpy as np
import pytest

from mmvit import train
from mmvit.config import ConfigError
from tests.fakes import FakeData
from tests.tiny import tiny_config

STEPS = 2
TOTAL = STEPS + (STEPS + 1) + (STEPS + 2)  # the tiny config's steps (image, video_digit, audio)


def same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def never_better(patience):
  """An early-stopping rule no evaluation after the first can satisfy (top-1 <= 1 < best + 1):
  it stops at the evaluation `patience` after the first, at step patience + 1."""
  return dict(metric="image/top1", patience=patience, min_delta=1.0)


def saved_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def test_early_stopping_saves_evaluates_and_a_rerun_trains_no_further(tmp_path):
  wd = str(tmp_path / "run")
  cfg = tiny_config(steps=STEPS, eval_every=1, early_stopping=never_better(2))
  out = train.run(cfg, wd, data=FakeData())
  assert out["stopped"] == "early_stopping" and out["steps"] == 3
  assert out["early_stopping"]["best_step"] == 1 and out["early_stopping"]["bad"] == 2
  assert saved_steps(wd)[-1] == 3 and set(out["test"]) == {"image", "video_digit", "audio"}
  with open(os.path.join(wd, "results.json")) as f:
    assert json.load(f)["stopped"] == "early_stopping"
  again = train.run(cfg, wd, data=FakeData())
  assert again["steps"] == 3 and same(out["state"], again["state"])
  # Early stopping is a harmless field: without it the same workdir trains on to the end.
  cfg.early_stopping = None
  assert train.run(cfg, wd, data=FakeData())["steps"] == TOTAL


@pytest.mark.slow  # CI's 15 minutes: the rerun above already resumes an early-stopped run
def test_a_run_resumed_between_evaluations_stops_where_the_uninterrupted_one_does(tmp_path):
  """The rule's history rides in the checkpoint; the evaluation at the step a run was cut at
  (skipped there, since that step ended it) is made on resume."""
  cfg = tiny_config(steps=STEPS, eval_every=1, early_stopping=never_better(4))
  full = train.run(cfg, str(tmp_path / "full"), data=FakeData())
  train.run(cfg, str(tmp_path / "cut"), data=FakeData(), stop_at=2)
  resumed = train.run(cfg, str(tmp_path / "cut"), data=FakeData())
  assert full["steps"] == resumed["steps"] == 5
  assert full["early_stopping"] == resumed["early_stopping"]
  assert same(full["state"], resumed["state"])


def test_max_wall_time_saves_evaluates_and_a_rerun_continues_exactly(tmp_path):
  wd = str(tmp_path / "run")
  cfg = tiny_config(steps=STEPS, max_wall_time=1e-9)  # spent by the first step
  first = train.run(cfg, wd, data=FakeData())
  assert first["stopped"] == "max_wall_time" and first["steps"] == 1 and first["test"]
  assert saved_steps(wd) == [1]
  assert train.run(cfg, wd, data=FakeData())["steps"] == 2  # a new budget per rerun
  cfg.max_wall_time = None
  rest = train.run(cfg, wd, data=FakeData())
  whole = train.run(tiny_config(steps=STEPS), str(tmp_path / "whole"), data=FakeData())
  assert rest["steps"] == TOTAL and rest["stopped"] is None
  assert same(whole["state"], rest["state"])


def test_several_processes_stop_together_every_few_steps(monkeypatch):
  """With several processes a budget is checked only every WALL_CHECK_EVERY steps of the run,
  and one all-gather tells all of them: any process out of time stops every process there."""
  from mmvit import distributed, stopping
  monkeypatch.setattr(stopping.jax, "process_count", lambda: 2)
  answers = {"mine": "0", "theirs": "1"}
  asked = []

  def gather(value):
    asked.append(value)
    return [value, answers["theirs"]]
  monkeypatch.setattr(distributed, "gather_strings", gather)
  clock = stopping.WallClock(3600.0)  # this process has time left
  assert not clock.reached(stopping.WALL_CHECK_EVERY - 1) and not asked
  assert clock.reached(stopping.WALL_CHECK_EVERY) and asked == ["0"]
  answers["theirs"] = "0"
  assert not clock.reached(2 * stopping.WALL_CHECK_EVERY)
  assert not stopping.WallClock(None).reached(stopping.WALL_CHECK_EVERY)


@pytest.mark.parametrize("edit,msg", [
    (dict(max_wall_time=0), "config.max_wall_time=0: expected seconds > 0 (None: no budget)"),
    (dict(eval_every=5, early_stopping=dict(metric="top1", patience=2)),
     "early_stopping.metric='top1': expected 'task/metric' with task one of audio, image, "
     "video_digit, e.g. 'audio/top1'"),
    (dict(eval_every=5, early_stopping=dict(metric="image/mAP", patience=2)),
     "early_stopping.metric='image/mAP': task image reports top1, top5"),
    (dict(eval_every=5, early_stopping=dict(metric="image/top1", patience=0)),
     "early_stopping.patience=0: expected an integer >= 1"),
    (dict(eval_every=5, early_stopping=dict(metric="image/top1", patience=2, mode="up")),
     "early_stopping.mode='up': expected one of auto, max, min"),
    (dict(early_stopping=dict(metric="image/top1", patience=2)),
     "early_stopping: needs config.eval_every > 0 (it reads the validation evaluations made "
     "every eval_every steps)"),
])
def test_stopping_fields_are_checked_at_the_door(edit, msg):
  with pytest.raises(ConfigError) as e:
    train.build(tiny_config(**edit), data=FakeData())
  assert str(e.value) == msg
