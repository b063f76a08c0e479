"""A tiny config for the trainer's tests: three tasks, two modalities of video, 2 layers."""

import ml_collections


def tiny_config(kind="weighted", steps=4, **overrides):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = None
  c.model = dict(width=32, depth=2, num_heads=2, mlp_dim=64, dropout=0.1,
                 attention_dropout=0.0, stochastic_depth=0.1, pool="token", adapter_depth=0,
                 class_token=True,
                 tokenizers=dict(image=dict(kind="image", patch=(8, 8)),
                                 video=dict(kind="tubelet", patch=(4, 16, 16)),
                                 audio=dict(kind="spectrogram", patch=(16, 16))))
  c.tasks = dict(
      image=dict(dataset="digits_image", modalities="image", labels="label", batch_size=8,
                 steps=steps),
      video_digit=dict(dataset="digits_video", modalities="video", labels="digit",
                       batch_size=8, steps=steps + 1),
      audio=dict(dataset="digits_audio", modalities="audio", labels="label", batch_size=8,
                 steps=steps + 2, lr=3e-3, warmup_steps=2, loss_weight=0.5))
  c.schedule = dict(kind=kind)
  c.total_steps = None
  c.optimizer = dict(name="adamw", lr=1e-3, warmup_steps=2, lr_schedule="cosine",
                     weight_decay=1e-2, grad_clip_norm=1.0)
  c.eval_every = 0
  c.eval_batch_size = 32
  c.log_every = 0
  c.checkpoint_every = 0
  c.keep_checkpoints = 2
  c.mesh = dict(data=-1)
  for k, v in overrides.items():
    c[k] = v
  return c


def declared_config(**overrides):
  """The tiny config's three tasks on declared (synthetic) datasets of the suite's shapes,
  one of them multi-label."""
  cfg = tiny_config(**overrides)
  cfg.datasets = dict(
      images=dict(features=dict(image=((32, 32, 1), "float32")), num_classes=dict(label=10)),
      clips=dict(features=dict(video=((8, 32, 32, 1), "float32")), num_classes=dict(digit=10),
                 splits=dict(train=5_000, test=100)),
      sounds=dict(features=dict(spectrogram=((64, 32, 1), "float32")),
                  num_classes=dict(label=527), multilabel=True))
  cfg.tasks.image.dataset = "images"
  cfg.tasks.video_digit.dataset = "clips"
  cfg.tasks.audio.dataset = "sounds"
  cfg.tasks.audio.head = "multilabel"
  cfg.test_split = "test"
  cfg.eval_split = "test"
  return cfg
