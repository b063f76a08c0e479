"""``python -m mmvit.data build``: a TFDS dataset (array_record, no TensorFlow) from a user's
files, read afterwards exactly like a ``tfds:`` dataset (`tfds_dir.BuiltSource`).

Inputs:
* a folder of images (``.jpg .jpeg .png .webp``), audio (``.wav .flac .ogg``) or video
  (``.mp4 .avi .mkv .webm``): ``ROOT/<class>/<file>`` or ``ROOT/<split>/<class>/<file>``;
* a manifest (``.csv`` or ``.jsonl``) with one path column per modality (``image``, ``audio``,
  ``video``; relative to the manifest's folder), label columns (``--labels=verb,noun``: one
  class each, multi-head; ``--multilabel=labels``: ``;``-separated classes, stored multi-hot)
  and optional ``split`` and ``group`` columns.

Stored features: ``image`` (the file's encoded bytes, decoded by the ``decode`` op), ``audio``
(int16 mono at ``--rate``), ``video`` (JPEG-encoded frames at ``--fps``, shorter side
``--short_side``, as Scenic/DMVR store them) and with ``--audio_track`` the file's own audio as
``audio``; every label column as a ClassLabel (names sorted) or multi-hot float32; ``path``
and ``group`` as text. Without split folders or a split column, files are split by
``--ratios`` with a seeded draw over groups: a group (speaker, source video) never spans two
splits.

The build is atomic (tfds writes into an ``incomplete`` folder, renamed when complete; a failed
build leaves nothing) and deterministic (the same files give the same records). Files are
decoded in ``--workers`` processes. A file that cannot be used is a one-line error naming it
(and its manifest row) before anything is visible; ``--skip_bad`` skips such files, reports
their count and lists them in ``skipped.txt`` beside the dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator

import numpy as np

from mmvit.data.base import SPLITS, TARGET_DOC, DataError

EXTENSIONS = {
    'image': ('.jpg', '.jpeg', '.png', '.webp'),
    'audio': ('.wav', '.flac', '.ogg'),
    'video': ('.mp4', '.avi', '.mkv', '.webm'),
}
SPLIT_ALIASES = {'train': 'train', 'validation': 'validation', 'val': 'validation',
                 'valid': 'validation', 'test': 'test'}


class BuildError(DataError):
  """A file, row or option the build cannot use (one line, naming it)."""

  def __init__(self, message: str):
    # A name from a user's manifest may hold a newline or NUL: escaped, the message stays
    # one line.
    super().__init__(''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


class BadFile(Exception):
  """Raised in a worker for one file; becomes a BuildError or a skipped file."""


@dataclasses.dataclass
class Options:
  name: str
  data_dir: str
  rate: int = 16000
  fps: float | None = None
  short_side: int | None = None
  audio_track: bool = False
  max_seconds: float | None = None
  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0
  workers: int = 0
  skip_bad: bool = False
  version: str = '1.0.0'
  quality: int = 90
  progress: bool = True
  targets: tuple[str, ...] = ()  # manifest columns stored as float32 regression targets


@dataclasses.dataclass
class Item:
  paths: dict[str, str]           # modality -> absolute path
  labels: dict[str, object]       # label key -> class name, a list of names (multi-label),
                                  # or a float (a regression target)
  split: str | None
  group: str
  where: str                      # the file, or 'manifest.csv row 7'
  rel: str = ''                   # the path as stored: relative to the folder or manifest


# ------------------------------------------------------------ inputs -------

def _media_files(folder: str, modality: str) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if os.path.isfile(os.path.join(folder, f)) and not f.startswith('.')
                and f.lower().endswith(EXTENSIONS[modality]))


def scan_folder(root: str, modality: str) -> list[Item]:
  """ROOT/<class>/* or ROOT/<split>/<class>/*; an empty class folder is an error."""
  if not os.path.isdir(root):
    raise BuildError(f'--{modality}={root}: not a folder')
  subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                   and not d.startswith('.'))
  if not subdirs:
    raise BuildError(f'--{modality}={root}: no class folders in it (expected ROOT/<class>/'
                     f'<files> or ROOT/<split>/<class>/<files>)')
  by_split = all(d.lower() in SPLIT_ALIASES for d in subdirs)
  tops = [(SPLIT_ALIASES[d.lower()], os.path.join(root, d)) for d in subdirs] if by_split else [
      (None, root)]
  items = []
  for split, top in tops:
    classes = sorted(d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))
                     and not d.startswith('.'))
    if not classes:
      raise BuildError(f'{top}: no class folders in it')
    for c in classes:
      folder = os.path.join(top, c)
      files = _media_files(folder, modality)
      if not files:
        raise BuildError(f'{folder}: an empty class folder (no {"/".join(EXTENSIONS[modality])} '
                         'files)')
      for f in files:
        path = os.path.join(folder, f)
        items.append(Item({modality: path}, {'label': c}, split, path, path,
                          os.path.relpath(path, root)))
  return items


def _rows(path: str) -> Iterator[tuple[int, dict]]:
  if not path.lower().endswith(('.jsonl', '.csv')):
    raise BuildError(f'--manifest={path}: expected a .csv or .jsonl file')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise BuildError(f'{path} row {line}: not UTF-8 text (byte {e.start})') from None
  if path.lower().endswith('.jsonl'):
    for i, line in enumerate(text.split('\n'), 1):
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise BuildError(f'{path} row {i}: not JSON ({e.msg})') from None
        if not isinstance(row, dict):
          raise BuildError(f'{path} row {i}: expected an object, got {type(row).__name__}')
        yield i, row
  else:
    reader = csv.DictReader(io.StringIO(text, newline=''))
    try:
      for row in reader:
        # Cells beyond the header land under the key None: a row that does not fit.
        if any(str(c).strip() for c in row.pop(None, ())):
          raise BuildError(f'{path} row {reader.line_num}: more cells than the header has '
                           f'columns ({", ".join(reader.fieldnames)})')
        yield reader.line_num, row
    except csv.Error as e:
      raise BuildError(f'{path} row {reader.line_num}: not CSV ({e})') from None


def read_manifest(path: str, labels: tuple[str, ...], multilabel: tuple[str, ...],
                  targets: tuple[str, ...] = ()) -> list[Item]:
  if not os.path.isfile(path):
    raise BuildError(f'--manifest={path}: no such file')
  if not labels and not multilabel and not targets:
    raise BuildError('--labels, --multilabel or --targets: name the manifest\'s label '
                     'column(s)')
  both = sorted(set(targets) & (set(labels) | set(multilabel)))
  if both:
    raise BuildError(f'--targets: column {both[0]!r} is also a class label column')
  base = os.path.dirname(os.path.abspath(path))
  items = []
  for i, row in _rows(path):
    where = f'{path} row {i}'
    paths = {}
    for m in EXTENSIONS:
      v = row.get(m)
      if v not in (None, ''):
        if not isinstance(v, str):
          raise BuildError(f'{where}: column {m!r} must be a path, got {v!r}')
        p = v if os.path.isabs(v) else os.path.join(base, v)
        if not os.path.isfile(p):
          raise BuildError(f'{where}: {m} file {p} does not exist')
        paths[m] = p
    if not paths:
      raise BuildError(f'{where}: no path in any of the columns {", ".join(EXTENSIONS)}')
    lab = {}
    for k in labels:
      v = row.get(k)
      if v is None or str(v).strip() == '':
        raise BuildError(f'{where}: label column {k!r} is empty or missing')
      lab[k] = str(v).strip()
    for k in multilabel:
      v = row.get(k)
      names = v if isinstance(v, list) else str(v if v is not None else '').split(';')
      names = sorted({str(n).strip() for n in names if str(n).strip()})
      if not names:
        raise BuildError(f'{where}: multi-label column {k!r} is empty or missing')
      lab[k] = names
    for k in targets:
      v = row.get(k)
      try:
        lab[k] = float(str(v).strip())
      except ValueError:
        lab[k] = float('nan')
      if not math.isfinite(lab[k]):
        raise BuildError(f'{where}: target column {k!r} is {v!r}, expected a finite number')
    split = row.get('split') or None
    if split is not None:
      if str(split).lower() not in SPLIT_ALIASES:
        raise BuildError(f'{where}: split {split!r} is not one of train, validation, test')
      split = SPLIT_ALIASES[str(split).lower()]
    group = str(row.get('group') or '') or next(iter(paths.values()))
    rel = next(row[m] for m in EXTENSIONS if row.get(m) not in (None, ''))
    items.append(Item(paths, lab, split, group, where, rel))
  if not items:
    raise BuildError(f'--manifest={path}: no rows')
  return items


def class_names(items: list[Item], classes: dict[str, list[str]] | None = None
                ) -> dict[str, list[str]]:
  """Label key -> sorted class names (or the given ones; a label outside them is an error)."""
  found: dict[str, set] = {}
  for it in items:
    for k, v in it.labels.items():
      if not isinstance(v, float):  # regression targets have no classes
        found.setdefault(k, set()).update(v if isinstance(v, list) else [v])
  out = {}
  for k, names in found.items():
    if classes and k in classes:
      unknown = sorted(names - set(classes[k]))
      if unknown:
        bad = next(it for it in items if set(it.labels[k] if isinstance(it.labels[k], list)
                                             else [it.labels[k]]) & set(unknown))
        raise BuildError(f'{bad.where}: label {unknown[0]!r} of {k!r} is not one of the '
                         f'--classes ({", ".join(classes[k])})')
      out[k] = list(classes[k])
    else:
      out[k] = sorted(names)
  return out


def _check_apart(items: list[Item]) -> None:
  """No file and no group in two splits (naming both rows)."""
  for what, keys in (('file', lambda it: it.paths.values()), ('group', lambda it: [it.group])):
    seen: dict[str, Item] = {}
    for it in items:
      for k in keys(it):
        other = seen.setdefault(k, it)
        if other.split != it.split:
          name = k if what == 'file' else f'group {k!r}'
          raise BuildError(f'{name} is in two splits ({other.split}: {other.where}; '
                           f'{it.split}: {it.where})' + (
                               ': a group must stay in one split' if what == 'group' else ''))


def assign_splits(items: list[Item], ratios, seed: int) -> dict[str, list[Item]]:
  """The items' own splits, or a seeded split by `ratios` over groups (no group spans two
  splits); every split keeps its items in input order."""
  given = {it.split for it in items}
  if given != {None}:
    if None in given:
      it = next(it for it in items if it.split is None)
      raise BuildError(f'{it.where}: no split, where other rows have one (give every row a '
                       'split, or none)')
  else:
    groups = sorted({it.group for it in items})
    rng = np.random.default_rng([seed, 0x5B117])
    order = [groups[i] for i in rng.permutation(len(groups))]
    total = sum(ratios)
    n = len(order)
    cut1 = round(n * ratios[0] / total)
    cut2 = cut1 + round(n * ratios[1] / total)
    split_of = {g: ('train' if i < cut1 else 'validation' if i < cut2 else 'test')
                for i, g in enumerate(order)}
    for it in items:
      it.split = split_of[it.group]
  _check_apart(items)
  out = {s: [it for it in items if it.split == s] for s in SPLITS}
  if not out['train']:
    raise BuildError('the train split is empty (too few files or groups for --ratios)')
  return out


# ------------------------------------------------------------ decoding -----

def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    data = f.read()
  if not data:
    raise BadFile('an empty file')
  return data


def load_image(path: str) -> bytes:
  """The file's bytes, after checking that PIL decodes all of it."""
  from PIL import Image  # noqa: PLC0415
  data = _read(path)
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.width < 1 or im.height < 1:
        raise BadFile('an image without pixels')
  except BadFile:
    raise
  except Exception as e:  # noqa: BLE001  (PIL raises many kinds)
    raise BadFile(f'not a decodable image ({type(e).__name__}: {" ".join(str(e).split())[:120]})'
                  ) from None
  return data


def _resample(x: np.ndarray, rate_in: int, rate: int) -> np.ndarray:
  if rate_in == rate:
    return x
  from math import gcd  # noqa: PLC0415

  from scipy import signal  # noqa: PLC0415
  g = gcd(int(rate_in), int(rate))
  return signal.resample_poly(x, rate // g, int(rate_in) // g)


def _to_int16(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(np.asarray(x, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def load_audio(path: str, rate: int, max_seconds: float | None = None) -> np.ndarray:
  """Mono int16 at `rate` Hz (soundfile for wav/flac/ogg, PyAV for the rest)."""
  import soundfile  # noqa: PLC0415
  _read(path)
  try:
    x, rate_in = soundfile.read(path, dtype='float32', always_2d=True)
  except Exception:  # noqa: BLE001  (not a format libsndfile reads: try ffmpeg)
    try:
      x, rate_in = _av_audio(path)
    except BadFile:
      raise
    except Exception as e:  # noqa: BLE001
      raise BadFile(f'not decodable audio ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:120]})') from None
  if x.shape[0] == 0:
    raise BadFile('audio of zero length')
  x = x.mean(axis=1)
  if max_seconds:
    x = x[:int(max_seconds * rate_in)]
  return _to_int16(_resample(x, rate_in, rate))


def _av_audio(path: str, container=None) -> tuple[np.ndarray, int]:
  """(samples, channels) float32 and the rate of a file's first audio stream, via PyAV."""
  import av  # noqa: PLC0415
  own = container is None
  container = container or av.open(path)
  try:
    if not container.streams.audio:
      raise BadFile('no audio stream')
    stream = container.streams.audio[0]
    chunks, rate_in = [], stream.rate or stream.codec_context.sample_rate
    resampler = av.AudioResampler(format='flt', layout='mono', rate=rate_in)
    for frame in container.decode(stream):
      for f in resampler.resample(frame):
        chunks.append(f.to_ndarray().reshape(-1))
    for f in resampler.resample(None):
      chunks.append(f.to_ndarray().reshape(-1))
  finally:
    if own:
      container.close()
  x = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
  return x[:, None].astype(np.float32), int(rate_in)


def load_video(path: str, fps: float | None, short_side: int | None, quality: int,
               audio_rate: int | None, max_seconds: float | None = None):
  """JPEG-encoded frames (an object array of bytes) at `fps` (every frame if None), the
  shorter side resized to `short_side`; and the audio track at `audio_rate` if asked."""
  import av  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  _read(path)
  try:
    container = av.open(path)
  except Exception as e:  # noqa: BLE001
    raise BadFile(f'not a video PyAV can open ({type(e).__name__}: '
                  f'{" ".join(str(e).split())[:120]})') from None
  frames = []
  try:
    if not container.streams.video:
      raise BadFile('no video stream')
    stream = container.streams.video[0]
    next_t = 0.0
    try:
      for frame in container.decode(stream):
        t = float(frame.pts * stream.time_base) if frame.pts is not None else len(frames) / (
            fps or 25.0)
        if max_seconds is not None and t >= max_seconds:
          break
        if fps is not None:
          if t + 1e-6 < next_t:
            continue
          next_t += 1.0 / fps
          while next_t <= t:  # a gap in the stream: the frame stands for the skipped times
            next_t += 1.0 / fps
        img = frame.to_image()
        if short_side:
          w, h = img.size
          r = short_side / min(w, h)
          img = img.resize((max(1, round(w * r)), max(1, round(h * r))), Image.BILINEAR)
        buf = io.BytesIO()
        img.convert('RGB').save(buf, 'JPEG', quality=quality)
        frames.append(buf.getvalue())
    except BadFile:
      raise
    except Exception as e:  # noqa: BLE001
      raise BadFile(f'a video PyAV cannot decode ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:120]})') from None
    if not frames:
      raise BadFile('a video without frames')
    audio = None
    if audio_rate:
      container.seek(0)
      x, rate_in = _av_audio(path, container)
      if x.shape[0] == 0:
        raise BadFile('an audio track of zero length')
      x = x.mean(axis=1)
      if max_seconds:
        x = x[:int(max_seconds * rate_in)]
      audio = _to_int16(_resample(x, rate_in, audio_rate))
  finally:
    container.close()
  out = np.empty((len(frames),), dtype=object)
  out[:] = frames
  return out, audio


def _decode(job):
  """In a worker: one item -> (index, example or None, error or None, content digest)."""
  index, item, opts, names = job
  ex: dict = {}
  digest = hashlib.sha256()
  current = next(iter(item.paths.values()))
  try:
    for m in sorted(item.paths):
      current = item.paths[m]
      if m == 'image':
        ex['image'] = load_image(current)
        digest.update(ex['image'])
      elif m == 'audio':
        ex['audio'] = load_audio(current, opts.rate, opts.max_seconds)
        digest.update(ex['audio'].tobytes())
      else:
        ex['video'], audio = load_video(current, opts.fps, opts.short_side, opts.quality,
                                        opts.rate if opts.audio_track else None,
                                        opts.max_seconds)
        with open(current, 'rb') as f:
          digest.update(f.read())
        if audio is not None:
          ex['audio'] = audio
  except BadFile as e:
    return index, None, f'{current}: {e}', None
  except OSError as e:
    return index, None, f'{current}: cannot read it ({e.strerror or e})', None
  for k, v in item.labels.items():
    if k in opts.targets:
      ex[k] = np.float32(v)
    elif isinstance(v, list):
      hot = np.zeros((len(names[k]),), np.float32)
      hot[[names[k].index(n) for n in v]] = 1.0
      ex[k] = hot
    else:
      ex[k] = names[k].index(v)
  ex['path'] = item.rel
  ex['group'] = item.rel if item.group == next(iter(item.paths.values())) else item.group
  return index, ex, None, digest.hexdigest()


# ------------------------------------------------------------ building -----

def target_stats(train: list[Item], targets) -> dict[str, dict[str, list[float]]]:
  """Target -> mean and std over the train split's rows (the regression head predicts in
  these units, so a target in metres or in milliseconds trains alike)."""
  out = {}
  for k in targets:
    v = np.asarray([it.labels[k] for it in train], np.float64)
    std = float(v.std()) if len(v) else 1.0
    out[k] = {'mean': [float(v.mean()) if len(v) else 0.0], 'std': [std if std > 0 else 1.0]}
  return out

def _features(modalities: set[str], names: dict, multi: set[str], opts: Options):
  import tensorflow_datasets as tfds  # noqa: PLC0415
  f = {}
  if 'image' in modalities:
    f['image'] = tfds.features.Image(shape=(None, None, 3), doc='the file\'s encoded bytes')
  if 'audio' in modalities or ('video' in modalities and opts.audio_track):
    f['audio'] = tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding='zlib',
                                      doc=f'mono int16 at {opts.rate} Hz')
  if 'video' in modalities:
    f['video'] = tfds.features.Tensor(shape=(None,), dtype=np.object_,
                                      doc='JPEG-encoded frames' + (
                                          f' at {opts.fps:g} fps' if opts.fps else ''))
  for k in opts.targets:
    f[k] = tfds.features.Tensor(shape=(), dtype=np.float32, doc=f'{TARGET_DOC} {k}')
  for k, n in names.items():
    if k in multi:
      f[k] = tfds.features.Tensor(shape=(len(n),), dtype=np.float32,
                                  doc='multi-hot of ' + ', '.join(n)[:200])
    else:
      f[k] = tfds.features.ClassLabel(names=n)
  f['path'] = tfds.features.Text(doc='the file, relative to its class or manifest folder')
  f['group'] = tfds.features.Text(doc='items of one group are in one split')
  return tfds.features.FeaturesDict(f)


class _Progress:
  def __init__(self, total: int, what: str, enabled: bool):
    self.total, self.what, self.enabled = total, what, enabled
    self.done, self.t0, self.shown = 0, time.perf_counter(), 0.0

  def step(self):
    self.done += 1
    now = time.perf_counter()
    # On a terminal one line redrawn every second; in a log a line every 30 s.
    tty = sys.stderr.isatty()
    if self.enabled and (now - self.shown > (1.0 if tty else 30.0) or self.done == self.total):
      self.shown = now
      rate = self.done / max(now - self.t0, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      end = '\n' if self.done == self.total or not tty else ''
      start = '\r' if tty else ''
      print(f'{start}{self.what}: {self.done}/{self.total} files, '
            f'{rate:.1f} files/s, ETA {eta:.0f} s', end=end, file=sys.stderr, flush=True)


def build(items: list[Item], opts: Options, multi: set[str] = frozenset(),
          classes: dict[str, list[str]] | None = None) -> dict:
  """Builds dataset `opts.name` into `opts.data_dir`; returns a report (counts, skipped,
  files/s). Raises BuildError with nothing left behind."""
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from mmvit.data import tfds_dir  # noqa: PLC0415

  if not tfds_dir.valid_name(opts.name):
    raise BuildError(f'--name={opts.name!r}: expected lower case letters, digits and _, '
                     'starting with a letter')
  from mmvit.data import registry  # noqa: PLC0415
  if opts.name in registry.names():
    raise BuildError(f'--name={opts.name!r}: a built-in dataset has that name')
  target = os.path.join(opts.data_dir, opts.name, opts.version)
  if os.path.exists(target):
    raise BuildError(f'{target} exists: delete it to rebuild, or give another --version')
  splits = assign_splits(items, opts.ratios, opts.seed)
  names = class_names(items, classes)
  modalities = {m for it in items for m in it.paths}
  features = _features(modalities, names, multi, opts)
  stats = target_stats(splits['train'], opts.targets)
  report = {'name': opts.name, 'version': opts.version, 'splits': {}, 'skipped': [],
            'classes': names, 'targets': stats}
  seen: dict[str, str] = {}  # content digest -> 'split: file', across splits

  def generate(split):
    jobs = [(i, it, opts, names) for i, it in enumerate(splits[split])]
    progress = _Progress(len(jobs), f'{opts.name} {split}', opts.progress)
    if opts.workers > 0:
      ctx = multiprocessing.get_context('spawn')
      pool = ctx.Pool(opts.workers)
      results = pool.imap(_decode, jobs, chunksize=4)
    else:
      pool, results = None, map(_decode, jobs)
    kept = 0
    try:
      for index, ex, err, digest in results:
        progress.step()
        item = splits[split][index]
        if err is not None:
          where = err if item.where in err else f'{err} ({item.where})'
          if not opts.skip_bad:
            raise BuildError(where + '; --skip_bad skips such files')
          report['skipped'].append(where)
          continue
        here = f'{split}: {item.where}'
        if digest in seen and not seen[digest].startswith(f'{split}:'):
          raise BuildError(f'the same file is in two splits ({seen[digest]}; {here})')
        seen.setdefault(digest, here)
        kept += 1
        yield index, ex
    finally:
      if pool is not None:
        pool.terminate()
    report['splits'][split] = kept

  from etils import epath  # noqa: PLC0415

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = opts.name
    VERSION = tfds.core.Version(opts.version)

    # tfds derives `code_path` through `importlib_resources`, which is not installed (and
    # not needed): point it at this file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
      return epath.Path(__file__)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=f'built by python -m mmvit.data build from {len(items)} '
          'files', features=features,
          metadata=tfds.core.MetadataDict(
              class_names=names, rate=opts.rate, fps=opts.fps, short_side=opts.short_side,
              quality=opts.quality, audio_track=opts.audio_track,
              modalities=sorted(modalities), multilabel=sorted(multi), targets=stats))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: generate(s) for s in SPLITS if splits[s]}

    def _generate_examples(self):  # pragma: no cover  (splits come from generate)
      raise NotImplementedError

  existed = set(os.listdir(os.path.join(opts.data_dir, opts.name))) if os.path.isdir(
      os.path.join(opts.data_dir, opts.name)) else None
  t0 = time.perf_counter()
  downloads = os.path.join(opts.data_dir, 'downloads')
  had_downloads = os.path.exists(downloads)
  builder = Builder(data_dir=opts.data_dir, file_format='array_record')
  from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415
  was = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  except BaseException:
    _clean(opts, existed)
    raise
  finally:
    tfds.display_progress_bar(was)
    if not had_downloads:  # tfds makes an empty download folder: nothing is downloaded
      shutil.rmtree(downloads, ignore_errors=True)
  secs = time.perf_counter() - t0
  total = sum(report['splits'].values())
  report['files_per_s'] = (total + len(report['skipped'])) / max(secs, 1e-9)
  report['seconds'] = secs
  if report['skipped']:
    with open(os.path.join(target, 'skipped.txt'), 'w') as f:
      f.write('\n'.join(report['skipped']) + '\n')
  return report


def _clean(opts: Options, existed: set[str] | None) -> None:
  """Removes what a failed build wrote (tfds' incomplete folders), never earlier builds."""
  top = os.path.join(opts.data_dir, opts.name)
  if existed is None:
    shutil.rmtree(top, ignore_errors=True)
    return
  for entry in set(os.listdir(top)) - existed if os.path.isdir(top) else ():
    shutil.rmtree(os.path.join(top, entry), ignore_errors=True)
