"""The EIM benchmark (top-level ``benchmarks/``): the PyTorch port reproduces the Flax
DCGAN, the hook-based and naive contenders compute the same maps as cfmod_jax, the
FLOP accounting equals a hand count, the weights go through cfmod_jax.checkpoints,
and the experiment writes complete, self-consistent outputs."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import cfmod_jax as cf
from benchmarks import config, flops, naive, torch_dcgan, workload
from cfmod_jax import checkpoints
from cfmod_jax.generator import VectorLatentGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 8


@pytest.fixture(scope="module")
def bench_gen():
  return workload.benchmark_generator(WIDTH, seed=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
  """Tiny models run faster on one thread (and do not fight JAX's thread pool)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def test_benchmark_generator_has_nontrivial_batchnorm(bench_gen):
  for i in range(4):
    stats = bench_gen.variables["batch_stats"][f"stages_{i}"]["bn"]
    params = bench_gen.variables["params"][f"stages_{i}"]["bn"]
    assert float(np.abs(stats["mean"]).max()) > 0.05
    assert float(np.abs(np.asarray(stats["var"]) - 1).max()) > 0.1
    assert float(np.abs(np.asarray(params["scale"]) - 1).max()) > 0.1
    assert float(np.abs(params["bias"]).max()) > 0.05
  assert float(np.abs(bench_gen.variables["params"]["stages_4"]["conv"]["bias"]).max()) > 0.01


def test_torch_port_reproduces_flax_images(bench_gen):
  z = np.random.default_rng(0).standard_normal((6, 100)).astype(np.float32)
  want = np.asarray(bench_gen(z))
  model = torch_dcgan.from_flax(bench_gen.variables, 100, WIDTH)
  got = torch_dcgan.images(model, z)
  assert got.shape == want.shape == (6, 64, 64, 3)
  assert want.std() > 0.05  # images are not flat, so the comparison means something
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # The comparison is sensitive to the conversion: an unflipped kernel breaks it.
  with torch.no_grad():
    k = bench_gen.variables["params"]["stages_2"]["conv"]["kernel"]
    model.stages[2][0].weight.copy_(torch.from_numpy(np.array(k).transpose(2, 3, 0, 1)))
  assert np.abs(torch_dcgan.images(model, z) - want).max() > 1e-2


@pytest.mark.parametrize("site", ["block2", "block3"])
def test_hook_and_naive_eims_equal_cfmod_jax(bench_gen, site):
  n = 6
  z1, z2 = workload.benchmark_pairs(bench_gen, n, seed=2)
  want = np.asarray(cf.elementary_influence_maps(bench_gen, site, n, workload.benchmark_key(2)))
  assert want.shape == (bench_gen.site_shape(site)[-1], 64, 64)
  assert want.min() >= 0 and want.max() > 1e-3
  model = torch_dcgan.from_flax(bench_gen.variables, 100, WIDTH)
  hooked = torch_dcgan.hook_eims(model, site, z1, z2, pair_chunk=4)  # chunks of 4 and 2
  np.testing.assert_allclose(hooked, want, atol=1e-6, rtol=0)
  # The hook is removed afterwards: a plain forward pass is G(z) again.
  np.testing.assert_allclose(torch_dcgan.images(model, z1), np.asarray(bench_gen(z1)), atol=1e-4)
  timings = {}
  plain = naive.naive_eims(bench_gen, site, z1, z2, pair_chunk=3, timings=timings)
  np.testing.assert_allclose(plain, want, atol=1e-6, rtol=0)
  assert timings["compile_s"] > 0


def test_quick_benchmark_writes_complete_outputs(tmp_path):
  out = tmp_path / "bench"
  subprocess.run(
    [sys.executable, "-m", "experiments.benchmark", "--quick", "--out", str(out)],
    cwd=ROOT,
    check=True,
    capture_output=True,
    timeout=300,
  )
  for ext in ("json", "md", "png"):
    assert (out / f"benchmark.{ext}").stat().st_size > 0
  assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  res = json.loads((out / "benchmark.json").read_text())
  sites, contenders = res["config"]["sites"], res["config"]["contenders"]
  assert sites == list(config.QUICK_SITES) and set(contenders) == set(config.CONTENDERS)
  recs = {(r["contender"], r["site"]): r for r in res["records"]}
  assert set(recs) == {(c, s) for c in contenders for s in sites}
  for (c, s), r in recs.items():
    missing = [f for f in config.RECORD_FIELDS if f not in r]
    assert not missing, (c, s, missing)
    assert r["seconds"] > 0 and r["hybrids_per_s"] > 0 and r["useful_gflops"] > 0
    assert 0 < r["fraction_of_peak"] and r["peak_rss_mib"] > 0
    assert (r["compile_seconds"] is None) == (c == "torch")
    assert r["max_abs_diff_vs_cfmod_jax"] <= 1e-5
  for f in ("jax", "torch"):
    assert res["matmul"]["peak_gflops"][f] > 0 and len(res["matmul"]["runs"][f]) == 2
  assert len(res["loadavg_before"]) == 3 and len(res["loadavg_after"]) == 3
  assert res["cpu_model"] and res["useful_flops_definition"]
  mem = res["memory_check"]
  assert [m["n_pairs"] for m in mem["runs"]] == [4, 16] and mem["ratio"] > 0
  assert isinstance(mem["flat_within_1.2x"], bool)
  tg = res["targets"]
  assert set(tg["speedup_vs_torch"]) == set(sites) and tg["geomean_speedup_vs_torch"] > 0
  md = (out / "benchmark.md").read_text()
  assert all(f"| {s} |" in md for s in sites) and "Memory flatness" in md
  # The numbers the README quotes follow from the raw measurements as documented.
  assert res["useful_flops_definition"] == flops.DEFINITION
  peak = res["matmul"]["machine_peak_gflops"]
  assert peak == max(max(m["gflops"] for m in ms) for ms in res["matmul"]["runs"].values())
  for (_, s), r in recs.items():
    fl = res["flops"][s]
    assert r["channels"] == fl["channels"] == 4 * 2 ** (3 - config.SITES.index(s))
    assert r["hybrids"] == r["channels"] * r["n_pairs"] and r["n_pairs"] == 4
    assert fl["useful_flops"] == pytest.approx(
      4 * (2 * fl["f_prefix"] + (fl["channels"] + 1) * fl["f_suffix"]), rel=1e-12
    )
    assert r["hybrids_per_s"] == pytest.approx(r["hybrids"] / r["seconds"], rel=1e-12)
    assert r["useful_gflop"] == pytest.approx(fl["useful_flops"] / 1e9, rel=1e-12)
    assert r["useful_gflops"] == pytest.approx(r["useful_gflop"] / r["seconds"], rel=1e-9)
    assert r["fraction_of_peak"] == pytest.approx(r["useful_gflops"] / peak, rel=1e-9)
    assert r["compute_floor_s"] == pytest.approx(r["useful_gflop"] / peak, rel=1e-9)
    assert r["seconds_over_floor"] == pytest.approx(r["seconds"] / r["compute_floor_s"], rel=1e-9)
    assert r["workload_rss_mib"] == pytest.approx(r["peak_rss_mib"] - r["setup_rss_mib"])
    assert r["max_map_value"] > 1e-3  # the maps compared are not all zero
  for s in sites:
    t = {c: recs[(c, s)]["seconds"] for c in contenders}
    assert tg["speedup_vs_torch"][s] == pytest.approx(t["torch"] / t["cfmod_jax"], rel=1e-12)
    assert tg["speedup_vs_naive_jax"][s] == pytest.approx(
      t["naive_jax"] / t["cfmod_jax"], rel=1e-12
    )
  geo = math.exp(np.mean([math.log(v) for v in tg["speedup_vs_torch"].values()]))
  assert tg["geomean_speedup_vs_torch"] == pytest.approx(geo, rel=1e-9)
  assert tg["geomean_at_least_3x"] == (geo >= 3.0)
  assert tg["no_site_slower_than_torch"] == (min(tg["speedup_vs_torch"].values()) >= 1.0)
  assert mem["ratio"] == pytest.approx(
    mem["runs"][-1]["peak_rss_mib"] / mem["runs"][0]["peak_rss_mib"]
  )
  assert mem["flat_within_1.2x"] == (mem["ratio"] <= 1.2)


def test_torch_is_imported_only_by_the_torch_contender():
  code = (
    "import sys, cfmod_jax, benchmarks.harness, benchmarks.naive, benchmarks.report; "
    "assert 'torch' not in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# ---- FLOP accounting -------------------------------------------------------------------------
class _Dense(nn.Module):
  """Flatten, a bias-free dense layer, reshape: 2·in·out FLOPs per image, nothing else."""

  features: int
  shape: tuple[int, ...]

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(self.features, use_bias=False)(x.reshape(x.shape[0], -1))
    return x.reshape(x.shape[0], *self.shape)


class _TinyDense(VectorLatentGenerator):
  latent_dim: int = 3
  site_names = ("hidden",)

  def setup(self):
    self.stages = [_Dense(8, (2, 2, 2)), _Dense(12, (2, 2, 3))]


def test_flops_equal_a_hand_count():
  module = _TinyDense()
  gen = cf.Generator(module, module.init(jax.random.key(0), jnp.zeros((1, 3))))
  # prefix: z [3] @ [3, 8]; suffix: h [8] @ [8, 12] — a multiply and an add per term.
  want = (2.0 * 3 * 8, 2.0 * 8 * 12)
  assert flops.flops_per_image(gen, "hidden") == want
  assert flops.flops_per_image(gen, "hidden", batch=5) == want  # per image, any batch
  # N (2 F_prefix + (C + 1) F_suffix): 5 pairs, C = 8 channels at the site.
  assert flops.useful_flops(*want, channels=8, n_pairs=5) == 5 * (2 * 48 + 9 * 192)


# ---- weights through cfmod_jax.checkpoints ---------------------------------------------------
def test_benchmark_weights_round_trip_through_checkpoints(bench_gen, tmp_path):
  folder = str(tmp_path / "gen")
  assert workload.save_generator(bench_gen, folder, width=WIDTH) == folder
  meta = checkpoints.read_meta(folder)
  assert meta["arch"] == "dcgan" and meta["kwargs"] == {"latent_dim": 100, "width": WIDTH}
  loaded = workload.load_generator(folder)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, bench_gen.variables)
  as_numpy, _ = workload.load_numpy_variables(folder)
  assert all(type(a) is np.ndarray for a in jax.tree.leaves(as_numpy))
  jax.tree.map(np.testing.assert_array_equal, as_numpy, jax.device_get(bench_gen.variables))
  # An ordinary exported folder: the library's own loader reads it too.
  z = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
  np.testing.assert_array_equal(cf.load_generator(folder)(z), bench_gen(z))
  # Both readers check the sha256 manifest.
  data = tmp_path / "gen" / checkpoints.DATA_FILE
  raw = bytearray(data.read_bytes())
  raw[-5] ^= 0xFF
  data.write_bytes(bytes(raw))
  with pytest.raises(checkpoints.CheckpointError):
    workload.load_generator(folder)
  with pytest.raises(checkpoints.CheckpointError):
    workload.load_numpy_variables(folder)


@pytest.mark.parametrize(
  "change, field",
  [
    ({"n_pairs": 0}, "n_pairs"),
    ({"pair_chunk": 2.5}, "pair_chunk"),
    ({"width": True}, "width"),
    ({"seed": -1}, "seed"),
    ({"sites": ("block9",)}, "site"),
    ({"contenders": ("jax",)}, "contender"),
    ({"memory_site": "nope"}, "memory_site"),
  ],
)
def test_config_errors_name_the_field(change, field):
  config.check_config(config.BenchConfig())  # the defaults are valid
  with pytest.raises(ValueError, match=rf"\b{field}\b"):
    config.check_config(config.BenchConfig(**change))
