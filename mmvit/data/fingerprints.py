"""Fingerprints of built splits: a hash of the decoded records, independent of file order.

Two builds of the same code give the same records (synth.py seeds every draw), but a build on
another platform may not: resampling and mel filterbanks are floating-point numerics, and
libespeak-ng's output may differ between builds of the library. So each built split's
fingerprint is compared with the one its source recorded from a reference build (the digits
suite: `mmvit.data.digits.reference`);
a mismatch is reported in one line, not raised: the data are still valid, only not the data
the published results were measured on.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

_log = logging.getLogger(__name__)

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


def check(name: str, version: str, split: str, found: str, want: str | None) -> bool:
  """Logs one line when a split's fingerprint `found` differs from the reference `want`."""
  if want is not None and want != found:
    _log.warning("%s %s split %s: fingerprint %s, the reference build has %s (its records "
                 "differ: results may differ from the published ones)", name, version, split,
                 found, want)
    return False
  return True
