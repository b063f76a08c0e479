"""Starting from public pretrained checkpoints (docs/pretrained.md).

The checkpoint files are written by the tests in each layout from the reference forward passes
of /work/shared/parity (no download): a loaded file must reproduce the reference logits.
Position embeddings and patch kernels change shape by stated rules, checked here exactly where
the rule is exact.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mmvit import checkpointing, convert, pretrained, train
from mmvit.config import ConfigError
from mmvit.models.heads import HeadSpec
from mmvit.models.model import Model, ModelSpec, average_logits, from_description
from mmvit.models.tokenizers import TokenizerSpec
from tests.test_parity import PARITY, _configs, mbt_model, needs_files, vit_model
from tests.tiny import tiny_config

# Logits are O(1) sums over a width-32, depth-2 model in float32: reordered sums differ by
# ~1e-7 (measured 4.5e-8..3.9e-7); 1e-5 is the parity bound of the reference files (README).
ATOL = 1e-5
VIT_JAX_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0":
                 "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
                 "MlpBlock_0": "MlpBlock_3"}


def reference(name):
  return convert.load_npz(os.path.join(PARITY, f"{name}.npz"))


def as_vit_jax(params: dict, cls_inside: bool, seed=0) -> dict:
  """A big_vision reference in the vit_jax/AugReg layout, written independently of mmvit's
  converter: vit_jax block names, `Transformer/posembed_input`, and (cls_inside) the class
  token's position as the first row, which vit_jax adds to the class token: splitting the
  big_vision class token c into (c - p0) + p0 for a random p0 keeps the function."""
  out = {}
  for k, v in params.items():
    parts = k.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = VIT_JAX_BLOCK[parts[2]]
      k = "/".join(parts)
    out[k] = v
  pe = out.pop("pos_embedding")
  if cls_inside and "cls" in out:
    p0 = np.random.default_rng(seed).normal(size=out["cls"].shape).astype(np.float32)
    out["cls"] = out["cls"] - p0
    pe = np.concatenate([p0, pe], axis=1)
  out["Transformer/posembed_input/pos_embedding"] = pe
  return out


def logits_after_init(model, task, inputs, **source):
  lines, rows = pretrained.init_model(model, source)
  return average_logits(model(task, inputs))["label"], lines, rows


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ----------------------------------------------------------------------- layouts: parity

@needs_files
@pytest.mark.parametrize("case,layout", [
    ("tok", "big_vision"), ("tok_scan", "big_vision"), ("map", "big_vision"),
    ("gap_sincos", "big_vision"), ("gap_rep", "big_vision"),
    ("tok", "vit_jax_cls_inside"), ("tok", "vit_jax_cls_beside"),
    ("gap_rep", "vit_jax_cls_inside"),  # with pre_logits (no class token: nothing inside)
    ("tok_scan", "vit_jax_cls_inside")])
def test_a_checkpoint_file_of_each_layout_reproduces_the_reference(tmp_path, case, layout):
  cfg = _configs("vit_configs.json")[case]
  ref = reference(f"vit_{case}")
  params = dict(ref.params)
  if layout.startswith("vit_jax"):
    if case == "tok_scan":  # vit_jax stores no scan layout: unstack first
      params = {k: v for k, v in params.items() if "/encoderblock/" not in k}
      for k, v in ref.params.items():
        if "/encoderblock/" in k:
          for l in range(v.shape[0]):
            params[k.replace("/encoderblock/", f"/encoderblock_{l}/")] = v[l]
    params = as_vit_jax(params, cls_inside=layout.endswith("inside"))
  path = tmp_path / "ckpt.npz"
  np.savez(path, **params)
  assert convert.detect_layout(params) == layout.split("_cls")[0]
  got, _, rows = logits_after_init(vit_model(cfg), "image", {"image": ref.inputs["image"]},
                                   file=str(path), groups="*")
  assert {r.action for r in rows} == {"loaded"}
  diff = max_diff(got, ref.outputs["logits"])
  assert diff <= ATOL, (case, layout, diff)


@needs_files
@pytest.mark.parametrize("case", ["bottleneck_token_lf1", "full_pairwise_token_lf1",
                                  "joint_shared_gap_lf0"])
def test_a_scenic_mbt_checkpoint_file_reproduces_the_reference(tmp_path, case):
  """Scenic names its streams rgb and spectrogram and its task-specific groups `mbt`; a
  group_map gives them this model's names (here the task is called av)."""
  cfg = _configs("mbt_configs.json")[case]
  ref = reference(f"mbt_{case}")
  path = tmp_path / "mbt.npz"
  np.savez(path, **ref.params)
  model = mbt_model(cfg)
  batch = {m: ref.inputs[m] for m in cfg["modality_fusion"]}
  got, _, rows = logits_after_init(model, "av", batch, file=str(path), groups="*",
                                   group_map=("bottlenecks.av=bottlenecks.mbt",
                                              "heads.av=heads.mbt"))
  assert max_diff(got, ref.outputs["logits"]) <= ATOL
  # The reference has no bottleneck position embedding: it stays this model's own (fresh).
  fresh = {r.param for r in rows if r.action == "fresh"}
  assert fresh <= {"bottlenecks.av/posemb"}


# ------------------------------------------------------------------ position embeddings

def smooth_table(grid, width=8, seed=0):
  rng = np.random.default_rng(seed)
  axes = np.meshgrid(*[np.linspace(0, 1, g) for g in grid], indexing="ij")
  freqs = rng.uniform(0.3, 1.5, size=(width, len(grid)))
  phase = rng.uniform(0, np.pi, size=width)
  table = np.stack([np.sin(sum(f * a for f, a in zip(fr, axes)) * np.pi + p)
                    for fr, p in zip(freqs, phase)], axis=-1)
  return table.reshape(-1, width).astype(np.float32)


def test_resizing_a_grid_to_itself_is_exact_and_a_round_trip_is_close():
  t = smooth_table((14, 14))
  assert pretrained.resize_grid(t, (14, 14), (14, 14)) is t
  back = pretrained.resize_grid(pretrained.resize_grid(t, (14, 14), (16, 16)), (16, 16), (14, 14))
  # Stated tolerance: 14 -> 16 -> 14 of a smooth grid (values in [-1, 1]) returns within 0.06
  # max abs (measured 0.043; docs/pretrained.md).
  assert max_diff(back, t) < 0.06


def test_grids_of_other_shapes_and_ranks():
  t = smooth_table((14, 14))
  spec = pretrained.resize_grid(t, (14, 14), (8, 100))  # a spectrogram's (time, mel) grid
  assert spec.shape == (800, 8)
  video = pretrained.resize_grid(t, (14, 14), (4, 14, 14))  # repeated over time
  np.testing.assert_array_equal(video.reshape(4, 196, 8), np.broadcast_to(t, (4, 196, 8)))
  seq = smooth_table((10,))
  grid = pretrained.resize_grid(seq, (10,), (3, 10))  # 1D to 2D: the leading axis repeats
  np.testing.assert_array_equal(grid.reshape(3, 10, 8)[2], seq)
  with pytest.raises(pretrained.AdaptError, match=r"3D grid \(2, 4, 4\) cannot be resized"):
    pretrained.resize_grid(smooth_table((2, 4, 4)), (2, 4, 4), (4, 4))


def test_the_stored_grid_is_a_checked_perfect_square_not_a_guess():
  assert pretrained.posemb_grid("pe", 197, True, None) == (14, 14)
  assert pretrained.posemb_grid("pe", 196, False, None) == (14, 14)
  with pytest.raises(pretrained.AdaptError, match=r"pe has 801 positions \(one the class "
                     r"token's\): 800 is not a perfect square.*posemb_grid"):
    pretrained.posemb_grid("pe", 801, True, None)
  assert pretrained.posemb_grid("pe", 801, True, (8, 100)) == (8, 100)


# ------------------------------------------------------------------------ patch kernels

def test_a_grown_patch_kernel_embeds_the_resized_patch_as_the_old_one_did():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
  w2 = pretrained.resize_patch(w, (8, 8))
  x = rng.normal(size=(4, 4, 3)).astype(np.float32)
  x2 = np.asarray(jax.image.resize(x, (8, 8, 3), "linear", antialias=False))
  np.testing.assert_allclose(np.einsum("hwc,hwcd->d", x2, w2),
                             np.einsum("hwc,hwcd->d", x, w), atol=1e-4)


def test_rgb_kernels_sum_into_one_channel_for_spectrograms():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
  w1, notes = pretrained.adapt_kernel(w, (4, 4, 1, 5), "average", "k")
  g = rng.normal(size=(4, 4, 1)).astype(np.float32)  # a grey patch seen as RGB
  # 48 float32 products of O(1) values per output: rounding ~1e-6, bound 1e-5.
  np.testing.assert_allclose(np.einsum("hwc,hwcd->d", g, w1),
                             np.einsum("hwc,hwcd->d", np.repeat(g, 3, -1), w), atol=1e-5)
  assert notes == ["3 channels summed"]
  with pytest.raises(pretrained.AdaptError, match=r"k is a 2D patch kernel \(4, 4\), this "
                     r"model's is 1D"):
    pretrained.adapt_kernel(w, (16, 3, 5), "average", "k")


def image_and_video_models(frames=4, pt=2, pool="token"):
  """A ViT on 16x16 images and one on clips of `frames` such frames, tubelets (pt, 4, 4)."""
  spec = ModelSpec(width=32, depth=2, num_heads=2, mlp_dim=64, pool=pool)
  head = HeadSpec("multiclass", ("label",), (5,))
  cls = pool == "token"
  img = Model(spec, {"image": TokenizerSpec("image", "image", (16, 16, 3), (4, 4),
                                            class_token=cls)},
              {"image": (("image",), head, None)}, rngs=nnx.Rngs(0))
  # Perturb every parameter so zero-initialised heads and class tokens carry signal too.
  state = nnx.state(img, nnx.Param)
  leaves, tdef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(img, jax.tree.unflatten(tdef, [x + 0.1 * jax.random.normal(k, x.shape)
                                            for x, k in zip(leaves, keys)]))
  vid = Model(spec, {"video": TokenizerSpec("tubelet", "video", (frames, 16, 16, 3),
                                            (pt, 4, 4), class_token=cls)},
              {"video": (("video",), head, None)}, rngs=nnx.Rngs(2))
  return img, vid


def export_image_model(img, path):
  params = nnx.to_pure_dict(nnx.state(img, nnx.Param))
  flat = convert.to_vit(params, task="image", modality="image",
                        tokenizer=img.tokenizers["image"].spec)
  convert.save_npz(str(path), flat)


@pytest.mark.parametrize("pt,pool", [(4, "token"), (2, "gap")])
def test_average_inflation_on_a_clip_constant_in_time_gives_the_image_logits(tmp_path, pt,
                                                                             pool):
  """Exact where the video's tokens are the image's: one tubelet deep (pt = frames), or
  several deep without a class token (every patch token repeated gt times leaves attention
  unchanged; a class token would weigh 1 against gt copies)."""
  img, vid = image_and_video_models(frames=4, pt=pt, pool=pool)
  export_image_model(img, tmp_path / "vit.npz")
  _, rows = pretrained.init_model(vid, dict(
      file=str(tmp_path / "vit.npz"), groups="*",
      group_map=("tokenizers.video=tokenizers.image", "heads.video=heads.image")))
  image = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  clip = np.repeat(image[:, None], 4, axis=1)
  want = img("image", {"image": image})[0]["label"]
  got = vid("video", {"video": clip})[0]["label"]
  assert max_diff(got, want) <= ATOL
  by_param = {r.param: r for r in rows}
  assert by_param["tokenizers.video/kernel"].action == "inflated"
  assert by_param["tokenizers.video/posemb"].action == "resized"  # (4, 4) -> (4 // pt, 4, 4)


def test_central_frame_inflation_ignores_every_other_frame(tmp_path):
  img, vid = image_and_video_models(frames=3, pt=3)
  export_image_model(img, tmp_path / "vit.npz")
  pretrained.init_model(vid, dict(file=str(tmp_path / "vit.npz"), groups="*", inflate="central",
                                  group_map=("tokenizers.video=tokenizers.image",
                                             "heads.video=heads.image")))
  clip = np.random.default_rng(0).normal(size=(2, 3, 16, 16, 3)).astype(np.float32)
  other = clip.copy()
  other[:, [0, 2]] = np.random.default_rng(1).normal(size=other[:, [0, 2]].shape)
  a = np.asarray(vid("video", {"video": clip})[0]["label"])
  b = np.asarray(vid("video", {"video": other})[0]["label"])
  np.testing.assert_array_equal(a, b)
  want = img("image", {"image": clip[:, 1]})[0]["label"]
  assert max_diff(a, want) <= ATOL


@pytest.mark.parametrize("layout", ["big_vision", "vit_jax"])
def test_the_writer_round_trips_whichever_side_holds_the_class_token_position(tmp_path, layout):
  """An mmvit model whose position embedding covers the class token, written by mmvit's
  writer and read into models that place it either way, computes the same logits."""
  def model(cls_in, seed):
    spec = ModelSpec(width=32, depth=2, num_heads=2, mlp_dim=64, adapter_depth=1)
    m = Model(spec, {"image": TokenizerSpec("image", "image", (16, 16, 3), (4, 4),
                                            posemb_includes_cls=cls_in)},
              {"image": (("image",), HeadSpec("multiclass", ("label",), (5,), pre_logits=8),
                         None)}, rngs=nnx.Rngs(seed))
    leaves, tdef = jax.tree.flatten(nnx.state(m, nnx.Param))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(m, jax.tree.unflatten(tdef, [x + 0.1 * jax.random.normal(k, x.shape)
                                            for x, k in zip(leaves, keys)]))
    return m
  src = model(True, 0)
  flat = convert.to_vit(nnx.to_pure_dict(nnx.state(src, nnx.Param)), task="image",
                        modality="image", tokenizer=src.tokenizers["image"].spec, layout=layout)
  assert convert.detect_layout(flat) == layout
  path = str(tmp_path / "w.npz")
  convert.save_npz(path, flat)
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  want = src("image", {"image": x})[0]["label"]
  for cls_in in (True, False):
    dst = model(cls_in, 1)
    # The writer put the adapter block first: it maps back by layer range.
    pretrained.init_model(dst, dict(file=path, groups="*", group_map=(
        "adapters.*=shared[0:1]", "shared=shared[1:3]")))
    assert max_diff(dst("image", {"image": x})[0]["label"], want) <= ATOL, cls_in


def test_a_fixed_sincos_model_with_its_class_token_last_is_written_as_a_sincos2d_vit(tmp_path):
  """No position parameter is written (big_vision's posemb='sincos2d'), the class token goes
  first; read back into a learned-posemb, class-first model the table is rebuilt exactly and
  the logits are the source's. The vit_jax layout cannot hold a fixed table: one line."""
  def model(seed, **tok):
    spec = ModelSpec(width=32, depth=2, num_heads=2, mlp_dim=64, post_adapter_depth=1,
                     task_depth=1)
    m = Model(spec, {"image": TokenizerSpec("image", "image", (16, 16, 3), (4, 4), **tok)},
              {"image": (("image",), HeadSpec("multiclass", ("label",), (5,)), None)},
              rngs=nnx.Rngs(seed))
    leaves, tdef = jax.tree.flatten(nnx.state(m, nnx.Param))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(m, jax.tree.unflatten(tdef, [x + 0.1 * jax.random.normal(k, x.shape)
                                            for x, k in zip(leaves, keys)]))
    return m
  src = model(0, posemb="sincos", cls_last=True)
  params = nnx.to_pure_dict(nnx.state(src, nnx.Param))
  flat = convert.to_vit(params, task="image", modality="image",
                        tokenizer=src.tokenizers["image"].spec)
  assert "pos_embedding" not in flat and convert.detect_layout(flat) == "big_vision"
  path = str(tmp_path / "w.npz")
  convert.save_npz(path, flat)
  dst = model(1)
  # The writer put the post-adapter and task blocks after the shared ones, in order.
  _, rows = pretrained.init_model(dst, dict(file=path, groups="*", group_map=(
      "shared=shared[0:2]", "post_adapters.*=shared[2:3]", "task_blocks.*=shared[3:4]")))
  assert {r.param: r.action for r in rows}["tokenizers.image/posemb"] != "fresh"
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  assert max_diff(dst("image", {"image": x})[0]["label"],
                  src("image", {"image": x})[0]["label"]) <= ATOL
  with pytest.raises(convert.ConversionError, match="use layout='big_vision'"):
    convert.to_vit(params, task="image", modality="image", layout="vit_jax")


# ---------------------------------------------------------------- groups across names

def test_an_image_vit_initialises_every_stream_and_adapters_by_layer_range(tmp_path):
  """MBT: each stream from the same ViT; PolyViT: a ViT's first block as the modality's
  adapter, the rest as the shared stack."""
  img, _ = image_and_video_models()
  export_image_model(img, tmp_path / "vit.npz")
  src = nnx.to_pure_dict(nnx.state(img, nnx.Param))["encoder"]
  spec = ModelSpec(width=32, depth=1, num_heads=2, mlp_dim=64, adapter_depth=1)
  model = Model(spec, {"image": TokenizerSpec("image", "image", (32, 32, 3), (8, 8))},
                {"image": (("image",), HeadSpec("multiclass", ("label",), (7,)), None)},
                rngs=nnx.Rngs(0))
  _, rows = pretrained.init_model(model, dict(
      file=str(tmp_path / "vit.npz"), groups=("shared", "adapters.*", "tokenizers.*"),
      group_map=("adapters.*=shared[0:1]", "shared=shared[1:2]")))
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(got["adapters"]["image"]["encoderblock_0"]),
                  jax.tree.leaves(src["encoderblock_0"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(got["encoder"]["encoderblock_0"]),
                  jax.tree.leaves(src["encoderblock_1"])):
    np.testing.assert_array_equal(a, b)
  actions = {r.param: r.action for r in rows}
  assert actions["tokenizers.image/kernel"] == "resized"   # 4x4 patches -> 8x8 (pseudo-inverse)
  assert actions["tokenizers.image/posemb"] == "loaded"    # (4, 4) grid both
  assert actions["heads.image/outputs/label/kernel"] == "fresh"
  # The adapters take no final norm: the ViT's is skipped for them (and loaded into shared).
  assert {(r.param.split(": ")[1], r.note) for r in rows if r.action == "skipped"} == {
      (f"Transformer/encoder_norm/{p}", "this model's adapters.image has no encoder_norm")
      for p in ("scale", "bias")}
  assert actions["shared/encoder_norm/scale"] == "loaded"


# -------------------------------------------------------- a run started from a file

def image_run_config(data_dir, steps=3):
  c = tiny_config(steps=steps, data_dir=data_dir)
  c.tasks = ml_collections.ConfigDict({"image": c.tasks.image.to_dict()})
  c.schedule = dict(kind="alternating")
  return c


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
  """A trained image run and its image task written as a big_vision npz by mmvit's writer."""
  wd = str(tmp_path_factory.mktemp("img"))
  out = train.run(image_run_config(data_dir), wd)
  path = str(tmp_path_factory.mktemp("npz") / "image.npz")
  convert.main_export(workdir=wd, task="image", out=path, layout="big_vision")
  return wd, path, jax.tree.map(np.asarray, out["state"]["params"])


def test_a_run_starts_from_a_file_and_reports_every_parameter(exported, tmp_path, data_dir):
  wd, path, params = exported
  c = tiny_config(steps=2, data_dir=data_dir)
  c.init_from = [dict(file=path, groups=("shared", "tokenizers.*"),
                      group_map="tokenizers.*=tokenizers.image"),
                 # The same from the run itself: a run's group into a differently named one.
                 dict(workdir=wd, groups="tokenizers.video",
                      group_map="tokenizers.video=tokenizers.image")]
  run_wd = str(tmp_path / "ft")
  start = train.run(c, run_wd, stop_at=0)
  got = jax.tree.map(np.asarray, start["state"]["params"])
  for a, b in zip(jax.tree.leaves(got["shared"]), jax.tree.leaves(params["shared"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got["tokenizers.image"]["kernel"],
                                params["tokenizers.image"]["kernel"])
  with open(os.path.join(run_wd, "init_from.json")) as f:
    report = json.load(f)
  actions = {r["param"]: r["action"] for r in report["parameters"]}
  assert actions["tokenizers.video/kernel"] == "inflated"      # 8x8 image patches -> tubelets
  assert actions["tokenizers.audio/kernel"] == "resized"       # 8x8 -> 16x16 spectrogram patches
  assert actions["tokenizers.audio/posemb"] == "resized"       # (4, 4) -> (4, 2)
  assert actions["heads.video_digit/outputs/digit/kernel"] == "fresh"
  assert "big_vision layout" in report["sources"][0]
  assert "tokenizers.video <- tokenizers.image" in report["sources"][1]


def test_a_checkpoint_describes_its_model(exported, data_dir):
  """The checkpoint's metadata rebuilds the model without any dataset; with the saved
  parameters it computes what the run's model computes."""
  wd, _, params = exported
  step_dir = os.path.join(wd, "checkpoints", "3")
  desc = checkpointing.read_meta(step_dir)["model"]
  assert desc["tasks"]["image"]["label_names"]["label"] == [str(i) for i in range(10)]
  model = from_description(desc)
  _, saved = checkpointing.read_params(wd)
  from mmvit.models.model import join_groups
  convert.load_into(model, join_groups(saved))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
  exp_model = from_description(desc)
  convert.load_into(exp_model, join_groups(params))
  np.testing.assert_array_equal(np.asarray(model("image", {"image": x})[0]["label"]),
                                np.asarray(exp_model("image", {"image": x})[0]["label"]))


def test_bad_sources_are_one_line_errors_and_the_workdir_is_untouched(exported, tmp_path,
                                                                      data_dir):
  wd, path, _ = exported
  junk = tmp_path / "junk.npz"
  junk.write_text("not a checkpoint")
  other = tmp_path / "other.npz"
  np.savez(other, **{"a/b": np.zeros(3)})
  cases = [
      (dict(file=str(junk), groups="shared"), r"init_from\[0\]\.file=.*junk\.npz: not a "
       r"checkpoint"),
      (dict(file=str(other), groups="shared"), r"other\.npz: its parameters \('a/b', \.\.\.\) "
       r"match none of the known layouts"),
      (dict(file=path, groups="shared", group_map="shared=stream_encoders.audio"),
       r"has no parameter group stream_encoders.audio \(for shared\); it has"),
      (dict(file=path, groups="shared", group_map="shared=shared[0:5]"),
       r"layer range \[0:5\] of group shared, which has 2 blocks"),
  ]
  for source, message in cases:
    c = image_run_config(data_dir)
    c.init_from = source
    run_wd = tmp_path / f"wd{len(message)}"
    with pytest.raises(checkpointing.CheckpointError, match=message) as e:
      train.run(c, str(run_wd))
    assert "\n" not in str(e.value)
    for name in ("init_from.json", "config.json", "params.json"):
      assert not (run_wd / name).exists(), name
    assert not list((run_wd / "checkpoints").glob("[0-9]*"))
  for source, message in [
      (dict(file=path, workdir=wd, groups="shared"), r"init_from\[0\]: give workdir .* or file"),
      (dict(file=path, groups="shared", inflate="middle"), r"init_from\[0\]\.inflate='middle'"),
      (dict(file=path, groups="shared", group_map=("shared",)), r"group_map: 'shared': expected"),
      (dict(file=path, groups="shared", posemb_grid=(0, 4)), r"posemb_grid=\(0, 4\)")]:
    c = image_run_config(data_dir)
    c.init_from = source
    with pytest.raises(ConfigError, match=message):
      train.run(c, None)
