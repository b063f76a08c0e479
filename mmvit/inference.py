"""A trained run as a model for inference: built from its checkpoint's description (no dataset,
no config) with the checkpoint's parameters. predict, surgery and export start here."""

from __future__ import annotations

import dataclasses

from flax import nnx

from mmvit import checkpointing
from mmvit.models.model import Model, average_logits, from_description, join_groups


class InferenceError(ValueError):
  """A workdir, task or modality that cannot be served: one line."""


@dataclasses.dataclass
class Loaded:
  model: Model
  description: dict
  groups: dict       # {group: numpy parameters} as stored
  step: int
  workdir: str

  @property
  def tasks(self) -> dict:
    """name -> task description, in the run's task order."""
    tasks = self.description["tasks"]
    order = [t for t in self.description.get("task_order", ()) if t in tasks]
    return {t: tasks[t] for t in order + sorted(set(tasks) - set(order))}

  def task(self, name: str) -> dict:
    if name not in self.tasks:
      raise InferenceError(f"--task={name!r}: {self.workdir} has tasks "
                           f"{', '.join(self.tasks)}")
    return self.tasks[name]

  def input_shapes(self, task: str) -> dict[str, tuple[int, ...]]:
    """The preprocessed inputs of a task, by batch key, without the batch axis."""
    t = self.task(task)
    toks = self.description["tokenizers"]
    return {toks[m]["input_key"]: tuple(toks[m]["input_shape"]) for m in t["modalities"]}


def load(workdir: str, step: int | None = None) -> Loaded:
  """The model of a run's checkpoint (newest step by default) with its parameters."""
  meta, groups = checkpointing.read_params(workdir, step, "--workdir")
  desc = meta.get("model")
  if not desc:
    raise InferenceError(f"--workdir={workdir}: its checkpoint does not describe its model "
                         "(written before checkpoints did): retrain, or resume it for one step "
                         "to write a checkpoint that does")
  from mmvit import convert  # noqa: PLC0415
  try:
    model = from_description(desc)
    convert.load_into(model, join_groups(groups))
  except (convert.ConversionError, TypeError, KeyError) as e:
    raise InferenceError(f"--workdir={workdir}: its parameters do not fit the model its "
                         f"checkpoint describes ({' '.join(str(e).split())[:200]})") from None
  return Loaded(model, desc, groups, int(meta.get("step", step or 0)), workdir)


def logits_fn(loaded: Loaded, task: str):
  """(params state, {input key: batch}) -> {label: logits}: evaluation mode, the streams'
  logits averaged (as the run's evaluation does)."""
  loaded.task(task)
  graphdef, state = nnx.split(loaded.model, nnx.Param)

  def fn(state, inputs):
    model = nnx.merge(graphdef, state)
    return average_logits(model(task, inputs))
  return fn, state
