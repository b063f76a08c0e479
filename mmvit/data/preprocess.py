"""Numpy preprocessing of the digits suite as grain transforms.

Raw tfds examples -> model inputs (float32) and labels (int32):

* digits_image: ``image`` (32, 32, 1) in [-1, 1]; ``label``.
* digits_video: ``video`` (8, 32, 32, 1) in [-1, 1]; ``direction``, ``digit``.
* digits_audio: ``spectrogram`` (64, 32, 1) normalised log-mel; ``waveform``
  (8000,) in [-1, 1); ``label``.

Deterministic transforms are `grain.transforms.Map`; random augmentations are
`grain.transforms.RandomMap`, so grain seeds them per element (from the
pipeline seed and the element's index) and they are reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import numpy as np

# ------------------------------------------------------------ log-mel -----

SAMPLE_RATE = 8000
N_FFT = 256
HOP = 125
N_MELS = 32
N_FRAMES = 64
F_MIN = 20.0
F_MAX = 4000.0
_LOG_EPS = 1e-6
# Global mean / std of log(mel + 1e-6) over digits_audio 'train' (v1.0.0),
# fixed so that normalisation does not depend on the data at run time.
LOG_MEL_MEAN = -3.3
LOG_MEL_STD = 2.5
# Zero padding so that 8000 samples give exactly N_FRAMES frames:
# (8000 + pad - N_FFT) / HOP + 1 == 64  ->  pad == 131.
_PAD_TOTAL = (N_FRAMES - 1) * HOP + N_FFT - SAMPLE_RATE
_PAD = (_PAD_TOTAL // 2, _PAD_TOTAL - _PAD_TOTAL // 2)


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.cache
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT,
                   sample_rate: int = SAMPLE_RATE, f_min: float = F_MIN,
                   f_max: float = F_MAX) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) float32 triangular HTK-mel filterbank (peak 1)."""
  freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max),
                                 n_mels + 2))
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
  down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
  fb = np.maximum(0.0, np.minimum(up, down))
  fb.flags.writeable = False
  return fb.astype(np.float32)


@functools.cache
def _window() -> np.ndarray:
  return np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann


def raw_log_mel(waveform: np.ndarray) -> np.ndarray:
  """(8000,) float waveform -> (64, 32) float32 log(mel power + 1e-6)."""
  x = np.pad(np.asarray(waveform, np.float32), _PAD)
  frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
  power = np.abs(np.fft.rfft(frames * _window(), axis=-1)) ** 2
  mel = power.astype(np.float32) @ mel_filterbank()
  return np.log(mel + _LOG_EPS).astype(np.float32)


def log_mel(waveform: np.ndarray) -> np.ndarray:
  """(8000,) waveform in [-1, 1] -> (64, 32, 1) normalised log-mel float32."""
  out = (raw_log_mel(waveform) - LOG_MEL_MEAN) / LOG_MEL_STD
  return out[..., None].astype(np.float32)


# ------------------------------------------------------------ transforms ---

INPUT_KEYS = {
    'digits_image': ('image',),
    'digits_video': ('video',),
    'digits_audio': ('spectrogram', 'waveform'),
}
LABEL_KEYS = {
    'digits_image': ('label',),
    'digits_video': ('direction', 'digit'),
    'digits_audio': ('label',),
}
# Augmentation keys each dataset accepts (see `augment_transforms`).
AUGMENT_KEYS = {
    'digits_image': ('noise_std', 'max_shift'),
    'digits_video': ('noise_std', 'max_shift'),
    'digits_audio': ('noise_std', 'time_shift'),
}


def _u8_to_unit(x: np.ndarray) -> np.ndarray:
  return (np.asarray(x, np.float32) * np.float32(2.0 / 255.0)) - np.float32(1)


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Raw tfds example -> float32 inputs in [-1, 1] and int32 labels."""

  name: str

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    if self.name == 'digits_image':
      return {'image': _u8_to_unit(element['image']),
              'label': np.int32(element['label'])}
    if self.name == 'digits_video':
      return {'video': _u8_to_unit(element['video']),
              'direction': np.int32(element['direction']),
              'digit': np.int32(element['digit'])}
    if self.name == 'digits_audio':
      wav = np.asarray(element['waveform'], np.float32) / np.float32(32768.0)
      return {'waveform': wav, 'label': np.int32(element['label'])}
    raise ValueError(f'unknown dataset {self.name!r}')


@dataclasses.dataclass(frozen=True)
class Featurize(grain.transforms.Map):
  """Adds derived inputs (log-mel spectrogram for audio) and fixes key order."""

  name: str

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self.name == 'digits_audio':
      element = {'spectrogram': log_mel(element['waveform']), **element}
    return element


def _shift_fill(x: np.ndarray, dy: int, dx: int, axes: tuple[int, int],
                fill: np.float32) -> np.ndarray:
  out = np.full_like(x, fill)
  h, w = x.shape[axes[0]], x.shape[axes[1]]
  src = [slice(None)] * x.ndim
  dst = [slice(None)] * x.ndim
  src[axes[0]] = slice(max(0, -dy), h - max(0, dy))
  dst[axes[0]] = slice(max(0, dy), h - max(0, -dy))
  src[axes[1]] = slice(max(0, -dx), w - max(0, dx))
  dst[axes[1]] = slice(max(0, dx), w - max(0, -dx))
  out[tuple(dst)] = x[tuple(src)]
  return out


@dataclasses.dataclass(frozen=True)
class RandomShift(grain.transforms.RandomMap):
  """Random translation before featurisation.

  Image/video: integer shift of up to `max_shift` px in y and x (the same for
  every frame of a clip), uncovered pixels set to the median (background).
  Audio: circular shift of the waveform by up to `time_shift` samples.
  """

  name: str
  max_shift: int = 0
  time_shift: int = 0

  def random_map(self, element, rng: np.random.Generator):
    element = dict(element)
    if self.name in ('digits_image', 'digits_video') and self.max_shift > 0:
      key = 'image' if self.name == 'digits_image' else 'video'
      x = element[key]
      dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
      axes = (0, 1) if key == 'image' else (1, 2)
      element[key] = _shift_fill(x, int(dy), int(dx), axes,
                                 np.float32(np.median(x)))
    if self.name == 'digits_audio' and self.time_shift > 0:
      k = int(rng.integers(-self.time_shift, self.time_shift + 1))
      element['waveform'] = np.roll(element['waveform'], k)
    return element


@dataclasses.dataclass(frozen=True)
class AddNoise(grain.transforms.RandomMap):
  """Adds N(0, std^2) to every float32 model input of the element."""

  name: str
  std: float

  def random_map(self, element, rng: np.random.Generator):
    element = dict(element)
    for key in INPUT_KEYS[self.name]:
      x = element[key]
      element[key] = (x + self.std * rng.standard_normal(x.shape, np.float32)
                      ).astype(np.float32)
    return element


def validate_augment(name: str, augment: dict[str, Any] | None) -> dict:
  """Checks `augment` keys/values; returns a normalised copy. Raises ValueError."""
  if augment is None:
    return {}
  if not isinstance(augment, dict):
    raise ValueError(f'augment must be a dict or None, got {type(augment)}')
  unknown = sorted(set(augment) - set(AUGMENT_KEYS[name]))
  if unknown:
    raise ValueError(
        f'unknown augment key(s) {unknown} for {name} '
        f'(supported: {list(AUGMENT_KEYS[name])})')
  out = {}
  for key, value in augment.items():
    if key == 'noise_std':
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          np.isfinite(value) and value >= 0):
        raise ValueError(f'augment noise_std must be a float >= 0, got {value!r}')
      out[key] = float(value)
    else:
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
          value < 0):
        raise ValueError(f'augment {key} must be an int >= 0, got {value!r}')
      out[key] = int(value)
  return out


def augment_transforms(name: str, augment: dict[str, Any]):
  """(before_featurize, after_featurize) lists of RandomMap transforms."""
  before, after = [], []
  if augment.get('max_shift', 0) or augment.get('time_shift', 0):
    before.append(RandomShift(name, max_shift=augment.get('max_shift', 0),
                              time_shift=augment.get('time_shift', 0)))
  if augment.get('noise_std', 0.0) > 0.0:
    after.append(AddNoise(name, augment['noise_std']))
  return before, after

