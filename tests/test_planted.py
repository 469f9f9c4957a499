"""Tests of the planted-structure suite (cfmod_jax.testing.planted) and of k=auto on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax.generator import StagedGenerator
from cfmod_jax.testing import planted as P

SITE = P.SITE


def _region_share(maps, masks):
  """[C, K]: share of each map's mass inside each region."""
  return np.einsum("chw,khw->ck", maps, masks) / maps.sum(axis=(1, 2))[:, None]


# ----------------------------------------------------------------------------- knobs


def test_variant_knobs():
  assert set(P.VARIANTS) >= {
    "quadrants",
    "unequal",
    "overlap",
    "large",
    "noise",
    "variation",
    "mixed",
  }
  for name in ("unequal", "mixed"):
    spec = P.variant(name)
    assert min(spec.group_sizes) <= 0.10 * spec.n_channels
  for spec in P.VARIANTS.values():
    assert 32 <= spec.n_channels <= 64 and spec.image_size in (32, 64)
    areas = P.region_masks(spec.regions, spec.image_size).mean(axis=(1, 2))
    assert areas.max() <= 0.41
  large = P.region_masks(P.variant("large").regions, 32).mean(axis=(1, 2))
  assert large.max() >= 0.39  # regions up to 40 % of the image
  assert P.variant("noise").n_noise > 0 and P.variant("variation").variation > 0
  with pytest.raises(ValueError, match="variant='nope' is unknown"):
    P.variant("nope")


@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25])
def test_tiled_regions_overlap_by_the_requested_fraction(overlap):
  masks = P.region_masks(P.tiled_regions(2, 2, overlap), 64)
  for a, b in ((0, 1), (2, 3), (0, 2), (1, 3)):  # side-by-side and stacked neighbours
    shared = (masks[a] * masks[b]).sum() / masks[a].sum()
    assert shared == pytest.approx(overlap, abs=2.0 / 64)
  assert np.all(masks.sum(axis=0) >= 1)  # the tiles cover the image
  widths = P.region_masks(P.strip_regions((0.4, 0.4, 0.2)), 40).mean(axis=(1, 2))
  np.testing.assert_allclose(widths, [0.4, 0.4, 0.2])


def test_bad_specs():
  with pytest.raises(ValueError, match="one rectangle per group"):
    P.PlantedSpec((3, 3), P.tiled_regions(1, 1))
  with pytest.raises(ValueError, match="variation must be in"):
    P.PlantedSpec((3,), P.tiled_regions(1, 1), variation=1.0)
  with pytest.raises(ValueError, match="overlap must be in"):
    P.tiled_regions(2, 2, overlap=1.0)


def test_generator_protocol_and_truth():
  spec = P.PlantedSpec((6, 3), P.tiled_regions(1, 2), n_noise=2, variation=0.5)
  gen, truth = P.planted_generator(spec, seed=1)
  assert isinstance(gen, cf.Generator) and isinstance(gen.module, StagedGenerator)
  assert gen.sites == (SITE,) and gen.site_shape(SITE) == (4, 4, 11)
  img = np.asarray(gen(gen.sample_latents(jax.random.key(0), 3)))
  assert img.shape == (3, 32, 32, 3) and np.abs(img).max() <= 1.0 and img.std() > 0.05
  assert truth.k == 2 and truth.masks.shape == (2, 32, 32)
  np.testing.assert_array_equal(np.bincount(truth.labels[truth.labels >= 0]), [6, 3])
  assert np.sum(truth.labels == -1) == 2
  gains = np.asarray(gen.variables["planted"]["stages_1"]["gains"])
  assert gains.min() >= 0.5 and gains.max() <= 1.0 and gains.std() > 0.05
  _, truth2 = P.planted_generator(spec, seed=2)
  assert not np.array_equal(truth.labels, truth2.labels)  # the seed shuffles channels
  flat = P.planted_generator(P.PlantedSpec((4,), P.tiled_regions(1, 1)), seed=0)[0]
  assert np.all(np.asarray(flat.variables["planted"]["stages_1"]["gains"]) == 1.0)


def test_each_channel_writes_only_inside_its_region_and_nonlinearly():
  """Direct hybrids (no EIM code): swapping one channel changes pixels of its
  group's region only; doubling the swap does not double the change."""
  spec = P.PlantedSpec((4, 3, 2), P.strip_regions((0.4, 0.4, 0.2)), variation=0.5)
  gen, truth = P.planted_generator(spec, seed=0)
  k1, k2 = jax.random.split(jax.random.key(1))
  z1, z2 = gen.sample_latents(k1, 8), gen.sample_latents(k2, 8)
  h1, h2 = gen.run_prefix(SITE, z1), gen.run_prefix(SITE, z2)
  base = np.asarray(gen.run_suffix(SITE, h1, z1))
  c = spec.n_channels
  onehot = jnp.eye(c)[:, None, None, None, :]  # [C, 1, 1, 1, C]
  delta = (h2 - h1)[None] * onehot  # [C, N, S, S, C]
  z_rep = jnp.tile(z1, (c, 1))
  once = np.asarray(gen.run_suffix(SITE, (h1[None] + delta).reshape(-1, 4, 4, c), z_rep))
  twice = np.asarray(gen.run_suffix(SITE, (h1[None] + 2 * delta).reshape(-1, 4, 4, c), z_rep))
  d1 = np.abs(once.reshape(c, 8, 32, 32, 3) - base[None]).mean(axis=(1, 4))  # [C, H, W]
  d2 = np.abs(twice.reshape(c, 8, 32, 32, 3) - base[None]).mean(axis=(1, 4))
  for ch in range(c):
    region = truth.masks[truth.labels[ch]] > 0
    assert d1[ch][~region].max() == 0.0
    assert d1[ch][region].mean() > 1e-3
  ratio = d2.sum(axis=(1, 2)) / d1.sum(axis=(1, 2))
  # a linear path would give exactly 2 for every channel
  assert np.median(np.abs(ratio - 2.0)) > 0.05 and np.all(ratio < 1.999)


def test_noise_channels_are_not_region_specific():
  spec = P.variant("noise")
  gen, truth = P.planted_generator(spec, seed=0)
  eims = np.asarray(cf.elementary_influence_maps(gen, SITE, 16, jax.random.key(3)))
  share = _region_share(eims, truth.masks)  # quadrants: area 1/4
  grouped = truth.labels >= 0
  own = share[np.flatnonzero(grouped), truth.labels[grouped]]
  assert own.min() > 0.999
  noise = share[~grouped]
  assert noise.shape[0] == spec.n_noise
  assert noise.min() > 0.1 and noise.max() < 0.45  # spread over every quadrant


# ----------------------------------------------------------------------------- k=auto


@pytest.fixture(scope="module")
def suite_groups():
  cache = {}

  def get(name, seed):
    if (name, seed) not in cache:
      gen, _ = P.planted_generator(P.variant(name), seed)
      cache[name, seed] = P.planted_eim_groups(gen, 32, 4, seed)
    return cache[name, seed]

  return get


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
@pytest.mark.parametrize("name, seed", [("unequal", 3), ("large", 4), ("noise", 5)])
def test_k_auto_recovers_planted_modules(suite_groups, name, seed, method):
  r = P.run_case(
    P.variant(name),
    seed,
    method,
    k_values=range(2, 7),
    n_boot=3,
    eim_groups=suite_groups(name, seed),
  )
  assert r["k"] == r["k_true"]
  assert r["ari"] >= 0.95
