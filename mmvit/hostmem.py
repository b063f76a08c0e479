"""Host memory on a CPU-only run: freed memory is kept for the next step, not handed back.

XLA:CPU allocates each step's temporaries afresh (245 MB for a demo video step), from its
worker threads. glibc serves such a request with mmap and returns it with munmap, so every
step touches new pages: 12,350 minor page faults per audio step of the demo and 59,942 per
video step (measured 2026-12-07, 2-core VM). With one arena, no mmap and no trimming, the
heap keeps the memory and the next step reuses it: no faults, and audio, image and video
steps took 0.69, 0.66 and 0.65 of their time. The faults were also what made a step slower
right after a step of another task (co-training): audio 1.31x after a video step, 1.00x
without them. See docs/performance.md.

Settings change only allocations made after them, and the arena limit only binds threads that
have not allocated yet, so `import mmvit` applies them, before JAX starts its threads.
Accelerator hosts keep glibc's defaults: one arena would serialise a multi-threaded input
pipeline's allocations, and there the step's memory is the device's. The cost: the process
keeps its peak heap (it would reach it again at the next step). `MMVIT_HOST_MALLOC=default`
turns this off.

Trimming is turned off outright (-1), not set to the largest threshold mallopt takes (2^31 - 1):
a ViT-S step at batch 32 holds 4.1 GB of temporaries, and a freed block above the threshold
was trimmed, so every such step faulted all of it in again (1.1 million faults per step).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

applied = False  # whether configure() changed the allocator in this process


def cpu_only() -> bool:
  """Whether JAX will run on the CPU alone, decided without starting a backend:
  JAX_PLATFORMS names only cpu, or no TPU or GPU plugin is installed."""
  named = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if named:
    return all(p == "cpu" for p in named)
  if importlib.util.find_spec("libtpu") is not None:
    return False
  return not any(m.name.startswith(("jax_cuda", "jax_rocm"))
                 for m in pkgutil.iter_modules())


def configure() -> bool:
  """Keeps freed memory for reuse on a CPU-only run with glibc (see the module's docstring).
  Returns whether it applied."""
  global applied
  if applied:
    return True
  if os.environ.get("MMVIT_HOST_MALLOC", "keep") == "default" or not cpu_only():
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    return False
  applied = bool(mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_MAX, 0)
                 and mallopt(M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))
  return applied
