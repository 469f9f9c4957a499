"""The benchmark's outputs: ``benchmark.json`` (the results dict of
`benchmarks.harness.run_benchmark`), ``benchmark.md`` (`markdown_table`) and
``benchmark.png`` (`plot`), written by `write_outputs`."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from benchmarks.config import CONTENDERS, TORCH_CONTENDERS


def _s(x: float) -> str:
  """Seconds: two decimals, three below 0.1 s."""
  return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def _spread(r: dict[str, Any]) -> str:
  return f"{_s(r['seconds'])} [{_s(r['seconds_min'])}–{_s(r['seconds_max'])}]"


def _fmt(x: float | None, spec: str, none: str = "—") -> str:
  return none if x is None else format(x, spec)


def markdown_table(results: dict[str, Any]) -> str:
  """The results as markdown: the headline, a summary per site (cfmod_jax vs each
  torch contender, floors), then one row per (site, contender)."""
  cfg = results["config"]
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  mm, bw = results["matmul"], results["bandwidth"]
  ran = [c for c in CONTENDERS if any((c, s) in recs for s in cfg["sites"])]
  torch_ran = [c for c in ran if c in TORCH_CONTENDERS]
  lines = [
    f"DCGAN-64 (width {cfg['width']}), EIMs of every channel, N = {cfg['n_pairs']} pairs, "
    f"{cfg['repeats']} interleaved repeats per (contender, site); {results['cpu_model']}, "
    f"{results['cpu_count']} cores; load average {results['loadavg_before'][0]:.2f} → "
    f"{results['loadavg_after'][0]:.2f}; float32 matmul peak: jax "
    f"{mm['peak_gflops'].get('jax', float('nan')):.0f}, torch "
    f"{mm['peak_gflops'].get('torch', float('nan')):.0f} GFLOP/s; memory bandwidth "
    f"{bw['best_gb_per_s']:.1f} GB/s.",
    "",
  ]
  tg = results.get("targets")
  if tg:
    lines += [f"**{results['headline']}**", ""]
    lines += [
      "| site | channels | hybrids | cfmod_jax s | "
      + " | ".join(f"{c} s" for c in torch_ran)
      + " | fastest torch | speed-up vs fastest torch | cfmod_jax efficiency | "
      "compute floor s | memory floor s | binding |",
      "|---|---:|---:|---:|" + "---:|" * len(torch_ran) + "---|---:|---:|---:|---:|---|",
    ]
    for s in cfg["sites"]:
      a, fl = recs[("cfmod_jax", s)], results["floors"][s]
      cells = [
        s,
        str(a["channels"]),
        str(a["hybrids"]),
        _spread(a),
        *(_spread(recs[(c, s)]) if (c, s) in recs else "failed" for c in torch_ran),
        tg["best_torch"][s],
        f"{tg['speedup_vs_best_torch'][s]:.2f}×",
        _fmt(tg["efficiency"][s], ".2f"),
        _fmt(fl["compute_floor_s"], ".3f"),
        _fmt(fl["memory_floor_s"], ".3f"),
        fl["binding"] or "—",
      ]
      lines.append("| " + " | ".join(cells) + " |")
    lines += [
      "",
      f"Geometric mean speed-up vs the fastest torch contender per site: "
      f"{tg['geomean_speedup_vs_best_torch']:.2f}× (target ≥ 2.5×: "
      f"{'met' if tg['geomean_vs_best_torch_at_least_2.5x'] else 'NOT met'}; no site below "
      f"1.5×: {'met' if tg['no_site_below_1.5x_vs_best_torch'] else 'NOT met'}; cfmod_jax "
      f"efficiency ≥ 0.7 at every site: "
      f"{'met' if tg['all_sites_efficiency_at_least_0.7'] else 'NOT met'}). Per site, seconds "
      "are the median [min–max] of the repeats.",
    ]
    others = [c for c in tg["speedup_vs"] if c not in TORCH_CONTENDERS]
    for c in others:
      sp = tg["speedup_vs"][c]
      lines.append(f"vs {c}: " + ", ".join(f"{s} {v:.1f}×" for s, v in sp.items()) + ".")
  lines += [
    "",
    "| site | contender | median s [min–max] | per repeat s | CPU s | compile s | warm-up s | "
    "details | hybrids/s | plain-algorithm GFLOP/s | minimal GFLOP/s | efficiency | "
    "time / floor | peak RSS MiB (workload) | max abs diff vs cfmod_jax |",
    "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for s in cfg["sites"]:
    for c in ran:
      r = recs.get((c, s))
      if r is None:
        continue
      det = r["details"]
      detail = ", ".join(
        str(det[k]) for k in ("memory_format", "channel_chunk") if det.get(k) is not None
      )
      diff = (
        "—"
        if r.get("max_abs_diff_vs_cfmod_jax") is None or c == "cfmod_jax"
        else f"{r['max_abs_diff_vs_cfmod_jax']:.1e}"
      )
      lines.append(
        f"| {s} | {c} | {_spread(r)} | {', '.join(_s(x) for x in r['repeat_seconds'])} | "
        f"{r['cpu_seconds']:.1f} | {_fmt(r['compile_seconds'], '.1f')} | "
        f"{r['warmup_seconds']:.1f} | {detail or '—'} | {r['hybrids_per_s']:.0f} | "
        f"{r['plain_algorithm_gflops']:.1f} | {_fmt(r['minimal_gflops'], '.1f')} | "
        f"{_fmt(r['efficiency'], '.2f')} | {_fmt(r['seconds_over_floor'], '.2f')} | "
        f"{r['peak_rss_mib']:.0f} ({r['workload_rss_mib']:.0f}) | {diff} |"
      )
  for f in results.get("failed", []):
    lines.append(f"| {f['site']} | {f['contender']} | failed: {f['error'][:200]} |")
  d = results["definitions"]
  lines += [
    "",
    "Timing: per site, one long-lived process per contender, set up and warmed up "
    "one after the other (compilation, memory-format choice), then timed in rotation "
    f"({d['rotation']}); seconds exclude compilation and warm-up; JAX compile time "
    "(XLA) and torch.compile time (first call minus second call of the warm-up chunks, "
    "summed over both memory formats tried) "
    "in their own column. CPU s: user + system time of the median repeat's process over "
    "all threads. Details: the memory format torch_batched/linear kept "
    "(both are tried during warm-up) and their channels per batch.",
    "",
    f"Plain-algorithm FLOPs = {d['plain_algorithm_flops']}. Minimal FLOPs = "
    f"{d['minimal_flops']}. Efficiency = {d['efficiency']}. Compute floor = minimal FLOPs "
    f"÷ peak; memory floor: {d['memory_floor']}; time / floor uses the larger floor "
    "(the binding one). Peak RSS: high-water mark of the contender's process (VmHWM, "
    "includes warm-up); in brackets, the part added after setup.",
  ]
  mem = results.get("memory_check")
  if mem:
    runs = mem["runs"]
    lines += [
      "",
      f"Memory flatness (cfmod_jax, {mem['site']}): peak RSS "
      + ", ".join(
        f"N={m['n_pairs']}: {m['peak_rss_mib']:.0f} MiB (workload {m['workload_rss_mib']:.0f})"
        for m in runs
      )
      + f" → ratio {mem['ratio']:.2f} "
      + ("(within 1.2×)." if mem["flat_within_1.2x"] else "(NOT within 1.2×)."),
    ]
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
  """Two panels: median seconds per site (log scale, min–max bars) and efficiency
  (minimal FLOPs / s / peak) with the efficiency a run at the binding floor would have."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = results["config"]
  sites = list(cfg["sites"])
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  contenders = [c for c in CONTENDERS if any((c, s) in recs for s in sites)]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  x = np.arange(len(sites))
  wbar = 0.8 / max(1, len(contenders))
  for k, c in enumerate(contenders):
    here = [i for i, s in enumerate(sites) if (c, s) in recs]
    rs = [recs[(c, sites[i])] for i in here]
    med = np.array([r["seconds"] for r in rs])
    err = np.array(
      [
        [m - r["seconds_min"] for m, r in zip(med, rs)],
        [r["seconds_max"] - m for m, r in zip(med, rs)],
      ]
    )
    xs = x[here] + k * wbar
    axes[0].bar(xs, med, wbar, yerr=err, capsize=2, label=c)
    eff = [r["efficiency"] if r["efficiency"] is not None else np.nan for r in rs]
    axes[1].bar(xs, eff, wbar, label=c)
  for ax in axes:
    ax.set_xticks(x + wbar * (len(contenders) - 1) / 2, sites)
  axes[0].set_yscale("log")
  axes[0].set_ylabel("seconds (median, min–max; log)")
  axes[0].set_title(f"EIMs of every channel, N={cfg['n_pairs']} pairs, {cfg['repeats']} repeats")
  axes[1].set_yscale("log")
  axes[1].set_ylabel("efficiency = minimal FLOPs / s / peak (log)")
  axes[1].set_title("efficiency vs the 0.7 target and the binding floor")
  axes[1].axhline(0.7, color="k", ls="--", lw=1, label="target 0.7")
  at_floor = [results["floors"][s].get("efficiency_at_floor") for s in sites]
  if any(v is not None for v in at_floor):
    axes[1].plot(
      x + wbar * (len(contenders) - 1) / 2,
      [np.nan if v is None else v for v in at_floor],
      "k_",
      ms=30,
      mew=2,
      label="at the binding floor",
    )
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(
    handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False
  )
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(results: dict[str, Any], out_dir: str) -> dict[str, str]:
  """Writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"benchmark.{k}") for k in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2)
  with open(paths["md"], "w") as f:
    f.write(markdown_table(results))
  plot(results, paths["png"])
  return paths


__all__ = ["markdown_table", "plot", "write_outputs"]
