"""Measurements for the EIM benchmark: cfmod_jax vs hook-based PyTorch vs naive JAX.

Workload: the elementary influence maps (EIMs) of every hidden site of DCGAN-64
for N latent pairs, with the same weights (random init, `benchmark_generator`:
BatchNorm running statistics and affine parameters set to non-trivial random
values) and the same pairs (`benchmark_pairs`, drawn exactly as
`elementary_influence_maps` draws them) for every contender:

* ``cfmod_jax``: `cfmod_jax.elementary_influence_maps` (method 'auto').
* ``torch``: `torch_dcgan.hook_eims` — forward hook, one channel at a time.
* ``naive_jax``: `naive.naive_eims` — one jitted full forward pass per channel.

Every (contender, site) runs in a fresh subprocess (``python -m
cfmod_jax.bench.harness --task spec.json``) so that its peak memory is its own:
the high-water mark of its resident set (``VmHWM``, see `_rss_mib`), which
includes the interpreter, the framework and its compiler; ``workload_rss_mib`` is
the part added by the measured computation (peak minus the peak before it).

Timings exclude compilation: every contender first runs a warm-up (cfmod_jax:
the whole call; torch and naive JAX: channel 0 for every pair chunk), then one
timed run. JAX compile time (lowering + XLA compilation, from `jax.monitoring`
events) is reported separately; torch has nothing to compile.

**Useful FLOPs** (one definition for all contenders): with ``F_prefix`` and
``F_suffix`` the FLOPs per image that XLA's cost analysis reports for
`Generator.prefix` (latent → site) and `Generator.suffix` (site → image),
compiled for one batch and divided by its size,

    useful_flops(site, N) = N · (2 · F_prefix + (C + 1) · F_suffix)

i.e. the work of the plain algorithm that runs the prefix once for each code of
a pair (z1 and z2), the suffix once for the reference G(z1) and once per hybrid
(C channels). A contender that recomputes the prefix per channel does more
work than this; cfmod_jax's linear path does less (it skips most of the first
layer after the site), so its "useful GFLOP/s" may exceed the machine's peak:
that is the algorithmic saving, not faster arithmetic. The **compute floor** of
a site is ``useful_flops / peak``, with the peak the best float32 matmul GFLOP/s
measured in the same run (jax and torch, ``MATMUL_N``² matrices, best of
``MATMUL_REPEATS``, in the parent process at the start and at the end of the run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

CONTENDERS = ("cfmod_jax", "torch", "naive_jax")
SITES = ("block1", "block2", "block3", "block4")
MATMUL_N = 2048
MATMUL_REPEATS = 5

# Every key that a (contender, site) record has in the JSON.
RECORD_FIELDS = (
  "contender",
  "site",
  "channels",
  "n_pairs",
  "hybrids",
  "seconds",
  "compile_seconds",
  "cpu_seconds",
  "hybrids_per_s",
  "useful_gflop",
  "useful_gflops",
  "fraction_of_peak",
  "peak_rss_mib",
  "setup_rss_mib",
  "max_abs_diff_vs_cfmod_jax",
  "workload_rss_mib",
  "loadavg_before",
  "loadavg_after",
)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What to run. ``pair_chunk`` is the pairs per forward pass of the torch and naive
  contenders; cfmod_jax runs with its defaults."""

  n_pairs: int = 128
  sites: Sequence[str] = SITES
  width: int = 64
  latent_dim: int = 100
  contenders: Sequence[str] = CONTENDERS
  seed: int = 0
  pair_chunk: int = 128
  memory_check: bool = True
  memory_site: str = "block4"
  memory_n_pairs: Sequence[int] = (256, 2048)
  matmul_n: int = MATMUL_N
  torch_threads: int = 0  # 0: torch's default (the number of cores)
  worker_timeout_s: float = 3600.0


QUICK_SITES = ("block1", "block4")


def quick_config(cfg: BenchConfig, sites: Sequence[str] | None = QUICK_SITES) -> BenchConfig:
  """A tiny version of ``cfg`` for tests: width 4, N = 4, the first and last sites
  (``sites=None`` keeps ``cfg.sites``), torch on one thread (faster at this size)."""
  return dataclasses.replace(
    cfg,
    n_pairs=4,
    width=4,
    pair_chunk=4,
    memory_n_pairs=(4, 16),
    matmul_n=256,
    torch_threads=1,
    sites=cfg.sites if sites is None else tuple(sites),
  )


# ---- the shared workload ------------------------------------------------------------
def benchmark_generator(
  width: int = 64, seed: int = 0, latent_dim: int = 100, calib_pairs: int = 256
):
  """DCGAN-64 with random weights and non-trivial BatchNorm statistics.

  Weights are drawn with numpy (DCGAN's N(0, 0.02²) for kernels; no compilation,
  so a worker process starts fast). The running mean/var of every BatchNorm are set
  to the batch statistics of ``calib_pairs`` prior samples (so activations keep a
  sensible scale, as in a trained model), then perturbed (mean ± 0.3 σ, var ×
  U[0.5, 2]); BN scale ~ U[0.5, 1.5], bias ~ N(0, 0.2²), RGB bias ~ N(0, 0.1²).
  Returns a `cfmod_jax.Generator`.
  """
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from cfmod_jax.generator import Generator, StagedGenerator
  from cfmod_jax.models.dcgan import DCGANGenerator

  module = DCGANGenerator(latent_dim=latent_dim, width=width)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, latent_dim)))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
    kind = path.rsplit("/", 1)[-1]
    if kind == "kernel":
      flat[path] = 0.02 * rng.standard_normal(leaf.shape)
    elif kind in ("scale", "var"):
      flat[path] = np.ones(leaf.shape)
    else:
      flat[path] = np.zeros(leaf.shape)
  init = traverse_util.unflatten_dict(
    {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/"
  )
  gen = Generator(module, init)
  module, n_stages = gen.module, len(gen.sites) + 1
  draws = {}  # all random numbers first, so the calibration below is one jitted function
  for i in range(n_stages):
    name = f"stages_{i}"
    if name in gen.variables["batch_stats"]:
      c = gen.variables["batch_stats"][name]["bn"]["mean"].shape[0]
      draws[name] = {
        "mean_noise": 0.3 * rng.standard_normal(c),
        "var_factor": rng.uniform(0.5, 2.0, c),
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": 0.2 * rng.standard_normal(c),
      }
    else:
      draws[name] = {
        "rgb_bias": 0.1 * rng.standard_normal(gen.variables["params"][name]["conv"]["bias"].shape)
      }
  draws = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), draws)
  z = gen.sample_latents(jax.random.key(seed + 2), calib_pairs)

  @jax.jit
  def calibrate(variables, draws, z):
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    x = z
    for i in range(n_stages):
      name, d = f"stages_{i}", draws[f"stages_{i}"]
      v = {"params": params, "batch_stats": stats}
      if name in stats:
        pre = module.apply(v, i, x, method=StagedGenerator.stage_pre)
        mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
        stats[name] = {
          "bn": {"mean": mean + d["mean_noise"] * jnp.sqrt(var), "var": var * d["var_factor"]}
        }
        params[name] = {**params[name], "bn": {"scale": d["scale"], "bias": d["bias"]}}
      else:
        params[name] = {**params[name], "conv": {**params[name]["conv"], "bias": d["rgb_bias"]}}
      v = {"params": params, "batch_stats": stats}
      if i < n_stages - 1:
        x = module.apply(v, z, x, start=i, stop=i + 1) if i else module.apply(v, z, start=0, stop=1)
    return {"params": params, "batch_stats": stats}

  variables = calibrate(gen.variables, draws, z)
  return Generator(module, variables, name=f"dcgan-w{width}-bench")


def save_variables(gen, path: str) -> None:
  """Writes a generator's variables to ``path`` (.npz, keys 'params/stages_0/...')."""
  import jax
  from flax import traverse_util

  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, gen.variables), sep="/")
  np.savez(path, **flat)


def load_variables(path: str) -> dict:
  """The variables `save_variables` wrote, as a nested dict of numpy arrays (no JAX)."""
  tree: dict = {}
  with np.load(path) as f:
    for key in f.files:
      *parents, leaf = key.split("/")
      node = tree
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = f[key]
  return tree


def load_generator(path: str, width: int, latent_dim: int = 100):
  """The `Generator` whose variables `save_variables` wrote to ``path``."""
  import jax
  import jax.numpy as jnp

  from cfmod_jax.generator import Generator
  from cfmod_jax.models.dcgan import DCGANGenerator

  variables = jax.tree.map(jnp.asarray, load_variables(path))
  return Generator(
    DCGANGenerator(latent_dim=latent_dim, width=width), variables, name=f"dcgan-w{width}-bench"
  )


def benchmark_key(seed: int):
  import jax

  return jax.random.key(seed + 100)


def benchmark_pairs(gen, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The ``(z1, z2)`` that ``elementary_influence_maps(gen, site, n_pairs,
  benchmark_key(seed))`` draws, as numpy ``[N, latent_dim]``."""
  import jax

  k1, k2 = jax.random.split(benchmark_key(seed))
  return np.asarray(gen.sample_latents(k1, n_pairs)), np.asarray(gen.sample_latents(k2, n_pairs))


def flops_per_image(gen, site: str, batch: int = 32) -> tuple[float, float]:
  """``(F_prefix, F_suffix)``: XLA cost-analysis FLOPs per image of the prefix up to
  ``site`` and the suffix from ``site``, compiled for a batch of ``batch``."""
  import jax
  import jax.numpy as jnp

  z = jax.ShapeDtypeStruct((batch, *gen.latent_shape), jnp.float32)
  h = jax.ShapeDtypeStruct((batch, *gen.site_shape(site)), jnp.float32)

  def flops(fn, *args):
    cost = jax.jit(fn).lower(gen.variables, *args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / batch

  return (
    flops(lambda v, z: gen.prefix(v, z, site), z),
    flops(lambda v, h, z: gen.suffix(v, h, z, site), h, z),
  )


def useful_flops(f_prefix: float, f_suffix: float, channels: int, n_pairs: int) -> float:
  """``N · (2 · F_prefix + (C + 1) · F_suffix)`` (see the module docstring)."""
  return n_pairs * (2.0 * f_prefix + (channels + 1) * f_suffix)


# ---- worker side (runs in a fresh subprocess) -----------------------------------------
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


def run_task(task: dict) -> dict:
  """Runs one measurement (in this process) and returns its record.

  ``task['kind']``: 'matmul' (``n``: jax and torch) or 'eims' (``contender``, ``site``,
  ``n_pairs``, ``width``, ``latent_dim``, ``seed``, ``pair_chunk``, ``warmup``, and
  optionally ``variables_path`` (`save_variables`), ``pairs_path`` (npz with z1, z2),
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
    variables, gen = load_variables(task["variables_path"]), None
  elif task.get("variables_path"):
    gen = load_generator(task["variables_path"], task["width"], task["latent_dim"])
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
    from cfmod_jax.bench.naive import naive_eims

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
    from cfmod_jax.bench import torch_dcgan

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


def _threads(framework: str):
  if framework == "torch":
    import torch

    return torch.get_num_threads()
  return os.cpu_count()


def _worker_main(argv=None):
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


# ---- parent side ------------------------------------------------------------------------
def _spawn(task: dict, workdir: str, timeout_s: float) -> dict:
  """Runs ``task`` in a fresh Python process; returns its record."""
  fd, task_path = tempfile.mkstemp(suffix=".json", dir=workdir)
  os.close(fd)
  task = {**task, "result_path": task_path + ".out"}
  with open(task_path, "w") as f:
    json.dump(task, f)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ),
  }
  subprocess.run(
    [sys.executable, "-m", "cfmod_jax.bench.harness", "--task", task_path],
    check=True,
    timeout=timeout_s,
    env=env,
  )
  with open(task["result_path"]) as f:
    return json.load(f)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _check_config(cfg: BenchConfig):
  for s in cfg.sites:
    if s not in SITES:
      raise ValueError(f"site {s!r} is not a DCGAN site; valid: {', '.join(SITES)}")
  for c in cfg.contenders:
    if c not in CONTENDERS:
      raise ValueError(f"contender {c!r} is unknown; valid: {', '.join(CONTENDERS)}")
  if not cfg.sites or not cfg.contenders:
    raise ValueError("need at least one site and one contender")
  if cfg.n_pairs < 1 or cfg.pair_chunk < 1 or cfg.width < 1:
    raise ValueError("n_pairs, pair_chunk and width must be positive")
  if cfg.memory_check and cfg.memory_site not in SITES:
    raise ValueError(f"memory_site {cfg.memory_site!r} is not a DCGAN site")


def run_benchmark(cfg: BenchConfig, log=print) -> dict:
  """Runs every measurement of ``cfg`` in subprocesses; returns the results dict
  (see `write_outputs` for the files)."""
  _check_config(cfg)
  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "config": dataclasses.asdict(cfg),
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "loadavg_before": os.getloadavg(),
    "useful_flops_definition": "N * (2 * F_prefix + (C + 1) * F_suffix); F_* = XLA cost_analysis()['flops'] per image "
    "of Generator.prefix (latent -> site) / Generator.suffix (site -> image), batch 32",
  }
  results["versions"] = _versions()
  gen = benchmark_generator(cfg.width, cfg.seed, cfg.latent_dim)
  log(
    f"generator: DCGAN width {cfg.width}; sites {', '.join(cfg.sites)}; contenders "
    f"{', '.join(cfg.contenders)}; N = {cfg.n_pairs}"
  )
  flops = {}
  for site in cfg.sites:
    fp, fs = flops_per_image(gen, site)
    c = gen.site_shape(site)[-1]
    flops[site] = {
      "channels": c,
      "f_prefix": fp,
      "f_suffix": fs,
      "useful_flops": useful_flops(fp, fs, c, cfg.n_pairs),
    }
  results["flops"] = flops

  with tempfile.TemporaryDirectory(prefix="cfmod_bench_") as work:
    variables_path = os.path.join(work, "variables.npz")
    save_variables(gen, variables_path)  # every worker uses exactly these weights
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


def _targets(records, cfg) -> dict | None:
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


def _versions() -> dict:
  import importlib.metadata as md

  out = {}
  for p in ("jax", "jaxlib", "flax", "torch", "numpy"):
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      out[p] = None
  return out


# ---- outputs ------------------------------------------------------------------------------
def markdown_table(results: dict) -> str:
  """The results as markdown: a summary per site, then one row per (site, contender)."""
  cfg = results["config"]
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  mm = results["matmul"]
  lines = [
    f"DCGAN-64 (width {cfg['width']}), EIMs of every channel, N = {cfg['n_pairs']} pairs; "
    f"{results['cpu_model']}, {results['cpu_count']} cores; load average "
    f"{results['loadavg_before'][0]:.2f} → {results['loadavg_after'][0]:.2f}; float32 matmul "
    f"peak: jax {mm['peak_gflops'].get('jax', float('nan')):.0f}, torch "
    f"{mm['peak_gflops'].get('torch', float('nan')):.0f} GFLOP/s.",
    "",
  ]
  tg = results.get("targets")
  if tg:
    has_naive = "speedup_vs_naive_jax" in tg
    lines += [
      "| site | channels | hybrids | cfmod_jax s | torch (hooks) s | "
      + ("naive JAX s | " if has_naive else "")
      + "speed-up vs torch | "
      + ("speed-up vs naive | " if has_naive else "")
      + "cfmod_jax time / compute floor |",
      "|---|---:|---:|---:|---:|"
      + ("---:|" if has_naive else "")
      + "---:|"
      + ("---:|" if has_naive else "")
      + "---:|",
    ]
    for s in cfg["sites"]:
      a = recs[("cfmod_jax", s)]
      row = (
        f"| {s} | {a['channels']} | {a['hybrids']} | {a['seconds']:.2f} | "
        f"{recs[('torch', s)]['seconds']:.1f} | "
      )
      if has_naive:
        row += f"{recs[('naive_jax', s)]['seconds']:.1f} | "
      row += f"{tg['speedup_vs_torch'][s]:.1f}× | "
      if has_naive:
        row += f"{tg['speedup_vs_naive_jax'][s]:.1f}× | "
      row += f"{a['seconds_over_floor']:.2f} |"
      lines.append(row)
    geo = f"**geometric mean speed-up vs torch: {tg['geomean_speedup_vs_torch']:.1f}×**"
    if has_naive:
      geo += f", vs naive JAX: {tg['geomean_speedup_vs_naive_jax']:.1f}×"
    lines += ["", geo + "."]
  lines += [
    "",
    "| site | contender | seconds | CPU s | compile s | hybrids/s | useful GFLOP/s | "
    "% of peak | peak RSS MiB (workload) | max abs diff vs cfmod_jax |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for s in cfg["sites"]:
    for c in cfg["contenders"]:
      r = recs[(c, s)]
      comp = "—" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
      diff = (
        "—"
        if r.get("max_abs_diff_vs_cfmod_jax") is None or c == "cfmod_jax"
        else f"{r['max_abs_diff_vs_cfmod_jax']:.1e}"
      )
      lines.append(
        f"| {s} | {c} | {r['seconds']:.2f} | {r['cpu_seconds']:.1f} | {comp} | "
        f"{r['hybrids_per_s']:.0f} | "
        f"{r['useful_gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% | "
        f"{r['peak_rss_mib']:.0f} ({r['workload_rss_mib']:.0f}) | {diff} |"
      )
  lines += [
    "",
    "Seconds exclude compilation (each contender warms up first; JAX compile times "
    "in their own column; CPU s: user + system time of the timed run over all "
    "threads, at most cores × seconds — less when the run could not use every core, "
    "e.g. because other processes held one). Useful FLOPs = "
    "N·(2·F_prefix + (C + 1)·F_suffix), with F_prefix / F_suffix the per-image FLOPs of the prefix (latent → site) and suffix "
    "(site → image) from XLA's cost analysis; % of peak = useful GFLOP/s ÷ the best "
    "float32 matmul GFLOP/s of this run (jax or torch); compute floor = useful FLOPs ÷ "
    "that peak. cfmod_jax's linear path skips most of the first layer after the site, so "
    "it can beat the floor (< 1). Peak RSS: high-water mark of a fresh process per row "
    "(VmHWM); in brackets, the part added by the workload (incl. XLA compilation).",
  ]
  mem = results.get("memory_check")
  if mem:
    runs = mem["runs"]
    lines += [
      "",
      f"Memory flatness (cfmod_jax, {mem['site']}): peak RSS "
      + ", ".join(
        f"N={m['n_pairs']}: {m['peak_rss_mib']:.0f} MiB (workload {m['workload_rss_mib']:.0f})"
        for m in runs
      )
      + f" → ratio {mem['ratio']:.2f} "
      + ("(within 1.2×)." if mem["flat_within_1.2x"] else "(NOT within 1.2×)."),
    ]
  return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
  """Two panels: seconds per site (log scale) and useful GFLOP/s vs the matmul peaks."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = results["config"]
  sites, contenders = list(cfg["sites"]), list(cfg["contenders"])
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  x = np.arange(len(sites))
  wbar = 0.8 / len(contenders)
  for k, c in enumerate(contenders):
    secs = [recs[(c, s)]["seconds"] for s in sites]
    gf = [recs[(c, s)]["useful_gflops"] for s in sites]
    axes[0].bar(x + k * wbar, secs, wbar, label=c)
    axes[1].bar(x + k * wbar, gf, wbar, label=c)
  for ax in axes:
    ax.set_xticks(x + wbar * (len(contenders) - 1) / 2, sites)
    ax.set_yscale("log")
  axes[0].set_ylabel("seconds (log)")
  axes[0].set_title(f"EIMs of every channel, N={cfg['n_pairs']} pairs")
  axes[1].set_ylabel("useful GFLOP/s (log)")
  axes[1].set_title("useful throughput vs float32 matmul peak")
  for f, style in (("jax", "--"), ("torch", ":")):
    if f in results["matmul"]["peak_gflops"]:
      axes[1].axhline(
        results["matmul"]["peak_gflops"][f], color="k", ls=style, label=f"{f} matmul peak"
      )
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(results: dict, out_dir: str) -> dict:
  """Writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"benchmark.{k}") for k in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2)
  with open(paths["md"], "w") as f:
    f.write(markdown_table(results))
  plot(results, paths["png"])
  return paths


if __name__ == "__main__":
  _worker_main()
