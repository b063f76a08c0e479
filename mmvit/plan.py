r"""Plan a run before it runs: build the model and every task's training step on abstract
shapes (no data read, no parameter materialised), compile them for this backend and mesh, and
print per task the parameters its step reads, model GFLOPs, peak memory per device and compile
time.

  python -m mmvit.plan --config=configs/mbt_audioset.py [--config.model.remat=dots]
      [--json=FILE]

Datasets this machine does not hold are declared by their shapes in `config.datasets`
(mmvit.data.synthetic), as the papers' configs do. Compile times are measured without the
persistent compilation cache. On a CPU the compiled memory is the CPU backend's; run it on the
accelerator for that device's figures, and with XLA_FLAGS=--xla_force_host_platform_device_count=N
to see a mesh of N devices from a CPU.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from mmvit import config as config_lib, experiment, sharding, throughput
from mmvit.cli import parse_flags
from mmvit.models.model import count

log = logging.getLogger("mmvit")



def _define_flags():
  """At start-up only: importing mmvit.plan beside mmvit.main (tests) defines no flags."""
  return (flags.DEFINE_string("config", None, "Path to a get_config() file, optionally "
                              "followed by :<argument>. Fields: --config.<field>=VALUE."),
          flags.DEFINE_string("json", None, "also write the table as JSON to this file"))


def abstract_batch(exp, task) -> dict:
  """ShapeDtypeStructs of a global batch of `task`, placed as the run places batches."""
  info = exp.data.dataset_info(task.dataset, exp.config.get("data_dir"))
  shapes = {k: (tuple(s), d) for k, (s, d) in info.features.items() if k in task.input_keys}
  for k, c in zip(task.head.labels, task.head.num_classes):
    shapes[k] = ((c,) if task.head.kind == "multilabel" else (), jnp.int32)
  return {k: jax.ShapeDtypeStruct((task.batch_size,) + s, d,
                                  sharding=sharding.batch_sharding(exp.mesh, 1 + len(s)))
          for k, (s, d) in shapes.items()}


def plan(config, *, devices=None, quiet: bool = False) -> dict[str, dict]:
  """Step key -> {params, model_gflops (the global step's), xla_gflops (XLA's cost analysis of
  one device's program, which counts a scanned body once), argument/output/temp/alias bytes,
  peak_bytes (arguments + outputs - aliased + temporaries, per device), compile_s}; a task
  that runs another's executable (steps.TaskStep) has that executable's XLA figures and its own
  params and model GFLOPs, `shares` naming the other task, and compile_s that of its padded
  heads' resizes (steps.ClassPad), else 0."""
  exp = experiment.build(config, devices=devices, abstract=True)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  keys = ([("accumulated", None)] if exp.accumulated_step is not None else
          [(t.name, t) for t in exp.tasks])
  rows = {}

  def reads(tasks) -> int:  # the parameters the step reads (a member: its own head's)
    return sum(count(exp.state["params"][g])
               for g in sorted({g for t in tasks for g in exp.groups[t.name]}))

  def work_of(tasks) -> throughput.Work:  # the model's FLOPs of the tasks' own heads
    return sum((throughput.task_work(exp.model_spec, t, exp.tokenizer_specs) for t in tasks),
               throughput.Work(0, 0, 0.0))
  with exp.layout():
    for key, task in keys:
      if task is None:
        fn, batch = exp.accumulated_step, {t.name: abstract_batch(exp, t) for t in exp.tasks}
        tasks, pad = exp.tasks, None
      else:
        fn, batch, tasks = exp.train_steps[key], abstract_batch(exp, task), [task]
        pad = fn.pad
        if fn.shares_with:  # the representative's executable: only a padded head's resizes
          rows[key] = {**rows[fn.shares_with], "params": reads(tasks),
                       "model_gflops": work_of(tasks).flops / 1e9,
                       "compile_s": pad.compile() if pad else 0.0, "shares": fn.shares_with}
          continue
      t0 = time.perf_counter()
      compiled = fn.lower(exp.state, batch, step).compile()
      seconds = time.perf_counter() - t0 + (pad.compile() if pad else 0.0)
      mem = compiled.memory_analysis()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      size = throughput.compiled_memory(mem)
      work = work_of(tasks)
      rows[key] = {
          "params": reads(tasks),
          "model_gflops": work.flops / 1e9, "xla_gflops": float(cost.get("flops", 0)) / 1e9,
          **{f"{k}_bytes": v for k, v in size.items()},
          "peak_bytes": throughput.peak_bytes(size),
          "compile_s": seconds}
      if not quiet:
        log.info("planned %s in %.1f s", key, seconds)
  return rows


def table(rows: dict[str, dict], mesh_shape: dict) -> str:
  gib = 2 ** 30
  lines = [f"mesh {mesh_shape} on {jax.device_count()} x {jax.devices()[0].device_kind}",
           f"{'step':24s} {'params':>12s} {'GFLOP/step':>11s} {'XLA GF/dev':>10s} "
           f"{'peak GiB/dev':>12s} {'temp GiB':>9s} {'compile s':>9s}"]
  for k, r in rows.items():
    lines.append(f"{k:24s} {r['params']:12,d} {r['model_gflops']:11.1f} {r['xla_gflops']:10.1f} "
                 f"{r['peak_bytes'] / gib:12.2f} {r['temp_bytes'] / gib:9.2f}"
                 + (f" {'= ' + r['shares']:>9s}" if "shares" in r else f" {r['compile_s']:9.1f}"))
  total = sum(r["compile_s"] for r in rows.values())
  lines.append(f"compile time, all steps: {total:.1f} s")
  return "\n".join(lines)


def main(args, config_flag, json_flag) -> int:
  _, overrides = args
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                      stream=sys.stdout, force=True)
  for noisy in ("absl", "jax", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # Compile times are compile times: the persistent cache would make them loads.
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    config = config_lib.load(config_flag.value, overrides)
    rows = plan(config)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  except experiment.data_lib.DataError as e:
    print(f"data error: {e}", file=sys.stderr)
    return 2
  mesh = dict(sharding.make_mesh(dict(config_lib.complete(config).mesh)).shape)
  print(table(rows, mesh))
  if json_flag.value:
    with open(json_flag.value, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  _flags = _define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(lambda args: main(args, *_flags), flags_parser=parse_flags)
