"""Quantifying the modularity of one site (host-side numpy / scipy): the one home of
the statistics of module influence maps, for the library and the main job
(`cfmod_jax.analysis` uses `partition_statistics` and `paired_bootstrap`); the
bootstrap over groups of latent pairs, the random-partition null and the effect sizes
built on them are in `cfmod_jax.resampling`.

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
* Resampling (bootstrap replicates, null partitions) follows `cfmod_jax.resampling`.
* The statistics of module maps are vectorised over any leading shape
  (`partition_statistics`: many partitions, many bootstrap replicates at once);
  `module_overlap`, `in_support_share` and `part_agreement` are the same
  computations for one partition, with argument checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from cfmod_jax._validate import (
  check_eims,
  check_labels,
  check_maps,
  check_percentile,
  check_positive_int,
)
from cfmod_jax.clustering import DEFAULT_PERCENTILE
from cfmod_jax.resampling import bootstrap_group_weights, null_partitions

__all__ = [
  "approx_module_maps",
  "in_support_share",
  "module_overlap",
  "part_agreement",
  "partition_statistics",
]

#: The statistics of `partition_statistics`, in the order of the main job's report.
PARTITION_METRICS = ("overlap", "in_support", "part_agreement")
#: Which way is "more modular": low overlap, high in-support share, high part agreement
#: (the ``alternative`` of `null_test` for each statistic).
DIRECTION = {"overlap": "less", "in_support": "greater", "part_agreement": "greater"}
#: Smallest effect (0–1 metric scale) that `beyond` calls clear (the main job's default).
DEFAULT_MIN_EFFECT = 0.01


def _check_module_maps(module_maps: ArrayLike, name: str = "module_maps") -> np.ndarray:
  return check_maps(module_maps, name, 3, "[K, H, W]")


def _infer_k(labels: ArrayLike, k: int | None) -> int:
  if k is None:
    lab = np.asarray(labels)
    if lab.size == 0:
      raise ValueError("labels must be non-empty")
    return int(np.max(lab)) + 1
  return check_positive_int(k, "k")


# --------------------------------------------------------------------------------------
# Module maps
# --------------------------------------------------------------------------------------


def approx_module_maps(
  eims: ArrayLike, labels: ArrayLike, k: int | None = None, reduce: str = "sum"
) -> np.ndarray:
  """Approximate module influence maps from EIMs: float32 [K, H, W].

  Module j's map is the sum (``reduce="sum"``, default) or mean (``"mean"``) of the
  EIMs of its channels; an empty module gets an all-zero map. This is an
  approximation of the true module influence map (see the module docstring: the sum
  is a pixel-wise upper bound that ignores interactions); use the core's module maps
  where they are available. ``k`` defaults to ``max(labels) + 1``.
  """
  arr = check_eims(eims)
  k = _infer_k(labels, k)
  lab = check_labels(labels, arr.shape[0], k)
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  return _approx_maps(arr, lab, k, reduce).astype(np.float32)


def _approx_maps(arr: np.ndarray, lab: np.ndarray, k: int, reduce: str = "sum") -> np.ndarray:
  c = arr.shape[0]
  onehot = np.zeros((k, c))
  onehot[lab, np.arange(c)] = 1.0
  out = (onehot @ arr.reshape(c, -1)).reshape((k,) + arr.shape[1:])
  if reduce == "mean":
    sizes = onehot.sum(axis=1)
    out = out / np.maximum(sizes, 1.0)[:, None, None]
  return out


def partition_templates(flat_maps: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Mean preprocessed EIM of each module's channels: [K, H·W] (a module's support).

  ``flat_maps`` [C, H·W] are the preprocessed EIMs (`clustering.preprocess_eims`);
  an empty module gets zeros."""
  return np.stack(
    [
      flat_maps[labels == j].mean(0) if np.any(labels == j) else np.zeros(flat_maps.shape[1])
      for j in range(k)
    ]
  )


def support_masks(templates: ArrayLike, percentile: float) -> np.ndarray:
  """bool [..., K, H, W]: pixels where a template [..., K, H, W] is ≥ its own
  ``percentile``-th percentile and > 0 (a module's support; `in_support_share`'s rule
  for float supports)."""
  t = np.asarray(templates)
  flat = t.reshape(*t.shape[:-2], -1)
  thr = np.percentile(flat, percentile, axis=-1, keepdims=True)
  return ((flat >= thr) & (flat > 0)).reshape(t.shape)


# --------------------------------------------------------------------------------------
# Statistics of module maps: one implementation each, vectorised over partitions
# (flat maps float64 [N, K, H·W]); the single-partition functions below call them.
# --------------------------------------------------------------------------------------


def _overlaps(flat: np.ndarray) -> np.ndarray:
  """[N]: mean pairwise cosine similarity of the K maps of each of N partitions."""
  k = flat.shape[1]
  norms = np.linalg.norm(flat, axis=2, keepdims=True)
  unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
  sim = unit @ unit.transpose(0, 2, 1)
  iu = np.triu_indices(k, 1)
  return sim[:, iu[0], iu[1]].mean(1)


def _in_support(flat: np.ndarray, sup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """([N, K] shares of each map's mass inside its support (NaN for a zero map),
  [N] their mean over the non-zero maps (NaN if none))."""
  total = flat.sum(2)
  inside = (flat * sup).sum(2)
  shares = np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)
  with np.errstate(invalid="ignore"):
    count = np.sum(total > 0, axis=1)
    mean = np.where(count > 0, np.nansum(shares, 1) / np.maximum(count, 1), np.nan)
  return shares, mean


def _part_shares(flat: np.ndarray, parts: ArrayLike) -> np.ndarray:
  """[..., K, P]: each flat map [..., K, H·W] as a distribution over pixels, its mass in
  each part of ``parts`` [P, H, W] normalised per pixel (pixels in no part count 0)."""
  total = flat.sum(-1)
  dist = np.divide(flat, total[..., None], out=np.zeros_like(flat), where=total[..., None] > 0)
  q = np.asarray(parts, np.float64).reshape(len(parts), -1)
  cover = q.sum(0, keepdims=True)
  q = np.divide(q, cover, out=np.zeros_like(q), where=cover > 0)
  return dist @ q.T


def _matched_share(mass: np.ndarray) -> float:
  """Part agreement from part shares [K, P]: modules matched one to one to parts
  (Hungarian, maximum total share), sum of matched shares / K."""
  rows, cols = linear_sum_assignment(mass, maximize=True)
  return mass[rows, cols].sum() / mass.shape[0]


def partition_statistics(
  maps: ArrayLike, supports: ArrayLike, parts: np.ndarray | None
) -> dict[str, np.ndarray]:
  """The statistics of many partitions at once.

  Args:
    maps: float [..., K, H, W] module influence maps (any leading shape).
    supports: bool [..., K, H, W] (broadcastable to ``maps``): each module's support.
    parts: float [P, H, W] ground-truth part maps, or None.

  Returns:
    ``{"overlap", "in_support"[, "part_agreement"]}`` → float64 [...]; entry i equals
    `module_overlap`, `in_support_share(...)[1]` and `part_agreement` of ``maps[i]``.
  """
  maps = np.asarray(maps, np.float64)
  lead, k = maps.shape[:-3], maps.shape[-3]
  flat = maps.reshape(-1, k, maps.shape[-2] * maps.shape[-1])
  sup = np.broadcast_to(supports, maps.shape).reshape(flat.shape)
  out = {"overlap": _overlaps(flat)}
  out["in_support"] = _in_support(flat, sup)[1]
  if parts is not None:
    mass = _part_shares(flat, parts)  # [N, K, P]
    agreement = np.empty(len(mass))
    for i, m in enumerate(mass):
      agreement[i] = _matched_share(m)
    out["part_agreement"] = agreement
  return {name: v.reshape(lead) for name, v in out.items()}


def module_overlap(module_maps: ArrayLike) -> float:
  """Mean pairwise cosine similarity between the maps of different modules.

  Over the K(K-1)/2 pairs of distinct modules; an all-zero map (e.g. an empty
  module) has similarity 0 with every map. In [0, 1] for non-negative maps; lower
  means more modular (modules influence different pixels). Needs K >= 2.
  """
  maps = _check_module_maps(module_maps)
  k = maps.shape[0]
  if k < 2:
    raise ValueError(f"module_maps must hold at least 2 modules, got K={k}")
  return float(_overlaps(maps.reshape(1, k, -1))[0])


def in_support_share(
  module_maps: ArrayLike, supports: ArrayLike | None = None, percentile: float = DEFAULT_PERCENTILE
) -> tuple[np.ndarray, float]:
  """Share of each module's influence mass inside its own support.

  ``share[j] = sum(map_j * support_j) / sum(map_j)``.

  Supports:
    * ``supports`` boolean [K, H, W]: used as they are (e.g. part masks).
    * ``supports`` float [K, H, W] (e.g. the clustering templates, in the same
      module order as ``module_maps``): support_j = pixels where the template is
      >= its own ``percentile``-th percentile (and > 0), `support_masks`.
    * ``supports=None``: support_j is module j's own map thresholded the same way,
      so the share measures how concentrated the module's influence is; it is at
      least about ``1 - percentile/100`` for any map.

  Returns:
    (shares float [K], mean share). A module whose map is all zero has share NaN and
    is left out of the mean (NaN if every map is zero).
  """
  maps = _check_module_maps(module_maps)
  p = check_percentile(percentile)
  if supports is None:
    sup = support_masks(maps, p)
  else:
    s = np.asarray(supports)
    if s.shape != maps.shape:
      raise ValueError(
        f"supports must have the shape of module_maps {maps.shape} ([K, H, W]), got {s.shape}"
      )
    if s.dtype == bool:
      sup = s
    else:
      sup = support_masks(check_maps(s, "supports", 3, "[K, H, W]"), p)
  k = maps.shape[0]
  shares, mean = _in_support(maps.reshape(1, k, -1), sup.reshape(1, k, -1))
  return shares[0], float(mean[0])


def _check_parts(part_maps: ArrayLike, shape_hw: Sequence[int]) -> np.ndarray:
  parts = check_maps(part_maps, "part_maps", 3, "[P, H, W]")
  if parts.shape[1:] != tuple(shape_hw):
    raise ValueError(
      f"part_maps must have spatial shape {tuple(shape_hw)} like the maps they "
      f"are compared with, got {parts.shape[1:]}"
    )
  return parts


def part_shares(maps: ArrayLike, part_maps: ArrayLike) -> np.ndarray:
  """float64 [..., K, P]: the share of each influence map [..., K, H, W] inside each
  part of ``part_maps`` [P, H, W].

  Each map is normalised to a distribution over pixels (an all-zero map gives zeros),
  the parts per pixel (q_p(x) = part_p(x) / sum_p' part_p'(x); pixels covered by no
  part belong to none), and share[k, p] = sum_x d_k(x) q_p(x). A map's shares sum to
  1 over parts that cover the image. Step 3 of `part_agreement`.
  """
  m = check_maps(np.asarray(maps, np.float64).reshape(-1, *np.shape(maps)[-2:]), "maps", 3)
  parts = _check_parts(part_maps, m.shape[1:])
  out = _part_shares(m.reshape(len(m), -1), parts)
  return out.reshape(*np.shape(maps)[:-2], len(parts))


def part_agreement(module_maps: ArrayLike, part_maps: ArrayLike) -> float:
  """Agreement in [0, 1] between module influence maps and ground-truth part regions.

  Definition:
    1. Each module map is normalised to a distribution over pixels, d_k.
    2. Part maps (binary masks or per-part probability maps, e.g. background / hair
       / skin / eyes / mouth) are normalised per pixel so they partition the image
       softly: q_p(x) = part_p(x) / sum_p' part_p'(x) (pixels covered by no part
       belong to none).
    3. M[k, p] = sum_x d_k(x) q_p(x), the share of module k's influence inside part
       p (`part_shares`).
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
  return float(_matched_share(_part_shares(maps.reshape(len(maps), -1), parts)))


# --------------------------------------------------------------------------------------
# Resampling: bootstrap over groups of latent pairs, random-partition null
# --------------------------------------------------------------------------------------


def paired_bootstrap(
  group_maps: Sequence[np.ndarray],
  counts: np.ndarray,
  supports: Sequence[np.ndarray],
  parts: np.ndarray | None,
  n: int,
  seed: int,
  chunk: int = 16,
) -> list[dict[str, np.ndarray]]:
  """Bootstrap replicates of `partition_statistics` for several networks, paired.

  Replicate b draws G of the G groups of pairs with replacement (one draw for all
  networks: they were evaluated on the same pairs; `bootstrap_group_weights`) and
  evaluates every partition of every network on the count-weighted mean of the drawn
  groups' maps.

  Args:
    group_maps: per network, float [G, R·K, H, W]: the maps of R partitions (the
      modules first, then the null partitions), per group of pairs.
    counts: int [G] pairs per group.
    supports: per network, bool [R, K, H, W].
    parts: ground-truth part maps or None.
    n: number of replicates; seed: their seed.
    chunk: replicates evaluated together.

  Returns:
    per network, ``{metric: float64 [n, R]}``.
  """
  weights = bootstrap_group_weights(counts, n, seed)
  out = []
  for maps, sup in zip(group_maps, supports):
    r, k = sup.shape[:2]
    reps: dict[str, list] = {}
    for s in range(0, n, chunk):
      boot = np.tensordot(weights[s : s + chunk], maps, axes=1)  # [b, R·K, H, W]
      boot = boot.reshape(len(boot), r, k, *boot.shape[-2:])
      for name, v in partition_statistics(boot, sup[None], parts).items():
        reps.setdefault(name, []).append(v)
    out.append({name: np.concatenate(v) for name, v in reps.items()})
  return out


def overlap_statistic(
  k: int,
  module_maps_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray, np.ndarray], float]:
  """A ``statistic_fn(eims, labels)`` computing :func:`module_overlap`.

  With ``module_maps_fn`` (labels -> [K, H, W], e.g. the core's module influence
  maps) the exact maps are used and ``eims`` is ignored; otherwise
  :func:`approx_module_maps` with ``k`` modules.
  """
  k = check_positive_int(k, "k")
  if module_maps_fn is not None:
    return lambda eims, labels: module_overlap(module_maps_fn(labels))
  return lambda eims, labels: module_overlap(
    _approx_maps(np.asarray(eims, dtype=np.float64), np.asarray(labels), k)
  )


def part_agreement_chance(
  eims: ArrayLike,
  labels: ArrayLike,
  part_maps: ArrayLike,
  n_perm: int = 200,
  seed: int = 0,
  k: int | None = None,
) -> tuple[float, float]:
  """Mean and std of :func:`part_agreement` over random channel partitions.

  Partitions keep the module sizes of ``labels`` (`null_partitions`); module maps are
  :func:`approx_module_maps` (sum of EIMs). ``k`` defaults to ``max(labels) + 1``
  (pass it if trailing modules are empty). Compare with the part agreement of the
  observed partition computed the same way
  (``part_agreement(approx_module_maps(eims, labels, k), part_maps)``).
  """
  arr = check_eims(eims)
  k = _infer_k(labels, k)
  lab = check_labels(labels, arr.shape[0], k)
  parts = _check_parts(part_maps, arr.shape[1:])
  n_perm = check_positive_int(n_perm, "n_perm")
  vals = np.array(
    [
      _matched_share(_part_shares(_approx_maps(arr, p, k).reshape(k, -1), parts))
      for p in null_partitions(lab, n_perm, seed)
    ]
  )
  return float(vals.mean()), float(vals.std())
