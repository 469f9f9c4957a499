"""Procedural 64x64 cartoon faces with ground-truth factors and part maps.

This is the default, embedded dataset: no download, deterministic by seed, and
every image comes with

* the factor values it was rendered from (``factors``: a dict of arrays), and
* a per-pixel part map (``parts``: int8 ``[N, 64, 64]``) with labels
  ``0=background, 1=hair, 2=skin, 3=eyes, 4=mouth`` (see ``PART_NAMES``).

Factors are sampled independently (see ``FACTOR_SPECS``):

==================  ===========================================  ==========
factor              values                                       part
==================  ===========================================  ==========
bg_color            float32 [N, 3], RGB in [0.2, 0.8]            background
bg_gradient_dir     int, 0 = vertical, 1 = horizontal            background
bg_gradient         float32 in [-0.2, 0.2] (gradient amplitude)  background
skin_tone           float32 in [0, 1] (light -> dark)            skin
hair_color          int in [0, 6), index into HAIR_PALETTE       hair
hair_style          int, 0 = short, 1 = long, 2 = bun            hair
hairline            float32 in [8, 12] px above the face centre  hair
eye_color           int in [0, 5), index into EYE_PALETTE        eyes
eye_size            float32 in [1.8, 3.2] px (iris radius)       eyes
eye_spacing         float32 in [5, 8] px (half distance)         eyes
mouth_shape         int, 0 = smile, 1 = frown, 2 = open          mouth
mouth_width         float32 in [4, 8] px (half width)            mouth
face_x, face_y      float32 jitter in px (+-3, +-2)              all
face_scale          float32 in [0.9, 1.1]                        all
==================  ===========================================  ==========

Rendering is analytic: every shape is a signed distance ``d`` (in pixels,
negative inside) on the pixel-centre grid, its coverage is
``alpha = clip(0.5 - d, 0, 1)`` (a one-pixel anti-aliased edge) and layers are
composited back to front: background, long hair, skin (face, ears, neck),
front hair (cap and bun), eyes, mouth.  A pixel's part label is the front-most
layer with ``alpha >= 0.5``.  Colours are flat per part, except the background
which is ``bg_color + bg_gradient * t`` with ``t = (coord - 31.5) / 31.5`` along
rows (vertical) or columns (horizontal); see ``part_colors``.  Everything is
vectorised with numpy over samples (chunks of ``_CHUNK`` samples).

Locality: changing a non-geometric factor (colours, hair style/hairline, eye
size/spacing, mouth shape/width) changes pixels only where the old or new part
map carries that factor's part (``FACTOR_PARTS``), plus a 1-px anti-aliased
rim; where three soft edges meet (hairline, face edge, background) a faint
(<= 2.5% of the range) background leak can reach 2 px.  Pixels whose 3x3
neighbourhood has a single label have exactly their part's colour.

Run ``python -m experiments.synthfaces --out docs/synthfaces_grid.png`` to
write an 8x8 sample grid (`save_sample_grid`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

SIZE = 64
PART_NAMES = ("background", "hair", "skin", "eyes", "mouth")
BACKGROUND, HAIR, SKIN, EYES, MOUTH = range(len(PART_NAMES))

HAIR_PALETTE = np.array(
  [
    [0.10, 0.08, 0.07],  # black
    [0.40, 0.24, 0.12],  # brown
    [0.92, 0.80, 0.45],  # blonde
    [0.72, 0.28, 0.10],  # red
    [0.72, 0.72, 0.75],  # grey
    [0.20, 0.35, 0.80],  # blue
  ],
  np.float32,
)
EYE_PALETTE = np.array(
  [
    [0.35, 0.20, 0.08],  # brown
    [0.20, 0.45, 0.90],  # blue
    [0.15, 0.60, 0.30],  # green
    [0.50, 0.55, 0.60],  # grey
    [0.05, 0.05, 0.05],  # black
  ],
  np.float32,
)
SKIN_LIGHT = np.array([0.98, 0.86, 0.74], np.float32)
SKIN_DARK = np.array([0.45, 0.29, 0.20], np.float32)
MOUTH_COLOR = np.array([0.62, 0.10, 0.16], np.float32)

HAIR_STYLES = ("short", "long", "bun")
MOUTH_SHAPES = ("smile", "frown", "open")
GRADIENT_DIRS = ("vertical", "horizontal")

# name -> ("uniform", low, high, shape) or ("categorical", n_values); the order
# is the sampling order.
FACTOR_SPECS: dict[str, tuple] = {
  "bg_color": ("uniform", 0.2, 0.8, (3,)),
  "bg_gradient_dir": ("categorical", len(GRADIENT_DIRS)),
  "bg_gradient": ("uniform", -0.2, 0.2, ()),
  "skin_tone": ("uniform", 0.0, 1.0, ()),
  "hair_color": ("categorical", len(HAIR_PALETTE)),
  "hair_style": ("categorical", len(HAIR_STYLES)),
  "hairline": ("uniform", 8.0, 12.0, ()),
  "eye_color": ("categorical", len(EYE_PALETTE)),
  "eye_size": ("uniform", 1.8, 3.2, ()),
  "eye_spacing": ("uniform", 5.0, 8.0, ()),
  "mouth_shape": ("categorical", len(MOUTH_SHAPES)),
  "mouth_width": ("uniform", 4.0, 8.0, ()),
  "face_x": ("uniform", -3.0, 3.0, ()),
  "face_y": ("uniform", -2.0, 2.0, ()),
  "face_scale": ("uniform", 0.9, 1.1, ()),
}
ALL_PARTS = tuple(range(len(PART_NAMES)))
# Parts whose pixels a factor can change (geometry factors move everything).
FACTOR_PARTS: dict[str, tuple[int, ...]] = {
  "bg_color": (BACKGROUND,),
  "bg_gradient_dir": (BACKGROUND,),
  "bg_gradient": (BACKGROUND,),
  "skin_tone": (SKIN,),
  "hair_color": (HAIR,),
  "hair_style": (HAIR,),
  "hairline": (HAIR,),
  "eye_color": (EYES,),
  "eye_size": (EYES,),
  "eye_spacing": (EYES,),
  "mouth_shape": (MOUTH,),
  "mouth_width": (MOUTH,),
  "face_x": ALL_PARTS,
  "face_y": ALL_PARTS,
  "face_scale": ALL_PARTS,
}

_CHUNK = 256  # samples rendered at once (keeps temporaries ~4 MB)
_FACE_CY = 35.0  # face centre row before jitter
_FACE_CX = 31.5  # face centre column before jitter


class SynthFaces(NamedTuple):
  """A batch of synthetic faces.

  images: float32 [N, 64, 64, 3] in [-1, 1] (NHWC).
  parts: int8 [N, 64, 64], labels indexing ``PART_NAMES``.
  factors: dict name -> array with leading dim N (see ``FACTOR_SPECS``).
  """

  images: np.ndarray
  parts: np.ndarray
  factors: dict[str, np.ndarray]


# ---------------------------------------------------------------- sampling


def sample_factors(n: int, seed: int | Sequence[int] = 0) -> dict[str, np.ndarray]:
  """Samples ``n`` independent factor sets; float32 / int32 arrays of length n.

  Each factor has its own random stream, so the first k samples do not depend
  on n: ``sample_factors(n, s)[f][:k] == sample_factors(k, s)[f]``.
  """
  streams = np.random.SeedSequence(seed).spawn(len(FACTOR_SPECS))
  out = {}
  for (name, spec), stream in zip(FACTOR_SPECS.items(), streams):
    rng = np.random.default_rng(stream)
    if spec[0] == "uniform":
      _, lo, hi, shape = spec
      out[name] = rng.uniform(lo, hi, (n, *shape)).astype(np.float32)
    else:
      out[name] = rng.integers(0, spec[1], n).astype(np.int32)
  return out


# --------------------------------------------------------- distance fields


def _alpha(d: np.ndarray) -> np.ndarray:
  """Coverage of a shape from its signed distance (px): 1-px soft edge."""
  return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse(dx, dy, a, b):
  """Approximate signed distance (px) to an axis-aligned ellipse.

  ``f / |grad f|`` with ``f = (dx/a)^2 + (dy/b)^2 - 1``: exact sign, accurate
  near the boundary (which is all the anti-aliasing needs).
  """
  ux, uy = dx / (a * a), dy / (b * b)
  f = dx * ux + dy * uy - 1.0
  return f / np.maximum(2.0 * np.sqrt(ux * ux + uy * uy), 1e-6)


def _intersect(d1, d2):
  """Signed distance to the intersection of two shapes, with the exterior
  distance near a corner estimated as for a right angle (not underestimated
  as much as by ``max(d1, d2)``)."""
  outside = np.sqrt(np.maximum(d1, 0) ** 2 + np.maximum(d2, 0) ** 2)
  return np.where((d1 > 0) & (d2 > 0), outside, np.maximum(d1, d2))


def _box(dx, dy, hw, top, bottom):
  """Signed distance (Chebyshev-style) to {|dx| <= hw, top <= dy <= bottom}."""
  return np.maximum(np.abs(dx) - hw, np.maximum(top - dy, dy - bottom))


def _arc(dx, dy, w, h, t):
  """Exact signed distance to a stroke (half-thickness t) along a circular arc.

  The arc is the lower part (dy > 0 is down) of the circle through (+-w, -h/2)
  and (0, h/2), spanning |dx| <= w; its ends are rounded.
  """
  radius = (w * w + h * h) / (2 * h)
  vy = dy - (h / 2 - radius)  # relative to the circle centre (above the arc)
  ax = np.abs(dx)
  ey = radius - h  # endpoint (w, ey) relative to the centre
  inside_sector = vy * w > ax * ey
  ring = np.abs(np.sqrt(ax * ax + vy * vy) - radius)
  cap = np.sqrt((ax - w) ** 2 + (vy - ey) ** 2)
  return np.where(inside_sector, ring, cap) - t


# --------------------------------------------------------------- rendering


def part_colors(factors: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
  """Flat RGB colours in [0, 1] of the non-background parts: part -> [N, 3]."""
  tone = np.asarray(factors["skin_tone"], np.float32)[:, None]
  n = len(tone)
  return {
    HAIR: HAIR_PALETTE[np.asarray(factors["hair_color"])],
    SKIN: (1.0 - tone) * SKIN_LIGHT + tone * SKIN_DARK,
    EYES: EYE_PALETTE[np.asarray(factors["eye_color"])],
    MOUTH: np.broadcast_to(MOUTH_COLOR, (n, 3)),
  }


def background(factors: dict[str, np.ndarray], size: int = SIZE) -> np.ndarray:
  """Background colour field, float32 [N, size, size, 3] in [0, 1]."""
  return np.moveaxis(_background_nchw(factors, size), 1, -1)


def _background_nchw(factors, size):
  """Background colour field, float32 [N, 3, size, size]."""
  t = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / ((size - 1) / 2)
  vertical = np.asarray(factors["bg_gradient_dir"]) == 0
  ramp = np.where(vertical[:, None, None], t[None, :, None], t[None, None, :])
  amp = np.asarray(factors["bg_gradient"], np.float32)
  color = np.asarray(factors["bg_color"], np.float32)
  field = color[:, :, None, None] + (amp[:, None, None] * ramp)[:, None]
  return field.astype(np.float32)


def _layers(f: dict[str, np.ndarray], size: int):
  """Yields (part, rows, alpha [n, len(rows), size]) back to front for one chunk.

  ``rows`` is a slice; alpha is zero outside it.
  """
  n = len(f["face_scale"])
  s = f["face_scale"][:, None, None]
  cx = (_FACE_CX + f["face_x"])[:, None, None]
  cy = (_FACE_CY + f["face_y"])[:, None, None]
  grid = np.arange(size, dtype=np.float32)
  dx = grid[None, None, :] - cx  # [n, 1, W]
  dy = grid[None, :, None] - cy  # [n, H, 1]
  style = f["hair_style"]

  # Long hair, behind the head: an ellipse plus a curtain down to the shoulders,
  # 2 px wider than the ears so that no sub-pixel sliver of hair shows beside them.
  back = np.full((n, size, size), np.inf, np.float32)
  long_ = style == 1
  if long_.any():
    i = long_
    back[i] = np.minimum(
      _ellipse(dx[i], dy[i] + 2 * s[i], 20 * s[i], 21 * s[i]),
      _box(dx[i], dy[i], 20 * s[i], -2 * s[i], 24 * s[i]),
    )
  yield HAIR, slice(0, size), _alpha(back)

  # Hairline: a parabola (dy as a function of dx); ``below`` > 0 under it.
  c = np.float32(0.006)
  hl = -f["hairline"][:, None, None] * s + c * dx * dx
  below = (dy - hl) / np.sqrt(1.0 + (2.0 * c * dx) ** 2)

  # Skin: face ellipse, ears (kept 1.5 px below the hairline so that no skin
  # hides under the hair cap's soft edge), neck.
  ears = np.maximum(_ellipse(np.abs(dx) - 15 * s, dy - 1.5 * s, 3 * s, 4.5 * s), 1.5 - below)
  skin = np.minimum(
    _ellipse(dx, dy, 15 * s, 19 * s),
    np.minimum(ears, _box(dx, dy, 6.5 * s, 10 * s, np.float32(size))),
  )
  yield SKIN, slice(0, size), _alpha(skin)

  # Front hair: cap above the hairline (+ a bun on top for style 2).
  cap = _intersect(_ellipse(dx, dy + 2 * s, 17.5 * s, 20 * s), below)
  bun = style == 2
  if bun.any():
    i = bun
    cap[i] = np.minimum(cap[i], _ellipse(dx[i], dy[i] + 22 * s[i], 7 * s[i], 6.5 * s[i]))
  yield HAIR, slice(0, size), _alpha(cap)

  # Eyes and mouth are small: compute them on a row band only.
  r = f["eye_size"][:, None, None] * s
  ey = -1.0 * s
  yield (
    EYES,
    *_banded(
      size,
      cy + ey,
      1.2 * r,
      lambda sl: _ellipse(
        np.abs(dx) - f["eye_spacing"][:, None, None] * s, dy[:, sl] - ey, r, 1.2 * r
      ),
    ),
  )

  w = f["mouth_width"][:, None, None] * s
  my = 9.0 * s
  shape = f["mouth_shape"][:, None, None]

  def mouth(sl):
    ddy = dy[:, sl] - my
    frown = shape == 1
    # Smile: lower arc of a circle through (+-w, -h/2) and (0, h/2); frown: flipped.
    arc = _arc(dx, np.where(frown, -ddy, ddy), w, 0.45 * w, 1.0 * s)
    return np.where(shape == 2, _ellipse(dx, ddy, 0.75 * w, 2.6 * s), arc)

  yield MOUTH, *_banded(size, cy + my, 2.6 * s + 0.2 * w, mouth)


def _banded(size, center, half_height, sdf_fn):
  """(rows, alpha [n, len(rows), size]) of a shape within rows center +- half_height."""
  lo = int(np.clip(np.floor(np.min(center - half_height)) - 2, 0, size))
  hi = int(np.clip(np.ceil(np.max(center + half_height)) + 3, lo, size))
  rows = slice(lo, hi)
  return rows, _alpha(sdf_fn(rows))


def _render_chunk(f: dict[str, np.ndarray], size: int):
  """Composites one chunk: (float32 [n, 3, H, W] in [0, 1], int8 [n, H, W])."""
  img = _background_nchw(f, size)  # channel-first: contiguous rows, fast broadcasts
  parts = np.zeros((img.shape[0], size, size), np.int8)
  colors = part_colors(f)
  for part, rows, a in _layers(f, size):
    view = img[:, :, rows]
    a = a[:, None]
    view *= 1.0 - a
    view += a * colors[part][:, :, None, None]
    np.copyto(parts[:, rows], np.int8(part), where=a[:, 0] >= 0.5)
  return img, parts


def render(factors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Renders faces from explicit factor values (dict of length-N arrays, any values).

  Returns (images float32 [N, 64, 64, 3], in [-1, 1] for factors within the
  ``FACTOR_SPECS`` ranges, parts int8 [N, 64, 64]).
  """
  size = SIZE
  f = {
    k: np.asarray(factors[k], np.float32 if FACTOR_SPECS[k][0] == "uniform" else np.int32)
    for k in FACTOR_SPECS
  }
  n = len(f["face_scale"])
  images = np.empty((n, size, size, 3), np.float32)
  parts = np.empty((n, size, size), np.int8)
  for start in range(0, n, _CHUNK):
    chunk = {k: v[start : start + _CHUNK] for k, v in f.items()}
    img, p = _render_chunk(chunk, size)
    images[start : start + _CHUNK] = np.moveaxis(img, 1, -1) * 2.0 - 1.0
    parts[start : start + _CHUNK] = p
  return images, parts


def generate(n: int, seed: int | Sequence[int] = 0) -> SynthFaces:
  """Samples and renders ``n`` faces; same seed -> bitwise identical output."""
  factors = sample_factors(n, seed)
  images, parts = render(factors)
  return SynthFaces(images, parts, factors)


def iterate_batches(
  batch_size: int, seed: int = 0, start_step: int = 0, images_only: bool = True
) -> Iterator[np.ndarray] | Iterator[SynthFaces]:
  """Infinite batches; batch ``step`` is ``generate(batch_size, seed=(seed, step))``.

  Yields float32 [B, 64, 64, 3] images, or full ``SynthFaces`` if not images_only.
  """
  step = start_step
  while True:
    batch = generate(batch_size, seed=(seed, step))
    yield batch.images if images_only else batch
    step += 1


# ------------------------------------------------------------------ parts


def part_masks(parts: np.ndarray) -> np.ndarray:
  """One-hot part masks: int [N, H, W] -> bool [P, N, H, W], P = len(PART_NAMES)."""
  labels = np.arange(len(PART_NAMES)).reshape(-1, *([1] * parts.ndim))
  return parts[None] == labels


@functools.lru_cache(maxsize=4)
def _part_prior(n: int, seed: int) -> np.ndarray:
  total = np.zeros((len(PART_NAMES), SIZE, SIZE), np.float64)
  for start in range(0, n, 4096):
    _, parts = render(sample_factors(min(4096, n - start), (seed, start)))
    total += part_masks(parts).sum(axis=1)
  return (total / n).astype(np.float32)


def part_prior(n: int = 10000, seed: int = 0) -> np.ndarray:
  """Mean part probability maps, float32 [P, 64, 64]; sums to 1 over P."""
  return _part_prior(n, seed).copy()


FACE_REGION_NAMES = ("background", "hair", "face")


def face_regions(n: int = 10000, seed: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
  """Coarser part maps: ``(float32 [3, 64, 64], FACE_REGION_NAMES)`` — background,
  hair, face (skin + eyes + mouth) of `part_prior`; they sum to 1 over the 3."""
  p = part_prior(n, seed)
  face = p[SKIN] + p[EYES] + p[MOUTH]
  return np.stack([p[BACKGROUND], p[HAIR], face]), FACE_REGION_NAMES


# ------------------------------------------------------------------- grid


def tile_images(images: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
  """Tiles [N, H, W, C] images in [-1, 1] into one float array in [0, 1] (white gaps)."""
  from cfmod_jax import viz

  return viz.tile(viz.to_unit(images), ncols, pad)


def save_sample_grid(path: str, n: int = 64, seed: int = 0, ncols: int = 8) -> None:
  """Writes a PNG grid of ``n`` sample faces to ``path``."""
  import matplotlib.image

  matplotlib.image.imsave(path, tile_images(generate(n, seed).images, ncols))


def uses_synthfaces_parts(gen: object) -> bool:
  """True iff ``gen`` was trained on the synthetic faces (``gen.dataset ==
  'synthfaces'``, from its checkpoint), so that the faces' ground-truth part maps
  can score its modules (used by `cfmod_jax.analysis`)."""
  return getattr(gen, "dataset", None) == "synthfaces"


__all__ = [
  "uses_synthfaces_parts",
  "ALL_PARTS",
  "BACKGROUND",
  "EYES",
  "EYE_PALETTE",
  "FACE_REGION_NAMES",
  "FACTOR_PARTS",
  "FACTOR_SPECS",
  "GRADIENT_DIRS",
  "HAIR",
  "HAIR_PALETTE",
  "HAIR_STYLES",
  "MOUTH",
  "MOUTH_COLOR",
  "MOUTH_SHAPES",
  "PART_NAMES",
  "SIZE",
  "SKIN",
  "SKIN_DARK",
  "SKIN_LIGHT",
  "SynthFaces",
  "background",
  "face_regions",
  "generate",
  "iterate_batches",
  "part_colors",
  "part_masks",
  "part_prior",
  "render",
  "sample_factors",
  "save_sample_grid",
  "tile_images",
]
