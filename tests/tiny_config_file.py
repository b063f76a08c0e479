"""tests/tiny.py's config as a --config file, for runs of several processes started through
scripts/launch/local.py:  --config=tests/tiny_config_file.py:KIND[,STEPS]  (digits suite; SGD,
so that rounding differences stay rounding differences, as in tests/mesh_equivalence.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.tiny import tiny_config  # noqa: E402


def get_config(arg="weighted"):
  kind, *rest = arg.split(",")
  cfg = tiny_config(kind, steps=int(rest[0]) if rest else 3)
  cfg.optimizer = dict(name="sgd", lr=0.1, momentum=0.9, warmup_steps=2, lr_schedule="cosine",
                       weight_decay=1e-4, grad_clip_norm=1.0)
  cfg.log_every = 1
  cfg.eval_batch_size = 64
  return cfg
