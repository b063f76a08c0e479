"""How K token streams meet inside the layer stack (MBT, US20230177384A1).

Layers l < L_f run each stream on its own. From L_f on, by `kind`:
  bottleneck     B shared tokens z. Each stream i runs its block on [x_i; z] and the next z is
                 the mean over streams of their z outputs. Streams exchange information only
                 through z.
  full_pairwise  each stream's tokens attend over all streams' tokens and keep their own.
  joint          all tokens are concatenated and go through one block (shared weights only).
  late           no exchange in the encoder at all (the same as L_f = L); only the per-stream
                 logits are averaged.
With one stream every kind is the plain stack: unimodal is fusion with one stream.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmvit.models.encoder import REMAT_POLICIES, depth_rates
from mmvit.models.layers import param

KINDS = ("bottleneck", "full_pairwise", "joint", "late")


@dataclasses.dataclass(frozen=True)
class FusionSpec:
  kind: str = "late"
  layer: int = 0            # L_f: the first fused layer
  tokens: int = 4           # B, bottleneck only
  shared_weights: bool = True


class Bottleneck(nnx.Module):
  def __init__(self, tokens: int, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.dtype = jnp.dtype(dtype)
    self.tokens = param(rngs, nnx.initializers.normal(0.02), (1, tokens, width),
                        (None, None, "embed"), param_dtype)
    self.posemb = param(rngs, nnx.initializers.normal(0.02), (1, tokens, width),
                        (None, None, "embed"), param_dtype)

  def __call__(self, batch: int) -> jax.Array:
    z = (self.tokens[...] + self.posemb[...]).astype(self.dtype)
    return jnp.broadcast_to(z, (batch,) + z.shape[1:])


def encode(streams: list[jax.Array], stacks: list, spec: FusionSpec | None,
           bottleneck: jax.Array | None = None, *, drop_path_rate: float = 0.0,
           key: jax.Array | None = None, trace: list | None = None, **kw) -> list[jax.Array]:
  """Runs streams[i] through stacks[i] (a Stack; the same object when weights are shared),
  fusing from layer spec.layer on. Returns the streams' outputs (before the final norm).
  `trace`, if given, receives (bottleneck input, stream outputs) for every layer.

  Scan-layout stacks run each segment (before L_f: streams apart; from L_f: fused) as one
  lax.scan over the stacked layers, with the layer index, its stochastic-depth rate and the
  per-layer keys derived inside from the same (key, layer, stream) as the loop: both layouts
  compute the same function."""
  depth = stacks[0].depth
  rates = depth_rates(drop_path_rate, depth)
  kind = "late" if spec is None or len(streams) == 1 else spec.kind
  fuse_from = depth if kind == "late" else spec.layer
  xs, z = list(streams), bottleneck
  sizes = [x.shape[1] for x in xs]
  segments = [(lo, hi, k) for lo, hi, k in ((0, fuse_from, "apart"), (fuse_from, depth, kind))
              if hi > lo]
  if stacks[0].scan and trace is None:
    for lo, hi, k in segments:
      xs, z = _scanned(stacks, lo, hi, k, xs, z, sizes, drop_path_rate, key, kw)
    return xs
  for l in range(depth):
    z_in = z
    blocks = [functools.partial(_loop_block, s, l, kw) for s in stacks]
    xs, z = _layer("apart" if l < fuse_from else kind, blocks, xs, z, sizes, l, rates[l], key)
    if trace is not None:
      trace.append((z_in if l >= fuse_from else None, list(xs)))
  return xs


def _loop_block(stack, l, kw, x, key, rate, **extra):
  return stack.run_block(l, x, key, drop_path_rate=rate, **kw, **extra)


def _layer(kind: str, blocks: list, xs: list, z, sizes: list[int], l, rate, key):
  """One layer over the streams: blocks[i](x, key, rate, **extra) is stream i's block. `l`
  and `rate` may be traced (scan)."""
  def run(i, x, **extra):
    k = None if key is None else jax.random.fold_in(key, l * 64 + i)
    return blocks[i](x, k, rate, **extra)

  if kind in ("apart", "late"):
    xs = [run(i, x) for i, x in enumerate(xs)]
  elif kind == "bottleneck":
    outs = [run(i, jnp.concatenate([x, z], axis=1)) for i, x in enumerate(xs)]
    xs = [o[:, :n] for o, n in zip(outs, sizes)]
    z = jnp.mean(jnp.stack([o[:, n:] for o, n in zip(outs, sizes)]), axis=0)
  elif kind == "full_pairwise":
    # Attention is permutation-invariant over keys: own tokens first, then the others.
    xs = [run(i, jnp.concatenate([x] + [y for j, y in enumerate(xs) if j != i], axis=1),
              n_query=sizes[i]) for i, x in enumerate(xs)]
  else:  # joint
    y = run(0, jnp.concatenate(xs, axis=1))
    xs = list(jnp.split(y, np.cumsum(sizes)[:-1].tolist(), axis=1))
  return xs, z


def _scanned(stacks, lo: int, hi: int, kind: str, xs, z, sizes, drop_path_rate, key, kw):
  """Layers lo..hi-1 of scan-layout stacks as one lax.scan: the carry is (streams,
  bottleneck); the scanned inputs are the layer index and each distinct stack's parameters of
  that layer (one stack when the streams share weights)."""
  distinct = list({id(s): s for s in stacks}.values())
  which = [next(j for j, d in enumerate(distinct) if d is s) for s in stacks]
  parts = [d.layer_states(lo, hi) for d in distinct]
  graphdefs = [g for g, _ in parts]
  remat = stacks[0].remat
  rates = jnp.asarray(depth_rates(drop_path_rate, stacks[0].depth)[lo:hi], jnp.float32)

  def body(carry, inputs):
    xs, z = carry
    l, layer_rate, states = inputs
    mods = [nnx.merge(g, st) for g, st in zip(graphdefs, states)]

    def block(i, x, k, rate, **extra):
      return mods[which[i]](x, key=k, drop_path_rate=rate, **kw, **extra)
    rate = layer_rate if drop_path_rate else 0.0
    blocks = [functools.partial(block, i) for i in range(len(stacks))]
    return _layer(kind, blocks, xs, z, sizes, l, rate, key), None

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
  (xs, z), _ = jax.lax.scan(body, (list(xs), z),
                            (jnp.arange(lo, hi, dtype=jnp.int32), rates,
                             [st for _, st in parts]))
  return list(xs), z
