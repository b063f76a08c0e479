"""The pre-LN transformer block and the shared layer stack.

Parameter layout follows big_vision's ViT (query/key/value kernels (D, heads, head_dim), MLP
`Dense_0`/`Dense_1`) so reference checkpoints map onto it by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmvit.models.layers import Dense, LayerNorm, dense_init, drop_path, dropout, param
from mmvit.sharding import constrain

# Activations by logical name (mmvit/sharding.py maps them to mesh axes under the run's rules).
TOKENS = ("batch", "tokens", "embed")
HIDDEN = ("batch", "tokens", "mlp")
PER_HEAD = ("batch", "tokens", "heads", "kv")


class Attention(nnx.Module):
  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"model.width={width} is not divisible by model.num_heads={num_heads}")
    hd = width // num_heads
    init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    for name in ("query", "key", "value"):
      setattr(self, name, nnx.Dict(
          kernel=param(rngs, init, (width, num_heads, hd), ("embed", "heads", "kv")),
          bias=param(rngs, nnx.initializers.zeros, (num_heads, hd), ("heads", "kv"))))
    out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    self.out = nnx.Dict(
        kernel=param(rngs, out_init, (num_heads, hd, width), ("heads", "kv", "embed")),
        bias=param(rngs, nnx.initializers.zeros, (width,), ("embed",)))

  def __call__(self, x: jax.Array, kv: jax.Array | None = None, dropout_rate=0.0, key=None):
    kv = x if kv is None else kv
    proj = lambda p, t: constrain(
        jnp.einsum("bnd,dhk->bnhk", t, p["kernel"][...]) + p["bias"][...], PER_HEAD)
    q, k, v = proj(self.query, x), proj(self.key, kv), proj(self.value, kv)
    logits = jnp.einsum("bqhk,bnhk->bhqn", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = dropout(weights, dropout_rate, key)
    out = constrain(jnp.einsum("bhqn,bnhk->bqhk", weights, v), PER_HEAD)
    return jnp.einsum("bqhk,hkd->bqd", out, self.out["kernel"][...]) + self.out["bias"][...]


class Block(nnx.Module):
  """x + droppath(MHSA(LN(x))); x + droppath(MLP(LN(x)))."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.LayerNorm_0 = LayerNorm(width, rngs=rngs)
    self.MultiHeadDotProductAttention_0 = Attention(width, num_heads, rngs=rngs)
    self.LayerNorm_1 = LayerNorm(width, rngs=rngs)
    bias_init = nnx.initializers.normal(1e-6)
    self.MlpBlock_0 = nnx.Dict(
        Dense_0=Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, bias_init=bias_init),
        Dense_1=Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, bias_init=bias_init))

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
    x = constrain(xq + drop_path(y, drop_path_rate, keys[2]), TOKENS)
    y = self.LayerNorm_1(x)
    mlp = self.MlpBlock_0
    y = constrain(jax.nn.gelu(mlp["Dense_0"](y)), HIDDEN)
    y = dropout(y, dropout_rate, keys[3])
    y = mlp["Dense_1"](y)
    y = dropout(y, dropout_rate, keys[3] if keys[3] is None else jax.random.fold_in(keys[3], 1))
    return constrain(x + drop_path(y, drop_path_rate, keys[4]), TOKENS)


def depth_rates(rate: float, depth: int) -> list[float]:
  """Stochastic depth grows linearly with depth, from 0 at the first block to `rate` at the
  last (as in Scenic's ViViT/MBT)."""
  return [rate * i / max(depth - 1, 1) for i in range(depth)]


class Stack(nnx.Module):
  """A sequence of blocks (adapters, the shared encoder, per-stream encoders). It is run by
  fusion.encode, which also handles a single stream."""

  def __init__(self, depth: int, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               final_norm: bool = False):
    self.depth = depth
    for i in range(depth):
      setattr(self, f"encoderblock_{i}", Block(width, num_heads, mlp_dim, rngs=rngs))
    self.encoder_norm = LayerNorm(width, rngs=rngs) if final_norm else None

  def block(self, i: int) -> Block:
    return getattr(self, f"encoderblock_{i}")


__all__ = ["Attention", "Block", "Stack", "depth_rates", "dense_init"]
