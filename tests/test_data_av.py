"""Specification of the audio-visual datasets and augmentations of `mmvit.data`.

av_digits / av_xor / av_multilabel pair a 12-frame clip of a digit scan with
1.5 s of a spoken digit. Training crops an 8-frame window and 1.0 s of audio
(synchronous or not); evaluation takes the central crop or K aligned views.

Data live in the same cache as tests/test_data.py: `$MMVIT_DATA_DIR` if set,
else /tmp/mmvit_test_data.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
import pytest

import mmvit.data as data
from mmvit.data.digits import preprocess, synth
from tests.batches import assert_same_batches, take

AV = data.AV_DATASETS
SPLITS = ('train', 'validation', 'test')
# Besides its label, every AV clip names the digit shown and the digit spoken (for unimodal
# tasks on the same clips).
_PER_MODALITY = {'shown': 10, 'spoken': 10}
LABELS = {'av_digits': {'label': 10, **_PER_MODALITY}, 'av_xor': {'label': 2, **_PER_MODALITY},
          'av_multilabel': {'labels': 10, **_PER_MODALITY}}
INPUTS = {'video': (8, 32, 32, 1), 'spectrogram': (64, 32, 1)}
SPEC = dict(time_masks=1, time_width=7, freq_masks=1, freq_width=5)
ALL_AUGMENTS = {'noise_std': 0.05, 'max_shift': 1, 'crop': 2, 'flip': True,
                'color_jitter': 0.3, 'spec_augment': SPEC, 'sync': False}



@pytest.fixture(scope='session')
def meta(data_dir):
  """name -> split -> list of stored examples without video / waveform."""
  out = {}
  for name in AV:
    out[name] = {}
    for split in SPLITS:
      src = data.data_source(name, split, data_dir)
      out[name][split] = [
          {k: v for k, v in e.items() if k not in ('video', 'waveform')}
          for e in src.__getitems__(range(len(src)))]
  return out


@functools.cache
def _clips(data_dir, name, split):
  """Decoded float clips of a (small) split, in stored order."""
  src = data.data_source(name, split, data_dir)
  return [preprocess.Decode(name).map(e)
          for e in src.__getitems__(range(len(src)))]



def _locate(data_dir, name, split, videos):
  """(example index, video start frame) of each 8-frame window in `videos`."""
  index = {}
  for i, e in enumerate(_clips(data_dir, name, split)):
    for t in range(preprocess.AV_MAX_START + 1):
      index[e['video'][t:t + 8].tobytes()] = (i, t)
  return [index[np.ascontiguousarray(v).tobytes()] for v in videos]


def _spec(wave, start):
  return preprocess.log_mel(wave[start:start + 8000])


# ------------------------------------------------------ sizes and labels ---

def test_av_datasets_are_part_of_the_suite():
  assert AV == ('av_digits', 'av_xor', 'av_multilabel')
  assert set(AV) <= set(data.DATASETS)
  assert synth.AV_DATASETS == preprocess.AV_DATASETS == AV


@pytest.mark.parametrize('name', AV)
def test_sizes_shapes_and_classes_come_from_the_built_data(name, data_dir,
                                                           meta):
  info = data.dataset_info(name, data_dir)
  for s in SPLITS:
    assert info.splits[s] == len(meta[name][s]) > 0
  assert info.splits['train'] >= 2000
  assert 200 <= info.splits['validation'] <= 1000
  assert 200 <= info.splits['test'] <= 1000
  assert info.num_classes == LABELS[name]
  label_spec = {'label': ((), np.dtype(np.int32)), 'shown': ((), np.dtype(np.int32)),
                'spoken': ((), np.dtype(np.int32)),
                'labels': ((10,), np.dtype(np.float32))}
  assert info.features == {
      **{k: (s, np.dtype(np.float32)) for k, s in INPUTS.items()},
      **{k: label_spec[k] for k in LABELS[name]}}
  batch = next(data.train_iterator(name, batch_size=4, seed=0,
                                   data_dir=data_dir))
  assert set(batch) == set(info.features)
  for k, (shape, dtype) in info.features.items():
    assert batch[k].shape == (4, *shape) and batch[k].dtype == dtype, k
    assert np.isfinite(batch[k]).all()


@pytest.mark.parametrize('name', AV)
def test_no_scan_or_speaker_leaks_across_splits(name, meta):
  """A split's scans come from that split of digits_image and its speakers
  from that split's espeak-ng variants of digits_audio."""
  scans = synth.image_split_indices()
  variants = synth.audio_variant_splits()
  _, scan_labels = synth.digit_scans()
  used_scans, used_speakers = {}, {}
  for s in SPLITS:
    ids = {int(e['source_id']) for e in meta[name][s]}
    speakers = {e['speaker'].decode() for e in meta[name][s]}
    assert ids <= set(scans[s].tolist()), f'{s} uses scans of another split'
    assert {sp.split('+', 1)[1] for sp in speakers} <= set(variants[s])
    used_scans[s], used_speakers[s] = ids, speakers
    for e in meta[name][s]:  # the stored shown digit is the scan's digit
      assert int(e['shown']) == scan_labels[int(e['source_id'])]
  for a, b in (('train', 'validation'), ('train', 'test'),
               ('validation', 'test')):
    assert not used_scans[a] & used_scans[b], (a, b)
    assert not used_speakers[a] & used_speakers[b], (a, b)
  assert len(used_speakers['test']) >= 20 and len(used_scans['test']) >= 200


def test_av_digits_shows_and_speaks_the_label(meta):
  for s in SPLITS:
    y = [int(e['label']) for e in meta['av_digits'][s]]
    assert y == [int(e['shown']) for e in meta['av_digits'][s]]
    assert y == [int(e['spoken']) for e in meta['av_digits'][s]]
    counts = collections.Counter(y)
    assert set(counts) == set(range(10))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_av_xor_label_is_parity_xor_and_balanced(meta):
  for s in SPLITS:
    ex = meta['av_xor'][s]
    y = np.array([int(e['label']) for e in ex])
    shown = np.array([int(e['shown']) for e in ex])
    spoken = np.array([int(e['spoken']) for e in ex])
    np.testing.assert_array_equal(y, (shown % 2) ^ (spoken % 2))
    assert abs(int((y == 1).sum()) - int((y == 0).sum())) <= 1, s
    assert set(shown) == set(spoken) == set(range(10))
  # Neither digit alone says anything about the label: P(label | digit) ~ 1/2.
  ex = meta['av_xor']['train']
  for key in ('shown', 'spoken'):
    for d in range(10):
      y = [int(e['label']) for e in ex if int(e[key]) == d]
      assert len(y) >= 250 and abs(np.mean(y) - 0.5) < 0.1, (key, d)


@pytest.mark.parametrize('name', AV)
def test_batches_carry_the_stored_shown_and_spoken_digits(name, data_dir, meta):
  """Unimodal tasks on AV clips (labels 'shown' / 'spoken') read the stored digits: the eval
  pipeline keeps the stored order, so batch i holds records i*B .. (i+1)*B - 1."""
  batch = next(data.eval_batches(name, split='validation', batch_size=16,
                                 data_dir=data_dir))
  for key in ('shown', 'spoken'):
    want = [int(e[key]) for e in meta[name]['validation'][:16]]
    assert batch[key].dtype == np.int32 and batch[key].tolist() == want, key


def test_av_multilabel_labels_are_multi_hot_of_shown_and_spoken(meta):
  positives = collections.Counter()
  for s in SPLITS:
    for e in meta['av_multilabel'][s]:
      expected = np.zeros(10, np.float32)
      expected[[int(e['shown']), int(e['spoken'])]] = 1.0
      np.testing.assert_array_equal(e['labels'], expected)
      positives[int(expected.sum())] += 1
  assert set(positives) == {1, 2} and positives[2] > 5 * positives[1]


# ----------------------------------------------------- training windows ---

def test_sync_windows_start_audio_at_the_video_time(data_dir):
  b = next(data.train_iterator('av_digits', batch_size=48, seed=1,
                               split='validation', data_dir=data_dir))
  clips = _clips(data_dir, 'av_digits', 'validation')
  found = _locate(data_dir, 'av_digits', 'validation', b['video'])
  for (i, t_v), spec in zip(found, b['spectrogram']):
    np.testing.assert_allclose(
        spec, _spec(clips[i]['waveform'], t_v * 1000), atol=1e-5)
  starts = collections.Counter(t for _, t in found)
  assert set(starts) == set(range(5)), 'every window start 0..4 occurs'


def test_async_windows_are_not_always_aligned(data_dir):
  kw = dict(batch_size=48, seed=1, split='validation', data_dir=data_dir)
  b = next(data.train_iterator('av_digits', augment={'sync': False}, **kw))
  clips = _clips(data_dir, 'av_digits', 'validation')
  found = _locate(data_dir, 'av_digits', 'validation', b['video'])
  aligned = [np.allclose(spec, _spec(clips[i]['waveform'], t_v * 1000),
                         atol=1e-5)
             for (i, t_v), spec in zip(found, b['spectrogram'])]
  assert sum(aligned) < len(aligned) // 4


def test_async_audio_window_is_an_independent_1s_crop():
  clip = {'video': np.arange(12, dtype=np.float32)[:, None, None, None]
                   * np.ones((12, 32, 32, 1), np.float32),
          'waveform': np.arange(12000, dtype=np.float32), 'label': 0}
  pairs = []
  for seed in range(200):
    for sync in (True, False):
      w = preprocess.RandomWindow('av_digits', sync=sync).random_map(
          clip, np.random.default_rng(seed))
      t_v, t_a = int(w['video'][0, 0, 0, 0]), int(w['waveform'][0])
      assert w['video'].shape == (8, 32, 32, 1)
      np.testing.assert_array_equal(w['video'][:, 0, 0, 0],
                                    np.arange(t_v, t_v + 8))
      np.testing.assert_array_equal(w['waveform'], np.arange(t_a, t_a + 8000))
      assert 0 <= t_v <= 4 and 0 <= t_a <= 4000
      if sync:
        assert t_a == t_v * 1000  # t_v / 12 * 1.5 s at 8 kHz
      else:
        pairs.append((t_v, t_a))
  t_v, t_a = np.array(pairs).T
  assert (t_a != t_v * 1000).mean() > 0.9
  assert abs(np.corrcoef(t_v, t_a)[0, 1]) < 0.2


# ---------------------------------------------------------- multi-view ---

@pytest.mark.parametrize('views', [2, 3, 5])
def test_multi_view_gives_k_aligned_crops_spread_over_the_clip(views, data_dir):
  name = 'av_xor'
  clips = _clips(data_dir, name, 'test')
  n = len(clips)
  batches = list(data.eval_batches(name, split='test', batch_size=64,
                                   data_dir=data_dir, views=views))
  b = batches[0]
  assert b['video'].shape == (64, views, 8, 32, 32, 1)
  assert b['spectrogram'].shape == (64, views, 64, 32, 1)
  assert b['label'].shape == b['mask'].shape == (64,)
  starts = preprocess.view_starts(views)
  assert starts[0] == 0 and starts[-1] == 4 and len(set(starts)) == views
  for row in range(3):
    for k, t in enumerate(starts):
      np.testing.assert_array_equal(b['video'][row, k],
                                    clips[row]['video'][t:t + 8])
      np.testing.assert_allclose(b['spectrogram'][row, k],
                                 _spec(clips[row]['waveform'], t * 1000),
                                 atol=1e-5)
    for k in range(1, views):
      assert not np.array_equal(b['video'][row, k - 1], b['video'][row, k])
      assert not np.array_equal(b['spectrogram'][row, k - 1],
                                b['spectrogram'][row, k])
  mask = np.concatenate([x['mask'] for x in batches])
  last = batches[-1]
  assert mask.sum() == n and not last['video'][~last['mask']].any()
  labels = np.concatenate([x['label'] for x in batches])[:n]
  np.testing.assert_array_equal(labels, [int(c['label']) for c in clips])


def test_one_view_is_the_central_crop(data_dir):
  one = next(data.eval_batches('av_xor', split='test', batch_size=16,
                               data_dir=data_dir))
  five = next(data.eval_batches('av_xor', split='test', batch_size=16,
                                data_dir=data_dir, views=5))
  assert one['video'].shape == (16, 8, 32, 32, 1)
  np.testing.assert_array_equal(one['video'], five['video'][:, 2])
  np.testing.assert_array_equal(one['spectrogram'], five['spectrogram'][:, 2])
  np.testing.assert_array_equal(one['label'], five['label'])


@pytest.mark.parametrize('name,views', [
    ('digits_image', 2), ('digits_video', 3), ('digits_audio', 2),
    ('av_digits', 6), ('av_digits', 0)])
def test_bad_views_raise_data_error_naming_the_dataset(name, views, data_dir):
  with pytest.raises(data.DataError, match=name):
    data.eval_batches(name, split='test', batch_size=4, data_dir=data_dir,
                      views=views)


# ------------------------------------------------------- augmentations ----

def _batch(name, augment=None, seed=0, bs=16, split='validation',
           data_dir=None):
  return next(data.train_iterator(name, batch_size=bs, seed=seed, split=split,
                                  data_dir=data_dir, augment=augment))


def test_spec_augment_masks_bands_of_the_configured_width(data_dir):
  plain = _batch('av_digits', {'sync': True}, data_dir=data_dir)
  masked = _batch('av_digits', {'spec_augment': SPEC}, data_dir=data_dir)
  np.testing.assert_array_equal(plain['video'], masked['video'])
  for p, m in zip(plain['spectrogram'][..., 0], masked['spectrogram'][..., 0]):
    zero = (m == 0) & (p != 0)
    rows = np.flatnonzero(zero.all(axis=1))
    cols = np.flatnonzero(zero.all(axis=0))
    assert len(rows) == 7 and np.ptp(rows) == 6, rows  # one band of 7 frames
    assert len(cols) == 5 and np.ptp(cols) == 4, cols  # one band of 5 bins
    keep = np.ones_like(zero)
    keep[rows] = False
    keep[:, cols] = False
    np.testing.assert_array_equal(m[keep], p[keep])


def test_spec_augment_with_several_masks_on_digits_audio(data_dir):
  cfg = dict(time_masks=3, time_width=4, freq_masks=2, freq_width=3)
  kw = dict(bs=32, data_dir=data_dir)
  plain = _batch('digits_audio', **kw)['spectrogram'][..., 0]
  masked = _batch('digits_audio', {'spec_augment': cfg}, **kw)['spectrogram']
  n_rows = [(m[..., 0] == 0).all(axis=1).sum() for m in masked]
  n_cols = [(m[..., 0] == 0).all(axis=0).sum() for m in masked]
  assert all(4 <= r <= 12 for r in n_rows) and max(n_rows) == 12
  assert all(3 <= c <= 6 for c in n_cols) and max(n_cols) == 6
  assert (plain != 0).all()


@pytest.mark.parametrize('name', ['digits_image', 'digits_video', 'av_digits'])
@pytest.mark.parametrize('augment', [{'crop': 3}, {'flip': True},
                                     {'color_jitter': 0.4}])
def test_visual_augmentations_change_inputs_deterministically_per_seed(
    name, augment, data_dir):
  key = 'image' if name == 'digits_image' else 'video'
  plain = _batch(name, data_dir=data_dir)
  a = _batch(name, augment, data_dir=data_dir)
  assert_same_batches([a], [_batch(name, augment, data_dir=data_dir)])
  other = _batch(name, augment, seed=1, data_dir=data_dir)
  assert not np.array_equal(a[key], other[key])
  changed = [not np.array_equal(x, y) for x, y in zip(plain[key], a[key])]
  assert 0.25 <= np.mean(changed), augment
  assert a[key].min() >= -1.0 and a[key].max() <= 1.0
  h, w = (0, 1) if key == 'image' else (1, 2)
  for x, y in zip(plain[key], a[key]):
    if 'flip' in augment:  # mirrored, or left alone
      assert np.array_equal(y, x) or np.array_equal(y, np.flip(x, w))
    if 'crop' in augment:  # a 32x32 crop of the median-padded input
      p = augment['crop']
      pad = [(0, 0)] * x.ndim
      pad[h] = pad[w] = (p, p)
      padded = np.pad(x, pad, constant_values=np.median(x))
      assert any(np.array_equal(y, np.take(np.take(
          padded, range(oy, oy + 32), axis=h), range(ox, ox + 32), axis=w))
                 for oy in range(2 * p + 1) for ox in range(2 * p + 1))
    if 'color_jitter' in augment:  # one affine map per clip (then clipped)
      inside = (y > -1) & (y < 1)
      slope, _ = np.polyfit(x[inside], y[inside], 1)
      assert 0.6 - 1e-3 <= slope <= 1.4 + 1e-3
      np.testing.assert_allclose(np.polyval(np.polyfit(
          x[inside], y[inside], 1), x[inside]), y[inside], atol=1e-4)


def test_flip_mirrors_the_direction_label_of_digits_video(data_dir):
  plain = _batch('digits_video', bs=32, data_dir=data_dir)
  flipped = _batch('digits_video', {'flip': True}, bs=32, data_dir=data_dir)
  np.testing.assert_array_equal(plain['digit'], flipped['digit'])
  mirrored = np.array([not np.array_equal(x, y) for x, y in
                       zip(plain['video'], flipped['video'])])
  assert 0 < mirrored.sum() < 32
  np.testing.assert_array_equal(
      flipped['direction'],
      np.where(mirrored, (8 - plain['direction']) % 8, plain['direction']))


@pytest.mark.parametrize('name,augment,key', [
    ('digits_image', {'rotate': 1}, 'rotate'),
    ('digits_image', {'spec_augment': SPEC}, 'spec_augment'),
    ('digits_video', {'sync': True}, 'sync'),
    ('digits_audio', {'crop': 2}, 'crop'),
    ('av_xor', {'time_shift': 100}, 'time_shift'),
    ('av_xor', {'spec_augment': {'time_mask': 1}}, 'time_mask'),
    ('av_xor', {'spec_augment': {'freq_width': 33}}, 'freq_width'),
    ('av_xor', {'crop': -1}, 'crop'),
    ('av_xor', {'flip': 'yes'}, 'flip'),
    ('av_xor', {'color_jitter': 2.0}, 'color_jitter'),
    ('av_xor', {'sync': 1}, 'sync'),
])
def test_bad_augment_raises_a_one_line_data_error_naming_the_key(
    name, augment, key, data_dir):
  with pytest.raises(data.DataError, match=key) as e:
    data.train_iterator(name, batch_size=2, seed=0, data_dir=data_dir,
                        augment=augment)
  msg = str(e.value)
  assert '\n' not in msg and name in msg
  if key in preprocess.AUGMENT_KEYS[name]:  # a bad value: says what is allowed
    assert 'must be' in msg
  elif key in preprocess.SPEC_AUGMENT_KEYS + ('time_mask',):
    assert 'must be' in msg or all(
        k in msg for k in preprocess.SPEC_AUGMENT_KEYS)
  else:  # an unknown key: lists the allowed ones
    assert all(k in msg for k in preprocess.AUGMENT_KEYS[name])


@pytest.mark.parametrize('name,augment', [
    ('av_digits', ALL_AUGMENTS),
    ('av_multilabel', {'sync': True, 'spec_augment': SPEC, 'crop': 1}),
    ('digits_image', {'crop': 2, 'flip': True, 'color_jitter': 0.2}),
    ('digits_audio', {'spec_augment': SPEC, 'time_shift': 200}),
])
def test_restored_state_continues_with_identical_augmented_batches(
    name, augment, data_dir):
  kw = dict(batch_size=8, seed=7, data_dir=data_dir, augment=augment)
  it = data.train_iterator(name, **kw)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 2)
  fresh = data.train_iterator(name, **kw)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 2), expected)
