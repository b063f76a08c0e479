"""Import reference parameter trees into mmvit's model.

Two references are covered:
  - big_vision's ViT (`big_vision/models/vit.py`): one image stream, per-layer blocks
    `Transformer/encoderblock_<l>/...` or, when trained with `scan=True`, one stacked block
    `Transformer/encoderblock/...` whose arrays carry a leading layer axis;
  - Scenic's MBT (`scenic/projects/mbt/model.py`): rgb + spectrogram streams, blocks
    `Transformer/encoderblock_<l>` (rgb, or every stream with `share_encoder=True`) and
    `Transformer/encoderblock_<l>_<modality>`, one `bottleneck` parameter, one
    `output_projection` shared by the streams.

A reference tree is flat: {"Transformer/encoder_norm/scale": array, ...}. The converters return
mmvit's parameter tree as a pure dict, keyed as `nnx.to_pure_dict(nnx.state(model, nnx.Param))`.
Import is strict: every reference parameter is used exactly once, and (given `target`, the model
or its pure dict) every model parameter is filled with an array of its shape. Any violation is a
one-line `ConversionError` naming the reference parameter; settings that mmvit's model lacks
raise `Unsupported`.

The encoder block layout is the same in both references and in mmvit (big_vision names), so
blocks map leaf for leaf; what differs is only where each stream's blocks, position embeddings
and class tokens live.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np

# The leaves of one encoder block, relative to the block (big_vision / Scenic / mmvit alike).
BLOCK_LEAVES = tuple(
    [f"LayerNorm_{i}/{p}" for i in (0, 1) for p in ("scale", "bias")]
    + [f"MlpBlock_0/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")]
    + [f"MultiHeadDotProductAttention_0/{n}/{p}" for n in ("query", "key", "value", "out")
       for p in ("kernel", "bias")])

# The leaves of big_vision's MAPHead (pool_type='map'), relative to `MAPHead_0`; mmvit's
# MAPHead (models/heads.py) has the same names under `heads/<task>/map`.
MAP_LEAVES = ("probe",) + tuple(
    [f"LayerNorm_0/{p}" for p in ("scale", "bias")]
    + [f"MlpBlock_0/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")]
    + [f"MultiHeadDotProductAttention_0/{n}/{p}" for n in ("query", "key", "value", "out")
       for p in ("kernel", "bias")])

# Reference parameters (by prefix) that belong to features mmvit's model does not have.
_VIT_UNSUPPORTED: dict[str, str] = {}
_MBT_UNSUPPORTED: dict[str, str] = {}

# Scenic MBT names per modality (its temporal_encode knows only these two).
_MBT_EMBEDDING = {"rgb": "embedding", "spectrogram": "embedding_spectrogram"}


class ConversionError(ValueError):
  """A reference parameter tree does not map onto the model."""


class Unsupported(ConversionError):
  """The reference uses a feature that mmvit's model lacks."""


@dataclasses.dataclass(frozen=True)
class Reference:
  """A reference forward pass: `params` (flat, by the reference's own paths), `inputs`, and the
  remaining arrays as `outputs` (`logits`, `pre_logits`, `train_logits:<modality>`)."""
  params: dict[str, np.ndarray]
  inputs: dict[str, np.ndarray]
  outputs: dict[str, np.ndarray]


def load_npz(path) -> Reference:
  """Reads a parity file: `param:<path>`, `input:<name>` and output arrays."""
  params, inputs, outputs = {}, {}, {}
  with np.load(path, allow_pickle=False) as z:
    for k in z.files:
      if k.startswith("param:"):
        params[k[len("param:"):]] = z[k]
      elif k.startswith("input:"):
        inputs[k[len("input:"):]] = z[k]
      else:
        outputs[k] = z[k]
  return Reference(params, inputs, outputs)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """big_vision's `posemb='sincos2d'` table (1, h*w, width): models.tokenizers.sincos_table."""
  from mmvit.models.tokenizers import sincos_table  # noqa: PLC0415
  try:
    return sincos_table((h, w), width, temperature).copy()  # the cached table stays as it is
  except ValueError as e:
    raise ConversionError(f"sincos2d position embeddings: {e}") from None


def _path(p: tuple[str, ...]) -> str:
  return "/".join(p)


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
  """The inverse of `_flatten`: {path tuple: leaf} -> nested dicts."""
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def target_tree(target) -> dict:
  """`target` as a pure dict: a model (its nnx.Param state) or already a pure dict."""
  if isinstance(target, Mapping):
    return dict(target)
  from flax import nnx  # noqa: PLC0415
  return nnx.to_pure_dict(nnx.state(target, nnx.Param))


class _Import:
  """Consumes reference parameters exactly once and remembers where each one went."""

  def __init__(self, flat: Mapping[str, np.ndarray], unsupported: Mapping[str, str]):
    self.flat = {k: np.asarray(v) for k, v in flat.items()}
    self.unsupported = unsupported
    self.used: dict[str, str] = {}                  # reference name -> mmvit path
    self.origin: dict[tuple[str, ...], str] = {}    # mmvit path -> reference name
    self.values: dict[tuple[str, ...], np.ndarray] = {}

  def has(self, name: str) -> bool:
    return name in self.flat

  def take(self, name: str, dest: str) -> np.ndarray:
    if name in self.used:
      raise ConversionError(f"reference parameter {name!r} used twice: for "
                            f"{self.used[name]!r} and {dest!r}")
    if name not in self.flat:
      raise ConversionError(f"missing reference parameter {name!r} (for mmvit {dest!r})")
    self.used[name] = dest
    return self.flat[name]

  def put(self, path: tuple[str, ...], value: np.ndarray, origin: str):
    if path in self.values:
      raise ConversionError(f"mmvit {_path(path)!r} filled twice: from "
                            f"{self.origin[path]!r} and {origin!r}")
    self.values[path] = np.asarray(value)
    self.origin[path] = origin

  def move(self, name: str, path: tuple[str, ...]):
    self.put(path, self.take(name, _path(path)), name)

  def block(self, prefix: str, dest: tuple[str, ...]):
    for leaf in BLOCK_LEAVES:
      self.move(f"{prefix}/{leaf}", dest + tuple(leaf.split("/")))

  def stacked_block(self, prefix: str, dest: tuple[str, ...], depth: int | None) -> int:
    """A scanned block: every leaf carries a leading layer axis; layer l -> encoderblock_l."""
    for leaf in BLOCK_LEAVES:
      name = f"{prefix}/{leaf}"
      arr = self.take(name, _path(dest + ("encoderblock_*",) + tuple(leaf.split("/"))))
      if arr.ndim < 2:
        raise ConversionError(f"reference parameter {name!r} has shape {arr.shape}: a scanned "
                              "block needs a leading layer axis")
      if depth is None:
        depth = arr.shape[0]
      elif arr.shape[0] != depth:
        raise ConversionError(f"reference parameter {name!r} stacks {arr.shape[0]} layers, "
                              f"the others {depth}")
      for l in range(depth):
        self.put(dest + (f"encoderblock_{l}",) + tuple(leaf.split("/")), arr[l],
                 f"{name}[{l}]")
    return depth

  def origin_paths(self) -> dict[str, str]:
    """mmvit path ('tokenizers/image/kernel') -> the reference name it came from."""
    return {_path(p): src for p, src in self.origin.items()}

  def finish(self, target=None) -> dict:
    unused = sorted(set(self.flat) - set(self.used))
    for name in unused:
      for prefix, what in self.unsupported.items():
        if name.startswith(prefix):
          raise Unsupported(f"reference parameter {name!r} ({what}) has no counterpart in "
                            "mmvit's model")
    if unused:
      more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
      raise ConversionError(f"unused reference parameter {unused[0]!r}{more}")
    want = None if target is None else target_tree(target)
    scan = want is not None and _layout(want) == "scan"
    if want is not None:
      self._check(_flatten(_to_loop(want) if scan else want))
    tree = _unflatten(self.values)
    return _to_scan(tree) if scan else tree

  def _check(self, want: dict[tuple[str, ...], object]):
    for path, v in self.values.items():
      src = self.origin[path]
      if path not in want:
        raise ConversionError(f"reference parameter {src!r} maps to mmvit {_path(path)!r}, "
                              "which this model does not have")
      if tuple(v.shape) != tuple(np.shape(want[path])):
        raise ConversionError(f"reference parameter {src!r} has shape {tuple(v.shape)} but "
                              f"mmvit {_path(path)!r} expects {tuple(np.shape(want[path]))}")
    missing = [p for p in want if p not in self.values]
    if missing:
      raise ConversionError(f"mmvit parameter {_path(missing[0])!r} has no counterpart in the "
                            "reference parameters"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def check_tree(params: dict, target) -> None:
  """Raises ConversionError unless `params` has exactly `target`'s leaves and shapes."""
  have, want = _flatten(params), _flatten(target_tree(target))
  for p, v in have.items():
    if p not in want:
      raise ConversionError(f"parameter {_path(p)!r} is not in the model")
    if tuple(np.shape(v)) != tuple(np.shape(want[p])):
      raise ConversionError(f"parameter {_path(p)!r} has shape {tuple(np.shape(v))}, the model "
                            f"expects {tuple(np.shape(want[p]))}")
  for p in want:
    if p not in have:
      raise ConversionError(f"model parameter {_path(p)!r} is missing")


def _layout(tree):
  from mmvit.models.encoder import layout_of  # noqa: PLC0415
  return layout_of(tree)


def _to_scan(tree):
  from mmvit.models.encoder import to_scan  # noqa: PLC0415
  return to_scan(tree)


def _to_loop(tree):
  from mmvit.models.encoder import to_loop  # noqa: PLC0415
  return to_loop(tree)


def load_into(model, params: dict) -> None:
  """Writes a converted pure-dict parameter tree into `model` (in place), checking that it
  covers every parameter with the right shape. A tree in the other stack layout (loop or
  scan, `model.scan`) is converted exactly."""
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  state = nnx.state(model, nnx.Param)
  mine, theirs = _layout(nnx.to_pure_dict(state)), _layout(params)
  if mine and theirs and mine != theirs:
    params = _to_scan(params) if mine == "scan" else _to_loop(params)
  check_tree(params, nnx.to_pure_dict(state))
  want = _flatten(nnx.to_pure_dict(state))
  cast = {p: jnp.asarray(v, dtype=jnp.result_type(want[p])) for p, v in _flatten(params).items()}
  nnx.replace_by_pure_dict(state, _unflatten(cast))
  nnx.update(model, state)


# --------------------------------------------------------------------------- big_vision ViT

def from_big_vision_vit(flat: Mapping[str, np.ndarray], *, target=None, task: str = "image",
                        modality: str = "image", label: str = "label", posemb: str = "learn",
                        grid: tuple[int, int] | None = None) -> dict:
  """big_vision ViT parameters -> mmvit pure dict for one image tokenizer, the shared encoder
  and `heads/<task>/outputs/<label>`.

  The mmvit model must use an `image` tokenizer with `posemb_includes_cls=False` (big_vision
  adds the position embedding before prepending the class token), `class_token` iff the
  reference has `cls` (pool_type='tok'), and `pool='token'` for 'tok', `'gap'` for 'gap'.
  `posemb='sincos2d'`: the reference has no position parameter; its fixed table for a `grid`
  of (h, w) patches is written into mmvit's (learned) position embedding."""
  imp = _Import(flat, _VIT_UNSUPPORTED)
  tok = ("tokenizers", modality)
  imp.move("embedding/kernel", tok + ("kernel",))
  imp.move("embedding/bias", tok + ("bias",))
  if posemb == "learn":
    imp.move("pos_embedding", tok + ("posemb",))
  elif posemb == "sincos2d":
    if imp.has("pos_embedding"):
      raise ConversionError("reference parameter 'pos_embedding' is learned, but "
                            "posemb='sincos2d' was asked for")
    if grid is None:
      raise ConversionError("posemb='sincos2d' needs grid=(h, w), the patch grid")
    width = imp.flat["embedding/kernel"].shape[-1]
    imp.put(tok + ("posemb",), sincos_2d(*grid, width), "sincos2d table (no parameter)")
  else:
    raise ConversionError(f"posemb={posemb!r}: expected 'learn' or 'sincos2d'")
  if imp.has("cls"):
    imp.move("cls", tok + ("cls",))

  scanned = [k for k in imp.flat if k.startswith("Transformer/encoderblock/")]
  layers = sorted({int(m.group(1)) for k in imp.flat
                   if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
  if scanned and layers:
    raise ConversionError(f"reference parameter {scanned[0]!r} is a scanned block, but "
                          f"'Transformer/encoderblock_{layers[0]}' is not")
  if scanned:
    imp.stacked_block("Transformer/encoderblock", ("encoder",), None)
  elif layers:
    for l in range(layers[-1] + 1):
      imp.block(f"Transformer/encoderblock_{l}", ("encoder", f"encoderblock_{l}"))
  else:
    raise ConversionError("no reference parameter under 'Transformer/encoderblock*'")
  imp.move("Transformer/encoder_norm/scale", ("encoder", "encoder_norm", "scale"))
  imp.move("Transformer/encoder_norm/bias", ("encoder", "encoder_norm", "bias"))
  _vit_head(imp, ("heads", task), label)
  return imp.finish(target)


def _vit_head(imp: _Import, dest: tuple[str, ...], label: str, name: str = "head"):
  """The head of a ViT: an optional MAPHead, an optional pre_logits layer, the outputs."""
  if imp.has("MAPHead_0/probe"):
    for leaf in MAP_LEAVES:
      imp.move(f"MAPHead_0/{leaf}", dest + ("map",) + tuple(leaf.split("/")))
  if imp.has("pre_logits/kernel"):
    imp.move("pre_logits/kernel", dest + ("pre_logits", "kernel"))
    imp.move("pre_logits/bias", dest + ("pre_logits", "bias"))
  imp.move(f"{name}/kernel", dest + ("outputs", label, "kernel"))
  imp.move(f"{name}/bias", dest + ("outputs", label, "bias"))


# --------------------------------------------------------------------------- Scenic MBT

def _mbt_check(config: Mapping):
  classifier = config.get("classifier", "gap")
  if classifier not in ("token", "gap"):
    raise Unsupported(f"MBT classifier={classifier!r}: mmvit pools with 'token' or 'gap' only")
  if config.get("use_bottleneck", False) and not config.get("test_with_bottlenecks", True):
    raise Unsupported("MBT test_with_bottlenecks=False: mmvit always runs the bottleneck")
  for m in config["modality_fusion"]:
    if m not in _MBT_EMBEDDING:
      raise ConversionError(f"MBT modality {m!r}: the reference knows only "
                            f"{sorted(_MBT_EMBEDDING)}")


def mbt_model_spec(config: Mapping):
  """mmvit ModelSpec for a Scenic MBT config."""
  from mmvit.models.model import ModelSpec  # noqa: PLC0415
  _mbt_check(config)
  return ModelSpec(width=config["hidden_size"], depth=config["num_layers"],
                   num_heads=config["num_heads"], mlp_dim=config["mlp_dim"],
                   pool="token" if config.get("classifier", "gap") == "token" else "gap",
                   dropout=config.get("dropout_rate", 0.1),
                   attention_dropout=config.get("attention_dropout_rate", 0.1))


def mbt_fusion_spec(config: Mapping):
  """mmvit FusionSpec for a Scenic MBT config (None for one modality).

  use_bottleneck -> 'bottleneck' with tokens = n_bottlenecks (+1 with the token classifier:
  the reference adds one bottleneck token then); otherwise share_encoder -> 'joint' (all
  tokens through one block), else 'full_pairwise'; fusion_layer = num_layers -> 'late'."""
  from mmvit.models.fusion import FusionSpec  # noqa: PLC0415
  _mbt_check(config)
  if len(config["modality_fusion"]) == 1:
    return None
  share = bool(config.get("share_encoder", False))
  layer = int(config.get("fusion_layer", 0))
  if config.get("use_bottleneck", False):
    tokens = int(config.get("n_bottlenecks", 4)) + int(config.get("classifier") == "token")
    return FusionSpec("bottleneck", layer, tokens, share)
  if layer >= config["num_layers"]:
    return FusionSpec("late", layer, shared_weights=share)
  return FusionSpec("joint" if share else "full_pairwise", layer, shared_weights=share)


def mbt_tokenizers(config: Mapping, input_shapes: Mapping[str, tuple[int, ...]],
                   patches_size: tuple[int, ...]) -> dict:
  """mmvit TokenizerSpecs for a Scenic MBT config with temporal_encoding '3d_conv'.

  Scenic reads `patches.size` as (h, w, t) for rgb (kernel (t, h, w, c, d)) and (h, w) for the
  spectrogram; inputs are (frames, H, W, C) and (time, mel, 1). Position embeddings are added
  after the class token (posemb_includes_cls=True)."""
  from mmvit.models.tokenizers import TokenizerSpec  # noqa: PLC0415
  _mbt_check(config)
  token = config.get("classifier", "gap") == "token"
  h, w = patches_size[0], patches_size[1]
  out = {}
  for m in config["modality_fusion"]:
    if m == "rgb":
      if len(patches_size) != 3:
        raise ConversionError(f"MBT rgb needs patches.size (h, w, t), got {patches_size}")
      kind, patch = "tubelet", (patches_size[2], h, w)
    else:
      kind, patch = "spectrogram", (h, w)
    out[m] = TokenizerSpec(kind, m, tuple(input_shapes[m]), patch, class_token=token,
                           posemb_includes_cls=True)
  return out


def from_scenic_mbt(flat: Mapping[str, np.ndarray], config: Mapping, *, target=None,
                    task: str = "av", label: str = "label") -> dict:
  """Scenic MBT parameters -> mmvit pure dict for a model built with `mbt_model_spec`,
  `mbt_tokenizers` and task `task` = (config.modality_fusion, head, `mbt_fusion_spec`).

  The first modality's blocks go to `encoder`, the others' (share_encoder=False) to
  `stream_encoders/<modality>`; `bottleneck` (1, B(+1), D) goes to `bottlenecks/<task>/tokens`
  and the mmvit bottleneck position embedding, which the reference does not have, is zero."""
  imp = _Import(flat, _MBT_UNSUPPORTED)
  _mbt_import(imp, config, task, label)
  return imp.finish(target)


def _mbt_import(imp: _Import, config: Mapping, task: str, label: str = "label"):
  _mbt_check(config)
  mods = tuple(config["modality_fusion"])
  share = bool(config.get("share_encoder", False))
  token = config.get("classifier", "gap") == "token"
  for m in mods:
    tok = ("tokenizers", m)
    imp.move(f"{_MBT_EMBEDDING[m]}/kernel", tok + ("kernel",))
    imp.move(f"{_MBT_EMBEDDING[m]}/bias", tok + ("bias",))
    suffix = "" if m == "rgb" else f"_{m}"
    imp.move(f"Transformer/posembed_input{suffix}/pos_embedding", tok + ("posemb",))
    if token:
      imp.move("cls" + ("" if m == "rgb" or len(mods) == 1 else m), tok + ("cls",))
  for l in range(config["num_layers"]):
    for i, m in enumerate(mods):
      if share and i > 0:
        continue  # every stream runs encoderblock_<l>
      name = f"Transformer/encoderblock_{l}" + ("" if share or m == "rgb" else f"_{m}")
      dest = ("encoder",) if i == 0 else ("stream_encoders", m)
      imp.block(name, dest + (f"encoderblock_{l}",))
  if config.get("use_bottleneck", False) and len(mods) > 1:
    dest = ("bottlenecks", task)
    imp.move("bottleneck", dest + ("tokens",))
    b = imp.flat["bottleneck"]
    if b.ndim != 3:
      raise ConversionError(f"reference parameter 'bottleneck' has shape {b.shape}, expected "
                            "(1, B, D)")
    imp.put(dest + ("posemb",), np.zeros_like(b), "zeros (the reference bottleneck has no "
            "position embedding)")
  imp.move("Transformer/encoder_norm/scale", ("encoder", "encoder_norm", "scale"))
  imp.move("Transformer/encoder_norm/bias", ("encoder", "encoder_norm", "bias"))
  _vit_head(imp, ("heads", task), label, name="output_projection")


# --------------------------------------------------------------------------- checkpoint files
# A checkpoint file is read as mmvit parameter groups (model.split_groups) plus what its
# tokenizers were (TokenizerInfo), whatever its layout; mmvit.pretrained adapts those groups
# to the model being trained. Group names of a file's parameters:
#   big_vision / vit_jax ViT: tokenizers.image, shared, heads.image
#   Scenic ViT / MBT:         tokenizers.rgb, tokenizers.spectrogram, shared,
#                             stream_encoders.spectrogram, bottlenecks.mbt, heads.mbt

LAYOUTS = ("big_vision", "vit_jax", "scenic")

# vit_jax (and AugReg) name the parts of a block by their creation order.
_VIT_JAX_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1":
                  "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
                  "MlpBlock_3": "MlpBlock_0"}
_VIT_JAX_POSEMB = "Transformer/posembed_input/pos_embedding"


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
  """What a stored tokenizer was: the patch grid of its position embedding (None: unknown,
  read from a perfect square) and whether its first position belongs to the class token."""
  grid: tuple[int, ...] | None
  cls_in_posemb: bool
  posemb_name: str = "posemb"  # the stored name of the position embedding, for messages
  fixed: str | None = None     # 'sincos2d': no stored position embedding, a fixed 2D table


@dataclasses.dataclass
class Checkpoint:
  """A checkpoint read as mmvit groups: {group: pure-dict subtree of numpy arrays}, loop layout."""
  path: str
  layout: str
  groups: dict[str, dict]
  tokenizers: dict[str, TokenizerInfo]
  origin: dict[str, str]  # "<group>/<leaf path>" -> the array's name in the file


def _square(n: int) -> int | None:
  r = int(round(n ** 0.5))
  return r if r * r == n else None


def _vit_grid(path: str, name: str, n: int, has_cls: bool, given) -> tuple[tuple, bool]:
  """(patch grid, class-token position inside) of a ViT's `n` stored positions: vit_jax keeps
  the class token's position first (n = g*g + 1), big_vision none (n = g*g). Decided by the
  given grid, else by which of n, n - 1 is a perfect square; neither is an error."""
  if given:
    grid = tuple(int(d) for d in given)
    inside = has_cls and math.prod(grid) + 1 == n
    if math.prod(grid) + int(inside) != n:
      raise ConversionError(f"{path}: {name!r} has {n} positions, which the posemb_grid "
                            f"{grid} does not fill")
    return grid, inside
  if has_cls and (side := _square(n - 1)) is not None:
    return (side, side), True
  if (side := _square(n)) is not None:
    return (side, side), False
  raise ConversionError(f"{path}: {name!r} has {n} positions: neither {n} nor {n - 1} (with a "
                        "class token) is a perfect square, so the patch grid is unknown; give "
                        "init_from.posemb_grid")


def read_npz(path: str) -> dict[str, np.ndarray]:
  """A .npz of parameters as a flat {name: array}: parity files' `param:` prefix and big_vision
  train-state checkpoints' `params/` prefix are removed, optimizer state (`opt/`) left out."""
  import zipfile  # noqa: PLC0415
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except FileNotFoundError:
    raise ConversionError(f"{path}: no such file") from None
  except (OSError, ValueError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a .npy
    raise ConversionError(f"{path}: not a checkpoint (expected a .npz of parameter arrays: "
                          f"{' '.join(str(e).split())[:120]})") from None
  if not isinstance(flat, dict) or not flat:
    raise ConversionError(f"{path}: not a checkpoint (expected a .npz of parameter arrays)")
  for prefix in ("param:", "params/"):
    if any(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  return {k: v for k, v in flat.items() if not k.startswith("opt/")}


def detect_layout(flat: Mapping[str, np.ndarray], path: str = "checkpoint") -> str:
  keys = set(flat)
  if "output_projection/kernel" in keys or "embedding_spectrogram/kernel" in keys:
    return "scenic"
  if _VIT_JAX_POSEMB in keys or any("/MlpBlock_3/" in k for k in keys):
    return "vit_jax"
  if "embedding/kernel" in keys and any(k.startswith("Transformer/encoderblock") for k in keys):
    return "big_vision"
  shown = ", ".join(repr(k) for k in sorted(keys)[:3])
  raise ConversionError(f"{path}: its parameters ({shown}, ...) match none of the known layouts "
                        f"({', '.join(LAYOUTS)}: a ViT's 'embedding/kernel' and "
                        "'Transformer/encoderblock*')")


def vit_jax_to_big_vision(flat: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """vit_jax names -> big_vision names (and back, as the second dict) for the same arrays.
  The class-token position stays inside `pos_embedding`; the reader sets cls_in_posemb."""
  out, back = {}, {}
  for k, v in flat.items():
    new = k
    m = re.match(r"(Transformer/encoderblock_\d+)/([^/]+)/(.*)", k)
    if m and m.group(2) in _VIT_JAX_BLOCK:
      new = f"{m.group(1)}/{_VIT_JAX_BLOCK[m.group(2)]}/{m.group(3)}"
    elif k == _VIT_JAX_POSEMB:
      new = "pos_embedding"
    out[new], back[new] = v, k
  return out, back


def _mbt_config_of(flat: Mapping[str, np.ndarray]) -> dict:
  """The Scenic settings a parameter tree implies (enough to name its parameters)."""
  mods = [m for m, e in _MBT_EMBEDDING.items() if f"{e}/kernel" in flat]
  layers = {int(m.group(1)) for k in flat if (m := re.match(r"Transformer/encoderblock_(\d+)", k))}
  token = any(k.startswith("cls") for k in flat)
  cfg = dict(modality_fusion=mods, num_layers=max(layers) + 1 if layers else 0,
             classifier="token" if token else "gap",
             share_encoder=not any(re.match(r"Transformer/encoderblock_\d+_", k) for k in flat),
             use_bottleneck="bottleneck" in flat)
  if cfg["use_bottleneck"]:
    cfg["n_bottlenecks"] = int(flat["bottleneck"].shape[1]) - int(token)
  return cfg


def read_checkpoint(path: str, posemb_grid: tuple[int, ...] | None = None) -> Checkpoint:
  """Reads a .npz checkpoint of any known layout as mmvit groups. `posemb_grid` gives the
  stored patch grid where it is not square (a spectrogram's, a video's)."""
  from mmvit.models.model import split_groups  # noqa: PLC0415
  flat = read_npz(path)
  layout = detect_layout(flat, path)
  back = {k: k for k in flat}
  if layout == "scenic":
    cfg = _mbt_config_of(flat)
    if not cfg["modality_fusion"]:
      raise ConversionError(f"{path}: a Scenic checkpoint without 'embedding/kernel' or "
                            "'embedding_spectrogram/kernel'")
    imp_tree, origin = _scenic_tree(flat, cfg, path)
    token = cfg["classifier"] == "token"
    infos = {}
    for m in cfg["modality_fusion"]:
      name = f"Transformer/posembed_input{'' if m == 'rgb' else '_' + m}/pos_embedding"
      n = int(flat[name].shape[1])
      # A square count is a 2D grid only for 2D patches; a tubelet grid is never guessed.
      flat_kernel = flat[f"{_MBT_EMBEDDING[m]}/kernel"].ndim == 4
      side = _square(n - int(token)) if m == "rgb" and flat_kernel else None
      grid = tuple(posemb_grid) if posemb_grid else ((side, side) if side else None)
      infos[m] = TokenizerInfo(grid, token, name)
  else:
    if layout == "vit_jax":
      flat, back = vit_jax_to_big_vision(flat)
    imp = _Import(flat, _VIT_UNSUPPORTED)
    try:
      tree = _vit_tree(imp)
    except ConversionError as e:
      raise ConversionError(f"{path}: {_renamed(str(e), back)}") from None
    origin = {k: back.get(v, v) for k, v in imp.origin_paths().items()}
    imp_tree = tree
    name = "pos_embedding" if layout == "big_vision" else _VIT_JAX_POSEMB
    grid, cls_in = None, False
    if "pos_embedding" in flat:
      n = int(flat["pos_embedding"].shape[1])
      grid, cls_in = _vit_grid(path, name, n, "cls" in flat, posemb_grid)
    # big_vision's posemb='sincos2d' stores no position parameter: the table is rebuilt.
    infos = {"image": TokenizerInfo(grid, cls_in, name,
                                    None if "pos_embedding" in flat else "sincos2d")}
  groups = split_groups({"encoder": {}, **imp_tree})
  if not groups["shared"]:
    del groups["shared"]
  return Checkpoint(path, layout, groups, infos, origin)


def _renamed(msg: str, back: Mapping[str, str]) -> str:
  for new, old in back.items():
    if new != old:
      msg = msg.replace(repr(new), repr(old))
  return msg


def _vit_tree(imp: _Import) -> dict:
  """A big_vision-named ViT (no target: its own shapes) -> mmvit pure dict of one image
  tokenizer, the shared encoder and heads/image; a sin-cos model has no position parameter."""
  tok = ("tokenizers", "image")
  imp.move("embedding/kernel", tok + ("kernel",))
  imp.move("embedding/bias", tok + ("bias",))
  if imp.has("pos_embedding"):
    imp.move("pos_embedding", tok + ("posemb",))
  if imp.has("cls"):
    imp.move("cls", tok + ("cls",))
  scanned = [k for k in imp.flat if k.startswith("Transformer/encoderblock/")]
  layers = sorted({int(m.group(1)) for k in imp.flat
                   if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
  if scanned:
    imp.stacked_block("Transformer/encoderblock", ("encoder",), None)
  for l in range(layers[-1] + 1 if layers else 0):
    imp.block(f"Transformer/encoderblock_{l}", ("encoder", f"encoderblock_{l}"))
  imp.move("Transformer/encoder_norm/scale", ("encoder", "encoder_norm", "scale"))
  imp.move("Transformer/encoder_norm/bias", ("encoder", "encoder_norm", "bias"))
  if imp.has("head/kernel"):
    _vit_head(imp, ("heads", "image"), "label")
  return imp.finish()


def _scenic_tree(flat, cfg, path) -> tuple[dict, dict]:
  """A Scenic ViT/MBT tree -> (mmvit pure dict with task 'mbt', origins). The first stream's
  blocks (rgb, or every stream's with share_encoder) are `encoder`, the others'
  `stream_encoders/spectrogram`."""
  imp = _Import(flat, _MBT_UNSUPPORTED)
  try:
    _mbt_import(imp, cfg, "mbt")
    tree = imp.finish()
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from None
  return tree, imp.origin_paths()


# --------------------------------------------------------------------------- writing npz

def to_vit(params: Mapping, *, task: str, modality: str, label: str | None = None,
           tokenizer=None, layout: str = "big_vision") -> dict[str, np.ndarray]:
  """One image task of an mmvit model -> a ViT checkpoint in the big_vision layout (position
  embedding beside the class token) or the vit_jax layout (class-token position inside it).
  `params`: the model's pure dict; `tokenizer`: the modality's TokenizerSpec (posemb_includes_cls
  is folded exactly: a class-token position moves into the class token for big_vision)."""
  if layout not in ("big_vision", "vit_jax"):
    raise ConversionError(f"layout={layout!r}: expected 'big_vision' or 'vit_jax'")
  params = _to_loop(dict(params))
  tok = {k: np.asarray(v) for k, v in params["tokenizers"][modality].items()}
  head = params["heads"][task]
  labels = sorted(head["outputs"])
  label = label or labels[0]
  if label not in head["outputs"]:
    raise ConversionError(f"task {task!r} has no output {label!r}; it has {', '.join(labels)}")
  if tok["kernel"].ndim != 4:
    raise ConversionError(f"tokenizers/{modality}/kernel has shape {tok['kernel'].shape}: a ViT "
                          "checkpoint holds a 2D patch kernel (ph, pw, C, D)")
  # No posemb: the model's table is the fixed sin-cos one, which big_vision's posemb='sincos2d'
  # rebuilds from the grid (its readers do too); a class token last is exported first, which
  # computes the same (attention is permutation-equivariant; positions are the patches').
  pe, cls = tok.get("posemb"), tok.get("cls")
  if pe is None and layout == "vit_jax":
    raise ConversionError(f"tokenizers/{modality} has a fixed sin-cos position table, which "
                          "the vit_jax layout cannot hold; use layout='big_vision'")
  cls_in = bool(tokenizer is not None and tokenizer.posemb_includes_cls and cls is not None)
  if cls_in:  # mmvit: token 0 = cls + pe[0]
    pe0, pe = pe[:, :1], pe[:, 1:]
  else:
    pe0 = None if cls is None else np.zeros_like(cls)
  out = {"embedding/kernel": tok["kernel"], "embedding/bias": tok["bias"]}
  if layout == "big_vision":
    if pe is not None:
      out["pos_embedding"] = pe
    if cls is not None:
      out["cls"] = cls + pe0
  else:
    out[_VIT_JAX_POSEMB] = pe if cls is None else np.concatenate([pe0, pe], axis=1)
    if cls is not None:
      out["cls"] = cls
  enc = params["encoder"]
  # The task's path through the model: its modality's adapter blocks (PolyViT's
  # modality-specific layers), the shared ones, its modality's post-adapter blocks and its own
  # task blocks; a reader maps them back with layer ranges.
  def stack(tree):
    return [tree[f"encoderblock_{i}"] for i in range(
        sum(1 for k in tree if k.startswith("encoderblock_")))]
  blocks = (stack(params.get("adapters", {}).get(modality, {})) + stack(enc)
            + stack(params.get("post_adapters", {}).get(modality, {}))
            + stack(params.get("task_blocks", {}).get(task, {})))
  inverse = {v: k for k, v in _VIT_JAX_BLOCK.items()}
  for l, block in enumerate(blocks):
    for path, v in _flatten(block).items():
      first = path[0] if layout == "big_vision" else inverse[path[0]]
      out["/".join((f"Transformer/encoderblock_{l}", first) + path[1:])] = np.asarray(v)
  out["Transformer/encoder_norm/scale"] = np.asarray(enc["encoder_norm"]["scale"])
  out["Transformer/encoder_norm/bias"] = np.asarray(enc["encoder_norm"]["bias"])
  if "map" in head:
    for path, v in _flatten(head["map"]).items():
      out["MAPHead_0/" + "/".join(path)] = np.asarray(v)
  if "pre_logits" in head:
    out["pre_logits/kernel"] = np.asarray(head["pre_logits"]["kernel"])
    out["pre_logits/bias"] = np.asarray(head["pre_logits"]["bias"])
  out["head/kernel"] = np.asarray(head["outputs"][label]["kernel"])
  out["head/bias"] = np.asarray(head["outputs"][label]["bias"])
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def save_npz(path: str, flat: Mapping[str, np.ndarray]) -> None:
  """Writes a flat checkpoint atomically (a temporary file renamed into place)."""
  import os  # noqa: PLC0415
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


# --------------------------------------------------------------------------- command line

def main_export(workdir: str, task: str, out: str, layout: str = "big_vision",
                step: int | None = None, label: str | None = None) -> str:
  """One image task of an mmvit run written as a ViT checkpoint file; returns a summary line.
  Nothing in the workdir is changed; `out` is written whole or not at all."""
  import os  # noqa: PLC0415

  from mmvit import checkpointing  # noqa: PLC0415
  from mmvit.models.model import join_groups  # noqa: PLC0415
  from mmvit.models.tokenizers import TokenizerSpec  # noqa: PLC0415
  meta, groups = checkpointing.read_params(workdir, step, "--workdir")
  desc = meta.get("model")
  if not desc:
    raise ConversionError(f"--workdir={workdir}: its checkpoint does not describe its model "
                          "(written before checkpoints did): nothing to export")
  if task not in desc["tasks"]:
    raise ConversionError(f"--task={task!r}: the run has tasks {', '.join(desc['tasks'])}")
  mods = desc["tasks"][task]["modalities"]
  if len(mods) != 1:
    raise ConversionError(f"--task={task!r} reads {len(mods)} modalities: a ViT checkpoint "
                          "holds one image stream")
  t = desc["tokenizers"][mods[0]]
  spec = TokenizerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
  flat = to_vit(join_groups(groups), task=task, modality=mods[0], label=label,
                tokenizer=spec, layout=layout)
  if os.path.exists(out):
    raise ConversionError(f"--out={out} exists: choose a new file")
  if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise ConversionError(f"--out={out}: its directory does not exist")
  save_npz(out, flat)
  n = sum(int(np.prod(v.shape)) for v in flat.values())
  return f"wrote {out}: task {task} of {workdir} as a {layout} ViT ({len(flat)} arrays, {n:_} parameters)"


def main(argv=None) -> int:
  """python -m mmvit.convert --workdir=RUN --task=T --out=FILE.npz [--layout=big_vision|vit_jax]
  [--step=N] [--label=KEY]"""
  import argparse  # noqa: PLC0415
  import sys  # noqa: PLC0415
  p = argparse.ArgumentParser(prog="python -m mmvit.convert", description=(
      "Writes one image task of an mmvit run as a ViT .npz checkpoint (big_vision or vit_jax "
      "layout), which any run's init_from.file reads."))
  p.add_argument("--workdir", required=True)
  p.add_argument("--task", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--layout", default="big_vision", choices=("big_vision", "vit_jax"))
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--label", default=None)
  a = p.parse_args(argv)
  from mmvit.checkpointing import CheckpointError  # noqa: PLC0415
  try:
    print(main_export(a.workdir, a.task, a.out, a.layout, a.step, a.label))
  except (ConversionError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
