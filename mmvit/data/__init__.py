"""Datasets read with grain, whatever their source: the generic pipelines.

A task names its dataset (see `registry`): a registered name such as the digits suite's
(`mmvit.data.digits`), ``tfds:NAME[/CONFIG][:VERSION]`` for a TFDS dataset prepared in
``data_dir`` in array_record format, or a dataset built by ``python -m mmvit.data build``.
Records are read from array_record files and turned into model inputs by the source's
transforms: the digits suite's fixed ones with ``augment``, or the ``pp`` strings of named ops
(`ops`) for every other source. Data live in ``<data_dir>/<name>/<version>/`` with
``data_dir`` defaulting to ``$MMVIT_DATA_DIR`` or ``~/.cache/mmvit/data``.

    it = train_iterator('digits_image', batch_size=64, seed=0)
    batch = next(it)                # {'image': (64,32,32,1) f32, 'label': (64,) i32}
    state = it.get_state()          # ... later: it.set_state(state)
    for b in eval_batches('digits_image', split='test', batch_size=256):
      ...                           # b['mask'] marks real (non-padding) rows
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from mmvit.data import ops, registry
from mmvit.data.base import SPLITS, DataError, DatasetInfo, describe

if TYPE_CHECKING:
  import grain

__all__ = [
    'AV_DATASETS', 'DATASETS', 'DataError', 'DatasetInfo', 'check_split',
    'data_source', 'dataset_info', 'device_affines',
    'default_data_dir', 'ensure_built', 'eval_batches', 'num_examples', 'train_iterator',
]


def __getattr__(name: str):
  # The digits suite's names, for callers that list them; the generic code holds none.
  if name in ('DATASETS', 'AV_DATASETS'):
    from mmvit.data import digits  # noqa: PLC0415
    return getattr(digits, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def default_data_dir() -> str:
  """``$MMVIT_DATA_DIR`` or ``~/.cache/mmvit/data`` (user-expanded)."""
  return os.path.abspath(os.path.expanduser(
      os.environ.get('MMVIT_DATA_DIR', '~/.cache/mmvit/data')))


def _resolve(name: str, data_dir: str | os.PathLike | None):
  source = registry.get(name)
  if data_dir is None:
    data_dir = default_data_dir()
  return source, os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


# ------------------------------------------------------------ opening ------

_LOCK = threading.RLock()
_BUILDERS: dict[tuple[str, str], Any] = {}
_INFOS: dict[tuple[str, str], DatasetInfo] = {}


def _builder(name: str, data_dir: str | os.PathLike | None):
  """The tfds builder of a built, checked dataset (a self-building source builds it)."""
  source, data_dir = _resolve(name, data_dir)
  key = (name, data_dir)
  with _LOCK:
    if key in _BUILDERS:
      return _BUILDERS[key]
    try:
      builder = source.builder(data_dir)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'{name}: could not build/read it in {data_dir}: '
                      f'{type(e).__name__}: {describe(e)}') from e
    splits = builder.info.splits
    for split in source.required_splits:
      n = splits[split].num_examples if split in splits else 0
      if n <= 0:
        raise DataError(f'{name}: split {split!r} is missing or empty in {builder.data_dir} '
                        f'({source.rebuild_hint(builder)})')
    _BUILDERS[key] = builder
    return builder


def _split_fingerprints(name: str, data_dir: str | None) -> dict[str, dict]:
  """Per split: number of records, fingerprint, the reference build's fingerprint."""
  from mmvit.data import fingerprints  # noqa: PLC0415

  builder = _builder(name, data_dir)
  source = registry.get(name)
  version = str(builder.info.version)
  out = {}
  for split in builder.info.splits.keys():
    records = data_source(name, split, data_dir)
    out[split] = {'records': len(records),
                  'fingerprint': fingerprints.split_fingerprint(records),
                  'reference': source.reference_fingerprint(version, split)}
  return out


def inspect(name: str, data_dir: str | None = None) -> dict[str, dict]:
  """Per split: number of records, fingerprint, the reference build's fingerprint."""
  return _split_fingerprints(name, data_dir)


def ensure_built(name: str, data_dir: str | None = None) -> None:
  """Builds dataset `name` into `data_dir` unless it is already there (self-building sources);
  for the others, checks that it is there.

  Raises:
    DataError: unknown name, failed build, or a missing/empty split.
  """
  _builder(name, data_dir)


@dataclasses.dataclass
class GuardedSource:
  """A split's records where a failed read (a truncated or deleted array_record shard: a
  Riegeli error deep in a reader thread) is one DataError naming the record, its file and
  what rebuilds it."""

  name: str
  split: str
  records: Any
  files: tuple[tuple[int, str], ...]  # (first record index, file name), ascending
  hint: str

  def __len__(self) -> int:
    return len(self.records)

  def _fail(self, index: int, e: Exception):
    filename = '?'
    for start, f in self.files:
      if index >= start:
        filename = f
    raise DataError(f'{self.name}: split {self.split!r}: cannot read record {index} of '
                    f'{filename} ({type(e).__name__}: {describe(e)[:200]}); '
                    f'{self.hint}') from None

  def _check(self, index: int, record):
    # A reader opened before its file was truncated returns empty records (every feature
    # None) instead of raising.
    if isinstance(record, dict) and any(v is None for v in record.values()):
      self._fail(index, RuntimeError('the record reads empty: its file was truncated or '
                                     'replaced while open'))
    return record

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index):
    if not -len(self) <= index < len(self):
      raise IndexError(f'record {index} of {len(self)}')
    try:
      record = self.records[index]
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      self._fail(int(index), e)
    return self._check(int(index), record)

  def __getitems__(self, indices):
    indices = list(indices)
    try:
      records = self.records.__getitems__(indices)
    except DataError:
      raise
    except Exception:  # pylint: disable=broad-except
      return [self[i] for i in indices]  # names the record that fails
    return [self._check(i, r) for i, r in zip(indices, records)]

  def __repr__(self) -> str:
    return f'GuardedSource({self.name}, {self.split})'


def data_source(name: str, split: str, data_dir: str | None = None) -> GuardedSource:
  """The raw tfds array_record data source of a split (random access, numpy).

  Elements are the stored examples (e.g. uint8 images plus metadata such as
  the source scan ``id`` / ``source_id`` or the audio ``speaker``), in file
  order. Builds the dataset if needed.
  """
  builder = _builder(name, data_dir)
  source = registry.get(name)
  base = split.split('[', 1)[0] if isinstance(split, str) else split
  if base not in builder.info.splits:
    raise DataError(
        f'{name}: unknown split {split!r} (have: '
        f'{", ".join(builder.info.splits.keys())})')
  try:  # a slice in tfds' syntax, e.g. 'train[:10%]' or 'train[100:600]'
    records = builder.as_data_source(split=split, decoders=source.decoders(builder))
  except (ValueError, AssertionError) as e:
    raise DataError(f'{name}: split {split!r} is not a split or a slice of one such as '
                    f"'train[:10%]' ({describe(e)[:200]})") from None
  files, start = [], 0
  for f in builder.info.splits[split].file_instructions:
    if f.take > 0:
      files.append((start, os.path.join(builder.data_dir, f.filename)))
      start += f.take
  return GuardedSource(name, split, records, tuple(files), source.rebuild_hint(builder))


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
  records = data_source(name, split, data_dir)
  if not records.files or len(records) <= 0:
    raise DataError(f'{name}: split {split!r} has no records ({records.hint})')
  for index in [start for start, _ in records.files] + [len(records) - 1]:
    records[index]


@functools.cache
def _records_in_memory(name: str, split: str, data_dir: str) -> tuple[dict, ...]:
  """Every stored record of a split, read once per process (shared by the tasks that read
  the split). Records are never written to: the transforms build new arrays."""
  source = data_source(name, split, data_dir)
  return tuple(source.__getitems__(range(len(source))))


def _validated(name: str, augment, pp, device_affine: bool = False):
  """Checked (augment, pp); with `device_affine`, each pp string without its trailing affine
  ops (they run in the compiled step: `device_affines`)."""
  source = registry.get(name)
  try:
    augment, pp = source.validate(augment, pp)
    if device_affine and pp:
      pp = {mode: ops.split_affine(text, mode)[0] for mode, text in pp.items()}
    return augment, pp
  except ValueError as e:
    raise DataError(f'{name}: {e}') from None


def device_affines(name: str, data_dir: str | None = None, pp: dict | None = None
                   ) -> dict[str, tuple[ops.Affine, ...]]:
  """Mode -> the trailing value_range / normalize ops of its pp string composed into one
  `ops.Affine` per feature: what `device_affine=True` leaves out of the pipelines and the step
  applies to the batch. Empty where a pp string ends otherwise (or there is no pp)."""
  import grain  # pylint: disable=g-import-not-at-top

  source, data_dir = _resolve(name, data_dir)
  _, full = _validated(name, None, pp)
  _, host = _validated(name, None, pp, device_affine=True)
  out = {}
  for mode, text in (full or {}).items():
    _, tail = ops.split_affine(text, mode)
    if not tail:
      continue
    # The feature an op's default key means and its channels: one record after the host ops.
    element = data_source(name, 'train', data_dir)[0]
    transforms = (source.train_transforms({}, host) if mode == 'train' else
                  source.eval_transforms(1, host))
    rng = np.random.default_rng(0)
    for t in transforms:
      element = (t.random_map(element, rng) if isinstance(t, grain.transforms.RandomMap) else
                 t.map(element))
    try:
      out[mode] = ops.compose_affine(tail, element)
    except ops.PPError as e:
      raise DataError(f'{name}: pp.{mode}: {e}') from None
  return out


def dataset_info(name: str, data_dir: str | None = None, pp: dict | None = None,
                 device_affine: bool = False) -> DatasetInfo:
  """Split sizes, preprocessed feature shapes (after the eval `pp`; with `device_affine`,
  the dtypes before its trailing affine ops) and class counts."""
  source, data_dir = _resolve(name, data_dir)
  key = (name, data_dir, repr(sorted((pp or {}).items())), device_affine)
  with _LOCK:
    if key in _INFOS:
      return _INFOS[key]
  builder = _builder(name, data_dir)
  _, pp = _validated(name, None, pp, device_affine)
  element = data_source(name, 'train', data_dir)[0]
  for t in source.eval_transforms(1, pp):
    element = t.map(element)
  info = builder.info
  result = DatasetInfo(
      name=name,
      splits={s: int(info.splits[s].num_examples) for s in info.splits.keys()},
      features={k: (tuple(np.shape(v)), np.asarray(v).dtype)
                for k, v in element.items()},
      num_classes={k: source.num_classes(builder, k) for k in source.label_keys(builder)},
      label_names={k: n for k in source.label_keys(builder)
                   if (n := source.label_names(builder, k))},
      media=_media_of(info),
      targets=source.target_stats(builder),
  )
  with _LOCK:
    _INFOS[key] = result
  return result


def _media_of(info) -> dict:
  """The decoding options `python -m mmvit.data build` stored with the dataset."""
  meta = getattr(info, 'metadata', None) or {}
  out = {k: meta[k] for k in ('rate', 'fps', 'short_side', 'quality', 'audio_track',
                              'modalities')
         if k in meta and meta[k] is not None}
  return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in out.items()}


def max_views(name: str, pp: dict | None = None, device_affine: bool = False) -> int:
  """The most temporal views a multi-view test of `name` (with the task's pp) can take."""
  _, pp = _validated(name, None, pp, device_affine)
  return registry.get(name).max_views(pp)


# ------------------------------------------------------------ pipelines ----

def _read_options(threads: int = 2):
  import grain  # pylint: disable=g-import-not-at-top

  # Small pools: this runs on 2-core machines next to the training process. With no thread
  # the elements are made in the caller, one after another, with no buffer.
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=128 if threads else 0)


def _check_int(what: str, value: Any, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < lo or (hi is not None and value > hi)):
    bound = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    raise DataError(f'{what} must be an int {bound}, got {value!r}')
  return int(value)


def train_iterator(name: str, *, batch_size: int, seed: int,
                   data_dir: str | None = None, split: str = 'train',
                   augment: dict | None = None, pp: dict | None = None,
                   cache: bool = False, workers: int = 0, device_affine: bool = False,
                   shard: tuple[int, int] = (0, 1), threads: int = 2) -> grain.DatasetIterator:
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
    name: a dataset name (`registry`).
    batch_size: examples per batch (>= 1).
    seed: pipeline seed in [0, 2**32 - 1].
    data_dir: data directory (default: `default_data_dir()`).
    split: split to read.
    workers: processes that read and preprocess elements (grain's mp_prefetch; 0: threads
      of this process). Batches are the same for any number.
    threads: with no workers, grain's threads that make elements ahead of the caller (0: the
      caller makes them, one after another). Batches and iterator states are the same for
      any number; a pool costs CPU (a 2-core machine: 1.4-4.2x the CPU per batch, measured in
      scripts/bench.py --only=pipeline), so a caller that is itself a background thread
      (the loop's prefetch) may do better with none.
    cache: hold the split's stored records in memory (as big_vision's `cache_raw`): reading
      and unpacking records was half of the pipeline's time here (64 shifted digits_video
      clips: 19.9 ms per batch read, 9.2 ms cached). Batches are the same with or without.
    pp: the other sources' preprocessing: {'train': pp string, 'eval': pp string} of named
      ops (`ops`); the digits suite takes none.
    device_affine: leave out the pp string's trailing value_range / normalize ops, which the
      caller applies (`device_affines`): batches keep the stored dtype (uint8 images).
    shard: (index, count) of a multi-process run (`sharding.process_rows`): batches of
      b = batch_size / count rows, rows [index * b, (index + 1) * b) of each batch the whole
      run reads, augmented as there; (indices, count): those blocks of b rows, concatenated (an element's randomness follows its place in the run's
      stream). The iterator state counts this process's elements.
    augment: the digits suite's augmentations: None or a dict; each dataset accepts a subset
      of these keys (`digits.preprocess.AUGMENT_KEYS`), others raise DataError:
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

  source, data_dir = _resolve(name, data_dir)
  batch_size = _check_int('batch_size', batch_size, 1)
  seed = _check_int('seed', seed, 0, 2**32 - 1)
  workers = _check_int('workers', workers, 0, 256)
  threads = _check_int('threads', threads, 0, 256)
  blocks, count = _check_shard(shard, batch_size)
  augment, pp = _validated(name, augment, pp, device_affine)
  records = (_records_in_memory(name, split, data_dir) if cache else
             data_source(name, split, data_dir))

  ds = grain.MapDataset.source(records).seed(seed).shuffle().repeat()
  for t in source.train_transforms(augment, pp):
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else (
        ds.map(t))
  ds, batch_size = _process_rows(ds, batch_size, blocks, count)
  if not workers:
    return iter(ds.to_iter_dataset(_read_options(threads)).batch(batch_size,
                                                                 drop_remainder=True))
  from absl import flags  # noqa: PLC0415
  if not flags.FLAGS.is_parsed():  # grain's workers read its flags (defaults outside absl.app)
    flags.FLAGS.mark_as_parsed()
  # Workers make whole batches (one array per batch crosses processes, not one per element):
  # batch k is elements kB..kB+B-1 of the shuffled stream for any number of workers, the
  # batches of `workers=0`. The iterator state records the workers' positions, so a run keeps
  # its data_workers (changing it is a config change).
  ds = ds.batch(batch_size, drop_remainder=True)
  # One thread per worker: the workers are the parallelism, on cores the trainer shares.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))


def _check_shard(shard, batch_size: int) -> tuple[tuple[int, ...], int]:
  """(blocks, count) from shard=(index, count) or (tuple of indices, count)."""
  ok = isinstance(shard, tuple) and len(shard) == 2
  if ok:
    blocks, count = shard
    blocks = (blocks,) if isinstance(blocks, int) else blocks
    ok = (isinstance(blocks, tuple) and blocks and isinstance(count, int)
          and not isinstance(count, bool)
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count
                  for v in blocks) and list(blocks) == sorted(set(blocks)))
  if not ok:
    raise DataError(f'shard={shard!r}: expected (index, count) with 0 <= index < count, or '
                    '(ascending indices, count)')
  if batch_size % count:
    raise DataError(f'batch_size={batch_size} does not divide by the {count} processes '
                    'that read it')
  return blocks, count


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Element j of one process's stream: row j % local of its blocks of global batch j // local
  (its blocks of `size` rows each, concatenated in ascending order)."""
  stream: Any
  blocks: tuple[int, ...]
  count: int
  size: int

  def __call__(self, j):
    k, r = divmod(int(j), self.size * len(self.blocks))
    b, r = divmod(r, self.size)
    return self.stream[(k * self.count + self.blocks[b]) * self.size + r]


def _process_rows(ds, batch_size: int, blocks: tuple[int, ...], count: int):
  """(this process's element stream, its batch size): with one process, `ds` itself."""
  import grain  # pylint: disable=g-import-not-at-top

  if count == 1:
    return ds, batch_size
  size = batch_size // count
  local = size * len(blocks)
  # An element keeps the randomness of its place in the whole stream: the maps ran above.
  n = len(ds) // batch_size * local
  return grain.MapDataset.range(n).map(_Rows(ds, blocks, count, size)), local


@dataclasses.dataclass(frozen=True)
class _WithMask:
  mask: bool

  def __call__(self, element):
    return {**element, 'mask': np.bool_(self.mask)}


def eval_batches(name: str, *, split: str, batch_size: int,
                 data_dir: str | None = None, views: int = 1, pp: dict | None = None,
                 device_affine: bool = False, shard: tuple[int, int] = (0, 1)
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over a whole split, in stored order.

  Every batch has exactly `batch_size` rows; the last one is padded with
  zero elements. The boolean 'mask' key is True for real examples, so
  ``sum(b['mask'].sum() for b in eval_batches(...))`` equals the split size.
  Argument errors are raised here, not at the first `next()`.

  ``views=K`` > 1 (clips longer than the model's window: the AV digits datasets, or a pp
  that samples frames or seconds) gives K windows uniformly spaced over the clip, aligned in
  time across modalities, on a new axis 1 of every input, e.g. video (B, K, 8, 32, 32, 1);
  labels and 'mask' stay (B, ...). ``views=1`` is the central window. ``device_affine``: as
  in `train_iterator`. ``shard=(index, count)``: this process's rows of every batch (as in
  `train_iterator`); every process gets as many batches, so none waits in a collective.
  """
  import grain  # pylint: disable=g-import-not-at-top

  source, data_dir = _resolve(name, data_dir)
  batch_size = _check_int('batch_size', batch_size, 1)
  blocks, count = _check_shard(shard, batch_size)
  _, pp = _validated(name, None, pp, device_affine)
  most = source.max_views(pp)
  if most > 1:
    views = _check_int(f'{name}: views', views, 1, most)
  elif views != 1:
    raise DataError(
        f'{name}: views={views!r} needs clips longer than the model window '
        '(a pp that samples fewer frames or seconds than a clip holds)')
  records = data_source(name, split, data_dir)
  n = len(records)

  ds = grain.MapDataset.source(records)
  for t in source.eval_transforms(views, pp):
    ds = ds.map(t)
  ds = ds.map(_WithMask(True))
  if pad := (-n) % batch_size:
    first = ds[0]
    blank = {k: np.zeros_like(v) for k, v in first.items()}
    blank['mask'] = np.bool_(False)
    ds = grain.MapDataset.concatenate(
        [ds, grain.MapDataset.source([blank] * pad)])
  ds, batch_size = _process_rows(ds, batch_size, blocks, count)
  ds = ds.to_iter_dataset(_read_options()).batch(batch_size)

  def generate():
    yield from ds

  return generate()
