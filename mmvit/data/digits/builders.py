"""TFDS builders of the offline digits suite (array_record, no TensorFlow needed).

The builders are not registered in tfds' global registry (to avoid any clash
with tfds' catalog); instantiate them through `BUILDERS[name](data_dir=...)`.
Building and reading only use tfds' numpy code paths
(`download_and_prepare` with statistics skipped, `as_data_source`).

Bump a builder's VERSION whenever its generation in `synth.py` changes, so
cached copies (keyed by version directory) are rebuilt.
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mmvit.data.digits import synth

_CITATION = ''
_HOMEPAGE = ''
# Before these releases, two builds differed in the noisy voices' samples.
_SEEDED_SPEECH = ('espeak-ng noise reseeded per utterance, in a fresh process: the same '
                  'samples in every build.')


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common base: splits train/validation/test from `_generate_examples`."""

  # tfds derives `code_path` through `importlib_resources`, which is not
  # installed (and not needed): point it at this file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in synth.SPLITS}


class DigitsImage(_Builder, skip_registration=True):
  """sklearn's 8x8 digit scans upsampled (bicubic) to 32x32 uint8."""

  name = 'digits_image'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "scikit-learn's load_digits() 8x8 scans (0..16) upsampled to "
            '32x32 uint8, stratified 70/10/20 split of the scans.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=(synth.IMAGE_SIZE, synth.IMAGE_SIZE, 1), dtype=np.uint8,
                encoding='zlib'),
            'label': tfds.features.ClassLabel(
                names=[str(i) for i in range(synth.NUM_DIGITS)]),
            'id': tfds.features.Scalar(
                dtype=np.int64, doc='index of the scan in load_digits()'),
        }),
        supervised_keys=('image', 'label'),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _generate_examples(self, split):
    yield from synth.image_examples(split)


class DigitsVideo(_Builder, skip_registration=True):
  """8-frame clips of a digit scan moving in one of 8 directions."""

  name = 'digits_video'
  VERSION = tfds.core.Version('1.1.0')
  # 14-16 px digits spanned 2x2 patches of 8 px: a tiny ViT alone stopped at 87.6% digit
  # accuracy (1,500 steps); at 18-21 px it reached 89.1% in 1,000 steps.
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Larger (18-21 px), slower (1.2-2.0 px/frame) digits.'}

  def _info(self):
    n = synth.IMAGE_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            '8x32x32 clips of one digits_image scan (18-21 px) moving '
            'in a straight line (1.2-2.0 px/frame) in one of 8 directions, '
            "with noise; a split's clips come only from that split's scans."),
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(
                shape=(synth.VIDEO_FRAMES, n, n, 1), dtype=np.uint8,
                encoding='zlib'),
            'direction': tfds.features.ClassLabel(names=list(synth.DIRECTIONS)),
            'digit': tfds.features.ClassLabel(
                names=[str(i) for i in range(synth.NUM_DIGITS)]),
            'source_id': tfds.features.Scalar(
                dtype=np.int64, doc='index of the source scan in load_digits()'),
        }),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _generate_examples(self, split):
    yield from synth.video_examples(split)


class DigitsAudio(_Builder, skip_registration=True):
  """Spoken digits by espeak-ng voices, 1 s at 8 kHz, with background noise."""

  name = 'digits_audio'
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': _SEEDED_SPEECH}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            '"zero".."nine" spoken by espeak-ng (base English voice + '
            'variant, random rate and pitch), 8 kHz, 1.0 s, with white/pink '
            'noise (and sometimes hum) at 12-30 dB SNR. Validation and test '
            'use espeak-ng variants (hence speakers) absent from train.'),
        features=tfds.features.FeaturesDict({
            'waveform': tfds.features.Tensor(
                shape=(synth.AUDIO_SAMPLES,), dtype=np.int16, encoding='zlib'),
            'label': tfds.features.ClassLabel(names=list(synth.WORDS)),
            'speaker': tfds.features.Text(doc='espeak-ng voice+variant'),
            'rate': tfds.features.Scalar(dtype=np.int64, doc='words/minute'),
            'pitch': tfds.features.Scalar(dtype=np.int64, doc='0..100'),
            'snr_db': tfds.features.Scalar(dtype=np.float32),
        }),
        supervised_keys=('waveform', 'label'),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _generate_examples(self, split):
    yield from synth.audio_examples(split)


class _AVBuilder(_Builder, skip_registration=True):
  """Common base of the audio-visual datasets (see `synth.av_examples`); each subclass
  defines `_label_features()`, the features of its label."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  DESCRIPTION = ''

  def _info(self):
    n = synth.IMAGE_SIZE
    digits = [str(i) for i in range(synth.NUM_DIGITS)]
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            self.DESCRIPTION + ' Clips are 12 frames of 32x32 (one '
            'digits_image scan of the same split) with 1.5 s of 8 kHz audio '
            '(a word centred at 0.75 s, spoken by a voice of the same split '
            'of digits_audio); video and audio are degraded independently.'),
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(
                shape=(synth.AV_FRAMES, n, n, 1), dtype=np.uint8,
                encoding='zlib'),
            'waveform': tfds.features.Tensor(
                shape=(synth.AV_SAMPLES,), dtype=np.int16, encoding='zlib'),
            'shown': tfds.features.ClassLabel(names=digits),
            'spoken': tfds.features.ClassLabel(names=digits),
            'source_id': tfds.features.Scalar(
                dtype=np.int64, doc='index of the shown scan in load_digits()'),
            'speaker': tfds.features.Text(doc='espeak-ng voice+variant'),
            'snr_db': tfds.features.Scalar(dtype=np.float32),
            **self._label_features(),
        }),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _generate_examples(self, split):
    yield from synth.av_examples(self.name, split)


class AVDigits(_AVBuilder, skip_registration=True):
  """The same digit shown (noisy, occluded) and spoken (low SNR)."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Less video pixel noise.',
                   '1.2.0': 'Larger digits (20-24 px).',
                   '1.3.0': _SEEDED_SPEECH}

  name = 'av_digits'
  DESCRIPTION = (
      'A digit both shown (low contrast, heavy noise, an occluding patch) and '
      'spoken (low SNR); label = the digit.')

  def _label_features(self):
    return {'label': tfds.features.ClassLabel(
        names=[str(i) for i in range(synth.NUM_DIGITS)])}


class AVXor(_AVBuilder, skip_registration=True):
  """Independent shown and spoken digits; label = parity XOR (balanced)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Larger digits (21-23 px).',
                   '1.2.0': _SEEDED_SPEECH}

  name = 'av_xor'
  DESCRIPTION = (
      'Independent, uniform shown and spoken digits (clean-ish); label = '
      '(shown % 2) XOR (spoken % 2), exactly balanced.')

  def _label_features(self):
    return {'label': tfds.features.ClassLabel(names=['same_parity',
                                                     'different_parity'])}


class AVMultilabel(_AVBuilder, skip_registration=True):
  """Independent shown and spoken digits; labels = multi-hot of the two."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Less video pixel noise.',
                   '1.2.0': 'Larger digits (20-24 px).',
                   '1.3.0': _SEEDED_SPEECH}

  name = 'av_multilabel'
  DESCRIPTION = (
      'Independent, uniform shown and spoken digits (moderately degraded); '
      'labels = multi-hot float32 (10,) of {shown, spoken}.')

  def _label_features(self):
    return {'labels': tfds.features.Tensor(
        shape=(synth.NUM_DIGITS,), dtype=np.float32,
        doc='multi-hot of {shown, spoken}')}


BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    'digits_image': DigitsImage,
    'digits_video': DigitsVideo,
    'digits_audio': DigitsAudio,
    'av_digits': AVDigits,
    'av_xor': AVXor,
    'av_multilabel': AVMultilabel,
}
