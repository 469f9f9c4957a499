"""`modules.find_modules` is the explicit EIM sweep → choose_k → cluster_channels sequence,
bit for bit, for each source of EIMs; bad arguments are refused before any work."""

import jax
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax import clustering
from cfmod_jax.interventions import elementary_influence_maps
from cfmod_jax.modules import find_modules
from cfmod_jax.sweep import SweepConfig, eim_sweep

SITE = "block3"
SMALL = dict(n_pairs=8, block_pairs=2, pair_chunk=4, mask_chunk=4, n_boot=3, seed=1)


@pytest.fixture(scope="module")
def gen():
  return cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)


@pytest.fixture(scope="module")
def sweep(gen):
  cfg = SweepConfig(n_pairs=8, block_pairs=2, seed=1, pair_chunk=4, mask_chunk=4)
  return eim_sweep(gen, SITE, cfg)


def _same_clustering(a, b):
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.templates, b.templates)
  np.testing.assert_array_equal(a.weights, b.weights)


def test_auto_k_is_the_explicit_sequence(gen, sweep, tmp_path):
  got = find_modules(gen, SITE, k_values=(2, 3, 40), cache_dir=str(tmp_path), **SMALL)
  np.testing.assert_array_equal(got.eims, sweep.eims)
  np.testing.assert_array_equal(got.eim_groups, sweep.eim_groups)
  np.testing.assert_array_equal(got.counts, [2, 2, 2, 2])
  k, curve = clustering.choose_k(sweep.eim_groups, [2, 3], n_boot=3, seed=1)  # 40 > C: left out
  assert got.k == k and got.curve == curve and set(curve) == {2, 3}
  _same_clustering(got.clustering, clustering.cluster_channels(sweep.eims, k, seed=1))
  np.testing.assert_array_equal(got.labels, got.clustering.labels)
  assert got.templates.shape == (k, *gen.image_shape[:2])
  assert len(list((tmp_path / "eims").glob("*/block_*.npz"))) == 4  # the resumable cache
  again = find_modules(gen, SITE, k_values=(2, 3, 40), cache_dir=str(tmp_path), **SMALL)
  assert again.sweep.computed_blocks == 0  # resumed from the cache
  np.testing.assert_array_equal(again.labels, got.labels)


def test_fixed_k_is_the_explicit_sequence(gen, sweep):
  got = find_modules(gen, SITE, k=3, method="kmeans", **SMALL)
  curve = clustering.stability_curve(sweep.eim_groups, [3], n_boot=3, seed=1, method="kmeans")
  assert got.k == 3 and got.curve == curve
  _same_clustering(got.clustering, clustering.cluster_channels(sweep.eims, 3, "kmeans", seed=1))
  no_curve = find_modules(gen, SITE, k=3, **{**SMALL, "n_boot": 0})
  assert no_curve.curve == {}
  _same_clustering(no_curve.clustering, clustering.cluster_channels(sweep.eims, 3, seed=1))


def test_pairs_from_a_key_and_given_groups(gen):
  key = jax.random.key(5)
  groups = np.asarray(
    elementary_influence_maps(gen, SITE, 8, key, n_groups=4, pair_chunk=4, mask_chunk=4)
  )
  got = find_modules(gen, SITE, key=key, k=2, **SMALL)
  np.testing.assert_array_equal(got.eim_groups, groups)
  assert got.sweep is None
  _same_clustering(got.clustering, clustering.cluster_channels(groups.mean(0), 2, seed=1))
  given = find_modules(gen, SITE, eim_groups=groups, k=2, n_boot=3, seed=1)
  _same_clustering(given.clustering, got.clustering)
  assert given.curve == got.curve
  one = find_modules(gen, SITE, key=key, k=2, n_pairs=8, block_pairs=8, n_boot=0, pair_chunk=4)
  whole = np.asarray(elementary_influence_maps(gen, SITE, 8, key, pair_chunk=4))
  np.testing.assert_array_equal(one.eims, whole)


@pytest.mark.parametrize(
  "bad, name",
  [
    (dict(k=0), "k"),
    (dict(k=99), "k"),
    (dict(k="two"), "k"),
    (dict(k_values=()), "k_values"),
    (dict(k_values=(64, 99)), "k_values"),
    (dict(method="spectral"), "method"),
    (dict(n_boot=1), "n_boot"),
    (dict(k=2, n_boot=-1), "n_boot"),
    (dict(seed=-1), "seed"),
    (dict(pair_seed=1.5), "seed"),
    (dict(percentile=100), "percentile"),
    (dict(sigma=-1.0), "sigma"),
    (dict(rule="gap"), "rule"),
    (dict(n_restarts=0), "n_restarts"),
    (dict(nmf_init="nndsvd"), "nmf_init"),
    (dict(n_pairs=0), "n_pairs"),
    (dict(block_pairs=16), "block_pairs"),
    (dict(pair_chunk=0), "pair_chunk"),
    (dict(precision="fp8"), "precision"),
    (dict(target_reliability=1.5), "target_reliability"),
    (dict(n_pairs=4, block_pairs=4), "groups"),
    (dict(key=jax.random.key(0), eim_groups=np.ones((2, 16, 64, 64))), "eim_groups"),
    (dict(key=jax.random.key(0), cache_dir="somewhere"), "cache_dir"),
    (dict(eim_groups=np.ones((2, 3, 64, 64))), "eim_groups"),
  ],
)
def test_bad_argument_is_named_before_any_work(gen, bad, name, tmp_path, monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")

  monkeypatch.setattr("cfmod_jax.modules.eim_sweep", no_work)
  monkeypatch.setattr("cfmod_jax.modules.elementary_influence_maps", no_work)
  kwargs = {**dict(n_pairs=8, block_pairs=2), **bad}
  with pytest.raises(ValueError, match=name):
    find_modules(gen, SITE, **kwargs)
  with pytest.raises(ValueError, match="site"):
    find_modules(gen, "block9")
  assert not list(tmp_path.iterdir())
