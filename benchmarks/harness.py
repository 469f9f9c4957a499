"""Measurements for the EIM benchmark: cfmod_jax vs the PyTorch contenders (and naive JAX).

Workload (`benchmarks.workload`): the elementary influence maps (EIMs) of every
hidden site of DCGAN-64 for N latent pairs, with the same weights (random init,
`benchmark_generator`: BatchNorm running statistics and affine parameters set to
non-trivial random values) and the same pairs (`benchmark_pairs`, drawn exactly as
`elementary_influence_maps` draws them) for every contender:

* ``cfmod_jax``: `cfmod_jax.elementary_influence_maps` (method 'auto': the linear split).
* ``torch_hooks``: `benchmarks.torch_dcgan.hook_eims` — forward hook, one full
  forward pass per channel (what hook-based tools do).
* ``torch_batched``: `benchmarks.torch_fast` — cfmod_jax's mask path in PyTorch
  (BatchNorm folded, prefix once per pair chunk, hybrids of a chunk of channels as
  one batch through the suffix).
* ``torch_linear``: `benchmarks.torch_fast` — cfmod_jax's linear split in PyTorch
  (the next ConvTranspose once on a1, each channel's rank-1 contribution by one
  grouped transposed convolution per chunk of channels).
* ``torch_batched_compiled``, ``torch_linear_compiled``: the same with the per-chunk
  function ``torch.compile``d (inductor, its caches disabled so that the compile time
  is a cold one, as JAX's); a contender that cannot run here (no C++
  compiler, …) is listed under ``failed`` with its error instead of stopping the run.
* ``naive_jax`` (opt-in): `benchmarks.naive.naive_eims` — one jitted full forward pass per channel.

The torch contenders run under ``torch.inference_mode()``; torch_batched/linear try
``channels_last`` and contiguous memory formats during their warm-up and keep the
faster (recorded as ``details.memory_format``).

**Timing design.** Per site, one long-lived worker process per contender
(``python -m benchmarks.worker --serve``; `benchmarks.worker`): its peak memory is
its own, and it is set up and warmed up once (compilation, memory-format choice),
one worker after the other so that no warm-up competes with another. Then the
contenders are timed **in rotation**: repeat r runs the contenders that started in
the order ``ok[r % k:] + ok[:r % k]`` (``ok``: the k contenders that started, in
config order), each doing one full timed run of the site when asked (one line on
its stdin). Slow drifts of the machine (another job starting, thermal state) so
hit every contender alike instead of whichever ran last, and no contender always
runs first. Every timed run's seconds, CPU seconds and load averages before and
after are kept (``repeat_*`` fields, and ``schedule`` in execution order); a
record's ``seconds`` is the median over the repeats, ``seconds_min`` /
``seconds_max`` the spread. Idle workers wait on a pipe (no CPU). Only one site's
workers are alive at a time.

**Work and floors** (`benchmarks.flops`): ``plain_algorithm_flops`` (the plain
algorithm: prefixes per pair, a full suffix per hybrid), ``minimal_flops`` (what
cfmod_jax's linear path must compute) and the per-hybrid memory traffic. The
**compute floor** of a site is ``minimal_flops / peak`` with the peak the best
float32 matmul GFLOP/s measured in this run (jax and torch, ``MATMUL_N``²
matrices, best of ``MATMUL_REPEATS``, at the start and at the end); the **memory
floor** is ``hybrids · bytes_per_hybrid / bandwidth`` with the bandwidth the best
of `benchmarks.worker.memory_bandwidth` (jitted ``x + 1.0``) at the start and end.
``floors[site]['binding']`` says which is larger. The **efficiency** of a record is
``minimal_flops / seconds / peak``.

**Targets** (``targets``): per site the speed-up of cfmod_jax over each other
contender and over the fastest torch contender at that site (by median); the
geometric mean over sites of the latter; flags for ≥ 2.5× geometric mean, no site
below 1.5×, and cfmod_jax's efficiency ≥ 0.7 per site.

The outputs (``benchmark.json``, ``.md``, ``.png``) are written by `benchmarks.report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import config as bench_config
from benchmarks import flops as flops_lib
from benchmarks.config import BenchConfig, check_config
from benchmarks.worker import run_task
from benchmarks.workload import benchmark_generator, benchmark_pairs, save_generator

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def _env() -> dict[str, str]:
  return {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      [_ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ),
  }


def _spawn_all(
  tasks: Sequence[dict[str, Any]], workdir: str, timeout_s: float
) -> list[dict[str, Any]]:
  """Runs one-shot ``tasks`` in fresh Python processes, all at once; returns their records."""
  procs, outs = [], []
  for task in tasks:
    fd, task_path = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    task = {**task, "result_path": task_path + ".out"}
    with open(task_path, "w") as f:
      json.dump(task, f)
    outs.append(task["result_path"])
    procs.append(
      subprocess.Popen([sys.executable, "-m", "benchmarks.worker", "--task", task_path], env=_env())
    )
  try:
    for p in procs:
      if p.wait(timeout=timeout_s) != 0:
        raise RuntimeError(f"worker {p.args} exited with status {p.returncode}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  records = []
  for path in outs:
    with open(path) as f:
      records.append(json.load(f))
  return records


class _Worker:
  """A long-lived ``benchmarks.worker --serve`` process (commands on its stdin, JSON
  events on its stdout, read by a thread)."""

  def __init__(self, task: dict[str, Any], workdir: str, timeout_s: float):
    fd, path = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as f:
      json.dump(task, f)
    self.label = f"{task['contender']}/{task['site']}"
    self.timeout_s = timeout_s
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.worker", "--serve", path],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      bufsize=1,
      env=_env(),
    )
    self.events: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      try:
        self.events.put(json.loads(line))
      except json.JSONDecodeError:
        print(f"[{self.label}] {line.rstrip()}", file=sys.stderr)
    self.events.put(None)

  def event(self) -> dict[str, Any]:
    try:
      ev = self.events.get(timeout=self.timeout_s)
    except queue.Empty:
      self.kill()
      raise TimeoutError(f"worker {self.label}: no answer within {self.timeout_s} s") from None
    if ev is None:
      raise RuntimeError(f"worker {self.label} exited (status {self.proc.wait()})")
    return ev

  def ask(self, command: str) -> dict[str, Any]:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    ev = self.event()
    if ev.get("event") == "error":
      raise RuntimeError(f"worker {self.label}: {ev['error']}")
    return ev

  def close(self, wait: bool = True):
    """Closes the worker's stdin (it exits); waits for it unless ``wait`` is false."""
    try:
      self.proc.stdin.close()
    except OSError:
      pass
    if wait:
      self.wait()

  def wait(self):
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.kill()

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def rotation(contenders: Sequence[str], repeat: int) -> list[str]:
  """The order of the timed runs of repeat ``repeat`` (0-based): the list rotated
  left by ``repeat`` places."""
  k = len(contenders)
  r = repeat % k if k else 0
  return list(contenders[r:]) + list(contenders[:r])


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


def estimate_seconds(
  cfg: BenchConfig, costs: dict[str, dict[str, Any]], peak_gflops: float
) -> dict[str, Any]:
  """A rough run-time estimate (`config.ESTIMATE_FRACTION_OF_PEAK`): per (contender,
  site) the process start, the warm-up and ``repeats`` timed runs."""
  peak = peak_gflops * 1e9
  per = {}
  for s in cfg.sites:
    k = costs[s]
    c, n = k["channels"], cfg.n_pairs
    minimal = k["minimal_flops"] or k["plain_algorithm_flops"]
    per_hybrid_pass = n * (c + 1) * (k["f_prefix"] + k["f_suffix"])
    for name in cfg.contenders:
      work = {
        "cfmod_jax": minimal,
        "cfmod_jax_from_torch": minimal,
        "torch_linear": minimal,
        "torch_linear_compiled": minimal,
        "torch_batched": k["plain_algorithm_flops"],
        "torch_batched_compiled": k["plain_algorithm_flops"],
      }.get(name, per_hybrid_pass)
      run = work / (peak * bench_config.ESTIMATE_FRACTION_OF_PEAK[name])
      if name in ("cfmod_jax", "cfmod_jax_from_torch"):
        warm = run + 3.0
      elif name in ("torch_hooks", "naive_jax"):
        warm = run / c
      else:  # two calls of a chunk per memory layout tried (+ compilation)
        layouts = 3 if name.startswith("torch_linear") else 2
        warm = run * 2 * layouts * min(cfg.channel_chunk, c) / c
        if name in bench_config.COMPILED_CONTENDERS:
          warm += layouts * bench_config.ESTIMATE_COMPILE_S
      per[f"{name}/{s}"] = bench_config.ESTIMATE_START_S + warm + cfg.repeats * run
  total = sum(per.values()) + 20.0  # matmul, bandwidth, FLOP counts
  if cfg.memory_check:
    k = costs.get(cfg.memory_site)
    mem_run = (k["minimal_flops"] or k["plain_algorithm_flops"]) / cfg.n_pairs if k else 0.0
    frac = bench_config.ESTIMATE_FRACTION_OF_PEAK["cfmod_jax"]
    total += sum(
      bench_config.ESTIMATE_START_S + 3.0 + m * mem_run / (peak * frac) for m in cfg.memory_n_pairs
    )
  return {"total_s": total, "per_worker_s": per}


def run_benchmark(cfg: BenchConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
  """Runs every measurement of ``cfg`` in worker processes; returns the results dict
  (see `benchmarks.report.write_outputs` for the files)."""
  check_config(cfg)
  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "config": dataclasses.asdict(cfg),
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "loadavg_before": os.getloadavg(),
    "definitions": {
      "plain_algorithm_flops": flops_lib.PLAIN_DEFINITION,
      "minimal_flops": flops_lib.MINIMAL_DEFINITION,
      "memory_floor": flops_lib.MEMORY_DEFINITION,
      "efficiency": flops_lib.EFFICIENCY_DEFINITION,
      "seconds": "median of the timed repeats (each excludes compilation and warm-up)",
      "rotation": "repeat r times the contenders that started in the order ok[r % k:] + ok[:r % k]",
    },
  }
  results["versions"] = _versions()
  gen = benchmark_generator(cfg.width, cfg.seed, cfg.latent_dim)
  log(
    f"generator: DCGAN width {cfg.width}; sites {', '.join(cfg.sites)}; contenders "
    f"{', '.join(cfg.contenders)}; N = {cfg.n_pairs}; {cfg.repeats} interleaved repeats"
  )
  costs = {s: flops_lib.site_costs(gen, s, cfg.n_pairs) for s in cfg.sites}
  results["costs"] = costs

  with tempfile.TemporaryDirectory(prefix="cfmod_bench_") as work:
    variables_path = os.path.join(work, "generator")
    # every worker uses exactly these weights
    save_generator(gen, variables_path, width=cfg.width, latent_dim=cfg.latent_dim)
    pairs_path = os.path.join(work, "pairs.npz")  # and these pairs
    z1, z2 = benchmark_pairs(gen, cfg.n_pairs, cfg.seed)
    np.savez(pairs_path, z1=z1, z2=z2)
    matmul: dict[str, list] = {"jax": [], "torch": []}
    bandwidth: list[dict[str, Any]] = []

    def measure_machine(when):  # in this process: its memory does not matter
      r = run_task({"kind": "matmul", "n": cfg.matmul_n, "torch_threads": cfg.torch_threads})
      for f in matmul:
        matmul[f].append(r[f])
      b = run_task({"kind": "bandwidth", "mib": cfg.bandwidth_mib})
      bandwidth.append(b)
      log(
        f"float32 matmul ({when}): jax {r['jax']['gflops']:.1f}, torch "
        f"{r['torch']['gflops']:.1f} GFLOP/s; memory bandwidth {b['gb_per_s']:.1f} GB/s"
      )

    measure_machine("start")
    peak0 = max(m["gflops"] for ms in matmul.values() for m in ms)
    estimate = estimate_seconds(cfg, costs, peak0)
    results["estimate"] = estimate
    log(f"estimated total run time: {estimate['total_s'] / 60:.0f} min (rough)")

    records, failed, schedule, maps_paths = [], [], [], {}
    for site in cfg.sites:
      workers, ready, started = {}, {}, {}
      try:
        for contender in cfg.contenders:  # all processes load at once (imports, weights)
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
            "channel_chunk": cfg.channel_chunk,
            "maps_path": path,
            "variables_path": variables_path,
            "pairs_path": pairs_path,
            "torch_threads": cfg.torch_threads,
            "cold_compile": True,
          }
          started[contender] = _Worker(task, work, cfg.worker_timeout_s)
          maps_paths[(contender, site)] = path
        loaded = {c: w.event() for c, w in started.items()}  # then warm up one by one
        for contender, w in started.items():
          ev = loaded[contender]
          if ev.get("event") == "loaded":
            w.proc.stdin.write("warmup\n")
            w.proc.stdin.flush()
            ev = w.event()
          if ev.get("event") != "ready":
            failed.append({"contender": contender, "site": site, "error": ev.get("error")})
            log(f"{contender}/{site}: cannot run here: {ev.get('error')}")
            w.close()
            continue
          workers[contender], ready[contender] = w, ev
          log(
            f"{contender}/{site}: ready (warm-up {ev['warmup_seconds']:.1f} s"
            + (f", {ev['memory_format']}" if ev.get("memory_format") else "")
            + (f", compile {ev['compile_seconds']:.1f} s" if ev.get("compile_seconds") else "")
            + ")"
          )
        ok = list(workers)
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in ok}
        for r in range(cfg.repeats):
          for pos, contender in enumerate(rotation(ok, r)):
            started_at = time.perf_counter() - t_start
            ev = workers[contender].ask("run")
            ev = {**ev, "repeat": r, "position": pos}
            runs[contender].append(ev)
            schedule.append(
              {
                "site": site,
                "repeat": r,
                "position": pos,
                "contender": contender,
                "seconds": ev["seconds"],
                "started_at_s": started_at,
                "loadavg_before": ev["loadavg_before"],
                "loadavg_after": ev["loadavg_after"],
              }
            )
            log(
              f"{site} repeat {r + 1}/{cfg.repeats} {contender}: {ev['seconds']:.2f} s "
              f"(load {ev['loadavg_before'][0]:.2f} → {ev['loadavg_after'][0]:.2f}; "
              f"{time.perf_counter() - t_start:.0f} s elapsed)"
            )
        for contender in ok:
          done = workers[contender].ask("finish")
          records.append(
            _record(contender, site, costs[site], ready[contender], runs[contender], done)
          )
      finally:  # all exit at once; the next measurement starts when they are gone
        for w in started.values():
          w.close(wait=False)
        for w in started.values():
          w.wait()
    measure_machine("end")

    memory = None
    if cfg.memory_check:
      memory = {"site": cfg.memory_site, "contender": "cfmod_jax", "runs": []}
      tasks = [
        {
          "kind": "eims",
          "contender": "cfmod_jax",
          "site": cfg.memory_site,
          "n_pairs": int(n),
          "width": cfg.width,
          "latent_dim": cfg.latent_dim,
          "seed": cfg.seed,
          "pair_chunk": cfg.pair_chunk,
          "warmup": False,
          "variables_path": variables_path,
        }
        for n in cfg.memory_n_pairs
      ]
      # Concurrent processes: each one's peak memory is its own (their seconds are not
      # a timing result).
      for n, r in zip(cfg.memory_n_pairs, _spawn_all(tasks, work, cfg.worker_timeout_s)):
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
        r["max_abs_diff_vs_cfmod_jax"] = r["max_map_value"] = None
        continue
      a, b = np.load(ref), np.load(maps_paths[(r["contender"], r["site"])])
      r["max_abs_diff_vs_cfmod_jax"] = float(np.abs(a - b).max())
      r["max_map_value"] = float(a.max())

  peak = {f: max(m["gflops"] for m in ms) for f, ms in matmul.items()}
  machine_peak = max(peak.values())
  bw = max(b["gb_per_s"] for b in bandwidth)
  results["matmul"] = {
    "n": cfg.matmul_n,
    "runs": matmul,
    "peak_gflops": peak,
    "machine_peak_gflops": machine_peak,
  }
  results["bandwidth"] = {"mib": cfg.bandwidth_mib, "runs": bandwidth, "best_gb_per_s": bw}
  results["floors"] = floors = {s: site_floors(costs[s], machine_peak, bw) for s in cfg.sites}
  for r in records:
    derive(r, costs[r["site"]], floors[r["site"]], machine_peak)
  results["records"] = records
  results["failed"] = failed
  results["schedule"] = schedule
  results["memory_check"] = memory
  results["targets"] = targets(records, cfg.sites)
  results["headline"] = headline(results["targets"])
  results["loadavg_after"] = os.getloadavg()
  results["total_seconds"] = time.perf_counter() - t_start
  log(
    f"total {results['total_seconds'] / 60:.1f} min (estimated {estimate['total_s'] / 60:.1f} min)"
  )
  return results


def _record(contender, site, cost, ready, runs, done) -> dict[str, Any]:
  """A (contender, site) record from its worker's events (derived numbers: `derive`)."""
  secs = [e["seconds"] for e in runs]
  keep = ("compile_seconds", "warmup_seconds", "setup_rss_mib", "threads", "channels")
  details = {k: v for k, v in ready.items() if k not in (*keep, "event", "pid")}
  details["compile_seconds_in_timed_runs"] = [e["compile_seconds_in_run"] for e in runs]
  return {
    "contender": contender,
    "site": site,
    "channels": ready["channels"],
    "n_pairs": cost["n_pairs"],
    "hybrids": ready["channels"] * cost["n_pairs"],
    "seconds": float(np.median(secs)),
    "seconds_min": min(secs),
    "seconds_max": max(secs),
    "repeat_seconds": secs,
    "repeat_cpu_seconds": [e["cpu_seconds"] for e in runs],
    "repeat_loadavg_before": [e["loadavg_before"] for e in runs],
    "repeat_loadavg_after": [e["loadavg_after"] for e in runs],
    "repeat_order_positions": [e["position"] for e in runs],
    "cpu_seconds": float(np.median([e["cpu_seconds"] for e in runs])),
    "compile_seconds": ready.get("compile_seconds"),
    "warmup_seconds": ready["warmup_seconds"],
    "peak_rss_mib": done["peak_rss_mib"],
    "setup_rss_mib": ready["setup_rss_mib"],
    "workload_rss_mib": done["workload_rss_mib"],
    "max_abs_diff_between_repeats": done["max_abs_diff_between_repeats"],
    "threads": ready["threads"],
    "details": details,
  }


def site_floors(cost: dict[str, Any], peak_gflops: float, bandwidth_gb_s: float) -> dict[str, Any]:
  """The compute floor (``minimal_flops / peak``), the memory floor (``hybrids ·
  bytes_per_hybrid / bandwidth``), the larger of the two (``floor_s``, ``binding``)
  and the efficiency a run at that floor would have (``efficiency_at_floor``)."""
  if cost["minimal_flops"] is None:
    return {"compute_floor_s": None, "memory_floor_s": None, "floor_s": None, "binding": None}
  compute = cost["minimal_flops"] / (peak_gflops * 1e9)
  memory = cost["hybrids"] * cost["bytes_per_hybrid"] / (bandwidth_gb_s * 1e9)
  floor = max(compute, memory)
  return {
    "compute_floor_s": compute,
    "memory_floor_s": memory,
    "floor_s": floor,
    "binding": "compute" if compute >= memory else "memory",
    "efficiency_at_floor": compute / floor,
    "memory_gb": cost["hybrids"] * cost["bytes_per_hybrid"] / 1e9,
  }


def derive(
  r: dict[str, Any], cost: dict[str, Any], floor: dict[str, Any], peak_gflops: float
) -> None:
  """Adds the numbers that follow from a record's median seconds (in place)."""
  s = r["seconds"]
  r["hybrids_per_s"] = r["hybrids"] / s
  r["plain_algorithm_gflop"] = cost["plain_algorithm_flops"] / 1e9
  r["plain_algorithm_gflops"] = r["plain_algorithm_gflop"] / s
  if cost["minimal_flops"] is None:
    r["minimal_gflop"] = r["minimal_gflops"] = r["efficiency"] = r["seconds_over_floor"] = None
    return
  r["minimal_gflop"] = cost["minimal_flops"] / 1e9
  r["minimal_gflops"] = r["minimal_gflop"] / s
  r["efficiency"] = r["minimal_gflops"] / peak_gflops
  r["seconds_over_floor"] = s / floor["floor_s"]


def _geomean(values) -> float:
  return float(np.exp(np.mean(np.log(list(values)))))


def targets(records: list[dict[str, Any]], sites: Sequence[str]) -> dict[str, Any] | None:
  """cfmod_jax vs every other contender and vs the fastest torch contender per site
  (by median seconds); None unless cfmod_jax and a torch contender ran at every site."""
  t = {(r["contender"], r["site"]): r["seconds"] for r in records}
  torch_at = {s: [c for c in bench_config.TORCH_CONTENDERS if (c, s) in t] for s in sites}
  if any(("cfmod_jax", s) not in t or not torch_at[s] for s in sites):
    return None
  others = sorted({c for c, _ in t if c != "cfmod_jax"}, key=bench_config.CONTENDERS.index)
  speedup_vs = {
    c: {s: t[(c, s)] / t[("cfmod_jax", s)] for s in sites if (c, s) in t} for c in others
  }
  best = {s: min(torch_at[s], key=lambda c: t[(c, s)]) for s in sites}  # noqa: B023
  vs_best = {s: t[(best[s], s)] / t[("cfmod_jax", s)] for s in sites}
  geo = _geomean(vs_best.values())
  eff = {r["site"]: r["efficiency"] for r in records if r["contender"] == "cfmod_jax"}
  eff_ok = {s: bool(eff[s] is not None and eff[s] >= 0.7) for s in sites}
  return {
    "speedup_vs": speedup_vs,
    "best_torch": best,
    "speedup_vs_best_torch": vs_best,
    "geomean_speedup_vs_best_torch": geo,
    "geomean_vs_best_torch_at_least_2.5x": bool(geo >= 2.5),
    "no_site_below_1.5x_vs_best_torch": bool(min(vs_best.values()) >= 1.5),
    "efficiency": {s: eff[s] for s in sites},
    "efficiency_at_least_0.7": eff_ok,
    "all_sites_efficiency_at_least_0.7": all(eff_ok.values()),
  }


def headline(tg: dict[str, Any] | None) -> str | None:
  """The one-sentence summary: cfmod_jax vs the fastest PyTorch contender, per site."""
  if not tg:
    return None
  per_site = ", ".join(
    f"{s} {v:.1f}× vs {tg['best_torch'][s]}" for s, v in tg["speedup_vs_best_torch"].items()
  )
  return (
    "cfmod_jax vs the fastest PyTorch contender in this run, per site (median of the "
    f"interleaved repeats): geometric mean {tg['geomean_speedup_vs_best_torch']:.2f}× "
    f"({per_site})."
  )


def _versions() -> dict[str, str | None]:
  import importlib.metadata as md

  out = {}
  for p in ("jax", "jaxlib", "flax", "torch", "numpy"):
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      out[p] = None
  return out


__all__ = [
  "cpu_model",
  "derive",
  "estimate_seconds",
  "headline",
  "rotation",
  "run_benchmark",
  "site_floors",
  "targets",
]
