"""Hostile configs and data records: every case is accepted or rejected with one line naming
the field, or the task, key and record, at fault (seeded, so failures reproduce)."""

import random

from mmvit import train
from tests import fuzzing
from tests.fakes import FakeData
from tests.tiny import tiny_config


def test_fuzzed_configs_give_one_line_errors_naming_the_field():
  rng = random.Random(0)
  unclear, rejected = [], 0
  for _ in range(300):
    d, what, words = fuzzing.config_case(rng)
    ok, msg = fuzzing.run_config_case(d)
    rejected += msg != "<accepted>"
    if not (ok and fuzzing.message_is_clear(msg, words)):
      unclear.append(f"{what} -> {msg}")
  assert not unclear, "\n".join(unclear[:20])
  assert rejected > 200


def test_fuzzed_records_give_one_line_errors_naming_task_key_and_record():
  exp = train.build(tiny_config(), data=FakeData())
  rng = random.Random(1)
  unclear = []
  for _ in range(300):
    task, batch, what, words = fuzzing.record_case(rng, exp, FakeData())
    ok, msg = fuzzing.run_record_case(exp, task, batch)
    if not ok or msg == "<accepted>" or not fuzzing.message_is_clear(msg, words) or \
        f"task {task.name}" not in msg:
      unclear.append(f"{what} -> {msg}")
  assert not unclear, "\n".join(unclear[:20])
