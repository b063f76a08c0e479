"""Tokenizers, the encoder block and heads, checked against the rules they implement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvit import evaluate
from mmvit.models import heads, layers
from mmvit.models.encoder import Block, depth_rates
from mmvit.models.tokenizers import Tokenizer, TokenizerSpec, full_patch, patchify


def tokenizer(kind, shape, patch, **kw):
  spec = TokenizerSpec(kind=kind, input_key="x", input_shape=shape,
                       patch=full_patch(kind, shape, patch), **kw)
  return Tokenizer(spec, 16, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind,shape,patch,tokens", [
    ("image", (32, 32, 1), (4, 4), 64),
    ("tubelet", (8, 32, 32, 1), (2, 8, 8), 64),
    ("frames", (8, 32, 32, 1), (1,), 8),              # one whole frame per token
    ("temporal_slices", (8, 32, 32, 1), (8, 8), 16),  # an 8x8 block across all 8 frames
    ("spectrogram", (64, 32, 1), (8, 8), 32),
    ("waveform", (8000,), (250,), 32),                # raw-waveform segments
])
def test_each_tokenizer_gives_the_seed_patching_plus_a_class_token(kind, shape, patch, tokens):
  tok = tokenizer(kind, shape, patch)
  out = tok(jnp.ones((2,) + shape))
  assert out.shape == (2, tokens + 1, 16)
  assert tok.spec.num_patches == tokens


def test_patchify_matches_a_strided_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  k = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
  conv = jax.lax.conv_general_dilated(x, k, (4, 4), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = patchify(x, (4, 4)) @ k.reshape(-1, 5)
  np.testing.assert_allclose(ours, conv.reshape(2, -1, 5), rtol=1e-5, atol=1e-5)


def test_temporal_slices_mix_every_frame_and_frames_mix_every_pixel():
  shape = (4, 8, 8, 1)
  x = np.zeros((1,) + shape, np.float32)
  x[0, 3, 0, 0, 0] = 1.0  # last frame, top-left pixel
  slices = patchify(jnp.asarray(x), full_patch("temporal_slices", shape, (4, 4)))
  assert slices.shape == (1, 4, 64) and float(slices[0, 0].sum()) == 1.0
  frames = patchify(jnp.asarray(x), full_patch("frames", shape, (1,)))
  assert frames.shape == (1, 4, 64) and float(frames[0, 3].sum()) == 1.0


def test_position_embedding_with_or_without_the_class_token():
  bv = tokenizer("image", (8, 8, 1), (4, 4))
  mbt = tokenizer("image", (8, 8, 1), (4, 4), posemb_includes_cls=True)
  assert bv.posemb.shape == (1, 4, 16) and mbt.posemb.shape == (1, 5, 16)


def test_stochastic_depth_drops_whole_examples_and_rescales_survivors():
  x = jnp.ones((4000, 3, 2))
  y = layers.drop_path(x, 0.25, jax.random.key(0))
  per_example = np.asarray(y[:, 0, 0])
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
  assert np.all(np.asarray(y) == per_example[:, None, None])
  assert abs(per_example.mean() - 1.0) < 0.05  # unbiased in expectation
  assert layers.drop_path(x, 0.25, None) is x  # evaluation: identity


def test_stochastic_depth_grows_linearly_with_depth():
  assert depth_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_block_is_pre_layernorm_residual():
  """With the attention output and MLP output projections zeroed, the block is the identity."""
  block = Block(16, 2, 32, rngs=nnx.Rngs(0))
  block.MultiHeadDotProductAttention_0.out["kernel"][...] = 0.0
  block.MlpBlock_0["Dense_1"].kernel[...] = 0.0
  block.MlpBlock_0["Dense_1"].bias[...] = 0.0
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  np.testing.assert_allclose(block(x), x, atol=1e-6)


def test_multilabel_loss_is_sigmoid_bce_and_multihead_averages():
  spec = heads.HeadSpec("multilabel", ("labels",), (3,))
  logits = {"labels": jnp.array([[0.0, 2.0, -1.0]])}
  target = jnp.array([[1, 1, 0]])
  expected = np.mean([np.log(2), np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))])
  assert float(heads.loss(spec, logits, {"labels": target})[0]) == pytest.approx(expected, 1e-5)
  mh = heads.HeadSpec("multihead", ("verb", "noun"), (2, 2))
  lg = {"verb": jnp.array([[0.0, 0.0]]), "noun": jnp.array([[10.0, -10.0]])}
  loss = heads.loss(mh, lg, {"verb": jnp.array([0]), "noun": jnp.array([0])})[0]
  assert float(loss) == pytest.approx((np.log(2) + 0.0) / 2, abs=1e-4)


def test_a_head_padded_to_more_classes_with_its_own_counts_masked_is_the_head_it_pads():
  """share_steps='pad_classes': padded classes (zero logits here) never win an argmax, and
  the loss, with label smoothing spread over the real classes, and its gradient with respect
  to the real logits are those of the unpadded head; the padded logits get no gradient."""
  spec = heads.HeadSpec("multiclass", ("y",), (3,))
  wide = heads.HeadSpec("multiclass", ("y",), (8,))
  z = jnp.array([[-2.0, -1.0, -3.0], [-0.5, -4.0, -0.1]])
  y = {"y": jnp.array([1, 2])}
  padded = {"y": jnp.pad(z, ((0, 0), (0, 5)))}
  classes = {"y": jnp.int32(3)}
  masked = heads.mask_classes(padded, classes)
  assert masked["y"].argmax(-1).tolist() == [1, 2]
  assert padded["y"].argmax(-1).tolist() == [3, 3]  # unmasked, a padded class would win
  for smoothing in (0.0, 0.1):
    own = lambda z: heads.loss(spec, {"y": z}, y, smoothing).sum()
    pad = lambda z: heads.loss(wide, heads.mask_classes({"y": z}, classes), y, smoothing,
                               classes).sum()
    # Each value reduces at most 8 terms (the padded ones exact zeros), in another order:
    # float32 moves by about sqrt(8) eps of the values' scale.
    tol = np.sqrt(8) * np.finfo(np.float32).eps
    np.testing.assert_allclose(pad(padded["y"]), own(z), rtol=tol)
    g_own, g_pad = jax.grad(own)(z), jax.grad(pad)(padded["y"])
    np.testing.assert_allclose(g_pad[:, :3], g_own, rtol=0, atol=tol * np.abs(g_own).max())
    assert not np.asarray(g_pad[:, 3:]).any()


def test_metrics_top1_top5_map_and_joint_accuracy():
  logits = np.eye(10)[[0, 1, 2, 3]] * 5
  mc = evaluate.metrics(heads.HeadSpec("multiclass", ("y",), (10,)), {"y": logits},
                        {"y": np.array([0, 1, 2, 4])})
  assert mc["top1"] == 0.75 and mc["top5"] == 1.0
  scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
  targets = np.array([[1, 0], [0, 1], [1, 0]])
  # class 0: positives ranked 1 and 3 -> (1 + 2/3) / 2; class 1: positive ranked 1 -> 1.
  ml = evaluate.metrics(heads.HeadSpec("multilabel", ("y",), (2,)), {"y": scores}, {"y": targets})
  assert ml["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
  mh = evaluate.metrics(heads.HeadSpec("multihead", ("a", "b"), (2, 2)),
                        {"a": np.array([[1, 0], [1, 0]]), "b": np.array([[1, 0], [0, 1]])},
                        {"a": np.array([0, 0]), "b": np.array([0, 0])})
  assert mh == {"a/top1": 1.0, "b/top1": 0.5, "joint_top1": 0.5}


def test_one_encoder_pass_per_modality_then_each_task_blocks_and_head_equal_each_task_alone():
  """Seed claim 23 with PolyViT's blocks after the shared ones: encode_modality (tokenizer,
  adapters, shared, the modality's post-adapter blocks) once, then each task's predict_head
  (its task blocks, the final norm, its head) gives that task's own forward pass, and two tasks
  of one modality differ only by their blocks and heads."""
  from mmvit.models.model import Model, ModelSpec
  spec = ModelSpec(width=16, depth=2, num_heads=2, mlp_dim=32, adapter_depth=1,
                   post_adapter_depth=1, task_depth=2, pool="gap")
  tok = TokenizerSpec("image", "image", (16, 16, 1), (4, 4))
  heads_ = {t: (("image",), heads.HeadSpec("multiclass", ("label",), (c,)), None)
            for t, c in (("digits", 10), ("parity", 2))}
  m = Model(spec, {"image": tok}, heads_, rngs=nnx.Rngs(0))
  for t in heads_:  # non-zero heads, so the outputs say something
    k = m.heads[t].outputs["label"].kernel
    k[...] = jax.random.normal(jax.random.key(len(t)), k.shape)
  batch = {"image": jax.random.normal(jax.random.key(1), (3, 16, 16, 1))}
  x = m.encode_modality("image", batch)
  for t in heads_:
    (alone,) = m(t, batch)
    (shared,) = m.predict_head(t, [x], tok.cls_index)
    # the same ops in the same order on the same inputs: equal up to XLA's fusion choices
    np.testing.assert_allclose(shared["label"], alone["label"], atol=1e-6)
  assert sorted(k for k in nnx.to_pure_dict(nnx.state(m, nnx.Param))["task_blocks"]) == [
      "digits", "parity"]


def test_a_fixed_sincos_position_table_is_no_parameter_and_2d_is_big_vision_sincos2d():
  from mmvit import convert
  from mmvit.models.tokenizers import sincos_table
  t = tokenizer("image", (32, 32, 1), (8, 8), posemb="sincos")
  params = nnx.to_pure_dict(nnx.state(t, nnx.Param))
  assert sorted(params) == ["bias", "cls", "kernel"]
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  tokens = t(x)
  patches = patchify(x, (8, 8)) @ params["kernel"].reshape(-1, 16) + params["bias"]
  # 16-term float32 dot products of O(1) values: rounding ~1e-7
  np.testing.assert_allclose(tokens[:, 1:], patches + sincos_table((4, 4), 16), atol=1e-6)
  # big_vision's posemb_sincos_2d, written out: y, x = mgrid; [sin x, cos x, sin y, cos y]
  q = 16 // 4
  omega = 1.0 / 10_000 ** (np.arange(q) / (q - 1))
  y, xx = np.mgrid[:4, :4]
  ax, ay = xx.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
  want = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)[None]
  # both computed in float64; the table is then rounded to float32 (values <= 1: 6e-8)
  np.testing.assert_allclose(sincos_table((4, 4), 16), want, atol=1e-7)
  np.testing.assert_array_equal(convert.sincos_2d(4, 4, 16), sincos_table((4, 4), 16))
  assert sincos_table((2, 4, 4), 24).shape == (1, 32, 24)  # tubelets: three axes of 4 each
  with pytest.raises(ValueError, match="divisible by 6"):
    sincos_table((2, 4, 4), 16)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_the_class_token_last_computes_what_the_class_token_first_does(pool):
  """Attention is permutation-equivariant and the positions live in the patch embeddings, so
  where the class token sits (the seed allows the first or the last element) changes nothing:
  the same parameters give the same logits, and the tokenizer puts it at the end."""
  from mmvit.models.model import Model, ModelSpec
  spec = ModelSpec(width=16, depth=2, num_heads=2, mlp_dim=32, pool=pool)
  head = {"t": (("image",), heads.HeadSpec("multiclass", ("label",), (10,)), None)}
  x = {"image": jax.random.normal(jax.random.key(1), (3, 16, 16, 1))}
  outs = []
  for last in (False, True):
    tok = TokenizerSpec("image", "image", (16, 16, 1), (4, 4), cls_last=last)
    m = Model(spec, {"image": tok}, head, rngs=nnx.Rngs(0))
    k = m.heads["t"].outputs["label"].kernel
    k[...] = jax.random.normal(jax.random.key(2), k.shape)
    m.tokenizers["image"].cls[...] = jax.random.normal(jax.random.key(3), (1, 1, 16))
    if last:
      np.testing.assert_array_equal(m.tokenizers["image"](x["image"])[:, -1],
                                    jnp.broadcast_to(m.tokenizers["image"].cls[...][0], (3, 16)))
    outs.append(m("t", x)[0]["label"])
  # the softmax sums run over the tokens in another order: float32 rounding on logits of
  # magnitude ~5 (unit-normal head kernels over 16 features) is ~1e-6
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
