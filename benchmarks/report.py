"""The benchmark's outputs: ``benchmark.json`` (the results dict of
`benchmarks.harness.run_benchmark`), ``benchmark.md`` (`markdown_table`) and
``benchmark.png`` (`plot`), written by `write_outputs`."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def markdown_table(results: dict[str, Any]) -> str:
  """The results as markdown: a summary per site, then one row per (site, contender)."""
  cfg = results["config"]
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  mm = results["matmul"]
  lines = [
    f"DCGAN-64 (width {cfg['width']}), EIMs of every channel, N = {cfg['n_pairs']} pairs; "
    f"{results['cpu_model']}, {results['cpu_count']} cores; load average "
    f"{results['loadavg_before'][0]:.2f} → {results['loadavg_after'][0]:.2f}; float32 matmul "
    f"peak: jax {mm['peak_gflops'].get('jax', float('nan')):.0f}, torch "
    f"{mm['peak_gflops'].get('torch', float('nan')):.0f} GFLOP/s.",
    "",
  ]
  tg = results.get("targets")
  if tg:
    has_naive = "speedup_vs_naive_jax" in tg
    lines += [
      "| site | channels | hybrids | cfmod_jax s | torch (hooks) s | "
      + ("naive JAX s | " if has_naive else "")
      + "speed-up vs torch | "
      + ("speed-up vs naive | " if has_naive else "")
      + "cfmod_jax time / compute floor |",
      "|---|---:|---:|---:|---:|"
      + ("---:|" if has_naive else "")
      + "---:|"
      + ("---:|" if has_naive else "")
      + "---:|",
    ]
    for s in cfg["sites"]:
      a = recs[("cfmod_jax", s)]
      row = (
        f"| {s} | {a['channels']} | {a['hybrids']} | {a['seconds']:.2f} | "
        f"{recs[('torch', s)]['seconds']:.1f} | "
      )
      if has_naive:
        row += f"{recs[('naive_jax', s)]['seconds']:.1f} | "
      row += f"{tg['speedup_vs_torch'][s]:.1f}× | "
      if has_naive:
        row += f"{tg['speedup_vs_naive_jax'][s]:.1f}× | "
      row += f"{a['seconds_over_floor']:.2f} |"
      lines.append(row)
    geo = f"**geometric mean speed-up vs torch: {tg['geomean_speedup_vs_torch']:.1f}×**"
    if has_naive:
      geo += f", vs naive JAX: {tg['geomean_speedup_vs_naive_jax']:.1f}×"
    lines += ["", geo + "."]
  lines += [
    "",
    "| site | contender | seconds | CPU s | compile s | hybrids/s | useful GFLOP/s | "
    "% of peak | peak RSS MiB (workload) | max abs diff vs cfmod_jax |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for s in cfg["sites"]:
    for c in cfg["contenders"]:
      r = recs[(c, s)]
      comp = "—" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
      diff = (
        "—"
        if r.get("max_abs_diff_vs_cfmod_jax") is None or c == "cfmod_jax"
        else f"{r['max_abs_diff_vs_cfmod_jax']:.1e}"
      )
      lines.append(
        f"| {s} | {c} | {r['seconds']:.2f} | {r['cpu_seconds']:.1f} | {comp} | "
        f"{r['hybrids_per_s']:.0f} | "
        f"{r['useful_gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% | "
        f"{r['peak_rss_mib']:.0f} ({r['workload_rss_mib']:.0f}) | {diff} |"
      )
  lines += [
    "",
    "Seconds exclude compilation (each contender warms up first; JAX compile times "
    "in their own column; CPU s: user + system time of the timed run over all "
    "threads, at most cores × seconds — less when the run could not use every core, "
    "e.g. because other processes held one). Useful FLOPs = "
    "N·(2·F_prefix + (C + 1)·F_suffix), with F_prefix / F_suffix the per-image FLOPs of the prefix (latent → site) and suffix "
    "(site → image) from XLA's cost analysis; % of peak = useful GFLOP/s ÷ the best "
    "float32 matmul GFLOP/s of this run (jax or torch); compute floor = useful FLOPs ÷ "
    "that peak. cfmod_jax's linear path skips most of the first layer after the site, so "
    "it can beat the floor (< 1). Peak RSS: high-water mark of a fresh process per row "
    "(VmHWM); in brackets, the part added by the workload (incl. XLA compilation).",
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
  """Two panels: seconds per site (log scale) and useful GFLOP/s vs the matmul peaks."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = results["config"]
  sites, contenders = list(cfg["sites"]), list(cfg["contenders"])
  recs = {(r["contender"], r["site"]): r for r in results["records"]}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  x = np.arange(len(sites))
  wbar = 0.8 / len(contenders)
  for k, c in enumerate(contenders):
    secs = [recs[(c, s)]["seconds"] for s in sites]
    gf = [recs[(c, s)]["useful_gflops"] for s in sites]
    axes[0].bar(x + k * wbar, secs, wbar, label=c)
    axes[1].bar(x + k * wbar, gf, wbar, label=c)
  for ax in axes:
    ax.set_xticks(x + wbar * (len(contenders) - 1) / 2, sites)
    ax.set_yscale("log")
  axes[0].set_ylabel("seconds (log)")
  axes[0].set_title(f"EIMs of every channel, N={cfg['n_pairs']} pairs")
  axes[1].set_ylabel("useful GFLOP/s (log)")
  axes[1].set_title("useful throughput vs float32 matmul peak")
  for f, style in (("jax", "--"), ("torch", ":")):
    if f in results["matmul"]["peak_gflops"]:
      axes[1].axhline(
        results["matmul"]["peak_gflops"][f], color="k", ls=style, label=f"{f} matmul peak"
      )
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
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
