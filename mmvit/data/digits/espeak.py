"""Minimal ctypes binding to the libespeak-ng shipped in the `espeakng-loader` wheel.

Only what the `digits_audio` builder needs: synchronous synthesis of a short text
into int16 samples with a given voice (``base+variant``), rate (wpm) and pitch.
Everything is local (library and voice data live inside the wheel); nothing is
downloaded.

libespeak-ng keeps global state, so a process has one `Synthesizer` (see
`get_synthesizer`) and calls into it are serialised with a lock. Two things make
its output differ between builds unless handled (measured: 240 of 3,200 train
utterances differed between two builds, all of them from noisy variants such as
whisper, f3 or Demonic):
* its noise generator (breath, whisper) is seeded from the clock at
  initialisation; `synth(seed=...)` reseeds it before each utterance;
* a call's samples depend on the calls before it in the process (lengths move by
  tens of samples; neither reseeding nor re-initialising the library resets it).
`synthesize` therefore runs a whole list of utterances, seeded, in a fresh
process: the same list gives the same samples in every build.
"""

from __future__ import annotations

from collections.abc import Sequence
import ctypes
import functools
import os
import pickle
import subprocess
import sys
import tempfile
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
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
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
            pitch: int = 50, seed: int | None = None) -> np.ndarray:
    """Returns int16 samples at `self.sample_rate` for `text`.

    Args:
      text: what to say.
      voice: ``base`` or ``base+variant`` (e.g. ``en-US+m3``). Unknown variants
        are rejected here (libespeak-ng would silently ignore them).
      rate: words per minute (80..450).
      pitch: base pitch 0..100 (50 is the voice's default).
      seed: reseeds libespeak-ng's noise generator first (None: go on from its
        state, which starts from the clock).
    """
    if '+' in voice and voice.split('+', 1)[1] not in self._variants:
      raise EspeakError(f'unknown espeak-ng variant in {voice!r}')
    lib = self._lib
    with self._lock:
      self._chunks = []
      if seed is not None:
        lib.espeak_ng_SetRandSeed(int(seed) % 2**31)
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


Utterance = tuple[str, str, int, int, int]  # text, voice, rate, pitch, seed


def _synthesize_here(utterances: list[Utterance]) -> tuple[int, list[np.ndarray]]:
  synth = get_synthesizer()
  return synth.sample_rate, [synth.synth(t, v, rate=r, pitch=p, seed=s)
                             for t, v, r, p, s in utterances]


def synthesize(utterances: Sequence[Utterance]) -> tuple[int, list[np.ndarray]]:
  """(sample rate, int16 samples of each utterance), synthesised in order in a fresh
  process, so the result depends on nothing that ran before (see the module doc)."""
  # A plain child process rather than multiprocessing: spawn re-imports the caller's
  # __main__ (fails for `python -` and reruns unguarded scripts); fork would inherit
  # this process's espeak state and JAX's threads.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [root] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'speech.pkl')
    proc = subprocess.run(
        [sys.executable, '-m', 'mmvit.data.digits.espeak', out],
        input=pickle.dumps(list(utterances)), capture_output=True, env=env,
        check=False)
    if proc.returncode != 0:
      tail = proc.stderr.decode(errors='replace').strip().splitlines()[-1:]
      raise EspeakError(f'espeak-ng synthesis process failed: {" ".join(tail)}')
    with open(out, 'rb') as f:
      return pickle.load(f)


if __name__ == '__main__':
  # The child of `synthesize`: utterances (pickled) on stdin, result to argv[1].
  result = _synthesize_here(pickle.load(sys.stdin.buffer))
  with open(sys.argv[1], 'wb') as f:
    pickle.dump(result, f)
