"""Hybrids and influence maps: exact special cases, a plain-loop reference,
chunk-size invariance, a user-defined generator, and bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf

SLOW = "compiles the engine for many generators, sites and chunk sizes"

# Values are images in [-1, 1]; XLA may round differently for different batch
# layouts, so "exact" comparisons allow float32 rounding noise.
ATOL = 1e-6


def _reference_hybrid(gen, site, mask, z1, z2):
  """One pair, one mask, no vmap/scan: prefix each code, mix in numpy, suffix."""
  a1 = np.asarray(gen.run_prefix(site, z1[None]))
  a2 = np.asarray(gen.run_prefix(site, z2[None]))
  m = np.asarray(mask, np.float32)
  h = a1 * (1 - m) + a2 * m
  return np.asarray(gen.run_suffix(site, jnp.asarray(h), z1[None]))[0]


def test_empty_and_full_masks(small_dcgan, pairs):
  z1, z2 = pairs
  for site in small_dcgan.sites:
    c = small_dcgan.site_shape(site)[-1]
    out = cf.hybrids(small_dcgan, site, np.stack([np.zeros(c), np.ones(c)]), z1, z2)
    assert out.shape == (2, 6, 64, 64, 3)
    np.testing.assert_allclose(out[0], small_dcgan(z1), atol=ATOL)
    np.testing.assert_allclose(out[1], small_dcgan(z2), atol=ATOL)


def test_influence_map_special_cases(small_dcgan, pairs):
  z1, z2 = pairs
  site = "block2"
  c = small_dcgan.site_shape(site)[-1]
  half = (np.arange(c) < c // 2).astype(np.float32)
  maps = cf.influence_maps(small_dcgan, site, np.stack([np.zeros(c), np.ones(c), half]), z1, z2)
  assert maps.shape == (3, 64, 64)
  assert float(maps.min()) >= 0.0
  np.testing.assert_allclose(maps[0], 0.0, atol=ATOL)
  want = np.abs(np.asarray(small_dcgan(z2)) - np.asarray(small_dcgan(z1))).mean(axis=(0, 3))
  np.testing.assert_allclose(maps[1], want, atol=ATOL)
  assert float(maps[2].mean()) > 0.05 * float(maps[1].mean()) > 0  # a real intervention acts


def test_batched_equals_plain_loop(small_dcgan, pairs):
  z1, z2 = pairs
  site = "block3"
  c = small_dcgan.site_shape(site)[-1]
  rng = np.random.default_rng(1)
  masks = np.stack([rng.random(c) < 0.3, rng.random(c) < 0.6, rng.random(c)]).astype(np.float32)
  hyb = np.asarray(cf.hybrids(small_dcgan, site, masks, z1, z2, mask_chunk=2))
  maps = np.asarray(cf.influence_maps(small_dcgan, site, masks, z1, z2, pair_chunk=4, mask_chunk=2))
  base = np.asarray(small_dcgan(z1))
  for mi, m in enumerate(masks):
    diffs = []
    for n in range(z1.shape[0]):
      ref = _reference_hybrid(small_dcgan, site, m, z1[n], z2[n])
      np.testing.assert_allclose(hyb[mi, n], ref, atol=1e-5)
      diffs.append(np.abs(ref - base[n]).mean(axis=-1))
    np.testing.assert_allclose(maps[mi], np.mean(diffs, axis=0), atol=1e-5)


def test_chunk_sizes_do_not_change_maps(small_dcgan, pairs):
  z1, z2 = pairs
  site = "block1"
  c = small_dcgan.site_shape(site)[-1]
  masks = np.eye(c, dtype=np.float32)[:7]
  ref = cf.influence_maps(small_dcgan, site, masks, z1, z2, pair_chunk=6, mask_chunk=7)
  for pc, mc in [(1, 1), (4, 3), (5, 2), (64, 64)]:
    got = cf.influence_maps(small_dcgan, site, masks, z1, z2, pair_chunk=pc, mask_chunk=mc)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_one_dimensional_mask(small_dcgan, pairs):
  z1, z2 = pairs
  c = small_dcgan.site_shape("block4")[-1]
  m = np.zeros(c)
  m[3] = 1
  assert cf.hybrids(small_dcgan, "block4", m, z1, z2).shape == (6, 64, 64, 3)
  one = cf.influence_maps(small_dcgan, "block4", m, z1, z2)
  two = cf.influence_maps(small_dcgan, "block4", m[None], z1, z2)
  assert one.shape == (64, 64)
  np.testing.assert_allclose(one, two[0], atol=ATOL)


def test_elementary_influence_maps(small_dcgan):
  site = "block2"
  c = small_dcgan.site_shape(site)[-1]
  key = jax.random.key(7)
  eims = cf.elementary_influence_maps(small_dcgan, site, n_pairs=10, key=key)
  assert eims.shape == (c, 64, 64)
  k1, k2 = jax.random.split(key)
  z1, z2 = small_dcgan.sample_latents(k1, 10), small_dcgan.sample_latents(k2, 10)
  want = cf.influence_maps(small_dcgan, site, np.eye(c), z1, z2)
  np.testing.assert_allclose(eims, want, rtol=1e-5, atol=1e-7)
  groups = cf.elementary_influence_maps(small_dcgan, site, n_pairs=10, key=key, n_groups=2)
  assert groups.shape == (2, c, 64, 64)
  np.testing.assert_allclose(groups.mean(0), eims, rtol=1e-5, atol=1e-7)
  want_first = cf.influence_maps(small_dcgan, site, np.eye(c), z1[:5], z2[:5])
  np.testing.assert_allclose(groups[0], want_first, rtol=1e-5, atol=1e-7)


class _TinyStage(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.gelu(nn.Conv(self.features, (3, 3))(x))


class _TinyProject(nn.Module):
  @nn.compact
  def __call__(self, z, train=False):
    return nn.Dense(8 * 8 * 5)(z).reshape(z.shape[0], 8, 8, 5)


class _TinyRGB(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jnp.tanh(nn.Conv(3, (1, 1))(x))


class TinyUserGenerator(cf.StagedGenerator):
  """What a user writes: stages in setup(), site names, latent shape."""

  site_names = ("proj", "conv_a", "conv_b")
  latent_shape = (4,)

  def setup(self):
    self.stages = [_TinyProject(), _TinyStage(6), _TinyStage(4), _TinyRGB()]


def test_user_defined_generator():
  module = TinyUserGenerator()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 4)))
  gen = cf.Generator(module, variables, name="tiny")
  assert gen.sites == ("proj", "conv_a", "conv_b")
  assert gen.site_shape("conv_a") == (8, 8, 6)
  z1 = gen.sample_latents(jax.random.key(1), 3)
  z2 = gen.sample_latents(jax.random.key(2), 3)
  assert gen(z1).shape == (3, 8, 8, 3)
  masks = np.eye(6)[:2]
  hyb = cf.hybrids(gen, "conv_a", masks, z1, z2)
  for n in range(3):
    np.testing.assert_allclose(
      hyb[1, n], _reference_hybrid(gen, "conv_a", masks[1], z1[n], z2[n]), atol=1e-5
    )
  eims = cf.elementary_influence_maps(gen, "conv_b", n_pairs=4)
  assert eims.shape == (4, 8, 8) and float(eims.min()) >= 0


# ---- bad input: clear errors, raised before anything is compiled ------------------------
@pytest.fixture(scope="module")
def _bad_input_weights():
  return cf.init_generator("dcgan", seed=0, width=4, latent_dim=8)


@pytest.fixture
def fresh_gen(_bad_input_weights):
  # A new Generator (empty compilation cache) around the same module and weights:
  # initialising the weights once keeps these 14 cases from paying 3 s each.
  return cf.Generator(_bad_input_weights.module, _bad_input_weights.variables)


def _bad_calls(gen):
  c = gen.site_shape("block2")[-1]
  z = np.zeros((3, 8), np.float32)
  m = np.zeros((2, c), np.float32)
  nan_z = z.copy()
  nan_z[1, 2] = np.nan
  inf_z = z.copy()
  inf_z[0, 0] = np.inf
  return [
    (
      "site='nope'.*valid sites: block1, block2, block3, block4",
      lambda: cf.hybrids(gen, "nope", m, z, z),
    ),
    ("site='nope'", lambda: cf.elementary_influence_maps(gen, "nope", n_pairs=2)),
    (r"masks must have shape \[M, 16\]", lambda: cf.influence_maps(gen, "block2", m[:, :5], z, z)),
    (r"masks values must lie in \[0, 1\]", lambda: cf.influence_maps(gen, "block2", m + 2, z, z)),
    (r"masks values must lie in \[0, 1\]", lambda: cf.hybrids(gen, "block2", m - 0.5, z, z)),
    (r"z1 must have shape \[N, 8\]", lambda: cf.hybrids(gen, "block2", m, np.zeros((3, 9)), z)),
    (r"z2 must have shape \[N, 8\]", lambda: cf.influence_maps(gen, "block2", m, z, z[:, :, None])),
    ("same number of latent codes", lambda: cf.influence_maps(gen, "block2", m, z, z[:2])),
    ("z1 is empty", lambda: cf.influence_maps(gen, "block2", m, z[:0], z[:0])),
    ("n_pairs must be a positive integer", lambda: cf.elementary_influence_maps(gen, "block2", 0)),
    ("z1 contains NaN or inf", lambda: cf.hybrids(gen, "block2", m, nan_z, z)),
    ("z2 contains NaN or inf", lambda: cf.influence_maps(gen, "block2", m, z, inf_z)),
    (
      "pair_chunk must be a positive integer",
      lambda: cf.influence_maps(gen, "block2", m, z, z, pair_chunk=0),
    ),
    ("latents must have shape", lambda: gen(np.zeros((2, 3)))),
  ]


@pytest.mark.parametrize("index", range(14))
def test_bad_input_raises_before_compiling(fresh_gen, index):
  pattern, call = _bad_calls(fresh_gen)[index]
  with pytest.raises(ValueError, match=pattern):
    call()
  assert not fresh_gen._jit_cache, "an error must be raised before any compilation"


@pytest.mark.parametrize(
  "arch,kwargs",
  [
    ("dcgan", dict(width=4, latent_dim=8)),
    ("vae", dict(width=4, latent_dim=8)),
    ("began", dict(width=6, latent_dim=8)),
    ("began", dict(width=6, latent_dim=8, batch_norm=True)),
    ("began", dict(width=6, latent_dim=8, batch_norm=True, skip=True)),
  ],
)
def test_linear_split_eims_equal_mask_path(arch, kwargs):
  gen = cf.init_generator(arch, seed=1, **kwargs)
  # BEGAN's skip connections feed z's first layer to blocks 2-4: the sites before
  # them have no linear split (masks path); block4 → to-RGB keeps it.
  linear = ["block4"] if kwargs.get("skip") else list(gen.sites)
  assert [s for s in gen.sites if gen.has_linear_split(s)] == linear
  if "batch_stats" in gen.variables:
    # Running variances away from their initial 1 (per channel, ×0.25 … ×4), so
    # that the BatchNorm layers inside each stage's ``post`` act.
    def perturb(path, x):
      if jax.tree_util.keystr(path).endswith("['var']"):
        scale = jax.random.uniform(jax.random.key(x.size), x.shape, minval=-2.0, maxval=2.0)
        return x * jnp.exp2(scale)
      return x

    stats = jax.tree_util.tree_map_with_path(perturb, gen.variables["batch_stats"])
    gen = cf.Generator(gen.module, {**gen.variables, "batch_stats": stats})
  key = jax.random.key(3)
  for site in linear:
    fast = cf.elementary_influence_maps(
      gen, site, n_pairs=5, key=key, method="linear", pair_chunk=2, mask_chunk=3
    )
    slow = cf.elementary_influence_maps(
      gen, site, n_pairs=5, key=key, method="masks", pair_chunk=2, mask_chunk=3
    )
    assert float(slow.max()) > 0
    np.testing.assert_allclose(fast, slow, rtol=2e-4, atol=1e-6 * float(slow.max()))


def test_began_skip_connections_hybrids_keep_z1_first_layer():
  """With skip connections the blocks after a site also read h0 = dense(z): a
  full mask at block2 gives z2's block2 continued with z1's h0 (not G(z2));
  checked against a plain re-implementation of the suffix."""
  gen = cf.init_generator("began", seed=2, width=5, latent_dim=8, skip=True)
  z1, z2 = gen.sample_latents(jax.random.key(0), 2), gen.sample_latents(jax.random.key(1), 2)
  out = np.asarray(cf.hybrids(gen, "block2", np.ones(5), z1, z2))
  mod, params = gen.module, gen.variables["params"]

  def suffix_by_hand(h, z):
    h0 = z @ params["stages_0"]["dense"]["kernel"] + params["stages_0"]["dense"]["bias"]
    h0 = np.asarray(h0).reshape(len(z), 8, 8, 5)
    for i in (2, 3):
      skip = np.repeat(np.repeat(h0, 2 ** (i - 1), axis=1), 2 ** (i - 1), axis=2)
      h = mod.apply(
        gen.variables, np.concatenate([h, skip], -1), method=lambda m, x, i=i: m.stages[i](x)
      )
    return np.asarray(mod.apply(gen.variables, h, method=lambda m, x: m.stages[4](x)))

  h2 = gen.run_prefix("block2", z2)
  np.testing.assert_allclose(out, suffix_by_hand(np.asarray(h2), np.asarray(z1)), atol=1e-5)
  assert np.abs(out - np.asarray(gen(z2))).max() > 1e-3  # z1's h0 matters
  np.testing.assert_allclose(
    np.asarray(cf.hybrids(gen, "block2", np.zeros(5), z1, z2)), np.asarray(gen(z1)), atol=1e-5
  )


def test_user_generator_without_split_uses_masks():
  module = TinyUserGenerator()
  gen = cf.Generator(module, module.init(jax.random.key(0), jnp.zeros((1, 4))))
  assert not gen.has_linear_split("conv_a")
  with pytest.raises(ValueError, match="method='linear' needs a linear split"):
    cf.elementary_influence_maps(gen, "conv_a", n_pairs=2, method="linear")


def test_replaced_variables_are_used():
  """Device copies of the weights are cached per generator; new weights replace them."""
  gen = cf.init_generator("dcgan", seed=0, width=4, latent_dim=8)
  other = cf.init_generator("dcgan", seed=5, width=4, latent_dim=8)
  before = cf.elementary_influence_maps(gen, "block3", n_pairs=4)
  gen.variables = other.variables
  after = cf.elementary_influence_maps(gen, "block3", n_pairs=4)
  np.testing.assert_array_equal(after, cf.elementary_influence_maps(other, "block3", n_pairs=4))
  assert float(np.abs(after - before).max()) > 0


def test_masks_from_labels_equals_plain_loop():
  from cfmod_jax.interventions import masks_from_labels

  labels = np.array([2, 0, 0, 1, 2, 2, 0])
  ref = np.zeros((4, labels.size), np.float32)
  for c, j in enumerate(labels):
    ref[j, c] = 1.0
  out = masks_from_labels(labels, 4)
  assert out.dtype == np.float32 and out.shape == (4, 7)
  np.testing.assert_array_equal(out, ref)
  np.testing.assert_array_equal(masks_from_labels(labels), ref[:3])  # k = max + 1
  with pytest.raises(ValueError, match="labels must be"):
    masks_from_labels(np.array([0.5, 1.0]))


def test_hybrid_grid_and_panel_equal_plain_loop(small_dcgan, pairs):
  from cfmod_jax import viz
  from cfmod_jax.interventions import hybrid_grid
  from cfmod_jax.viz import grid_panel

  z1, z2 = pairs
  site = "block2"
  c = small_dcgan.site_shape(site)[-1]
  masks = np.stack([np.arange(c) % 2, np.arange(c) < c // 3]).astype(np.float32)
  rows, cols = np.asarray(z1[:3]), np.asarray(z2[:2])
  grid = np.asarray(hybrid_grid(small_dcgan, site, masks, rows, cols))
  assert grid.shape == (2, 3, 2, 64, 64, 3)
  for m in range(2):
    for r in range(3):
      for d in range(2):
        want = _reference_hybrid(small_dcgan, site, masks[m], rows[r], cols[d])
        np.testing.assert_allclose(grid[m, r, d], want, atol=ATOL)
  one = np.asarray(hybrid_grid(small_dcgan, site, masks[1], rows, cols))
  np.testing.assert_allclose(one, grid[1], atol=ATOL)
  # Panel: blank corner, donors across the top, originals down the left.
  originals, donors = np.asarray(small_dcgan(rows)), np.asarray(small_dcgan(cols))
  panel = grid_panel(originals, donors, grid[1])
  cells = [np.ones((64, 64, 3), np.float32), *viz.to_unit(donors)]
  for r in range(3):
    cells += [viz.to_unit(originals[r]), *viz.to_unit(grid[1, r])]
  np.testing.assert_array_equal(panel, viz.tile(np.stack(cells), 3, pad=3))


def test_hybrid_map_reduce_custom_reductions(small_dcgan, pairs):
  """Sums per group and per-pair outputs of a user reduction equal a plain loop."""
  from cfmod_jax.interventions import hybrid_map_reduce

  z1, z2 = pairs
  site = "block2"
  c = small_dcgan.site_shape(site)[-1]
  masks = np.stack([np.arange(c) % 2, np.arange(c) < c // 3, np.ones(c)]).astype(np.float32)
  groups = np.array([0, 1, 1, 0, 2, 1])
  ref = np.stack(
    [
      np.stack([_reference_hybrid(small_dcgan, site, m, z1[i], z2[i]) for i in range(6)])
      for m in masks
    ]
  )  # [M, N, H, W, 3]
  x2 = np.asarray(small_dcgan(z2))

  def brightness(chunk, ctx, y):  # per group: Σ over pairs of the mean of each hybrid
    return jnp.einsum("jp,pg->gj", y.mean(axis=(2, 3, 4)), chunk.weights)

  def pair_fn(chunk):
    x2b = small_dcgan.suffix(chunk.variables, chunk.a2, chunk.z2, site)
    return None, jnp.einsum("p,pg->g", x2b.mean(axis=(1, 2, 3)), chunk.weights)

  out = hybrid_map_reduce(
    small_dcgan,
    site,
    masks,
    z1,
    z2,
    brightness,
    pair_fn=pair_fn,
    groups=groups,
    pair_chunk=4,
    mask_chunk=2,
  )
  want = np.stack([ref.mean(axis=(2, 3, 4))[:, groups == g].sum(1) for g in range(3)])
  np.testing.assert_allclose(out.hybrid, want, atol=1e-5)
  np.testing.assert_allclose(
    out.pair, [x2.mean(axis=(1, 2, 3))[groups == g].sum() for g in range(3)], atol=1e-5
  )
  np.testing.assert_array_equal(out.counts, [2, 3, 1])

  per = hybrid_map_reduce(
    small_dcgan,
    site,
    masks,
    z1,
    z2,
    lambda chunk, x1, y: {"y": y, "d": jnp.abs(y - x1[None]).mean(axis=(2, 3, 4))},
    per_pair=True,
    pair_chunk=4,
    mask_chunk=2,
  )
  assert per.hybrid["y"].shape == (3, 6, 64, 64, 3)
  np.testing.assert_allclose(per.hybrid["y"], ref, atol=ATOL)
  x1 = np.asarray(small_dcgan(z1))
  np.testing.assert_allclose(
    per.hybrid["d"], np.abs(ref - x1[None]).mean(axis=(2, 3, 4)), atol=1e-6
  )
