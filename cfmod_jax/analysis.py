"""The main job: modules of every site of a generator, with metrics, figures and a report.

For each site:

1. **EIMs** over ``n_pairs`` latent pairs, in resumable blocks (`cfmod_jax.sweep`);
   the blocks are the groups for bootstrap resampling.
2. **K**: given, or chosen by template stability across bootstrap resamples and
   NMF restarts (`clustering.choose_k`); the curve is plotted.
3. **Modules**: NMF of the preprocessed EIMs, channel → argmax of W (the paper's
   rule); k-means on the same maps for comparison (adjusted Rand index).
4. **Evaluation on fresh pairs** (so the partition was not fitted to them): one
   batched call computes the influence maps of the K modules *and* of ``n_null``
   random partitions with the same module sizes, per group of pairs.
5. **Metrics** with bootstrap confidence intervals over groups of pairs and the
   random-partition null: overlap between module maps (mean pairwise cosine),
   share of each module's influence inside its own support, stability, and — for
   generators trained on the synthetic faces — agreement with the ground-truth
   part regions (`metrics.part_agreement`) beside its chance level.
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
7. **Figures** (PNG) and ``report.html``; arrays in ``<site>/analysis.npz``;
   numbers and per-site verdicts in ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import time
import zipfile
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from cfmod_jax import baselines, clustering, factors, fileio, metrics, specs, viz
from cfmod_jax._validate import check_generator, check_seed
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import hybrids, influence_map_sums
from cfmod_jax.sweep import SweepConfig, broadcast_from_host0, eim_sweep, generator_fingerprint


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
  pair_chunk: int = 32
  mask_chunk: int = 16
  untrained_baseline: bool = True  # same pipeline on random weights of the same shape
  min_effect: float = 0.01  # smallest effect (0–1 metric scale) called "beyond"
  factor_transfer: str = "auto"  # 'auto' (with the part maps), 'synthfaces', 'none'
  factor_pairs: int = 128  # latent pairs for the factor transfer
  factor_null: int = 8  # random partitions for the factor-transfer null
  hybrid_fd_samples: int = 250  # hybrids per module for hybrid realism (0: off)


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
    "pair_chunk",
    "mask_chunk",
  ):
    v = getattr(cfg, name)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
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


# One implementation of the generator specs (kept here for older callers).
generator_from_spec = specs.generator_from_spec


def uses_parts(gen: Generator, cfg: AnalysisConfig) -> bool:
  """Whether the synthetic faces' part maps score the modules: ``parts='synthfaces'``,
  or ``'auto'`` and the generator was trained on them (``gen.dataset``)."""
  return cfg.parts == "synthfaces" or (cfg.parts == "auto" and specs.uses_synthfaces_parts(gen))


def uses_factors(gen: Generator, cfg: AnalysisConfig) -> bool:
  """Whether the factor transfer runs: ``factor_transfer='synthfaces'``, or
  ``'auto'`` and the part maps apply (`uses_parts`) to a generator trained on the
  synthetic faces (``gen.dataset``; the feature network reads their factors)."""
  return cfg.factor_transfer == "synthfaces" or (
    cfg.factor_transfer == "auto" and uses_parts(gen, cfg) and specs.uses_synthfaces_parts(gen)
  )


def part_maps_for(gen: Generator, cfg: AnalysisConfig) -> np.ndarray | None:
  """Ground-truth part probability maps [P, H, W], or None (`uses_parts`)."""
  if not uses_parts(gen, cfg):
    return None
  from cfmod_jax.data import synthfaces  # pylint: disable=g-import-not-at-top

  return synthfaces.part_prior()


# ---- per-site pieces ------------------------------------------------------------------
METRICS = ("overlap", "in_support", "part_agreement")
# Which way is "more modular": low overlap, high in-support share, high part agreement.
DIRECTION = {"overlap": "less", "in_support": "greater", "part_agreement": "greater"}


def module_masks(labels: np.ndarray, k: int) -> np.ndarray:
  """[K, C] float32 one-hot channel masks of a partition."""
  return (labels[None, :] == np.arange(k)[:, None]).astype(np.float32)


def null_partitions(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """[n, C] random relabellings keeping the module sizes."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(labels) for _ in range(n)])


def partition_templates(flat_maps: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Mean preprocessed EIM of each module's channels: [K, H·W] (a module's support)."""
  return np.stack(
    [
      flat_maps[labels == j].mean(0) if np.any(labels == j) else np.zeros(flat_maps.shape[1])
      for j in range(k)
    ]
  )


def support_masks(templates: np.ndarray, percentile: float) -> np.ndarray:
  """bool [..., K, H, W]: pixels where a template is ≥ its own ``percentile``-th
  percentile and > 0 (the rule of `metrics.in_support_share` for float supports)."""
  t = np.asarray(templates)
  flat = t.reshape(*t.shape[:-2], -1)
  thr = np.percentile(flat, percentile, axis=-1, keepdims=True)
  return ((flat >= thr) & (flat > 0)).reshape(t.shape)


def partition_statistics(
  maps: np.ndarray, supports: np.ndarray, parts: np.ndarray | None
) -> dict[str, np.ndarray]:
  """The metrics of many partitions at once (vectorised `metrics` functions).

  Args:
    maps: float [..., K, H, W] module influence maps (any leading shape).
    supports: bool [..., K, H, W] (broadcastable to ``maps``): each module's support.
    parts: float [P, H, W] ground-truth part maps, or None.

  Returns:
    ``{"overlap", "in_support"[, "part_agreement"]}`` → float64 [...]; entry i equals
    `metrics.module_overlap`, `metrics.in_support_share(...)[1]` and
    `metrics.part_agreement` of ``maps[i]``.
  """
  maps = np.asarray(maps, np.float64)
  lead, k = maps.shape[:-3], maps.shape[-3]
  flat = maps.reshape(-1, k, maps.shape[-2] * maps.shape[-1])
  sup = np.broadcast_to(supports, maps.shape).reshape(flat.shape)
  norms = np.linalg.norm(flat, axis=2, keepdims=True)
  unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
  sim = unit @ unit.transpose(0, 2, 1)
  iu = np.triu_indices(k, 1)
  out = {"overlap": sim[:, iu[0], iu[1]].mean(1)}
  total = flat.sum(2)
  inside = (flat * sup).sum(2)
  shares = np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)
  with np.errstate(invalid="ignore"):
    count = np.sum(total > 0, axis=1)
    out["in_support"] = np.where(count > 0, np.nansum(shares, 1) / np.maximum(count, 1), np.nan)
  if parts is not None:
    dist = np.divide(flat, total[..., None], out=np.zeros_like(flat), where=total[..., None] > 0)
    q = np.asarray(parts, np.float64).reshape(len(parts), -1)
    cover = q.sum(0, keepdims=True)
    q = np.divide(q, cover, out=np.zeros_like(q), where=cover > 0)
    mass = dist @ q.T  # [N, K, P]
    agreement = np.empty(len(mass))
    for i, m in enumerate(mass):
      rows, cols = linear_sum_assignment(m, maximize=True)
      agreement[i] = m[rows, cols].sum() / k
    out["part_agreement"] = agreement
  return {name: v.reshape(lead) for name, v in out.items()}


def _ci(values: np.ndarray) -> list[float]:
  """Percentile 95% interval of bootstrap replicates (NaNs ignored)."""
  return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def paired_bootstrap(
  group_maps: Sequence[np.ndarray],
  counts: np.ndarray,
  supports: Sequence[np.ndarray],
  parts: np.ndarray | None,
  n: int,
  seed: int,
  chunk: int = 16,
) -> list[dict[str, np.ndarray]]:
  """Bootstrap replicates of `partition_statistics` for several networks, paired.

  Replicate b draws G of the G groups of pairs with replacement (one draw for all
  networks: they were evaluated on the same pairs) and evaluates every partition of
  every network on the count-weighted mean of the drawn groups' maps.

  Args:
    group_maps: per network, float [G, R·K, H, W]: the maps of R partitions (the
      modules first, then the null partitions), per group of pairs.
    counts: int [G] pairs per group.
    supports: per network, bool [R, K, H, W].
    parts: ground-truth part maps or None.
    n: number of replicates; seed: their seed.

  Returns:
    per network, ``{metric: float64 [n, R]}``.
  """
  rng = np.random.default_rng(seed)
  g = len(counts)
  weights = np.zeros((n, g))
  for b in range(n):
    idx = rng.integers(0, g, g)
    np.add.at(weights[b], idx, counts[idx].astype(np.float64))
  weights /= weights.sum(1, keepdims=True)
  out = []
  for maps, sup in zip(group_maps, supports):
    r, k = sup.shape[:2]
    reps: dict[str, list] = {}
    for s in range(0, n, chunk):
      boot = np.tensordot(weights[s : s + chunk], maps, axes=1)  # [b, R·K, H, W]
      boot = boot.reshape(len(boot), r, k, *boot.shape[-2:])
      for name, v in partition_statistics(boot, sup[None], parts).items():
        reps.setdefault(name, []).append(v)
    out.append({name: np.concatenate(v) for name, v in reps.items()})
  return out


def hybrid_panel(
  gen: Generator, site: str, mask: np.ndarray, z1, z2, rows: int, cols: int
) -> np.ndarray:
  """The paper's figure for one module: originals z1 down the left, donors z2
  across the top, the hybrid in each cell. Returns an RGB image in [0, 1]."""
  z1r = np.repeat(np.asarray(z1[:rows]), cols, axis=0)
  z2t = np.tile(np.asarray(z2[:cols]), (rows,) + (1,) * (z2.ndim - 1))
  cells = np.asarray(hybrids(gen, site, mask, z1r, z2t))  # [rows·cols, H, W, 3]
  h, w = cells.shape[1:3]
  blank = np.ones((1, h, w, 3), np.float32)
  top = np.concatenate([blank, viz.to_unit(gen(z2[:cols]))])
  originals = viz.to_unit(gen(z1[:rows]))
  body = [
    np.concatenate([originals[r : r + 1], viz.to_unit(cells[r * cols : (r + 1) * cols])])
    for r in range(rows)
  ]
  return viz.tile(np.concatenate([top, *body]), cols + 1, pad=3)


def eval_latents(gen: Generator, site_seed: int, n: int):
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
        clustering.plot_stability_curve(curve, tmp, k_best=k, title=f"{gen.name} {site}")
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
  nulls = null_partitions(labels, cfg.n_null, cfg.seed + 1)
  masks = np.concatenate([module_masks(labels, k)] + [module_masks(p, k) for p in nulls])
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
  templates = np.stack([partition_templates(flat, lab, k) for lab in [labels, *nulls]])
  supports = support_masks(templates.reshape(len(templates), k, *eims.shape[1:]), cfg.percentile)
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
  ), counts


def beyond(effect: dict, min_effect: float) -> bool:
  """Whether an effect size ``{"value", "ci95": [lo, hi]}`` is clearly positive: its
  whole 95% interval lies above ``min_effect`` (and above 0). A tiny but precisely
  measured difference is not called "beyond": the null's and the bootstrap's spreads
  are small, so intervals alone say nothing about size."""
  return bool(effect["ci95"][0] > max(min_effect, 0.0))


def _metric_entries(fit: _SiteFit, reps: dict, parts) -> dict[str, dict]:
  """Per metric: value, CI, null, p, z and the effect over the null (with CI)."""
  r = fit.supports.shape[0]
  maps = fit.all_maps.reshape(r, fit.k, *fit.all_maps.shape[1:])
  stats = partition_statistics(maps, fit.supports, parts)
  out = {}
  for name, values in stats.items():
    sign = -1.0 if DIRECTION[name] == "less" else 1.0
    value, null = float(values[0]), values[1:]
    p, z = metrics.null_test(value, null, DIRECTION[name])
    effect = sign * (reps[name][:, 0] - reps[name][:, 1:].mean(1))
    out[name] = {
      "value": value,
      "ci95": _ci(reps[name][:, 0]),
      "null_mean": float(null.mean()),
      "null_std": float(null.std()),
      "p_value": float(p),
      "z": float(z),
      "effect_vs_null": {"value": sign * (value - float(null.mean())), "ci95": _ci(effect)},
      "_effect_reps": effect,
    }
  return out


def factor_latents(gen: Generator, site_seed: int, n: int):
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
    np.isfinite(out["effect_vs_null"]["ci95"][0]) and beyond(out["effect_vs_null"], min_effect)
  )
  if len(transfers) > 1:
    e = out["effect_vs_untrained"]
    if np.isfinite(e["value"]) and np.isfinite(e["ci95"][0]):
      out["beyond_untrained"] = beyond(e, min_effect)
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
  featnet=None,
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
  reps = paired_bootstrap(
    [f.group_maps for f in fits], counts, [f.supports for f in fits], parts, cfg.n_ci, cfg.seed
  )
  entries = [_metric_entries(f, rp, parts) for f, rp in zip(fits, reps)]
  site_metrics = {
    "channels": int(fit.eims.shape[0]),
    "k": k,
    "stability": list(fit.curve[k]),
    "stability_curve": {str(kk): list(v) for kk, v in fit.curve.items()},
    "module_sizes": np.bincount(labels, minlength=k).tolist(),
    "nmf_vs_kmeans_ari": fit.ari,
  }
  verdict = {}
  for name, entry in entries[0].items():
    beyond_null = beyond(entry["effect_vs_null"], cfg.min_effect)
    entry["beyond_null"] = bool(beyond_null)
    if untrained is not None:
      base = entries[1][name]
      base["beyond_null"] = beyond(base["effect_vs_null"], cfg.min_effect)
      diff = entry["_effect_reps"] - base["_effect_reps"]
      entry["untrained"] = {key: v for key, v in base.items() if not key.startswith("_")}
      entry["effect_vs_untrained"] = {
        "value": entry["effect_vs_null"]["value"] - base["effect_vs_null"]["value"],
        "ci95": _ci(diff),
      }
      sign = -1.0 if DIRECTION[name] == "less" else 1.0
      raw = sign * (reps[0][name][:, 0] - reps[1][name][:, 0])
      entry["raw_difference_to_untrained"] = {
        "value": sign * (entry["value"] - base["value"]),
        "ci95": _ci(raw),
      }
      entry["beyond_untrained"] = beyond(entry["effect_vs_untrained"], cfg.min_effect)
      entry["evidence"] = bool(beyond_null and entry["beyond_untrained"])
    else:
      entry["beyond_untrained"] = None
      entry["evidence"] = None
    del entry["_effect_reps"]
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
  for j in range(k):
    panel = hybrid_panel(
      gen, site, module_masks(labels, k)[j], z_rows, z_cols, cfg.hybrid_rows, cfg.hybrid_cols
    )
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


def savez_deterministic(path: str, **arrays) -> str:
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
    "config": dataclasses.asdict(cfg),
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
    from cfmod_jax import quality  # pylint: disable=g-import-not-at-top

    featnet = quality.load_featnet()
  cache_dir = cache_dir or os.path.join(out_dir, "cache")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  fingerprint = generator_fingerprint(gen)
  result = {
    "generator": gen.name,
    "fingerprint": fingerprint,
    "config": dataclasses.asdict(cfg),
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
    write_report(result, out_dir)
    return result
  finally:
    if lock is not None:
      lock.release()


# ---- report ------------------------------------------------------------------------------
_NAMES = {
  "overlap": "overlap ↓",
  "in_support": "in-support share ↑",
  "part_agreement": "part agreement ↑",
}


def _ci_text(m: dict, signed: bool = False) -> str:
  f = "{:+.3f}" if signed else "{:.3f}"
  return (
    f"{f.format(m['value'])} <small>[{f.format(m['ci95'][0])}, {f.format(m['ci95'][1])}]</small>"
  )


def _yes(flag) -> str:
  if flag is None:
    return "—"
  return '<b class="yes">yes</b>' if flag else '<b class="no">no</b>'


def site_sentence(m: dict, min_effect: float = AnalysisConfig.min_effect) -> str:
  """The verdict of one site in plain words (from ``metrics.json``'s site entry)."""
  v = m["verdict"]
  baseline = v["modules_distinct_beyond_untrained"] is not None
  if not v["modules_distinct_beyond_null"]:
    text = (
      "The modules are not clearly more distinct than random groups of channels "
      "of the same sizes (a gain counts only when its whole 95% interval lies above "
      f"{min_effect:g})"
      + (
        ", so not beyond the untrained network either: no evidence of learned modularity."
        if baseline
        else "."
      )
    )
  elif not baseline:
    text = (
      "The modules are more distinct than random groups of channels, but the "
      "untrained baseline was not run, and an untrained network also beats random "
      "groups: this alone is no evidence of learned modularity."
    )
  elif v["modules_distinct_beyond_untrained"]:
    text = (
      "The modules are more distinct than random groups of channels, by more than "
      "the modules of an untrained network of the same architecture are: evidence "
      "of learned modularity."
    )
  else:
    text = (
      "The modules are more distinct than random groups of channels, but not by "
      "more than the modules of an untrained network of the same architecture: "
      "no evidence of learned modularity."
    )
  if "overlap" in m:
    o = m["overlap"]
    e = o["effect_vs_null"]
    text += (
      f" Overlap gain over random groups: {e['value']:+.3f} (95% CI {e['ci95'][0]:+.3f}"
      f" to {e['ci95'][1]:+.3f})"
    )
    if "untrained" in o:
      text += f" (untrained network: {o['untrained']['effect_vs_null']['value']:+.3f})"
    text += "."
  if "part_agreement" in v:
    p = v["part_agreement"]
    if not p["beyond_null"]:
      text += " Module maps do not clearly follow the face parts beyond chance."
    elif p["evidence"] is None:
      text += " Module maps follow the face parts beyond chance."
    elif p["evidence"]:
      text += (
        " Module maps follow the ground-truth face parts beyond chance and beyond "
        "the untrained network."
      )
    else:
      text += (
        " Module maps follow the face parts beyond chance, but not beyond the untrained network."
      )
  return text


def report_files(result: dict) -> list[str]:
  """Relative paths of every figure the report shows."""
  files = []
  for site, m in result["sites"].items():
    files += [f"{site}/eims.png", f"{site}/templates.png", f"{site}/module_maps.png"]
    if "untrained" in m["overlap"]:
      files.append(f"{site}/untrained_module_maps.png")
    if result["config"]["k"] is None:
      files.append(f"{site}/stability.png")
    files += [f"{site}/hybrids_module{j}.png" for j in range(m["k"])]
    if "factor_transfer" in m:
      files.append(f"{site}/factor_transfer.png")
  return files


def _definitions(parts: bool, baseline: bool, min_effect: float) -> list[tuple[str, str]]:
  """(column header, one or two sentences) for every column of the report's tables."""
  beyond = (
    f"the whole 95% interval lies above {min_effect:g} on the metric's 0–1 scale "
    "(a smaller difference is not called beyond, however precisely measured)"
  )
  d = [
    (
      "site",
      "The layer whose output channels are swapped between two images (the "
      "intervention site of the paper).",
    ),
    ("C", "Number of channels at the site."),
    (
      "K",
      "Number of modules, chosen by the silhouette rule (the smallest K whose mean "
      "cosine silhouette over bootstrap resamples is within 0.05 of the best; "
      "clustering.choose_k) unless given"
      + ("; the untrained network is clustered with the same K." if baseline else "."),
    ),
    (
      "modules distinct beyond random channel groups",
      "Yes when, on both overlap and "
      "in-support share, the gain of the modules over random partitions of the "
      f"channels (same module sizes) is clear: {beyond}.",
    ),
  ]
  if baseline:
    d.append(
      (
        "… beyond an untrained network",
        "Yes when, in addition, on both metrics "
        "the trained model's gain over random partitions exceeds the untrained "
        "network's gain over its own random partitions, with the same rule. Only then "
        "do the numbers say the modules were learned: random convolutions already "
        "have local receptive fields, so an untrained network's channel groups also "
        "beat random ones.",
      )
    )
  if parts:
    d.append(
      (
        "follows the face parts",
        "The same test"
        + ("s" if baseline else "")
        + " for part agreement (agreement with the ground-truth face parts).",
      )
    )
  d += [
    ("in words", "The verdict of the site in one sentence."),
    (
      "metric",
      "Which statistic of the module influence maps the row reports; the "
      "arrow says which direction is more modular:",
    ),
    (
      "overlap ↓",
      "Mean cosine similarity between the influence maps of every two "
      "modules (1: they change the same pixels in the same proportions; 0: disjoint "
      "pixels). Lower means more distinct modules.",
    ),
    (
      "in-support share ↑",
      "Share of each module's influence (the sum of its map) "
      "inside its support, the top pixels of its template (the mean preprocessed EIM of "
      "its channels, thresholded at the clustering percentile); averaged over modules. "
      "Higher means the module acts where its channels' own maps say.",
    ),
  ]
  if parts:
    d.append(
      (
        "part agreement ↑",
        "Share of the modules' influence inside ground-truth "
        "face parts (background, hair, skin, eyes, mouth), modules matched one-to-one "
        "to parts; 1 when every module acts only inside a part of its own.",
      )
    )
  d += [
    (
      "trained [95% CI]",
      "The metric of the K modules, measured on fresh latent pairs "
      "that the clustering did not see; the interval is a percentile bootstrap over "
      "groups of pairs.",
    ),
    (
      "random-partition null",
      "Mean ± standard deviation of the metric over random "
      "channel partitions with the same module sizes, on the same pairs, and the "
      "z-score of the trained value. The null's spread is tiny, so |z| is large even for "
      "negligible differences: read the effect sizes (Δ) for how large a difference is.",
    ),
    (
      "Δ vs null [95% CI]",
      "Effect size: how much more modular than random partitions "
      "(null mean − value for overlap, value − null mean otherwise; positive = more "
      "modular); the bootstrap recomputes the null on every resample.",
    ),
  ]
  if baseline:
    d += [
      (
        "untrained [95% CI] (null)",
        "The same metric for the same architecture with "
        "random weights, on the same pairs, with the same K; in brackets its own "
        "random-partition null. All metrics are scale-free (an untrained network's "
        "influence maps are orders of magnitude smaller).",
      ),
      (
        "Δ vs untrained [95% CI]",
        "Effect size: the trained model's Δ vs null minus the "
        "untrained network's Δ vs null (positive: the trained modules beat random "
        "partitions by more). Paired bootstrap: every resample draws the same groups of "
        "pairs for both networks.",
      ),
      ("evidence", f"Yes when both Δ vs null and Δ vs untrained are clear: {beyond}."),
    ]
  else:
    d.append(("beyond null", f"Yes when Δ vs null is clear: {beyond}."))
  d += [
    ("module sizes (channels)", "Channels in each module, module 0 first."),
    (
      "stability (trained / untrained)" if baseline else "stability",
      "Mean ± s.d. of the matched cosine similarity of module templates between "
      "bootstrap resamples of the pairs and NMF restarts, at K (1: the same templates "
      "every time). It says the clustering is reproducible, not that the modules mean "
      "anything"
      + (
        ": compare with the untrained network's value (beyond untrained: "
        "the mean ± s.d. bands do not overlap)."
        if baseline
        else "."
      ),
    ),
    (
      "NMF vs k-means ARI (trained / untrained)" if baseline else "NMF vs k-means ARI",
      "Adjusted Rand index between the NMF modules and k-means clusters of the same EIMs "
      "(1: identical partitions; 0: chance agreement).",
    ),
    (
      "seconds",
      "Wall time of the site: EIMs, clustering, evaluation, bootstrap and "
      "figures" + (", for both networks." if baseline else "."),
    ),
  ]
  return d


FACTOR_DEFINITION = (
  "Factor transfer: for a module, the hybrid takes the module's channels from a donor "
  "image z2; the feature network reads every ground-truth factor of the synthetic faces "
  "off G(z1), G(z2) and the hybrid, and the hybrid follows the donor on a factor when "
  "its predicted class equals the donor's (categorical factors) or its prediction is "
  "closer to the donor's than to the original's (continuous factors); pairs where G(z1) "
  "and G(z2) agree are left out. Exclusivity is the mean over factors of (best module's "
  "share − the other modules' mean share) / the whole-site swap's share: 1 when each "
  "factor moves with one module only, 0 when factors are spread evenly."
)


def factor_section_html(result: dict) -> str:
  """The report's factor-transfer and hybrid-realism tables ('' without them)."""
  sites = {s: m["factor_transfer"] for s, m in result["sites"].items() if "factor_transfer" in m}
  if not sites:
    return ""
  esc = html.escape
  f3 = lambda v, signed=False: (
    "—" if v is None or not np.isfinite(v) else (f"{v:+.3f}" if signed else f"{v:.3f}")
  )
  ci = lambda v, lohi, signed=False: (
    f"{f3(v, signed)} <small>[{f3(lohi[0], signed)}, {f3(lohi[1], signed)}]</small>"
  )
  base = any("untrained" in ft for ft in sites.values())
  head = ["site", "factors", "exclusivity [95% CI]", "null mean ± s.d.", "Δ vs null [95% CI]"]
  head += (
    [
      "untrained exclusivity (null)",
      "untrained Δ vs null [95% CI]",
      "Δ vs untrained [95% CI]",
      "evidence",
    ]
    if base
    else ["beyond null"]
  )
  rows = []
  for site, ft in sites.items():
    for label, s in (("all", ft), ("categorical", ft["categorical"])):
      cells = [
        esc(site),
        f"{label} ({len(s['factors'])})",
        ci(s["exclusivity"], s["exclusivity_ci"]),
        f"{f3(s['exclusivity_null_mean'])} ± {f3(s['exclusivity_null_sd'])}",
        ci(s["effect_vs_null"]["value"], s["effect_vs_null"]["ci95"], True),
      ]
      if "untrained" in ft:
        u = ft["untrained"] if label == "all" else ft["untrained"]["categorical"]
        cells += [
          f"{f3(u['exclusivity'])} <small>({f3(u['exclusivity_null_mean'])})</small>",
          ci(s["untrained_effect_vs_null"]["value"], s["untrained_effect_vs_null"]["ci95"], True),
          ci(s["effect_vs_untrained"]["value"], s["effect_vs_untrained"]["ci95"], True),
          _yes(s["evidence"]),
        ]
      elif base:
        cells += ["—"] * 4
      else:
        cells.append(_yes(s["beyond_null"]))
      rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
  th = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr>"
  ft0 = next(iter(sites.values()))
  text = (
    f"<h2>Factor transfer</h2><p>{esc(FACTOR_DEFINITION)} Measured on "
    f"{ft0['pairs']} latent pairs in {ft0['groups']} groups (95% percentile bootstrap "
    f"over groups); the null is {ft0['n_null']} random channel partitions with the "
    "module sizes; Δ is the exclusivity minus the null's mean (the interval "
    "resamples pairs, not partitions: with few partitions compare Δ with the null's "
    "s.d. too)"
    + (
      "; Δ vs untrained subtracts the untrained network's Δ (its own modules, same "
      "pairs; paired bootstrap)"
      if base
      else ""
    )
    + ". Categorical factors only: "
    "their 'follows' is not diluted by the prediction noise of continuous "
    f"ones.</p><table>{th}{''.join(rows)}</table>"
  )
  hr = {s: ft["hybrid_realism"] for s, ft in sites.items() if "hybrid_realism" in ft}
  if hr:
    kmax = max(len(h["fd"]) for h in hr.values())
    hhead = (
      ["site", "n"]
      + [f"module {j}" for j in range(kmax)]
      + ["whole site (= G(z2))", "plain samples G(z1)", "real vs real floor"]
    )
    hrows = []
    for site, h in hr.items():
      fds = [f"{v:.1f}" for v in h["fd"]] + [""] * (kmax - len(h["fd"]))
      cells = [
        esc(site),
        h["n"],
        *fds,
        f"{h['whole_site_fd']:.1f}",
        f"{h['plain_fd']:.1f}",
        f"{h['floor']:.1f}",
      ]
      hrows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    text += (
      "<h2>Hybrid realism</h2><p>Fréchet distance (feature-network features) of "
      "each module's hybrids to held-out real faces, beside the plain samples of "
      "the same latents and two disjoint real sets (the floor), all at n images "
      "(FD is biased upwards at small n: compare within a row). Hybrids of a "
      "module that acts alone stay about as realistic as plain samples.</p><table>"
      + "<tr>"
      + "".join(f"<th>{esc(c)}</th>" for c in hhead)
      + "</tr>"
      + "".join(hrows)
      + "</table>"
    )
  return text


def write_report(result: dict, out_dir: str) -> str:
  """One HTML page: verdicts, metrics with effect sizes, definitions, figures."""
  parts = "best_site" in result
  baseline = "untrained_baseline" in result
  names = [n for n in METRICS if n != "part_agreement" or parts]
  td = lambda cells: "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
  min_eff = result["config"].get("min_effect", 0.0)
  defs = _definitions(parts, baseline, min_eff)
  tips = dict(defs)
  th = lambda cells: (
    "<tr>"
    + "".join(f'<th title="{html.escape(tips.get(c, ""))}">{html.escape(c)}</th>' for c in cells)
    + "</tr>"
  )
  # Verdicts.
  vrows = []
  for site, m in result["sites"].items():
    v = m["verdict"]
    cells = [
      site,
      m["k"],
      _yes(v["modules_distinct_beyond_null"]),
      _yes(v["modules_distinct_beyond_untrained"]),
    ]
    if parts:
      cells.append(
        _yes(v["part_agreement"]["evidence"] if baseline else v["part_agreement"]["beyond_null"])
      )
    vrows.append(td(cells + [html.escape(site_sentence(m, min_eff))]))
  vhead = (
    ["site", "K", "modules distinct beyond random channel groups", "… beyond an untrained network"]
    + (["follows the face parts"] if parts else [])
    + ["in words"]
  )
  # Metrics with effect sizes.
  mrows = []
  for site, m in result["sites"].items():
    for name in names:
      e = m[name]
      cells = [
        site,
        _NAMES[name],
        _ci_text(e),
        f"{e['null_mean']:.3f} ± {e['null_std']:.3f} <small>(z = {e['z']:+.1f})</small>",
        _ci_text(e["effect_vs_null"], signed=True),
      ]
      if baseline:
        u = e["untrained"]
        cells += [
          f"{_ci_text(u)} <small>({u['null_mean']:.3f})</small>",
          _ci_text(e["effect_vs_untrained"], signed=True),
          _yes(e["evidence"]),
        ]
      else:
        cells += [_yes(e["beyond_null"])]
      mrows.append(td(cells))
  mhead = ["site", "metric", "trained [95% CI]", "random-partition null", "Δ vs null [95% CI]"]
  mhead += (
    ["untrained [95% CI] (null)", "Δ vs untrained [95% CI]", "evidence"]
    if baseline
    else ["beyond null"]
  )
  # Clustering.
  crows = []
  for site, m in result["sites"].items():
    stab = f"{m['stability'][0]:.3f} ± {m['stability'][1]:.3f}"
    ari = f"{m['nmf_vs_kmeans_ari']:.2f}"
    if baseline:
      stab += (
        f" / {m['stability_untrained'][0]:.3f} ± {m['stability_untrained'][1]:.3f}"
        f" <small>(beyond untrained: "
        f"{'yes' if m['verdict']['stability']['beyond_untrained'] else 'no'})</small>"
      )
      ari += f" / {m['untrained_nmf_vs_kmeans_ari']:.2f}"
    crows.append(
      td(
        [
          site,
          m["channels"],
          m["k"],
          ", ".join(map(str, m["module_sizes"])),
          stab,
          ari,
          f"{m['seconds']['total']:.1f}",
        ]
      )
    )
  chead = [
    "site",
    "C",
    "K",
    "module sizes (channels)",
    "stability (trained / untrained)" if baseline else "stability",
    "NMF vs k-means ARI" + (" (trained / untrained)" if baseline else ""),
    "seconds",
  ]
  dl = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in defs)
  # Figures.
  img = lambda p, cap: (
    f'<figure><img src="{html.escape(p)}" alt="{html.escape(cap)}">'
    f"<figcaption>{html.escape(cap)}</figcaption></figure>"
  )
  method = result["config"]["method"]
  templates_cap = (
    "k-means centroids of the preprocessed EIMs (one per module; k-means, not NMF)"
    if method == "kmeans"
    else "NMF templates: the K rows of H, the typical preprocessed EIM of each module"
  )
  sections = []
  for site, m in result["sites"].items():
    figs = [
      img(
        f"{site}/module_maps.png",
        "Module influence maps on fresh pairs: mean |change of each pixel| when "
        "the module's channels are taken from the donor; one colour scale.",
      ),
      img(f"{site}/templates.png", templates_cap + "; each scaled to its maximum."),
    ]
    if "untrained" in m["overlap"]:
      figs.append(
        img(
          f"{site}/untrained_module_maps.png",
          "The untrained network's module maps (same K, same pairs), each "
          "scaled to its own maximum: its images barely change, so only "
          "shapes compare.",
        )
      )
    if result["config"]["k"] is None:
      figs.append(
        img(
          f"{site}/stability.png",
          "Template stability against K (mean ± s.d.); the dashed line is the K used.",
        )
      )
    figs.append(
      img(
        f"{site}/eims.png",
        "Elementary influence maps of every channel, ordered by module; the "
        "coloured strip under each tile is its module (legend), each tile "
        "scaled to its own maximum.",
      )
    )
    figs += [
      img(
        f"{site}/hybrids_module{j}.png",
        f"Hybrids of module {j} ({m['module_sizes'][j]} channels): originals z1 "
        "down the left, donors z2 across the top; each cell is z1 with module "
        f"{j}'s channels taken from the donor.",
      )
      for j in range(m["k"])
    ]
    if "factor_transfer" in m:
      figs.insert(
        1,
        img(
          f"{site}/factor_transfer.png",
          "Factor transfer: per module (and the whole-site swap), the share "
          "of pairs whose hybrid takes the donor's value of each factor, read "
          "by the feature network; grey: no pair where the two images differ "
          "on the factor.",
        ),
      )
    sections.append(
      f"<h3>{html.escape(site)}: {html.escape(site_sentence(m, min_eff))}</h3>" + "".join(figs)
    )
  best = (
    f"<p>Best site by ground-truth part agreement over chance: <b>{result['best_site']}</b>.</p>"
    if parts
    else ""
  )
  cfg = result["config"]
  base_text = (
    f"The untrained baseline is {html.escape(result['untrained_baseline']['generator'])}: "
    "the same architecture with freshly initialised weights, analysed with the same "
    "latent pairs, the same K and the same settings."
    if baseline
    else "<b>The untrained baseline was not run</b> (untrained_baseline=False): verdicts rest "
    "on the random-partition null only, which an untrained network also passes."
  )
  page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>cfmod_jax report: {html.escape(result['generator'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}th{{background:#f3f3f3}}
.yes{{color:#1a7f37}}.no{{color:#b42318}}dt{{font-weight:bold;margin-top:.4em}}
figure{{display:inline-block;margin:8px;vertical-align:top;max-width:660px}}
img{{max-width:640px}}figcaption{{font-size:90%}}
</style></head><body>
<h1>Modularity of {html.escape(result['generator'])}</h1>
<p>Modules are groups of channels at a site found by clustering their elementary influence
maps (EIMs: which pixels change when one channel is taken from another image), over
{cfg['n_pairs']} latent pairs. Metrics are measured on {cfg['eval_pairs']} fresh pairs in
{cfg['eval_groups']} groups; intervals are percentile bootstrap 95% over these groups
({cfg['n_ci']} resamples); the null is {cfg['n_null']} random channel partitions with the
same module sizes. {base_text} Ran in {result['seconds']:.0f} s on {result['devices']}
{html.escape(result['platform'])} device(s).</p>{best}
<h2>Verdict per site</h2>
<table>{th(vhead)}{''.join(vrows)}</table>
<h2>Metrics and effect sizes</h2>
<table>{th(mhead)}{''.join(mrows)}</table>
<h2>Clustering</h2>
<table>{th(chead)}{''.join(crows)}</table>
{factor_section_html(result)}
<h2>What the columns mean</h2><dl>{dl}</dl>
<h2>Figures</h2>
{''.join(sections)}
<p><small>Arrays: &lt;site&gt;/analysis.npz; numbers and verdicts: metrics.json.</small></p>
</body></html>"""
  return fileio.atomic_write_text(os.path.join(out_dir, "report.html"), page)
