"""A run survives being killed at any moment and goes on exactly as if it had never stopped;
bad checkpoints and workdirs never cost saved work."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmvit import checkpointing, loop, train
from tests.fakes import FakeData, make_batch
from tests.tiny import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import kill_resume  # noqa: E402


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class References(dict):
  """Uninterrupted runs (in a subprocess, as the killed ones) by schedule, each made when a test
  first asks for it (the default suite needs only the weighted one)."""

  def __init__(self, tmp):
    super().__init__()
    self.tmp = tmp

  def __missing__(self, kind):
    self[kind] = kill_resume.finish(str(self.tmp / kind), kind, 3)
    return self[kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return References(tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("kind,at", [
    ("weighted", 7), pytest.param("weighted", 2, marks=pytest.mark.slow),
    pytest.param("accumulated", 2, marks=pytest.mark.slow)])
def test_sigkill_at_a_step_then_the_same_command_ends_bit_identical(tmp_path, reference, kind,
                                                                    at):
  same, how = kill_resume.trial(str(tmp_path), kind, 3, at, reference[kind])
  assert same, how


def test_sigterm_saves_and_exits_0_and_the_rerun_ends_identical(tmp_path, reference):
  workdir = str(tmp_path / "w")
  proc = subprocess.Popen([sys.executable, os.path.join(HERE, "tiny_run.py"), workdir,
                           "weighted", "--steps=3", "--sleep=0.3"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  while kill_resume.train_records(workdir) < 3 and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  result = json.loads(out.strip().splitlines()[-1])
  saved = result["preempted"]
  assert saved is not None and 3 <= saved < 12
  assert f"preempted: saved step {saved} to" in err
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))
  assert kill_resume.finish(workdir, "weighted", 3) == reference["weighted"]


def test_a_kill_during_an_async_save_never_leaves_a_half_written_latest_step(tmp_path,
                                                                           reference):
  workdir = str(tmp_path / "w")
  out = subprocess.run([sys.executable, os.path.join(HERE, "tiny_run.py"), workdir, "weighted",
                        "--steps=3", "--kill_in_save_at=5"], cwd=ROOT, capture_output=True)
  assert out.returncode == -signal.SIGKILL
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert max(steps) < 5  # step 5 was being written: not committed, not listed
  assert kill_resume.finish(workdir, "weighted", 3) == reference["weighted"]


def run_to(workdir, stop_at=None, **overrides):
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1, **overrides)
  return train.run(cfg, workdir, data=FakeData(), stop_at=stop_at)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """The uninterrupted in-process run that resumed runs must end equal to."""
  return run_to(str(tmp_path_factory.mktemp("full") / "w"))


def test_a_corrupted_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(tmp_path,
                                                                                   caplog, full):
  workdir = str(tmp_path / "w")
  run_to(workdir, stop_at=6)
  newest = os.path.join(workdir, "checkpoints", "6", "state")
  for name in os.listdir(newest):  # garbage bytes in every file of the newest step
    path = os.path.join(newest, name)
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"\x00garbage" * 10)
  shutil.rmtree(os.path.join(newest, "d"), ignore_errors=True)  # and a deleted file
  with caplog.at_level("ERROR", logger="mmvit"):
    resumed = run_to(workdir)
  msg = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert msg and "checkpoint step 6" in msg[0] and "trying the previous step" in msg[0]
  assert any(n.startswith("6.unreadable") for n in os.listdir(os.path.join(workdir,
                                                                          "checkpoints")))
  assert leaves_equal(full["state"], resumed["state"])


def test_a_checkpoint_of_an_incompatible_config_gives_one_line_naming_the_parameter(tmp_path):
  workdir = str(tmp_path / "w")
  run_to(workdir, stop_at=2)
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1)
  cfg.model.mlp_dim = 48
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.run(cfg, workdir, data=FakeData(), allow_config_change=True)
  assert "\n" not in str(e.value)
  assert ("parameter shared/encoderblock_0/MlpBlock_0/Dense_0/bias has shape (64,), this "
          "config expects (48,)") in str(e.value)


def test_another_config_in_a_used_workdir_is_refused_unless_allowed(tmp_path):
  workdir = str(tmp_path / "w")
  run_to(workdir, stop_at=2)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1)
  cfg.tasks.image.batch_size = 16
  with pytest.raises(checkpointing.WorkdirError, match=r"tasks.image.batch_size was 8, now 16"):
    train.run(cfg, workdir, data=FakeData())
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  # Fields that do not change what is trained may differ.
  run_to(workdir, stop_at=3, eval_every=1, log_every=2)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["tasks"]["image"]["batch_size"] == 8


class NaNData(FakeData):
  """Batch `at` of the dataset carries an input of 3e38 everywhere: finite, so it passes the data checks,
  but it overflows in the forward pass and gives a non-finite loss (as a diverging run does)."""

  def __init__(self, task_dataset, at):
    super().__init__()
    self.task_dataset, self.at = task_dataset, at

  def train_iterator(self, name, **kw):
    it = super().train_iterator(name, **kw)
    if name != self.task_dataset:
      return it
    at = self.at

    class Poisoned(type(it)):
      def __next__(self):
        b = make_batch(self.name, self.batch_size, [self.seed, self.index])
        if self.index == at:
          first = next(iter(b))
          b[first][0] = 3e38
        self.index += 1
        return b
    p = Poisoned(it.name, it.batch_size, it.seed)
    return p


def test_a_non_finite_loss_stops_training_naming_step_and_task_keeping_the_last_good_save(
    tmp_path):
  workdir = str(tmp_path / "w")
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1, log_every=1)
  with pytest.raises(train.NonFiniteError) as e:
    train.run(cfg, workdir, data=NaNData("digits_audio", 1))
  msg = str(e.value)
  assert "(task audio)" in msg and "non-finite loss or gradient at step" in msg
  assert "last good checkpoint: step" in msg
  bad = int(msg.split("at step ")[1].split()[0])
  steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  assert max(steps) <= bad


def test_the_skip_policy_drops_the_bad_update_and_goes_on():
  cfg = tiny_config("weighted", steps=3, nonfinite=dict(policy="skip", max_skips=1))
  out = train.run(cfg, None, data=NaNData("digits_audio", 1))
  assert out["skipped_updates"] == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out["state"]["params"]))


def test_a_nan_record_is_a_one_line_data_error_naming_task_step_key_and_record():
  from mmvit.data import DataError

  class Poison(NaNData):
    pass
  data = NaNData("digits_audio", 1)
  orig = data.train_iterator

  def it(name, **kw):
    i = orig(name, **kw)
    if name == "digits_audio":
      nxt = type(i).__next__

      class NaNIt(type(i)):
        def __next__(self):
          b = nxt(self)
          if self.index == 2:
            b["spectrogram"][3, 0, 0, 0] = np.nan
          return b
      j = NaNIt(i.name, i.batch_size, i.seed)
      return j
    return i
  data.train_iterator = it
  with pytest.raises(DataError) as e:
    train.run(tiny_config("weighted", steps=3), None, data=data)
  assert "\n" not in str(e.value)
  assert "task audio step" in str(e.value) and "input 'spectrogram' of record 3" in str(e.value)


class BrokenData(FakeData):
  """The audio pipeline raises at its batch `at`, as a failing input pipeline does."""

  def __init__(self, at):
    super().__init__()
    self.at = at

  def train_iterator(self, name, **kw):
    it = super().train_iterator(name, **kw)
    if name != "digits_audio":
      return it
    at = self.at

    class Broken(type(it)):
      def __next__(self):
        if self.index == at:
          raise RuntimeError("input pipeline failed")
        return super().__next__()
    return Broken(it.name, it.batch_size, it.seed)


def test_a_run_that_fails_still_closes_its_writers_and_checkpointer(tmp_path, monkeypatch):
  made = {}

  class Writer(loop.MetricWriter):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      made["writer"] = self

  class Ckpt(checkpointing.Checkpointer):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      made["ckpt"] = self
  monkeypatch.setattr(loop, "MetricWriter", Writer)
  monkeypatch.setattr(checkpointing, "Checkpointer", Ckpt)
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1, log_every=1)
  with pytest.raises(RuntimeError, match="input pipeline failed"):
    train.run(cfg, str(tmp_path / "w"), data=BrokenData(at=2))
  # Closed before the error left run, not at interpreter shutdown.
  assert made["writer"]._tb is None and made["writer"]._jsonl is None
  assert made["ckpt"].manager is None


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir holding steps 1 and 2 of the tiny run; tests take a copy (`copy_of`)."""
  workdir = str(tmp_path_factory.mktemp("saved") / "w")
  run_to(workdir, stop_at=2, log_every=1)
  return workdir


def copy_of(saved, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(saved, workdir)
  return workdir


def listing(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.parametrize("change,first_difference", [
    (dict(name="sgd"), r"opt/heads\.audio/0/count: in the checkpoint only"),
    (dict(weight_decay=0.0), r"opt/heads\.audio/0/count: in the checkpoint only"),
], ids=["sgd", "no_weight_decay"])
def test_a_checkpoint_whose_optimizer_state_differs_is_refused_before_anything_is_moved(
    saved, tmp_path, change, first_difference):
  workdir = copy_of(saved, tmp_path)
  before = listing(workdir)
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1)
  cfg.optimizer.update(change)
  with pytest.raises(checkpointing.CheckpointError, match=first_difference) as e:
    train.run(cfg, workdir, data=FakeData(), allow_config_change=True)
  assert "\n" not in str(e.value) and "checkpoint step 2 in" in str(e.value)
  assert listing(workdir) == before  # nothing moved aside, nothing trained


def test_a_checkpoint_with_a_task_this_config_lacks_is_refused(saved, tmp_path):
  workdir = copy_of(saved, tmp_path)
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1)
  del cfg.tasks["audio"]
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"parameter heads\.audio/\S+: in the checkpoint only"):
    train.run(cfg, workdir, data=FakeData(), allow_config_change=True)


def test_arrays_of_another_dtype_are_a_difference():
  f32, bf16 = (jax.ShapeDtypeStruct((2,), d) for d in (np.float32, jax.numpy.bfloat16))
  assert checkpointing._first_mismatch({"a": f32}, {"a": bf16}) is None  # params: cast
  assert checkpointing._first_mismatch({"a": f32}, {"a": bf16}, dtypes=True)[:2] == ("a",
                                                                                    "dtype")


def damage(workdir, step):
  """Garbage in every file of a step's state."""
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  for root, _, files in os.walk(state):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")


def test_a_run_that_can_restore_no_checkpoint_stops_and_never_starts_over(saved, tmp_path):
  workdir = copy_of(saved, tmp_path)
  damage(workdir, 1)
  damage(workdir, 2)
  with pytest.raises(checkpointing.CheckpointError) as e:
    run_to(workdir)
  msg = str(e.value)
  assert "\n" not in msg and "could be restored" in msg and "2 -> 2.unreadable-" in msg
  assert "1 -> 1.unreadable-" in msg
  assert not [n for n in listing(workdir) if n.isdigit()]  # renamed, not deleted
  assert len(listing(workdir)) == 2
  # The rerun does not take the empty checkpoints directory for a fresh start either.
  with pytest.raises(checkpointing.CheckpointError, match="only steps moved aside"):
    run_to(workdir)


def test_a_refused_run_leaves_config_json_as_it_was_so_the_old_command_still_runs(saved,
                                                                                  tmp_path):
  workdir = copy_of(saved, tmp_path)
  files = ("config.json", "params.json")
  before = {n: open(os.path.join(workdir, n)).read() for n in files}
  cfg = tiny_config("weighted", steps=3, checkpoint_every=1)
  cfg.model.mlp_dim = 48
  with pytest.raises(checkpointing.CheckpointError, match="this config expects"):
    train.run(cfg, workdir, data=FakeData(), allow_config_change=True)
  assert {n: open(os.path.join(workdir, n)).read() for n in files} == before
  assert not [n for n in os.listdir(workdir) if n.startswith("config.") and n != "config.json"]


def test_without_config_json_the_config_digest_in_the_checkpoint_guards_the_workdir(saved,
                                                                                    tmp_path):
  workdir = copy_of(saved, tmp_path)
  os.remove(os.path.join(workdir, "config.json"))
  other = tiny_config("weighted", steps=3, checkpoint_every=1)
  other.tasks.image.batch_size = 16
  with pytest.raises(checkpointing.WorkdirError,
                     match=r"config.json is missing and the config digest in the meta of step "
                           r"2 is \w+, this config's is \w+") as e:
    train.run(other, workdir, data=FakeData())
  assert "\n" not in str(e.value)
  run_to(workdir, stop_at=2)  # the same config resumes (step 2: nothing left to train)
  os.remove(os.path.join(workdir, "config.json"))
  train.run(other, workdir, data=FakeData(), stop_at=2, allow_config_change=True)
  assert json.load(open(os.path.join(workdir, "config.json")))["tasks"]["image"]["batch_size"] == 16


HOLD_LOCK = """import sys, time
from mmvit import checkpointing
lock = checkpointing.WorkdirLock(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_workdir_is_refused_naming_the_holder_and_a_killed_one_blocks_nothing(
    saved, tmp_path):
  workdir = copy_of(saved, tmp_path)
  metrics = open(os.path.join(workdir, "metrics.jsonl")).read()
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, workdir], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpointing.WorkdirError) as e:
      run_to(workdir)
    msg = str(e.value)
    assert "\n" not in msg and f"in use by another run (pid {holder.pid} on host " in msg
    assert f"on host {socket.gethostname()} since 20" in msg
    assert listing(workdir) == ["1", "2"]  # nothing moved, trained or written
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert holder.returncode == -signal.SIGKILL
  run_to(workdir, stop_at=2)  # the lock died with its holder


@pytest.mark.parametrize("edit,reason", [
    (lambda d: d.pop("audio"), "data states have no entry for task audio"),
    (lambda d: d["image"].update(index=-3), "data state of task image: index is -3, expected an "
                                            "integer >= 0"),
    (lambda d: d["image"].update(index="1"), "data state of task image: index is '1', expected "
                                             "type int"),
], ids=["no_task", "negative_index", "wrong_type"])
def test_data_states_that_read_but_do_not_fit_make_the_step_unreadable(saved, tmp_path, caplog,
                                                                        edit, reason):
  workdir = copy_of(saved, tmp_path)
  path = os.path.join(workdir, "checkpoints", "2", "data", "process_0-of-1.json")
  states = json.load(open(path))
  edit(states)
  with open(path, "w") as f:
    json.dump(states, f)
  with caplog.at_level("INFO", logger="mmvit"):
    run_to(workdir, stop_at=1)  # restores step 1; nothing left to train
  msgs = [r.getMessage() for r in caplog.records]
  bad = [m for m in msgs if "unreadable" in m]
  assert len(bad) == 1 and "\n" not in bad[0] and reason in bad[0], bad
  assert "checkpoint step 2 in" in bad[0]
  assert any("at step 1" in m for m in msgs if m.startswith("resumed from"))
  assert any(n.startswith("2.unreadable-") for n in listing(workdir))


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_after_a_resume_metrics_jsonl_holds_each_step_once(saved, tmp_path, caplog):
  workdir = copy_of(saved, tmp_path)
  # Step 2 was logged, but step 1 is the newest saved (as after a kill).
  shutil.move(os.path.join(workdir, "checkpoints", "2"), str(tmp_path / "2"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2, "task": "im')  # and a record cut short by the kill
  with caplog.at_level("INFO", logger="mmvit"):
    run_to(workdir, stop_at=3, log_every=1)
  assert any(r.getMessage().endswith("at step 1") for r in caplog.records)
  train_steps = [r["step"] for r in records(workdir) if r["split"] == "train"]
  assert train_steps == [1, 2, 3]
  evals = [(r["step"], r["task"], r["split"]) for r in records(workdir) if r["split"] != "train"]
  assert len(evals) == len(set(evals)) and {s for s, _, _ in evals} == {3}


def test_a_damaged_step_costs_one_log_line_and_no_traceback(saved, tmp_path, caplog, capfd):
  workdir = copy_of(saved, tmp_path)
  step = os.path.join(workdir, "checkpoints", "2")
  for name in ("_CHECKPOINT_METADATA", "state/manifest.ocdbt"):  # truncated files
    path = os.path.join(step, name)
    os.truncate(path, os.path.getsize(path) // 2)
  with caplog.at_level("INFO"):  # every logger, Orbax's and absl's included
    run_to(workdir, stop_at=2)
  out = capfd.readouterr()
  text = "\n".join([caplog.text, out.out, out.err])
  assert "Traceback" not in text
  mentions = [line for line in text.splitlines() if f"{step}/" in line or f"{step} " in line]
  assert len(mentions) == 1 and "is unreadable" in mentions[0], mentions


@pytest.mark.parametrize("at,stop_at", [(3, None), (6, 6)],
                         ids=["surfaces_at_the_next_save", "at_the_last_wait"])
def test_a_full_disk_during_a_save_is_one_line_and_the_saved_steps_resume(tmp_path, monkeypatch,
                                                                          caplog, capfd, full,
                                                                          at, stop_at):
  workdir = str(tmp_path / "w")
  save = ocp.JsonCheckpointHandler._save_fn

  async def disk_full(self, item, directory):  # in Orbax's background writer, as a real one
    if isinstance(item, dict) and item.get("step") == at:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await save(self, item, directory)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full)
  with caplog.at_level("INFO"), pytest.raises(checkpointing.CheckpointError) as e:
    run_to(workdir, stop_at=stop_at)
  msg = str(e.value)
  ckpts = os.path.join(workdir, "checkpoints")
  assert "\n" not in msg
  assert f"saving checkpoint step {at} to {ckpts} failed: [Errno 28] No space left on device" in msg
  assert f"the steps saved before ({at - 2}, {at - 1}) are untouched" in msg
  out = capfd.readouterr()
  assert "Traceback" not in "\n".join([caplog.text, out.out, out.err])
  assert [n for n in listing(workdir) if n.isdigit()] == [str(at - 2), str(at - 1)]
  if stop_at is None:  # and the rerun, with space again, ends as if nothing had happened
    monkeypatch.undo()
    assert leaves_equal(full["state"], run_to(workdir)["state"])
