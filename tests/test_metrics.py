"""Tests of cfmod_jax.metrics: module statistics, bootstrap, random-partition nulls."""

import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # the package is not installed in the venv
  sys.path.insert(0, _ROOT)

from cfmod_jax.clustering import cluster_channels  # noqa: E402
from cfmod_jax.metrics import (  # noqa: E402
  approx_module_maps,
  in_support_share,
  module_overlap,
  overlap_statistic,
  paired_bootstrap,
  part_agreement,
  part_agreement_chance,
  part_shares,
  partition_statistics,
  support_masks,
)
from cfmod_jax.resampling import (  # noqa: E402
  beyond,
  bootstrap_ci,
  bootstrap_group_weights,
  effect_vs_null,
  null_partitions,
  null_test,
  percentile_ci,
  random_partition_null,
  split_groups,
)

HW = 24


def _parts(hw=HW):
  """Background / hair / face masks of a cartoon face: a partition of the image."""
  yy, xx = np.mgrid[0:hw, 0:hw]
  face = (yy - 14) ** 2 + (xx - 12) ** 2 < 36
  hair = ~face & (yy < 10) & (np.abs(xx - 12) < 8)
  bg = ~(face | hair)
  return np.stack([bg, hair, face]).astype(float)


def _planted_parts(seed=0, per=16, noise=0.02):
  """EIMs whose channels each influence one part (with multiplicative texture)."""
  rng = np.random.default_rng(seed)
  parts = _parts()
  labels = np.repeat(np.arange(3), per)[rng.permutation(3 * per)]
  c = labels.size
  amp = rng.uniform(0.5, 2.0, size=c)
  eims = amp[:, None, None] * parts[labels] * rng.uniform(0.5, 1.5, (c, HW, HW))
  eims += noise * rng.random((c, HW, HW))
  return eims, labels, parts


def _noise_eims(rng, c=48, hw=16):
  return rng.exponential(size=(c, hw, hw))


def _random_labels(rng, k=3, per=16):
  return np.repeat(np.arange(k), per)[rng.permutation(k * per)]


# ----------------------------------------------------------------------------- maps, overlap


def test_approx_module_maps_sum_mean_and_empty():
  rng = np.random.default_rng(0)
  eims = rng.random((5, 3, 4))
  labels = np.array([0, 2, 0, 2, 2])
  maps = approx_module_maps(eims, labels, k=4)
  assert maps.shape == (4, 3, 4) and maps.dtype == np.float32
  np.testing.assert_allclose(maps[0], eims[0] + eims[2], rtol=1e-6)
  np.testing.assert_allclose(maps[2], eims[1] + eims[3] + eims[4], rtol=1e-6)
  assert np.all(maps[1] == 0) and np.all(maps[3] == 0)
  mean = approx_module_maps(eims, labels, k=3, reduce="mean")
  np.testing.assert_allclose(mean[2], (eims[1] + eims[3] + eims[4]) / 3, rtol=1e-6)
  assert approx_module_maps(eims, labels).shape == (3, 3, 4)  # k = max + 1


def test_module_overlap_values():
  a = np.zeros((3, 4, 4))
  a[0, :2] = 1
  a[1, 2:] = 1
  a[2, :, :2] = 1
  # pairs: (0,1) disjoint -> 0, (0,2) and (1,2) share 4 of 8 pixels -> 0.5 each
  assert module_overlap(a) == pytest.approx(1.0 / 3.0)
  assert module_overlap(a[:2]) == 0.0
  assert module_overlap(np.stack([a[0], 3 * a[0]])) == pytest.approx(1.0)
  assert module_overlap(np.stack([a[0], np.zeros((4, 4))])) == 0.0


def test_in_support_share():
  parts = _parts()
  masks = parts.astype(bool)
  shares, mean = in_support_share(parts, masks)
  np.testing.assert_allclose(shares, 1.0)
  assert mean == pytest.approx(1.0)
  shares, mean = in_support_share(parts, masks[[1, 2, 0]])
  np.testing.assert_allclose(shares, 0.0)
  # half of module 0's mass in its support
  m = np.zeros((2, 4, 4))
  m[0] = 1.0
  m[1, 0, 0] = 1.0
  sup = np.zeros((2, 4, 4), bool)
  sup[0, :2] = True
  sup[1, 0, 0] = True
  shares, mean = in_support_share(m, sup)
  np.testing.assert_allclose(shares, [0.5, 1.0])
  assert mean == pytest.approx(0.75)
  # float supports (templates) are thresholded at their own percentile
  t = np.zeros((2, 4, 4))
  t[0, :2] = 2.0  # 50 % of pixels -> with percentile 40 the support is rows 0-1
  t[1] = np.arange(16).reshape(4, 4)  # percentile 75: values >= 11.25 -> 12..15
  shares, _ = in_support_share(np.ones((2, 4, 4)), t, percentile=75)
  np.testing.assert_allclose(shares, [0.5, 0.25])
  # supports=None: own map thresholded; a zero map gives NaN and is skipped
  own = np.zeros((2, 4, 4))
  own[0] = np.arange(16).reshape(4, 4)
  shares, mean = in_support_share(own, None, percentile=75)
  assert shares[0] == pytest.approx((12 + 13 + 14 + 15) / 120) and np.isnan(shares[1])
  assert mean == pytest.approx(shares[0])


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci():
  rng = np.random.default_rng(0)
  truth = rng.random((4, 5, 5))
  stat = lambda e: float(e.mean())  # noqa: E731
  noisy = truth[None] + 0.3 * rng.random((10, 4, 5, 5)) * rng.choice([0, 1], (10, 1, 1, 1))
  est, lo, hi = bootstrap_ci(noisy, stat, n_boot=300, seed=1)
  assert est == pytest.approx(noisy.mean())
  assert lo < est < hi
  assert (est, lo, hi) == bootstrap_ci(noisy, stat, n_boot=300, seed=1)
  quiet = truth[None] + 0.03 * (noisy - truth[None])
  _, lo2, hi2 = bootstrap_ci(quiet, stat, n_boot=300, seed=1)
  assert hi2 - lo2 == pytest.approx(0.03 * (hi - lo), rel=1e-6)
  # alpha widens/narrows the interval
  _, lo3, hi3 = bootstrap_ci(noisy, stat, n_boot=300, seed=1, alpha=0.5)
  assert lo < lo3 < hi3 < hi


def test_bootstrap_group_weights_are_the_documented_draws():
  """Independent reference: draw G of G groups per replicate by hand, in order."""
  counts = np.array([3, 1, 4, 2, 5])
  w = bootstrap_group_weights(counts, 40, seed=7)
  raw = bootstrap_group_weights(counts, 40, seed=7, normalize=False)
  rng = np.random.default_rng(7)
  for b in range(40):
    idx = rng.integers(0, 5, 5)
    ref = np.zeros(5)
    for i in idx:
      ref[i] += counts[i]
    np.testing.assert_array_equal(raw[b], ref)
    np.testing.assert_allclose(w[b], ref / ref.sum(), rtol=1e-15)
  # plain multiplicities with unit counts (the draws of every bootstrap in the package)
  ones = bootstrap_group_weights(np.ones(5), 40, 7, normalize=False)
  rng = np.random.default_rng(7)
  for b in range(40):
    np.testing.assert_array_equal(ones[b], np.bincount(rng.integers(0, 5, 5), minlength=5))


def test_percentile_ci():
  v = np.random.default_rng(0).normal(size=1001)
  assert percentile_ci(v) == [np.percentile(v, 2.5), np.percentile(v, 97.5)]
  assert percentile_ci(v, alpha=0.5) == [np.percentile(v, 25), np.percentile(v, 75)]
  v[::3] = np.nan  # NaN replicates are left out
  assert percentile_ci(v) == [np.percentile(v[~np.isnan(v)], q) for q in (2.5, 97.5)]


def test_bootstrap_ci_replicates_are_means_of_drawn_groups():
  rng = np.random.default_rng(1)
  groups = rng.random((6, 3, 4, 4))
  stat = lambda e: float(e[0, 0, 0] + 2 * e[2].mean())  # noqa: E731
  est, lo, hi = bootstrap_ci(groups, stat, n_boot=50, seed=3)
  draws = np.random.default_rng(3)
  reps = [stat(groups[draws.integers(0, 6, 6)].mean(0)) for _ in range(50)]
  assert est == pytest.approx(stat(groups.mean(0)))
  assert lo == pytest.approx(np.percentile(reps, 2.5), rel=1e-12)
  assert hi == pytest.approx(np.percentile(reps, 97.5), rel=1e-12)


def test_split_groups():
  rng = np.random.default_rng(0)
  g = rng.random((5, 3, 4, 4))
  a, b = split_groups(g, seed=3)
  assert a.shape == b.shape == (3, 4, 4)
  np.testing.assert_allclose(2 * a + 3 * b, g.sum(0), rtol=1e-5)
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match=r"eim_groups must hold at least G=2"):
    split_groups(g[:1])


# ----------------------------------------------------------------------------- null


def test_null_test_values():
  null = np.arange(1, 10, dtype=float)  # 1..9
  p, z = null_test(3.0, null, "less")
  assert p == pytest.approx((1 + 3) / 10)
  assert z == pytest.approx((3.0 - 5.0) / null.std())
  assert null_test(3.0, null, "greater")[0] == pytest.approx((1 + 7) / 10)
  assert null_test(0.0, null, "two-sided")[0] == pytest.approx(0.2)
  assert null_test(5.0, np.full(4, 5.0)) == (1.0, 0.0)
  with pytest.raises(ValueError, match=r"alternative must be"):
    null_test(1.0, null, "lower")


def test_null_keeps_module_sizes_and_is_deterministic():
  rng = np.random.default_rng(0)
  eims = _noise_eims(rng, c=12, hw=4)
  labels = np.array([0] * 6 + [1] * 4 + [2] * 2)
  seen = []

  def stat(e, lab):
    np.testing.assert_array_equal(np.bincount(lab, minlength=3), [6, 4, 2])
    seen.append(lab.copy())
    return float(lab[0])

  a = random_partition_null(eims, labels, stat, n_perm=20, seed=5)
  assert a.shape == (20,)
  assert len({tuple(s) for s in seen}) > 15  # partitions really vary
  np.testing.assert_array_equal(a, random_partition_null(eims, labels, stat, 20, 5))


def test_null_partitions_are_the_documented_permutations():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  nulls = null_partitions(labels, 12, seed=4)
  rng = np.random.default_rng(4)
  for p in nulls:
    np.testing.assert_array_equal(p, rng.permutation(labels))
    np.testing.assert_array_equal(np.bincount(p), [3, 2, 4])
  assert len({tuple(p) for p in nulls}) > 8
  assert null_partitions(labels, 0, 4).shape == (0, 9)
  # random_partition_null evaluates exactly these partitions
  seen = []
  random_partition_null(np.ones((9, 2, 2)), labels, lambda e, lab: seen.append(lab) or 0.0, 12, 4)
  np.testing.assert_array_equal(np.stack(seen), nulls)
  with pytest.raises(ValueError, match=r"n must be a non-negative integer"):
    null_partitions(labels, -1, 0)


def test_effect_vs_null_and_beyond():
  values = np.array([0.2, 0.5, 0.6, 0.7])  # the partition, then 3 null partitions
  reps = np.array([[0.2, 0.5, 0.6, 0.7], [0.3, 0.6, 0.6, 0.6], [0.1, 0.4, 0.5, 0.6]])
  entry, eff = effect_vs_null(values, reps, "less")
  np.testing.assert_allclose(eff, [0.4, 0.3, 0.4])  # null mean − value, per replicate
  assert entry["value"] == 0.2 and entry["null_mean"] == pytest.approx(0.6)
  assert entry["null_std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))
  assert (entry["p_value"], entry["z"]) == null_test(0.2, values[1:], "less")
  assert entry["ci95"] == [np.percentile(reps[:, 0], 2.5), np.percentile(reps[:, 0], 97.5)]
  assert entry["effect_vs_null"]["value"] == pytest.approx(0.4)
  assert entry["effect_vs_null"]["ci95"] == [np.percentile(eff, 2.5), np.percentile(eff, 97.5)]
  up, eff_up = effect_vs_null(values, reps, "greater")
  np.testing.assert_allclose(eff_up, -eff)
  assert up["effect_vs_null"]["value"] == pytest.approx(-0.4)
  assert beyond({"value": 0.4, "ci95": [0.3, 0.4]}, 0.01)
  assert not beyond({"value": 0.4, "ci95": [0.005, 0.4]}, 0.01)
  assert not beyond({"value": 0.0, "ci95": [-0.1, 0.1]}, 0.0)


def test_null_calibrated_without_structure_for_fixed_labels():
  """I.i.d. noise EIMs, partition chosen independently of them: p ~ uniform."""
  stat = overlap_statistic(3)
  pvals, zs = [], []
  for s in range(12):
    rng = np.random.default_rng(100 + s)
    eims, labels = _noise_eims(rng), _random_labels(rng)
    null = random_partition_null(eims, labels, stat, n_perm=99, seed=s)
    p, z = null_test(stat(eims, labels), null)
    pvals.append(p)
    zs.append(z)
  pvals, zs = np.array(pvals), np.array(zs)
  assert np.sum(pvals < 0.05) <= 2
  assert 0.3 < pvals.mean() < 0.7
  assert np.all(np.abs(zs) < 3.0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_null_calibrated_for_cross_fitted_clustering_but_not_in_sample():
  """Cluster one half of the groups, test on the other: calibrated. In-sample labels
  are selected for distinct modules, so even pure noise looks 'modular'."""
  stat = overlap_statistic(3)
  z_cross, z_in = [], []
  for s in range(8):
    rng = np.random.default_rng(200 + s)
    groups = rng.exponential(size=(6, 48, 16, 16))
    a, b = split_groups(groups, seed=s)
    lab = cluster_channels(a, 3, seed=s, n_restarts=1).labels
    null = random_partition_null(b, lab, stat, n_perm=99, seed=s)
    z_cross.append(null_test(stat(b, lab), null)[1])
    eims = groups.mean(0)
    lab_in = cluster_channels(eims, 3, seed=s, n_restarts=1).labels
    null = random_partition_null(eims, lab_in, stat, n_perm=99, seed=s)
    z_in.append(null_test(stat(eims, lab_in), null)[1])
  assert np.sum(np.abs(z_cross) < 2.0) >= 7
  assert np.all(np.array(z_in) < -3.0)


def test_planted_overlap_far_below_null():
  eims, truth, _ = _planted_parts(1)
  lab = cluster_channels(eims, 3, seed=0).labels
  stat = overlap_statistic(3)
  obs = stat(eims, lab)
  null = random_partition_null(eims, lab, stat, n_perm=99, seed=0)
  p, z = null_test(obs, null)
  assert obs < 0.05 and null.min() > 0.5
  assert p == pytest.approx(1 / 100) and z < -10


def test_overlap_statistic_with_exact_module_maps_fn():
  parts = _parts()
  calls = []

  def module_maps_fn(labels):
    calls.append(labels)
    return parts[np.argsort(np.bincount(labels, minlength=3))]

  stat = overlap_statistic(3, module_maps_fn)
  labels = np.array([0, 1, 1, 2, 2, 2])
  assert stat(None, labels) == pytest.approx(module_overlap(parts))
  assert calls and calls[0] is labels


# ----------------------------------------------------------------------------- parts


def test_part_agreement_exact_parts():
  parts = _parts()
  assert part_agreement(parts, parts) == pytest.approx(1.0)
  assert part_agreement(3.0 * parts[[2, 0, 1]], parts) == pytest.approx(1.0)
  assert part_agreement(parts[:2], parts) == pytest.approx(1.0)  # K < P
  # K > P: the fourth module cannot get a distinct part
  four = np.concatenate([parts, parts[:1]])
  assert part_agreement(four, parts) == pytest.approx(0.75)
  # two modules inside the same part: only one of them can be matched to it
  assert part_agreement(parts[[0, 0, 0]], parts) == pytest.approx(1 / 3)
  # half of module 0 in part 0, half in part 1
  half = parts.copy()
  half[0] = parts[0] / parts[0].sum() + parts[1] / parts[1].sum()
  assert part_agreement(half, parts) == pytest.approx((0.5 + 1 + 1) / 3)


def test_part_agreement_soft_parts_and_uncovered_pixels():
  parts = _parts()
  soft = np.concatenate([parts, parts[2:3]])  # face split into two equal parts
  assert part_agreement(parts[[2]], soft) == pytest.approx(0.5)
  uncovered = parts[:2]  # face pixels belong to no part
  assert part_agreement(parts[[2]], uncovered) == 0.0


def test_part_agreement_planted_vs_chance():
  eims, truth, parts = _planted_parts(0)
  lab = cluster_channels(eims, 3, seed=0).labels
  score = part_agreement(approx_module_maps(eims, lab, 3), parts)
  mean, std = part_agreement_chance(eims, lab, parts, n_perm=100, seed=0)
  assert score > 0.95
  assert mean < 0.6 and score > mean + 5 * std
  assert (mean, std) == part_agreement_chance(eims, lab, parts, n_perm=100, seed=0)


def test_part_agreement_random_maps_near_chance():
  parts = _parts()
  for s in range(4):
    rng = np.random.default_rng(300 + s)
    eims = rng.exponential(size=(48, HW, HW))
    lab = _random_labels(rng)
    score = part_agreement(approx_module_maps(eims, lab, 3), parts)
    mean, std = part_agreement_chance(eims, lab, parts, n_perm=100, seed=s)
    assert abs(score - mean) < 4 * std
    # spatially uniform maps put the part's area share of their mass in each
    # part; with K = P the matched shares sum to 1, so the chance level is 1/K
    assert mean == pytest.approx(1 / 3, abs=0.01)
    assert 0.0 <= score <= 1.0


def test_part_shares_independent_reference():
  """Reference: the einsum of normalised maps and per-pixel normalised parts."""
  rng = np.random.default_rng(5)
  maps = rng.gamma(1.0, size=(2, 3, 6, 5))
  maps[1, 1] = 0.0
  parts = rng.uniform(size=(4, 6, 5))
  parts[:, 0, 0] = 0.0  # a pixel in no part
  got = part_shares(maps, parts)
  assert got.shape == (2, 3, 4)
  q = parts / np.where(parts.sum(0) > 0, parts.sum(0), 1.0)
  for i in range(2):
    mass = maps[i].reshape(3, -1).sum(1)
    d = maps[i] / np.where(mass > 0, mass, 1.0)[:, None, None]
    np.testing.assert_allclose(got[i], np.einsum("khw,phw->kp", d, q), rtol=1e-12, atol=1e-15)
  np.testing.assert_array_equal(got[1, 1], 0.0)
  # one map set = the same numbers as in a batch (to rounding: BLAS may take another path)
  np.testing.assert_allclose(part_shares(maps[0], parts), got[0], rtol=1e-13, atol=1e-16)
  # covering parts: each non-zero map's shares sum to 1
  full = rng.uniform(0.1, 1.0, size=(4, 6, 5))
  np.testing.assert_allclose(part_shares(maps[0], full).sum(1), 1.0)
  with pytest.raises(ValueError, match=r"part_maps must have spatial shape"):
    part_shares(maps, parts[:, :4])


def test_paired_bootstrap_is_partition_statistics_of_resampled_means():
  """Reference: each replicate's count-weighted mean of the drawn groups' maps, scored
  with the single-partition functions; two networks share the draws."""
  rng = np.random.default_rng(6)
  g, r, k, hw = 5, 3, 2, 6
  counts = np.array([4, 4, 3, 4, 2])
  nets = [rng.gamma(1.0, size=(g, r * k, hw, hw)) for _ in range(2)]
  templates = rng.gamma(1.0, size=(r, k, hw, hw))
  sup = support_masks(templates, 60.0)
  parts = rng.uniform(size=(3, hw, hw))
  reps = paired_bootstrap(nets, counts, [sup, sup], parts, n=7, seed=9, chunk=3)
  draws = np.random.default_rng(9)
  for b in range(7):
    idx = draws.integers(0, g, g)
    for net, rep in zip(nets, reps):
      mean = (counts[idx, None, None, None] * net[idx]).sum(0) / counts[idx].sum()
      maps = mean.reshape(r, k, hw, hw)
      for j in range(r):
        assert rep["overlap"][b, j] == pytest.approx(module_overlap(maps[j]), rel=1e-10)
        assert rep["in_support"][b, j] == pytest.approx(
          in_support_share(maps[j], templates[j], percentile=60.0)[1], rel=1e-10
        )
        assert rep["part_agreement"][b, j] == pytest.approx(
          part_agreement(maps[j], parts), rel=1e-10
        )
  # statistics of the full data for comparison: partition_statistics of the pooled maps
  pooled = (counts[:, None, None, None] * nets[0]).sum(0) / counts.sum()
  stats = partition_statistics(pooled.reshape(r, k, hw, hw), sup, parts)
  assert stats["overlap"][0] == pytest.approx(module_overlap(pooled[:k]))


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
  parts = _parts()
  eims = np.ones((6, HW, HW))
  labels = np.array([0, 0, 1, 1, 2, 2])
  with pytest.raises(ValueError, match=r"module_maps must be a 3-D array"):
    module_overlap(np.ones((3, 4)))
  with pytest.raises(ValueError, match=r"module_maps must hold at least 2 modules"):
    module_overlap(np.ones((1, 4, 4)))
  with pytest.raises(ValueError, match=r"module_maps must be non-negative"):
    part_agreement(-parts, parts)
  with pytest.raises(ValueError, match=r"part_maps must have spatial shape"):
    part_agreement(parts, parts[:, :10])
  with pytest.raises(ValueError, match=r"part_maps must contain only finite"):
    part_agreement(parts, np.full_like(parts, np.nan))
  with pytest.raises(ValueError, match=r"supports must have the shape of module_maps"):
    in_support_share(parts, parts[:2])
  with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\)"):
    in_support_share(parts, percentile=100)
  with pytest.raises(ValueError, match=r"labels must be a 1-D integer array of length C=6"):
    approx_module_maps(eims, labels[:5])
  with pytest.raises(ValueError, match=r"labels must be integers in \[0, k\) with k=2"):
    approx_module_maps(eims, labels, k=2)
  with pytest.raises(ValueError, match=r"labels must be integers"):
    approx_module_maps(eims, labels + 0.5)
  with pytest.raises(ValueError, match=r"reduce must be"):
    approx_module_maps(eims, labels, reduce="max")
  with pytest.raises(ValueError, match=r"eims must be a 3-D array"):
    random_partition_null(eims[0], labels, lambda e, l: 0.0, 5, 0)
  with pytest.raises(ValueError, match=r"eims must be non-negative"):
    part_agreement_chance(-eims, labels, parts)
  with pytest.raises(ValueError, match=r"n_perm must be a positive integer"):
    random_partition_null(eims, labels, lambda e, l: 0.0, 0, 0)
  with pytest.raises(ValueError, match=r"eim_groups must hold at least G=2"):
    bootstrap_ci(eims[None], lambda e: 0.0, 10, 0)
  with pytest.raises(ValueError, match=r"eim_groups must be a 4-D array"):
    bootstrap_ci(eims, lambda e: 0.0, 10, 0)
  with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
    bootstrap_ci(np.stack([eims, eims]), lambda e: 0.0, 10, 0, alpha=1.5)
  with pytest.raises(ValueError, match=r"null must contain at least one finite"):
    null_test(0.0, [np.nan])
