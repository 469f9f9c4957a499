"""Resumable sweeps: a SIGKILLed run resumes to bitwise-identical maps, and
results of another model, seed or configuration are never reused."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax.sweep import SweepConfig, eim_sweep, generator_fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "sweep_worker.py")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _blocks(cache):
  return sorted(glob.glob(os.path.join(cache, "eims", "*", "block_*.npz")))


def test_killed_sweep_resumes_bitwise(tmp_path):
  ref_out = tmp_path / "ref.npz"
  subprocess.run([sys.executable, WORKER, str(tmp_path / "ref_cache"), str(ref_out)],
                 env=_env(), check=True, timeout=600)
  ref = np.load(ref_out)
  assert int(ref["computed"]) == 15

  cache = tmp_path / "cache"
  out = tmp_path / "out.npz"
  proc = subprocess.Popen([sys.executable, WORKER, str(cache), str(out)], env=_env())
  deadline = time.time() + 300
  while len(_blocks(cache)) < 3 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = len(_blocks(cache))
  assert 3 <= done_before < 15, "the run must be killed in the middle of the sweep"
  assert not out.exists()
  subprocess.run([sys.executable, WORKER, str(cache), str(out)], env=_env(), check=True,
                 timeout=600)
  got = np.load(out)
  assert int(got["computed"]) == 15 - done_before  # finished blocks were not recomputed
  np.testing.assert_array_equal(got["eims"], ref["eims"])
  np.testing.assert_array_equal(got["groups"], ref["groups"])


def test_cache_is_keyed_by_model_seed_and_config(tmp_path):
  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  other = cf.init_generator("dcgan", seed=4, width=4, latent_dim=8)
  assert generator_fingerprint(gen) != generator_fingerprint(other)
  cfg = SweepConfig(n_pairs=8, block_pairs=4, seed=0, pair_chunk=4, mask_chunk=4)
  first = eim_sweep(gen, "block3", cfg, str(tmp_path))
  assert first.computed_blocks == 2
  again = eim_sweep(gen, "block3", cfg, str(tmp_path))
  assert again.computed_blocks == 0 and again.key == first.key
  np.testing.assert_array_equal(again.eims, first.eims)
  variants = [(other, "block3", cfg), (gen, "block3", SweepConfig(8, 4, 1, 4, 4)),
              (gen, "block3", SweepConfig(8, 4, 0, 2, 4)), (gen, "block2", cfg)]
  for g, site, c in variants:
    res = eim_sweep(g, site, c, str(tmp_path))
    assert res.computed_blocks == 2 and res.key != first.key
  # A corrupted block file is recomputed, not trusted.
  path = os.path.join(tmp_path, "eims", first.key, "block_00001.npz")
  with open(path, "wb") as f:
    f.write(b"garbage")
  healed = eim_sweep(gen, "block3", cfg, str(tmp_path))
  assert healed.computed_blocks == 1
  np.testing.assert_array_equal(healed.eims, first.eims)


def test_sweep_equals_direct_eims(tmp_path):
  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  cfg = SweepConfig(n_pairs=10, block_pairs=4, seed=2, pair_chunk=3, mask_chunk=4)
  res = eim_sweep(gen, "block2", cfg, str(tmp_path))
  assert res.eim_groups.shape == (3, 16, 64, 64) and list(res.counts) == [4, 4, 2]
  from cfmod_jax.sweep import block_latents
  for b in range(3):
    z1, z2 = block_latents(gen, 2, b, cfg.block_size(b))
    c = gen.site_shape("block2")[-1]
    want = cf.influence_maps(gen, "block2", np.eye(c), z1, z2)
    np.testing.assert_allclose(res.eim_groups[b], want, rtol=2e-4, atol=1e-9)
  np.testing.assert_allclose(res.eims, np.average(res.eim_groups, axis=0, weights=[4, 4, 2]),
                             rtol=1e-5)


def test_bad_sweep_config(tmp_path):
  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  with pytest.raises(ValueError, match="block_pairs=8 exceeds n_pairs=4"):
    eim_sweep(gen, "block2", SweepConfig(n_pairs=4, block_pairs=8), str(tmp_path))
  with pytest.raises(ValueError, match="n_pairs must be a positive integer"):
    eim_sweep(gen, "block2", SweepConfig(n_pairs=0), str(tmp_path))
  assert not os.listdir(tmp_path)
