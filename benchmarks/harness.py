"""Measurements for the EIM benchmark: cfmod_jax vs hook-based PyTorch vs naive JAX.

Workload (`benchmarks.workload`): the elementary influence maps (EIMs) of every
hidden site of DCGAN-64 for N latent pairs, with the same weights (random init,
`benchmark_generator`: BatchNorm running statistics and affine parameters set to
non-trivial random values) and the same pairs (`benchmark_pairs`, drawn exactly as
`elementary_influence_maps` draws them) for every contender:

* ``cfmod_jax``: `cfmod_jax.elementary_influence_maps` (method 'auto').
* ``torch``: `benchmarks.torch_dcgan.hook_eims` — forward hook, one channel at a time.
* ``naive_jax``: `benchmarks.naive.naive_eims` — one jitted full forward pass per channel.

Every (contender, site) runs in a fresh subprocess (``python -m benchmarks.worker
--task spec.json``, see `benchmarks.worker`) so that its peak memory is its own;
timings exclude compilation (a warm-up first), JAX compile time is reported
separately.

**Useful FLOPs**: see `benchmarks.flops` (one definition for all contenders). The
**compute floor** of a site is ``useful_flops / peak``, with the peak the best float32 matmul GFLOP/s
measured in the same run (jax and torch, ``MATMUL_N``² matrices, best of
``MATMUL_REPEATS``, in the parent process at the start and at the end of the run).

The outputs (``benchmark.json``, ``.md``, ``.png``) are written by `benchmarks.report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import flops as flops_lib
from benchmarks.config import BenchConfig, check_config
from benchmarks.worker import run_task
from benchmarks.workload import benchmark_generator, benchmark_pairs, save_generator


def _spawn(task: dict[str, Any], workdir: str, timeout_s: float) -> dict[str, Any]:
  """Runs ``task`` in a fresh Python process; returns its record."""
  fd, task_path = tempfile.mkstemp(suffix=".json", dir=workdir)
  os.close(fd)
  task = {**task, "result_path": task_path + ".out"}
  with open(task_path, "w") as f:
    json.dump(task, f)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ),
  }
  subprocess.run(
    [sys.executable, "-m", "benchmarks.worker", "--task", task_path],
    check=True,
    timeout=timeout_s,
    env=env,
  )
  with open(task["result_path"]) as f:
    return json.load(f)


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``; else `platform`)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run_benchmark(cfg: BenchConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
  """Runs every measurement of ``cfg`` in subprocesses; returns the results dict
  (see `write_outputs` for the files)."""
  check_config(cfg)
  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "config": dataclasses.asdict(cfg),
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "loadavg_before": os.getloadavg(),
    "useful_flops_definition": flops_lib.DEFINITION,
  }
  results["versions"] = _versions()
  gen = benchmark_generator(cfg.width, cfg.seed, cfg.latent_dim)
  log(
    f"generator: DCGAN width {cfg.width}; sites {', '.join(cfg.sites)}; contenders "
    f"{', '.join(cfg.contenders)}; N = {cfg.n_pairs}"
  )
  flops = {}
  for site in cfg.sites:
    fp, fs = flops_lib.flops_per_image(gen, site)
    c = gen.site_shape(site)[-1]
    flops[site] = {
      "channels": c,
      "f_prefix": fp,
      "f_suffix": fs,
      "useful_flops": flops_lib.useful_flops(fp, fs, c, cfg.n_pairs),
    }
  results["flops"] = flops

  with tempfile.TemporaryDirectory(prefix="cfmod_bench_") as work:
    variables_path = os.path.join(work, "generator")
    # every worker uses exactly these weights
    save_generator(gen, variables_path, width=cfg.width, latent_dim=cfg.latent_dim)
    pairs_path = os.path.join(work, "pairs.npz")  # and these pairs
    z1, z2 = benchmark_pairs(gen, cfg.n_pairs, cfg.seed)
    np.savez(pairs_path, z1=z1, z2=z2)
    matmul = {"jax": [], "torch": []}

    def measure_matmul(when):  # in this process: its memory does not matter
      r = run_task({"kind": "matmul", "n": cfg.matmul_n, "torch_threads": cfg.torch_threads})
      for f in matmul:
        matmul[f].append(r[f])
      log(
        f"float32 matmul ({when}): jax {r['jax']['gflops']:.1f}, torch "
        f"{r['torch']['gflops']:.1f} GFLOP/s"
      )

    measure_matmul("start")
    records = []
    maps_paths = {}
    for site in cfg.sites:
      for contender in cfg.contenders:
        path = os.path.join(work, f"{contender}_{site}.npy")
        task = {
          "kind": "eims",
          "contender": contender,
          "site": site,
          "n_pairs": cfg.n_pairs,
          "width": cfg.width,
          "latent_dim": cfg.latent_dim,
          "seed": cfg.seed,
          "pair_chunk": cfg.pair_chunk,
          "maps_path": path,
          "warmup": True,
          "variables_path": variables_path,
          "pairs_path": pairs_path,
          "torch_threads": cfg.torch_threads,
        }
        r = _spawn(task, work, cfg.worker_timeout_s)
        maps_paths[(contender, site)] = path
        records.append(r)
        log(
          f"{contender}/{site}: {r['seconds']:.2f} s, {r['hybrids'] / r['seconds']:.0f} "
          f"hybrids/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"({time.perf_counter() - t_start:.0f} s elapsed)"
        )
    measure_matmul("end")

    memory = None
    if cfg.memory_check:
      memory = {"site": cfg.memory_site, "contender": "cfmod_jax", "runs": []}
      for n in cfg.memory_n_pairs:
        task = {
          "kind": "eims",
          "contender": "cfmod_jax",
          "site": cfg.memory_site,
          "n_pairs": int(n),
          "width": cfg.width,
          "latent_dim": cfg.latent_dim,
          "seed": cfg.seed,
          "pair_chunk": cfg.pair_chunk,
          "maps_path": None,
          "warmup": False,
          "variables_path": variables_path,
        }
        r = _spawn(task, work, cfg.worker_timeout_s)
        memory["runs"].append(
          {
            "n_pairs": int(n),
            "peak_rss_mib": r["peak_rss_mib"],
            "setup_rss_mib": r["setup_rss_mib"],
            "workload_rss_mib": r["workload_rss_mib"],
            "seconds_incl_compile": r["seconds"],
          }
        )
        log(f"memory check cfmod_jax/{cfg.memory_site} N={n}: peak RSS {r['peak_rss_mib']:.0f} MiB")
      lo, hi = memory["runs"][0], memory["runs"][-1]
      memory["ratio"] = hi["peak_rss_mib"] / lo["peak_rss_mib"]
      memory["flat_within_1.2x"] = bool(memory["ratio"] <= 1.2)

    # Map agreement with cfmod_jax.
    for r in records:
      ref = maps_paths.get(("cfmod_jax", r["site"]))
      if ref is None:
        r["max_abs_diff_vs_cfmod_jax"] = None
        r["max_map_value"] = None
        continue
      a, b = np.load(ref), np.load(maps_paths[(r["contender"], r["site"])])
      r["max_abs_diff_vs_cfmod_jax"] = float(np.abs(a - b).max())
      r["max_map_value"] = float(a.max())

  peak = {f: max(m["gflops"] for m in ms) for f, ms in matmul.items()}
  machine_peak = max(peak.values())
  results["matmul"] = {
    "n": cfg.matmul_n,
    "runs": matmul,
    "peak_gflops": peak,
    "machine_peak_gflops": machine_peak,
  }
  for r in records:
    uf = flops[r["site"]]["useful_flops"]
    r["hybrids_per_s"] = r["hybrids"] / r["seconds"]
    r["useful_gflop"] = uf / 1e9
    r["useful_gflops"] = uf / r["seconds"] / 1e9
    r["fraction_of_peak"] = r["useful_gflops"] / machine_peak
    r["compute_floor_s"] = uf / (machine_peak * 1e9)
    r["seconds_over_floor"] = r["seconds"] / r["compute_floor_s"]
  results["records"] = records
  results["memory_check"] = memory
  results["targets"] = _targets(records, cfg)
  results["loadavg_after"] = os.getloadavg()
  results["total_seconds"] = time.perf_counter() - t_start
  return results


def _targets(records: list[dict[str, Any]], cfg: BenchConfig) -> dict[str, Any] | None:
  """(a) ≥ 3× faster than (b) in geometric mean over sites, and no site slower."""
  if "cfmod_jax" not in cfg.contenders or "torch" not in cfg.contenders:
    return None
  t = {(r["contender"], r["site"]): r["seconds"] for r in records}
  speedups = {s: t[("torch", s)] / t[("cfmod_jax", s)] for s in cfg.sites}
  geo = float(np.exp(np.mean(np.log(list(speedups.values())))))
  out = {
    "speedup_vs_torch": speedups,
    "geomean_speedup_vs_torch": geo,
    "geomean_at_least_3x": bool(geo >= 3.0),
    "no_site_slower_than_torch": bool(min(speedups.values()) >= 1.0),
  }
  if "naive_jax" in cfg.contenders:
    sp = {s: t[("naive_jax", s)] / t[("cfmod_jax", s)] for s in cfg.sites}
    out["speedup_vs_naive_jax"] = sp
    out["geomean_speedup_vs_naive_jax"] = float(np.exp(np.mean(np.log(list(sp.values())))))
  return out


def _versions() -> dict[str, str | None]:
  import importlib.metadata as md

  out = {}
  for p in ("jax", "jaxlib", "flax", "torch", "numpy"):
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      out[p] = None
  return out


__all__ = ["cpu_model", "run_benchmark"]
