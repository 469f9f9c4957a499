"""The EIM benchmark (top-level ``benchmarks/``): the PyTorch ports reproduce the Flax
DCGAN, every contender computes the same maps as cfmod_jax, the FLOP and memory-traffic
accounting equals a hand count, the weights go through cfmod_jax.checkpoints, and the
experiment writes complete outputs whose every derived number (order of the
interleaved runs, medians, floors, targets) follows from the raw numbers in the JSON."""

import io
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
from benchmarks import (
  config,
  flops,
  harness,
  naive,
  report,
  torch_dcgan,
  torch_fast,
  worker,
  workload,
)
from cfmod_jax import checkpoints
from cfmod_jax.generator import SplitStage, VectorLatentGenerator
from cfmod_jax.ops import ConvTranspose

SLOW = "runs the PyTorch and JAX contenders of the EIM benchmark"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 8


@pytest.fixture(scope="module")
def bench_gen():
  return workload.benchmark_generator(WIDTH, seed=1)


@pytest.fixture(scope="module")
def pairs_and_maps(bench_gen):
  """Six pairs and cfmod_jax's EIMs at a site, ``maps[site]`` (computed on first use):
  the reference of every contender."""
  n = 6
  z1, z2 = workload.benchmark_pairs(bench_gen, n, seed=2)

  class Maps(dict):
    def __missing__(self, site):
      m = np.asarray(cf.elementary_influence_maps(bench_gen, site, n, workload.benchmark_key(2)))
      assert m.shape == (bench_gen.site_shape(site)[-1], 64, 64)
      assert m.min() >= 0 and m.max() > 1e-3  # not all zero: comparisons mean something
      self[site] = m
      return m

  return z1, z2, Maps()


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


def test_torch_ports_reproduce_flax_images_and_activations(bench_gen):
  z = np.random.default_rng(0).standard_normal((6, 100)).astype(np.float32)
  want = np.asarray(bench_gen(z))
  model = torch_dcgan.from_flax(bench_gen.variables, 100, WIDTH)
  got = torch_dcgan.images(model, z)
  assert got.shape == want.shape == (6, 64, 64, 3)
  assert want.std() > 0.05  # images are not flat, so the comparison means something
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # BatchNorm folded into the layers, in every memory layout: the same activations.
  for layout in torch_fast.LAYOUTS:
    folded = torch_fast.FoldedDCGAN(model, layout=layout)
    with torch.inference_mode():
      for i, site in enumerate(config.SITES):
        a = folded.prefix(torch.from_numpy(z), i)
        ref = np.asarray(bench_gen.run_prefix(site, z))
        np.testing.assert_allclose(a.permute(0, 2, 3, 1).numpy(), ref, atol=1e-5, rtol=0)
        img = folded.suffix(torch.from_numpy(ref.transpose(0, 3, 1, 2).copy()), i)
        np.testing.assert_allclose(img.permute(0, 2, 3, 1).numpy(), want, atol=1e-4, rtol=0)
  # The comparison is sensitive to the conversion: an unflipped kernel breaks it.
  with torch.no_grad():
    k = bench_gen.variables["params"]["stages_2"]["conv"]["kernel"]
    model.stages[2][0].weight.copy_(torch.from_numpy(np.array(k).transpose(2, 3, 0, 1)))
  assert np.abs(torch_dcgan.images(model, z) - want).max() > 1e-2


@pytest.mark.parametrize("site", ["block1", "block2"])  # block4: the quick benchmark below
def test_eager_contenders_equal_cfmod_jax(bench_gen, pairs_and_maps, site):
  z1, z2, maps = pairs_and_maps
  want = maps[site]
  model = torch_dcgan.from_flax(bench_gen.variables, 100, WIDTH)
  hooked = torch_dcgan.hook_eims(model, site, z1, z2, pair_chunk=4)  # chunks of 4 and 2
  np.testing.assert_allclose(hooked, want, atol=1e-6, rtol=0)
  # The hook is removed afterwards: a plain forward pass is G(z) again.
  np.testing.assert_allclose(torch_dcgan.images(model, z1), np.asarray(bench_gen(z1)), atol=1e-4)
  c = want.shape[0]
  for kind in torch_fast.KINDS:
    for layout in torch_fast.LAYOUTS:
      folded = torch_fast.FoldedDCGAN(model, layout=layout)
      # 5 channels per chunk: the last chunk of a site is smaller; pairs in 4 + 2
      got = torch_fast.fast_eims(kind, folded, site, z1, z2, pair_chunk=4, channel_chunk=5)
      np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"{kind} {layout}")
      # Warm-up subsets compute only their chunks (the others stay zero).
      part = torch_fast.fast_eims(
        kind, folded, site, z1, z2, pair_chunk=4, channel_chunk=5, chunk_starts=[5]
      )
      np.testing.assert_allclose(part[5:10], want[5:10], atol=1e-6, rtol=0)
      assert not part[:5].any() and not part[10:c].any()
  if site == "block1":  # one jitted full forward pass per channel
    timings = {}
    plain = naive.naive_eims(bench_gen, site, z1, z2, pair_chunk=3, timings=timings)
    np.testing.assert_allclose(plain, want, atol=1e-6, rtol=0)
    assert timings["compile_s"] > 0


def _task(bench_gen, tmp_path, contender, site, **extra):
  folder = str(tmp_path / "gen")
  if not os.path.exists(folder):
    workload.save_generator(bench_gen, folder, width=WIDTH)
  z1, z2 = workload.benchmark_pairs(bench_gen, 6, seed=2)
  np.savez(tmp_path / "pairs.npz", z1=z1, z2=z2)
  return {
    "kind": "eims",
    "contender": contender,
    "site": site,
    "n_pairs": 6,
    "width": WIDTH,
    "latent_dim": 100,
    "seed": 2,
    "pair_chunk": 4,
    "channel_chunk": 3,
    "variables_path": folder,
    "pairs_path": str(tmp_path / "pairs.npz"),
    **extra,
  }


def test_imported_torch_twin_contender_equals_cfmod_jax(bench_gen, tmp_path):
  """The engine on the PyTorch twin imported with `from_torch` (its linear split at
  every site) gives cfmod_jax's EIMs on the same pairs."""
  for site in ("block2", "block4"):
    got = {}
    for contender in ("cfmod_jax", "cfmod_jax_from_torch"):
      runner, channels = worker.make_runner(_task(bench_gen, tmp_path, contender, site))
      runner.warmup()
      got[contender] = runner.run()
    assert got["cfmod_jax"].shape == (channels, 64, 64) and got["cfmod_jax"].max() > 0
    np.testing.assert_allclose(got["cfmod_jax_from_torch"], got["cfmod_jax"], atol=1e-6, rtol=0)


def test_compiled_contenders_equal_cfmod_jax(bench_gen, pairs_and_maps, tmp_path, monkeypatch):
  """The torch.compile'd contenders as their workers run them (one memory format
  each and no compile-worker pool, to keep the test short)."""
  import torch._inductor.config

  monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
  want = pairs_and_maps[2]["block4"]
  for contender, fmt in (
    ("torch_batched_compiled", "channels_last"),
    ("torch_linear_compiled", "contiguous"),
  ):
    task = _task(bench_gen, tmp_path, contender, "block4", memory_formats=[fmt])
    runner, channels = worker.make_runner(task)
    assert channels == WIDTH
    info = runner.warmup()
    assert info["memory_format"] == fmt and info["format_errors"] == {}
    assert info["compile_seconds"] > 0 and info["channel_chunk"] == 3
    assert info["warmup_channel_chunks"] == [0, 6]  # 8 channels: chunks of 3, 3, 2
    assert info["inductor_caches"] == "default"
    got = runner.run()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=contender)
    np.testing.assert_array_equal(runner.run(), got)


def test_worker_protocol_and_a_contender_that_cannot_run(bench_gen, tmp_path, monkeypatch):
  """A worker answers warmup / run / finish with JSON lines; a contender whose
  torch.compile fails (here: made to fail) answers one error line instead of crashing."""
  maps = tmp_path / "maps.npy"
  task = _task(bench_gen, tmp_path, "torch_linear", "block4", maps_path=str(maps))
  out = io.StringIO()
  worker.serve(task, io.StringIO("warmup\nrun\nrun\nfinish\n"), out)
  events = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [e["event"] for e in events] == ["loaded", "ready", "run", "run", "done"]
  ready = events[1]
  assert ready["memory_format"] == min(
    ready["format_trials_s"], key=lambda k: ready["format_trials_s"][k]["second_call_s"]
  )
  assert set(ready["format_trials_s"]) == {"contiguous", "channels_last", "mixed"}
  assert all(e["seconds"] > 0 and e["cpu_seconds"] >= 0 for e in events[2:4])
  assert events[4]["max_abs_diff_between_repeats"] == 0.0
  z1, z2 = workload.benchmark_pairs(bench_gen, 6, seed=2)
  ref = torch_dcgan.from_flax(bench_gen.variables, 100, WIDTH)
  np.testing.assert_allclose(
    np.load(maps), torch_dcgan.hook_eims(ref, "block4", z1, z2), atol=1e-6, rtol=0
  )

  def no_compiler(fn, **kwargs):
    def fails(*args):
      raise RuntimeError("InductorError: C++ compile error: no compiler")

    return fails

  monkeypatch.setattr(torch, "compile", no_compiler)
  out = io.StringIO()
  task = _task(bench_gen, tmp_path, "torch_linear_compiled", "block4")
  worker.serve(task, io.StringIO("warmup\nrun\n"), out)
  events = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [e["event"] for e in events] == ["loaded", "error"]
  assert "contiguous: RuntimeError: InductorError" in events[1]["error"]
  assert "channels_last: RuntimeError: InductorError" in events[1]["error"]


def _median(xs):
  xs = sorted(xs)
  k = len(xs)
  return xs[k // 2] if k % 2 else (xs[k // 2 - 1] + xs[k // 2]) / 2


def test_quick_benchmark_outputs_follow_from_the_raw_numbers(tmp_path):
  """``--quick`` at one site (every worker process costs seconds)."""
  out = tmp_path / "bench"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--quick",
      "--sites",
      "block4",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
    timeout=600,
  )
  for ext in ("json", "md", "png"):
    assert (out / f"benchmark.{ext}").stat().st_size > 0
  assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  res = json.loads((out / "benchmark.json").read_text())
  cfg = res["config"]
  sites, contenders, reps = cfg["sites"], cfg["contenders"], cfg["repeats"]
  assert sites == ["block4"] and contenders == list(config.QUICK_CONTENDERS)
  assert reps == 3 and res["failed"] == []
  recs = {(r["contender"], r["site"]): r for r in res["records"]}
  assert set(recs) == {(c, s) for c in contenders for s in sites}

  # Interleaving: per site, repeat r runs the contenders rotated left by r places.
  sched = res["schedule"]
  assert len(sched) == len(sites) * reps * len(contenders)
  k = len(contenders)
  i = 0
  for s in sites:
    for r in range(reps):
      want_order = contenders[r % k :] + contenders[: r % k]
      got = sched[i : i + k]
      assert [e["contender"] for e in got] == want_order
      assert [(e["site"], e["repeat"], e["position"]) for e in got] == [(s, r, p) for p in range(k)]
      for p, e in enumerate(got):  # the record's per-repeat numbers are the schedule's
        rec = recs[(e["contender"], s)]
        assert rec["repeat_seconds"][r] == e["seconds"]
        assert rec["repeat_order_positions"][r] == p
        assert rec["repeat_loadavg_before"][r] == e["loadavg_before"]
        assert rec["repeat_loadavg_after"][r] == e["loadavg_after"]
      i += k
  starts = [e["started_at_s"] for e in sched]
  assert starts == sorted(starts) and len(set(starts)) == len(starts)

  # Machine numbers: best of the runs at the start and at the end.
  peak = res["matmul"]["machine_peak_gflops"]
  assert all(len(res["matmul"]["runs"][f]) == 2 for f in ("jax", "torch"))
  assert peak == max(m["gflops"] for ms in res["matmul"]["runs"].values() for m in ms)
  bw_runs = res["bandwidth"]["runs"]
  assert len(bw_runs) == 2 and all(len(b["seconds"]) == config.BANDWIDTH_REPEATS for b in bw_runs)
  for b in bw_runs:
    assert b["bytes_per_run"] == 2 * 4 * (16 * 2**20 // 4)  # 16 MiB read + written
    assert b["gb_per_s"] == pytest.approx(b["bytes_per_run"] / min(b["seconds"]) / 1e9)
  bw = res["bandwidth"]["best_gb_per_s"]
  assert bw == max(b["gb_per_s"] for b in bw_runs)

  # Work per site: the definitions, and hand counts of the DCGAN's shapes (width 4).
  assert res["definitions"]["minimal_flops"] == flops.MINIMAL_DEFINITION
  assert res["definitions"]["plain_algorithm_flops"] == flops.PLAIN_DEFINITION
  for s in sites:
    co = res["costs"][s]
    c = 4 * 2 ** (3 - config.SITES.index(s))
    assert co["channels"] == c and co["hybrids"] == 4 * c
    assert co["plain_algorithm_flops"] == pytest.approx(
      4 * (2 * co["f_prefix"] + (c + 1) * co["f_suffix"]), rel=1e-12
    )
    assert co["minimal_flops"] == pytest.approx(
      4
      * (2 * co["f_prefix"] + co["f_next"] + co["f_rest"] + c * (co["f_next"] / c + co["f_rest"])),
      rel=1e-12,
    )
    # suffix = post ∘ pre: XLA's counts of the two parts add up to the whole.
    assert co["f_next"] + co["f_rest"] == pytest.approx(co["f_suffix"], rel=1e-9)
    assert co["minimal_flops"] < co["plain_algorithm_flops"]
    assert co["prefix_share_of_minimal"] == pytest.approx(
      2 * 4 * co["f_prefix"] / co["minimal_flops"], rel=1e-12
    )
    # the next ConvTranspose: 2·H·W·C_in·16·C_out (+ 64·64·3 bias adds on the RGB layer)
    hw = 4 * 2 ** config.SITES.index(s)
    c_out = c // 2 if s != "block4" else 3
    assert co["f_next"] == 2 * hw * hw * c * 16 * c_out + (64 * 64 * 3 if s == "block4" else 0)
    pre_next = (2 * hw) ** 2 * c_out
    later = {"block4": 0}[s]  # the next stage is the last (every site: the test below)
    assert co["traffic_elements"] == {"pre_next": pre_next, "later_outputs": later}
    assert co["bytes_per_hybrid"] == 2 * 4 * (pre_next + later)
    fl = res["floors"][s]
    assert fl["compute_floor_s"] == pytest.approx(co["minimal_flops"] / (peak * 1e9), rel=1e-12)
    assert fl["memory_floor_s"] == pytest.approx(
      co["hybrids"] * co["bytes_per_hybrid"] / (bw * 1e9), rel=1e-12
    )
    assert fl["floor_s"] == max(fl["compute_floor_s"], fl["memory_floor_s"])
    assert fl["binding"] == (
      "compute" if fl["compute_floor_s"] >= fl["memory_floor_s"] else "memory"
    )

  # Every record: complete, statistics and derived numbers from its raw numbers.
  for (c, s), r in recs.items():
    missing = [f for f in config.RECORD_FIELDS if f not in r]
    assert not missing, (c, s, missing)
    co = res["costs"][s]
    assert len(r["repeat_seconds"]) == len(r["repeat_cpu_seconds"]) == reps
    assert r["seconds"] == _median(r["repeat_seconds"]) > 0
    assert r["seconds_min"] == min(r["repeat_seconds"])
    assert r["seconds_max"] == max(r["repeat_seconds"])
    assert r["cpu_seconds"] == _median(r["repeat_cpu_seconds"])
    assert r["hybrids"] == co["hybrids"] and r["n_pairs"] == 4
    assert r["hybrids_per_s"] == pytest.approx(r["hybrids"] / r["seconds"], rel=1e-12)
    assert r["plain_algorithm_gflop"] == pytest.approx(co["plain_algorithm_flops"] / 1e9)
    assert r["plain_algorithm_gflops"] == pytest.approx(
      co["plain_algorithm_flops"] / r["seconds"] / 1e9, rel=1e-9
    )
    assert r["minimal_gflops"] == pytest.approx(co["minimal_flops"] / r["seconds"] / 1e9)
    assert r["efficiency"] == pytest.approx(
      co["minimal_flops"] / r["seconds"] / (peak * 1e9), rel=1e-9
    )
    assert r["seconds_over_floor"] == pytest.approx(
      r["seconds"] / res["floors"][s]["floor_s"], rel=1e-9
    )
    assert r["workload_rss_mib"] == pytest.approx(r["peak_rss_mib"] - r["setup_rss_mib"])
    assert r["max_abs_diff_vs_cfmod_jax"] <= 1e-5 and r["max_map_value"] > 1e-3
    assert r["max_abs_diff_between_repeats"] <= 1e-6
    assert (r["compile_seconds"] is None) == c.startswith("torch_")
    if c in ("torch_batched", "torch_linear"):
      det = r["details"]
      trials = det["format_trials_s"]
      assert set(trials) == {"contiguous", "channels_last"} | (
        {"mixed"} if c == "torch_linear" else set()
      )
      assert det["memory_format"] == min(trials, key=lambda f: trials[f]["second_call_s"])
      assert det["channel_chunk"] == 3 and det["pair_chunk"] == 3

  # Targets: cfmod_jax vs each contender and vs the fastest torch contender per site.
  tg = res["targets"]
  t = {key: r["seconds"] for key, r in recs.items()}
  torch_names = [c for c in contenders if c.startswith("torch_")]
  for c in contenders[1:]:
    for s in sites:
      assert tg["speedup_vs"][c][s] == pytest.approx(t[(c, s)] / t[("cfmod_jax", s)], rel=1e-12)
  for s in sites:
    best = min(torch_names, key=lambda c: t[(c, s)])  # noqa: B023
    assert tg["best_torch"][s] == best
    assert tg["speedup_vs_best_torch"][s] == pytest.approx(
      t[(best, s)] / t[("cfmod_jax", s)], rel=1e-12
    )
    assert tg["efficiency"][s] == recs[("cfmod_jax", s)]["efficiency"]
    assert tg["efficiency_at_least_0.7"][s] == (tg["efficiency"][s] >= 0.7)
  vs_best = list(tg["speedup_vs_best_torch"].values())
  geo = math.exp(np.mean([math.log(v) for v in vs_best]))
  assert tg["geomean_speedup_vs_best_torch"] == pytest.approx(geo, rel=1e-9)
  assert tg["geomean_vs_best_torch_at_least_2.5x"] == (geo >= 2.5)
  assert tg["no_site_below_1.5x_vs_best_torch"] == (min(vs_best) >= 1.5)
  assert tg["all_sites_efficiency_at_least_0.7"] == all(tg["efficiency_at_least_0.7"].values())
  assert "vs the fastest PyTorch contender in this run, per site" in res["headline"]
  assert f"geometric mean {geo:.2f}×" in res["headline"]

  md = (out / "benchmark.md").read_text()
  assert res["headline"] in md and "Memory flatness" in md
  assert all(f"| {s} | {c} |" in md for s in sites for c in contenders)
  assert "torch (hooks)" not in md and "| torch |" not in md  # the contenders' own names
  assert len(res["loadavg_before"]) == 3 and len(res["loadavg_after"]) == 3
  assert res["cpu_model"] and res["estimate"]["total_s"] > 0
  mem = res["memory_check"]
  assert [m["n_pairs"] for m in mem["runs"]] == [4, 16]
  assert mem["ratio"] == pytest.approx(
    mem["runs"][-1]["peak_rss_mib"] / mem["runs"][0]["peak_rss_mib"]
  )
  assert mem["flat_within_1.2x"] == (mem["ratio"] <= 1.2)

  # A contender that could not run (e.g. no C++ compiler for torch.compile) is listed,
  # not timed: the targets and tables use the others.
  res["records"] = [r for r in res["records"] if r["contender"] != "torch_linear"]
  res["failed"] = [{"contender": "torch_linear", "site": "block4", "error": "InductorError: x"}]
  tg2 = harness.targets(res["records"], sites)
  best = min(("torch_hooks", "torch_batched"), key=lambda c: t[(c, "block4")])
  assert tg2["best_torch"] == {"block4": best} and "torch_linear" not in tg2["speedup_vs"]
  res["targets"], res["headline"] = tg2, harness.headline(tg2)
  md = report.markdown_table(res)
  assert "| block4 | torch_linear | failed: InductorError: x |" in md and res["headline"] in md


def test_torch_is_imported_only_by_the_torch_contenders():
  code = (
    "import sys, cfmod_jax, benchmarks.harness, benchmarks.naive, benchmarks.report, "
    "benchmarks.flops, benchmarks.config, benchmarks.worker; assert 'torch' not in sys.modules"
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


def test_plain_algorithm_flops_equal_a_hand_count():
  module = _TinyDense()
  gen = cf.Generator(module, module.init(jax.random.key(0), jnp.zeros((1, 3))))
  # prefix: z [3] @ [3, 8]; suffix: h [8] @ [8, 12] — a multiply and an add per term.
  want = (2.0 * 3 * 8, 2.0 * 8 * 12)
  assert flops.flops_per_image(gen, "hidden", batch=5) == want  # per image, any batch
  # N (2 F_prefix + (C + 1) F_suffix): 5 pairs, C = 8 channels at the site.
  assert flops.plain_algorithm_flops(*want, channels=8, n_pairs=5) == 5 * (2 * 48 + 9 * 192)
  assert not gen.has_linear_split("hidden")
  costs = flops.site_costs(gen, "hidden", n_pairs=5)  # batch 32
  assert (costs["f_prefix"], costs["f_suffix"]) == want
  assert costs["channels"] == 2  # the site is [2, 2, 2]: C = 2 channels
  assert costs["plain_algorithm_flops"] == 5 * (2 * 48 + 3 * 192)
  assert costs["minimal_flops"] is None and costs["bytes_per_hybrid"] is None


class _Project(SplitStage):
  """z → [2, 2, c] by a bias-free dense layer, then ReLU."""

  c: int

  def setup(self):
    self.dense = nn.Dense(4 * self.c, use_bias=False)

  def pre(self, z):
    return self.dense(z).reshape(z.shape[0], 2, 2, self.c)

  def post(self, y, train=False):
    return nn.relu(y)


class _Up(SplitStage):
  """The DCGAN's ×2 ConvTranspose (4×4, stride 2, no bias), then ReLU (or nothing)."""

  c: int
  last: bool = False

  def setup(self):
    self.conv = ConvTranspose(self.c, (4, 4), (2, 2), use_bias=False)

  def pre(self, x):
    return self.conv(x)

  def pre_delta(self, delta, start):
    return self.conv.per_channel(delta, start)

  def post(self, y, train=False):
    return y if self.last else nn.relu(y)


class _TinySplit(VectorLatentGenerator):
  """z [3] → a: 2×2×5 → b: 4×4×4 → 8×8×3."""

  latent_dim: int = 3
  site_names = ("a", "b")

  def setup(self):
    self.stages = [_Project(5), _Up(4), _Up(3, last=True)]


def test_minimal_flops_and_traffic_equal_a_hand_count():
  module = _TinySplit()
  gen = cf.Generator(module, module.init(jax.random.key(0), jnp.zeros((1, 3))))
  dense = 2 * 3 * 20  # z [3] @ [3, 2·2·5]
  relu_a, relu_b = 2 * 2 * 5, 4 * 4 * 4  # one max per element
  # A 4×4 stride-2 transposed conv of an H×W×C_in input: each input value meets 16
  # kernel taps per output channel (a multiply and an add each).
  conv_ab = 2 * (2 * 2 * 5) * 16 * 4
  conv_b_img = 2 * (4 * 4 * 4) * 16 * 3
  n = 7
  hand = {
    "a": {
      "f_prefix": dense + relu_a,
      "f_next": conv_ab,
      "f_rest": relu_b + conv_b_img,  # ReLU of b, then the last layer (no activation)
      "c": 5,
      "pre_next": 4 * 4 * 4,
      "later": 8 * 8 * 3,
    },
    "b": {
      "f_prefix": dense + relu_a + conv_ab + relu_b,
      "f_next": conv_b_img,
      "f_rest": 0,
      "c": 4,
      "pre_next": 8 * 8 * 3,
      "later": 0,
    },
  }
  for site, h in hand.items():
    co = flops.site_costs(gen, site, n_pairs=n)
    assert co["f_prefix"] == h["f_prefix"] and co["f_next"] == h["f_next"], site
    assert co["f_rest"] == h["f_rest"] and co["f_suffix"] == h["f_next"] + h["f_rest"], site
    c = h["c"]
    per_pair = 2 * h["f_prefix"] + h["f_next"] + h["f_rest"] + c * (h["f_next"] / c + h["f_rest"])
    assert co["minimal_flops"] == n * per_pair
    assert co["plain_algorithm_flops"] == n * (2 * h["f_prefix"] + (c + 1) * co["f_suffix"])
    assert co["bytes_per_hybrid"] == 2 * 4 * (h["pre_next"] + h["later"])
    assert co["hybrids"] == n * c and co["reduction_flops"] == 2 * 3 * 8 * 8 * n * c


def test_dcgan_traffic_equals_a_hand_count(bench_gen):
  w = WIDTH
  # (pre-activation of the next stage, outputs of every stage after it), float32 elements
  hand = {
    "block1": (8 * 8 * 4 * w, 16 * 16 * 2 * w + 32 * 32 * w + 64 * 64 * 3),
    "block2": (16 * 16 * 2 * w, 32 * 32 * w + 64 * 64 * 3),
    "block3": (32 * 32 * w, 64 * 64 * 3),
    "block4": (64 * 64 * 3, 0),
  }
  for site, (pre, later) in hand.items():
    got, parts = flops.bytes_per_hybrid(bench_gen, site)
    assert parts == {"pre_next": pre, "later_outputs": later}, site
    assert got == 2 * 4 * (pre + later)  # written once, read once, 4 bytes each


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
    ({"channel_chunk": 0}, "channel_chunk"),
    ({"width": True}, "width"),
    ({"repeats": 0}, "repeats"),
    ({"matmul_n": -1}, "matmul_n"),
    ({"bandwidth_mib": 0}, "bandwidth_mib"),
    ({"seed": -1}, "seed"),
    ({"sites": ("block9",)}, "site"),
    ({"contenders": ("torch",)}, "contender"),  # the old name of torch_hooks
    ({"contenders": ()}, "contenders"),
    ({"memory_site": "nope"}, "memory_site"),
    ({"memory_n_pairs": (4,)}, "memory_n_pairs"),
    ({"torch_threads": -1}, "torch_threads"),
    ({"worker_timeout_s": 0}, "worker_timeout_s"),
  ],
)
def test_config_errors_name_the_field(change, field):
  config.check_config(config.BenchConfig())  # the defaults are valid
  with pytest.raises(ValueError, match=rf"\b{field}\b"):
    config.check_config(config.BenchConfig(**change))
