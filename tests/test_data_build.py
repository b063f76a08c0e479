"""`python -m mmvit.data build` makes a TFDS dataset from a user's folders and manifests: read
like any tfds: dataset, deterministic, atomic, with splits that keep groups apart; every file
or row it cannot use is one line naming it, before anything is visible."""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmvit import data
from mmvit.data import __main__ as cli

PP = dict(train="decode|inception_crop(32)|flip_lr|value_range(-1, 1)",
          eval="decode|resize_small(36)|central_crop(32)|value_range(-1, 1)")


def build(data_dir, name, *args, capsys=None):
  code = cli.main(["build", f"--name={name}", f"--data_dir={data_dir}", "--workers=0",
                   "--quiet", *args])
  return code


def error_line(capsys):
  err = capsys.readouterr().err.strip()
  assert "\n" not in err, err
  assert err.startswith("data error: "), err
  return err[len("data error: "):]


@pytest.fixture(scope="module")
def photos(media):
  return media.make("photos", n=40)


def test_an_image_folder_becomes_a_dataset_with_sorted_classes_and_seeded_splits(media, photos,
                                                                                 tmp_path):
  name = media.build("photos_a", f"--images={photos}")
  info = data.dataset_info(name, media.data_dir, pp=PP)
  assert info.splits == {"train": 32, "validation": 4, "test": 4}  # 0.8 / 0.1 / 0.1
  assert info.num_classes == {"label": 2}
  assert info.features["image"] == ((32, 32, 3), np.float32)
  meta = data.registry.get(name).builder(media.data_dir).info
  assert meta.features["label"].names == ["china", "flower"]
  # The same files give the same records: a second build has the same fingerprints.
  assert build(str(tmp_path), name, f"--images={photos}") == 0
  assert data.inspect(name, str(tmp_path)) == data.inspect(name, media.data_dir)


def test_two_builds_with_parallel_workers_give_the_same_records(media, photos, tmp_path):
  media.build("photos_a", f"--images={photos}")
  assert cli.main(["build", "--name=photos_a", f"--data_dir={tmp_path}", "--workers=2",
                   "--quiet", f"--images={photos}"]) == 0
  assert data.inspect("photos_a", str(tmp_path)) == data.inspect("photos_a", media.data_dir)


def test_split_folders_give_the_splits(media, tmp_path):
  root = media.make("photos", n=24, splits=("train", "val", "test"))
  assert build(str(tmp_path), "by_split", f"--images={root}") == 0
  info = data.dataset_info("by_split", str(tmp_path), pp=PP)
  assert info.splits == {"train": 8, "validation": 8, "test": 8}


def test_a_built_dataset_reads_as_tfds_and_resumes_from_an_iterator_state(media, photos):
  name = media.build("photos_a", f"--images={photos}")
  for dataset in (name, f"tfds:{name}", f"tfds:{name}:1.0.0"):
    it = data.train_iterator(dataset, batch_size=4, seed=3, data_dir=media.data_dir, pp=PP)
    next(it)
    state = it.get_state()
    want = next(it)
    again = data.train_iterator(dataset, batch_size=4, seed=3, data_dir=media.data_dir, pp=PP)
    again.set_state(state)
    got = next(again)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
    assert want["image"].shape == (4, 32, 32, 3) and want["label"].dtype == np.int32


def test_worker_processes_make_the_batches_of_the_main_process_and_resume_from_their_state(
    media, photos):
  """data_workers=2 makes whole batches in 2 processes (one transfer per batch): batch k is
  the same as with no workers, and a workers iterator resumes from its own state."""
  name = media.build("photos_a", f"--images={photos}")
  kw = dict(batch_size=4, seed=3, data_dir=media.data_dir, pp=PP)
  plain = data.train_iterator(name, **kw)
  want = [next(plain) for _ in range(5)]
  it = data.train_iterator(name, workers=2, **kw)
  try:
    got = [next(it) for _ in range(3)]
    state = it.get_state()
  finally:
    it.close()
  again = data.train_iterator(name, workers=2, **kw)
  try:
    again.set_state(state)
    got += [next(again) for _ in range(2)]
  finally:
    again.close()
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k])


def test_with_device_affine_batches_keep_uint8_pixels_and_the_affine_gives_the_host_batches(
    media, photos):
  """device_affine leaves the trailing value_range out of both pipelines: the same batches as
  uint8, a quarter of the bytes, which device_affines maps to the float32 batches."""
  name = media.build("photos_a", f"--images={photos}")
  kw = dict(data_dir=media.data_dir, pp=PP)
  affines = data.device_affines(name, **kw)
  assert set(affines) == {"train", "eval"}
  ((train_affine,), (eval_affine,)) = affines["train"], affines["eval"]
  assert train_affine.key == "image"
  assert data.dataset_info(name, device_affine=True, **kw).features["image"][1] == np.uint8
  host = next(data.train_iterator(name, batch_size=4, seed=3, **kw))
  raw = next(data.train_iterator(name, batch_size=4, seed=3, device_affine=True, **kw))
  assert raw["image"].dtype == np.uint8
  # Both sides map a uint8 to [-1, 1] with one float32 multiply and add, each rounded to half
  # an ulp of |y| <= 1: they differ by a few ulps of 1, within 8 eps (9.5e-7) on any CPU.
  tol = 8 * np.finfo(np.float32).eps
  np.testing.assert_allclose(train_affine(raw["image"]), host["image"], atol=tol)
  host = next(data.eval_batches(name, split="test", batch_size=4, **kw))
  raw = next(data.eval_batches(name, split="test", batch_size=4, device_affine=True, **kw))
  np.testing.assert_allclose(eval_affine(raw["image"]), host["image"], atol=tol)


def test_a_tfds_dataset_stored_as_tfrecord_is_one_line_saying_how_to_convert(media, photos,
                                                                             tmp_path):
  name = media.build("photos_a", f"--images={photos}")
  shutil.copytree(os.path.join(media.data_dir, name), tmp_path / "old_one")
  info_path = tmp_path / "old_one" / "1.0.0" / "dataset_info.json"
  meta = json.loads(info_path.read_text())
  meta["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(meta))
  with pytest.raises(data.DataError, match=r"is stored as tfrecord; .*tfds convert_format "
                                           r"--dataset_version_dir=.* --out_file_format="
                                           "array_record"):
    data.ensure_built("tfds:old_one", str(tmp_path))
  with pytest.raises(data.DataError, match=r"tfds:nothing_here: not prepared in .*nothing "
                                           "is downloaded"):
    data.ensure_built("tfds:nothing_here", str(tmp_path))
  with pytest.raises(data.DataError, match=r"version 9.9.9 is not in .* \(it has 1.0.0\)"):
    data.ensure_built("tfds:old_one:9.9.9", str(tmp_path))


def test_a_dataset_that_is_not_there_names_the_near_builtin(tmp_path):
  with pytest.raises(data.DataError, match=r"unknown dataset 'digits_imag' \(did you mean "
                                           r"'digits_image'\?\).*no dataset of that name is "
                                           "built in"):
    data.ensure_built("digits_imag", str(tmp_path))
  assert not os.listdir(tmp_path)


def test_a_shard_truncated_while_training_is_one_line_naming_it_and_the_rebuild(media, photos,
                                                                              tmp_path):
  name = media.build("photos_a", f"--images={photos}")
  shutil.copytree(os.path.join(media.data_dir, name), tmp_path / name)
  it = data.train_iterator(name, batch_size=4, seed=0, data_dir=str(tmp_path), pp=PP)
  next(it)
  (shard,) = (tmp_path / name / "1.0.0").glob(f"{name}-train.array_record*")
  shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 3])
  with pytest.raises(data.DataError) as e:
    for _ in range(20):
      next(it)
  msg = str(e.value)
  assert "\n" not in msg and f"cannot read record" in msg and str(shard) in msg
  assert "rerun `python -m mmvit.data build`" in msg


# ------------------------------------------------------------ bad input ----

def corrupt_copy(src, dst):
  shutil.copytree(src, dst)
  victim = sorted((dst / "flower").iterdir())[0]
  victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG/PNG
  return victim


def test_a_corrupt_image_is_one_line_naming_it_and_nothing_is_built(photos, tmp_path, capsys):
  root = tmp_path / "in"
  victim = corrupt_copy(photos, root)
  out = tmp_path / "out"
  assert build(str(out), "bad", f"--images={root}") == 2
  msg = error_line(capsys)
  assert msg.startswith(f"{victim}: not a decodable image") and "--skip_bad" in msg
  assert not (out / "bad").exists()


def test_skip_bad_skips_reports_and_lists_the_files(photos, tmp_path, capsys):
  root = tmp_path / "in"
  victim = corrupt_copy(photos, root)
  assert build(str(tmp_path / "out"), "skipping", f"--images={root}", "--skip_bad") == 0
  out = capsys.readouterr().out
  assert "skipped 1 file(s)" in out
  listed = (tmp_path / "out" / "skipping" / "1.0.0" / "skipped.txt").read_text()
  assert str(victim) in listed
  assert sum(data.dataset_info("skipping", str(tmp_path / "out"), pp=PP).splits.values()) == 39


def test_an_empty_class_folder_is_one_line(photos, tmp_path, capsys):
  root = tmp_path / "in"
  shutil.copytree(photos, root)
  (root / "empty").mkdir()
  assert build(str(tmp_path / "out"), "x", f"--images={root}") == 2
  assert error_line(capsys).startswith(f"{root / 'empty'}: an empty class folder")


def test_a_zero_length_audio_file_and_an_undecodable_mp4_are_one_line(tmp_path, capsys):
  for kind, ext, want in (("audio", "wav", "an empty file"),
                          ("video", "mp4", "not a video PyAV can open")):
    root = tmp_path / kind / "c"
    root.mkdir(parents=True)
    (root / f"a.{ext}").write_bytes(b"" if kind == "audio" else b"not a video at all" * 10)
    assert build(str(tmp_path / "out"), "x", f"--{kind}={root.parent}") == 2
    assert error_line(capsys) == f"{root / ('a.' + ext)}: {want}; --skip_bad skips such files" \
        if kind == "audio" else error_line(capsys).startswith(f"{root / 'a.mp4'}: {want}")
  assert not (tmp_path / "out" / "x").exists()


def manifest_rows(photos, n=12):
  files = sorted((os.path.relpath(os.path.join(d, f), photos)
                  for d, _, fs in os.walk(photos) for f in fs if not f.startswith("m.")),
                 key=os.path.basename)[:n]  # the photos alternate between the classes
  return [dict(image=f, label=f.split(os.sep)[0], group=f"g{i // 2}") for i, f in enumerate(files)]


def test_manifest_rows_that_cannot_be_used_name_the_row(media, photos, tmp_path, capsys):
  import make_media
  rows = manifest_rows(photos)
  cases = [
      (dict(image="missing.jpg", label="china"), "row 2: image file"),
      (dict(image=rows[1]["image"], label=""), "row 2: label column 'label' is empty"),
      (dict(image=rows[1]["image"], label="tiger"), "row 2: label 'tiger' of 'label' is not one "
                                                    "of the --classes (china, flower)"),
      (dict(image=rows[1]["image"], label="china", split="dev"), "row 2: split 'dev' is not"),
  ]
  for bad, want in cases:
    path = make_media.write_manifest(os.path.join(photos, "m.csv"), [bad] + rows[2:])
    assert build(str(tmp_path), "x", f"--manifest={path}", "--labels=label",
                 "--classes=label=china;flower") == 2
    msg = error_line(capsys)
    assert msg.startswith(f"{path} ") and want in msg, msg
  # The same file in two splits.
  two = [dict(rows[0], split="train"), dict(rows[0], split="test")] + [
      dict(r, split="train") for r in rows[1:]]
  path = make_media.write_manifest(os.path.join(photos, "m.jsonl"), two)
  assert build(str(tmp_path), "x", f"--manifest={path}", "--labels=label") == 2
  assert "is in two splits" in error_line(capsys)
  assert not (tmp_path / "x").exists()


def test_a_copy_of_a_file_in_another_split_is_refused(photos, tmp_path, capsys):
  root = tmp_path / "in"
  for split in ("train", "test"):
    shutil.copytree(photos, root / split)
  assert build(str(tmp_path / "out"), "x", f"--images={root}") == 2
  msg = error_line(capsys)
  assert msg.startswith("the same file is in two splits (train: ") and "test: " in msg
  assert not (tmp_path / "out" / "x").exists()


def test_a_seeded_split_keeps_every_group_in_one_split(photos, tmp_path):
  import make_media
  rows = [dict(r, image=os.path.join(photos, r["image"])) for r in manifest_rows(photos, 40)]
  path = make_media.write_manifest(str(tmp_path / "m.csv"), rows)  # absolute paths
  assert build(str(tmp_path / "out"), "grouped", f"--manifest={path}", "--labels=label",
               "--ratios=0.5,0.25,0.25") == 0
  groups = {}
  for split in ("train", "validation", "test"):
    for r in data.data_source("grouped", split, str(tmp_path / "out")):
      groups.setdefault(r["group"], set()).add(split)
  assert len(groups) == 20 and all(len(s) == 1 for s in groups.values())


def test_multilabel_and_multihead_manifests_store_multi_hot_and_one_class_label_each(
    photos, tmp_path):
  import make_media
  rows = [dict(r, image=os.path.join(photos, r["image"])) for r in manifest_rows(photos, 20)]
  for i, r in enumerate(rows):
    r["tags"] = ";".join(["sky"] * (i % 2) + ["stone"] * (i % 3 == 0) + [r["label"]])
    r["size"] = ("small", "big")[i % 2]
  path = make_media.write_manifest(str(tmp_path / "m.jsonl"), rows)
  assert build(str(tmp_path / "out"), "tagged", f"--manifest={path}", "--labels=label,size",
               "--multilabel=tags") == 0
  info = data.dataset_info("tagged", str(tmp_path / "out"), pp=PP)
  assert info.num_classes == {"label": 2, "size": 2, "tags": 4}
  assert info.features["tags"] == ((4,), np.float32)
  r = data.data_source("tagged", "train", str(tmp_path / "out"))[0]
  assert set(np.unique(r["tags"])) <= {0.0, 1.0} and r["tags"].sum() >= 1


def test_inspect_shows_class_balance_shapes_and_writes_a_contact_sheet(media, photos, tmp_path,
                                                                      capsys):
  name = media.build("photos_a", f"--images={photos}")
  sheet = tmp_path / "sheet.png"
  assert cli.main(["inspect", name, f"--data_dir={media.data_dir}", f"--sheet={sheet}",
                   "--pp=decode|resize_small(36)|central_crop(32)"]) == 0
  out = capsys.readouterr().out
  assert "  train      label: china 16 (50%), flower 16 (50%)" in out or (
      "train      label: china" in out and "flower" in out), out
  assert "train      image: 48x64 x32" in out
  from PIL import Image
  with Image.open(sheet) as im:
    assert im.width > 100 and im.height > 100


_CELLS = ["a.png", "b.png", "missing.png", "", "cat", "dog;cat", ";", "train", "TEST", "val",
          "x", "1", "\x00", "é", '"', ",", "\n"]


def _manifest_bytes(draw_rows, kind):
  if kind == "csv":
    lines = [",".join(r) for r in draw_rows]
    return "\n".join(["image,label,tags,split,group", *lines]).encode("utf-8", "surrogatepass")
  return b"\n".join(json.dumps(dict(zip(("image", "label", "tags", "split", "group"), r))
                               if len(r) % 2 else r).encode() for r in draw_rows)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from(_CELLS), max_size=6), max_size=6),
       kind=st.sampled_from(["csv", "jsonl"]), junk=st.binary(max_size=8))
def test_fuzz_the_manifest_reader_accepts_or_fails_in_one_line_naming_the_file(
    rows, kind, junk, tmp_path_factory):
  """Any bytes in a manifest (cells of every kind, NUL, bad UTF-8, bad JSON) give items or a
  one-line BuildError that names the manifest, never another exception."""
  from mmvit.data import build as b
  d = tmp_path_factory.mktemp("fuzz")
  for name in ("a.png", "b.png"):
    (d / name).write_bytes(b"\x89PNG")
  path = d / f"m.{kind}"
  path.write_bytes(_manifest_bytes(rows, kind) + junk)
  try:
    items = b.read_manifest(str(path), ("label",), ("tags",))
  except b.BuildError as e:
    assert "\n" not in str(e) and str(path) in str(e), str(e)
  else:
    assert all(set(it.paths.values()) <= {str(d / "a.png"), str(d / "b.png")} for it in items)


def test_a_target_column_must_hold_finite_numbers_and_only_a_manifest_has_one(
    photos, tmp_path, capsys):
  import make_media
  rows = [dict(r, size="1.5") for r in manifest_rows(photos)]
  for value in ("big", "nan", ""):
    path = make_media.write_manifest(os.path.join(photos, "t.csv"),
                                     [dict(rows[0], size=value)] + rows[1:])
    assert build(str(tmp_path), "x", f"--manifest={path}", "--targets=size") == 2
    assert error_line(capsys) == (f"{path} row 2: target column 'size' is {value!r}, expected "
                                  "a finite number")
  path = make_media.write_manifest(os.path.join(photos, "t.csv"), rows)
  assert build(str(tmp_path), "x", f"--manifest={path}", "--labels=label",
               "--targets=label") == 2
  assert error_line(capsys) == "--targets: column 'label' is also a class label column"
  assert build(str(tmp_path), "x", f"--images={photos}", "--targets=size") == 2
  assert error_line(capsys) == "--targets: numeric columns come from a --manifest"
  assert not (tmp_path / "x").exists()
