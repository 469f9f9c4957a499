"""What limits cfmod_jax at each site of the benchmark's DCGAN-64 (issue 12, part 2).

The benchmark's efficiency divides the *minimal* FLOPs by the float32 matmul peak.
That peak is reached only by large matrix products; every layer of the algorithm
has its own shape, and XLA:CPU runs some of them far below it. This module
measures, in one process, each piece of the minimal algorithm at the shape the
EIM sweep runs it:

- every transposed convolution of the generator (`cfmod_jax.ops.conv_transpose`,
  the sub-pixel form the model uses) at a flat batch of hybrids: GFLOP/s;
- the fully connected first stage;
- the per-channel contributions of the next stage (`ConvTranspose.per_channel`,
  the linear split's rank-1 deltas) plus the add to the pre-activation, BatchNorm
  and ReLU (one fused pass);
- the image-space pass every hybrid needs and the FLOP count leaves out:
  ``tanh``, ``|hybrid − G(z1)|`` summed over colours and the sum over pairs.

and predicts each site's time as the sum over its pieces of (work ÷ the piece's
measured rate): prefixes for z1 and z2, per hybrid the next stage's delta, the
later layers and the image pass. ``ceiling`` = compute floor ÷ this prediction is
the efficiency the site could reach if every piece ran as fast as it does alone;
the gap between the prediction and the benchmark's measured time is what chunking,
scheduling and memory traffic between the pieces cost.

Shapes are those of `benchmarks.workload.benchmark_generator` (DCGAN, 4×4 kernels,
stride 2, 'SAME'): the layer list is derived from ``width`` and the latent size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax import ops

#: Hybrids per timed call (pair chunk × channel chunk of the sweep's CPU defaults
#: is 32 × 16 = 512; the rates below change < 5 % between 128 and 512).
BATCH = 128


def dcgan_layers(width: int = 64, latent_dim: int = 100) -> list[dict[str, Any]]:
  """The generator's layers in order: the dense stage, then one transposed
  convolution per stage (input side H×H×C_in → 2H×2H×C_out). Stage i's output is
  site ``block{i+1}`` (the last stage's is the image)."""
  c0 = 8 * width
  layers = [{"name": "dense", "kind": "dense", "in": latent_dim, "out": 16 * c0, "hw": 1}]
  chans = [c0, c0 // 2, c0 // 4, c0 // 8, 3]
  for i in range(4):
    h = 4 * 2**i
    layers.append(
      {
        "name": f"convT{i + 1} {h}×{h}×{chans[i]} → {2 * h}×{2 * h}×{chans[i + 1]}",
        "kind": "convT",
        "hw": h,
        "in": chans[i],
        "out": chans[i + 1],
      }
    )
  for layer in layers:
    if layer["kind"] == "dense":
      layer["flops"] = 2.0 * layer["in"] * layer["out"]
    else:  # each input pixel meets 4×4 kernel taps of every output channel
      layer["flops"] = 2.0 * layer["hw"] ** 2 * layer["in"] * 16 * layer["out"]
  return layers


def _best_seconds(fn: Callable, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return float(best)


def matmul_gflops(n: int = 2048) -> float:
  """The benchmark's float32 matmul peak (`benchmarks.worker`), here in-process."""
  from benchmarks.worker import _matmul_gflops  # pylint: disable=protected-access

  return _matmul_gflops("jax", n)


def layer_rates(layers: list[dict[str, Any]], batch: int = BATCH) -> list[dict[str, Any]]:
  """GFLOP/s of each layer alone at ``batch`` images (BatchNorm/ReLU not included)."""
  key = jax.random.key(0)
  out = []
  for layer in layers:
    if layer["kind"] == "dense":
      x = jax.random.normal(key, (batch, layer["in"]))
      w = jax.random.normal(key, (layer["in"], layer["out"]))
      secs = _best_seconds(jax.jit(jnp.matmul), x, w)
    else:
      h, ci, co = layer["hw"], layer["in"], layer["out"]
      x = jax.random.normal(key, (batch, h, h, ci))
      k = 0.02 * jax.random.normal(key, (4, 4, ci, co))
      secs = _best_seconds(jax.jit(lambda x, k: ops.conv_transpose(x, k, (2, 2))), x, k)
    out.append({**layer, "batch": batch, "gflops": batch * layer["flops"] / secs / 1e9})
  return out


def delta_pass_seconds(layer: dict[str, Any], pairs: int = 8, chunk: int = 16) -> float:
  """Seconds per hybrid of the linear split at the site before ``layer``: each of
  ``chunk`` channels' contribution to ``layer`` (rank-1 deltas), added to the
  pre-activation of z1, then BatchNorm (scale/shift) and ReLU — one fused pass."""
  h, co = layer["hw"], layer["out"]
  key = jax.random.key(1)
  d = jax.random.normal(key, (pairs, h, h, chunk))
  k = 0.02 * jax.random.normal(key, (4, 4, chunk, co))
  pre1 = jax.random.normal(key, (pairs, 2 * h, 2 * h, co))
  scale, shift = jnp.ones(co), jnp.zeros(co)

  def body(d, k, pre1):
    y = pre1[None] + ops.conv_transpose_per_channel(d, k, (2, 2))
    return jax.nn.relu(y * scale + shift)

  return _best_seconds(jax.jit(body), d, k, pre1) / (pairs * chunk)


def image_pass_seconds(hw: int = 64, pairs: int = 32, chunk: int = 16) -> float:
  """Seconds per hybrid of tanh and the engine's own reduction of a chunk
  (`cfmod_jax._engine.influence_sums`: ``|hybrid − G(z1)|`` summed over colours and
  the weighted sum over pairs)."""
  from cfmod_jax._engine import influence_sums  # pylint: disable=g-import-not-at-top

  key = jax.random.key(2)
  y = jax.random.normal(key, (chunk, pairs, hw, hw, 3))
  x1 = jax.random.normal(key, (pairs, hw, hw, 3))
  w = jnp.ones((pairs, 1))
  body = lambda y, x1, w: influence_sums(None, x1, jnp.tanh(y), w)
  return _best_seconds(jax.jit(body), y, x1, w) / (pairs * chunk)


def site_predictions(
  rates: list[dict[str, Any]],
  delta_s: dict[int, float],
  image_s: float,
  n_pairs: int,
  peak_gflops: float,
  measured: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
  """Per site ``block{i}`` (the output of layer i−1): predicted seconds from the
  measured rates, the share of each piece, the compute floor (minimal FLOPs ÷
  peak), the efficiency ceiling and, when given, the benchmark's measured time."""
  out = []
  for i in range(1, len(rates)):
    nxt = rates[i]  # the stage after site block{i}
    channels = nxt["in"]
    hybrids = n_pairs * channels
    prefix = rates[:i]
    rest = rates[i + 1 :]
    pieces = {
      "prefixes (z1, z2)": 2 * n_pairs * sum(l["flops"] / (l["gflops"] * 1e9) for l in prefix)
      + n_pairs * nxt["flops"] / (nxt["gflops"] * 1e9),  # and the next stage of z1 once
      "next-stage deltas + BN/ReLU": hybrids * delta_s[i],
      **{l["name"]: hybrids * l["flops"] / (l["gflops"] * 1e9) for l in rest},
      "image pass (tanh, abs diff, sum over pairs)": hybrids * image_s,
    }
    minimal = (
      2 * n_pairs * sum(l["flops"] for l in prefix)
      + n_pairs * nxt["flops"]
      + hybrids * (nxt["flops"] / channels + sum(l["flops"] for l in rest))
    )
    predicted = sum(pieces.values())
    floor = minimal / (peak_gflops * 1e9)
    row = {
      "site": f"block{i}",
      "channels": channels,
      "hybrids": hybrids,
      "minimal_gflop": minimal / 1e9,
      "compute_floor_s": floor,
      "predicted_s": predicted,
      "pieces_s": pieces,
      "ceiling": floor / predicted,
      "largest_piece": max(pieces, key=pieces.get),
    }
    if measured and row["site"] in measured:
      row["measured_s"] = measured[row["site"]]
      row["efficiency"] = floor / measured[row["site"]]
      row["measured_over_predicted"] = measured[row["site"]] / predicted
    out.append(row)
  return out


def measure(
  width: int = 64,
  n_pairs: int = 64,
  measured: dict[str, float] | None = None,
  *,
  batch: int = BATCH,
  matmul_n: int = 2048,
) -> dict[str, Any]:
  """Everything above, in one process; JSON-ready. ``batch``: images per timed
  layer call and hybrids per timed pass (smaller only to test this quickly)."""
  layers = dcgan_layers(width)
  peak = matmul_gflops(matmul_n)
  rates = layer_rates(layers, batch)
  pairs = max(1, batch // 16)
  delta_s = {i: delta_pass_seconds(rates[i], pairs=pairs) for i in range(1, len(rates))}
  image_s = image_pass_seconds(pairs=max(1, batch // 4))
  return {
    "width": width,
    "n_pairs": n_pairs,
    "batch": batch,
    "peak_gflops": peak,
    "layers": [
      {k: l[k] for k in ("name", "flops", "batch", "gflops")} | {"of_peak": l["gflops"] / peak}
      for l in rates
    ],
    "delta_pass_us_per_hybrid": {f"block{i}": s * 1e6 for i, s in delta_s.items()},
    "image_pass_us_per_hybrid": image_s * 1e6,
    "sites": site_predictions(rates, delta_s, image_s, n_pairs, peak, measured),
  }


def markdown(result: dict[str, Any], source: str = "") -> str:
  """The tables of docs/benchmark/limits.md."""
  lines = [
    "# What limits cfmod_jax at each benchmark site",
    "",
    "Generated by `python -m studies.site_limits --benchmark "
    "docs/benchmark/benchmark.json --out docs/benchmark` (`benchmarks/limits.py`): each "
    "piece of the minimal EIM algorithm timed alone at the shape the sweep runs it, and "
    "each site's time predicted as the sum of (work ÷ that piece's rate). *Ceiling* = "
    "compute floor ÷ prediction: the efficiency a site would reach if every piece ran as "
    "fast as it does alone. Measured below the prediction (blocks 1–2) means the sweep's "
    "larger flat batches (512 hybrids) run those layers faster than the 128 used here.",
    "",
    f"Peak (float32 matmul, same process): {result['peak_gflops']:.0f} GFLOP/s. "
    f"Layers alone at {result['batch']} images:",
    "",
    "| layer | MFLOP per image | GFLOP/s | of peak |",
    "|---|---:|---:|---:|",
  ]
  for l in result["layers"]:
    lines.append(
      f"| {l['name']} | {l['flops'] / 1e6:.1f} | {l['gflops']:.0f} | {l['of_peak']:.2f} |"
    )
  lines += [
    "",
    f"Image pass (tanh, abs diff summed over colours, sum over pairs): "
    f"{result['image_pass_us_per_hybrid']:.1f} µs per hybrid; next-stage deltas + "
    "BN/ReLU (µs per hybrid): "
    + ", ".join(f"{s} {v:.1f}" for s, v in result["delta_pass_us_per_hybrid"].items())
    + ".",
    "",
    "| site | minimal GFLOP | compute floor s | predicted s (pieces at their own rates) "
    "| measured s | efficiency | ceiling (floor ÷ predicted) | largest piece |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
  ]
  for s in result["sites"]:
    meas = f"{s['measured_s']:.2f}" if "measured_s" in s else "—"
    eff = f"{s['efficiency']:.2f}" if "efficiency" in s else "—"
    big = s["largest_piece"]
    lines.append(
      f"| {s['site']} | {s['minimal_gflop']:.1f} | {s['compute_floor_s']:.3f} | "
      f"{s['predicted_s']:.3f} | {meas} | {eff} | {s['ceiling']:.2f} | "
      f"{big} ({s['pieces_s'][big] / s['predicted_s']:.0%}) |"
    )
  lines += ["", "Predicted seconds per piece:", ""]
  names = []
  for s in result["sites"]:
    names += [n for n in s["pieces_s"] if n not in names]
  order = ("prefixes", "next-stage", "convT", "image")  # pipeline order (JSON sorts keys)
  names.sort(key=lambda n: (next(i for i, p in enumerate(order) if n.startswith(p)), n))
  lines.append("| site | " + " | ".join(names) + " |")
  lines.append("|---|" + "---:|" * len(names))
  for s in result["sites"]:
    cells = [f"{s['pieces_s'][n]:.3f}" if n in s["pieces_s"] else "—" for n in names]
    lines.append(f"| {s['site']} | " + " | ".join(cells) + " |")
  if source:
    lines += ["", f"Measured times: {source}."]
  return "\n".join(lines) + "\n"


__all__ = [
  "BATCH",
  "dcgan_layers",
  "delta_pass_seconds",
  "image_pass_seconds",
  "layer_rates",
  "markdown",
  "matmul_gflops",
  "measure",
  "site_predictions",
]
