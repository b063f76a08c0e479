"""python -m mmvit.data {build,inspect}

  build    a dataset from a folder of images, audio or video, or a manifest (`build`):
           python -m mmvit.data build --name=pets --images=~/pets --data_dir=DIR
  inspect  per split: records, fingerprint (a hash of the decoded records, independent of file
           order) and whether it matches the reference build's; class balance, input shapes
           and durations; with --sheet=FILE.png a contact sheet of examples (--pp: after an
           eval pp string, as the model sees them).
"""

from __future__ import annotations

import argparse
import os
import sys

from mmvit import data as data_lib


def _csv(s: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in s.split(',') if x.strip()) if s else ()


def _ratios(s: str) -> tuple[float, float, float]:
  try:
    r = tuple(float(x) for x in s.split(','))
  except ValueError:
    r = ()
  if len(r) != 3 or any(x < 0 for x in r) or r[0] <= 0:
    raise argparse.ArgumentTypeError(f'{s!r}: expected train,validation,test fractions, e.g. '
                                     '0.8,0.1,0.1')
  return r  # type: ignore[return-value]


def _classes(s: str | None) -> dict[str, list[str]] | None:
  """KEY=a;b;c,... or a file with one class per line (for the one label column)."""
  if not s:
    return None
  if os.path.isfile(s):
    with open(s) as f:
      return {'*': [line.strip() for line in f if line.strip()]}
  out = {}
  for part in s.split(','):
    k, _, v = part.partition('=')
    out[k.strip()] = [x.strip() for x in v.split(';') if x.strip()]
  return out


def build_parser(sub) -> None:
  p = sub.add_parser('build', help='a dataset from your files (array_record, read as tfds:)')
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--images', help='ROOT/<class>/*.jpg|png|webp or ROOT/<split>/<class>/...')
  src.add_argument('--audio', help='ROOT/<class>/*.wav|flac|ogg (or with split folders)')
  src.add_argument('--video', help='ROOT/<class>/*.mp4|avi|mkv|webm (or with split folders)')
  src.add_argument('--manifest', help='a .csv or .jsonl with image/audio/video path columns')
  p.add_argument('--name', required=True, help='the dataset name tasks give as `dataset`')
  p.add_argument('--data_dir', default=None,
                 help='default: $MMVIT_DATA_DIR or ~/.cache/mmvit/data')
  p.add_argument('--labels', default='', help='manifest: label column(s), one head each')
  p.add_argument('--multilabel', default='',
                 help='manifest: ;-separated multi-label column(s), stored multi-hot')
  p.add_argument('--targets', default='',
                 help='manifest: numeric column(s), stored float32 for a regression head')
  p.add_argument('--classes', default=None,
                 help='the allowed classes: KEY=a;b;c,... or a file of lines; others are errors')
  p.add_argument('--rate', type=int, default=16000, help='audio sample rate (Hz)')
  p.add_argument('--fps', type=float, default=None, help='video frames per second (default: '
                 "the file's)")
  p.add_argument('--short_side', type=int, default=None, help='video: shorter side (px)')
  p.add_argument('--audio_track', action='store_true', help='video: keep its audio as audio')
  p.add_argument('--max_seconds', type=float, default=None, help='audio/video: keep the first')
  p.add_argument('--ratios', type=_ratios, default=(0.8, 0.1, 0.1),
                 help='train,validation,test fractions where no split is given')
  p.add_argument('--seed', type=int, default=0, help='of the split by ratios')
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                 help='decoding processes (0: in this process)')
  p.add_argument('--skip_bad', action='store_true',
                 help='skip files that cannot be used (listed in skipped.txt)')
  p.add_argument('--version', default='1.0.0')
  p.add_argument('--quiet', action='store_true', help='no progress bar')


def run_build(args) -> int:
  import logging  # noqa: PLC0415

  from mmvit.data import build  # noqa: PLC0415
  logging.getLogger('absl').setLevel(logging.WARNING)  # tfds' "downloaded and prepared"
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir or data_lib.default_data_dir()))
  multi = set(_csv(args.multilabel))
  if args.manifest:
    items = build.read_manifest(os.path.expanduser(args.manifest), _csv(args.labels),
                                tuple(sorted(multi)), _csv(args.targets))
  else:
    if args.targets:
      raise build.BuildError('--targets: numeric columns come from a --manifest')
    modality = 'image' if args.images else 'audio' if args.audio else 'video'
    root = os.path.expanduser(args.images or args.audio or args.video)
    items = build.scan_folder(root, modality)
  classes = _classes(args.classes)
  if classes and '*' in classes:
    keys = {k for it in items for k, v in it.labels.items() if not isinstance(v, float)}
    if len(keys) != 1:
      raise build.BuildError(f'--classes={args.classes}: a file of classes needs exactly one '
                             f'label column, there are {", ".join(sorted(keys))}')
    classes = {next(iter(keys)): classes['*']}
  opts = build.Options(
      name=args.name, data_dir=data_dir, rate=args.rate, fps=args.fps,
      short_side=args.short_side, audio_track=args.audio_track, max_seconds=args.max_seconds,
      ratios=args.ratios, seed=args.seed, workers=args.workers, skip_bad=args.skip_bad,
      version=args.version, progress=not args.quiet, targets=_csv(args.targets))
  report = build.build(items, opts, multi, classes)
  counts = ', '.join(f'{s} {n}' for s, n in report['splits'].items())
  classes_txt = '; '.join([f'{k}: {len(v)} classes' for k, v in report['classes'].items()] + [
      f'{k}: target, train mean {s["mean"][0]:.4g}, std {s["std"][0]:.4g}'
      for k, s in report['targets'].items()])
  print(f'built {args.name} {args.version} in {data_dir}: {counts} ({classes_txt}); '
        f'{report["files_per_s"]:.1f} files/s')
  if report['skipped']:
    print(f'skipped {len(report["skipped"])} file(s), listed in '
          f'{os.path.join(data_dir, args.name, args.version, "skipped.txt")}')
  return 0


def run_inspect(args) -> int:
  data_dir = args.data_dir or data_lib.default_data_dir()
  names = args.names or [n for n in data_lib.DATASETS if os.path.isdir(os.path.join(data_dir, n))]
  if not names:
    print(f'no dataset built in {data_dir}; name one to build it', file=sys.stderr)
    return 2
  from mmvit.data import report  # noqa: PLC0415
  mismatches = 0
  for name in names:
    splits = data_lib.inspect(name, data_dir)
    for split, r in splits.items():
      ref = r['reference']
      status = ('no reference' if ref is None else 'matches the reference build'
                if ref == r['fingerprint'] else f'DIFFERS from the reference build {ref}')
      mismatches += ref is not None and ref != r['fingerprint']
      print(f'{name:14s} {split:10s} {r["records"]:6d} records  {r["fingerprint"]}  {status}')
    if args.balance:
      for line in report.summary(name, data_dir):
        print(line)
    if args.sheet:
      path = args.sheet if len(names) == 1 else args.sheet.replace('.png', f'_{name}.png')
      report.contact_sheet(name, path, data_dir, split=args.split, pp=args.pp)
      print(f'contact sheet: {path}')
  return 1 if mismatches else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mmvit.data')
  sub = parser.add_subparsers(dest='command', required=True)
  build_parser(sub)
  p = sub.add_parser('inspect', help='records and fingerprints per split')
  p.add_argument('names', nargs='*', help="datasets (default: the digits suite's that are built)")
  p.add_argument('--data_dir', default=None, help='default: $MMVIT_DATA_DIR or ~/.cache/mmvit/data')
  p.add_argument('--balance', action=argparse.BooleanOptionalAction, default=True,
                 help='per split: class balance, input shapes and durations')
  p.add_argument('--sheet', default=None, help='a PNG contact sheet of examples to write')
  p.add_argument('--split', default='train', help='of the contact sheet')
  p.add_argument('--pp', default=None, help="the sheet after this eval pp string (as the "
                 "model sees it), e.g. 'decode|resize_small(64)|central_crop(64)'")
  args = parser.parse_args(argv)
  try:
    return run_build(args) if args.command == 'build' else run_inspect(args)
  except data_lib.DataError as e:
    print(f'data error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted: nothing was built', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
