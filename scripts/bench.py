r"""Speed and memory figures, all measured in one run and printed as ratios:

  uv run python scripts/bench.py [--config=configs/demo.py] [--steps=30]

* per-task train step time (compiled, blocked on the result) and examples/s;
* co-training overhead: the mean step time of a co-training run that switches task every step,
  against the mean of the same steps run task by task (both after warm-up);
* accumulated step time against the sum of one step of every task;
* checkpoint save: time the training thread is blocked by an async Orbax save, against one step;
* achieved GFLOP/s of the train step (XLA cost analysis) and its fraction of a given peak.
Inputs are random arrays of the real datasets' shapes (dataset_info), so nothing is read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmvit import checkpointing, config as config_lib, data as data_lib, sharding, train  # noqa: E402


def load_config(spec: str):
  """The CLI's own loader (one-line errors); a relative file is taken from the repository."""
  file, colon, arg = spec.partition(":")
  return config_lib.load(os.path.join(ROOT, file) + colon + arg)


def random_batch(exp, task, rng):
  info = data_lib.dataset_info(task.dataset, exp.config.get("data_dir"))
  b = {k: rng.standard_normal((task.batch_size,) + tuple(shape)).astype(np.float32)
       for k, (shape, _) in info.features.items() if k in task.input_keys}
  for k, c in zip(task.head.labels, task.head.num_classes):
    b[k] = rng.integers(0, c, task.batch_size).astype(np.int32)
  return sharding.shard_batch(b, exp.mesh)


def timed(fn, n):
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--peak_gflops", type=float, default=150.0,
                 help="the device's matmul peak (CPU here: about 150 GFLOP/s)")
  args = p.parse_args()
  try:
    cfg = load_config(args.config)
    exp = train.build(cfg)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  rng = np.random.default_rng(0)
  batches = {t.name: random_batch(exp, t, rng) for t in exp.tasks}
  state = {"s": exp.state}
  step_no = jnp.int32(0)

  def step(name):
    state["s"], m = exp.train_steps[name](state["s"], batches[name], step_no)
    return m["loss"]

  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; config {args.config}")
  with jax.set_mesh(exp.mesh):
    per_task = {}
    for t in exp.tasks:
      step(t.name)  # compile
      med, _ = timed(lambda n=t.name: step(n), args.steps)
      lowered = exp.train_steps[t.name].lower(state["s"], batches[t.name], step_no)
      cost = lowered.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      gflops = float(cost["flops"]) / 1e9
      per_task[t.name] = med
      print(f"step {t.name:18s} {med * 1e3:8.1f} ms  {t.batch_size / med:8.0f} ex/s  "
            f"{gflops / med:6.1f} GFLOP/s = {gflops / med / args.peak_gflops:5.1%} of peak")

    names = [t.name for t in exp.tasks]
    blocked = statistics.mean(per_task.values())
    mixed, _ = timed(lambda it=iter(names * args.steps): step(next(it)), args.steps * len(names))
    print(f"co-training overhead: switching task every step {mixed * 1e3:.1f} ms/step vs "
          f"{blocked * 1e3:.1f} ms/step task by task: ratio {mixed / blocked:.3f}")

    if exp.accumulated_step is None:
      cfg_acc = load_config(args.config.split(":")[0] + ":accumulated")
      acc_exp = train.build(cfg_acc)
    else:
      acc_exp = exp
    acc_batches = {t.name: random_batch(acc_exp, t, rng) for t in acc_exp.tasks}
    acc_state = {"s": acc_exp.state}

    def acc_step():
      acc_state["s"], m = acc_exp.accumulated_step(acc_state["s"], acc_batches, step_no)
      return m["loss"]
    acc_step()
    acc, _ = timed(acc_step, args.steps)
    print(f"accumulated step {acc * 1e3:.1f} ms vs sum of one step per task "
          f"{sum(per_task.values()) * 1e3:.1f} ms: ratio {acc / sum(per_task.values()):.3f}")

    with tempfile.TemporaryDirectory() as tmp:
      ckpt = checkpointing.Checkpointer(tmp, keep=2)
      its = {t.name: {"next_index": 0} for t in exp.tasks}
      saves = []
      for i in range(5):
        step(names[0])
        jax.block_until_ready(state["s"])
        t0 = time.perf_counter()
        ckpt.save(i + 1, state["s"], its, {"step": i + 1}, force=True)
        saves.append(time.perf_counter() - t0)
        ckpt.wait()
      ckpt.close()
    save = statistics.median(saves)
    print(f"async checkpoint save blocks the training thread {save * 1e3:.1f} ms = "
          f"{save / blocked:.2f} steps (median of 5)")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(exp.state["params"]))
    print(f"parameters: {n_params:,}")


if __name__ == "__main__":
  main()
