"""Figures of the applications: the factor-transfer share matrix (main job and
`lab.factors`) and the robustness bars (`lab.robustness`), as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax import viz

if TYPE_CHECKING:
  from cfmod_jax.lab.robustness import RobustnessResult, SiteResult

__all__ = ["plot_factor_matrix", "plot_robustness"]


def plot_factor_matrix(
  path: str,
  matrix: ArrayLike,
  module_names: Sequence[str],
  factor_names: Sequence[str],
  *,
  title: str | None = None,
) -> str:
  """Heatmap of a ``[M, F]`` share matrix (rows: modules, e.g. plus 'whole site';
  columns: factors), values written in the cells; NaN cells grey. Returns path."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  mat = np.asarray(matrix, np.float64)
  if mat.ndim != 2 or mat.shape != (len(module_names), len(factor_names)):
    raise ValueError(
      f"matrix must be [{len(module_names)}, {len(factor_names)}] (modules × "
      f"factors), got shape {mat.shape}"
    )
  fig = viz.new_figure(0.55 * mat.shape[1] + 2.0, 0.45 * mat.shape[0] + 1.8)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
  im = ax.imshow(np.ma.masked_invalid(mat), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
  for (i, j), v in np.ndenumerate(mat):
    if np.isfinite(v):
      ax.text(
        j,
        i,
        f"{v:.2f}",
        ha="center",
        va="center",
        fontsize=7,
        color="white" if v < 0.6 else "black",
      )
  ax.set_xticks(range(mat.shape[1]), factor_names, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(mat.shape[0]), module_names, fontsize=8)
  ax.set_title(title or "share of pairs whose hybrid follows the donor", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.04)
  return viz.save_figure(fig, path)


def plot_robustness(
  result: RobustnessResult, path: str, *, highlight_part: str | None = None
) -> str:
  """Bar plot PNG: keep rate (top) and confidence shift (bottom) per site and
  intervention, with standard-error bars and the chance keep rate as a line. With
  part maps, each module's bar is labelled with its part; ``highlight_part``
  (e.g. ``'hair'``) marks that part's module with ``*``."""
  sites = list(result.sites)
  names = sorted(
    {e.name for s in result.sites.values() for e in s.effects}, key=lambda n: (n == "all", n)
  )
  fig = viz.new_figure(max(6.0, 1.6 * len(sites) + 2), 6.0)
  ax_keep, ax_shift = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
  width = 0.8 / len(names)
  x = np.arange(len(sites))
  colours = {n: ("0.4" if n == "all" else f"C{i}") for i, n in enumerate(names)}
  for j, name in enumerate(names):
    found = [next((e for e in result.sites[s].effects if e.name == name), None) for s in sites]
    keep = [e.keep_rate if e else np.nan for e in found]
    keep_se = [e.keep_rate_se if e else 0 for e in found]
    shift = [e.confidence_shift if e else np.nan for e in found]
    shift_se = [e.confidence_shift_se if e else 0 for e in found]
    pos = x - 0.4 + width * (j + 0.5)
    ax_keep.bar(pos, keep, width, yerr=keep_se, color=colours[name], label=name)
    ax_shift.bar(pos, shift, width, yerr=shift_se, color=colours[name], label=name)
    for s_i, s in enumerate(sites):
      r = result.sites[s]
      if r.module_labels and name in r.module_labels:
        ax_keep.text(
          pos[s_i],
          0.02,
          r.module_labels[name] + ("*" if _is_part_module(r, highlight_part, name) else ""),
          rotation=90,
          ha="center",
          va="bottom",
          fontsize=7,
          color="w",
        )
  ax_keep.axhline(
    result.chance_keep_rate,
    color="k",
    ls="--",
    lw=1,
    label=f"chance ({result.chance_keep_rate:.2f})",
  )
  ax_keep.set_ylim(0, 1.05)
  ax_keep.set_ylabel("keep rate")
  ax_keep.set_title(
    f"{result.classifier} on hybrids of {result.generator} "
    f"(n={result.n_pairs} pairs, K={result.k})",
    fontsize=9,
  )
  ax_shift.axhline(0, color="k", lw=0.8)
  ax_shift.set_ylabel("confidence shift")
  for ax in (ax_keep, ax_shift):
    ax.set_xticks(x)
    ax.set_xticklabels(sites)
  ax_keep.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  if any(r.module_labels for r in result.sites.values()):
    ax_keep.text(
      1.01,
      0.0,
      "bar text: region with the\nlargest share/area of the\nmodule's influence"
      + (f";\n* = {highlight_part} module" if highlight_part else ""),
      transform=ax_keep.transAxes,
      fontsize=7,
      va="bottom",
    )
  return viz.save_figure(fig, path)


def _is_part_module(r: SiteResult, part: str | None, name: str) -> bool:
  return part is not None and (r.part_modules or {}).get(part) == name
