"""Offline "digits" suite: image, video and audio datasets read with grain.

Three TFDS datasets (array_record files, built locally on first use, never
downloaded, no TensorFlow needed):

* ``digits_image``: sklearn's 8x8 digit scans upsampled to 32x32; ``label``.
* ``digits_video``: 8-frame clips of a scan moving in one of 8 directions;
  ``direction`` and ``digit``. A split's clips come only from the same split's
  scans of ``digits_image``.
* ``digits_audio``: "zero".."nine" spoken by espeak-ng voices with background
  noise; ``label``. Validation/test speakers (espeak-ng variants) are absent
  from train.

Audio-visual datasets (`AV_DATASETS`, for fusion): a 12-frame 32x32 clip of a
scan and 1.5 s of a spoken digit (a split's scans and speakers come only from
the same split of digits_image / digits_audio). The model sees an 8-frame
window ``video`` (8, 32, 32, 1) and the log-mel ``spectrogram`` (64, 32, 1) of
1.0 s of audio (random, synchronous or not, in training; central or
``views`` aligned crops in evaluation):

* ``av_digits``: the same digit shown (noisy, occluded) and spoken (low SNR);
  ``label``. Each modality alone is only partly recognisable.
* ``av_xor``: independent digits; ``label`` = parity(shown) XOR
  parity(spoken), balanced: chance from any single modality.
* ``av_multilabel``: independent digits; ``labels`` = multi-hot float32 (10,)
  of {shown, spoken}.

Each split is ``train`` / ``validation`` / ``test``. Data live in
``<data_dir>/<name>/<version>/`` with ``data_dir`` defaulting to
``$MMVIT_DATA_DIR`` or ``~/.cache/mmvit/data``. Builds take a file lock and tfds
publishes a finished dataset with an atomic rename, so concurrent processes
are safe.

    it = train_iterator('digits_image', batch_size=64, seed=0)
    batch = next(it)                # {'image': (64,32,32,1) f32, 'label': (64,) i32}
    state = it.get_state()          # ... later: it.set_state(state)
    for b in eval_batches('digits_image', split='test', batch_size=256):
      ...                           # b['mask'] marks real (non-padding) rows
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  import grain

__all__ = [
    'AV_DATASETS', 'DATASETS', 'DataError', 'DatasetInfo', 'check_split',
    'data_source', 'dataset_info',
    'default_data_dir', 'ensure_built', 'eval_batches', 'num_examples', 'train_iterator',
]

AV_DATASETS: tuple[str, ...] = ('av_digits', 'av_xor', 'av_multilabel')
DATASETS: tuple[str, ...] = ('digits_image', 'digits_video',
                             'digits_audio') + AV_DATASETS
SPLITS: tuple[str, ...] = ('train', 'validation', 'test')

_log = logging.getLogger(__name__)


class DataError(ValueError):
  """A dataset of the suite is unknown, missing, empty or misused."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset looks like after preprocessing.

  Attributes:
    name: dataset name (one of `DATASETS`).
    splits: split name -> number of examples (from the built data).
    features: key -> (shape, dtype) of one preprocessed element (no batch dim;
      eval batches add a boolean 'mask').
    num_classes: label key -> number of classes (from the built data).
  """

  name: str
  splits: dict[str, int]
  features: dict[str, tuple[tuple[int, ...], np.dtype]]
  num_classes: dict[str, int]


def default_data_dir() -> str:
  """``$MMVIT_DATA_DIR`` or ``~/.cache/mmvit/data`` (user-expanded)."""
  return os.path.abspath(os.path.expanduser(
      os.environ.get('MMVIT_DATA_DIR', '~/.cache/mmvit/data')))


def _resolve(name: str, data_dir: str | os.PathLike | None) -> tuple[str, str]:
  if not isinstance(name, str) or name not in DATASETS:
    raise DataError(
        f'unknown dataset {name!r}: expected one of {", ".join(DATASETS)}')
  if data_dir is None:
    data_dir = default_data_dir()
  return name, os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


# ------------------------------------------------------------ building -----

_LOCK = threading.RLock()
_BUILDERS: dict[tuple[str, str], Any] = {}
_INFOS: dict[tuple[str, str], DatasetInfo] = {}


@contextlib.contextmanager
def _file_lock(path: str):
  with open(path, 'a+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(builder) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  was_active = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    tfds.display_progress_bar(was_active)


def _builder(name: str, data_dir: str | os.PathLike | None):
  """The tfds builder of a built, checked dataset (building it if absent)."""
  name, data_dir = _resolve(name, data_dir)
  key = (name, data_dir)
  with _LOCK:
    if key in _BUILDERS:
      return _BUILDERS[key]
    from mmvit.data import builders  # pylint: disable=g-import-not-at-top

    cls = builders.BUILDERS[name]

    def make():
      return cls(data_dir=data_dir, file_format='array_record')

    def prepared(builder) -> bool:
      # tfds writes into an `incomplete.*` dir and renames it when done, so a
      # version dir with its dataset_info.json is a finished build.
      return os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json'))

    try:
      builder = make()
      if not prepared(builder):
        os.makedirs(data_dir, exist_ok=True)
        with _file_lock(os.path.join(data_dir, f'.{name}.lock')):
          builder = make()  # another process may have built it meanwhile
          if not prepared(builder):
            t0 = time.perf_counter()
            _prepare(builder)
            _log.info('built %s in %s in %.1f s', name, data_dir,
                      time.perf_counter() - t0)
            builder = make()
            _report_fingerprints(builder)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      msg = ' '.join(str(e).split())[:300]
      raise DataError(
          f'{name}: could not build/read it in {data_dir}: '
          f'{type(e).__name__}: {msg}') from e
    splits = builder.info.splits
    for split in SPLITS:
      n = splits[split].num_examples if split in splits else 0
      if n <= 0:
        raise DataError(
            f'{name}: split {split!r} is missing or empty in {builder.data_dir}'
            ' (delete that directory to rebuild)')
    _BUILDERS[key] = builder
    return builder


def _split_fingerprints(builder) -> dict[str, dict]:
  """Per split: number of records, fingerprint, the reference build's fingerprint."""
  from mmvit.data import fingerprints  # pylint: disable=g-import-not-at-top

  version = str(builder.info.version)
  out = {}
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    out[split] = {'records': len(source),
                  'fingerprint': fingerprints.split_fingerprint(source),
                  'reference': fingerprints.expected(builder.name, version, split)}
  return out


def _report_fingerprints(builder) -> None:
  """Fingerprints of every split of a fresh build, logged, and compared with the reference
  build's (fingerprints.EXPECTED): a mismatch is one warning line, not an error."""
  from mmvit.data import fingerprints  # pylint: disable=g-import-not-at-top

  found = _split_fingerprints(builder)
  version = str(builder.info.version)
  for split, r in found.items():
    fingerprints.check(builder.name, version, split, r['fingerprint'])
  _log.info('%s %s fingerprints: %s', builder.name, version,
            ' '.join(f'{s}={r["fingerprint"]}' for s, r in found.items()))


def inspect(name: str, data_dir: str | None = None) -> dict[str, dict]:
  """Per split: number of records, fingerprint, the reference build's fingerprint."""
  return _split_fingerprints(_builder(name, data_dir))


def ensure_built(name: str, data_dir: str | None = None) -> None:
  """Builds dataset `name` into `data_dir` unless it is already there.

  Raises:
    DataError: unknown name, failed build, or a missing/empty split.
  """
  _builder(name, data_dir)


def data_source(name: str, split: str, data_dir: str | None = None):
  """The raw tfds array_record data source of a split (random access, numpy).

  Elements are the stored examples (e.g. uint8 images plus metadata such as
  the source scan ``id`` / ``source_id`` or the audio ``speaker``), in file
  order. Builds the dataset if needed.
  """
  builder = _builder(name, data_dir)
  base = split.split('[', 1)[0]
  if base not in builder.info.splits:
    raise DataError(
        f'{name}: unknown split {split!r} (have: '
        f'{", ".join(builder.info.splits.keys())})')
  try:  # a slice in tfds' syntax, e.g. 'train[:10%]' or 'train[100:600]'
    return builder.as_data_source(split=split)
  except (ValueError, AssertionError) as e:
    msg = ' '.join(str(e).split())[:200]
    raise DataError(f'{name}: split {split!r} is not a split or a slice of one such as '
                    f"'train[:10%]' ({msg})") from None


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
  """Records in a split or a slice of one ('train[:10%]')."""
  return len(data_source(name, split, data_dir))


def check_split(name: str, split: str, data_dir: str | None = None) -> None:
  """Reads the first record of every file of a split and its last record.

  Cheap (the index of a file is read when it opens), and a truncated or corrupt
  file then fails at start-up rather than when the split is first read (the
  test split: after all of training).

  Raises:
    DataError: naming the dataset, split and file.
  """
  builder = _builder(name, data_dir)
  source = data_source(name, split, data_dir)
  firsts, start = [], 0
  for f in builder.info.splits[split].file_instructions:
    if f.take > 0:
      firsts.append((start, f.filename))
      start += f.take
  if not firsts or len(source) != start:
    raise DataError(f'{name}: split {split!r} has no records in {builder.data_dir} '
                    '(delete that directory to rebuild)')
  for index, filename in firsts + [(start - 1, firsts[-1][1])]:
    try:
      source[index]
    except Exception as e:  # pylint: disable=broad-except
      msg = ' '.join(str(e).split())[:200]
      raise DataError(
          f'{name}: split {split!r}: cannot read record {index} of {filename} '
          f'({type(e).__name__}: {msg}); delete {builder.data_dir} to rebuild'
      ) from None


@functools.cache
def _records_in_memory(name: str, split: str, data_dir: str) -> tuple[dict, ...]:
  """Every stored record of a split, read once per process (shared by the tasks that read
  the split). Records are never written to: the transforms build new arrays."""
  source = data_source(name, split, data_dir)
  return tuple(source.__getitems__(range(len(source))))


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
  """Split sizes, preprocessed feature shapes and class counts of `name`."""
  name, data_dir = _resolve(name, data_dir)
  key = (name, data_dir)
  with _LOCK:
    if key in _INFOS:
      return _INFOS[key]
  from mmvit.data import preprocess  # pylint: disable=g-import-not-at-top

  builder = _builder(name, data_dir)
  info = builder.info
  element = data_source(name, 'train', data_dir)[0]
  for t in preprocess.eval_transforms(name):
    element = t.map(element)
  result = DatasetInfo(
      name=name,
      splits={s: int(info.splits[s].num_examples) for s in SPLITS},
      features={k: (tuple(np.shape(v)), np.asarray(v).dtype)
                for k, v in element.items()},
      num_classes={k: _num_classes(info.features[k])
                   for k in preprocess.LABEL_KEYS[name]},
  )
  with _LOCK:
    _INFOS[key] = result
  return result


def _num_classes(feature) -> int:
  # ClassLabel, or a multi-hot Tensor (num_classes,).
  if hasattr(feature, 'num_classes'):
    return int(feature.num_classes)
  return int(feature.shape[-1])


# ------------------------------------------------------------ pipelines ----

def _read_options():
  import grain  # pylint: disable=g-import-not-at-top

  # Small pools: this runs on 2-core machines next to the training process.
  return grain.ReadOptions(num_threads=2, prefetch_buffer_size=128)


def _check_int(what: str, value: Any, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < lo or (hi is not None and value > hi)):
    bound = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    raise DataError(f'{what} must be an int {bound}, got {value!r}')
  return int(value)


def train_iterator(name: str, *, batch_size: int, seed: int,
                   data_dir: str | None = None, split: str = 'train',
                   augment: dict | None = None,
                   cache: bool = False) -> grain.DatasetIterator:
  """Infinite, shuffled, batched iterator over a split (default 'train').

  Each epoch is reshuffled; order and augmentations are a deterministic
  function of `seed` (and of the element's position in the stream); batches
  drop no examples within an epoch boundary but the stream is cut into full
  batches (drop_remainder). The returned grain iterator supports
  `get_state()` / `set_state(state)`: restoring a state into a fresh iterator
  built with the same arguments yields exactly the batches that followed it.

  AV datasets (`AV_DATASETS`) always crop a random window of every clip: video
  frames [t_v, t_v + 8) with t_v uniform in 0..4 of the 12, and 1.0 s of the
  1.5 s audio from t_a = t_v / 12 * 1.5 s (``sync``, default) or from an
  independent uniform t_a in [0, 0.5 s] (``sync=False``).

  Args:
    name: one of `DATASETS`.
    batch_size: examples per batch (>= 1).
    seed: pipeline seed in [0, 2**32 - 1].
    data_dir: data directory (default: `default_data_dir()`).
    split: split to read.
    cache: hold the split's stored records in memory (as big_vision's `cache_raw`): reading
      and unpacking records was half of the pipeline's time here (64 shifted digits_video
      clips: 19.9 ms per batch read, 9.2 ms cached). Batches are the same with or without.
    augment: None or a dict; each dataset accepts a subset of these keys
      (`preprocess.AUGMENT_KEYS`), others raise DataError:
      'noise_std' (float >= 0): Gaussian noise added to every float input;
      'max_shift' (int px; image/video/AV): random translation;
      'time_shift' (int samples; digits_audio): random circular waveform shift;
      'speed' (float in [0, 0.5]; digits_audio): tempo and pitch scaled by a factor
      uniform in [1 - speed, 1 + speed] (after 'time_shift');
      'crop' (int px in [0, 16]; image/video/AV): pad then random crop back;
      'flip' (bool; image/video/AV): random horizontal flip (digits_video
      mirrors its `direction` label too);
      'color_jitter' (float in [0, 1]; image/video/AV): per-clip brightness
      offset in [-s, s] and contrast factor in [1 - s, 1 + s];
      'spec_augment' (dict with int keys time_masks, time_width, freq_masks,
      freq_width; digits_audio/AV): bands of the normalised spectrogram set to
      0 (after 'noise_std');
      'sync' (bool, default True; AV): see above.
      Every clip draws one set of values, the same for all its frames.

  Yields:
    dict[str, np.ndarray] with the keys of `dataset_info(name).features`, each
    with a leading batch dimension.
  """
  import grain  # pylint: disable=g-import-not-at-top
  from mmvit.data import preprocess  # pylint: disable=g-import-not-at-top

  name, data_dir = _resolve(name, data_dir)
  batch_size = _check_int('batch_size', batch_size, 1)
  seed = _check_int('seed', seed, 0, 2**32 - 1)
  try:
    augment = preprocess.validate_augment(name, augment)
  except ValueError as e:
    raise DataError(f'{name}: {e}') from e
  source = (_records_in_memory(name, split, data_dir) if cache else
            data_source(name, split, data_dir))

  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  for t in preprocess.train_transforms(name, augment):
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else (
        ds.map(t))
  ds = ds.to_iter_dataset(_read_options())
  ds = ds.batch(batch_size, drop_remainder=True)
  return iter(ds)


@dataclasses.dataclass(frozen=True)
class _WithMask:
  mask: bool

  def __call__(self, element):
    return {**element, 'mask': np.bool_(self.mask)}


def eval_batches(name: str, *, split: str, batch_size: int,
                 data_dir: str | None = None, views: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over a whole split, in stored order.

  Every batch has exactly `batch_size` rows; the last one is padded with
  zero elements. The boolean 'mask' key is True for real examples, so
  ``sum(b['mask'].sum() for b in eval_batches(...))`` equals the split size.
  Argument errors are raised here, not at the first `next()`.

  AV datasets: ``views=1`` gives the central window (video frames 2..9, audio
  0.25..1.25 s). ``views=K`` in 2..5 gives K windows uniformly spaced over the
  clip (video starts ``preprocess.view_starts(K)``, e.g. 0, 2, 4 for K=3),
  aligned in time across modalities, on a new axis 1 of every input:
  video (B, K, 8, 32, 32, 1), spectrogram (B, K, 64, 32, 1); labels and
  'mask' stay (B, ...). The other datasets have no time beyond the model's
  window and only accept ``views=1``.
  """
  import grain  # pylint: disable=g-import-not-at-top
  from mmvit.data import preprocess  # pylint: disable=g-import-not-at-top

  name, data_dir = _resolve(name, data_dir)
  batch_size = _check_int('batch_size', batch_size, 1)
  if name in AV_DATASETS:
    try:
      views = _check_int('views', views, 1, preprocess.AV_MAX_VIEWS)
    except DataError as e:
      raise DataError(f'{name}: {e} (distinct 8-frame windows of a '
                      f'{preprocess.AV_FRAMES}-frame clip)') from None
  elif views != 1:
    raise DataError(
        f'{name}: views={views!r} needs clips longer than the model window; '
        f'only {", ".join(AV_DATASETS)} support views > 1')
  source = data_source(name, split, data_dir)
  n = len(source)

  ds = grain.MapDataset.source(source)
  for t in preprocess.eval_transforms(name, views):
    ds = ds.map(t)
  ds = ds.map(_WithMask(True))
  if pad := (-n) % batch_size:
    first = ds[0]
    blank = {k: np.zeros_like(v) for k, v in first.items()}
    blank['mask'] = np.bool_(False)
    ds = grain.MapDataset.concatenate(
        [ds, grain.MapDataset.source([blank] * pad)])
  ds = ds.to_iter_dataset(_read_options()).batch(batch_size)

  def generate():
    yield from ds

  return generate()
