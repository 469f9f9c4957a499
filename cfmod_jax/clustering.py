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
3. :func:`stability_curve` / :func:`choose_k` -- how consistent the templates are
   across bootstrap resamples of the latent-pair groups and NMF initialisations, as a
   function of K, and the rule that picks K from it.

Defaults (the paper does not give them; chosen by us, see the constants below):

* ``sigma=None`` means ``max(H, W) / 32`` pixels, i.e. 2 px at 64x64, 8 px at 256x256.
* ``percentile=80``: keep the strongest 20 % of each smoothed map.
* NMF: scikit-learn coordinate-descent solver, Frobenius loss, random initialisation
  seeded from ``seed``; ``n_restarts`` inits, the one with the lowest reconstruction
  error is kept. k-means: scikit-learn ``KMeans`` with ``n_init=n_restarts``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Iterable, Mapping

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DEFAULT_PERCENTILE",
    "DEFAULT_SIGMA_FRACTION",
    "DEFAULT_STABILITY_TOL",
    "DEFAULT_NMF_MAX_ITER",
    "DEFAULT_NMF_TOL",
    "METHODS",
    "ModuleClustering",
    "default_sigma",
    "preprocess_eims",
    "cluster_channels",
    "template_similarity",
    "stability_curve",
    "choose_k",
    "plot_stability_curve",
]

#: Default per-map percentile threshold of :func:`preprocess_eims`.
DEFAULT_PERCENTILE = 80.0
#: ``sigma=None`` means ``DEFAULT_SIGMA_FRACTION * max(H, W)`` pixels (2 px at 64x64).
DEFAULT_SIGMA_FRACTION = 1.0 / 32.0
#: Default tolerance of the :func:`choose_k` rule.
DEFAULT_STABILITY_TOL = 0.02
#: NMF iteration cap and (scikit-learn, relative) stopping tolerance.
DEFAULT_NMF_MAX_ITER = 500
DEFAULT_NMF_TOL = 1e-3
#: Clustering methods understood by :func:`cluster_channels`.
METHODS = ("nmf", "kmeans")


# --------------------------------------------------------------------------------------
# Input validation (shared with cfmod_jax.metrics)
# --------------------------------------------------------------------------------------


def _check_maps(x, name: str, ndim: int = 3, form: str = "[C, H, W]") -> np.ndarray:
    """Return ``x`` as float64 after checking dimensionality, finiteness, sign."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape {form}") from exc
    if arr.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D array of shape {form}, got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    if np.any(arr < 0):
        raise ValueError(
            f"{name} must be non-negative (influence maps are mean absolute "
            f"differences), min value is {arr.min():g}"
        )
    return arr


def _check_eims(eims) -> np.ndarray:
    return _check_maps(eims, "eims", 3, "[C, H, W]")


def _check_eim_groups(eim_groups) -> np.ndarray:
    arr = _check_maps(eim_groups, "eim_groups", 4, "[G, C, H, W]")
    if arr.shape[0] < 2:
        raise ValueError(
            "eim_groups must hold at least G=2 groups of latent pairs to resample "
            f"(shape [G, C, H, W]), got G={arr.shape[0]}; compute the EIMs on several "
            "disjoint groups of pairs"
        )
    return arr


def _check_k(k, n_channels: int, name: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer number of modules, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name}={k} must be >= 1")
    if k > n_channels:
        raise ValueError(
            f"{name}={k} larger than the number of channels C={n_channels}"
        )
    return k


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _check_percentile(percentile) -> float:
    p = float(percentile)
    if not (0.0 <= p < 100.0) or not np.isfinite(p):
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    return p


def _check_sigma(sigma, shape_hw) -> float:
    if sigma is None:
        return default_sigma(shape_hw)
    s = float(sigma)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be >= 0 (pixels) or None, got {sigma!r}")
    return s


def _check_labels(labels, n_channels: int, k: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n_channels:
        raise ValueError(
            f"labels must be a 1-D integer array of length C={n_channels}, "
            f"got shape {lab.shape}"
        )
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError("labels must be integers in [0, k)")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(
            f"labels must be integers in [0, k) with k={k}, got values in "
            f"[{lab.min()}, {lab.max()}]"
        )
    return lab


def _cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities between rows of a [n, D] and b [m, D]; 0 for a zero row."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    a_n = np.divide(a, na[:, None], out=np.zeros_like(a), where=na[:, None] > 0)
    b_n = np.divide(b, nb[:, None], out=np.zeros_like(b), where=nb[:, None] > 0)
    return np.clip(a_n @ b_n.T, -1.0, 1.0)


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def default_sigma(shape_hw) -> float:
    """Default smoothing width in pixels for maps of spatial shape (H, W)."""
    h, w = shape_hw
    return DEFAULT_SIGMA_FRACTION * float(max(h, w))


def _auto_pool(shape_hw, sigma: float) -> int:
    """Pooling factor for fitting: maps are fitted at ~32 px a side when smoothing
    (sigma ≥ 1 px) has removed finer detail anyway. NMF on 64×64 maps is often 10–100×
    slower than on the pooled 32×32 ones, for the same labels."""
    return max(1, int(min(shape_hw) // 32)) if sigma >= 1.0 else 1


def _preprocess(arr: np.ndarray, sigma: float, percentile: float, pool: int = 1) -> np.ndarray:
    """Validated float64 [C, H, W] -> float64 [C, H*W/pool²] (see preprocess_eims).

    ``pool`` > 1 averages pool×pool blocks after smoothing (used by the stability
    curve, whose many fits need not see more detail than the smoothing leaves).
    """
    c = arr.shape[0]
    if sigma > 0:
        sm = gaussian_filter(arr, sigma=(0.0, sigma, sigma), mode="reflect")
        sm = np.maximum(sm, 0.0)  # guard against round-off below zero
    else:
        sm = arr.copy()
    if pool > 1:
        h, w = sm.shape[1] // pool * pool, sm.shape[2] // pool * pool
        sm = sm[:, :h, :w].reshape(c, h // pool, pool, w // pool, pool).mean(axis=(2, 4))
    flat = sm.reshape(c, -1)
    if percentile > 0:
        thr = np.percentile(flat, percentile, axis=1, keepdims=True)
        flat = np.where(flat < thr, 0.0, flat)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def preprocess_eims(eims, sigma=None, percentile=DEFAULT_PERCENTILE) -> np.ndarray:
    """Smooth, threshold and normalise EIMs into the matrix that is clustered.

    Args:
      eims: float [C, H, W], non-negative, finite: one influence map per channel.
      sigma: Gaussian smoothing width in pixels, applied over (H, W) only (never across
        channels); 0 disables smoothing; ``None`` -> ``max(H, W) / 32`` (2 px at 64x64).
      percentile: per-map threshold in [0, 100): after smoothing, the values of a map
        strictly below that map's ``percentile``-th percentile are set to 0; 0 keeps
        everything.

    Returns:
      float32 [C, H*W]; each row has unit L2 norm, except all-zero rows (a channel with
      no influence at all), which stay zero.
    """
    arr = _check_eims(eims)
    s = _check_sigma(sigma, arr.shape[1:])
    p = _check_percentile(percentile)
    return _preprocess(arr, s, p).astype(np.float32)


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


def _fit_nmf(
    x: np.ndarray, k: int, seed: int, n_restarts: int, max_iter: int, tol: float
):
    """Best-of-n_restarts NMF of x [n, D]; returns W [n, k], H [k, D], converged."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    best = None
    for r in range(n_restarts):
        model = NMF(
            n_components=k,
            init="random",
            solver="cd",
            beta_loss="frobenius",
            max_iter=max_iter,
            tol=tol,
            random_state=int(seed) + r,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = model.fit_transform(x)
        err = float(model.reconstruction_err_)
        if best is None or err < best[0]:
            best = (err, w, model.components_, model.n_iter_ < max_iter)
    _, w, h, converged = best
    # Fix the scale ambiguity of W H so that argmax_k W[c, k] compares like with like.
    hn = np.linalg.norm(h, axis=1)
    alive = hn > 0
    h = np.where(alive[:, None], h / np.where(alive, hn, 1.0)[:, None], 0.0)
    w = np.where(alive[None, :], w * hn[None, :], 0.0)
    return w, h, converged


def _fit_kmeans(x: np.ndarray, k: int, seed: int, n_restarts: int):
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=n_restarts, random_state=int(seed))
    lab = model.fit_predict(x)
    converged = model.n_iter_ < model.max_iter
    h = model.cluster_centers_
    hn = np.linalg.norm(h, axis=1, keepdims=True)
    h = np.divide(h, hn, out=np.zeros_like(h), where=hn > 0)
    w = np.zeros((x.shape[0], k))
    w[np.arange(x.shape[0]), lab] = 1.0
    return lab.astype(np.int64), w, h, converged


def _module_order(labels_alive: np.ndarray, h: np.ndarray, shape_hw) -> np.ndarray:
    """Permutation ``order`` such that new module j is old module order[j]."""
    k = h.shape[0]
    sizes = np.bincount(labels_alive, minlength=k)
    hh, ww = shape_hw
    yy, xx = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    mass = h.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    com_y = np.where(mass > 0, h @ yy.ravel() / safe, np.inf)
    com_x = np.where(mass > 0, h @ xx.ravel() / safe, np.inf)
    # Round the centres of mass so that float noise cannot flip a tie.
    com_y = np.round(com_y, 6)
    com_x = np.round(com_x, 6)
    return np.lexsort((np.arange(k), com_x, com_y, -sizes))


def _cluster_preprocessed(
    x: np.ndarray,
    shape_hw,
    k: int,
    method: str,
    seed: int,
    n_restarts: int,
    max_iter: int,
    tol: float,
):
    """Cluster preprocessed rows x [C, H*W].

    Returns labels, templates [K, H, W], weights, dead, converged.
    """
    c = x.shape[0]
    dead = ~np.any(x > 0, axis=1)
    alive = np.flatnonzero(~dead)
    if alive.size == 0:
        raise ValueError(
            "eims: every map is zero after preprocessing; nothing to cluster"
        )
    xa = x[alive]
    if method == "nmf":
        w_a, h, converged = _fit_nmf(xa, k, seed, n_restarts, max_iter, tol)
        lab_a = np.argmax(w_a, axis=1).astype(np.int64)
    else:
        if alive.size < k:
            raise ValueError(
                f"k={k} larger than the number of channels with a non-zero map "
                f"({alive.size}) -- k-means needs at least k such channels"
            )
        lab_a, w_a, h, converged = _fit_kmeans(xa, k, seed, n_restarts)
    order = _module_order(lab_a, h, shape_hw)
    inv = np.empty_like(order)
    inv[order] = np.arange(k)
    labels = np.zeros(c, dtype=np.int64)
    labels[alive] = inv[lab_a]
    weights = np.zeros((c, k))
    weights[alive] = w_a[:, order]
    templates = h[order].reshape((k,) + tuple(shape_hw))
    return labels, templates, weights, dead, converged


def cluster_channels(
    eims,
    k: int,
    method: str = "nmf",
    seed: int = 0,
    sigma=None,
    percentile: float = DEFAULT_PERCENTILE,
    n_restarts: int = 4,
    max_iter: int = DEFAULT_NMF_MAX_ITER,
    nmf_tol: float = DEFAULT_NMF_TOL,
) -> ModuleClustering:
    """Group the C channels of a site into ``k`` modules from their EIMs.

    Args:
      eims: float [C, H, W], non-negative: elementary influence maps of the site.
      k: number of modules, 1 <= k <= C.
      method: "nmf" (paper: channel c joins argmax_k W[c, k]) or "kmeans" (baseline:
        k-means labels on the same preprocessed maps).
      seed: seeds the NMF random initialisations (restart r uses seed + r) or k-means.
      sigma, percentile: preprocessing, see :func:`preprocess_eims`.
      n_restarts: NMF random initialisations (the lowest reconstruction error wins) or
        k-means ``n_init``.
      max_iter, nmf_tol: NMF iteration cap and stopping tolerance (scikit-learn's
        relative ``tol``). The default nmf_tol=1e-3 is looser than scikit-learn's 1e-4:
        over-complete ranks (k above the true number of modules) otherwise crawl to the
        iteration cap with no visible change in the labels. If the kept fit hit
        ``max_iter`` a single ``sklearn.exceptions.ConvergenceWarning`` is issued.

    Returns:
      :class:`ModuleClustering`; deterministic given its arguments.
    """
    arr = _check_eims(eims)
    c, hh, ww = arr.shape
    k = _check_k(k, c)
    method = _check_method(method)
    s = _check_sigma(sigma, (hh, ww))
    p = _check_percentile(percentile)
    n_restarts = _check_positive_int(n_restarts, "n_restarts")
    max_iter = _check_positive_int(max_iter, "max_iter")
    nmf_tol = _check_tol(nmf_tol)
    pool = _auto_pool((hh, ww), s)
    x = _preprocess(arr, s, p, pool)
    labels, templates, weights, dead, converged = _cluster_preprocessed(
        x, (hh // pool, ww // pool), k, method, seed, n_restarts, max_iter, nmf_tol
    )
    if pool > 1:  # templates back at full resolution (nearest), unit L2 norm again
        templates = np.repeat(np.repeat(templates, pool, axis=1), pool, axis=2)
        templates = np.pad(templates, ((0, 0), (0, hh - templates.shape[1]),
                                       (0, ww - templates.shape[2])))
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


def _check_tol(tol) -> float:
    t = float(tol)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"nmf_tol must be a positive number, got {tol!r}")
    return t


def _check_positive_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------------------
# Template consistency and the choice of K
# --------------------------------------------------------------------------------------


def _flat_templates(t, name: str) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must be an array of shape [K, H, W] (or [K, H*W]), got shape "
            f"{np.shape(t)}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values")
    return arr


def _matched_cosine(a: np.ndarray, b: np.ndarray) -> float:
    sim = _cosine_matrix(a, b)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].mean())


def template_similarity(templates_a, templates_b) -> float:
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
    return _matched_cosine(a, b)


def stability_curve(
    eim_groups,
    k_values: Iterable[int],
    n_boot: int = 20,
    seed: int = 0,
    method: str = "nmf",
    sigma=None,
    percentile: float = DEFAULT_PERCENTILE,
    n_restarts: int = 1,
    max_iter: int = DEFAULT_NMF_MAX_ITER,
    nmf_tol: float = DEFAULT_NMF_TOL,
) -> dict[int, tuple[float, float]]:
    """Template consistency across bootstrap resamples, for each candidate K.

    For b = 1..n_boot: draw G of the G groups with replacement, average them into an
    EIM array, preprocess it, and cluster it for every k in ``k_values`` with an
    initialisation seed of its own (so both the data resampling and the NMF
    initialisation vary). Resamples are shared across k. For each k, the stability is
    the matched cosine similarity (:func:`template_similarity`) of the templates of
    every pair of resamples.

    Args:
      eim_groups: float [G, C, H, W], G >= 2: EIMs of G disjoint groups of pairs.
      k_values: candidate numbers of modules (each 1 <= k <= C).
      n_boot: number of bootstrap resamples (>= 2).
      seed: seeds the resampling and the initialisations.
      method, sigma, percentile, max_iter, nmf_tol: as in :func:`cluster_channels`
        (convergence warnings of the individual fits are not reported here).
      n_restarts: initialisations per fit (default 1, so initialisation sensitivity is
        part of what is measured).

    Returns:
      dict k -> (mean, std) over the n_boot*(n_boot-1)/2 pairs, keys in sorted order.
    """
    groups = _check_eim_groups(eim_groups)
    g, c, hh, ww = groups.shape
    ks = sorted({_check_k(k, c, "k_values entry k") for k in _as_list(k_values)})
    if not ks:
        raise ValueError("k_values must contain at least one k")
    method = _check_method(method)
    s = _check_sigma(sigma, (hh, ww))
    p = _check_percentile(percentile)
    n_boot = _check_positive_int(n_boot, "n_boot")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 to compare resamples, got {n_boot}")
    n_restarts = _check_positive_int(n_restarts, "n_restarts")
    max_iter = _check_positive_int(max_iter, "max_iter")
    nmf_tol = _check_tol(nmf_tol)

    rng = np.random.default_rng(seed)
    templates: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    pool = _auto_pool((hh, ww), s)
    shape = (hh // pool, ww // pool)
    for _ in range(n_boot):
        idx = rng.integers(0, g, size=g)
        init_seed = int(rng.integers(0, 2**31 - 1 - n_restarts))
        x = _preprocess(groups[idx].mean(axis=0), s, p, pool)
        for k in ks:
            _, t, _, _, _ = _cluster_preprocessed(
                x, shape, k, method, init_seed, n_restarts, max_iter, nmf_tol
            )
            templates[k].append(t.reshape(k, -1))
    curve: dict[int, tuple[float, float]] = {}
    for k in ks:
        sims = [
            _matched_cosine(templates[k][i], templates[k][j])
            for i in range(n_boot)
            for j in range(i + 1, n_boot)
        ]
        curve[k] = (float(np.mean(sims)), float(np.std(sims)))
    return curve


def _as_list(k_values) -> list:
    if isinstance(k_values, (int, np.integer)):
        return [k_values]
    try:
        return list(k_values)
    except TypeError as exc:
        raise ValueError(
            f"k_values must be an iterable of integers, got {k_values!r}"
        ) from exc


def _choose_from_curve(curve: Mapping[int, tuple[float, float]], tol: float) -> int:
    means = {int(k): float(v[0]) for k, v in curve.items()}
    best = max(means.values())
    return max(k for k, m in means.items() if m >= best - tol)


def choose_k(
    eim_groups,
    k_values: Iterable[int],
    tol: float = DEFAULT_STABILITY_TOL,
    **kwargs,
) -> tuple[int, dict[int, tuple[float, float]]]:
    """Pick the number of modules from the template stability curve.

    Rule: the largest k whose mean stability is within ``tol`` of the best mean
    stability over ``k_values``. Too few modules are usually stable too (merging a pair
    of true modules is often reproducible, and k=1 is trivially perfectly stable), so
    taking the plain argmax would favour small k; too many modules split a true one
    differently on every resample, which makes stability drop sharply.

    Args:
      eim_groups: float [G, C, H, W], G >= 2.
      k_values: candidate numbers of modules.
      tol: tolerance in cosine similarity, >= 0.
      **kwargs: passed to :func:`stability_curve` (n_boot, seed, method, sigma, ...).

    Returns:
      (k_best, curve) with curve as returned by :func:`stability_curve`.
    """
    tol = float(tol)
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    curve = stability_curve(eim_groups, k_values, **kwargs)
    return _choose_from_curve(curve, tol), curve


def plot_stability_curve(
    curve: Mapping[int, tuple[float, float]],
    path,
    k_best: int | None = None,
    title: str | None = None,
) -> str:
    """Write the stability curve (mean +- std against k) as a PNG file; returns path.

    Uses matplotlib's Agg canvas directly (no global backend change, no display).
    ``k_best`` (optional) is marked with a vertical line.
    """
    if not curve:
        raise ValueError("curve must be a non-empty dict k -> (mean, std)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted(int(k) for k in curve)
    means = np.array([curve[k][0] for k in ks], dtype=float)
    stds = np.array([curve[k][1] for k in ks], dtype=float)
    fig = Figure(figsize=(4.5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3)
    if k_best is not None:
        ax.axvline(int(k_best), color="tab:red", linestyle="--", label=f"K={k_best}")
        ax.legend(loc="lower left")
    ax.set_xticks(ks)
    ax.set_xlabel("number of modules K")
    ax.set_ylabel("template cosine similarity")
    ax.set_title(title or "Template stability across bootstrap resamples")
    fig.tight_layout()
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    return path
