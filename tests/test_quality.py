"""Fréchet distance, the shipped feature network, and the real-vs-real floor."""

import jax
import numpy as np
import pytest

from cfmod_jax import checkpoints
from cfmod_jax.data import synthfaces
from cfmod_jax.lab import quality
from cfmod_jax.models import init_generator


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  d = 6
  a = rng.normal(size=(500, d)) @ rng.normal(size=(d, d))
  assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  # A mean shift adds exactly its squared norm.
  shift = np.arange(d, dtype=np.float64)
  assert quality.frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-6)
  # N(0, I) vs N(0, 4I): d · (1 + 4 − 2·2) = d.
  eye = np.eye(d)
  assert quality.frechet_distance_from_stats(
    np.zeros(d), eye, np.zeros(d), 4 * eye
  ) == pytest.approx(d, rel=1e-9)
  # Commuting covariances: Σ (√λ₁ − √λ₂)².
  l1, l2 = np.array([1.0, 2, 3, 4, 5, 6]), np.array([6.0, 1, 1, 2, 9, 0.5])
  expected = np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
  assert quality.frechet_distance_from_stats(
    np.zeros(d), np.diag(l1), np.zeros(d), np.diag(l2)
  ) == pytest.approx(expected, rel=1e-9)
  # Symmetric.
  b = rng.normal(size=(400, d)) * 2
  assert quality.frechet_distance(a, b) == pytest.approx(quality.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r"\[N, D\] with N >= 2"):
    quality.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


@pytest.fixture(scope="module")
def featnet():
  return quality.load_featnet()


def test_shipped_featnet_predicts_the_factors(featnet):
  faces = synthfaces.generate(200, seed=(99, 1))
  pred = featnet.predict(faces.images)
  assert np.mean(pred["hair_color"] == faces.factors["hair_color"]) > 0.95
  assert np.mean(pred["hair_style"] == faces.factors["hair_style"]) > 0.9
  assert np.sqrt(np.mean((pred["skin_tone"] - faces.factors["skin_tone"]) ** 2)) < 0.15
  assert featnet.features(faces.images).shape == (200, featnet.module.feature_dim)


def test_distance_is_zero_for_identical_sets_and_grows_with_a_shift(featnet):
  images = synthfaces.generate(300, seed=(99, 2)).images
  feats = featnet.features(images)
  assert quality.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
  darker = np.clip(images - 0.3, -1, 1)  # a global brightness shift
  shifted = quality.frechet_distance(feats, featnet.features(darker))
  assert shifted > 10 * quality.real_floor(featnet, 300)


def test_floor_is_below_an_untrained_generator(featnet):
  untrained = quality.sample_quality(init_generator("dcgan", seed=0, width=8), featnet, n=300)
  assert untrained.floor == pytest.approx(quality.real_floor(featnet, 300))
  assert 0 < untrained.floor < untrained.fd / 10
  trained = quality.sample_quality(checkpoints.load_generator("dcgan-synthfaces"), featnet, n=300)
  assert trained.floor == untrained.floor
  assert trained.fd < untrained.fd / 3
  assert "floor" in str(trained)


def test_featnet_errors(small_dcgan):
  with pytest.raises(checkpoints.CheckpointError, match="valid names: featnet-synthfaces"):
    quality.load_featnet("nope")
  with pytest.raises(ValueError, match="n must be an integer >= 2"):
    quality.sample_quality(small_dcgan, n=1)


def test_predict_fn_and_proba_agree_with_predict(featnet):
  faces = synthfaces.generate(40, seed=(99, 3))
  hard = featnet.predict(faces.images)
  fn = featnet.predict_fn()
  assert featnet.predict_fn() is fn and featnet.features_fn() is featnet.features_fn()
  soft = jax.jit(fn)(faces.images)
  proba = featnet.predict_proba(faces.images)
  assert set(soft) == set(hard) == set(proba)
  for name, n in quality.CATEGORICAL:
    assert soft[name].shape == (40, n)
    np.testing.assert_allclose(np.sum(soft[name], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(soft[name], axis=-1), hard[name])
    np.testing.assert_allclose(proba[name], soft[name], rtol=1e-5, atol=1e-6)
  for name, *_ in quality.CONTINUOUS:
    assert soft[name].shape == hard[name].shape
    np.testing.assert_allclose(soft[name], hard[name], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    jax.jit(featnet.features_fn())(faces.images),
    featnet.features(faces.images),
    rtol=1e-5,
    atol=1e-5,
  )
  with pytest.raises(ValueError, match=r"images must be \[N, 64, 64, 3\]"):
    featnet.predict_proba(faces.images[:, :32])
