"""CLI: flags -> config -> train.run(config, workdir). Nothing else.

  python -m mmvit.main --config=configs/demo.py --workdir=/tmp/demo [--config.seed=1 ...]
Rerunning the same command continues from the latest checkpoint in the workdir.
"""

from __future__ import annotations

import logging
import os
import sys


from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Resume a workdir whose checkpoints were written by another config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                      stream=sys.stdout, force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from mmvit import checkpointing, config as config_lib, data as data_lib, train  # noqa: PLC0415
  try:
    summary = train.run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW.value)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  except data_lib.DataError as e:
    print(f"data error: {e}", file=sys.stderr)
    return 2
  except (checkpointing.WorkdirError, checkpointing.CheckpointError) as e:
    print(f"checkpoint error: {e}", file=sys.stderr)
    return 2
  except train.NonFiniteError as e:
    print(f"training stopped: {e}", file=sys.stderr)
    return 3
  if summary["preempted"] is not None:
    print(f"preempted: saved step {summary['preempted']} to "
          f"{os.path.join(os.path.abspath(_WORKDIR.value), 'checkpoints')}; rerun to resume")
    return 0
  print("test accuracy per task:")
  for task, res in summary["test"].items():
    main_metric = res.get("top1", res.get("mAP", res.get("joint_top1")))
    print(f"  {task:24s} {main_metric:.4f}  ({', '.join(f'{k}={v:.4f}' for k, v in res.items() if k != 'num_examples')})")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
