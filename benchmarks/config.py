"""What the EIM benchmark runs: contenders, sites, the JSON record fields and the
configuration (`BenchConfig`, `quick_config`, `check_config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cfmod_jax._validate import check_positive_int, check_seed

# Every contender computes the same elementary influence maps (see `benchmarks.harness`).
CONTENDERS = (
  "cfmod_jax",
  "cfmod_jax_from_torch",
  "torch_hooks",
  "torch_batched",
  "torch_linear",
  "torch_batched_compiled",
  "torch_linear_compiled",
  "naive_jax",
)
TORCH_CONTENDERS = tuple(c for c in CONTENDERS if c.startswith("torch_"))
COMPILED_CONTENDERS = ("torch_batched_compiled", "torch_linear_compiled")
# The default run: cfmod_jax, the same engine on the PyTorch twin imported with
# `cfmod_jax.torch_bridge.from_torch`, and every PyTorch contender (naive JAX is opt-in).
DEFAULT_CONTENDERS = ("cfmod_jax", "cfmod_jax_from_torch", *TORCH_CONTENDERS)
# --quick (tests): not the compiled ones (torch.compile builds C++: slow) nor naive JAX.
QUICK_CONTENDERS = ("cfmod_jax", "torch_hooks", "torch_batched", "torch_linear")
SITES = ("block1", "block2", "block3", "block4")
MATMUL_N = 2048
MATMUL_REPEATS = 5
BANDWIDTH_REPEATS = 5

# Every key that a (contender, site) record has in the JSON.
RECORD_FIELDS = (
  "contender",
  "site",
  "channels",
  "n_pairs",
  "hybrids",
  "seconds",
  "seconds_min",
  "seconds_max",
  "repeat_seconds",
  "repeat_cpu_seconds",
  "repeat_loadavg_before",
  "repeat_loadavg_after",
  "repeat_order_positions",
  "cpu_seconds",
  "compile_seconds",
  "warmup_seconds",
  "hybrids_per_s",
  "plain_algorithm_gflop",
  "plain_algorithm_gflops",
  "minimal_gflop",
  "minimal_gflops",
  "efficiency",
  "seconds_over_floor",
  "peak_rss_mib",
  "setup_rss_mib",
  "workload_rss_mib",
  "max_abs_diff_vs_cfmod_jax",
  "max_abs_diff_between_repeats",
  "max_map_value",
  "threads",
  "details",
)

# Rough speeds used only for the run-time estimate logged at the start: the fraction
# of the float32 matmul peak each contender reaches on the FLOPs it actually runs
# (cfmod_jax, torch_linear: `minimal_flops`; torch_batched: the plain algorithm; hooks
# and naive JAX: a full forward pass per hybrid). Fitted loosely to earlier runs on a
# 2-core EPYC; the log compares the estimate with the real time at the end.
ESTIMATE_FRACTION_OF_PEAK = {
  "cfmod_jax": 0.6,
  "cfmod_jax_from_torch": 0.6,
  "torch_hooks": 0.16,
  "torch_batched": 0.3,
  "torch_linear": 0.3,
  "torch_batched_compiled": 0.3,
  "torch_linear_compiled": 0.3,
  "naive_jax": 0.55,
}
ESTIMATE_COMPILE_S = 20.0  # per memory layout a torch.compile'd worker tries
ESTIMATE_START_S = 6.0  # per worker process: imports, weights


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What to run.

  ``pair_chunk`` is the pairs per chunk of the torch and naive JAX contenders (the
  prefix runs once per chunk); ``channel_chunk`` the channels whose hybrids
  torch_batched / torch_linear (and their compiled versions) compute as one batch;
  cfmod_jax runs with its defaults. Every (contender, site) is timed ``repeats``
  times, interleaved (see `benchmarks.harness`). ``bandwidth_mib``: size of the
  float32 array of the memory-bandwidth measurement.
  """

  n_pairs: int = 64
  sites: Sequence[str] = SITES
  width: int = 64
  latent_dim: int = 100
  contenders: Sequence[str] = DEFAULT_CONTENDERS
  seed: int = 0
  pair_chunk: int = 64
  channel_chunk: int = 16
  repeats: int = 3
  memory_check: bool = True
  memory_site: str = "block4"
  memory_n_pairs: Sequence[int] = (256, 2048)
  matmul_n: int = MATMUL_N
  bandwidth_mib: int = 256
  torch_threads: int = 0  # 0: torch's default (the number of cores)
  worker_timeout_s: float = 3600.0


QUICK_SITES = ("block1", "block4")


def quick_config(
  cfg: BenchConfig,
  sites: Sequence[str] | None = QUICK_SITES,
  contenders: Sequence[str] | None = QUICK_CONTENDERS,
) -> BenchConfig:
  """A tiny version of ``cfg`` for tests: width 4, N = 4 in chunks of 3 pairs and 3
  channels (uneven last chunks), the first and last sites and every contender but
  the compiled ones (``sites=None`` / ``contenders=None`` keep ``cfg``'s), torch on
  one thread (faster at this size)."""
  return dataclasses.replace(
    cfg,
    n_pairs=4,
    width=4,
    pair_chunk=3,
    channel_chunk=3,
    memory_n_pairs=(4, 16),
    matmul_n=256,
    bandwidth_mib=16,
    torch_threads=1,
    sites=cfg.sites if sites is None else tuple(sites),
    contenders=cfg.contenders if contenders is None else tuple(contenders),
  )


def check_config(cfg: BenchConfig) -> None:
  """ValueError naming the first field of ``cfg`` that is not valid (site,
  contender, memory_site, memory_n_pairs, n_pairs, pair_chunk, channel_chunk, width,
  repeats, matmul_n, bandwidth_mib, seed, torch_threads, worker_timeout_s)."""
  for s in cfg.sites:
    if s not in SITES:
      raise ValueError(f"site {s!r} is not a DCGAN site; valid: {', '.join(SITES)}")
  for c in cfg.contenders:
    if c not in CONTENDERS:
      raise ValueError(f"contender {c!r} is unknown; valid: {', '.join(CONTENDERS)}")
  if not cfg.sites or not cfg.contenders:
    raise ValueError("need at least one site and one contender (sites, contenders)")
  if len(set(cfg.sites)) != len(cfg.sites) or len(set(cfg.contenders)) != len(cfg.contenders):
    raise ValueError("sites and contenders must not repeat an entry")
  for name in (
    "n_pairs",
    "pair_chunk",
    "channel_chunk",
    "width",
    "latent_dim",
    "repeats",
    "matmul_n",
    "bandwidth_mib",
  ):
    check_positive_int(getattr(cfg, name), name)
  check_seed(cfg.seed, "seed")
  if not isinstance(cfg.torch_threads, int) or isinstance(cfg.torch_threads, bool):
    raise ValueError(f"torch_threads must be an integer ≥ 0, got {cfg.torch_threads!r}")
  if cfg.torch_threads < 0:
    raise ValueError(f"torch_threads must be an integer ≥ 0, got {cfg.torch_threads!r}")
  if not isinstance(cfg.worker_timeout_s, (int, float)) or not cfg.worker_timeout_s > 0:
    raise ValueError(f"worker_timeout_s must be a positive number, got {cfg.worker_timeout_s!r}")
  if cfg.memory_check:
    if cfg.memory_site not in SITES:
      raise ValueError(f"memory_site {cfg.memory_site!r} is not a DCGAN site")
    m = tuple(cfg.memory_n_pairs)
    if len(m) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in m):
      raise ValueError(f"memory_n_pairs must be two positive integers, got {m!r}")


__all__ = [
  "BANDWIDTH_REPEATS",
  "COMPILED_CONTENDERS",
  "CONTENDERS",
  "DEFAULT_CONTENDERS",
  "ESTIMATE_COMPILE_S",
  "ESTIMATE_FRACTION_OF_PEAK",
  "ESTIMATE_START_S",
  "MATMUL_N",
  "MATMUL_REPEATS",
  "QUICK_CONTENDERS",
  "QUICK_SITES",
  "RECORD_FIELDS",
  "SITES",
  "TORCH_CONTENDERS",
  "BenchConfig",
  "check_config",
  "quick_config",
]
