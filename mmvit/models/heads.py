"""Pooling and task heads, with their losses.

pools (over the encoder's output tokens):
  token  the class token of each stream (MBT: one prediction per stream, logits averaged).
  gap    the mean of every patch token of every stream.
  map    multi-head attention pooling (big_vision's MAPHead): a learned probe attends over the
         patch tokens of every stream, then LayerNorm + MLP with a residual.
A head may put a tanh representation layer (`pre_logits`, big_vision's rep_size, vit_jax's
representation_size) between the pooled features and its outputs.

kinds:
  multiclass  softmax cross-entropy (optional label smoothing); metrics top-1 / top-5.
  multilabel  sigmoid binary cross-entropy over a multi-hot target; metric mAP.
  multihead   one softmax head per label set (e.g. verb + noun); the losses are averaged.
  regression  real-valued outputs (a scalar or a vector target), predicted in the target's
              units: the layer's output times the train split's std plus its mean, so the
              squared error it minimises is in units of that std; metrics MSE and MAE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmvit.models.layers import Dense, LayerNorm, param

HEAD_KINDS = ("multiclass", "multilabel", "multihead", "regression")
POOLS = ("token", "gap", "map")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  kind: str
  labels: tuple[str, ...]       # label keys in the batch, one per output
  num_classes: tuple[int, ...]  # classes per label key
  pool: str | None = None       # POOLS; None: the model's (ModelSpec.pool)
  pre_logits: int = 0           # width of a tanh representation layer before the outputs; 0: none
  # regression: the target's train mean and std per output (DatasetInfo.targets)
  target_mean: tuple[float, ...] = ()
  target_std: tuple[float, ...] = ()

  @property
  def class_counts(self) -> dict[str, int]:
    """Label key -> its number of classes."""
    return dict(zip(self.labels, self.num_classes))


class MAPHead(nnx.Module):
  """Multi-head attention pooling, parameter for parameter big_vision's MAPHead: a probe
  (1, 1, D) attends over the tokens, y = LN(z), z + MLP(y), the probe's output returned."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               param_dtype=jnp.float32):
    from mmvit.models.encoder import Attention  # noqa: PLC0415  (encoder imports layers only)
    self.probe = param(rngs, nnx.initializers.xavier_uniform(), (1, 1, width),
                       (None, None, "embed"), param_dtype)
    self.MultiHeadDotProductAttention_0 = Attention(width, num_heads, rngs=rngs,
                                                    param_dtype=param_dtype)
    self.LayerNorm_0 = LayerNorm(width, rngs=rngs, param_dtype=param_dtype)
    self.MlpBlock_0 = nnx.Dict(
        Dense_0=Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, param_dtype=param_dtype),
        Dense_1=Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, param_dtype=param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    z = self.MultiHeadDotProductAttention_0(probe, x)
    mlp = self.MlpBlock_0
    z = z + mlp["Dense_1"](jax.nn.gelu(mlp["Dense_0"](self.LayerNorm_0(z))))
    return z[:, 0]


class Head(nnx.Module):
  """Pooling (for `map`: its own parameters), the optional representation layer and one
  output layer per label key. Computes in float32."""

  def __init__(self, spec: HeadSpec, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
               pool: str = "token", num_heads: int = 1, mlp_dim: int = 0):
    self.spec, self.pool = spec, pool
    if pool == "map":
      self.map = MAPHead(width, num_heads, mlp_dim, rngs=rngs, param_dtype=param_dtype)
    if spec.pre_logits:
      self.pre_logits = Dense(width, spec.pre_logits, ("embed", "mlp"), rngs=rngs,
                              param_dtype=param_dtype)
    # Zero-initialised, as in big_vision: a new head starts from uniform predictions.
    self.outputs = nnx.Dict({
        k: Dense(spec.pre_logits or width, c, ("embed", "classes"), rngs=rngs,
                 kernel_init=nnx.initializers.zeros, param_dtype=param_dtype)
        for k, c in zip(spec.labels, spec.num_classes)})

  def pooled(self, tokens: jax.Array) -> jax.Array:
    """(B, N, D) patch tokens of every stream -> (B, D) for `gap` and `map`."""
    return self.map(tokens) if self.pool == "map" else tokens.mean(axis=1)

  def __call__(self, pooled: jax.Array) -> dict[str, jax.Array]:
    if self.spec.pre_logits:
      pooled = jnp.tanh(self.pre_logits(pooled))
    out = {k: self.outputs[k](pooled) for k in self.spec.labels}
    if self.spec.kind == "regression":  # in the target's units (constants, not parameters)
      std, mean = self.spec.target_std or (1.0,), self.spec.target_mean or (0.0,)
      out = {k: z * jnp.asarray(std, z.dtype) + jnp.asarray(mean, z.dtype)
             for k, z in out.items()}
    return out


# Heads whose outputs may be padded to a wider class axis (config.share_steps='pad_classes'):
# their labels are class indices, shaped (B,) whatever the count. A multi-hot label's shape is
# its class count, so multi-label tasks of other counts would still take programs of their own.
PADDABLE_KINDS = ("multiclass", "multihead")
# The logit of a padded class: exp() of it is 0 in float32, yet sums of a few stay finite
# (logits averaged over streams and views).
MASKED_LOGIT = -1e9


def is_class_axis(path: tuple) -> bool:
  """Whether the last axis of the head parameter at `path` (keys within a head's group) is its
  class axis: the output layers' kernels and biases."""
  return bool(path) and path[0] == "outputs"


def mask_classes(logits: dict[str, jax.Array], classes: dict | None) -> dict[str, jax.Array]:
  """Logits of a head padded to a wider class axis, with the classes past each label's own
  count (`classes`: label -> traced count; None: not padded) set to MASKED_LOGIT: they get
  no probability, no gradient and never win an argmax."""
  if classes is None:
    return logits
  out = dict(logits)
  for k, n in classes.items():
    z = logits[k]
    out[k] = jnp.where(jnp.arange(z.shape[-1]) < n, z, jnp.asarray(MASKED_LOGIT, z.dtype))
  return out


def loss(spec: HeadSpec, logits: dict[str, jax.Array], batch: dict, label_smoothing: float = 0.0,
         classes: dict | None = None) -> jax.Array:
  """Per-example loss (B,). `classes`: each label's real class count where the head is padded
  (mask_classes has masked the logits; PADDABLE_KINDS): label smoothing spreads over those."""
  per_head = []
  for k, c in zip(spec.labels, spec.num_classes):
    z = logits[k].astype(jnp.float32)
    if spec.kind == "regression":  # squared error in units of the target's std
      target = batch[k].astype(jnp.float32).reshape(z.shape)
      std = jnp.asarray(spec.target_std or (1.0,), jnp.float32)
      per_head.append(jnp.square((z - target) / std).mean(-1))
    elif spec.kind == "multilabel":
      target = batch[k].astype(jnp.float32)  # multi-hot (B, C)
      per_head.append(optax.sigmoid_binary_cross_entropy(z, target).mean(-1))
    else:
      target = jax.nn.one_hot(batch[k], c)
      if label_smoothing and classes is None:
        target = optax.smooth_labels(target, label_smoothing)
      elif label_smoothing:  # spread over the real classes only
        n = classes[k]
        valid = (jnp.arange(c) < n).astype(jnp.float32)
        target = target * (1.0 - label_smoothing) + valid * (label_smoothing / n)
      per_head.append(optax.softmax_cross_entropy(z, target))
  return sum(per_head) / len(per_head)
