"""Numpy preprocessing of the digits suite as grain transforms.

Raw tfds examples -> model inputs (float32) and labels (int32):

* digits_image: ``image`` (32, 32, 1) in [-1, 1]; ``label``.
* digits_video: ``video`` (8, 32, 32, 1) in [-1, 1]; ``direction``, ``digit``.
* digits_audio: ``spectrogram`` (64, 32, 1) normalised log-mel; ``waveform``
  (8000,) in [-1, 1); ``label``.
* av_digits / av_xor / av_multilabel: ``video`` (8, 32, 32, 1), an 8-frame
  window of the 12-frame clip, and ``spectrogram`` (64, 32, 1), the log-mel
  (as digits_audio) of 1.0 s of the 1.5 s audio; ``label`` (int32) or
  ``labels`` (float32 multi-hot (10,)). Training crops random windows
  (`RandomWindow`, synchronous or not), evaluation the central one or K
  aligned views (`Window`).

Pipelines: `train_transforms` (decode, window, augmentations, featurise) and
`eval_transforms`. Deterministic transforms are `grain.transforms.Map`; random
ones are `grain.transforms.RandomMap`, so grain seeds them per element (from
the pipeline seed, the transform's position and the element's index in the
stream) and they are reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import numpy as np

from mmvit.data.digits import synth

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

AV_DATASETS = synth.AV_DATASETS
# The model sees WINDOW_FRAMES of an AV clip's AV_FRAMES frames and the 1.0 s
# of audio that starts at the same time: frame f starts at f * 1000 samples.
WINDOW_FRAMES = 8
AV_FRAMES = synth.AV_FRAMES                     # 12
AV_SAMPLES = synth.AV_SAMPLES                   # 12000 = 1.5 s
AV_SAMPLES_PER_FRAME = AV_SAMPLES // AV_FRAMES  # 1000 = 0.125 s
AV_MAX_START = AV_FRAMES - WINDOW_FRAMES        # window starts 0..4 frames
AV_CENTRE_FRAME = AV_MAX_START // 2             # the central crop
AV_MAX_VIEWS = AV_MAX_START + 1                 # distinct aligned crops

INPUT_KEYS = {
    'digits_image': ('image',),
    'digits_video': ('video',),
    'digits_audio': ('spectrogram', 'waveform'),
    **{n: ('video', 'spectrogram') for n in AV_DATASETS},
}
LABEL_KEYS = {
    'digits_image': ('label',),
    'digits_video': ('direction', 'digit'),
    'digits_audio': ('label',),
    # Every AV clip also names the digit shown and the digit spoken: unimodal tasks on the
    # same clips (e.g. to pretrain each stream before fusion).
    'av_digits': ('label', 'shown', 'spoken'),
    'av_xor': ('label', 'shown', 'spoken'),
    'av_multilabel': ('labels', 'shown', 'spoken'),
}
_VISUAL_AUGMENTS = ('noise_std', 'max_shift', 'crop', 'flip', 'color_jitter')
# Augmentation keys each dataset accepts (see `train_transforms`).
AUGMENT_KEYS = {
    'digits_image': _VISUAL_AUGMENTS,
    'digits_video': _VISUAL_AUGMENTS,
    'digits_audio': ('noise_std', 'time_shift', 'speed', 'spec_augment'),
    **{n: _VISUAL_AUGMENTS + ('spec_augment', 'sync') for n in AV_DATASETS},
}
SPEC_AUGMENT_KEYS = ('time_masks', 'time_width', 'freq_masks', 'freq_width')
_VISUAL_KEY = {'digits_image': 'image', 'digits_video': 'video',
               **{n: 'video' for n in AV_DATASETS}}


def _u8_to_unit(x: np.ndarray) -> np.ndarray:
  return (np.asarray(x, np.float32) * np.float32(2.0 / 255.0)) - np.float32(1)


def _i16_to_unit(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float32) / np.float32(32768.0)


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Raw tfds example -> float32 inputs in [-1, 1] and int32 labels.

  AV datasets keep the whole clip here (video (12, 32, 32, 1), waveform
  (12000,)); `Window` / `RandomWindow` cut the model's window out of it.
  """

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
      return {'waveform': _i16_to_unit(element['waveform']),
              'label': np.int32(element['label'])}
    if self.name in AV_DATASETS:
      out = {'video': _u8_to_unit(element['video']),
             'waveform': _i16_to_unit(element['waveform'])}
      if self.name == 'av_multilabel':
        out['labels'] = np.asarray(element['labels'], np.float32)
      else:
        out['label'] = np.int32(element['label'])
      out['shown'] = np.int32(element['shown'])
      out['spoken'] = np.int32(element['spoken'])
      return out
    raise ValueError(f'unknown dataset {self.name!r}')


def crop_window(element: dict[str, np.ndarray], video_start: int,
                audio_start: int) -> dict[str, np.ndarray]:
  """The WINDOW_FRAMES frames from `video_start` and the 1.0 s of waveform from
  sample `audio_start` of a decoded AV clip."""
  return {
      **element,
      'video': element['video'][video_start:video_start + WINDOW_FRAMES],
      'waveform': element['waveform'][audio_start:audio_start + SAMPLE_RATE],
  }


def view_starts(views: int) -> tuple[int, ...]:
  """Video start frames of `views` crops: the central one for 1, else
  uniformly spaced over the clip (distinct for views <= AV_MAX_VIEWS)."""
  if views == 1:
    return (AV_CENTRE_FRAME,)
  return tuple(int(v) for v in np.round(np.linspace(0, AV_MAX_START, views)))


@dataclasses.dataclass(frozen=True)
class Window(grain.transforms.Map):
  """Evaluation crops of an AV clip, aligned in time across modalities.

  views == 1: the central crop (no view axis). views == K > 1: K crops at
  `view_starts(K)`, stacked on a new leading view axis of every input.
  """

  name: str
  views: int = 1

  def map(self, element):
    crops = [crop_window(element, t, t * AV_SAMPLES_PER_FRAME)
             for t in view_starts(self.views)]
    if self.views == 1:
      return crops[0]
    return {**element, **{k: np.stack([c[k] for c in crops])
                          for k in ('video', 'waveform')}}


@dataclasses.dataclass(frozen=True)
class RandomWindow(grain.transforms.RandomMap):
  """Training crop of an AV clip: video start t_v uniform in 0..AV_MAX_START
  frames; sync: audio from the matching time (t_v * 1000 samples, i.e.
  t_v / 12 * 1.5 s), else from an independent uniform sample offset in
  0..AV_MAX_START * 1000."""

  name: str
  sync: bool = True

  def random_map(self, element, rng: np.random.Generator):
    t_v = int(rng.integers(0, AV_MAX_START + 1))
    t_a = int(rng.integers(0, AV_MAX_START * AV_SAMPLES_PER_FRAME + 1))
    if self.sync:
      t_a = t_v * AV_SAMPLES_PER_FRAME
    return crop_window(element, t_v, t_a)


@dataclasses.dataclass(frozen=True)
class Featurize(grain.transforms.Map):
  """Adds derived inputs (log-mel spectrogram for audio) and fixes key order.

  AV datasets replace the waveform by its spectrogram (a leading view axis,
  if any, is kept).
  """

  name: str

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self.name == 'digits_audio':
      element = {'spectrogram': log_mel(element['waveform']), **element}
    elif self.name in AV_DATASETS:
      wav = element['waveform']
      spec = (log_mel(wav) if wav.ndim == 1 else
              np.stack([log_mel(w) for w in wav]))
      element = {'video': element['video'], 'spectrogram': spec,
                 **{k: element[k] for k in LABEL_KEYS[self.name]}}
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
    if self.name in _VISUAL_KEY and self.max_shift > 0:
      key = _VISUAL_KEY[self.name]
      x = element[key]
      dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
      axes = (0, 1) if key == 'image' else (1, 2)
      element[key] = _shift_fill(x, int(dy), int(dx), axes,
                                 np.float32(np.median(x)))
    if self.name == 'digits_audio' and self.time_shift > 0:
      k = int(rng.integers(-self.time_shift, self.time_shift + 1))
      element['waveform'] = np.roll(element['waveform'], k)
    return element


def change_speed(wav: np.ndarray, factor: float) -> np.ndarray:
  """`wav` played `factor` times as fast about its centre, same length: sample i reads
  position c + factor * (i - c) (linear interpolation, reflected at the ends), so the
  word's tempo and pitch both scale by `factor`, as by resampling (Kaldi's speed
  perturbation)."""
  n = wav.shape[-1]
  c = (n - 1) / 2
  pos = c + factor * (np.arange(n, dtype=np.float64) - c)
  pos = np.abs(pos)                             # reflect below 0 ...
  pos = (n - 1) - np.abs((n - 1) - pos)         # ... and above n - 1
  return np.interp(pos, np.arange(n), wav).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SpeedPerturb(grain.transforms.RandomMap):
  """Audio: speed factor uniform in [1 - speed, 1 + speed] (see `change_speed`). Tempo
  and pitch change together, as between speakers: the demo's test speakers are voices
  never heard in training."""

  name: str
  speed: float

  def random_map(self, element, rng: np.random.Generator):
    element = dict(element)
    factor = 1.0 + self.speed * (2.0 * rng.random() - 1.0)
    element['waveform'] = change_speed(element['waveform'], factor)
    return element


@dataclasses.dataclass(frozen=True)
class VisualAugment(grain.transforms.RandomMap):
  """Random crop, horizontal flip and colour jitter of an image or clip (one
  draw per clip, applied to all its frames), in that order.

  crop: pad by `crop` px with the median (background), then crop back to the
  original size at a uniform offset. flip: mirror left-right with probability
  1/2 (digits_video: the `direction` label is mirrored too). color_jitter s:
  brightness offset uniform in [-s, s] and contrast factor in [1 - s, 1 + s]
  around the clip mean, clipped to [-1, 1].

  Every element draws the same five uniforms whatever is enabled, so turning
  one augmentation on does not change what the others do.
  """

  name: str
  crop: int = 0
  flip: bool = False
  color_jitter: float = 0.0

  def random_map(self, element, rng: np.random.Generator):
    u = rng.random(5)
    element = dict(element)
    key = _VISUAL_KEY[self.name]
    x = element[key]
    h_ax, w_ax = (0, 1) if key == 'image' else (1, 2)
    if self.crop > 0:
      p = self.crop
      pad = [(0, 0)] * x.ndim
      pad[h_ax] = pad[w_ax] = (p, p)
      padded = np.pad(x, pad, constant_values=np.float32(np.median(x)))
      oy, ox = (min(int(v * (2 * p + 1)), 2 * p) for v in u[:2])
      sl = [slice(None)] * x.ndim
      sl[h_ax] = slice(oy, oy + x.shape[h_ax])
      sl[w_ax] = slice(ox, ox + x.shape[w_ax])
      x = padded[tuple(sl)]
    if self.flip and u[2] < 0.5:
      x = np.flip(x, axis=w_ax)
      if self.name == 'digits_video':  # N, NE, E, ... -> N, NW, W, ...
        element['direction'] = np.int32((-element['direction']) % 8)
    if self.color_jitter > 0:
      s = np.float32(self.color_jitter)
      bright = (np.float32(2 * u[3]) - 1) * s
      contrast = 1 + (np.float32(2 * u[4]) - 1) * s
      m = x.mean(dtype=np.float32)
      x = np.clip((x - m) * contrast + m + bright, -1.0, 1.0)
    element[key] = np.ascontiguousarray(x, dtype=np.float32)
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


@dataclasses.dataclass(frozen=True)
class SpecAugment(grain.transforms.RandomMap):
  """SpecAugment masking of the (normalised) spectrogram: `time_masks` bands of
  exactly `time_width` frames and `freq_masks` bands of exactly `freq_width`
  mel bins, each at a uniform position (bands may overlap), set to 0 (the
  normalised mean)."""

  name: str
  time_masks: int = 0
  time_width: int = 0
  freq_masks: int = 0
  freq_width: int = 0

  def random_map(self, element, rng: np.random.Generator):
    element = dict(element)
    x = np.array(element['spectrogram'], np.float32)  # (time, freq, 1)
    for axis, masks, width in ((0, self.time_masks, self.time_width),
                               (1, self.freq_masks, self.freq_width)):
      if width <= 0:
        continue
      for start in rng.integers(0, x.shape[axis] - width + 1, size=masks):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(int(start), int(start) + width)
        x[tuple(sl)] = 0.0
    element['spectrogram'] = x
    return element


def _is_mapping(value) -> bool:
  return hasattr(value, 'keys') and hasattr(value, 'items')


def _int(key: str, value, lo: int = 0, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < lo or (hi is not None and value > hi)):
    bound = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    raise ValueError(f'augment {key} must be an int {bound}, got {value!r}')
  return int(value)


def validate_augment(name: str, augment: dict[str, Any] | None) -> dict:
  """Checks `augment` keys/values; returns a normalised copy.

  Raises ValueError (one line, naming the key and what is allowed).
  """
  if augment is None:
    return {}
  if not _is_mapping(augment):
    raise ValueError(f'augment must be a dict or None, got {type(augment)}')
  allowed = AUGMENT_KEYS[name]
  unknown = sorted(set(augment.keys()) - set(allowed))
  if unknown:
    raise ValueError(
        f'unknown augment key(s) {unknown} for {name} '
        f'(supported: {list(allowed)})')
  out = {}
  for key, value in augment.items():
    if key in ('noise_std', 'color_jitter', 'speed'):
      hi = {'noise_std': np.inf, 'color_jitter': 1.0, 'speed': 0.5}[key]
      if isinstance(value, bool) or not isinstance(
          value, (int, float, np.integer, np.floating)) or not (
              np.isfinite(value) and 0 <= value <= hi):
        bound = '>= 0' if key == 'noise_std' else f'in [0, {hi:g}]'
        raise ValueError(
            f'augment {key} must be a float {bound}, got {value!r}')
      out[key] = float(value)
    elif key in ('flip', 'sync'):
      if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f'augment {key} must be a bool, got {value!r}')
      out[key] = bool(value)
    elif key == 'spec_augment':
      if not _is_mapping(value):
        raise ValueError(
            f'augment spec_augment must be a dict with keys among '
            f'{list(SPEC_AUGMENT_KEYS)}, got {value!r}')
      bad = sorted(set(value.keys()) - set(SPEC_AUGMENT_KEYS))
      if bad:
        raise ValueError(
            f'unknown augment spec_augment key(s) {bad} (supported: '
            f'{list(SPEC_AUGMENT_KEYS)})')
      limits = {'time_width': N_FRAMES, 'freq_width': N_MELS}
      out[key] = {k: _int(f'spec_augment.{k}', value.get(k, 0), 0,
                          limits.get(k)) for k in SPEC_AUGMENT_KEYS}
    elif key == 'crop':
      out[key] = _int(key, value, 0, 16)
    else:  # max_shift, time_shift
      out[key] = _int(key, value)
  return out


def train_transforms(name: str, augment: dict[str, Any]) -> list:
  """Transforms of a training element after the source, in order: `Map`s and
  `RandomMap`s (the pipeline applies them with `map` / `random_map`).
  `augment` must come from `validate_augment`."""
  out: list = [Decode(name)]
  if name in AV_DATASETS:
    out.append(RandomWindow(name, sync=augment.get('sync', True)))
  if augment.get('max_shift', 0) or augment.get('time_shift', 0):
    out.append(RandomShift(name, max_shift=augment.get('max_shift', 0),
                           time_shift=augment.get('time_shift', 0)))
  if augment.get('speed', 0.0) > 0.0:
    out.append(SpeedPerturb(name, augment['speed']))
  if (augment.get('crop', 0) or augment.get('flip', False)
      or augment.get('color_jitter', 0.0)):
    out.append(VisualAugment(name, crop=augment.get('crop', 0),
                             flip=augment.get('flip', False),
                             color_jitter=augment.get('color_jitter', 0.0)))
  out.append(Featurize(name))
  if augment.get('noise_std', 0.0) > 0.0:
    out.append(AddNoise(name, augment['noise_std']))
  spec = augment.get('spec_augment')
  if spec and any(spec[k] for k in ('time_masks', 'freq_masks')):
    out.append(SpecAugment(name, **spec))
  return out


def eval_transforms(name: str, views: int = 1) -> list[grain.transforms.Map]:
  """Deterministic transforms of an evaluation element (AV: `views` crops)."""
  if name in AV_DATASETS:
    return [Decode(name), Window(name, views), Featurize(name)]
  if views != 1:
    raise ValueError(f'views={views} needs clips longer than the model window')
  return [Decode(name), Featurize(name)]
