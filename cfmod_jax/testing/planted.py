"""Generators with a planted modular structure, to validate clustering settings.

A planted generator is a real two-stage Flax `StagedGenerator` (z -> site -> image)
whose site channels fall in known groups. Each group's *path* (a small non-linear
network from the group's channels to RGB) writes only inside the group's own
rectangular image region; a region may overlap its neighbours. Optional *noise
channels* write a channel-specific low-frequency texture over the whole image
(their influence is not region-specific) and belong to no group.

    z [N, D] --dense, tanh--> site "features" [N, S, S, C]
    image = tanh( sum_g M_g * tanh( W2_g relu( W1_g (gain_c * h_c)_{c in g} ) )
                  + a * sum_{noise c} T_c * tanh(2 mean_xy h_c) )

``M_g`` is region g's mask [H, W], ``W1_g``/``W2_g`` per-pixel (1x1) layers applied
after nearest upsampling of the site to the image size, ``gain_c`` a fixed spatial
gain map of channel c at site resolution (all ones without within-group variation,
otherwise ``1 - v + v * u_c`` with ``u_c`` uniform in [0, 1] per site cell) and
``T_c`` a fixed random smooth texture and ``a`` = ``noise_strength``. The structure (masks, gains, textures,
channel order) lives in the ``"planted"`` variable collection, the weights in
``"params"``; everything is drawn from ``seed``.

Use :func:`planted_generator` for a generator and its ground truth, and
:data:`VARIANTS` / :func:`variant` for the named test cases of
``studies/planted_suite.py``. Ground-truth labels are ``-1`` for noise
channels; :func:`score` compares a clustering with the truth on the grouped
channels only. :func:`run_case` / :func:`run_suite` run ``k=auto`` (choose K, cluster,
score) with given clustering settings, e.g. to validate your own settings::

    from cfmod_jax.testing import planted
    rows = planted.run_suite(["unequal", "mixed"], ["nmf"], range(3),
                             {"mine": {"sigma": 2.0, "percentile": 70.0}})
    print(rows[0])  # studies/planted_suite.py writes the tables (suite_markdown)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax.generator import Generator, StagedGenerator

__all__ = [
  "PlantedGenerator",
  "PlantedSpec",
  "PlantedTruth",
  "VARIANTS",
  "variant",
  "tiled_regions",
  "strip_regions",
  "region_masks",
  "planted_generator",
  "planted_eim_groups",
  "score",
  "SITE",
  "OLD_SETTINGS",
  "NEW_SETTINGS",
  "run_case",
  "run_suite",
]

#: Name of the single intervention site of a planted generator.
SITE = "features"

Rect = tuple[float, float, float, float]  # (y0, x0, y1, x1), fractions of the image


@dataclasses.dataclass(frozen=True)
class PlantedSpec:
  """Knobs of a planted generator.

  Attributes:
    group_sizes: channels per group (one group per region), e.g. ``(22, 14, 8, 4)``.
    regions: one rectangle ``(y0, x0, y1, x1)`` per group, in fractions of the image
      (see :func:`tiled_regions`, :func:`strip_regions`).
    n_noise: channels that belong to no group (whole-image random textures).
    variation: within-group variation v in [0, 1): each channel's input to its path
      is scaled by a fixed spatial gain ``1 - v + v * U(0, 1)`` per site cell.
    image_size: H = W of the image (a multiple of ``site_size``).
    site_size: spatial size S of the site.
    latent_dim: size of z.
    hidden: width of each group's path.
    noise_strength: amplitude of a noise channel's texture (relative to a path).
  """

  group_sizes: tuple[int, ...]
  regions: tuple[Rect, ...]
  n_noise: int = 0
  variation: float = 0.0
  image_size: int = 32
  site_size: int = 4
  latent_dim: int = 16
  hidden: int = 8
  noise_strength: float = 0.5

  def __post_init__(self):
    sizes = tuple(self.group_sizes)
    if len(sizes) < 1 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
      raise ValueError(f"group_sizes must be positive integers, got {self.group_sizes!r}")
    if len(self.regions) != len(sizes):
      raise ValueError(
        f"regions must give one rectangle per group ({len(sizes)}), got {len(self.regions)}"
      )
    for r in self.regions:
      y0, x0, y1, x1 = r
      if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise ValueError(
          f"regions: each must be (y0, x0, y1, x1) with 0 <= y0 < y1 <= 1 "
          f"and 0 <= x0 < x1 <= 1, got {r!r}"
        )
    if self.n_noise < 0:
      raise ValueError(f"n_noise must be >= 0, got {self.n_noise}")
    if not 0 <= self.variation < 1:
      raise ValueError(f"variation must be in [0, 1), got {self.variation}")
    if self.image_size % self.site_size:
      raise ValueError(
        f"image_size={self.image_size} must be a multiple of site_size={self.site_size}"
      )

  @property
  def n_channels(self) -> int:
    return int(sum(self.group_sizes)) + int(self.n_noise)

  @property
  def k(self) -> int:
    return len(self.group_sizes)


@dataclasses.dataclass(frozen=True)
class PlantedTruth:
  """Ground truth of a planted generator: ``labels`` int64 [C] (group index, -1 for a
  noise channel), ``k`` groups, ``masks`` float32 [K, H, W] region masks."""

  labels: np.ndarray
  k: int
  masks: np.ndarray


def tiled_regions(rows: int, cols: int, overlap: float = 0.0) -> tuple[Rect, ...]:
  """``rows x cols`` tiles covering the image, row-major; neighbouring tiles overlap.

  Along each axis tile i spans ``[i s, i s + L]`` with ``(n - 1) s + L = 1`` and
  ``(L - s) / L = overlap``: two side-by-side tiles share ``overlap`` of a tile's area.
  """
  if not 0 <= overlap < 1:
    raise ValueError(f"overlap must be in [0, 1), got {overlap}")

  def spans(n):
    length = 1.0 / ((n - 1) * (1 - overlap) + 1)
    step = length * (1 - overlap)
    return [(i * step, min(1.0, i * step + length)) for i in range(n)]

  return tuple((y0, x0, y1, x1) for (y0, y1) in spans(rows) for (x0, x1) in spans(cols))


def strip_regions(widths: Sequence[float]) -> tuple[Rect, ...]:
  """Full-height vertical strips of the given widths (fractions summing to <= 1)."""
  edges = np.concatenate([[0.0], np.cumsum(widths)])
  if edges[-1] > 1 + 1e-9:
    raise ValueError(f"widths must sum to <= 1, got {sum(widths)}")
  return tuple((0.0, float(a), 1.0, float(min(b, 1.0))) for a, b in zip(edges, edges[1:]))


def region_masks(regions: Sequence[Rect], size: int) -> np.ndarray:
  """float32 [K, size, size] binary masks; pixel (i, j) is in a region if its centre
  ((i + 0.5) / size, (j + 0.5) / size) is."""
  c = (np.arange(size) + 0.5) / size
  yy, xx = np.meshgrid(c, c, indexing="ij")
  return np.stack(
    [
      ((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)).astype(np.float32)
      for (y0, x0, y1, x1) in regions
    ]
  )


class _LatentStage(nn.Module):
  """z -> tanh(dense(z)) reshaped to [N, S, S, C]."""

  site_size: int
  channels: int

  @nn.compact
  def __call__(self, z, train: bool = False):
    s = self.site_size
    h = nn.Dense(
      s * s * self.channels,
      kernel_init=nn.initializers.normal(1.0 / np.sqrt(z.shape[-1])),
      bias_init=nn.initializers.normal(0.5),
    )(z)
    return jnp.tanh(h).reshape(z.shape[0], s, s, self.channels)


class _PathsStage(nn.Module):
  """Site [N, S, S, C] -> image [N, H, W, 3]: the group paths and noise textures."""

  spec: PlantedSpec

  @nn.compact
  def __call__(self, h, train: bool = False):
    spec = self.spec
    k, hid = spec.k, spec.hidden
    gsize = max(spec.group_sizes)
    up = spec.image_size // spec.site_size
    s, hw, c = spec.site_size, spec.image_size, spec.n_channels
    # Placeholders at init; planted_generator fills the collection.
    const = lambda name, shape, dtype=jnp.float32: (
      self.variable("planted", name, lambda: jnp.zeros(shape, dtype)).value
    )
    member = const("member", (k, gsize), jnp.int32)  # channel index (padded with C)
    valid = const("valid", (k, gsize))  # 1 for a real member
    gains = const("gains", (s, s, c))
    masks = const("masks", (k, hw, hw))
    noise_idx = const("noise_idx", (spec.n_noise,), jnp.int32)
    textures = const("textures", (spec.n_noise, hw, hw, 3))
    w1 = self.param("w1", nn.initializers.normal(1.0), (k, gsize, hid))
    b1 = self.param("b1", nn.initializers.normal(0.5), (k, hid))
    w2 = self.param("w2", nn.initializers.normal(1.0), (k, hid, 3))
    hg = h * gains[None]
    hpad = jnp.concatenate([hg, jnp.zeros_like(hg[..., :1])], axis=-1)
    x = hpad[..., member] * valid  # [N, S, S, K, Gmax]
    w1n = w1 / jnp.sqrt(jnp.sum(valid, axis=1))[:, None, None]
    a = jax.nn.relu(jnp.einsum("nyxkg,kgd->nyxkd", x, w1n) + b1)
    y = jnp.tanh(jnp.einsum("nyxkd,kde->nyxke", a, w2 / np.sqrt(hid)))
    y = jnp.repeat(jnp.repeat(y, up, axis=1), up, axis=2)  # [N, H, W, K, 3]
    out = jnp.einsum("nyxke,kyx->nyxe", y, masks)
    if spec.n_noise:
      amp = jnp.tanh(jnp.mean(h[..., noise_idx], axis=(1, 2)) * 2.0)  # [N, n_noise]
      out = out + spec.noise_strength * jnp.einsum("nc,cyxe->nyxe", amp, textures)
    return jnp.tanh(out)


class PlantedGenerator(StagedGenerator):
  """Two stages: z -> site ``features`` [N, S, S, C] -> image [N, H, W, 3]."""

  spec: PlantedSpec

  site_names = (SITE,)

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return (self.spec.latent_dim,)

  def setup(self) -> None:
    self.stages = [_LatentStage(self.spec.site_size, self.spec.n_channels), _PathsStage(self.spec)]


def _smooth_texture(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
  """A random low-frequency field [size, size, 3] in about [-1, 1]."""
  coarse = rng.normal(size=(cells, cells, 3))
  t = np.repeat(np.repeat(coarse, size // cells, 0), size // cells, 1)
  from scipy.ndimage import gaussian_filter

  t = gaussian_filter(t, sigma=(size / cells / 2, size / cells / 2, 0), mode="wrap")
  return (t / (np.abs(t).max() + 1e-9)).astype(np.float32)


def planted_generator(spec: PlantedSpec, seed: int = 0) -> tuple[Generator, PlantedTruth]:
  """A random planted generator and its ground truth.

  ``seed`` draws the weights, the channel order (groups are interleaved at random
  over the site's channels), the within-group gains and the noise textures.
  """
  rng = np.random.default_rng(seed)
  c, k = spec.n_channels, spec.k
  labels = np.concatenate(
    [np.full(n, j) for j, n in enumerate(spec.group_sizes)] + [np.full(spec.n_noise, -1)]
  ).astype(np.int64)
  labels = labels[rng.permutation(c)]
  gmax = max(spec.group_sizes)
  member = np.full((k, gmax), c, np.int32)
  valid = np.zeros((k, gmax), np.float32)
  for j in range(k):
    idx = np.flatnonzero(labels == j)
    member[j, : idx.size] = idx
    valid[j, : idx.size] = 1.0
  s = spec.site_size
  gains = (1 - spec.variation + spec.variation * rng.uniform(size=(s, s, c))).astype(np.float32)
  masks = region_masks(spec.regions, spec.image_size)
  noise_idx = np.flatnonzero(labels == -1).astype(np.int32)
  textures = (
    np.stack([_smooth_texture(rng, spec.image_size) for _ in noise_idx])
    if spec.n_noise
    else np.zeros((0, spec.image_size, spec.image_size, 3), np.float32)
  )
  module = PlantedGenerator(spec)
  z = jnp.zeros((1, spec.latent_dim), jnp.float32)
  params = jax.jit(module.init)(jax.random.key(int(rng.integers(2**31))), z)["params"]
  planted = {
    "member": member,
    "valid": valid,
    "gains": gains,
    "masks": masks,
    "noise_idx": noise_idx,
    "textures": textures,
  }
  variables = {
    "params": params,
    "planted": {"stages_1": {n: jnp.asarray(v) for n, v in planted.items()}},
  }
  gen = Generator(module, variables, name=f"planted-{seed}")
  return gen, PlantedTruth(labels=labels, k=k, masks=masks)


def planted_eim_groups(
  gen: Generator, n_pairs: int = 64, n_groups: int = 8, seed: int = 0
) -> np.ndarray:
  """EIMs of the planted site on ``n_pairs`` prior pairs drawn from ``seed``, split
  into ``n_groups`` groups: float32 [G, C, H, W] (their mean is the EIM)."""
  from cfmod_jax.interventions import elementary_influence_map_sums

  k1, k2 = jax.random.split(jax.random.key(seed))
  z1, z2 = gen.sample_latents(k1, n_pairs), gen.sample_latents(k2, n_pairs)
  groups = (np.arange(n_pairs) * n_groups) // n_pairs
  sums, counts = elementary_influence_map_sums(gen, SITE, z1, z2, groups=groups)
  return (np.asarray(sums) / (3.0 * counts[:, None, None, None])).astype(np.float32)


def score(labels: ArrayLike, truth: PlantedTruth) -> float:
  """Adjusted Rand index of ``labels`` [C] against the truth, on grouped channels."""
  from sklearn.metrics import adjusted_rand_score

  lab = np.asarray(labels)
  keep = truth.labels >= 0
  return float(adjusted_rand_score(truth.labels[keep], lab[keep]))


# Named variants (C = 48 or 52 channels, 32x32 images).
VARIANTS: dict[str, PlantedSpec] = {
  # Four equal groups, disjoint quadrants.
  "quadrants": PlantedSpec((12, 12, 12, 12), tiled_regions(2, 2)),
  # Unequal sizes; the smallest group is 4 / 48 = 8 % of the channels.
  "unequal": PlantedSpec((22, 14, 8, 4), tiled_regions(2, 2)),
  # Quadrants grown so that side-by-side neighbours share 25 % of their area.
  "overlap": PlantedSpec((12, 12, 12, 12), tiled_regions(2, 2, overlap=0.25)),
  # Strips of 40 %, 40 % and 20 % of the image.
  "large": PlantedSpec((20, 16, 12), strip_regions((0.4, 0.4, 0.2))),
  # Quadrants plus 8 channels that write whole-image textures.
  "noise": PlantedSpec((12, 12, 12, 12), tiled_regions(2, 2), n_noise=8),
  # Quadrants; each channel's input gain varies over the site cells (0.4 .. 1).
  "variation": PlantedSpec((12, 12, 12, 12), tiled_regions(2, 2), variation=0.6),
  # Everything at once: six unequal groups (smallest 4 / 52), 2 x 3 tiles with 15 %
  # overlap, within-group variation and 4 noise channels.
  "mixed": PlantedSpec(
    (12, 10, 8, 6, 6, 4), tiled_regions(2, 3, overlap=0.15), n_noise=4, variation=0.4
  ),
}


def variant(name: str) -> PlantedSpec:
  """The :data:`VARIANTS` entry ``name`` (clear error for an unknown name)."""
  if name not in VARIANTS:
    raise ValueError(f"variant={name!r} is unknown; expected one of {sorted(VARIANTS)}")
  return VARIANTS[name]


# --------------------------------------------------------------------------------------
# The suite: k=auto clustering of every variant, scored against the truth
# --------------------------------------------------------------------------------------

#: Old defaults of cfmod_jax.clustering (before issue 14), for comparison.
OLD_SETTINGS = {
  "sigma": None,
  "percentile": 80.0,
  "rule": "stability",
  "tol": 0.02,
  "n_restarts": 1,
  "nmf_init": "random",
  "fit_restarts": 4,
}
#: Current library defaults (what ``choose_k`` / ``cluster_channels`` do by default).
NEW_SETTINGS: dict = {}


def run_case(
  spec: PlantedSpec,
  seed: int,
  method: str,
  *,
  k_values: Iterable[int] = range(2, 9),
  n_pairs: int = 64,
  n_groups: int = 8,
  n_boot: int = 8,
  settings: dict | None = None,
  eim_groups: ArrayLike | None = None,
) -> dict:
  """``k=auto`` on one planted generator: choose K, cluster, score.

  ``seed`` draws the generator (:func:`planted_generator`), its latent pairs
  (:func:`planted_eim_groups`) and seeds the bootstrap / fits. ``settings`` are passed
  to `cfmod_jax.modules.find_modules` (``n_restarts`` is its ``boot_restarts``, the
  starts of ``choose_k``'s fits; ``fit_restarts`` its ``n_restarts``, the final
  fit's). Pass
  ``eim_groups`` to reuse EIMs computed earlier for the same spec and seed.

  Returns a dict: k_true, k (chosen), ari (grouped channels), curve.
  """
  from cfmod_jax.modules import find_modules

  settings = dict(settings or {})
  gen, truth = planted_generator(spec, seed)
  groups = (
    planted_eim_groups(gen, n_pairs, n_groups, seed)
    if eim_groups is None
    else np.asarray(eim_groups)
  )
  if "n_restarts" in settings:  # choose_k's starts per bootstrap fit
    settings["boot_restarts"] = settings.pop("n_restarts")
  settings["n_restarts"] = settings.pop("fit_restarts", 4)  # the final fit's starts
  mods = find_modules(
    gen,
    SITE,
    eim_groups=groups,
    k_values=list(k_values),
    n_boot=n_boot,
    seed=seed,
    method=method,
    **settings,
  )
  k, curve, clus = mods.k, mods.curve, mods.clustering
  return {
    "k_true": truth.k,
    "k": int(k),
    "ari": score(clus.labels, truth),
    "curve": {int(kk): [float(v[0]), float(v[1])] for kk, v in curve.items()},
  }


def run_suite(
  variants: Sequence[str],
  methods: Sequence[str],
  seeds: Sequence[int],
  settings: dict[str, dict],
  *,
  k_values: Iterable[int] = range(2, 9),
  n_pairs: int = 64,
  n_groups: int = 8,
  n_boot: int = 8,
  log: Callable[[str], None] | None = None,
) -> list[dict]:
  """:func:`run_case` for every variant x seed x method x named settings.

  The EIMs of each (variant, seed) are computed once and shared by the methods and
  settings. Returns one dict per case: variant, seed, method, settings (its name),
  k_true, k, ari, curve, correct (K right and ARI >= 0.95).
  """
  rows = []
  for name in variants:
    spec = variant(name)
    for seed in seeds:
      gen, _ = planted_generator(spec, seed)
      groups = planted_eim_groups(gen, n_pairs, n_groups, seed)
      for set_name, st in settings.items():
        for method in methods:
          r = run_case(
            spec, seed, method, k_values=k_values, n_boot=n_boot, settings=st, eim_groups=groups
          )
          r.update(
            variant=name,
            seed=int(seed),
            method=method,
            settings=set_name,
            correct=bool(r["k"] == r["k_true"] and r["ari"] >= 0.95),
          )
          rows.append(r)
          if log is not None:
            log(
              f"{name} seed={seed} {set_name} {method}: K={r['k']} "
              f"(true {r['k_true']}) ARI={r['ari']:.3f}"
            )
  return rows
