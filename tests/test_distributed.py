"""Several processes, one run (issue 12): what each process reads, how processes meet, and that
P processes train what one process trains."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import mmvit.data as data
from mmvit import distributed
from tests import jax_cache
from tests.batches import assert_same_batches, take


def _joined(parts):
  """The batches of `count` processes, their rows side by side in process order."""
  return [{k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]}
          for i in range(len(parts[0]))]


@pytest.mark.parametrize("count", [2, 4])
def test_the_processes_rows_of_each_step_are_the_one_process_batch_augmented_alike(
    data_dir, count):
  """Process p reads rows [p B/P, (p + 1) B/P) of every batch the one-process run reads, with
  the same augmentation draws: the union of the hosts' examples at each step is that batch."""
  kw = dict(batch_size=8, seed=7, data_dir=data_dir,
            augment={"noise_std": 0.1, "max_shift": 2, "flip": True})
  whole = take(data.train_iterator("digits_image", **kw), 5)
  parts = [take(data.train_iterator("digits_image", shard=(p, count), **kw), 5)
           for p in range(count)]
  assert all(b["image"].shape[0] == 8 // count for b in parts[0])
  assert_same_batches(_joined(parts), whole)


def test_worker_processes_give_a_process_the_same_rows(data_dir):
  kw = dict(batch_size=8, seed=7, data_dir=data_dir, augment={"noise_std": 0.1},
            shard=(1, 2))
  assert_same_batches(take(data.train_iterator("digits_image", workers=1, **kw), 3),
                      take(data.train_iterator("digits_image", **kw), 3))


def test_a_process_resumes_its_rows_from_its_own_iterator_state(data_dir):
  kw = dict(batch_size=8, seed=2, data_dir=data_dir, shard=(1, 2))
  it = data.train_iterator("digits_video", **kw)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 2)
  fresh = data.train_iterator("digits_video", **kw)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 2), expected)


def test_a_split_that_does_not_divide_gives_every_process_as_many_batches_and_all_its_rows(
    data_dir):
  """Every process runs the same number of eval steps (none waits in a collective), and the
  real rows of all processes together are the split, once each, in the one-process order."""
  n = data.dataset_info("digits_image", data_dir).splits["test"]
  assert n % 2 or n % 64, "the test needs a split that leaves a partial batch"
  kw = dict(split="test", batch_size=64, data_dir=data_dir)
  whole = list(data.eval_batches("digits_image", **kw))
  parts = [list(data.eval_batches("digits_image", shard=(p, 2), **kw)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  assert_same_batches(_joined(parts), whole)
  assert sum(int(b["mask"].sum()) for p in parts for b in p) == n


def test_a_process_holding_several_blocks_reads_them_in_order(data_dir):
  """shard=((0, 2), 4): blocks 0 and 2 of every batch, concatenated (a mesh whose data axis
  alternates between two processes' devices)."""
  kw = dict(batch_size=8, seed=7, data_dir=data_dir, augment={"noise_std": 0.1})
  whole = take(data.train_iterator("digits_image", **kw), 3)
  parts = [take(data.train_iterator("digits_image", shard=(blocks, 4), **kw), 3)
           for blocks in [(0, 2), (1, 3)]]
  quarters = [[{k: v[i * 2:(i + 1) * 2] for k, v in b.items()} for b in p]
              for p in parts for i in range(2)]
  assert_same_batches(_joined([quarters[0], quarters[2], quarters[1], quarters[3]]), whole)


@pytest.mark.parametrize("shard,batch,msg", [
    ((2, 2), 8, "shard=(2, 2): expected (index, count) with 0 <= index < count, or (ascending "
     "indices, count)"),
    (((2, 0), 4), 8, "shard=((2, 0), 4): expected (index, count) with 0 <= index < count, or "
     "(ascending indices, count)"),
    ((0, 3), 8, "batch_size=8 does not divide by the 3 processes that read it"),
])
def test_a_bad_process_share_is_one_line(data_dir, shard, batch, msg):
  with pytest.raises(data.DataError) as e:
    data.train_iterator("digits_image", batch_size=batch, seed=0, data_dir=data_dir,
                        shard=shard)
  assert str(e.value) == msg


@pytest.mark.parametrize("kw,msg", [
    (dict(num_processes=2), "a run of several processes needs coordinator_address, process_id "
     "(flags --coordinator_address, --num_processes, --process_id or JAX_COORDINATOR_ADDRESS, "
     "JAX_NUM_PROCESSES, JAX_PROCESS_ID)"),
    (dict(num_processes=2, process_id=2, coordinator_address="localhost:1234"),
     "process_id=2: expected 0 to 1 (num_processes=2)"),
    (dict(num_processes=2, process_id=0, coordinator_address="localhost"),
     "coordinator_address='localhost': expected HOST:PORT"),
    (dict(process_id=1), "process_id=1 of a run of one process: set num_processes "
     "(--num_processes or JAX_NUM_PROCESSES)"),
    (dict(num_processes=0), "num_processes=0: expected at least 1"),
])
def test_start_up_values_are_checked_before_anything_waits(monkeypatch, kw, msg):
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
            "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(distributed.DistributedError) as e:
    distributed.start(distributed.Launch.from_env(**kw))
  assert str(e.value) == msg


def test_one_process_needs_no_coordinator(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
            "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(k, raising=False)
  launch = distributed.Launch.from_env()
  assert not launch.wanted
  distributed.start(launch)  # returns at once
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  assert distributed.Launch.from_env().wanted


# ------------------------------------------------------------ runs of several processes ------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "scripts", "launch", "local.py")
sys.path.insert(0, os.path.dirname(LAUNCH))
import local as launch_lib  # noqa: E402  (scripts/launch/local.py)


def launch(workdir, processes, devices, *args, data_dir, timeout=600):
  """scripts/launch/local.py with the tiny config on the digits suite; returns its output."""
  env = {**os.environ, "MMVIT_DATA_DIR": data_dir,
         "JAX_COMPILATION_CACHE_DIR": jax_cache.directory(),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  cmd = [sys.executable, LAUNCH, f"--processes={processes}", f"--devices_per_process={devices}",
         "--grace=30", "--", f"--workdir={workdir}", "--distributed_timeout=60",
         "--heartbeat_timeout=10", *args]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {(r["step"], r["task"]): r["loss"] for r in rows if r["split"] == "train"}


def final_state(workdir):
  """The last checkpoint's arrays as numpy (read in this process, whatever wrote them)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415
  ckpts = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(ckpts) if n.isdigit())
  path = os.path.join(ckpts, str(step), "state")
  with ocp.PyTreeCheckpointer() as c:
    tree = c.metadata(path)
    tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return step, c.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def assert_same_run(one, two, tol=1e-5):
  """Per-step losses and final parameters equal to `tol` (float32 sums in another order: the
  collectives of two processes run over gloo, one process's inside XLA); returns the largest
  differences."""
  a, b = train_losses(one), train_losses(two)
  assert a.keys() == b.keys() and a
  loss_diff = max(abs(a[k] - b[k]) for k in a)
  (s1, p1), (s2, p2) = final_state(one), final_state(two)
  assert s1 == s2
  leaves1, leaves2 = jax.tree.leaves(p1["params"]), jax.tree.leaves(p2["params"])
  assert len(leaves1) == len(leaves2) > 0
  param_diff = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves1, leaves2))
  assert loss_diff <= tol and param_diff <= tol, (loss_diff, param_diff)
  return loss_diff, param_diff


def run_args(kind):
  # Saves every 4 steps and keeps them all, for the resume tests.
  return [f"--config=tests/tiny_config_file.py:{kind}", "--config.mesh.data=2",
          "--config.mesh.fsdp=2", "--config.checkpoint_every=4", "--config.keep_checkpoints=5"]


def compare_runs(tmp, kind, data_dir):
  """Runs `kind` on 1 process x 4 devices and 2 processes x 2 devices; checks they match."""
  launch(tmp / "one", 1, 4, *run_args(kind), data_dir=data_dir)
  out = launch(tmp / "two", 2, 2, *run_args(kind), data_dir=data_dir)
  assert "[0] test accuracy per task:" in out and "[1] test accuracy" not in out
  loss_diff, param_diff = assert_same_run(tmp / "one", tmp / "two")
  print(f"{kind}: max |loss difference| {loss_diff:.2e}, max |parameter difference| "
        f"{param_diff:.2e}")
  # The test splits (359 images, 360 clips...) do not divide by 2 processes x 64 rows: padded
  # and masked, they give the one-process metrics, over the same examples. The tiny model's
  # logits are nearly uniform, so a rounding difference may flip one near-tie: one example.
  results = [json.load(open(tmp / w / "results.json"))["test"] for w in ("one", "two")]
  for task, metrics in results[0].items():
    n = metrics["num_examples"]
    assert results[1][task]["num_examples"] == n
    for k, v in metrics.items():
      np.testing.assert_allclose(results[1][task][k], v, atol=1.01 / n, err_msg=f"{task} {k}")
  return tmp / "one", tmp / "two"


@pytest.fixture(scope="module")
def weighted_runs(tmp_path_factory, data_dir):
  return compare_runs(tmp_path_factory.mktemp("weighted"), "weighted", data_dir)


def test_two_processes_train_what_one_process_trains(weighted_runs):
  """2 processes x 2 CPU devices and 1 process x 4 devices, mesh data=2 x fsdp=2 (weighted
  schedule here; every kind with -m slow): the same losses at every step and the same final
  parameters, to 1e-5. Only process 0 prints the results and writes the workdir's files;
  each process saves its own data state."""
  _, two = weighted_runs
  step = max(int(n) for n in os.listdir(two / "checkpoints") if n.isdigit())
  files = os.listdir(two / "checkpoints" / str(step) / "data")
  assert sorted(f for f in files if f.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["task_by_task", "alternating", "uniform", "accumulated"])
def test_two_processes_train_what_one_process_trains_under_every_schedule(tmp_path, data_dir,
                                                                          kind):
  compare_runs(tmp_path, kind, data_dir)


@pytest.mark.slow
def test_a_mesh_whose_data_axis_spans_processes_over_dcn_trains_the_same(weighted_runs,
                                                                          tmp_path, data_dir):
  """mesh_dcn.data=2 with mesh.fsdp=2 (the hybrid mesh of GPU nodes or TPU slices: data
  parallel across processes, FSDP inside one) is the run of mesh data=2 x fsdp=2."""
  one, _ = weighted_runs
  args = run_args("weighted")[:1] + ["--config.mesh.fsdp=2", "--config.mesh_dcn.data=2",
                                     "--config.checkpoint_every=4", "--config.keep_checkpoints=5"]
  out = launch(tmp_path / "dcn", 2, 2, *args, data_dir=data_dir)
  assert "on a mesh of {'data': 2, 'fsdp': 2, 'tensor': 1}" in out
  assert_same_run(one, tmp_path / "dcn")


def test_a_data_axis_that_alternates_processes_places_the_one_process_batch(tmp_path,
                                                                             data_dir):
  """Devices ordered p0, p1, p0, p1 on the data axis: each process holds two blocks of rows,
  reads exactly those, and the placed global batch is the batch one process reads."""
  port = launch_lib.free_port()
  script = os.path.join(ROOT, "tests", "interleaved_rows.py")
  procs = [subprocess.Popen(
      [sys.executable, script, data_dir, str(tmp_path / "placed.npz")], cwd=ROOT,
      env={**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i), "JAX_NUM_CPU_DEVICES": "2",
           "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
  placed = np.load(tmp_path / "placed.npz")
  assert placed["blocks"].tolist() == [0, 2] and int(placed["count"]) == 4
  whole = take(data.train_iterator("digits_image", batch_size=8, seed=5, data_dir=data_dir,
                                   augment={"noise_std": 0.1}), 3)
  assert_same_batches([{k: placed[f"{k}_{i}"] for k in b} for i, b in enumerate(whole)], whole)


def test_a_dcn_mesh_needs_as_many_processes(data_dir):
  from mmvit import config as config_lib, experiment  # noqa: PLC0415
  from tests.tiny import tiny_config  # noqa: PLC0415
  cfg = tiny_config(data_dir=data_dir, mesh_dcn=dict(data=2))
  with pytest.raises(config_lib.ConfigError) as e:
    experiment.prepare(cfg, devices=jax.devices() * 2)
  assert str(e.value) == "mesh_dcn={'data': 2, 'fsdp': 1, 'tensor': 1}: needs 2 slices or processes, the run has 1"


def trimmed(workdir, tmp_path, step):
  """A copy of a finished run as if it had stopped after saving `step`."""
  os.makedirs(tmp_path, exist_ok=True)
  copy = tmp_path / os.path.basename(workdir)
  shutil.copytree(workdir, copy)
  for n in os.listdir(copy / "checkpoints"):
    if n.isdigit() and int(n) > step:
      shutil.rmtree(copy / "checkpoints" / n)
  os.remove(copy / "results.json")
  return copy


@pytest.mark.parametrize("saved_on,resumed_on", [
    ((2, 2), (1, 4)), pytest.param((1, 4), (2, 2), marks=pytest.mark.slow)],
    ids=["2_processes_to_1", "1_process_to_2"])
def test_a_run_resumes_on_another_number_of_processes(weighted_runs, tmp_path, data_dir,
                                                      saved_on, resumed_on):
  """Saved at step 4 on one layout, resumed on the other: parameters and optimizer state are
  restored onto the new shardings, and the data position carries over (every process has read
  the same number of the run's batches), so the run ends where an unbroken one ends."""
  one, two = weighted_runs
  saved = one if saved_on == (1, 4) else two
  reference = two if saved_on == (1, 4) else one
  copy = trimmed(saved, tmp_path, 4)
  out = launch(copy, *resumed_on, *run_args("weighted"), data_dir=data_dir)
  assert "resumed from" in out and "at step 4" in out
  assert "data position carried over" in out
  assert_same_run(reference, copy)


def start_processes(tmp_path, data_dir, extra_by_process, count=2, timeout_s=30):
  """`count` mmvit.main processes of one run (extra arguments per process); (code, stdout,
  stderr without gloo's connection lines) of each."""
  port = launch_lib.free_port()
  procs = []
  for i, extra in enumerate(extra_by_process):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MMVIT_DATA_DIR": data_dir,
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(count),
           "JAX_PROCESS_ID": str(i), "JAX_NUM_CPU_DEVICES": "2"}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "mmvit.main", "--config=tests/tiny_config_file.py:weighted",
         f"--workdir={tmp_path / 'w'}", f"--distributed_timeout={timeout_s}", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  out = []
  for p in procs:
    o, e = p.communicate(timeout=120)
    out.append((p.returncode, o, "".join(l for l in e.splitlines(True) if "[Gloo]" not in l)))
  return out


def test_processes_with_different_configs_each_stop_in_one_line_before_training(tmp_path,
                                                                               data_dir):
  (c0, _, e0), (c1, _, e1) = start_processes(tmp_path, data_dir, [[], ["--config.seed=1"]])
  assert (c0, c1) == (2, 2)
  line = (r"distributed error: process {} runs another config \(\w{{16}}\) than process {} "
          r"\(\w{{16}}\): start every process with the same config and code\n")
  assert re.fullmatch(line.format(1, 0), e0), e0
  assert re.fullmatch(line.format(0, 1), e1), e1
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_a_coordinator_that_never_answers_is_one_line_after_the_timeout(tmp_path, data_dir):
  """Process 1 of 2 alone: nobody serves the coordinator's port."""
  port = launch_lib.free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MMVIT_DATA_DIR": data_dir}
  t0 = time.monotonic()
  p = subprocess.run(
      [sys.executable, "-m", "mmvit.main", "--config=tests/tiny_config_file.py:weighted",
       f"--workdir={tmp_path / 'w'}", "--num_processes=2", "--process_id=1",
       f"--coordinator_address=localhost:{port}", "--distributed_timeout=3"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and time.monotonic() - t0 < 60
  assert p.stderr == (f"distributed error: process 1 of 2 could not meet every process of the "
                      f"run at localhost:{port} within 3 s (--distributed_timeout): start every "
                      "process with the same coordinator address and process count, process 0 "
                      "on the coordinator's host, and check that its port is reachable\n")


def test_the_launchers_dry_runs_print_the_commands_they_would_run():
  env = {**os.environ, "SLURM_SUBMIT_DIR": ROOT}
  run = lambda *cmd: subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=60, check=True).stdout.splitlines()
  local = run(sys.executable, LAUNCH, "--processes=2", "--devices_per_process=2", "--dry-run",
              "--", "--config=configs/demo.py", "--workdir=/tmp/w")
  assert len(local) == 2
  for i, line in enumerate(local):
    assert (f"JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={i} "
            "JAX_NUM_CPU_DEVICES=2 JAX_PLATFORMS=cpu") in line
    assert line.endswith("-m mmvit.main --config=configs/demo.py --workdir=/tmp/w")
  (slurm,) = run("bash", "scripts/launch/slurm.sbatch", "--dry-run", "--config=configs/demo.py",
                 "--workdir=/shared/w")
  assert slurm == (f"cd {ROOT} && srun --kill-on-bad-exit=1 --cpu-bind=none "
                   f"{ROOT}/.venv/bin/python -m mmvit.main --config=configs/demo.py "
                   "--workdir=/shared/w")
  tpu = run("bash", "scripts/launch/tpu_pod.sh", "--tpu=pod", "--zone=us-east5-a", "--dry-run",
            "--", "--config=configs/demo.py", "--workdir=/mnt/runs/w")
  assert tpu[0] == f"git -C {ROOT} archive --format=tar.gz -o /tmp/mmvit.tar.gz HEAD"
  assert all("--worker=all" in line for line in tpu[1:])
  assert "uv sync --locked" in tpu[3]
  assert tpu[-1].endswith("--command='cd ~/mmvit && .venv/bin/python -m mmvit.main "
                          "--config=configs/demo.py --workdir=/mnt/runs/w 2>&1 | tee run.log'")
  mounted = run("bash", "scripts/launch/tpu_pod.sh", "--tpu=pod", "--zone=us-east5-a",
                "--bucket=gs://runs-bkt/", "--dry-run", "--", "--workdir=/mnt/runs-bkt/w")
  assert mounted[1:] == tpu[:-1] + [tpu[-1].replace("--config=configs/demo.py ", "")
                                    .replace("/mnt/runs/w", "/mnt/runs-bkt/w")]
  (command,) = [a for a in shlex.split(mounted[0]) if a.startswith("--command=")]
  assert "--worker=all" in mounted[0]
  assert command.endswith("mountpoint -q /mnt/runs-bkt || gcsfuse --implicit-dirs runs-bkt "
                          "/mnt/runs-bkt; }")


class Launched:
  """scripts/launch/local.py running in the background, its output read line by line."""

  def __init__(self, workdir, processes, devices, *args, data_dir):
    env = {**os.environ, "MMVIT_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1",
           "JAX_COMPILATION_CACHE_DIR": jax_cache.directory(),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    self.proc = subprocess.Popen(
        [sys.executable, LAUNCH, f"--processes={processes}",
         f"--devices_per_process={devices}", "--grace=60", "--", f"--workdir={workdir}",
         "--distributed_timeout=60", "--heartbeat_timeout=5", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines = []

  def wait_for(self, pattern, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      line = self.proc.stdout.readline()
      if not line:
        raise AssertionError("ended before " + pattern + ":\n" + "".join(self.lines[-30:]))
      self.lines.append(line)
      if m := re.search(pattern, line):
        return m
    raise AssertionError(f"no {pattern} within {timeout} s")

  def finish(self, timeout=300):
    rest, _ = self.proc.communicate(timeout=timeout)
    self.lines.append(rest)
    return self.proc.returncode, "".join(self.lines)


LONG = ["--config=tests/tiny_config_file.py:weighted,30", "--config.mesh.data=2",
        "--config.mesh.fsdp=2", "--config.checkpoint_every=8", "--config.keep_checkpoints=20"]


# With -m slow (CI's 15 minutes); one process's SIGTERM save is in test_fault_tolerance.
@pytest.mark.slow
@pytest.mark.parametrize("notice", ["sigterm_to_both", "sigterm_to_process_1", "ctrl_c_to_both"])
def test_a_preemption_notice_saves_one_common_step_and_every_process_exits_0(tmp_path,
                                                                            data_dir, notice):
  """SIGTERM to every process (a pod's maintenance event), to one of them, or a Ctrl-C to all:
  JAX's preemption sync point has them stop after the same step, save it and exit 0."""
  run = Launched(tmp_path / "w", 2, 2, *LONG, data_dir=data_dir)
  pid = int(run.wait_for(r"launch: process 1 pid (\d+)").group(1))
  run.wait_for(r"\[0\] .* step 5/")
  if notice == "sigterm_to_process_1":
    os.kill(pid, signal.SIGTERM)
  else:  # the launcher passes it on to both processes
    run.proc.send_signal(signal.SIGTERM if notice == "sigterm_to_both" else signal.SIGINT)
  code, out = run.finish()
  assert code == 0, out[-3000:]
  saved = re.findall(r"\[(\d)\] preempted: saved step (\d+) to", out)
  assert sorted(p for p, _ in saved) == ["0", "1"], out[-3000:]
  assert len({s for _, s in saved}) == 1
  step = int(saved[0][1])
  assert step < 93 and str(step) in os.listdir(tmp_path / "w" / "checkpoints")


@pytest.mark.slow
def test_a_killed_process_ends_the_other_in_seconds_and_a_rerun_resumes_bit_identically(
    tmp_path, data_dir):
  """SIGKILL process 1 mid-run: process 0 says so in one line within half the heartbeat
  timeout (5 s here) and exits 1; rerunning both resumes from the last checkpoint and ends
  with the parameters of an unbroken 2-process run, bit for bit."""
  run = Launched(tmp_path / "w", 2, 2, *LONG, data_dir=data_dir)
  pid = int(run.wait_for(r"launch: process 1 pid (\d+)").group(1))
  run.wait_for(r"\[0\] .* step 20/")
  os.kill(pid, signal.SIGKILL)
  killed = time.monotonic()
  code, out = run.finish()
  ended = time.monotonic() - killed
  print(f"process 0 ended {ended:.1f} s after process 1 was killed (exit {code})")
  assert code != 0 and ended < 60, out[-3000:]
  (line,) = [l for l in out.splitlines() if l.startswith("[0] distributed error:")]
  assert line.startswith("[0] distributed error: process 0: process 1 has not been heard from "
                         "for "), line
  assert "launch: process 0 failed (exit code 1)" in out
  launch(tmp_path / "w", 2, 2, *LONG, data_dir=data_dir)
  launch(tmp_path / "ref", 2, 2, *LONG, data_dir=data_dir)
  (s1, p1), (s2, p2) = final_state(tmp_path / "w"), final_state(tmp_path / "ref")
  assert s1 == s2
  for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(x, y)


def test_a_damaged_step_stops_every_process_in_one_line_and_moves_nothing(weighted_runs,
                                                                         tmp_path, data_dir):
  """Processes cannot agree on renaming a step, so a run of several moves none aside: each
  names the step and what to do, and the checkpoints stay as they were."""
  _, two = weighted_runs
  copy = tmp_path / "damaged"
  shutil.copytree(two, copy)
  (copy / "checkpoints" / "12" / "data" / "process_1-of-2.json").write_text("{not json")
  before = sorted(os.listdir(copy / "checkpoints"))
  cmd = [sys.executable, LAUNCH, "--processes=2", "--devices_per_process=2", "--grace=30", "--",
         f"--workdir={copy}", "--distributed_timeout=60", "--heartbeat_timeout=10",
         *run_args("weighted")]
  env = {**os.environ, "MMVIT_DATA_DIR": data_dir,
         "JAX_COMPILATION_CACHE_DIR": jax_cache.directory()}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stdout[-3000:]
  for p in (0, 1):
    (line,) = [l for l in out.stdout.splitlines() if l.startswith(f"[{p}] checkpoint error:")]
    assert (f"checkpoint step 12 in {copy}/checkpoints is unreadable on process {p} (" in line
            and line.endswith("a run of several processes moves nothing aside: move that step "
                              "out of the directory and rerun")), line
  assert sorted(os.listdir(copy / "checkpoints")) == before


@pytest.mark.slow
def test_a_run_saved_on_8_devices_resumes_on_4(tmp_path, data_dir):
  """One process, mesh data=-1: saved at step 4 on 8 devices, resumed on 4, it ends where the
  unbroken 8-device run ends (to float32 reordering: the batch is split 4 ways, not 8)."""
  args = ["--config=tests/tiny_config_file.py:weighted", "--config.checkpoint_every=4",
          "--config.keep_checkpoints=5"]
  launch(tmp_path / "eight", 1, 8, *args, data_dir=data_dir)
  copy = trimmed(tmp_path / "eight", tmp_path / "copy", 4)
  out = launch(copy, 1, 4, *args, data_dir=data_dir)
  assert "at step 4" in out and "on a mesh of {'data': 4, 'fsdp': 1, 'tensor': 1}" in out
  loss_diff, param_diff = assert_same_run(tmp_path / "eight", copy)
  print(f"8 -> 4 devices: max |loss difference| {loss_diff:.2e}, max |parameter difference| "
        f"{param_diff:.2e}")


@pytest.mark.slow
def test_a_notice_before_the_first_step_of_a_resumed_run_stops_it_after_one_step(
    weighted_runs, tmp_path, data_dir):
  """JAX's sync point counts this run's steps from 0: a SIGTERM during start-up of a run resumed
  at step 4 agrees on its first step, which is saved as step 5, and both processes exit 0."""
  _, two = weighted_runs
  copy = trimmed(two, tmp_path, 4)
  run = Launched(copy, 2, 2, *run_args("weighted"), data_dir=data_dir)
  run.wait_for(r"\[1\] .*process 1 of 2 joined the run")
  run.proc.send_signal(signal.SIGTERM)
  code, out = run.finish()
  assert code == 0, out[-3000:]
  saved = re.findall(r"\[(\d)\] preempted: saved step (\d+) to", out)
  assert sorted(saved) == [("0", "5"), ("1", "5")], out[-3000:]


@pytest.mark.slow
def test_a_wall_clock_budget_stops_every_process_after_the_same_step(tmp_path, data_dir):
  """config.max_wall_time with several processes: they compare clocks every
  stopping.WALL_CHECK_EVERY steps (one all-gather), so all stop, save and evaluate after the
  same step, even though each process's own clock ran out at another time. (The rule itself
  is in the default suite: test_stopping.py.)"""
  from mmvit import stopping
  out = launch(tmp_path / "w", 2, 2, "--config=tests/tiny_config_file.py:weighted",
               "--config.max_wall_time=0.001", data_dir=data_dir)
  stops = re.findall(r"\[(\d)\] .*max_wall_time=0.001s reached at step (\d+)", out)
  assert sorted(p for p, _ in stops) == ["0", "1"], out[-3000:]
  assert {int(s) for _, s in stops} == {stopping.WALL_CHECK_EVERY}
  with open(tmp_path / "w" / "results.json") as f:
    assert json.load(f)["stopped"] == "max_wall_time"
  assert str(stopping.WALL_CHECK_EVERY) in os.listdir(tmp_path / "w" / "checkpoints")
