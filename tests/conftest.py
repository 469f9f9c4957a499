"""Shared fixtures: small generators so the suite stays fast on 2 CPU cores."""

import jax
import numpy as np
import pytest

import cfmod_jax as cf

# Exact float32 matmuls everywhere (matters on accelerators; a no-op on CPU).
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def small_dcgan():
  return cf.init_generator("dcgan", seed=3, width=8, latent_dim=16)


@pytest.fixture(scope="session")
def pairs(small_dcgan):
  k1, k2 = jax.random.split(jax.random.key(42))
  return small_dcgan.sample_latents(k1, 6), small_dcgan.sample_latents(k2, 6)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
