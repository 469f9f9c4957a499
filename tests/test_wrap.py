"""Sites anywhere in unmodified Linen/NNX generators (cfmod_jax.wrap): the wrapped
shipped models equal the staged ones; user models without any cfmod_jax base
class, at sites inside their blocks, equal a hand-written reference; masks stay
jit arguments; the suffix compiles to the staged FLOPs; bad paths are named."""

import functools
import importlib.util
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfmod_jax as cf
from cfmod_jax.wrap import LinenGenerator, NNXGenerator, wrap_linen, wrap_nnx

SLOW = "compiles wrapped Linen/NNX generators against hand-written references"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_example():
  path = os.path.join(ROOT, "docs", "examples", "own_generator.py")
  spec = importlib.util.spec_from_file_location("own_generator", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # dataclasses resolve the Linen fields' annotations there
  spec.loader.exec_module(mod)
  return mod


ex = _load_example()
LATENT = 8


def _pairs(gen, n):
  k1, k2 = jax.random.split(jax.random.key(11))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


def _random_masks(c, m, seed=0):
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.random((m - 1, c)) < 0.5, rng.random((1, c))]).astype(np.float32)


# ---- the shipped architectures, wrapped as plain Linen modules --------------------------
def _he_scaled(gen):
  """The generator with He-scaled kernels: images of order 0.1 instead of DCGAN's
  N(0, 0.02) initialisation's 1e-6, so that absolute tolerances mean something."""

  def scale(path, x):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      return x / jnp.std(x) * np.sqrt(2.0 / np.prod(x.shape[:-1]))
    return x

  params = jax.tree_util.tree_map_with_path(scale, gen.variables["params"])
  return cf.Generator(gen.module, {**gen.variables, "params": params}, name=gen.name)


@pytest.mark.parametrize(
  "arch,kwargs,sites,eim_site",
  [
    ("dcgan", dict(width=4), ("stages_1", "stages_2"), "stages_1"),
    ("vae", dict(width=4), ("stages_2",), None),
    ("began", dict(width=5, skip=True), ("stages_1", "stages_2"), "stages_1"),
  ],
)
def test_wrapped_shipped_model_equals_staged(arch, kwargs, sites, eim_site):
  """Site ``stages_i`` of the wrapped module is the staged site ``block{i+1}``.
  BEGAN with skip connections: the layers before the site also feed later blocks,
  and both versions feed them z1's codes in a hybrid. DCGAN's staged EIMs take the
  fast linear path, the wrapped ones the mask path."""
  staged = _he_scaled(cf.init_generator(arch, seed=2, latent_dim=LATENT, **kwargs))
  wrapped = wrap_linen(staged.module, staged.variables, sites[::-1], latent_shape=(LATENT,))
  assert isinstance(wrapped, cf.Generator) and wrapped.sites == sites
  z1, z2 = _pairs(staged, 3)
  base = np.asarray(staged(z1))
  assert base.std() > 0.02
  if arch == "dcgan":
    np.testing.assert_allclose(wrapped(z1), base, atol=1e-6)
  for site in sites:
    block = f"block{int(site[-1]) + 1}"
    assert wrapped.site_shape(site) == staged.site_shape(block)
    masks = _random_masks(staged.site_shape(block)[-1], 3)
    want = np.asarray(cf.hybrids(staged, block, masks, z1, z2))
    got = np.asarray(cf.hybrids(wrapped, site, masks, z1, z2, mask_chunk=2))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - base[None]).max() > 1e-2  # the masks act
  if eim_site is not None:
    block, key = f"block{int(eim_site[-1]) + 1}", jax.random.key(5)
    eims = np.asarray(
      cf.elementary_influence_maps(
        wrapped, eim_site, n_pairs=4, key=key, pair_chunk=2, mask_chunk=4
      )
    )
    want = np.asarray(
      cf.elementary_influence_maps(staged, block, n_pairs=4, key=key, pair_chunk=2, mask_chunk=4)
    )
    assert want.max() > 1e-3
    np.testing.assert_allclose(eims, want, rtol=2e-4, atol=1e-6 * float(want.max()))


def test_wrapped_suffix_compiles_to_staged_flops():
  """The suffix re-traces the layers before the site; under jit XLA drops them
  (nothing else reads them), so the compiled suffix costs what the staged one does."""
  staged = cf.init_generator("dcgan", seed=0, width=4, latent_dim=LATENT)
  wrapped = wrap_linen(
    staged.module, staged.variables, ["stages_1", "stages_3"], latent_shape=(LATENT,)
  )
  # stages_3: the suffix re-traces four stages before the site, all dead code.
  z = jax.ShapeDtypeStruct((4, LATENT), jnp.float32)

  def flops(gen, site):
    h = jax.ShapeDtypeStruct((4, *gen.site_shape(site)), jnp.float32)
    fn = jax.jit(functools.partial(gen.suffix, site=site))
    return fn.lower(gen.variables, h, z).compile().cost_analysis()["flops"]

  want = flops(staged, "block4")
  assert want > 0 and flops(wrapped, "stages_3") == pytest.approx(want, rel=1e-6)
  prefix = lambda g, s: (
    jax.jit(functools.partial(g.prefix, site=s))
    .lower(g.variables, z)
    .compile()
    .cost_analysis()["flops"]
  )
  assert prefix(wrapped, "stages_1") == pytest.approx(prefix(staged, "block2"), rel=1e-6)


# ---- a user's Linen generator, sites inside its blocks ----------------------------------
@pytest.fixture(scope="module")
def own_linen():
  module = ex.OwnLinenGenerator(latent_dim=LATENT, width=4)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, LATENT)))
  gen = wrap_linen(
    module, variables, ["block2/conv1", "block1"], latent_shape=(LATENT,), name="own-linen"
  )
  return module, variables, gen


def _linen_reference(module, variables, z1, z2, mask):
  """Hybrid at block2/conv1 for one pair, by calling the bound layers by hand."""
  g = module.bind(variables)

  def up_to_site(z):
    x = g.block1(g.project(z).reshape(1, 4, 4, 2 * module.width))
    u = ex.upsample(x)
    return u, g.block2.conv1(nn.relu(u))

  u1, a1 = up_to_site(z1[None])
  _, a2 = up_to_site(z2[None])
  h = (1 - mask) * a1 + mask * a2
  x = g.block2.conv2(nn.relu(h)) + g.block2.shortcut(u1)  # the shortcut keeps z1's input
  return np.asarray(jnp.tanh(g.to_rgb(nn.relu(g.block3(x)))))[0]


def test_own_linen_generator_hybrids_match_reference(own_linen):
  module, variables, gen = own_linen
  assert gen.sites == ("block1", "block2/conv1")
  assert gen.site_shape("block2/conv1") == (16, 16, 4)
  z1, z2 = _pairs(gen, 3)
  masks = _random_masks(4, 3)
  hyb = np.asarray(cf.hybrids(gen, "block2/conv1", masks, z1, z2, mask_chunk=2))
  maps = np.asarray(cf.influence_maps(gen, "block2/conv1", masks, z1, z2, pair_chunk=2))
  base = np.asarray(module.apply(variables, z1))
  for mi, m in enumerate(masks):
    refs = [_linen_reference(module, variables, z1[n], z2[n], m) for n in range(3)]
    np.testing.assert_allclose(hyb[mi], np.stack(refs), atol=1e-5)
    np.testing.assert_allclose(maps[mi], np.abs(np.stack(refs) - base).mean(axis=(0, 3)), atol=1e-5)
  assert np.abs(hyb[0] - base).max() > 1e-3


class _CompactGenerator(nn.Module):
  """Compact style: the submodules are named Dense_0, Conv_0, Conv_1."""

  @nn.compact
  def __call__(self, z):
    x = nn.Dense(4 * 4 * 6)(z).reshape(z.shape[0], 4, 4, 6)
    x = nn.relu(nn.Conv(5, (3, 3))(ex.upsample(x)))
    return jnp.tanh(nn.Conv(3, (3, 3))(x))


def test_compact_linen_generator_site_by_auto_name():
  module = _CompactGenerator()
  variables = jax.jit(module.init)(jax.random.key(1), jnp.zeros((1, LATENT)))
  gen = wrap_linen(module, variables, {"conv": "Conv_0"}, latent_shape=(LATENT,))
  assert gen.submodule_paths == ("Dense_0", "Conv_0", "Conv_1")
  z1, z2 = _pairs(gen, 2)
  mask = np.array([1, 0, 1, 0, 0.5], np.float32)
  got = np.asarray(cf.hybrids(gen, "conv", mask, z1, z2))
  p = variables["params"]
  conv0 = lambda z: nn.Conv(5, (3, 3)).apply(
    {"params": p["Conv_0"]},
    ex.upsample(nn.Dense(96).apply({"params": p["Dense_0"]}, z).reshape(len(z), 4, 4, 6)),
  )
  h = (1 - mask) * conv0(z1) + mask * conv0(z2)
  want = jnp.tanh(nn.Conv(3, (3, 3)).apply({"params": p["Conv_1"]}, nn.relu(h)))
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---- a user's NNX generator --------------------------------------------------------------
@pytest.fixture(scope="module")
def own_nnx():
  model = ex.OwnNNXGenerator(LATENT, width=4, rngs=nnx.Rngs(0))
  # Running statistics away from their initial (0, 1), so that inference mode matters.
  for i, block in enumerate(model.blocks):
    c = block.norm.mean.shape
    block.norm.mean[...] = 0.3 * jax.random.normal(jax.random.key(i), c)
    block.norm.var[...] = jnp.exp(jax.random.normal(jax.random.key(10 + i), c))
  gen = wrap_nnx(
    model, {"b2.conv1": "blocks/1/conv1", "b3": "blocks/2"}, latent_shape=(LATENT,), name="own-nnx"
  )
  return model, gen


def _nnx_reference(model, z1, z2, mask):
  """Hybrid at blocks/1/conv1 for one pair, layer by layer on an eval-mode copy."""
  m = nnx.merge(*nnx.split(model))
  m.eval()
  b1 = m.blocks[1]

  def up_to_site(z):
    x = m.blocks[0](m.project(z).reshape(1, 4, 4, 2 * m.width))
    return b1.conv1(ex.upsample(x))

  h = (1 - mask) * up_to_site(z1[None]) + mask * up_to_site(z2[None])
  x = nnx.relu(b1.conv2(nnx.relu(b1.norm(h))))
  return np.asarray(jnp.tanh(m.to_rgb(m.blocks[2](x))))[0]


def test_own_nnx_generator_hybrids_match_reference(own_nnx):
  model, gen = own_nnx
  assert isinstance(gen, NNXGenerator) and gen.sites == ("b2.conv1", "b3")
  assert gen.site_shape("b2.conv1") == (16, 16, 4)
  z1, z2 = _pairs(gen, 3)
  masks = _random_masks(4, 3, seed=1)
  hyb = np.asarray(cf.hybrids(gen, "b2.conv1", masks, z1, z2))
  for mi, m in enumerate(masks):
    for n in range(3):
      np.testing.assert_allclose(hyb[mi, n], _nnx_reference(model, z1[n], z2[n], m), atol=1e-5)
  # Inference mode on a copy: the user's model is still in training mode and untouched.
  assert model.blocks[1].norm.use_running_average is False
  assert type(model.blocks[1].__dict__["conv1"]) is nnx.Conv
  train_out = model(z1)  # batch statistics, dropout: differs from the generator's output
  assert np.abs(np.asarray(train_out) - np.asarray(gen(z1))).max() > 1e-3


def test_with_variables_gives_an_untrained_twin(own_linen, own_nnx):
  _, _, gen = own_linen
  with pytest.raises(ValueError, match="no generic re-initialisation"):
    own_nnx[1].init_variables(jax.random.key(0))
  twin = gen.with_variables(gen.init_variables(jax.random.key(7)), name="twin")
  assert twin.sites == gen.sites and twin.name == "twin" and gen.name == "own-linen"
  z1, _ = _pairs(gen, 2)
  prefix = jax.jit(functools.partial(gen.prefix, site="block1"))
  assert np.abs(np.asarray(prefix(twin.variables, z1) - prefix(gen.variables, z1))).max() > 1e-3
  with pytest.raises(ValueError, match="has shape"):
    gen.with_variables(jax.tree.map(lambda a: a[..., :1], gen.variables))


# ---- masks are jit arguments; the prefix runs once per pair chunk ---------------------------
def test_masks_are_jit_arguments(own_linen):
  module, variables, _ = own_linen
  gen = wrap_linen(module, variables, ["block2/conv1"], latent_shape=(LATENT,))
  traces = {"prefix": 0, "suffix": 0}
  for name in traces:

    def counted(*args, _name=name, _fn=getattr(gen, name), **kwargs):  # noqa: B008
      traces[_name] += 1
      return _fn(*args, **kwargs)

    setattr(gen, name, counted)
  z1, z2 = _pairs(gen, 2)
  a, b = _random_masks(4, 5, seed=2), _random_masks(4, 5, seed=3)
  out_a = cf.hybrids(gen, "block2/conv1", a, z1, z2, mask_chunk=5)
  # One trace: the prefix of z1 and z2 once, the suffix once (the body of the map over
  # masks) — not once per mask.
  assert traces == {"prefix": 2, "suffix": 1}
  out_b = cf.hybrids(gen, "block2/conv1", b, z1, z2, mask_chunk=5)
  assert traces == {"prefix": 2, "suffix": 1}, "new masks of the same shape recompiled"
  assert gen._jit_cache[("hybrids", "block2/conv1", 5)]._cache_size() == 1
  assert np.abs(np.asarray(out_a) - np.asarray(out_b)).max() > 1e-4
  cf.influence_maps(gen, "block2/conv1", a, z1, z2, mask_chunk=5)
  n = dict(traces)
  cf.influence_maps(gen, "block2/conv1", b, z1, z2, mask_chunk=5)
  assert traces == n


# ---- bad input ---------------------------------------------------------------------------
def test_unknown_path_lists_available_paths(own_linen, own_nnx):
  module, variables, _ = own_linen
  with pytest.raises(
    ValueError,
    match=r"'block2/conv9'.*available paths: project, block1/conv1"
    r".*block2/conv1, .*block2/shortcut",
  ):
    wrap_linen(module, variables, ["block2/conv9"], latent_shape=(LATENT,))
  model, _ = own_nnx
  with pytest.raises(ValueError, match=r"'blocks/5/conv1'.*available paths: .*blocks/1/conv1, "):
    wrap_nnx(model, ["blocks/5/conv1"], latent_shape=(LATENT,))


@pytest.mark.parametrize(
  "call,pattern",
  [
    (lambda m, v: wrap_linen(m, v, "block1", latent_shape=(LATENT,)), "got the string 'block1'"),
    (lambda m, v: wrap_linen(m, v, [], latent_shape=(LATENT,)), "sites is empty"),
    (lambda m, v: wrap_linen(m, v, ["block1"]), "latent_shape is required"),
    (lambda m, v: wrap_linen(m, v, ["block1"], latent_shape=(0,)), "positive ints"),
    (
      lambda m, v: wrap_linen(m, v, ["block1"], latent_shape=(LATENT + 1,)),
      r"forward pass fails on latents \[3, 9\]",
    ),
    (
      lambda m, v: wrap_linen(m, v, {"a": "block1", "b": 3}, latent_shape=(LATENT,)),
      "'/'-separated submodule paths",
    ),
    (
      lambda m, v: wrap_nnx(m, ["block1"], latent_shape=(LATENT,)),
      "model must be a flax.nnx.Module",
    ),
  ],
)
def test_bad_arguments(own_linen, call, pattern):
  module, variables, _ = own_linen
  with pytest.raises(ValueError, match=pattern):
    call(module, variables)


class _RematGenerator(nn.Module):
  @nn.compact
  def __call__(self, z):
    x = nn.remat(_InnerBlock)(name="blk")(z)
    return jnp.tanh(nn.Dense(12)(x)).reshape(-1, 2, 2, 3)


class _InnerBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(6, name="inner")(x))


def test_site_inside_a_lifted_transform_is_refused():
  module = _RematGenerator()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 4)))
  for path in ("blk", "blk/inner"):
    with pytest.raises(ValueError, match=f"'{path}' is computed inside a lifted transform"):
      wrap_linen(module, variables, [path], latent_shape=(4,))
  gen = wrap_linen(module, variables, ["Dense_0"], latent_shape=(4,))
  z1, z2 = _pairs(gen, 2)
  np.testing.assert_allclose(cf.hybrids(gen, "Dense_0", np.ones(12), z1, z2), gen(z2), atol=1e-6)


def test_unknown_site_name_and_no_linear_split(own_linen):
  gen = own_linen[2]
  assert isinstance(gen, LinenGenerator) and not gen.has_linear_split("block1")
  with pytest.raises(
    ValueError, match="site='block2' is not a site.*valid sites: block1, block2/conv1"
  ):
    cf.hybrids(gen, "block2", np.zeros(4), np.zeros((1, LATENT)), np.zeros((1, LATENT)))
  with pytest.raises(ValueError, match="method='linear' needs a linear split"):
    cf.elementary_influence_maps(gen, "block1", n_pairs=2, method="linear")
