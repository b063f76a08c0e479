"""Preprocessing ops named in a config, as big_vision's ``pp`` strings:

    pp_train = 'decode|inception_crop(224)|flip_lr|value_range(-1, 1)'
    pp_eval = 'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)'

A pp string is ops joined by ``|``; an op is ``name`` or ``name(args)`` with Python literals
as arguments. Each op reads and writes features of the element by key (``key=``; defaults:
``image`` for image ops, ``video`` for the frame ops, ``audio`` for waveform ops) and works on
arrays with any leading dimensions, so the image ops apply to every frame of a clip (and
every view of a multi-view test) with one set of random draws per clip. `parse` checks every
op and argument when the config is read (`PPError`: one line naming the op and argument).

Ops whose result depends on the mode: ``sample_frames`` and ``crop_audio`` take a random
window in training, the central one in evaluation, and K uniformly spaced windows on a new
leading axis when the test asks for K views (``eval_views``). Random ops (crops, flips,
jitter, SpecAugment, shifts) are only allowed in training pp strings.

Each op becomes one grain transform (`to_grain`): a ``Map``, or a ``RandomMap`` that grain
seeds per element from the pipeline seed, so batches are reproducible and resume exactly.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import math
from collections.abc import Callable
import numpy as np

MODES = ('train', 'eval')
# Most views a multi-view test may ask for (windows beyond a clip's length repeat).
MAX_VIEWS = 16


class PPError(ValueError):
  """A pp string names an unknown op or gives an op a bad argument (one line)."""


@dataclasses.dataclass
class Context:
  mode: str = 'train'
  views: int = 1


@dataclasses.dataclass
class Op:
  """A parsed op: `fn(element, rng)` -> element; `random` ops need an rng."""

  name: str
  text: str
  fn: Callable[[dict, np.random.Generator | None], dict]
  random: bool = False
  temporal: bool = False  # takes windows of a clip (multi-view evaluation)
  # (key, scale, offset) of an op that is y = x * scale + offset per channel (value_range,
  # normalize): such ops at the end of a pp string can run on the device (`split_affine`).
  affine: tuple | None = None

  def __call__(self, element: dict, rng: np.random.Generator | None = None) -> dict:
    try:
      return self.fn(dict(element), rng)
    except PPError:
      raise
    except KeyError as e:
      raise PPError(f'pp op {self.text!r}: the element has no feature {e.args[0]!r}; it has '
                    f'{", ".join(sorted(element))}') from None


_OPS: dict[str, tuple[Callable, bool, bool]] = {}


def register(name: str, *, random: bool = False, temporal: bool = False):
  """Registers `make(ctx, *args, **kwargs) -> fn(element, rng) -> element` as op `name`."""
  def deco(make):
    _OPS[name] = (make, random, temporal)
    return make
  return deco


def names() -> tuple[str, ...]:
  return tuple(sorted(_OPS))


def _split(pp: str) -> list[str]:
  """Splits at the `|` outside parentheses, brackets and quotes."""
  out, depth, quote, cur = [], 0, None, []
  for ch in pp:
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == '|' and depth == 0:
      out.append(''.join(cur))
      cur = []
      continue
    cur.append(ch)
  out.append(''.join(cur))
  return [s.strip() for s in out]


def _literal(node, text):
  try:
    return ast.literal_eval(node)
  except (ValueError, SyntaxError, TypeError):
    raise PPError(f'pp op {text!r}: arguments must be Python literals, got '
                  f'{ast.unparse(node)!r}') from None


def parse(pp: str, mode: str = 'train', views: int = 1) -> list[Op]:
  """The ops of a pp string, each checked (PPError naming the op and argument)."""
  if not isinstance(pp, str) or not pp.strip():
    raise PPError(f'pp={pp!r}: expected a string of ops joined by "|", e.g. '
                  "'decode|resize(224)|value_range(-1, 1)'")
  if mode not in MODES:
    raise PPError(f'mode={mode!r}: expected one of {MODES}')
  ctx = Context(mode, views)
  ops = []
  for text in _split(pp):
    if not text:
      raise PPError(f'pp {pp!r}: an empty op (two "|" in a row, or one at an end)')
    try:
      node = ast.parse(text, mode='eval').body
    except SyntaxError:
      raise PPError(f'pp op {text!r}: expected name or name(args)') from None
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      if any(isinstance(a, ast.Starred) for a in node.args) or any(
          k.arg is None for k in node.keywords):
        raise PPError(f'pp op {text!r}: no *args or **kwargs')
      args = [_literal(a, text) for a in node.args]
      kwargs = {k.arg: _literal(k.value, text) for k in node.keywords}
    else:
      raise PPError(f'pp op {text!r}: expected name or name(args)')
    if name not in _OPS:
      close = _nearest(name, _OPS)
      raise PPError(f'pp op {text!r}: unknown op {name!r}' +
                    (f' (did you mean {close!r}?)' if close else '') +
                    f'; ops: {", ".join(names())}')
    make, random, temporal = _OPS[name]
    if random and mode != 'train':
      raise PPError(f'pp op {text!r}: {name} is random, for training pp only (evaluation is '
                    'deterministic)')
    try:
      fn = make(ctx, *args, **kwargs)
    except PPError as e:
      raise PPError(f'pp op {text!r}: {e}') from None
    except TypeError as e:
      raise PPError(f'pp op {text!r}: {e}') from None
    # A temporal op draws its window in training.
    ops.append(Op(name, text, fn, random or (temporal and mode == 'train'), temporal,
                  getattr(fn, 'affine', None)))
  return ops


def _nearest(name: str, choices) -> str | None:
  import difflib  # noqa: PLC0415
  got = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
  return got[0] if got else None


def validate(pp: str, mode: str = 'train') -> str:
  parse(pp, mode)
  return pp


@dataclasses.dataclass(frozen=True)
class Affine:
  """y = float32(x) * scale + offset on feature `key`, per channel (the last axis) or scalar:
  the trailing value_range / normalize ops of a pp string composed, to run inside the compiled
  step on the stored integers (a uint8 batch is a quarter of the float32 one to move between
  processes and to the device)."""

  key: str
  scale: tuple[float, ...]   # one value (every channel) or one per channel
  offset: tuple[float, ...]

  def __call__(self, x, xp=np):
    scale = xp.asarray(np.asarray(self.scale, np.float32).reshape(-1))
    offset = xp.asarray(np.asarray(self.offset, np.float32).reshape(-1))
    return x.astype(xp.float32) * scale + offset


def split_affine(pp: str, mode: str = 'train') -> tuple[str, tuple[Op, ...]]:
  """(the pp string without its trailing affine ops, those ops). Nothing is split off when
  nothing else would remain (a pp string needs one op)."""
  ops = parse(pp, mode)
  n = len(ops)
  while n and ops[n - 1].affine is not None:
    n -= 1
  if n == 0 or n == len(ops):
    return pp, ()
  return '|'.join(op.text for op in ops[:n]), tuple(ops[n:])


def compose_affine(ops, element: dict) -> tuple[Affine, ...]:
  """One Affine per feature for affine ops applied in order to `element` (whose keys and
  channel counts resolve each op's default key and are checked against mean and std)."""
  out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for op in ops:
    key, scale, offset = op.affine
    key = _k(key, element)
    if key not in element:
      raise PPError(f'pp op {op.text!r}: the element has no feature {key!r}; it has '
                    f'{", ".join(sorted(element))}')
    x = np.asarray(element[key])
    if x.dtype.kind not in 'iuf':
      raise PPError(f'pp op {op.text!r}: feature {key!r} is {x.dtype}, expected numbers')
    channels = x.shape[-1] if x.ndim else 1
    for v in (scale, offset):
      if v.size > 1 and v.size != channels:
        raise PPError(f'pp op {op.text!r}: {v.size} channels given, the input has {channels}')
    s0, o0 = out.get(key, (np.float32(1), np.float32(0)))
    out[key] = (s0 * scale, o0 * scale + offset)
  return tuple(Affine(k, tuple(np.asarray(s, np.float32).reshape(-1).tolist()),
                      tuple(np.asarray(o, np.float32).reshape(-1).tolist()))
               for k, (s, o) in out.items())


def temporal(pp: str) -> bool:
  """Whether an (eval) pp string takes windows of clips, so multi-view tests apply."""
  return any(op.temporal for op in parse(pp, 'eval'))


# ------------------------------------------------------------ grain --------

def to_grain(ops: list[Op]) -> list:
  """One grain transform per op (Map or RandomMap), then `Finalize`."""
  import grain  # noqa: PLC0415

  @dataclasses.dataclass(frozen=True)
  class _Map(grain.transforms.Map):
    op: Op

    def map(self, element):
      return self.op(element)

  @dataclasses.dataclass(frozen=True)
  class _RandomMap(grain.transforms.RandomMap):
    op: Op

    def random_map(self, element, rng):
      return self.op(element, rng)

  return [(_RandomMap if op.random else _Map)(op) for op in ops] + [_finalize_transform()]


@functools.cache
def _finalize_transform():
  import grain  # noqa: PLC0415

  class Finalize(grain.transforms.Map):
    """Drops what cannot be batched (text, bytes) and narrows 64-bit numbers to 32 bits."""

    def map(self, element):
      return finalize(element)

  return Finalize()


def finalize(element: dict) -> dict:
  out = {}
  for k, v in element.items():
    v = np.asarray(v)
    if v.dtype.kind in 'OSU':
      continue
    if v.dtype == np.int64 or v.dtype == np.uint32:
      v = v.astype(np.int32)
    elif v.dtype == np.float64:
      v = v.astype(np.float32)
    out[k] = v
  return out


# ------------------------------------------------------------ checks -------

def _int(name, value, lo=1, hi=None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
      hi is not None and value > hi):
    bound = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    raise PPError(f'{name} must be an int {bound}, got {value!r}')
  return int(value)


def _float(name, value, lo=-math.inf, hi=math.inf) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and lo <= value <= hi):
    raise PPError(f'{name} must be a number in [{lo:g}, {hi:g}], got {value!r}')
  return float(value)


def _size(name, value) -> tuple[int, int]:
  if isinstance(value, (list, tuple)) and len(value) == 2:
    return _int(name, value[0]), _int(name, value[1])
  v = _int(name, value)
  return v, v


class _ImageKey(str):
  """The default key of image ops: 'image', else 'video' (every frame of a clip)."""

  def of(self, e: dict) -> str:
    return 'image' if 'image' in e or 'video' not in e else 'video'


def _image_key(value):
  return _ImageKey('image') if value is None else _key('key', value)


def _k(key, e: dict) -> str:
  return key.of(e) if isinstance(key, _ImageKey) else key


def _key(name, value) -> str:
  if not isinstance(value, str) or not value:
    raise PPError(f'{name} must be a feature name, got {value!r}')
  return value


def _channels(name, value):
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return np.float32(value)
  if isinstance(value, (list, tuple)) and value and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    return np.asarray(value, np.float32)
  raise PPError(f'{name} must be a number or a list of numbers per channel, got {value!r}')


# ------------------------------------------------------------ general ------

@register('keep')
def _keep(ctx, *keys):
  """keep(k1, k2, ...): only these features."""
  keys = tuple(_key('keep: key', k) for k in keys)
  if not keys:
    raise PPError('keep needs the names of the features to keep')
  return lambda e, rng: {k: e[k] for k in keys}


@register('rename')
def _rename(ctx, **new_from_old):
  """rename(new=old, ...): e.g. rename(video='frames', label='verb')."""
  if not new_from_old:
    raise PPError('rename needs new=old pairs, e.g. rename(label="digit")')
  pairs = {_key('rename: new', n): _key('rename: old', o) for n, o in new_from_old.items()}

  def fn(e, rng):
    moved = {n: e[o] for n, o in pairs.items()}
    for o in pairs.values():
      e.pop(o, None)
    e.update(moved)
    return e
  return fn


@register('copy')
def _copy(ctx, src, dst):
  """copy(src, dst): a copy of feature src as dst (e.g. one waveform for two ops)."""
  src, dst = _key('copy: src', src), _key('copy: dst', dst)

  def fn(e, rng):
    e[dst] = np.array(e[src])
    return e
  return fn


# ------------------------------------------------------------ images -------

def _decode_one(data, channels: int) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415
  if isinstance(data, np.ndarray) and data.dtype != object:
    img = data  # tfds decoded it already
    if img.ndim == 2:
      img = img[..., None]
  else:
    with Image.open(io.BytesIO(bytes(data))) as im:
      mode = {1: 'L', 3: 'RGB'}[channels]
      img = np.asarray(im if im.mode == mode else im.convert(mode))
    if img.ndim == 2:
      img = img[..., None]
  if img.shape[-1] != channels:
    if img.shape[-1] == 1 and channels == 3:
      img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] in (3, 4) and channels == 1:
      img = np.asarray(Image.fromarray(img[..., :3]).convert('L'))[..., None]
    elif img.shape[-1] == 4 and channels == 3:
      img = img[..., :3]
  return img


@register('decode')
def _decode(ctx, key=None, channels=3):
  """Encoded image bytes (JPEG, PNG, WebP) -> uint8 (H, W, channels); a list of encoded
  frames -> (T, H, W, channels). Decoded arrays pass through (with channels converted)."""
  key = _image_key(key)
  if channels not in (1, 3):
    raise PPError(f'channels must be 1 or 3, got {channels!r}')

  def fn(e, rng):
    v = e[_k(key, e)]
    if isinstance(v, np.ndarray) and v.dtype == object or isinstance(v, (list, tuple)):
      lead = np.shape(v) if isinstance(v, np.ndarray) else (len(v),)
      flat = v.reshape(-1) if isinstance(v, np.ndarray) else v
      frames = np.stack([_decode_one(f, channels) for f in flat])
      e[_k(key, e)] = frames.reshape(tuple(lead) + frames.shape[1:])
    else:
      e[_k(key, e)] = _decode_one(v, channels)
    return e
  return fn


def _frames(x: np.ndarray):
  """(..., H, W, C) -> (N, H, W, C) and the leading shape."""
  return x.reshape((-1,) + x.shape[-3:]), x.shape[:-3]


_METHODS = ('nearest', 'bilinear', 'bicubic', 'area')


def _resize(x: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415
  resample = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR,
              'bicubic': Image.BICUBIC, 'area': Image.BOX}[method]
  if x.shape[-3:-1] == (h, w):
    return x
  flat, lead = _frames(x)
  out = np.empty((flat.shape[0], h, w, flat.shape[-1]), flat.dtype)
  for i, f in enumerate(flat):
    if f.dtype == np.uint8:
      if f.shape[-1] == 1:
        out[i, ..., 0] = np.asarray(Image.fromarray(f[..., 0]).resize((w, h), resample))
      else:
        out[i] = np.asarray(Image.fromarray(f).resize((w, h), resample))
    else:
      for c in range(f.shape[-1]):
        out[i, ..., c] = np.asarray(Image.fromarray(f[..., c].astype(np.float32), 'F').resize(
            (w, h), resample))
  return out.reshape(lead + out.shape[1:])


def _method(value) -> str:
  if value not in _METHODS:
    raise PPError(f'method must be one of {", ".join(_METHODS)}, got {value!r}')
  return value


@register('resize')
def _resize_op(ctx, size, key=None, method='bilinear'):
  """resize(size | (h, w)): every frame to that size (aspect ratio not kept)."""
  h, w = _size('size', size)
  key, method = _image_key(key), _method(method)

  def fn(e, rng):
    e[_k(key, e)] = _resize(np.asarray(e[_k(key, e)]), h, w, method)
    return e
  return fn


@register('resize_small')
def _resize_small(ctx, size, key=None, method='bilinear'):
  """resize_small(s): the shorter side to s, aspect ratio kept."""
  s = _int('size', size)
  key, method = _image_key(key), _method(method)

  def fn(e, rng):
    x = np.asarray(e[_k(key, e)])
    h, w = x.shape[-3:-1]
    r = s / min(h, w)
    e[_k(key, e)] = _resize(x, max(1, round(h * r)), max(1, round(w * r)), method)
    return e
  return fn


def _crop(x, top, left, h, w):
  return x[..., top:top + h, left:left + w, :]


def _check_fits(x, h, w, op):
  H, W = x.shape[-3:-1]
  if H < h or W < w:
    raise PPError(f'{op}({h}, {w}): the input is only {H}x{W} (resize it first)')
  return H, W


@register('central_crop')
def _central_crop(ctx, size, key=None):
  """central_crop(size | (h, w)): the central window of every frame."""
  h, w = _size('size', size)
  key = _image_key(key)

  def fn(e, rng):
    x = np.asarray(e[_k(key, e)])
    H, W = _check_fits(x, h, w, 'central_crop')
    e[_k(key, e)] = _crop(x, (H - h) // 2, (W - w) // 2, h, w)
    return e
  return fn


@register('random_crop', random=True)
def _random_crop(ctx, size, key=None):
  """random_crop(size | (h, w)): a uniformly placed window, the same for every frame."""
  h, w = _size('size', size)
  key = _image_key(key)

  def fn(e, rng):
    x = np.asarray(e[_k(key, e)])
    H, W = _check_fits(x, h, w, 'random_crop')
    e[_k(key, e)] = _crop(x, int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1)), h, w)
    return e
  return fn


@register('inception_crop', random=True)
def _inception_crop(ctx, size, area_min=5, area_max=100, key=None, method='bilinear'):
  """A random crop of `area_min`..`area_max` % of the image with aspect ratio in [3/4, 4/3]
  (log-uniform), resized to `size`: Inception's random-resized crop, as big_vision's."""
  h, w = _size('size', size)
  lo = _float('area_min', area_min, 0.01, 100)
  hi = _float('area_max', area_max, lo, 100)
  key, method = _image_key(key), _method(method)

  def fn(e, rng):
    x = np.asarray(e[_k(key, e)])
    H, W = x.shape[-3:-1]
    for _ in range(10):
      area = H * W * rng.uniform(lo, hi) / 100
      ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      ch, cw = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
      if 0 < ch <= H and 0 < cw <= W:
        top, left = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        break
    else:  # the central square-ish crop, as torchvision and tf's fallback
      ch, cw = min(H, W), min(H, W)
      top, left = (H - ch) // 2, (W - cw) // 2
    e[_k(key, e)] = _resize(_crop(x, top, left, ch, cw), h, w, method)
    return e
  return fn


@register('flip_lr', random=True)
def _flip_lr(ctx, key=None):
  """A left-right flip with probability 1/2, the same for every frame of a clip."""
  key = _image_key(key)

  def fn(e, rng):
    if rng.random() < 0.5:
      e[_k(key, e)] = np.ascontiguousarray(np.asarray(e[_k(key, e)])[..., ::-1, :])
    return e
  return fn


@register('value_range')
def _value_range(ctx, vmin=-1, vmax=1, in_min=0, in_max=255, key=None):
  """Maps [in_min, in_max] linearly to [vmin, vmax] as float32 (uint8 pixels by default)."""
  a, b = _float('vmin', vmin), _float('vmax', vmax)
  i0, i1 = _float('in_min', in_min), _float('in_max', in_max)
  if i1 <= i0:
    raise PPError(f'in_max must exceed in_min, got {in_min!r}, {in_max!r}')
  key = _image_key(key)
  scale = (b - a) / (i1 - i0)

  shift = np.float32(a - i0 * scale)

  def fn(e, rng):
    # One new float32 array, then in place: the input (perhaps a cached record) is not touched.
    y = np.multiply(e[_k(key, e)], np.float32(scale), dtype=np.float32)
    y += shift
    e[_k(key, e)] = y
    return e
  fn.affine = (key, np.float32(scale), shift)
  return fn


@register('normalize')
def _normalize(ctx, mean, std, key=None):
  """(x - mean) / std as float32; mean and std per channel or scalars, in the input's units
  (e.g. ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) after value_range(0, 1))."""
  m, s = _channels('mean', mean), _channels('std', std)
  if np.any(s <= 0):
    raise PPError(f'std must be > 0, got {std!r}')
  key = _image_key(key)
  inv = (1 / s).astype(np.float32)

  def fn(e, rng):
    x = np.asarray(e[_k(key, e)], np.float32)
    if m.ndim and m.shape[0] != x.shape[-1] or s.ndim and s.shape[0] != x.shape[-1]:
      raise PPError(f'normalize: mean/std have {max(m.size, s.size)} channels, the input '
                    f'{x.shape[-1]}')
    if m.ndim or inv.ndim:
      # Per channel: a row of W * C values, so numpy's inner loop runs over a row, not over
      # C = 3 (several times faster on images).
      x = np.ascontiguousarray(x)
      w = x.shape[-2] if x.ndim >= 2 else 1
      rows = x.reshape(-1, w * x.shape[-1])
      y = np.subtract(rows, np.tile(np.broadcast_to(m, x.shape[-1:]), w), dtype=np.float32)
      y *= np.tile(np.broadcast_to(inv, x.shape[-1:]), w)
      y = y.reshape(x.shape)
    else:
      y = np.subtract(x, m, dtype=np.float32)
      y *= inv
    e[_k(key, e)] = y
    return e
  fn.affine = (key, inv, (-m * inv).astype(np.float32))
  return fn


@register('color_jitter', random=True)
def _color_jitter(ctx, brightness=0.0, contrast=0.0, saturation=0.0, key=None):
  """Brightness, contrast and saturation factors uniform in [1 - s, 1 + s], one draw per clip
  (every frame alike), in random order; uint8 inputs stay uint8 (clipped)."""
  b = _float('brightness', brightness, 0, 1)
  c = _float('contrast', contrast, 0, 1)
  s = _float('saturation', saturation, 0, 1)
  key = _image_key(key)

  def fn(e, rng):
    x0 = np.asarray(e[_k(key, e)])
    x = x0.astype(np.float32)
    for which in rng.permutation(3):
      lo = [b, c, s][which]
      f = rng.uniform(1 - lo, 1 + lo)
      if which == 0:
        x = x * f
      elif which == 1:
        x = (x - x.mean(axis=(-3, -2, -1), keepdims=True)) * f + x.mean(
            axis=(-3, -2, -1), keepdims=True)
      elif x.shape[-1] == 3:
        gray = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * f + gray[..., None]
    if x0.dtype == np.uint8:
      x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    e[_k(key, e)] = x.astype(x0.dtype) if x0.dtype != np.uint8 else x
    return e
  return fn


# ------------------------------------------------------------ time ---------

def window_starts(length: int, window: int, views: int) -> list[int]:
  """Starts of `views` windows uniformly spaced over `length` (central for one view)."""
  room = max(0, length - window)
  if views == 1:
    return [room // 2]
  return [round(i * room / (views - 1)) for i in range(views)]


def _take(x, start, n, stride, axis=0):
  """n items from `start` at `stride` along axis 0, the last one repeated past the end."""
  idx = np.minimum(start + stride * np.arange(n), x.shape[axis] - 1)
  return np.take(x, idx, axis=axis)


@register('sample_frames', temporal=True)
def _sample_frames(ctx, n, stride=1, key='video'):
  """n frames at `stride` from (T, H, W, C) clips: a random window in training, the central
  one in evaluation, K uniformly spaced windows -> (K, n, H, W, C) for a K-view test. A clip
  shorter than the window repeats its last frame."""
  n, stride, key = _int('n', n), _int('stride', stride), _key('key', key)
  mode, views = ctx.mode, ctx.views

  def fn(e, rng):
    x = np.asarray(e[key])
    span = (n - 1) * stride + 1
    if mode == 'train':
      e[key] = _take(x, int(rng.integers(max(0, x.shape[0] - span) + 1)), n, stride)
    else:
      clips = [_take(x, s, n, stride) for s in window_starts(x.shape[0], span, views)]
      e[key] = clips[0] if views == 1 else np.stack(clips)
    return e
  return fn


def _to_float_audio(x: np.ndarray) -> np.ndarray:
  if x.dtype.kind in 'iu':
    return x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
  return x.astype(np.float32)


@register('crop_audio', temporal=True)
def _crop_audio(ctx, seconds, rate, key='audio'):
  """`seconds` of a waveform stored at `rate` Hz (mono (N,) or (N, C)): a random window in
  training, the central one in evaluation, K uniformly spaced ones -> (K, samples) for a
  K-view test; shorter clips are padded with zeros at the end. Integer samples become float32
  in [-1, 1)."""
  rate = _int('rate', rate)
  n = max(1, round(_float('seconds', seconds, 1e-3, 3600) * rate))
  key = _image_key(key)
  mode, views = ctx.mode, ctx.views

  def fn(e, rng):
    x = _to_float_audio(np.asarray(e[key]))
    if x.ndim == 2:
      x = x.mean(axis=-1)
    if x.shape[0] < n:
      x = np.pad(x, (0, n - x.shape[0]))
    if mode == 'train':
      s = int(rng.integers(x.shape[0] - n + 1))
      e[key] = x[s:s + n]
    else:
      w = [x[s:s + n] for s in window_starts(x.shape[0], n, views)]
      e[key] = w[0] if views == 1 else np.stack(w)
    return e
  return fn


@register('av_window', temporal=True)
def _av_window(ctx, frames, fps, seconds, rate, stride=1, sync=True, video='video',
               audio='audio'):
  """One window of a clip with its audio track: `frames` frames at `stride` of video stored
  at `fps`, and `seconds` of audio at `rate` Hz. Training draws the video window at random;
  with `sync` the audio window starts at the same time (clamped to the track), without it
  at an independent random time (MBT's asynchronous sampling). Evaluation takes the central
  window (K uniformly spaced ones for a K-view test), audio always at the frames' time.
  Separate `sample_frames` and `crop_audio` ops draw their windows independently."""
  n, stride = _int('frames', frames), _int('stride', stride)
  fps, rate = _float('fps', fps, 1e-3, 1e4), _int('rate', rate)
  samples = max(1, round(_float('seconds', seconds, 1e-3, 3600) * rate))
  if not isinstance(sync, bool):
    raise PPError(f'sync must be True or False, got {sync!r}')
  vkey, akey = _key('video', video), _key('audio', audio)
  mode, views = ctx.mode, ctx.views
  span = (n - 1) * stride + 1

  def audio_at(x, start):
    return x[start:start + samples]

  def fn(e, rng):
    v = np.asarray(e[vkey])
    x = _to_float_audio(np.asarray(e[akey]))
    if x.ndim == 2:
      x = x.mean(axis=-1)
    if x.shape[0] < samples:
      x = np.pad(x, (0, samples - x.shape[0]))
    last = x.shape[0] - samples

    def synced(start_frame):
      return min(last, round(start_frame * rate / fps))

    if mode == 'train':
      s = int(rng.integers(max(0, v.shape[0] - span) + 1))
      a = synced(s) if sync else int(rng.integers(last + 1))
      e[vkey], e[akey] = _take(v, s, n, stride), audio_at(x, a)
    else:
      starts = window_starts(v.shape[0], span, views)
      clips = [_take(v, s, n, stride) for s in starts]
      waves = [audio_at(x, synced(s)) for s in starts]
      e[vkey], e[akey] = ((clips[0], waves[0]) if views == 1 else
                          (np.stack(clips), np.stack(waves)))
    return e
  return fn


@register('time_shift', random=True)
def _time_shift(ctx, max_shift, key='audio'):
  """A circular shift of the waveform by up to `max_shift` samples either way."""
  m, key = _int('max_shift', max_shift, 0), _key('key', key)

  def fn(e, rng):
    e[key] = np.roll(np.asarray(e[key]), int(rng.integers(-m, m + 1)), axis=-1)
    return e
  return fn


@functools.cache
def _mel_matrix(n_fft: int, bins: int, rate: int, fmin: float, fmax: float) -> np.ndarray:
  def to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

  def to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)
  freqs = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
  edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), bins + 2))
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
  down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


@register('log_mel')
def _log_mel(ctx, rate, bins=128, window_ms=25.0, hop_ms=10.0, window='hamming', fmin=0.0,
             fmax=None, mean=0.0, std=1.0, key='audio', out='spectrogram'):
  """Waveform (..., N) at `rate` Hz -> (..., frames, bins, 1) float32 log(mel power + 1e-6),
  then (x - mean) / std. MBT's: rate 16000, 128 bins, 25 ms Hamming window, 10 ms hop.
  frames = N // hop, the first centred at sample 0 (8 s at a 10 ms hop: 800 frames)."""
  rate, bins = _int('rate', rate), _int('bins', bins)
  win = max(2, round(_float('window_ms', window_ms, 0.1, 1000) * rate / 1000))
  hop = max(1, round(_float('hop_ms', hop_ms, 0.1, 1000) * rate / 1000))
  if window not in ('hamming', 'hann'):
    raise PPError(f"window must be 'hamming' or 'hann', got {window!r}")
  fmin = _float('fmin', fmin, 0, rate / 2)
  fmax = _float('fmax', rate / 2 if fmax is None else fmax, fmin, rate / 2)
  mean, std = _float('mean', mean), _float('std', std, 1e-12)
  key, out = _key('key', key), _key('out', out)
  n_fft = 1 << (win - 1).bit_length()
  w = (np.hamming(win + 1) if window == 'hamming' else np.hanning(win + 1))[:-1]
  w = np.pad(w, (0, n_fft - win)).astype(np.float32)
  fb = _mel_matrix(n_fft, bins, rate, fmin, fmax)

  def fn(e, rng):
    x = _to_float_audio(np.asarray(e[key]))
    n_frames = max(1, x.shape[-1] // hop)
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    x = np.pad(x, pad)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    frames = frames[..., :n_frames, :]
    power = (np.abs(np.fft.rfft(frames * w, axis=-1)) ** 2).astype(np.float32)
    mel = np.log(power @ fb + 1e-6)
    e[out] = ((mel - mean) / std)[..., None].astype(np.float32)
    return e
  return fn


@register('spec_augment', random=True)
def _spec_augment(ctx, time_masks=2, time_width=10, freq_masks=2, freq_width=8,
                  key='spectrogram'):
  """SpecAugment (Park et al.): bands of up to `time_width` frames and `freq_width` bins of a
  (..., frames, bins, 1) spectrogram set to 0 (its mean after normalisation)."""
  tm, tw = _int('time_masks', time_masks, 0), _int('time_width', time_width, 0)
  fm, fw = _int('freq_masks', freq_masks, 0), _int('freq_width', freq_width, 0)
  key = _image_key(key)

  def fn(e, rng):
    x = np.array(e[key], np.float32)
    for count, width, axis in ((tm, tw, -3), (fm, fw, -2)):
      size = x.shape[axis]
      for _ in range(count):
        wdt = int(rng.integers(min(width, size) + 1))
        start = int(rng.integers(size - wdt + 1))
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(start, start + wdt)
        x[tuple(sl)] = 0.0
    e[key] = x
    return e
  return fn


def describe() -> dict[str, str]:
  """Op name -> its docstring's first paragraph (for docs and --help)."""
  out = {}
  for name, (make, random, temporal_) in sorted(_OPS.items()):
    doc = (make.__doc__ or '').strip().split('\n\n')[0]
    out[name] = ' '.join(doc.split()) + (' [random: training only]' if random else '')
  return out
