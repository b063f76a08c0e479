"""The one model: tokenizers[modality], adapters[modality], a shared encoder,
post_adapters[modality], task_blocks[task], heads[task].

A stream runs: tokenizer -> adapter blocks (its modality's) -> the shared blocks (fused from
L_f for a fusion task) -> post-adapter blocks (its modality's) -> task blocks (its task's) ->
the shared final norm -> the task's head. The PolyViT seed's modality- and task-specific
blocks before and after the shared ones; each stack is optional (depth 0).

Every parameter lives under a top-level collection, and its group (what a training
step may update) is read off its path: `encoder` -> "shared", `tokenizers/<m>` ->
"tokenizers.<m>", `adapters/<m>`, `stream_encoders/<m>`, `post_adapters/<m>` likewise,
`bottlenecks/<t>` -> "bottlenecks.<t>", `task_blocks/<t>` and `heads/<t>` likewise.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmvit.models import fusion as fusion_lib
from mmvit.models.encoder import Stack
from mmvit.models.fusion import Bottleneck, FusionSpec
from mmvit.models.heads import Head, HeadSpec
from mmvit.models.tokenizers import Tokenizer, TokenizerSpec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  adapter_depth: int = 0
  post_adapter_depth: int = 0  # blocks per modality after the shared ones
  task_depth: int = 0          # blocks per task after those, before its head
  pool: str = "token"  # for heads that do not set their own (HeadSpec.pool)
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: str = "float32"        # compute: matmuls and activations
  param_dtype: str = "float32"  # stored parameters (and so the optimizer state)
  attention: str = "einsum"     # encoder.ATTENTION_KERNELS
  remat: str = "none"           # encoder.REMAT_POLICIES, per block
  scan: bool = False            # stacks in the scan layout, run by lax.scan (encoder.Stack)

  @classmethod
  def from_config(cls, m) -> ModelSpec:
    """From a completed config's model (mmvit.config.complete)."""
    return cls(width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
               adapter_depth=m.adapter_depth, post_adapter_depth=m.post_adapter_depth,
               task_depth=m.task_depth, pool=m.pool, dropout=m.dropout,
               attention_dropout=m.attention_dropout, dtype=m.dtype, param_dtype=m.param_dtype,
               attention=m.attention, remat=m.remat, scan=m.scan)

  def stack_kwargs(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention,
                remat=self.remat, scan=self.scan)


class Model(nnx.Module):
  def __init__(self, spec: ModelSpec, tokenizers: dict[str, TokenizerSpec],
               tasks: dict[str, tuple[tuple[str, ...], HeadSpec, FusionSpec | None]], *,
               rngs: nnx.Rngs):
    """`tasks`: name -> (modalities it reads, head spec, fusion spec or None)."""
    self.spec = spec
    self.task_modalities = {t: mods for t, (mods, _, _) in tasks.items()}
    self.fusion = {t: f for t, (_, _, f) in tasks.items() if f is not None}
    dt = dict(dtype=spec.dtype, param_dtype=spec.param_dtype)
    self.tokenizers = nnx.Dict({m: Tokenizer(s, spec.width, rngs=rngs, **dt)
                                for m, s in tokenizers.items()})
    block_args = (spec.width, spec.num_heads, spec.mlp_dim)
    sk = spec.stack_kwargs()
    self.adapters = nnx.Dict({m: Stack(spec.adapter_depth, *block_args, rngs=rngs, **sk)
                              for m in tokenizers} if spec.adapter_depth else {})
    self.encoder = Stack(spec.depth, *block_args, rngs=rngs, final_norm=True, **sk)
    # Separate stream weights (MBT share_encoder=False): the first modality of a fusion task
    # runs the shared encoder, every other modality its own stack of the same depth.
    own = sorted({m for t, f in self.fusion.items() if not f.shared_weights
                  for m in self.task_modalities[t][1:]})
    self.stream_encoders = nnx.Dict({m: Stack(spec.depth, *block_args, rngs=rngs, **sk)
                                     for m in own})
    self.bottlenecks = nnx.Dict({t: Bottleneck(f.tokens, spec.width, rngs=rngs, **dt)
                                 for t, f in self.fusion.items() if f.kind == "bottleneck"})
    self.post_adapters = nnx.Dict({m: Stack(spec.post_adapter_depth, *block_args, rngs=rngs,
                                            **sk)
                                   for m in tokenizers} if spec.post_adapter_depth else {})
    self.task_blocks = nnx.Dict({t: Stack(spec.task_depth, *block_args, rngs=rngs, **sk)
                                 for t in tasks} if spec.task_depth else {})
    # Heads compute in float32 (logits and losses in float32 whatever the compute dtype).
    self.heads = nnx.Dict({t: Head(h, spec.width, rngs=rngs, param_dtype=spec.param_dtype,
                                   pool=h.pool or spec.pool, num_heads=spec.num_heads,
                                   mlp_dim=spec.mlp_dim)
                           for t, (_, h, _) in tasks.items()})

  def __call__(self, task: str, batch: dict[str, jax.Array], *, key: jax.Array | None = None,
               drop_path_rate: float = 0.0, drop_modalities: tuple[str, ...] = ()
               ) -> list[dict[str, jax.Array]]:
    """Logits of `task`, one {label key: (B, classes)} per prediction: one per stream with the
    `token` classifier (training averages their losses, evaluation their logits), one with
    `gap`. `key` None means evaluation mode. `drop_modalities` removes streams (evaluation
    with a missing modality)."""
    spec = self.spec
    fusion_spec = self.fusion.get(task)
    mods = [m for m in self.task_modalities[task] if m not in drop_modalities]
    keys = [None] * 2 if key is None else list(jax.random.split(key, 2))
    kw = dict(dropout_rate=spec.dropout, attention_dropout=spec.attention_dropout,
              drop_path_rate=drop_path_rate)
    streams = []
    for i, m in enumerate(mods):
      tok = self.tokenizers[m]
      x = tok(batch[tok.spec.input_key])
      if spec.adapter_depth:
        x = self._blocks(self.adapters[m], x, keys[0], i, kw)
      streams.append(x)
    first = self.task_modalities[task][0]
    stacks = [self.stream_encoders[m] if m != first and m in self.stream_encoders
              else self.encoder for m in mods]
    z = self.bottlenecks[task](streams[0].shape[0]) if task in self.bottlenecks else None
    outs = fusion_lib.encode(streams, stacks, fusion_spec, z, key=keys[1], **kw)
    if spec.post_adapter_depth:  # keys apart from the ones above: old runs keep their draws
      outs = [self._blocks(self.post_adapters[m], x, keys[0], 1000 + i, kw)
              for i, (m, x) in enumerate(zip(mods, outs))]
    return self.predict_head(task, outs, self.tokenizers[mods[0]].spec.cls_index,
                             key=keys[0], **kw)

  @staticmethod
  def _blocks(stack, x, key, salt: int, kw: dict):
    """One stream through a stack of its own; its key is fold_in(key, salt)."""
    k = None if key is None else jax.random.fold_in(key, salt)
    (x,) = fusion_lib.encode([x], [stack], None, key=k, **kw)
    return x

  def predict_head(self, task: str, outs: list[jax.Array], cls_index: int | None, *,
                   key: jax.Array | None = None, **kw) -> list[dict[str, jax.Array]]:
    """The task's blocks, the final norm and the head on the output streams of the shared
    (and post-adapter) blocks; `cls_index` where the class token is (TokenizerSpec.cls_index;
    None: none); `key` None: evaluation mode."""
    if self.spec.task_depth:
      outs = [self._blocks(self.task_blocks[task], x, key, 2000 + i, kw)
              for i, x in enumerate(outs)]
    outs = [self.encoder.encoder_norm(x).astype(jnp.float32) for x in outs]
    head = self.heads[task]
    if head.pool == "token":
      return [head(x[:, cls_index]) for x in outs]
    patches = {None: slice(None), 0: slice(1, None), -1: slice(None, -1)}[cls_index]
    return [head(head.pooled(jnp.concatenate([x[:, patches] for x in outs], axis=1)))]

  def encode_modality(self, modality: str, batch: dict[str, jax.Array]) -> jax.Array:
    """One modality through its tokenizer, adapters, the shared encoder and its post-adapter
    blocks, evaluation mode: what every unfused task of that modality reads (seed claim 23:
    run it once, then every task's `predict_head`)."""
    tok = self.tokenizers[modality]
    x = tok(batch[tok.spec.input_key])
    if self.spec.adapter_depth:
      x = self._blocks(self.adapters[modality], x, None, 0, {})
    x = self._blocks(self.encoder, x, None, 0, {})
    if self.spec.post_adapter_depth:
      x = self._blocks(self.post_adapters[modality], x, None, 0, {})
    return x


def from_description(desc: dict, *, seed: int = 0, **overrides) -> Model:
  """The model a checkpoint's description (experiment.describe) holds, freshly initialised:
  no dataset needed. `overrides` replace ModelSpec fields (e.g. scan, dtype)."""
  spec = ModelSpec(**{**desc["model"], **overrides})
  toks = {m: TokenizerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
          for m, t in desc["tokenizers"].items()}
  tasks = {}
  for name, t in desc["tasks"].items():
    h = t["head"]
    head = HeadSpec(h["kind"], tuple(h["labels"]), tuple(h["num_classes"]), h.get("pool"),
                    h.get("pre_logits", 0), tuple(h.get("target_mean", ())),
                    tuple(h.get("target_std", ())))
    fusion = FusionSpec(**t["fusion"]) if t.get("fusion") else None
    tasks[name] = (tuple(t["modalities"]), head, fusion)
  return Model(spec, toks, tasks, rngs=nnx.Rngs(params=seed))


def average_logits(preds: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
  return {k: sum(p[k] for p in preds) / len(preds) for k in preds[0]}


def group_of(path: tuple[str, ...]) -> str:
  """The parameter group of a parameter path."""
  if path[0] == "encoder":
    return "shared"
  return f"{path[0]}.{path[1]}"


PER_MODALITY = ("tokenizers", "adapters", "stream_encoders", "post_adapters")
PER_TASK = ("bottlenecks", "task_blocks", "heads")


def task_groups(all_groups, modalities: tuple[str, ...], task: str) -> tuple[str, ...]:
  """The groups a step of `task` reads, hence the only ones it may update."""
  wanted = ["shared"] + [f"{top}.{m}" for top in PER_MODALITY for m in modalities]
  wanted += [f"{top}.{task}" for top in PER_TASK]
  return tuple(g for g in wanted if g in all_groups)


def split_groups(params: dict) -> dict[str, dict]:
  """Model pure-dict params -> {group: subtree}."""
  out = {"shared": params["encoder"]}
  for top in PER_MODALITY + PER_TASK:
    for name, sub in params.get(top, {}).items():
      out[f"{top}.{name}"] = sub
  return out


def join_groups(groups: dict[str, dict]) -> dict:
  params: dict = {"encoder": groups["shared"], **{top: {} for top in PER_MODALITY + PER_TASK}}
  for g, sub in groups.items():
    if g != "shared":
      top, name = g.split(".", 1)
      params[top][name] = sub
  return params


def count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
