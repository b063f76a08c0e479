"""Parameter helpers: every parameter carries logical axis names (see mmvit/sharding.py)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = Sequence[str | None]


def param(rngs: nnx.Rngs, init, shape, axes: Axes, dtype=jnp.float32) -> nnx.Param:
  """A parameter with its logical axis names stored as metadata `logical_axes`.

  We keep our own metadata key instead of flax's `sharding` so that creating a model never
  shards eagerly: placement is decided once, by the rule list, when the trainer builds state.
  """
  assert len(axes) == len(shape), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


def dense_init():
  return nnx.initializers.xavier_uniform()


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


class LayerNorm(nnx.Module):
  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",))
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",))

  def __call__(self, x):
    return layer_norm(x, self.scale[...], self.bias[...])


class Dense(nnx.Module):
  def __init__(self, din: int, dout: int, axes: Axes, *, rngs: nnx.Rngs, kernel_init=None,
               bias_init=nnx.initializers.zeros):
    self.kernel = param(rngs, kernel_init or dense_init(), (din, dout), axes)
    self.bias = param(rngs, bias_init, (dout,), (axes[-1],))

  def __call__(self, x):
    return x @ self.kernel[...] + self.bias[...]


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def drop_path(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Stochastic depth: drops a residual branch per example, scaling survivors by 1/(1-p)."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)
