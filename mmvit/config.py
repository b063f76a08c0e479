"""Validation at the door: every ConfigError is one line naming the field and what is allowed,
raised before anything is built or compiled. Code behind this door trusts its config."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.machinery
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Mapping

import ml_collections
from absl import flags
from ml_collections.config_flags import tuple_parser

from mmvit.models.fusion import KINDS as FUSION_KINDS, FusionSpec
from mmvit.models.encoder import ATTENTION_KERNELS, REMAT_POLICIES
from mmvit.models.heads import HEAD_KINDS, POOLS
from mmvit.models.tokenizers import GRID_RANK as TOKENIZER_GRID_RANK, KINDS as TOKENIZER_KINDS
from mmvit.models.tokenizers import POSEMBS
from mmvit.schedules import KINDS as SCHEDULE_KINDS
from mmvit.sharding import LOGICAL_NAMES, MESH_AXES, PRESETS

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant", "linear")


class _Required:
  """The default of a field every config must set."""

  def __repr__(self):
    return "REQUIRED"


REQUIRED = _Required()

# Every field a config may hold and its default, in one place: validate() allows exactly these
# names and complete() fills them in, so the code behind the door reads config.x, never
# config.get("x", default). A task's None lr, warmup_steps and lr_schedule take the optimizer's,
# its None stochastic_depth the model's, its None pool the model's (tasks.resolve).
DEFAULTS = dict(
    seed=0,
    data_dir=None,          # $MMVIT_DATA_DIR or ~/.cache/mmvit/data
    total_steps=None,       # or every task's steps/epochs (one of the two; see train)
    schedule=REQUIRED,
    model=REQUIRED,
    tasks=REQUIRED,
    optimizer=REQUIRED,
    eval_every=0,           # steps between validation evaluations (0: only at the end)
    eval_batch_size=256,
    log_every=50,
    checkpoint_every=0,     # 0: only at the end (and on preemption)
    keep_checkpoints=3,
    mesh={},                # axis -> size over data, fsdp, tensor (-1: the rest)
    mesh_dcn={},            # axis -> size across slices (TPU multislice) or processes (GPU nodes)
    sharding={},            # preset and per-name rule overrides (SHARDING_DEFAULTS)
    test_split="test",
    eval_split="validation",
    nonfinite={},
    init_from=None,         # one dict(workdir, step, groups) or a list of them
    cache_data=False,
    data_workers=None,      # grain worker processes per task (None/0: in the main process)
    # Without workers: grain's threads per training iterator. None: none when the loop's
    # input thread (prefetch > 0) makes the batches on a machine of at most 4 cores, where a
    # pool took 1.4-4.2x the CPU per batch, CPU that XLA lacks; else 2.
    data_threads=None,
    # The trailing value_range / normalize ops of a task's pp strings run in the compiled
    # step on the stored integers, so uint8 batches cross processes and reach the device.
    data_affine_on_device=True,
    # Peak TFLOP/s of one device for MFU (None: throughput.PEAK_TFLOPS by device kind, or the
    # CPU's measured float32 matmul throughput).
    peak_tflops=None,
    # Steps whose batches a background thread reads, checks and places on the devices ahead
    # of the loop (0: in the loop, between steps).
    prefetch=2,
    # JAX's persistent compilation cache (None: `jax_cache` beside the data dir; '' turns it
    # off): a rerun, resume or other process with the same steps loads them compiled.
    compilation_cache_dir=None,
    # Which tasks run one compiled train and eval step: 'exact' (default): tasks alike but for
    # their names and lr schedules; 'pad_classes': also classification heads that differ only
    # in their class counts, run padded to the widest with the extra classes masked (values
    # equal to their own programs' up to float rounding, not bit for bit); 'none': a program
    # per task.
    share_steps="exact",
    # Datasets this machine does not hold, by their shapes: {name: dict(features, num_classes,
    # splits, multilabel)}; their tasks read random batches (mmvit.data.synthetic): planning
    # and benchmarking paper-sized configs.
    datasets={},
    # Seconds of training after which the run saves a checkpoint, evaluates and ends, as at
    # its last step (None: no budget). A rerun continues from that checkpoint with a new budget.
    max_wall_time=None,
    # Stop when a validation metric stops improving (EARLY_STOPPING_DEFAULTS; None: off).
    early_stopping=None,
)
SHARE_STEPS = ("none", "exact", "pad_classes")
# metric 'task/name' of the eval_every evaluations (name as logged: top1, mAP, mse...);
# stop after `patience` evaluations without an improvement of more than min_delta; mode
# 'auto' maximises accuracies and mAP and minimises errors (mse, mae).
EARLY_STOPPING_DEFAULTS = dict(metric=REQUIRED, patience=REQUIRED, min_delta=0.0, mode="auto")
EARLY_STOPPING_MODES = ("auto", "max", "min")
MODEL_DEFAULTS = dict(
    width=REQUIRED, depth=REQUIRED, num_heads=REQUIRED, mlp_dim=REQUIRED, dropout=0.0,
    attention_dropout=0.0, stochastic_depth=0.0, pool="token", adapter_depth=0,
    # PolyViT's blocks after the shared ones: per modality, then per task (before its head)
    post_adapter_depth=0, task_depth=0,
    # width of a tanh representation layer before each head's outputs (big_vision rep_size;
    # 0: none); a task's None pre_logits takes this
    pre_logits=0,
    class_token=True, posemb_includes_cls=False, tokenizers=REQUIRED,
    # position embeddings: 'learn' (a parameter) or 'sincos' (a fixed table, n-D sin-cos; 2D is
    # big_vision's sincos2d); the class token first, or last (class_token_last)
    posemb="learn", class_token_last=False,
    # Precision: compute in `dtype`, store parameters (and the optimizer state) in
    # `param_dtype`; layer-norm statistics, softmax, logits and losses are float32 always.
    dtype="float32", param_dtype="float32",
    # 'einsum' | 'xla' (jax.nn.dot_product_attention) | 'cudnn' (GPU, bfloat16)
    attention="einsum",
    # per-block rematerialisation: 'none' | 'full' | 'dots' | 'qkv_mlp' (models/encoder.py)
    remat="none",
    # blocks stored stacked (leading layer axis) and run by lax.scan: a step compiles one
    # layer's body whatever the depth (for accelerators and deep models; on CPU the loop
    # layout ran faster, docs/performance.md)
    scan=False,
)
DTYPES = ("float32", "bfloat16")
TOKENIZER_DEFAULTS = dict(kind=REQUIRED, patch=REQUIRED, input_key=None)
TASK_DEFAULTS = dict(
    dataset=REQUIRED, modalities=REQUIRED, head="multiclass", labels="label",
    batch_size=REQUIRED, lr=None, lr_mult=1.0, warmup_steps=None, lr_schedule=None,
    loss_weight=1.0, label_smoothing=0.0, stochastic_depth=None, steps=None, epochs=None,
    augment={}, fusion=None, mixup=None, eval_views=1, pool=None, train_split="train", pp=None,
    pre_logits=None,
    # The optimizer's settings for the groups only this task reads (its head, bottleneck
    # tokens, and tokenizer/adapters of a modality no other task reads); None: optimizer's.
    momentum=None, b1=None, b2=None, weight_decay=None,
)
# Task fields that override `optimizer` fields for the task's own groups (optim.group_settings).
TASK_OPTIMIZER_FIELDS = ("momentum", "b1", "b2", "weight_decay")
OPTIMIZER_DEFAULTS = dict(
    name=REQUIRED, lr=REQUIRED, warmup_steps=0, lr_schedule="cosine", weight_decay=0.0,
    momentum=0.9, b1=0.9, b2=0.999, grad_clip_norm=None, nesterov=False,
)
SCHEDULE_DEFAULTS = dict(kind=REQUIRED, ratios=None)
NONFINITE_DEFAULTS = dict(policy="stop", max_skips=0)
MIXUP_DEFAULTS = dict(alpha=0.0, mixmod=False)
# preset: data_parallel, fsdp or fsdp_tensor (sharding.PRESETS); rules: {logical name: mesh
# axes} replacing single rules, e.g. dict(tokens=("tensor",)) for sequence parallelism.
SHARDING_DEFAULTS = dict(preset="fsdp_tensor", rules=None)
# One source of config.init_from (docs/pretrained.md): an mmvit run (`workdir`, `step`) or a
# checkpoint file (`file`: big_vision, vit_jax/AugReg or Scenic .npz); `groups` of this model to
# fill; `group_map` 'this=source' pairs (this model's group pattern = the source's group,
# optionally a layer range: 'adapters.*=shared[0:2]'); `inflate` for 2D patch kernels into 3D
# tubelets; `posemb_grid` the stored position grid where it is not square.
INIT_FROM_DEFAULTS = dict(workdir=None, file=None, step=None, groups=REQUIRED, group_map=None,
                          inflate="average", posemb_grid=None)
FUSION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FusionSpec)}

TOP_LEVEL = set(DEFAULTS)
INIT_FROM_KEYS = set(INIT_FROM_DEFAULTS)
MODEL_KEYS = set(MODEL_DEFAULTS)
TOKENIZER_KEYS = set(TOKENIZER_DEFAULTS)
TASK_KEYS = set(TASK_DEFAULTS)
PP_KEYS = {"train", "eval"}
OPTIMIZER_KEYS = set(OPTIMIZER_DEFAULTS)
SCHEDULE_KEYS = set(SCHEDULE_DEFAULTS)
NONFINITE_KEYS = set(NONFINITE_DEFAULTS)
MIXUP_KEYS = set(MIXUP_DEFAULTS)
SHARDING_KEYS = set(SHARDING_DEFAULTS)
EARLY_STOPPING_KEYS = set(EARLY_STOPPING_DEFAULTS)
SHARDING_PRESETS = tuple(PRESETS)
LOGICAL_AXES = LOGICAL_NAMES
FUSION_KEYS = set(FUSION_DEFAULTS)


def _filled(given, defaults: dict) -> dict:
  out = {k: v for k, v in defaults.items() if v is not REQUIRED}
  out.update({k: v for k, v in dict(given or {}).items()})
  return out


def _check_optimizer_fields(d, where: str, defaults: dict) -> None:
  """weight_decay >= 0; momentum, b1, b2 in [0, 1) (None in a task: the optimizer's)."""
  for f in TASK_OPTIMIZER_FIELDS:
    v = d.get(f, defaults.get(f))
    if v is not None:
      _float(v, f"{where}.{f}", 0.0, None if f == "weight_decay" else 1.0,
             hi_open=f != "weight_decay")


def _check_positions(m) -> None:
  """posemb, class_token_last and the widths a fixed sin-cos table needs."""
  posemb = _choice(m.get("posemb", MODEL_DEFAULTS["posemb"]), "model.posemb", POSEMBS)
  last = m.get("class_token_last", MODEL_DEFAULTS["class_token_last"])
  if not isinstance(last, bool):
    raise ConfigError(f"model.class_token_last={show(last)}: expected True or False")
  cls = m.get("class_token", MODEL_DEFAULTS["class_token"])
  inside = m.get("posemb_includes_cls", MODEL_DEFAULTS["posemb_includes_cls"])
  if last and not cls:
    raise ConfigError("model.class_token_last=True needs model.class_token=True")
  if (last or posemb == "sincos") and inside:
    raise ConfigError(f"model.posemb_includes_cls=True: the class token's position is the first "
                      f"row of a learned table; it does not go with "
                      f"{'class_token_last=True' if last else 'posemb=' + repr(posemb)}")
  if posemb == "sincos":
    for name, t in (m.get("tokenizers") or {}).items():
      r = TOKENIZER_GRID_RANK.get(t.get("kind") if hasattr(t, "get") else None)
      if r and (m.width % (2 * r) or m.width < 4 * r):
        raise ConfigError(f"model.posemb='sincos': model.width={m.width} must be a multiple of "
                          f"{2 * r} (and >= {4 * r}) for tokenizers.{name}, a rank-{r} grid")


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of a validated config with every field at its value or default (DEFAULTS...).
  Nested dicts (model, tokenizers, tasks, optimizer, mixup, fusion...) are filled likewise;
  a field set to None where the default is a dict (nonfinite, mesh, augment) becomes {}."""
  c = config.to_dict()
  out = _filled(c, DEFAULTS)
  for k in ("mesh", "mesh_dcn", "nonfinite", "sharding", "datasets"):
    out[k] = dict(out[k] or {})
  out["nonfinite"] = _filled(out["nonfinite"], NONFINITE_DEFAULTS)
  out["sharding"] = _filled(out["sharding"], SHARDING_DEFAULTS)
  out["sharding"]["rules"] = {k: [v] if isinstance(v, str) else list(v)
                              for k, v in dict(out["sharding"]["rules"] or {}).items()}
  out["model"] = _filled(c["model"], MODEL_DEFAULTS)
  out["model"]["tokenizers"] = {n: _filled(t, TOKENIZER_DEFAULTS)
                                for n, t in c["model"]["tokenizers"].items()}
  out["optimizer"] = _filled(c["optimizer"], OPTIMIZER_DEFAULTS)
  out["early_stopping"] = (_filled(out["early_stopping"], EARLY_STOPPING_DEFAULTS)
                           if out["early_stopping"] else None)
  out["schedule"] = _filled(c["schedule"], SCHEDULE_DEFAULTS)
  tasks = {}
  for name, t in c["tasks"].items():
    t = _filled(t, TASK_DEFAULTS)
    t["augment"] = dict(t["augment"] or {})
    t["mixup"] = _filled(t["mixup"], MIXUP_DEFAULTS) if t["mixup"] else None
    t["fusion"] = _filled(t["fusion"], FUSION_DEFAULTS) if t["fusion"] else None
    t["train_split"] = t["train_split"] or "train"
    tasks[name] = t
  out["tasks"] = tasks
  done = ml_collections.ConfigDict(out)
  done.lock()
  return done


class ConfigError(ValueError):
  """A bad config: the message is one line naming the field and what was expected."""


def show(value) -> str:
  """A value on one line (a ConfigDict's repr spans several)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return " ".join(repr(value).split())


def names(value, field: str) -> tuple[str, ...]:
  """A name or a sequence of names, else a ConfigError naming the field."""
  if isinstance(value, str):
    return (value,)
  if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    return tuple(value)
  raise ConfigError(f"{field}={show(value)}: expected a name or a tuple of names")


def _check_keys(d, allowed: set[str], where: str):
  if not isinstance(d, (Mapping, ml_collections.ConfigDict)):
    raise ConfigError(f"{where}={show(d)}: expected a dict with fields "
                      f"{', '.join(sorted(allowed))}")
  for k in d.keys():
    if k not in allowed:
      raise ConfigError(f"{where}.{k}: unknown field; allowed: {', '.join(sorted(allowed))}")


# The schedule is materialised as one plan entry per step: bound it (4 bytes a step).
MAX_STEPS = 100_000_000


def _int(value, field: str, minimum: int = 1, maximum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
      maximum is not None and value > maximum):
    upper = "" if maximum is None else f" and <= {maximum:_}"
    raise ConfigError(f"{field}={show(value)}: expected an integer >= {minimum}{upper}")
  return value


def _float(value, field: str, lo: float = 0.0, hi: float | None = None,
           hi_open: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"{field}={show(value)}: expected a number")
  bad = value < lo or (hi is not None and (value >= hi if hi_open else value > hi))
  if bad or value != value:
    upper = "" if hi is None else (f" and < {hi}" if hi_open else f" and <= {hi}")
    raise ConfigError(f"{field}={show(value)}: expected a number >= {lo}{upper}")
  return float(value)


def _choice(value, field: str, allowed) -> str:
  if value not in allowed:
    raise ConfigError(f"{field}={show(value)}: expected one of {', '.join(allowed)}")
  return value


def _check_fusion(f, depth: int, where: str) -> None:
  _check_keys(f, FUSION_KEYS, where)
  kind = _choice(f.get("kind", FUSION_DEFAULTS["kind"]), f"{where}.kind", FUSION_KINDS)
  layer = _int(f.get("layer", FUSION_DEFAULTS["layer"]), f"{where}.layer", 0)
  if layer > depth:
    raise ConfigError(f"{where}.layer={layer}: expected 0..model.depth={depth}")
  if kind == "bottleneck":
    _int(f.get("tokens", FUSION_DEFAULTS["tokens"]), f"{where}.tokens", 1)
  if kind == "joint" and not f.get("shared_weights", FUSION_DEFAULTS["shared_weights"]):
    raise ConfigError(f"{where}.kind='joint' concatenates all tokens into one block: it needs "
                      "shared_weights=True")


def init_sources(config) -> list:
  """config.init_from as a list: None, one source dict, or a list/tuple of them."""
  v = config.get("init_from")
  if not v:
    return []
  if isinstance(v, (Mapping, ml_collections.ConfigDict)):
    return [v]
  if isinstance(v, (list, tuple)):
    return list(v)
  raise ConfigError(f"init_from={show(v)}: expected a dict (workdir, step, groups) or a list "
                    "of them")


def as_tuple(v) -> tuple:
  if isinstance(v, str):
    return (v,)
  return tuple(v)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without data. Dataset-dependent checks (missing or
  empty datasets, input sizes against patch sizes) happen in tasks.resolve, also before jit."""
  _check_keys(config, TOP_LEVEL, "config")
  _int(config.get("seed", DEFAULTS["seed"]), "config.seed", 0)
  if not isinstance(config.get("cache_data", DEFAULTS["cache_data"]), bool):
    raise ConfigError(f"config.cache_data={show(config.cache_data)}: expected True or False")
  if not isinstance(config.get("data_affine_on_device", DEFAULTS["data_affine_on_device"]), bool):
    raise ConfigError(f"config.data_affine_on_device={show(config.data_affine_on_device)}: "
                      "expected True or False")
  if config.get("data_workers") is not None:
    _int(config.data_workers, "config.data_workers", 0, 256)
  _int(config.get("prefetch", DEFAULTS["prefetch"]), "config.prefetch", 0, 64)
  if config.get("data_threads") is not None:
    _int(config.data_threads, "config.data_threads", 0, 64)
  peak = config.get("peak_tflops")
  if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float))
                           or not peak > 0):
    raise ConfigError(f"config.peak_tflops={show(peak)}: expected a positive number of "
                      "TFLOP/s per device, or None")
  _choice(config.get("share_steps", DEFAULTS["share_steps"]), "config.share_steps",
          SHARE_STEPS)
  cache = config.get("compilation_cache_dir")
  if cache is not None and not isinstance(cache, str):
    raise ConfigError(f"config.compilation_cache_dir={show(cache)}: expected a folder, '' "
                      "(off) or None (beside the data dir)")
  m = config.model
  _check_keys(m, MODEL_KEYS, "model")
  for f in ("width", "depth", "num_heads", "mlp_dim"):
    _int(m[f], f"model.{f}", 1 if f != "depth" else 0)
  if m.width % m.num_heads:
    raise ConfigError(f"model.width={m.width}: expected a multiple of model.num_heads={m.num_heads}")
  for f in ("adapter_depth", "post_adapter_depth", "task_depth"):
    _int(m.get(f, MODEL_DEFAULTS[f]), f"model.{f}", 0)
  for f in ("dropout", "attention_dropout", "stochastic_depth"):
    _float(m.get(f, 0.0), f"model.{f}", 0.0, 1.0, hi_open=True)
  _choice(m.get("pool", MODEL_DEFAULTS["pool"]), "model.pool", POOLS)
  _int(m.get("pre_logits", MODEL_DEFAULTS["pre_logits"]), "model.pre_logits", 0)
  for f in ("dtype", "param_dtype"):
    _choice(m.get(f, MODEL_DEFAULTS[f]), f"model.{f}", DTYPES)
  _choice(m.get("attention", MODEL_DEFAULTS["attention"]), "model.attention", ATTENTION_KERNELS)
  _choice(m.get("remat", MODEL_DEFAULTS["remat"]), "model.remat", tuple(REMAT_POLICIES))
  if not isinstance(m.get("scan", MODEL_DEFAULTS["scan"]), bool):
    raise ConfigError(f"model.scan={show(m.scan)}: expected True or False")
  _check_positions(m)
  if m.get("attention") == "cudnn" and m.get("dtype", "float32") != "bfloat16":
    raise ConfigError("model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused "
                      "attention takes no float32)")
  if m.get("pool", MODEL_DEFAULTS["pool"]) == "token" and not m.get(
      "class_token", MODEL_DEFAULTS["class_token"]):
    raise ConfigError("model.pool='token' needs model.class_token=True; use pool='gap' without it")
  if not m.tokenizers:
    raise ConfigError("model.tokenizers: expected at least one modality")
  for name, tok in m.tokenizers.items():
    _check_keys(tok, TOKENIZER_KEYS, f"model.tokenizers.{name}")
    _choice(tok.get("kind"), f"model.tokenizers.{name}.kind", tuple(TOKENIZER_KINDS))
    patch = tok.get("patch")
    if not isinstance(patch, (list, tuple)) or not patch or not all(
        isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch):
      raise ConfigError(f"model.tokenizers.{name}.patch={show(patch)}: expected a tuple of positive "
                        "integers")

  o = config.optimizer
  _check_keys(o, OPTIMIZER_KEYS, "optimizer")
  _choice(o.get("name"), "optimizer.name", OPTIMIZERS)
  _float(o.get("lr"), "optimizer.lr", 0.0)
  _int(o.get("warmup_steps", OPTIMIZER_DEFAULTS["warmup_steps"]), "optimizer.warmup_steps", 0)
  _choice(o.get("lr_schedule", OPTIMIZER_DEFAULTS["lr_schedule"]), "optimizer.lr_schedule",
          LR_SCHEDULES)
  _float(o.get("weight_decay", OPTIMIZER_DEFAULTS["weight_decay"]), "optimizer.weight_decay", 0.0)
  _check_optimizer_fields(o, "optimizer", OPTIMIZER_DEFAULTS)
  if o.get("grad_clip_norm") is not None:
    _float(o.grad_clip_norm, "optimizer.grad_clip_norm", 0.0)

  s = config.schedule
  _check_keys(s, SCHEDULE_KEYS, "schedule")
  _choice(s.get("kind"), "schedule.kind", SCHEDULE_KINDS)
  if config.get("total_steps") is not None:
    _int(config.total_steps, "config.total_steps", 1, MAX_STEPS)

  if not config.tasks:
    raise ConfigError("config.tasks: expected at least one task")
  for name, t in config.tasks.items():
    where = f"tasks.{name}"
    _check_keys(t, TASK_KEYS, where)
    if not isinstance(t.get("dataset"), str):
      raise ConfigError(f"{where}.dataset={show(t.get('dataset'))}: expected a dataset name")
    mods = names(t.get("modalities", ()), f"{where}.modalities")
    if not mods:
      raise ConfigError(f"{where}.modalities: expected one or more of "
                        f"{', '.join(m.tokenizers.keys())}")
    for mod in mods:
      if mod not in m.tokenizers:
        raise ConfigError(f"{where}.modalities: unknown modality {show(mod)}; expected one of "
                          f"{', '.join(m.tokenizers.keys())} (model.tokenizers)")
    _choice(t.get("head", TASK_DEFAULTS["head"]), f"{where}.head", HEAD_KINDS)
    labels = names(t.get("labels", TASK_DEFAULTS["labels"]), f"{where}.labels")
    if not labels or (t.get("head", TASK_DEFAULTS["head"]) != "multihead" and len(labels) != 1):
      raise ConfigError(f"{where}.labels={show(labels)}: expected one label key (several only with "
                        "head='multihead')")
    _int(t.get("batch_size"), f"{where}.batch_size", 1)
    if t.get("pool") is not None:
      _choice(t.pool, f"{where}.pool", POOLS)
      if t.pool == "token" and not m.get("class_token", MODEL_DEFAULTS["class_token"]):
        raise ConfigError(f"{where}.pool='token' needs model.class_token=True")
    if t.get("pre_logits") is not None:
      _int(t.pre_logits, f"{where}.pre_logits", 0)
    if t.get("label_smoothing") and t.get("head") in ("multilabel", "regression"):
      raise ConfigError(f"{where}.label_smoothing={show(t.label_smoothing)}: only for softmax "
                        f"heads (multiclass, multihead), not head={t.head!r}")
    for f in ("lr", "lr_mult", "loss_weight", "label_smoothing", "stochastic_depth"):
      if t.get(f) is not None:
        hi = 1.0 if f in ("label_smoothing", "stochastic_depth") else None
        _float(t[f], f"{where}.{f}", 0.0, hi, hi_open=f == "stochastic_depth")
    _check_optimizer_fields(t, where, {})
    if t.get("warmup_steps") is not None:
      _int(t.warmup_steps, f"{where}.warmup_steps", 0)
    if t.get("lr_schedule") is not None:
      _choice(t.lr_schedule, f"{where}.lr_schedule", LR_SCHEDULES)
    if t.get("steps") is not None:
      _int(t.steps, f"{where}.steps", 1, MAX_STEPS)
    if t.get("mixup"):
      _check_keys(t.mixup, MIXUP_KEYS, f"{where}.mixup")
      _float(t.mixup.get("alpha", MIXUP_DEFAULTS["alpha"]), f"{where}.mixup.alpha", 0.0)
    if t.get("eval_views") is not None:
      _int(t.eval_views, f"{where}.eval_views", 1)
    if t.get("pp") is not None:
      _check_pp(t.pp, f"{where}.pp")
    if t.get("train_split") is not None and not (
        isinstance(t.train_split, str) and re.fullmatch(r"train(\[[^\]]*\])?", t.train_split)):
      # Only the train split or a slice of it: training on validation or test would leak.
      raise ConfigError(f"{where}.train_split={show(t.train_split)}: expected 'train' or a "
                        "slice of it such as 'train[:10%]'")
    if t.get("fusion"):
      _check_fusion(t.fusion, m.depth, f"{where}.fusion")
      if len(mods) < 2:
        raise ConfigError(f"{where}.fusion: fusion needs two or more modalities, got {mods}")
    if t.get("epochs") is not None:
      _float(t.epochs, f"{where}.epochs", 0.0)
  weights = [1.0 if config.tasks[t].get("loss_weight") is None else config.tasks[t].loss_weight
             for t in config.tasks]
  if sum(weights) <= 0:
    raise ConfigError("tasks.*.loss_weight: the loss weights sum to 0; expected a positive sum")
  if s.kind == "ratios":
    ratios = s.get("ratios") or {}
    for t in ratios:
      if t not in config.tasks:
        raise ConfigError(f"schedule.ratios.{t}: unknown task; expected one of "
                          f"{', '.join(config.tasks.keys())}")
    for t in config.tasks:
      if t not in ratios:
        raise ConfigError(f"schedule.ratios: missing a weight for task {show(t)}")
      _float(ratios[t], f"schedule.ratios.{t}", 0.0)
    if sum(ratios.values()) <= 0:
      raise ConfigError("schedule.ratios: the weights sum to 0; expected a positive sum")

  mesh = config.get("mesh", DEFAULTS["mesh"]) or {}
  _check_keys(mesh, set(MESH_AXES), "mesh")
  for a, v in mesh.items():
    if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and v != -1):
      raise ConfigError(f"mesh.{a}={show(v)}: expected a positive integer or -1 (all remaining "
                        "devices)")
  dcn = config.get("mesh_dcn", DEFAULTS["mesh_dcn"]) or {}
  _check_keys(dcn, set(MESH_AXES), "mesh_dcn")
  for a, v in dcn.items():
    _int(v, f"mesh_dcn.{a}", 1)
  sh = config.get("sharding") or {}
  _check_keys(sh, SHARDING_KEYS, "sharding")
  _choice(sh.get("preset", SHARDING_DEFAULTS["preset"]), "sharding.preset", SHARDING_PRESETS)
  rules = sh.get("rules") or {}
  if not hasattr(rules, "items"):
    raise ConfigError(f"sharding.rules={show(rules)}: expected a dict of logical name -> mesh "
                      "axes, e.g. dict(tokens=('tensor',))")
  _check_keys(rules, set(LOGICAL_AXES), "sharding.rules")
  for name, axes in rules.items():
    axes = [axes] if isinstance(axes, str) else axes
    if (not isinstance(axes, (list, tuple)) or any(a not in MESH_AXES for a in axes)
        or len(set(axes)) != len(axes)):
      raise ConfigError(f"sharding.rules.{name}={show(rules[name])}: expected distinct mesh "
                        f"axes among {', '.join(MESH_AXES)} (a tuple; () shards nothing)")
  for i, src in enumerate(init_sources(config)):
    where = f"init_from[{i}]"
    _check_keys(src, INIT_FROM_KEYS, where)
    if src.get("file") is not None:
      if src.get("workdir") is not None:
        raise ConfigError(f"{where}: give workdir (an mmvit run) or file (a checkpoint file), "
                          "not both")
      if not isinstance(src.get("file"), str) or not src.get("file"):
        raise ConfigError(f"{where}.file={show(src.get('file'))}: expected the path of a .npz "
                          "checkpoint (big_vision, vit_jax/AugReg or Scenic layout)")
      if src.get("step") is not None:
        raise ConfigError(f"{where}.step: a checkpoint file has no steps (step is for workdir)")
    elif not isinstance(src.get("workdir"), str) or not src.get("workdir"):
      raise ConfigError(f"{where}.workdir={show(src.get('workdir'))}: expected the workdir (or "
                        "checkpoints directory) of an earlier run, or file=<checkpoint .npz>")
    if src.get("step") is not None:
      _int(src.get("step"), f"{where}.step", 0)
    gm = src.get("group_map")
    if gm is not None:
      pairs = gm.split(",") if isinstance(gm, str) else gm
      if hasattr(pairs, "items"):
        pairs = [f"{k}={v}" for k, v in pairs.items()]
      if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, str) for p in pairs):
        raise ConfigError(f"{where}.group_map={show(gm)}: expected 'this=source' pairs, e.g. "
                          "('stream_encoders.*=shared', 'tokenizers.*=tokenizers.image')")
      for p in pairs:
        if not re.fullmatch(r"[A-Za-z0-9_.*?\[\]\-]+=[A-Za-z0-9_.\-]+(\[\d*:\d*\])?", p.strip()):
          raise ConfigError(f"{where}.group_map: {p!r}: expected 'this model's group pattern="
                            "source group', the source group optionally with a layer range, "
                            "e.g. 'adapters.*=shared[0:2]'")
    _choice(src.get("inflate", INIT_FROM_DEFAULTS["inflate"]), f"{where}.inflate",
            ("average", "central", "repeat"))
    pg = src.get("posemb_grid")
    if pg is not None and (not isinstance(pg, (list, tuple)) or not pg or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in pg)):
      raise ConfigError(f"{where}.posemb_grid={show(pg)}: expected the stored grid of patches "
                        "as a tuple of positive integers, e.g. (8, 100)")
    if not names(src.get("groups", ()), f"{where}.groups"):
      raise ConfigError(f"{where}.groups: expected one or more parameter-group patterns, e.g. "
                        "('shared', 'tokenizers.*')")
  nf = config.get("nonfinite") or {}
  _check_keys(nf, NONFINITE_KEYS, "nonfinite")
  _choice(nf.get("policy", NONFINITE_DEFAULTS["policy"]), "nonfinite.policy", ("stop", "skip"))
  _int(nf.get("max_skips", NONFINITE_DEFAULTS["max_skips"]), "nonfinite.max_skips", 0)
  for f in ("eval_every", "log_every", "checkpoint_every"):
    if config.get(f) is not None:
      _int(config[f], f"config.{f}", 0)
  if config.get("keep_checkpoints") is not None:
    _int(config.keep_checkpoints, "config.keep_checkpoints", 1)
  if config.get("max_wall_time") is not None:
    _float(config.max_wall_time, "config.max_wall_time", 0.0)
    if config.max_wall_time <= 0:
      raise ConfigError(f"config.max_wall_time={show(config.max_wall_time)}: expected seconds "
                        "> 0 (None: no budget)")
  if es := config.get("early_stopping"):
    _check_early_stopping(es, config)


def _check_early_stopping(es, config) -> None:
  """The fields; the metric's name is checked against the task's head in tasks.resolve."""
  if not hasattr(es, "items"):
    raise ConfigError(f"config.early_stopping={show(es)}: expected dict(metric='task/top1', "
                      "patience=evaluations) or None")
  _check_keys(es, EARLY_STOPPING_KEYS, "early_stopping")
  metric = es.get("metric")
  task, sep, name = metric.partition("/") if isinstance(metric, str) else ("", "", "")
  if not sep or task not in config.tasks or not name:
    raise ConfigError(f"early_stopping.metric={show(metric)}: expected 'task/metric' with task "
                      f"one of {', '.join(config.tasks.keys())}, e.g. "
                      f"'{next(iter(config.tasks.keys()))}/top1'")
  _int(es.get("patience"), "early_stopping.patience", 1)
  _float(es.get("min_delta", EARLY_STOPPING_DEFAULTS["min_delta"]), "early_stopping.min_delta")
  _choice(es.get("mode", EARLY_STOPPING_DEFAULTS["mode"]), "early_stopping.mode",
          EARLY_STOPPING_MODES)
  if not config.get("eval_every"):
    raise ConfigError("early_stopping: needs config.eval_every > 0 (it reads the validation "
                      "evaluations made every eval_every steps)")


# ---------------------------------------------------------------- the command line's door ----
# The CLI loads the config file and applies --config.<field> overrides here rather than through
# ml_collections' config_flags, which raises its errors (a typo, a missing file, a syntax error)
# as tracebacks while absl parses the flags, and cannot set a field the file leaves out.


def _check_pp(pp, where: str) -> None:
  """Each pp string parses and every op's arguments are valid, before any data is read."""
  from mmvit.data import ops  # noqa: PLC0415  (numpy only)
  if not hasattr(pp, "keys"):
    raise ConfigError(f"{where}={show(pp)}: expected dict(train='decode|...', eval='decode|...')")
  _check_keys(pp, PP_KEYS, where)
  for mode in sorted(PP_KEYS):
    if not isinstance(pp.get(mode), str):
      raise ConfigError(f"{where}.{mode}={show(pp.get(mode))}: expected a pp string of ops "
                        "joined by '|', e.g. 'decode|resize(224)|value_range(-1, 1)'")
    try:
      ops.parse(pp[mode], mode)
    except ops.PPError as e:
      raise ConfigError(f"{where}.{mode}: {e}") from None


def allowed_fields(config, path: tuple[str, ...]) -> set[str] | None:
  """The names a field of `config` at `path` may hold (as validate allows them): documented
  fields, or the config's own tasks and modalities; None where validate does not restrict."""
  fixed = {(): TOP_LEVEL, ("model",): MODEL_KEYS, ("optimizer",): OPTIMIZER_KEYS,
           ("schedule",): SCHEDULE_KEYS, ("mesh",): set(MESH_AXES),
           ("mesh_dcn",): set(MESH_AXES), ("sharding",): SHARDING_KEYS,
           ("sharding", "rules"): set(LOGICAL_AXES),
           ("nonfinite",): NONFINITE_KEYS, ("init_from",): INIT_FROM_KEYS}
  if path in fixed:
    return fixed[path]
  tasks = config.get("tasks") or {}
  if path in (("tasks",), ("schedule", "ratios")):
    return set(tasks)
  if path == ("model", "tokenizers"):
    return set((config.get("model") or {}).get("tokenizers") or {})
  if len(path) == 3 and path[:2] == ("model", "tokenizers"):
    return TOKENIZER_KEYS
  if len(path) < 2 or path[0] != "tasks":
    return None
  if len(path) == 2:
    return TASK_KEYS
  if path[2:] == ("mixup",):
    return MIXUP_KEYS
  if path[2:] == ("pp",):
    return PP_KEYS
  if path[2:] == ("fusion",):
    return FUSION_KEYS
  if path[2] == "augment" and len(path) <= 4:
    from mmvit.data import registry  # noqa: PLC0415  (imports grain: only when asked)
    try:
      source = registry.get((tasks.get(path[1]) or {}).get("dataset"))
    except ValueError:
      return None
    if path[3:] == ("spec_augment",):
      return set(source.spec_augment_keys)
    return None if source.augment_keys is None else set(source.augment_keys)
  return None


def _literal(raw: str):
  """A Python literal, else the string itself (config_flags' rule for untyped fields)."""
  try:
    return ast.literal_eval({"true": "True", "false": "False"}.get(raw, raw))
  except (ValueError, SyntaxError):
    return raw


def _parse(raw: str | None, current, flag: str):
  """`raw` read as the type of the value it replaces, as config_flags reads it."""
  if isinstance(current, bool) or (current is None and raw is None):
    if raw is None:  # --config.<field> alone
      return True
    try:
      return flags.BooleanParser().parse(raw)
    except ValueError:
      raise ConfigError(f"{flag}={raw}: expected true or false") from None
  if raw is None:
    raise ConfigError(f"{flag}: expected a value ({flag}=VALUE)")
  parsers = [(int, flags.IntegerParser(), "an integer"), (float, flags.FloatParser(), "a number"),
             ((tuple, list), tuple_parser.TupleParser(), "a tuple")]
  for types, parser, what in parsers:
    if isinstance(current, types):
      try:
        return parser.parse(raw)
      except ValueError:
        raise ConfigError(f"{flag}={raw}: expected {what}") from None
  if isinstance(current, str):
    return raw
  value = _literal(raw)
  if isinstance(current, (Mapping, ml_collections.ConfigDict)) and not isinstance(value, dict):
    raise ConfigError(f"{flag}={raw}: expected a dict, e.g. \"{flag}={{'key': 1}}\"")
  return value


def override(config: ml_collections.ConfigDict, path: str, raw: str | None,
             negated: bool = False) -> None:
  """Applies --config.<path>=<raw> (`negated`: --noconfig.<path>). A documented field that the
  file does not set is added; any other missing name is a ConfigError naming the nearest
  valid one."""
  flag = f"--config.{path}"
  keys = path.split(".")
  if not all(keys):
    raise ConfigError(f"{flag}: expected --config.<field>[.<field>...]=VALUE")
  node, where = config, "config"
  for i, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"{flag}: {where}={show(node)} has no fields")
    if key not in node:
      allowed = allowed_fields(config, tuple(keys[:i]))
      if allowed is not None and key not in allowed:
        valid = sorted(allowed | set(node.keys()))
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"it has {', '.join(valid) or 'none'}"
        raise ConfigError(f"{flag}: no field {key!r} in {where} ({hint})")
      if i < len(keys) - 1:
        node[key] = ml_collections.ConfigDict()
    if i < len(keys) - 1:
      node, where = node[key], f"{where}.{key}"
  key = keys[-1]
  current = node.get(key)
  if negated:
    if not isinstance(current, bool) and current is not None:
      raise ConfigError(f"--noconfig.{path}: config.{path}={show(current)} is not a boolean")
    value = False
  else:
    value = _parse(raw, current, flag)
  try:
    node[key] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{flag}={raw}: {' '.join(str(e).split())}") from None


def _where(exc: BaseException, directory: str) -> str:
  """file:line of the innermost frame of `exc` in the config's directory."""
  frames = [f for f in traceback.extract_tb(exc.__traceback__)
            if os.path.abspath(f.filename).startswith(directory + os.sep)]
  return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


def load(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """The config of `--config=<file>[:<arg>]`: <file>'s get_config(<arg>) with `overrides`
  ((path, raw value or None, negated) each) applied, then locked (a later typo in code cannot
  add a field). Every failure is a one-line ConfigError naming the flag, file or line."""
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={path}: " + ("not a file" if os.path.exists(path) else
                                              "no such file"))
  directory = os.path.dirname(os.path.abspath(path))
  name = "mmvit_config_file"
  try:
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # as an import would (dataclasses look their module up)
    loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{e.filename}:{e.lineno}: SyntaxError: {e.msg}") from None
  except Exception as e:  # noqa: BLE001  (any error in the file is the file's)
    raise ConfigError(f"{_where(e, directory)}{type(e).__name__}: "
                      f"{' '.join(str(e).split())}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"--config={path}: defines no get_config()")
  try:
    config = get_config(arg) if colon else get_config()
  except ValueError as e:  # a bad argument, by the convention of configs/
    raise ConfigError(f"--config={spec}: {' '.join(str(e).split())}") from None
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"--config={spec}: {_where(e, directory)}{type(e).__name__}: "
                      f"{' '.join(str(e).split())}") from None
  if isinstance(config, Mapping):
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config={spec}: get_config() returned {show(config)}, expected a "
                      "ConfigDict")
  with config.unlocked():
    for field, raw, negated in overrides:
      override(config, field, raw, negated)
  config.lock()
  return config
