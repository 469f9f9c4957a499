"""What the EIM benchmark runs: contenders, sites, the JSON record fields and the
configuration (`BenchConfig`, `quick_config`, `check_config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cfmod_jax._validate import check_positive_int, check_seed

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


def check_config(cfg: BenchConfig) -> None:
  """ValueError naming the first field of ``cfg`` that is not valid (site,
  contender, memory_site, n_pairs, pair_chunk, width, seed)."""
  for s in cfg.sites:
    if s not in SITES:
      raise ValueError(f"site {s!r} is not a DCGAN site; valid: {', '.join(SITES)}")
  for c in cfg.contenders:
    if c not in CONTENDERS:
      raise ValueError(f"contender {c!r} is unknown; valid: {', '.join(CONTENDERS)}")
  if not cfg.sites or not cfg.contenders:
    raise ValueError("need at least one site and one contender")
  for name in ("n_pairs", "pair_chunk", "width"):
    check_positive_int(getattr(cfg, name), name)
  check_seed(cfg.seed, "seed")
  if cfg.memory_check and cfg.memory_site not in SITES:
    raise ValueError(f"memory_site {cfg.memory_site!r} is not a DCGAN site")


__all__ = [
  "CONTENDERS",
  "MATMUL_N",
  "MATMUL_REPEATS",
  "QUICK_SITES",
  "RECORD_FIELDS",
  "SITES",
  "BenchConfig",
  "check_config",
  "quick_config",
]
