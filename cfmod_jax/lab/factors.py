"""Which ground-truth factors does a module carry? Counterfactual factor transfer
and the realism of module hybrids.

**Factor transfer.** For a mask ``m`` at a site (a module, the whole site, a
random group of channels) and a latent pair ``(z1, z2)``, the hybrid takes the
masked channels from the donor z2 (`cfmod_jax.interventions`). A *predictor*
(a pure function ``images [N, H, W, 3] -> {factor: output}``, e.g. the shipped
feature network's `FeatureNet.predict_fn`) reads each factor off three images:
``G(z1)``, ``G(z2)`` and the hybrid. The hybrid **follows the donor** on factor f

* categorical f (output: class scores or probabilities ``[N, n]``, n ≥ 2): when
  the hybrid's predicted class (argmax) equals the class predicted on G(z2).
  Pairs where G(z1) and G(z2) get the same class say nothing about transfer and
  are **excluded** from f's denominator (they are neither counted as following
  nor as not following);
* continuous f (output ``[N]`` or ``[N, d]``): when the hybrid's prediction is
  strictly closer (Euclidean distance over the d values) to the prediction on
  G(z2) than to the one on G(z1). Pairs whose two predictions are identical are
  excluded, as above.

The **transfer share** of (mask, factor) is (pairs following the donor) / (valid
pairs). With masks ``[M, C]`` and F factors, `factor_transfer` computes the
``[M, F]`` counts in ONE compiled call per site: an outer `lax.scan` over chunks
of pairs (the prefix, G(z1), G(z2) and their predictions run once per chunk) and
an inner `lax.map` over chunks of masks (each chunk's hybrids are one flat batch
through the suffix and the predictor), so memory is bounded by
``pair_chunk × mask_chunk`` images, never ``M × N``. Pairs are sharded over all
devices like the influence maps. Counts are kept per group of pairs (``groups``)
for bootstrap intervals over groups.

**Summary (exclusivity).** Given the module shares ``S [K, F]`` and the shares
``w [F]`` of the whole-site swap (all channels from z2, the reference: what the
site can transfer at all), for each factor f

    e_f = (max_k S[k, f] − mean_{k ≠ argmax} S[k, f]) / w_f

and the **exclusivity** is the mean of ``e_f`` over factors (factors with no
valid pair, or ``w_f ≤ 0``, are left out). It is 1 when every factor is fully
carried by one module and untouched by the others, 0 when each factor is spread
evenly over the modules (or carried by none); never negative (the best module's
share is at least the others' mean). Its null is the same number
for random partitions with the same module sizes (computed in the same call:
`factor_masks` lays out the masks); `factor_summary` adds percentile bootstrap
intervals over groups of pairs. `best_module_share` (the mean over factors of the
best module's share) is reported beside it.

Hybrid realism is `cfmod_jax.lab.realism`; the share-matrix figure is
`cfmod_jax.lab.plots.plot_factor_matrix`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from cfmod_jax import resampling
from cfmod_jax._validate import check_chunk, check_positive_int
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import (
  DEFAULT_MASK_CHUNK,
  DEFAULT_PAIR_CHUNK,
  check_groups,
  check_masks,
  check_pairs,
  hybrid_map_reduce,
  masks_from_labels,
)
from cfmod_jax.lab import quality

CATEGORICAL, CONTINUOUS = "categorical", "continuous"
# Factor kinds of the shipped feature network's outputs (`FeatureNet.predict_fn`).
FEATNET_KINDS: dict[str, str] = {
  **{name: CATEGORICAL for name, _ in quality.CATEGORICAL},
  **{name: CONTINUOUS for name, *_ in quality.CONTINUOUS},
}

Predictor = Callable[[jax.Array], Mapping[str, jax.Array]]


# ---- validation ------------------------------------------------------------------------
def _check_kinds(kinds) -> tuple[tuple[str, ...], tuple[bool, ...]]:
  """``{factor: 'categorical' | 'continuous'}`` → (names, is_categorical)."""
  if not isinstance(kinds, Mapping) or not kinds:
    raise ValueError(
      "kinds must be a non-empty mapping {factor name: 'categorical' or "
      f"'continuous'}}, got {kinds!r}"
    )
  for name, kind in kinds.items():
    if kind not in (CATEGORICAL, CONTINUOUS):
      raise ValueError(f"kinds[{name!r}] must be 'categorical' or 'continuous', got {kind!r}")
  return tuple(kinds), tuple(kinds[n] == CATEGORICAL for n in kinds)


def _check_predictor(predict: Predictor, names, categorical, image_shape) -> None:
  """Abstractly evaluates ``predict`` on 3 images and checks each factor's output."""
  if not callable(predict):
    raise ValueError(
      f"predict must be a function images -> dict of factor outputs, got {type(predict).__name__}"
    )
  n = 3
  try:
    out = jax.eval_shape(predict, jax.ShapeDtypeStruct((n, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
      f"predict failed on images of shape [N, {', '.join(map(str, image_shape))}]"
      f": {type(e).__name__}: {e}"
    ) from e
  if not isinstance(out, Mapping):
    raise ValueError(f"predict must return a dict {{factor: output}}, got {type(out).__name__}")
  missing = [name for name in names if name not in out]
  if missing:
    raise ValueError(
      f"predict output lacks factor(s) {missing} named in kinds; it has {sorted(out)}"
    )
  for name, cat in zip(names, categorical):
    shape = tuple(out[name].shape)
    if cat and (len(shape) != 2 or shape[0] != n or shape[1] < 2):
      raise ValueError(
        f"predict output for categorical factor {name!r} must be class "
        f"scores [N, n_classes] with n_classes >= 2; for N={n} images got "
        f"shape {shape}"
      )
    if not cat and (len(shape) not in (1, 2) or shape[0] != n):
      raise ValueError(
        f"predict output for continuous factor {name!r} must be [N] or "
        f"[N, d]; for N={n} images got shape {shape}"
      )


# ---- compiled kernel ---------------------------------------------------------------------
def _decisions(predict, names, categorical, ref, images):
  """Per factor: the hybrid's vote ``[…, F]`` (1.0 follows the donor) given the
  reference predictions ``ref`` of G(z1), G(z2) for the same pairs."""
  out = predict(images)
  votes = []
  for name, cat in zip(names, categorical):
    p1, p2 = ref[name]
    y = out[name].reshape(p1.shape)
    if cat:
      votes.append(jnp.argmax(y, axis=-1) == jnp.argmax(p2, axis=-1))
    else:
      d1 = jnp.sum(jnp.square((y - p1).reshape(y.shape[0], -1)), axis=-1)
      d2 = jnp.sum(jnp.square((y - p2).reshape(y.shape[0], -1)), axis=-1)
      votes.append(d2 < d1)
  return jnp.stack(votes, axis=-1).astype(jnp.float32)


def _valid(names, categorical, ref):
  """``[n, F]`` 1.0 where G(z1) and G(z2) differ on the factor (the denominator)."""
  cols = []
  for name, cat in zip(names, categorical):
    p1, p2 = ref[name]
    if cat:
      cols.append(jnp.argmax(p1, axis=-1) != jnp.argmax(p2, axis=-1))
    else:
      cols.append(jnp.any((p1 != p2).reshape(p1.shape[0], -1), axis=-1))
  return jnp.stack(cols, axis=-1).astype(jnp.float32)


def _transfer_fns(gen: Generator, site: str, predict: Predictor, names, categorical):
  """``(pair_fn, hybrid_fn)`` of `interventions.hybrid_map_reduce` for factor
  transfer: per group, the weighted number of pairs whose hybrid follows the donor
  ``[G, mc, F]`` and (per chunk of pairs) of valid pairs ``[G, F]``."""

  def pair_fn(chunk):
    pc = chunk.z1.shape[0]
    x12 = gen.suffix(
      chunk.variables,
      jnp.concatenate([chunk.a1, chunk.a2]),
      jnp.concatenate([chunk.z1, chunk.z2]),
      site,
    )
    p12 = predict(x12)
    ref = {name: (p12[name][:pc], p12[name][pc:]) for name in names}
    valid = _valid(names, categorical, ref)  # [pc, F]
    return (ref, valid), jnp.einsum("pf,pg->gf", valid, chunk.weights)

  def hybrid_fn(chunk, ctx, y):  # y [mc, pc, H, W, 3]
    ref, valid = ctx
    mc, pc = y.shape[:2]
    tiled = {
      name: tuple(jnp.tile(p, (mc,) + (1,) * (p.ndim - 1)) for p in pq) for name, pq in ref.items()
    }
    votes = _decisions(predict, names, categorical, tiled, y.reshape(-1, *y.shape[2:]))
    votes = votes.reshape(mc, pc, -1) * valid[None]
    return jnp.einsum("jpf,pg->gjf", votes, chunk.weights)

  return pair_fn, hybrid_fn


# ---- factor transfer ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FactorTransfer:
  """Counts of a factor-transfer run.

  Attributes:
    follows: int64 ``[G, M, F]``: per group of pairs, mask and factor, the number of
      valid pairs whose hybrid follows the donor z2.
    valid: int64 ``[G, F]``: per group and factor, the pairs where G(z1) and G(z2)
      differ (the denominators; the same for every mask).
    counts: int64 ``[G]``: pairs per group.
    factors: the F factor names (columns).
  """

  follows: np.ndarray
  valid: np.ndarray
  counts: np.ndarray
  factors: tuple[str, ...]

  def shares(self) -> np.ndarray:
    """float64 ``[M, F]`` transfer shares over all groups (NaN: no valid pair)."""
    return transfer_shares(self.follows.sum(0), self.valid.sum(0))


def transfer_shares(follows: ArrayLike, valid: ArrayLike) -> np.ndarray:
  """``follows [M, F] / valid [F]`` as float64, NaN where ``valid`` is 0."""
  follows = np.asarray(follows, np.float64)
  valid = np.broadcast_to(np.asarray(valid, np.float64), follows.shape)
  out = np.full(follows.shape, np.nan)
  np.divide(follows, valid, out=out, where=valid > 0)
  return out


def factor_transfer(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  predict: Predictor,
  kinds: Mapping[str, str],
  *,
  groups: ArrayLike | None = None,
  pair_chunk: int | None = DEFAULT_PAIR_CHUNK,
  mask_chunk: int | None = DEFAULT_MASK_CHUNK,
) -> FactorTransfer:
  """Counterfactual factor transfer of masks at a site (see the module docstring).

  Args:
    gen: a `Generator`; site: one of ``gen.sites``.
    masks: ``[M, C]`` (or ``[C]``) in [0, 1]; 1 takes the channel from z2. Modules,
      the whole-site swap and random-partition masks can go in one call
      (`factor_masks`).
    z1, z2: ``[N, *latent_shape]`` originals and donors.
    predict: a pure, jit-able ``images [n, H, W, 3] -> {factor: output}``, e.g.
      ``featnet.predict_fn()``. Keep the same function object between calls: the
      compiled kernel is cached per (site, predict, kinds, chunks).
    kinds: ``{factor: 'categorical' | 'continuous'}`` (`FEATNET_KINDS` for the
      feature network); its order is the order of the factors.
    groups: optional int ``[N]`` in ``0..G-1`` (groups of pairs, for bootstraps).
    pair_chunk, mask_chunk: pairs per scan step, masks per vectorised batch;
      results do not depend on them.
  Returns:
    `FactorTransfer` with per-group counts; ``.shares()`` is the ``[M, F]`` matrix.
  """
  gen.site_index(site)
  masks, _ = check_masks(gen, site, masks)
  z1, z2 = check_pairs(gen, z1, z2)
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  names, categorical = _check_kinds(kinds)
  groups = check_groups(groups, z1.shape[0])
  _check_predictor(predict, names, categorical, gen.image_shape)
  pair_fn, hybrid_fn = _transfer_fns(gen, site, predict, names, categorical)
  follows, valid, counts = hybrid_map_reduce(
    gen,
    site,
    masks,
    z1,
    z2,
    hybrid_fn,
    pair_fn=pair_fn,
    groups=groups,
    cache_key=("factor_transfer", predict, names, categorical),
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
  )
  count = lambda a: np.rint(np.asarray(a, np.float64)).astype(np.int64)
  return FactorTransfer(
    follows=count(follows), valid=count(valid), counts=counts.astype(np.int64), factors=names
  )


def factor_masks(labels: ArrayLike, k: int, n_null: int = 16, seed: int = 0) -> np.ndarray:
  """Masks for one `factor_transfer` call: modules, whole site, random partitions.

  Layout of the returned float32 ``[K + 1 + n_null·K, C]``: rows ``0…K−1`` the
  modules of ``labels`` (int ``[C]`` in ``[0, K)``), row ``K`` all ones (the
  whole-site swap), then for r = 0…n_null−1 the K modules of the r-th random
  partition with the same module sizes (``numpy.random.default_rng(seed)``
  permutations of ``labels``; the convention of the analysis' nulls).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
    raise ValueError(f"labels must be a non-empty int array [C], got {labels.shape} {labels.dtype}")
  k = check_positive_int(k, "k")
  if labels.min() < 0 or labels.max() >= k:
    raise ValueError(f"labels must lie in [0, k={k}), got range [{labels.min()}, {labels.max()}]")
  if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)) or n_null < 0:
    raise ValueError(f"n_null must be a non-negative integer, got {n_null!r}")
  rows = [masks_from_labels(labels, k), np.ones((1, labels.size), np.float32)]
  rows += [masks_from_labels(lab, k) for lab in resampling.null_partitions(labels, n_null, seed)]
  return np.concatenate(rows)


# ---- summaries (host side, numpy) ----------------------------------------------------------
def _check_matrix(module_shares, whole=None):
  s = np.asarray(module_shares, np.float64)
  if s.ndim != 2 or s.shape[0] < 2:
    raise ValueError(f"module_shares must be [K, F] with K >= 2 modules, got shape {s.shape}")
  if whole is None:
    return s, None
  w = np.asarray(whole, np.float64)
  if w.shape != (s.shape[1],):
    raise ValueError(
      f"whole must be [F] = [{s.shape[1]}] (one share per factor), got shape {w.shape}"
    )
  return s, w


def exclusivity_per_factor(module_shares: ArrayLike, whole: ArrayLike) -> np.ndarray:
  """``e_f = (max_k S[k, f] − mean of the other modules' S[·, f]) / whole[f]``.

  Args:
    module_shares: ``[K, F]`` transfer shares of the K ≥ 2 modules.
    whole: ``[F]`` shares of the whole-site swap.
  Returns:
    float64 ``[F]``; NaN where a factor has a NaN share or ``whole[f] ≤ 0``.
  """
  s, w = _check_matrix(module_shares, whole)
  k = s.shape[0]
  best = s.max(axis=0)
  others = (s.sum(axis=0) - best) / (k - 1)
  out = np.full(s.shape[1], np.nan)
  np.divide(best - others, w, out=out, where=w > 0)
  return out


def exclusivity(module_shares: ArrayLike, whole: ArrayLike) -> float:
  """Mean over factors of `exclusivity_per_factor` (NaN factors left out; NaN if all)."""
  e = exclusivity_per_factor(module_shares, whole)
  return float(np.nanmean(e)) if np.any(np.isfinite(e)) else float("nan")


def best_module_share(module_shares: ArrayLike) -> float:
  """Mean over factors of the best module's share (factors with a NaN share left out)."""
  s, _ = _check_matrix(module_shares)
  best = s.max(axis=0)
  return float(np.nanmean(best)) if np.any(np.isfinite(best)) else float("nan")


def bootstrap_groups(
  follows: ArrayLike,
  valid: ArrayLike,
  statistic: Callable[[np.ndarray], float],
  n_boot: int = 1000,
  seed: int = 0,
) -> tuple[float, float, float]:
  """Percentile 95% bootstrap over groups of pairs of a statistic of the shares.

  Args:
    follows: ``[G, M, F]`` and valid: ``[G, F]`` counts (`FactorTransfer`).
    statistic: ``shares [M, F] -> float``.
  Returns:
    ``(estimate, lo, hi)``: the statistic of all groups, and the 2.5 / 97.5
    percentiles over ``n_boot`` resamples of the G groups with replacement (NaN
    replicates ignored). With G = 1 the interval collapses to the estimate.
  """
  follows = np.asarray(follows, np.float64)
  valid = np.asarray(valid, np.float64)
  if follows.ndim != 3 or valid.shape != (follows.shape[0], follows.shape[2]):
    raise ValueError(
      f"follows must be [G, M, F] and valid [G, F], got {follows.shape} and {valid.shape}"
    )
  n_boot = check_positive_int(n_boot, "n_boot")
  g = follows.shape[0]
  estimate = float(statistic(transfer_shares(follows.sum(0), valid.sum(0))))
  weights = resampling.bootstrap_group_weights(np.ones(g), n_boot, seed, normalize=False)
  reps = np.array(
    [statistic(transfer_shares(np.tensordot(w, follows, 1), w @ valid)) for w in weights]
  )
  if not np.any(np.isfinite(reps)):
    return estimate, float("nan"), float("nan")
  lo, hi = resampling.percentile_ci(reps)
  return estimate, lo, hi


def factor_summary(
  transfer: FactorTransfer,
  k: int,
  n_null: int,
  *,
  n_boot: int = 1000,
  seed: int = 0,
  only: Sequence[str] | None = None,
) -> dict:
  """Everything the report needs from a `factor_transfer` run on `factor_masks`
  (same ``k`` and ``n_null``); ``only`` restricts it to some factors (e.g. the
  categorical ones, whose "follows" is not diluted by prediction noise).

  Returns a dict (JSON-ready lists/floats):
    ``factors``: names; ``matrix``: ``[K][F]`` module shares; ``whole``: ``[F]``
    whole-site shares; ``valid``: ``[F]`` valid pairs per factor;
    ``exclusivity`` / ``best_share``: the statistics with ``*_ci`` = [lo, hi]
    (bootstrap over groups of pairs) and ``*_null`` = the values on the n_null
    random partitions, ``*_null_mean``, ``*_null_sd``, ``*_p`` = (1 + #null ≥
    observed) / (n_null + 1).
  """
  k = check_positive_int(k, "k")
  if only is not None:
    unknown = [f for f in only if f not in transfer.factors]
    if unknown or not only:
      raise ValueError(
        f"only must name some of the factors {list(transfer.factors)}, got {list(only)}"
      )
    cols = [transfer.factors.index(f) for f in only]
    transfer = FactorTransfer(
      transfer.follows[:, :, cols], transfer.valid[:, cols], transfer.counts, tuple(only)
    )
  m = transfer.follows.shape[1]
  if m != k + 1 + n_null * k:
    raise ValueError(
      f"transfer has {m} masks; factor_masks(k={k}, n_null={n_null}) lays out {k + 1 + n_null * k}"
    )
  shares = transfer.shares()
  out = {
    "factors": list(transfer.factors),
    "matrix": shares[:k].tolist(),
    "whole": shares[k].tolist(),
    "valid": transfer.valid.sum(0).tolist(),
  }
  stats = {
    "exclusivity": lambda s: exclusivity(s[:k], s[k]),
    "best_share": lambda s: best_module_share(s[:k]),
  }
  for name, stat in stats.items():
    est, lo, hi = bootstrap_groups(transfer.follows, transfer.valid, stat, n_boot, seed)
    null = np.array(
      [
        stat(np.concatenate([shares[k + 1 + r * k : k + 1 + (r + 1) * k], shares[k : k + 1]]))
        for r in range(n_null)
      ]
    )
    out[name] = est
    out[f"{name}_ci"] = [lo, hi]
    out[f"{name}_null"] = null.tolist()
    out[f"{name}_null_mean"] = float(np.mean(null)) if n_null else float("nan")
    out[f"{name}_null_sd"] = float(np.std(null, ddof=1)) if n_null > 1 else float("nan")
    out[f"{name}_p"] = float((1 + np.sum(null >= est)) / (n_null + 1))
  return out


__all__ = [
  "CATEGORICAL",
  "CONTINUOUS",
  "FEATNET_KINDS",
  "FactorTransfer",
  "best_module_share",
  "bootstrap_groups",
  "exclusivity",
  "exclusivity_per_factor",
  "factor_masks",
  "factor_summary",
  "factor_transfer",
  "transfer_shares",
]
