"""Tests of cfmod_jax.clustering on small synthetic EIMs with a planted module structure."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # the package is not installed in the venv
  sys.path.insert(0, _ROOT)

from cfmod_jax import _fits  # noqa: E402
from cfmod_jax.clustering import (  # noqa: E402
  ModuleClustering,
  choose_k,
  cluster_channels,
  default_sigma,
  preprocess_eims,
  selection_curves,
  stability_curve,
  template_similarity,
)
from cfmod_jax.viz import plot_stability_curve  # noqa: E402

HW = 24
CENTRES = [(0.25, 0.25), (0.25, 0.75), (0.72, 0.5)]


def _blobs(hw=HW):
  yy, xx = np.mgrid[0:hw, 0:hw].astype(float)
  return np.stack(
    [
      np.exp(-((yy - cy * hw) ** 2 + (xx - cx * hw) ** 2) / (2 * (hw / 8) ** 2))
      for cy, cx in CENTRES
    ]
  )


def _planted(seed=0, sizes=(24, 24, 24), hw=HW, noise=0.05, groups=None, gnoise=0.3):
  """EIMs whose channel c is a noisy positive multiple of blob labels[c]."""
  rng = np.random.default_rng(seed)
  b = _blobs(hw)
  labels = np.concatenate([np.full(n, j) for j, n in enumerate(sizes)])
  labels = labels[rng.permutation(labels.size)]
  amp = rng.uniform(0.5, 2.0, size=labels.size)
  eims = amp[:, None, None] * b[labels] + noise * np.abs(rng.normal(size=(labels.size, hw, hw)))
  if groups is None:
    return eims.astype(np.float32), labels
  grouped = eims[None] * np.exp(gnoise * rng.normal(size=(groups,) + eims.shape))
  return grouped.astype(np.float32), labels


# ----------------------------------------------------------------------------- preprocess


def test_default_sigma_is_2px_at_64():
  assert default_sigma((64, 64)) == pytest.approx(2.0)
  assert default_sigma((256, 256)) == pytest.approx(8.0)


def test_preprocess_threshold_and_unit_rows():
  eims, _ = _planted(0)
  eims = np.concatenate([eims, np.zeros((1, HW, HW), np.float32)])
  x = preprocess_eims(eims, sigma=1.0, percentile=80)
  assert x.shape == (eims.shape[0], HW * HW) and x.dtype == np.float32
  norms = np.linalg.norm(x[:-1], axis=1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  assert np.all(x[-1] == 0)  # an all-zero map stays zero
  # 80th percentile: at most ~20 % of each row survives (ties at the threshold aside)
  frac = (x[:-1] > 0).mean(axis=1)
  assert np.all(frac <= 0.21) and np.all(frac >= 0.19)


def test_preprocess_without_smoothing_or_threshold_is_row_normalisation():
  rng = np.random.default_rng(1)
  eims = rng.random((5, 6, 7))
  x = preprocess_eims(eims, sigma=0, percentile=0)
  flat = eims.reshape(5, -1)
  np.testing.assert_allclose(x, flat / np.linalg.norm(flat, axis=1, keepdims=True), rtol=1e-5)


def test_preprocess_smooths_each_map_spatially_only():
  eims = np.zeros((2, 15, 15))
  eims[0, 7, 7] = 1.0
  eims[1, 0, 0] = 1.0
  x = preprocess_eims(eims, sigma=2.0, percentile=0).reshape(2, 15, 15)
  # map 0 spread around its own centre, symmetric; nothing leaked into map 1's centre
  assert x[0, 7, 7] == x[0].max() and x[0, 7, 5] > 0 and x[0, 7, 9] > 0
  np.testing.assert_allclose(x[0, 7, 5], x[0, 7, 9], rtol=1e-5)
  assert x[1, 7, 7] < 1e-3 * x[1].max()
  assert x[1, 0, 0] == x[1].max()


# ----------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cluster_recovers_planted_modules_exactly(method, seed):
  eims, truth = _planted(seed)
  res = cluster_channels(eims, 3, method=method, seed=seed)
  assert isinstance(res, ModuleClustering)
  assert res.method == method and res.k == 3
  assert adjusted_rand_score(truth, res.labels) == 1.0
  assert res.labels.shape == (72,) and res.weights.shape == (72, 3)
  assert res.templates.shape == (3, HW, HW) and res.templates.dtype == np.float32
  np.testing.assert_array_equal(res.sizes, [24, 24, 24])
  # each module's template peaks on the blob of its channels
  blob_peaks = [np.unravel_index(b.argmax(), b.shape) for b in _blobs()]
  for j in range(3):
    true_blob = np.bincount(truth[res.labels == j]).argmax()
    peak = np.unravel_index(res.templates[j].argmax(), (HW, HW))
    assert np.hypot(*np.subtract(peak, blob_peaks[true_blob])) <= 2.0


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
def test_cluster_recovers_planted_modules_at_64px_with_pooled_fit(method):
  """At 64×64 the fit runs on 2×2-pooled maps; labels stay exact, templates come
  back at full resolution with unit norm and peak on their blob."""
  eims, truth = _planted(4, hw=64)
  res = cluster_channels(eims, 3, method=method, seed=0)
  assert adjusted_rand_score(truth, res.labels) == 1.0
  assert res.templates.shape == (3, 64, 64)
  np.testing.assert_allclose(np.linalg.norm(res.templates.reshape(3, -1), axis=1), 1.0, rtol=1e-5)
  blob_peaks = [np.unravel_index(b.argmax(), b.shape) for b in _blobs(64)]
  for j in range(3):
    true_blob = np.bincount(truth[res.labels == j]).argmax()
    peak = np.unravel_index(res.templates[j].argmax(), (64, 64))
    assert np.hypot(*np.subtract(peak, blob_peaks[true_blob])) <= 3.0


def test_nmf_labels_are_argmax_of_weights_and_templates_unit_norm():
  eims, _ = _planted(2)
  res = cluster_channels(eims, 3, method="nmf", seed=0)
  np.testing.assert_array_equal(res.labels, res.weights.argmax(axis=1))
  np.testing.assert_allclose(np.linalg.norm(res.templates.reshape(3, -1), axis=1), 1.0, rtol=1e-5)
  # weights @ templates reconstructs the preprocessed matrix well
  x = preprocess_eims(eims)
  rel = np.linalg.norm(x - res.weights @ res.templates.reshape(3, -1)) / np.linalg.norm(x)
  assert rel < 0.5


def test_kmeans_weights_are_one_hot():
  eims, _ = _planted(3)
  res = cluster_channels(eims, 3, method="kmeans", seed=0)
  np.testing.assert_array_equal(res.weights.sum(axis=1), 1.0)
  np.testing.assert_array_equal(res.weights.argmax(axis=1), res.labels)


def test_cluster_is_deterministic_given_seed():
  eims, _ = _planted(4)
  a = cluster_channels(eims, 4, seed=7)
  b = cluster_channels(eims, 4, seed=7)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.templates, b.templates)
  np.testing.assert_array_equal(a.weights, b.weights)


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
def test_modules_ordered_by_size(method):
  eims, truth = _planted(5, sizes=(10, 30, 20))
  res = cluster_channels(eims, 3, method=method, seed=0)
  np.testing.assert_array_equal(res.sizes, [30, 20, 10])
  # module 0 is the planted module 1 (30 channels), etc.
  for j, planted in enumerate([1, 2, 0]):
    np.testing.assert_array_equal(res.members(j), np.flatnonzero(truth == planted))


def test_equal_sizes_ordered_by_centre_of_mass():
  eims, _ = _planted(6)
  res = cluster_channels(eims, 3, seed=0)
  t = res.templates.reshape(3, -1).astype(float)
  yy, xx = np.mgrid[0:HW, 0:HW]
  com = np.stack([t @ yy.ravel(), t @ xx.ravel()], 1) / t.sum(1, keepdims=True)
  order = np.lexsort((com[:, 1], com[:, 0]))
  np.testing.assert_array_equal(order, np.arange(3))


def test_dead_channels_flagged_and_put_in_module_0():
  eims, truth = _planted(7)
  eims = np.concatenate([np.zeros((2, HW, HW), np.float32), eims])
  res = cluster_channels(eims, 3, seed=0)
  np.testing.assert_array_equal(res.dead, [True, True] + [False] * 72)
  np.testing.assert_array_equal(res.labels[:2], 0)
  assert np.all(res.weights[:2] == 0)
  assert adjusted_rand_score(truth, res.labels[2:]) == 1.0


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
def test_over_complete_k_gives_valid_partition(method):
  eims, _ = _planted(8)
  res = cluster_channels(eims, 6, method=method, seed=0, n_restarts=1)
  assert res.labels.min() >= 0 and res.labels.max() < 6
  assert res.sizes.sum() == 72
  assert np.all(np.diff(res.sizes) <= 0)  # empty modules (if any) come last
  assert res.n_empty == int(np.sum(res.sizes == 0))


# ----------------------------------------------------------------------------- similarity


def test_template_similarity_matches_permutations():
  b = _blobs()
  assert template_similarity(b, b[[2, 0, 1]]) == pytest.approx(1.0)
  a = np.zeros((2, 4, 4))
  a[0, :2] = 1
  a[1, 2:] = 1
  c = np.zeros((2, 4, 4))
  c[0, :, :2] = 1
  c[1, :, 2:] = 1
  assert template_similarity(a, a[::-1]) == pytest.approx(1.0)
  assert template_similarity(a, c) == pytest.approx(0.5)
  # different numbers of templates: mean over the min(K_a, K_b) matched pairs
  assert template_similarity(b[:2], b) == pytest.approx(1.0)
  assert template_similarity(np.zeros((2, 4, 4)), a) == 0.0


def test_choose_k_picks_planted_k_and_plots(tmp_path):
  groups, _ = _planted(9, groups=8)
  k_best, curve = choose_k(groups, range(2, 6), n_boot=4, seed=0)
  assert k_best == 3
  assert sorted(curve) == [2, 3, 4, 5]
  curves = selection_curves(groups, range(2, 6), n_boot=4, seed=0)
  assert curves["stability"] == curve  # choose_k returns the stability curve
  sil = {k: v[0] for k, v in curves["silhouette"].items()}
  # the silhouette peaks clearly at the planted K; its templates are reproducible
  assert all(sil[k] < sil[3] - 0.05 for k in (2, 4, 5))
  assert curve[3][0] > 0.99
  path = plot_stability_curve(curve, tmp_path / "sub" / "stability.png", k_best=k_best)
  data = Path(path).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  path = plot_stability_curve(
    curve, tmp_path / "both.png", k_best=k_best, silhouette=curves["silhouette"]
  )
  assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_silhouette_curve_is_mean_of_sklearn_silhouettes_of_resample_fits():
  """Independent reference: redo the bootstrap by hand with the public functions."""
  from sklearn.metrics import silhouette_score

  groups, _ = _planted(3, groups=4)
  seed, n_boot = 5, 3
  curves = selection_curves(groups, [2, 3], n_boot=n_boot, seed=seed, sigma=1.0)
  rng = np.random.default_rng(seed)
  ref = {2: [], 3: []}
  for _ in range(n_boot):
    idx = rng.integers(0, groups.shape[0], size=groups.shape[0])
    fit_seed = int(rng.integers(0, 2**31 - 1 - 4))
    eims = groups[idx].astype(np.float64).mean(axis=0)
    x = preprocess_eims(eims, sigma=1.0)
    for k in (2, 3):
      lab = cluster_channels(eims, k, seed=fit_seed, sigma=1.0).labels
      ref[k].append(silhouette_score(x, lab, metric="cosine"))
  for k in (2, 3):
    assert curves["silhouette"][k][0] == pytest.approx(np.mean(ref[k]), abs=1e-4)
    assert curves["silhouette"][k][1] == pytest.approx(np.std(ref[k]), abs=1e-4)


def test_choose_k_kmeans_and_determinism():
  groups, _ = _planted(10, groups=6)
  k_best, curve = choose_k(groups, [2, 3, 4], n_boot=4, seed=1, method="kmeans")
  assert k_best == 3
  again = stability_curve(groups, [2, 3, 4], n_boot=4, seed=1, method="kmeans")
  assert again == curve


def test_choose_rule_is_largest_k_within_tolerance_of_best():
  curve = {1: (1.0, 0.0), 2: (0.995, 0.01), 3: (0.985, 0.01), 4: (0.7, 0.1)}
  assert _fits.pick_within_tol(curve, 0.02, max) == 3
  assert _fits.pick_within_tol(curve, 0.0, max) == 1
  assert _fits.pick_within_tol(curve, 0.5, max) == 4


def test_silhouette_rule_is_smallest_k_within_tolerance_of_best():
  curve = {2: (0.5, 0.0), 3: (0.8, 0.01), 4: (0.84, 0.01), 5: (0.86, 0.1)}
  assert _fits.pick_within_tol(curve, 0.05, min) == 4
  assert _fits.pick_within_tol(curve, 0.0, min) == 5
  assert _fits.pick_within_tol(curve, 0.07, min) == 3
  assert _fits.pick_within_tol(curve, 0.5, min) == 2


def test_choose_k_old_rule_and_tolerance_defaults():
  groups, _ = _planted(9, groups=4)
  kw = dict(n_boot=3, seed=0, n_restarts=1)
  curves = selection_curves(groups, [2, 3, 4], **kw)
  k_stab, _ = choose_k(groups, [2, 3, 4], rule="stability", **kw)
  assert k_stab == _fits.pick_within_tol(curves["stability"], 0.02, max)
  k_sil, _ = choose_k(groups, [2, 3, 4], **kw)
  assert k_sil == _fits.pick_within_tol(curves["silhouette"], 0.05, min)


def test_nndsvda_start_is_deterministic_and_not_worse_than_random():
  eims, truth = _planted(5, sizes=(30, 20, 4))
  x = preprocess_eims(eims).astype(np.float64)
  # one start: NNDSVDa ignores the seed; a random start does not
  w0, h0, _ = _fits.fit_nmf(x, 3, 0, 1, 500, 1e-4)
  w1, h1, _ = _fits.fit_nmf(x, 3, 123, 1, 500, 1e-4)
  np.testing.assert_allclose(h0, h1, atol=1e-10)
  err = lambda w, h: np.linalg.norm(x - w @ h)
  errs_random = [err(*_fits.fit_nmf(x, 3, s, 1, 500, 1e-4, "random")[:2]) for s in range(4)]
  assert err(w0, h0) <= np.median(errs_random) + 1e-6
  # best of n starts is never worse than its first start
  w4, h4, _ = _fits.fit_nmf(x, 3, 0, 4, 500, 1e-4)
  assert err(w4, h4) <= err(w0, h0) + 1e-9
  res = cluster_channels(eims, 3, seed=7)
  assert adjusted_rand_score(truth, res.labels) == 1.0


def test_percentile_none_means_no_threshold():
  eims, _ = _planted(0)
  np.testing.assert_array_equal(
    preprocess_eims(eims, sigma=1.0, percentile=None),
    preprocess_eims(eims, sigma=1.0, percentile=0),
  )
  assert cluster_channels(eims, 3, percentile=None).percentile == 0.0


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
  "eims, match",
  [
    (np.ones((4, 5)), r"eims must be a 3-D array"),
    (-np.ones((4, 5, 5)), r"eims must be non-negative"),
    (np.full((4, 5, 5), np.nan), r"eims must contain only finite"),
    (np.full((4, 5, 5), np.inf), r"eims must contain only finite"),
  ],
)
def test_bad_eims(eims, match):
  with pytest.raises(ValueError, match=match):
    cluster_channels(eims, 2)
  with pytest.raises(ValueError, match=match):
    preprocess_eims(eims)


def test_bad_k_method_percentile_sigma():
  eims, _ = _planted(0)
  with pytest.raises(ValueError, match=r"k=0 must be >= 1"):
    cluster_channels(eims, 0)
  with pytest.raises(ValueError, match=r"k=73 larger than the number of channels C=72"):
    cluster_channels(eims, 73)
  with pytest.raises(ValueError, match=r"k must be an integer"):
    cluster_channels(eims, 2.5)
  with pytest.raises(ValueError, match=r"method must be one of"):
    cluster_channels(eims, 3, method="spectral")
  for p in (-1, 100, 150):
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\)"):
      cluster_channels(eims, 3, percentile=p)
  with pytest.raises(ValueError, match=r"sigma must be >= 0"):
    preprocess_eims(eims, sigma=-1)
  with pytest.raises(ValueError, match=r"n_restarts must be a positive integer"):
    cluster_channels(eims, 3, n_restarts=0)
  with pytest.raises(ValueError, match=r"nmf_init must be one of"):
    cluster_channels(eims, 3, nmf_init="nndsvd")
  groups, _ = _planted(0, groups=2)
  with pytest.raises(ValueError, match=r"rule must be one of"):
    choose_k(groups, [2, 3], rule="gap")
  with pytest.raises(ValueError, match=r"tol must be >= 0"):
    choose_k(groups, [2, 3], tol=-0.1)
  with pytest.raises(ValueError, match=r"nmf_init must be one of"):
    selection_curves(groups, [2, 3], nmf_init="nndsvd")


def test_all_zero_eims_rejected():
  with pytest.raises(ValueError, match=r"eims: every map is zero"):
    cluster_channels(np.zeros((4, 5, 5)), 2)


def test_bad_eim_groups():
  groups, _ = _planted(0, groups=2)
  with pytest.raises(ValueError, match=r"eim_groups must hold at least G=2.*G=1"):
    stability_curve(groups[:1], [2, 3])
  with pytest.raises(ValueError, match=r"eim_groups must be a 4-D array"):
    choose_k(groups[0], [2, 3])
  with pytest.raises(ValueError, match=r"eim_groups must be non-negative"):
    stability_curve(-groups, [2])
  with pytest.raises(ValueError, match=r"k_values entry k=80 larger than .* C=72"):
    stability_curve(groups, [2, 80])
  with pytest.raises(ValueError, match=r"n_boot must be >= 2"):
    stability_curve(groups, [2], n_boot=1)
  with pytest.raises(ValueError, match=r"tol must be >= 0"):
    choose_k(groups, [2], tol=-0.1)


def test_bad_templates():
  with pytest.raises(ValueError, match=r"templates_a must be an array of shape"):
    template_similarity(np.ones(5), np.ones((2, 5)))
  with pytest.raises(ValueError, match=r"same number of pixels"):
    template_similarity(np.ones((2, 3, 3)), np.ones((2, 4, 4)))
