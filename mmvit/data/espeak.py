"""Minimal ctypes binding to the libespeak-ng shipped in the `espeakng-loader` wheel.

Only what the `digits_audio` builder needs: synchronous synthesis of a short text
into int16 samples with a given voice (``base+variant``), rate (wpm) and pitch.
Everything is local (library and voice data live inside the wheel); nothing is
downloaded.

libespeak-ng keeps global state, so a process has one `Synthesizer` (see
`get_synthesizer`) and calls into it are serialised with a lock. Its output is
deterministic for a fixed *sequence* of calls in a process, but a call's samples
can depend slightly on the calls before it, so callers that want reproducible
audio should synthesise in a fixed order.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import numpy as np

# espeak_AUDIO_OUTPUT
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options
_INITIALIZE_DONT_EXIT = 0x8000
# espeak_PARAMETER
_RATE = 1
_PITCH = 3
# espeak_POSITION_TYPE / flags
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
  pass


def data_path() -> str:
  import espeakng_loader  # pylint: disable=g-import-not-at-top

  return espeakng_loader.get_data_path()


def english_voices() -> list[str]:
  """Base English voices in the data path (file names under lang/gmw/en*).

  `en-Shaw` (Shavian script reading) is excluded.
  """
  d = os.path.join(data_path(), 'lang', 'gmw')
  return sorted(
      f for f in os.listdir(d) if f.startswith('en') and f != 'en-Shaw'
  )


def variants() -> list[str]:
  """Voice variants (file names under voices/!v), usable as ``voice+variant``."""
  d = os.path.join(data_path(), 'voices', '!v')
  return sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))


class Synthesizer:
  """One libespeak-ng instance in synchronous retrieval mode."""

  def __init__(self):
    import espeakng_loader  # pylint: disable=g-import-not-at-top

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synchronize.restype = ctypes.c_int
    self._lib = lib
    self._lock = threading.Lock()
    self._chunks: list[np.ndarray] = []
    self._callback = _CALLBACK(self._on_samples)  # keep a reference
    sr = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(),
        _INITIALIZE_DONT_EXIT)
    if sr <= 0:
      raise EspeakError(f'espeak_Initialize failed (returned {sr})')
    self.sample_rate = int(sr)
    lib.espeak_SetSynthCallback(self._callback)
    self._variants = set(variants())

  def _on_samples(self, wav, n, events):
    del events
    if n > 0 and wav:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0

  def synth(self, text: str, voice: str, *, rate: int = 175,
            pitch: int = 50) -> np.ndarray:
    """Returns int16 samples at `self.sample_rate` for `text`.

    Args:
      text: what to say.
      voice: ``base`` or ``base+variant`` (e.g. ``en-US+m3``). Unknown variants
        are rejected here (libespeak-ng would silently ignore them).
      rate: words per minute (80..450).
      pitch: base pitch 0..100 (50 is the voice's default).
    """
    if '+' in voice and voice.split('+', 1)[1] not in self._variants:
      raise EspeakError(f'unknown espeak-ng variant in {voice!r}')
    lib = self._lib
    with self._lock:
      self._chunks = []
      if (err := lib.espeak_SetVoiceByName(voice.encode())) != 0:
        raise EspeakError(f'espeak_SetVoiceByName({voice!r}) failed ({err})')
      lib.espeak_SetParameter(_RATE, int(rate), 0)
      lib.espeak_SetParameter(_PITCH, int(pitch), 0)
      buf = text.encode('utf-8') + b'\0'
      err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                             None, None)
      if err != 0:
        raise EspeakError(f'espeak_Synth({text!r}, {voice!r}) failed ({err})')
      lib.espeak_Synchronize()
      chunks, self._chunks = self._chunks, []
    if not chunks:
      return np.zeros((0,), np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)


@functools.cache
def get_synthesizer() -> Synthesizer:
  return Synthesizer()
