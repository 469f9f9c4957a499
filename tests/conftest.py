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


# The fast inner loop (`pytest -m fast`, < 3 minutes on a 2-core CPU): the host-side
# statistics, the engine's error paths, ops, data, checkpoints, factor transfer and
# the planted-structure suite. The README's command runs every test, these included.
FAST_FILES = frozenset(
  {
    "test_bad_inputs.py",
    "test_checkpoints.py",
    "test_clustering.py",
    "test_distributed.py",
    "test_factors.py",
    "test_metrics.py",
    "test_ops.py",
    "test_planted.py",
    "test_quality.py",
    "test_reliability.py",
    "test_robustness.py",
    "test_style.py",
    "test_synthfaces.py",
  }
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.path.name in FAST_FILES:
      item.add_marker(pytest.mark.fast)
