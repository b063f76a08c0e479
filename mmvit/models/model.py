"""The one model: tokenizers[modality], adapters[modality], a shared encoder, heads[task].

Every parameter lives under one of four top-level collections, and its group (what a training
step may update) is read off its path: `encoder` -> "shared", `tokenizers/<m>` ->
"tokenizers.<m>", `adapters/<m>` -> "adapters.<m>", `heads/<t>` -> "heads.<t>".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmvit.models.encoder import Stack
from mmvit.models.heads import Head, HeadSpec, pool
from mmvit.models.tokenizers import Tokenizer, TokenizerSpec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  adapter_depth: int = 0
  pool: str = "token"
  dropout: float = 0.0
  attention_dropout: float = 0.0

  @classmethod
  def from_config(cls, m) -> ModelSpec:
    return cls(width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
               adapter_depth=m.get("adapter_depth", 0), pool=m.get("pool", "token"),
               dropout=m.get("dropout", 0.0), attention_dropout=m.get("attention_dropout", 0.0))


class Model(nnx.Module):
  def __init__(self, spec: ModelSpec, tokenizers: dict[str, TokenizerSpec],
               heads: dict[str, tuple[tuple[str, ...], HeadSpec]], *, rngs: nnx.Rngs):
    """`heads`: task name -> (modalities it reads, its head spec)."""
    self.spec = spec
    self.task_modalities = {t: mods for t, (mods, _) in heads.items()}
    self.tokenizers = nnx.Dict({m: Tokenizer(s, spec.width, rngs=rngs)
                                for m, s in tokenizers.items()})
    block_args = (spec.width, spec.num_heads, spec.mlp_dim)
    self.adapters = nnx.Dict({m: Stack(spec.adapter_depth, *block_args, rngs=rngs)
                              for m in tokenizers} if spec.adapter_depth else {})
    self.encoder = Stack(spec.depth, *block_args, rngs=rngs, final_norm=True)
    self.heads = nnx.Dict({t: Head(h, spec.width, rngs=rngs) for t, (_, h) in heads.items()})

  def __call__(self, task: str, batch: dict[str, jax.Array], *, key: jax.Array | None = None,
               drop_path_rate: float = 0.0) -> dict[str, jax.Array]:
    """Logits of `task` as {label key: (B, classes)}. `key` None means evaluation mode."""
    (modality,) = self.task_modalities[task]
    spec = self.spec
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
    tok = self.tokenizers[modality]
    x = tok(batch[tok.spec.input_key])
    kw = dict(dropout_rate=spec.dropout, attention_dropout=spec.attention_dropout)
    if spec.adapter_depth:
      x = self.adapters[modality](x, drop_path_rate=drop_path_rate, key=keys[0], **kw)
    x = self.encoder(x, drop_path_rate=drop_path_rate, key=keys[1], **kw)
    return self.heads[task](pool(x, spec.pool, tok.spec.class_token))


def group_of(path: tuple[str, ...]) -> str:
  """The parameter group of a parameter path."""
  if path[0] == "encoder":
    return "shared"
  return f"{path[0]}.{path[1]}"


def task_groups(model_modalities: dict[str, tuple[str, ...]], task: str, adapters: bool
                ) -> tuple[str, ...]:
  """The groups a step of `task` reads, hence the only ones it may update."""
  mods = model_modalities[task]
  groups = ["shared"] + [f"tokenizers.{m}" for m in mods]
  if adapters:
    groups += [f"adapters.{m}" for m in mods]
  return tuple(groups + [f"heads.{task}"])


def split_groups(params: dict) -> dict[str, dict]:
  """Model pure-dict params -> {group: subtree}."""
  out = {"shared": params["encoder"]}
  for top in ("tokenizers", "adapters", "heads"):
    for name, sub in params.get(top, {}).items():
      out[f"{top}.{name}"] = sub
  return out


def join_groups(groups: dict[str, dict]) -> dict:
  params: dict = {"encoder": groups["shared"], "tokenizers": {}, "adapters": {}, "heads": {}}
  for g, sub in groups.items():
    if g != "shared":
      top, name = g.split(".", 1)
      params[top][name] = sub
  return params


def count(tree) -> int:
  return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))
