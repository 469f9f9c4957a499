"""Quantifying the modularity of one site (host-side numpy / scipy): the one home of
the statistics of module influence maps, of the bootstrap over groups of latent
pairs and of the random-partition null, for the library and the main job
(`cfmod_jax.analysis` uses `partition_statistics`, `paired_bootstrap`,
`null_partitions`, `effect_vs_null`, …).

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
  deterministic given the seeds. The bootstrap (`bootstrap_group_weights`) draws,
  for each replicate in turn, ``rng.integers(0, G, G)``: G of the G groups with
  replacement; the null (`null_partitions`) draws ``rng.permutation(labels)`` per
  partition. Every resampling function of this module goes through these two.
* The statistics of module maps are vectorised over any leading shape
  (`partition_statistics`: many partitions, many bootstrap replicates at once);
  `module_overlap`, `in_support_share` and `part_agreement` are the same
  computations for one partition, with argument checks.
* The random-partition null keeps the module sizes of ``labels`` and permutes which
  channels go where. It is calibrated only for partitions chosen independently of the
  data the statistic is computed on. Labels found by clustering the same EIMs are
  selected to make modules distinct, so the observed statistic is optimistically
  biased against that null even without real structure; use :func:`split_groups`
  to cluster on one half of the latent-pair groups and evaluate on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from cfmod_jax._validate import (
  check_eim_groups,
  check_eims,
  check_labels,
  check_maps,
  check_percentile,
  check_positive_int,
)
from cfmod_jax.clustering import DEFAULT_PERCENTILE

__all__ = [
  "approx_module_maps",
  "bootstrap_ci",
  "effect_vs_null",
  "in_support_share",
  "module_overlap",
  "null_test",
  "part_agreement",
  "partition_statistics",
  "random_partition_null",
  "split_groups",
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


def bootstrap_group_weights(
  counts: ArrayLike, n: int, seed: int, normalize: bool = True
) -> np.ndarray:
  """float64 [n, G]: the weight of each of G groups of pairs in n bootstrap replicates.

  Replicate b draws G of the G groups with replacement (``rng.integers(0, G, G)``,
  ``rng = numpy.random.default_rng(seed)``, replicates in order); its row holds, per
  group, ``counts[g]`` (pairs in the group) times the number of times it was drawn,
  divided by the row's sum if ``normalize``. The replicate's pooled statistic is then
  ``weights[b] @ group_values`` (a count-weighted mean of the drawn groups). With
  ``counts = ones(G)`` and ``normalize=False`` the rows are the plain multiplicities.
  """
  counts = np.asarray(counts)
  rng = np.random.default_rng(seed)
  g = len(counts)
  weights = np.zeros((n, g))
  for b in range(n):
    idx = rng.integers(0, g, g)
    np.add.at(weights[b], idx, counts[idx].astype(np.float64))
  if normalize:
    weights /= weights.sum(1, keepdims=True)
  return weights


def percentile_ci(values: ArrayLike, alpha: float = 0.05) -> list[float]:
  """Percentile ``1 − alpha`` interval ``[lo, hi]`` of bootstrap replicates (NaNs
  ignored): the ``100·alpha/2`` and ``100 − 100·alpha/2`` percentiles."""
  q = 100.0 * alpha / 2.0
  return [float(np.nanpercentile(values, q)), float(np.nanpercentile(values, 100.0 - q))]


def bootstrap_ci(
  eim_groups: ArrayLike,
  statistic_fn: Callable[[np.ndarray], float],
  n_boot: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
) -> tuple[float, float, float]:
  """Percentile bootstrap confidence interval of a statistic of the EIMs.

  ``estimate = statistic_fn(eim_groups.mean(0))``; each of the ``n_boot`` replicates
  draws G of the G groups with replacement (`bootstrap_group_weights`) and evaluates
  ``statistic_fn`` on their mean; (lo, hi) are the alpha/2 and 1 - alpha/2 quantiles
  of the replicates (`percentile_ci`).

  Args:
    eim_groups: float [G, C, H, W], G >= 2.
    statistic_fn: maps eims float64 [C, H, W] to a float, e.g.
      ``lambda e: module_overlap(approx_module_maps(e, labels, k))``.
    n_boot: number of replicates; seed: resampling seed; alpha in (0, 1).

  Returns:
    (estimate, lo, hi). Replicates where the statistic is NaN are ignored.
  """
  groups = check_eim_groups(eim_groups)
  n_boot = check_positive_int(n_boot, "n_boot")
  alpha = float(alpha)
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
  estimate = float(statistic_fn(groups.mean(axis=0)))
  weights = bootstrap_group_weights(np.ones(groups.shape[0]), n_boot, seed)
  reps = np.array([float(statistic_fn(np.tensordot(w, groups, axes=1))) for w in weights])
  lo, hi = percentile_ci(reps, alpha)
  return estimate, lo, hi


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


def split_groups(eim_groups: ArrayLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Split the G groups at random into two halves; returns their mean EIMs.

  Returns (eims_a, eims_b), float32 [C, H, W] each, from floor(G/2) and ceil(G/2)
  disjoint groups. Cluster on ``eims_a`` and evaluate statistics (and their
  random-partition null) on ``eims_b`` to avoid the selection bias of in-sample
  labels.
  """
  groups = check_eim_groups(eim_groups)
  perm = np.random.default_rng(seed).permutation(groups.shape[0])
  half = groups.shape[0] // 2
  a = groups[perm[:half]].mean(axis=0)
  b = groups[perm[half:]].mean(axis=0)
  return a.astype(np.float32), b.astype(np.float32)


def null_partitions(labels: ArrayLike, n: int, seed: int) -> np.ndarray:
  """[n, C] random relabellings of ``labels`` [C] keeping the module sizes: partition i
  is the i-th ``rng.permutation(labels)``, ``rng = numpy.random.default_rng(seed)``
  (the random-partition null of the whole package)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels must be a non-empty 1-D array [C], got shape {labels.shape}")
  if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be a non-negative integer, got {n!r}")
  rng = np.random.default_rng(seed)
  if n == 0:
    return np.empty((0, labels.size), labels.dtype)
  return np.stack([rng.permutation(labels) for _ in range(n)])


def random_partition_null(
  eims: ArrayLike,
  labels: ArrayLike,
  statistic_fn: Callable[[np.ndarray, np.ndarray], float],
  n_perm: int = 200,
  seed: int = 0,
) -> np.ndarray:
  """Statistic on random channel partitions with the module sizes of ``labels``.

  Each draw permutes ``labels`` over the channels (so module j keeps its size;
  `null_partitions`) and evaluates ``statistic_fn(eims, permuted_labels)``. For a
  statistic of the exact module maps, close over the core's function, e.g.
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
  arr = check_eims(eims)
  lab = np.asarray(labels)
  lab = check_labels(lab, arr.shape[0], _infer_k(lab, None))
  n_perm = check_positive_int(n_perm, "n_perm")
  return np.array([float(statistic_fn(arr, p)) for p in null_partitions(lab, n_perm, seed)])


def null_test(observed: float, null: ArrayLike, alternative: str = "less") -> tuple[float, float]:
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


def effect_vs_null(values: ArrayLike, reps: ArrayLike, alternative: str) -> tuple[dict, np.ndarray]:
  """A statistic of a partition against the random-partition null, with its effect size.

  Args:
    values: float [1 + R]: the statistic of the partition, then of R null partitions.
    reps: float [n, 1 + R]: its bootstrap replicates (e.g. `paired_bootstrap`; the
      null is recomputed on every replicate).
    alternative: "less" when a low value is more modular (overlap), else "greater"
      (`DIRECTION`).

  Returns:
    (entry, effect replicates [n]). ``entry`` (JSON-ready): ``value``, ``ci95``
    (`percentile_ci` of the replicates), ``null_mean``, ``null_std``, ``p_value`` and
    ``z`` (`null_test`), and ``effect_vs_null = {"value", "ci95"}``: how much more
    modular than the null's mean (positive = more modular).
  """
  values, reps = np.asarray(values), np.asarray(reps)
  sign = -1.0 if alternative == "less" else 1.0
  value, null = float(values[0]), values[1:]
  p, z = null_test(value, null, alternative)
  effect = sign * (reps[:, 0] - reps[:, 1:].mean(1))
  entry = {
    "value": value,
    "ci95": percentile_ci(reps[:, 0]),
    "null_mean": float(null.mean()),
    "null_std": float(null.std()),
    "p_value": float(p),
    "z": float(z),
    "effect_vs_null": {"value": sign * (value - float(null.mean())), "ci95": percentile_ci(effect)},
  }
  return entry, effect


def beyond(effect: dict, min_effect: float) -> bool:
  """Whether an effect size ``{"value", "ci95": [lo, hi]}`` is clearly positive: its
  whole 95% interval lies above ``min_effect`` (and above 0). A tiny but precisely
  measured difference is not called "beyond": the null's and the bootstrap's spreads
  are small, so intervals alone say nothing about size."""
  return bool(effect["ci95"][0] > max(min_effect, 0.0))


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
