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
* av_digits / av_xor / av_multilabel: a 12-frame clip of a scan of the split
  (with independent video degradations) and 1.5 s of a word spoken by a
  speaker of the split (with independent audio noise); see `av_examples`.
"""

from __future__ import annotations

import dataclasses
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
  18..21 px, speed 1.2..2.0 px/frame, start drawn so that the box never leaves
  the canvas by more than `_VIDEO_MARGIN` px; then a random contrast, a faint
  background level and Gaussian pixel noise.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  size = rng.uniform(18.0, 21.0)
  speed = rng.uniform(1.2, 2.0)
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
  from mmvit.data.digits import espeak  # pylint: disable=g-import-not-at-top

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
  from mmvit.data.digits import espeak  # pylint: disable=g-import-not-at-top

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
  y = _trim(raw, sample_rate)
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


def spoken_words(split: str) -> tuple[list[dict[str, Any]], int, list[np.ndarray]]:
  """(plan, sample rate, raw int16 words) of a split's utterances: the same in every
  build (each utterance reseeds espeak-ng's noise; the list runs in a fresh process)."""
  from mmvit.data.digits import espeak  # pylint: disable=g-import-not-at-top

  plan = audio_plan(split)
  rate, raws = espeak.synthesize([
      (WORDS[p['label']], p['speaker'], p['rate'], p['pitch'],
       _SPLIT_CODE[split] * 100_000 + j) for j, p in enumerate(plan)])
  return plan, rate, raws


def audio_examples(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  plan, sample_rate, raws = spoken_words(split)
  for j, (item, raw) in enumerate(zip(plan, raws)):
    rng = np.random.default_rng([AUDIO_SEED, _SPLIT_CODE[split], j])
    wav, snr = render_utterance(raw, sample_rate, rng)
    yield item['key'], {
        'waveform': wav,
        'label': item['label'],
        'speaker': item['speaker'],
        'rate': item['rate'],
        'pitch': item['pitch'],
        'snr_db': np.float32(snr),
    }


# ----------------------------------------------------------- audio-visual ---
#
# av_digits / av_xor / av_multilabel: a 12-frame clip of one digit scan paired
# with 1.5 s of one spoken digit. A split's scans come only from the same split
# of digits_image and its speakers only from the same split's espeak-ng
# variants (see `audio_variant_splits`), so no scan or speaker leaks across
# splits. Video and audio are degraded independently (separate generators).

AV_DATASETS = ('av_digits', 'av_xor', 'av_multilabel')
AV_FRAMES = 12
AV_SAMPLES = 12_000  # 1.5 s at 8 kHz
AV_SIZES = {'train': 4000, 'validation': 500, 'test': 500}
AV_SEED = 9_090_017
_AV_CODE = {'av_digits': 0, 'av_xor': 1, 'av_multilabel': 2}
# The word is centred at 0.75 s (+- jitter), the centre of the 1.5 s clip: every
# 1.0 s window [t, t + 1 s] with t in [0, 0.5 s] contains [0.5 s, 1.0 s].
AV_WORD_CENTRE = 6000
AV_WORD_JITTER = 300


@dataclasses.dataclass(frozen=True)
class VideoQuality:
  """Degradations of an AV clip (ranges are drawn uniformly per clip).

  Intensities are on a 0..1 scale: the digit's ink is `background + contrast`
  over a `background` level; an opaque rectangle (the occluder, gray level
  `occluder_level`) covers part of the digit in every frame, static or moving;
  then i.i.d. Gaussian pixel noise of std `noise_std` on every frame.
  """

  # Digit box side, px. At 14-18 px a digit spanned 2x2 patches of 8 px and a tiny ViT saw
  # too little of it (video alone: 24.6% on av_digits); 20-24 px spans 3x3.
  size: tuple[int, int] = (20, 24)
  jitter: float = 3.0                         # px off centre at mid-clip
  max_speed: float = 0.3                      # digit drift, px/frame
  contrast: tuple[float, float] = (0.7, 1.0)
  background: tuple[float, float] = (0.0, 0.1)
  noise_std: tuple[float, float] = (0.02, 0.06)
  occluder_prob: float = 0.0
  occluder_size: tuple[int, int] = (10, 16)   # rectangle sides, px
  occluder_static: float = 0.25               # probability of not moving
  occluder_speed: tuple[float, float] = (1.0, 2.5)  # px/frame otherwise
  occluder_offset: float = 0.33               # of the digit box, at mid-clip
  occluder_level: tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class AudioQuality:
  """Degradations of an AV audio clip: background noise at `snr_db` (dB,
  against the word's own power) over the whole 1.5 s."""

  snr_db: tuple[float, float] = (12.0, 30.0)


# Tuned with `python -m mmvit.data.digits.baselines` (see there): av_digits makes
# each modality alone ~60-75% recognisable by a small CNN, so that fusing
# helps; av_xor is clean (each digit easy, so that the parity XOR is learnable
# by a fusing model); av_multilabel sits in between.
AV_VIDEO_QUALITY = {
    # Pixel noise lowered from 0.3-0.45 (a tiny ViT stayed at chance on video alone in 600
    # steps, where a CNN on the mean frame got 64%) so the video stream is learnable.
    'av_digits': VideoQuality(
        contrast=(0.5, 0.8), background=(0.1, 0.4), noise_std=(0.1, 0.2),
        occluder_prob=1.0, occluder_size=(6, 10), occluder_offset=0.5,
        occluder_level=(0.0, 0.8)),
    'av_xor': VideoQuality(size=(21, 23), jitter=1.0, max_speed=0.2),
    'av_multilabel': VideoQuality(
        contrast=(0.5, 0.8), background=(0.1, 0.3), noise_std=(0.08, 0.15),
        occluder_prob=0.5, occluder_size=(6, 10), occluder_offset=0.5,
        occluder_level=(0.0, 0.8)),
}
AV_AUDIO_QUALITY = {
    'av_digits': AudioQuality(snr_db=(5.0, 11.0)),
    'av_xor': AudioQuality(snr_db=(20.0, 35.0)),
    'av_multilabel': AudioQuality(snr_db=(10.0, 20.0)),
}


def _uniform(rng: np.random.Generator, lo_hi) -> float:
  return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _track(rng: np.random.Generator, box: int, jitter: float, speed: float,
           frames: int) -> np.ndarray:
  """(frames, 2) int top-left corners of a `box`-px square whose centre is at
  the canvas centre +- `jitter` px at mid-clip and which drifts in a straight
  line at `speed` px/frame in a random direction (kept on the canvas)."""
  angle = rng.uniform(0.0, 2.0 * np.pi)
  vel = speed * np.array([np.sin(angle), np.cos(angle)])
  mid = (IMAGE_SIZE - box) / 2.0 + rng.uniform(-jitter, jitter, size=2)
  pos = mid[None] + (np.arange(frames) - frames // 2)[:, None] * vel[None]
  return np.clip(np.round(pos), 0, IMAGE_SIZE - box).astype(np.int64)


def render_av_clip(scan: np.ndarray, rng: np.random.Generator,
                   q: VideoQuality) -> np.ndarray:
  """(AV_FRAMES, 32, 32, 1) uint8 clip of `scan`, degraded as `q` says."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  t = AV_FRAMES
  s = int(rng.integers(q.size[0], q.size[1] + 1))
  sprite = np.clip(ndimage.zoom(scan / 16.0, s / scan.shape[0], order=1,
                                mode='grid-constant', cval=0.0,
                                grid_mode=True), 0.0, 1.0)
  pos = _track(rng, s, q.jitter, rng.uniform(0.0, q.max_speed), t)
  ink = np.zeros((t, IMAGE_SIZE, IMAGE_SIZE))
  for f, (y, x) in enumerate(pos):
    ink[f, y:y + s, x:x + s] = sprite
  x = _uniform(rng, q.background) + _uniform(rng, q.contrast) * ink
  if rng.uniform() < q.occluder_prob:
    h, w = (int(v) for v in rng.integers(q.occluder_size[0],
                                         q.occluder_size[1] + 1, size=2))
    speed = (0.0 if rng.uniform() < q.occluder_static
             else _uniform(rng, q.occluder_speed))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    vel = speed * np.array([np.sin(angle), np.cos(angle)])
    # Near the digit's centre at mid-clip, so that it hides a part of it.
    off = q.occluder_offset * s
    centre = pos[t // 2] + s / 2.0 + rng.uniform(-off, off, size=2)
    level = _uniform(rng, q.occluder_level)
    for f in range(t):
      cy, cx = centre + (f - t // 2) * vel
      y0, x0 = int(round(cy - h / 2.0)), int(round(cx - w / 2.0))
      x[f, max(0, y0):max(0, y0 + h), max(0, x0):max(0, x0 + w)] = level
  x = x + _uniform(rng, q.noise_std) * rng.standard_normal(x.shape)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]


def _trim(raw: np.ndarray, sample_rate: int) -> np.ndarray:
  """espeak int16 -> float64 word at 8 kHz, silence trimmed (10 ms kept either side)."""
  from scipy import signal  # pylint: disable=g-import-not-at-top

  x = raw.astype(np.float64) / 32768.0
  active = np.nonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-12))[0]
  if active.size:
    pad = sample_rate // 100
    x = x[max(0, active[0] - pad):active[-1] + pad]
  g = np.gcd(AUDIO_RATE, sample_rate)
  y = signal.resample_poly(x, AUDIO_RATE // g, sample_rate // g)
  return y


def _trim_resample(raw: np.ndarray, sample_rate: int) -> np.ndarray:
  """espeak int16 -> float64 word at 8 kHz, silence trimmed, peak 1."""
  y = _trim(raw, sample_rate)
  return y / (np.abs(y).max() + 1e-12)


@functools.cache
def word_pool(split: str) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
  """The clean words of a split's digits_audio plan (same speakers), synthesised
  once per process in plan order: (plan, list of float64 8 kHz words)."""
  plan, sample_rate, raws = spoken_words(split)
  return plan, [_trim_resample(raw, sample_rate) for raw in raws]


def render_av_audio(word: np.ndarray, rng: np.random.Generator,
                    q: AudioQuality) -> tuple[np.ndarray, float]:
  """Clean 8 kHz word -> (int16 (AV_SAMPLES,) clip, SNR dB): the word centred at
  0.75 s (+- AV_WORD_JITTER samples; a word over 1 s keeps its central 1 s), a
  random level, background noise at a random SNR."""
  y = word
  if y.shape[0] > AUDIO_SAMPLES:
    c = (y.shape[0] - AUDIO_SAMPLES) // 2
    y = y[c:c + AUDIO_SAMPLES]
  centre = AV_WORD_CENTRE + int(rng.integers(-AV_WORD_JITTER,
                                             AV_WORD_JITTER + 1))
  start = int(np.clip(centre - y.shape[0] // 2, 0, AV_SAMPLES - y.shape[0]))
  y = y * rng.uniform(0.2, 0.6)
  speech = np.zeros(AV_SAMPLES)
  speech[start:start + y.shape[0]] = y
  snr_db = _uniform(rng, q.snr_db)
  p_speech = float(np.mean(y ** 2)) if y.size else 1e-4
  noise = background_noise(AV_SAMPLES, rng)
  out = speech + noise * np.sqrt(p_speech / 10 ** (snr_db / 10))
  # Loud noise may clip; scale the clip down instead (SNR unchanged).
  peak = np.abs(out).max()
  if peak > 0.99:
    out *= 0.99 / peak
  out = np.round(np.clip(out, -1.0, 32767 / 32768) * 32768.0)
  return out.astype(np.int16), snr_db


def av_plan(name: str, split: str) -> list[tuple[int, int]]:
  """(shown, spoken) digit pairs of a split, in order.

  av_digits: shown == spoken, classes balanced. av_xor: shown uniform, the
  parity XOR exactly balanced and spoken uniform among the digits of the
  required parity (so shown and spoken are independent and uniform).
  av_multilabel: shown and spoken independent and uniform.
  """
  n = AV_SIZES[split]
  rng = np.random.default_rng([AV_SEED, _AV_CODE[name], _SPLIT_CODE[split]])
  if name == 'av_digits':
    d = rng.permutation(np.resize(np.arange(NUM_DIGITS), n))
    return [(int(a), int(a)) for a in d]
  if name == 'av_xor':
    xor = rng.permutation(np.resize(np.arange(2), n))
    shown = rng.integers(0, NUM_DIGITS, size=n)
    pairs = []
    for a, x in zip(shown, xor):
      parity = (int(a) % 2) ^ int(x)
      pairs.append((int(a), 2 * int(rng.integers(0, NUM_DIGITS // 2)) + parity))
    return pairs
  if name == 'av_multilabel':
    d = rng.integers(0, NUM_DIGITS, size=(n, 2))
    return [(int(a), int(b)) for a, b in d]
  raise ValueError(f'unknown AV dataset {name!r}')


def av_examples(name: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Raw examples of an AV dataset: video (12,32,32,1) uint8, waveform (12000,)
  int16, shown / spoken digits, source scan id, speaker and SNR, plus the
  label(s): av_digits `label` = the digit, av_xor `label` = parity XOR,
  av_multilabel `labels` = multi-hot float32 (10,) of {shown, spoken}."""
  scans, scan_labels = digit_scans()
  by_digit = [
      np.array([i for i in image_split_indices()[split] if scan_labels[i] == d])
      for d in range(NUM_DIGITS)]
  plan, words = word_pool(split)
  words_by_digit = [np.array([j for j, p in enumerate(plan) if p['label'] == d])
                    for d in range(NUM_DIGITS)]
  vq, aq = AV_VIDEO_QUALITY[name], AV_AUDIO_QUALITY[name]
  code = [AV_SEED, _AV_CODE[name], _SPLIT_CODE[split]]
  for k, (shown, spoken) in enumerate(av_plan(name, split)):
    pick = np.random.default_rng(code + [k, 0])
    i = int(pick.choice(by_digit[shown]))
    j = int(pick.choice(words_by_digit[spoken]))
    video = render_av_clip(scans[i], np.random.default_rng(code + [k, 1]), vq)
    wav, snr = render_av_audio(words[j], np.random.default_rng(code + [k, 2]),
                               aq)
    example = {
        'video': video,
        'waveform': wav,
        'shown': shown,
        'spoken': spoken,
        'source_id': i,
        'speaker': plan[j]['speaker'],
        'snr_db': np.float32(snr),
    }
    if name == 'av_digits':
      example['label'] = shown
    elif name == 'av_xor':
      example['label'] = (shown % 2) ^ (spoken % 2)
    else:
      hot = np.zeros(NUM_DIGITS, np.float32)
      hot[[shown, spoken]] = 1.0
      example['labels'] = hot
    yield f'{k:05d}', example
