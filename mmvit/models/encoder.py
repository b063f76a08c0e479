"""The pre-LN transformer block and the shared layer stack.

Parameter layout follows big_vision's ViT (query/key/value kernels (D, heads, head_dim), MLP
`Dense_0`/`Dense_1`) so reference checkpoints map onto it by name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mmvit.models.layers import Dense, LayerNorm, dense_init, drop_path, dropout, param
from mmvit.sharding import constrain

# Activations by logical name (mmvit/sharding.py maps them to mesh axes under the run's rules).
TOKENS = ("batch", "tokens", "embed")
HIDDEN = ("batch", "tokens", "mlp")
PER_HEAD = ("batch", "tokens", "heads", "kv")


ATTENTION_KERNELS = ("einsum", "xla", "cudnn")
# Rematerialisation per block: which activations the backward pass keeps rather than recomputes.
REMAT_POLICIES = {
    "none": None,   # keep everything (no jax.checkpoint)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep the block's input only
    # every matmul with no batch dimension (the q/k/v, out and MLP projections); recompute
    # attention logits, softmax and element-wise ops
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # the named projections only (checkpoint_name below): q, k, v and the MLP's hidden layer
    "qkv_mlp": jax.checkpoint_policies.save_only_these_names("qkv", "mlp"),
}


class Attention(nnx.Module):
  """Multi-head attention. `kernel`: 'einsum' (explicit logits, the reference), or
  jax.nn.dot_product_attention with implementation 'xla' or 'cudnn' (fused on GPU). Logits
  and softmax in float32 whatever the compute dtype; with attention dropout in training the
  einsum path runs (the fused kernels take no dropout)."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, kernel: str = "einsum"):
    if width % num_heads:
      raise ValueError(f"model.width={width} is not divisible by model.num_heads={num_heads}")
    self.dtype, self.kernel = jnp.dtype(dtype), kernel
    hd = width // num_heads
    init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    for name in ("query", "key", "value"):
      setattr(self, name, nnx.Dict(
          kernel=param(rngs, init, (width, num_heads, hd), ("embed", "heads", "kv"),
                       param_dtype),
          bias=param(rngs, nnx.initializers.zeros, (num_heads, hd), ("heads", "kv"),
                     param_dtype)))
    out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    self.out = nnx.Dict(
        kernel=param(rngs, out_init, (num_heads, hd, width), ("heads", "kv", "embed"),
                     param_dtype),
        bias=param(rngs, nnx.initializers.zeros, (width,), ("embed",), param_dtype))

  def __call__(self, x: jax.Array, kv: jax.Array | None = None, dropout_rate=0.0, key=None):
    dt = self.dtype
    kv = x if kv is None else kv

    def proj(p, t):
      y = jnp.einsum("bnd,dhk->bnhk", t.astype(dt), p["kernel"][...].astype(dt))
      return constrain(checkpoint_name(y + p["bias"][...].astype(dt), "qkv"), PER_HEAD)
    q, k, v = proj(self.query, x), proj(self.key, kv), proj(self.value, kv)
    if self.kernel == "einsum" or (dropout_rate and key is not None):
      logits = jnp.einsum("bqhk,bnhk->bhqn", q, k).astype(jnp.float32)
      weights = jax.nn.softmax(logits / jnp.sqrt(jnp.float32(q.shape[-1])), axis=-1)
      weights = dropout(weights, dropout_rate, key).astype(dt)
      out = jnp.einsum("bhqn,bnhk->bqhk", weights, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.kernel)
    out = constrain(out, PER_HEAD)
    return (jnp.einsum("bqhk,hkd->bqd", out, self.out["kernel"][...].astype(dt))
            + self.out["bias"][...].astype(dt))


class Block(nnx.Module):
  """x + droppath(MHSA(LN(x))); x + droppath(MLP(LN(x)))."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32, attention: str = "einsum"):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.LayerNorm_0 = LayerNorm(width, rngs=rngs, **kw)
    self.MultiHeadDotProductAttention_0 = Attention(width, num_heads, rngs=rngs,
                                                    kernel=attention, **kw)
    self.LayerNorm_1 = LayerNorm(width, rngs=rngs, **kw)
    bias_init = nnx.initializers.normal(1e-6)
    self.MlpBlock_0 = nnx.Dict(
        Dense_0=Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, bias_init=bias_init, **kw),
        Dense_1=Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, bias_init=bias_init, **kw))

  def __call__(self, x: jax.Array, *, dropout_rate: float = 0.0, attention_dropout: float = 0.0,
               drop_path_rate: float = 0.0, key: jax.Array | None = None,
               n_query: int | None = None) -> jax.Array:
    """`n_query` (fusion): only the first n_query tokens are updated; all are attended to."""
    keys = [None] * 5 if key is None else list(jax.random.split(key, 5))
    y = self.LayerNorm_0(x)
    q = y if n_query is None else y[:, :n_query]
    xq = x if n_query is None else x[:, :n_query]
    y = self.MultiHeadDotProductAttention_0(q, y, attention_dropout, keys[0])
    y = dropout(y, dropout_rate, keys[1])
    x = constrain(xq + drop_path(y, drop_path_rate, keys[2]).astype(xq.dtype), TOKENS)
    y = self.LayerNorm_1(x)
    mlp = self.MlpBlock_0
    y = constrain(jax.nn.gelu(checkpoint_name(mlp["Dense_0"](y), "mlp")), HIDDEN)
    y = dropout(y, dropout_rate, keys[3])
    y = mlp["Dense_1"](y)
    y = dropout(y, dropout_rate, keys[3] if keys[3] is None else jax.random.fold_in(keys[3], 1))
    return constrain(x + drop_path(y, drop_path_rate, keys[4]).astype(x.dtype), TOKENS)


def depth_rates(rate: float, depth: int) -> list[float]:
  """Stochastic depth grows linearly with depth, from 0 at the first block to `rate` at the
  last (as in Scenic's ViViT/MBT)."""
  return [rate * i / max(depth - 1, 1) for i in range(depth)]


class Stack(nnx.Module):
  """A sequence of blocks (adapters, the shared encoder, per-stream encoders). It is run by
  fusion.encode, which also handles a single stream. `remat`: a REMAT_POLICIES name, applied
  to each block.

  Two layouts of the same parameters (`LAYOUTS`): 'loop' keeps one Block per layer
  (`encoderblock_0`, `encoderblock_1`, ...), run by a Python loop that unrolls every layer
  into the compiled step; 'scan' keeps one Block whose parameters carry a leading layer axis
  (`encoderblock`, as big_vision's scan layout), run by `lax.scan`, so a step compiles one
  layer's body whatever the depth. `to_scan`/`to_loop` convert parameter trees exactly."""

  def __init__(self, depth: int, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               final_norm: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               attention: str = "einsum", remat: str = "none", scan: bool = False):
    self.depth, self.remat, self.scan = depth, remat, bool(scan and depth)
    make = functools.partial(Block, width, num_heads, mlp_dim, dtype=dtype,
                             param_dtype=param_dtype, attention=attention)
    if self.scan:
      @nnx.split_rngs(splits=depth)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stacked(rngs):
        return make(rngs=rngs)
      self.encoderblock = stacked(rngs)
      for _, v in nnx.iter_graph(self.encoderblock):
        if isinstance(v, nnx.Param):
          v.set_metadata("logical_axes", ("layers",) + tuple(v.get_metadata()["logical_axes"]))
    else:
      for i in range(depth):
        setattr(self, f"encoderblock_{i}", make(rngs=rngs))
    self.encoder_norm = (LayerNorm(width, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                         if final_norm else None)

  def block(self, i: int) -> Block:
    """Block i (scan layout: a Block holding the slices of layer i)."""
    if not self.scan:
      return getattr(self, f"encoderblock_{i}")
    graphdef, state = nnx.split(self.encoderblock)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

  def run_block(self, i: int, x: jax.Array, key: jax.Array | None, **kw) -> jax.Array:
    """Block i on x, rematerialised under the stack's policy."""
    if self.remat == "none":
      return self.block(i)(x, key=key, **kw)
    return nnx.remat(lambda block, x, key: block(x, key=key, **kw),
                     policy=REMAT_POLICIES[self.remat])(self.block(i), x, key)

  def layer_states(self, lo: int, hi: int):
    """(graphdef of one block, its parameters for layers lo..hi-1 stacked): scan inputs."""
    graphdef, state = nnx.split(self.encoderblock)
    return graphdef, jax.tree.map(lambda a: a[lo:hi], state)


LAYOUTS = ("loop", "scan")


def to_scan(tree):
  """A parameter tree (pure dicts; optimizer moments alike) with every loop stack
  (`encoderblock_<i>`) stacked into the scan layout (`encoderblock`, leading layer axis)."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: to_scan(v) for k, v in tree.items()}
  if "encoderblock_0" in out:
    n = sum(1 for k in out if k.startswith("encoderblock_"))
    blocks = [out.pop(f"encoderblock_{i}") for i in range(n)]
    out["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return out


def to_loop(tree):
  """The inverse of `to_scan`: `encoderblock` (leading layer axis) -> `encoderblock_<i>`."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: to_loop(v) for k, v in tree.items()}
  if isinstance(out.get("encoderblock"), Mapping):
    stacked = out.pop("encoderblock")
    n = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(n):
      out[f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return out


def layout_of(tree) -> str | None:
  """'loop', 'scan' or None (no stack) of a parameter tree."""
  if isinstance(tree, Mapping):
    if "encoderblock_0" in tree:
      return "loop"
    if "encoderblock" in tree:
      return "scan"
    for v in tree.values():
      if (found := layout_of(v)) is not None:
        return found
  return None


__all__ = ["ATTENTION_KERNELS", "LAYOUTS", "REMAT_POLICIES", "Attention", "Block", "Stack",
           "depth_rates", "dense_init", "layout_of", "to_loop", "to_scan"]
