r"""Issue 13's accelerator figures in one short run, for a machine lent with a GPU or TPU: the
papers' ViT-B steps in bfloat16 with the fused attention kernel, their MFU, and memory per
remat policy.

  python scripts/bench_accelerator.py --out=$OUT/accelerator.json [--batch=32] [--budget=420]
  python scripts/bench_accelerator.py --tiny      # a dry run of every case on a CPU

Cases, in order (each is skipped once --budget seconds have passed, and the JSON is written
after every case, so a cut-off run keeps what it measured):
* MBT ViT-B/16 (configs/mbt_audioset.py: 8 x 224^2 frames + 800 x 128 log-mel, bottleneck
  fusion from layer 8), scanned, bfloat16, `cudnn` attention on GPUs (`xla` elsewhere):
  compile seconds, XLA's compiled memory (temporaries, peak per device), the device's peak
  bytes in use so far, step time (median of 5), TFLOP/s per device and MFU;
* PolyViT ViT-B/16 (configs/polyvit_9tasks.py): its Kinetics-400 and ImageNet steps alone;
* the MBT step under each remat policy (full, dots, qkv_mlp), then with `xla` attention and
  in float32, each also as ratios to the first row.
A case that does not fit reports the error's first line. Batches are random (the configs
declare their datasets' shapes), --batch examples per step, on one device.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

# bench.py defaults JAX_PLATFORMS to cpu for its CPU figures; here JAX picks the accelerator.
os.environ.setdefault("JAX_PLATFORMS", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from bench import Stepper  # noqa: E402
from mmvit import config as config_lib, throughput  # noqa: E402

OUT: dict = {}
TINY = dict(width=64, depth=2, num_heads=2, mlp_dim=128)


def load(path: str, tasks: tuple[str, ...], batch: int, tiny: bool, **model):
  c = config_lib.load(os.path.join(ROOT, path))
  with c.unlocked():
    c.tasks = {k: v for k, v in c.tasks.items() if k in tasks}
    c.datasets = {k: v for k, v in c.datasets.items() if k in {t.dataset for t in
                                                                c.tasks.values()}}
    for t in c.tasks.values():
      t.batch_size = batch
    c.schedule = dict(kind="task_by_task")
    c.mesh = dict(data=1)
    c.compilation_cache_dir = ""
    c.model.update(scan=True, **(TINY if tiny else {}), **model)
    for t in c.tasks.values():
      if tiny and t.get("fusion"):
        t.fusion.layer = 1
  return c


def case(name: str, cfg, task: str, peak: float) -> dict:
  t0 = time.perf_counter()
  s = Stepper(cfg, task)  # builds, places a random batch and compiles the step
  compile_s = time.perf_counter() - t0
  size = throughput.compiled_memory(s.compiled.memory_analysis())
  for _ in range(2):
    jax.block_until_ready(s())
  times = []
  for _ in range(5):
    t1 = time.perf_counter()
    loss = jax.block_until_ready(s())
    times.append(time.perf_counter() - t1)
  step = statistics.median(times)
  rates = throughput.summary(s.work, step, 1, 1, peak)
  stats = jax.devices()[0].memory_stats() or {}
  gib = 2 ** 30
  row = {"compile_s": compile_s, "step_s": step, "loss": float(loss),
         "temp_gib": size["temp"] / gib,
         "peak_gib": throughput.peak_bytes(size) / gib,
         "device_peak_so_far_gib": stats.get("peak_bytes_in_use", 0) / gib,
         "tflops_per_device": rates["tflops_per_device"], "mfu": rates["mfu"]}
  print(f"{name:34s} compile {compile_s:6.1f} s  step {step * 1e3:8.1f} ms  "
        f"{row['tflops_per_device']:7.1f} TFLOP/s  MFU {row['mfu']:6.1%}  temp "
        f"{row['temp_gib']:6.2f} GiB  peak {row['peak_gib']:6.2f} GiB (device's peak so far "
        f"{row['device_peak_so_far_gib']:.2f})", flush=True)
  del s
  gc.collect()
  jax.clear_caches()
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--budget", type=float, default=420.0)
  p.add_argument("--tiny", action="store_true", help="tiny widths: a dry run on a CPU")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  start = time.perf_counter()
  dev = jax.devices()[0]
  peak, source = throughput.device_peak_tflops(dev)
  gpu = dev.platform == "gpu"
  kernel = "cudnn" if gpu else "xla"
  print(f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}); peak "
        f"{peak:.1f} TFLOP/s ({source}); batch {args.batch}; attention {kernel}", flush=True)
  OUT["device"] = {"kind": dev.device_kind, "platform": dev.platform, "peak_tflops": peak,
                   "peak_source": source, "batch": args.batch}
  mbt = ("configs/mbt_audioset.py", ("audioset",))
  poly = "configs/polyvit_9tasks.py"

  def mbt_case(dtype, attention, remat):
    return (f"mbt {'bf16' if dtype == 'bfloat16' else 'f32'} {attention} remat={remat}", *mbt,
            "audioset", dict(dtype=dtype, attention=attention, remat=remat))
  # The issue's figures first (both papers' steps with the fused kernel), then the policies,
  # then the comparisons, so a tight budget cuts the least needed.
  cases = [mbt_case("bfloat16", kernel, "none")]
  cases += [(f"polyvit {t} bf16 {kernel}", poly, (t,), t,
             dict(dtype="bfloat16", attention=kernel, remat="none"))
            for t in ("kinetics400", "imagenet")]
  cases += [mbt_case("bfloat16", kernel, r) for r in ("full", "dots", "qkv_mlp")]
  cases += [mbt_case("bfloat16", "xla", "none"), mbt_case("float32", "xla", "none")]
  seen: set = set()  # off GPUs the kernel is xla already: that row once
  cases = [c for c in cases if not (c[0] in seen or seen.add(c[0]))]
  for name, path, tasks, task, model in cases:
    if time.perf_counter() - start > args.budget:
      print(f"{name:34s} skipped: past the {args.budget:.0f} s budget", flush=True)
      OUT[name] = {"skipped": "budget"}
      continue
    try:
      OUT[name] = case(name, load(path, tasks, args.batch, args.tiny, **model), task, peak)
    except Exception as e:  # noqa: BLE001  (out of memory, a kernel this device lacks)
      line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      print(f"{name:34s} failed: {line}", flush=True)
      OUT[name] = {"error": line}
      gc.collect()
      jax.clear_caches()
    if args.out:
      with open(args.out, "w") as f:
        json.dump(OUT, f, indent=2)
  base = OUT.get(f"mbt bf16 {kernel} remat=none", {})
  if "step_s" in base:
    for name, row in OUT.items():
      if name.startswith("mbt") and "step_s" in row:
        row["step_vs_bf16_none"] = row["step_s"] / base["step_s"]
        row["temp_vs_bf16_none"] = (row["temp_gib"] / base["temp_gib"]
                                    if base["temp_gib"] else float("nan"))
        print(f"{name:34s} step x{row['step_vs_bf16_none']:.3f}, temporaries "
              f"x{row['temp_vs_bf16_none']:.3f} of bf16 {kernel} remat=none", flush=True)
  print(f"total {time.perf_counter() - start:.0f} s", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(OUT, f, indent=2)


if __name__ == "__main__":
  main()
