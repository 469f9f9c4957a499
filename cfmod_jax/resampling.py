"""Resampling for the modularity statistics (host-side numpy): the bootstrap over
groups of latent pairs, the random-partition null and the effect sizes and verdicts
built on them (`cfmod_jax.metrics` holds the statistics themselves).

Everything random takes a ``seed`` (``numpy.random.default_rng``); results are
deterministic given the seeds. The bootstrap (`bootstrap_group_weights`) draws, for
each replicate in turn, ``rng.integers(0, G, G)``: G of the G groups with replacement;
the null (`null_partitions`) draws ``rng.permutation(labels)`` per partition. Every
resampling function goes through these two.

The random-partition null keeps the module sizes of ``labels`` and permutes which
channels go where. It is calibrated only for partitions chosen independently of the
data the statistic is computed on. Labels found by clustering the same EIMs are
selected to make modules distinct, so the observed statistic is optimistically biased
against that null even without real structure; use :func:`split_groups` to cluster on
one half of the latent-pair groups and evaluate on the other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax._validate import check_eim_groups, check_eims, check_labels, check_positive_int

__all__ = [
  "bootstrap_ci",
  "effect_vs_null",
  "null_test",
  "random_partition_null",
  "split_groups",
]


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
  if lab.size == 0:
    raise ValueError("labels must be non-empty")
  lab = check_labels(lab, arr.shape[0], int(np.max(lab)) + 1)
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
