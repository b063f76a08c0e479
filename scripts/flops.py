r"""Forward GFLOPs per example of audio-visual fusion, from XLA's cost analysis of the lowered
forward pass on abstract shapes (no parameters are allocated and no data is read).

  uv run python scripts/flops.py [--settings=paper,demo] [--out=docs/flops.json]
      [--plot=docs/flops_vs_fusion_layer.png]

For every fusion kind and L_f = 0..L. `paper` is MBT's setting: ViT-B (12 layers, width 768,
12 heads, MLP 3072), 8x14x14 = 1568 video tokens (16 frames of 224^2, 2x16x16 tubelets), 400
spectrogram tokens (800x128 log-mel, 16x16 patches), B = 4. `demo` is configs/av.py's model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from mmvit.models.fusion import KINDS, FusionSpec  # noqa: E402
from mmvit.models.heads import HeadSpec  # noqa: E402
from mmvit.models.model import Model, ModelSpec  # noqa: E402
from mmvit.models.tokenizers import TokenizerSpec  # noqa: E402

SETTINGS = {
    "paper": dict(
        model=ModelSpec(width=768, depth=12, num_heads=12, mlp_dim=3072),
        video=TokenizerSpec("tubelet", "video", (16, 224, 224, 3), (2, 16, 16)),
        audio=TokenizerSpec("spectrogram", "spectrogram", (800, 128, 1), (16, 16)),
        classes=527, tokens=4),
    "demo": dict(
        model=ModelSpec(width=96, depth=4, num_heads=4, mlp_dim=192),
        video=TokenizerSpec("tubelet", "video", (8, 32, 32, 1), (4, 8, 8)),
        audio=TokenizerSpec("spectrogram", "spectrogram", (64, 32, 1), (4, 32)),
        classes=10, tokens=4),
}


def forward_gflops(setting: dict, fusion: FusionSpec | None, batch: int = 2) -> float:
  toks = {"video": setting["video"], "audio": setting["audio"]}
  mods = tuple(toks) if fusion is not None else ("video",)
  head = HeadSpec("multiclass", ("label",), (setting["classes"],))
  abstract = nnx.eval_shape(lambda: Model(setting["model"], {m: toks[m] for m in mods},
                                          {"t": (mods, head, fusion)}, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  inputs = {toks[m].input_key: jax.ShapeDtypeStruct((batch,) + toks[m].input_shape, jnp.float32)
            for m in mods}

  def forward(state, inputs):
    return nnx.merge(graphdef, state)("t", inputs)

  cost = jax.jit(forward).lower(state, inputs).cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost["flops"]) / batch / 1e9


def table(name: str) -> dict:
  setting = SETTINGS[name]
  depth = setting["model"].depth
  out = {"video_only": forward_gflops(setting, None), "by_kind": {}}
  for kind in KINDS:
    layers = [depth] if kind == "late" else range(depth + 1)
    out["by_kind"][kind] = {
        lf: forward_gflops(setting, FusionSpec(kind, lf, setting["tokens"], True))
        for lf in layers}
    print(name, kind, {k: round(v, 2) for k, v in out["by_kind"][kind].items()}, flush=True)
  return out


def plot(results: dict, path: str):
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  names = list(results)
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4))
  axes = [axes] if len(names) == 1 else axes
  for ax, name in zip(axes, names):
    for kind, style in (("bottleneck", "-o"), ("full_pairwise", "--s"), ("joint", ":^")):
      pts = sorted((int(k), v) for k, v in results[name]["by_kind"][kind].items())
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
    late = next(iter(results[name]["by_kind"]["late"].values()))
    ax.axhline(late, color="gray", lw=0.8, label="late (L_f = L)")
    ax.set_xlabel("fusion layer L_f")
    ax.set_ylabel("forward GFLOPs per example")
    ax.set_title(f"{name} setting (cf. MBT FIG. 8A)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--settings", default="paper,demo")
  p.add_argument("--out", default="docs/flops.json")
  p.add_argument("--plot", default="docs/flops_vs_fusion_layer.png")
  args = p.parse_args()
  results = {name: table(name) for name in args.settings.split(",")}
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  plot(results, args.plot)
  print("wrote", args.out, args.plot)


if __name__ == "__main__":
  main()
