"""The tolerance of 'the same function, its float32 reductions summed in another order'.

Terms reduced into one value of the tiny model (tests/tiny.py): batch 8 x 17 tokens x MLP width
64. Summed in another order (another mesh, or a head padded to more classes), a float32 result
moves by about sqrt(n) * eps of its scale; measured across meshes: 1 eps on losses, ~1 eps of
the parameters' scale (and 1e-15 in float64, so the meshes compute the same function).
"""

import jax
import numpy as np

EPS = float(np.finfo(np.float32).eps)
TERMS = 8 * 17 * 64
TOL = np.sqrt(TERMS) * EPS  # ~1.1e-5 relative


def kind(path) -> tuple:
  """The named fields on a leaf's path (an optimizer state's mu, nu, count): leaves of one kind
  share a scale; parameters have none."""
  return tuple(p.name for p in path if isinstance(p, jax.tree_util.GetAttrKey))


def differences(got, want, tol: float = TOL) -> list[str]:
  """Leaves of `got` further from `want` than `tol` of their kind's scale (max |x| over the
  tree's float leaves of that kind: a value near zero, such as an attention key bias, whose
  true gradient is 0 and which Adam moves by rounding noise, is only as exact as the values
  beside it). Integer leaves (counts, guards) must be equal."""
  leaves = jax.tree_util.tree_leaves_with_path(want)
  got = jax.tree.leaves(got)
  scale: dict = {}
  for p, w in leaves:
    w = np.asarray(w)
    if np.issubdtype(w.dtype, np.floating) and w.size:
      scale[kind(p)] = max(scale.get(kind(p), 0.0), float(np.abs(w).max()))
  bad = []
  for (p, w), g in zip(leaves, got):
    w, g = np.asarray(w), np.asarray(g)
    name = jax.tree_util.keystr(p)
    if w.shape != g.shape:
      bad.append(f"{name}: shape {g.shape}, expected {w.shape}")
    elif not np.issubdtype(w.dtype, np.floating):
      if not np.array_equal(g, w):
        bad.append(f"{name}: {g.tolist()}, expected {w.tolist()}")
    elif w.size and (err := float(np.abs(g - w).max())) > tol * scale[kind(p)]:
      bad.append(f"{name} off by {err:.3g} (tolerance {tol * scale[kind(p)]:.3g})")
  return bad
