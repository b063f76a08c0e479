"""Parity with the reference implementations (/work/shared/parity, see its README.md).

Each reference file holds a forward pass of big_vision's ViT or Scenic's MBT with random
parameters. We build the mmvit Model with the same settings, import the parameters with
mmvit.convert and compare logits in evaluation mode (and, for MBT's token classifier, the
per-stream training-mode logits).
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from mmvit import convert
from mmvit.models.fusion import FusionSpec
from mmvit.models.heads import HeadSpec
from mmvit.models.model import Model, ModelSpec, average_logits
from mmvit.models.tokenizers import TokenizerSpec

PARITY = os.environ.get("MMVIT_PARITY_DIR", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "parity"))
ATOL = 1e-5
RTOL = 1e-5

# Input and patch settings of the reference files (README.md; not in the config JSONs).
VIT_IMAGE = (16, 16, 3)
MBT_INPUTS = {"rgb": (4, 16, 16, 3), "spectrogram": (20, 16, 1)}
MBT_PATCHES = (4, 4, 2)  # Scenic's patches.size, read as (h, w, t)

VIT_CASES = ["tok", "tok_scan", "gap_sincos", "gap_rep", "map"]
MBT_CASES = ["bottleneck_token_lf1", "bottleneck_token_lf2_b1", "bottleneck_token_lf0_shared",
             "full_pairwise_token_lf1", "late_token", "joint_shared_gap_lf0"]

needs_files = pytest.mark.skipif(not os.path.isdir(PARITY),
                                 reason=f"no reference files in {PARITY}")


def _configs(name):
  with open(os.path.join(PARITY, name)) as f:
    return json.load(f)


def _close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=what)
  return float(np.max(np.abs(got - want)))


# ----------------------------------------------------------------------------------- ViT

def vit_model(cfg):
  pool = {"tok": "token", "gap": "gap", "map": "map"}[cfg["pool_type"]]
  spec = ModelSpec(width=cfg["width"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                   mlp_dim=cfg["mlp_dim"], pool=pool)
  tok = TokenizerSpec("image", "image", VIT_IMAGE, tuple(cfg["patch_size"]),
                      class_token=pool == "token", posemb_includes_cls=False)
  # big_vision's rep_size=True: a representation layer as wide as the model.
  rep = cfg["width"] if cfg.get("rep_size") is True else int(cfg.get("rep_size") or 0)
  head = HeadSpec("multiclass", ("label",), (cfg["num_classes"],), pre_logits=rep)
  return Model(spec, {"image": tok}, {"image": (("image",), head, None)}, rngs=nnx.Rngs(0))


def vit_convert(cfg, ref, target):
  # gap_sincos: big_vision's fixed sin-cos table has no parameter; the importer writes it into
  # mmvit's position embedding, which is a learned Param (exact forward, but trainable).
  posemb = cfg.get("posemb", "learn")
  grid = tuple(d // p for d, p in zip(VIT_IMAGE[:2], cfg["patch_size"]))
  return convert.from_big_vision_vit(ref.params, target=target, posemb=posemb, grid=grid)


def run_vit(case):
  """(mmvit logits, reference logits) for vit_<case>."""
  cfg = _configs("vit_configs.json")[case]
  ref = convert.load_npz(os.path.join(PARITY, f"vit_{case}.npz"))
  model = vit_model(cfg)
  convert.load_into(model, vit_convert(cfg, ref, model))
  preds = model("image", {"image": ref.inputs["image"]})
  return average_logits(preds)["label"], ref.outputs["logits"]


@needs_files
@pytest.mark.parametrize("case", VIT_CASES)
def test_big_vision_vit(case):
  """Every big_vision pooling (token, gap, MAP), the representation layer, the scan layout and
  fixed sin-cos position embeddings reproduce the reference logits."""
  got, want = run_vit(case)
  _close(got, want, f"vit_{case} logits")


# ----------------------------------------------------------------------------------- MBT

def mbt_model(cfg):
  mods = tuple(cfg["modality_fusion"])
  head = HeadSpec("multiclass", ("label",), (cfg["num_classes"],))
  tasks = {"av": (mods, head, convert.mbt_fusion_spec(cfg))}
  return Model(convert.mbt_model_spec(cfg), convert.mbt_tokenizers(cfg, MBT_INPUTS, MBT_PATCHES),
               tasks, rngs=nnx.Rngs(0))


def run_mbt(case):
  """{output name: (mmvit, reference)} for mbt_<case>: `logits` (evaluation) and, with the
  token classifier, `train_logits:<modality>` (training mode, one per stream)."""
  cfg = _configs("mbt_configs.json")[case]
  ref = convert.load_npz(os.path.join(PARITY, f"mbt_{case}.npz"))
  model = mbt_model(cfg)
  convert.load_into(model, convert.from_scenic_mbt(ref.params, cfg, target=model))
  batch = {m: ref.inputs[m] for m in cfg["modality_fusion"]}
  out = {"logits": (average_logits(model("av", batch))["label"], ref.outputs["logits"])}
  if cfg["classifier"] == "token":
    # Training mode: a key turns dropout on (its rates are 0 here, as in the reference run).
    preds = model("av", batch, key=jax.random.key(0))
    assert len(preds) == len(cfg["modality_fusion"])
    for m, p in zip(cfg["modality_fusion"], preds):
      out[f"train_logits:{m}"] = (p["label"], ref.outputs[f"train_logits:{m}"])
  return out


@needs_files
@pytest.mark.parametrize("case", MBT_CASES)
def test_scenic_mbt(case):
  out = run_mbt(case)
  expected = {"logits"} | {k for k in convert.load_npz(
      os.path.join(PARITY, f"mbt_{case}.npz")).outputs if k.startswith("train_logits:")}
  assert set(out) == expected
  for what, (got, want) in out.items():
    _close(got, want, f"mbt_{case} {what}")


def test_mbt_settings_map_onto_fusion_kinds():
  base = dict(modality_fusion=["rgb", "spectrogram"], num_layers=3, classifier="token")
  assert convert.mbt_fusion_spec({**base, "use_bottleneck": True, "n_bottlenecks": 4,
                                  "fusion_layer": 1}) == FusionSpec("bottleneck", 1, 5, False)
  assert convert.mbt_fusion_spec({**base, "fusion_layer": 1}).kind == "full_pairwise"
  assert convert.mbt_fusion_spec({**base, "fusion_layer": 3}).kind == "late"
  assert convert.mbt_fusion_spec({**base, "fusion_layer": 0, "share_encoder": True}) == \
      FusionSpec("joint", 0, shared_weights=True)
  assert convert.mbt_fusion_spec({**base, "modality_fusion": ["rgb"]}) is None
  with pytest.raises(convert.Unsupported, match="gmp"):
    convert.mbt_fusion_spec({**base, "classifier": "gmp"})


# --------------------------------------------------------------------- strictness of import

@needs_files
def test_import_names_the_unused_reference_parameter():
  ref = convert.load_npz(os.path.join(PARITY, "vit_tok.npz"))
  with pytest.raises(convert.ConversionError, match="unused reference parameter 'extra/w'"):
    convert.from_big_vision_vit({**ref.params, "extra/w": np.zeros(3)})


@needs_files
def test_import_names_the_missing_reference_parameter():
  ref = convert.load_npz(os.path.join(PARITY, "vit_tok.npz"))
  params = dict(ref.params)
  del params["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
  with pytest.raises(convert.ConversionError,
                     match="missing reference parameter 'Transformer/encoderblock_1/MlpBlock_0"):
    convert.from_big_vision_vit(params)


@needs_files
def test_import_names_the_reference_parameter_of_a_wrong_shape():
  cfg = _configs("vit_configs.json")["tok"]
  ref = convert.load_npz(os.path.join(PARITY, "vit_tok.npz"))
  model = vit_model(cfg)
  params = {**ref.params, "pos_embedding": np.zeros((1, 17, cfg["width"]), np.float32)}
  with pytest.raises(convert.ConversionError, match=r"'pos_embedding' has shape \(1, 17, 32\)"):
    convert.from_big_vision_vit(params, target=model)
  # A scanned block with a stray layer count is named too.
  ref = convert.load_npz(os.path.join(PARITY, "vit_tok_scan.npz"))
  params = dict(ref.params)
  k = "Transformer/encoderblock/LayerNorm_1/bias"
  params[k] = np.concatenate([params[k], params[k][:1]])
  with pytest.raises(convert.ConversionError, match=f"'{k}' stacks 3 layers"):
    convert.from_big_vision_vit(params)


@needs_files
def test_import_names_a_model_parameter_the_reference_lacks():
  cfg = _configs("mbt_configs.json")["bottleneck_token_lf1"]
  ref = convert.load_npz(os.path.join(PARITY, "mbt_bottleneck_token_lf1.npz"))
  model = mbt_model({**cfg, "n_bottlenecks": 3})  # 4 mmvit tokens vs the reference's 5
  with pytest.raises(convert.ConversionError, match=r"'bottleneck' has shape \(1, 5, 32\)"):
    convert.from_scenic_mbt(ref.params, cfg, target=model)
  params = {k: v for k, v in ref.params.items() if k != "clsspectrogram"}
  with pytest.raises(convert.ConversionError, match="missing reference parameter 'clsspectrogram'"):
    convert.from_scenic_mbt(params, cfg, target=model)
