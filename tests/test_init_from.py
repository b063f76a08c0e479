"""Starting from earlier runs (seed: 'initialize the values of the parameters of the shared
self-attention blocks to be equal to trained values of corresponding blocks in a single-task
neural network'): `config.init_from` copies named parameter groups, nothing else."""

import jax
import ml_collections
import numpy as np
import pytest

from mmvit import checkpointing, train
from mmvit.config import ConfigError
from tests.fakes import FakeData
from tests.tiny import tiny_config


def single_task(name, steps=3):
  c = tiny_config(steps=steps)
  c.tasks = ml_collections.ConfigDict({name: c.tasks[name].to_dict()})
  c.tasks[name].steps = steps
  c.schedule = dict(kind="alternating")
  return c


def params_of(summary):
  return jax.tree.map(np.asarray, summary["state"]["params"])


def same(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and len(jax.tree.leaves(a)) > 0 and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
  """Two trained single-task networks, image and audio, each in its own workdir."""
  data = FakeData()
  out = {}
  for name in ("image", "audio"):
    wd = str(tmp_path_factory.mktemp(name))
    out[name] = (wd, params_of(train.run(single_task(name), wd, data=data)))
  return out


def test_cotraining_starts_from_single_task_networks(single_runs, tmp_path):
  """Shared blocks from the audio network (the later source wins), each modality's tokenizer
  and head from its own network; the video task, which no source has, starts fresh."""
  (img_wd, img), (aud_wd, aud) = single_runs["image"], single_runs["audio"]
  c = tiny_config()
  c.init_from = [dict(workdir=img_wd, groups=("shared", "tokenizers.image", "heads.image")),
                 dict(workdir=aud_wd, groups=("shared", "*.audio"))]
  fresh = params_of(train.run(tiny_config(), None, data=FakeData(), stop_at=0))
  start = params_of(train.run(c, str(tmp_path / "co"), data=FakeData(), stop_at=0))
  assert same(start["shared"], aud["shared"]) and not same(start["shared"], img["shared"])
  for g in ("tokenizers.image", "heads.image"):
    assert same(start[g], img[g]), g
  for g in ("tokenizers.audio", "heads.audio"):
    assert same(start[g], aud[g]), g
  for g in ("tokenizers.video", "heads.video_digit"):
    assert same(start[g], fresh[g]), g


def test_a_resumed_run_continues_its_own_parameters_not_the_source(single_runs, tmp_path):
  """Only a fresh run is initialised; a resumed one restores its own checkpoint and still
  reports what it was started from."""
  img_wd, img = single_runs["image"]
  c = single_task("image", steps=4)
  c.init_from = dict(workdir=img_wd, step=3, groups="shared")
  assert same(params_of(train.run(c, None, data=FakeData(), stop_at=0))["shared"], img["shared"])
  wd = str(tmp_path / "ft")
  first = train.run(c, wd, data=FakeData(), stop_at=2)
  again = train.run(c, wd, data=FakeData(), stop_at=2)  # resumes at 2: nothing left to train
  assert same(params_of(again), params_of(first))
  assert not same(params_of(again)["shared"], img["shared"])
  assert again["init_from"] == first["init_from"] != []
  assert train.run(c, wd, data=FakeData())["steps"] == 4


def test_init_from_errors_name_the_field_and_what_was_expected(single_runs, tmp_path):
  img_wd, _ = single_runs["image"]
  c = single_task("image")
  c.init_from = dict(workdir=img_wd, groups="heads.nothing")
  with pytest.raises(ConfigError, match=r"init_from\[0\]\.groups: 'heads.nothing' matches no"):
    train.run(c, None, data=FakeData())
  c.init_from = dict(workdir=str(tmp_path / "missing"), groups="shared")
  with pytest.raises(checkpointing.CheckpointError, match=r"init_from\[0\]\.workdir=.*no checkpoint"):
    train.run(c, None, data=FakeData())
  c.init_from = dict(workdir=img_wd, step=999, groups="shared")
  with pytest.raises(checkpointing.CheckpointError, match=r"init_from\[0\]\.step=999: .* has steps \[3\]"):
    train.run(c, None, data=FakeData())
  wider = single_task("image")
  wider.model.mlp_dim = 96
  wider.init_from = dict(workdir=img_wd, groups="shared")
  with pytest.raises(checkpointing.CheckpointError, match=r"parameter shared/.* has shape"):
    train.run(wider, None, data=FakeData())
  for bad, field in ((dict(workdir="", groups="shared"), r"\.workdir=''"),
                     (dict(workdir=img_wd, groups=()), r"\.groups: expected one or more"),
                     (dict(workdir=img_wd, step=-1, groups="shared"), r"\.step=-1"),
                     ("somewhere", r"='somewhere': expected a dict")):
    c = single_task("image")
    c.init_from = bad
    with pytest.raises(ConfigError, match=r"init_from(\[0\])?" + field):
      train.run(c, None, data=FakeData())
  c = single_task("image")
  c.init_from = dict(workdir=img_wd, groups="heads.image", extra=1)
  with pytest.raises(ConfigError, match=r"init_from\[0\]\.extra: unknown field"):
    train.run(c, None, data=FakeData())
  c.init_from = dict(workdir=img_wd, groups="tokenizers.audio")
  c.tasks.audio = single_task("audio").tasks.audio.to_dict()
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"init_from\[0\]\.groups: .* has no parameter group tokenizers.audio; "
                           r"it has (heads.image|shared|tokenizers.image)(, (heads.image|shared|"
                           r"tokenizers.image)){2}$"):
    train.run(c, None, data=FakeData())
