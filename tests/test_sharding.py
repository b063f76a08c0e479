"""Names, not positions, drive sharding; every mesh computes the same training run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from mmvit import sharding

HERE = os.path.dirname(os.path.abspath(__file__))


class FakeMesh:
  def __init__(self, **shape):
    self.shape = {a: shape.get(a, 1) for a in sharding.MESH_AXES}


def test_rules_map_logical_names_to_mesh_axes():
  mesh = FakeMesh(data=2, fsdp=2, tensor=2)
  assert sharding.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("embed", "heads", "kv"), mesh) == P("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("batch", None), mesh) == P(("data", "fsdp"), None)


def test_mesh_axes_of_size_one_and_non_dividing_splits_shard_nothing():
  assert sharding.logical_to_spec(("embed", "mlp"), FakeMesh(data=8)) == P(None, None)
  assert sharding.logical_to_spec(("classes",), FakeMesh(tensor=4), shape=(10,)) == P(None)


def test_one_device_and_8_device_meshes_give_the_same_losses_to_1e_5():
  out = subprocess.run([sys.executable, os.path.join(HERE, "mesh_equivalence.py")],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = json.loads(out.stdout.strip().splitlines()[-1])
  ref = runs.pop("1 device")
  assert ref["devices"] == 1
  for name, run in runs.items():
    assert run["devices"] == 8, name
    np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(run["params"], ref["params"], rtol=1e-4, atol=1e-4, err_msg=name)
  # Tensor parallel really splits parameters over the tensor axis.
  assert any("tensor" in s for s in runs["data=4,tensor=2"]["specs"])
  assert any("fsdp" in s for s in runs["data=2,fsdp=2,tensor=2"]["specs"])
