"""The claims tables of scripts/compare.py and scripts/tables.py: which runs are grouped
together, and when a difference from single-task is called beyond the seed-to-seed spread."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
import compare  # noqa: E402
import tables  # noqa: E402


def _row(scale=1.0, **top1):
  return {"scale": scale, "test": {t: {"top1": v} for t, v in top1.items()}}


def _table():
  t = {}
  for seed, (single, full, half) in enumerate([(0.90, 0.93, 0.88), (0.91, 0.94, 0.89),
                                              (0.89, 0.95, 0.90)]):
    t[f"single_audio_s{seed}"] = _row(audio=single)
    t[f"cotrain_weighted_s{seed}"] = _row(audio=full)
    t[f"cotrain_weighted_x0.5_s{seed}"] = _row(0.5, audio=half)
    t[f"cotrain_weighted_lowdata_s{seed}"] = _row(audio=0.5)  # not a budget row
  return t


def test_fewer_steps_groups_weighted_runs_by_budget_and_ignores_other_rows():
  points = compare.fewer_steps(_table())
  assert points == {"audio": {1.0: [0.93, 0.94, 0.95], 0.5: [0.88, 0.89, 0.90]}}


def test_fewer_steps_plot_is_written(tmp_path):
  pytest.importorskip("matplotlib")
  path = tmp_path / "fewer.png"
  compare.plot_fewer_steps(_table(), str(path))
  assert path.stat().st_size > 1000


def test_claims_table_marks_a_difference_beyond_twice_its_spread_only(tmp_path):
  path = tmp_path / "claims.json"
  path.write_text(json.dumps(_table()))
  rows = {line.split("|")[1].strip(): line for line in tables.claims(str(path)).splitlines()}
  # +4.0 points with a spread of sqrt(1/3 + 1/3) = 0.8: beyond it.
  assert "+4.0 ± 0.8 beyond spread" in rows["cotrain_weighted"]
  # -1.0 points with the same spread: within it.
  assert "-1.0 ± 0.8" in rows["cotrain_weighted_x0.5"]
  assert "beyond" not in rows["cotrain_weighted_x0.5"]
  assert rows["single-task"].count("90.0 ± 1.0 (n=3)") == 1


def test_sources_digest_changes_with_any_config_or_package_file(tmp_path, monkeypatch):
  """A results row is reused only when configs/ and mmvit/ are what they were."""
  for top in ("configs", "mmvit/data"):
    (tmp_path / top).mkdir(parents=True)
  (tmp_path / "configs" / "demo.py").write_text("STEPS = 1\n")
  (tmp_path / "mmvit" / "data" / "ops.py").write_text("x = 1\n")
  (tmp_path / "mmvit" / "notes.txt").write_text("not code\n")
  monkeypatch.setattr(compare, "ROOT", str(tmp_path))
  before = compare.sources_digest()
  assert compare.sources_digest() == before
  (tmp_path / "mmvit" / "notes.txt").write_text("other\n")
  assert compare.sources_digest() == before
  (tmp_path / "mmvit" / "data" / "ops.py").write_text("x = 2\n")
  changed = compare.sources_digest()
  assert changed != before
  (tmp_path / "mmvit" / "data" / "ops.py").write_text("x = 1\n")
  assert compare.sources_digest() == before
  (tmp_path / "configs" / "demo.py").write_text("STEPS = 2\n")
  assert compare.sources_digest() not in (before, changed)
