r"""Input throughput, as ratios measured in one run on this machine (issue 11's figures):

* images: the train pipeline (decode, inception crop 224, flip, normalize, batch 64) over a
  folder of JPEG photos of 400x300 (crops of sklearn's two photos), against a plain
  single-process PIL loop (decode, random crop, resize, flip, normalize) over the same files;
  pipeline with 0 and with 2 worker processes, shipping float32 batches or (the trainer's
  default, `data_affine_on_device`) uint8 batches that a jitted affine normalises on the
  device, included in the time. Targets: >= 0.9x (0 workers), >= 1.5x (2).
* audio and video: clips/s of the pipeline (crop + log-mel; sample 8 frames + decode + crop)
  against plain soundfile / PyAV loops over the source files.
* build: files/s of `python -m mmvit.data build` (2 workers) against a plain decode loop.

    uv run python scripts/bench_data.py [--photos=2000] [--out=docs/bench_data.json]

Run it alone: another heavy job on a 2-core machine spoils every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_media  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_PP = dict(train=f"decode|inception_crop(224)|flip_lr|value_range(0, 1)|"
                      f"normalize({MEAN}, {STD})",
                eval="decode|resize_small(256)|central_crop(224)|value_range(0, 1)")


def files_of(root):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def plain_images(paths, n, seed=0):
  """What a user writes without a framework: PIL decode, random crop, resize, flip, normalise."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
  t0 = time.perf_counter()
  for i in range(n):
    with Image.open(paths[i % len(paths)]) as im:
      im = im.convert("RGB")
      w, h = im.size
      side = int(min(w, h) * rng.uniform(0.5, 1.0))
      left, top = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
      im = im.resize((224, 224), Image.BILINEAR, box=(left, top, left + side, top + side))
      x = np.asarray(im, np.float32) / 255.0
      if rng.random() < 0.5:
        x = x[:, ::-1]
      _ = (x - mean) / std
  return n / (time.perf_counter() - t0)


def pipeline_rate(name, data_dir, pp, n_batches, batch, workers=0, device_affine=False):
  """Examples/s into the step. With `device_affine` (the trainer's default) the pipeline stops
  before its trailing value_range / normalize, and the timed loop includes what the trainer
  then does: put the uint8 batch on the device and apply the jitted affine."""
  import jax
  import jax.numpy as jnp
  from mmvit import data
  it = data.train_iterator(name, batch_size=batch, seed=0, data_dir=data_dir, pp=pp,
                           workers=workers, device_affine=device_affine)
  affines = data.device_affines(name, data_dir, pp).get("train", ()) if device_affine else ()

  @jax.jit
  def on_device(b):
    return {**b, **{a.key: a(b[a.key], jnp) for a in affines}}

  def step_input(b):
    if not device_affine:
      return b
    return jax.block_until_ready(on_device(jax.device_put(b)))
  step_input(next(it))  # start-up (worker processes, first reads, compiling) is not throughput
  t0 = time.perf_counter()
  for _ in range(n_batches):
    step_input(next(it))
  rate = n_batches * batch / (time.perf_counter() - t0)
  if hasattr(it, "close"):
    it.close()
  return rate


def plain_audio(paths, n, rate=16000):
  import soundfile
  from scipy import signal
  from mmvit.data import ops
  mel = ops.parse(f"log_mel({rate}, bins=128)")[0]
  t0 = time.perf_counter()
  for i in range(n):
    x, sr = soundfile.read(paths[i % len(paths)], dtype="float32", always_2d=True)
    x = signal.resample_poly(x.mean(axis=1), rate, sr)[:rate]
    x = np.pad(x, (0, rate - len(x)))
    mel({"audio": x})
  return n / (time.perf_counter() - t0)


def plain_video(paths, n, frames=8):
  import av
  t0 = time.perf_counter()
  for i in range(n):
    with av.open(paths[i % len(paths)]) as c:
      got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    clip = np.stack(got[:frames]).astype(np.float32) / 127.5 - 1
    _ = clip[:, 2:30, 2:30]
  return n / (time.perf_counter() - t0)


def plain_decode(paths):
  from PIL import Image
  t0 = time.perf_counter()
  for p in paths:
    with Image.open(p) as im:
      im.load()
  return len(paths) / (time.perf_counter() - t0)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--photos", type=int, default=2000)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--out", default=None)
  p.add_argument("--keep", default=None, help="a folder to keep the made files in")
  args = p.parse_args(argv)
  from mmvit.data import __main__ as cli

  tmp = args.keep or tempfile.mkdtemp(prefix="mmvit_bench_data_")
  data_dir = os.path.join(tmp, "data")
  out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
  photos = os.path.join(tmp, "photos")
  if not os.path.isdir(photos):
    make_media.photos(photos, args.photos, (400, 300), formats=("jpg",))
  paths = files_of(photos)
  print(f"{len(paths)} JPEG photos of 400x300 in {photos}", flush=True)

  # Build: files/s against a plain decode of the same files.
  base = plain_decode(paths)
  if not os.path.isdir(os.path.join(data_dir, "bench_photos")):
    t0 = time.perf_counter()
    assert cli.main(["build", "--name=bench_photos", f"--images={photos}",
                     f"--data_dir={data_dir}", "--workers=2", "--quiet"]) == 0
    out["build_files_per_s"] = len(paths) / (time.perf_counter() - t0)
  out["plain_decode_files_per_s"] = base
  print(f"build: {out.get('build_files_per_s', float('nan')):.1f} files/s (incl. start-up), "
        f"plain decode {base:.1f} files/s", flush=True)

  n = args.batches * 64
  plain = plain_images(paths, n)
  rates = {}
  for on_device in (False, True):
    for workers in (0, 2):
      r = pipeline_rate("bench_photos", data_dir, IMAGE_PP, args.batches, 64, workers=workers,
                        device_affine=on_device)
      rates[(on_device, workers)] = r
  out["images"] = {"plain_per_s": plain}
  for (on_device, workers), r in rates.items():
    tag = f"{workers}_workers" + ("_device_affine" if on_device else "_host_floats")
    out["images"][f"pipeline_{tag}_per_s"] = r
    out["images"][f"ratio_{tag}"] = r / plain
  print(f"images/s: plain PIL loop {plain:.1f}", flush=True)
  for (on_device, workers), r in rates.items():
    where = ("uint8 batches, affine in a jitted step (the default)" if on_device else
             "float32 batches from the pipeline")
    target = ">= 0.9x" if workers == 0 else ">= 1.5x"
    print(f"  pipeline, {workers} workers, {where}: {r:.1f} ({r / plain:.2f}x; target "
          f"{target})", flush=True)

  # Audio and video clips.
  speech = os.path.join(tmp, "speech")
  if not os.path.isdir(speech):
    make_media.speech_folder(speech, 10, make_media.WORDS[:4], formats=("wav",))
  clips = os.path.join(tmp, "clips")
  if not os.path.isdir(clips):
    make_media.clips_folder(clips, 10, with_audio=False)
  for name, folder, kind in (("bench_speech", speech, "audio"), ("bench_clips", clips, "video")):
    if not os.path.isdir(os.path.join(data_dir, name)):
      assert cli.main(["build", f"--name={name}", f"--{kind}={folder}",
                       f"--data_dir={data_dir}", "--workers=2", "--quiet"]) == 0
  audio_pp = dict(train="crop_audio(1.0, 16000)|log_mel(16000, bins=128)",
                  eval="crop_audio(1.0, 16000)|log_mel(16000, bins=128)")
  video_pp = dict(train="sample_frames(8)|decode|random_crop(28)|value_range(-1, 1)",
                  eval="sample_frames(8)|decode|central_crop(28)|value_range(-1, 1)")
  for kind, name, pp, plain_fn, folder in (
      ("audio", "bench_speech", audio_pp, plain_audio, speech),
      ("video", "bench_clips", video_pp, plain_video, clips)):
    files = files_of(folder)
    plain = plain_fn(files, 128)
    p0 = pipeline_rate(name, data_dir, pp, 8, 16, workers=0)
    out[kind] = {"plain_per_s": plain, "pipeline_0_workers_per_s": p0, "ratio": p0 / plain}
    print(f"{kind} clips/s: plain loop {plain:.1f}, pipeline {p0:.1f} ({p0 / plain:.2f}x)",
          flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
  if not args.keep:
    shutil.rmtree(tmp, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
