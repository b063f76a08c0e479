"""Names, not positions, drive sharding; every mesh computes the same training run."""

import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmvit import sharding
from tests import reordering
from tests.reordering import TOL  # another mesh splits the tiny model's reductions differently

HERE = os.path.dirname(os.path.abspath(__file__))


class FakeMesh:
  def __init__(self, **shape):
    self.shape = {a: shape.get(a, 1) for a in sharding.MESH_AXES}


def test_rules_map_logical_names_to_mesh_axes():
  mesh = FakeMesh(data=2, fsdp=2, tensor=2)
  assert sharding.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("embed", "heads", "kv"), mesh) == P("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("batch", None), mesh) == P(("data", "fsdp"), None)


def test_presets_and_config_overrides_make_the_rule_list():
  mesh = FakeMesh(data=2, fsdp=2, tensor=2)
  spec = lambda names, rules: sharding.logical_to_spec(names, mesh, rules=rules)
  dp, fsdp = sharding.make_rules("data_parallel"), sharding.make_rules("fsdp")
  assert spec(("embed", "mlp"), dp) == P(None, None)
  assert spec(("embed", "mlp"), fsdp) == P("fsdp", None)
  assert spec(("batch", "embed"), dp) == P(("data", "fsdp"), None)
  seq = sharding.make_rules("fsdp_tensor", {"tokens": "tensor"})
  assert spec(("batch", "tokens", "heads", "kv"), seq) == P(("data", "fsdp"), "tensor", None, None)
  with sharding.using_rules(fsdp):  # the rules in force when none are given
    assert sharding.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", None)
  assert sharding.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")


def test_mesh_axes_of_size_one_and_non_dividing_splits_shard_nothing():
  assert sharding.logical_to_spec(("embed", "mlp"), FakeMesh(data=8)) == P(None, None)
  assert sharding.logical_to_spec(("classes",), FakeMesh(tensor=4), shape=(10,)) == P(None)


def train_on_meshes(tmp_path, broken=None) -> dict:
  """{mesh: {'losses', 'params': {path: array}, 'specs', 'devices'}} from the subprocess."""
  out = tmp_path / f"runs_{broken}.npz"
  args = [sys.executable, os.path.join(HERE, "mesh_equivalence.py"), str(out)]
  proc = subprocess.run(args + ([f"--break={broken}"] if broken else []), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs: dict = {}
  with np.load(out) as f:
    for key in f.files:
      mesh, what, *path = key.split("|")
      run = runs.setdefault(mesh, {"params": {}})
      if what == "param":
        run["params"][path[0]] = f[key]
      else:
        run[what] = f[key]
  return runs


def differences(run, ref) -> list[str]:
  """What differs beyond float32 reordering: each loss to TOL of its value; the parameters to
  TOL of the parameters' scale (max |p|: near-zero values, such as a bias that never moves,
  are only as exact as the weights beside them)."""
  bad = []
  losses, want = run["losses"], ref["losses"]
  for i in np.flatnonzero(np.abs(losses - want) > TOL * np.abs(want)):
    bad.append(f"step {i} loss {losses[i]:.8g}, 1 device {want[i]:.8g}")
  return bad + reordering.differences(run["params"], ref["params"])


def test_every_mesh_trains_what_one_device_trains_up_to_float32_reordering(tmp_path):
  runs = train_on_meshes(tmp_path)
  ref = runs.pop("1 device")
  assert int(ref["devices"]) == 1
  for name, run in runs.items():
    assert int(run["devices"]) == 8, name
    assert differences(run, ref) == [], name
  # Tensor parallel and FSDP really split parameters.
  assert any("tensor" in s for s in runs["data=4,tensor=2"]["specs"])
  assert any("fsdp" in s for s in runs["data=2,fsdp=2,tensor=2"]["specs"])
  # The config's rules reach parameters and activations alike: the fsdp preset splits no
  # array over tensor; with heads overridden to (), attention activations stay whole while
  # the MLP's hidden activations are still split (the default splits both).
  default = list(runs["data=4,tensor=2"]["specs"])
  assert 'constraint [{"data"}, {}, {"tensor"}, {}] on 8x9x2x16' in default
  fsdp = list(runs["fsdp=4,tensor=2 preset fsdp"]["specs"])
  assert not any("tensor" in s for s in fsdp) and any("fsdp" in s for s in fsdp)
  heads = list(runs["data=4,tensor=2 heads->()"]["specs"])
  assert 'constraint [{"data"}, {}, {}, {}] on 8x9x2x16' in heads
  assert 'constraint [{"data"}, {}, {"tensor"}] on 8x9x64' in heads


# Both planted bugs with -m slow (CI's 15 minutes): they check the comparison, not the trainer.
@pytest.mark.slow
@pytest.mark.parametrize("bug", ["labels", "param_shards"])
def test_the_mesh_comparison_catches_a_sharding_bug(tmp_path, bug):
  """Inputs rotated against their labels across devices, or two tensor-parallel shards of a
  kernel swapped: both train something else, and the comparison above says so."""
  runs = train_on_meshes(tmp_path, broken=bug)
  assert differences(runs["data=4,tensor=2"], runs["1 device"]) != []
