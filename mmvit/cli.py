"""Command-line pieces the entry points share (mmvit.main, mmvit.plan). Imports no jax, so a
signal handler can be installed before anything slow."""

from __future__ import annotations

import re

from absl import app

_OVERRIDE = re.compile(r"-{1,2}(no)?config\.([^=]*)(?:=(.*))?", re.DOTALL)


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None, bool]]]:
  """Takes the --config.<field>[=VALUE] overrides (also `--config.<field> VALUE` and
  `--noconfig.<field>`) out of argv, for config.load; the rest is for absl."""
  rest, overrides, i = argv[:1], [], 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--":  # absl: no flags after it
      rest += argv[i:]
      break
    m = _OVERRIDE.fullmatch(arg)
    if m is None:
      rest.append(arg)
    else:
      negated, path, value = m.group(1) is not None, m.group(2), m.group(3)
      if value is None and not negated and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        i += 1
        value = argv[i]
      overrides.append((path, value, negated))
    i += 1
  return rest, overrides


def parse_flags(argv: list[str]):
  rest, overrides = split_overrides(argv)
  return app.parse_flags_with_usage(rest), overrides
