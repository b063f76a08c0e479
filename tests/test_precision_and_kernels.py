"""Issue 13's switches change how a step is computed, never what it computes: attention
kernels and rematerialisation give the reference outputs and gradients; bfloat16 runs the
matmuls in bfloat16 while parameters, logits and losses stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvit import config as config_lib
from mmvit.models import fusion
from mmvit.models.encoder import REMAT_POLICIES
from mmvit.models.heads import HeadSpec, loss as head_loss
from mmvit.models.model import Model, ModelSpec, average_logits
from mmvit.models.tokenizers import TokenizerSpec
from tests.tiny import tiny_config

TOKS = {
    "video": TokenizerSpec("tubelet", "video", (4, 16, 16, 1), (2, 8, 8)),
    "audio": TokenizerSpec("spectrogram", "spectrogram", (16, 16, 1), (8, 8)),
}
HEAD = HeadSpec("multiclass", ("label",), (5,))
FUSIONS = {"bottleneck": fusion.FusionSpec("bottleneck", 1, 4, True),
           "full_pairwise": fusion.FusionSpec("full_pairwise", 1, 4, False),
           "joint": fusion.FusionSpec("joint", 2, 4, True)}


def model(kind="bottleneck", **spec_kw):
  spec = ModelSpec(width=32, depth=3, num_heads=4, mlp_dim=64, **spec_kw)
  tasks = {"av": (("video", "audio"), HEAD, FUSIONS[kind]),
           "video": (("video",), HEAD, None)}
  m = Model(spec, TOKS, tasks, rngs=nnx.Rngs(0))
  # Heads start at zero (as in big_vision), which passes the encoder no gradient: comparisons
  # of gradients would check only the heads. Trained-like heads make every gradient count.
  for t, head in m.heads.items():
    k = head.outputs["label"].kernel
    k[...] = 0.02 * jax.random.normal(jax.random.key(len(t)), k.shape)
  return m


def batch():
  k1, k2 = jax.random.split(jax.random.key(3))
  return {"video": jax.random.normal(k1, (4, 4, 16, 16, 1)),
          "spectrogram": jax.random.normal(k2, (4, 16, 16, 1)),
          "label": jnp.array([0, 1, 2, 3])}


def loss_and_grads(m, task, key=None, rate=0.0):
  graphdef, params = nnx.split(m)
  b = batch()

  def f(p):
    preds = nnx.merge(graphdef, p)(task, b, key=key, drop_path_rate=rate)
    return head_loss(HEAD, average_logits(preds), b).mean()
  return jax.value_and_grad(f)(params)


# Scan against loop and one attention kernel against another sum in other orders: the worst
# relative gradient difference measured here was 1.2e-6 (about half float32's spacing at the
# largest gradient); 4e-6 leaves room for another machine's rounding.
ROUNDING = 4e-6


def max_diff(a, b):
  """The largest difference of two trees, relative to the largest magnitude in `a` (at least 1):
  gradients reach ~25 here, where float32's spacing is 2e-6, and two computations that sum in
  another order differ by a few of those."""
  scale = max(1.0, max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a)))
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b))) / scale


@pytest.mark.parametrize("kind", list(FUSIONS))
def test_the_xla_attention_kernel_gives_the_einsum_outputs_and_gradients(kind):
  """jax.nn.dot_product_attention (implementation='xla') against the explicit einsum, in every
  fusion kind (bottleneck and full-pairwise attend over more keys than queries): losses to
  1e-6, gradients to ROUNDING."""
  for task in ("av", "video"):
    (l0, g0), (l1, g1) = (loss_and_grads(model(kind, attention=a), task)
                          for a in ("einsum", "xla"))
    assert abs(float(l0) - float(l1)) <= 1e-6
    assert max_diff(g0, g1) <= ROUNDING


def test_with_attention_dropout_a_training_step_runs_the_einsum_kernel():
  """The fused kernels take no dropout: training with attention_dropout > 0 takes the einsum
  path (same loss and gradients for the same key), evaluation the chosen kernel."""
  key = jax.random.key(7)
  (l0, g0), (l1, g1) = (loss_and_grads(model(attention=a, attention_dropout=0.3), "av", key)
                        for a in ("einsum", "xla"))
  assert float(l0) == float(l1) and max_diff(g0, g1) == 0.0


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_rematerialisation_leaves_outputs_and_gradients_unchanged(policy):
  """Each policy recomputes some activations in the backward pass; stochastic depth's
  per-layer keys are reused, so the gradients are those of the plain step (to ROUNDING)."""
  key = jax.random.key(1)
  (l0, g0), (l1, g1) = (loss_and_grads(model(remat=r), "av", key, rate=0.3)
                        for r in ("none", policy))
  assert abs(float(l0) - float(l1)) <= 1e-6
  assert max_diff(g0, g1) <= ROUNDING


def test_rematerialisation_is_in_the_compiled_backward_pass():
  """'full' remat puts the blocks' forward computation in the backward pass again: the
  gradient's jaxpr holds a checkpoint (remat) per block; 'none' holds none."""
  def count(remat):
    m = model(remat=remat)
    graphdef, params = nnx.split(m)
    b = batch()
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: head_loss(HEAD, average_logits(
        nnx.merge(graphdef, p)("video", b)), b).mean()))(params)
    return str(jaxpr).count("remat") + str(jaxpr).count("checkpoint[")
  assert count("none") == 0
  assert count("full") >= 3  # one per block


def _dots(jaxpr):
  """(operand dtypes, output dtype) of every dot_general in a jaxpr, nested ones included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
    for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
      out += _dots(sub)
    for p in eqn.params.values():
      if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
        out += _dots(p.jaxpr)
      elif hasattr(p, "eqns"):
        out += _dots(p)
  return out


def test_bfloat16_compute_runs_the_encoder_matmuls_in_bfloat16_and_keeps_float32_where_it_counts():
  """model.dtype='bfloat16': every matmul of tokenizers and blocks takes bfloat16 operands;
  parameters (hence the optimizer state) stay float32; the head, its logits and the loss are
  float32."""
  m = model(dtype="bfloat16")
  graphdef, params = nnx.split(m)
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"float32"}
  b = batch()

  def f(p):
    preds = nnx.merge(graphdef, p)("av", b)
    assert all(v.dtype == jnp.float32 for pred in preds for v in pred.values())
    return head_loss(HEAD, average_logits(preds), b).mean()
  closed = jax.make_jaxpr(jax.value_and_grad(f))(params)
  dots = _dots(closed.jaxpr)
  bf16 = [d for d in dots if d[0] == ("bfloat16", "bfloat16")]
  f32 = [d for d in dots if d[0] == ("float32", "float32")]
  assert len(bf16) + len(f32) == len(dots)
  # Forward and backward: the head's matmul and its two gradients are the float32 ones.
  assert len(f32) == 3 * 2 and len(bf16) > 10 * len(f32)  # two streams' head calls
  out_avals = closed.out_avals
  assert out_avals[0].dtype == jnp.float32
  assert {str(a.dtype) for a in out_avals[1:]} == {"float32"}  # gradients of f32 parameters


def test_bfloat16_outputs_stay_close_to_float32():
  (l0, _), (l1, _) = (loss_and_grads(model(dtype=d), "av") for d in ("float32", "bfloat16"))
  assert abs(float(l0) - float(l1)) <= 0.02 * abs(float(l0))


def test_bfloat16_parameters_are_stored_in_bfloat16():
  m = model(param_dtype="bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(m, nnx.Param))} == {"bfloat16"}


@pytest.mark.parametrize("field,value,msg", [
    ("dtype", "float16", "model.dtype='float16': expected one of float32, bfloat16"),
    ("param_dtype", "fp32", "model.param_dtype='fp32': expected one of float32, bfloat16"),
    ("attention", "flash", "model.attention='flash': expected one of einsum, xla, cudnn"),
    ("remat", "some", "model.remat='some': expected one of none, full, dots, qkv_mlp"),
    ("attention", "cudnn", "model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's "
     "fused attention takes no float32)"),
])
def test_precision_kernel_and_remat_are_checked_at_the_door(field, value, msg):
  cfg = tiny_config()
  cfg.model[field] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(cfg)
  assert str(e.value) == msg
