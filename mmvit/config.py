"""Validation at the door: every ConfigError is one line naming the field and what is allowed,
raised before anything is built or compiled. Code behind this door trusts its config."""

from __future__ import annotations

import re
from collections.abc import Mapping

import ml_collections

from mmvit.models.heads import HEAD_KINDS, POOLS
from mmvit.models.tokenizers import KINDS as TOKENIZER_KINDS
from mmvit.schedules import KINDS as SCHEDULE_KINDS

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant", "linear")

TOP_LEVEL = {
    "seed", "data_dir", "total_steps", "schedule", "model", "tasks", "optimizer", "eval_every",
    "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "mesh", "test_split",
    "eval_split", "augment", "nonfinite", "init_from", "cache_data",
}
INIT_FROM_KEYS = {"workdir", "step", "groups"}
MODEL_KEYS = {
    "width", "depth", "num_heads", "mlp_dim", "dropout", "attention_dropout", "stochastic_depth",
    "pool", "adapter_depth", "class_token", "posemb_includes_cls", "tokenizers",
}
TOKENIZER_KEYS = {"kind", "patch", "input_key"}
TASK_KEYS = {
    "dataset", "modalities", "head", "labels", "batch_size", "lr", "lr_mult", "warmup_steps",
    "lr_schedule", "loss_weight", "label_smoothing", "stochastic_depth", "steps", "epochs",
    "augment", "fusion", "mixup", "eval_views", "pool", "train_split",
}
OPTIMIZER_KEYS = {
    "name", "lr", "warmup_steps", "lr_schedule", "weight_decay", "momentum", "b1", "b2",
    "grad_clip_norm", "nesterov",
}
SCHEDULE_KEYS = {"kind", "ratios"}
MESH_AXES = ("data", "fsdp", "tensor")


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
  _int(config.get("seed", 0), "config.seed", 0)
  if not isinstance(config.get("cache_data", False), bool):
    raise ConfigError(f"config.cache_data={show(config.cache_data)}: expected True or False")
  m = config.model
  _check_keys(m, MODEL_KEYS, "model")
  for f in ("width", "depth", "num_heads", "mlp_dim"):
    _int(m[f], f"model.{f}", 1 if f != "depth" else 0)
  if m.width % m.num_heads:
    raise ConfigError(f"model.width={m.width}: expected a multiple of model.num_heads={m.num_heads}")
  _int(m.get("adapter_depth", 0), "model.adapter_depth", 0)
  for f in ("dropout", "attention_dropout", "stochastic_depth"):
    _float(m.get(f, 0.0), f"model.{f}", 0.0, 1.0, hi_open=True)
  _choice(m.get("pool", "token"), "model.pool", POOLS)
  if m.get("pool", "token") == "token" and not m.get("class_token", True):
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
  _int(o.get("warmup_steps", 0), "optimizer.warmup_steps", 0)
  _choice(o.get("lr_schedule", "cosine"), "optimizer.lr_schedule", LR_SCHEDULES)
  _float(o.get("weight_decay", 0.0), "optimizer.weight_decay", 0.0)
  _float(o.get("momentum", 0.9), "optimizer.momentum", 0.0, 1.0, hi_open=True)
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
    _choice(t.get("head", "multiclass"), f"{where}.head", HEAD_KINDS)
    labels = names(t.get("labels", "label"), f"{where}.labels")
    if not labels or (t.get("head", "multiclass") != "multihead" and len(labels) != 1):
      raise ConfigError(f"{where}.labels={show(labels)}: expected one label key (several only with "
                        "head='multihead')")
    _int(t.get("batch_size"), f"{where}.batch_size", 1)
    if t.get("pool") is not None:
      _choice(t.pool, f"{where}.pool", POOLS)
      if t.pool == "token" and not m.get("class_token", True):
        raise ConfigError(f"{where}.pool='token' needs model.class_token=True")
    for f in ("lr", "lr_mult", "loss_weight", "label_smoothing", "stochastic_depth"):
      if t.get(f) is not None:
        hi = 1.0 if f in ("label_smoothing", "stochastic_depth") else None
        _float(t[f], f"{where}.{f}", 0.0, hi, hi_open=f == "stochastic_depth")
    if t.get("warmup_steps") is not None:
      _int(t.warmup_steps, f"{where}.warmup_steps", 0)
    if t.get("lr_schedule") is not None:
      _choice(t.lr_schedule, f"{where}.lr_schedule", LR_SCHEDULES)
    if t.get("steps") is not None:
      _int(t.steps, f"{where}.steps", 1, MAX_STEPS)
    if t.get("mixup"):
      _check_keys(t.mixup, {"alpha", "mixmod"}, f"{where}.mixup")
      _float(t.mixup.get("alpha", 0.0), f"{where}.mixup.alpha", 0.0)
    if t.get("eval_views") is not None:
      _int(t.eval_views, f"{where}.eval_views", 1)
    if t.get("train_split") is not None and not (
        isinstance(t.train_split, str) and re.fullmatch(r"train(\[[^\]]*\])?", t.train_split)):
      # Only the train split or a slice of it: training on validation or test would leak.
      raise ConfigError(f"{where}.train_split={show(t.train_split)}: expected 'train' or a "
                        "slice of it such as 'train[:10%]'")
    if t.get("fusion"):
      from mmvit.models.fusion import validate_fusion  # noqa: PLC0415
      validate_fusion(t.fusion, m.depth, f"{where}.fusion")
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

  mesh = config.get("mesh", {}) or {}
  _check_keys(mesh, set(MESH_AXES), "mesh")
  for a, v in mesh.items():
    if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and v != -1):
      raise ConfigError(f"mesh.{a}={show(v)}: expected a positive integer or -1 (all remaining "
                        "devices)")
  for i, src in enumerate(init_sources(config)):
    where = f"init_from[{i}]"
    _check_keys(src, INIT_FROM_KEYS, where)
    if not isinstance(src.get("workdir"), str) or not src.get("workdir"):
      raise ConfigError(f"{where}.workdir={show(src.get('workdir'))}: expected the workdir (or "
                        "checkpoints directory) of an earlier run")
    if src.get("step") is not None:
      _int(src.get("step"), f"{where}.step", 0)
    if not names(src.get("groups", ()), f"{where}.groups"):
      raise ConfigError(f"{where}.groups: expected one or more parameter-group patterns, e.g. "
                        "('shared', 'tokenizers.*')")
  nf = config.get("nonfinite") or {}
  _check_keys(nf, {"policy", "max_skips"}, "nonfinite")
  _choice(nf.get("policy", "stop"), "nonfinite.policy", ("stop", "skip"))
  _int(nf.get("max_skips", 0), "nonfinite.max_skips", 0)
  for f in ("eval_every", "log_every", "checkpoint_every"):
    if config.get(f) is not None:
      _int(config[f], f"config.{f}", 0)
  if config.get("keep_checkpoints") is not None:
    _int(config.keep_checkpoints, "config.keep_checkpoints", 1)
