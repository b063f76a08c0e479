"""Which source serves a dataset name.

A task's `dataset` is one of:
* a registered name (the digits suite registers its six datasets, `mmvit.data.digits`);
* ``tfds:NAME[/CONFIG][:VERSION]``: a TFDS dataset already prepared in ``data_dir`` in
  array_record format (prepared elsewhere; nothing is downloaded);
* the name of a dataset built by ``python -m mmvit.data build`` into ``data_dir``.
"""

from __future__ import annotations

import threading

from mmvit.data.base import DataError, Source

_LOCK = threading.Lock()
_SOURCES: dict[str, Source] = {}
_BUILTINS_LOADED = False


def register(source: Source) -> Source:
  """Makes `source` the one that serves `source.name` (a second one for a name is an error)."""
  with _LOCK:
    if source.name in _SOURCES and _SOURCES[source.name] is not source:
      raise ValueError(f'dataset {source.name!r} is registered twice')
    _SOURCES[source.name] = source
  return source


def _load_builtins() -> None:
  global _BUILTINS_LOADED
  if not _BUILTINS_LOADED:
    import mmvit.data.digits  # noqa: F401, PLC0415  (registers its datasets)
    _BUILTINS_LOADED = True


def names() -> tuple[str, ...]:
  """The registered names, in registration order."""
  _load_builtins()
  return tuple(_SOURCES)


def get(name: str) -> Source:
  """The source of `name` (DataError for a name that is none of the forms above)."""
  _load_builtins()
  if not isinstance(name, str) or not name:
    raise DataError(f'unknown dataset {name!r}: expected one of {", ".join(names())}, '
                    "'tfds:NAME[:VERSION]' or the name of a dataset built with "
                    '`python -m mmvit.data build`')
  if name in _SOURCES:
    return _SOURCES[name]
  from mmvit.data import tfds_dir  # noqa: PLC0415
  if name.startswith('tfds:'):
    return tfds_dir.TfdsSource.from_spec(name)
  if tfds_dir.valid_name(name):
    return tfds_dir.BuiltSource(name)  # DataError when it is not built in data_dir
  raise DataError(f'unknown dataset {name!r}: expected one of {", ".join(names())}, '
                  "'tfds:NAME[:VERSION]' or the name of a dataset built with "
                  '`python -m mmvit.data build` (lower case, digits, _)')
