r"""Folders and manifests of real media files, made locally (nothing downloaded), for the data
tests and the data bench:

* photos: crops of the two photos sklearn ships (`load_sample_images`: a temple in China, a
  flower), one class per source photo, JPEG or PNG, randomly placed, scaled and flipped;
* speech: WAV/FLAC files of espeak-ng saying digit words, one class per word, several voices;
* clips: MP4 files (PyAV, h264 or mpeg4) of a digit moving across a frame, with the spoken
  word as the audio track, class = the digit.

    uv run python scripts/make_media.py photos DIR --n=2000 --size=400x300
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


def sample_photos() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_images  # noqa: PLC0415
  return list(load_sample_images().images)  # two (427, 640, 3) uint8


def photo(rng, src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A random crop of `src` (60-100% of its shorter side), resized to `size` (w, h)."""
  from PIL import Image  # noqa: PLC0415
  h, w = src.shape[:2]
  side = int(min(h, w) * rng.uniform(0.6, 1.0))
  cw, ch = min(w, int(side * size[0] / size[1])), side
  top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
  img = Image.fromarray(src[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR)
  if rng.random() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(img)


def photos(root: str, n: int = 40, size=(64, 48), seed: int = 0, formats=('jpg', 'png'),
           splits: tuple[str, ...] = ()) -> list[str]:
  """n photos in ROOT/[<split>/]<china|flower>/NNNNN.<fmt>; returns the paths."""
  from PIL import Image  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  srcs = sample_photos()
  paths = []
  for i in range(n):
    cls = i % 2
    split = splits[(i // 2) % len(splits)] if splits else ''
    d = os.path.join(root, split, ('china', 'flower')[cls])
    os.makedirs(d, exist_ok=True)
    fmt = formats[i % len(formats)]
    path = os.path.join(d, f'{i:05d}.{fmt}')
    Image.fromarray(photo(rng, srcs[cls], size)).save(path, quality=90)
    paths.append(path)
  return paths


def speech(n_per_word: int = 4, words=WORDS, voices=('en-us', 'en', 'en-us+m3', 'en+f2')
           ) -> tuple[int, list[tuple[str, str, np.ndarray]]]:
  """(rate, [(word, voice, int16 samples)]) of espeak-ng saying each word in each voice."""
  from mmvit.data.digits import espeak  # noqa: PLC0415
  plan = [(w, voices[j % len(voices)], 150 + 10 * j, 40 + 5 * (j % 4), 1000 * k + j)
          for k, w in enumerate(words) for j in range(n_per_word)]
  rate, raws = espeak.synthesize([(w, v, r, p, s) for w, v, r, p, s in plan])
  return rate, [(w, v, x) for (w, v, *_), x in zip(plan, raws)]


def speech_folder(root: str, n_per_word: int = 4, words=WORDS[:4], formats=('wav', 'flac')
                  ) -> list[str]:
  """ROOT/<word>/NNN.<fmt> at espeak-ng's rate; returns the paths."""
  import soundfile  # noqa: PLC0415
  rate, utts = speech(n_per_word, words)
  paths = []
  for i, (w, _, x) in enumerate(utts):
    d = os.path.join(root, w)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f'{i:03d}.{formats[i % len(formats)]}')
    soundfile.write(path, x, rate)
    paths.append(path)
  return paths


def digit_frames(digit: int, frames: int, size: int, rng, angle: float | None = None
                 ) -> np.ndarray:
  """(frames, size, size, 3) uint8: a scan of `digit` moving at `angle` (radians; random if
  None)."""
  from PIL import Image  # noqa: PLC0415
  from sklearn.datasets import load_digits  # noqa: PLC0415
  d = load_digits()
  scans = d.images[d.target == digit]
  scan = scans[int(rng.integers(len(scans)))]
  glyph = np.asarray(Image.fromarray((scan * 15).astype(np.uint8)).resize(
      (size // 2, size // 2), Image.BICUBIC))
  angle = rng.uniform(0, 2 * np.pi) if angle is None else angle
  out = np.full((frames, size, size, 3), 20, np.uint8)
  y0, x0 = size // 4, size // 4
  for t in range(frames):
    # From the centre, up to size/4 px away by the last frame.
    dy = int(round(np.sin(angle) * (t - frames / 2) * size / (2 * frames)))
    dx = int(round(np.cos(angle) * (t - frames / 2) * size / (2 * frames)))
    y, x = np.clip(y0 + dy, 0, size // 2), np.clip(x0 + dx, 0, size // 2)
    out[t, y:y + size // 2, x:x + size // 2, :] = np.maximum(
        out[t, y:y + size // 2, x:x + size // 2, :], glyph[..., None])
  return out


def write_mp4(path: str, frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
              rate: int = 16000) -> None:
  """An MP4 (mpeg4 video, AAC audio when given) with PyAV."""
  import av  # noqa: PLC0415
  with av.open(path, 'w') as c:
    vs = c.add_stream('mpeg4', rate=fps)
    vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
    vs.bit_rate = 400_000
    a_s = None
    if audio is not None:
      a_s = c.add_stream('aac', rate=rate)
      a_s.layout = 'mono'
    for f in frames:
      for p in vs.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
        c.mux(p)
    for p in vs.encode():
      c.mux(p)
    if a_s is not None:
      x = (audio.astype(np.float32) / 32768.0)[None]
      frame = av.AudioFrame.from_ndarray(x, format='flt', layout='mono')
      frame.rate = rate
      for p in a_s.encode(frame):
        c.mux(p)
      for p in a_s.encode():
        c.mux(p)


def clips_folder(root: str, n_per_digit: int = 4, digits=(0, 1, 2, 3), frames: int = 16,
                 size: int = 32, fps: int = 8, with_audio: bool = True, seed: int = 0
                 ) -> list[str]:
  """ROOT/<word>/NNN.mp4: a digit moving, and (with_audio) espeak-ng saying it."""
  from scipy import signal  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  rate, utts = speech(n_per_digit, [WORDS[d] for d in digits]) if with_audio else (0, [])
  paths = []
  for i in range(n_per_digit * len(digits)):
    d = digits[i // n_per_digit]
    folder = os.path.join(root, WORDS[d])
    os.makedirs(folder, exist_ok=True)
    audio = None
    if with_audio:
      x = utts[i][2].astype(np.float64)
      x = signal.resample_poly(x, 16000, rate)
      n = int(16000 * frames / fps)
      # The word in the middle of the clip, as the central test window sees it.
      before = max(0, n - len(x)) // 2
      audio = np.clip(np.pad(x, (before, max(0, n - len(x) - before)))[:n], -32768,
                      32767).astype(np.int16)
    path = os.path.join(folder, f'{i:03d}.mp4')
    write_mp4(path, digit_frames(d, frames, size, rng), fps, audio)
    paths.append(path)
  return paths


def write_manifest(path: str, rows: list[dict]) -> str:
  """rows -> CSV (.csv) or JSON lines (.jsonl)."""
  import json  # noqa: PLC0415
  if path.endswith('.jsonl'):
    with open(path, 'w') as f:
      for r in rows:
        f.write(json.dumps(r) + '\n')
  else:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
      w = csv.DictWriter(f, keys)
      w.writeheader()
      w.writerows(rows)
  return path


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
  from PIL import Image  # noqa: PLC0415
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, 'JPEG', quality=quality)
  return buf.getvalue()


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument('kind', choices=('photos', 'speech', 'clips'))
  p.add_argument('root')
  p.add_argument('--n', type=int, default=2000)
  p.add_argument('--size', default='400x300')
  args = p.parse_args(argv)
  if args.kind == 'photos':
    w, h = (int(x) for x in args.size.split('x'))
    photos(args.root, args.n, (w, h), formats=('jpg',))
  elif args.kind == 'speech':
    speech_folder(args.root, max(1, args.n // 10), WORDS)
  else:
    clips_folder(args.root, max(1, args.n // 10), tuple(range(10)))
  print(f'wrote {args.kind} to {args.root}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
