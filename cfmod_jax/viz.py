"""Figures as PNG files: image grids, influence-map grids, hybrid panels.

Matplotlib is used through the object API with the Agg canvas (no display, no
global backend change).
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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
  return grid[:-pad or None, :-pad or None]


def to_unit(images: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] → float32 in [0, 1]."""
  return np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _ensure_dir(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def save_image_grid(path: str, images, ncols: int = 8) -> str:
  """Writes images ``[N, H, W, 3]`` in [-1, 1] as one PNG grid."""
  _ensure_dir(path)
  matplotlib.image.imsave(path, tile(to_unit(images), ncols))
  return path


def colorize_maps(maps, normalize: str = "each", cmap: str = "inferno") -> np.ndarray:
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


def save_map_grid(path: str, maps, ncols: int | None = None, normalize: str = "each",
                  labels: Sequence[int] | None = None) -> str:
  """Writes influence maps ``[K, H, W]`` as a PNG grid (one tile per map).

  With ``labels`` (module of each map), maps are ordered by module and a
  coloured bar under each tile marks its module.
  """
  maps = np.asarray(maps)
  rgb = colorize_maps(maps, normalize)
  if labels is not None:
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    rgb, labels = rgb[order], labels[order]
    colours = matplotlib.colormaps["tab10"](labels % 10)[:, :3]
    bar = np.broadcast_to(colours[:, None, None, :], (len(rgb), 4, rgb.shape[2], 3))
    rgb = np.concatenate([rgb, bar], axis=1)
  ncols = ncols or int(np.ceil(np.sqrt(len(rgb))))
  _ensure_dir(path)
  matplotlib.image.imsave(path, tile(rgb, ncols))
  return path


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
  _ensure_dir(path)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  return path


def new_figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height))


def save_rgb(path: str, image) -> str:
  """Writes an RGB image ``[H, W, 3]`` in [0, 1] as PNG."""
  _ensure_dir(path)
  matplotlib.image.imsave(path, np.clip(np.asarray(image), 0.0, 1.0))
  return path
