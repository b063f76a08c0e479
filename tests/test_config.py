"""Bad configs fail at the door: one line naming the field and what is allowed, before any
model is built or compiled."""

import os

import ml_collections
import pytest

from mmvit import experiment, train
from mmvit.config import ConfigError
from tests.fakes import FakeData
from tests.tiny import tiny_config


def error_of(mutate, data=None):
  c = tiny_config()
  mutate(c)
  with pytest.raises(ConfigError) as e:
    train.build(c, data=data or FakeData())
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_unknown_modality_names_the_task_and_the_known_modalities():
  msg = error_of(lambda c: setattr(c.tasks.image, "modalities", "lidar"))
  assert "tasks.image.modalities" in msg and "'lidar'" in msg and "audio, image, video" in msg


def test_unknown_tokenizer_kind():
  msg = error_of(lambda c: setattr(c.model.tokenizers.video, "kind", "voxels"))
  assert "model.tokenizers.video.kind='voxels'" in msg and "tubelet" in msg


def test_unknown_task_type():
  msg = error_of(lambda c: setattr(c.tasks.audio, "head", "ranking"))
  assert msg == ("tasks.audio.head='ranking': expected one of multiclass, multilabel, multihead, "
                 "regression")


def test_unknown_schedule():
  msg = error_of(lambda c: setattr(c.schedule, "kind", "round_robin"))
  assert "schedule.kind='round_robin'" in msg and "weighted" in msg and "accumulated" in msg


def test_unknown_optimizer():
  msg = error_of(lambda c: setattr(c.optimizer, "name", "lamb"))
  assert "optimizer.name='lamb'" in msg and "adamw, sgd" in msg


def test_cache_data_must_be_a_bool():
  msg = error_of(lambda c: setattr(c, "cache_data", "yes"))
  assert msg == "config.cache_data='yes': expected True or False"


def test_share_steps_is_one_of_its_kinds():
  assert error_of(lambda c: setattr(c, "share_steps", "pad")) == (
      "config.share_steps='pad': expected one of none, exact, pad_classes")


def test_data_affine_on_device_must_be_a_bool():
  msg = error_of(lambda c: setattr(c, "data_affine_on_device", 1))
  assert msg == "config.data_affine_on_device=1: expected True or False"


def test_data_threads_is_checked_and_defaults_to_none_behind_the_input_thread_on_few_cores(
    monkeypatch):
  assert error_of(lambda c: setattr(c, "data_threads", 1.5)) == (
      "config.data_threads=1.5: expected an integer >= 0 and <= 64")
  c = ml_collections.ConfigDict(dict(prefetch=2, data_threads=None))
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  assert experiment.data_threads(c) == 0
  c.prefetch = 0  # the loop itself waits for the batch: a pool makes it ahead
  assert experiment.data_threads(c) == 2
  monkeypatch.setattr(os, "cpu_count", lambda: 96)
  c.prefetch = 2
  assert experiment.data_threads(c) == 2
  c.data_threads = 5
  assert experiment.data_threads(c) == 5


@pytest.mark.parametrize("edit,msg", [
    (lambda c: setattr(c, "sharding", dict(preset="zero3")),
     "sharding.preset='zero3': expected one of data_parallel, fsdp, fsdp_tensor"),
    (lambda c: setattr(c, "sharding", dict(rules=dict(tokens=("model",)))),
     "sharding.rules.tokens=('model',): expected distinct mesh axes among data, fsdp, tensor "
     "(a tuple; () shards nothing)"),
    (lambda c: setattr(c, "mesh_dcn", dict(data=0)), "mesh_dcn.data=0: expected an integer >= 1"),
])
def test_sharding_rules_and_dcn_mesh_are_checked_at_the_door(edit, msg):
  assert error_of(edit) == msg


def test_unknown_task_pool():
  msg = error_of(lambda c: setattr(c.tasks.image, "pool", "max"))
  assert msg == "tasks.image.pool='max': expected one of token, gap, map"


def test_input_size_not_divisible_by_patch_size():
  msg = error_of(lambda c: setattr(c.model.tokenizers.image, "patch", (5, 5)))
  assert "model.tokenizers.image.patch=(5, 5)" in msg and "(32, 32, 1)" in msg


def test_missing_dataset():
  msg = error_of(lambda c: None, data=FakeData(missing=("digits_video",)))
  assert "tasks.video_digit.dataset='digits_video'" in msg


def test_empty_dataset():
  msg = error_of(lambda c: None, data=FakeData(empty=("digits_audio",)))
  assert "tasks.audio.dataset='digits_audio'" in msg and "empty" in msg


def test_per_task_dicts_naming_unknown_tasks():
  def mutate(c):
    c.schedule.kind = "ratios"
    c.schedule.ratios = {"image": 1.0, "video_digit": 1.0, "audio": 1.0, "speech": 2.0}
  assert "schedule.ratios.speech: unknown task" in error_of(mutate)


def test_unknown_field_in_a_task():
  msg = error_of(lambda c: c.tasks.image.update({"learning_rate": 0.1}))
  assert "tasks.image.learning_rate: unknown field" in msg


def test_label_missing_from_dataset():
  msg = error_of(lambda c: setattr(c.tasks.video_digit, "labels", "colour"))
  assert "tasks.video_digit.labels" in msg and "digit, direction" in msg


def test_loss_weights_summing_to_zero():
  def mutate(c):
    for t in c.tasks.values():
      t.loss_weight = 0.0
  assert "loss weights sum to 0" in error_of(mutate)


def test_absurd_step_counts_are_refused_before_the_plan_is_built():
  """Found by fuzzing: steps=10**9 would materialise an 8 GB schedule plan."""
  msg = error_of(lambda c: setattr(c.tasks.image, "steps", 10**9))
  assert "tasks.image.steps=1000000000: expected an integer >= 1 and <= 100_000_000" in msg


def test_a_top_level_field_nothing_reads_is_refused():
  """config.augment was accepted and ignored; augmentations are per task (tasks.<t>.augment)."""
  msg = error_of(lambda c: c.update(augment=dict(max_shift=2)))
  assert msg.startswith("config.augment: unknown field; allowed: cache_data, checkpoint_every")


def test_complete_gives_every_field_its_value_or_its_one_default():
  """Defaults live in config.DEFAULTS & co.; complete() fills every field of every nested dict
  and keeps what the config sets, so the code behind the door never repeats a default."""
  from mmvit import config as config_lib
  c = tiny_config()
  config_lib.validate(c)
  done = config_lib.complete(c)
  assert set(done) == config_lib.TOP_LEVEL
  assert set(done.model) == config_lib.MODEL_KEYS
  assert set(done.optimizer) == config_lib.OPTIMIZER_KEYS
  assert set(done.nonfinite) == config_lib.NONFINITE_KEYS
  for t in done.tasks.values():
    assert set(t) == config_lib.TASK_KEYS
  for tok in done.model.tokenizers.values():
    assert set(tok) == config_lib.TOKENIZER_KEYS
  assert done.log_every == 0 and done.eval_split == "validation" and done.seed == 0
  assert done.optimizer.b2 == 0.999 and done.optimizer.lr == 1e-3
  assert done.tasks.audio.loss_weight == 0.5 and done.tasks.image.loss_weight == 1.0
  assert done.tasks.image.lr is None  # inherits optimizer.lr in tasks.resolve
  assert "augment" not in c and c.tasks.image.get("head") is None  # the input is untouched


def test_a_config_that_spells_out_a_default_is_the_same_run(tmp_path):
  """A workdir's config.json holds the completed config; a config written before a default
  was spelt out, or one that spells it out, is not a config change."""
  import json
  from mmvit import checkpointing, config as config_lib
  c = tiny_config()
  os.makedirs(tmp_path / "checkpoints" / "4")
  (tmp_path / "config.json").write_text(json.dumps(c.to_dict()))  # as an older version wrote
  spelt = tiny_config(eval_split="validation", nonfinite=dict(policy="stop"))
  assert checkpointing.guard_workdir(str(tmp_path), config_lib.complete(spelt)) is False
  with pytest.raises(checkpointing.WorkdirError, match="eval_split was 'validation', now 'test'"):
    checkpointing.guard_workdir(str(tmp_path), config_lib.complete(tiny_config(eval_split="test")))


@pytest.mark.parametrize("edit,msg", [
    (lambda c: setattr(c.tasks.image, "b1", 1.0),
     "tasks.image.b1=1.0: expected a number >= 0.0 and < 1.0"),
    (lambda c: setattr(c.tasks.audio, "weight_decay", -0.1),
     "tasks.audio.weight_decay=-0.1: expected a number >= 0.0"),
    (lambda c: setattr(c.tasks.image, "momentum", "high"),
     "tasks.image.momentum='high': expected a number"),
    (lambda c: c.optimizer.update(b2=1.5), "optimizer.b2=1.5: expected a number >= 0.0 and < 1.0"),
])
def test_per_task_optimizer_settings_are_checked_like_the_optimizer_own(edit, msg):
  assert error_of(edit) == msg


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c.model.update(posemb="rope"), "model.posemb='rope': expected one of learn, sincos"),
    (lambda c: c.model.update(class_token_last=1),
     "model.class_token_last=1: expected True or False"),
    (lambda c: c.model.update(class_token_last=True, class_token=False, pool="gap"),
     "model.class_token_last=True needs model.class_token=True"),
    (lambda c: c.model.update(posemb="sincos", posemb_includes_cls=True),
     "model.posemb_includes_cls=True: the class token's position is the first row of a learned "
     "table; it does not go with posemb='sincos'"),
    (lambda c: c.model.update(posemb="sincos"),  # width 32, tubelets: a rank-3 grid
     "model.posemb='sincos': model.width=32 must be a multiple of 6 (and >= 12) for "
     "tokenizers.video, a rank-3 grid"),
    (lambda c: c.model.update(task_depth=-1), "model.task_depth=-1: expected an integer >= 0"),
])
def test_position_and_block_options_are_checked_at_the_door(edit, msg):
  assert error_of(edit) == msg
