"""Grouping the channels of a site into modules from their elementary influence maps.

Host-side numpy / scipy / scikit-learn code. Its input is the array of elementary
influence maps (EIMs) of one site, ``eims`` float [C, H, W] (non-negative, one map per
channel), or, for the stability analysis, *grouped* EIMs ``eim_groups`` float
[G, C, H, W]: the EIMs computed on G disjoint groups of latent pairs, whose mean over
G is the EIM.

Pipeline (paper, Sec. "From channels to modules"):

1. :func:`preprocess_eims` -- Gaussian smoothing of each map over (H, W), a per-map
   percentile threshold (values strictly below the map's ``percentile``-th percentile
   become 0), then each map, flattened, is scaled to unit L2 norm. Unit L2 rows make
   every channel count equally whatever its overall influence strength, and make
   Euclidean k-means on the rows a cosine-similarity clustering.
2. :func:`cluster_channels` -- rank-K NMF ``S ~= W H`` of the preprocessed matrix
   (channel c joins module ``argmax_k W[c, k]``, the paper's rule) or k-means on the
   same rows (the paper's baseline).
3. :func:`stability_curve` / :func:`selection_curves` / :func:`choose_k` -- bootstrap
   resamples of the latent-pair groups, each clustered for every candidate K: how
   consistent the templates are (stability) and how well separated the modules are
   (cosine silhouette), and the rule that picks K from them.

Defaults (the paper does not give them; measured on the planted-structure suite of
`cfmod_jax.testing.planted`, see docs/planted_suite.md, and checked on the shipped
synthetic-faces DCGAN):

* ``sigma=None`` means ``max(H, W) / 32`` pixels, i.e. 2 px at 64x64, 8 px at 256x256.
* ``percentile=80``: keep the strongest 20 % of each smoothed map. Without the
  threshold (``percentile=0`` or ``None``) channels whose influence covers the whole
  image look alike and k-means gives them a module of their own.
* NMF: scikit-learn coordinate-descent solver, Frobenius loss; ``n_restarts`` starts,
  the first a deterministic NNDSVDa initialisation and the others random (seeded from
  ``seed``); the start with the lowest reconstruction error is kept. The same holds
  inside the bootstrap fits (``n_restarts=4`` there too): a single random start often
  lands in a poor local optimum. k-means: scikit-learn ``KMeans`` with
  ``n_init=n_restarts``.
* K: the smallest K whose mean bootstrap silhouette is within 0.05 of the best
  (``rule="silhouette"``); the old rule, the largest K whose template stability is
  within 0.02 of the best, remains available as ``rule="stability"``.

This module holds the algorithms only: argument checks are shared with
`cfmod_jax.metrics` in `cfmod_jax._validate`, and the stability curve is drawn by
`cfmod_jax.viz.plot_stability_curve`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax import _fits
from cfmod_jax._validate import (
  check_choice,
  check_eim_groups,
  check_eims,
  check_k,
  check_positive_float,
  check_positive_int,
  check_prep_percentile,
  check_sigma,
)

__all__ = [
  "ModuleClustering",
  "choose_k",
  "cluster_channels",
  "default_sigma",
  "preprocess_eims",
  "selection_curves",
  "stability_curve",
  "template_similarity",
]

#: Default per-map percentile threshold of :func:`preprocess_eims`.
DEFAULT_PERCENTILE = 80.0
#: ``sigma=None`` means ``DEFAULT_SIGMA_FRACTION * max(H, W)`` pixels (2 px at 64x64).
DEFAULT_SIGMA_FRACTION = 1.0 / 32.0
#: Tolerance of the "stability" rule of :func:`choose_k` (the old default rule).
DEFAULT_STABILITY_TOL = 0.02
#: Tolerance of the "silhouette" rule of :func:`choose_k` (the default rule). On the
#: planted suite the silhouette of the planted K is >= 0.079 above that of any smaller
#: K and <= 0.028 below that of any larger K (seeds 0-2, docs/planted_suite.md).
DEFAULT_SILHOUETTE_TOL = 0.05
#: NMF iteration cap and (scikit-learn, relative) stopping tolerance.
DEFAULT_NMF_MAX_ITER = 500
DEFAULT_NMF_TOL = 1e-3
#: Clustering methods understood by :func:`cluster_channels`.
METHODS = ("nmf", "kmeans")
#: NMF initialisations: "nndsvda" (start 0 deterministic NNDSVDa, further starts
#: random) or "random" (every start random; the old default).
NMF_INITS = ("nndsvda", "random")
DEFAULT_NMF_INIT = "nndsvda"
#: Starts per fit inside the bootstrap of :func:`stability_curve` / :func:`choose_k`.
DEFAULT_STABILITY_RESTARTS = 4
#: Rules of :func:`choose_k`.
RULES = ("silhouette", "stability")
DEFAULT_RULE = "silhouette"


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def default_sigma(shape_hw: Sequence[int]) -> float:
  """Default smoothing width in pixels for maps of spatial shape (H, W)."""
  h, w = shape_hw
  return DEFAULT_SIGMA_FRACTION * float(max(h, w))


def preprocess_eims(
  eims: ArrayLike, sigma: float | None = None, percentile: float | None = DEFAULT_PERCENTILE
) -> np.ndarray:
  """Smooth, threshold and normalise EIMs into the matrix that is clustered.

  Args:
    eims: float [C, H, W], non-negative, finite: one influence map per channel.
    sigma: Gaussian smoothing width in pixels, applied over (H, W) only (never across
      channels); 0 disables smoothing; ``None`` -> ``max(H, W) / 32`` (2 px at 64x64).
    percentile: per-map threshold in [0, 100): after smoothing, the values of a map
      strictly below that map's ``percentile``-th percentile are set to 0; 0 or None
      keeps everything.

  Returns:
    float32 [C, H*W]; each row has unit L2 norm, except all-zero rows (a channel with
    no influence at all), which stay zero.
  """
  arr = check_eims(eims)
  s = check_sigma(sigma, default_sigma(arr.shape[1:]))
  p = check_prep_percentile(percentile)
  return _fits.preprocess(arr, s, p).astype(np.float32)


# --------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleClustering:
  """Channels of one site grouped into K modules.

  Attributes:
    labels: int64 [C]; module index of each channel, in [0, K).
    templates: float32 [K, H, W]; unit-L2 template map of each module (NMF: rows of
      H; k-means: centroids), zero for a degenerate component.
    weights: float32 [C, K]; NMF: the W factor, rescaled so the templates have unit
      L2 norm (``preprocessed ~= weights @ templates``); k-means: one-hot labels.
    method: "nmf" or "kmeans".
    k: number of modules K.
    dead: bool [C]; channels whose preprocessed map is all zero (no influence). They
      carry no information; they are put in module 0 and have zero weights.
    sigma, percentile: the preprocessing parameters that were used.

  Modules are ordered by decreasing size (number of non-dead channels), ties broken
  by the row, then the column, of the template's centre of mass. A module may be
  empty (NMF: a component that is nowhere the largest weight); it keeps its template
  and index, no label points to it, and empty modules come last.
  """

  labels: np.ndarray
  templates: np.ndarray
  weights: np.ndarray
  method: str
  k: int
  dead: np.ndarray
  sigma: float
  percentile: float

  @property
  def sizes(self) -> np.ndarray:
    """int64 [K]: number of channels in each module (dead channels included)."""
    return np.bincount(self.labels, minlength=self.k).astype(np.int64)

  @property
  def n_empty(self) -> int:
    """Number of modules without any channel."""
    return int(np.sum(self.sizes == 0))

  def members(self, module: int) -> np.ndarray:
    """Channel indices of ``module``."""
    return np.flatnonzero(self.labels == module)


def cluster_channels(
  eims: ArrayLike,
  k: int,
  method: str = "nmf",
  seed: int = 0,
  sigma: float | None = None,
  percentile: float | None = DEFAULT_PERCENTILE,
  n_restarts: int = 4,
  max_iter: int = DEFAULT_NMF_MAX_ITER,
  nmf_tol: float = DEFAULT_NMF_TOL,
  nmf_init: str = DEFAULT_NMF_INIT,
) -> ModuleClustering:
  """Group the C channels of a site into ``k`` modules from their EIMs.

  Args:
    eims: float [C, H, W], non-negative: elementary influence maps of the site.
    k: number of modules, 1 <= k <= C.
    method: "nmf" (paper: channel c joins argmax_k W[c, k]) or "kmeans" (baseline:
      k-means labels on the same preprocessed maps).
    seed: seeds the NMF random starts (start r uses seed + r) or k-means.
    sigma, percentile: preprocessing, see :func:`preprocess_eims`.
    n_restarts: NMF starts (the lowest reconstruction error wins) or k-means
      ``n_init``.
    nmf_init: "nndsvda" (default: start 0 is the deterministic NNDSVDa
      initialisation, the others random) or "random" (all random, the old default).
    max_iter, nmf_tol: NMF iteration cap and stopping tolerance (scikit-learn's
      relative ``tol``). The default nmf_tol=1e-3 is looser than scikit-learn's 1e-4:
      over-complete ranks (k above the true number of modules) otherwise crawl to the
      iteration cap with no visible change in the labels. If the kept fit hit
      ``max_iter`` a single ``sklearn.exceptions.ConvergenceWarning`` is issued.

  Returns:
    :class:`ModuleClustering`; deterministic given its arguments.
  """
  arr = check_eims(eims)
  c, hh, ww = arr.shape
  k = check_k(k, c)
  method = check_choice(method, METHODS, "method")
  s = check_sigma(sigma, default_sigma((hh, ww)))
  p = check_prep_percentile(percentile)
  n_restarts = check_positive_int(n_restarts, "n_restarts")
  max_iter = check_positive_int(max_iter, "max_iter")
  nmf_tol = check_positive_float(nmf_tol, "nmf_tol")
  nmf_init = check_choice(nmf_init, NMF_INITS, "nmf_init")
  pool = _fits.auto_pool((hh, ww), s)
  x = _fits.preprocess(arr, s, p, pool)
  labels, templates, weights, dead, converged = _fits.cluster_preprocessed(
    x, (hh // pool, ww // pool), k, method, seed, n_restarts, max_iter, nmf_tol, nmf_init
  )
  if pool > 1:  # templates back at full resolution (nearest), unit L2 norm again
    templates = np.repeat(np.repeat(templates, pool, axis=1), pool, axis=2)
    templates = np.pad(
      templates, ((0, 0), (0, hh - templates.shape[1]), (0, ww - templates.shape[2]))
    )
    norms = np.linalg.norm(templates.reshape(k, -1), axis=1)[:, None, None]
    templates = np.divide(templates, norms, out=np.zeros_like(templates), where=norms > 0)
  if not converged:
    from sklearn.exceptions import ConvergenceWarning

    warnings.warn(
      f"cluster_channels: {method} with k={k} stopped at max_iter={max_iter} "
      "before reaching tol; consider a larger max_iter",
      ConvergenceWarning,
      stacklevel=2,
    )
  return ModuleClustering(
    labels=labels,
    templates=templates.astype(np.float32),
    weights=weights.astype(np.float32),
    method=method,
    k=k,
    dead=dead,
    sigma=s,
    percentile=p,
  )


# --------------------------------------------------------------------------------------
# Template consistency and the choice of K
# --------------------------------------------------------------------------------------


def _flat_templates(t, name: str) -> np.ndarray:
  arr = np.asarray(t, dtype=np.float64)
  if arr.ndim == 3:
    arr = arr.reshape(arr.shape[0], -1)
  if arr.ndim != 2 or arr.shape[0] == 0:
    raise ValueError(
      f"{name} must be an array of shape [K, H, W] (or [K, H*W]), got shape {np.shape(t)}"
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must contain only finite values")
  return arr


def template_similarity(templates_a: ArrayLike, templates_b: ArrayLike) -> float:
  """Mean cosine similarity of two template sets after optimal one-to-one matching.

  Templates are matched by the Hungarian algorithm (maximum total cosine
  similarity); the mean is over the min(K_a, K_b) matched pairs. A zero template has
  similarity 0 with everything. Shapes [K, H, W] or [K, H*W]; pixels must agree.
  """
  a = _flat_templates(templates_a, "templates_a")
  b = _flat_templates(templates_b, "templates_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"templates_a and templates_b must have the same number of pixels, got "
      f"{a.shape[1]} and {b.shape[1]}"
    )
  return _fits.matched_cosine(a, b)


def stability_curve(
  eim_groups: ArrayLike,
  k_values: Iterable[int],
  n_boot: int = 20,
  seed: int = 0,
  method: str = "nmf",
  sigma: float | None = None,
  percentile: float | None = DEFAULT_PERCENTILE,
  n_restarts: int = DEFAULT_STABILITY_RESTARTS,
  max_iter: int = DEFAULT_NMF_MAX_ITER,
  nmf_tol: float = DEFAULT_NMF_TOL,
  nmf_init: str = DEFAULT_NMF_INIT,
) -> dict[int, tuple[float, float]]:
  """Template consistency across bootstrap resamples, for each candidate K.

  For b = 1..n_boot: draw G of the G groups with replacement, average them into an
  EIM array, preprocess it, and cluster it for every k in ``k_values`` with fit seeds
  of its own. Resamples are shared across k. For each k, the stability is the matched
  cosine similarity (:func:`template_similarity`) of the templates of every pair of
  resamples.

  Args:
    eim_groups: float [G, C, H, W], G >= 2: EIMs of G disjoint groups of pairs.
    k_values: candidate numbers of modules (each 1 <= k <= C).
    n_boot: number of bootstrap resamples (>= 2).
    seed: seeds the resampling and the fits.
    method, sigma, percentile, max_iter, nmf_tol, nmf_init: as in
      :func:`cluster_channels` (convergence warnings of the fits are not reported).
    n_restarts: starts per fit, the best kept (default 4: NNDSVDa + 3 random). A
      single random start (the old default) often lands in a poor local optimum and
      then measures the optimiser rather than the data.

  Returns:
    dict k -> (mean, std) over the n_boot*(n_boot-1)/2 pairs, keys in sorted order.
  """
  return selection_curves(
    eim_groups,
    k_values,
    n_boot,
    seed,
    method,
    sigma,
    percentile,
    n_restarts,
    max_iter,
    nmf_tol,
    nmf_init,
  )["stability"]


def _stability_args(
  eim_groups, k_values, n_boot, method, sigma, percentile, n_restarts, max_iter, nmf_tol, nmf_init
):
  groups = check_eim_groups(eim_groups)
  g, c, hh, ww = groups.shape
  ks = sorted({check_k(k, c, "k_values entry k") for k in _as_list(k_values)})
  if not ks:
    raise ValueError("k_values must contain at least one k")
  method = check_choice(method, METHODS, "method")
  s = check_sigma(sigma, default_sigma((hh, ww)))
  p = check_prep_percentile(percentile)
  n_boot = check_positive_int(n_boot, "n_boot")
  if n_boot < 2:
    raise ValueError(f"n_boot must be >= 2 to compare resamples, got {n_boot}")
  n_restarts = check_positive_int(n_restarts, "n_restarts")
  max_iter = check_positive_int(max_iter, "max_iter")
  nmf_tol = check_positive_float(nmf_tol, "nmf_tol")
  nmf_init = check_choice(nmf_init, NMF_INITS, "nmf_init")
  return groups, ks, (method, s, p, n_restarts, max_iter, nmf_tol, nmf_init)


def _as_list(k_values) -> list:
  if isinstance(k_values, (int, np.integer)):
    return [k_values]
  try:
    return list(k_values)
  except TypeError as exc:
    raise ValueError(f"k_values must be an iterable of integers, got {k_values!r}") from exc


def selection_curves(
  eim_groups: ArrayLike,
  k_values: Iterable[int],
  n_boot: int = 20,
  seed: int = 0,
  method: str = "nmf",
  sigma: float | None = None,
  percentile: float | None = DEFAULT_PERCENTILE,
  n_restarts: int = DEFAULT_STABILITY_RESTARTS,
  max_iter: int = DEFAULT_NMF_MAX_ITER,
  nmf_tol: float = DEFAULT_NMF_TOL,
  nmf_init: str = DEFAULT_NMF_INIT,
) -> dict[str, dict[int, tuple[float, float]]]:
  """Both K-selection curves from one set of bootstrap fits.

  Returns ``{"stability": curve, "silhouette": curve}``, each a dict
  k -> (mean, std): the template stability of :func:`stability_curve`, and the mean
  cosine silhouette of the partitions of the bootstrap resamples (each resample's
  preprocessed maps clustered with k modules; silhouette over the channels with a
  non-zero map; 0 for k=1). Arguments as in :func:`stability_curve`.
  """
  groups, ks, fit_args = _stability_args(
    eim_groups, k_values, n_boot, method, sigma, percentile, n_restarts, max_iter, nmf_tol, nmf_init
  )
  fits = _fits.bootstrap_fits(groups, ks, n_boot, seed, *fit_args)
  return {
    "stability": _fits.template_stability(fits, ks),
    "silhouette": _fits.silhouette_curve(fits, ks),
  }


def choose_k(
  eim_groups: ArrayLike,
  k_values: Iterable[int],
  tol: float | None = None,
  rule: str = DEFAULT_RULE,
  **kwargs: Any,
) -> tuple[int, dict[int, tuple[float, float]]]:
  """Pick the number of modules from bootstrap resamples of the grouped EIMs.

  Rules (``rule``):

  * ``"silhouette"`` (default): the smallest k whose mean cosine silhouette of the
    resamples' partitions (see :func:`selection_curves`) is within ``tol`` (default
    0.05) of the best. Splitting a true module in two puts near-identical maps in
    different modules, merging two puts dissimilar maps together; both lower the
    silhouette, so it peaks at the planted K. The tolerance gives parsimony: a few
    channels without a region-specific role (noise) can form an extra small module
    that raises the silhouette by a hair. On the planted-structure suite
    (`cfmod_jax.testing.planted`, docs/planted_suite.md) it recovers K where the
    stability rule does not.
  * ``"stability"`` (the old rule): the largest k whose mean template stability is
    within ``tol`` of the best. With deterministic, multi-start fits over-split
    solutions are reproducible too, and this rule then favours large k.

  Args:
    eim_groups: float [G, C, H, W], G >= 2.
    k_values: candidate numbers of modules.
    tol: tolerance, >= 0; None: 0.05 (silhouette) or 0.02 (stability).
    rule: "silhouette" or "stability".
    **kwargs: passed to :func:`selection_curves` (n_boot, seed, method, sigma, ...).

  Returns:
    (k_best, curve): curve is the template stability curve (as returned by
    :func:`stability_curve`) whatever the rule; call :func:`selection_curves` for
    the silhouette curve too.
  """
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
  if tol is None:
    tol = DEFAULT_SILHOUETTE_TOL if rule == "silhouette" else DEFAULT_STABILITY_TOL
  tol = float(tol)
  if not np.isfinite(tol) or tol < 0:
    raise ValueError(f"tol must be >= 0, got {tol!r}")
  curves = selection_curves(eim_groups, k_values, **kwargs)
  curve = curves["stability"]
  if rule == "stability":
    return _fits.pick_within_tol(curve, tol, max), curve
  return _fits.pick_within_tol(curves["silhouette"], tol, min), curve
