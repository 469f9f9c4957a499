"""Speed and precision check on whatever backend is present (CPU, GPU, TPU): one JSON.

  launch/gpu_check.sh --out out/gpu_check            # the full check
  launch/gpu_check.sh --tiny --out /tmp/gpu_check    # everything, tiny (tests)

Writes ``<out>/gpu_check.json`` (`SCHEMA`; docs/gpu_check.md describes every field):

* ``device``: backend, device kind and count, jax/jaxlib versions, device memory
  (``memory_stats()``; None on CPU) and host RAM, and the best matmul TFLOP/s of this
  device in float32, tf32 and bfloat16 (reference peaks).
* ``eim_benchmark`` (a): cfmod_jax's EIMs of the benchmark's workload
  (`benchmarks.workload`: DCGAN-64 with calibrated random weights, the benchmark's
  pairs) at every site, in each precision: hybrids/s, GFLOP/s of the plain
  algorithm, the chunks chosen from memory, the error of tf32/bf16 against float32
  (``max|Δ| / mean|EIM|`` and ``mean|Δ| / mean|EIM|``), and the working set that
  `cfmod_jax.memory` estimates next to XLA's ``memory_analysis()`` of one chunk.
* ``main_job`` (b): `cfmod_jax.analysis.run` (what ``experiments.analyze`` runs) on
  the shipped DCGAN with a small config, timed.
* ``biggan`` (c): BigGAN-deep-256 with random weights (`cfmod_jax.models.biggan`):
  per site the FLOPs per image of the prefix and suffix (XLA cost analysis), the
  estimated bytes per hybrid (float32, bf16); at a few sites a measured sweep of a
  few channels × pairs (seconds per hybrid, GFLOP/s of the suffix) and the bf16
  error where bf16 runs.
* ``precision_study`` (d, optional): bf16 (and tf32 off CPU) against float32 on the
  shipped generators at every site: EIM errors and the agreement of the modules
  the main job would find (K chosen and NMF labels at the main job's defaults;
  adjusted Rand index).

Every measured time excludes compilation (one warm-up call first), except the
main job's, which is end to end. `studies.scale_table` turns the BigGAN numbers
into docs/scale.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags, logging

from experiments import _cli  # isort: skip  (first: one line on Ctrl-C while jax imports)

import jax
import jax.numpy as jnp
import numpy as np

import cfmod_jax as cf
from cfmod_jax import fileio, memory
from cfmod_jax import precision as prec
from cfmod_jax.generator import Generator
from cfmod_jax.lab import memory as lab_memory

__all__ = [
  "SCHEMA",
  "CheckConfig",
  "biggan_section",
  "device_info",
  "eim_benchmark",
  "main_job",
  "matmul_tflops",
  "precision_study",
  "random_biggan",
  "xla_costs",
  "run_check",
  "summary_markdown",
  "tiny_biggan_config",
  "tiny_config",
]

SCHEMA = 1
SHIPPED = ("dcgan-synthfaces", "vae-synthfaces", "began-synthfaces")


@dataclasses.dataclass(frozen=True)
class CheckConfig:
  """What `run_check` runs (the flags of the CLI; `tiny_config` for tests)."""

  precisions: Sequence[str] = prec.PRECISIONS
  seed: int = 0
  # (a) EIM benchmark
  eim_benchmark: bool = True
  bench_width: int = 64
  bench_pairs: int = 64
  bench_sites: Sequence[str] = ("block1", "block2", "block3", "block4")
  memory_analysis: bool = True
  memory_analysis_sites: Sequence[str] | None = None  # None: every benchmark site
  # (b) main job
  main_job: bool = True
  main_generator: str = "dcgan-synthfaces"  # or "bench": the benchmark's DCGAN
  main_sites: Sequence[str] = ("block3", "block4")
  main_pairs: int = 32
  main_block_pairs: int = 16
  main_eval_pairs: int = 16
  # (c) BigGAN
  biggan: bool = True
  biggan_config: Any = "biggan-deep-256"
  biggan_time_sites: Sequence[str] | None = ("gen_z", "block3", "block7", "block11")
  biggan_cost_sites: Sequence[str] | None = None  # FLOPs and bytes; None: every site
  biggan_channels: int | None = None  # None: 2 on CPU, 32 on GPU/TPU
  biggan_pairs: int | None = None  # None: 2 on CPU, 16 on GPU/TPU
  biggan_precisions: Sequence[str] | None = None  # None: float32 on CPU, all elsewhere
  # (d) precision study (shipped generators)
  study: bool = False
  study_generators: Sequence[str] = SHIPPED
  study_sites: Sequence[str] | None = None  # None: every site
  study_pairs: int = 64
  study_groups: int = 4
  study_n_boot: int | None = None  # None: the main job's (AnalysisConfig().n_boot)
  study_k_values: Sequence[int] | None = None  # None: the main job's k_values
  matmul_n: int = 2048


def tiny_biggan_config() -> Any:
  """`cfmod_jax.testing.tiny_biggan_config` (seconds on CPU)."""
  from cfmod_jax.testing import tiny_biggan_config as tiny  # pylint: disable=g-import-not-at-top

  return tiny()


def tiny_config() -> CheckConfig:
  """Everything, tiny: width-4 DCGAN at its first and last sites, N = 4, the main job
  on it, a reduced BigGAN (costs at two sites, one timed), the precision study on one
  shipped generator's last site."""
  return CheckConfig(
    bench_width=4,
    bench_pairs=4,
    bench_sites=("block1", "block4"),  # the benchmark's --quick sites
    memory_analysis_sites=("block4",),
    main_generator="bench",
    main_sites=("block4",),
    main_pairs=8,
    main_block_pairs=4,
    main_eval_pairs=4,
    biggan_config=tiny_biggan_config(),
    biggan_time_sites=("block2",),
    biggan_cost_sites=("gen_z", "block2"),
    biggan_channels=2,
    biggan_pairs=2,
    biggan_precisions=("float32", "bfloat16"),
    study=True,
    study_generators=("dcgan-synthfaces",),
    study_sites=("block4",),
    study_pairs=4,
    study_groups=2,
    study_n_boot=2,
    study_k_values=(2, 3),
    matmul_n=256,
  )


# ---- helpers -----------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t


def _warm_timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
  """``(output, seconds, first_seconds)``: a warm-up call (compiles), then a timed one."""
  _, first = _timed(fn)
  out, seconds = _timed(fn)
  return out, seconds, first


def _host_ram() -> dict[str, int | None]:
  out: dict[str, int | None] = {"total": None, "available": None}
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        key, value = line.split(":", 1)
        if key in ("MemTotal", "MemAvailable"):
          out["total" if key == "MemTotal" else "available"] = int(value.split()[0]) * 1024
  except OSError:
    pass
  return out


def matmul_tflops(
  n: int = 2048, repeats: int = 5, precisions: Sequence[str] = prec.PRECISIONS
) -> dict[str, float]:
  """Best-of-``repeats`` TFLOP/s of an ``[n, n] @ [n, n]`` matmul on the default
  device in float32, tf32 (float32 under ``default_matmul_precision('tensorfloat32')``)
  and bfloat16 (f32 accumulation): this device's reachable peaks."""
  out = {}
  for name in precisions:
    dt = jnp.bfloat16 if name == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    with prec.matmul_scope(name):
      f = functools.partial(jax.jit(jnp.matmul), a, b)
      f().block_until_ready()
      best = min(_timed(f)[1] for _ in range(repeats))
    out[name] = 2.0 * n**3 / best / 1e12
  return out


def device_info(matmul_n: int = 2048) -> dict[str, Any]:
  """Backend, devices, versions, memory and matmul peaks (see the module docstring)."""
  import jaxlib  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  stats = None
  try:
    stats = devices[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  budget, _ = memory.memory_budget()
  return {
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "n_devices": len(devices),
    "n_local_devices": jax.local_device_count(),
    "process_count": jax.process_count(),
    "jax_version": jax.__version__,
    "jaxlib_version": getattr(jaxlib, "__version__", None),
    "python": platform.python_version(),
    "host": platform.node(),
    "cpu_count": os.cpu_count(),
    "memory_bytes_limit": int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None,
    "memory_bytes_in_use": int(stats["bytes_in_use"])
    if stats and "bytes_in_use" in stats
    else None,
    "host_ram_bytes": _host_ram(),
    "chunk_budget_bytes": budget,
    "matmul_n": matmul_n,
    "matmul_tflops": matmul_tflops(matmul_n),
  }


def _float32_first(precisions: Sequence[str]) -> list[str]:
  """``precisions`` with float32 (the reference) first."""
  return sorted(dict.fromkeys(precisions), key=lambda p: p != "float32")


def _plain_flops(f_prefix: float, f_suffix: float, channels: int, n_pairs: int) -> float:
  """The benchmark's plain-algorithm FLOPs: ``N · (2 · F_prefix + (C + 1) · F_suffix)``."""
  return n_pairs * (2.0 * f_prefix + (channels + 1) * f_suffix)


def xla_costs(gen: Generator, site: str, batch: int = 32) -> dict[str, float]:
  """Per image, from XLA's cost analysis of the compiled prefix (latent → site) and
  suffix (site → image) (variables may be abstract): ``prefix_flops``,
  ``suffix_flops`` and ``suffix_bytes`` (XLA's "bytes accessed" of the suffix, a proxy
  of its memory traffic in float32). Each is the slope between batches of ``batch``
  and ``2·batch``, so that per-call work (reading the weights once, BatchNorm
  statistics) is not charged to every image."""
  v = memory.abstract_tree(gen.variables)

  def cost(b):
    z = jax.ShapeDtypeStruct((b, *gen.latent_shape), jnp.float32)
    h = jax.ShapeDtypeStruct((b, *gen.site_shape(site)), jnp.float32)

    def one(fn, *args):
      out = jax.jit(fn).lower(v, *args).compile().cost_analysis()
      return out[0] if isinstance(out, (list, tuple)) else out

    pre = one(lambda v, z: gen.prefix(v, z, site), z)
    suf = one(lambda v, h, z: gen.suffix(v, h, z, site), h, z)
    return np.array(
      [pre.get("flops", 0.0), suf.get("flops", 0.0), suf.get("bytes accessed", 0.0)], float
    )

  per_image = (cost(2 * batch) - cost(batch)) / batch
  return dict(zip(("prefix_flops", "suffix_flops", "suffix_bytes"), map(float, per_image)))


# ---- (a) EIM benchmark -----------------------------------------------------------------------


def eim_benchmark(cfg: CheckConfig, log: Callable[..., None] = logging.info) -> dict[str, Any]:
  """Section (a): cfmod_jax's EIMs of the benchmark workload at every site, per precision."""
  from benchmarks import workload  # pylint: disable=g-import-not-at-top

  gen = workload.benchmark_generator(width=cfg.bench_width, seed=cfg.seed)
  z1, z2 = workload.benchmark_pairs(gen, cfg.bench_pairs, cfg.seed)
  records = []
  for site in cfg.bench_sites:
    c = gen.site_shape(site)[-1]
    costs = xla_costs(gen, site, 32)
    f_prefix, f_suffix = costs["prefix_flops"], costs["suffix_flops"]
    gflop = _plain_flops(f_prefix, f_suffix, c, cfg.bench_pairs) / 1e9
    ref = None
    for p in _float32_first(cfg.precisions):
      pc, mc = memory.choose_chunks(gen, site, cfg.bench_pairs, c, precision=p)
      (sums, counts), seconds, first = _warm_timed(
        functools.partial(
          cf.interventions.elementary_influence_map_sums, gen, site, z1, z2, precision=p
        )
      )
      eims = np.asarray(sums[0]) / (3.0 * counts[0])
      if p == "float32":
        ref, err = eims, None
      else:
        err = prec.relative_errors(eims, ref)
      hybrids = cfg.bench_pairs * c
      rec = {
        "site": site,
        "channels": c,
        "precision": p,
        "n_pairs": cfg.bench_pairs,
        "hybrids": hybrids,
        "seconds": seconds,
        "first_call_seconds": first,
        "hybrids_per_s": hybrids / seconds,
        "prefix_flops_per_image": f_prefix,
        "suffix_flops_per_image": f_suffix,
        "plain_gflop": gflop,
        "plain_gflops": gflop / seconds,
        "pair_chunk": pc,
        "mask_chunk": mc,
        "rel_err_max": None if err is None else err["max"],
        "rel_err_mean": None if err is None else err["mean"],
        "mean_eim": float(eims.mean()),
        "linear_path": gen.has_linear_split(site),
      }
      cost = memory.chunk_cost(gen, site, p)
      rec["estimated_working_set_bytes"] = memory.working_set_bytes(cost, pc, mc, c)
      rec["estimated_bytes_per_hybrid"] = cost.per_hybrid
      analysed = cfg.memory_analysis_sites is None or site in cfg.memory_analysis_sites
      if cfg.memory_analysis and analysed and p != "tf32":  # tf32 stores what float32 does
        one = lab_memory.compiled_chunk_bytes(gen, site, pc, mc, p)
        rec["xla_chunk_bytes"] = None if one is None else one["total"]
        rec["estimated_chunk_bytes"] = memory.working_set_bytes(cost, pc, mc, mc)
      records.append(rec)
      log(
        "(a) %s %s: %d hybrids in %.3f s (%.0f hybrids/s, first call %.1f s), chunks %d×%d%s",
        site,
        p,
        hybrids,
        seconds,
        rec["hybrids_per_s"],
        first,
        pc,
        mc,
        "" if err is None else f", max|Δ|/mean = {err['max']:.2e}",
      )
  return {
    "width": cfg.bench_width,
    "n_pairs": cfg.bench_pairs,
    "seed": cfg.seed,
    "flops_definition": "N * (2 * F_prefix + (C + 1) * F_suffix), XLA cost analysis, batch 32",
    "records": records,
  }


# ---- (b) main job ------------------------------------------------------------------------------


def main_job(cfg: CheckConfig, out_dir: str, log: Callable[..., None] = logging.info) -> dict:
  """Section (b): `cfmod_jax.analysis.run` with a small config, end to end."""
  from cfmod_jax import analysis  # pylint: disable=g-import-not-at-top

  if cfg.main_generator == "bench":
    from benchmarks import workload  # pylint: disable=g-import-not-at-top

    gen = workload.benchmark_generator(width=cfg.bench_width, seed=cfg.seed)
  else:
    gen = cf.load_generator(cfg.main_generator)
  acfg = analysis.AnalysisConfig(
    sites=tuple(cfg.main_sites),
    n_pairs=cfg.main_pairs,
    block_pairs=cfg.main_block_pairs,
    k=2,
    eval_pairs=cfg.main_eval_pairs,
    eval_groups=2,
    n_null=4,
    n_ci=50,
    n_boot=2,
    seed=cfg.seed,
    untrained_baseline=False,
    factor_transfer="none",
    hybrid_fd_samples=0,
    parts="none",
  )
  fields = {
    f.name: getattr(acfg, f.name)
    for f in dataclasses.fields(acfg)
    if getattr(acfg, f.name) != f.default
  }
  log("(b) main job on %s: %s", gen.name, fields)
  t = time.perf_counter()
  analysis.run(gen, acfg, out_dir)
  seconds = time.perf_counter() - t
  log("(b) main job: %.1f s", seconds)
  flags_ = " ".join(
    f"--config.{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
    for k, v in fields.items()
    if k in ("sites", "n_pairs", "block_pairs", "k", "eval_pairs", "eval_groups", "n_null")
  )
  return {
    "generator": gen.name,
    "config": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
    "cli_equivalent": None  # the benchmark's DCGAN is no --generator spec
    if cfg.main_generator == "bench"
    else (
      f"python -m experiments.analyze --generator {cfg.main_generator} {flags_} "
      "--config.untrained_baseline=false --config.factor_transfer=none "
      "--config.hybrid_fd_samples=0 --config.parts=none"
    ),
    "seconds": seconds,
    "note": "end to end (compilation, clustering, figures and report included); "
    "EIM chunks and precision as analysis.AnalysisConfig passes them",
  }


# ---- (c) BigGAN --------------------------------------------------------------------------------


def random_biggan(config: Any, seed: int = 0, truncation: float = 0.4) -> Generator:
  """A BigGAN-deep `Generator` with random weights drawn by numpy from the variables'
  shapes (nothing compiled): kernels N(0, 1/fan_in), conditional-BN gains/biases
  0.1 × that, BatchNorm at identity statistics, attention gamma 0.1."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from cfmod_jax.models import biggan  # pylint: disable=g-import-not-at-top

  cfg = biggan.get_config(config)
  shapes = biggan._abstract_variables(cfg)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
    name = path.rsplit("/", 1)[-1]
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      scale = (0.1 if "/bn_" in path else 1.0) / np.sqrt(fan_in)
      flat[path] = (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
    elif name in ("running_vars", "scale"):
      flat[path] = np.ones(leaf.shape, np.float32)
    elif name == "gamma":
      flat[path] = np.full(leaf.shape, 0.1, np.float32)
    else:
      flat[path] = np.zeros(leaf.shape, np.float32)
  # numpy leaves: jnp.asarray would compile a transfer per distinct shape (jax 0.10).
  variables = traverse_util.unflatten_dict(flat, sep="/")
  return biggan.biggan_generator(variables, cfg, truncation, name=f"biggan-random-{cfg.resolution}")


def _suffix_call(gen: Generator, site: str, precision: str, h: jax.Array, z: jax.Array):
  """A compiled call of the bare suffix at ``precision`` on ``h``, ``z`` (the casts
  to bf16 happen inside the compiled function, as in the engine)."""
  dt = prec.compute_dtype(precision)

  def suffix(variables, h, z):
    if dt is not None:
      variables, h, z = prec.cast_floating(variables, dt), h.astype(dt), z.astype(dt)
    return gen.suffix(variables, h, z, site)

  return functools.partial(jax.jit(prec.traced_with(suffix, precision)), gen.variables, h, z)


def biggan_section(cfg: CheckConfig, log: Callable[..., None] = logging.info) -> dict[str, Any]:
  """Section (c): per-site FLOPs and bytes of BigGAN-deep, and a measured sweep of
  ``biggan_channels × biggan_pairs`` hybrids at the timed sites."""
  from cfmod_jax.models import biggan  # pylint: disable=g-import-not-at-top

  t = time.perf_counter()
  gen = random_biggan(cfg.biggan_config, cfg.seed)
  init_seconds = time.perf_counter() - t
  bcfg = biggan.get_config(cfg.biggan_config)
  name = cfg.biggan_config if isinstance(cfg.biggan_config, str) else "custom"
  on_cpu = jax.devices()[0].platform == "cpu"
  precisions = cfg.biggan_precisions or (("float32",) if on_cpu else prec.PRECISIONS)
  time_sites = gen.sites if cfg.biggan_time_sites is None else tuple(cfg.biggan_time_sites)
  for s in time_sites:
    gen.site_index(s)
  n_channels = cfg.biggan_channels or (2 if on_cpu else 32)
  n_pairs = cfg.biggan_pairs or (2 if on_cpu else 16)
  k1, k2 = jax.random.split(jax.random.key(cfg.seed + 7))
  z1 = np.asarray(gen.sample_latents(k1, n_pairs))
  z2 = np.asarray(gen.sample_latents(k2, n_pairs))
  cost_sites = gen.sites if cfg.biggan_cost_sites is None else tuple(cfg.biggan_cost_sites)
  # The reference peak, measured now (a shared machine's load changes over a long run).
  peak = matmul_tflops(cfg.matmul_n, precisions=precisions)
  log("(c) matmul TFLOP/s before the timings: %s", peak)
  sites = []
  for site in gen.sites:
    if site not in cost_sites and site not in time_sites:
      continue
    h, w, c = gen.site_shape(site)
    xc = xla_costs(gen, site, 2)
    f_prefix, f_suffix = xc["prefix_flops"], xc["suffix_flops"]
    costs = {p: memory.chunk_cost(gen, site, p) for p in ("float32", "bfloat16")}
    rec: dict[str, Any] = {
      "site": site,
      "shape": [h, w, c],
      "channels": c,
      "linear_split": gen.has_linear_split(site),
      "prefix_flops_per_image": f_prefix,
      "suffix_flops_per_image": f_suffix,
      "suffix_bytes_accessed_per_image": xc["suffix_bytes"],
      "bytes_per_hybrid": {p: v.per_hybrid for p, v in costs.items()},
      "bytes_per_pair": {p: v.per_pair for p, v in costs.items()},
      "fixed_bytes": {p: v.fixed for p, v in costs.items()},
      "output_map_bytes": costs["float32"].per_output_map,
      "timed": [],
    }
    if site in time_sites:
      k = min(n_channels, c)
      masks = np.eye(c, dtype=np.float32)[:k]
      ref = None
      for p in _float32_first(precisions):
        # Chunks from the device's memory (on CPU: all pairs × all masks, one chunk).
        pc, mc = memory.choose_chunks(gen, site, len(z1), k, precision=p)
        (sums, counts), seconds, first = _warm_timed(
          functools.partial(
            cf.interventions.influence_map_sums, gen, site, masks, z1, z2, precision=p
          )
        )
        maps = np.asarray(sums[0]) / (3.0 * counts[0])
        if p == "float32":
          ref = maps
        err = prec.relative_errors(maps, ref) if ref is not None and p != "float32" else None
        # The suffix alone on one flat batch of the chunk's size (the per-hybrid cost).
        hyb, batch = k * len(z1), min(pc, len(z1)) * min(mc, k)
        hs = jnp.zeros((batch, h, w, c), jnp.float32)
        zs = jnp.asarray(np.resize(z1, (batch, z1.shape[1])))
        _, suffix_seconds, _ = _warm_timed(_suffix_call(gen, site, p, hs, zs))
        timed = {
          "precision": p,
          "channels": k,
          "n_pairs": len(z1),
          "hybrids": hyb,
          "pair_chunk": pc,
          "mask_chunk": mc,
          "suffix_batch": batch,
          "seconds": seconds,
          "first_call_seconds": first,
          "seconds_per_hybrid": seconds / hyb,
          "suffix_seconds": suffix_seconds,
          "suffix_seconds_per_image": suffix_seconds / batch,
          "suffix_gflops": f_suffix * batch / suffix_seconds / 1e9,
          "engine_flops": _plain_flops(f_prefix, f_suffix, k, len(z1)),
          "rel_err_max": None if err is None else err["max"],
          "rel_err_mean": None if err is None else err["mean"],
        }
        timed["engine_gflops"] = timed["engine_flops"] / seconds / 1e9
        rec["timed"].append(timed)
        log(
          "(c) %s %s: %d hybrids in %.3g s (%.3g s/hybrid; suffix alone %.3g s/image, "
          "%.3g GFLOP/s)%s",
          site,
          p,
          hyb,
          seconds,
          seconds / hyb,
          suffix_seconds / batch,
          timed["suffix_gflops"],
          "" if err is None else f", max|Δ|/mean = {err['max']:.2e}",
        )
    else:
      log("(c) %s: suffix %.2f GFLOP/image", site, f_suffix / 1e9)
    sites.append(rec)
  return {
    "config": name,
    "config_dict": bcfg.to_dict(),
    "resolution": bcfg.resolution,
    "weights": "random (numpy, from the variables' shapes)",
    "init_seconds": init_seconds,
    "n_parameters": int(sum(np.size(a) for a in jax.tree.leaves(gen.variables["params"]))),
    "variables_bytes": int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(gen.variables))),
    "precisions": _float32_first(precisions),
    "matmul_tflops": peak,
    "sites": sites,
  }


# ---- (d) precision study ----------------------------------------------------------------------


def precision_study(cfg: CheckConfig, log: Callable[..., None] = logging.info) -> list[dict]:
  """Section (d): for each generator and site, reduced precision against float32:
  EIM errors, and the modules the main job would find (K by `clustering.choose_k`,
  labels by `clustering.cluster_channels`, both at `analysis.AnalysisConfig`'s
  defaults) compared by the adjusted Rand index."""
  from sklearn.metrics import adjusted_rand_score  # pylint: disable=g-import-not-at-top

  from cfmod_jax import analysis  # pylint: disable=g-import-not-at-top
  from cfmod_jax.modules import find_modules  # pylint: disable=g-import-not-at-top

  d = analysis.AnalysisConfig()
  on_cpu = jax.devices()[0].platform == "cpu"
  others = [p for p in cfg.precisions if p != "float32" and not (on_cpu and p == "tf32")]
  out = []
  for name in cfg.study_generators:
    gen = cf.load_generator(name)
    sites = gen.sites if cfg.study_sites is None else tuple(cfg.study_sites)
    for site in sites:
      c = gen.site_shape(site)[-1]
      key = jax.random.key(cfg.seed)
      ks = [k for k in (cfg.study_k_values or d.k_values) if k <= c]
      kw = dict(
        n_pairs=cfg.study_pairs,
        block_pairs=cfg.study_pairs // cfg.study_groups,
        method=d.method,
        n_boot=cfg.study_n_boot or d.n_boot,
        seed=d.seed,
        sigma=d.sigma,
        percentile=d.percentile,
      )
      fits = {}
      for p in ("float32", *others):
        fits[p] = find_modules(gen, site, key=key, k_values=ks, precision=p, **kw)
      groups = {p: m.eim_groups for p, m in fits.items()}
      k32, clus32 = fits["float32"].k, fits["float32"].clustering
      # The EIMs' own sampling noise: first half of the groups against the second half.
      half = cfg.study_groups // 2
      noise = prec.relative_errors(
        groups["float32"][:half].mean(0), groups["float32"][half:].mean(0)
      )
      for p in others:
        err = prec.relative_errors(groups[p].mean(0), groups["float32"].mean(0))
        k_p, clus_p = fits[p].k, fits[p].clustering
        same_k = find_modules(gen, site, eim_groups=groups[p], k=k32, **{**kw, "n_boot": 0})
        same_k = same_k.clustering
        rec = {
          "generator": name,
          "site": site,
          "channels": c,
          "precision": p,
          "n_pairs": cfg.study_pairs,
          "rel_err_max": err["max"],
          "rel_err_mean": err["mean"],
          "split_half_rel_err_mean": noise["mean"],
          "k_float32": int(k32),
          "k_reduced": int(k_p),
          "ari_main_job": float(adjusted_rand_score(clus32.labels, clus_p.labels)),
          "ari_same_k": float(adjusted_rand_score(clus32.labels, same_k.labels)),
        }
        out.append(rec)
        log(
          "(d) %s %s %s: max|Δ|/mean %.2e, mean|Δ|/mean %.2e, K %d/%d, ARI %.3f (same K %.3f)",
          name,
          site,
          p,
          rec["rel_err_max"],
          rec["rel_err_mean"],
          k32,
          k_p,
          rec["ari_main_job"],
          rec["ari_same_k"],
        )
  return out


# ---- all ---------------------------------------------------------------------------------------


def run_check(cfg: CheckConfig, out_dir: str, log: Callable[..., None] = logging.info) -> dict:
  """Every section of ``cfg``; returns the JSON record (also written by `main`)."""
  for p in cfg.precisions:
    prec.check_precision(p)
  if "float32" not in cfg.precisions:
    raise ValueError("precisions must include 'float32' (the reference of the errors)")
  t0 = time.perf_counter()
  record: dict[str, Any] = {
    "schema": SCHEMA,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join(sys.argv),
    "config": _config_json(cfg),
  }
  log("device: %s × %d (%s)", jax.devices()[0].device_kind, jax.device_count(), jax.__version__)
  sections = {
    "device": lambda: device_info(cfg.matmul_n),
    "eim_benchmark": lambda: eim_benchmark(cfg, log),
    "main_job": lambda: main_job(cfg, os.path.join(out_dir, "main_job"), log),
    "biggan": lambda: biggan_section(cfg, log),
    "precision_study": lambda: precision_study(cfg, log),
  }
  wanted = {
    "eim_benchmark": cfg.eim_benchmark,
    "main_job": cfg.main_job,
    "biggan": cfg.biggan,
    "precision_study": cfg.study,
  }
  record["section_seconds"] = {}
  for name, fn in sections.items():
    if wanted.get(name, True):
      t = time.perf_counter()
      record[name] = fn()
      record["section_seconds"][name] = time.perf_counter() - t
      log("%s done in %.1f s", name, record["section_seconds"][name])
  log("matmul TFLOP/s: %s", record["device"]["matmul_tflops"])
  record["seconds_total"] = time.perf_counter() - t0
  return record


def _e(x: float | None) -> str:
  return "–" if x is None else f"{x:.2e}"


def summary_markdown(record: dict[str, Any]) -> str:
  """The JSON's numbers as Markdown tables (docs/gpu_check.md shows them for a CPU run):
  ``python -m studies.gpu_check --summarize <out>/gpu_check.json``."""
  dev = record["device"]
  mm = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in dev["matmul_tflops"].items())
  lines = [
    f"Device: {dev['platform']} ({dev['device_kind']}) × {dev['n_devices']}, jax"
    f" {dev['jax_version']}; matmul {dev['matmul_n']}² GFLOP/s: {mm}; {record['created']}.",
    "",
  ]
  if "eim_benchmark" in record:
    b = record["eim_benchmark"]
    lines += [
      f"**(a) EIMs of the benchmark workload** (DCGAN width {b['width']}, N = {b['n_pairs']}):",
      "",
      "| site | C | precision | hybrids/s | plain GFLOP/s | chunks | max/mean error |"
      " est. working set | est. / XLA bytes of one chunk |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in b["records"]:
      xla = r.get("xla_chunk_bytes")
      ratio = f"{r['estimated_chunk_bytes'] / xla:.2f}" if xla else "–"
      lines.append(
        f"| {r['site']} | {r['channels']} | {r['precision']} | {r['hybrids_per_s']:.0f} |"
        f" {r['plain_gflops']:.1f} | {r['pair_chunk']}×{r['mask_chunk']} |"
        f" {_e(r['rel_err_max'])} / {_e(r['rel_err_mean'])} |"
        f" {memory.format_bytes(r['estimated_working_set_bytes'])} | {ratio} |"
      )
    lines.append("")
  if "main_job" in record:
    j = record["main_job"]
    lines += [
      f"**(b) Main job** ({j['generator']}): {j['seconds']:.1f} s end to end"
      + (f" (`{j['cli_equivalent']}`)." if j["cli_equivalent"] else "."),
      "",
    ]
  if "biggan" in record:
    g = record["biggan"]
    lines += [
      f"**(c) {g['config']}** (random weights, {g['n_parameters'] / 1e6:.1f} M parameters):",
      "",
      "| site | C | suffix GFLOP/image | MiB/hybrid f32 / bf16 | precision | hybrids |"
      " s/hybrid | suffix s/image | suffix GFLOP/s | max/mean error |",
      "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for site in g["sites"]:
      base = (
        f"| {site['site']} | {site['channels']} | {site['suffix_flops_per_image'] / 1e9:.2f} |"
        f" {site['bytes_per_hybrid']['float32'] / 2**20:.1f} /"
        f" {site['bytes_per_hybrid']['bfloat16'] / 2**20:.1f} |"
      )
      if not site["timed"]:
        lines.append(base + " | | | | | |")
      for t in site["timed"]:
        lines.append(
          base + f" {t['precision']} | {t['hybrids']} | {t['seconds_per_hybrid']:.3g} |"
          f" {t['suffix_seconds_per_image']:.3g} | {t['suffix_gflops']:.1f} |"
          f" {_e(t['rel_err_max'])} / {_e(t['rel_err_mean'])} |"
        )
    lines.append("")
  if record.get("precision_study"):
    lines += [
      "**(d) Reduced precision vs float32 on the shipped generators** (EIM error relative"
      " to the mean EIM; modules at the main job's defaults):",
      "",
      "| generator | site | C | precision | N | max error | mean error |"
      " f32 split-half (N/2 vs N/2) | K f32 / reduced | ARI (main job) | ARI (same K) |",
      "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["precision_study"]:
      lines.append(
        f"| {r['generator']} | {r['site']} | {r['channels']} | {r['precision']} |"
        f" {r['n_pairs']} | {_e(r['rel_err_max'])} | {_e(r['rel_err_mean'])} |"
        f" {_e(r.get('split_half_rel_err_mean'))} | {r['k_float32']} / {r['k_reduced']} | {r['ari_main_job']:.3f} |"
        f" {r['ari_same_k']:.3f} |"
      )
    lines.append("")
  return "\n".join(lines)


def _config_json(cfg: CheckConfig) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if hasattr(v, "to_dict"):
      v = v.to_dict()
    elif isinstance(v, tuple):
      v = list(v)
    out[f.name] = v
  return out


# ---- CLI ---------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
  d = CheckConfig()
  flags.DEFINE_string("out", "out/gpu_check", "Output folder (gpu_check.json).")
  flags.DEFINE_bool("tiny", False, "Everything in a tiny configuration (tests; < 1 min on CPU).")
  flags.DEFINE_list("precisions", list(d.precisions), "Precisions (float32 is the reference).")
  flags.DEFINE_bool("eim_benchmark", d.eim_benchmark, "EIM benchmark section (a).")
  flags.DEFINE_integer("bench_width", d.bench_width, "DCGAN width of the EIM benchmark.")
  flags.DEFINE_integer("bench_pairs", d.bench_pairs, "Pairs of the EIM benchmark.")
  flags.DEFINE_bool("main_job", d.main_job, "Time the main job (b).")
  flags.DEFINE_string("main_generator", d.main_generator, "Generator of the main job.")
  flags.DEFINE_bool("biggan", d.biggan, "BigGAN-deep section (c).")
  flags.DEFINE_string("biggan_config", d.biggan_config, "BigGAN config name.")
  flags.DEFINE_list(
    "biggan_time_sites", list(d.biggan_time_sites), "BigGAN sites to time ('all': every site)."
  )
  flags.DEFINE_integer(
    "biggan_channels", None, "Channels per timed BigGAN site (default: 2 on CPU, 32 else)."
  )
  flags.DEFINE_integer("biggan_pairs", None, "Pairs per timed BigGAN site (2 on CPU, 16 else).")
  flags.DEFINE_list(
    "biggan_precisions", [], "Precisions of the BigGAN timing (default: float32 on CPU, all else)."
  )
  flags.DEFINE_bool("study", d.study, "Precision study on the shipped generators (d).")
  flags.DEFINE_integer("study_pairs", d.study_pairs, "Pairs of the precision study.")
  flags.DEFINE_integer("seed", d.seed, "Seed.", lower_bound=0)
  flags.DEFINE_string(
    "summarize", "", "Print the Markdown tables of an existing gpu_check.json and exit."
  )


def config_from_flags() -> CheckConfig:
  """The `CheckConfig` of the flags (``--tiny`` replaces the sizes)."""
  if FLAGS.tiny:
    return dataclasses.replace(tiny_config(), seed=FLAGS.seed)
  sites = FLAGS.biggan_time_sites
  for name in ("bench_width", "bench_pairs", "biggan_channels", "biggan_pairs", "study_pairs"):
    if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
      raise _cli.flag_error(name, f"must be a positive integer, got {getattr(FLAGS, name)}")
  return CheckConfig(
    precisions=tuple(FLAGS.precisions),
    seed=FLAGS.seed,
    eim_benchmark=FLAGS.eim_benchmark,
    bench_width=FLAGS.bench_width,
    bench_pairs=FLAGS.bench_pairs,
    main_job=FLAGS.main_job,
    main_generator=FLAGS.main_generator,
    biggan=FLAGS.biggan,
    biggan_config=FLAGS.biggan_config,
    biggan_time_sites=None if sites == ["all"] else tuple(sites),
    biggan_channels=FLAGS.biggan_channels,
    biggan_pairs=FLAGS.biggan_pairs,
    biggan_precisions=tuple(FLAGS.biggan_precisions) or None,
    study=FLAGS.study,
    study_pairs=FLAGS.study_pairs,
  )


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.summarize:
    import json  # pylint: disable=g-import-not-at-top

    with open(_cli.check_input_file("summarize"), encoding="utf-8") as f:
      print(summary_markdown(json.load(f)))
    return
  cfg = config_from_flags()
  for name in ("precisions", "biggan_precisions"):
    for p in getattr(FLAGS, name):
      with _cli.blame(name):
        prec.check_precision(p)
  if "float32" not in cfg.precisions:
    raise _cli.flag_error("precisions", "must include float32 (the reference of the errors)")
  out = _cli.check_output_dir("out")
  record = run_check(cfg, out)
  path = fileio.atomic_write_json(os.path.join(out, "gpu_check.json"), record)
  logging.info("wrote %s (%.0f s)", path, record["seconds_total"])


if __name__ == "__main__":
  _define_flags()
  _cli.run(main)
