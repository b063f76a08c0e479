"""Tasks, resolved once from the config and the datasets. Everything downstream takes Tasks."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from mmvit import data as data_lib
from mmvit import config as config_lib
from mmvit.config import ConfigError, as_tuple
from mmvit.models.fusion import FusionSpec
from mmvit.models.heads import HeadSpec
from mmvit.models.tokenizers import KINDS as TOKENIZER_RANK, TokenizerSpec, full_patch

DEFAULT_INPUT_KEY = {
    "image": "image", "tubelet": "video", "frames": "video", "temporal_slices": "video",
    "spectrogram": "spectrogram", "waveform": "waveform",
}


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  index: int
  dataset: str
  modalities: tuple[str, ...]
  head: HeadSpec
  batch_size: int
  lr: float
  warmup_steps: int
  lr_schedule: str
  loss_weight: float
  label_smoothing: float
  stochastic_depth: float
  num_train: int  # examples in train_split
  train_split: str  # 'train' or a slice of it, e.g. 'train[:10%]' (a low-data task)
  steps: int | None  # U_j when known from the config (steps or epochs)
  augment: tuple = ()  # sorted (key, value) pairs
  fusion: FusionSpec | None = None
  input_keys: tuple[str, ...] = ()  # the batch keys its modalities read, in modality order
  mixup_alpha: float = 0.0   # Beta(alpha, alpha) mixing of inputs and targets; 0 = off
  mixmod: bool = False       # one mixing weight per modality (targets use their mean)
  eval_views: int = 1        # multi-view test: logits averaged over this many temporal crops
  pp: tuple = ()             # sorted (mode, pp string) pairs: a non-digits source's preprocessing
  # (mode, tuple of data.ops.Affine) pairs: the pp strings' trailing value_range / normalize
  # ops, which the pipelines leave out and the steps apply (config.data_affine_on_device).
  affines: tuple = ()
  label_names: tuple = ()    # (label key, class names) pairs where the dataset names its classes
  media: tuple = ()          # sorted (option, value) pairs: how the dataset decoded its files

  def data_kwargs(self) -> dict:
    """What the data functions take beside the dataset name (pp only where a task has one)."""
    out = {"pp": dict(self.pp)} if self.pp else {}
    if self.affines:
      out["device_affine"] = True
    return out

  def affine(self, mode: str) -> tuple:
    """The affines the step applies to a batch of `mode` ('train' or 'eval')."""
    return dict(self.affines).get(mode, ())


def tokenizer_specs(config, infos: dict[str, data_lib.DatasetInfo], tasks_cfg
                    ) -> dict[str, TokenizerSpec]:
  """One spec per modality; every task that reads a modality must give it the same shape.
  `infos`: task name -> its dataset's info (after the task's pp)."""
  m = config.model
  specs: dict[str, TokenizerSpec] = {}
  for name, tok in m.tokenizers.items():
    key = tok.input_key or DEFAULT_INPUT_KEY[tok.kind]
    shapes = {}
    for tname, t in tasks_cfg.items():
      if name in as_tuple(t.modalities):
        feats = infos[tname].features
        if key not in feats:
          raise ConfigError(f"tasks.{tname}: dataset {t.dataset!r} has no input {key!r} for "
                            f"modality {name!r}; it has {', '.join(sorted(feats))}")
        shapes[tname] = tuple(feats[key][0])
    if not shapes:
      continue  # a tokenizer no task reads is not built
    if len(set(shapes.values())) > 1:
      raise ConfigError(f"model.tokenizers.{name}: tasks give it different input shapes {shapes}")
    shape = next(iter(shapes.values()))
    if len(shape) != TOKENIZER_RANK[tok.kind]:
      raise ConfigError(f"model.tokenizers.{name}.kind={tok.kind!r}: expects inputs of rank "
                        f"{TOKENIZER_RANK[tok.kind]}, but {key!r} has shape {shape}")
    patch = full_patch(tok.kind, shape, tuple(tok.patch))
    grid_dims = shape if tok.kind == "waveform" else shape[:-1]
    if len(patch) != len(grid_dims) or any(d % p for d, p in zip(grid_dims, patch)):
      raise ConfigError(f"model.tokenizers.{name}.patch={tuple(tok.patch)}: input {key!r} of "
                        f"shape {shape} is not divisible into patches {patch}")
    specs[name] = TokenizerSpec(
        kind=tok.kind, input_key=key, input_shape=shape, patch=patch,
        class_token=bool(m.class_token), posemb_includes_cls=bool(m.posemb_includes_cls),
        posemb=m.posemb, cls_last=bool(m.class_token_last))
  return specs


def resolve(config: ml_collections.ConfigDict, data=data_lib
            ) -> tuple[list[Task], dict[str, TokenizerSpec]]:
  """Reads dataset metadata (building missing datasets) and returns Tasks and tokenizer specs
  of a completed config (config.complete).
  Raises ConfigError for datasets that are missing, empty or lack the named labels, DataError
  for a split that cannot be read. `data` is mmvit.data or a stand-in with the same functions
  (tests)."""
  data_dir = config.data_dir
  on_device = bool(config.data_affine_on_device) and hasattr(data, "device_affines")

  def info_fn(name, pp):
    data.ensure_built(name, data_dir)
    extra = {"pp": pp, "device_affine": on_device} if pp else {}
    return data.dataset_info(name, data_dir, **extra)
  o = config.optimizer
  by_task: dict[str, data_lib.DatasetInfo] = {}
  cache: dict = {}
  for tname, t in config.tasks.items():
    pp = dict(t.pp or {})
    key = (t.dataset, tuple(sorted(pp.items())))
    if key not in cache:
      try:
        cache[key] = info_fn(t.dataset, pp)
      except data_lib.DataError as e:
        raise ConfigError(f"tasks.{tname}.dataset={t.dataset!r}: {e}") from None
    by_task[tname] = cache[key]
    n = by_task[tname].splits.get("train", 0)
    if n <= 0:
      raise ConfigError(f"tasks.{tname}.dataset={t.dataset!r}: the train split is empty")
  # Every split the run will read opens and yields a record, before anything is built: a
  # damaged test split would otherwise fail only at the evaluation after all of training.
  splits = {"train": "train", "eval_split": config.eval_split, "test_split": config.test_split}
  checked = set()
  for tname, t in config.tasks.items():
    for field, split in splits.items():
      if not isinstance(split, str) or split not in by_task[tname].splits:
        raise ConfigError(f"config.{field}={config_lib.show(split)}: dataset {t.dataset!r} "
                          f"(tasks.{tname}) has splits {', '.join(by_task[tname].splits)}")
      if (t.dataset, split) not in checked:
        data.check_split(t.dataset, split, data_dir)
        checked.add((t.dataset, split))
  specs = tokenizer_specs(config, by_task, config.tasks)

  tasks = []
  for i, (tname, t) in enumerate(config.tasks.items()):
    info = by_task[tname]
    kind = t.head
    labels = as_tuple(t.labels)
    for k in labels:
      if k not in info.num_classes:
        raise ConfigError(f"tasks.{tname}.labels: dataset {t.dataset!r} has no label {k!r}; it "
                          f"has {', '.join(sorted(info.num_classes))}")
      targets = getattr(info, "targets", {})
      if (kind == "regression") != (k in targets):
        raise ConfigError(
            f"tasks.{tname}.head={kind!r}: label {k!r} of {t.dataset!r} is " + (
                "a class label; a regression head reads a numeric target (a build's --targets)"
                if kind == "regression" else
                "a numeric target; it needs head='regression'"))
    stats = getattr(info, "targets", {}).get(labels[0], {}) if kind == "regression" else {}
    train_split = t.train_split
    n_train = info.splits["train"]
    if train_split != "train":
      try:
        n_train = data.num_examples(t.dataset, train_split, data_dir)
      except data_lib.DataError as e:
        raise ConfigError(f"tasks.{tname}.train_split: {e}") from None
    if t.batch_size > n_train:
      raise ConfigError(f"tasks.{tname}.batch_size={t.batch_size}: larger than the train split "
                        f"of {t.dataset!r} ({n_train} examples)")
    views = int(t.eval_views or 1)
    if views > 1 and hasattr(data, "max_views"):
      most = data.max_views(t.dataset, **({"pp": dict(t.pp)} if t.pp else {}))
      if views > most:
        raise ConfigError(f"tasks.{tname}.eval_views={views}: dataset {t.dataset!r} " + (
            f"has at most {most} views" if most > 1 else
            "has no time beyond the model's window (a pp with sample_frames or crop_audio "
            "takes views of longer clips)"))
    affines = ()
    if on_device and t.pp:
      try:
        affines = tuple(sorted(data.device_affines(t.dataset, data_dir, dict(t.pp)).items()))
      except data_lib.DataError as e:
        raise ConfigError(f"tasks.{tname}.pp: {e}") from None
    steps = t.steps
    if steps is None and t.epochs is not None:
      raw = t.epochs * n_train / t.batch_size
      if raw > config_lib.MAX_STEPS:
        raise ConfigError(f"tasks.{tname}.epochs={t.epochs}: gives {raw:.3g} steps, more than "
                          f"{config_lib.MAX_STEPS:_}")
      steps = max(1, math.ceil(raw))
    inherit = lambda value, default: default if value is None else value
    tasks.append(Task(
        name=tname, index=i, dataset=t.dataset, modalities=as_tuple(t.modalities),
        head=HeadSpec(kind, labels, tuple(info.num_classes[k] for k in labels),
                      pool=t.pool,
                      pre_logits=int(inherit(t.pre_logits, config.model.pre_logits)),
                      target_mean=tuple(float(v) for v in stats.get("mean", ())),
                      target_std=tuple(float(v) for v in stats.get("std", ()))),
        batch_size=int(t.batch_size),
        lr=float(inherit(t.lr, o.lr)) * float(inherit(t.lr_mult, 1.0)),
        warmup_steps=int(inherit(t.warmup_steps, o.warmup_steps)),
        lr_schedule=inherit(t.lr_schedule, o.lr_schedule),
        loss_weight=float(inherit(t.loss_weight, 1.0)),
        label_smoothing=float(inherit(t.label_smoothing, 0.0)),
        stochastic_depth=float(inherit(t.stochastic_depth, config.model.stochastic_depth)),
        num_train=n_train, train_split=train_split, steps=steps,
        augment=tuple(sorted(t.augment.items())),
        fusion=FusionSpec(**t.fusion) if t.fusion else None,
        input_keys=tuple(specs[m].input_key for m in as_tuple(t.modalities)),
        mixup_alpha=float(t.mixup.alpha) if t.mixup else 0.0,
        mixmod=bool(t.mixup.mixmod) if t.mixup else False,
        eval_views=views,
        pp=tuple(sorted((t.pp or {}).items())), affines=affines,
        label_names=tuple((k, tuple(info.label_names[k])) for k in labels
                          if k in getattr(info, "label_names", {})),
        media=tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                           for k, v in getattr(info, "media", {}).items()))))
  return tasks, specs
