"""Cross-class module hybrids ("style transfer") with a class-conditional BigGAN.

The paper's application to BigGAN-deep (Besserve et al. 2020, §4): take a sample of
class A (latent z1) and a sample of class B (latent z2), and at an intermediate block
swap the channels of one module from z2 into z1. The hybrid is A's image with
whatever that module controls (texture, colour, background…) taken from the B
sample. Every stage after the site is conditioned on **z1's** noise and class
vector (see `cfmod_jax.models.biggan`), so the class that the later blocks render
stays A; only the site's activations of the module's channels come from B.

Pipeline (`style_transfer`):

1. `class_conditional` — the same BigGAN whose latent sampler draws classes A and B
   (uniformly), so `modules.find_modules` computes the EIMs of the site on
   samples of the two classes of interest (pairs may be A–A, A–B, B–A or B–B)
2. and groups the site's channels into K modules (`clustering.cluster_channels`).
3. `interventions.hybrid_grid` renders, for every module, every (A sample, B donor)
   combination in one compiled call per site.
4. `viz.grid_panel` lays out one panel per module: A samples down the left, B
   donors across the top, hybrids in the grid; ``module_maps`` (mean |hybrid − A|
   of each module over the grid) show where modules act.

``experiments/style_transfer.py`` is the command-line program; it writes the
panels (``module<k>.png``), ``eims.png``, ``module_maps.png`` and ``transfer.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from cfmod_jax import clustering
from cfmod_jax._validate import check_positive_int
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import hybrid_grid, masks_from_labels
from cfmod_jax.modules import find_modules


# ---- class-conditional sampling ------------------------------------------------------------
def _biggan_module(gen: Generator):
  from cfmod_jax.models.biggan import BigGANDeep  # pylint: disable=g-import-not-at-top

  if not isinstance(gen.module, BigGANDeep):
    raise TypeError(
      f"cross-class hybrids need a class-conditional BigGAN generator "
      f"(module BigGANDeep), got {type(gen.module).__name__} ({gen.name})"
    )
  return gen.module


def num_classes(gen: Generator) -> int:
  """Number of classes of a BigGAN `Generator`."""
  return _biggan_module(gen).config.num_classes


def check_class(gen: Generator, index: int, name: str = "class") -> int:
  """``index`` as an int; a clear ValueError unless it is a class of ``gen``."""
  n = num_classes(gen)
  if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
    raise ValueError(f"{name} must be an integer class index, got {index!r}")
  if not 0 <= int(index) < n:
    raise ValueError(
      f"{name}={int(index)} is out of range: {gen.name} has {n} classes, "
      f"valid indices are 0…{n - 1}"
    )
  return int(index)


def class_latents(gen: Generator, key: jax.Array, class_index: int, n: int) -> jax.Array:
  """``n`` latents ``[n, z_dim + num_classes]`` of one class: truncated noise (the
  generator's truncation) and the one-hot class vector."""
  from cfmod_jax.models.biggan import sample_latents_for_classes  # pylint: disable=g-import-not-at-top

  module = _biggan_module(gen)
  c = check_class(gen, class_index)
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive integer, got {n!r}")
  return sample_latents_for_classes(key, np.full(int(n), c), module.truncation, module.config)


def class_conditional(gen: Generator, classes: Sequence[int]) -> Generator:
  """The same BigGAN (module and variables) with a latent sampler that draws its
  class uniformly among ``classes`` — e.g. for `elementary_influence_maps`."""
  from cfmod_jax.models.biggan import biggan_generator  # pylint: disable=g-import-not-at-top

  module = _biggan_module(gen)
  classes = [check_class(gen, c, f"classes[{i}]") for i, c in enumerate(classes)]
  if not classes:
    raise ValueError("classes is empty")
  names = "+".join(map(str, classes))
  return biggan_generator(
    gen.variables, module.config, module.truncation, classes=classes, name=f"{gen.name}[{names}]"
  )


# ---- the experiment --------------------------------------------------------------------------
@dataclasses.dataclass
class TransferResult:
  """Output of `style_transfer`.

  Attributes:
    site, class_a, class_b, k, method: the settings.
    labels: int [C], module of each channel.
    eims: float32 [C, H, W], the EIMs (on samples of classes A and B).
    z_a, z_b: the latents of the originals ``[R, …]`` and donors ``[D, …]``.
    originals, donors: ``[R, H, W, 3]``, ``[D, H, W, 3]`` images in [-1, 1].
    hybrids: ``[K, R, D, H, W, 3]``: originals with module k from each donor.
    module_maps: ``[K, H, W]``: mean |hybrid − original| per module over the grid.
  """

  site: str
  class_a: int
  class_b: int
  k: int
  method: str
  labels: np.ndarray
  eims: np.ndarray
  z_a: np.ndarray
  z_b: np.ndarray
  originals: np.ndarray
  donors: np.ndarray
  hybrids: np.ndarray
  module_maps: np.ndarray


def style_transfer(
  gen: Generator,
  class_a: int,
  class_b: int,
  site: str,
  k: int = 3,
  *,
  n_rows: int = 4,
  n_cols: int = 4,
  n_pairs: int = 64,
  seed: int = 0,
  method: str = "nmf",
  sigma: float | None = None,
  percentile: float = clustering.DEFAULT_PERCENTILE,
) -> TransferResult:
  """Modules of a BigGAN block found on classes A and B, and their cross-class hybrids.

  Args:
    gen: a BigGAN `Generator` (e.g. `cfmod_jax.models.load_biggan`).
    class_a, class_b: class indices (originals, donors), in ``[0, num_classes)``.
    site: the block, one of ``gen.sites`` (e.g. ``'block5'``).
    k: number of modules.
    n_rows, n_cols: class-A originals (rows) and class-B donors (columns) per panel.
    n_pairs: latent pairs for the EIMs (drawn from classes A and B).
    seed: seeds the EIM pairs, the clustering and the panel samples.
    method, sigma, percentile: clustering, see `clustering.cluster_channels`.
  Returns:
    a `TransferResult`.
  """
  class_a = check_class(gen, class_a, "class_a")
  class_b = check_class(gen, class_b, "class_b")
  gen.site_index(site)
  c = gen.site_shape(site)[-1]
  for name, v in (("k", k), ("n_rows", n_rows), ("n_cols", n_cols), ("n_pairs", n_pairs)):
    check_positive_int(v, name)
  if k > c:
    raise ValueError(f"k={k} exceeds the {c} channels of site {site!r}")
  key = jax.random.key(seed)
  k_eim, k_a, k_b = jax.random.split(key, 3)
  both = class_conditional(gen, sorted({class_a, class_b}))
  mods = find_modules(
    both,
    site,
    n_pairs=n_pairs,
    block_pairs=n_pairs,
    key=k_eim,
    k=k,
    method=method,
    n_boot=0,
    seed=seed,
    sigma=sigma,
    percentile=percentile,
  )
  eims, clus = mods.eims, mods.clustering
  masks = masks_from_labels(clus.labels, k)
  z_a = np.asarray(class_latents(gen, k_a, class_a, n_rows))
  z_b = np.asarray(class_latents(gen, k_b, class_b, n_cols))
  originals, donors = np.asarray(gen(z_a)), np.asarray(gen(z_b))
  cells = np.asarray(hybrid_grid(gen, site, masks, z_a, z_b))  # [K, R, D, H, W, 3]
  module_maps = np.abs(cells - originals[None, :, None]).mean(axis=(1, 2, 5))
  result = TransferResult(
    site,
    class_a,
    class_b,
    k,
    method,
    clus.labels,
    eims,
    z_a,
    z_b,
    originals,
    donors,
    cells,
    module_maps,
  )
  return result


__all__ = [
  "TransferResult",
  "check_class",
  "class_conditional",
  "class_latents",
  "num_classes",
  "style_transfer",
]
