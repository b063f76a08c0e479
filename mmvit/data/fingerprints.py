"""Fingerprints of built splits: a hash of the decoded records, independent of file order.

Two builds of the same code give the same records (synth.py seeds every draw), but a build on
another platform may not: resampling and mel filterbanks are floating-point numerics, and
libespeak-ng's output may differ between builds of the library. So each built split's
fingerprint is compared with the one recorded here when it was built on the reference machine;
a mismatch is reported in one line, not raised: the data are still valid, only not the data
the published results were measured on.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

_log = logging.getLogger(__name__)

# (dataset, version) -> split -> fingerprint, as built by this code on the reference machine
# (AMD EPYC, 2 cores, x86-64 Linux, Python 3.11, numpy/scipy from uv.lock).
EXPECTED: dict[tuple[str, str], dict[str, str]] = {
    ("digits_image", "1.0.0"): {"train": "fba58d3075cf3ea5", "validation": "2d6e79179c392ad4",
                                "test": "4aca4d74e532b35e"},
    ("digits_video", "1.1.0"): {"train": "4ea91c2d57805aae", "validation": "53b3683f96b911dc",
                                "test": "457e1598211afaf1"},
    ("digits_audio", "1.1.0"): {"train": "0745adb188282d58", "validation": "e1b44df123658f86",
                                "test": "b84ef27c78bb3b83"},
    ("av_digits", "1.3.0"): {"train": "9e36dbbe2c428f6c", "validation": "7da531ece47df87b",
                             "test": "2c47c62bac3b8a2c"},
    ("av_xor", "1.2.0"): {"train": "bf33d07ec263b2bf", "validation": "763a772eaced3b8b",
                          "test": "ce67811524d4aea0"},
    ("av_multilabel", "1.3.0"): {"train": "004125b8cefcda56", "validation": "72cc15d2524bed67",
                                 "test": "0bcb87e24b5b4fad"},
}


def record_digest(record: dict) -> bytes:
  """sha256 of one decoded record: every key with its value's dtype, shape and bytes."""
  h = hashlib.sha256()
  for key in sorted(record):
    v = np.asarray(record[key])
    if v.dtype == object:  # tfds decodes text features to bytes objects
      v = np.asarray([bytes(x) if isinstance(x, (bytes, bytearray)) else str(x).encode()
                      for x in v.reshape(-1)], dtype=object)
      payload = b"\0".join(v.tolist())
    else:
      payload = np.ascontiguousarray(v).tobytes()
    h.update(f"{key}|{v.dtype.str}|{v.shape}|".encode())
    h.update(payload)
  return h.digest()


def fingerprint(records) -> str:
  """16 hex digits over the sorted record digests, so file and shard order do not matter."""
  h = hashlib.sha256()
  for d in sorted(record_digest(r) for r in records):
    h.update(d)
  return h.hexdigest()[:16]


def split_fingerprint(source) -> str:
  return fingerprint(source[i] for i in range(len(source)))


def expected(name: str, version: str, split: str) -> str | None:
  return EXPECTED.get((name, str(version)), {}).get(split)


def check(name: str, version: str, split: str, found: str) -> bool:
  """Logs one line when a split's fingerprint differs from the recorded one."""
  want = expected(name, version, split)
  if want is not None and want != found:
    _log.warning("%s %s split %s: fingerprint %s, the reference build has %s (its records "
                 "differ: results may differ from the published ones)", name, version, split,
                 found, want)
    return False
  return True
