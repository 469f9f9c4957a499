"""Quantifying the modularity of one site (host-side numpy / scipy).

Inputs are the elementary influence maps ``eims`` float [C, H, W] of a site (or grouped
EIMs ``eim_groups`` [G, C, H, W], whose mean over G is the EIM), a channel partition
``labels`` int [C] with values in [0, K), and *module influence maps* ``module_maps``
float [K, H, W]: the influence map of the intervention that swaps all the channels of
a module at once. The exact module maps come from the JAX core; here they are just
arrays. Where they are needed for many partitions (random-partition nulls, chance
levels), either pass a callable that asks the core for them or use
:func:`approx_module_maps`, the sum of the module's EIMs. That sum is an
*approximation*: by the triangle inequality it is an upper bound, pixel by pixel, of
the influence map of the module (|sum of effects| <= sum of |effects|), exact when the
channels' effects on a pixel never have opposite signs, and it ignores interactions
between channels.

Conventions:

* Cosine similarity with an all-zero map is 0.
* Everything random takes a ``seed`` (``numpy.random.default_rng``); results are
  deterministic given the seeds.
* The random-partition null keeps the module sizes of ``labels`` and permutes which
  channels go where. It is calibrated only for partitions chosen independently of the
  data the statistic is computed on. Labels found by clustering the same EIMs are
  selected to make modules distinct, so the observed statistic is optimistically
  biased against that null even without real structure; use :func:`split_groups`
  to cluster on one half of the latent-pair groups and evaluate on the other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .clustering import (
  DEFAULT_PERCENTILE,
  _check_eim_groups,
  _check_eims,
  _check_labels,
  _check_maps,
  _check_percentile,
  _check_positive_int,
  _cosine_matrix,
)

__all__ = [
  "approx_module_maps",
  "module_overlap",
  "in_support_share",
  "bootstrap_ci",
  "split_groups",
  "random_partition_null",
  "null_test",
  "overlap_statistic",
  "part_agreement",
  "part_agreement_chance",
]


def _check_module_maps(module_maps, name: str = "module_maps") -> np.ndarray:
  return _check_maps(module_maps, name, 3, "[K, H, W]")


def _infer_k(labels, k) -> int:
  if k is None:
    lab = np.asarray(labels)
    if lab.size == 0:
      raise ValueError("labels must be non-empty")
    return int(np.max(lab)) + 1
  return _check_positive_int(k, "k")


# --------------------------------------------------------------------------------------
# Module maps and per-site statistics
# --------------------------------------------------------------------------------------


def approx_module_maps(eims, labels, k: int | None = None, reduce: str = "sum"):
  """Approximate module influence maps from EIMs: float32 [K, H, W].

  Module j's map is the sum (``reduce="sum"``, default) or mean (``"mean"``) of the
  EIMs of its channels; an empty module gets an all-zero map. This is an
  approximation of the true module influence map (see the module docstring: the sum
  is a pixel-wise upper bound that ignores interactions); use the core's module maps
  where they are available. ``k`` defaults to ``max(labels) + 1``.
  """
  arr = _check_eims(eims)
  k = _infer_k(labels, k)
  lab = _check_labels(labels, arr.shape[0], k)
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  return _approx_maps(arr, lab, k, reduce).astype(np.float32)


def _approx_maps(arr: np.ndarray, lab: np.ndarray, k: int, reduce: str = "sum"):
  c = arr.shape[0]
  onehot = np.zeros((k, c))
  onehot[lab, np.arange(c)] = 1.0
  out = (onehot @ arr.reshape(c, -1)).reshape((k,) + arr.shape[1:])
  if reduce == "mean":
    sizes = onehot.sum(axis=1)
    out = out / np.maximum(sizes, 1.0)[:, None, None]
  return out


def module_overlap(module_maps) -> float:
  """Mean pairwise cosine similarity between the maps of different modules.

  Over the K(K-1)/2 pairs of distinct modules; an all-zero map (e.g. an empty
  module) has similarity 0 with every map. In [0, 1] for non-negative maps; lower
  means more modular (modules influence different pixels). Needs K >= 2.
  """
  maps = _check_module_maps(module_maps)
  k = maps.shape[0]
  if k < 2:
    raise ValueError(f"module_maps must hold at least 2 modules, got K={k}")
  sim = _cosine_matrix(maps.reshape(k, -1), maps.reshape(k, -1))
  iu = np.triu_indices(k, 1)
  return float(sim[iu].mean())


def _supports_from(s: np.ndarray, percentile: float) -> np.ndarray:
  """Binary supports from float maps [K, H, W]: values >= the map's percentile."""
  flat = s.reshape(s.shape[0], -1)
  thr = np.percentile(flat, percentile, axis=1, keepdims=True)
  sup = (flat >= thr) & (flat > 0)
  return sup.reshape(s.shape)


def in_support_share(
  module_maps, supports=None, percentile: float = DEFAULT_PERCENTILE
) -> tuple[np.ndarray, float]:
  """Share of each module's influence mass inside its own support.

  ``share[j] = sum(map_j * support_j) / sum(map_j)``.

  Supports:
    * ``supports`` boolean [K, H, W]: used as they are (e.g. part masks).
    * ``supports`` float [K, H, W] (e.g. the clustering templates, in the same
      module order as ``module_maps``): support_j = pixels where the template is
      >= its own ``percentile``-th percentile (and > 0).
    * ``supports=None``: support_j is module j's own map thresholded the same way,
      so the share measures how concentrated the module's influence is; it is at
      least about ``1 - percentile/100`` for any map.

  Returns:
    (shares float [K], mean share). A module whose map is all zero has share NaN and
    is left out of the mean (NaN if every map is zero).
  """
  maps = _check_module_maps(module_maps)
  p = _check_percentile(percentile)
  if supports is None:
    sup = _supports_from(maps, p)
  else:
    s = np.asarray(supports)
    if s.shape != maps.shape:
      raise ValueError(
        f"supports must have the shape of module_maps {maps.shape} ([K, H, W]), got {s.shape}"
      )
    if s.dtype == bool:
      sup = s
    else:
      sup = _supports_from(_check_maps(s, "supports", 3, "[K, H, W]"), p)
  k = maps.shape[0]
  flat = maps.reshape(k, -1)
  total = flat.sum(axis=1)
  inside = (flat * sup.reshape(k, -1)).sum(axis=1)
  shares = np.full(k, np.nan)
  np.divide(inside, total, out=shares, where=total > 0)
  mean = float(np.nanmean(shares)) if np.any(total > 0) else float("nan")
  return shares, mean


# --------------------------------------------------------------------------------------
# Resampling: bootstrap over latent-pair groups, random-partition null
# --------------------------------------------------------------------------------------


def bootstrap_ci(
  eim_groups,
  statistic_fn: Callable[[np.ndarray], float],
  n_boot: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
) -> tuple[float, float, float]:
  """Percentile bootstrap confidence interval of a statistic of the EIMs.

  ``estimate = statistic_fn(eim_groups.mean(0))``; each of the ``n_boot`` replicates
  draws G of the G groups with replacement and evaluates ``statistic_fn`` on their
  mean; (lo, hi) are the alpha/2 and 1 - alpha/2 quantiles of the replicates.

  Args:
    eim_groups: float [G, C, H, W], G >= 2.
    statistic_fn: maps eims float64 [C, H, W] to a float, e.g.
      ``lambda e: module_overlap(approx_module_maps(e, labels, k))``.
    n_boot: number of replicates; seed: resampling seed; alpha in (0, 1).

  Returns:
    (estimate, lo, hi). Replicates where the statistic is NaN are ignored.
  """
  groups = _check_eim_groups(eim_groups)
  n_boot = _check_positive_int(n_boot, "n_boot")
  alpha = float(alpha)
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
  g = groups.shape[0]
  estimate = float(statistic_fn(groups.mean(axis=0)))
  rng = np.random.default_rng(seed)
  reps = np.empty(n_boot)
  for b in range(n_boot):
    idx = rng.integers(0, g, size=g)
    reps[b] = float(statistic_fn(groups[idx].mean(axis=0)))
  lo, hi = np.nanquantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
  return estimate, float(lo), float(hi)


def split_groups(eim_groups, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Split the G groups at random into two halves; returns their mean EIMs.

  Returns (eims_a, eims_b), float32 [C, H, W] each, from floor(G/2) and ceil(G/2)
  disjoint groups. Cluster on ``eims_a`` and evaluate statistics (and their
  random-partition null) on ``eims_b`` to avoid the selection bias of in-sample
  labels.
  """
  groups = _check_eim_groups(eim_groups)
  perm = np.random.default_rng(seed).permutation(groups.shape[0])
  half = groups.shape[0] // 2
  a = groups[perm[:half]].mean(axis=0)
  b = groups[perm[half:]].mean(axis=0)
  return a.astype(np.float32), b.astype(np.float32)


def random_partition_null(
  eims,
  labels,
  statistic_fn: Callable[[np.ndarray, np.ndarray], float],
  n_perm: int = 200,
  seed: int = 0,
) -> np.ndarray:
  """Statistic on random channel partitions with the module sizes of ``labels``.

  Each draw permutes ``labels`` over the channels (so module j keeps its size) and
  evaluates ``statistic_fn(eims, permuted_labels)``. For a statistic of the exact
  module maps, close over the core's function, e.g.
  ``lambda e, l: module_overlap(module_maps_fn(l))``; :func:`overlap_statistic`
  builds the common cases.

  Args:
    eims: float [C, H, W]; passed (as float64) to ``statistic_fn``.
    labels: int [C] in [0, K).
    statistic_fn: (eims, labels) -> float.
    n_perm: number of random partitions; seed: their seed.

  Returns:
    float64 [n_perm].
  """
  arr = _check_eims(eims)
  lab = np.asarray(labels)
  lab = _check_labels(lab, arr.shape[0], _infer_k(lab, None))
  n_perm = _check_positive_int(n_perm, "n_perm")
  rng = np.random.default_rng(seed)
  out = np.empty(n_perm)
  for i in range(n_perm):
    out[i] = float(statistic_fn(arr, rng.permutation(lab)))
  return out


def null_test(observed: float, null, alternative: str = "less") -> tuple[float, float]:
  """Monte-Carlo p-value and z-score of an observed statistic against a null sample.

  ``alternative="less"`` (default; for overlap, where modular means *low*):
  p = (1 + #{null <= observed}) / (n + 1); "greater": with >=; "two-sided":
  min(1, 2 * min(p_less, p_greater)). z = (observed - mean(null)) / std(null)
  (+-inf if the null has zero spread and observed differs, 0 if equal).

  Returns:
    (p_value, z_score).
  """
  nul = np.asarray(null, dtype=np.float64).ravel()
  nul = nul[np.isfinite(nul)]
  if nul.size == 0:
    raise ValueError("null must contain at least one finite value")
  obs = float(observed)
  if not np.isfinite(obs):
    raise ValueError(f"observed must be finite, got {observed!r}")
  n = nul.size
  p_less = (1.0 + np.sum(nul <= obs)) / (n + 1.0)
  p_greater = (1.0 + np.sum(nul >= obs)) / (n + 1.0)
  if alternative == "less":
    p = p_less
  elif alternative == "greater":
    p = p_greater
  elif alternative == "two-sided":
    p = min(1.0, 2.0 * min(p_less, p_greater))
  else:
    raise ValueError(f"alternative must be 'less', 'greater' or 'two-sided', got {alternative!r}")
  sd = float(nul.std())
  diff = obs - float(nul.mean())
  if sd > 0:
    z = diff / sd
  else:
    z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
  return float(p), float(z)


def overlap_statistic(
  k: int,
  module_maps_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray, np.ndarray], float]:
  """A ``statistic_fn(eims, labels)`` computing :func:`module_overlap`.

  With ``module_maps_fn`` (labels -> [K, H, W], e.g. the core's module influence
  maps) the exact maps are used and ``eims`` is ignored; otherwise
  :func:`approx_module_maps` with ``k`` modules.
  """
  k = _check_positive_int(k, "k")
  if module_maps_fn is not None:
    return lambda eims, labels: module_overlap(module_maps_fn(labels))
  return lambda eims, labels: module_overlap(
    _approx_maps(np.asarray(eims, dtype=np.float64), np.asarray(labels), k)
  )


# --------------------------------------------------------------------------------------
# Agreement with ground-truth parts
# --------------------------------------------------------------------------------------


def _part_mass(maps: np.ndarray, parts: np.ndarray) -> np.ndarray:
  """M[k, p]: fraction of module k's influence mass falling in part p."""
  k = maps.shape[0]
  m = maps.reshape(k, -1)
  tot = m.sum(axis=1, keepdims=True)
  dist = np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
  q = parts.reshape(parts.shape[0], -1)
  cover = q.sum(axis=0, keepdims=True)
  q = np.divide(q, cover, out=np.zeros_like(q), where=cover > 0)
  return dist @ q.T


def _agreement(maps: np.ndarray, parts: np.ndarray) -> float:
  mass = _part_mass(maps, parts)
  rows, cols = linear_sum_assignment(mass, maximize=True)
  return float(mass[rows, cols].sum() / maps.shape[0])


def _check_parts(part_maps, shape_hw) -> np.ndarray:
  parts = _check_maps(part_maps, "part_maps", 3, "[P, H, W]")
  if parts.shape[1:] != tuple(shape_hw):
    raise ValueError(
      f"part_maps must have spatial shape {tuple(shape_hw)} like the maps they "
      f"are compared with, got {parts.shape[1:]}"
    )
  return parts


def part_agreement(module_maps, part_maps) -> float:
  """Agreement in [0, 1] between module influence maps and ground-truth part regions.

  Definition:
    1. Each module map is normalised to a distribution over pixels, d_k.
    2. Part maps (binary masks or per-part probability maps, e.g. background / hair
       / skin / eyes / mouth) are normalised per pixel so they partition the image
       softly: q_p(x) = part_p(x) / sum_p' part_p'(x) (pixels covered by no part
       belong to none).
    3. M[k, p] = sum_x d_k(x) q_p(x), the share of module k's influence inside part
       p.
    4. Modules and parts are matched one to one (Hungarian, maximum total share;
       K may differ from P) and the score is sum of matched M[k, p] divided by K:
       modules left unmatched (K > P) and all-zero module maps count 0.

  The score is 1 exactly when every module's influence lies inside a distinct part.
  For modules that are random channel groups every map looks like the site's total
  influence, and the score falls to the chance level given by
  :func:`part_agreement_chance`, which depends on the part sizes and on how the
  site's influence is spread, so compare against it rather than against 0.
  """
  maps = _check_module_maps(module_maps)
  parts = _check_parts(part_maps, maps.shape[1:])
  return _agreement(maps, parts)


def part_agreement_chance(
  eims,
  labels,
  part_maps,
  n_perm: int = 200,
  seed: int = 0,
  k: int | None = None,
) -> tuple[float, float]:
  """Mean and std of :func:`part_agreement` over random channel partitions.

  Partitions keep the module sizes of ``labels`` (see :func:`random_partition_null`);
  module maps are :func:`approx_module_maps` (sum of EIMs). ``k`` defaults to
  ``max(labels) + 1`` (pass it if trailing modules are empty). Compare with the
  part agreement of the observed partition computed the same way
  (``part_agreement(approx_module_maps(eims, labels, k), part_maps)``).
  """
  arr = _check_eims(eims)
  k = _infer_k(labels, k)
  lab = _check_labels(labels, arr.shape[0], k)
  parts = _check_parts(part_maps, arr.shape[1:])
  n_perm = _check_positive_int(n_perm, "n_perm")
  rng = np.random.default_rng(seed)
  vals = np.empty(n_perm)
  for i in range(n_perm):
    vals[i] = _agreement(_approx_maps(arr, rng.permutation(lab), k), parts)
  return float(vals.mean()), float(vals.std())
