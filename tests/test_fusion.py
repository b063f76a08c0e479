"""MBT (US20230177384A1): streams meet only through the bottleneck, and only from L_f on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvit import train
from mmvit.config import ConfigError
from mmvit.models import fusion
from mmvit.models.heads import HeadSpec
from mmvit.models.model import Model, ModelSpec, average_logits
from mmvit.models.tokenizers import TokenizerSpec
from tests.fakes import FakeData
from tests.tiny import tiny_config

DEPTH = 4
TOKS = {
    "video": TokenizerSpec("tubelet", "video", (4, 16, 16, 1), (2, 8, 8)),
    "audio": TokenizerSpec("spectrogram", "spectrogram", (16, 16, 1), (8, 8)),
}
HEAD = HeadSpec("multiclass", ("label",), (5,))


def model(kind="bottleneck", layer=2, shared=True, tokens=4, pool="token"):
  spec = ModelSpec(width=32, depth=DEPTH, num_heads=2, mlp_dim=64, pool=pool)
  f = fusion.FusionSpec(kind, layer, tokens, shared)
  return Model(spec, TOKS, {"av": (("video", "audio"), HEAD, f)}, rngs=nnx.Rngs(0))


def inputs(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"video": jax.random.normal(k1, (2, 4, 16, 16, 1)),
          "spectrogram": jax.random.normal(k2, (2, 16, 16, 1))}


def traced(m, batch):
  streams = [m.tokenizers[k](batch[m.tokenizers[k].spec.input_key]) for k in ("video", "audio")]
  stacks = [m.encoder, m.stream_encoders["audio"] if "audio" in m.stream_encoders else m.encoder]
  z = m.bottlenecks["av"](2) if "av" in m.bottlenecks else None
  trace = []
  fusion.encode(streams, stacks, m.fusion["av"], z, trace=trace)
  return streams, trace


@pytest.mark.parametrize("shared", [True, False])
def test_audio_reaches_the_video_stream_only_through_the_bottleneck_and_only_from_lf(shared):
  m = model("bottleneck", layer=2, shared=shared)
  a, b = inputs(0), inputs(1)
  b["video"] = a["video"]  # same video, different audio
  (v0, _), trace_a = traced(m, a)
  _, trace_b = traced(m, b)
  # Blocks 0..L_f-1 run apart. Block L_f (the first fused one) reads the learned bottleneck,
  # which carries no audio yet; its output bottleneck does, so video sees audio from L_f+1 on.
  for l in range(DEPTH):
    va, vb = trace_a[l][1][0], trace_b[l][1][0]
    if l <= 2:
      np.testing.assert_array_equal(va, vb)
    else:
      assert float(jnp.abs(va - vb).max()) > 1e-4
  # ... and only through the bottleneck: re-running the video stream alone, fed at each fused
  # layer the bottleneck recorded in the run with audio b, reproduces the video outputs of b.
  x = v0
  for l in range(DEPTH):
    z = trace_b[l][0]
    if z is None:
      x = m.encoder.block(l)(x)
    else:
      x = m.encoder.block(l)(jnp.concatenate([x, z], axis=1))[:, :v0.shape[1]]
    np.testing.assert_allclose(x, trace_b[l][1][0], atol=1e-5)


def test_full_pairwise_lets_audio_reach_video_directly_from_lf():
  m = model("full_pairwise", layer=1)
  a, b = inputs(0), inputs(1)
  b["video"] = a["video"]
  _, ta = traced(m, a)
  _, tb = traced(m, b)
  np.testing.assert_array_equal(ta[0][1][0], tb[0][1][0])  # block 0 runs apart
  assert float(jnp.abs(ta[1][1][0] - tb[1][1][0]).max()) > 1e-4  # block L_f=1 reads audio


@pytest.mark.parametrize("kind", ["bottleneck", "full_pairwise", "late"])
def test_with_lf_equal_to_depth_the_fused_output_is_the_average_of_separate_streams(kind):
  m = model(kind, layer=DEPTH)
  batch = inputs(3)
  fused = average_logits(m("av", batch))["label"]
  video_only = m("av", batch, drop_modalities=("audio",))
  audio_only = m("av", batch, drop_modalities=("video",))
  separate = (video_only[0]["label"] + audio_only[0]["label"]) / 2
  np.testing.assert_allclose(fused, separate, atol=1e-5)


def test_joint_fusion_is_one_block_over_all_tokens():
  m = model("joint", layer=0)
  batch = inputs(0)
  streams, trace = traced(m, batch)
  x = jnp.concatenate(streams, axis=1)
  for l in range(DEPTH):
    x = m.encoder.block(l)(x)
  np.testing.assert_allclose(jnp.concatenate(trace[-1][1], axis=1), x, atol=1e-5)


@pytest.mark.parametrize("kind,pool", [("bottleneck", "token"), ("full_pairwise", "token"),
                                       ("joint", "gap"), ("bottleneck", "gap")])
def test_shapes_one_prediction_per_stream_with_token_one_with_gap(kind, pool):
  m = model(kind, layer=1, pool=pool)
  preds = m("av", inputs(0))
  assert len(preds) == (2 if pool == "token" else 1)
  assert all(p["label"].shape == (2, 5) for p in preds)
  assert m.bottlenecks["av"].tokens.shape == (1, 4, 32) if kind == "bottleneck" else True


def test_a_task_may_pool_other_than_the_model():
  # Pooling is the head's: one model, a token-pooled and a gap-pooled task on the same streams.
  spec = ModelSpec(width=32, depth=DEPTH, num_heads=2, mlp_dim=64, pool="token")
  f = fusion.FusionSpec("bottleneck", 1, 4, True)
  gap = HeadSpec("multiclass", ("label",), (5,), pool="gap")
  m = Model(spec, TOKS, {"tok": (("video", "audio"), HEAD, f), "gap": (("video", "audio"), gap, f)},
            rngs=nnx.Rngs(0))
  assert len(m("tok", inputs(0))) == 2 and len(m("gap", inputs(0))) == 1


def test_separate_weights_give_audio_its_own_stack():
  shared, separate = model(shared=True), model(shared=False)
  assert "audio" not in shared.stream_encoders and "audio" in separate.stream_encoders


def fusion_config(**f):
  c = tiny_config()
  c.tasks.av = dict(dataset="digits_video", modalities=("video", "image"), labels="digit",
                    batch_size=8, steps=3, fusion=f)
  return c


@pytest.mark.parametrize("f,match", [
    (dict(kind="cross"), r"tasks.av.fusion.kind='cross': expected one of bottleneck, "
                         r"full_pairwise, joint, late"),
    (dict(kind="bottleneck", layer=7), r"tasks.av.fusion.layer=7: expected 0..model.depth=2"),
    (dict(kind="bottleneck", tokens=0), r"tasks.av.fusion.tokens=0: expected an integer >= 1"),
    (dict(kind="joint", shared_weights=False), r"tasks.av.fusion.kind='joint'"),
    (dict(kind="bottleneck", bottlenecks=4), r"tasks.av.fusion.bottlenecks: unknown field"),
])
def test_fusion_config_names(f, match):
  with pytest.raises(ConfigError, match=match):
    train.build(fusion_config(**f), data=FakeData())


def test_a_fusion_task_co_trains_beside_unimodal_tasks_in_the_same_trainer():
  """One trainer, one shared encoder: the fusion task is a task like any other. Its step
  touches its bottleneck and head plus the shared encoder and its modalities' tokenizers."""
  c = tiny_config("weighted", steps=2)
  c.tasks.av = dict(dataset="fake_av", modalities=("video", "audio"), labels="label",
                    batch_size=8, steps=3, fusion=dict(kind="bottleneck", layer=1, tokens=4),
                    mixup=dict(alpha=0.3, mixmod=True), eval_views=2)
  out = train.run(c, None, data=FakeData())
  assert set(out["test"]) == {"av", "image", "video_digit", "audio"}
  assert set(out["traces"].values()) == {1}
  exp = train.build(c, data=FakeData())
  assert exp.groups["av"] == ("shared", "tokenizers.video", "tokenizers.audio", "bottlenecks.av",
                              "heads.av")
  assert "bottlenecks.av" not in exp.groups["audio"]
  missing = train.evaluate_all(exp, exp.state["params"], "test", tasks=["av"], drop=("audio",))
  single = train.evaluate_all(exp, exp.state["params"], "test", tasks=["av"], views=1)
  assert missing["av"]["num_examples"] == single["av"]["num_examples"] == 64


def test_bottleneck_costs_fewer_flops_than_full_pairwise_at_every_lf_below_l():
  """FIG. 8A: channelling cross-modal information through B tokens is cheaper than full
  pairwise attention, the more so the earlier fusion starts; at L_f = L they coincide."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "scripts", "flops.py")
  spec = importlib.util.spec_from_file_location("flops", path)
  flops = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(flops)
  setting = flops.SETTINGS["demo"]
  depth = setting["model"].depth
  cost = {k: [flops.forward_gflops(setting, fusion.FusionSpec(k, lf, 4)) for lf in range(depth + 1)]
          for k in ("bottleneck", "full_pairwise")}
  assert all(b < f for b, f in zip(cost["bottleneck"][:-1], cost["full_pairwise"][:-1]))
  assert cost["bottleneck"][-1] == pytest.approx(cost["full_pairwise"][-1])
  assert cost["full_pairwise"] == sorted(cost["full_pairwise"], reverse=True)
