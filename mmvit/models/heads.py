"""Pooling and task heads, with their losses.

kinds:
  multiclass  softmax cross-entropy (optional label smoothing); metrics top-1 / top-5.
  multilabel  sigmoid binary cross-entropy over a multi-hot target; metric mAP.
  multihead   one softmax head per label set (e.g. verb + noun); the losses are averaged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmvit.models.layers import Dense

HEAD_KINDS = ("multiclass", "multilabel", "multihead")
POOLS = ("token", "gap")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  kind: str
  labels: tuple[str, ...]       # label keys in the batch, one per output
  num_classes: tuple[int, ...]  # classes per label key
  pool: str | None = None       # "token" or "gap"; None: the model's (ModelSpec.pool)


class Head(nnx.Module):
  def __init__(self, spec: HeadSpec, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.spec = spec
    # Zero-initialised, as in big_vision: a new head starts from uniform predictions.
    self.outputs = nnx.Dict({
        k: Dense(width, c, ("embed", "classes"), rngs=rngs, kernel_init=nnx.initializers.zeros,
                 param_dtype=param_dtype)
        for k, c in zip(spec.labels, spec.num_classes)})

  def __call__(self, pooled: jax.Array) -> dict[str, jax.Array]:
    return {k: self.outputs[k](pooled) for k in self.spec.labels}


def loss(spec: HeadSpec, logits: dict[str, jax.Array], batch: dict, label_smoothing: float = 0.0
         ) -> jax.Array:
  """Per-example loss (B,)."""
  per_head = []
  for k, c in zip(spec.labels, spec.num_classes):
    z = logits[k].astype(jnp.float32)
    if spec.kind == "multilabel":
      target = batch[k].astype(jnp.float32)  # multi-hot (B, C)
      per_head.append(optax.sigmoid_binary_cross_entropy(z, target).mean(-1))
    else:
      target = jax.nn.one_hot(batch[k], c)
      if label_smoothing:
        target = optax.smooth_labels(target, label_smoothing)
      per_head.append(optax.softmax_cross_entropy(z, target))
  return sum(per_head) / len(per_head)
