"""Figures as PNG files: image grids, influence-map grids, hybrid panels, the
K-selection curve of the clustering (`plot_stability_curve`).

Matplotlib is used through the object API with the Agg canvas (no display, no
global backend change). Every file is written atomically (`cfmod_jax.fileio.atomic_path`:
a temporary file in the same folder, renamed over the destination), so a killed
job never leaves a half-written PNG; and without varying metadata (`PNG_METADATA`),
so the same figure gives the same bytes on every run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.patches
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from cfmod_jax.fileio import atomic_path

__all__ = [
  "colorize_maps",
  "grid_panel",
  "new_figure",
  "plot_stability_curve",
  "save_figure",
  "save_image_grid",
  "save_map_grid",
  "save_rgb",
  "tile",
  "to_unit",
]

# PNG text chunks: none that change between runs or installs (matplotlib writes
# its version as "Software" by default).
PNG_METADATA = {"Software": None}


def tile(images: np.ndarray, ncols: int, pad: int = 2, fill: float = 1.0) -> np.ndarray:
  """Tiles ``[N, H, W, C]`` into one ``[rows·(H+pad)−pad, cols·(W+pad)−pad, C]`` array."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncols = max(1, min(ncols, n))
  nrows = -(-n // ncols)
  padded = np.full((nrows * ncols, h + pad, w + pad, c), fill, images.dtype)
  padded[:n, :h, :w] = images
  grid = padded.reshape(nrows, ncols, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4)
  grid = grid.reshape(nrows * (h + pad), ncols * (w + pad), c)
  return grid[: -pad or None, : -pad or None]


def to_unit(images: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] → float32 in [0, 1]."""
  return np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _ensure_dir(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def grid_panel(originals: ArrayLike, donors: ArrayLike, cells: ArrayLike) -> np.ndarray:
  """Lays out a hybrid grid (the paper's figure for one module).

  Args:
    originals: ``[R, H, W, 3]`` images of the originals (down the left).
    donors: ``[D, H, W, 3]`` images of the donors (across the top).
    cells: ``[R, D, H, W, 3]`` hybrids, e.g. one mask of
      `cfmod_jax.interventions.hybrid_grid`.
  All in [-1, 1]. Returns an RGB image in [0, 1] (blank top-left corner).
  """
  originals, donors, cells = (to_unit(np.asarray(a)) for a in (originals, donors, cells))
  r, d = cells.shape[:2]
  blank = np.ones((1, *cells.shape[2:]), np.float32)
  rows = [np.concatenate([blank, donors])]
  rows += [np.concatenate([originals[i : i + 1], cells[i]]) for i in range(r)]
  return tile(np.concatenate(rows), d + 1, pad=3)


def save_image_grid(path: str, images: ArrayLike, ncols: int = 8) -> str:
  """Writes images ``[N, H, W, 3]`` in [-1, 1] as one PNG grid."""
  _ensure_dir(path)
  with atomic_path(path) as tmp:
    matplotlib.image.imsave(tmp, tile(to_unit(images), ncols), format="png", metadata=PNG_METADATA)
  return path


def colorize_maps(maps: ArrayLike, normalize: str = "each", cmap: str = "inferno") -> np.ndarray:
  """Maps ``[K, H, W] ≥ 0`` → RGB ``[K, H, W, 3]`` in [0, 1].

  ``normalize='each'`` scales every map to its own maximum (shows *where* a
  channel acts); ``'global'`` uses one scale (shows *how much*).
  """
  maps = np.asarray(maps, np.float32)
  if normalize == "each":
    scale = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
  elif normalize == "global":
    scale = np.full((len(maps), 1, 1), maps.max())
  else:
    raise ValueError(f"normalize must be 'each' or 'global', got {normalize!r}")
  unit = maps / np.where(scale > 0, scale, 1.0)
  return matplotlib.colormaps[cmap](unit)[..., :3].astype(np.float32)


def save_map_grid(
  path: str,
  maps: ArrayLike,
  ncols: int | None = None,
  normalize: str = "each",
  labels: Sequence[int] | None = None,
  titles: Sequence[str] | None = None,
  colorbar_label: str | None = None,
  title: str | None = None,
  cmap: str = "inferno",
) -> str:
  """Writes influence maps ``[K, H, W] ≥ 0`` as a PNG grid with a colour bar.

  Args:
    path: PNG file to write.
    maps: ``[K, H, W]`` non-negative maps, one tile each.
    ncols: tiles per row (default: about √K).
    normalize: ``'each'`` scales every tile to its own maximum (the colour bar runs
      from 0 to 1 = "the tile's maximum"); ``'global'`` uses one scale for all tiles
      (the colour bar is in the maps' own units).
    labels: optional module of each map: tiles are ordered by module, a coloured
      strip under each tile marks its module, and a legend names the colours.
    titles: optional text above each tile (e.g. ``"module 0 · 12 ch"``), in the
      order of ``maps``.
    colorbar_label: text beside the colour bar (a default names the normalisation).
    title: optional figure title.
  """
  maps = np.asarray(maps, np.float32)
  if maps.ndim != 3 or len(maps) == 0:
    raise ValueError(f"maps must have shape [K, H, W] with K ≥ 1, got {maps.shape}")
  if titles is not None and len(titles) != len(maps):
    raise ValueError(f"titles must have one entry per map ({len(maps)}), got {len(titles)}")
  rgb = colorize_maps(maps, normalize, cmap)
  h, w = maps.shape[1:]
  order = np.arange(len(maps))
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(maps),):
      raise ValueError(
        f"labels must have shape [{len(maps)}] (one module per map), got {labels.shape}"
      )
    order = np.argsort(labels, kind="stable")
    colours = _module_colours(labels[order])
    strip = max(2, h // 16)
    bar = np.broadcast_to(colours[:, None, None, :], (len(maps), strip, w, 3))
    rgb = np.concatenate([rgb[order], bar], axis=1)
  n = len(rgb)
  ncols = max(1, min(n, ncols or int(np.ceil(np.sqrt(n)))))
  nrows = -(-n // ncols)
  pad = 2
  grid = tile(rgb, ncols, pad=pad)
  tile_h, tile_w = rgb.shape[1] + pad, w + pad
  # About 1.4 inch per tile for a few maps, less for many (EIMs of hundreds of channels).
  per = 1.6 if n <= 8 else max(0.45, 10.0 / ncols)
  title_space = 0.3 if titles is not None else 0.0
  width = max(5.0, per * ncols + 1.6)
  fs = max(1.0, width / 6.5)  # large grids are shown shrunk to page width: larger text
  fig = new_figure(
    width,
    per * nrows * tile_h / tile_w
    + 0.5
    + title_space
    + (0.35 if title else 0.0)
    + (0.25 * (1 + len(set(labels.tolist())) // 6) if labels is not None else 0.0),
  )
  ax = fig.add_subplot(1, 1, 1)
  ax.imshow(grid, interpolation="nearest")
  ax.set_axis_off()
  if titles is not None:
    for i, j in enumerate(order):
      r, c = divmod(i, ncols)
      ax.text(
        c * tile_w + w / 2, r * tile_h - 1, titles[j], ha="center", va="bottom", fontsize=9 * fs
      )
  if title:
    ax.set_title(title, fontsize=10 * fs, pad=16 if titles is not None else 6)
  if normalize == "each":
    norm = matplotlib.colors.Normalize(0.0, 1.0)
    default_label = "fraction of the tile's own maximum"
  else:
    norm = matplotlib.colors.Normalize(0.0, float(maps.max()) or 1.0)
    default_label = "mean |Δ pixel| (one scale for all tiles)"
  mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
  cbar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02)
  cbar.set_label(colorbar_label or default_label, fontsize=8 * fs)
  cbar.ax.tick_params(labelsize=7 * fs)
  if labels is not None:
    mods, counts = np.unique(labels, return_counts=True)
    handles = [
      matplotlib.patches.Patch(
        color=_module_colours(np.array([m]))[0], label=f"module {m} ({c} ch)"
      )
      for m, c in zip(mods, counts)
    ]
    ax.legend(
      handles=handles,
      loc="upper center",
      bbox_to_anchor=(0.5, 0.0),
      ncol=min(len(handles), 6),
      fontsize=8 * fs,
      frameon=False,
      title="strip under each tile = module of the channel",
      title_fontsize=8 * fs,
    )
  return save_figure(fig, path)


def _module_colours(labels: np.ndarray) -> np.ndarray:
  """RGB colour [N, 3] of each module index (tab10, cycling)."""
  return matplotlib.colormaps["tab10"](np.asarray(labels) % 10)[:, :3]


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
  """Writes ``fig`` to ``path`` (PNG unless the extension names another format),
  atomically; PNGs without varying metadata."""
  _ensure_dir(path)
  FigureCanvasAgg(fig)
  png = os.path.splitext(path)[1].lower() in ("", ".png")
  with atomic_path(path) as tmp:
    fig.savefig(
      tmp,
      dpi=dpi,
      bbox_inches="tight",
      **(dict(format="png", metadata=PNG_METADATA) if png else {}),
    )
  return path


def new_figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height))


def save_rgb(path: str, image: ArrayLike) -> str:
  """Writes an RGB image ``[H, W, 3]`` in [0, 1] as PNG."""
  _ensure_dir(path)
  with atomic_path(path) as tmp:
    matplotlib.image.imsave(
      tmp, np.clip(np.asarray(image), 0.0, 1.0), format="png", metadata=PNG_METADATA
    )
  return path


# ---- clustering ---------------------------------------------------------------------------
def plot_stability_curve(
  curve: Mapping[int, tuple[float, float]],
  path: str | os.PathLike,
  k_best: int | None = None,
  title: str | None = None,
  silhouette: Mapping[int, tuple[float, float]] | None = None,
) -> str:
  """Write the K-selection curve of `cfmod_jax.clustering` (template stability,
  mean +- std against k) as a PNG file; returns path.

  ``curve`` is the dict k -> (mean, std) of `clustering.stability_curve` or
  `clustering.choose_k`; ``k_best`` (optional) is marked with a vertical line;
  ``silhouette`` (optional, the "silhouette" curve of `clustering.selection_curves`)
  is drawn on a second y axis. Unlike the other figures of this module the file is
  written in place with matplotlib's default PNG metadata (wrap the call in
  `fileio.atomic_path`, as the main job does, for an atomic write).
  """
  if not curve:
    raise ValueError("curve must be a non-empty dict k -> (mean, std)")
  ks = sorted(int(k) for k in curve)
  means = np.array([curve[k][0] for k in ks], dtype=float)
  stds = np.array([curve[k][1] for k in ks], dtype=float)
  fig = Figure(figsize=(4.5, 3.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label="stability")
  handles = []
  if silhouette:
    sk = sorted(int(k) for k in silhouette)
    ax2 = ax.twinx()
    handles.append(
      ax2.errorbar(
        sk,
        [silhouette[k][0] for k in sk],
        yerr=[silhouette[k][1] for k in sk],
        marker="s",
        capsize=3,
        color="tab:green",
        label="silhouette",
      )
    )
    ax2.set_ylabel("cosine silhouette")
  if k_best is not None:
    ax.axvline(int(k_best), color="tab:red", linestyle="--", label=f"K={k_best}")
  if k_best is not None or silhouette:
    h, labels = ax.get_legend_handles_labels()
    ax.legend(h + handles, labels + [x.get_label() for x in handles], loc="lower left")
  ax.set_xticks(ks)
  ax.set_xlabel("number of modules K")
  ax.set_ylabel("template cosine similarity")
  ax.set_title(title or "K selection across bootstrap resamples")
  fig.tight_layout()
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, format="png")
  return path
