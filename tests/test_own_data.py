"""A user's own data, end to end: files made here (real photos, espeak-ng speech, PyAV clips),
built with `python -m mmvit.data build`, trained through the normal trainer with
configs/own_data.py, each reaching a stated test accuracy well above chance."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmvit import data, train
from mmvit.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import own_data  # noqa: E402

SPLIT = "--ratios=0.6,0.1,0.3"  # test splits large enough to measure


def config(arg, media, **over):
  c = own_data.get_config(arg)
  c.data_dir = media.data_dir
  c.log_every = 0
  for k, v in over.items():
    c.tasks.main[k] = v
  return c


def reached(what, metrics):
  """The figure a test reached, for the issue's closing note (`pytest -s` shows it)."""
  print(f"\nown data, {what}: " + json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


def test_an_image_folder_trains_through_the_cli(media, tmp_path):
  """Two classes (crops of sklearn's two photos): chance 50%; >= 90% on 36 test photos."""
  name = media.build("own_photos", f"--images={media.make('photos', n=120)}", SPLIT)
  out = subprocess.run(
      [sys.executable, "-m", "mmvit.main", f"--config=configs/own_data.py:image,{name},steps=150",
       f"--workdir={tmp_path / 'w'}", f"--config.data_dir={media.data_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  acc = {ln.split()[0]: float(ln.split()[1]) for ln in out.stdout.splitlines()
         if ln.startswith("  ")}
  reached("image folder (CLI), test top-1", {"main": acc["main"]})
  assert acc["main"] >= 0.9, out.stdout


def test_pixels_mapped_to_floats_in_the_step_train_as_the_pipelines_floats(media, tmp_path):
  """data_affine_on_device (the default) moves the trailing value_range into the compiled
  step, which reads uint8 batches: the run computes what the host's float32 batches give, to
  float32 rounding (one value_range: |error| <= 1e-6 per pixel)."""
  from mmvit import config as config_lib, tasks
  name = media.build("own_photos", f"--images={media.make('photos', n=120)}", SPLIT)
  out = {}
  for on_device in (False, True):
    c = config(f"image,{name},steps=10", media)
    c.data_affine_on_device = on_device
    (task,), _ = tasks.resolve(config_lib.complete(c))
    assert bool(task.affines) == on_device
    out[on_device] = train.run(c, str(tmp_path / f"w{on_device}"))["test"]["main"]
  for k, v in out[False].items():
    np.testing.assert_allclose(out[True][k], v, rtol=1e-3, err_msg=k)


def test_an_audio_folder_trains_on_log_mel_spectrograms(media, tmp_path):
  """Four spoken words, four espeak-ng voices: chance 25%; >= 60% on the test split."""
  name = media.build("own_speech", f"--audio={media.make('speech', n_per_word=15)}", SPLIT)
  out = train.run(config(f"audio,{name},steps=300,batch=16", media), str(tmp_path / "w"))
  reached("audio folder", out["test"]["main"])
  assert out["test"]["main"]["top1"] >= 0.6, out["test"]


@pytest.fixture(scope="module")
def av_clips(media):
  return media.build("own_clips", f"--video={media.make('clips', n_per_digit=20)}",
                     "--audio_track", "--fps=8", SPLIT)


def test_mp4_clips_with_their_audio_train_a_bottleneck_fusion_task(media, av_clips, tmp_path):
  """Four digits shown and spoken (the word in the middle of 2 s clips, 1 s windows with the
  audio at the frames' time), fused through 4 bottleneck tokens: chance 25%; >= 85% of 24
  test clips (measured here: 100%)."""
  info = data.dataset_info(av_clips, media.data_dir,
                           pp=own_data.video_pp(dict(own_data.DEFAULTS, size=32), audio=True))
  assert info.features["video"][0] == (8, 32, 32, 3)
  assert info.features["spectrogram"][0] == (100, 32, 1)
  c = config(f"av,{av_clips},steps=300,batch=8,size=32", media)
  assert c.tasks.main.fusion.kind == "bottleneck"
  assert "av_window(8, fps=8.0, seconds=1.0, rate=16000, stride=1, sync=True)" in c.tasks.main.pp.train
  out = train.run(c, str(tmp_path / "w"))
  reached("mp4 + audio track, bottleneck fusion", out["test"]["main"])
  assert out["test"]["main"]["top1"] >= 0.85, out["test"]
  # predict on the test split's mp4 files (frames and audio track decoded as the build did,
  # the eval window of both): the run's own test top-1
  from mmvit import inference, predict
  files, labels = media.split_files(av_clips, "test", media.make("clips", n_per_digit=20))
  lines = []
  ok, failed = predict.run(inference.load(str(tmp_path / "w")), files, task="main", k=1,
                           batch_size=8, emit=lines.append)
  assert (ok, failed) == (len(files), 0)
  top1 = [json.loads(line)["top_k"]["label"][0]["class"] for line in lines]
  assert np.mean(np.array(top1) == np.array(labels)) == pytest.approx(
      out["test"]["main"]["top1"], abs=1e-9)


def test_a_video_dataset_without_av_windows_takes_a_multi_view_test(media, av_clips, tmp_path):
  """eval_views=3: three windows of each clip, logits averaged, for any video dataset."""
  c = config(f"video,{av_clips},steps=100,batch=8,size=32,frames=4,stride=2", media,
             eval_views=3)
  out = train.run(c, str(tmp_path / "w"))
  reached("video folder, 3-view test", out["test"]["main"])
  assert 0.0 <= out["test"]["main"]["top1"] <= 1.0
  pp = dict(c.tasks.main.pp)
  b = next(iter(data.eval_batches(av_clips, split="test", batch_size=12, views=3,
                                 data_dir=media.data_dir, pp=pp)))
  assert b["video"].shape == (12, 3, 4, 32, 32, 3)
  assert not np.array_equal(b["video"][:, 0], b["video"][:, 2])  # other windows


def test_a_multilabel_manifest_trains_a_multilabel_head(media, tmp_path):
  """Each image is two halves, each from one photo or blank: labels = the photos shown.
  Chance mAP is about the labels' frequency (0.5); >= 0.85."""
  import make_media
  from PIL import Image
  rng = np.random.default_rng(0)
  srcs = make_media.sample_photos()
  root = tmp_path / "tiles"
  root.mkdir()
  rows = []
  for i in range(120):
    halves, tags = [], set()
    for _ in range(2):
      k = int(rng.integers(3))
      if k < 2:
        halves.append(make_media.photo(rng, srcs[k], (24, 48)))
        tags.add(("china", "flower")[k])
      else:
        halves.append(rng.integers(100, 156, (48, 24, 3), dtype=np.uint8))  # grey noise
    if not tags:
      tags.add("blank")
    Image.fromarray(np.concatenate(halves, axis=1)).save(root / f"{i:03d}.jpg")
    rows.append(dict(image=f"{i:03d}.jpg", labels=";".join(sorted(tags))))
  manifest = make_media.write_manifest(str(root / "tags.csv"), rows)
  name = media.build("own_tags", f"--manifest={manifest}", "--multilabel=labels", SPLIT)
  out = train.run(config(f"multilabel,{name},steps=200", media), str(tmp_path / "w"))
  reached("multi-label manifest", out["test"]["main"])
  assert out["test"]["main"]["mAP"] >= 0.85, out["test"]


def test_a_verb_noun_manifest_trains_one_head_per_label_column(media, tmp_path):
  """EPIC-style: noun = the digit shown (2), verb = its motion, left or right (2); both heads
  >= 75% (chance 50%)."""
  import make_media
  rng = np.random.default_rng(1)
  root = tmp_path / "actions"
  root.mkdir()
  rows = []
  for i in range(80):
    digit, verb = i % 2, ("left", "right")[(i // 2) % 2]
    frames = make_media.digit_frames(digit, 8, 32, rng, angle=np.pi if verb == "left" else 0.0)
    make_media.write_mp4(str(root / f"{i:03d}.mp4"), frames, fps=8)
    rows.append(dict(video=f"{i:03d}.mp4", noun=str(digit), verb=verb, group=f"take{i // 4}"))
  manifest = make_media.write_manifest(str(root / "actions.jsonl"), rows)
  name = media.build("own_actions", f"--manifest={manifest}", "--labels=verb,noun", SPLIT)
  c = config(f"verb_noun,{name},steps=300,batch=8,size=32,frames=8", media)
  c.tasks.main.pp.train = c.tasks.main.pp.train.replace("|flip_lr", "")  # flips swap verbs
  out = train.run(c, str(tmp_path / "w"))
  test = out["test"]["main"]
  reached("verb/noun manifest", test)
  assert test["verb/top1"] >= 0.75 and test["noun/top1"] >= 0.75, test
  assert json.dumps(test)  # plain numbers



def disks(media, root, n=300):
  """(dataset name, radii): images of one disk on grey noise each, the target its radius in
  pixels (3..12), built from a manifest with --targets=radius."""
  import make_media
  from PIL import Image
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  rows = []
  yy, xx = np.mgrid[:36, :36]
  for i in range(n):
    r = float(rng.uniform(3.0, 12.0))
    cy, cx = rng.uniform(14.0, 22.0, 2)
    img = rng.integers(60, 120, (36, 36, 3)).astype(np.float64)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(180, 255)
    Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, f"{i:03d}.png"))
    rows.append(dict(image=f"{i:03d}.png", radius=f"{r:.3f}"))
  manifest = make_media.write_manifest(os.path.join(root, "disks.csv"), rows)
  name = media.build("own_disks", f"--manifest={manifest}", "--targets=radius", SPLIT)
  return name, np.asarray([float(r["radius"]) for r in rows])


def test_a_numeric_manifest_column_trains_a_regression_head(media, tmp_path):
  """The target is stored float32 with the train split's mean and std, and the head predicts
  pixels: test MSE at most 0.2 of the radii's variance (R^2 >= 0.8; the mean alone gives 1)."""
  name, radii = disks(media, str(tmp_path / "disks"))
  c = config(f"regression,{name},steps=300,labels=radius", media)
  info = data.dataset_info(name, media.data_dir, pp=dict(c.tasks.main.pp))
  assert info.num_classes == {"radius": 1} and set(info.targets) == {"radius"}
  assert 6.5 < info.targets["radius"]["mean"][0] < 8.5
  out = train.run(c, str(tmp_path / "w"))
  test = out["test"]["main"]
  reached("regression manifest", test)
  assert test["mse"] <= 0.2 * radii.var(), (test, radii.var())
  assert test["mae"] ** 2 <= test["mse"]
  # predict on the test split's files: values in pixels, the run's own test MSE
  from mmvit import inference, predict
  files, stored = media.split_files(name, "test", str(tmp_path / "disks"), label="radius")
  truth = dict(zip(files, np.asarray(stored, np.float64)))
  lines = []
  ok, failed = predict.run(inference.load(str(tmp_path / "w")), list(truth), task="main",
                           batch_size=16, emit=lines.append)
  assert (ok, failed) == (len(truth), 0)
  preds = [json.loads(line) for line in lines]
  err = [p["top_k"]["radius"][0] - truth[p["file"]] for p in preds]
  # predict rounds its values to 6 decimals; the run computed its MSE from float32 logits
  assert np.mean(np.square(err)) == pytest.approx(test["mse"], rel=1e-4)
  # the batch door: a target that is not a finite number is one line naming the record
  exp = train.build(c)
  (task,) = exp.tasks
  shape, dtype = info.features["image"]
  batch = {"image": np.zeros((task.batch_size,) + shape, dtype),
           "radius": np.ones(task.batch_size, np.float32)}
  batch["radius"][1] = np.nan
  with pytest.raises(data.DataError) as e:
    train.check_batch(task, batch, exp.tokenizer_specs, 0)
  assert str(e.value) == ("task main step 0: label 'radius' of record 1 is nan, expected finite "
                          "floats, 1 per record")


def test_a_head_that_does_not_match_its_label_is_refused_at_the_door(media, tmp_path):
  """A softmax head on a numeric target, or a regression head on a class label: one line."""
  name, _ = disks(media, str(tmp_path / "disks"))
  with pytest.raises(ConfigError) as e:
    train.build(config(f"image,{name},labels=radius", media))
  assert str(e.value) == (f"tasks.main.head='multiclass': label 'radius' of '{name}' is a "
                          "numeric target; it needs head='regression'")
  photos = media.build("own_photos_regression", f"--images={media.make('photos')}")
  with pytest.raises(ConfigError) as e:
    train.build(config(f"regression,{photos},labels=label", media))
  assert str(e.value) == (f"tasks.main.head='regression': label 'label' of '{photos}' is a "
                          "class label; a regression head reads a numeric target (a build's "
                          "--targets)")
