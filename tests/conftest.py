import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvit import data  # noqa: E402
from tests import jax_cache  # noqa: E402

jax_cache.enable()


@pytest.fixture(scope="session")
def data_dir():
  """The offline suite, built once per machine (MMVIT_DATA_DIR or /tmp/mmvit_test_data)."""
  d = os.environ.get("MMVIT_DATA_DIR") or "/tmp/mmvit_test_data"
  for name in data.DATASETS:
    data.ensure_built(name, d)
  return d
