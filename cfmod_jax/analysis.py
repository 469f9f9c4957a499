"""The main job: modules of every site of a generator, with metrics, figures and a report.

For each site:

1. **EIMs** over ``n_pairs`` latent pairs, in resumable blocks (`cfmod_jax.sweep`);
   the blocks are the groups for bootstrap resampling. With
   ``eim_target_reliability`` (off by default) ``n_pairs`` is a maximum: the sweep
   stops adding blocks once the split-half reliability of the EIMs reaches the
   target (`sweep.eim_reliability`, at least two blocks), for the trained and the
   untrained network alike; ``metrics.json`` then records per site the pairs used,
   the reliability after each block and the sweep's time (``eim_sweep``).
2. **K**: given, or chosen by `clustering.choose_k` (default rule: the smallest K
   whose mean bootstrap cosine silhouette is within 0.05 of the best); the curves
   are plotted.
3. **Modules**: NMF of the preprocessed EIMs, channel → argmax of W (the paper's
   rule); k-means on the same maps for comparison (adjusted Rand index).
4. **Evaluation on fresh pairs** (so the partition was not fitted to them): one
   batched call computes the influence maps of the K modules *and* of ``n_null``
   random partitions with the same module sizes (`metrics.null_partitions`), per
   group of pairs.
5. **Metrics** with bootstrap confidence intervals over groups of pairs and the
   random-partition null: overlap between module maps (mean pairwise cosine),
   share of each module's influence inside its own support, stability, and — for
   generators trained on the synthetic faces — agreement with the ground-truth
   part regions (`metrics.part_agreement`) beside its chance level. All of it is
   `cfmod_jax.metrics` (`partition_statistics`, `paired_bootstrap`,
   `effect_vs_null`, `beyond`); this module only feeds it.
6. **Untrained baseline** (``untrained_baseline``, default on): steps 1–5 again on
   the same architecture with random weights (`baselines.untrained_like`), with the
   same latent pairs, the same K and the same settings (its EIM sweep is cached
   too). Random convolutions already have local receptive fields, so an untrained
   network's modules also beat random channel groups; a metric counts as evidence
   of *learned* modularity only where the trained model's gain over its null is
   larger than the untrained network's gain over *its* null. Effect sizes (gain
   over the null, and that gain minus the untrained network's) get paired
   bootstrap 95% intervals: every resample draws the same groups of pairs for both
   networks. All compared quantities are scale-free (cosines, shares,
   distributions): an untrained DCGAN's influence maps are ~100× smaller.
7. **Figures** (PNG, `cfmod_jax.viz`; hybrid panels by `interventions.hybrid_grid`
   and `viz.grid_panel`) and ``report.html`` (`cfmod_jax.report`); arrays
   in ``<site>/analysis.npz``; numbers and per-site verdicts in ``metrics.json``.

This module is the job's configuration (`AnalysisConfig`, `check_config`), its
pipeline (`run`, `analyze_site`) and its output-folder rules (`claim_output_folder`,
`site_files`, `savez_deterministic`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from numpy.typing import ArrayLike
from sklearn.metrics import adjusted_rand_score

from cfmod_jax import baselines, clustering, fileio, metrics, report, viz
from cfmod_jax._validate import check_chunk, check_seed
from cfmod_jax.data.synthfaces import uses_synthfaces_parts
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.interventions import (
  hybrid_grid,
  influence_map_sums,
  masks_from_labels,
)
from cfmod_jax.lab import factors
from cfmod_jax.precision import check_precision
from cfmod_jax.sweep import (
  SweepConfig,
  SweepResult,
  broadcast_from_host0,
  check_target_reliability,
  eim_sweep,
  generator_fingerprint,
)

if TYPE_CHECKING:
  from cfmod_jax.lab import quality

__all__ = [
  "AnalysisConfig",
  "OPTIONAL_FIELDS",
  "OutputFolderError",
  "analyze_site",
  "check_config",
  "claim_output_folder",
  "config_dict",
  "eval_latents",
  "factor_effects",
  "factor_latents",
  "groups_eval_for",
  "part_maps_for",
  "remove_stale_files",
  "run",
  "run_settings",
  "savez_deterministic",
  "site_files",
  "uses_factors",
  "uses_parts",
]


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """Settings of the main job (defaults documented in the README)."""

  sites: Sequence[str] | None = None  # None: every site
  n_pairs: int = 128  # pairs for the EIMs
  block_pairs: int = 16  # pairs per resumable block (= bootstrap group)
  k: int | None = None  # modules; None: chosen by stability
  k_values: Sequence[int] = (2, 3, 4, 5, 6)
  n_boot: int = 8  # bootstrap resamples for the stability curve
  method: str = "nmf"  # 'nmf' (paper) or 'kmeans'
  sigma: float | None = None  # EIM smoothing (None: image size / 32)
  percentile: float = 80.0  # per-map threshold
  eval_pairs: int = 64  # fresh pairs for module maps and metrics
  eval_groups: int = 8
  n_null: int = 24  # random partitions for the null
  n_ci: int = 500  # bootstrap resamples for confidence intervals
  hybrid_rows: int = 4
  hybrid_cols: int = 5
  parts: str = "auto"  # 'synthfaces', 'none', or 'auto' (gen.dataset)
  seed: int = 0
  pair_chunk: int | None = 32  # None: chosen from the device's memory (cfmod_jax.memory)
  mask_chunk: int | None = 16
  untrained_baseline: bool = True  # same pipeline on random weights of the same shape
  min_effect: float = metrics.DEFAULT_MIN_EFFECT  # smallest effect (0–1) called "beyond"
  factor_transfer: str = "auto"  # 'auto' (with the part maps), 'synthfaces', 'none'
  factor_pairs: int = 128  # latent pairs for the factor transfer
  factor_null: int = 8  # random partitions for the factor-transfer null
  hybrid_fd_samples: int = 250  # hybrids per module for hybrid realism (0: off)
  # Adaptive pairs: stop the EIM sweep once its split-half reliability reaches this
  # (0 < t < 1); None (default): always n_pairs. Recorded in the settings only when set.
  eim_target_reliability: float | None = None
  # Arithmetic of the EIM sweep (the dominant cost): 'float32', 'tf32' or 'bfloat16'
  # (cfmod_jax.precision; for accelerators). Module maps, metrics and figures stay float32.
  precision: str = "float32"


#: Fields of `AnalysisConfig` left out of the recorded config (``metrics.json``,
#: ``run.json``) while at their default, so that outputs of runs that do not use
#: them are byte-for-byte those of versions without them.
OPTIONAL_FIELDS = {"eim_target_reliability": None, "precision": "float32"}


def config_dict(cfg: AnalysisConfig) -> dict:
  """``cfg`` as the dict recorded in ``metrics.json`` and the run manifest: every
  field except those of `OPTIONAL_FIELDS` that are at their default."""
  out = dataclasses.asdict(cfg)
  for name, default in OPTIONAL_FIELDS.items():
    if out[name] == default:
      del out[name]
  return out


def check_config(gen: Generator, cfg: AnalysisConfig) -> list[str]:
  """Validates everything before any expensive work; returns the sites to run."""
  check_generator(gen, "gen")
  if not isinstance(cfg, AnalysisConfig):
    raise ValueError(f"cfg must be an analysis.AnalysisConfig, got {type(cfg).__name__}")
  check_seed(cfg.seed, "seed")
  sites = list(cfg.sites) if cfg.sites else list(gen.sites)
  for s in sites:
    gen.site_index(s)
  for name in (
    "n_pairs",
    "block_pairs",
    "n_boot",
    "eval_pairs",
    "eval_groups",
    "n_null",
    "n_ci",
    "hybrid_rows",
    "hybrid_cols",
  ):
    v = getattr(cfg, name)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  check_chunk(cfg.pair_chunk, "pair_chunk")
  check_chunk(cfg.mask_chunk, "mask_chunk")
  check_precision(cfg.precision)
  check_target_reliability(cfg.eim_target_reliability, "eim_target_reliability")
  if cfg.n_pairs < 2 * cfg.block_pairs:
    raise ValueError(
      f"n_pairs={cfg.n_pairs} must be at least 2 × block_pairs="
      f"{cfg.block_pairs} (two groups are needed for the bootstrap)"
    )
  if cfg.eval_groups > cfg.eval_pairs:
    raise ValueError(f"eval_groups={cfg.eval_groups} exceeds eval_pairs={cfg.eval_pairs}")
  channels = min(gen.site_shape(s)[-1] for s in sites)
  ks = [cfg.k] if cfg.k is not None else list(cfg.k_values)
  if not ks:
    raise ValueError("k_values must list at least one candidate number of modules")
  for k in ks:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
      raise ValueError(f"k must be an integer ≥ 2, got {k!r}")
  if cfg.k is not None and cfg.k > channels:
    raise ValueError(
      f"k={cfg.k} is larger than the number of channels C={channels} of a requested site"
    )
  if cfg.k is None and min(ks) > channels:
    raise ValueError(
      f"k_values={tuple(ks)}: none fits the C={channels} channels of a requested site"
    )
  if not isinstance(cfg.untrained_baseline, (bool, np.bool_)):
    raise ValueError(f"untrained_baseline must be True or False, got {cfg.untrained_baseline!r}")
  if not isinstance(cfg.min_effect, (int, float, np.floating)) or not 0 <= cfg.min_effect < 1:
    raise ValueError(f"min_effect must be a number in [0, 1), got {cfg.min_effect!r}")
  if cfg.method not in ("nmf", "kmeans"):
    raise ValueError(f"method must be 'nmf' or 'kmeans', got {cfg.method!r}")
  if cfg.parts not in ("auto", "synthfaces", "none"):
    raise ValueError(f"parts must be 'auto', 'synthfaces' or 'none', got {cfg.parts!r}")
  if not 0 <= cfg.percentile < 100:
    raise ValueError(f"percentile must be in [0, 100), got {cfg.percentile}")
  if cfg.factor_transfer not in ("auto", "synthfaces", "none"):
    raise ValueError(
      f"factor_transfer must be 'auto', 'synthfaces' or 'none', got {cfg.factor_transfer!r}"
    )
  for name in ("factor_pairs", "factor_null"):
    v = getattr(cfg, name)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  if cfg.factor_pairs < cfg.eval_groups:
    raise ValueError(
      f"factor_pairs={cfg.factor_pairs} must be at least eval_groups="
      f"{cfg.eval_groups} (its pairs are split into the same groups)"
    )
  v = cfg.hybrid_fd_samples
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0 or v == 1:
    raise ValueError(f"hybrid_fd_samples must be 0 (off) or an integer ≥ 2, got {v!r}")
  if uses_factors(gen, cfg) and tuple(gen.image_shape) != (64, 64, 3):
    raise ValueError(
      f"factor_transfer={cfg.factor_transfer!r} needs 64×64×3 images (the "
      f"feature network's input), {gen.name} draws {tuple(gen.image_shape)}; "
      "set factor_transfer='none'"
    )
  return sites


def uses_parts(gen: Generator, cfg: AnalysisConfig) -> bool:
  """Whether the synthetic faces' part maps score the modules: ``parts='synthfaces'``,
  or ``'auto'`` and the generator was trained on them (``gen.dataset``)."""
  return cfg.parts == "synthfaces" or (cfg.parts == "auto" and uses_synthfaces_parts(gen))


def uses_factors(gen: Generator, cfg: AnalysisConfig) -> bool:
  """Whether the factor transfer runs: ``factor_transfer='synthfaces'``, or
  ``'auto'`` and the part maps apply (`uses_parts`) to a generator trained on the
  synthetic faces (``gen.dataset``; the feature network reads their factors)."""
  return cfg.factor_transfer == "synthfaces" or (
    cfg.factor_transfer == "auto" and uses_parts(gen, cfg) and uses_synthfaces_parts(gen)
  )


def part_maps_for(gen: Generator, cfg: AnalysisConfig) -> np.ndarray | None:
  """Ground-truth part probability maps [P, H, W], or None (`uses_parts`)."""
  if not uses_parts(gen, cfg):
    return None
  from cfmod_jax.data import synthfaces  # pylint: disable=g-import-not-at-top

  return synthfaces.part_prior()


# ---- per-site pieces ------------------------------------------------------------------
def eval_latents(gen: Generator, site_seed: int, n: int) -> tuple[jax.Array, jax.Array]:
  """The fresh pairs (z1, z2) on which module maps and metrics are evaluated."""
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 20))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


def groups_eval_for(n: int, g: int) -> np.ndarray:
  """int [n]: consecutive pairs in g groups of (nearly) equal size."""
  return (np.arange(n) * g) // n


@dataclasses.dataclass
class _SiteFit:
  """Modules of one network at one site, and their maps on the evaluation pairs."""

  eims: np.ndarray  # [C, H, W]
  eim_groups: np.ndarray  # [B, C, H, W]
  k: int
  curve: dict
  clus: clustering.ModuleClustering
  labels: np.ndarray
  ari: float
  supports: np.ndarray  # bool [1 + n_null, K, H, W]: modules, then null partitions
  group_maps: np.ndarray  # [G, (1 + n_null)·K, H, W]
  all_maps: np.ndarray  # [(1 + n_null)·K, H, W]
  seconds_eims: float
  sweep: SweepResult


def _fit_site(
  gen: Generator,
  site: str,
  cfg: AnalysisConfig,
  cache_dir: str,
  fingerprint: str,
  site_seed: int,
  z1,
  z2,
  groups_eval: np.ndarray,
  k: int | None,
  plot: str | None,
) -> tuple[_SiteFit, np.ndarray]:
  """Steps 1–4 for one network; ``k=None`` chooses K by stability."""
  t0 = time.perf_counter()
  # 1. EIMs (resumable).
  sweep = eim_sweep(
    gen,
    site,
    SweepConfig(
      n_pairs=cfg.n_pairs,
      block_pairs=cfg.block_pairs,
      seed=site_seed,
      pair_chunk=cfg.pair_chunk,
      mask_chunk=cfg.mask_chunk,
      target_reliability=cfg.eim_target_reliability,
      precision=cfg.precision,
    ),
    cache_dir,
    fingerprint=fingerprint,
  )
  eims, groups = sweep.eims, sweep.eim_groups
  c = eims.shape[0]
  t_eims = time.perf_counter() - t0
  # 2. K.
  common = dict(sigma=cfg.sigma, percentile=cfg.percentile)
  if k is None:
    ks = [kk for kk in cfg.k_values if kk <= c]
    k, curve = clustering.choose_k(
      groups, ks, n_boot=cfg.n_boot, seed=cfg.seed, method=cfg.method, **common
    )
    if plot:
      with fileio.atomic_path(plot) as tmp:
        viz.plot_stability_curve(curve, tmp, k_best=k, title=f"{gen.name} {site}")
  else:
    curve = clustering.stability_curve(
      groups, [k], n_boot=cfg.n_boot, seed=cfg.seed, method=cfg.method, **common
    )
  logging.info("%s site %s: K=%d (stability %.3f)", gen.name, site, k, curve[k][0])
  # 3. Modules.
  clus = clustering.cluster_channels(eims, k, cfg.method, seed=cfg.seed, **common)
  other = clustering.cluster_channels(
    eims, k, "kmeans" if cfg.method == "nmf" else "nmf", seed=cfg.seed, **common
  )
  labels = broadcast_from_host0(clus.labels)  # identical masks on every process
  # 4. Module maps and null maps on the evaluation pairs, one batched call.
  nulls = metrics.null_partitions(labels, cfg.n_null, cfg.seed + 1)
  masks = np.concatenate([masks_from_labels(p, k) for p in [labels, *nulls]])
  sums, counts = influence_map_sums(
    gen,
    site,
    masks,
    z1,
    z2,
    groups=groups_eval,
    pair_chunk=cfg.pair_chunk,
    mask_chunk=cfg.mask_chunk,
  )
  sums = np.asarray(sums)
  group_maps = sums / (3.0 * counts[:, None, None, None])  # [G, M, H, W]
  all_maps = sums.sum(0) / (3.0 * counts.sum())  # [M, H, W]
  flat = clustering.preprocess_eims(eims, **common)
  templates = np.stack([metrics.partition_templates(flat, lab, k) for lab in [labels, *nulls]])
  supports = metrics.support_masks(
    templates.reshape(len(templates), k, *eims.shape[1:]), cfg.percentile
  )
  return _SiteFit(
    eims,
    groups,
    int(k),
    curve,
    clus,
    labels,
    float(adjusted_rand_score(labels, other.labels)),
    supports,
    group_maps,
    all_maps,
    t_eims,
    sweep,
  ), counts


def _sweep_entry(sweep: SweepResult, seconds: float, max_pairs: int) -> dict:
  """What ``metrics.json`` records of an adaptive EIM sweep."""
  trace = [
    {"blocks": b + 1, "pairs": int(sweep.counts[: b + 1].sum()), "reliability": float(r)}
    for b, r in enumerate(sweep.reliability)
    if np.isfinite(r)
  ]
  return {
    "pairs_used": sweep.pairs_used,
    "max_pairs": max_pairs,
    "blocks_used": sweep.blocks_used,
    "stopped_early": sweep.stopped_early,
    "reliability_trace": trace,
    "seconds": seconds,
  }


def _metric_entries(
  fit: _SiteFit, reps: dict, parts: np.ndarray | None
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
  """Per metric: value, CI, null, p, z and the effect over the null (with CI)
  (`metrics.effect_vs_null`); and per metric the effect's bootstrap replicates."""
  r = fit.supports.shape[0]
  maps = fit.all_maps.reshape(r, fit.k, *fit.all_maps.shape[1:])
  stats = metrics.partition_statistics(maps, fit.supports, parts)
  out, effects = {}, {}
  for name, values in stats.items():
    out[name], effects[name] = metrics.effect_vs_null(values, reps[name], metrics.DIRECTION[name])
  return out, effects


def factor_latents(gen: Generator, site_seed: int, n: int) -> tuple[jax.Array, jax.Array]:
  """The pairs (z1, z2) of the factor transfer (neither the EIMs' nor the metrics')."""
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 22))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


def _exclusivity_gain(shares: np.ndarray, k: int, n_null: int) -> float:
  """Exclusivity of the K modules minus its mean over the null partitions, on one
  `factors.factor_masks` layout of shares ``[K + 1 + n_null·K, F]``."""
  whole = shares[k]
  null = [
    factors.exclusivity(shares[k + 1 + r * k : k + 1 + (r + 1) * k], whole) for r in range(n_null)
  ]
  if not np.any(np.isfinite(null)):
    return float("nan")
  return factors.exclusivity(shares[:k], whole) - float(np.nanmean(null))


def factor_effects(
  transfers: Sequence[factors.FactorTransfer],
  cols: Sequence[int],
  k: int,
  n_null: int,
  n_boot: int,
  seed: int,
  min_effect: float,
) -> dict:
  """Exclusivity gain over the null partitions (``effect_vs_null``) of the first
  network, of the second (``untrained_effect_vs_null``) and their difference
  (``effect_vs_untrained``), with 95% intervals from `factors.bootstrap_groups`;
  the networks' columns are stacked so that every resample draws the same groups
  of pairs for both (they ran on the same pairs)."""
  f = len(cols)
  follows = np.concatenate([t.follows[:, :, cols] for t in transfers], axis=2)
  valid = np.concatenate([t.valid[:, cols] for t in transfers], axis=1)
  gain = lambda s, i: _exclusivity_gain(s[:, i * f : (i + 1) * f], k, n_null)
  stats = {"effect_vs_null": lambda s: gain(s, 0)}
  if len(transfers) > 1:
    stats["untrained_effect_vs_null"] = lambda s: gain(s, 1)
    stats["effect_vs_untrained"] = lambda s: gain(s, 0) - gain(s, 1)
  out = {}
  for name, stat in stats.items():
    value, lo, hi = factors.bootstrap_groups(follows, valid, stat, n_boot, seed)
    out[name] = {"value": value, "ci95": [lo, hi]}
  out["beyond_null"] = bool(
    np.isfinite(out["effect_vs_null"]["ci95"][0])
    and metrics.beyond(out["effect_vs_null"], min_effect)
  )
  if len(transfers) > 1:
    e = out["effect_vs_untrained"]
    if np.isfinite(e["value"]) and np.isfinite(e["ci95"][0]):
      out["beyond_untrained"] = metrics.beyond(e, min_effect)
      out["evidence"] = out["beyond_null"] and out["beyond_untrained"]
    else:  # e.g. the untrained network's images never differ on these factors
      out["beyond_untrained"] = out["evidence"] = None
  return out


def _factor_section(
  gen: Generator,
  site: str,
  cfg: AnalysisConfig,
  fits: Sequence[_SiteFit],
  untrained: tuple[Generator, str] | None,
  featnet,
  site_seed: int,
  groups: np.ndarray,
) -> tuple[dict, dict]:
  """Factor transfer of the modules (and the untrained network's, same pairs), with
  summaries, effects and, if ``cfg.hybrid_fd_samples``, hybrid realism."""
  k = fits[0].k
  predict = featnet.predict_fn()
  z1, z2 = factor_latents(gen, site_seed, cfg.factor_pairs)
  nets = [gen] + ([untrained[0]] if untrained is not None else [])
  masks, transfers = [], []
  for net, fit in zip(nets, fits):
    masks.append(factors.factor_masks(fit.labels, k, n_null=cfg.factor_null, seed=cfg.seed + 1))
    transfers.append(
      factors.factor_transfer(
        net,
        site,
        masks[-1],
        z1,
        z2,
        predict,
        factors.FEATNET_KINDS,
        groups=groups,
        pair_chunk=cfg.pair_chunk,
        mask_chunk=cfg.mask_chunk,
      )
    )
  names = transfers[0].factors
  categorical = [n for n in names if factors.FEATNET_KINDS[n] == factors.CATEGORICAL]
  subsets = {"all": list(range(len(names))), "categorical": [names.index(n) for n in categorical]}
  summarize = lambda t, only=None: factors.factor_summary(
    t, k, cfg.factor_null, n_boot=cfg.n_ci, seed=cfg.seed, only=only
  )
  out = summarize(transfers[0])
  out["categorical"] = summarize(transfers[0], categorical)
  out.update(pairs=cfg.factor_pairs, groups=int(groups.max()) + 1, n_null=cfg.factor_null)
  for key, cols in subsets.items():
    eff = factor_effects(transfers, cols, k, cfg.factor_null, cfg.n_ci, cfg.seed, cfg.min_effect)
    (out if key == "all" else out["categorical"]).update(eff)
  if untrained is not None:
    out["untrained"] = summarize(transfers[1])
    out["untrained"]["categorical"] = summarize(transfers[1], categorical)
  arrays = dict(
    factor_masks=masks[0],
    factor_z1=np.asarray(z1),
    factor_z2=np.asarray(z2),
    factor_groups=groups,
    factor_follows=transfers[0].follows,
    factor_valid=transfers[0].valid,
  )
  if untrained is not None:
    arrays.update(
      untrained_factor_follows=transfers[1].follows, untrained_factor_valid=transfers[1].valid
    )
  if cfg.hybrid_fd_samples:
    hr = factors.hybrid_realism(
      gen,
      site,
      masks[0][: k + 1],
      featnet,
      n=cfg.hybrid_fd_samples,
      seed=site_seed,
      pair_chunk=cfg.pair_chunk,
      mask_chunk=cfg.mask_chunk,
    )
    out["hybrid_realism"] = {
      "fd": hr.fd[:k].tolist(),
      "whole_site_fd": float(hr.fd[k]),
      "plain_fd": float(hr.plain_fd),
      "floor": float(hr.floor),
      "n": hr.n,
    }
  return out, arrays


def analyze_site(
  gen: Generator,
  site: str,
  cfg: AnalysisConfig,
  out_dir: str,
  cache_dir: str,
  fingerprint: str,
  parts: np.ndarray | None,
  site_seed: int,
  untrained: tuple[Generator, str] | None = None,
  featnet: quality.FeatureNet | None = None,
) -> dict:
  """Steps 1–7 for one site; ``untrained`` is (baseline generator, its fingerprint);
  with ``featnet`` (`quality.FeatureNet`) also the factor transfer."""
  t0 = time.perf_counter()
  host0 = jax.process_index() == 0  # with several processes only process 0 writes
  sdir = os.path.join(out_dir, site)
  if host0:
    os.makedirs(sdir, exist_ok=True)
  z1, z2 = eval_latents(gen, site_seed, cfg.eval_pairs)
  groups_eval = groups_eval_for(cfg.eval_pairs, cfg.eval_groups)
  plot = os.path.join(sdir, "stability.png") if host0 and cfg.k is None else None
  fit, counts = _fit_site(
    gen, site, cfg, cache_dir, fingerprint, site_seed, z1, z2, groups_eval, cfg.k, plot
  )
  k, labels = fit.k, fit.labels
  t_trained = time.perf_counter() - t0
  fits = [fit]
  if untrained is not None:  # same pairs (same sampler, seeds), same K, same settings
    fits.append(
      _fit_site(
        untrained[0], site, cfg, cache_dir, untrained[1], site_seed, z1, z2, groups_eval, k, None
      )[0]
    )
  t_untrained = time.perf_counter() - t0 - t_trained
  # 5. Metrics, with one paired bootstrap for both networks.
  reps = metrics.paired_bootstrap(
    [f.group_maps for f in fits], counts, [f.supports for f in fits], parts, cfg.n_ci, cfg.seed
  )
  entries, effects = zip(*[_metric_entries(f, rp, parts) for f, rp in zip(fits, reps)])
  site_metrics = {
    "channels": int(fit.eims.shape[0]),
    "k": k,
    "stability": list(fit.curve[k]),
    "stability_curve": {str(kk): list(v) for kk, v in fit.curve.items()},
    "module_sizes": np.bincount(labels, minlength=k).tolist(),
    "nmf_vs_kmeans_ari": fit.ari,
  }
  if cfg.eim_target_reliability is not None:
    site_metrics["eim_sweep"] = _sweep_entry(fit.sweep, fit.seconds_eims, cfg.n_pairs)
    if untrained is not None:
      site_metrics["untrained_eim_sweep"] = _sweep_entry(
        fits[1].sweep, fits[1].seconds_eims, cfg.n_pairs
      )
  verdict = {}
  for name, entry in entries[0].items():
    beyond_null = metrics.beyond(entry["effect_vs_null"], cfg.min_effect)
    entry["beyond_null"] = bool(beyond_null)
    if untrained is not None:
      base = entries[1][name]
      base["beyond_null"] = metrics.beyond(base["effect_vs_null"], cfg.min_effect)
      diff = effects[0][name] - effects[1][name]
      entry["untrained"] = dict(base)
      entry["effect_vs_untrained"] = {
        "value": entry["effect_vs_null"]["value"] - base["effect_vs_null"]["value"],
        "ci95": metrics.percentile_ci(diff),
      }
      sign = -1.0 if metrics.DIRECTION[name] == "less" else 1.0
      raw = sign * (reps[0][name][:, 0] - reps[1][name][:, 0])
      entry["raw_difference_to_untrained"] = {
        "value": sign * (entry["value"] - base["value"]),
        "ci95": metrics.percentile_ci(raw),
      }
      entry["beyond_untrained"] = metrics.beyond(entry["effect_vs_untrained"], cfg.min_effect)
      entry["evidence"] = bool(beyond_null and entry["beyond_untrained"])
    else:
      entry["beyond_untrained"] = None
      entry["evidence"] = None
    site_metrics[name] = entry
    verdict[name] = {key: entry[key] for key in ("beyond_null", "beyond_untrained", "evidence")}
  distinct = ("overlap", "in_support")
  verdict["modules_distinct_beyond_null"] = all(verdict[n]["beyond_null"] for n in distinct)
  if untrained is not None:
    u = fits[1]
    site_metrics["stability_untrained"] = list(u.curve[k])
    site_metrics["untrained_module_sizes"] = np.bincount(u.labels, minlength=k).tolist()
    site_metrics["untrained_nmf_vs_kmeans_ari"] = u.ari
    (mt, st), (mu, su) = fit.curve[k], u.curve[k]
    verdict["stability"] = {
      "beyond_untrained": bool(mt - st > mu + su and mt - mu >= cfg.min_effect)
    }
    verdict["modules_distinct_beyond_untrained"] = all(verdict[n]["evidence"] for n in distinct)
  else:
    verdict["modules_distinct_beyond_untrained"] = None
  factor_arrays = {}
  if featnet is not None:
    t_f, cpu_f = time.perf_counter(), time.process_time()
    site_metrics["factor_transfer"], factor_arrays = _factor_section(
      gen,
      site,
      cfg,
      fits,
      untrained,
      featnet,
      site_seed,
      groups_eval_for(cfg.factor_pairs, cfg.eval_groups),
    )
    verdict["factor_transfer"] = {
      key: site_metrics["factor_transfer"].get(key)
      for key in ("beyond_null", "beyond_untrained", "evidence")
    }
    site_metrics["seconds_factors"] = (time.perf_counter() - t_f, time.process_time() - cpu_f)
  site_metrics["verdict"] = verdict
  site_metrics["beyond_untrained"] = verdict["modules_distinct_beyond_untrained"]
  site_metrics["seconds"] = {
    "eims": fit.seconds_eims,
    "trained": t_trained,
    "untrained": t_untrained,
    "total": time.perf_counter() - t0,
  }
  if "seconds_factors" in site_metrics:
    (site_metrics["seconds"]["factors"], site_metrics["seconds"]["factors_cpu"]) = site_metrics.pop(
      "seconds_factors"
    )
  if not host0:
    return site_metrics
  # 7. Figures and arrays.
  sizes = site_metrics["module_sizes"]
  mod_titles = [f"module {j} · {sizes[j]} ch" for j in range(k)]
  viz.save_map_grid(
    os.path.join(sdir, "eims.png"),
    fit.eims,
    labels=labels,
    colorbar_label="fraction of the channel's own maximum",
    title=f"EIMs of the {fit.eims.shape[0]} channels, ordered by module",
  )
  templates_name = (
    "k-means centroids" if fit.clus.method == "kmeans" else "NMF templates (rows of H)"
  )
  viz.save_map_grid(
    os.path.join(sdir, "templates.png"),
    fit.clus.templates,
    ncols=k,
    titles=mod_titles,
    colorbar_label="fraction of the template's maximum",
    title=f"{templates_name}, preprocessed EIM space",
  )
  viz.save_map_grid(
    os.path.join(sdir, "module_maps.png"),
    fit.all_maps[:k],
    ncols=k,
    normalize="global",
    titles=mod_titles,
    colorbar_label="mean |Δ pixel| (images in [-1, 1])",
    title="module influence maps, one scale",
  )
  arrays = {}
  if untrained is not None:
    u = fits[1]
    usizes = site_metrics["untrained_module_sizes"]
    viz.save_map_grid(
      os.path.join(sdir, "untrained_module_maps.png"),
      u.all_maps[:k],
      ncols=k,
      normalize="each",
      titles=[f"module {j} · {usizes[j]} ch" for j in range(k)],
      colorbar_label="fraction of the map's own maximum",
      title="untrained network: module maps, each to its max",
    )
    arrays = dict(
      untrained_labels=u.labels,
      untrained_module_maps=u.all_maps[:k],
      untrained_null_maps=u.all_maps[k:],
      untrained_templates=u.clus.templates,
    )
  if featnet is not None:
    ft = site_metrics["factor_transfer"]
    factors.plot_factor_matrix(
      os.path.join(sdir, "factor_transfer.png"),
      np.array(ft["matrix"] + [ft["whole"]]),
      [f"module {j} · {sizes[j]} ch" for j in range(k)] + ["whole site"],
      ft["factors"],
      title=f"{site}: share of pairs whose hybrid follows the donor",
    )
    arrays.update(factor_arrays)
  ka, kb = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 21))
  z_rows = gen.sample_latents(ka, cfg.hybrid_rows)
  z_cols = gen.sample_latents(kb, cfg.hybrid_cols)
  originals, donors = gen(z_rows), gen(z_cols)
  for j, mask in enumerate(masks_from_labels(labels, k)):
    panel = viz.grid_panel(originals, donors, hybrid_grid(gen, site, mask, z_rows, z_cols))
    viz.save_rgb(os.path.join(sdir, f"hybrids_module{j}.png"), panel)
  savez_deterministic(
    os.path.join(sdir, "analysis.npz"),
    eims=fit.eims,
    eim_groups=fit.eim_groups,
    labels=labels,
    templates=fit.clus.templates,
    weights=fit.clus.weights,
    module_maps=fit.all_maps[:k],
    null_maps=fit.all_maps[k:],
    eval_z1=np.asarray(z1),
    eval_z2=np.asarray(z2),
    eval_groups=groups_eval,
    **arrays,
  )
  remove_stale_files(sdir, site_files(k, untrained is not None, featnet is not None, cfg.k is None))
  site_metrics["seconds"]["total"] = time.perf_counter() - t0
  return site_metrics


# ---- output files ------------------------------------------------------------------------
# Every file of the job is written atomically (`cfmod_jax.fileio`): a temporary file in
# the same folder, renamed over the destination once complete, so a job killed at any
# moment leaves each output either absent, as the previous complete version, or new.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same arrays give the same bytes


def savez_deterministic(path: str, **arrays: ArrayLike) -> str:
  """``np.savez_compressed(path, **arrays)`` written atomically and bitwise
  reproducibly (numpy stamps each member with the current time; here every member
  has one fixed date). `np.load` reads it like any ``.npz``. Returns ``path``."""
  with fileio.atomic_path(path) as tmp:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
      for name, value in arrays.items():
        info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with zf.open(info, "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
  return path


def site_files(k: int, untrained: bool, factor_figure: bool, stability: bool) -> list[str]:
  """Names of the files a finished site folder holds (`analyze_site`)."""
  names = ["eims.png", "templates.png", "module_maps.png", "analysis.npz"]
  names += [f"hybrids_module{j}.png" for j in range(k)]
  names += ["untrained_module_maps.png"] * untrained + ["factor_transfer.png"] * factor_figure
  names += ["stability.png"] * stability
  return names


_OUTPUT_NAME = re.compile(r"(.*\.(png|npz|json|html)|\..*\.tmp.*)$")


def remove_stale_files(folder: str, keep: Sequence[str]) -> list[str]:
  """Deletes the output-like files of ``folder`` (``*.png``, ``*.npz``, ``*.json``,
  ``*.html`` and temporary files ``.<name>.*.tmp*`` of killed writers) that are not in
  ``keep``: figures of an earlier run (``hybrids_module5.png`` after a run with fewer
  modules, ``stability.png`` after one with a given K) never sit beside new results.
  Returns the removed names."""
  removed = []
  keep = set(keep)
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name not in keep and _OUTPUT_NAME.fullmatch(name) and os.path.isfile(path):
      os.unlink(path)
      removed.append(name)
  if removed:
    logging.info("removed stale files of an earlier run from %s: %s", folder, ", ".join(removed))
  return removed


def run_settings(
  gen: Generator, cfg: AnalysisConfig, sites: Sequence[str], untrained_fingerprint: str | None
) -> dict:
  """What the results in an output folder depend on (recorded in its manifest)."""
  return {
    "config": config_dict(cfg),
    "sites": list(sites),
    "generator": gen.name,
    "untrained_fingerprint": untrained_fingerprint,
  }


class OutputFolderError(ValueError):
  """The output folder holds results of a different run."""


def _flatten(d, prefix=""):
  out = {}
  for key, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = v
  return out


def claim_output_folder(out_dir: str, settings: dict, fingerprint: str) -> bool:
  """Checks that ``out_dir`` is empty or holds outputs of this very run (same
  settings and generator fingerprint, per its manifest ``run.json``), then writes the
  manifest. Returns whether earlier outputs of this run are there (a resume).

  A folder holding a different run's outputs, or outputs without a manifest (an
  older version), is refused with `OutputFolderError` (a ValueError naming the
  folder and the differences): results of two runs are never mixed, and nothing of
  the old run is changed. Call with the folder's `fileio.RunLock` held.
  """
  meta = fileio.read_manifest(out_dir)
  ignore = {fileio.LOCK_FILE, "cache"}
  if meta is None:
    leftovers = sorted(
      n for n in os.listdir(out_dir) if n not in ignore and not re.fullmatch(r"\..*\.tmp.*", n)
    )
    if leftovers:
      raise OutputFolderError(
        f"{out_dir} holds outputs without a run manifest ({', '.join(leftovers[:4])}"
        f"{', …' if len(leftovers) > 4 else ''}), written by an older version or "
        "another program; choose another --out or delete it"
      )
    fileio.write_manifest(out_dir, settings, fingerprint)
    return False
  if fileio.manifest_matches(out_dir, settings, fingerprint):
    return True
  old = _flatten(meta["settings"])
  new = _flatten(json.loads(json.dumps(settings, default=str)))
  diffs = [
    f"{key} {old.get(key, '—')!r} vs {new.get(key, '—')!r}"
    for key in sorted(set(old) | set(new))
    if old.get(key) != new.get(key)
  ]
  if meta["fingerprint"] != fingerprint:
    diffs.append("generator fingerprint (different weights or code)")
  raise OutputFolderError(
    f"{out_dir} holds outputs of a different run ({'; '.join(diffs[:4])}"
    f"{'; …' if len(diffs) > 4 else ''}; old vs this run); choose another --out or "
    "delete it"
  )


# ---- the job -----------------------------------------------------------------------------
def run(
  gen: Generator,
  cfg: AnalysisConfig,
  out_dir: str,
  cache_dir: str | None = None,
  baseline: Generator | None = None,
) -> dict:
  """Runs the analysis of every requested site; writes files under ``out_dir``.

  ``baseline``: the network to compare with when ``cfg.untrained_baseline`` (default:
  `baselines.untrained_like(gen)`); it must have ``gen``'s sites and latent shape.

  Output folder rules: the run holds ``<out_dir>/.lock`` (`fileio.RunLock`) from
  start to end, so a second run into the same folder fails at once with
  `fileio.OutputLockedError`. The folder's manifest ``run.json`` records the settings
  (`run_settings`) and generator fingerprint; a folder holding another run's outputs
  (or outputs without a manifest) is refused with `OutputFolderError`, leaving it
  unchanged; a rerun with the same settings resumes (finished EIM blocks come from the
  cache) and rewrites every output. Each file is written atomically; a finished site
  folder holds exactly `site_files` (stale files of earlier runs are removed). A run
  killed at any moment and rerun gives the same files as an uninterrupted run
  (timings in ``metrics.json`` and ``report.html`` aside).
  """
  sites = check_config(gen, cfg)
  if baseline is not None and (
    baseline.sites != gen.sites or baseline.latent_shape != gen.latent_shape
  ):
    raise ValueError(
      f"baseline must have the sites {gen.sites} and latent shape "
      f"{gen.latent_shape} of {gen.name}, got {baseline.sites} and "
      f"{baseline.latent_shape}"
    )
  parts = part_maps_for(gen, cfg)
  featnet = None
  if uses_factors(gen, cfg):
    from cfmod_jax.lab import quality  # pylint: disable=g-import-not-at-top

    featnet = quality.load_featnet()
  cache_dir = cache_dir or os.path.join(out_dir, "cache")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  fingerprint = generator_fingerprint(gen)
  result = {
    "generator": gen.name,
    "fingerprint": fingerprint,
    "config": config_dict(cfg),
    "devices": jax.device_count(),
    "platform": jax.default_backend(),
    "sites": {},
  }
  untrained = None
  if cfg.untrained_baseline:
    base = baseline if baseline is not None else baselines.untrained_like(gen)
    untrained = (base, generator_fingerprint(base))
    result["untrained_baseline"] = {
      "generator": base.name,
      "fingerprint": untrained[1],
      "seed": baselines.UNTRAINED_SEED if baseline is None else None,
    }
  # One run per folder at a time (the lock), and only this run's outputs in it (the
  # manifest); with several processes only process 0 writes.
  lock = fileio.RunLock(out_dir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    if lock is not None:
      settings = run_settings(gen, cfg, sites, untrained[1] if untrained else None)
      if claim_output_folder(out_dir, settings, fingerprint):
        logging.info("%s holds earlier outputs of this run: resuming", out_dir)
    t0 = time.perf_counter()
    for i, site in enumerate(sites):
      result["sites"][site] = analyze_site(
        gen,
        site,
        cfg,
        out_dir,
        cache_dir,
        fingerprint,
        parts,
        cfg.seed * 1000 + gen.site_index(site),
        untrained,
        featnet,
      )
      elapsed = time.perf_counter() - t0
      logging.info(
        "site %s done (%d/%d) in %.1f s; ETA %.0f s",
        site,
        i + 1,
        len(sites),
        result["sites"][site]["seconds"]["total"],
        elapsed / (i + 1) * (len(sites) - i - 1),
      )
    if parts is not None:
      gain = {
        s: m["part_agreement"]["value"] - m["part_agreement"]["null_mean"]
        for s, m in result["sites"].items()
      }
      result["best_site"] = max(gain, key=gain.get)
    result["seconds"] = time.perf_counter() - t0
    if jax.process_index() != 0:
      return result
    fileio.atomic_write_json(os.path.join(out_dir, "metrics.json"), result, sort_keys=False)
    report.write_report(result, out_dir)
    return result
  finally:
    if lock is not None:
      lock.release()
