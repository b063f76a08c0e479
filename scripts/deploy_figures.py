r"""Issue 15's figures on a trained demo workdir: surgery, fine-tune after surgery, export, and
the --modality speed-up (PolyViT claim 23).

  python scripts/deploy_figures.py --workdir=/tmp/mmvit_demo --out=/tmp/deploy [--finetune=200]

For each modality: the parameters before and after `mmvit.surgery --keep=modality:<m>`, each kept
task's test top-1 from the full and the cut checkpoints (both through mmvit.inference: the same
eval batches), and for the image cut a short fine-tune from the cut checkpoint (init_from).
Export: every task's file size, the load time in a fresh process, and the largest difference
from the live model at batch sizes 1, 3 and 7. Claim 23: video_direction and video_digit from one
encoder pass against one pass each, in one run (median of interleaved rounds). JSON to
<out>/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import single_task  # noqa: E402
from mmvit import data, evaluate, export, inference, predict, surgery, train  # noqa: E402
from mmvit.models.heads import HeadSpec  # noqa: E402
from mmvit.models.model import count  # noqa: E402


def test_top1(loaded: inference.Loaded, task: str, data_dir: str | None) -> float:
  t = loaded.task(task)
  fn, state = inference.logits_fn(loaded, task)
  fn = jax.jit(fn)
  keys = list(loaded.input_shapes(task))
  h = t["head"]
  head = HeadSpec(h["kind"], tuple(h["labels"]), tuple(h["num_classes"]))
  outs = []
  for b in data.eval_batches(t["dataset"], split="test", batch_size=256, data_dir=data_dir):
    logits = fn(state, {k: b[k] for k in keys})
    outs.append(({k: np.asarray(v) for k, v in logits.items()}, b))
  return evaluate.metrics_of(head, outs)["top1"]


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--finetune", type=int, default=200)
  p.add_argument("--data_dir", default=None)
  a = p.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  full = inference.load(a.workdir)
  res = {"workdir": a.workdir, "step": full.step, "parameters": count(full.groups),
         "surgery": {}, "export": {}}
  acc_full = {t: test_top1(full, t, a.data_dir) for t in full.tasks}
  print("full model test top-1:", json.dumps(acc_full), flush=True)

  for m in full.description["tokenizers"]:
    out = os.path.join(a.out, f"cut_{m}")
    if not os.path.exists(out):
      assert surgery.main([f"--workdir={a.workdir}", f"--keep=modality:{m}", f"--out={out}"]) == 0
    cut = inference.load(out)
    row = {"tasks": list(cut.tasks), "parameters_after": count(cut.groups),
           "fraction": count(cut.groups) / count(full.groups),
           "test_top1_before": {t: acc_full[t] for t in cut.tasks},
           "test_top1_after": {t: test_top1(cut, t, a.data_dir) for t in cut.tasks}}
    res["surgery"][m] = row
    print(f"cut {m}: {json.dumps(row)}", flush=True)

  if a.finetune:  # the image cut, fine-tuned alone for a few steps
    c = single_task.get_config("image")
    c.tasks.image.steps = a.finetune
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 0
    c.init_from = dict(workdir=os.path.join(a.out, "cut_image"), groups="*")
    if a.data_dir:
      c.data_dir = a.data_dir
    wd = os.path.join(a.out, "finetune_image")
    r = train.run(c, wd)
    res["finetune_image"] = {"steps": a.finetune, "lr": 3e-4,
                             "test_top1": r["test"]["image"]["top1"],
                             "before": res["surgery"]["image"]["test_top1_after"]["image"]}
    print("fine-tune:", json.dumps(res["finetune_image"]), flush=True)

  for t in full.tasks:
    path = os.path.join(a.out, f"{t}.jax")
    if os.path.exists(path):
      os.remove(path)
    t0 = time.perf_counter()
    exported, sig = export.export_task(full, t, ("cpu", "cuda", "tpu"))
    size = export.write(path, exported, sig)
    took = time.perf_counter() - t0
    fn, state = inference.logits_fn(full, t)
    jitted = jax.jit(fn)
    diffs, eager = [], []
    shapes = full.input_shapes(t)
    labels = full.task(t)["head"]["labels"]
    for n in (1, 3, 7):
      x = {k: np.random.default_rng(n).normal(size=(n,) + s).astype(np.float32)
           for k, s in shapes.items()}
      got = exported.call(*[x[k] for k in shapes])
      for ref, into in ((jitted(state, x), diffs), (fn(state, x), eager)):
        into.append(max(float(np.max(np.abs(np.asarray(g) - np.asarray(ref[k]))))
                        for g, k in zip(got, labels)))
    script = (f"import time; t0 = time.perf_counter(); import jax, numpy as np; "
              f"e = jax.export.deserialize(open({path!r}, 'rb').read()); "
              f"print(time.perf_counter() - t0)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
    res["export"][t] = {"bytes": size, "export_s": took, "platforms": sig["platforms"],
                        "not_exported_for": list(sig["not_exported_for"]),
                        # against the live model compiled, and run op by op (other sums)
                        "max_abs_diff_batch_1_3_7": diffs,
                        "max_abs_diff_eager_batch_1_3_7": eager,
                        "fresh_process_import_and_load_s": float(r.stdout.strip())}
    print(f"export {t}: {json.dumps(res['export'][t])}", flush=True)

  # Claim 23: every video head from one encoder pass, against one pass per task.
  pred = predict.Predictor(full)
  tasks = predict.tasks_of_modality(full, "video")
  x = {k: np.random.default_rng(0).normal(size=(64,) + s).astype(np.float32)
       for k, s in full.input_shapes(tasks[0]).items()}
  pred.modality("video", tasks, x)
  for t in tasks:
    pred.task(t, x)
  one, each = [], []
  for _ in range(7):
    t0 = time.perf_counter()
    jax.block_until_ready(pred._modality("video", tasks, pred.state, x))
    one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in tasks:
      jax.block_until_ready(pred._task(t, pred.state, x))
    each.append(time.perf_counter() - t0)
  res["modality_mode"] = {"tasks": list(tasks), "batch": 64, "one_pass_s": float(np.median(one)),
                          "per_task_s": float(np.median(each)),
                          "ratio": float(np.median(one) / np.median(each))}
  print("claim 23:", json.dumps(res["modality_mode"]), flush=True)
  with open(os.path.join(a.out, "deploy.json"), "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
