"""python -m mmvit.data inspect [NAME ...] [--data_dir=DIR]

Per split of each dataset (default: every dataset already built in the data dir): the number
of records, its fingerprint (a hash of the decoded records, independent of file order) and
whether it matches the reference build's, so two machines can tell whether they train on the
same data.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmvit import data as data_lib


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmvit.data")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("inspect", help="records and fingerprints per split")
  p.add_argument("names", nargs="*", help=f"datasets (of {', '.join(data_lib.DATASETS)})")
  p.add_argument("--data_dir", default=None, help="default: $MMVIT_DATA_DIR or ~/.cache/mmvit/data")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or data_lib.default_data_dir()
  names = args.names or [n for n in data_lib.DATASETS if os.path.isdir(os.path.join(data_dir, n))]
  if not names:
    print(f"no dataset built in {data_dir}; name one to build it", file=sys.stderr)
    return 2
  mismatches = 0
  for name in names:
    try:
      splits = data_lib.inspect(name, data_dir)
    except data_lib.DataError as e:
      print(f"data error: {e}", file=sys.stderr)
      return 2
    for split, r in splits.items():
      ref = r["reference"]
      status = ("no reference" if ref is None else "matches the reference build"
                if ref == r["fingerprint"] else f"DIFFERS from the reference build {ref}")
      mismatches += ref is not None and ref != r["fingerprint"]
      print(f"{name:14s} {split:10s} {r['records']:6d} records  {r['fingerprint']}  {status}")
  return 1 if mismatches else 0


if __name__ == "__main__":
  sys.exit(main())
