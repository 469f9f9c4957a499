"""benchmarks.limits: the per-layer model of what limits each benchmark site."""

import pytest

from benchmarks import flops, limits
from benchmarks.workload import benchmark_generator

SLOW = "measures the benchmark's sites and the matmul peak (minutes on 2 cores)"


def test_layer_flops_match_xla_cost_analysis():
  """The hand-derived layer FLOPs add up to XLA's count of the generator's prefix
  and suffix at every site (XLA's also counts BatchNorm/ReLU/tanh: < 3 % more at width 8)."""
  gen = benchmark_generator(width=8, calib_pairs=8)
  layers = limits.dcgan_layers(width=8, latent_dim=100)
  assert [l["kind"] for l in layers] == ["dense"] + ["convT"] * 4
  for i, site in enumerate(gen.sites, start=1):
    f_prefix, f_suffix = flops.flops_per_image(gen, site)
    mine_prefix = sum(l["flops"] for l in layers[:i])
    mine_suffix = sum(l["flops"] for l in layers[i:])
    assert mine_prefix <= f_prefix <= 1.03 * mine_prefix, site
    assert mine_suffix <= f_suffix <= 1.03 * mine_suffix, site


def test_prediction_at_peak_is_the_compute_floor():
  """Every layer (and each rank-1 delta) at the peak and a free image pass:
  predicted time = compute floor (ceiling 1); a layer at half the peak adds
  exactly its own work once more."""
  layers = limits.dcgan_layers(width=8)
  peak = 100.0
  rates = [{**l, "gflops": peak} for l in layers]
  deltas = {i: rates[i]["flops"] / rates[i]["in"] / (peak * 1e9) for i in range(1, 5)}
  sites = limits.site_predictions(rates, deltas, 0.0, n_pairs=4, peak_gflops=peak)
  assert [s["site"] for s in sites] == ["block1", "block2", "block3", "block4"]
  for s in sites:
    assert s["predicted_s"] == pytest.approx(s["compute_floor_s"], rel=1e-12)
    assert s["ceiling"] == pytest.approx(1.0)
  slow = [dict(r) for r in rates]
  slow[4]["gflops"] = peak / 2  # the RGB layer
  again = limits.site_predictions(slow, deltas, 0.0, n_pairs=4, peak_gflops=peak, measured={})
  s2, a2 = sites[1], again[1]
  rgb = layers[4]["flops"] * s2["hybrids"] / (peak * 1e9)
  assert a2["predicted_s"] == pytest.approx(s2["predicted_s"] + rgb, rel=1e-12)
  assert a2["largest_piece"] == layers[4]["name"] or a2["pieces_s"][layers[4]["name"]] > 0


def test_measure_runs_small_and_writes_a_table():
  result = limits.measure(width=4, n_pairs=2, measured={"block3": 1.0}, batch=16, matmul_n=256)
  assert result["peak_gflops"] > 0 and len(result["layers"]) == 5
  assert all(l["gflops"] > 0 for l in result["layers"])
  site3 = next(s for s in result["sites"] if s["site"] == "block3")
  assert site3["efficiency"] == pytest.approx(site3["compute_floor_s"] / 1.0)
  text = limits.markdown(result, "test")
  assert "| block3 |" in text and "Measured times: test." in text
