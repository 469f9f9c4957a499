"""Reliability: atomic writes, the run lock, run manifests, and clear errors for
garbage arguments (each case here was accepted silently or failed deep inside
jax/flax before)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax import fileio
from cfmod_jax._validate import check_key, check_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gen():
  return cf.init_generator("dcgan", seed=0, width=4, latent_dim=8)


@pytest.fixture(scope="module")
def z(gen):
  k1, k2 = jax.random.split(jax.random.key(7))
  return gen.sample_latents(k1, 2), gen.sample_latents(k2, 2)


# ---- fileio -------------------------------------------------------------------------------
def test_atomic_writes_roundtrip_and_leave_no_temporary_files(tmp_path):
  fileio.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
  fileio.atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")
  fileio.atomic_write_json(tmp_path / "c.json", {"x": [1, 2], "y": (3,)})
  fileio.atomic_savez(tmp_path / "d.npz", a=np.arange(3), b=np.eye(2))
  fileio.atomic_savez(tmp_path / "e.data", compress=False, a=np.arange(4))
  assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
  assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
  assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2], "y": [3]}
  with np.load(tmp_path / "d.npz") as d:
    np.testing.assert_array_equal(d["b"], np.eye(2))
  with np.load(tmp_path / "e.data") as d:  # the name is kept exactly (no .npz added)
    np.testing.assert_array_equal(d["a"], np.arange(4))
  assert sorted(os.listdir(tmp_path)) == ["a.bin", "c.json", "d.npz", "e.data", "sub"]
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / "a.bin").st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "fig.png"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError, match="writer died"):
    with fileio.atomic_path(path) as tmp:
      assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("writer died")
  assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]
  with pytest.raises(TypeError):  # unserialisable JSON: nothing written
    fileio.atomic_write_json(path, {"x": object()})
  assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]
  with fileio.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(b"new")
  assert path.read_bytes() == b"new"


def test_run_lock_excludes_a_second_run(tmp_path):
  with fileio.RunLock(tmp_path / "out") as lock:
    assert lock.held
    with pytest.raises(
      fileio.OutputLockedError,
      match=f"another run is writing {tmp_path / 'out'} \\(pid {os.getpid()}",
    ):
      fileio.RunLock(tmp_path / "out").acquire()
  with fileio.RunLock(tmp_path / "out"):  # released on exit
    pass


def test_lock_of_a_killed_process_does_not_block(tmp_path):
  out = tmp_path / "out"
  code = (
    "import sys, time; from cfmod_jax import fileio;"
    "lock = fileio.RunLock(sys.argv[1]).acquire();"  # kept referenced: held
    "print('locked', flush=True); time.sleep(600)"
  )
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
    [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, env=env, text=True
  )
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(fileio.OutputLockedError, match=f"pid {proc.pid} "):
      fileio.RunLock(out).acquire()
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
  assert os.path.exists(out / ".lock")  # the stale file is still there…
  deadline = time.time() + 10
  while True:  # …but the kernel dropped the lock with the process
    try:
      fileio.RunLock(out).acquire().release()
      break
    except fileio.OutputLockedError:
      assert time.time() < deadline
      time.sleep(0.05)


def test_run_manifest(tmp_path):
  assert fileio.read_manifest(tmp_path) is None
  assert fileio.manifest_matches(tmp_path, {"a": 1}, "f") is None
  settings = {"n_pairs": 8, "sites": ("block1", "block2"), "path": tmp_path}
  fileio.write_manifest(tmp_path, settings, "abc")
  meta = fileio.read_manifest(tmp_path)
  assert meta["fingerprint"] == "abc" and meta["settings"]["sites"] == ["block1", "block2"]
  assert fileio.manifest_matches(tmp_path, settings, "abc") is True
  assert fileio.manifest_matches(tmp_path, {**settings, "n_pairs": 9}, "abc") is False
  assert fileio.manifest_matches(tmp_path, settings, "other") is False
  (tmp_path / fileio.MANIFEST_FILE).write_text('{"format": "cfmod_jax.run/1", "sett')
  with pytest.raises(ValueError, match="run.json is unreadable"):
    fileio.read_manifest(tmp_path)


# ---- arguments --------------------------------------------------------------------------
def test_check_seed_and_key():
  assert check_seed(0) == 0 and check_seed(np.int64(5)) == 5
  for bad in (-1, 1.0, True, "3", None, 2**63):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
      check_seed(bad)
  check_key(jax.random.key(0)), check_key(jax.random.PRNGKey(0))
  for bad in (0, np.zeros(2, np.int32), "key", jax.random.split(jax.random.key(0))):
    with pytest.raises(ValueError, match="key must be a jax.random key"):
      check_key(bad)


@pytest.mark.parametrize(
  "arch,kwargs,pattern",
  [
    ("dcgan", dict(width=0), "width must be a positive integer"),
    ("dcgan", dict(latent_dim=0), "latent_dim must be a positive integer"),
    ("vae", dict(width=-4), "width must be a positive integer"),
    ("dcgan", dict(width="8"), "width must be a positive integer"),
    ("began", dict(width=8.0), "width must be a positive integer"),
    ("began", dict(skip="yes"), "skip must be True or False"),
    ("dcgan", dict(depth=3), "unknown argument\\(s\\) depth for arch='dcgan'"),
    ("dcgan", dict(seed=-1), "seed must be a non-negative integer"),
  ],
)
def test_init_generator_rejects_garbage(arch, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    cf.init_generator(arch, **kwargs)


def test_wrong_variables_name_the_first_mismatch(gen):
  other = cf.models.build_module("dcgan", width=8, latent_dim=8)
  with pytest.raises(
    ValueError,
    match=r"variables do not fit the module DCGANGenerator.*"
    r"params/stages_0/bn/bias has shape \(32,\), DCGANGenerator expects "
    r"\(64,\)",
  ):
    cf.Generator(other, gen.variables)
  with pytest.raises(ValueError, match="variables must be a dict"):
    cf.Generator(gen.module, [1, 2])
  params_only = {"params": gen.variables["params"]}
  with pytest.raises(ValueError, match="batch_stats/stages_0/bn/mean is missing"):
    cf.Generator(gen.module, params_only)


def test_sample_latents_rejects_bad_key_and_n(gen):
  with pytest.raises(ValueError, match="n must be a positive integer, got True"):
    gen.sample_latents(jax.random.key(0), True)
  with pytest.raises(ValueError, match="key must be a jax.random key.*got int"):
    gen.sample_latents(3, 2)
  with pytest.raises(ValueError, match="key must be a jax.random key"):
    cf.elementary_influence_maps(gen, "block2", 2, key=42)


def test_non_generator_is_named(gen, z):
  m = np.zeros(gen.site_shape("block2")[-1])
  for call in (
    lambda: cf.hybrids("dcgan", "block2", m, *z),
    lambda: cf.influence_maps(None, "block2", m, *z),
    lambda: cf.elementary_influence_maps(gen.module, "block2", 2),
    lambda: cf.interventions.elementary_influence_map_sums({}, "block2", *z),
  ):
    with pytest.raises(ValueError, match="gen must be a cfmod_jax.Generator"):
      call()


def test_complex_and_nan_masks_are_named(gen, z):
  c = gen.site_shape("block2")[-1]
  m = np.zeros((1, c))
  with pytest.raises(ValueError, match="masks must be real .* got complex"):
    cf.hybrids(gen, "block2", m + 0.5j, *z)
  nan = m.copy()
  nan[0, 3] = np.nan
  with pytest.raises(ValueError, match=r"masks contains NaN \(first at index \(0, 3\)\)"):
    cf.influence_maps(gen, "block2", nan, *z)


def test_traced_out_of_range_masks_give_nan_not_extrapolation(gen, z):
  c = gen.site_shape("block2")[-1]
  masks = np.zeros((3, c), np.float32)
  masks[0, : c // 2] = 1.0
  masks[1, 2] = 5.0  # out of range
  masks[2, 0] = np.nan  # NaN
  f = jax.jit(lambda m: cf.hybrids(gen, "block2", m, *z))
  out = np.asarray(f(masks))
  assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
  eager = np.asarray(cf.hybrids(gen, "block2", masks[:1], *z))
  np.testing.assert_allclose(out[0], eager[0], atol=1e-6)
  assert np.isfinite(out[0]).all()
  # Gradients of in-range masks still flow.
  g = jax.grad(lambda m: cf.hybrids(gen, "block2", m, *z).sum())(jnp.full((c,), 0.5))
  assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_empty_groups_are_rejected(gen, z):
  m = np.eye(gen.site_shape("block2")[-1])[:2]
  with pytest.raises(ValueError, match=r"group\(s\) \[1\] have none"):
    cf.interventions.influence_map_sums(gen, "block2", m, *z, groups=np.array([0, 2]))
