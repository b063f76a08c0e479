"""Every built split has a fingerprint: a hash of its decoded records, independent of file
order, compared with the reference build's; a mismatch is one warning line, not an error."""

import logging

import numpy as np

from mmvit import data
from mmvit.data import __main__ as data_cli
from mmvit.data import fingerprints
from mmvit.data.digits import reference


def records():
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 255, (4, 4, 1), dtype=np.uint8), "label": np.int64(i),
           "id": f"scan{i}".encode()} for i in range(5)]


def test_a_fingerprint_ignores_record_order_but_not_one_changed_value():
  recs = records()
  fp = fingerprints.fingerprint(recs)
  assert fingerprints.fingerprint(recs[::-1]) == fp
  changed = [dict(r) for r in recs]
  changed[2]["image"] = changed[2]["image"].copy()
  changed[2]["image"][0, 0, 0] ^= 1
  assert fingerprints.fingerprint(changed) != fp
  relabelled = [dict(r) for r in recs]
  relabelled[0]["label"] = np.int64(7)
  assert fingerprints.fingerprint(relabelled) != fp
  # The dtype is part of a value: the same numbers stored wider are other data.
  wider = [{**r, "image": r["image"].astype(np.int16)} for r in recs]
  assert fingerprints.fingerprint(wider) != fp


def test_a_mismatch_is_one_warning_line_naming_dataset_split_and_both_fingerprints(
    caplog):
  with caplog.at_level(logging.WARNING):
    assert fingerprints.check("toy", "1.0.0", "train", "aaaa", "aaaa")
    assert caplog.records == []
    assert not fingerprints.check("toy", "1.0.0", "train", "bbbb", "aaaa")
  (rec,) = caplog.records
  line = rec.getMessage()
  assert "\n" not in line
  for word in ("toy", "1.0.0", "train", "aaaa", "bbbb"):
    assert word in line
  assert fingerprints.check("toy", "1.0.0", "test", "cccc", None)  # no reference: nothing to say


def test_inspect_prints_each_splits_records_and_fingerprint(data_dir, capsys):
  code = data_cli.main(["inspect", "digits_image", f"--data_dir={data_dir}", "--no-balance"])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3
  found = data.inspect("digits_image", data_dir)
  for line, (split, r) in zip(lines, found.items()):
    assert split in line and str(r["records"]) in line and r["fingerprint"] in line
  # Exit 1 only where a split differs from the reference build (reported, not raised).
  # The digits suite's reference fingerprints live with the suite, not in generic code.
  assert all(r["reference"] == reference.FINGERPRINTS[("digits_image", "1.0.0")][s]
             for s, r in found.items())
  differs = any(r["fingerprint"] != r["reference"] for r in found.values())
  assert code == (1 if differs else 0)
