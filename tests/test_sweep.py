"""Resumable sweeps: a SIGKILLed run resumes to bitwise-identical maps, and
results of another model, seed or configuration are never reused."""

import glob
import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax import fingerprint
from cfmod_jax.fingerprint import generator_fingerprint
from cfmod_jax.sweep import SweepConfig, eim_sweep
from experiments import _specs as specs

SLOW = "kills and resumes sweeps in subprocesses"

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
  subprocess.run(
    [sys.executable, WORKER, str(tmp_path / "ref_cache"), str(ref_out)],
    env=_env(),
    check=True,
    timeout=600,
  )
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
  subprocess.run(
    [sys.executable, WORKER, str(cache), str(out)], env=_env(), check=True, timeout=600
  )
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
  variants = [
    (other, "block3", cfg),
    (gen, "block3", SweepConfig(8, 4, 1, 4, 4)),
    (gen, "block3", SweepConfig(8, 4, 0, 2, 4)),
    (gen, "block2", cfg),
  ]
  for g, site, c in variants:
    res = eim_sweep(g, site, c, str(tmp_path))
    assert res.computed_blocks == 2 and res.key != first.key
  # A corrupted block file is recomputed, not trusted.
  path = os.path.join(tmp_path, "eims", first.key, "block_00001.npz")
  with open(path, "wb") as f:
    f.write(b"garbage")
  from cfmod_jax.sweep import CacheBlockWarning

  with pytest.warns(CacheBlockWarning, match=f"{path}: not an .npz"):
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
  np.testing.assert_allclose(
    res.eims, np.average(res.eim_groups, axis=0, weights=[4, 4, 2]), rtol=1e-5
  )


def test_bad_sweep_config(tmp_path):
  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  with pytest.raises(ValueError, match="block_pairs=8 exceeds n_pairs=4"):
    eim_sweep(gen, "block2", SweepConfig(n_pairs=4, block_pairs=8), str(tmp_path))
  with pytest.raises(ValueError, match="n_pairs must be a positive integer"):
    eim_sweep(gen, "block2", SweepConfig(n_pairs=0), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_sweep_precision_and_auto_chunks(tmp_path):
  """precision reaches the EIMs and the cache key (its hash recomputed here from
  the payload); None chunks are valid and give the same float32 EIMs."""
  import dataclasses
  import hashlib
  import json

  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  cfg = SweepConfig(n_pairs=8, block_pairs=4, seed=0, pair_chunk=4, mask_chunk=4)
  old = dataclasses.asdict(cfg)
  for name in ("target_reliability", "min_blocks"):
    old.pop(name)
  payload = json.dumps(
    {"v": 1, "generator": generator_fingerprint(gen), "site": "block3", **old},
    sort_keys=True,
    default=int,
  )
  f32 = eim_sweep(gen, "block3", cfg, str(tmp_path))
  assert f32.key == hashlib.sha256(payload.encode()).hexdigest()[:24]
  bf16 = eim_sweep(gen, "block3", dataclasses.replace(cfg, precision="bfloat16"), str(tmp_path))
  assert bf16.key != f32.key and bf16.computed_blocks == 2
  assert not np.array_equal(bf16.eims, f32.eims)
  rel = np.abs(bf16.eims - f32.eims).mean() / f32.eims.mean()
  assert rel < 0.05, rel
  auto = SweepConfig(n_pairs=8, block_pairs=4, seed=0, pair_chunk=None, mask_chunk=None)
  res = eim_sweep(gen, "block3", auto, str(tmp_path / "auto"))
  np.testing.assert_allclose(res.eims, f32.eims, rtol=1e-5, atol=1e-9)
  for bad, match in (
    (dict(precision="fp16"), "precision must be one of 'float32', 'tf32', 'bfloat16'"),
    (dict(pair_chunk=0), r"pair_chunk must be a positive integer or None"),
    (dict(mask_chunk=2.5), r"mask_chunk must be a positive integer or None"),
  ):
    with pytest.raises(ValueError, match=match):
      eim_sweep(gen, "block3", dataclasses.replace(cfg, **bad), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


# ---- damaged cache blocks: recomputed with a warning naming the file ------------------------
_DAMAGE_CFG = SweepConfig(n_pairs=4, block_pairs=2, seed=5, pair_chunk=2, mask_chunk=8)


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
  """A finished sweep's cache folder and result."""
  gen = cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)
  cache = tmp_path_factory.mktemp("undamaged")
  res = eim_sweep(gen, "block3", _DAMAGE_CFG, str(cache))
  assert res.computed_blocks == 2
  return gen, str(cache), res


def _flip_byte(path):
  with open(path, "rb") as f:
    raw = bytearray(f.read())
  # A byte inside the sums' data (the first array in the zip, after its headers).
  raw[len(raw) // 3] ^= 0x5A
  with open(path, "wb") as f:
    f.write(bytes(raw))


def _empty(path):
  with open(path, "wb"):
    pass


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _rewrite(**arrays):
  def damage(path):
    with open(path, "wb") as f:
      np.savez(f, **arrays)

  return damage


def _damages(shape):
  sums = np.ones(shape, np.float32)
  from cfmod_jax.sweep import _block_digest

  h = np.array(_block_digest(sums, 2))
  return {
    "empty": _empty,
    "truncated": _truncate,
    "flipped_byte": _flip_byte,
    "wrong_shape": _rewrite(sums=np.ones(shape[1:], np.float32), count=np.int64(2), sha256=h),
    "wrong_dtype": _rewrite(sums=sums.astype(np.float64), count=np.int64(2), sha256=h),
    "missing_array": _rewrite(other=sums, count=np.int64(2), sha256=h),
    "wrong_count": _rewrite(sums=sums, count=np.int64(3), sha256=h),
    # Only blocks with a checksum are accepted.
    "no_checksum": _rewrite(sums=sums, count=np.int64(2)),
    # A valid zip whose content no longer matches its checksum (what a flipped
    # byte inside data that still decompresses looks like).
    "checksum_mismatch": _rewrite(
      sums=sums * 2, count=np.int64(2), sha256=np.array(_block_digest(sums, 2))
    ),
  }


@pytest.mark.parametrize(
  "kind",
  [
    "empty",
    "truncated",
    "flipped_byte",
    "wrong_shape",
    "wrong_dtype",
    "missing_array",
    "wrong_count",
    "checksum_mismatch",
    "no_checksum",
  ],
)
def test_damaged_block_is_recomputed_with_a_warning(undamaged, tmp_path, kind):
  import shutil

  from cfmod_jax.sweep import CacheBlockWarning

  gen, cache, ref = undamaged
  shutil.copytree(cache, tmp_path / "cache")
  path = os.path.join(tmp_path, "cache", "eims", ref.key, "block_00001.npz")
  _damages(ref.eim_groups.shape[1:])[kind](path)
  with pytest.warns(CacheBlockWarning, match=f"damaged sweep cache block {path}"):
    res = eim_sweep(gen, "block3", _DAMAGE_CFG, str(tmp_path / "cache"))
  assert res.computed_blocks == 1  # only the damaged block
  np.testing.assert_array_equal(res.eims, ref.eims)
  np.testing.assert_array_equal(res.eim_groups, ref.eim_groups)
  # The rewritten block is sound again: the next run loads everything silently.
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")
    again = eim_sweep(gen, "block3", _DAMAGE_CFG, str(tmp_path / "cache"))
  assert again.computed_blocks == 0


def test_bad_seed_is_rejected_before_any_work(undamaged, tmp_path):
  gen = undamaged[0]
  for seed in (-1, 1.5, True, "0", None, 2**64):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
      eim_sweep(gen, "block2", SweepConfig(n_pairs=4, block_pairs=2, seed=seed), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_sweep_rejects_a_non_generator(tmp_path):
  with pytest.raises(ValueError, match="gen must be a cfmod_jax.Generator"):
    eim_sweep("dcgan-synthfaces", "block2", SweepConfig(4, 2), str(tmp_path))


# ---- the fingerprint covers the generator's code -------------------------------------------
# Two generators of this source differ only in ACT: same class names, fields and weights.
_CODE = '''
import flax.linen as nn
import jax
import jax.numpy as jnp

import cfmod_jax as cf
from cfmod_jax.generator import VectorLatentGenerator


class Project(nn.Module):
  width: int

  @nn.compact
  def __call__(self, z, train=False):
    return nn.Dense(4 * 4 * self.width)(z).reshape(z.shape[0], 4, 4, self.width)


class Up(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train=False):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return ACT(nn.Conv(self.width, (3, 3))(x))


class ToRGB(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jnp.tanh(nn.Conv(3, (3, 3))(x))


class CodeGen(VectorLatentGenerator):
  latent_dim: int = 8
  width: int = 4
  site_names = ("block1", "block2")

  def setup(self):
    self.stages = [Project(self.width), Up(self.width), ToRGB()]


def make_generator():
  module = CodeGen()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8)))
  variables = jax.tree.map(lambda v: v * 4.0, variables)  # larger activations
  return cf.Generator(module, variables, name="code-gen")
'''


def _code_gen(tmp_path, tag, act):
  folder = tmp_path / tag
  folder.mkdir()
  path = folder / "code_gen.py"  # the same file name (and module name) in every folder
  path.write_text(_CODE.replace("ACT", act))
  return specs.generator_from_spec(f"{path}:make_generator"), f"{path}:make_generator"


def test_fingerprint_covers_the_code(tmp_path):
  relu, spec = _code_gen(tmp_path, "a", "nn.relu")
  other, _ = _code_gen(tmp_path, "b", "nn.sigmoid")
  same, _ = _code_gen(tmp_path, "c", "nn.relu")  # the same code in another file
  assert type(relu.module).__name__ == type(other.module).__name__ == "CodeGen"
  assert repr(relu.module) == repr(other.module)
  jax.tree.map(np.testing.assert_array_equal, relu.variables, other.variables)
  z = relu.sample_latents(jax.random.key(0), 4)
  assert np.abs(np.asarray(relu(z)) - np.asarray(other(z))).max() > 0.1  # different images
  fp = generator_fingerprint(relu)
  assert generator_fingerprint(other) != fp and generator_fingerprint(same) == fp

  cfg = SweepConfig(n_pairs=4, block_pairs=2, seed=0, pair_chunk=2, mask_chunk=4)
  first = eim_sweep(relu, "block1", cfg, str(tmp_path / "cache"))
  assert first.computed_blocks == 2
  second = eim_sweep(other, "block1", cfg, str(tmp_path / "cache"))
  assert second.computed_blocks == 2 and second.key != first.key  # nothing reused
  assert not np.allclose(second.eims, first.eims)
  third = eim_sweep(same, "block1", cfg, str(tmp_path / "cache"))
  assert third.computed_blocks == 0 and third.key == first.key  # same code: reused

  # Deterministic across processes (another hash seed, another import order).
  code = (
    "import sys; from cfmod_jax import fingerprint; from experiments import _specs as specs; "
    "print(fingerprint.generator_fingerprint(specs.generator_from_spec(sys.argv[1])))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, spec],
    env=dict(_env(), PYTHONHASHSEED="7"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  assert out.stdout.strip().splitlines()[-1] == fp


def test_fingerprint_of_unreadable_code_uses_code_version(monkeypatch):
  """Classes made by exec have no readable source: without code_version the
  fingerprint is salted per process (with a warning), with it it is stable."""
  import types

  mod = types.ModuleType("cfmod_exec_made")
  monkeypatch.setitem(sys.modules, mod.__name__, mod)
  exec(compile(_CODE.replace("ACT", "nn.relu"), "<exec>", "exec"), mod.__dict__)  # pylint: disable=exec-used
  gen = mod.make_generator()
  with pytest.warns(fingerprint.CodeFingerprintWarning, match=r"set the generator's code_version"):
    salted = generator_fingerprint(gen)
  monkeypatch.setattr(fingerprint, "_PROCESS_SALT", "another process")
  with pytest.warns(fingerprint.CodeFingerprintWarning):
    assert generator_fingerprint(gen) != salted
  gen.code_version = "v1"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    v1 = generator_fingerprint(gen)
    monkeypatch.setattr(fingerprint, "_PROCESS_SALT", "a third process")
    assert generator_fingerprint(gen) == v1
    gen.code_version = "v2"
    assert generator_fingerprint(gen) != v1
