"""Throughput accounting (issue 13): the analytic model-FLOP count that MFU divides is the
arithmetic XLA compiles, and every run reports examples/s, tokens/s, TFLOP/s and MFU."""

import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mmvit import throughput
from mmvit.models import fusion
from mmvit.models.heads import HeadSpec, loss as head_loss
from mmvit.models.model import Model, ModelSpec, average_logits
from mmvit.models.tokenizers import TokenizerSpec

TOKS = {
    "video": TokenizerSpec("tubelet", "video", (4, 32, 32, 3), (2, 8, 8)),
    "audio": TokenizerSpec("spectrogram", "spectrogram", (64, 32, 1), (8, 8)),
}
HEAD = HeadSpec("multiclass", ("label",), (10,))


@pytest.mark.parametrize("kind,layer", [(None, 0), ("bottleneck", 1), ("full_pairwise", 1),
                                        ("joint", 2), ("late", 0)])
def test_the_analytic_flop_count_is_what_xla_compiles_for_a_training_step(kind, layer):
  """3 x forward matmul FLOPs x batch, against XLA's cost analysis of the compiled
  forward-and-backward step, within 10% (the rest is element-wise work)."""
  spec = ModelSpec(width=128, depth=3, num_heads=4, mlp_dim=512, adapter_depth=1,
                   post_adapter_depth=1, task_depth=1)
  mods = ("video", "audio") if kind else ("video",)
  f = fusion.FusionSpec(kind, layer, 4, True) if kind else None
  model = nnx.eval_shape(lambda: Model(spec, {m: TOKS[m] for m in mods},
                                       {"t": (mods, HEAD, f)}, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model)
  b = 8
  batch = {TOKS[m].input_key: jax.ShapeDtypeStruct((b,) + TOKS[m].input_shape, jnp.float32)
           for m in mods}
  batch["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)

  def loss(p, batch):
    return head_loss(HEAD, average_logits(nnx.merge(graphdef, p)("t", batch)), batch).mean()
  cost = jax.jit(jax.grad(loss)).lower(params, batch).compile().cost_analysis()
  xla = float((cost[0] if isinstance(cost, list) else cost)["flops"])
  task = types.SimpleNamespace(modalities=mods, head=HEAD, fusion=f, batch_size=b)
  work = throughput.task_work(spec, task, TOKS)
  assert abs(work.flops / xla - 1) <= 0.10, (work.flops, xla)
  assert work.examples == b
  assert work.tokens == b * sum(TOKS[m].num_tokens for m in mods)


@pytest.mark.parametrize("kind,peak", [("TPU v4", 275.0), ("TPU v5 lite", 197.0),
                                       ("TPU v5p", 459.0), ("TPU v6 lite", 918.0),
                                       ("NVIDIA A100-SXM4-80GB", 312.0),
                                       ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0)])
def test_accelerator_peaks_come_from_the_device_kind(kind, peak):
  device = types.SimpleNamespace(device_kind=kind, platform="tpu" if "TPU" in kind else "gpu")
  assert throughput.device_peak_tflops(device)[0] == peak


def test_an_unknown_accelerator_has_no_peak_and_says_how_to_give_one():
  device = types.SimpleNamespace(device_kind="Future chip", platform="gpu")
  peak, source = throughput.device_peak_tflops(device)
  assert peak != peak and "config.peak_tflops" in source


def test_the_cpu_peak_is_measured_and_mfu_divides_by_it():
  peak, source = throughput.device_peak_tflops(jax.devices("cpu")[0])
  assert 1e-3 < peak < 100 and source.startswith("measured")
  work = throughput.Work(64, 64 * 65, 2e12)
  r = throughput.summary(work, seconds=4.0, steps=2, devices=2, peak_tflops=0.5)
  assert r["steps_per_s"] == 0.5 and r["examples_per_s"] == 16 and r["tokens_per_s"] == 1040
  assert r["tflops_per_device"] == 0.25 and r["mfu"] == 0.5
