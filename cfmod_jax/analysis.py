"""The main job: modules of every site of a generator, with metrics, figures and a report.

For each site:

1. **EIMs** over ``n_pairs`` latent pairs, in resumable blocks (`cfmod_jax.sweep`);
   the blocks are the groups for bootstrap resampling. With
   ``eim_target_reliability`` (off by default) ``n_pairs`` is a maximum: the sweep
   stops adding blocks once the split-half reliability of the EIMs reaches the
   target (`split_half.eim_reliability`, at least two blocks), for the trained and the
   untrained network alike; ``metrics.json`` then records per site the pairs used,
   the reliability after each block and the sweep's time (``eim_sweep``).
2. **K**: given, or chosen by `clustering.choose_k` (default rule: the smallest K
   whose mean bootstrap cosine silhouette is within 0.05 of the best); the curves
   are plotted.
3. **Modules**: NMF of the preprocessed EIMs, channel → argmax of W (the paper's
   rule); k-means on the same maps for comparison (adjusted Rand index).
4. **Evaluation on fresh pairs** (so the partition was not fitted to them): one
   batched call computes the influence maps of the K modules *and* of ``n_null``
   random partitions with the same module sizes (`resampling.null_partitions`), per
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

This module is the job's configuration (`AnalysisConfig`, checked once by
`check_config`) and its computing pipeline: `analyze_site` returns a `SiteResult`
per site (steps 1–6 and the hybrid panels), which `cfmod_jax.writer` turns into files
(figures, ``analysis.npz``, ``metrics.json``, the report) under the output-folder
rules (lock, manifest, stale files). `run` does both, site by site. Steps 1–3 are
`modules.find_modules`; the factor transfer is `cfmod_jax.site_factors`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging

from cfmod_jax import baselines, evaluation, metrics, site_factors, viz, writer
from cfmod_jax._validate import check_chunk, check_seed
from cfmod_jax.data.synthfaces import uses_synthfaces_parts
from cfmod_jax.fingerprint import generator_fingerprint
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.interventions import (
  hybrid_grid,
  masks_from_labels,
)
from cfmod_jax.precision import check_precision
from cfmod_jax.sweep import check_target_reliability
from cfmod_jax.writer import OutputFolderError

if TYPE_CHECKING:
  from cfmod_jax.lab import quality

__all__ = [
  "AnalysisConfig",
  "OutputFolderError",
  "SiteResult",
  "analyze_site",
  "check_config",
  "config_dict",
  "eval_latents",
  "groups_eval_for",
  "part_maps_for",
  "run",
  "run_settings",
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
  # (0 < t < 1); None (default): always n_pairs.
  eim_target_reliability: float | None = None
  # Arithmetic of the EIM sweep (the dominant cost): 'float32', 'tf32' or 'bfloat16'
  # (cfmod_jax.precision; for accelerators). Module maps, metrics and figures stay float32.
  precision: str = "float32"


def config_dict(cfg: AnalysisConfig) -> dict:
  """``cfg`` as the dict recorded in ``metrics.json`` and the run manifest."""
  return dataclasses.asdict(cfg)


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


def eval_latents(gen: Generator, site_seed: int, n: int) -> tuple[jax.Array, jax.Array]:
  """The fresh pairs (z1, z2) on which module maps and metrics are evaluated."""
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 20))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


def groups_eval_for(n: int, g: int) -> np.ndarray:
  """int [n]: consecutive pairs in g groups of (nearly) equal size."""
  return (np.arange(n) * g) // n


@dataclasses.dataclass
class SiteResult:
  """Everything the main job computed for one site (`analyze_site`); `writer.write_site`
  turns it into files. ``metrics``: the site's entry of ``metrics.json``; ``fit``
  and ``untrained``: the trained and untrained networks' `evaluation.SiteFit`;
  ``hybrid_panels``: one RGB panel per module (empty on processes other than 0)."""

  site: str
  metrics: dict
  fit: evaluation.SiteFit
  untrained: evaluation.SiteFit | None
  eval_z1: np.ndarray
  eval_z2: np.ndarray
  eval_groups: np.ndarray
  factor_arrays: dict
  hybrid_panels: list
  chose_k: bool  # K chosen by the job (a stability figure is drawn)


def analyze_site(
  gen: Generator,
  site: str,
  cfg: AnalysisConfig,
  cache_dir: str,
  fingerprint: str,
  parts: np.ndarray | None,
  site_seed: int,
  untrained: tuple[Generator, str] | None = None,
  featnet: quality.FeatureNet | None = None,
) -> SiteResult:
  """Steps 1–6 for one site, and the hybrid panels; ``untrained`` is (baseline
  generator, its fingerprint); with ``featnet`` (`quality.FeatureNet`) also the
  factor transfer. Arguments are trusted (`check_config`)."""
  t0 = time.perf_counter()
  z1, z2 = eval_latents(gen, site_seed, cfg.eval_pairs)
  groups_eval = groups_eval_for(cfg.eval_pairs, cfg.eval_groups)
  fit, counts = evaluation.fit_site(
    gen, site, cfg, cache_dir, fingerprint, site_seed, z1, z2, groups_eval, cfg.k
  )
  k, labels = fit.k, fit.labels
  t_trained = time.perf_counter() - t0
  fits = [fit]
  if untrained is not None:  # same pairs (same sampler, seeds), same K, same settings
    fits.append(
      evaluation.fit_site(
        untrained[0], site, cfg, cache_dir, untrained[1], site_seed, z1, z2, groups_eval, k
      )[0]
    )
  t_untrained = time.perf_counter() - t0 - t_trained
  # 5. Metrics, with one paired bootstrap for both networks.
  entries, verdict = evaluation.metric_entries(
    fits, counts, parts, cfg.n_ci, cfg.seed, cfg.min_effect
  )
  site_metrics = {
    "channels": int(fit.eims.shape[0]),
    "k": k,
    "stability": list(fit.curve[k]),
    "stability_curve": {str(kk): list(v) for kk, v in fit.curve.items()},
    "module_sizes": np.bincount(labels, minlength=k).tolist(),
    "nmf_vs_kmeans_ari": fit.ari,
  }
  if cfg.eim_target_reliability is not None:
    site_metrics["eim_sweep"] = evaluation.sweep_entry(fit.sweep, fit.seconds_eims, cfg.n_pairs)
    if untrained is not None:
      site_metrics["untrained_eim_sweep"] = evaluation.sweep_entry(
        fits[1].sweep, fits[1].seconds_eims, cfg.n_pairs
      )
  site_metrics.update(entries)
  seconds = {"eims": fit.seconds_eims, "trained": t_trained, "untrained": t_untrained}
  factor_arrays = {}
  if featnet is not None:
    t_f, cpu_f = time.perf_counter(), time.process_time()
    site_metrics["factor_transfer"], factor_arrays = site_factors.factor_section(
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
    seconds["factors"] = time.perf_counter() - t_f
    seconds["factors_cpu"] = time.process_time() - cpu_f
  site_metrics["verdict"] = verdict
  site_metrics["beyond_untrained"] = verdict["modules_distinct_beyond_untrained"]
  # 7. The hybrid panels of the figures (process 0 writes them).
  panels = []
  if jax.process_index() == 0:
    ka, kb = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 21))
    z_rows = gen.sample_latents(ka, cfg.hybrid_rows)
    z_cols = gen.sample_latents(kb, cfg.hybrid_cols)
    originals, donors = gen(z_rows), gen(z_cols)
    for mask in masks_from_labels(labels, k):
      panels.append(viz.grid_panel(originals, donors, hybrid_grid(gen, site, mask, z_rows, z_cols)))
  seconds["total"] = time.perf_counter() - t0
  site_metrics["seconds"] = {
    key: seconds[key]
    for key in ("eims", "trained", "untrained", "total", "factors", "factors_cpu")
    if key in seconds
  }
  return SiteResult(
    site,
    site_metrics,
    fit,
    fits[1] if untrained is not None else None,
    np.asarray(z1),
    np.asarray(z2),
    groups_eval,
    factor_arrays,
    panels,
    cfg.k is None,
  )


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

  Each site is computed (`analyze_site`), then written (`writer.write_site`);
  ``metrics.json`` and ``report.html`` come last (`writer.write_results`). Output
  folder rules (`cfmod_jax.writer`): the run holds ``<out_dir>/.lock`` from start to
  end, so a second run into the same folder fails at once with
  `fileio.OutputLockedError`. The folder's manifest ``run.json`` records the settings
  (`run_settings`) and generator fingerprint; a folder holding another run's outputs
  (or outputs without a manifest) is refused with `OutputFolderError`, leaving it
  unchanged; a rerun with the same settings resumes (finished EIM blocks come from the
  cache) and rewrites every output. Each file is written atomically; a finished site
  folder holds exactly `writer.site_files`. A run killed at any moment and rerun gives
  the same files as an uninterrupted run (timings in ``metrics.json`` and
  ``report.html`` aside).
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
  host0 = jax.process_index() == 0  # with several processes only process 0 writes
  settings = run_settings(gen, cfg, sites, untrained[1] if untrained else None)
  with writer.output_folder(out_dir, settings, fingerprint):
    t0 = time.perf_counter()
    for i, site in enumerate(sites):
      t_site = time.perf_counter()
      res = analyze_site(
        gen,
        site,
        cfg,
        cache_dir,
        fingerprint,
        parts,
        cfg.seed * 1000 + gen.site_index(site),
        untrained,
        featnet,
      )
      if host0:
        writer.write_site(out_dir, gen.name, res)
      res.metrics["seconds"]["total"] = time.perf_counter() - t_site
      result["sites"][site] = res.metrics
      elapsed = time.perf_counter() - t0
      logging.info(
        "site %s done (%d/%d) in %.1f s; ETA %.0f s",
        site,
        i + 1,
        len(sites),
        res.metrics["seconds"]["total"],
        elapsed / (i + 1) * (len(sites) - i - 1),
      )
    if parts is not None:
      gain = {
        s: m["part_agreement"]["value"] - m["part_agreement"]["null_mean"]
        for s, m in result["sites"].items()
      }
      result["best_site"] = max(gain, key=gain.get)
    result["seconds"] = time.perf_counter() - t0
    if host0:
      writer.write_results(out_dir, result)
    return result
