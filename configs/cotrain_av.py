r"""A fusion task co-trained beside unimodal tasks on one shared encoder:
av_digits (bottleneck fusion of video and audio) with image digits, video digit and spoken
digits, weighted schedule. `--config=configs/cotrain_av.py`."""

import ml_collections

from configs import av, demo


def get_config(arg: str = "weighted"):
  c = demo.get_config(arg)
  fusion = av.get_config("av_digits,bottleneck,2,4")
  c.model.stochastic_depth = 0.0
  tasks = {k: v for k, v in c.tasks.to_dict().items() if k in ("image", "video_digit", "audio")}
  tasks["av_digits"] = fusion.tasks.av.to_dict()
  tasks["av_digits"]["steps"] = 1000
  c.tasks = ml_collections.ConfigDict(tasks)
  return c
