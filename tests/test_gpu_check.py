"""launch/gpu_check.sh --tiny end to end (one run, shared by the tests), the
consistency of its JSON, and studies.scale_table on it."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from studies import gpu_check, scale_table

SLOW = "runs launch/gpu_check.sh --tiny end to end"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_check")
  proc = subprocess.run(
    ["bash", os.path.join(ROOT, "launch", "gpu_check.sh"), "--tiny", "--out", str(out)],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "gpu_check.json", encoding="utf-8") as f:
    return json.load(f), out, proc.stderr


def _close(a, b, rtol=1e-9):
  return math.isclose(a, b, rel_tol=rtol)


def test_launcher_creates_the_venv_only_if_missing():
  with open(os.path.join(ROOT, "launch", "gpu_check.sh"), encoding="utf-8") as f:
    text = f.read()
  assert "[ -x .venv/bin/python ] || {" in text and "-m studies.gpu_check" in text


def test_json_fields_and_device(run):
  record, _, log = run
  assert record["schema"] == gpu_check.SCHEMA
  for key in ("device", "eim_benchmark", "main_job", "biggan", "precision_study", "config"):
    assert key in record, key
  dev = record["device"]
  assert dev["platform"] == "cpu" and dev["n_devices"] >= 1 and dev["jax_version"]
  assert dev["memory_bytes_limit"] is None  # CPU: no memory_stats
  assert dev["host_ram_bytes"]["total"] > 0 and dev["chunk_budget_bytes"] > 0
  assert set(dev["matmul_tflops"]) == {"float32", "tf32", "bfloat16"}
  assert all(v > 0 for v in dev["matmul_tflops"].values())
  assert record["seconds_total"] >= sum(record["section_seconds"].values()) * 0.99
  assert "(a) block1 bfloat16" in log and "(c) block2 float32" in log  # progress logged


def test_eim_benchmark_numbers_are_consistent(run):
  record, _, _ = run
  bench = record["eim_benchmark"]
  cfg = gpu_check.tiny_config()
  recs = {(r["site"], r["precision"]): r for r in bench["records"]}
  assert set(recs) == {(s, p) for s in cfg.bench_sites for p in cfg.precisions}
  for (_site, p), r in recs.items():
    n, c = r["n_pairs"], r["channels"]
    assert n == cfg.bench_pairs and r["hybrids"] == n * c
    assert _close(r["hybrids_per_s"], r["hybrids"] / r["seconds"])
    plain = n * (2 * r["prefix_flops_per_image"] + (c + 1) * r["suffix_flops_per_image"])
    assert _close(r["plain_gflop"], plain / 1e9)
    assert _close(r["plain_gflops"], r["plain_gflop"] / r["seconds"])
    # CPU: today's defaults, clipped to the pairs and channels.
    assert (r["pair_chunk"], r["mask_chunk"]) == (min(32, n), min(16, c))
    assert r["estimated_working_set_bytes"] > r["estimated_bytes_per_hybrid"] > 0
    assert r["mean_eim"] > 0
    if p == "float32":
      assert r["rel_err_max"] is None
    elif p == "tf32":
      assert r["rel_err_max"] == 0.0  # bitwise float32 on CPU
    else:
      assert 0 < r["rel_err_mean"] <= r["rel_err_max"] < 0.5
      assert r["rel_err_mean"] < 0.05
  analysed = [r for r in bench["records"] if "xla_chunk_bytes" in r]
  assert {(r["site"], r["precision"]) for r in analysed} == {
    ("block4", "float32"),
    ("block4", "bfloat16"),
  }
  for r in analysed:
    assert r["xla_chunk_bytes"] > 0 and r["estimated_chunk_bytes"] > 0
  f32 = recs[("block4", "float32")]
  assert (
    recs[("block4", "bfloat16")]["estimated_bytes_per_hybrid"] < f32["estimated_bytes_per_hybrid"]
  )


def test_main_job_ran(run):
  record, out, _ = run
  job = record["main_job"]
  assert job["seconds"] > 0 and job["config"]["n_pairs"] == 8
  assert job["generator"] == "dcgan-w4-bench" and job["cli_equivalent"] is None
  assert os.path.isfile(out / "main_job" / "report.html")


def test_biggan_section(run):
  record, _, _ = run
  big = record["biggan"]
  assert big["resolution"] == 16 and big["precisions"] == ["float32", "bfloat16"]
  sites = {s["site"]: s for s in big["sites"]}
  assert list(sites) == ["gen_z", "block2"]
  # Earlier sites have longer suffixes.
  assert sites["gen_z"]["suffix_flops_per_image"] > sites["block2"]["suffix_flops_per_image"] > 0
  for s in sites.values():
    assert not s["linear_split"]  # every BigGAN stage reads the latent
    assert s["bytes_per_hybrid"]["bfloat16"] < s["bytes_per_hybrid"]["float32"]
    assert s["suffix_bytes_accessed_per_image"] > 0
  assert sites["gen_z"]["timed"] == []
  timed = {t["precision"]: t for t in sites["block2"]["timed"]}
  for p, t in timed.items():
    assert t["hybrids"] == t["channels"] * t["n_pairs"] == 4
    assert _close(t["seconds_per_hybrid"], t["seconds"] / t["hybrids"])
    assert (t["pair_chunk"], t["mask_chunk"]) == (2, 2)  # CPU: one chunk of all 4
    assert t["suffix_batch"] == t["pair_chunk"] * t["mask_chunk"]
    assert _close(t["suffix_seconds_per_image"], t["suffix_seconds"] / t["suffix_batch"])
    f = sites["block2"]["suffix_flops_per_image"]
    assert _close(t["suffix_gflops"], f * t["suffix_batch"] / t["suffix_seconds"] / 1e9)
    if p == "bfloat16":
      assert np.isfinite(t["rel_err_max"]) and 0 < t["rel_err_mean"] < 0.05
    else:
      assert t["rel_err_max"] is None


def test_precision_study(run):
  record, _, _ = run
  (rec,) = record["precision_study"]
  assert rec["generator"] == "dcgan-synthfaces" and rec["site"] == "block4"
  assert rec["precision"] == "bfloat16"  # tf32 is skipped on CPU (bitwise float32)
  assert 0 < rec["rel_err_mean"] < 0.05 and rec["rel_err_max"] < 1
  assert rec["k_float32"] in (2, 3) and rec["k_reduced"] in (2, 3)
  assert -1 <= rec["ari_main_job"] <= 1 and -1 <= rec["ari_same_k"] <= 1


def test_scale_table_from_the_json(run, tmp_path):
  record, _, _ = run
  pred = scale_table.predict(record, n_pairs=128)
  sites = record["biggan"]["sites"]
  total = sum(
    128 * (2 * s["prefix_flops_per_image"] + (s["channels"] + 1) * s["suffix_flops_per_image"])
    for s in sites
  )
  assert _close(pred["totals"]["flops"], total)
  assert pred["totals"]["hybrids"] == 128 * sum(s["channels"] for s in sites)
  by = {(c["accelerator"], c["precision"]): c for c in pred["configs"]}
  one, eight = scale_table.ACCELERATORS[0].name, scale_table.ACCELERATORS[1].name
  for p in ("float32", "tf32", "bfloat16"):
    # 8 GPUs: an eighth of the work, 5 % overhead, plus the all-reduce.
    expect = by[(one, p)]["seconds"] / 8 * (1 + scale_table.COMM_OVERHEAD)
    assert _close(by[(eight, p)]["seconds"], expect + by[(eight, p)]["allreduce_seconds"], 1e-6)
    assert by[(one, p)]["chunks"]["block2"]["pair_chunk"] <= 128
    assert by[(eight, p)]["chunks"]["block2"]["pair_chunk"] <= 16
  assert (
    by[(one, "bfloat16")]["seconds"]
    <= by[(one, "tf32")]["seconds"]
    <= by[(one, "float32")]["seconds"]
  )
  # Halving the efficiency doubles compute-bound time.
  half = scale_table.predict(record, efficiency=pred["efficiency"] / 2)
  slow = {(c["accelerator"], c["precision"]): c for c in half["configs"]}
  c = by[(one, "float32")]
  if c["compute_bound_sites"] == len(sites):
    assert _close(slow[(one, "float32")]["seconds"], 2 * c["seconds"], 1e-6)
  text = scale_table.markdown(record, pred, "gpu_check.json")
  assert "Nothing on this page was run on a GPU or TPU" in text
  assert text.count("| 1 × H200 SXM |") == 3


def test_cli_rejects_a_bad_precision(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "studies.gpu_check",
      "--precisions=float32,fp8",
      "--out",
      str(tmp_path),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 2
  assert "--precisions=float32,fp8: precision must be one of" in proc.stderr
  assert not os.path.exists(tmp_path / "gpu_check.json")


def test_summary_markdown(run):
  record, _, _ = run
  text = gpu_check.summary_markdown(record)
  assert text.count("| block1 | 32 |") == 3 and text.count("| block4 | 4 |") == 3
  assert "| dcgan-synthfaces | block4 | 32 | bfloat16 | 4 |" in text
  assert f"{record['main_job']['seconds']:.1f} s end to end" in text
