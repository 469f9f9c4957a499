"""Counterfactual factor transfer and hybrid realism: a planted generator whose
answer is known, a plain-loop reference, chunk/group invariance, summaries, bad
input, and the hybrid Fréchet distance against a direct computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax.lab import factors, plots, quality, realism

# ---- a planted generator: channels {0, 1} paint the left half, {2, 3} the right half ----
SITE = "mid"


class _Spread(nn.Module):
  @nn.compact
  def __call__(self, z, train=False):
    return jnp.tile(z[:, None, None, :], (1, 2, 2, 1))  # [N, 2, 2, 4]


class _Paint(nn.Module):
  @nn.compact
  def __call__(self, h, train=False):
    c = h.mean(axis=(1, 2))  # [N, 4]
    left = jnp.tanh(c[:, 0] + 0.5 * c[:, 1] ** 2 - 0.3)  # grey level of the left half
    right = jnp.tanh(jnp.stack([c[:, 2], c[:, 3], c[:, 2] * c[:, 3]], axis=-1))  # RGB
    n = h.shape[0]
    lhalf = jnp.broadcast_to(left[:, None, None, None], (n, 8, 4, 3))
    rhalf = jnp.broadcast_to(right[:, None, None, :], (n, 8, 4, 3))
    return jnp.concatenate([lhalf, rhalf], axis=2)  # [N, 8, 8, 3]


class _Planted(cf.StagedGenerator):
  site_names = (SITE,)
  latent_shape = (4,)

  def setup(self):
    self.stages = [_Spread(), _Paint()]


def _planted_predict(images):
  """left: 2 classes (grey > 0); right: 3 classes of the red level; left_level:
  continuous [N]; right_rgb: continuous [N, 3]."""
  left = images[:, :, :4].mean(axis=(1, 2, 3))
  rgb = images[:, :, 4:].mean(axis=(1, 2))
  centres = jnp.array([-0.5, 0.0, 0.5])
  return {
    "left": jnp.stack([-left, left], axis=-1),
    "right": -jnp.square(rgb[:, :1] - centres),
    "left_level": left,
    "right_rgb": rgb,
  }


KINDS = {
  "left": "categorical",
  "right": "categorical",
  "left_level": "continuous",
  "right_rgb": "continuous",
}
A = np.array([1, 1, 0, 0], np.float32)
B = 1 - A


@pytest.fixture(scope="module")
def planted():
  return cf.Generator(_Planted(), {}, name="planted")


@pytest.fixture(scope="module")
def planted_pairs(planted):
  k1, k2 = jax.random.split(jax.random.key(5))
  return planted.sample_latents(k1, 40), planted.sample_latents(k2, 40)


def _reference_counts(gen, site, masks, z1, z2, predict, kinds):
  """Plain loop over masks and pairs with `cf.hybrids` and the predictor (numpy)."""
  names = list(kinds)
  follows = np.zeros((len(masks), len(names)), np.int64)
  valid = np.zeros(len(names), np.int64)
  for i in range(z1.shape[0]):
    p1 = {k: np.asarray(v)[0] for k, v in predict(gen(z1[i : i + 1])).items()}
    p2 = {k: np.asarray(v)[0] for k, v in predict(gen(z2[i : i + 1])).items()}
    ok = [
      np.argmax(p1[f]) != np.argmax(p2[f]) if kinds[f] == "categorical" else np.any(p1[f] != p2[f])
      for f in names
    ]
    valid += np.array(ok)
    for j, mask in enumerate(masks):
      hyb = cf.hybrids(gen, site, mask, z1[i : i + 1], z2[i : i + 1])
      ph = {k: np.asarray(v)[0] for k, v in predict(hyb).items()}
      for fi, f in enumerate(names):
        if not ok[fi]:
          continue
        if kinds[f] == "categorical":
          follows[j, fi] += np.argmax(ph[f]) == np.argmax(p2[f])
        else:
          follows[j, fi] += np.sum((ph[f] - p2[f]) ** 2) < np.sum((ph[f] - p1[f]) ** 2)
  return follows, valid


def test_planted_modules_carry_their_half(planted, planted_pairs):
  z1, z2 = planted_pairs
  masks = np.stack([A, B, np.ones(4), np.zeros(4)])
  res = factors.factor_transfer(planted, SITE, masks, z1, z2, _planted_predict, KINDS)
  assert res.factors == tuple(KINDS)
  assert res.follows.shape == (1, 4, 4) and res.valid.shape == (1, 4)
  assert res.counts.tolist() == [40]
  assert np.all(res.valid > 10)  # the pairs do disagree on every factor
  s = res.shares()
  np.testing.assert_array_equal(s[0], [1, 0, 1, 0])  # module A: the left half only
  np.testing.assert_array_equal(s[1], [0, 1, 0, 1])  # module B: the right half only
  np.testing.assert_array_equal(s[2], [1, 1, 1, 1])  # whole site
  np.testing.assert_array_equal(s[3], [0, 0, 0, 0])  # nothing swapped
  assert factors.exclusivity(s[:2], s[2]) == 1.0
  # A module mixing one channel of each half carries both partly, neither exclusively.
  mixed = np.stack([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=np.float32)
  sm = factors.factor_transfer(planted, SITE, mixed, z1, z2, _planted_predict, KINDS).shares()
  assert factors.exclusivity(sm, s[2]) < 0.9


def test_streaming_equals_plain_loop_and_ignores_chunks(planted, planted_pairs):
  z1, z2 = planted_pairs[0][:9], planted_pairs[1][:9]
  rng = np.random.default_rng(0)
  masks = np.concatenate(
    [np.stack([A, B, np.ones(4)]), rng.random((2, 4)), (rng.random((2, 4)) < 0.5)]
  ).astype(np.float32)
  ref_follows, ref_valid = _reference_counts(planted, SITE, masks, z1, z2, _planted_predict, KINDS)
  assert 0 < ref_follows[3:].sum() < ref_valid.sum() * 4  # non-trivial masks
  for pc, mc in [(32, 16), (1, 1), (4, 3), (2, 7)]:
    res = factors.factor_transfer(
      planted, SITE, masks, z1, z2, _planted_predict, KINDS, pair_chunk=pc, mask_chunk=mc
    )
    np.testing.assert_array_equal(res.follows[0], ref_follows, err_msg=f"chunks {pc}, {mc}")
    np.testing.assert_array_equal(res.valid[0], ref_valid)


def test_real_generator_equals_plain_loop(small_dcgan, pairs):
  """A DCGAN suffix with a planted quadrant-colour predictor."""
  z1, z2 = pairs
  site = "block3"
  c = small_dcgan.site_shape(site)[-1]
  rng = np.random.default_rng(2)
  masks = np.stack([np.ones(c), rng.random(c) < 0.5, rng.random(c) < 0.2]).astype(np.float32)

  def predict(images):
    r = images[..., 0].reshape(-1, 2, 32, 2, 32).mean(axis=(2, 4)).reshape(-1, 4)
    return {"reddest_quadrant": r, "tl": images[:, :32, :32].mean(axis=(1, 2))}

  kinds = {"reddest_quadrant": "categorical", "tl": "continuous"}
  ref_follows, ref_valid = _reference_counts(small_dcgan, site, masks, z1, z2, predict, kinds)
  res = factors.factor_transfer(
    small_dcgan, site, masks, z1, z2, predict, kinds, pair_chunk=4, mask_chunk=2
  )
  np.testing.assert_array_equal(res.follows[0], ref_follows)
  np.testing.assert_array_equal(res.valid[0], ref_valid)
  assert np.all(ref_valid > 0)
  assert res.shares()[0].tolist() == [1.0, 1.0]


def test_groups_are_subsets(planted, planted_pairs):
  z1, z2 = planted_pairs
  masks = np.stack([A, B, np.array([1, 0, 1, 0], np.float32)])
  groups = np.arange(40) % 3
  res = factors.factor_transfer(
    planted, SITE, masks, z1, z2, _planted_predict, KINDS, groups=groups, pair_chunk=8
  )
  assert res.counts.tolist() == [14, 13, 13]
  for g in range(3):
    sub = factors.factor_transfer(
      planted, SITE, masks, z1[groups == g], z2[groups == g], _planted_predict, KINDS
    )
    np.testing.assert_array_equal(res.follows[g], sub.follows[0])
    np.testing.assert_array_equal(res.valid[g], sub.valid[0])


def test_bad_input(planted, planted_pairs):
  z1, z2 = planted_pairs
  run = lambda masks=A, predict=_planted_predict, kinds=KINDS, **kw: factors.factor_transfer(
    planted, SITE, masks, z1, kw.pop("z2", z2), predict, kinds, **kw
  )
  with pytest.raises(ValueError, match=r"masks must have shape \[M, 4\]"):
    run(masks=np.ones((2, 5)))
  with pytest.raises(ValueError, match="lacks factor"):
    run(kinds={**KINDS, "eyes": "categorical"})
  with pytest.raises(ValueError, match="categorical factor 'left' must be class scores"):
    run(predict=lambda x: {**_planted_predict(x), "left": x.mean(axis=(1, 2, 3))})
  with pytest.raises(ValueError, match="continuous factor 'right_rgb' must be"):
    run(predict=lambda x: {**_planted_predict(x), "right_rgb": x[:1, 0, 0]})
  with pytest.raises(ValueError, match=r"kinds\['left'\] must be"):
    run(kinds={**KINDS, "left": "ordinal"})
  with pytest.raises(ValueError, match="predict must return a dict"):
    run(predict=lambda x: x)
  with pytest.raises(ValueError, match="same number of latent codes"):
    run(z2=z2[:3])
  with pytest.raises(ValueError, match="groups must be"):
    run(groups=np.zeros(3, int))
  with pytest.raises(ValueError, match="labels must lie in"):
    factors.factor_masks(np.array([0, 1, 2]), 2)


def test_summary_statistics_by_hand():
  s = np.array([[0.9, 0.2, 0.5], [0.1, 0.6, 0.5], [0.2, 0.1, np.nan]])
  whole = np.array([1.0, 0.8, 1.0])
  e = factors.exclusivity_per_factor(s, whole)
  np.testing.assert_allclose(e, [(0.9 - 0.15) / 1.0, (0.6 - 0.15) / 0.8, np.nan])
  assert factors.exclusivity(s, whole) == pytest.approx(np.nanmean(e))
  assert factors.best_module_share(s) == pytest.approx((0.9 + 0.6) / 2)
  with pytest.raises(ValueError, match=r"whole must be \[F\] = \[3\]"):
    factors.exclusivity(s, whole[:2])
  with pytest.raises(ValueError, match="K >= 2"):
    factors.exclusivity(s[:1], whole)
  # Layout of factor_masks: modules, whole site, random partitions with the same sizes.
  labels = np.array([0, 1, 1, 2, 2, 2])
  m = factors.factor_masks(labels, 3, n_null=4, seed=1)
  assert m.shape == (3 + 1 + 12, 6)
  np.testing.assert_array_equal(m[:3].argmax(0), labels)
  np.testing.assert_array_equal(m[3], 1)
  for r in range(4):
    part = m[4 + 3 * r : 7 + 3 * r]
    np.testing.assert_array_equal(part.sum(0), 1)
    np.testing.assert_array_equal(part.sum(1), [1, 2, 3])


def test_bootstrap_and_summary(planted, planted_pairs):
  z1, z2 = planted_pairs
  labels = np.array([0, 0, 1, 1])
  masks = factors.factor_masks(labels, 2, n_null=3, seed=0)
  res = factors.factor_transfer(
    planted, SITE, masks, z1, z2, _planted_predict, KINDS, groups=np.arange(40) % 8
  )
  out = factors.factor_summary(res, 2, 3, n_boot=200)
  assert out["exclusivity"] == 1.0 and out["exclusivity_ci"] == [1.0, 1.0]
  np.testing.assert_array_equal(out["matrix"], [[1, 0, 1, 0], [0, 1, 0, 1]])
  # Each null partition pairs one left and one right channel, or is the planted one.
  for r, value in enumerate(out["exclusivity_null"]):
    part = masks[3 + 2 * r : 5 + 2 * r]
    planted_like = part[:, :2].sum(1).tolist() in ([2, 0], [0, 2])
    assert (value == 1.0) == planted_like
  # The bootstrap agrees with an explicit resample of the groups.
  mixed = factors.factor_transfer(
    planted,
    SITE,
    np.stack([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]], dtype=np.float32),
    z1,
    z2,
    _planted_predict,
    KINDS,
    groups=np.arange(40) % 8,
  )
  stat = lambda s: factors.exclusivity(s[:2], s[2])
  est, lo, hi = factors.bootstrap_groups(mixed.follows, mixed.valid, stat, n_boot=50, seed=3)
  assert est == pytest.approx(stat(mixed.shares()))
  rng = np.random.default_rng(3)
  reps = []
  for _ in range(50):
    idx = rng.integers(0, 8, 8)
    reps.append(stat(factors.transfer_shares(mixed.follows[idx].sum(0), mixed.valid[idx].sum(0))))
  assert (lo, hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
  assert lo < hi
  sub = factors.factor_summary(res, 2, 3, n_boot=10, only=["right", "left"])
  assert sub["factors"] == ["right", "left"]
  np.testing.assert_array_equal(sub["matrix"], [[0, 1], [1, 0]])
  assert sub["valid"] == [out["valid"][1], out["valid"][0]]
  with pytest.raises(ValueError, match="only must name some of the factors"):
    factors.factor_summary(res, 2, 3, only=["hair"])
  with pytest.raises(ValueError, match="transfer has 9 masks.*lays out 11"):
    factors.factor_summary(res, 2, 4)


def test_plot_factor_matrix(tmp_path):
  path = plots.plot_factor_matrix(
    str(tmp_path / "m.png"), [[0.1, np.nan], [1, 0.5]], ["m0", "whole"], ["hair", "eyes"]
  )
  assert (tmp_path / "m.png").stat().st_size > 1000 and path.endswith("m.png")
  with pytest.raises(ValueError, match=r"matrix must be \[2, 3\]"):
    plots.plot_factor_matrix(str(tmp_path / "x.png"), np.zeros((2, 2)), ["a", "b"], ["x", "y", "z"])


# ---- hybrid realism ---------------------------------------------------------------------
def test_hybrid_realism_matches_direct_fd(small_dcgan):
  featnet = quality.load_featnet()
  site, n = "block2", 60
  c = small_dcgan.site_shape(site)[-1]
  half = (np.arange(c) % 2).astype(np.float32)
  masks = np.stack([np.ones(c), half])
  res = realism.hybrid_realism(
    small_dcgan, site, masks, featnet, n=n, seed=4, pair_chunk=16, mask_chunk=1
  )
  k1, k2 = jax.random.split(jax.random.key(4))
  z1, z2 = small_dcgan.sample_latents(k1, n), small_dcgan.sample_latents(k2, n)
  (mu0, s0), _ = quality.real_stats(featnet, n)
  direct = lambda images: quality.frechet_distance_from_stats(
    *quality.gaussian_stats(featnet.features(np.asarray(images))), mu0, s0
  )
  assert res.n == n and res.fd.shape == (2,)
  assert res.plain_fd == pytest.approx(direct(small_dcgan(z1)), rel=1e-3)
  assert res.fd[0] == pytest.approx(direct(small_dcgan(z2)), rel=1e-3)  # whole-site swap
  assert res.fd[1] == pytest.approx(direct(cf.hybrids(small_dcgan, site, half, z1, z2)), rel=1e-3)
  assert res.floor == pytest.approx(quality.real_floor(featnet, n))
  assert res.floor < res.plain_fd
  with pytest.raises(ValueError, match="n must be an integer >= 2"):
    realism.hybrid_realism(small_dcgan, site, masks, featnet, n=1)
  with pytest.raises(ValueError, match="give both z1 and z2"):
    realism.hybrid_realism(small_dcgan, site, masks, featnet, n=n, z1=z1)
