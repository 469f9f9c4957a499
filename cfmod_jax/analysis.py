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
6. **Figures** (PNG) and ``report.html``; arrays in ``<site>/analysis.npz``;
   numbers in ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging
from sklearn.metrics import adjusted_rand_score

from cfmod_jax import clustering, metrics, viz
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import hybrids, influence_map_sums
from cfmod_jax.sweep import SweepConfig, broadcast_from_host0, eim_sweep, generator_fingerprint


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """Settings of the main job (defaults documented in the README)."""
  sites: Sequence[str] | None = None   # None: every site
  n_pairs: int = 128                   # pairs for the EIMs
  block_pairs: int = 16                # pairs per resumable block (= bootstrap group)
  k: int | None = None                 # modules; None: chosen by stability
  k_values: Sequence[int] = (2, 3, 4, 5, 6)
  n_boot: int = 8                      # bootstrap resamples for the stability curve
  method: str = "nmf"                  # 'nmf' (paper) or 'kmeans'
  sigma: float | None = None           # EIM smoothing (None: image size / 32)
  percentile: float = 80.0             # per-map threshold
  eval_pairs: int = 64                 # fresh pairs for module maps and metrics
  eval_groups: int = 8
  n_null: int = 24                     # random partitions for the null
  n_ci: int = 500                      # bootstrap resamples for confidence intervals
  hybrid_rows: int = 4
  hybrid_cols: int = 5
  parts: str = "auto"                  # 'synthfaces', 'none', or 'auto' (by generator name)
  seed: int = 0
  pair_chunk: int = 32
  mask_chunk: int = 16


def check_config(gen: Generator, cfg: AnalysisConfig) -> list[str]:
  """Validates everything before any expensive work; returns the sites to run."""
  sites = list(cfg.sites) if cfg.sites else list(gen.sites)
  for s in sites:
    gen.site_index(s)
  for name in ("n_pairs", "block_pairs", "n_boot", "eval_pairs", "eval_groups", "n_null",
               "n_ci", "hybrid_rows", "hybrid_cols", "pair_chunk", "mask_chunk"):
    v = getattr(cfg, name)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  if cfg.n_pairs < 2 * cfg.block_pairs:
    raise ValueError(f"n_pairs={cfg.n_pairs} must be at least 2 × block_pairs="
                     f"{cfg.block_pairs} (two groups are needed for the bootstrap)")
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
    raise ValueError(f"k={cfg.k} is larger than the number of channels C={channels} of a "
                     f"requested site")
  if cfg.k is None and min(ks) > channels:
    raise ValueError(f"k_values={tuple(ks)}: none fits the C={channels} channels of a "
                     f"requested site")
  if cfg.method not in ("nmf", "kmeans"):
    raise ValueError(f"method must be 'nmf' or 'kmeans', got {cfg.method!r}")
  if cfg.parts not in ("auto", "synthfaces", "none"):
    raise ValueError(f"parts must be 'auto', 'synthfaces' or 'none', got {cfg.parts!r}")
  if not 0 <= cfg.percentile < 100:
    raise ValueError(f"percentile must be in [0, 100), got {cfg.percentile}")
  return sites


def generator_from_spec(spec: str) -> Generator:
  """``random:<arch>[:<width>]`` (random initialisation) or a shipped name / path."""
  if spec.startswith("random:"):
    from cfmod_jax.models import init_generator  # pylint: disable=g-import-not-at-top
    _, arch, *rest = spec.split(":")
    if len(rest) > 1 or (rest and not rest[0].isdigit()):
      raise ValueError(f"generator must be random:<arch>[:<width>], got {spec!r}")
    return init_generator(arch, **({"width": int(rest[0])} if rest else {}))
  from cfmod_jax.checkpoints import load_generator  # pylint: disable=g-import-not-at-top
  return load_generator(spec)


def part_maps_for(gen: Generator, cfg: AnalysisConfig) -> np.ndarray | None:
  """Ground-truth part probability maps [P, H, W], or None."""
  use = cfg.parts == "synthfaces" or (cfg.parts == "auto" and "synthfaces" in gen.name)
  if not use:
    return None
  from cfmod_jax.data import synthfaces  # pylint: disable=g-import-not-at-top
  return synthfaces.part_prior()


# ---- per-site pieces ------------------------------------------------------------------
def module_masks(labels: np.ndarray, k: int) -> np.ndarray:
  """[K, C] float32 one-hot channel masks of a partition."""
  return (labels[None, :] == np.arange(k)[:, None]).astype(np.float32)


def null_partitions(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """[n, C] random relabellings keeping the module sizes."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(labels) for _ in range(n)])


def partition_templates(flat_maps: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Mean preprocessed EIM of each module's channels: [K, H·W] (a module's support)."""
  return np.stack([flat_maps[labels == j].mean(0) if np.any(labels == j)
                   else np.zeros(flat_maps.shape[1]) for j in range(k)])


def _statistics(maps: np.ndarray, supports: np.ndarray, parts: np.ndarray | None) -> dict:
  """Scalar statistics of one partition's module maps [K, H, W]."""
  out = {"overlap": metrics.module_overlap(maps),
         "in_support": metrics.in_support_share(maps, supports)[1]}
  if parts is not None:
    out["part_agreement"] = metrics.part_agreement(maps, parts)
  return out


def _bootstrap(group_maps: np.ndarray, counts: np.ndarray, stat, n: int, seed: int):
  """Percentile 95% interval of stat(maps) over resamples of groups of pairs."""
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n):
    idx = rng.integers(0, len(counts), len(counts))
    w = counts[idx].astype(np.float64)
    values.append(stat(np.tensordot(w / w.sum(), group_maps[idx], axes=1)))
  return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


def hybrid_panel(gen: Generator, site: str, mask: np.ndarray, z1, z2, rows: int,
                 cols: int) -> np.ndarray:
  """The paper's figure for one module: originals z1 down the left, donors z2
  across the top, the hybrid in each cell. Returns an RGB image in [0, 1]."""
  z1r = np.repeat(np.asarray(z1[:rows]), cols, axis=0)
  z2t = np.tile(np.asarray(z2[:cols]), (rows,) + (1,) * (z2.ndim - 1))
  cells = np.asarray(hybrids(gen, site, mask, z1r, z2t))  # [rows·cols, H, W, 3]
  h, w = cells.shape[1:3]
  blank = np.ones((1, h, w, 3), np.float32)
  top = np.concatenate([blank, viz.to_unit(gen(z2[:cols]))])
  originals = viz.to_unit(gen(z1[:rows]))
  body = [np.concatenate([originals[r:r + 1], viz.to_unit(cells[r * cols:(r + 1) * cols])])
          for r in range(rows)]
  return viz.tile(np.concatenate([top, *body]), cols + 1, pad=3)


def analyze_site(gen: Generator, site: str, cfg: AnalysisConfig, out_dir: str,
                 cache_dir: str, fingerprint: str, parts: np.ndarray | None,
                 site_seed: int) -> dict:
  t0 = time.perf_counter()
  host0 = jax.process_index() == 0  # with several processes only process 0 writes
  sdir = os.path.join(out_dir, site)
  if host0:
    os.makedirs(sdir, exist_ok=True)
  # 1. EIMs (resumable).
  sweep = eim_sweep(gen, site, SweepConfig(
      n_pairs=cfg.n_pairs, block_pairs=cfg.block_pairs, seed=site_seed,
      pair_chunk=cfg.pair_chunk, mask_chunk=cfg.mask_chunk), cache_dir,
      fingerprint=fingerprint)
  eims, groups = sweep.eims, sweep.eim_groups
  c = eims.shape[0]
  t_eims = time.perf_counter() - t0
  # 2. K.
  common = dict(sigma=cfg.sigma, percentile=cfg.percentile)
  ks = [k for k in cfg.k_values if k <= c]
  if cfg.k is None:
    k, curve = clustering.choose_k(groups, ks, n_boot=cfg.n_boot, seed=cfg.seed,
                                   method=cfg.method, **common)
    if host0:
      clustering.plot_stability_curve(curve, os.path.join(sdir, "stability.png"), k_best=k,
                                      title=f"{gen.name} {site}")
  else:
    k = cfg.k
    curve = clustering.stability_curve(groups, [k], n_boot=cfg.n_boot, seed=cfg.seed,
                                       method=cfg.method, **common)
  logging.info("site %s: K=%d (stability %.3f)", site, k, curve[k][0])
  # 3. Modules.
  clus = clustering.cluster_channels(eims, k, cfg.method, seed=cfg.seed, **common)
  other = clustering.cluster_channels(eims, k, "kmeans" if cfg.method == "nmf" else "nmf",
                                      seed=cfg.seed, **common)
  labels = broadcast_from_host0(clus.labels)  # identical masks on every process
  # 4. Module maps and null maps on fresh pairs, one batched call.
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 20))
  z1, z2 = gen.sample_latents(k1, cfg.eval_pairs), gen.sample_latents(k2, cfg.eval_pairs)
  nulls = null_partitions(labels, cfg.n_null, cfg.seed + 1)
  masks = np.concatenate([module_masks(labels, k)] + [module_masks(p, k) for p in nulls])
  groups_eval = (np.arange(cfg.eval_pairs) * cfg.eval_groups) // cfg.eval_pairs
  sums, counts = influence_map_sums(gen, site, masks, z1, z2, groups=groups_eval,
                                    pair_chunk=cfg.pair_chunk, mask_chunk=cfg.mask_chunk)
  group_maps = np.asarray(sums) / (3.0 * counts[:, None, None, None])  # [G, M, H, W]
  all_maps = np.asarray(sums).sum(0) / (3.0 * counts.sum())             # [M, H, W]
  module_maps = all_maps[:k]
  # 5. Metrics.
  flat = clustering.preprocess_eims(eims, **common)
  hw = eims.shape[1:]
  supports = lambda lab: partition_templates(flat, lab, k).reshape(k, *hw)
  observed = _statistics(module_maps, supports(labels), parts)
  null_stats = [_statistics(all_maps[(i + 1) * k:(i + 2) * k], supports(p), parts)
                for i, p in enumerate(nulls)]
  site_metrics = {"channels": c, "k": int(k), "stability": list(curve[k]),
                  "stability_curve": {str(kk): list(v) for kk, v in curve.items()},
                  "module_sizes": np.bincount(labels, minlength=k).tolist(),
                  "nmf_vs_kmeans_ari": float(adjusted_rand_score(labels, other.labels))}
  direction = {"overlap": "less", "in_support": "greater", "part_agreement": "greater"}
  sup = supports(labels)
  for name, value in observed.items():
    null = np.array([s[name] for s in null_stats])
    p, z = metrics.null_test(value, null, direction[name])
    stat = lambda m, name=name: _statistics(m, sup, parts)[name]
    lo, hi = _bootstrap(group_maps[:, :k], counts, stat, cfg.n_ci, cfg.seed)
    site_metrics[name] = {"value": float(value), "ci95": [lo, hi],
                          "null_mean": float(null.mean()), "null_std": float(null.std()),
                          "p_value": float(p), "z": float(z)}
  site_metrics["seconds"] = {"eims": t_eims, "total": time.perf_counter() - t0}
  if not host0:
    return site_metrics
  # 6. Figures and arrays.
  viz.save_map_grid(os.path.join(sdir, "eims.png"), eims, labels=labels)
  viz.save_map_grid(os.path.join(sdir, "templates.png"), clus.templates, ncols=k)
  viz.save_map_grid(os.path.join(sdir, "module_maps.png"), module_maps, ncols=k,
                    normalize="global")
  ka, kb = jax.random.split(jax.random.fold_in(jax.random.key(site_seed), 1 << 21))
  z_rows = gen.sample_latents(ka, cfg.hybrid_rows)
  z_cols = gen.sample_latents(kb, cfg.hybrid_cols)
  for j in range(k):
    panel = hybrid_panel(gen, site, module_masks(labels, k)[j], z_rows, z_cols,
                         cfg.hybrid_rows, cfg.hybrid_cols)
    viz.save_rgb(os.path.join(sdir, f"hybrids_module{j}.png"), panel)
  np.savez_compressed(os.path.join(sdir, "analysis.npz"), eims=eims, eim_groups=groups,
                      labels=labels, templates=clus.templates, weights=clus.weights,
                      module_maps=module_maps, null_maps=all_maps[k:])
  site_metrics["seconds"]["total"] = time.perf_counter() - t0
  return site_metrics


# ---- the job -----------------------------------------------------------------------------
def run(gen: Generator, cfg: AnalysisConfig, out_dir: str, cache_dir: str | None = None) -> dict:
  """Runs the analysis of every requested site; writes files under ``out_dir``."""
  sites = check_config(gen, cfg)
  parts = part_maps_for(gen, cfg)
  cache_dir = cache_dir or os.path.join(out_dir, "cache")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  fingerprint = generator_fingerprint(gen)
  result = {"generator": gen.name, "fingerprint": fingerprint,
            "config": dataclasses.asdict(cfg), "devices": jax.device_count(),
            "platform": jax.default_backend(), "sites": {}}
  t0 = time.perf_counter()
  for i, site in enumerate(sites):
    result["sites"][site] = analyze_site(gen, site, cfg, out_dir, cache_dir, fingerprint,
                                         parts, cfg.seed * 1000 + gen.site_index(site))
    elapsed = time.perf_counter() - t0
    logging.info("site %s done (%d/%d) in %.1f s; ETA %.0f s", site, i + 1, len(sites),
                 result["sites"][site]["seconds"]["total"],
                 elapsed / (i + 1) * (len(sites) - i - 1))
  if parts is not None:
    gain = {s: m["part_agreement"]["value"] - m["part_agreement"]["null_mean"]
            for s, m in result["sites"].items()}
    result["best_site"] = max(gain, key=gain.get)
  result["seconds"] = time.perf_counter() - t0
  if jax.process_index() != 0:
    return result
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  write_report(result, out_dir)
  return result


# ---- report ------------------------------------------------------------------------------
def _fmt(m: dict) -> str:
  return (f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
          f"<br><small>null {m['null_mean']:.3f} ± {m['null_std']:.3f}, p = {m['p_value']:.3g}"
          "</small>")


def report_files(result: dict) -> list[str]:
  """Relative paths of every figure the report shows."""
  files = []
  for site, m in result["sites"].items():
    files += [f"{site}/eims.png", f"{site}/templates.png", f"{site}/module_maps.png"]
    if result["config"]["k"] is None:
      files.append(f"{site}/stability.png")
    files += [f"{site}/hybrids_module{j}.png" for j in range(m["k"])]
  return files


def write_report(result: dict, out_dir: str) -> str:
  """One HTML page with a metrics table per site and the figures beside it."""
  parts = "best_site" in result
  head = ["site", "C", "K", "stability", "overlap ↓", "in-support share ↑"]
  head += ["part agreement ↑"] if parts else []
  head += ["NMF vs k-means ARI", "seconds"]
  rows = []
  for site, m in result["sites"].items():
    cells = [site, m["channels"], m["k"], f"{m['stability'][0]:.3f} ± {m['stability'][1]:.3f}",
             _fmt(m["overlap"]), _fmt(m["in_support"])]
    cells += [_fmt(m["part_agreement"])] if parts else []
    cells += [f"{m['nmf_vs_kmeans_ari']:.2f}", f"{m['seconds']['total']:.1f}"]
    rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
  img = lambda p, cap: (f'<figure><img src="{html.escape(p)}" alt="{html.escape(cap)}">'
                        f"<figcaption>{html.escape(cap)}</figcaption></figure>")
  sections = []
  for site, m in result["sites"].items():
    figs = [img(f"{site}/eims.png", "EIMs, ordered by module (colour bar = module)"),
            img(f"{site}/templates.png", "NMF templates"),
            img(f"{site}/module_maps.png", "module influence maps (common scale)")]
    if result["config"]["k"] is None:
      figs.append(img(f"{site}/stability.png", "template stability against K"))
    figs += [img(f"{site}/hybrids_module{j}.png",
                 f"module {j} ({m['module_sizes'][j]} channels): rows z1, columns donor z2")
             for j in range(m["k"])]
    sections.append(f"<h2>{html.escape(site)}</h2>" + "".join(figs))
  best = (f"<p>Best site by ground-truth part agreement over chance: <b>{result['best_site']}"
          "</b>.</p>" if parts else "")
  page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>cfmod_jax report: {html.escape(result['generator'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
figure{{display:inline-block;margin:8px;vertical-align:top}}img{{max-width:640px;image-rendering:pixelated}}
</style></head><body>
<h1>Modularity of {html.escape(result['generator'])}</h1>
<p>{result['config']['n_pairs']} pairs for the EIMs, {result['config']['eval_pairs']} fresh pairs
for module maps; intervals are bootstrap 95% over groups of pairs; the null is
{result['config']['n_null']} random channel partitions with the same module sizes
(one-sided p-values). Ran in {result['seconds']:.0f} s on {result['devices']}
{html.escape(result['platform'])} device(s).</p>{best}
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
{''.join(sections)}
<p><small>Arrays: &lt;site&gt;/analysis.npz; numbers: metrics.json.</small></p>
</body></html>"""
  path = os.path.join(out_dir, "report.html")
  with open(path, "w") as f:
    f.write(page)
  return path
