"""Seeded generators of hostile configs and data records, shared by tests/test_fuzz.py and
scripts/fuzz.py. A case is *clear* when it is accepted, or rejected with a one-line
ConfigError/DataError that names the field (or the task, key and record) at fault."""

import copy
import random

import numpy as np

from mmvit import config as config_lib, data as data_lib, train
from tests.fakes import FakeData
from tests.tiny import tiny_config

BAD_VALUES = ["abc", -1, -7, 0, 0.5, None, [1], {"x": 1}, True, 10**9, float("nan"), ""]
SKIP = {"data_dir"}  # free-form


def leaves(d, prefix=()):
  for k, v in d.items():
    if isinstance(v, dict) and v:
      yield from leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def set_path(d, path, value):
  for k in path[:-1]:
    d = d[k]
  d[path[-1]] = value


def config_case(rng: random.Random):
  """-> (config dict, description, words that a clear message must contain one of)."""
  base = tiny_config().to_dict()
  paths = [p for p, _ in leaves(base) if p[-1] not in SKIP]
  kind = rng.choice(["value", "value", "value", "unknown_key", "patch", "empty_tasks",
                     "zero_weights", "ratios"])
  d = copy.deepcopy(base)
  if kind == "value":
    path = rng.choice(paths)
    value = rng.choice(BAD_VALUES)
    set_path(d, path, value)
    return d, f"{'.'.join(path)}={value!r}", [path[-1]]
  if kind == "unknown_key":
    subs = [()] + [p for p, v in leaves(base) if False] + [("model",), ("optimizer",),
                                                            ("tasks", "image"), ("schedule",)]
    where = rng.choice(subs)
    target = d
    for k in where:
      target = target[k]
    name = f"bogus_{rng.randint(0, 99)}"
    target[name] = 1
    return d, f"unknown key {'.'.join(where + (name,))}", [name]
  if kind == "patch":
    mod = rng.choice(["image", "video", "audio"])
    n = {"image": 2, "video": 3, "audio": 2}[mod]
    patch = tuple(rng.choice([3, 5, 6, 7, 9, 12]) for _ in range(n))
    d["model"]["tokenizers"][mod]["patch"] = patch
    return d, f"model.tokenizers.{mod}.patch={patch}", ["patch"]
  if kind == "empty_tasks":
    d["tasks"] = {}
    return d, "tasks={}", ["tasks"]
  if kind == "zero_weights":
    for t in d["tasks"].values():
      t["loss_weight"] = 0.0
    return d, "all loss weights 0", ["loss_weight"]
  d["schedule"] = {"kind": "ratios", "ratios": {t: 0.0 for t in d["tasks"]}}
  return d, "ratios summing to 0", ["ratios"]


def run_config_case(d) -> tuple[bool, str]:
  """(clear?, message)."""
  import ml_collections  # noqa: PLC0415
  try:
    cfg = ml_collections.ConfigDict(d)
    train.prepare(cfg, data=FakeData())
  except (config_lib.ConfigError, data_lib.DataError) as e:
    return True, str(e)
  except Exception as e:  # noqa: BLE001  (anything else is an unclear error)
    return False, f"{type(e).__name__}: {e}"
  return True, "<accepted>"


def message_is_clear(msg: str, words) -> bool:
  return msg == "<accepted>" or ("\n" not in msg and any(w in msg for w in words))


RECORD_MUTATIONS = ("shape", "dtype", "nan", "inf", "label_high", "label_negative",
                    "label_dtype", "missing_key")


def record_case(rng: random.Random, exp, data):
  """A batch of one task with one hostile record -> (task, batch, description, words)."""
  task = rng.choice(exp.tasks)
  from tests.fakes import make_batch  # noqa: PLC0415
  batch = make_batch(task.dataset, task.batch_size, [rng.randint(0, 9999)])
  key = task.input_keys[0]
  label = task.head.labels[0]
  i = rng.randrange(task.batch_size)
  kind = rng.choice(RECORD_MUTATIONS)
  if kind == "shape":
    batch[key] = batch[key][..., :-1]
  elif kind == "dtype":
    batch[key] = batch[key].astype(np.int16)
  elif kind in ("nan", "inf"):
    batch[key][i].flat[rng.randrange(batch[key][i].size)] = np.nan if kind == "nan" else np.inf
  elif kind == "label_high":
    batch[label][i] = task.head.num_classes[0] + rng.randint(0, 5)
  elif kind == "label_negative":
    batch[label][i] = -rng.randint(1, 5)
  elif kind == "label_dtype":
    batch[label] = batch[label].astype(np.float32)
  else:
    del batch[key]
  words = [key if not kind.startswith("label") else label]
  if kind in ("nan", "inf", "label_high", "label_negative"):
    words = [f"record {i}"]
  return task, batch, f"{task.name}: {kind}", words


def run_record_case(exp, task, batch) -> tuple[bool, str]:
  try:
    train.check_batch(task, batch, exp.tokenizer_specs, 0)
  except data_lib.DataError as e:
    return True, str(e)
  except Exception as e:  # noqa: BLE001
    return False, f"{type(e).__name__}: {e}"
  return True, "<accepted>"
