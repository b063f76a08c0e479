r"""Single-task baseline with the demo's model: `--config=configs/single_task.py:<task>`.

<task> is one of image, video_direction, video_digit, audio. It trains that task alone for the
same number of batches as it gets in the co-training demo, so the two can be compared.
"""

import ml_collections

from configs import demo


def get_config(arg: str = "image"):
  c = demo.get_config("weighted")
  tasks = dict(c.tasks)
  if arg not in tasks:
    # ValueError: the CLI reports it as one line naming the argument (mmvit.config.load).
    raise ValueError(f"argument {arg!r}: expected a task, one of {', '.join(tasks)}")
  c.tasks = ml_collections.ConfigDict({arg: tasks[arg].to_dict()})
  c.schedule = dict(kind="alternating")
  return c
