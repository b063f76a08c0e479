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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmvit.models.encoder import depth_rates
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
  `trace`, if given, receives (bottleneck input, stream outputs) for every layer."""
  depth = stacks[0].depth
  rates = depth_rates(drop_path_rate, depth)
  kind = "late" if spec is None or len(streams) == 1 else spec.kind
  fuse_from = depth if kind == "late" else spec.layer
  xs, z = list(streams), bottleneck
  sizes = [x.shape[1] for x in xs]
  for l in range(depth):
    z_in = z

    def run(i, x, **extra):
      k = None if key is None else jax.random.fold_in(key, l * 64 + i)
      return stacks[i].run_block(l, x, k, drop_path_rate=rates[l], **kw, **extra)

    if l < fuse_from:
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
    if trace is not None:
      trace.append((z_in if l >= fuse_from else None, list(xs)))
  return xs
