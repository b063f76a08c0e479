"""The command line's door: every bad flag, file or path is one line on stderr naming it, and
exit code 2, before any model is built; signals stop a run cleanly at any moment."""

import errno
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from mmvit import config as config_lib, main
from mmvit.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
  monkeypatch.chdir(ROOT)  # config paths as a user types them


def cli(*args, timeout=120):
  """`python -m mmvit.main ARGS` -> (exit code, stderr)."""
  out = subprocess.run([sys.executable, "-m", "mmvit.main", *args], cwd=ROOT, text=True,
                       capture_output=True, timeout=timeout,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return out.returncode, out.stderr


def load_error(spec, *argv):
  """The one-line ConfigError of loading `spec` with the overrides in `argv`."""
  _, overrides = main.split_overrides(["prog", *argv])
  with pytest.raises(ConfigError) as e:
    config_lib.load(spec, overrides)
  assert "\n" not in str(e.value)
  return str(e.value)


def load(spec, *argv):
  _, overrides = main.split_overrides(["prog", *argv])
  return config_lib.load(spec, overrides)


def test_a_typo_in_an_override_is_one_line_and_exit_2_without_a_traceback(tmp_path):
  code, err = cli(f"--config={DEMO}", f"--workdir={tmp_path / 'w'}",
                  "--config.tasks.imagee.steps=3")
  assert code == 2
  assert err == ("config error: --config.tasks.imagee.steps: no field 'imagee' in config.tasks "
                 "(did you mean 'image'?)\n")
  assert not os.path.exists(tmp_path / "w")  # refused before anything was written


def test_a_typo_in_an_override_names_the_field_and_the_nearest_valid_one():
  assert load_error(DEMO, "--config.modle.depth=2") == (
      "--config.modle.depth: no field 'modle' in config (did you mean 'model'?)")
  assert load_error(DEMO, "--config.model.tokenizers.vide.patch=(4,8,8)") == (
      "--config.model.tokenizers.vide.patch: no field 'vide' in config.model.tokenizers (did you "
      "mean 'video'?)")
  assert load_error(DEMO, "--config.tasks.image.augment.max_shfit=2") == (
      "--config.tasks.image.augment.max_shfit: no field 'max_shfit' in config.tasks.image.augment "
      "(did you mean 'max_shift'?)")
  assert "it has cache_data, checkpoint_every" in load_error(DEMO, "--config.zzz=1")
  assert load_error(DEMO, "--config.seed.x=1") == "--config.seed.x: config.seed=0 has no fields"


def test_a_value_of_the_wrong_type_names_the_flag():
  assert load_error(DEMO, "--config.model.depth=two") == (
      "--config.model.depth=two: expected an integer")
  assert load_error(DEMO, "--config.cache_data=maybe") == (
      "--config.cache_data=maybe: expected true or false")


def test_documented_fields_the_config_file_does_not_set_can_be_overridden():
  c = load(DEMO, "--config.nonfinite.policy=skip", "--config.nonfinite.max_skips=3",
           "--config.tasks.image.mixup.alpha=0.2", "--config.eval_split=test",
           "--config.tasks.audio.lr=1e-3")
  assert c.nonfinite.to_dict() == {"policy": "skip", "max_skips": 3}
  assert c.tasks.image.mixup.alpha == 0.2 and c.eval_split == "test"
  assert c.tasks.audio.lr == 1e-3
  config_lib.validate(c)


def test_the_override_forms_that_worked_with_config_flags_still_work():
  c = load(DEMO, "--config.seed=1", "--config.mesh.data=4",
           "--config.model.tokenizers.video.patch=(4,8,8)", "--config.tasks.video_digit.steps=1000",
           "--config.model.pool=gap", "--config.log_every", "7", "--noconfig.cache_data",
           "--config.total_steps=100", "--config.optimizer.lr=1")
  assert (c.seed, c.mesh.data, c.model.tokenizers.video.patch) == (1, 4, (4, 8, 8))
  assert (c.tasks.video_digit.steps, c.model.pool, c.log_every) == (1000, "gap", 7)
  assert (c.cache_data, c.total_steps, c.optimizer.lr) == (False, 100, 1.0)
  assert c.is_locked  # as config_flags left it: code cannot add a field by a typo


def test_a_config_file_with_a_syntax_error_names_its_file_and_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("import ml_collections\n\ndef get_config(:\n  return None\n")
  assert load_error(str(bad)) == f"{bad}:3: SyntaxError: invalid syntax"
  bad.write_text("x = 1\ny = undefined\n")
  assert load_error(str(bad)) == f"{bad}:2: NameError: name 'undefined' is not defined"


def test_a_missing_config_file_names_the_path():
  assert load_error("configs/nope.py") == "--config=configs/nope.py: no such file"
  assert load_error("configs") == "--config=configs: not a file"


def test_a_bad_config_argument_names_it_and_the_valid_ones():
  assert load_error("configs/single_task.py:imag") == (
      "--config=configs/single_task.py:imag: argument 'imag': expected a task, one of audio, "
      "image, video_digit, video_direction")
  assert list(load("configs/single_task.py:audio").tasks) == ["audio"]


def workdir_error(workdir):
  with pytest.raises(ConfigError) as e:
    main.check_workdir(workdir)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_a_workdir_that_cannot_hold_checkpoints_is_refused_at_the_door(tmp_path, monkeypatch):
  file = tmp_path / "f"
  file.write_text("")
  assert workdir_error("") == "--workdir='': expected a directory"
  assert workdir_error(str(file)) == f"--workdir={file}: is a file, not a directory"
  assert workdir_error(str(file / "w")) == (
      f"--workdir={file / 'w'}: cannot create it: {file} is a file, not a directory")
  main.check_workdir(str(tmp_path / "new" / "w"))  # created, and written in
  assert os.listdir(tmp_path / "new" / "w") == []

  def read_only(*a, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
  makedirs = os.makedirs
  monkeypatch.setattr(os, "makedirs", read_only)
  assert workdir_error(str(tmp_path / "ro")) == (
      f"--workdir={tmp_path / 'ro'}: cannot create it: Read-only file system")
  monkeypatch.setattr(os, "makedirs", makedirs)
  monkeypatch.setattr(main.tempfile, "TemporaryFile", read_only)
  assert workdir_error(str(tmp_path)) == (
      f"--workdir={tmp_path}: cannot write in it: Read-only file system")


def test_a_bad_workdir_is_one_line_and_exit_2_from_the_cli(tmp_path):
  file = tmp_path / "f"
  file.write_text("")
  assert cli(f"--config={DEMO}", f"--workdir={file}") == (
      2, f"config error: --workdir={file}: is a file, not a directory\n")


def test_every_split_the_run_reads_is_opened_at_start_up_before_the_model_is_built(monkeypatch):
  from mmvit import experiment, train
  from mmvit.data import DataError
  from tests.fakes import FakeData
  from tests.tiny import tiny_config
  data = FakeData()
  train.prepare(tiny_config(), data=data)
  datasets = ("digits_image", "digits_video", "digits_audio")
  assert sorted(data.checked) == sorted((d, s) for d in datasets
                                        for s in ("train", "validation", "test"))
  monkeypatch.setattr(experiment, "build_model", lambda *a: pytest.fail("built a model"))
  with pytest.raises(DataError, match=r"^digits_audio: split 'test': cannot read record 0"):
    train.build(tiny_config(), data=FakeData(unreadable=[("digits_audio", "test")]))
  with pytest.raises(ConfigError) as e:
    train.build(tiny_config(test_split="tst"), data=FakeData())
  assert str(e.value) == ("config.test_split='tst': dataset 'digits_audio' (tasks.audio) has "
                          "splits train, validation, test")


@pytest.fixture
def image_data_dir():
  """digits_image alone (fast to build), where conftest's data_dir builds the suite."""
  from mmvit import data
  d = os.environ.get("MMVIT_DATA_DIR") or "/tmp/mmvit_test_data"
  data.ensure_built("digits_image", d)
  return d


def test_a_truncated_split_file_is_a_data_error_naming_dataset_split_and_file(image_data_dir,
                                                                              tmp_path):
  import shutil

  from mmvit import data
  shutil.copytree(os.path.join(image_data_dir, "digits_image"), tmp_path / "digits_image")
  data.check_split("digits_image", "test", str(tmp_path))
  (path,) = (tmp_path / "digits_image").glob("*/digits_image-test.array_record*")
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(data.DataError) as e:
    data.check_split("digits_image", "test", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"digits_image: split 'test': cannot read record 0 of {path} (")
  data.check_split("digits_image", "train", str(tmp_path))


def tiny_run(workdir, sleep, *flags):
  """tests/tiny_run.py (train.run of the tiny config on FakeData), once it has logged a step."""
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  import kill_resume  # noqa: PLC0415
  logged = kill_resume.train_records(workdir)
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "tiny_run.py"), workdir,
                           "weighted", "--steps=3", f"--sleep={sleep}", *flags], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  while kill_resume.train_records(workdir) <= logged and proc.poll() is None:
    time.sleep(0.01)
  return proc


def test_ctrl_c_stops_training_as_sigterm_does(capfd):
  """The loop's check after every step then saves and returns, as the SIGTERM test shows."""
  from mmvit import train
  leaked = []  # a SIGINT that Preempted let through (KeyboardInterrupt would end pytest)
  previous = signal.signal(signal.SIGINT, lambda *a: leaked.append(a))
  try:
    with train.Preempted() as stop:
      os.kill(os.getpid(), signal.SIGINT)
      deadline = time.monotonic() + 10  # counted by a thread, soon: not a timing test
      while not stop.signalled and time.monotonic() < deadline:
        time.sleep(0.01)
      assert stop.signalled and not leaked
  finally:
    signal.signal(signal.SIGINT, previous)
  assert capfd.readouterr().err == "interrupted: stopping cleanly (Ctrl-C again to exit at once)\n"


def test_a_second_ctrl_c_exits_at_once_with_130_in_one_line(tmp_path):
  workdir = str(tmp_path / "w")
  # The save a signal asks for sleeps 60 s: the process cannot finish before the second arrives.
  proc = tiny_run(workdir, 1.0, "--sleep_in_forced_save=60")
  lines = queue.Queue()
  reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True)
  reader.start()
  proc.send_signal(signal.SIGINT)
  # The second only once the first was handled: two sent before the process takes the first
  # are pending as one (POSIX signals do not queue), so a fixed delay can race.
  deadline = time.monotonic() + 60
  while not lines.get(timeout=max(0.1, deadline - time.monotonic())).startswith("interrupted:"):
    pass
  proc.send_signal(signal.SIGINT)
  proc.wait(timeout=60)
  reader.join(timeout=10)
  err = "".join(list(lines.queue))
  assert proc.returncode == 130, err[-2000:]
  assert err.splitlines()[-1:] == [
      "interrupted again: exited at once; rerun to resume from the last save"]
  assert "Traceback" not in err


def test_a_signal_during_start_up_stops_before_the_first_step_saving_nothing(tmp_path):
  from mmvit import train
  from tests.fakes import FakeData
  from tests.tiny import tiny_config

  class SignalledWhileLoading(FakeData):
    def dataset_info(self, name, data_dir=None):
      os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice during data loading
      return super().dataset_info(name, data_dir)
  handler = signal.getsignal(signal.SIGTERM)
  with train.Preempted():
    with pytest.raises(train.Stopped, match="^stopped before the first step; nothing to save$"):
      train.run(tiny_config(checkpoint_every=1), str(tmp_path / "w"),
                data=SignalledWhileLoading())
  ckpts = tmp_path / "w" / "checkpoints"
  assert not ckpts.exists() or not [n for n in os.listdir(ckpts) if n.isdigit()]
  assert signal.getsignal(signal.SIGTERM) is handler


def test_a_signal_before_the_run_starts_exits_0_in_one_line(tmp_path):
  started = tmp_path / "started"
  slow = tmp_path / "slow.py"  # a config whose get_config is still running
  slow.write_text(f"import time\n\ndef get_config():\n  open({str(started)!r}, 'w').close()\n"
                  "  time.sleep(120)\n")
  proc = subprocess.Popen([sys.executable, "-m", "mmvit.main", f"--config={slow}",
                           f"--workdir={tmp_path / 'w'}"], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  while not started.exists() and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=30)
  assert (proc.returncode, out, err) == (0, "stopped before the first step; nothing to save\n", "")
