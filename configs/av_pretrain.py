r"""Unimodal pretraining of the two AV streams, for `configs/av.py:...,pretrained`.

  python -m mmvit.main --config=configs/av_pretrain.py --workdir=workdirs/av/pretrain

MBT starts every stream from a pretrained ViT (ImageNet-21K in the seed). Here the one shared
encoder is co-trained (PolyViT) on two unimodal tasks over av_multilabel's train clips: the
video stream names the digit shown, the audio stream the digit spoken. No fusion and no label
of av_digits or av_xor is seen; the test splits of all AV datasets hold other scans and
speakers than any train split.
"""

import ml_collections

from configs import av

STEPS = {"shown": 1500, "spoken": 1000}


def get_config(arg: str = "av_multilabel"):
  c = av.get_config(f"{arg},video")
  c.tasks = ml_collections.ConfigDict({
      name: dict(dataset=arg, modalities=mod, labels=name, head="multiclass", batch_size=32,
                 steps=STEPS[name])
      for name, mod in (("shown", "video"), ("spoken", "audio"))})
  c.schedule = dict(kind="weighted")
  c.checkpoint_every = 500
  return c
