"""The benchmark's workers: one long-lived process per (contender, site).

``python -m benchmarks.worker --serve spec.json`` (started by `benchmarks.harness`
with the repository root on ``PYTHONPATH``) loads the shared weights and pairs,
builds the contender (`make_runner`), then answers commands read from stdin, one
per line, with one JSON event per line on stdout:

* at start: ``{"event": "loaded", …}``;
* ``warmup``: warms the contender up once → ``{"event": "ready", …}`` (warm-up facts:
  compile seconds, the memory format chosen, …);
* ``run``: one timed run of the whole site → ``{"event": "run", "seconds", "cpu_seconds",
  "loadavg_before", "loadavg_after", …}``;
* ``finish``: saves the maps of the last run (``maps_path``) → ``{"event": "done",
  "peak_rss_mib", …}`` and exits.

A contender that cannot run here (e.g. ``torch.compile`` without a working C++
compiler) answers ``{"event": "error", "error": …}`` instead and exits.

Anything else the process prints (libraries, progress) goes to stderr: the protocol
owns stdout (see `_protocol_stream`). ``python -m benchmarks.worker --task spec.json``
runs one task (`run_task`: the matmul peak, the memory bandwidth, or a one-shot
EIM run for the memory check) and writes its record to the task's ``result_path``.

Peak memory is the process's own high-water mark (``VmHWM``, see `_rss_mib`),
which includes the interpreter, the framework, its compiler and the warm-up;
``workload_rss_mib`` is the part added after setup. Timed runs exclude compilation
and warm-up: every contender is warmed up before its first timed run
(cfmod_jax: the whole call; torch_hooks and naive JAX: channel 0 for every pair
chunk; torch_batched/linear: their first channel chunk for every pair chunk, in
each memory layout — contiguous, channels_last and, for torch_linear, 'mixed' (see
`benchmarks.torch_fast.LAYOUTS`) — the fastest is kept). JAX compile time (lowering + XLA
compilation, from `jax.monitoring` events) and torch.compile time (first call
minus a second call of the same chunks, summed over the memory formats tried) are
reported separately.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from benchmarks.config import BANDWIDTH_REPEATS, CONTENDERS, MATMUL_N, MATMUL_REPEATS, SITES
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


def memory_bandwidth(mib: int, repeats: int = BANDWIDTH_REPEATS) -> dict[str, Any]:
  """Best-of-``repeats`` bandwidth of jitted ``x + 1.0`` on a float32 array of
  ``mib`` MiB in JAX: bytes read + written (2 × the array) per second.

  The input buffer is donated, so the output reuses it: a fresh output would be
  page-faulted in on every call (measured ~15× slower on the 2-core CPU), which is
  the allocator's cost, not the memory's.
  """
  import jax
  import jax.numpy as jnp

  n = max(1, mib * 2**20 // 4)
  f = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  x = f(jnp.zeros((n,), jnp.float32))
  x.block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    x = f(x)
    x.block_until_ready()
    times.append(time.perf_counter() - t)
  nbytes = 2.0 * 4 * n
  return {"bytes_per_run": nbytes, "seconds": times, "gb_per_s": nbytes / min(times) / 1e9}


# ---- the contenders ---------------------------------------------------------------
class _Runner:
  """One contender at one site: ``warmup()`` once, then ``run()`` per timed run."""

  framework = "jax"
  compile_timer: _CompileTimer | None = None

  def warmup(self) -> dict[str, Any]:
    return {}

  def run(self) -> np.ndarray:
    raise NotImplementedError


class _CfmodJax(_Runner):
  def __init__(self, gen, site, n, seed):
    import jax

    from cfmod_jax.interventions import elementary_influence_maps

    key = benchmark_key(seed)
    self._run = lambda: np.asarray(
      jax.block_until_ready(elementary_influence_maps(gen, site, n, key))
    )
    self.compile_timer = _CompileTimer()

  def warmup(self):  # the whole computation once: compiles, and warms every buffer
    with self.compile_timer:
      self._run()
    return {"compile_seconds": self.compile_timer.seconds, "method": "auto (linear split)"}

  def run(self):
    return self._run()


class _NaiveJax(_Runner):
  def __init__(self, gen, site, z1, z2, chunk):
    from benchmarks.naive import naive_eims

    self._eims = lambda **kw: naive_eims(gen, site, z1, z2, pair_chunk=chunk, **kw)
    self.compile_timer = _CompileTimer()

  def warmup(self):  # compiles, and runs channel 0 for every pair chunk
    with self.compile_timer:
      self._eims(channels=[0])
    return {"compile_seconds": self.compile_timer.seconds}

  def run(self):
    return self._eims()


class _TorchHooks(_Runner):
  framework = "torch"

  def __init__(self, model, site, z1, z2, chunk):
    from benchmarks import torch_dcgan

    self._eims = lambda **kw: torch_dcgan.hook_eims(model, site, z1, z2, pair_chunk=chunk, **kw)
    self.pair_chunk = chunk

  def warmup(self):  # channel 0 for every pair chunk: oneDNN primitives, allocator
    self._eims(channels=[0])
    return {"compile_seconds": None, "pair_chunk": self.pair_chunk}

  def run(self):
    return self._eims()


class _TorchFast(_Runner):
  """torch_batched / torch_linear (``compiled``: their torch.compile'd versions)."""

  framework = "torch"

  FORMATS = {
    "batched": ("contiguous", "channels_last"),
    "linear": ("contiguous", "channels_last", "mixed"),
  }

  def __init__(self, model, site, z1, z2, kind, compiled, pair_chunk, channel_chunk, formats, cold):
    self.model, self.site, self.z1, self.z2 = model, site, z1, z2
    self.kind, self.compiled = kind, compiled
    self.cold = bool(cold and compiled)
    if self.cold:  # no inductor cache from earlier runs: cold compile times, as JAX's
      import torch

      torch.compiler.config.force_disable_caches = True
    self.pair_chunk, self.channel_chunk = pair_chunk, channel_chunk
    self.formats = self.FORMATS[kind] if formats is None else tuple(formats)
    if not self.formats or any(f not in self.FORMATS[kind] for f in self.formats):
      raise ValueError(f"memory_formats must be a non-empty subset of {self.FORMATS[kind]}")
    self.chosen = None

  def _eims(self, folded, fn, starts=None):
    from benchmarks.torch_fast import fast_eims

    return fast_eims(
      self.kind,
      folded,
      self.site,
      self.z1,
      self.z2,
      pair_chunk=self.pair_chunk,
      channel_chunk=self.channel_chunk,
      chunk_fn=fn,
      chunk_starts=starts,
    )

  def warmup(self):
    """Each memory layout (`FORMATS`): a first call on the warm-up chunks
    (torch.compile compiles here) and a second one, timed; the fastest is kept."""
    from benchmarks.torch_fast import FoldedDCGAN, make_chunk_fn

    i = SITES.index(self.site)
    c = (8, 4, 2, 1)[i] * self.model.width
    cc = min(self.channel_chunk, c)
    starts = [0] + ([c - c % cc] if c % cc and c > cc else [])  # every chunk shape
    trials, errors = {}, {}
    for fmt in self.formats:
      try:
        folded = FoldedDCGAN(self.model, layout=fmt)
        fn = make_chunk_fn(self.kind, folded, i, compiled=self.compiled)
        t0 = time.perf_counter()
        self._eims(folded, fn, starts)
        t1 = time.perf_counter()
        self._eims(folded, fn, starts)
        t2 = time.perf_counter()
      except Exception as e:  # noqa: BLE001 (torch.compile can fail in many ways)
        errors[fmt] = _one_line(e)
        continue
      trials[fmt] = {"first_call_s": t1 - t0, "second_call_s": t2 - t1, "folded": folded, "fn": fn}
    if not trials:
      raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    fmt = min(trials, key=lambda k: trials[k]["second_call_s"])
    self.chosen = trials[fmt]
    compile_s = sum(max(0.0, t["first_call_s"] - t["second_call_s"]) for t in trials.values())
    return {
      "memory_format": fmt,
      "format_trials_s": {
        k: {"first_call_s": v["first_call_s"], "second_call_s": v["second_call_s"]}
        for k, v in trials.items()
      },
      "format_errors": errors,
      "compile_seconds": compile_s if self.compiled else None,
      "channel_chunk": cc,
      "pair_chunk": self.pair_chunk,
      "warmup_channel_chunks": starts,
      **({"inductor_caches": "disabled" if self.cold else "default"} if self.compiled else {}),
    }

  def run(self):
    return self._eims(self.chosen["folded"], self.chosen["fn"])


def _one_line(e: BaseException) -> str:
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text[:2000]


def make_runner(task: dict[str, Any]) -> tuple[_Runner, int]:
  """The contender of an 'eims' task and the site's channel count.

  ``task``: ``contender``, ``site``, ``n_pairs``, ``width``, ``latent_dim``, ``seed``,
  ``pair_chunk``, ``channel_chunk``, and optionally ``variables_path``
  (`workload.save_generator`), ``pairs_path`` (npz with z1, z2), ``torch_threads``,
  ``memory_formats`` (the `benchmarks.torch_fast.LAYOUTS` torch_batched/linear try;
  default: contiguous and channels_last, and for torch_linear 'mixed'), ``cold_compile``
  (the compiled contenders compile without inductor's caches; default False).
  The torch contenders start no JAX runtime when both paths are given.
  """
  contender, site, n = task["contender"], task["site"], task["n_pairs"]
  if contender not in CONTENDERS:
    raise ValueError(f"unknown contender {contender!r}; expected one of {CONTENDERS}")
  if site not in SITES:
    raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
  is_torch = contender.startswith("torch_")
  if is_torch and task.get("torch_threads"):
    import torch

    torch.set_num_threads(task["torch_threads"])
  numpy_only = is_torch and task.get("variables_path") and task.get("pairs_path")
  if numpy_only:
    (variables, _), gen = load_numpy_variables(task["variables_path"]), None
  elif task.get("variables_path"):
    gen = load_generator(task["variables_path"])
    variables = gen.variables
  else:
    gen = benchmark_generator(task["width"], task["seed"], task["latent_dim"])
    variables = gen.variables
  if task.get("pairs_path"):
    with np.load(task["pairs_path"]) as f:
      z1, z2 = f["z1"], f["z2"]
  else:
    z1, z2 = benchmark_pairs(gen, n, task["seed"])
  channels = task["width"] * 2 ** (3 - SITES.index(site))
  chunk = task["pair_chunk"]
  if contender == "cfmod_jax":
    runner = _CfmodJax(gen, site, n, task["seed"])
  elif contender == "cfmod_jax_from_torch":  # the engine on the PyTorch twin, imported
    from benchmarks import torch_dcgan
    from cfmod_jax.torch_bridge import from_torch

    model = torch_dcgan.from_flax(variables, task["latent_dim"], task["width"]).eval()
    sites = {s: f"stages.{i}" for i, s in enumerate(SITES)}
    imported = from_torch(model, (task["latent_dim"],), sites, name="torch-dcgan")
    runner = _CfmodJax(imported, site, n, task["seed"])
  elif contender == "naive_jax":
    runner = _NaiveJax(gen, site, z1, z2, chunk)
  else:
    from benchmarks import torch_dcgan

    model = torch_dcgan.from_flax(variables, task["latent_dim"], task["width"])
    if contender == "torch_hooks":
      runner = _TorchHooks(model, site, z1, z2, chunk)
    else:
      kind = contender.split("_")[1]
      runner = _TorchFast(
        model,
        site,
        z1,
        z2,
        kind,
        contender.endswith("_compiled"),
        chunk,
        task.get("channel_chunk", 16),
        task.get("memory_formats"),
        task.get("cold_compile", False),
      )
  return runner, channels


def _threads(framework: str) -> int | None:
  if framework == "torch":
    import torch

    return torch.get_num_threads()
  return os.cpu_count()


def _timed(runner: _Runner) -> tuple[np.ndarray, dict[str, Any]]:
  """One timed run: wall and CPU seconds, load averages, JAX compile seconds in it."""
  timer = runner.compile_timer
  c_before = timer.seconds if timer else 0.0
  load_before, wall = os.getloadavg(), time.time()
  if timer:
    timer.active = True
  t0, c0 = time.perf_counter(), _cpu_s()
  try:
    maps = runner.run()
  finally:
    if timer:
      timer.active = False
  seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
  return maps, {
    "seconds": seconds,
    "cpu_seconds": cpu,
    "loadavg_before": load_before,
    "loadavg_after": os.getloadavg(),
    "wall_clock_start": wall,
    "compile_seconds_in_run": (timer.seconds - c_before) if timer else None,
  }


# ---- the long-lived worker --------------------------------------------------------
def _protocol_stream() -> TextIO:
  """A text stream on the original stdout for protocol lines; fd 1 (and
  ``sys.stdout``) are pointed at stderr so that nothing else reaches the parent's pipe."""
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  sys.stdout.flush()
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  return proto


def serve(task: dict[str, Any], commands: TextIO, out: TextIO) -> None:
  """Sets up the contender of ``task`` (``loaded``), warms it up on ``warmup``
  (``ready``), then answers ``run`` / ``finish`` lines of ``commands`` with JSON lines
  on ``out`` (module docstring)."""
  send = lambda **event: print(json.dumps({**event, "pid": os.getpid()}), file=out, flush=True)
  try:
    runner, channels = make_runner(task)
    setup_rss = _rss_mib()
  except Exception as e:  # noqa: BLE001 (reported to the parent, which records it)
    traceback.print_exc()
    send(event="error", error=_one_line(e))
    return
  send(event="loaded", channels=int(channels), setup_rss_mib=setup_rss)
  first, last, diff = None, None, 0.0
  for line in commands:
    cmd = line.strip()
    if cmd == "warmup":
      try:
        t0 = time.perf_counter()
        info = runner.warmup()
        warmup_s = time.perf_counter() - t0
      except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        send(event="error", error=_one_line(e))
        return
      send(
        event="ready",
        channels=int(channels),
        setup_rss_mib=setup_rss,
        warmup_seconds=warmup_s,
        threads=_threads(runner.framework),
        **info,
      )
    elif cmd == "run":
      last, rec = _timed(runner)
      if first is None:
        first = last
      else:
        diff = max(diff, float(np.abs(last - first).max()))
      send(event="run", **rec)
    elif cmd == "finish":
      if task.get("maps_path") and last is not None:
        np.save(task["maps_path"], np.asarray(last, np.float32))
      peak = _rss_mib()
      send(
        event="done",
        peak_rss_mib=peak,
        workload_rss_mib=peak - setup_rss,
        max_abs_diff_between_repeats=diff,
      )
      return
    elif cmd:
      send(event="error", error=f"unknown command {cmd!r}")


# ---- one-shot tasks ---------------------------------------------------------------
def run_task(task: dict[str, Any]) -> dict[str, Any]:
  """Runs one measurement (in this process) and returns its record.

  ``task['kind']``: 'matmul' (``n``, ``torch_threads``: jax and torch peaks),
  'bandwidth' (``mib``) or 'eims' (a `make_runner` task plus ``warmup``: one run,
  for the memory check; ``seconds`` includes compilation when ``warmup`` is false).
  """
  load_before = os.getloadavg()
  if task["kind"] == "matmul":
    if task.get("torch_threads"):
      import torch

      torch.set_num_threads(task["torch_threads"])
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
  if task["kind"] == "bandwidth":
    return {
      **memory_bandwidth(task["mib"]),
      "mib": task["mib"],
      "loadavg_before": load_before,
      "loadavg_after": os.getloadavg(),
    }
  if task["kind"] != "eims":
    raise ValueError(f"unknown task kind {task['kind']!r}")
  runner, channels = make_runner(task)
  setup_rss = _rss_mib()
  if task.get("warmup", True):
    runner.warmup()
  _, rec = _timed(runner)
  peak = _rss_mib()
  return {
    "contender": task["contender"],
    "site": task["site"],
    "channels": int(channels),
    "n_pairs": int(task["n_pairs"]),
    "seconds": rec["seconds"],
    "peak_rss_mib": peak,
    "setup_rss_mib": setup_rss,
    "workload_rss_mib": peak - setup_rss,
    "loadavg_before": load_before,
    "loadavg_after": os.getloadavg(),
  }


def _worker_main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="benchmark worker (internal)")
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument(
    "--task", help="JSON file with one task; the record is written to its 'result_path'"
  )
  mode.add_argument("--serve", help="JSON file with an 'eims' task; commands on stdin")
  args = parser.parse_args(argv)
  with open(args.serve or args.task) as f:
    task = json.load(f)
  if args.serve:
    serve(task, sys.stdin, _protocol_stream())
    return
  record = run_task(task)
  with open(task["result_path"], "w") as f:
    json.dump(record, f)


__all__ = ["make_runner", "memory_bandwidth", "run_task", "serve"]

if __name__ == "__main__":
  _worker_main()
