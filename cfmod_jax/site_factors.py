"""The main job's factor transfer for one site (`cfmod_jax.analysis`, generators
trained on the synthetic faces): which factors each module's hybrids take from the
donor (`lab.factors.factor_transfer`), its exclusivity over random partitions and
over the untrained network, and the realism of the hybrids (`lab.realism.hybrid_realism`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cfmod_jax import resampling
from cfmod_jax.generator import Generator
from cfmod_jax.lab import factors, realism

__all__ = ["factor_effects", "factor_latents", "factor_section"]


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
    and resampling.beyond(out["effect_vs_null"], min_effect)
  )
  if len(transfers) > 1:
    e = out["effect_vs_untrained"]
    if np.isfinite(e["value"]) and np.isfinite(e["ci95"][0]):
      out["beyond_untrained"] = resampling.beyond(e, min_effect)
      out["evidence"] = out["beyond_null"] and out["beyond_untrained"]
    else:  # e.g. the untrained network's images never differ on these factors
      out["beyond_untrained"] = out["evidence"] = None
  return out


def factor_section(
  gen: Generator,
  site: str,
  cfg,
  fits: Sequence[Any],
  untrained: tuple[Generator, str] | None,
  featnet,
  site_seed: int,
  groups: np.ndarray,
) -> tuple[dict, dict]:
  """Factor transfer of the modules (and the untrained network's, same pairs), with
  summaries, effects and, if ``cfg.hybrid_fd_samples``, hybrid realism.

  ``cfg``: the `analysis.AnalysisConfig`; ``fits``: the `analysis.SiteFit` of each
  network (trained first). Returns the ``factor_transfer`` entry of ``metrics.json``
  and the arrays for ``analysis.npz``."""
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
    hr = realism.hybrid_realism(
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
