"""Evaluation: one deterministic, padded, masked pass over a split per task, and its metrics.

Evaluation reads its own iterators and derives no randomness from the training state, so it
never changes what training sees next.
"""

from __future__ import annotations

import numpy as np

from mmvit.models.heads import HeadSpec


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """AP of one class: mean precision at the rank of each positive. NaN without positives."""
  pos = targets.sum()
  if pos == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  hits = targets[order].astype(np.float64)
  precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  return float((precision * hits).sum() / pos)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
  return float(np.nanmean(aps))


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  topk = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return (topk == labels[:, None]).any(-1)


def metrics(head: HeadSpec, logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]
            ) -> dict[str, float]:
  """Metrics over a whole split (arrays already stripped of padding)."""
  out: dict[str, float] = {}
  if head.kind == "regression":  # in the target's units
    (k,) = head.labels
    err = logits[k].reshape(len(labels[k]), -1) - labels[k].reshape(len(labels[k]), -1)
    out["mse"] = float(np.mean(np.square(err, dtype=np.float64)))
    out["mae"] = float(np.mean(np.abs(err, dtype=np.float64)))
    return out
  if head.kind == "multilabel":
    (k,) = head.labels
    out["mAP"] = mean_average_precision(logits[k], labels[k])
    return out
  joint = None
  for k, c in zip(head.labels, head.num_classes):
    prefix = "" if head.kind == "multiclass" else f"{k}/"
    top1 = topk_correct(logits[k], labels[k], 1)
    out[f"{prefix}top1"] = float(top1.mean())
    if c > 5:
      out[f"{prefix}top5"] = float(topk_correct(logits[k], labels[k], 5).mean())
    joint = top1 if joint is None else joint & top1
  if head.kind == "multihead":
    out["joint_top1"] = float(joint.mean())
  return out


def metric_names(head: HeadSpec) -> tuple[str, ...]:
  """The names `metrics` gives for this head (what early_stopping.metric may name)."""
  if head.kind == "multilabel":
    return ("mAP",)
  if head.kind == "regression":
    return ("mse", "mae")
  out = []
  for k, c in zip(head.labels, head.num_classes):
    prefix = "" if head.kind == "multiclass" else f"{k}/"
    out += [f"{prefix}top1"] + ([f"{prefix}top5"] if c > 5 else [])
  return tuple(out) + (("joint_top1",) if head.kind == "multihead" else ())


def collect(head: HeadSpec, outputs) -> tuple[dict, dict]:
  """({label: logits}, {label: targets}) of the real rows of `outputs`, pairs (logits, batch)
  of padded batches with a 'mask' key, in batch order."""
  logits = {k: [] for k in head.labels}
  labels = {k: [] for k in head.labels}
  for out, batch in outputs:
    mask = np.asarray(batch["mask"], bool)
    for k in head.labels:
      logits[k].append(np.asarray(out[k])[mask])
      labels[k].append(np.asarray(batch[k])[mask])
  cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}
  return cat(logits), cat(labels)


def metrics_of(head: HeadSpec, outputs) -> dict[str, float]:
  """Metrics of `collect`'s (logits, batch) pairs, and the number of real examples."""
  logits, labels = collect(head, outputs)
  result = metrics(head, logits, labels)
  result["num_examples"] = float(len(labels[head.labels[0]]))
  return result
