r"""PolyViT at the paper's scale (WO2023059737A1): one ViT-B/16 co-trained on 9 tasks over
image, video and audio, one head per task, the weighted task schedule.

  python -m mmvit.plan --config=configs/polyvit_9tasks.py

The nine datasets are those of the PolyViT paper: ImageNet-1k, CIFAR-10, CIFAR-100,
Oxford-IIIT Pets and RESISC45 (images, 224^2, 196 patches + class token); Kinetics-400 and
Moments in Time (8 frames of 224^2, tubelets of 2 x 16 x 16: 784 tokens); AudioSet (527
labels, multi-label) and VGGSound (800 x 128 log-mel, 16 x 16 patches: 400 tokens). None is on
this machine: `datasets` declares their shapes (mmvit.data.synthetic) for the planner and
the benchmark; replace an entry by a built dataset of that name to train on it. Batch 64 per
task, one epoch of each and the split sizes are this config's choices where the seed gives
none; the weighted schedule then samples tasks in proportion to their training sets.
"""

import ml_collections

IMAGE = ((224, 224, 3), "float32")
VIDEO = ((8, 224, 224, 3), "float32")
AUDIO = ((800, 128, 1), "float32")
# name: (modality, input, classes, train size, multilabel)
TASKS = {
    "imagenet": ("image", IMAGE, 1000, 1_281_167, False),
    "cifar10": ("image", IMAGE, 10, 50_000, False),
    "cifar100": ("image", IMAGE, 100, 50_000, False),
    "pets": ("image", IMAGE, 37, 3_680, False),
    "resisc45": ("image", IMAGE, 45, 18_900, False),
    "kinetics400": ("video", VIDEO, 400, 215_000, False),
    "moments": ("video", VIDEO, 339, 791_000, False),
    "audioset": ("audio", AUDIO, 527, 500_000, True),
    "vggsound": ("audio", AUDIO, 309, 170_000, False),
}
KEYS = {"image": "image", "video": "video", "audio": "spectrogram"}


def get_config(arg: str = "weighted"):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.datasets = {name: dict(features={KEYS[m]: x}, num_classes=dict(label=n),
                           multilabel=ml, splits=dict(train=size, validation=1_024,
                                                      test=1_024))
                for name, (m, x, n, size, ml) in TASKS.items()}
  c.model = dict(
      width=768, depth=12, num_heads=12, mlp_dim=3072, dropout=0.0, attention_dropout=0.0,
      stochastic_depth=0.1, pool="token", class_token=True,
      dtype="bfloat16", param_dtype="float32", attention="xla", remat="none",
      tokenizers=dict(image=dict(kind="image", patch=(16, 16)),
                      video=dict(kind="tubelet", patch=(2, 16, 16)),
                      audio=dict(kind="spectrogram", patch=(16, 16))))
  # One epoch of each task: the weighted schedule samples tasks by their training sets.
  c.tasks = {name: dict(dataset=name, modalities=m, batch_size=64, steps=size // 64,
                        head="multilabel" if ml else "multiclass")
             for name, (m, _, _, size, ml) in TASKS.items()}
  c.schedule = dict(kind=arg)
  c.total_steps = None
  c.optimizer = dict(name="sgd", lr=0.1, momentum=0.9, lr_schedule="cosine",
                     warmup_steps=2_500, grad_clip_norm=1.0)
  c.eval_every = 10_000
  c.eval_batch_size = 64
  c.log_every = 100
  c.checkpoint_every = 2_000
  c.mesh = dict(data=-1)
  # The five image tasks run one compiled step, as do the two video tasks: their heads are
  # padded to the widest (1,000 and 400 classes) with the extra classes masked. Audio's two
  # differ in head kind (multi-label AudioSet, softmax VGGSound): 4 programs for 9 tasks.
  c.share_steps = "pad_classes"
  return c
