"""EIMs → clustering in one call: the modules of one site of a generator.

`find_modules` is the paper's pipeline up to the partition of the channels:

1. **EIMs** (elementary influence maps) of every channel of ``site``, from one of
   three sources:

   * the resumable block sweep (default, `sweep.eim_sweep`): ``n_pairs`` pairs in
     blocks of ``block_pairs`` drawn from ``pair_seed`` (default ``seed``); with
     ``cache_dir`` finished blocks are kept on disk and a rerun resumes; with
     ``target_reliability`` the sweep stops once the EIMs are reliable enough;
   * one batch drawn from a `jax.random` ``key``
     (`interventions.elementary_influence_maps`), in ⌈n_pairs / block_pairs⌉
     groups of nearly equal size;
   * ``eim_groups`` computed earlier (``[G, C, H, W]``; nothing is computed).

   The blocks (groups) are the units of bootstrap resampling.
2. **K**: ``k="auto"`` chooses it among ``k_values`` (those ≤ C) by
   `clustering.choose_k`; a given ``k`` gets its stability (`clustering.stability_curve`)
   unless ``n_boot=0``.
3. **Modules**: `clustering.cluster_channels` of the EIMs with that K.

Every argument is checked before any work: here, by the block sweep's `sweep.SweepConfig`
or by `interventions.elementary_influence_maps`; the steps trust them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax import clustering
from cfmod_jax._validate import (
  check_maps,
  check_positive_int,
  check_prep_percentile,
  check_seed,
  check_sigma,
)
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.interventions import elementary_influence_maps
from cfmod_jax.precision import DEFAULT_PRECISION
from cfmod_jax.sweep import SweepConfig, SweepResult, broadcast_from_host0, eim_sweep

__all__ = ["Modules", "find_modules"]


@dataclasses.dataclass(frozen=True)
class Modules:
  """The modules of one site (`find_modules`).

  ``eims`` [C, H, W] are the clustered maps, ``eim_groups`` [G, C, H, W] the maps of
  each block (group) of pairs, ``counts`` [G] its pairs (None for ``eim_groups``
  given by the caller). ``labels`` [C] int: each channel's module (identical on
  every process); ``templates`` [K, H, W]: the clustering's templates. ``curve``:
  K -> (mean, std) template stability (`clustering.stability_curve`; empty with
  ``n_boot=0``). ``sweep``: the block sweep's record (None for the other sources).
  ``seconds_eims``: time of the EIM step.
  """

  eims: np.ndarray
  eim_groups: np.ndarray
  counts: np.ndarray | None
  k: int
  labels: np.ndarray
  clustering: clustering.ModuleClustering
  curve: dict[int, tuple[float, float]]
  sweep: SweepResult | None
  seconds_eims: float

  @property
  def templates(self) -> np.ndarray:
    return self.clustering.templates


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def find_modules(
  gen: Generator,
  site: str,
  *,
  n_pairs: int = 128,
  block_pairs: int = 16,
  k: int | str = "auto",
  k_values: Sequence[int] = (2, 3, 4, 5, 6),
  method: str = "nmf",
  n_boot: int = 8,
  seed: int = 0,
  pair_seed: int | None = None,
  key: jax.Array | None = None,
  eim_groups: ArrayLike | None = None,
  sigma: float | None = None,
  percentile: float = clustering.DEFAULT_PERCENTILE,
  rule: str = clustering.DEFAULT_RULE,
  tol: float | None = None,
  n_restarts: int = 4,
  boot_restarts: int = clustering.DEFAULT_STABILITY_RESTARTS,
  nmf_init: str = clustering.DEFAULT_NMF_INIT,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  precision: str = DEFAULT_PRECISION,
  target_reliability: float | None = None,
  cache_dir: str | None = None,
  fingerprint: str | None = None,
) -> Modules:
  """EIMs of ``site`` → K → modules (module docstring).

  Args:
    gen, site: the generator and one of its sites.
    n_pairs, block_pairs: latent pairs of the EIMs, and pairs per block (group).
    k: number of modules, or ``"auto"`` (`clustering.choose_k` over ``k_values``,
      those larger than the site's channels left out).
    method: ``"nmf"`` (the paper) or ``"kmeans"``.
    n_boot: bootstrap resamples of the stability curve (≥ 2; 0 with a given ``k``:
      no curve).
    seed: seeds the bootstrap and the fits (and the pairs unless ``pair_seed``).
    pair_seed: seed of the block sweep's pairs (default ``seed``).
    key: draw the pairs in one batch from this `jax.random` key instead of the
      block sweep (no cache).
    eim_groups: EIMs computed earlier, float [G, C, H, W]; their mean is clustered.
    sigma, percentile, nmf_init: preprocessing and NMF start
      (`clustering.cluster_channels`).
    rule, tol: `clustering.choose_k`'s rule.
    n_restarts, boot_restarts: starts of the final fit and of each bootstrap fit.
    pair_chunk, mask_chunk, precision: of the EIM computation (None: chosen from
      the device's memory).
    target_reliability: adaptive pairs of the block sweep (`sweep.SweepConfig`).
    cache_dir, fingerprint: the block sweep's resumable cache and the generator's
      fingerprint (computed when None).

  Returns:
    `Modules`. Raises ValueError naming the argument for any bad argument, before
    any work.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  c = gen.site_shape(site)[-1]
  seed = check_seed(seed, "seed")
  if method not in clustering.METHODS:
    raise ValueError(f"method must be one of {clustering.METHODS}, got {method!r}")
  if not _is_int(n_boot) or n_boot < 0 or n_boot == 1:
    raise ValueError(f"n_boot must be 0 (no stability curve) or an integer ≥ 2, got {n_boot!r}")
  if k == "auto":
    ks = list(k_values) if not isinstance(k_values, (str, bytes)) else [k_values]
    if not ks:
      raise ValueError("k_values must list at least one candidate number of modules")
    for kk in ks:
      if not _is_int(kk) or kk < 1:
        raise ValueError(f"k_values entries must be positive integers, got {kk!r}")
    ks = [int(kk) for kk in ks if kk <= c]
    if not ks:
      raise ValueError(f"k_values={tuple(k_values)}: none fits the C={c} channels of site {site!r}")
    if n_boot == 0:
      raise ValueError("n_boot must be ≥ 2 with k='auto' (K is chosen from bootstrap resamples)")
    if rule not in clustering.RULES:
      raise ValueError(f"rule must be one of {clustering.RULES}, got {rule!r}")
    if tol is not None and (not isinstance(tol, (int, float)) or not 0 <= tol < np.inf):
      raise ValueError(f"tol must be None or a number ≥ 0, got {tol!r}")
  elif not _is_int(k) or not 1 <= k <= c:
    raise ValueError(
      f"k must be 'auto' or an integer in [1, {c}] (the channels of site {site!r}), got {k!r}"
    )
  h, w = gen.image_shape[:2]
  check_sigma(sigma, clustering.default_sigma((h, w)))
  check_prep_percentile(percentile)
  check_positive_int(n_restarts, "n_restarts")
  check_positive_int(boot_restarts, "boot_restarts")
  if nmf_init not in clustering.NMF_INITS:
    raise ValueError(f"nmf_init must be one of {clustering.NMF_INITS}, got {nmf_init!r}")
  sources = [name for name, v in (("key", key), ("eim_groups", eim_groups)) if v is not None]
  if len(sources) > 1:
    raise ValueError("give at most one of key and eim_groups (the source of the EIMs)")
  if sources and (cache_dir is not None or target_reliability is not None):
    raise ValueError(
      f"cache_dir and target_reliability are options of the block sweep, not of {sources[0]}"
    )
  cfg = None
  if eim_groups is not None:
    check_maps(eim_groups, "eim_groups", 4, "[G, C, H, W]")
    groups = np.asarray(eim_groups)
    if groups.shape[1:] != (c, h, w):
      raise ValueError(
        f"eim_groups must be [G, {c}, {h}, {w}] for site {site!r}, got {list(groups.shape)}"
      )
    n_groups = groups.shape[0]
  elif key is not None:  # elementary_influence_maps checks the key, chunks and precision
    n_pairs = check_positive_int(n_pairs, "n_pairs")
    block_pairs = check_positive_int(block_pairs, "block_pairs")
    if block_pairs > n_pairs:
      raise ValueError(f"block_pairs={block_pairs} exceeds n_pairs={n_pairs}")
    n_groups = -(-n_pairs // block_pairs)
  else:  # a SweepConfig checks its fields when made (pair_seed as its seed)
    cfg = SweepConfig(
      n_pairs=n_pairs,
      block_pairs=block_pairs,
      seed=seed if pair_seed is None else pair_seed,
      pair_chunk=pair_chunk,
      mask_chunk=mask_chunk,
      target_reliability=target_reliability,
      precision=precision,
    )
    n_groups = cfg.n_blocks
  if n_boot and n_groups < 2:
    raise ValueError(
      f"the stability curve needs at least two groups of pairs, got {n_groups} "
      "(raise n_pairs, lower block_pairs, or n_boot=0 with a given k)"
    )

  # 1. EIMs.
  t0 = time.perf_counter()
  sweep, counts = None, None
  if eim_groups is not None:
    eims = groups.mean(axis=0)
  elif key is not None:
    maps = elementary_influence_maps(
      gen,
      site,
      n_pairs,
      key,
      n_groups=n_groups,
      pair_chunk=pair_chunk,
      mask_chunk=mask_chunk,
      precision=precision,
    )
    groups = np.asarray(maps).reshape(n_groups, c, h, w)
    counts = np.bincount((np.arange(n_pairs) * n_groups) // n_pairs, minlength=n_groups)
    eims = groups.mean(axis=0)
  else:
    sweep = eim_sweep(gen, site, cfg, cache_dir, fingerprint=fingerprint)
    eims, groups, counts = sweep.eims, sweep.eim_groups, sweep.counts
  seconds_eims = time.perf_counter() - t0
  # 2. K.
  common = dict(sigma=sigma, percentile=percentile)
  boot = dict(n_boot=n_boot, seed=seed, method=method, n_restarts=boot_restarts, nmf_init=nmf_init)
  if k == "auto":
    k, curve = clustering.choose_k(groups, ks, tol, rule, **boot, **common)
  elif n_boot:
    curve = clustering.stability_curve(groups, [k], **boot, **common)
  else:
    curve = {}
  # 3. Modules.
  clus = clustering.cluster_channels(
    eims, k, method, seed=seed, n_restarts=n_restarts, nmf_init=nmf_init, **common
  )
  labels = broadcast_from_host0(clus.labels)  # identical masks on every process
  return Modules(eims, groups, counts, int(k), labels, clus, curve, sweep, seconds_eims)
