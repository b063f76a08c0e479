"""Adapting pretrained parameter groups to the model being trained (config.init_from).

A source (an mmvit run's checkpoint, or a checkpoint file read by mmvit.convert) is a set of
parameter groups named like this model's (`shared`, `tokenizers.image`, `heads.image`, ...).
Each group this model takes from a source is adapted to its own shapes:

  stacks (`shared`, `stream_encoders.<m>`, `adapters.<m>`): blocks copied in order, a layer range
    of the source chosen with `group[lo:hi]` (PolyViT: a ViT's first blocks as modality-specific
    adapters, the rest as the shared stack); a final `encoder_norm` the target lacks is skipped,
    one it has and the source lacks keeps its fresh initialisation; loop or scan layout either way.
  tokenizers: the patch kernel inflated from 2D patches to 3D tubelets (`inflate`: average over
    time, central frame, or repeat), RGB summed to one channel (spectrograms), resized to another
    patch size (FlexiViT's pseudo-inverse resize); the position embedding resized to the new
    grid (bilinear per axis, the class-token position kept apart and moved into or out of the
    embedding as the two models place it); same grid and same patch: identity.
  heads, bottlenecks: identical shapes; a representation layer or attention-pooling head that
    only one side has is skipped or fresh.

Every parameter of the model ends in the report as loaded, resized, inflated or fresh, and every
source parameter not used as skipped. Errors are one line naming the source and the parameter.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping

import numpy as np

from mmvit.convert import ConversionError, TokenizerInfo
from mmvit.convert import _flatten as _flat, _unflatten as _tree

INFLATIONS = ("average", "central", "repeat")
_STACKS = ("shared", "stream_encoders", "adapters", "post_adapters", "task_blocks")
# Parts of a group that one side may have and the other not (fresh or skipped, reported).
OPTIONAL = ("encoder_norm", "pre_logits", "map")
_OPTIONAL = OPTIONAL


class AdaptError(ValueError):
  """A source parameter that cannot take this model's shape: one line naming both."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the report: what happened to one parameter."""
  param: str        # this model's 'group/leaf path', or the source's for 'skipped'
  action: str       # loaded | resized | inflated | skipped | fresh
  source: str = ""  # where it came from ('<source>: <name in it>')
  shape: tuple = ()
  note: str = ""

  def as_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items() if v not in ("", ())}


def parse_group(spec: str, where: str) -> tuple[str, int | None, int | None]:
  """'shared', 'shared[2:12]', 'shared[:2]' -> (group, lo, hi)."""
  m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[(\d*):(\d*)\])?", spec)
  if not m:
    raise AdaptError(f"{where}={spec!r}: expected a group name, optionally with a layer range "
                     "such as 'shared[2:12]'")
  lo = int(m.group(2)) if m.group(2) else None
  hi = int(m.group(3)) if m.group(3) else None
  return m.group(1), lo, hi


def group_pairs(group_map) -> list[tuple[str, str]]:
  """config's group_map ('this=source' strings, a comma-joined string, or a dict) as pairs."""
  if not group_map:
    return []
  if isinstance(group_map, str):
    group_map = group_map.split(",")
  if hasattr(group_map, "items"):
    return [(str(k), str(v)) for k, v in group_map.items()]
  out = []
  for p in group_map:
    this, eq, src = str(p).partition("=")
    if not eq or not this.strip() or not src.strip():
      raise AdaptError(f"group_map: {p!r}: expected 'this model's group pattern=source group'")
    out.append((this.strip(), src.strip()))
  return out


def source_of(group: str, group_map) -> str:
  """The source group spec for this model's `group`: the first group_map pattern that matches
  it (fnmatch), else the same name."""
  for pattern, src in group_pairs(group_map):
    if fnmatch.fnmatchcase(group, pattern):
      return src
  return group


# ----------------------------------------------------------------------- position embeddings

def resize_grid(table: np.ndarray, src: tuple[int, ...], dst: tuple[int, ...]) -> np.ndarray:
  """(prod(src), D) positions on grid `src` -> (prod(dst), D) on grid `dst`, row-major.

  Same grid: the table itself. A grid of lower rank gains leading axes of size 1 (a 2D image
  grid for a (time, h, w) video grid; a 1D sequence for a 2D grid), and an axis of size 1 is
  repeated; other axes are resized by linear interpolation (jax.image.resize 'linear', half-pixel
  centres, no antialiasing: 14 -> 16 -> 14 of a smooth grid returns within 0.043, with it 0.084)."""
  src, dst = tuple(src), tuple(dst)
  if math.prod(src) != table.shape[0]:
    raise AdaptError(f"{table.shape[0]} positions do not fill a grid {src}")
  if src == dst:
    return table
  if len(src) > len(dst):
    raise AdaptError(f"a {len(src)}D grid {src} cannot be resized to the {len(dst)}D grid {dst}")
  full = (1,) * (len(dst) - len(src)) + src
  x = table.reshape(full + (table.shape[-1],)).astype(np.float32)
  interp = tuple(d if s > 1 else s for s, d in zip(full, dst))
  if interp != full:
    import jax  # noqa: PLC0415
    x = np.asarray(jax.image.resize(x, interp + (x.shape[-1],), method="linear",
                                    antialias=False))
  x = np.broadcast_to(x, dst + (x.shape[-1],))
  return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def posemb_grid(name: str, n: int, cls_in: bool, info_grid) -> tuple[int, ...]:
  """The stored grid: the source's own record, else a perfect square of its positions."""
  if info_grid is not None:
    grid = tuple(info_grid)
    if math.prod(grid) + int(cls_in) != n:
      raise AdaptError(f"{name} has {n} positions, not the grid {grid}"
                       + (" and a class token" if cls_in else ""))
    return grid
  patches = n - int(cls_in)
  side = int(round(patches ** 0.5))
  if side * side != patches:
    raise AdaptError(f"{name} has {n} positions" + (" (one the class token's)" if cls_in else "")
                     + f": {patches} is not a perfect square, so its grid is unknown; give "
                     "init_from.posemb_grid")
  return (side, side)


# ----------------------------------------------------------------------------- patch kernels

def _resize_matrix(old: tuple[int, ...], new: tuple[int, ...]) -> np.ndarray:
  """(prod(new), prod(old)): the linear resize of a flattened patch."""
  import jax  # noqa: PLC0415
  eye = np.eye(math.prod(old), dtype=np.float32).reshape((-1,) + old)
  out = jax.vmap(lambda e: jax.image.resize(e, new, method="linear", antialias=False))(eye)
  return np.asarray(out).reshape(math.prod(old), math.prod(new)).T


def resize_patch(kernel: np.ndarray, new: tuple[int, ...]) -> np.ndarray:
  """(*old, C, D) -> (*new, C, D) by FlexiViT's pseudo-inverse resize: the new kernel w' makes
  <resize(x), w'> = <x, w> for every old patch x (exactly when growing, least squares when
  shrinking)."""
  old = kernel.shape[:-2]
  if tuple(old) == tuple(new):
    return kernel
  m = _resize_matrix(tuple(old), tuple(new))          # (new, old)
  w = kernel.reshape(math.prod(old), -1).astype(np.float64)
  out = np.linalg.pinv(m.T.astype(np.float64)) @ w    # (new, C*D)
  return out.reshape(tuple(new) + kernel.shape[-2:]).astype(np.float32)


def inflate_time(kernel: np.ndarray, frames: int, how: str) -> np.ndarray:
  """(ph, pw, C, D) -> (frames, ph, pw, C, D): `average` (w / frames at every frame: a clip
  constant in time gives the image's embedding), `central` (w at frame frames // 2, zeros
  elsewhere: every other frame is ignored), `repeat` (w at every frame)."""
  if how == "average":
    return np.repeat(kernel[None] / frames, frames, axis=0)
  if how == "repeat":
    return np.repeat(kernel[None], frames, axis=0)
  if how == "central":
    out = np.zeros((frames,) + kernel.shape, kernel.dtype)
    out[frames // 2] = kernel
    return out
  raise AdaptError(f"inflate={how!r}: expected one of {', '.join(INFLATIONS)}")


def adapt_kernel(kernel: np.ndarray, want: tuple[int, ...], inflate: str, name: str
                 ) -> tuple[np.ndarray, list[str]]:
  """A patch kernel (*patch, C, D) -> the shape `want`, with what was done."""
  notes = []
  if kernel.shape[-1] != want[-1]:
    raise AdaptError(f"{name} has width {kernel.shape[-1]}, this model {want[-1]}")
  c, cw = kernel.shape[-2], want[-2]
  if c != cw:
    if cw == 1:
      kernel, _ = kernel.sum(axis=-2, keepdims=True), notes.append(f"{c} channels summed")
    elif c == 1:
      kernel, _ = np.repeat(kernel / cw, cw, axis=-2), notes.append(f"1 channel spread over {cw}")
    else:
      raise AdaptError(f"{name} has {c} input channels, this model {cw}: only C -> 1 (sum) "
                       "and 1 -> C are defined")
  patch, target = kernel.shape[:-2], tuple(want[:-2])
  if len(patch) == 2 and len(target) == 3:
    kernel = inflate_time(kernel, target[0], inflate)
    notes.append(f"inflated over {target[0]} frames ({inflate})")
    patch = kernel.shape[:-2]
  elif len(patch) == 3 and len(target) == 2:
    kernel, _ = kernel.sum(axis=0), notes.append(f"summed over {patch[0]} frames")
    patch = kernel.shape[:-2]
  elif len(patch) != len(target):
    raise AdaptError(f"{name} is a {len(patch)}D patch kernel {tuple(patch)}, this model's is "
                     f"{len(target)}D {target}: only 2D -> 3D (inflation) and 3D -> 2D are defined")
  if tuple(patch) != target:
    if len(target) == 3 and patch[0] != target[0]:  # time: undo and redo the inflation
      kernel = inflate_time(kernel.sum(axis=0), target[0], inflate)
      notes.append(f"re-inflated over {target[0]} frames ({inflate})")
    kernel = (resize_patch(kernel, target) if len(target) < 3 else
              np.stack([resize_patch(k, target[1:]) for k in kernel]))
    if tuple(patch[-2:]) != tuple(target[-2:]):
      notes.append(f"patch {tuple(patch)} resized to {target} (pseudo-inverse)")
  return kernel.astype(np.float32), notes


# ---------------------------------------------------------------------------- adapting groups

@dataclasses.dataclass
class Adapted:
  """One group adapted: its values (pure dict, the target's layout; leaves the source lacks
  are absent and stay fresh) and the report rows."""
  values: dict
  rows: list


class Adapter:
  """Adapts the groups of one source. `name`: how the report and errors call the source
  ('init_from[0] (/path/ViT-B_16.npz)'); `origin`: 'group/leaf' -> name in the source."""

  def __init__(self, name: str, tokenizers: Mapping[str, TokenizerInfo], inflate: str = "average",
               origin: Mapping[str, str] | None = None, posemb_grid=None):
    self.name, self.tokenizers, self.inflate = name, dict(tokenizers), inflate
    self.origin, self.posemb_grid = dict(origin or {}), posemb_grid

  def where(self, group: str, path: tuple[str, ...]) -> str:
    key = "/".join((group,) + path)
    stored = self.origin.get(key)
    return f"{self.name}: {stored}" if stored else f"{self.name}: {key}"

  def adapt(self, group: str, spec: str, source: dict, want: dict, tokenizer=None) -> Adapted:
    """Source group `spec` ('shared[2:12]') with tree `source` -> this model's `group` with
    abstract tree `want` (arrays or ShapeDtypeStructs); `tokenizer`: this model's TokenizerSpec
    for a tokenizer group."""
    from mmvit.models.encoder import layout_of, to_loop, to_scan  # noqa: PLC0415
    src_group, lo, hi = parse_group(spec, f"{self.name}.group_map")
    self._renumber = {}
    scan = layout_of(want) == "scan"
    want_loop = _flat(to_loop(want) if scan else want)
    have = to_loop(source)
    rows: list[Row] = []
    top = group.split(".")[0]
    if lo is not None or hi is not None:
      if not any(k.startswith("encoderblock_") for k in have):
        raise AdaptError(f"{self.name}: group {src_group} has no blocks for the layer range "
                         f"[{lo or ''}:{hi or ''}]")
    if "encoderblock_0" in have or top in _STACKS:
      have = self._blocks(have, src_group, lo, hi, group, want_loop)
    src_tok = src_group.split(".", 1)[1] if src_group.startswith("tokenizers.") else None
    have_flat = _flat(have)
    renumbered = self._renumber
    values = {}
    info = self.tokenizers.get(src_tok) if src_tok else None
    if top == "tokenizers" and info is not None and info.fixed and ("posemb",) in want_loop:
      values.update(self._fixed_posemb(info, tokenizer, group, want_loop, rows))
    for path, w in want_loop.items():
      if path in values:
        continue
      if path not in have_flat:
        if path[0] in _OPTIONAL or (top == "tokenizers" and path[0] == "cls"):
          rows.append(Row(f"{group}/{'/'.join(path)}", "fresh", shape=tuple(w.shape),
                          note=f"{self.name} has none"))
          continue
        raise AdaptError(f"{self.name}: group {src_group} has no parameter "
                         f"{'/'.join(path)} for this model's {group}")
    for path, v in have_flat.items():
      src_path = renumbered.get(path, path)
      where = self.where(src_group, src_path)
      dest = f"{group}/{'/'.join(path)}"
      if top == "tokenizers" and path == ("cls",) and ("posemb",) in have_flat:
        continue  # placed with the position embedding (_posemb): its first row may move in
      if path not in want_loop:
        if path[0] in _OPTIONAL or top == "tokenizers":
          rows.append(Row(where, "skipped", note=f"this model's {group} has no {path[-1]}"
                          if path[0] not in _OPTIONAL else f"this model's {group} has no "
                          f"{path[0]}"))
          continue
        raise AdaptError(f"{where} has no counterpart in this model's {group}")
      w = tuple(want_loop[path].shape)
      v = np.asarray(v)
      if top == "tokenizers" and path == ("kernel",):
        new, notes = adapt_kernel(v, w, self.inflate, where)
        action = ("inflated" if any("inflated" in n for n in notes) else
                  "resized" if notes else "loaded")
        values[path] = new
        rows.append(Row(dest, action, where, w, "; ".join(notes)))
        continue
      if top == "tokenizers" and path == ("posemb",):
        values.update(self._posemb(v, have.get("cls"), tokenizer, src_tok, want_loop, where,
                                   group, rows))
        continue
      if tuple(v.shape) != w:
        raise AdaptError(f"{where} has shape {tuple(v.shape)}, this model's {dest} {w}")
      values[path] = v
      rows.append(Row(dest, "loaded", where, w))
    tree = _tree(values)
    if scan and tree:
      tree = to_scan(tree)
    return Adapted(tree, rows)

  def _fixed_posemb(self, info, spec, group, want_loop, rows) -> dict:
    """big_vision's sincos2d: the fixed table of this model's grid (exact for any grid)."""
    from mmvit.convert import sincos_2d  # noqa: PLC0415
    if spec is None or len(spec.grid) != 2:
      raise AdaptError(f"{self.name}: its position embedding is a fixed 2D sin-cos table, but "
                       f"this model's {group} has a {len(spec.grid) if spec else '?'}D grid")
    table = sincos_2d(*spec.grid, int(want_loop[("posemb",)].shape[-1]))
    if spec.class_token and spec.posemb_includes_cls:
      table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
    rows.append(Row(f"{group}/posemb", "loaded", f"{self.name}: {info.fixed} table",
                    tuple(table.shape), f"fixed table of grid {tuple(spec.grid)}"))
    return {("posemb",): table}

  def _blocks(self, have: dict, src_group: str, lo, hi, group: str, want_loop) -> dict:
    """The source's blocks lo..hi renumbered from 0; remembers the original numbers."""
    n = sum(1 for k in have if k.startswith("encoderblock_"))
    lo, hi = lo or 0, n if hi is None else hi
    if not 0 <= lo < hi <= n:
      raise AdaptError(f"{self.name}: layer range [{lo}:{hi}] of group {src_group}, which has "
                       f"{n} blocks")
    depth = sum(1 for p in want_loop if p[0].startswith("encoderblock_") and p[1:] ==
                ("LayerNorm_0", "scale"))
    if hi - lo != depth:
      raise AdaptError(f"{self.name}: group {src_group}{'' if (lo, hi) == (0, n) else f'[{lo}:{hi}]'}"
                       f" has {hi - lo} blocks, this model's {group} {depth}: map a layer range, "
                       f"e.g. '{src_group}[{max(0, n - depth)}:{n}]'")
    out = {k: v for k, v in have.items() if not k.startswith("encoderblock_")}
    self._renumber = {}
    for i in range(lo, hi):
      out[f"encoderblock_{i - lo}"] = have[f"encoderblock_{i}"]
      for path in _flat(have[f"encoderblock_{i}"]):
        self._renumber[(f"encoderblock_{i - lo}",) + path] = (f"encoderblock_{i}",) + path
    return out

  def _posemb(self, pe, cls, spec, src_tok, want_loop, where, group, rows) -> dict:
    """The position embedding (and class token) in this model's grid and placement."""
    info = self.tokenizers.get(src_tok) if src_tok else None
    cls_in = info.cls_in_posemb if info is not None else False
    if spec is None:
      raise AdaptError(f"{where}: no tokenizer spec for this model's {group}")
    out = {}
    n = pe.shape[1]
    known = self.posemb_grid or (info.grid if info else None)
    if known is None and n - int(cls_in) == spec.num_patches:
      known = spec.grid  # as many positions as this model's patches: taken as they are
    grid = posemb_grid(where, n, cls_in, known)
    pe0, table = (pe[0, :1], pe[0, 1:]) if cls_in else (None, pe[0])
    try:
      new = resize_grid(table, grid, spec.grid)
    except AdaptError as e:
      raise AdaptError(f"{where}: {e}") from None
    resized = tuple(grid) != tuple(spec.grid)
    want_cls_pos = spec.class_token and spec.posemb_includes_cls
    notes = [f"grid {tuple(grid)} -> {tuple(spec.grid)}"] if resized else []
    cls_value = None if cls is None else np.asarray(cls)
    if want_cls_pos:
      if pe0 is not None:
        first = pe0
      else:  # the source adds nothing to its class token: position zero
        first = np.zeros((1, pe.shape[-1]), pe.dtype)
        notes.append("class-token position zero (the source has none)")
      new = np.concatenate([first, new], axis=0)
    elif pe0 is not None:
      if spec.class_token and cls_value is not None:
        cls_value = cls_value + pe0[None]  # token 0 = cls + pe0 either way
        notes.append("class-token position added into the class token")
      else:
        rows.append(Row(where + "[0]", "skipped", note="class-token position; this model has "
                        "no class token"))
    dest = f"{group}/posemb"
    out[("posemb",)] = new[None].astype(np.float32)
    if out[("posemb",)].shape != tuple(want_loop[("posemb",)].shape):
      raise AdaptError(f"{where} gives {out[('posemb',)].shape}, this model's {dest} "
                       f"{tuple(want_loop[('posemb',)].shape)}")
    rows.append(Row(dest, "resized" if resized else "loaded", where,
                    tuple(out[("posemb",)].shape), "; ".join(notes)))
    cls_where = self.where(f"tokenizers.{src_tok}", ("cls",))
    if ("cls",) in want_loop and cls_value is not None:
      out[("cls",)] = cls_value.astype(np.float32)
      rows.append(Row(f"{group}/cls", "loaded", cls_where, tuple(cls_value.shape),
                      "plus the class-token position" if pe0 is not None and not want_cls_pos
                      else ""))
    elif cls_value is not None:
      rows.append(Row(cls_where, "skipped", note="this model has no class token"))
    return out


def fresh_rows(abstract_params: Mapping[str, dict], loaded_rows: list[Row]) -> list[Row]:
  """Every parameter of the model that no source filled."""
  from mmvit.models.encoder import to_loop  # noqa: PLC0415
  done = {r.param for r in loaded_rows if r.action not in ("skipped", "fresh")}
  done |= {r.param for r in loaded_rows if r.action == "fresh"}
  out = []
  for g, tree in abstract_params.items():
    for path, v in _flat(to_loop(tree)).items():
      p = f"{g}/{'/'.join(path)}"
      if p not in done:
        out.append(Row(p, "fresh", shape=tuple(v.shape)))
  return out


def summary(rows: list[Row]) -> str:
  counts: dict[str, int] = {}
  for r in rows:
    counts[r.action] = counts.get(r.action, 0) + 1
  order = ("loaded", "resized", "inflated", "skipped", "fresh")
  return ", ".join(f"{counts[a]} {a}" for a in order if counts.get(a))


def init_model(model, sources, tokenizer_specs: dict | None = None) -> tuple[list[str], list]:
  """config.init_from for a model outside a run (notebooks, tests): `sources` as in the config
  (one dict or a list); the model's parameters are replaced in place. Returns (log lines,
  report rows)."""
  from flax import nnx  # noqa: PLC0415

  from mmvit import checkpointing, config as config_lib, convert  # noqa: PLC0415
  from mmvit.models.model import join_groups, split_groups  # noqa: PLC0415
  sources = config_lib.init_sources({"init_from": sources})
  params = split_groups(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  if tokenizer_specs is None:
    tokenizer_specs = {m: t.spec for m, t in model.tokenizers.items()}
  loaded, lines, rows = checkpointing.load_params(sources, params, tokenizer_specs)
  convert.load_into(model, join_groups({**params, **loaded}))
  return lines, rows


__all__ = ["INFLATIONS", "AdaptError", "Adapter", "ConversionError", "Row", "adapt_kernel",
           "fresh_rows", "group_pairs", "init_model", "inflate_time", "parse_group", "posemb_grid", "resize_grid",
           "resize_patch", "source_of", "summary"]
