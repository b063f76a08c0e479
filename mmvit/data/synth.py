"""Deterministic, offline generation of the raw examples of the digits suite.

Pure numpy/scipy/sklearn; no tfds here (see `builders.py` for the writers).

* digits_image: sklearn's 1,797 real 8x8 scans (`load_digits`, shipped inside
  scikit-learn), upsampled to 32x32 uint8; a fixed stratified 70/10/20 split of
  the *scans*.
* digits_video: 8-frame 32x32 clips of one scan moving in a straight line in
  one of 8 compass directions; clips of a split are made only from that split's
  scans.
* digits_audio: the words "zero".."nine" spoken by espeak-ng; speakers are
  ``base_voice+variant`` and the three splits use disjoint sets of *variants*
  (hence disjoint speakers), with noise at a random SNR.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

SPLITS = ('train', 'validation', 'test')
_SPLIT_CODE = {'train': 0, 'validation': 1, 'test': 2}

# ---------------------------------------------------------------- images ---

IMAGE_SIZE = 32
IMAGE_SPLIT_SEED = 20240611
NUM_DIGITS = 10


@functools.cache
def digit_scans() -> tuple[np.ndarray, np.ndarray]:
  """(scans float64 (1797, 8, 8) in 0..16, labels int64 (1797,))."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  d = load_digits()
  return d.images.astype(np.float64), d.target.astype(np.int64)


@functools.cache
def image_split_indices() -> dict[str, np.ndarray]:
  """Stratified 70/10/20 partition of the scan indices (sorted, disjoint)."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  _, labels = digit_scans()
  n = len(labels)
  idx = np.arange(n)
  rest, test = train_test_split(
      idx, test_size=round(0.2 * n), stratify=labels,
      random_state=IMAGE_SPLIT_SEED)
  train, val = train_test_split(
      rest, test_size=round(0.1 * n), stratify=labels[rest],
      random_state=IMAGE_SPLIT_SEED + 1)
  return {'train': np.sort(train), 'validation': np.sort(val),
          'test': np.sort(test)}


def upsample_scan(scan: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """8x8 scan (0..16) -> (size, size, 1) uint8 (0..255), bicubic."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  z = ndimage.zoom(scan / 16.0, size / scan.shape[0], order=3,
                   mode='grid-constant', cval=0.0, grid_mode=True)
  return np.round(np.clip(z, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]


def image_examples(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  scans, labels = digit_scans()
  for i in image_split_indices()[split]:
    yield f'{i:05d}', {
        'image': upsample_scan(scans[i]),
        'label': int(labels[i]),
        'id': int(i),
    }


# ---------------------------------------------------------------- videos ---

VIDEO_FRAMES = 8
DIRECTIONS = ('N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW')
VIDEO_CLIPS_PER_SCAN = {'train': 4, 'validation': 2, 'test': 2}
VIDEO_SEED = 7_000_001
_VIDEO_MARGIN = 3.0  # px the digit's box may leave the canvas on each side


def render_clip(scan: np.ndarray, direction: int,
                rng: np.random.Generator) -> np.ndarray:
  """One (8, 32, 32, 1) uint8 clip of `scan` moving towards `direction`.

  Direction 0 is N (up), then clockwise in 45 degree steps. The digit box is
  14..16 px, speed 1.5..2.5 px/frame, start drawn so that the box never leaves
  the canvas by more than `_VIDEO_MARGIN` px; then a random contrast, a faint
  background level and Gaussian pixel noise.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  size = rng.uniform(14.0, 16.0)
  speed = rng.uniform(1.5, 2.5)
  angle = direction * np.pi / 4.0
  vel = speed * np.array([-np.cos(angle), np.sin(angle)])  # (dy, dx)
  travel = vel * (VIDEO_FRAMES - 1)
  lo, hi = -_VIDEO_MARGIN, IMAGE_SIZE - size + _VIDEO_MARGIN
  start = np.array([
      rng.uniform(lo - min(0.0, t), hi - max(0.0, t)) for t in travel])
  t = np.arange(VIDEO_FRAMES, dtype=np.float64)
  top_left = start[None, :] + t[:, None] * vel[None, :]  # (T, 2)
  grid = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
  scale = scan.shape[0] / size
  u = (grid[None, :, None] - top_left[:, 0, None, None]) * scale - 0.5
  v = (grid[None, None, :] - top_left[:, 1, None, None]) * scale - 0.5
  u, v = np.broadcast_arrays(u, v)
  frames = ndimage.map_coordinates(
      scan / 16.0, np.stack([u, v]), order=3, mode='grid-constant', cval=0.0)
  frames = np.clip(frames, 0.0, 1.0)
  contrast = rng.uniform(0.7, 1.0)
  background = rng.uniform(0.0, 0.1)
  noise_std = rng.uniform(0.02, 0.06)
  x = background + contrast * frames + noise_std * rng.standard_normal(
      frames.shape)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]


def video_examples(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  scans, labels = digit_scans()
  k = VIDEO_CLIPS_PER_SCAN[split]
  plan = [(int(i), c) for i in image_split_indices()[split] for c in range(k)]
  # Exactly balanced directions, in a seeded random order.
  dir_rng = np.random.default_rng([VIDEO_SEED, _SPLIT_CODE[split]])
  directions = dir_rng.permutation(np.resize(np.arange(len(DIRECTIONS)),
                                             len(plan)))
  for (i, c), d in zip(plan, directions):
    rng = np.random.default_rng([VIDEO_SEED, _SPLIT_CODE[split], i, c])
    yield f'{i:05d}_{c}', {
        'video': render_clip(scans[i], int(d), rng),
        'direction': int(d),
        'digit': int(labels[i]),
        'source_id': i,
    }


# ----------------------------------------------------------------- audio ---

WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
         'eight', 'nine')
AUDIO_RATE = 8000
AUDIO_SAMPLES = 8000  # 1.0 s
AUDIO_SEED = 5_550_123
# Held-out variants per split (the rest go to train); utterances per
# (variant, word).
AUDIO_HELD_OUT_VARIANTS = {'validation': 12, 'test': 12}
AUDIO_REPEATS = {'train': 4, 'validation': 3, 'test': 3}
AUDIO_RATE_WPM = (120, 220)
AUDIO_PITCH = (30, 70)
AUDIO_SNR_DB = (12.0, 30.0)


@functools.cache
def audio_variant_splits() -> dict[str, tuple[str, ...]]:
  """Disjoint espeak-ng variants per split (seeded permutation)."""
  from mmvit.data import espeak  # pylint: disable=g-import-not-at-top

  vs = espeak.variants()
  perm = [vs[j] for j in np.random.default_rng(AUDIO_SEED).permutation(len(vs))]
  n_val = AUDIO_HELD_OUT_VARIANTS['validation']
  n_test = AUDIO_HELD_OUT_VARIANTS['test']
  return {
      'test': tuple(sorted(perm[:n_test])),
      'validation': tuple(sorted(perm[n_test:n_test + n_val])),
      'train': tuple(sorted(perm[n_test + n_val:])),
  }


def audio_plan(split: str) -> list[dict[str, Any]]:
  """Deterministic list of utterances (word, voice, rate, pitch) of a split."""
  from mmvit.data import espeak  # pylint: disable=g-import-not-at-top

  bases = espeak.english_voices()
  reps = AUDIO_REPEATS[split]
  rng = np.random.default_rng([AUDIO_SEED, _SPLIT_CODE[split]])
  plan = []
  for variant in audio_variant_splits()[split]:
    for label in range(len(WORDS)):
      chosen = rng.choice(len(bases), size=reps, replace=False)
      for r, b in enumerate(chosen):
        plan.append({
            'key': f'{variant}_{label}_{r}',
            'label': label,
            'speaker': f'{bases[b]}+{variant}',
            'rate': int(rng.integers(AUDIO_RATE_WPM[0], AUDIO_RATE_WPM[1] + 1)),
            'pitch': int(rng.integers(AUDIO_PITCH[0], AUDIO_PITCH[1] + 1)),
        })
  return plan


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
  spec = np.fft.rfft(rng.standard_normal(n))
  f = np.arange(spec.shape[0], dtype=np.float64)
  f[0] = 1.0
  x = np.fft.irfft(spec / np.sqrt(f), n)
  x -= x.mean()
  return x / (x.std() + 1e-12)


def background_noise(n: int, rng: np.random.Generator) -> np.ndarray:
  """Unit-variance mix of white and pink noise, sometimes with mains hum."""
  w = rng.uniform(0.0, 1.0)
  noise = np.sqrt(w) * rng.standard_normal(n) + np.sqrt(1 - w) * _pink_noise(
      n, rng)
  if rng.uniform() < 0.3:
    f0 = rng.choice([50.0, 60.0])
    t = np.arange(n) / AUDIO_RATE
    hum = sum(a * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
              for h, a in ((1, 1.0), (2, 0.5), (3, 0.3)))
    hum /= hum.std()
    share = rng.uniform(0.1, 0.5)
    noise = np.sqrt(1 - share) * noise + np.sqrt(share) * hum
  return noise


def render_utterance(raw: np.ndarray, sample_rate: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """espeak int16 samples -> (int16 (8000,) noisy 1 s clip at 8 kHz, SNR dB).

  Trims leading/trailing silence, resamples to 8 kHz, centres the word in 1 s
  (cropping centred if longer, with a small random offset of at most 40 ms
  when there is room), sets a random peak level and adds background noise at a
  random SNR measured against the word's own (active-region) power.
  """
  from scipy import signal  # pylint: disable=g-import-not-at-top

  x = raw.astype(np.float64) / 32768.0
  active = np.nonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-12))[0]
  if active.size:
    pad = sample_rate // 100
    x = x[max(0, active[0] - pad):active[-1] + pad]
  g = np.gcd(AUDIO_RATE, sample_rate)
  y = signal.resample_poly(x, AUDIO_RATE // g, sample_rate // g)
  if y.shape[0] > AUDIO_SAMPLES:
    c = (y.shape[0] - AUDIO_SAMPLES) // 2
    y = y[c:c + AUDIO_SAMPLES]
  slack = AUDIO_SAMPLES - y.shape[0]
  jitter = min(slack // 2, AUDIO_RATE // 25)
  start = slack // 2 + int(rng.integers(-jitter, jitter + 1))
  y = y * (rng.uniform(0.25, 0.8) / (np.abs(y).max() + 1e-12))
  speech = np.zeros(AUDIO_SAMPLES)
  speech[start:start + y.shape[0]] = y
  snr_db = float(rng.uniform(*AUDIO_SNR_DB))
  p_speech = float(np.mean(y ** 2)) if y.size else 1e-4
  noise = background_noise(AUDIO_SAMPLES, rng)
  out = speech + noise * np.sqrt(p_speech / 10 ** (snr_db / 10))
  out = np.round(np.clip(out, -1.0, 32767 / 32768) * 32768.0)
  return out.astype(np.int16), snr_db


def audio_examples(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  from mmvit.data import espeak  # pylint: disable=g-import-not-at-top

  synth = espeak.get_synthesizer()
  for j, item in enumerate(audio_plan(split)):
    raw = synth.synth(WORDS[item['label']], item['speaker'], rate=item['rate'],
                      pitch=item['pitch'])
    rng = np.random.default_rng([AUDIO_SEED, _SPLIT_CODE[split], j])
    wav, snr = render_utterance(raw, synth.sample_rate, rng)
    yield item['key'], {
        'waveform': wav,
        'label': item['label'],
        'speaker': item['speaker'],
        'rate': item['rate'],
        'pitch': item['pitch'],
        'snr_db': np.float32(snr),
    }
