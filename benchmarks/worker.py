"""The benchmark's worker: one measurement per fresh process.

``python -m benchmarks.worker --task spec.json`` (started by `benchmarks.harness`
with the repository root on ``PYTHONPATH``) runs `run_task` and writes its record
to the task's ``result_path``. Peak memory is this process's own: the
high-water mark of its resident set (``VmHWM``, see `_rss_mib`), which includes the
interpreter, the framework and its compiler; ``workload_rss_mib`` is the part
added by the measured computation (peak minus the peak before it).

Timings exclude compilation: every contender first runs a warm-up (cfmod_jax: the
whole call; torch and naive JAX: channel 0 for every pair chunk), then one timed
run. JAX compile time (lowering + XLA compilation, from `jax.monitoring` events)
is reported separately; torch has nothing to compile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.config import CONTENDERS, MATMUL_N, MATMUL_REPEATS, SITES
from benchmarks.workload import (
  benchmark_generator,
  benchmark_key,
  benchmark_pairs,
  load_generator,
  load_numpy_variables,
)


def _cpu_s() -> float:
  """User + system CPU seconds of this process so far (all threads)."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
  """Peak resident memory of this process so far, MiB.

  Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own
  address space. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used there because
  the kernel carries the parent's high-water mark over fork/exec into it (a worker
  started by a 500 MiB parent would report ≥ 500 MiB). Elsewhere: ru_maxrss.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return float(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / scale


class _Progress:
  """Logs (to stderr) every ~10% of the channels of a site."""

  def __init__(self, label: str, total: int):
    self.label, self.total, self.done, self.next = label, total, 0, max(1, total // 10)
    self.t0 = time.perf_counter()

  def __call__(self, k: int):
    self.done += k
    if self.done >= self.next or self.done == self.total:
      el = time.perf_counter() - self.t0
      eta = el / self.done * (self.total - self.done)
      print(
        f"  {self.label}: {self.done}/{self.total} channel passes, {el:.0f} s, ETA {eta:.0f} s",
        file=sys.stderr,
        flush=True,
      )
      self.next += max(1, self.total // 10)


class _CompileTimer:
  """Sums JAX's own compile-time events (lowering to MLIR + XLA backend compilation)
  while active; tracing is left out (its events nest for inner jits)."""

  EVENTS = (
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
  )

  def __init__(self):
    self.seconds, self.active = 0.0, False
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **_):
    if self.active and event in self.EVENTS:
      self.seconds += duration

  def __enter__(self):
    self.active = True
    return self

  def __exit__(self, *exc):
    self.active = False


def _matmul_gflops(framework: str, n: int = MATMUL_N, repeats: int = MATMUL_REPEATS) -> float:
  """Best-of-``repeats`` float32 ``[n, n] @ [n, n]`` GFLOP/s."""
  best = math.inf
  if framework == "jax":
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    for _ in range(repeats):
      t = time.perf_counter()
      f(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t)
  elif framework == "torch":
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    with torch.inference_mode():
      torch.mm(a, b)
      for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
  else:
    raise ValueError(f"unknown framework {framework!r}")
  return 2.0 * n**3 / best / 1e9


def run_task(task: dict[str, Any]) -> dict[str, Any]:
  """Runs one measurement (in this process) and returns its record.

  ``task['kind']``: 'matmul' (``n``: jax and torch) or 'eims' (``contender``, ``site``,
  ``n_pairs``, ``width``, ``latent_dim``, ``seed``, ``pair_chunk``, ``warmup``, and
  optionally ``variables_path`` (`workload.save_generator`), ``pairs_path`` (npz with z1, z2),
  ``maps_path`` (where to save the maps), ``torch_threads``). The torch contender
  uses no JAX computation when both paths are given (JAX's modules are imported
  with the package, but no JAX runtime starts).
  """
  load_before = os.getloadavg()
  if task.get("torch_threads") and (task["kind"] == "matmul" or task["contender"] == "torch"):
    import torch

    torch.set_num_threads(task["torch_threads"])
  if task["kind"] == "matmul":
    return {
      f: {
        "n": task["n"],
        "gflops": _matmul_gflops(f, task["n"]),
        "threads": _threads(f),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
      }
      for f in ("jax", "torch")
    }

  contender, site, n = task["contender"], task["site"], task["n_pairs"]
  if contender not in CONTENDERS:
    raise ValueError(f"unknown contender {contender!r}; expected one of {CONTENDERS}")
  numpy_only = contender == "torch" and task.get("variables_path") and task.get("pairs_path")
  if numpy_only:
    (variables, _), gen = load_numpy_variables(task["variables_path"]), None
  elif task.get("variables_path"):
    gen = load_generator(task["variables_path"])
  else:
    gen = benchmark_generator(task["width"], task["seed"], task["latent_dim"])
  if task.get("pairs_path"):
    with np.load(task["pairs_path"]) as f:
      z1, z2 = f["z1"], f["z2"]
  else:
    z1, z2 = benchmark_pairs(gen, n, task["seed"])
  channels = (
    task["width"] * 2 ** (3 - SITES.index(site)) if gen is None else gen.site_shape(site)[-1]
  )
  label = f"{contender}/{site}"
  compile_s = None
  warmup = task.get("warmup", True)
  if contender == "cfmod_jax":
    import jax

    from cfmod_jax.interventions import elementary_influence_maps

    key = benchmark_key(task["seed"])
    run = lambda: jax.block_until_ready(elementary_influence_maps(gen, site, n, key))
    setup_rss = _rss_mib()
    timer = _CompileTimer()
    if warmup:  # the whole computation once: compiles, and warms every buffer
      with timer:
        run()
    t0, c0 = time.perf_counter(), _cpu_s()
    with timer:
      maps = np.asarray(run())
    seconds = time.perf_counter() - t0 - (0.0 if warmup else timer.seconds)
    compile_s = timer.seconds
  elif contender == "naive_jax":
    from benchmarks.naive import naive_eims

    setup_rss = _rss_mib()
    chunk = task["pair_chunk"]
    timer = _CompileTimer()
    if warmup:  # compiles, and runs channel 0 for every pair chunk
      with timer:
        naive_eims(gen, site, z1, z2, pair_chunk=chunk, channels=[0])
    t0, c0 = time.perf_counter(), _cpu_s()
    with timer:
      maps = naive_eims(
        gen, site, z1, z2, pair_chunk=chunk, progress=_Progress(label, channels * -(-n // chunk))
      )
    seconds = time.perf_counter() - t0 - (0.0 if warmup else timer.seconds)
    compile_s = timer.seconds
  elif contender == "torch":
    from benchmarks import torch_dcgan

    model = torch_dcgan.from_flax(
      variables if gen is None else gen.variables, task["latent_dim"], task["width"]
    )
    setup_rss = _rss_mib()
    chunk = task["pair_chunk"]
    if warmup:  # channel 0 for every pair chunk: oneDNN primitives, allocator
      torch_dcgan.hook_eims(model, site, z1, z2, pair_chunk=chunk, channels=[0])
    t0, c0 = time.perf_counter(), _cpu_s()
    maps = torch_dcgan.hook_eims(
      model, site, z1, z2, pair_chunk=chunk, progress=_Progress(label, channels * -(-n // chunk))
    )
    seconds = time.perf_counter() - t0
  cpu_seconds = _cpu_s() - c0
  peak = _rss_mib()
  if task.get("maps_path"):
    np.save(task["maps_path"], np.asarray(maps, np.float32))
  return {
    "contender": contender,
    "site": site,
    "channels": int(channels),
    "n_pairs": int(n),
    "hybrids": int(channels * n),
    "seconds": seconds,
    "compile_seconds": compile_s,
    "cpu_seconds": cpu_seconds,
    "peak_rss_mib": peak,
    "setup_rss_mib": setup_rss,
    "workload_rss_mib": peak - setup_rss,
    "threads": _threads("torch" if contender == "torch" else "jax"),
    "loadavg_before": load_before,
    "loadavg_after": os.getloadavg(),
  }


def _threads(framework: str) -> int | None:
  if framework == "torch":
    import torch

    return torch.get_num_threads()
  return os.cpu_count()


def _worker_main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="one benchmark measurement (internal)")
  parser.add_argument(
    "--task",
    required=True,
    help="JSON file with the task; the record is written to its 'result_path'",
  )
  args = parser.parse_args(argv)
  with open(args.task) as f:
    task = json.load(f)
  record = run_task(task)
  with open(task["result_path"], "w") as f:
    json.dump(record, f)


__all__ = ["run_task"]

if __name__ == "__main__":
  _worker_main()
