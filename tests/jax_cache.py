"""One persistent compilation cache for the tests and the processes they start: they build the
same tiny models many times, and a cache turns repeated compiles into lookups."""

import os
import tempfile

import jax


def directory() -> str:
  return os.path.join(tempfile.gettempdir(), "mmvit_test_jax_cache")


def enable():
  jax.config.update("jax_compilation_cache_dir", directory())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
