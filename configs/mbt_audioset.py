r"""MBT on AudioSet at the paper's scale (US20230177384A1): ViT-B/16 streams for 8 RGB frames
of 224^2 and an 800 x 128 log-mel spectrogram, fused through 4 bottleneck tokens from layer 8.

  python -m mmvit.plan --config=configs/mbt_audioset.py          # compile and size every step
  python -m mmvit.plan --config=configs/mbt_audioset.py --config.model.remat=dots

The seed's recipe: batch 64, synchronous SGD with momentum 0.9, base lr 0.5 with a cosine
schedule and 2.5 epochs of warm-up, 50 epochs on AS-500K (about 500,000 clips), mixup 0.3,
stochastic depth 0.3, and 4 temporal views at test time with their logits averaged.

AudioSet is not on this machine: `datasets` declares its shapes (mmvit.data.synthetic), so the
planner and the benchmark run on random batches of them. To train for real, build the clips
into `data_dir` (docs/data.md) under the same name and delete the `datasets` entry. Tubelets
of 2 x 16 x 16 give 4 x 14 x 14 = 784 video tokens; 16 x 16 spectrogram patches 50 x 8 = 400.
"""

import ml_collections

CLIPS = 500_000  # AS-500K
BATCH = 64
EPOCHS = 50


def get_config(arg: str = "bottleneck"):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.datasets = dict(audioset=dict(
      features=dict(video=((8, 224, 224, 3), "float32"),
                    spectrogram=((800, 128, 1), "float32")),
      num_classes=dict(labels=527), multilabel=True,
      splits=dict(train=CLIPS, validation=1_024, test=18_000)))
  c.model = dict(
      width=768, depth=12, num_heads=12, mlp_dim=3072, dropout=0.0, attention_dropout=0.0,
      stochastic_depth=0.3, pool="token", class_token=True, posemb_includes_cls=True,
      dtype="bfloat16", param_dtype="float32", attention="xla", remat="none",
      tokenizers=dict(video=dict(kind="tubelet", patch=(2, 16, 16)),
                      audio=dict(kind="spectrogram", patch=(16, 16))))
  kind = {"bottleneck": "bottleneck", "late": "late", "joint": "joint",
          "full_pairwise": "full_pairwise"}[arg]
  c.tasks = dict(audioset=dict(
      dataset="audioset", modalities=("video", "audio"), head="multilabel", labels="labels",
      batch_size=BATCH, epochs=EPOCHS, mixup=dict(alpha=0.3), eval_views=4,
      fusion=dict(kind=kind, layer=12 if kind == "late" else 8, tokens=4, shared_weights=True)))
  c.schedule = dict(kind="task_by_task")
  c.total_steps = None
  c.optimizer = dict(name="sgd", lr=0.5, momentum=0.9, lr_schedule="cosine",
                     warmup_steps=int(2.5 * CLIPS / BATCH), grad_clip_norm=1.0)
  c.eval_every = 10_000
  c.eval_batch_size = 64
  c.log_every = 100
  c.checkpoint_every = 2_000
  c.mesh = dict(data=-1)
  return c
