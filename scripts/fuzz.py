r"""Fuzz configs and data records; count the cases and the unclear errors (the goal is 0):

  uv run python scripts/fuzz.py [--configs=2000] [--records=2000] [--seed=0]
"""

import argparse
import os
import random
import sys
from collections import Counter

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvit import train  # noqa: E402
from tests import fuzzing  # noqa: E402
from tests.fakes import FakeData  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--configs", type=int, default=2000)
  p.add_argument("--records", type=int, default=2000)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  rng = random.Random(args.seed)
  outcome, unclear = Counter(), []
  for _ in range(args.configs):
    d, what, words = fuzzing.config_case(rng)
    ok, msg = fuzzing.run_config_case(d)
    outcome["config accepted" if msg == "<accepted>" else "config rejected"] += 1
    if not (ok and fuzzing.message_is_clear(msg, words)):
      unclear.append(f"config {what} -> {msg}")
  exp = train.build(tiny_config(), data=FakeData())
  for _ in range(args.records):
    task, batch, what, words = fuzzing.record_case(rng, exp, FakeData())
    ok, msg = fuzzing.run_record_case(exp, task, batch)
    outcome["record rejected" if msg != "<accepted>" else "record accepted"] += 1
    if not ok or msg == "<accepted>" or not fuzzing.message_is_clear(msg, words):
      unclear.append(f"record {what} -> {msg}")
  for line in unclear[:30]:
    print("UNCLEAR", line)
  print(f"configs tried: {args.configs}, records tried: {args.records}; "
        f"{dict(outcome)}; unclear errors: {len(unclear)}")
  return 1 if unclear else 0


if __name__ == "__main__":
  sys.exit(main())
