"""The planner (issue 13): every step of a config compiled on abstract shapes, for datasets
this machine does not hold (config.datasets), with nothing materialised."""

import os
import subprocess
import sys

import jax
import pytest

from mmvit import config as config_lib, experiment, plan, throughput
from tests.tiny import declared_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_abstract_experiment_holds_shapes_only():
  exp = experiment.build(declared_config(), abstract=True)
  leaves = jax.tree.leaves(exp.state)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert all(x.sharding is not None for x in leaves)


def test_the_plan_compiles_every_step_and_counts_what_it_reads():
  rows = plan.plan(declared_config(), quiet=True)
  assert set(rows) == {"image", "video_digit", "audio"}
  exp = experiment.build(declared_config(), abstract=True)
  for t in exp.tasks:
    r = rows[t.name]
    work = throughput.task_work(exp.model_spec, t, exp.tokenizer_specs)
    assert r["model_gflops"] == pytest.approx(work.flops / 1e9)
    assert r["peak_bytes"] > r["temp_bytes"] > 0 and r["compile_s"] > 0
  # A step reads the shared encoder, its modality's tokenizer and its head: the audio head
  # (527 multi-label classes) makes its step read the most.
  assert rows["audio"]["params"] > rows["image"]["params"]


def test_the_plan_compiles_a_padded_heads_program_once_and_the_members_resizes():
  """share_steps='pad_classes': an image task of 37 classes beside the 10-class one runs its
  program (its row names it) and compiles only the resizes of the group's heads."""
  cfg = declared_config()
  cfg.share_steps = "pad_classes"
  cfg.datasets.many = dict(features=dict(image=((32, 32, 1), "float32")),
                           num_classes=dict(label=37))
  cfg.tasks.wide = {**cfg.tasks.image.to_dict(), "dataset": "many"}
  rows = plan.plan(cfg, quiet=True)
  assert rows["wide"]["shares"] == "image" and "shares" not in rows["image"]
  assert 0 < rows["wide"]["compile_s"] < rows["image"]["compile_s"]
  assert rows["wide"]["peak_bytes"] == rows["image"]["peak_bytes"]  # one program
  # ... but each row counts the task's own head: 27 more classes of width 32, with biases
  assert rows["wide"]["params"] - rows["image"]["params"] == 27 * 33
  assert rows["wide"]["model_gflops"] > rows["image"]["model_gflops"]


def test_the_plan_of_the_accumulated_schedule_is_one_step():
  assert set(plan.plan(declared_config(kind="accumulated"), quiet=True)) == {"accumulated"}


def test_a_declared_dataset_trains_on_random_batches_of_its_shapes(tmp_path):
  """Nothing is learnt from random labels: the run goes through, to the test metrics."""
  from mmvit import train  # noqa: PLC0415
  out = train.run(declared_config(steps=2), str(tmp_path / "w"))
  assert set(out["test"]) == {"image", "video_digit", "audio"}
  assert out["throughput"]["examples_per_s"] > 0


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c.datasets.images.update(features=dict(image=((32, 0, 1), "float32"))),
     "datasets.images.features.image=((32, 0, 1), 'float32'): expected (shape, float dtype), "
     "e.g. ((224, 224, 3), 'float32')"),
    (lambda c: c.datasets.images.update(features=dict(image=((32, 32, 1), "uint8"))),
     "datasets.images.features.image=((32, 32, 1), 'uint8'): expected (shape, float dtype), "
     "e.g. ((224, 224, 3), 'float32')"),
    (lambda c: setattr(c.datasets.images, "num_classes", {}),
     "datasets.images.num_classes: expected label key -> number of classes (>= 1)"),
    (lambda c: c.datasets.images.update(size=3),
     "datasets.images.size: unknown field; expected features, num_classes, splits, multilabel"),
])
def test_a_bad_declared_dataset_is_one_line(edit, msg):
  cfg = declared_config()
  edit(cfg)
  with pytest.raises(config_lib.ConfigError) as e:
    experiment.build(cfg, abstract=True)
  assert str(e.value) == msg


def test_the_plan_command_prints_a_row_per_step_and_names_shared_executables(tmp_path):
  cfg_file = tmp_path / "planned.py"
  cfg_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom tests.tiny import declared_config\n"
      "def get_config(arg=None):\n  c = declared_config()\n"
      "  c.tasks.image2 = c.tasks.image.to_dict()\n  return c\n" % ROOT)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "mmvit.plan", f"--config={cfg_file}",
                        "--config.model.remat=dots"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert any(line.startswith("image ") for line in lines)
  assert any(line.startswith("audio ") for line in lines)
  # A task alike but for its name runs image's executable: nothing more compiled.
  assert [line.split()[-2:] for line in lines if line.startswith("image2 ")] == [["=", "image"]]
  assert lines[-1].startswith("compile time, all steps:")
  bad = subprocess.run([sys.executable, "-m", "mmvit.plan", f"--config={cfg_file}",
                        "--config.model.remat=some"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "config error: model.remat='some': expected one of none, full, dots, qkv_mlp")
