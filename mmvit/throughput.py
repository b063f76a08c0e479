"""How much work a step does and how close it runs to the hardware: analytic FLOPs per task
(as MaxText's `calculate_tflops_training_per_device`), device peaks, and MFU.

Model FLOPs count the matmuls of the forward pass (2 per multiply-add) and three times that for
a training step (forward, and the backward pass's two matmuls per forward matmul). Element-wise
work, the optimizer and rematerialised recomputation are not model FLOPs: MFU says how much of
the peak goes to the model's own arithmetic. tests/test_throughput.py checks the count against
XLA's cost analysis of a compiled step.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peaks per chip, TFLOP/s (vendors' datasheets; GPUs without sparsity).
# Matched in order against jax.Device.device_kind, lower-cased.
PEAK_TFLOPS = (
    ("tpu v6 lite", 918.0), ("tpu v6e", 918.0),
    ("tpu v5p", 459.0),
    ("tpu v5 lite", 197.0), ("tpu v5e", 197.0),
    ("tpu v4", 275.0),
    ("h200", 989.0), ("h100", 989.0),
    ("a100", 312.0),
)


def block_flops(n_query: int, n_keys: int, width: int, mlp_dim: int) -> int:
  """Forward matmul FLOPs of one pre-LN block per example: q and the output projection on the
  queries, k and v on the keys, logits and the weighted sum, and the MLP."""
  d = width
  return 2 * (2 * n_query * d * d + 2 * n_keys * d * d + 2 * n_query * n_keys * d
              + 2 * n_query * d * mlp_dim)


def forward_flops(spec, tokenizers: list, fusion, head, pool: str) -> int:
  """Forward matmul FLOPs per example of a task: `tokenizers` are its streams' TokenizerSpecs
  (in modality order), `fusion` its FusionSpec or None, `head` its HeadSpec."""
  d, m = spec.width, spec.mlp_dim
  sizes = [t.num_tokens for t in tokenizers]
  total = sum(2 * t.num_patches * t.patch_dim * d for t in tokenizers)
  # modality blocks before and after the shared ones, and the task's blocks: each stream alone
  extra = spec.adapter_depth + spec.post_adapter_depth + spec.task_depth
  total += extra * sum(block_flops(n, n, d, m) for n in sizes)
  kind = "late" if fusion is None or len(sizes) == 1 else fusion.kind
  fuse_from = spec.depth if kind == "late" else fusion.layer
  for layer in range(spec.depth):
    if layer < fuse_from:
      total += sum(block_flops(n, n, d, m) for n in sizes)
    elif kind == "bottleneck":
      total += sum(block_flops(n + fusion.tokens, n + fusion.tokens, d, m) for n in sizes)
    elif kind == "full_pairwise":
      total += sum(block_flops(n, sum(sizes), d, m) for n in sizes)
    else:  # joint
      total += block_flops(sum(sizes), sum(sizes), d, m)
  heads = len(sizes) if pool == "token" else 1
  if pool == "map":  # one probe query over every stream's patch tokens
    total += block_flops(1, sum(t.num_patches for t in tokenizers), d, m)
  rep = getattr(head, "pre_logits", 0)
  total += heads * 2 * ((rep or d) * sum(head.num_classes) + d * rep)
  return total


@dataclasses.dataclass(frozen=True)
class Work:
  """What one training step of a task (or the accumulated step of all) processes."""
  examples: int
  tokens: int
  flops: float  # model FLOPs of the whole (global) step

  def __add__(self, other: Work) -> Work:
    return Work(self.examples + other.examples, self.tokens + other.tokens,
                self.flops + other.flops)


def task_work(spec, task, tokenizer_specs: dict) -> Work:
  toks = [tokenizer_specs[m] for m in task.modalities]
  pool = task.head.pool or spec.pool
  per_example = forward_flops(spec, toks, task.fusion, task.head, pool)
  return Work(task.batch_size, task.batch_size * sum(t.num_tokens for t in toks),
              3.0 * per_example * task.batch_size)


def device_peak_tflops(device=None) -> tuple[float, str]:
  """(peak TFLOP/s of one device, where the figure comes from). CPUs: measured float32 matmul
  throughput of this process's device (a few tens of ms, once per process)."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for name, peak in PEAK_TFLOPS:
    if name in kind:
      return peak, f"{device.device_kind} bf16 datasheet"
  if device.platform == "cpu":
    return measured_cpu_peak() / 1e12, "measured f32 matmul on this CPU"
  return float("nan"), f"unknown device {device.device_kind!r}: set config.peak_tflops"


_CPU_PEAK: list[float] = []


def measured_cpu_peak() -> float:
  """This CPU's float32 matmul FLOP/s, measured once per process (512^2, about 50 ms)."""
  if not _CPU_PEAK:
    _CPU_PEAK.append(matmul_flops_per_s(512, 0.05))
  return _CPU_PEAK[0]


def matmul_flops_per_s(n: int, seconds: float) -> float:
  """FLOP/s of a chain of 8 n x n float32 matmuls on this process's first CPU device, best of
  the rounds that fit in `seconds` (at least one)."""
  cpu = jax.local_devices(backend="cpu")[0]  # this process's own
  a = jax.device_put(jnp.ones((n, n), jnp.float32) / n, cpu)

  @jax.jit
  def chain(x, a):
    for _ in range(8):
      x = x @ a
    return x
  jax.block_until_ready(chain(a, a))
  best, spent = 0.0, 0.0
  while spent < seconds or best == 0.0:
    t0 = time.perf_counter()
    jax.block_until_ready(chain(a, a))
    dt = time.perf_counter() - t0
    spent += dt
    best = max(best, 8 * 2 * n ** 3 / dt)
  return best


def compiled_memory(analysis) -> dict[str, int]:
  """Bytes per device of a compiled step's arguments, outputs, temporaries and the outputs
  aliased to (donated) arguments, from XLA's memory_analysis(); 0 where a backend omits one."""
  return {k: int(getattr(analysis, f"{k}_size_in_bytes", 0) or 0)
          for k in ("argument", "output", "temp", "alias")}


def peak_bytes(sizes: dict[str, int]) -> int:
  """A compiled step's peak per device: what it holds at once (aliased outputs reuse their
  arguments' buffers)."""
  return sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]


def summary(work: Work, seconds: float, steps: int, devices: int, peak_tflops: float) -> dict:
  """Rates over `steps` steps that did `work` in all in `seconds`."""
  if seconds <= 0 or not steps:
    return {}
  tflops = work.flops / seconds / 1e12 / devices
  return {"steps_per_s": steps / seconds, "examples_per_s": work.examples / seconds,
          "tokens_per_s": work.tokens / seconds, "tflops_per_device": tflops,
          "mfu": tflops / peak_tflops if peak_tflops == peak_tflops and peak_tflops else
          float("nan")}
