r"""Predictions on files, preprocessed exactly as the task's eval split.

  python -m mmvit.predict --workdir=RUN --task=T FILES_OR_FOLDERS_OR_MANIFESTS...
  python -m mmvit.predict --workdir=RUN --modality=M FILES_OR_FOLDERS_OR_MANIFESTS...

Each file is decoded as `python -m mmvit.data build` decoded the task's dataset (the rate, fps,
frame size and JPEG quality stored with it), then run through the task's eval pp ops (with its
views: logits averaged over them, as at test time) and the run's model. One JSON line per file
and task: the top-k label names and scores (softmax; sigmoid for multi-label), per label key.

`--modality` runs every task that reads that modality alone, with the encoder run once per
input and every head applied to its output (PolyViT claim 23). A folder is searched for media
files recursively; a manifest (.csv or .jsonl, as `python -m mmvit.data build --manifest`
reads) lists them in its image/audio/video column, relative to the manifest's folder. A file that cannot be read or decoded gets an `error` line; the others are
still predicted, and the exit status is 1 at the end. Nothing in the workdir is changed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmvit import checkpointing, inference

EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".webp"),
    "audio": (".wav", ".flac", ".ogg"),
    "video": (".mp4", ".avi", ".mkv", ".webm"),
}


class PredictError(ValueError):
  """A request that cannot be served at all: one line."""


def media_kinds(loaded: inference.Loaded, task: str) -> tuple[str, ...]:
  """The stored features ('image', 'audio', 'video') a task's dataset decoded from files."""
  t = loaded.task(task)
  media = t.get("media") or {}
  if not media.get("modalities"):
    raise PredictError(f"task {task!r} trained on {t.get('dataset')!r}, which was not built "
                       "from files (python -m mmvit.data build): there is no file form to "
                       "predict from")
  return tuple(media["modalities"]) + (("audio",) if media.get("audio_track") else ())


def manifest_files(path: str, kind: str) -> list[str]:
  """The `kind` column of a build manifest, paths relative to its folder made absolute."""
  from mmvit.data import build  # noqa: PLC0415
  base = os.path.dirname(os.path.abspath(path))
  out = []
  try:
    for i, row in build._rows(path):  # pylint: disable=protected-access
      v = row.get(kind)
      if not isinstance(v, str) or not v:
        raise PredictError(f"{path} row {i}: no {kind} path (the task reads {kind} files)")
      out.append(v if os.path.isabs(v) else os.path.join(base, v))
  except build.BuildError as e:
    raise PredictError(str(e)) from None
  return out


def list_files(paths: list[str], kinds: tuple[str, ...]) -> list[str]:
  """Files as given, media files of `kinds` under folders (sorted), and the files a manifest
  lists (in its column of the first of `kinds`)."""
  exts = tuple(e for k in kinds if k in EXTENSIONS for e in EXTENSIONS[k])
  out = []
  for p in paths:
    if os.path.isfile(p) and p.lower().endswith((".csv", ".jsonl")):
      out += manifest_files(p, kinds[0])
    elif os.path.isdir(p):
      for root, _, files in sorted(os.walk(p)):
        out += [os.path.join(root, f) for f in sorted(files)
                if f.lower().endswith(exts) and not f.startswith(".")]
    else:
      out.append(p)
  return out


def read_file(path: str, kinds: tuple[str, ...], media: dict) -> dict:
  """A file as the stored record its dataset would hold (build.load_*)."""
  from mmvit.data import build  # noqa: PLC0415
  rate = int(media.get("rate", 16000))
  try:
    if "video" in kinds:
      video, audio = build.load_video(path, media.get("fps"), media.get("short_side"),
                                      int(media.get("quality", 90)),
                                      rate if media.get("audio_track") else None)
      return {"video": video, **({"audio": audio} if audio is not None else {})}
    if "image" in kinds:
      return {"image": build.load_image(path)}
    return {"audio": build.load_audio(path, rate)}
  except build.BadFile as e:
    raise ValueError(str(e)) from None
  except OSError as e:
    raise ValueError(f"cannot read it ({e.strerror or e})") from None


def preprocess(loaded: inference.Loaded, task: str, record: dict) -> dict:
  """The task's eval pp on one record: one element, its inputs carrying a views axis first when
  the task tests several views (as the run's eval batches do)."""
  from mmvit.data import ops  # noqa: PLC0415
  t = loaded.task(task)
  pp = t.get("pp_eval")
  if not pp:
    raise PredictError(f"task {task!r} has no eval pp string to preprocess files with")
  if t.get("eval_affine"):  # the run applied the trailing affine ops on the device
    pp, _ = ops.split_affine(pp, "eval")
  e = dict(record)
  for op in ops.parse(pp, "eval", int(t.get("eval_views") or 1)):
    e = op(e, None)
  return ops.finalize(e)


def _affine(loaded, task, batch):
  from mmvit.data import ops  # noqa: PLC0415
  out = dict(batch)
  for key, scale, offset in loaded.task(task).get("eval_affine") or []:
    out[key] = ops.Affine(key, tuple(scale), tuple(offset))(jnp.asarray(batch[key]), jnp)
  return out


def scores(head: dict, logits: np.ndarray) -> np.ndarray:
  if head["kind"] == "multilabel":
    return 1.0 / (1.0 + np.exp(-logits))
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def top_k(head: dict, names: dict, logits: dict, k: int) -> dict:
  """Per label: the k best classes with their scores; a regression head's values."""
  out = {}
  if head["kind"] == "regression":
    return {label: [round(float(v), 6) for v in np.ravel(logits[label])]
            for label in head["labels"]}
  for label in head["labels"]:
    s = scores(head, np.asarray(logits[label], np.float64))
    order = np.argsort(-s, kind="stable")[:k]
    label_names = names.get(label)
    out[label] = [{"class": int(i), **({"name": label_names[i]} if label_names else {}),
                   "score": round(float(s[i]), 6)} for i in order]
  return out


class Predictor:
  """Compiled forward passes of one run: per task, or per modality (every head at once)."""

  def __init__(self, loaded: inference.Loaded):
    from flax import nnx  # noqa: PLC0415
    self.loaded = loaded
    self.graphdef, self.state = nnx.split(loaded.model, nnx.Param)
    self._task = jax.jit(self._task_fn, static_argnums=0)
    self._modality = jax.jit(self._modality_fn, static_argnums=(0, 1))

  def _merge(self, state):
    from flax import nnx  # noqa: PLC0415
    return nnx.merge(self.graphdef, state)

  def _task_fn(self, task, state, batch):
    from mmvit.models.model import average_logits  # noqa: PLC0415
    model = self._merge(state)
    return average_logits(model(task, _affine(self.loaded, task, batch)))

  def _modality_fn(self, modality, tasks, state, batch):
    from mmvit.models.model import average_logits  # noqa: PLC0415
    model = self._merge(state)
    batch = _affine(self.loaded, tasks[0], batch)
    x = model.encode_modality(modality, batch)
    cls_index = model.tokenizers[modality].spec.cls_index
    return {t: average_logits(model.predict_head(t, [x], cls_index)) for t in tasks}

  def task(self, task: str, batch: dict) -> dict:
    return jax.tree.map(np.asarray, self._task(task, self.state, batch))

  def modality(self, modality: str, tasks: tuple[str, ...], batch: dict) -> dict:
    return jax.tree.map(np.asarray, self._modality(modality, tasks, self.state, batch))


def tasks_of_modality(loaded: inference.Loaded, modality: str) -> tuple[str, ...]:
  if modality not in loaded.description["tokenizers"]:
    raise PredictError(f"--modality={modality!r}: the run has modalities "
                       f"{', '.join(loaded.description['tokenizers'])}")
  tasks = tuple(t for t, d in loaded.tasks.items()
                if d["modalities"] == [modality] and not d.get("fusion"))
  if not tasks:
    raise PredictError(f"--modality={modality!r}: no task reads {modality} alone")
  return tasks


def run(loaded: inference.Loaded, files: list[str], *, task: str | None = None,
        modality: str | None = None, k: int = 5, batch_size: int = 32, emit=print
        ) -> tuple[int, int]:
  """Predicts every file; emits one JSON line per file (and task). Returns (ok, failed)."""
  tasks = (task,) if task else tasks_of_modality(loaded, modality)
  if batch_size < 1:
    raise PredictError(f"--batch_size={batch_size}: expected an integer >= 1")
  for t in tasks:
    media_kinds(loaded, t)
    for field in ("pp_eval", "eval_affine", "eval_views", "media"):
      if loaded.task(t).get(field) != loaded.task(tasks[0]).get(field):
        raise PredictError(f"--modality={modality}: tasks {tasks[0]} and {t} preprocess "
                           f"differently ({field}): predict them with --task one by one")
  kinds = media_kinds(loaded, tasks[0])
  media = loaded.task(tasks[0]).get("media") or {}
  keys = list(loaded.input_shapes(tasks[0]))
  views = int(loaded.task(tasks[0]).get("eval_views") or 1)
  predictor = Predictor(loaded)
  ok = failed = 0
  pending: list[tuple[str, dict]] = []

  def flush():
    nonlocal ok
    if not pending:
      return
    n = len(pending)
    # A fixed batch size (the last batch padded with its last element): one compile.
    rows = [e for _, e in pending] + [pending[-1][1]] * (batch_size - n)
    batch = {key: np.stack([r[key] for r in rows]) for key in keys}
    if views > 1:  # (batch, views, ...) -> (batch * views, ...), as the eval step does
      batch = {key: v.reshape((-1,) + v.shape[2:]) for key, v in batch.items()}
    if modality:
      logits = predictor.modality(modality, tasks, batch)
    else:
      logits = {task: predictor.task(task, batch)}
    for t in tasks:
      head = loaded.task(t)["head"]
      names = loaded.task(t).get("label_names") or {}
      per_view = {lab: np.asarray(v).reshape((batch_size, views) + v.shape[1:]).mean(1)
                  for lab, v in logits[t].items()}
      for i, (path, _) in enumerate(pending):
        emit(json.dumps({"file": path, "task": t,
                         "top_k": top_k(head, names, {lab: v[i] for lab, v in per_view.items()},
                                        k)}))
    ok += n
    pending.clear()

  for path in files:
    try:
      record = read_file(path, kinds, media)
      element = preprocess(loaded, tasks[0], record)
      for key in keys:
        want = ((views,) if views > 1 else ()) + tuple(loaded.input_shapes(tasks[0])[key])
        if key not in element or tuple(element[key].shape) != want:
          raise ValueError(f"preprocessed {key} has shape "
                           f"{getattr(element.get(key), 'shape', None)}, the model takes {want}")
    except PredictError:
      raise
    except Exception as e:  # noqa: BLE001  (any per-file failure is reported, not fatal)
      failed += 1
      emit(json.dumps({"file": path, "error": " ".join(str(e).split())[:300]}))
      continue
    pending.append((path, element))
    if len(pending) == batch_size:
      flush()
  flush()
  return ok, failed


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415
  p = argparse.ArgumentParser(prog="python -m mmvit.predict", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--step", type=int, default=None)
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--task")
  g.add_argument("--modality")
  p.add_argument("--top_k", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--out", default=None, help="write the JSON lines here (default: stdout)")
  p.add_argument("files", nargs="+")
  a = p.parse_args(argv)
  t0 = time.perf_counter()
  out = None
  try:
    if a.out and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
      raise PredictError(f"--out={a.out}: its directory does not exist")
    loaded = inference.load(a.workdir, a.step)
    tasks = (a.task,) if a.task else tasks_of_modality(loaded, a.modality)
    files = list_files(a.files, media_kinds(loaded, tasks[0]))
    if not files:
      raise PredictError(f"no media files in {', '.join(a.files)}")
    out = open(a.out + ".tmp", "w") if a.out else None  # noqa: SIM115  (renamed when done)
    emit = (lambda line: out.write(line + "\n")) if out else print
    ok, failed = run(loaded, files, task=a.task, modality=a.modality, k=a.top_k,
                     batch_size=a.batch_size, emit=emit)
  except (PredictError, inference.InferenceError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    if out:
      out.close()
      os.replace(a.out + ".tmp", a.out)
  print(f"predicted {ok} file(s), {failed} failed, {time.perf_counter() - t0:.1f} s",
        file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
