"""What `python -m mmvit.data inspect NAME` shows of a dataset: per split the records, class
balance and stored input shapes and durations, and a contact sheet (PNG) of examples as the
model sees them (a pp string) or as stored, with their label names."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np

from mmvit import data as data_lib
from mmvit.data import registry

SAMPLE = 64  # records read per split for shapes and durations


def _class_names(builder, key) -> list[str] | None:
  f = builder.info.features[key]
  if hasattr(f, 'names'):
    return list(f.names)
  meta = builder.info.metadata or {}
  return list((meta.get('class_names') or {}).get(key) or []) or None


def _shape_of(key, value, rate, fps) -> str:
  from PIL import Image  # noqa: PLC0415
  if isinstance(value, (bytes, bytearray)):
    with Image.open(io.BytesIO(value)) as im:
      return f'{im.height}x{im.width}'
  v = np.asarray(value)
  if v.dtype == object and v.ndim == 1:  # encoded frames
    return f'{len(v)} frames' + (f' ({len(v) / fps:.1f} s)' if fps else '')
  if key == 'audio' and v.ndim == 1 and rate:
    return f'{len(v) / rate:.2f} s'
  return 'x'.join(map(str, v.shape)) or 'scalar'


def summary(name: str, data_dir: str | None = None) -> list[str]:
  """Lines: per split, each label's class balance and each input's shapes or durations."""
  builder = data_lib._builder(name, data_dir)  # pylint: disable=protected-access
  source = registry.get(name)
  meta = builder.info.metadata or {}
  rate, fps = meta.get('rate'), meta.get('fps')
  labels = source.label_keys(builder)
  lines = []
  for split in builder.info.splits.keys():
    records = data_lib.data_source(name, split, data_dir)
    n = len(records)
    counts: dict[str, Counter] = {k: Counter() for k in labels}
    shapes: dict[str, Counter] = {}
    step = max(1, n // SAMPLE)
    for i in range(n):
      r = records[i]
      for k in labels:
        v = np.asarray(r[k])
        if v.ndim == 0:
          counts[k][int(v)] += 1
        else:
          for j in np.nonzero(v)[0]:
            counts[k][int(j)] += 1
      if i % step == 0:
        for k, v in r.items():
          if k in labels or k in ('path', 'group') or isinstance(v, (str, int)):
            continue
          shapes.setdefault(k, Counter())[_shape_of(k, v, rate, fps)] += 1
    for k in labels:
      names = _class_names(builder, k)
      parts = [f'{names[c] if names and c < len(names) else c} {m} ({100 * m / max(n, 1):.0f}%)'
               for c, m in sorted(counts[k].items())]
      lines.append(f'  {split:10s} {k}: ' + ', '.join(parts))
    for k, c in shapes.items():
      secs = [float(x.split()[0]) for x in c.elements() if x.endswith(' s')]
      if secs and len(c) > 4:  # durations: their range
        common = f'{min(secs):.2f}-{max(secs):.2f} s, mean {np.mean(secs):.2f} s'
      else:
        common = ', '.join(f'{s} x{m}' for s, m in c.most_common(4)) + (
            f' (+{len(c) - 4} more)' if len(c) > 4 else '')
      lines.append(f'  {split:10s} {k}: {common} (of {sum(c.values())} sampled)')
  return lines


def _panel(key, v, rate):
  """A 2-D or RGB image of one feature (None where it is not an input)."""
  from PIL import Image  # noqa: PLC0415
  from mmvit.data import ops  # noqa: PLC0415
  if isinstance(v, (bytes, bytearray)):
    with Image.open(io.BytesIO(v)) as im:
      return np.asarray(im.convert('RGB'))
  v = np.asarray(v)
  if v.dtype == object and v.ndim == 1 and len(v):  # encoded frames: a strip of up to 8
    idx = np.linspace(0, len(v) - 1, min(8, len(v))).astype(int)
    frames = [np.asarray(Image.open(io.BytesIO(bytes(v[i]))).convert('RGB')) for i in idx]
    return np.concatenate(frames, axis=1)
  if v.ndim == 1 and v.size > 100 and key == 'audio':  # a waveform: its log-mel
    spec = ops.parse(f'log_mel({rate or 16000}, bins=64)')[0]({'audio': v})['spectrogram']
    return spec[..., 0].T[::-1]
  if v.ndim == 4:  # (T, H, W, C): a strip
    idx = np.linspace(0, len(v) - 1, min(8, len(v))).astype(int)
    return np.concatenate(list(v[idx]), axis=1)
  if v.ndim == 3 and key == 'spectrogram' or (v.ndim == 3 and v.shape[-1] == 1 and
                                                v.shape[0] != v.shape[1]):
    return v[..., 0].T[::-1]
  if v.ndim == 3:
    return v
  return None


def _show(x):
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  return x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x


def contact_sheet(name: str, path: str, data_dir: str | None = None, split: str = 'train',
                  n: int = 8, pp: str | None = None) -> str:
  """A PNG of `n` examples of `split`, one row each: every input (images; video frames as a
  strip; audio and spectrograms as log-mel images), titled with the label names. With `pp`
  (an eval pp string) the examples are shown after it, as the model sees them."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from mmvit.data import ops  # noqa: PLC0415

  builder = data_lib._builder(name, data_dir)  # pylint: disable=protected-access
  source = registry.get(name)
  labels = source.label_keys(builder)
  rate = (builder.info.metadata or {}).get('rate')
  records = data_lib.data_source(name, split, data_dir)
  chosen = np.linspace(0, len(records) - 1, min(n, len(records))).astype(int)
  steps = ops.parse(pp, 'eval') if pp else []
  rows = []
  for i in chosen:
    r = records[int(i)]
    title = []
    for k in labels:
      v, names = np.asarray(r[k]), _class_names(builder, k)
      ids = [int(v)] if v.ndim == 0 else [int(j) for j in np.nonzero(v)[0]]
      title.append(f'{k}=' + '+'.join(names[j] if names and j < len(names) else str(j)
                                      for j in ids))
    for op in steps:
      r = op(r)
    panels = [(k, p) for k, v in r.items() if k not in labels and k not in ('path', 'group')
              for p in [_panel(k, v, rate)] if p is not None]
    rows.append((' '.join(title), panels))
  cols = max(1, max(len(p) for _, p in rows))
  fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.0 * len(rows)),
                           squeeze=False)
  for (title, panels), ax_row in zip(rows, axes):
    for j, ax in enumerate(ax_row):
      ax.axis('off')
      if j < len(panels):
        k, p = panels[j]
        ax.imshow(_show(p), cmap='magma' if np.asarray(p).ndim == 2 else None, aspect='auto')
        ax.set_title(f'{title}  [{k}]' if j == 0 else f'[{k}]', fontsize=7)
  fig.suptitle(f'{name} {split}' + (f' after pp {pp}' if pp else ' as stored'), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
