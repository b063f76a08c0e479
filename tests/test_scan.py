"""model.scan (issue 13): the scan layout stores each stack's blocks stacked on a leading layer
axis and runs them with lax.scan. It computes what the loop layout computes, converts to and
from it exactly, and compiles one layer's body whatever the depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mmvit import checkpointing, config as config_lib, convert, sharding, train
from mmvit.models.encoder import layout_of, to_loop, to_scan
from tests.test_precision_and_kernels import (FUSIONS, ROUNDING, batch, loss_and_grads,
                                              max_diff, model)
from tests.test_sharding import FakeMesh
from tests.tiny import tiny_config


def scan_twin(loop_model, kind, **kw):
  """A scan-layout model holding the loop model's parameters."""
  twin = model(kind, scan=True, **kw)
  convert.load_into(twin, nnx.to_pure_dict(nnx.state(loop_model, nnx.Param)))
  return twin


@pytest.mark.parametrize("kind", list(FUSIONS))
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_scan_and_loop_give_equal_losses_and_gradients(kind, rate):
  """Every fusion kind (bottleneck and joint share weights, full-pairwise has a stream stack of
  its own), stochastic depth's per-layer rates and keys included: losses to 1e-6, gradients to
  float32 rounding (ROUNDING, relative to the largest)."""
  loop_m = model(kind)
  scan_m = scan_twin(loop_m, kind)
  for task in ("av", "video"):
    (l0, g0), (l1, g1) = (loss_and_grads(m, task, jax.random.key(2), rate)
                          for m in (loop_m, scan_m))
    assert abs(float(l0) - float(l1)) <= 1e-6
    assert max_diff(nnx.to_pure_dict(g0), to_loop(nnx.to_pure_dict(g1))) <= ROUNDING


def test_modality_and_task_blocks_after_the_shared_ones_scan_as_the_loop_does():
  """The post-adapter and task stacks (PolyViT's blocks before each head) in both layouts,
  stochastic depth on: equal losses (1e-6) and gradients (ROUNDING), through a fusion task too."""
  extra = dict(adapter_depth=1, post_adapter_depth=2, task_depth=1)
  loop_m = model("bottleneck", **extra)
  scan_m = scan_twin(loop_m, "bottleneck", **extra)
  for task in ("av", "video"):
    (l0, g0), (l1, g1) = (loss_and_grads(m, task, jax.random.key(5), 0.2)
                          for m in (loop_m, scan_m))
    assert abs(float(l0) - float(l1)) <= 1e-6
    g0, g1 = nnx.to_pure_dict(g0), to_loop(nnx.to_pure_dict(g1))
    assert max_diff(g0, g1) <= ROUNDING
    assert np.abs(np.asarray(g0["task_blocks"][task]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]
                             ["kernel"])).max() > 0  # the blocks train


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_rematerialised_scan_keeps_the_gradients(policy):
  loop_m = model("bottleneck")
  scan_m = scan_twin(loop_m, "bottleneck", remat=policy)
  (l0, g0), (l1, g1) = (loss_and_grads(m, "av", jax.random.key(4), 0.2) for m in (loop_m, scan_m))
  assert abs(float(l0) - float(l1)) <= 1e-6
  assert max_diff(nnx.to_pure_dict(g0), to_loop(nnx.to_pure_dict(g1))) <= ROUNDING


def test_the_layouts_convert_exactly_both_ways():
  loop_tree = nnx.to_pure_dict(nnx.state(model("full_pairwise"), nnx.Param))
  scanned = to_scan(loop_tree)
  assert layout_of(loop_tree) == "loop" and layout_of(scanned) == "scan"
  block = scanned["encoder"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert block.shape == (3, 32, 64)  # (layers, embed, mlp)
  back = to_loop(scanned)
  assert jax.tree.structure(back) == jax.tree.structure(loop_tree)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
                                                  jax.tree.leaves(loop_tree)))


def test_the_layer_axis_is_never_sharded():
  """Scanned parameters carry the logical axis 'layers' first, which no rule maps to a mesh
  axis: each device holds every layer of its shard."""
  scan_m = model("bottleneck", scan=True)
  kernel = scan_m.encoder.encoderblock.MlpBlock_0["Dense_0"].kernel
  axes = kernel.get_metadata()["logical_axes"]
  assert axes == ("layers", "embed", "mlp")
  mesh = FakeMesh(data=2, fsdp=2, tensor=2)
  for preset in sharding.PRESETS:
    with sharding.using_rules(sharding.make_rules(preset)):
      assert sharding.logical_to_spec(axes, mesh, kernel.shape)[0] is None
  assert sharding.logical_to_spec(axes, mesh, kernel.shape) == P(None, "fsdp", "tensor")


def test_a_scanned_step_compiles_one_layer_whatever_the_depth():
  """The gradient of a depth-2 and a depth-8 scan encoder hold as many matmuls: one layer's
  forward and backward (the loop layout's grow with depth)."""
  def dots(depth, scan):
    from mmvit.models.heads import loss as head_loss  # noqa: PLC0415
    from mmvit.models.model import Model, ModelSpec, average_logits  # noqa: PLC0415
    from tests.test_precision_and_kernels import HEAD, TOKS  # noqa: PLC0415
    m = Model(ModelSpec(width=32, depth=depth, num_heads=4, mlp_dim=64, scan=scan), TOKS,
              {"video": (("video",), HEAD, None)}, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(m)
    b = batch()
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: head_loss(HEAD, average_logits(
        nnx.merge(graphdef, p)("video", b)), b).mean()))(params)
    return str(jaxpr).count("dot_general")
  assert dots(2, True) == dots(8, True)
  assert dots(8, False) > dots(2, False)


@pytest.mark.parametrize("saved_scan", [False, True])
def test_init_from_reads_a_run_saved_in_the_other_layout_exactly(tmp_path, data_dir,
                                                                 saved_scan):
  """A loop run's checkpoint initialises a scan run (and the reverse): the loaded parameters
  are the saved ones, restacked."""
  saved = tiny_config(steps=2, data_dir=data_dir)
  saved.model.scan = saved_scan
  out = train.run(saved, str(tmp_path / "saved"))
  params = jax.tree.map(np.asarray, out["state"]["params"])
  cfg = tiny_config(steps=2, data_dir=data_dir)
  cfg.model.scan = not saved_scan
  exp = train.build(cfg)
  sources = [dict(workdir=str(tmp_path / "saved"), step=None, groups=("shared", "heads.*"))]
  loaded, lines, rows = checkpointing.load_params(sources, exp.state["params"],
                                                  exp.tokenizer_specs)
  assert "heads.image, heads.video_digit, shared from" in lines[0]
  assert {r.action for r in rows if r.param.startswith(("shared/", "heads."))} == {"loaded"}
  convert_back = to_scan if saved_scan else to_loop
  for g in ("shared", "heads.image"):
    got = convert_back(jax.tree.map(np.asarray, loaded[g]))
    assert jax.tree.structure(got) == jax.tree.structure(params[g])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got),
                                                    jax.tree.leaves(params[g])))


def test_scan_is_checked_at_the_door():
  cfg = tiny_config()
  cfg.model.scan = "yes"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(cfg)
  assert str(e.value) == "model.scan='yes': expected True or False"
