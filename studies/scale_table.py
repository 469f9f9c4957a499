"""Predicted time of the full BigGAN-deep analysis on accelerators (docs/scale.md).

  python -m studies.scale_table --measured docs/gpu_check_cpu.json --out docs/scale.md

Reads the ``biggan`` section of a `studies.gpu_check` JSON — per site the
FLOPs per image of the prefix and suffix and the suffix's bytes accessed (XLA cost
analysis), the bytes per hybrid/pair estimated by `cfmod_jax.memory`, and the
seconds measured on that machine for a few hybrids at a few sites — and writes a
Markdown page: what was measured, the work of the whole analysis (every site in
the JSON, all channels, ``--n_pairs`` pairs) and its predicted time on one GPU,
eight GPUs and TPU pod slices under the assumptions listed in `ACCELERATORS`,
`BANDWIDTH_EFFICIENCY`, `COMM_*` and the page itself. Nothing here runs a
generator: the page is a pure function of the JSON and these constants.

Model, per site s with C channels (BigGAN has no linear split: every stage reads
the latent, so each hybrid is a full suffix):

    FLOPs_s = N · (2 · F_prefix + (C + 1) · F_suffix)
    bytes_s = N · (C + 1) · B_suffix            (bf16: B_suffix / 2)
    t_s     = max(FLOPs_s / (peak · e), bytes_s / (bandwidth · e_bw)) / devices
              + the all-reduce of the site's [C, H, W] float32 sums

with ``e`` the fraction of the matmul peak that the measured run reached on the
suffix (median over the timed sites), at most `MAX_EFFICIENCY`, and ``e_bw`` =
`BANDWIDTH_EFFICIENCY`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from absl import flags, logging

from experiments import _cli  # isort: skip  (first: one line on Ctrl-C while jax imports)

__all__ = [
  "ACCELERATORS",
  "Accelerator",
  "markdown",
  "measured_efficiency",
  "predict",
  "site_work",
]

N_PAIRS = 128
BANDWIDTH_EFFICIENCY = 0.6  # fraction of the HBM bandwidth sustained by convolution chains
COMM_EFFICIENCY = 0.5  # fraction of the interconnect bandwidth a ring all-reduce sustains
COMM_OVERHEAD = 0.05  # launch, synchronisation and pair padding on several devices (+5 %)
MAX_EFFICIENCY = 0.5  # never assume more than half of an accelerator's dense peak
REFERENCE_EFFICIENCY = 0.25  # a second, fixed efficiency shown next to the measured one
BLOCK_PAIRS = 16  # the main job sweeps EIMs in blocks of 16 pairs: one all-reduce per block
# The rest of the main job (analysis.AnalysisConfig defaults): per site the module and
# null-partition maps, (1 + n_null) · K masks on eval_pairs fresh pairs (K at its largest
# candidate), and the untrained baseline repeating everything (×2). Host-side clustering
# (NMF, bootstrap) is not included.
MAIN_K, MAIN_N_NULL, MAIN_EVAL_PAIRS, MAIN_BASELINE_FACTOR = 6, 24, 64, 2
MEMORY_FRACTION = 0.5  # cfmod_jax.memory.DEFAULT_FRACTION of the allocator's limit
GPU_ALLOCATOR_FRACTION = 0.75  # XLA's default bytes_limit on a GPU: 75 % of its memory


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One accelerator configuration (dense peaks per chip, TFLOP/s)."""

  name: str
  chips: int
  tflops: dict[str, float]  # per chip, by precision
  hbm_gb: float  # per chip
  hbm_tb_s: float  # per chip
  link_gb_s: float  # per chip, all-reduce interconnect (one direction)
  allocator_fraction: float
  note: str


_H200 = dict(
  tflops={"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
  hbm_gb=141.0,
  hbm_tb_s=4.8,
  link_gb_s=450.0,
  allocator_fraction=GPU_ALLOCATOR_FRACTION,
)
ACCELERATORS: tuple[Accelerator, ...] = (
  Accelerator(
    "1 × H200 SXM",
    1,
    note="dense peaks of the H100/H200 SXM (FP32 non-tensor 66.9, TF32 494.7, BF16 989.4 "
    "TFLOP/s); H200 HBM 141 GB at 4.8 TB/s (an H100 has the same compute, 80 GB at "
    "3.35 TB/s: memory-bound sites take 1.4× longer)",
    **_H200,
  ),
  Accelerator(
    "8 × H200 SXM (pairs sharded)",
    8,
    note="as above ×8; NVLink 4: 450 GB/s per GPU and direction",
    **_H200,
  ),
  Accelerator(
    "TPU v5e-16 (16 chips)",
    16,
    tflops={"float32": 197.0 / 6, "tf32": 197.0 / 3, "bfloat16": 197.0},
    hbm_gb=16.0,
    hbm_tb_s=0.819,
    link_gb_s=100.0,
    allocator_fraction=0.9,
    note="197 bf16 TFLOP/s per chip; float32 at precision 'highest' = 6 bf16 passes, "
    "tf32 ('tensorfloat32' = bf16_3x) = 3 passes; 16 GB HBM at 819 GB/s; ICI",
  ),
  Accelerator(
    "TPU v4-32 (16 chips)",
    16,
    tflops={"float32": 275.0 / 6, "tf32": 275.0 / 3, "bfloat16": 275.0},
    hbm_gb=32.0,
    hbm_tb_s=1.2,
    link_gb_s=150.0,
    allocator_fraction=0.9,
    note="275 bf16 TFLOP/s per chip; float32/tf32 as for v5e; 32 GB HBM at 1.2 TB/s; ICI",
  ),
)


def site_work(site: dict[str, Any], n_pairs: int = N_PAIRS) -> dict[str, float]:
  """FLOPs and bytes of all hybrids at one site (module docstring)."""
  c = site["channels"]
  flops = n_pairs * (
    2.0 * site["prefix_flops_per_image"] + (c + 1) * site["suffix_flops_per_image"]
  )
  suffix_bytes = site.get("suffix_bytes_accessed_per_image") or 0.0
  m = (1 + MAIN_N_NULL) * MAIN_K
  return {
    "hybrids": float(n_pairs * c),
    "flops": flops,
    "bytes_float32": n_pairs * (c + 1) * suffix_bytes,
    "sums_bytes": float(c * site["output_map_bytes"]),
    "module_flops": MAIN_EVAL_PAIRS
    * (2.0 * site["prefix_flops_per_image"] + (m + 1) * site["suffix_flops_per_image"]),
    "module_bytes_float32": MAIN_EVAL_PAIRS * (m + 1) * suffix_bytes,
  }


def measured_efficiency(record: dict[str, Any]) -> dict[str, Any]:
  """What the measured run reached: per timed site (float32) the suffix's GFLOP/s and
  its fraction of the float32 matmul peak measured in the same run (just before the
  BigGAN timings when recorded there); their median, at most 1."""
  peaks = record["biggan"].get("matmul_tflops") or record["device"]["matmul_tflops"]
  peak = peaks["float32"] * 1e3  # GFLOP/s
  rows = []
  for site in record["biggan"]["sites"]:
    for t in site["timed"]:
      if t["precision"] == "float32":
        rows.append(
          {
            "site": site["site"],
            "channels": site["channels"],
            "suffix_gflop": site["suffix_flops_per_image"] / 1e9,
            "hybrids": t["hybrids"],
            "seconds_per_hybrid": t["seconds_per_hybrid"],
            "suffix_seconds_per_image": t["suffix_seconds_per_image"],
            "suffix_gflops": t["suffix_gflops"],
            "fraction_of_peak": t["suffix_gflops"] / peak,
          }
        )
  if not rows:
    raise ValueError("the JSON's biggan section has no float32 timing")
  return {
    "peak_gflops": peak,
    "rows": rows,
    "fraction": min(1.0, statistics.median(r["fraction_of_peak"] for r in rows)),
    "suffix_gflops": statistics.median(r["suffix_gflops"] for r in rows),
  }


def _chunk_cost(site: dict[str, Any], precision: str):
  from cfmod_jax import memory  # pylint: disable=g-import-not-at-top

  key = "bfloat16" if precision == "bfloat16" else "float32"
  return memory.ChunkCost(
    per_hybrid=int(site["bytes_per_hybrid"][key]),
    per_pair=int(site["bytes_per_pair"][key]),
    fixed=int(site["fixed_bytes"][key]),
    per_output_map=int(site["output_map_bytes"]),
  )


def predict(
  record: dict[str, Any],
  n_pairs: int = N_PAIRS,
  accelerators: Sequence[Accelerator] = ACCELERATORS,
  efficiency: float | None = None,
) -> dict[str, Any]:
  """Work per site, and per accelerator and precision the predicted seconds of the
  whole analysis (module docstring). ``efficiency`` overrides the measured one."""
  from cfmod_jax import memory  # pylint: disable=g-import-not-at-top

  sites = record["biggan"]["sites"]
  measured = measured_efficiency(record)
  e = min(measured["fraction"], MAX_EFFICIENCY) if efficiency is None else efficiency
  work = {s["site"]: site_work(s, n_pairs) for s in sites}
  totals = {
    "hybrids": sum(w["hybrids"] for w in work.values()),
    "flops": sum(w["flops"] for w in work.values()),
    "bytes_float32": sum(w["bytes_float32"] for w in work.values()),
  }
  configs = []
  scale = {}  # seconds at REFERENCE_EFFICIENCY, same model
  if efficiency is None:
    ref = predict(record, n_pairs, accelerators, REFERENCE_EFFICIENCY)
    scale = {(c["accelerator"], c["precision"]): c["seconds"] for c in ref["configs"]}
  for acc in accelerators:
    budget = int(MEMORY_FRACTION * acc.allocator_fraction * acc.hbm_gb * 1e9)
    for p in ("float32", "tf32", "bfloat16"):
      seconds, compute_bound, comm, chunks, modules = 0.0, 0, 0.0, {}, 0.0
      for s in sites:
        w = work[s["site"]]
        t_flops = w["flops"] / (acc.tflops[p] * 1e12 * e)
        traffic = w["bytes_float32"] * (0.5 if p == "bfloat16" else 1.0)
        t_bytes = traffic / (acc.hbm_tb_s * 1e12 * BANDWIDTH_EFFICIENCY)
        compute_bound += t_flops >= t_bytes
        modules += (
          max(
            w["module_flops"] / (acc.tflops[p] * 1e12 * e),
            w["module_bytes_float32"]
            * (0.5 if p == "bfloat16" else 1.0)
            / (acc.hbm_tb_s * 1e12 * BANDWIDTH_EFFICIENCY),
          )
          / acc.chips
        )
        t = max(t_flops, t_bytes) / acc.chips
        if acc.chips > 1:
          ring = 2.0 * (acc.chips - 1) / acc.chips * w["sums_bytes"]
          blocks = math.ceil(n_pairs / BLOCK_PAIRS)
          c_s = blocks * ring / (acc.link_gb_s * 1e9 * COMM_EFFICIENCY)
          comm += c_s
          t = t * (1.0 + COMM_OVERHEAD) + c_s
        seconds += t
        cost = _chunk_cost(s, p)
        pc, mc = memory.choose_chunks_for_cost(
          cost,
          n_pairs,
          s["channels"],
          budget_bytes=budget,
          platform="gpu",
          n_devices=acc.chips,
        )
        chunks[s["site"]] = {
          "pair_chunk": pc,
          "mask_chunk": mc,
          "working_set_bytes": memory.working_set_bytes(cost, pc, mc, s["channels"]),
        }
      configs.append(
        {
          "accelerator": acc.name,
          "chips": acc.chips,
          "precision": p,
          "sustained_tflops": acc.tflops[p] * e * acc.chips,
          "seconds": seconds,
          "main_job_seconds": MAIN_BASELINE_FACTOR * (seconds + modules),
          "seconds_at_reference_efficiency": scale.get((acc.name, p)),
          "compute_bound_sites": compute_bound,
          "allreduce_seconds": comm,
          "budget_bytes": budget,
          "chunks": chunks,
        }
      )
  cpu_seconds = totals["flops"] / (measured["suffix_gflops"] * 1e9)
  return {
    "n_pairs": n_pairs,
    "efficiency": e,
    "measured": measured,
    "work": work,
    "totals": totals,
    "cpu_seconds": cpu_seconds,
    "configs": configs,
  }


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  if seconds < 2 * 86400:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.1f} days"


def markdown(record: dict[str, Any], pred: dict[str, Any], source: str) -> str:
  """docs/scale.md: measured numbers, assumptions, work and predictions."""
  from cfmod_jax.memory import format_bytes  # pylint: disable=g-import-not-at-top

  dev, big, m = record["device"], record["biggan"], pred["measured"]
  e = pred["efficiency"]
  sites = big["sites"]
  lines = [
    f"# Scale: the full {big['config']} analysis on accelerators (predicted)",
    "",
    f"Generated by `python -m studies.scale_table --measured {source} --out docs/scale.md`"
    " from a `studies.gpu_check` run; rerun it on a GPU's JSON to replace the",
    "assumed efficiency by a measured one.",
    "**Nothing on this page was run on a GPU or TPU:**"
    if dev["platform"] == "cpu"
    else f"**Measured on {dev['device_kind']} × {dev['n_devices']}; the other rows are predicted:**",
    "the per-site FLOPs are XLA's cost analysis of the model (the same on any backend),",
    "the bytes per image are what XLA's compiler *on the measuring machine* reports as bytes",
    "accessed (a proxy for an accelerator's memory traffic, where fusion differs), the times",
    "in §1 were measured on that machine, and every accelerator time in §3 is a prediction",
    "from the stated assumptions.",
    "",
    f"## 1. Measured on this machine ({dev['platform']})",
    "",
    f"* machine: {dev['device_kind']} ({dev.get('cpu_count')} cores), jax {dev['jax_version']};",
    f"  best float32 matmul ({dev['matmul_n']}²), measured just before the timings:"
    f" {m['peak_gflops']:.1f} GFLOP/s (the peak we compare against).",
    f"* model: {big['config']} with random weights ({big['n_parameters'] / 1e6:.1f} M "
    f"parameters), {len(sites)} sites, {big['resolution']}×{big['resolution']} images;"
    f" measured with `gpu_check` ({record['created']}).",
    "",
    "| site | C | suffix GFLOP/image | hybrids timed | s/hybrid (engine) | suffix s/image |"
    " suffix GFLOP/s | fraction of peak |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in m["rows"]:
    lines.append(
      f"| {r['site']} | {r['channels']} | {r['suffix_gflop']:.2f} | {r['hybrids']} |"
      f" {r['seconds_per_hybrid']:.3g} | {r['suffix_seconds_per_image']:.3g} |"
      f" {r['suffix_gflops']:.1f} | {r['fraction_of_peak']:.2f} |"
    )
  lines += [
    "",
    "*s/hybrid (engine)*: `influence_map_sums` on the one-hot masks of the first channels,",
    "one chunk, divided by the hybrids (includes the two prefixes and the reference G(z1)",
    "per pair). *suffix s/image*: the suffix alone on one chunk of images. The median",
    f"fraction of peak is {m['fraction']:.2f}; the efficiency assumed on every accelerator",
    f"below is **e = {e:.2f}** (that median, at most {MAX_EFFICIENCY}: tensor cores rarely",
    "sustain more than half their dense peak on convolutions; an assumption).",
    "",
    f"## 2. Work of the full analysis (N = {pred['n_pairs']} pairs, every site, all channels)",
    "",
    "BigGAN-deep has **no linear split** (every stage reads the latent: conditional",
    "BatchNorm first), so each hybrid is a full suffix and cfmod_jax's linear-split",
    "saving does not apply; it applies to the DCGAN/VAE/BEGAN sites (docs/benchmark.md).",
    "Memory: bytes per hybrid estimated by `cfmod_jax.memory.chunk_cost` (peak live bytes",
    "of the suffix's jaxpr; an upper estimate: XLA's own `memory_analysis()` of a DCGAN",
    "chunk is 2–4× lower in float32, docs/gpu_check.md); chunks as `choose_chunks` picks",
    f"them on one H200 ({MEMORY_FRACTION:.0%} of its {GPU_ALLOCATOR_FRACTION:.0%}"
    " allocator limit) with all pairs on it.",
    "",
    "| site | shape | C | hybrids | suffix GFLOP/image | PFLOP (site) | suffix MB/image (XLA) |"
    " MiB/hybrid f32 / bf16 | chunks f32 (pairs×masks) | working set f32 |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  one = next(c for c in pred["configs"] if c["chips"] == 1 and c["precision"] == "float32")
  for s in sites:
    w = pred["work"][s["site"]]
    ch = one["chunks"][s["site"]]
    h, wd, c = s["shape"]
    lines.append(
      f"| {s['site']} | {h}×{wd}×{c} | {c} | {w['hybrids']:.0f} |"
      f" {s['suffix_flops_per_image'] / 1e9:.2f} | {w['flops'] / 1e15:.2f} |"
      f" {(s.get('suffix_bytes_accessed_per_image') or 0) / 1e6:.0f} |"
      f" {s['bytes_per_hybrid']['float32'] / 2**20:.1f} /"
      f" {s['bytes_per_hybrid']['bfloat16'] / 2**20:.1f} |"
      f" {ch['pair_chunk']}×{ch['mask_chunk']} | {format_bytes(ch['working_set_bytes'])} |"
    )
  t = pred["totals"]
  lines += [
    f"| **total** | | | **{t['hybrids']:.0f}** | | **{t['flops'] / 1e15:.1f}** | | | | |",
    "",
    f"At the measured {m['suffix_gflops']:.0f} GFLOP/s this CPU would need"
    f" **{_duration(pred['cpu_seconds'])}**.",
    "",
    "## 3. Predicted time on accelerators",
    "",
    "t = Σ_sites max(FLOPs / (peak · e), bytes / (HBM bandwidth · e_bw)) / chips"
    " (+ all-reduce), with:",
    "",
    f"* e = {e:.2f} (§1) for every precision and device;"
    f" e_bw = {BANDWIDTH_EFFICIENCY} of the HBM bandwidth; bytes = XLA's bytes accessed of"
    " the suffix per hybrid (float32; halved for bf16, unchanged for tf32).",
    "* Several devices: pairs sharded (`jax.shard_map`), near-linear: the per-device work",
    f" ×(1 + {COMM_OVERHEAD}) for launch, synchronisation and pair padding, plus one ring",
    f" all-reduce (`psum`) of the site's float32 sums [C, H, W] per block of {BLOCK_PAIRS}"
    f" pairs (the main job's block) at {COMM_EFFICIENCY:.0%} of the interconnect bandwidth.",
    "* Chunks are chosen per device from its memory (`choose_chunks_for_cost`); every site",
    " fits (the largest working set is in the table above), so memory changes no time.",
    "* *predicted time (EIMs)*: the EIM sweep of every site (the table of §2). *whole main",
    f" job*: plus, per site, the module and null maps ((1 + {MAIN_N_NULL}) · {MAIN_K} masks on"
    f" {MAIN_EVAL_PAIRS} fresh pairs, K at its largest candidate), all ×{MAIN_BASELINE_FACTOR}"
    " for the untrained baseline (on by default); host-side clustering (NMF, bootstrap)"
    " and figures are not included.",
    "",
    f"| configuration | precision | assumed sustained TFLOP/s (all chips, e = {e:.2f}) |"
    f" predicted time (EIMs) | at e = {REFERENCE_EFFICIENCY} | whole main job |"
    " compute-bound sites | all-reduce |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for c in pred["configs"]:
    ref = c["seconds_at_reference_efficiency"]
    lines.append(
      f"| {c['accelerator']} | {c['precision']} | {c['sustained_tflops']:.0f} |"
      f" **{_duration(c['seconds'])}** | {'–' if ref is None else _duration(ref)} |"
      f" {_duration(c['main_job_seconds'])} | {c['compute_bound_sites']}/{len(sites)} |"
      f" {c['allreduce_seconds']:.2f} s |"
    )
  lines += [
    "",
    "Peaks per chip (dense, no sparsity):",
    "",
  ]
  for acc in ACCELERATORS:
    lines.append(f"* **{acc.name}**: {acc.note}.")
  lines += [
    "",
    "Plainly: the efficiency e is the least certain number here (a CPU's fraction of its",
    "own matmul peak, carried over to tensor cores); time scales as 1/e where compute-bound.",
    "float32 on a GPU runs on the non-tensor FP32 units; `precision='tf32'` or `'bfloat16'`",
    "(`cfmod_jax.precision`) use the tensor cores. On TPUs JAX's *default* float32 matmul is",
    "a single bf16 pass (bf16 speed); the float32 rows assume exact float32 (precision",
    "'highest', 6 passes). Measure instead of predicting: `launch/gpu_check.sh` on the",
    "machine (docs/gpu_check.md), then rerun this script on its JSON.",
    "",
  ]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  path = _cli.check_input_file("measured")
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  if "biggan" not in record:
    raise _cli.flag_error("measured", "has no biggan section (run gpu_check with --biggan)")
  pred = predict(record, FLAGS.n_pairs)
  text = markdown(record, pred, FLAGS.measured)
  from cfmod_jax import fileio  # pylint: disable=g-import-not-at-top

  fileio.atomic_write_text(FLAGS.out, text)
  logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
  flags.DEFINE_string(
    "measured", "docs/gpu_check_cpu.json", "gpu_check JSON with a biggan section."
  )
  flags.DEFINE_string("out", "docs/scale.md", "Markdown output.")
  flags.DEFINE_integer("n_pairs", N_PAIRS, "Pairs of the predicted analysis.", lower_bound=1)
  _cli.run(main)
