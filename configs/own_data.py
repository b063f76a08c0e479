r"""Your own data: `--config=configs/own_data.py:KIND,DATASET[,option=value...]`.

KIND is what the dataset holds and what is learnt from it:
  image       images, one class each (a folder `python -m mmvit.data build --images=...`)
  audio       audio clips, one class each (`--audio=...`), log-mel spectrograms
  video       video clips, one class each (`--video=...`)
  av          video clips with their audio track (`--video=... --audio_track`), the two
              streams fused through bottleneck tokens (MBT)
  multilabel  images with several classes each (a manifest with `--multilabel=labels`), mAP
  regression  images with a number each (a manifest with `--targets=COLUMN`; give
              labels=COLUMN), squared error; metrics MSE and MAE in the column's units
  verb_noun   video clips with two label columns (`--labels=verb,noun`), one head each
DATASET is a dataset built with `python -m mmvit.data build --name=DATASET` in data_dir, or
`tfds:NAME[:VERSION]` for a TFDS dataset prepared there. Options (defaults below): size (image
side, px), frames, stride, seconds, rate, bins, fps (of the built video, for av), sync (av:
1 takes the audio at the frames' time, 0 at an independent time), steps, batch, width, depth,
lr, labels (label keys joined by +). Everything else is a field to override: `--config.tasks.main.pp.train=`.

  python -m mmvit.data build --images=~/pets --name=pets
  python -m mmvit.main --config=configs/own_data.py:image,pets --workdir=workdirs/pets
"""

import ml_collections

DEFAULTS = dict(size=32, frames=8, stride=1, seconds=1.0, rate=16000, bins=32, fps=8.0, sync=1,
                steps=300, batch=16, width=64, depth=2, lr=1e-3, labels="")
KINDS = ("image", "audio", "video", "av", "multilabel", "verb_noun", "regression")


def _options(parts):
  out = dict(DEFAULTS)
  for p in parts:
    key, sep, value = p.partition("=")
    if not sep or key not in DEFAULTS:
      raise ValueError(f"option {p!r}: expected key=value with key one of {', '.join(DEFAULTS)}")
    out[key] = type(DEFAULTS[key])(value) if key != "labels" else value
  return out


def image_pp(o) -> dict:
  s = o["size"]
  return dict(train=f"decode|inception_crop({s}, area_min=35)|flip_lr|value_range(-1, 1)",
              eval=f"decode|resize_small({s * 8 // 7})|central_crop({s})|value_range(-1, 1)")


def audio_pp(o, crop: bool = True) -> dict:
  mel = f"log_mel({o['rate']}, bins={o['bins']}, mean=-6.0, std=4.0)"
  crop = f"crop_audio({o['seconds']}, {o['rate']})|" if crop else ""
  return dict(train=f"{crop}time_shift({o['rate'] // 10})|{mel}|spec_augment(2, 10, 2, 4)",
              eval=f"{crop}{mel}")


def video_pp(o, audio: bool = False) -> dict:
  s, n, st = o["size"], o["frames"], o["stride"]
  # With the audio track, one op takes both windows so that they can be synchronous.
  frames = (f"av_window({n}, fps={o['fps']}, seconds={o['seconds']}, rate={o['rate']}, "
            f"stride={st}, sync={bool(o['sync'])})" if audio else f"sample_frames({n}, {st})")
  train = f"{frames}|decode|resize_small({s * 8 // 7})|random_crop({s})|flip_lr|value_range(-1, 1)"
  evl = f"{frames}|decode|resize_small({s * 8 // 7})|central_crop({s})|value_range(-1, 1)"
  if audio:
    a = audio_pp(o, crop=False)
    train, evl = f"{train}|{a['train']}", f"{evl}|{a['eval']}"
  return dict(train=train, eval=evl)


def get_config(arg: str = "image,photos"):
  parts = arg.split(",")
  kind = parts[0]
  if kind not in KINDS or len(parts) < 2 or not parts[1]:
    raise ValueError(f"argument {arg!r}: expected KIND,DATASET[,option=value...] with KIND one "
                     f"of {', '.join(KINDS)}")
  dataset, o = parts[1], _options(parts[2:])
  tok = dict(image=dict(kind="image", patch=(8, 8)),
             video=dict(kind="tubelet", patch=(2, 8, 8)),
             audio=dict(kind="spectrogram", patch=(4, o["bins"])))
  task = dict(dataset=dataset, batch_size=o["batch"], steps=o["steps"], labels="label")
  if kind in ("image", "multilabel", "regression"):
    task.update(modalities="image", pp=image_pp(o))
    if kind == "multilabel":
      task.update(head="multilabel", labels="labels")
    if kind == "regression":  # no flips or crops: they may change what the number measures
      task.update(head="regression", pp=dict(train=image_pp(o)["eval"], eval=image_pp(o)["eval"]))
  elif kind == "audio":
    task.update(modalities="audio", pp=audio_pp(o))
  elif kind in ("video", "verb_noun"):
    task.update(modalities="video", pp=video_pp(o))
    if kind == "verb_noun":
      task.update(head="multihead", labels=("verb", "noun"))
  else:  # av: both streams, exchanging information through 4 bottleneck tokens from layer 1
    task.update(modalities=("video", "audio"), pp=video_pp(o, audio=True),
                fusion=dict(kind="bottleneck", layer=1, tokens=4, shared_weights=True))
  if o["labels"]:
    labels = tuple(o["labels"].split("+"))
    task["labels"] = labels if len(labels) > 1 else labels[0]
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = None  # default: $MMVIT_DATA_DIR or ~/.cache/mmvit/data
  c.model = dict(width=o["width"], depth=o["depth"], num_heads=4, mlp_dim=2 * o["width"],
                 dropout=0.0, attention_dropout=0.0, stochastic_depth=0.0, pool="token",
                 adapter_depth=0, class_token=True,
                 tokenizers={m: tok[m] for m in (task["modalities"] if isinstance(
                     task["modalities"], tuple) else (task["modalities"],))})
  c.tasks = dict(main=task)
  c.schedule = dict(kind="weighted")
  c.total_steps = None
  c.optimizer = dict(name="adamw", lr=o["lr"], warmup_steps=min(50, o["steps"] // 5),
                     lr_schedule="cosine", weight_decay=1e-4, grad_clip_norm=1.0)
  c.eval_every = 0
  c.eval_batch_size = 64
  c.log_every = 50
  c.checkpoint_every = 0
  c.keep_checkpoints = 1
  c.mesh = dict(data=-1)
  return c
