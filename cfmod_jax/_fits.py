"""The fitting kernels of `cfmod_jax.clustering` (private module): preprocessing,
best-of-n NMF and k-means fits, the module order, matched cosine similarity of
templates and the bootstrap fits behind the K-selection curves. The public
functions of `cfmod_jax.clustering` check their arguments and call these.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment


def auto_pool(shape_hw, sigma: float) -> int:
  """Pooling factor for fitting: maps are fitted at ~32 px a side when smoothing
  (sigma ≥ 1 px) has removed finer detail anyway. NMF on 64×64 maps is often 10–100×
  slower than on the pooled 32×32 ones, for the same labels."""
  return max(1, int(min(shape_hw) // 32)) if sigma >= 1.0 else 1


def preprocess(arr: np.ndarray, sigma: float, percentile: float, pool: int = 1) -> np.ndarray:
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


def fit_nmf(
  x: np.ndarray,
  k: int,
  seed: int,
  n_restarts: int,
  max_iter: int,
  tol: float,
  nmf_init: str = "nndsvda",
):
  """Best-of-n_restarts NMF of x [n, D]; returns W [n, k], H [k, D], converged.

  With ``nmf_init="nndsvda"`` start 0 is the deterministic NNDSVDa initialisation
  (SVD-based, zeros filled with the mean) and starts 1.. are random, seeded
  ``seed + r``; with ``nmf_init="random"`` every start is random (the old default). The fit with the lowest
  reconstruction error is kept.
  """
  from sklearn.decomposition import NMF
  from sklearn.exceptions import ConvergenceWarning

  best = None
  for r in range(n_restarts):
    model = NMF(
      n_components=k,
      init="nndsvda" if (r == 0 and nmf_init == "nndsvda") else "random",
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
    if best is None or err < best[0] - 1e-9 * max(1.0, abs(best[0])):
      best = (err, w, model.components_, model.n_iter_ < max_iter)
  _, w, h, converged = best
  # Fix the scale ambiguity of W H so that argmax_k W[c, k] compares like with like.
  hn = np.linalg.norm(h, axis=1)
  alive = hn > 0
  h = np.where(alive[:, None], h / np.where(alive, hn, 1.0)[:, None], 0.0)
  w = np.where(alive[None, :], w * hn[None, :], 0.0)
  return w, h, converged


def fit_kmeans(x: np.ndarray, k: int, seed: int, n_restarts: int):
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


def module_order(labels_alive: np.ndarray, h: np.ndarray, shape_hw) -> np.ndarray:
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


def cluster_preprocessed(
  x: np.ndarray,
  shape_hw,
  k: int,
  method: str,
  seed: int,
  n_restarts: int,
  max_iter: int,
  tol: float,
  nmf_init: str = "nndsvda",
):
  """Cluster preprocessed rows x [C, H*W].

  Returns labels, templates [K, H, W], weights, dead, converged.
  """
  c = x.shape[0]
  dead = ~np.any(x > 0, axis=1)
  alive = np.flatnonzero(~dead)
  if alive.size == 0:
    raise ValueError("eims: every map is zero after preprocessing; nothing to cluster")
  xa = x[alive]
  if method == "nmf":
    w_a, h, converged = fit_nmf(xa, k, seed, n_restarts, max_iter, tol, nmf_init)
    lab_a = np.argmax(w_a, axis=1).astype(np.int64)
  else:
    if alive.size < k:
      raise ValueError(
        f"k={k} larger than the number of channels with a non-zero map "
        f"({alive.size}) -- k-means needs at least k such channels"
      )
    lab_a, w_a, h, converged = fit_kmeans(xa, k, seed, n_restarts)
  order = module_order(lab_a, h, shape_hw)
  inv = np.empty_like(order)
  inv[order] = np.arange(k)
  labels = np.zeros(c, dtype=np.int64)
  labels[alive] = inv[lab_a]
  weights = np.zeros((c, k))
  weights[alive] = w_a[:, order]
  templates = h[order].reshape((k,) + tuple(shape_hw))
  return labels, templates, weights, dead, converged


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarities between rows of a [n, D] and b [m, D]; 0 for a zero row."""
  na = np.linalg.norm(a, axis=1)
  nb = np.linalg.norm(b, axis=1)
  a_n = np.divide(a, na[:, None], out=np.zeros_like(a), where=na[:, None] > 0)
  b_n = np.divide(b, nb[:, None], out=np.zeros_like(b), where=nb[:, None] > 0)
  return np.clip(a_n @ b_n.T, -1.0, 1.0)


def matched_cosine(a: np.ndarray, b: np.ndarray) -> float:
  sim = cosine_matrix(a, b)
  rows, cols = linear_sum_assignment(sim, maximize=True)
  return float(sim[rows, cols].mean())


def template_stability(fits, ks) -> dict[int, tuple[float, float]]:
  curve: dict[int, tuple[float, float]] = {}
  for k in ks:
    t = [f[0] for f in fits[k]]
    sims = [matched_cosine(t[i], t[j]) for i in range(len(t)) for j in range(i + 1, len(t))]
    curve[k] = (float(np.mean(sims)), float(np.std(sims)))
  return curve


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
  """Mean cosine silhouette of the partition ``labels`` of the non-zero rows of x;
  0 when fewer than 2 clusters are used (or every channel is its own cluster)."""
  from sklearn.metrics import silhouette_score

  alive = np.any(x > 0, axis=1)
  lab = labels[alive]
  n_used = np.unique(lab).size
  if n_used < 2 or n_used >= lab.size:
    return 0.0
  return float(silhouette_score(x[alive], lab, metric="cosine"))


def bootstrap_fits(
  groups, ks, n_boot, seed, method, s, p, n_restarts, max_iter, nmf_tol, nmf_init="nndsvda"
):
  """For each of n_boot resamples of the G groups and each k: (templates [k, D],
  labels [C], silhouette). The resamples (and their fit seeds) are shared across k."""
  g, c, hh, ww = groups.shape
  rng = np.random.default_rng(seed)
  fits: dict[int, list] = {k: [] for k in ks}
  pool = auto_pool((hh, ww), s)
  shape = (hh // pool, ww // pool)
  for _ in range(n_boot):
    idx = rng.integers(0, g, size=g)
    init_seed = int(rng.integers(0, 2**31 - 1 - n_restarts))
    x = preprocess(groups[idx].mean(axis=0), s, p, pool)
    for k in ks:
      lab, t, _, _, _ = cluster_preprocessed(
        x, shape, k, method, init_seed, n_restarts, max_iter, nmf_tol, nmf_init
      )
      fits[k].append((t.reshape(k, -1), lab, silhouette(x, lab)))
  return fits


def pick_within_tol(
  curve: Mapping[int, tuple[float, float]], tol: float, pick: Callable[..., int]
) -> int:
  """``pick`` (max: the "stability" rule, min: the "silhouette" rule) of the k whose
  mean is within ``tol`` of the best mean."""
  means = {int(k): float(v[0]) for k, v in curve.items()}
  best = max(means.values())
  return pick(k for k, m in means.items() if m >= best - tol)


def silhouette_curve(fits, ks) -> dict[int, tuple[float, float]]:
  return {
    k: (float(np.mean([f[2] for f in fits[k]])), float(np.std([f[2] for f in fits[k]]))) for k in ks
  }
