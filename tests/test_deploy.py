"""After training: model surgery and jax.export, from a run's self-describing checkpoint."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from mmvit import export, inference, surgery, train
from mmvit.models.model import count
from tests.tiny import tiny_config


def tree_digest(path):
  """Names, sizes and contents of every file under `path`."""
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      p = os.path.join(root, name)
      h.update(p.encode())
      with open(p, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  """A co-trained tiny run: image, video_digit and audio, with a modality block after the
  shared ones and a task block before each head (PolyViT's)."""
  wd = str(tmp_path_factory.mktemp("run"))
  c = tiny_config(steps=2, data_dir=data_dir)
  c.model.post_adapter_depth = c.model.task_depth = 1
  train.run(c, wd)
  return wd


def inputs_for(loaded, task, batch, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=(batch,) + s).astype(np.float32)
          for k, s in loaded.input_shapes(task).items()}


def logits(loaded, task, batch):
  fn, state = inference.logits_fn(loaded, task)
  return {k: np.asarray(v) for k, v in fn(state, batch).items()}


def test_surgery_keeps_what_the_kept_tasks_read_and_their_outputs(run, tmp_path):
  before = tree_digest(run)
  full = inference.load(run)
  out = str(tmp_path / "image_only")
  assert surgery.main([f"--workdir={run}", "--keep=modality:image", f"--out={out}"]) == 0
  small = inference.load(out)
  assert list(small.tasks) == ["image"]
  assert sorted(small.groups) == ["heads.image", "post_adapters.image", "shared",
                                  "task_blocks.image", "tokenizers.image"]
  assert count(small.groups) < count(full.groups)
  x = inputs_for(full, "image", 4)
  a, b = logits(full, "image", x), logits(small, "image", x)
  np.testing.assert_array_equal(a["label"], b["label"])
  assert tree_digest(run) == before  # the source workdir is only read


def test_a_cut_model_is_fine_tuned_through_init_from(run, tmp_path, data_dir):
  out = str(tmp_path / "cut")
  assert surgery.main([f"--workdir={run}", "--keep=task:image", f"--out={out}"]) == 0
  c = tiny_config(steps=2, data_dir=data_dir)
  c.model.post_adapter_depth = c.model.task_depth = 1  # the run's model, as `run` trains it
  c.tasks = ml_collections.ConfigDict({"image": c.tasks.image.to_dict()})
  c.schedule = dict(kind="alternating")
  c.init_from = dict(workdir=out, groups="*")
  start = train.run(c, None, stop_at=0)
  cut = inference.load(out).groups
  for g in cut:
    for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, start["state"]["params"][g])),
                    jax.tree.leaves(cut[g])):
      np.testing.assert_array_equal(x, y)


def test_surgery_errors_are_one_line(run, tmp_path, capsys):
  for keep, message in [("task:nothing", "the run has no task 'nothing'; it has audio, image, "
                         "video_digit"),
                        ("modality:smell", "the run has no modality 'smell'"),
                        ("head:image", "expected modality:<name> or task:<name>")]:
    assert surgery.main([f"--workdir={run}", f"--keep={keep}", f"--out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
  desc = {"tokenizers": {"video": {}, "audio": {}},
          "tasks": {"av": {"modalities": ["video", "audio"]}}}
  with pytest.raises(surgery.SurgeryError, match=r"keeps no task: .*av reads video\+audio"):
    surgery.kept_tasks(desc, "modality:video")
  os.makedirs(tmp_path / "full")
  (tmp_path / "full" / "f").write_text("x")
  assert surgery.main([f"--workdir={run}", "--keep=task:image", f"--out={tmp_path / 'full'}"]) == 1
  assert "exists and is not an empty directory" in capsys.readouterr().err


def test_an_exported_task_runs_in_a_process_without_mmvit(run, tmp_path):
  path = str(tmp_path / "video.jax")
  assert export.main([f"--workdir={run}", "--task=video_digit", f"--out={path}",
                      "--platforms=cpu"]) == 0
  sig = json.load(open(path + ".json"))
  assert sig["inputs"] == [{"key": "video", "shape": ["b", 8, 32, 32, 1], "dtype": "float32"}]
  loaded = inference.load(run)
  for n in (1, 3, 7):
    x = inputs_for(loaded, "video_digit", n, seed=n)
    np.save(tmp_path / f"x{n}.npy", x["video"])
    np.save(tmp_path / f"want{n}.npy", logits(loaded, "video_digit", x)["digit"])
  script = textwrap.dedent(f"""
      import sys, time
      import jax, numpy as np
      t0 = time.perf_counter()
      exp = jax.export.deserialize(open({path!r}, "rb").read())
      for n in (1, 3, 7):
        (got,) = exp.call(np.load({str(tmp_path)!r} + f"/x{{n}}.npy"))
        want = np.load({str(tmp_path)!r} + f"/want{{n}}.npy")
        assert got.shape == want.shape, (got.shape, want.shape)
        assert np.max(np.abs(np.asarray(got) - want)) <= 1e-6, np.max(np.abs(got - want))
      assert not any(m.startswith("mmvit") for m in sys.modules)
      print("ok", time.perf_counter() - t0)
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                     cwd=str(tmp_path), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("ok")


def test_export_errors_are_one_line(run, tmp_path, capsys):
  assert export.main([f"--workdir={run}", "--task=smell", f"--out={tmp_path / 'a'}"]) == 1
  assert "--task='smell'" in capsys.readouterr().err
  assert export.main([f"--workdir={run}", "--task=image", f"--out={tmp_path / 'a'}",
                      "--platforms=metal"]) == 1
  assert "--platforms=metal" in capsys.readouterr().err


# ------------------------------------------------------------------------------ predict

def test_predict_on_the_test_files_gives_the_runs_own_test_accuracy(media, tmp_path):
  """The test split's files, decoded and preprocessed by predict, are classified exactly as
  the run's own test evaluation classified their records."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import own_data
  from mmvit import predict
  folder = media.make("photos", n=120)
  name = media.build("own_photos", f"--images={folder}", "--ratios=0.6,0.1,0.3")
  c = own_data.get_config(f"image,{name},steps=30")
  c.data_dir = media.data_dir
  c.log_every = 0
  wd = str(tmp_path / "w")
  test_top1 = train.run(c, wd)["test"]["main"]["top1"]
  files, labels = media.split_files(name, "test", folder)
  lines = []
  loaded = inference.load(wd)
  ok, failed = predict.run(loaded, files + [str(tmp_path / "missing.png")], task="main",
                           k=2, batch_size=8, emit=lines.append)
  assert (ok, failed) == (len(files), 1)
  out = [json.loads(line) for line in lines]
  (bad,) = [o for o in out if "error" in o]
  assert bad["file"].endswith("missing.png") and "cannot read" in bad["error"]
  preds = [o for o in out if "error" not in o]
  assert [o["file"] for o in preds] == files
  top1 = [o["top_k"]["label"][0]["class"] for o in preds]
  assert np.mean(np.array(top1) == np.array(labels)) == pytest.approx(test_top1, abs=1e-9)
  names = loaded.task("main")["label_names"]["label"]
  assert preds[0]["top_k"]["label"][0]["name"] == names[top1[0]]


def test_a_manifest_lists_the_files_predict_reads(media, tmp_path):
  """A build manifest's image column, relative to its folder, gives the files; a row without
  one is a one-line error naming the row."""
  import make_media
  from mmvit import predict
  folder = media.make("photos", n=120)
  files = predict.list_files([folder], ("image",))[:5]
  rows = [dict(image=os.path.relpath(f, folder), label="x") for f in files]
  path = make_media.write_manifest(os.path.join(str(tmp_path), "m.csv"), rows)
  os.symlink(folder, tmp_path / "photos")
  rel = make_media.write_manifest(
      str(tmp_path / "r.jsonl"), [dict(image=os.path.join("photos", r["image"])) for r in rows])
  assert predict.manifest_files(path, "image") == [
      os.path.join(str(tmp_path), r["image"]) for r in rows]
  assert predict.list_files([rel], ("image",)) == [
      os.path.join(str(tmp_path), "photos", r["image"]) for r in rows]
  bad = make_media.write_manifest(str(tmp_path / "b.csv"), [dict(image="", label="x")])
  with pytest.raises(predict.PredictError) as e:
    predict.list_files([bad], ("image",))
  assert str(e.value) == f"{bad} row 2: no image path (the task reads image files)"
