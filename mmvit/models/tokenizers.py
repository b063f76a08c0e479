"""Per-modality tokenizers: input -> (batch, tokens, width), with position embeddings (learned,
or a fixed sin-cos table) and an optional class token (first, or last: the PolyViT seed allows
either end).

One patch embedding covers every grid-shaped input: an image is (H, W, C) cut into (ph, pw)
patches; a video is (T, H, W, C) cut into (pt, ph, pw) tubelets, where the seed's three video
patchings are tubelet shapes: `tubelet` (pt, ph, pw), `frames` (pt, H, W) -- one or more whole
frames per token -- and `temporal_slices` (T, ph, pw) -- a pixel block taken across all frames;
a spectrogram is (time, mel, 1) cut into (pt, pf) patches. A raw waveform (samples,) is cut
into segments of `segment` samples.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmvit.models.layers import param

# kind -> (input rank without batch, description of the patch tuple)
KINDS = {
    "image": 3,            # (H, W, C), patch (ph, pw)
    "tubelet": 4,          # (T, H, W, C), patch (pt, ph, pw)
    "frames": 4,           # (T, H, W, C), patch (pt,) ; spatial = whole frame
    "temporal_slices": 4,  # (T, H, W, C), patch (ph, pw); temporal = all frames
    "spectrogram": 3,      # (time, mel, 1), patch (pt, pf)
    "waveform": 1,         # (samples,), patch (segment,)
}


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  kind: str
  input_key: str
  input_shape: tuple[int, ...]  # without batch
  patch: tuple[int, ...]        # the full patch shape over the input's grid axes
  class_token: bool = True
  posemb_includes_cls: bool = False  # MBT adds posemb after the class token; big_vision before
  posemb: str = "learn"              # POSEMBS: a parameter, or a fixed sin-cos table
  cls_last: bool = False             # the class token after the patches instead of before

  @property
  def cls_index(self) -> int | None:
    """Where the class token sits in the stream's tokens (None: no class token)."""
    return None if not self.class_token else -1 if self.cls_last else 0

  @property
  def grid(self) -> tuple[int, ...]:
    """Number of patches along each grid axis."""
    grid_dims = self.input_shape if self.kind == "waveform" else self.input_shape[:-1]
    return tuple(d // p for d, p in zip(grid_dims, self.patch))

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  @property
  def num_tokens(self) -> int:
    return self.num_patches + int(self.class_token)

  @property
  def patch_dim(self) -> int:
    channels = 1 if self.kind == "waveform" else self.input_shape[-1]
    return math.prod(self.patch) * channels


POSEMBS = ("learn", "sincos")
# kind -> rank of its patch grid (a sin-cos table splits the width over these axes)
GRID_RANK = {"image": 2, "tubelet": 3, "frames": 3, "temporal_slices": 3, "spectrogram": 2,
             "waveform": 1}


@functools.cache
def sincos_table(grid: tuple[int, ...], width: int, temperature: float = 10_000.0
                 ) -> np.ndarray:
  """A fixed sin-cos position table (1, prod(grid), width) over a grid of any rank r: rows in
  row-major order, and for each axis from the last to the first [sin(c w), cos(c w)] over
  width / 2r frequencies w = temperature**-(k / (width/2r - 1)). For 2D this is big_vision's
  `posemb='sincos2d'` table exactly (features [sin x, cos x, sin y, cos y])."""
  r = len(grid)
  q = width // (2 * r)
  if width % (2 * r) or q < 2:
    raise ValueError(f"a sin-cos table over a rank-{r} grid needs a width divisible by {2 * r} "
                     f"and at least {4 * r}, got {width}")
  freq = 1.0 / temperature ** (np.arange(q, dtype=np.float64) / (q - 1))
  coords = np.meshgrid(*[np.arange(g) for g in grid], indexing="ij")
  parts = []
  for c in reversed(coords):
    a = c.reshape(-1, 1) * freq
    parts += [np.sin(a), np.cos(a)]
  return np.concatenate(parts, axis=1)[None].astype(np.float32)


def full_patch(kind: str, input_shape, patch) -> tuple[int, ...]:
  """Expands the configured patch to one size per grid axis of the input."""
  patch = tuple(int(p) for p in patch)
  if kind == "frames":
    return (patch[0],) + tuple(input_shape[1:3])
  if kind == "temporal_slices":
    return (input_shape[0],) + patch
  return patch


def patchify(x: jax.Array, patch: tuple[int, ...]) -> jax.Array:
  """(B, *grid_dims, [C]) -> (B, num_patches, prod(patch) * C), patches in row-major order,
  each flattened as (*patch, C) to match a conv kernel of shape (*patch, C, D)."""
  b = x.shape[0]
  if x.ndim == len(patch) + 1:  # no channel axis (waveform)
    x = x[..., None]
  dims, c = x.shape[1:-1], x.shape[-1]
  grid = [d // p for d, p in zip(dims, patch)]
  shape = [b]
  for g, p in zip(grid, patch):
    shape += [g, p]
  x = x.reshape(shape + [c])
  n = len(patch)
  # (B, g0, p0, g1, p1, ..., C) -> (B, g0, g1, ..., p0, p1, ..., C)
  perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
  x = x.transpose(perm)
  return x.reshape(b, math.prod(grid), math.prod(patch) * c)


class Tokenizer(nnx.Module):
  def __init__(self, spec: TokenizerSpec, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.spec, self.dtype = spec, jnp.dtype(dtype)
    channels = 1 if spec.kind == "waveform" else spec.input_shape[-1]
    kshape = spec.patch + (channels, width)
    # lecun_normal over a (*patch, C, D) kernel: fan-in is prod(patch) * C, as for a conv.
    self.kernel = param(rngs, nnx.initializers.lecun_normal(), kshape,
                        (None,) * (len(kshape) - 1) + ("embed",), param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (width,), ("embed",), param_dtype)
    n_pos = spec.num_patches + int(spec.class_token and spec.posemb_includes_cls)
    if spec.posemb == "learn":
      self.posemb = param(rngs, nnx.initializers.normal(0.02), (1, n_pos, width),
                          (None, None, "embed"), param_dtype)
    # posemb 'sincos': a constant of the step, not a parameter (nothing to train, save or load)
    if spec.class_token:
      self.cls = param(rngs, nnx.initializers.zeros, (1, 1, width), (None, None, "embed"), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    spec = self.spec
    dt = self.dtype
    patches = patchify(x.astype(dt), spec.patch)
    kernel = self.kernel[...].astype(dt)
    tokens = patches @ kernel.reshape(-1, kernel.shape[-1]) + self.bias[...].astype(dt)
    posemb = (self.posemb[...] if spec.posemb == "learn" else
              jnp.asarray(sincos_table(spec.grid, tokens.shape[-1]))).astype(dt)
    if spec.class_token and not spec.posemb_includes_cls:
      tokens = tokens + posemb
    if spec.class_token:
      cls = jnp.broadcast_to(self.cls[...], (tokens.shape[0], 1, tokens.shape[-1]))
      cls = cls.astype(tokens.dtype)
      tokens = jnp.concatenate([tokens, cls] if spec.cls_last else [cls, tokens], axis=1)
    if not spec.class_token or spec.posemb_includes_cls:
      tokens = tokens + posemb
    return tokens
