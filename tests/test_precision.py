"""Reduced precision of the hybrids (cfmod_jax.precision) and chunk sizes from memory
(cfmod_jax.memory), on a width-4 DCGAN with He-scaled random weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cfmod_jax as cf
from cfmod_jax import _engine, interventions, memory
from cfmod_jax import precision as prec
from cfmod_jax.models.dcgan import DCGANGenerator

SLOW = "compiles the engine in every precision and chunk size"

U = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding error ≤ 2^-8 per stored value
SITE = "block2"  # 3 stages after it: block3, block4, the RGB layer
N = 8


def _generator() -> cf.Generator:
  """Width-4 DCGAN; kernels N(0, 2/fan_in) so that activations and images are O(1)
  (the default DCGAN init gives images of ~1e-6, useless for relative errors);
  BatchNorm at its identity statistics. Built from shapes, nothing compiled."""
  module = DCGANGenerator(latent_dim=8, width=4)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8)))
  rng = np.random.default_rng(0)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
    if path.endswith("kernel"):
      fan_in = np.prod(leaf.shape[:-1]) / (4 if len(leaf.shape) == 4 else 1)  # stride-2 taps
      flat[path] = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)
    elif path.endswith(("scale", "var")):
      flat[path] = np.ones(leaf.shape)
    else:
      flat[path] = np.zeros(leaf.shape)
  # numpy leaves (jnp.asarray would compile one transfer per distinct shape)
  variables = traverse_util.unflatten_dict(
    {k: v.astype(np.float32) for k, v in flat.items()}, sep="/"
  )
  return cf.Generator(module, variables)


@pytest.fixture(scope="module")
def gen():
  return _generator()


@pytest.fixture(scope="module")
def pairs(gen):
  k1, k2 = jax.random.split(jax.random.key(1))
  return np.asarray(gen.sample_latents(k1, N)), np.asarray(gen.sample_latents(k2, N))


def _eims(gen, z1, z2, **kwargs):
  sums, counts = interventions.elementary_influence_map_sums(gen, SITE, z1, z2, **kwargs)
  assert sums.dtype == jnp.float32  # whatever the precision
  return np.asarray(sums[0]) / np.float32(3 * counts[0])


# ---- precision ------------------------------------------------------------------------


@pytest.mark.parametrize(
  "call",
  [
    lambda g, z: cf.elementary_influence_maps(g, SITE, 4, precision="fp16"),
    lambda g, z: interventions.elementary_influence_map_sums(g, SITE, z, z, precision="bf16"),
    lambda g, z: cf.influence_maps(g, SITE, np.ones(16), z, z, precision=None),
    lambda g, z: interventions.influence_map_sums(g, SITE, np.ones(16), z, z, precision="FLOAT32"),
    lambda g, z: cf.hybrids(g, SITE, np.ones(16), z, z, precision=32),
    lambda g, z: interventions.hybrid_map_reduce(
      g, SITE, np.ones(16), z, z, lambda c, x, y: y, per_pair=True, precision="half"
    ),
  ],
)
def test_bad_precision_raises_naming_precision(call):
  g = _generator()  # fresh: nothing may be compiled before the error
  z = np.zeros((2, 8), np.float32)
  with pytest.raises(ValueError, match=r"precision must be one of 'float32', 'tf32', 'bfloat16'"):
    call(g, z)
  assert not g._jit_cache


@pytest.mark.parametrize("method", ["linear", "masks"])
def test_float32_default_and_tf32_are_bitwise_float32_on_cpu(gen, pairs, method):
  z1, z2 = pairs
  default = _eims(gen, z1, z2, method=method)
  ints = _eims(gen, z1, z2, method=method, pair_chunk=32, mask_chunk=16)
  tf32 = _eims(gen, z1, z2, method=method, precision="tf32")  # its own compiled kernel
  # A separate Generator (its own compile cache): the explicit float32 kernel is
  # compiled anew, not looked up under the default's key.
  explicit = _eims(_generator(), z1, z2, method=method, precision="float32")
  assert np.array_equal(default, explicit)
  assert np.array_equal(default, ints)  # on CPU the auto chunks are today's defaults
  assert np.array_equal(default, tf32)  # XLA's CPU backend ignores the TF32 hint
  assert default.mean() > 0.05  # a real influence, not a degenerate generator


def test_tf32_kernel_asks_for_tf32_matmuls(gen):
  """tf32 is no silent no-op: every dot/convolution of the traced kernel carries the
  TF32 precision (Precision.HIGH), which GPUs honour; float32 keeps the default."""
  z, w = jnp.zeros((4, 8)), jnp.ones((4, 1))
  masks = jnp.zeros((2, 16))
  for name in ("float32", "tf32"):
    kernels = [
      _engine.local_eim_sums(gen, SITE, 4, 4, name),
      _engine.local_hybrid_stream(gen, SITE, None, _engine.influence_sums, 4, 2, False, name),
    ]
    for k, extra in zip(kernels, [(), (masks, ())], strict=True):
      text = str(jax.make_jaxpr(k)(gen.variables, extra, z, z, w))
      found = set(re.findall(r"precision=\(?([\w.]+)", text))
      # float32 keeps the global default (tests/conftest.py sets 'highest').
      assert (found == {"Precision.HIGH"}) == (name == "tf32"), (name, found)


@pytest.mark.parametrize("method", ["linear", "masks"])
def test_bfloat16_eims_close_to_float32(gen, pairs, method):
  z1, z2 = pairs
  f32 = _eims(gen, z1, z2, method=method)
  bf16 = _eims(gen, z1, z2, method=method, precision="bfloat16")
  err = prec.relative_errors(bf16, f32)
  x = np.asarray(gen(z1))
  n_stages = len(gen.sites) - gen.site_index(SITE)  # layers after the site, each rounded
  # Bound. Every layer of the suffix stores its output in bf16, a relative rounding
  # of at most U = 2^-8. To first order a hybrid and its reference G(z1) each carry
  # independent errors of ~U·|x| per layer, i.e. ~U·sqrt(2·n_stages)·|x| in their
  # difference, so an EIM value (a mean of |hybrid − G(z1)|) is off by at most about
  # U·sqrt(2·n_stages)·mean|x| on average: relative to the EIMs' mean that is
  # U·sqrt(2·n_stages)·mean|x| / mean|EIM| (≈ 17·U ≈ 7 % here; measured ≈ 1.2·U).
  # A wrong bf16 path (wrong channel, wrong mask, stale reference) is off by O(1).
  mean_bound = U * np.sqrt(2 * n_stages) * np.abs(x).mean() / f32.mean()
  assert 0 < err["mean"] <= mean_bound, (err, mean_bound)
  # Worst case per pixel: each of the n_stages roundings moves the hybrid and the
  # reference by ≤ U·max|x| (first order, layer gains ≈ 1): |Δ EIM| ≤ 2·n_stages·U.
  assert np.abs(bf16 - f32).max() <= 2 * n_stages * U * np.abs(x).max()
  assert err["mean"] < 0.1


@pytest.mark.parametrize("method", ["linear", "masks"])
def test_bfloat16_reference_goes_through_the_same_suffix(gen, pairs, method):
  """z2 = z1: every hybrid equals G(z1) exactly in bf16 too (the reference runs in
  bf16 and sees the same bf16 inputs), so the EIMs are exactly 0; a float32 reference
  would leave bf16 rounding noise everywhere."""
  z1, _ = pairs
  assert np.all(_eims(gen, z1, z1, method=method, precision="bfloat16") == 0.0)


def test_bfloat16_kernel_runs_the_suffix_in_bf16(gen):
  """Linear path, traced: the prefix of z1 and z2 (dense + transposed conv each) in
  float32, every matmul/convolution of the suffix in bf16, the influence sums in
  float32."""
  z, w = jnp.zeros((4, 8)), jnp.ones((4, 1))
  kernel = _engine.local_eim_sums(gen, SITE, 4, 4, "bfloat16")
  text = str(jax.make_jaxpr(kernel)(gen.variables, (), z, z, w))
  dtypes = re.findall(r"\w+:(\w+)\[[^\]]*\] = (?:conv_general_dilated|dot_general)", text)
  assert dtypes[:4] == ["f32"] * 4 and dtypes[-1] == "f32"
  assert len(dtypes) > 6 and set(dtypes[4:-1]) == {"bf16"}, dtypes


def test_cpu_bf16_matmul_accumulates_in_float32():
  """What docs/gpu_check.md states about XLA's CPU backend: a bf16 matmul is the
  float32 product of the bf16 operands, rounded once to bf16."""
  a = jax.random.normal(jax.random.key(0), (16, 4096)).astype(jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (4096, 16)).astype(jnp.bfloat16)
  low = np.asarray((a @ b).astype(jnp.float32))
  f32 = np.asarray(a, np.float32) @ np.asarray(b, np.float32)
  assert np.array_equal(low, np.asarray(jnp.asarray(f32).astype(jnp.bfloat16), np.float32))


def test_precision_helpers():
  assert prec.check_precision("tf32") == "tf32"
  assert prec.cache_key("float32") == () and prec.cache_key("bfloat16") == ("bfloat16",)
  tree = {"w": jnp.ones(2), "i": jnp.arange(2), "k": jax.random.key(0)}
  low = prec.cast_floating(tree, jnp.bfloat16)
  assert low["w"].dtype == jnp.bfloat16 and low["i"].dtype == tree["i"].dtype
  assert prec.cast_floating(tree, None) is tree
  err = prec.relative_errors(np.array([1.0, 3.5]), np.array([1.0, 3.0]))
  assert err == pytest.approx({"max": 0.5 / 2.0, "mean": 0.25 / 2.0})


# ---- chunk sizes from memory --------------------------------------------------------------


def test_peak_live_bytes_frees_dead_values():
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  # x, x·2, +1, ·3: at most two [1000] float32 arrays are alive at once.
  assert memory.peak_live_bytes(lambda x: ((x * 2.0) + 1.0) * 3.0, x) == 8000
  # All four alive until the sum at the end.
  assert memory.peak_live_bytes(lambda x: x + (x * 2.0) * ((x * 2.0) + 1.0), x) >= 16000
  assert memory.peak_live_bytes(lambda v, x: x * v, x, x, uncounted=1) == 8000


def test_chunks_shrink_with_the_budget_and_never_exceed_pairs_or_masks(gen):
  c = gen.site_shape(SITE)[-1]
  cost = memory.chunk_cost(gen, SITE)
  assert cost.per_hybrid > 0 and cost.per_pair > 0
  budgets = [1 << 40] + [int(memory.working_set_bytes(cost, 32, 16, c) / 2**k) for k in range(12)]
  chosen = [
    memory.choose_chunks(gen, SITE, 128, c, budget_bytes=b, platform="gpu", n_devices=1)
    for b in budgets
  ]
  for (pc0, mc0), (pc1, mc1) in zip(chosen, chosen[1:], strict=False):
    assert pc1 <= pc0 and mc1 <= mc0
  assert chosen[0][0] * chosen[0][1] > 32 * 16  # a big GPU takes more than the CPU defaults
  assert chosen[-1] < chosen[0]
  for b, (pc, mc) in zip(budgets, chosen, strict=True):
    assert (pc, mc) == (1, 1) or memory.working_set_bytes(cost, pc, mc, c) <= b
  # Pair and mask counts cap the chunks (per device).
  assert memory.choose_chunks(gen, SITE, 5, 3, budget_bytes=1 << 40, platform="gpu") == (5, 3)
  pc, mc = memory.choose_chunks(gen, SITE, 5, c, budget_bytes=1 << 40, platform="gpu", n_devices=2)
  assert pc == 3 and mc == c
  # A given chunk stays fixed.
  assert memory.choose_chunks(gen, SITE, 64, c, pair_chunk=7, budget_bytes=1 << 40)[0] == 7


def test_cpu_keeps_the_tuned_defaults_unless_memory_is_short(gen):
  c = gen.site_shape(SITE)[-1]
  big = memory.choose_chunks(gen, SITE, 128, c, budget_bytes=1 << 40, platform="cpu")
  assert big == (interventions.DEFAULT_PAIR_CHUNK, interventions.DEFAULT_MASK_CHUNK) == (32, 16)
  assert memory.choose_chunks(gen, SITE, 128, c) == (32, 16)  # this machine's real RAM
  cost = memory.chunk_cost(gen, SITE)
  tight = memory.working_set_bytes(cost, 32, 16, c) - 1
  smaller = memory.choose_chunks(gen, SITE, 128, c, budget_bytes=tight, platform="cpu")
  assert smaller == (16, 16) == memory.chunk_ladder(32, 16)[-2]


def test_auto_chunks_reach_the_kernels(gen, pairs, monkeypatch):
  """pair_chunk=None/mask_chunk=None use choose_chunks' answer: with a budget that
  only fits (2, 2) the result equals the explicit (2, 2) call bitwise."""
  z1, z2 = pairs
  c = gen.site_shape(SITE)[-1]
  cost = memory.chunk_cost(gen, SITE)
  budget = memory.working_set_bytes(cost, 2, 2, c)
  monkeypatch.setattr(memory, "memory_budget", lambda *a, **k: (budget, "cpu"))
  assert memory.choose_chunks(gen, SITE, N, c) == (2, 2)
  auto = _eims(gen, z1, z2, method="masks")
  assert np.array_equal(auto, _eims(gen, z1, z2, method="masks", pair_chunk=2, mask_chunk=2))
  np.testing.assert_allclose(
    auto, _eims(gen, z1, z2, method="masks", pair_chunk=32, mask_chunk=16), rtol=1e-5, atol=1e-7
  )
