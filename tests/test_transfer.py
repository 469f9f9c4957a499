"""Cross-class module hybrids ("style transfer") on a tiny random BigGAN-deep:
shapes, exact special cases (empty / full / single-module masks), the class
sampler, files written by the library and by the command-line program, bad input."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from _helpers import random_biggan_variables

import cfmod_jax as cf
from cfmod_jax.interventions import hybrid_grid
from cfmod_jax.lab import transfer
from cfmod_jax.models import biggan as bg
from cfmod_jax.testing import tiny_biggan_config

SLOW = "compiles a tiny BigGAN-deep and runs the style-transfer CLI"

ATOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_biggan_config()  # 16×16, 4 blocks, width 4, 10 classes
CLASS_A, CLASS_B = 3, 7


class _Identity(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return x


class _Unconditional(cf.StagedGenerator):
  """Not class-conditional: latents [N, 1, 1, 3] reshaped into an image."""

  site_names = ("a",)
  latent_shape = (1, 1, 3)

  def setup(self):
    self.stages = [_Identity(), _Identity()]


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tiny_biggan"))
  bg.save_biggan(path, random_biggan_variables(TINY), TINY)
  return path


@pytest.fixture(scope="module")
def gen(biggan_dir):
  return bg.load_biggan(biggan_dir, truncation=0.5)


def test_class_sampler_and_latents(gen):
  both = transfer.class_conditional(gen, [CLASS_A, CLASS_B])
  z = np.asarray(both.sample_latents(jax.random.key(0), 64))
  y = z[:, TINY.z_dim :]
  assert set(np.argmax(y, 1)) == {CLASS_A, CLASS_B}
  np.testing.assert_array_equal(y.sum(1), 1.0)
  assert np.abs(z[:, : TINY.z_dim]).max() <= 2 * 0.5 + 1e-6  # truncated noise × truncation
  za = np.asarray(transfer.class_latents(gen, jax.random.key(1), CLASS_A, 5))
  assert za.shape == (5, TINY.latent_dim)
  assert np.all(np.argmax(za[:, TINY.z_dim :], 1) == CLASS_A)


def test_hybrid_grid_exact_cases(gen):
  site = "block1"
  c = gen.site_shape(site)[-1]
  za = transfer.class_latents(gen, jax.random.key(1), CLASS_A, 3)
  zb = transfer.class_latents(gen, jax.random.key(2), CLASS_B, 2)
  module0 = (np.arange(c) % 3 == 0).astype(np.float32)
  masks = np.stack([np.zeros(c), np.ones(c), module0])
  out = np.asarray(hybrid_grid(gen, site, masks, za, zb))
  assert out.shape == (3, 3, 2, 16, 16, 3)
  originals = np.asarray(gen(za))
  assert originals.std() > 0.05  # not a constant image
  # Empty mask: the class-A originals, whatever the donor.
  for d in range(2):
    np.testing.assert_allclose(out[0, :, d], originals, atol=ATOL)
  # Full mask: all of B's site activations, but later blocks conditioned on A's latent.
  # Reference without the masked path: prefixes, a numpy mix, one suffix call per mask.
  a_a, a_b = np.asarray(gen.run_prefix(site, za)), np.asarray(gen.run_prefix(site, zb))
  h_a, h_b = np.repeat(a_a, 2, axis=0), np.tile(a_b, (3, 1, 1, 1))
  z_rows = np.repeat(np.asarray(za), 2, axis=0)
  full = np.asarray(gen.run_suffix(site, h_b, z_rows)).reshape(3, 2, 16, 16, 3)
  np.testing.assert_allclose(out[1], full, atol=ATOL)
  mixed = h_a * (1 - module0) + h_b * module0
  one = np.asarray(gen.run_suffix(site, mixed, z_rows)).reshape(3, 2, 16, 16, 3)
  np.testing.assert_allclose(out[2], one, atol=ATOL)
  # Class conditioning stays A's: the full-mask hybrid is not the B sample.
  assert np.abs(out[1, 0, 0] - np.asarray(gen(zb))[0]).max() > 1e-3
  assert np.abs(out[2] - out[0]).max() > 1e-3  # the module does act
  # A 1-D mask gives [R, D, H, W, 3].
  one_d = hybrid_grid(gen, site, module0, za, zb)
  np.testing.assert_allclose(one_d, out[2], atol=ATOL)


def test_style_transfer_writes_panels(gen, tmp_path):
  from experiments.style_transfer import write_transfer

  res = transfer.style_transfer(gen, CLASS_A, CLASS_B, "block0", k=2, n_rows=2, n_cols=3, n_pairs=6)
  write_transfer(res, gen.name, str(tmp_path))
  c = gen.site_shape("block0")[-1]
  assert res.labels.shape == (c,) and set(res.labels) <= {0, 1}
  assert res.eims.shape == (c, 16, 16) and res.eims.min() >= 0
  assert res.hybrids.shape == (2, 2, 3, 16, 16, 3)
  assert res.originals.shape == (2, 16, 16, 3) and res.donors.shape == (3, 16, 16, 3)
  assert res.module_maps.shape == (2, 16, 16)
  np.testing.assert_array_equal(np.argmax(res.z_a[:, TINY.z_dim :], 1), CLASS_A)
  np.testing.assert_array_equal(np.argmax(res.z_b[:, TINY.z_dim :], 1), CLASS_B)
  # Every channel belongs to exactly one module.
  assert sum(int((res.labels == j).sum()) for j in range(2)) == c
  names = sorted(os.listdir(tmp_path))
  assert names == [
    "donors.png",
    "eims.png",
    "module0.png",
    "module1.png",
    "module_maps.png",
    "originals.png",
    "transfer.json",
  ]
  meta = json.loads((tmp_path / "transfer.json").read_text())
  assert meta["class_a"] == CLASS_A and meta["class_b"] == CLASS_B and meta["k"] == 2
  assert sum(meta["module_sizes"]) == c
  import matplotlib.image

  panel = matplotlib.image.imread(str(tmp_path / "module0.png"))
  assert panel.shape[:2] == (3 * 16 + 2 * 3, 4 * 16 + 3 * 3)  # (1 + rows) × (1 + cols)


def test_command_line(biggan_dir, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.style_transfer",
      f"--biggan={biggan_dir}",
      f"--class_a={CLASS_A}",
      f"--class_b={CLASS_B}",
      "--site=block2",
      "--k=2",
      "--n_rows=2",
      "--n_cols=2",
      "--n_pairs=4",
      "--truncation=0.5",
      f"--out={out}",
    ],
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert {"module0.png", "module1.png", "eims.png", "transfer.json"} <= set(os.listdir(out))
  assert json.loads((out / "transfer.json").read_text())["site"] == "block2"


def test_bad_input(gen):
  with pytest.raises(ValueError, match=r"class_a=10 is out of range.*0…9"):
    transfer.style_transfer(gen, 10, CLASS_B, "block1")
  with pytest.raises(ValueError, match=r"class_b=-1 is out of range"):
    transfer.style_transfer(gen, CLASS_A, -1, "block1")
  with pytest.raises(ValueError, match=r"must be an integer class index"):
    transfer.class_latents(gen, jax.random.key(0), 2.5, 3)
  with pytest.raises(ValueError, match=r"classes\[1\]=12 is out of range"):
    transfer.class_conditional(gen, [1, 12])
  with pytest.raises(ValueError, match=r"site='block9'.*valid sites"):
    transfer.style_transfer(gen, CLASS_A, CLASS_B, "block9")
  with pytest.raises(ValueError, match=r"k=99 exceeds the 32 channels"):
    transfer.style_transfer(gen, CLASS_A, CLASS_B, "block0", k=99)
  not_biggan = cf.Generator(_Unconditional(), {})
  with pytest.raises(TypeError, match=r"class-conditional BigGAN"):
    transfer.style_transfer(not_biggan, 0, 1, "a")
  za = transfer.class_latents(gen, jax.random.key(0), CLASS_A, 2)
  with pytest.raises(ValueError, match=r"masks must have shape"):
    hybrid_grid(gen, "block1", np.ones(5), za, za)
