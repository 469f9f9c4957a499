"""The EIM benchmark: the PyTorch port reproduces the Flax DCGAN, the hook-based and
naive contenders compute the same maps as cfmod_jax, and the experiment writes
complete outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cfmod_jax as cf
from cfmod_jax.bench import harness, naive, torch_dcgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 8


@pytest.fixture(scope="module")
def bench_gen():
  return harness.benchmark_generator(WIDTH, seed=1)


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
  z1, z2 = harness.benchmark_pairs(bench_gen, n, seed=2)
  want = np.asarray(cf.elementary_influence_maps(bench_gen, site, n, harness.benchmark_key(2)))
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
  assert sites == list(harness.QUICK_SITES) and set(contenders) == set(harness.CONTENDERS)
  recs = {(r["contender"], r["site"]): r for r in res["records"]}
  assert set(recs) == {(c, s) for c in contenders for s in sites}
  for (c, s), r in recs.items():
    missing = [f for f in harness.RECORD_FIELDS if f not in r]
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


def test_torch_is_imported_only_by_the_torch_contender():
  code = (
    "import sys, cfmod_jax, cfmod_jax.bench.harness, cfmod_jax.bench.naive; "
    "assert 'torch' not in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
