"""Shared fixtures: small generators so the suite stays fast on 2 CPU cores."""

import atexit
import shutil
import tempfile

import jax
import numpy as np
import pytest

import cfmod_jax as cf

# Exact float32 matmuls everywhere (matters on accelerators; a no-op on CPU).
jax.config.update("jax_default_matmul_precision", "highest")

# One persistent compilation cache for the test process, in a fresh folder (no program
# of an earlier run is reused): the many tests that rebuild the same tiny generator or
# jit the same function anew compile each program once. Cached programs are the same
# executables, so results are unchanged. Subprocesses do not share it (jax writes cache
# entries non-atomically: a process reading one being written would warn on stderr).
_CACHE_DIR = tempfile.mkdtemp(prefix="cfmod_test_xla_cache_")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


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


# The fast inner loop, `pytest -m fast` (< 3 minutes on a 2-core CPU; the README's
# command runs every test, these included). The rule: every test is `fast` unless
#   * its module sets `SLOW = "<one-line reason>"` (a module whose tests run the main job
#     end to end, train, compile many programs or start subprocesses), or
#   * it carries `@pytest.mark.slow(reason="...")` itself (one costly test of a fast module).
# A module or test that takes more than a few seconds on this CPU gets one of the two.
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module_reason = getattr(item.module, "SLOW", None)
    mark = item.get_closest_marker("slow")
    if mark is not None and not (mark.args or mark.kwargs.get("reason")):
      raise pytest.UsageError(f"{item.nodeid}: pytest.mark.slow needs a reason")
    if module_reason is not None and not (isinstance(module_reason, str) and module_reason):
      raise pytest.UsageError(f"{item.path.name}: SLOW must be a one-line reason")
    if module_reason is None and mark is None:
      item.add_marker(pytest.mark.fast)
