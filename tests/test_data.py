"""Specification of the offline digits suite (`mmvit.data`).

The suite is built once into a shared cache: `$MMVIT_DATA_DIR` if set, else
/tmp/mmvit_test_data (reused by later runs).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import mmvit.data as data
from tests.batches import assert_same_batches, take
from mmvit.data.digits import preprocess, synth

DATASETS = ('digits_image', 'digits_video', 'digits_audio')  # AV: test_data_av
SPLITS = ('train', 'validation', 'test')
INPUT_SPEC = {  # key -> (shape, value range or None)
    'digits_image': {'image': ((32, 32, 1), (-1.0, 1.0))},
    'digits_video': {'video': ((8, 32, 32, 1), (-1.0, 1.0))},
    'digits_audio': {'spectrogram': ((64, 32, 1), None),
                     'waveform': ((8000,), (-1.0, 1.0))},
}
LABELS = {
    'digits_image': {'label': 10},
    'digits_video': {'direction': 8, 'digit': 10},
    'digits_audio': {'label': 10},
}



@pytest.fixture(scope='session')
def raw(data_dir):
  """name -> split -> list of raw stored examples (decoded once)."""
  out = {}
  for name in DATASETS:
    out[name] = {}
    for split in SPLITS:
      src = data.data_source(name, split, data_dir)
      out[name][split] = list(src.__getitems__(range(len(src))))
  return out



# ------------------------------------------------------------- errors -----

@pytest.mark.parametrize('call', [
    lambda d: data.ensure_built('digits_nope', d),
    lambda d: data.dataset_info('digits_nope', d),
    lambda d: data.train_iterator('digits_nope', batch_size=2, seed=0,
                                  data_dir=d),
    lambda d: data.eval_batches('digits_nope', split='test', batch_size=2,
                                data_dir=d),
])
def test_unknown_dataset_raises_data_error_naming_it(tmp_path, call):
  with pytest.raises(data.DataError, match='digits_nope'):
    call(str(tmp_path))
  assert not list(tmp_path.iterdir()), 'nothing is written for a bad name'


def test_data_error_is_a_value_error():
  assert issubclass(data.DataError, ValueError)


def test_unknown_augment_key_raises_data_error(data_dir):
  with pytest.raises(data.DataError, match='rotate'):
    data.train_iterator('digits_image', batch_size=2, seed=0,
                        data_dir=data_dir, augment={'rotate': 10})
  with pytest.raises(data.DataError, match='time_shift'):
    data.train_iterator('digits_image', batch_size=2, seed=0,
                        data_dir=data_dir, augment={'time_shift': 10})
  with pytest.raises(data.DataError, match='noise_std'):
    data.train_iterator('digits_image', batch_size=2, seed=0,
                        data_dir=data_dir, augment={'noise_std': -1.0})


def test_unknown_split_raises_data_error(data_dir):
  with pytest.raises(data.DataError, match='dev'):
    data.eval_batches('digits_image', split='dev', batch_size=2,
                      data_dir=data_dir)


def test_bad_batch_size_or_seed_raise_data_error(data_dir):
  with pytest.raises(data.DataError, match='batch_size'):
    data.train_iterator('digits_image', batch_size=0, seed=0,
                        data_dir=data_dir)
  with pytest.raises(data.DataError, match='seed'):
    data.train_iterator('digits_image', batch_size=2, seed=-1,
                        data_dir=data_dir)


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
  monkeypatch.setenv('MMVIT_DATA_DIR', str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  monkeypatch.delenv('MMVIT_DATA_DIR')
  assert data.default_data_dir() == os.path.expanduser('~/.cache/mmvit/data')


# ------------------------------------------------------- no leakage -------

def test_image_splits_partition_the_scans(raw):
  ids = {s: [int(e['id']) for e in raw['digits_image'][s]] for s in SPLITS}
  for s in SPLITS:
    assert len(ids[s]) == len(set(ids[s])), f'duplicate scans in {s}'
  sets = {s: set(v) for s, v in ids.items()}
  assert not sets['train'] & sets['validation']
  assert not sets['train'] & sets['test']
  assert not sets['validation'] & sets['test']
  scans, labels = synth.digit_scans()
  assert set().union(*sets.values()) == set(range(len(labels)))
  # The stored label is the scan's label.
  for e in raw['digits_image']['test']:
    assert int(e['label']) == labels[int(e['id'])]


def test_video_clips_come_only_from_same_split_scans(raw):
  image_ids = {s: {int(e['id']) for e in raw['digits_image'][s]}
               for s in SPLITS}
  _, labels = synth.digit_scans()
  clips_per_scan = {}
  for s in SPLITS:
    src = [int(e['source_id']) for e in raw['digits_video'][s]]
    assert set(src) <= image_ids[s], f'{s} clips use scans of another split'
    assert set(src) == image_ids[s], f'{s}: every scan of the split is used'
    clips_per_scan[s] = collections.Counter(src).most_common()[-1][1]
    for e in raw['digits_video'][s]:
      assert int(e['digit']) == labels[int(e['source_id'])]
  assert clips_per_scan['train'] > clips_per_scan['validation'] >= 1
  assert clips_per_scan['train'] > clips_per_scan['test'] >= 1


def test_audio_validation_and_test_speakers_absent_from_train(raw):
  speakers = {s: {e['speaker'].decode() for e in raw['digits_audio'][s]}
              for s in SPLITS}
  assert all('+' in sp for s in SPLITS for sp in speakers[s])
  assert not speakers['test'] & speakers['train']
  assert not speakers['validation'] & speakers['train']
  assert not speakers['validation'] & speakers['test']
  # Stronger: the espeak-ng variants themselves are held out.
  variants = {s: {sp.split('+', 1)[1] for sp in speakers[s]} for s in SPLITS}
  assert not variants['test'] & variants['train']
  assert not variants['validation'] & variants['train']
  assert len(variants['train']) >= 50 and len(variants['test']) >= 5
  # Many base voices, rates and pitches.
  bases = {sp.split('+', 1)[0] for sp in speakers['train']}
  assert len(bases) >= 5
  rates = [int(e['rate']) for e in raw['digits_audio']['train']]
  assert max(rates) - min(rates) >= 60


def test_speech_is_the_same_in_every_build():
  # libespeak-ng seeds its noise (whisper, breath) from the clock and carries state
  # from call to call: 240 of 3,200 train utterances once differed between builds.
  from mmvit.data.digits import espeak  # pylint: disable=g-import-not-at-top
  utterances = [('three', 'en+whisper', 150, 50, 1), ('seven', 'en-US+f3', 200, 40, 2),
                ('one', 'en+Demonic', 120, 60, 3), ('nine', 'en+m3', 180, 50, 4)]
  espeak.get_synthesizer().synth('two', 'en+whisperf')  # this process's state: no matter
  _, first = espeak.synthesize(utterances)
  time.sleep(1.1)  # another clock second, so another clock seed
  _, second = espeak.synthesize(utterances)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('name', ['digits_video', 'digits_audio'])
def test_a_rebuild_gives_the_stored_examples(name, raw):
  # "Built deterministically": regenerating a split gives exactly the stored records.
  split = 'validation'
  examples = {'digits_video': synth.video_examples, 'digits_audio': synth.audio_examples}
  key = {'digits_video': 'video', 'digits_audio': 'waveform'}[name]
  fresh = sorted(ex[key].tobytes() for _, ex in examples[name](split))
  stored = sorted(np.asarray(e[key]).tobytes() for e in raw[name][split])
  assert fresh == stored  # the stored order is tfds' (key-hash) shuffle


# ------------------------------------------------------ sizes & labels ----

@pytest.mark.parametrize('name', DATASETS)
def test_sizes_come_from_the_built_data(name, data_dir, raw):
  info = data.dataset_info(name, data_dir)
  assert info.name == name
  assert set(info.splits) == set(SPLITS)
  for s in SPLITS:
    assert info.splits[s] == len(raw[name][s]) > 0
  assert info.splits['train'] > info.splits['validation']
  assert info.splits['train'] > info.splits['test']
  assert info.num_classes == LABELS[name]


def test_split_sizes_are_sensible(data_dir):
  image = data.dataset_info('digits_image', data_dir).splits
  assert sum(image.values()) == 1797
  assert abs(image['test'] / 1797 - 0.2) < 0.01
  assert abs(image['validation'] / 1797 - 0.1) < 0.01
  audio = data.dataset_info('digits_audio', data_dir).splits
  assert audio['train'] >= 2500 and 200 <= audio['test'] <= 1000


@pytest.mark.parametrize('name', DATASETS)
def test_labels_in_range_and_every_class_in_every_split(name, raw):
  for key, n in LABELS[name].items():
    for s in SPLITS:
      y = np.array([int(e[key]) for e in raw[name][s]])
      assert y.min() >= 0 and y.max() < n, (key, s)
      assert set(y.tolist()) == set(range(n)), f'{name} {s}: missing {key}'


@pytest.mark.parametrize('name', DATASETS)
def test_preprocessed_shapes_dtypes_and_ranges(name, data_dir):
  info = data.dataset_info(name, data_dir)
  batch = next(data.train_iterator(name, batch_size=16, seed=0,
                                   data_dir=data_dir))
  expected = set(INPUT_SPEC[name]) | set(LABELS[name])
  assert set(batch) == expected == set(info.features)
  for key, (shape, bounds) in INPUT_SPEC[name].items():
    x = batch[key]
    assert info.features[key] == (shape, np.dtype(np.float32))
    assert x.shape == (16, *shape) and x.dtype == np.float32, key
    assert np.isfinite(x).all()
    if bounds is not None:
      assert x.min() >= bounds[0] and x.max() <= bounds[1], key
  for key, n in LABELS[name].items():
    y = batch[key]
    assert info.features[key] == ((), np.dtype(np.int32))
    assert y.shape == (16,) and y.dtype == np.int32
    assert ((0 <= y) & (y < n)).all()
  if name == 'digits_image':
    assert batch['image'].min() <= -0.9 and batch['image'].max() >= 0.9
  if name == 'digits_audio':
    s = batch['spectrogram']
    assert abs(float(s.mean())) < 1.0 and 0.3 < float(s.std()) < 3.0


def test_log_mel_has_64_frames_of_32_bins():
  fb = preprocess.mel_filterbank()
  assert fb.shape == (129, 32) and (fb >= 0).all()
  assert (fb.sum(0) > 0).all(), 'every mel bin covers some FFT bin'
  t = np.arange(8000) / 8000
  tone = 0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
  spec = preprocess.log_mel(tone)
  assert spec.shape == (64, 32, 1) and spec.dtype == np.float32
  peak = preprocess.mel_filterbank()[1000 * 256 // 8000].argmax()
  assert (spec[5:-5, :, 0].argmax(axis=1) == peak).all()


# ---------------------------------------------------- train iterators -----

@pytest.mark.parametrize('name', DATASETS)
def test_train_iterator_is_deterministic_given_seed(name, data_dir):
  kw = dict(batch_size=8, data_dir=data_dir, augment={'noise_std': 0.05})
  a = take(data.train_iterator(name, seed=3, **kw), 2)
  b = take(data.train_iterator(name, seed=3, **kw), 2)
  assert_same_batches(a, b)
  c = take(data.train_iterator(name, seed=4, **kw), 2)
  first_input = next(iter(INPUT_SPEC[name]))
  assert not np.array_equal(a[0][first_input], c[0][first_input])


@pytest.mark.parametrize('name', DATASETS)
def test_records_cached_in_memory_give_the_same_batches(name, data_dir):
  kw = dict(batch_size=8, seed=5, data_dir=data_dir, augment={'noise_std': 0.05})
  if name != 'digits_audio':
    kw['augment']['max_shift'] = 3
  read = data.train_iterator(name, **kw)
  cached = data.train_iterator(name, cache=True, **kw)
  assert_same_batches(take(read, 3), take(cached, 3))
  resumed = data.train_iterator(name, cache=True, **kw)
  resumed.set_state(read.get_state())  # states move between the two kinds
  assert_same_batches(take(read, 2), take(resumed, 2))


def test_grain_threads_change_neither_the_batches_nor_the_iterator_states(data_dir):
  """threads=0 makes the elements in the caller, threads=2 in a pool: the same batches, and a
  state saved under one continues under the other (data_threads is a harmless field)."""
  kw = dict(batch_size=8, seed=5, data_dir=data_dir, augment={'speed': 0.15})
  pool = data.train_iterator('digits_audio', threads=2, **kw)
  inline = data.train_iterator('digits_audio', threads=0, **kw)
  assert_same_batches(take(pool, 3), take(inline, 3))
  assert pool.get_state() == inline.get_state()
  resumed = data.train_iterator('digits_audio', threads=0, **kw)
  resumed.set_state(pool.get_state())
  assert_same_batches(take(pool, 2), take(resumed, 2))
  with pytest.raises(data.DataError, match=r'^threads must be an int in \[0, 256\], got -1$'):
    data.train_iterator('digits_audio', threads=-1, **kw)


@pytest.mark.parametrize('name,augment', [
    ('digits_image', None),
    ('digits_image', {'noise_std': 0.1, 'max_shift': 2}),
    ('digits_video', {'noise_std': 0.1, 'max_shift': 2}),
    ('digits_audio', {'noise_std': 0.1, 'time_shift': 400}),
    ('digits_audio', {'speed': 0.15}),
])
def test_restored_state_continues_with_identical_batches(
    name, augment, data_dir):
  kw = dict(batch_size=8, seed=11, data_dir=data_dir, augment=augment)
  it = data.train_iterator(name, **kw)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 3)
  fresh = data.train_iterator(name, **kw)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 3), expected)


def test_restored_state_across_an_epoch_boundary(data_dir):
  n = data.dataset_info('digits_image', data_dir).splits['train']
  bs = n // 2 + 1  # the second batch straddles epochs 1 and 2
  kw = dict(batch_size=bs, seed=5, data_dir=data_dir)
  it = data.train_iterator('digits_image', **kw)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 2)
  fresh = data.train_iterator('digits_image', **kw)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 2), expected)


def _digest(x):
  return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_every_epoch_is_a_new_permutation_of_the_split(data_dir):
  n = data.dataset_info('digits_image', data_dir).splits['train']
  everything = sorted(
      _digest(x) for b in data.eval_batches('digits_image', split='train',
                                            batch_size=n, data_dir=data_dir)
      for x in b['image'])
  it = data.train_iterator('digits_image', batch_size=n, seed=0,
                           data_dir=data_dir)
  epoch1 = [_digest(x) for x in next(it)['image']]
  epoch2 = [_digest(x) for x in next(it)['image']]
  assert sorted(epoch1) == sorted(epoch2) == everything
  assert epoch1 != epoch2


def test_noise_augmentation_changes_inputs_but_not_labels(data_dir):
  kw = dict(batch_size=8, seed=0, data_dir=data_dir)
  plain = next(data.train_iterator('digits_audio', **kw))
  noisy = next(data.train_iterator('digits_audio', augment={'noise_std': 0.2},
                                   **kw))
  np.testing.assert_array_equal(plain['label'], noisy['label'])
  for key in ('spectrogram', 'waveform'):
    diff = noisy[key] - plain[key]
    assert 0.15 < float(diff.std()) < 0.25, key


def test_shift_augmentation_translates_the_image(data_dir):
  kw = dict(batch_size=64, seed=0, data_dir=data_dir)
  plain = next(data.train_iterator('digits_image', **kw))['image']
  shifted = next(data.train_iterator('digits_image',
                                     augment={'max_shift': 3}, **kw))['image']
  moved = ~np.all(np.isclose(plain, shifted), axis=(1, 2, 3))
  assert moved.mean() > 0.5
  # Same ink, moved around: totals stay close.
  ink = lambda x: (x > 0).sum(axis=(1, 2, 3))
  assert np.abs(ink(plain) - ink(shifted)).mean() < 0.1 * ink(plain).mean()


@pytest.mark.parametrize('factor', [0.85, 1.0, 1.2])
def test_speed_change_scales_pitch_and_keeps_the_centre(factor):
  n = 8000
  t = np.arange(n)
  tone = np.sin(2 * np.pi * 200 * t / n).astype(np.float32)  # 200 cycles in the clip
  out = preprocess.change_speed(tone, factor)
  assert out.shape == tone.shape and out.dtype == np.float32
  assert int(np.abs(np.fft.rfft(out)).argmax()) == round(200 * factor)
  # A click at the centre stays there; one off-centre moves towards it when faster.
  click = np.zeros(n, np.float32)
  click[[n // 2, n // 2 + 1000]] = 1.0
  moved = preprocess.change_speed(click, factor)
  assert abs(int(moved[:n // 2 + 100].argmax()) - n // 2) <= 1
  assert abs(int(moved[n // 2 + 100:].argmax()) + 100 - 1000 / factor) <= 2


def test_speed_augmentation_changes_the_clip_not_the_label(data_dir):
  kw = dict(batch_size=16, seed=0, data_dir=data_dir)
  plain = next(data.train_iterator('digits_audio', **kw))
  fast = next(data.train_iterator('digits_audio', augment={'speed': 0.2}, **kw))
  np.testing.assert_array_equal(plain['label'], fast['label'])
  changed = ~np.all(np.isclose(plain['waveform'], fast['waveform'], atol=1e-4), axis=1)
  assert changed.all()
  # Level is kept: a resampled clip has about the same energy.
  rms = lambda x: np.sqrt((x ** 2).mean(axis=1))
  np.testing.assert_allclose(rms(fast['waveform']), rms(plain['waveform']), rtol=0.25)


@pytest.mark.parametrize('bad', [-0.1, 0.6, True, 'fast'])
def test_speed_outside_0_to_half_is_refused_naming_the_key(bad, data_dir):
  with pytest.raises(data.DataError, match='speed'):
    data.train_iterator('digits_audio', batch_size=8, seed=0, data_dir=data_dir,
                        augment={'speed': bad})


# -------------------------------------------------------- eval batches ----

@pytest.mark.parametrize('name', DATASETS)
def test_eval_batches_cover_every_example_exactly_once(name, data_dir, raw):
  n = data.dataset_info(name, data_dir).splits['test']
  bs = 100
  batches = list(data.eval_batches(name, split='test', batch_size=bs,
                                   data_dir=data_dir))
  assert len(batches) == math.ceil(n / bs)
  for b in batches:
    assert all(v.shape[0] == bs for v in b.values())
    assert b['mask'].dtype == np.bool_
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == n and mask[:n].all() and not mask[n:].any()
  # Real rows are the split's examples in stored order; padding is zeros.
  for key in LABELS[name]:
    got = np.concatenate([b[key] for b in batches])
    np.testing.assert_array_equal(
        got[:n], [int(e[key]) for e in raw[name]['test']])
  last = batches[-1]
  for key in INPUT_SPEC[name]:
    assert not last[key][~last['mask']].any()
  # Deterministic.
  again = list(data.eval_batches(name, split='test', batch_size=bs,
                                 data_dir=data_dir))
  assert_same_batches(batches, again)


def test_eval_batches_match_train_preprocessing(data_dir, raw):
  b = next(data.eval_batches('digits_image', split='validation', batch_size=4,
                             data_dir=data_dir))
  for row, e in zip(b['image'], raw['digits_image']['validation'][:4]):
    np.testing.assert_allclose(row, e['image'] / 127.5 - 1.0, atol=1e-6)


# ------------------------------------------------------------ building ----

_BUILD = """
import sys, mmvit.data as d
d.ensure_built('digits_image', sys.argv[1])
print(d.dataset_info('digits_image', sys.argv[1]).splits['test'])
"""


def test_concurrent_builds_do_not_corrupt_the_data_dir(tmp_path, data_dir):
  n = data.dataset_info('digits_image', data_dir).splits['test']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, '-c', _BUILD, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env) for _ in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert {out.strip().splitlines()[-1] for out, _ in outs} == {str(n)}
  versions = [p.name for p in (tmp_path / 'digits_image').iterdir()]
  assert versions == ['1.0.0'], versions  # no leftover incomplete dirs
  count = sum(b['mask'].sum() for b in data.eval_batches(
      'digits_image', split='test', batch_size=128, data_dir=str(tmp_path)))
  assert count == n


# ------------------------------------------------------ low-data slices ----

def test_a_task_may_train_on_a_slice_of_its_train_split(data_dir, raw):
  # A low-data task (PolyViT's small datasets): 'train[:10%]' in tfds' slice syntax.
  from mmvit import config as config_lib, tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from tests.tiny import tiny_config  # pylint: disable=g-import-not-at-top
  n = len(raw['digits_image']['train'])
  assert data.num_examples('digits_image', 'train[:10%]', data_dir) == round(n / 10)
  ids = {int(e['id']) for e in raw['digits_image']['train'][:round(n / 10)]}
  source = data.data_source('digits_image', 'train[:10%]', data_dir)
  assert {int(source[i]['id']) for i in range(len(source))} == ids
  cfg = tiny_config()
  cfg.data_dir = data_dir
  cfg.tasks.image.train_split = 'train[:10%]'
  cfg.tasks.image.epochs, cfg.tasks.image.steps = 2, None
  for t in ('video_digit', 'audio'):
    del cfg.tasks[t]
  (task,), _ = tasks_lib.resolve(config_lib.complete(cfg))
  assert task.num_train == round(n / 10) and task.train_split == 'train[:10%]'
  assert task.steps == math.ceil(2 * round(n / 10) / 8)  # epochs count the slice


@pytest.mark.parametrize('split', ['test', 'validation[:10%]', 'train[:zz]'])
def test_a_train_split_that_is_not_a_slice_of_train_is_one_line(data_dir, split):
  from mmvit import config as config_lib, tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from tests.tiny import tiny_config  # pylint: disable=g-import-not-at-top
  cfg = tiny_config()
  cfg.data_dir = data_dir
  cfg.tasks.image.train_split = split
  with pytest.raises(config_lib.ConfigError, match=r'tasks\.image\.train_split') as e:
    config_lib.validate(cfg)
    tasks_lib.resolve(config_lib.complete(cfg))
  assert '\n' not in str(e.value)
