"""The trainer's contract: what a step may touch, compile-once, determinism and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvit import optim, train
from tests import reordering
from tests.fakes import FakeData
from tests.tiny import tiny_config


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


@pytest.mark.parametrize("adapter_depth", [0, 1])
def test_a_step_of_task_a_gives_task_b_no_update_no_momentum_drift_no_decay(adapter_depth):
  """Parameter groups: an image step touches shared + image tokenizer (+ image adapter, post-
  adapter and task blocks) + image head only. The audio head has non-zero Adam moments (an audio
  step ran first) and weight decay is on, so any update of its group would move it."""
  data = FakeData()
  cfg = tiny_config()
  cfg.model.adapter_depth = adapter_depth
  cfg.model.post_adapter_depth = adapter_depth
  cfg.model.task_depth = adapter_depth
  exp = train.build(cfg, data=data)
  state = exp.state
  batch = {n: next(data.train_iterator(t.dataset, batch_size=8, seed=1))
           for n, t in exp.task_by_name.items()}
  with jax.set_mesh(exp.mesh):
    state, _ = exp.train_steps["audio"](state, batch["audio"], jnp.int32(0))
    before = copy(state)
    for s in range(1, 4):
      state, _ = exp.train_steps["image"](state, batch["image"], jnp.int32(s))
  after = copy(state)
  others = ("heads.audio", "tokenizers.audio", "heads.video_digit", "tokenizers.video")
  own = ("shared", "tokenizers.image", "heads.image")
  if adapter_depth:
    others += ("adapters.audio", "adapters.video", "post_adapters.audio", "post_adapters.video",
               "task_blocks.audio", "task_blocks.video_digit")
    own += ("adapters.image", "post_adapters.image", "task_blocks.image")
  for g in others:
    assert leaves_equal(before["params"][g], after["params"][g]), g
    assert leaves_equal(before["opt"][g], after["opt"][g]), g
  assert after["counts"]["audio"] == 1 and after["counts"]["video_digit"] == 0
  assert after["counts"]["image"] == 3
  for g in own:
    assert not leaves_equal(before["params"][g], after["params"][g]), g
  assert sorted(exp.groups["image"]) == sorted(own)


@pytest.mark.parametrize("kind", ["weighted", "accumulated"])
def test_each_step_compiles_once_and_a_longer_run_never_recompiles(kind):
  data = FakeData()
  out = train.run(tiny_config(kind, steps=3, eval_every=5), None, data=data)
  assert set(out["traces"].values()) == {1}, out["traces"]
  expected = {"accumulated"} if kind == "accumulated" else {"image", "video_digit", "audio"}
  assert expected | {f"eval/{t}" for t in ("image", "video_digit", "audio")} == set(out["traces"])


def test_tasks_alike_but_for_their_names_share_one_compiled_step_yet_train_as_their_own():
  """Two tasks alike but for their names and lr schedules (same head shape, groups layout,
  optimizer settings and other hyperparameters) run one compiled train step and one eval step,
  the first task's: each still updates only its own head and count, draws its own keys and
  follows its own lr, warm-up and length, and every state and logit is bit-identical to
  per-task programs (share_steps='none')."""
  data = FakeData()
  cfg = tiny_config()
  cfg.tasks.image2 = {**cfg.tasks.image.to_dict(), "lr": 3e-3, "warmup_steps": 1, "steps": 9}
  order = ["image", "image2", "audio", "image2", "image"]
  batches = {n: next(data.train_iterator("digits_image", batch_size=8, seed=i))
             for i, n in enumerate(("image", "image2"))}
  batches["audio"] = next(data.train_iterator("digits_audio", batch_size=8, seed=3))
  evaluation = next(data.eval_batches("digits_image", split="test", batch_size=8))
  evaluation = {k: v for k, v in evaluation.items() if k != "mask"}

  def run():
    exp = train.build(cfg, data=data)
    state = exp.state
    with jax.set_mesh(exp.mesh):
      lrs = []
      for s, n in enumerate(order):
        state, m = exp.train_steps[n](state, batches[n], jnp.int32(s))
        lrs.append(float(m["lr"]))
      logits = {n: exp.eval_steps[n](state["params"], evaluation) for n in ("image", "image2")}
    return exp, copy(state), copy(logits), lrs

  shared, state, logits, lrs = run()
  assert shared.train_steps["image2"].shares_with == "image"
  assert shared.train_steps["audio"].shares_with is None
  assert shared.traces == {"image": 1, "audio": 1, "eval/image": 1}
  assert int(state["counts"]["image"]) == 2 and int(state["counts"]["image2"]) == 2
  assert not leaves_equal(state["params"]["heads.image"], state["params"]["heads.image2"])
  assert not leaves_equal(logits["image"], logits["image2"])
  # Each task's lr at its own count: image warms up over 2 of 4 steps, image2 over 1 of 9.
  want = {"image": lambda c: optim.lr_at(c, 1e-3, 2, 4, "cosine"),
          "image2": lambda c: optim.lr_at(c, 3e-3, 1, 9, "cosine")}
  counts = {"image": 0, "image2": 0}
  for n, lr in zip(order, lrs):
    if n in want:
      assert lr == pytest.approx(float(want[n](counts[n])), rel=1e-6), n
      counts[n] += 1

  cfg.share_steps = "none"
  own, state_own, logits_own, lrs_own = run()
  assert own.train_steps["image2"].shares_with is None
  assert own.traces == {"image": 1, "image2": 1, "audio": 1, "eval/image": 1, "eval/image2": 1}
  assert leaves_equal(state, state_own)
  assert leaves_equal(logits, logits_own) and lrs == lrs_own


def test_heads_that_differ_only_in_class_count_share_one_padded_program_with_pad_classes():
  """share_steps='pad_classes': image tasks of 10, 37 and 20 classes (label smoothing on, so
  the real counts matter; AdamW with weight decay, so padded zeros would drift if they got a
  gradient) run one train and one eval program, traced at 37 classes, the representative
  narrower than the widest and the third head padded while it waits. The state keeps each
  head at its own width, and states, metrics and logits (a two-view test too) equal those of
  a program per task up to float rounding. Under the default ('exact') they do not share."""
  cfg = tiny_config()
  sizes = {"narrow": 10, "wide": 37, "mid": 20}
  cfg.datasets = {f"d{n}": dict(features=dict(image=((32, 32, 1), "float32")),
                                num_classes=dict(label=n)) for n in sizes.values()}
  cfg.tasks = {name: dict(dataset=f"d{n}", modalities="image", labels="label", batch_size=8,
                          steps=4, label_smoothing=0.1) for name, n in sizes.items()}
  rng = np.random.default_rng(0)
  image = lambda: rng.normal(size=(8, 32, 32, 1)).astype(np.float32)
  batches = {n: {"image": image(), "label": rng.integers(0, c, 8).astype(np.int32)}
             for n, c in sizes.items()}
  evaluation = {"image": image(), "label": np.zeros(8, np.int32)}
  order = ["narrow", "wide", "mid", "narrow", "wide", "mid"]

  def run(share):
    cfg.share_steps = share
    exp = train.build(cfg)
    state, metrics = exp.state, []
    with jax.set_mesh(exp.mesh):
      for s, n in enumerate(order):
        state, m = exp.train_steps[n](state, batches[n], jnp.int32(s))
        metrics.append({k: float(v) for k, v in m.items()})
      logits = {n: exp.eval_steps[n](state["params"], evaluation) for n in batches}
      two_views = {"image": np.stack([evaluation["image"], evaluation["image"][:, ::-1]], 1)}
      logits["wide/views=2"] = exp.make_eval_step(exp.task_by_name["wide"], 2)(
          state["params"], two_views)
    return exp, copy(state), copy(logits), metrics

  padded, state, logits, metrics = run("pad_classes")
  (first,) = [n for n in sizes if padded.train_steps[n].shares_with is None]
  assert sizes[first] < 37  # tasks run in sorted order: mid's program, traced at 37 classes
  assert {padded.train_steps[n].shares_with for n in sizes if n != first} == {first}
  assert padded.traces == {first: 1, f"eval/{first}": 1, f"eval/{first}/views=2": 1}
  assert logits["wide/views=2"]["label"].shape == (8, 37)
  for n, c in sizes.items():
    assert state["params"][f"heads.{n}"]["outputs"]["label"]["kernel"].shape == (32, c)
    assert logits[n]["label"].shape == (8, c)
  own, state_own, logits_own, metrics_own = run("none")
  assert own.traces == {**{n: 1 for n in sizes}, **{f"eval/{n}": 1 for n in sizes},
                        "eval/wide/views=2": 1}
  # The padded program sums the heads' matmuls and softmaxes over more (zero) terms, in
  # another order: float32 reordering of the same function (tests/reordering.py).
  assert reordering.differences(state, state_own) == []
  assert reordering.differences(logits, logits_own) == []
  for a, b in zip(metrics, metrics_own):
    assert a == pytest.approx(b, rel=reordering.TOL), (a, b)
  cfg.share_steps = "exact"
  assert train.build(cfg).train_steps["wide"].shares_with is None


def test_accumulated_makes_one_update_from_one_batch_of_every_task():
  out = train.run(tiny_config("accumulated", steps=3), None, data=FakeData())
  # U = 3 + 4 + 5 = 12 batches over 3 tasks: 4 updates, each counted by every task.
  assert out["steps"] == 4
  assert {k: int(v) for k, v in out["state"]["counts"].items()} == {
      "image": 4, "video_digit": 4, "audio": 4}


def test_runs_are_deterministic_and_evaluation_does_not_change_training():
  a = train.run(tiny_config(steps=3), None, data=FakeData())
  b = train.run(tiny_config(steps=3, eval_every=2), None, data=FakeData())
  assert leaves_equal(a["state"]["params"], b["state"]["params"])
  assert a["test"] == b["test"]


# The accumulated kind with -m slow (CI's 15 minutes); weighted resumes here and in the kill tests.
@pytest.mark.parametrize("kind", ["weighted", pytest.param("accumulated", marks=pytest.mark.slow)])
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, kind):
  cfg = tiny_config(kind, steps=3, checkpoint_every=1)
  full = train.run(cfg, str(tmp_path / "full"), data=FakeData())
  stop = 2 if kind == "accumulated" else 5
  train.run(cfg, str(tmp_path / "cut"), data=FakeData(), stop_at=stop)
  resumed = train.run(cfg, str(tmp_path / "cut"), data=FakeData())
  assert leaves_equal(full["state"], resumed["state"])
  assert full["test"] == resumed["test"]


def test_learning_rate_warmup_and_cosine_follow_each_task_own_count():
  lrs = [float(optim.lr_at(c, 1.0, 2, 10, "cosine")) for c in range(11)]
  assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
  assert lrs[-1] == pytest.approx(0.0, abs=1e-7)
  assert all(x >= y for x, y in zip(lrs[1:], lrs[2:]))


def test_parameter_report_counts_shared_and_per_task_parameters():
  exp = train.build(tiny_config(), data=FakeData())
  rep = train.parameter_report(exp.state["params"], exp.groups)
  assert rep["total"] == rep["shared"] + sum(rep["per_modality"].values()) + sum(
      rep["per_task"].values())
  assert 0 < rep["fraction_shared"] < 1
  # T single-task models repeat the shared encoder T times.
  assert rep["single_task_total"] == 2 * rep["shared"] + rep["total"]


def test_adapter_blocks_count_as_their_modality_not_as_shared():
  reports, adapters = [], 0
  for depth in (0, 1):
    cfg = tiny_config()
    cfg.model.adapter_depth = depth
    exp = train.build(cfg, data=FakeData())
    reports.append(train.parameter_report(exp.state["params"], exp.groups))
  adapters = sum(x.size for x in jax.tree.leaves(exp.state["params"]["adapters.image"]))
  assert adapters > 0 and reports[1]["shared"] == reports[0]["shared"]
  assert reports[1]["per_modality"]["image"] - reports[0]["per_modality"]["image"] == adapters


def test_a_multihead_task_reports_per_head_and_joint_accuracy():
  """Several heads on one task (e.g. verb + noun): losses averaged, metrics per head + joint."""
  c = tiny_config("weighted", steps=2)
  c.tasks.video_both = dict(dataset="digits_video", modalities="video", head="multihead",
                            labels=("direction", "digit"), batch_size=8, steps=2)
  out = train.run(c, None, data=FakeData())
  assert set(out["test"]["video_both"]) == {"direction/top1", "direction/top5", "digit/top1",
                                            "digit/top5", "joint_top1", "num_examples"}
  res = out["test"]["video_both"]
  assert res["joint_top1"] <= min(res["direction/top1"], res["digit/top1"])


def test_sgd_with_momentum_as_in_the_seed_trains_too():
  c = tiny_config("alternating", steps=2)
  c.optimizer = dict(name="sgd", lr=0.1, momentum=0.9, warmup_steps=1, weight_decay=1e-4,
                     grad_clip_norm=1.0)
  out = train.run(c, None, data=FakeData())
  assert out["skipped_updates"] == 0
  exp = train.build(c, data=FakeData())
  assert not leaves_equal(exp.state["params"], out["state"]["params"])


def test_a_task_optimizer_settings_apply_to_the_groups_it_alone_reads():
  """tasks.image.b1 / weight_decay reach the image head and tokenizer (only the image task
  reads them) and nothing else: after one identical image step, the head's first Adam moment
  is (1 - b1) g, 0.5 g against the optimizer's 0.1 g, the tokenizer kernel decayed by
  lr * (0.5 - 0.01) of itself more, and the shared encoder is bit-identical either way."""
  data = FakeData()
  runs = {}
  for name, over in (("base", {}), ("own", dict(b1=0.5, weight_decay=0.5))):
    cfg = tiny_config()
    cfg.tasks.image.update(over)
    exp = train.build(cfg, data=data)
    batch = next(data.train_iterator("digits_image", batch_size=8, seed=1))
    start = copy(exp.state)  # the step donates its input state
    with jax.set_mesh(exp.mesh):
      state, m = exp.train_steps["image"](exp.state, batch, jnp.int32(5))
    runs[name] = (start, copy(state), float(m["lr"]))
  (b0, base, lr), (o0, own, _) = runs["base"], runs["own"]
  assert leaves_equal(b0["params"], o0["params"])  # same start
  assert leaves_equal(base["params"]["shared"], own["params"]["shared"])
  assert leaves_equal(base["opt"]["shared"], own["opt"]["shared"])
  mu = lambda s: s["opt"]["heads.image"][0].mu  # chain(scale_by_adam, decay): adam's state
  for a, b in zip(jax.tree.leaves(mu(base)), jax.tree.leaves(mu(own))):
    np.testing.assert_allclose(b, 5.0 * a, rtol=1e-6, atol=1e-12)
  k0 = b0["params"]["tokenizers.image"]["kernel"]
  extra = own["params"]["tokenizers.image"]["kernel"] - base["params"]["tokenizers.image"]["kernel"]
  # a difference of float32 kernels of magnitude ~0.1: rounding ~1e-8 (the decay itself ~5e-5)
  np.testing.assert_allclose(extra, -lr * (0.5 - 0.01) * k0, atol=1e-7)
