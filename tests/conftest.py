import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Tests build the same tiny models many times; a persistent compilation cache turns the
# repeated compiles into lookups.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "mmvit_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
