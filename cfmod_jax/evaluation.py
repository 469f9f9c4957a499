"""The main job's evaluation of one site (steps 1–5 of `cfmod_jax.analysis`).

`fit_site`: the modules of one network (`modules.find_modules`) and, on fresh
evaluation pairs, the influence maps of the modules and of random partitions of the
same sizes (one batched call). `metric_entries`: from the module maps and null maps
of the trained network (and of the untrained baseline, on the same pairs), each
metric's value, confidence interval and effect over the random-partition null
(`resampling.effect_vs_null`), the untrained network's, the difference between the two,
and the verdicts ``beyond_null``, ``beyond_untrained`` and ``evidence``. All
statistics are `cfmod_jax.metrics`; this module only arranges them into the
``metrics.json`` entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from absl import logging
from sklearn.metrics import adjusted_rand_score

from cfmod_jax import clustering, metrics, resampling
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import influence_map_sums, masks_from_labels
from cfmod_jax.modules import find_modules
from cfmod_jax.sweep import SweepResult

__all__ = ["SiteFit", "fit_site", "metric_entries", "sweep_entry"]


@dataclasses.dataclass
class SiteFit:
  """Modules of one network at one site (`find_modules`), and their maps on the
  evaluation pairs."""

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


def fit_site(
  gen: Generator,
  site: str,
  cfg,
  cache_dir: str,
  fingerprint: str,
  site_seed: int,
  z1,
  z2,
  groups_eval: np.ndarray,
  k: int | None,
) -> tuple[SiteFit, np.ndarray]:
  """Steps 1–4 for one network (``cfg``: the `analysis.AnalysisConfig`, trusted);
  ``k=None`` chooses K. Returns the fit and the pairs per evaluation group."""
  # 1–3. EIMs (resumable), K, modules.
  mods = find_modules(
    gen,
    site,
    n_pairs=cfg.n_pairs,
    block_pairs=cfg.block_pairs,
    k="auto" if k is None else k,
    k_values=cfg.k_values,
    method=cfg.method,
    n_boot=cfg.n_boot,
    seed=cfg.seed,
    pair_seed=site_seed,
    sigma=cfg.sigma,
    percentile=cfg.percentile,
    pair_chunk=cfg.pair_chunk,
    mask_chunk=cfg.mask_chunk,
    precision=cfg.precision,
    target_reliability=cfg.eim_target_reliability,
    cache_dir=cache_dir,
    fingerprint=fingerprint,
  )
  eims, k, labels = mods.eims, mods.k, mods.labels
  logging.info("%s site %s: K=%d (stability %.3f)", gen.name, site, k, mods.curve[k][0])
  common = dict(sigma=cfg.sigma, percentile=cfg.percentile)
  other = clustering.cluster_channels(
    eims, k, "kmeans" if cfg.method == "nmf" else "nmf", seed=cfg.seed, **common
  )
  # 4. Module maps and null maps on the evaluation pairs, one batched call.
  nulls = resampling.null_partitions(labels, cfg.n_null, cfg.seed + 1)
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
  return SiteFit(
    eims,
    mods.eim_groups,
    k,
    mods.curve,
    mods.clustering,
    labels,
    float(adjusted_rand_score(labels, other.labels)),
    supports,
    group_maps,
    all_maps,
    mods.seconds_eims,
    mods.sweep,
  ), counts


def sweep_entry(sweep: SweepResult, seconds: float, max_pairs: int) -> dict:
  """What ``metrics.json`` records of an adaptive EIM sweep (`sweep.SweepResult`)."""
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


def _entries(fit: SiteFit, reps: dict, parts: np.ndarray | None) -> tuple[dict, dict]:
  """Per metric: value, CI, null, p, z and the effect over the null (with CI)
  (`resampling.effect_vs_null`); and per metric the effect's bootstrap replicates."""
  r = fit.supports.shape[0]
  maps = fit.all_maps.reshape(r, fit.k, *fit.all_maps.shape[1:])
  stats = metrics.partition_statistics(maps, fit.supports, parts)
  out, effects = {}, {}
  for name, values in stats.items():
    out[name], effects[name] = resampling.effect_vs_null(
      values, reps[name], metrics.DIRECTION[name]
    )
  return out, effects


def metric_entries(
  fits: Sequence[SiteFit],
  counts: np.ndarray,
  parts: np.ndarray | None,
  n_ci: int,
  seed: int,
  min_effect: float,
) -> tuple[dict, dict]:
  """``(entries, verdict)`` of one site.

  ``fits``: the trained network's `SiteFit`, then optionally the untrained
  network's (same pairs, same K). ``entries``: per metric its ``metrics.json`` entry
  (then, with the untrained network, its stability, module sizes and ARI);
  ``verdict``: per metric ``beyond_null``, ``beyond_untrained`` and ``evidence``,
  and whether the modules are distinct beyond the null and beyond the untrained
  network. One paired bootstrap (``n_ci`` resamples from ``seed``) for both networks.
  """
  fit, k = fits[0], fits[0].k
  untrained = len(fits) > 1
  reps = metrics.paired_bootstrap(
    [f.group_maps for f in fits], counts, [f.supports for f in fits], parts, n_ci, seed
  )
  entries, effects = zip(*[_entries(f, rp, parts) for f, rp in zip(fits, reps)])
  out, verdict = {}, {}
  for name, entry in entries[0].items():
    beyond_null = resampling.beyond(entry["effect_vs_null"], min_effect)
    entry["beyond_null"] = bool(beyond_null)
    if untrained:
      base = entries[1][name]
      base["beyond_null"] = resampling.beyond(base["effect_vs_null"], min_effect)
      diff = effects[0][name] - effects[1][name]
      entry["untrained"] = dict(base)
      entry["effect_vs_untrained"] = {
        "value": entry["effect_vs_null"]["value"] - base["effect_vs_null"]["value"],
        "ci95": resampling.percentile_ci(diff),
      }
      sign = -1.0 if metrics.DIRECTION[name] == "less" else 1.0
      raw = sign * (reps[0][name][:, 0] - reps[1][name][:, 0])
      entry["raw_difference_to_untrained"] = {
        "value": sign * (entry["value"] - base["value"]),
        "ci95": resampling.percentile_ci(raw),
      }
      entry["beyond_untrained"] = resampling.beyond(entry["effect_vs_untrained"], min_effect)
      entry["evidence"] = bool(beyond_null and entry["beyond_untrained"])
    else:
      entry["beyond_untrained"] = None
      entry["evidence"] = None
    out[name] = entry
    verdict[name] = {key: entry[key] for key in ("beyond_null", "beyond_untrained", "evidence")}
  distinct = ("overlap", "in_support")
  verdict["modules_distinct_beyond_null"] = all(verdict[n]["beyond_null"] for n in distinct)
  if untrained:
    u = fits[1]
    out["stability_untrained"] = list(u.curve[k])
    out["untrained_module_sizes"] = np.bincount(u.labels, minlength=k).tolist()
    out["untrained_nmf_vs_kmeans_ari"] = u.ari
    (mt, st), (mu, su) = fit.curve[k], u.curve[k]
    verdict["stability"] = {"beyond_untrained": bool(mt - st > mu + su and mt - mu >= min_effect)}
    verdict["modules_distinct_beyond_untrained"] = all(verdict[n]["evidence"] for n in distinct)
  else:
    verdict["modules_distinct_beyond_untrained"] = None
  return out, verdict
