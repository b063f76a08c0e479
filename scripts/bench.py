r"""Speed, memory and compile figures of issue 13, each measured in one run and printed as
ratios (timings never live in tests):

  uv run python scripts/bench.py [--only=peak,mfu,attention,remat,bf16,cotrain,switch,pipeline,host]
      [--peer=DIR] [--rounds=5] [--out=FILE.json]

* peak       this machine's float32 matmul throughput (the CPU's MFU denominator);
* mfu        a ViT-S train step (width 384, depth 12, 6 heads, MLP 1536, 196 tokens, batch 32,
             float32, AdamW with clipping), mmvit's own compiled step: model TFLOP/s, MFU, the
             analytic FLOPs against XLA's cost analysis (ceiling: the same matmuls alone);
             with --peer=DIR (a directory holding
             `peer_vit.py` that builds big_vision's ViT step on the same shapes: a scratch
             copy, nothing of it is in this project) the step time ratio to big_vision's;
* attention  'xla' (jax.nn.dot_product_attention) against 'einsum' at 64, 256 and 1,024
             tokens: max output difference and train-step time ratio;
* remat      per policy, the peak temporary memory of the MBT ViT-B train step per device
             (compiled memory analysis, no run) as ratios to no remat, and step time ratios of
             a ViT-S step in one run;
* bf16       ViT-S step time in bfloat16 against float32 on this device; bf16_curves: the
             demo's first 300 steps in both, their train-loss curves compared;
* scan       compile time of the PolyViT 9-task ViT-B plan with and without scan, against one
             task's; a scanned ViT-B step's compile time at depth 24 against depth 6;
* cotrain    the demo's steps: a co-training run that switches task every step against the
             same steps task by task (means of interleaved rounds), and recompilations after
             warm-up (must be 0);
* switch     where co-training's cost falls: each demo step's time after each other task's
             step, and after stand-ins as long as the longest step (idle cores, matmuls on
             both cores, 768 MB written), against after its own (median of 8 per pair, mean
             of --rounds rounds);
* pipeline   CPU time per batch of each demo task's training pipeline, with grain's pool of 2
             threads and with none (config.data_threads), in one run;
* host       the demo's training loop for 300 steps: the share of its wall time spent outside
             the compiled steps, with the input thread (prefetch=2; grain threads by default
             and 2) and without (prefetch=0), two interleaved rounds, against the same
             steps in the schedule's order on placed batches (dispatched as the loop
             dispatches them: the host's own share) and against each task's steps alone
             (which adds the cost of switching tasks, `cotrain`); and each kind of
             thread's CPU (XLA's pool, grain's pools, the input thread, the main thread)
             over each run's last 60%, read from /proc, in cores.
Inputs are random batches of the datasets' shapes (config.datasets: mmvit.data.synthetic)
except in `host`, which reads the real digits suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mmvit import config as config_lib, experiment, loop, sharding, throughput  # noqa: E402
from mmvit.data.synthetic import make_batch  # noqa: E402

OUT: dict = {}


def say(section: str, line: str, **figures):
  print(f"[{section}] {line}", flush=True)
  OUT.setdefault(section, {}).update(figures)


def vit_config(width=384, depth=12, heads=6, mlp=1536, image=224, patch=16, batch=32,
               classes=1000, **model) -> ml_collections.ConfigDict:
  """One image task on a declared (synthetic) dataset: gap pooling, no class token, so
  (image / patch)^2 tokens, as big_vision's ViT with pool_type='gap'."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.datasets = {"bench_images": dict(features=dict(image=((image, image, 3), "float32")),
                                     num_classes=dict(label=classes))}
  c.model = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, pool="gap",
                 class_token=False, tokenizers=dict(image=dict(kind="image", patch=(patch, patch))),
                 **model)
  c.tasks = dict(image=dict(dataset="bench_images", modalities="image", batch_size=batch,
                            steps=1000))
  c.schedule = dict(kind="task_by_task")
  c.optimizer = dict(name="adamw", lr=1e-3, weight_decay=1e-4, grad_clip_norm=1.0)
  c.log_every = 0
  return c


class Stepper:
  """An experiment's compiled train step of one task on one random batch."""

  def __init__(self, cfg, task="image"):
    self.exp = experiment.build(cfg)  # config.datasets: mmvit.data.synthetic
    self.task = self.exp.task_by_name[task]
    spec = self.exp.data.specs[self.task.dataset]
    with self.exp.layout():
      self.batch = sharding.shard_batch(make_batch(spec, self.task.batch_size, 0), self.exp.mesh)
    self.state = self.exp.state
    self.fn = self.exp.train_steps[task]
    self.step_no = jnp.int32(0)
    with self.exp.layout():
      self.compiled = self.fn.lower(self.state, self.batch, self.step_no).compile()
    self.work = throughput.task_work(self.exp.model_spec, self.task, self.exp.tokenizer_specs)

  def __call__(self):  # the executable compiled above: nothing is traced or compiled again
    self.state, m = self.compiled(self.state, self.batch, self.step_no)
    return m["loss"]

  def xla_flops(self) -> float:
    cost = self.compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def random_batch(exp, task, rng) -> dict:
  """A placed batch of random inputs of the task's dataset's shapes, and random labels."""
  info = exp.data.dataset_info(task.dataset, exp.config.get("data_dir"))
  b = {k: rng.standard_normal((task.batch_size,) + tuple(s)).astype(np.float32)
       for k, (s, _) in info.features.items() if k in task.input_keys}
  for k, c in zip(task.head.labels, task.head.num_classes):
    b[k] = rng.integers(0, c, task.batch_size).astype(np.int32)
  return sharding.shard_batch(b, exp.mesh)


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def timed(fn, n: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def interleaved(fns: dict, rounds: int, per_round: int = 3) -> dict[str, float]:
  """Mean over rounds of each function's median step time, the functions taking turns in
  every round (drifts of the machine's speed fall on all alike)."""
  out = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      out[k].append(timed(f, per_round))
  return {k: statistics.mean(v) for k, v in out.items()}


def bench_peak(args):
  peak = throughput.matmul_flops_per_s(1024, 2.0)
  say("peak", f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s (1024^2 chain, best of 2 s) on "
      f"{jax.devices()[0].device_kind}", gflops=peak / 1e9)
  return peak


def bench_mfu(args, peak):
  ours = Stepper(vit_config())
  fns = {"mmvit": ours}
  if args.peer:
    sys.path.insert(0, args.peer)
    import peer_vit  # noqa: PLC0415  (a scratch copy of big_vision's ViT, see the docstring)
    step, (p, o, x, y) = peer_vit.make_peer_step(width=384, depth=12, num_heads=6, mlp_dim=1536,
                                                 patch=16, image=224, batch=32, pool="gap")
    peer = {"s": (p, o)}

    def peer_step():
      pp, oo, loss = step(*peer["s"], x, y)
      peer["s"] = (pp, oo)
      return loss
    fns["big_vision"] = peer_step
  t = interleaved(fns, args.rounds)
  flops, xla = ours.work.flops, ours.xla_flops()
  achieved = flops / t["mmvit"]
  say("mfu", f"ViT-S step {t['mmvit'] * 1e3:.0f} ms: {achieved / 1e9:.1f} GFLOP/s of model "
      f"FLOPs = MFU {achieved / peak:.1%} of the measured peak ({flops / 1e9:.0f} GFLOP per "
      f"step analytic, XLA cost analysis {xla / 1e9:.0f}: ratio {flops / xla:.3f})",
      step_ms=t["mmvit"] * 1e3, gflops=achieved / 1e9, mfu=achieved / peak,
      analytic_over_xla=flops / xla, steps_per_s=1 / t["mmvit"])
  if "big_vision" in t:
    r = t["mmvit"] / t["big_vision"]
    say("mfu", f"big_vision ViT-S same shapes {t['big_vision'] * 1e3:.0f} ms "
        f"(MFU {flops / t['big_vision'] / peak:.1%}): mmvit / big_vision step time {r:.3f}",
        peer_ms=t["big_vision"] * 1e3, ratio_to_peer=r)


def bench_ceiling(args, peak):
  """The ViT-S step's matmuls alone (12 layers; per layer the forward's 8 and the backward's
  16, each on an operand of its own so that XLA shares none): what the step could reach if
  everything else were free."""
  b, n, d, h, m, layers = 32, 196, 384, 6, 1536, 12
  hd, t = d // h, b * n
  k = jax.random.key(0)
  x, w = jax.random.normal(k, (t, d)), jax.random.normal(k, (d, d))
  w1, w2, hid = (jax.random.normal(k, (d, m)), jax.random.normal(k, (m, d)),
                 jax.random.normal(k, (t, m)))
  q, a = jax.random.normal(k, (b * h, n, hd)), jax.random.normal(k, (b * h, n, n))
  kinds = (("dd", 12), ("d1", 3), ("12", 3), ("qk", 3), ("av", 3))

  @jax.jit
  def matmuls(x, w, w1, w2, hid, q, a):
    acc, j = 0.0, 0
    for _ in range(layers):
      for kind, count in kinds:
        for _ in range(count):
          j += 1
          e = j * 1e-3
          y = {"dd": lambda: x @ (w + e), "d1": lambda: x @ (w1 + e),
               "12": lambda: hid @ (w2 + e),
               "qk": lambda: jnp.einsum("bqd,bkd->bqk", q + e, q),
               "av": lambda: jnp.einsum("bqk,bkd->bqd", a, q + e)}[kind]()
          acc = acc + jnp.sum(y)
    return acc
  flops = layers * 3 * 2 * (4 * t * d * d + 2 * t * d * m + 2 * b * h * n * n * hd)
  sec = timed(lambda: matmuls(x, w, w1, w2, hid, q, a), 5)
  say("ceiling", f"the ViT-S step's matmuls alone: {sec * 1e3:.0f} ms for {flops / 1e9:.0f} "
      f"GFLOP = {flops / sec / 1e9:.0f} GFLOP/s = {flops / sec / peak:.1%} of the peak",
      ms=sec * 1e3, gflops=flops / sec / 1e9, of_peak=flops / sec / peak)


def bench_attention(args):
  for tokens, batch in ((64, 16), (256, 8), (1024, 2)):
    side = int(round((tokens * 16 * 16) ** 0.5))
    steppers = {a: Stepper(vit_config(depth=2, image=side, batch=batch, attention=a))
                for a in ("einsum", "xla")}
    # The same parameters (the init does not depend on the kernel) and batch: first losses.
    first = {a: float(s()) for a, s in steppers.items()}
    diff = abs(first["xla"] - first["einsum"])
    t = interleaved(steppers, args.rounds)
    say("attention", f"{tokens} tokens, batch {batch}: xla / einsum step time "
        f"{t['xla'] / t['einsum']:.3f}; |first loss difference| {diff:.1e}",
        **{f"ratio_{tokens}": t["xla"] / t["einsum"], f"loss_diff_{tokens}": diff})


def bench_remat(args):
  from mmvit import plan  # noqa: PLC0415
  jax.config.update("jax_enable_compilation_cache", False)
  cfg = config_lib.load(os.path.join(ROOT, "configs/mbt_audioset.py"))
  for scan in (False, True):
    base = None
    for policy in ("none", "full", "dots", "qkv_mlp"):
      c = cfg.copy_and_resolve_references()
      with c.unlocked():
        c.model.remat, c.model.scan = policy, scan
      rows = plan.plan(c, quiet=True)
      temp = max(r["temp_bytes"] for r in rows.values())
      base = base or temp
      say("remat", f"MBT ViT-B step (batch 64 on one device), scan={scan}, remat={policy}: "
          f"temporary memory {temp / 2**30:.1f} GiB = {temp / base:.2f} of none",
          **{f"temp_gib_scan_{scan}_{policy}": temp / 2**30,
             f"ratio_scan_{scan}_{policy}": temp / base})
  jax.config.update("jax_enable_compilation_cache", True)
  steppers = {p: Stepper(vit_config(depth=6, image=128, remat=p)) for p in
              ("none", "full", "dots", "qkv_mlp")}
  t = interleaved(steppers, args.rounds)
  say("remat", "ViT-S/16 at 64 tokens, depth 6, step time vs none: " + ", ".join(
      f"{p} {t[p] / t['none']:.3f}" for p in t), **{f"time_ratio_{p}": t[p] / t["none"]
                                                    for p in t})


def bench_bf16(args):
  steppers = {d: Stepper(vit_config(depth=6, image=128, dtype=d)) for d in ("float32", "bfloat16")}
  t = interleaved(steppers, args.rounds)
  r = t["bfloat16"] / t["float32"]
  say("bf16", f"ViT-S/16 at 64 tokens, depth 6: bfloat16 / float32 step time {r:.3f} on "
      f"{jax.devices()[0].device_kind}", time_ratio=r)


def bench_scan(args):
  from mmvit import plan  # noqa: PLC0415
  jax.config.update("jax_enable_compilation_cache", False)  # compile times, not loads
  poly = config_lib.load(os.path.join(ROOT, "configs/polyvit_9tasks.py"))
  totals, one = {}, {}
  # The config shares steps with padded heads; 'exact' is a program per head shape (here, per
  # task): each plan both ways, with and without scan.
  for share in ("exact", "pad_classes"):
    for scan in (False, True):
      c = poly.copy_and_resolve_references()
      with c.unlocked():
        c.model.scan, c.share_steps = scan, share
      rows = plan.plan(c, quiet=True)
      totals[scan, share] = sum(r["compile_s"] for r in rows.values())
      programs = sum(1 for r in rows.values() if "shares" not in r)
      if share == "exact":  # one task's own program (under pad_classes it is cifar10's)
        one[scan] = rows["imagenet"]["compile_s"]
      say("scan", f"PolyViT ViT-B 9-task plan, scan={scan}, share_steps={share}: "
          f"{totals[scan, share]:.1f} s to compile all 9 steps ({programs} programs), "
          f"{one[scan]:.1f} s for one (imagenet): ratio {totals[scan, share] / one[scan]:.1f}",
          **{f"plan_s_scan_{scan}_{share}": totals[scan, share],
             f"programs_scan_{scan}_{share}": programs, f"one_task_s_scan_{scan}": one[scan]})
  for share in ("exact", "pad_classes"):
    say("scan", f"9-task plan with scan / without, share_steps={share}: "
        f"{totals[True, share] / totals[False, share]:.2f}",
        **{f"plan_ratio_{share}": totals[True, share] / totals[False, share]})
  say("scan", f"9-task plan with scan and padded heads / without scan, a program per task: "
      f"{totals[True, 'pad_classes'] / totals[False, 'exact']:.2f}",
      plan_ratio_padded_vs_loop_exact=totals[True, "pad_classes"] / totals[False, "exact"])
  depth_s = {}
  for depth in (6, 24):
    c = vit_config(width=768, depth=depth, heads=12, mlp=3072, batch=8, scan=True)
    depth_s[depth] = plan.plan(c, quiet=True)["image"]["compile_s"]
  say("scan", f"ViT-B/16 step with scan, compile time depth 24 / depth 6: "
      f"{depth_s[24]:.1f} s / {depth_s[6]:.1f} s = {depth_s[24] / depth_s[6]:.2f}",
      depth_ratio=depth_s[24] / depth_s[6])
  jax.config.update("jax_enable_compilation_cache", True)


def bench_bf16_curves(args):
  """The demo's first 300 steps in float32 and in bfloat16: the train losses at every 10th
  step, and their largest relative difference over a window of 50 steps (the mean of 5)."""
  import tempfile  # noqa: PLC0415
  cfg = config_lib.load(os.path.join(ROOT, "configs/demo.py"))
  curves = {}
  for dtype in ("float32", "bfloat16"):
    c = cfg.copy_and_resolve_references()
    with c.unlocked():
      c.model.dtype, c.log_every, c.eval_every, c.checkpoint_every = dtype, 10, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
      loop.run(c, tmp, stop_at=300)
      with open(os.path.join(tmp, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    curves[dtype] = [r["loss"] for r in rows if r["split"] == "train"]
  a, b = np.array(curves["float32"]), np.array(curves["bfloat16"])
  win = lambda x: np.convolve(x, np.ones(5) / 5, mode="valid")
  rel = float(np.max(np.abs(win(a) - win(b)) / win(a)))
  say("bf16", f"demo, first 300 steps: largest relative difference of the 50-step mean train "
      f"loss, bfloat16 against float32: {rel:.3f} (final {b[-1]:.3f} vs {a[-1]:.3f})",
      curve_max_rel_diff=rel, curves={k: list(map(float, v)) for k, v in curves.items()})


def demo_steps():
  """(experiment, task names, step(name) -> loss, state box) of the demo: one placed random
  batch per task, one state through every task's steps (each donates its input); every step
  compiled and run once."""
  cfg = config_lib.load(os.path.join(ROOT, "configs/demo.py"))
  exp = experiment.build(cfg)
  rng = np.random.default_rng(0)
  with exp.layout():
    batches = {t.name: random_batch(exp, t, rng) for t in exp.tasks}
  box = {"s": exp.state}
  names = [t.name for t in exp.tasks]

  def step(name):
    with exp.layout():
      box["s"], m = exp.train_steps[name](box["s"], batches[name], jnp.int32(0))
    return m["loss"]
  for n in names:
    jax.block_until_ready(step(n))
  return exp, names, step, box


def bench_cotrain(args):
  exp, names, step, state = demo_steps()
  traces = dict(exp.traces)
  n = 12
  single, mixed = {k: [] for k in names}, {k: [] for k in names}
  for _ in range(args.rounds):
    for k in names:  # task by task: n steps of k
      single[k].append(timed(lambda k=k: step(k), n))
    order = names * n  # switching task every step
    times = {k: [] for k in names}
    for k in order:
      t0 = time.perf_counter()
      jax.block_until_ready(step(k))
      times[k].append(time.perf_counter() - t0)
    for k in names:
      mixed[k].append(statistics.median(times[k]))
  ratios = {k: statistics.mean(mixed[k]) / statistics.mean(single[k]) for k in names}
  recompiles = sum(exp.traces[k] - traces.get(k, 0) for k in exp.traces)
  say("cotrain", "co-training step / single-task step of the same task: " + ", ".join(
      f"{k} {r:.3f}" for k, r in ratios.items()) + f"; recompilations after warm-up: "
      f"{recompiles}", ratios=ratios, worst=max(ratios.values()), recompiles=recompiles)

  # An async checkpoint save: how long it holds the training thread, in steps.
  import tempfile  # noqa: PLC0415
  from mmvit import checkpointing  # noqa: PLC0415
  saves = []
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpointing.Checkpointer(tmp, keep=2)
    for i in range(5):
      jax.block_until_ready(step(names[0]))
      t0 = time.perf_counter()
      ckpt.save(i + 1, state["s"], {n: {"next_index": 0} for n in names}, {"step": i + 1},
                force=True)
      saves.append(time.perf_counter() - t0)
      ckpt.wait()
    ckpt.close()
  mean_step = statistics.mean(statistics.mean(v) for v in single.values())
  save = statistics.median(saves)
  say("cotrain", f"an async checkpoint save holds the training thread {save * 1e3:.0f} ms = "
      f"{save / mean_step:.2f} mean steps (median of 5)", save_steps=save / mean_step)


def bench_switch(args):
  _, names, step, _ = demo_steps()
  # Stand-ins for a long step before: idle cores for as long, both cores busy with matmuls on
  # 1 MB for as long, or 768 MB written (a working set far beyond the caches).
  big = jnp.ones((64 * 2**20,), jnp.float32)
  touch = jax.jit(lambda x: x * 1.0001)
  small = jnp.ones((512, 512), jnp.float32)
  longest = max(names, key=lambda n: _seconds(lambda: step(n)))
  length = statistics.median(_seconds(lambda: step(longest)) for _ in range(3))
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(small))  # compiled before it is timed
  one = statistics.median(_seconds(lambda: matmul(small)) for _ in range(5))
  reps = max(1, round(length / one))

  @jax.jit
  def busy(x):
    return jax.lax.fori_loop(0, reps, lambda i, y: jnp.tanh(y @ x), x)
  jax.block_until_ready(busy(small))
  busy_s = statistics.median(_seconds(lambda: busy(small)) for _ in range(3))
  probes = {"idle": lambda: time.sleep(length),
            "matmuls": lambda: jax.block_until_ready(busy(small)),
            "768 MB written": lambda: [jax.block_until_ready(touch(big)) for _ in range(3)]}
  befores = {**{n: (lambda n=n: jax.block_until_ready(step(n))) for n in names}, **probes}
  times: dict = {}
  for _ in range(args.rounds):
    for target in names:
      for before, fn in befores.items():
        ts = []
        for _ in range(8):
          fn()
          t0 = time.perf_counter()
          jax.block_until_ready(step(target))
          ts.append(time.perf_counter() - t0)
        times.setdefault((target, before), []).append(statistics.median(ts))
  ratios = {}
  for target in names:
    alone = statistics.mean(times[target, target])
    ratios[target] = {b: statistics.mean(times[target, b]) / alone for b in befores
                      if b != target}
    say("switch", f"{target} ({alone * 1e3:.1f} ms after itself): " + ", ".join(
        f"after {b} {r:.3f}" for b, r in ratios[target].items()), **{target: ratios[target]})
  say("switch", f"(stand-ins: idle {length * 1e3:.0f} ms, as a {longest} step; matmuls "
      f"{busy_s * 1e3:.0f} ms)", stand_in_s=length, matmuls_s=busy_s)


def bench_pipeline(args):
  """CPU seconds per batch of each demo task's training pipeline (every thread of this
  process), with grain's thread pool and with none: the same batches either way."""
  cfg = config_lib.load(os.path.join(ROOT, "configs/demo.py"))
  exp = experiment.build(cfg)
  cost: dict = {}
  for _ in range(args.rounds):
    for threads in (2, 0):
      with exp.config.unlocked():
        exp.config.data_threads = threads
      for name, it in experiment.train_iterators(exp).items():
        for _ in range(3):  # fill the pool, open the files
          next(it)
        time.sleep(1)  # the pools of the tasks before have filled their buffers
        t0 = time.process_time()
        for _ in range(20):
          next(it)
        cost.setdefault((name, threads), []).append((time.process_time() - t0) / 20)
  names = [t.name for t in exp.tasks]
  ratios = {n: statistics.mean(cost[n, 0]) / statistics.mean(cost[n, 2]) for n in names}
  say("pipeline", "CPU per training batch, no pool / grain's pool of 2 threads: " + ", ".join(
      f"{n} {statistics.mean(cost[n, 0]) * 1e3:.1f} / {statistics.mean(cost[n, 2]) * 1e3:.1f} "
      f"ms = {ratios[n]:.2f}" for n in names),
      ms_no_pool={n: statistics.mean(cost[n, 0]) * 1e3 for n in names},
      ms_pool_2={n: statistics.mean(cost[n, 2]) * 1e3 for n in names}, ratios=ratios)


class ThreadCPU:
  """CPU seconds of this process's threads, sampled from /proc every 0.5 s (Linux), by kind:
  XLA's compute pool, grain's pools, the loop's input thread, the main thread, the rest."""

  def __init__(self):
    self.samples: list = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="bench-cpu")

  def _kind(self, tid: int, comm: str, names: dict) -> str:
    name = names.get(tid, "")
    if "XLA" in comm or "Eigen" in comm:
      return "XLA pool"
    if name.startswith("grain"):
      return "grain pools"
    if name == "mmvit-prefetch":
      return "input thread"
    if tid == os.getpid():
      return "main thread"
    return "other"

  def _run(self):
    tick = os.sysconf("SC_CLK_TCK")
    while not self._stop.is_set():
      names = {t.native_id: t.name for t in threading.enumerate()}
      now = {}
      for tid in os.listdir("/proc/self/task"):
        try:
          with open(f"/proc/self/task/{tid}/comm") as f:
            comm = f.read().strip()
          with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
          continue
        now[int(tid)] = (self._kind(int(tid), comm, names),
                         (int(fields[11]) + int(fields[12])) / tick)
      self.samples.append((time.perf_counter(), now))
      self._stop.wait(0.5)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def cores(self, start_fraction: float = 0.4) -> dict[str, float]:
    """Cores used by each kind over the samples after `start_fraction` of the span (past the
    compiles), and 'idle' of os.cpu_count()."""
    t0, t1 = self.samples[0][0], self.samples[-1][0]
    first = next(s for s in self.samples if s[0] >= t0 + start_fraction * (t1 - t0))
    last = self.samples[-1]
    span = last[0] - first[0]
    out: dict[str, float] = {}
    seen: dict[int, tuple[str, float]] = {}
    for _, now in [s for s in self.samples if s[0] >= first[0]]:
      for tid, (kind, cpu) in now.items():
        seen[tid] = (kind, cpu)  # a thread's last reading, even if it ended before `last`
    for tid, (kind, cpu) in seen.items():
      before = first[1].get(tid, (kind, 0.0))[1]
      out[kind] = out.get(kind, 0.0) + (cpu - before) / span
    out["idle"] = (os.cpu_count() or 1) - sum(out.values())
    return out


def bench_host(args):
  cfg = config_lib.load(os.path.join(ROOT, "configs/demo.py"))
  steps = 300
  # The compiled steps alone, on placed batches, in the run's task mix.
  exp = experiment.build(cfg)
  counts = {}
  for s in range(steps):
    for n in exp.schedule.tasks_at(s):
      counts[n] = counts.get(n, 0) + 1
  rng = np.random.default_rng(0)
  pure = 0.0
  box = {"s": exp.state}  # one state through every task's steps (each donates its input)
  with exp.layout():
    for t in exp.tasks:
      b = random_batch(exp, t, rng)

      def f(t=t, b=b):
        box["s"], m = exp.train_steps[t.name](box["s"], b, jnp.int32(0))
        return m["loss"]
      pure += timed(f, 20) * counts.get(t.name, 0)
    batches = {t.name: random_batch(exp, t, rng) for t in exp.tasks}
  order = [exp.schedule.tasks_at(s)[0] for s in range(steps)]

  def in_order():
    """The same steps in the schedule's order, dispatched back to back as the loop does (it
    blocks only to log): what the loop would take with no host work at all."""
    with exp.layout():
      for s, n in enumerate(order):
        box["s"], m = exp.train_steps[n](box["s"], batches[n], jnp.int32(s))
      return m["loss"]
  jax.block_until_ready(in_order())

  # (input thread, grain threads); None: the default (experiment.data_threads). Two rounds,
  # each also timing the steps in order, since this machine's speed drifts between minutes.
  variants = [(2, None), (2, 2), (0, None)]
  out: dict = {}
  cores: dict = {}  # (depth, threads) -> kind -> cores over the run's last 60%, per round
  ordered = []
  for _ in range(2):
    ordered.append(_seconds(in_order) / steps)
    for depth, threads in variants:
      c = cfg.copy_and_resolve_references()
      with c.unlocked():
        c.prefetch, c.log_every, c.data_threads = depth, steps, threads
      with ThreadCPU() as cpu:
        summary = loop.run(c, None, stop_at=steps)
      out.setdefault((depth, threads), []).append(summary["throughput"]["steps_per_s"])
      for kind, n in cpu.cores().items():
        cores.setdefault((depth, threads), {}).setdefault(kind, []).append(n)
  ordered = statistics.mean(ordered)
  for (depth, threads), rates in out.items():
    wall = statistics.mean(rates)
    timed_steps = steps - len(exp.tasks)  # each task's first step compiles and is excluded
    share = 1 - pure * timed_steps / steps / (timed_steps / wall)
    own = 1 - ordered * wall
    used = experiment.data_threads(ml_collections.ConfigDict(
        dict(prefetch=depth, data_threads=threads)))
    label = f"prefetch={depth}, data_threads={used}" + (" (default)" if threads is None else "")
    say("host", f"demo loop, {label}: {wall:.2f} steps/s (runs: "
        f"{', '.join(f'{r:.2f}' for r in rates)}); share of the loop's time outside compiled "
        f"steps {own:.1%} against the steps in the loop's order ({1 / ordered:.2f} steps/s), "
        f"{share:.1%} against each task's steps alone",
        **{f"share_prefetch_{depth}_threads_{used}": own,
           f"share_vs_tasks_alone_prefetch_{depth}_threads_{used}": share,
           f"steps_per_s_prefetch_{depth}_threads_{used}": wall,
           "steps_per_s_in_order": 1 / ordered})
    use = {k: statistics.mean(v) for k, v in cores[depth, threads].items()}
    say("host", "  CPU over the last 60% of each run, in cores: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(use.items(), key=lambda kv: -kv[1])),
        **{f"cores_prefetch_{depth}_threads_{used}": use})


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--only", default="mfu,ceiling,attention,remat,bf16,bf16_curves,scan,cotrain,"
                 "switch,pipeline,host")
  p.add_argument("--peer", default=None, help="a directory with peer_vit.py (big_vision)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  logging.basicConfig(level=logging.WARNING)
  only = args.only.split(",")
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}", flush=True)
  peak = bench_peak(args)
  for name in ("mfu", "ceiling", "attention", "remat", "bf16", "bf16_curves", "scan", "cotrain",
               "switch", "pipeline", "host"):
    if name in only:
      if name in ("mfu", "ceiling"):
        globals()[f"bench_{name}"](args, peak)
      else:
        globals()[f"bench_{name}"](args)
      if args.out:  # after every section: a later failure keeps what was measured
        with open(args.out, "w") as f:
          json.dump(OUT, f, indent=2)


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
