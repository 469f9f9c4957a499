"""Sample quality: a Fréchet distance in the features of a synthetic-face network.

The Fréchet Inception Distance (Heusel et al. 2017) compares two image sets
through Gaussians fitted to their features in a fixed network. ImageNet's
Inception is not shipped (and knows nothing of cartoon faces), so the project
trains its own small network, `cfmod_jax.models.FeatNet`, to predict the synthetic faces'
ground-truth factors (`cfmod_jax.data.synthfaces.FACTOR_SPECS`): categorical
factors (hair colour, hair style, eye colour, mouth shape, gradient direction)
with softmax cross-entropy, continuous ones (colours, sizes, positions) by
least squares on targets rescaled to [-1, 1]. Its penultimate layer (``feature_dim``
values) is the feature space: it must encode exactly what the dataset varies.
Trained by ``python -m experiments.train --config experiments/configs/featnet.py``;
the shipped network is ``featnet-synthfaces`` (`load_featnet`). Its heads also
make it a factor classifier (`FeatureNet.predict`, e.g. hair colour of an image).

`sample_quality` reports the distance between ``n`` generated images and ``n``
held-out real faces *and* its floor: the distance between two disjoint sets of
``n`` real faces, which is not 0 because of finite-sample noise (the distance is
biased upwards for finite ``n``; compare numbers only at equal ``n``).
By default
the real faces are synthetic faces of `HELDOUT_SEEDS`; ``real_images`` supplies
other held-out sets (e.g. `cfmod_jax.data.celeba.heldout_images` for CelebA runs:
the features then come from a network trained on the synthetic faces, so such
numbers compare CelebA generators with each other, not with published FIDs).

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}

computed in float64 with symmetric eigendecompositions (no complex square roots).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from cfmod_jax import checkpoints
from cfmod_jax.data import synthfaces
from cfmod_jax.generator import Generator
from cfmod_jax.models.featnet import (  # the network and its targets, part of this API
  CATEGORICAL,
  CONTINUOUS,
  NUM_CONTINUOUS,
  FeatNet,
  decode_regression,
  factor_targets,
)

# Held-out real sets: seeds no training batch (data_seed, step) ever uses.
HELDOUT_SEEDS = ((2020, 7, 1), (2020, 7, 2))


# ---- Fréchet distance ----------------------------------------------------------------------
def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and covariance ``[D, D]`` (float64, unbiased) of ``[N, D]`` features."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(
  mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike
) -> float:
  """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (≥ 0)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  s1h = _sqrt_psd(sigma1)
  cross = np.linalg.eigvalsh(_sym(s1h @ sigma2 @ s1h))
  diff = mu1 - mu2
  fd = (
    diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
  )
  return float(max(fd, 0.0))


def _sym(m):
  return (m + m.T) / 2


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
  """Fréchet distance between the Gaussians fitted to two feature sets ``[N, D]``."""
  return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


# ---- the feature network ---------------------------------------------------------------------
class FeatureNet:
  """A trained `FeatNet` with its variables.

  ``features(images)`` → float32 ``[N, feature_dim]``; ``predict(images)`` → a dict
  of factor predictions (categorical: int ``[N]``; continuous: in factor units);
  ``predict_proba`` the same with class probabilities. ``predict_fn()`` and
  ``features_fn()`` are the pure (jit-able) functions behind them, for use inside
  compiled code (`cfmod_jax.lab.factors`).
  Images are ``[N, 64, 64, 3]`` in [-1, 1]; both run in batches of ``batch_size``.
  """

  def __init__(
    self, module: FeatNet, variables: Any, *, name: str = "featnet", batch_size: int = 250
  ) -> None:
    self.module, self.variables, self.name, self.batch_size = module, variables, name, batch_size
    self._apply = jax.jit(module.apply)
    self._pure_fns: dict[str, Callable] = {}

  def __repr__(self):
    return f"FeatureNet({self.name}, width={self.module.width}, dim={self.module.feature_dim})"

  def _run(self, images):
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
      raise ValueError(f"images must be [N, 64, 64, 3], got {images.shape}")
    outs = []
    for i in range(0, len(images), self.batch_size):
      outs.append(jax.device_get(self._apply(self.variables, images[i : i + self.batch_size])))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def features(self, images: ArrayLike) -> np.ndarray:
    return self._run(images)[0]

  def predict(self, images: ArrayLike) -> dict[str, np.ndarray]:
    _, logits, regression = self._run(images)
    out = {name: np.argmax(logits[name], axis=-1) for name, _ in CATEGORICAL}
    out.update(decode_regression(regression))
    return out

  def predict_fn(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """A pure, jit-able ``images [N, 64, 64, 3] -> {factor: output}`` closed over
    the variables: softmax probabilities ``[N, n_values]`` for each categorical
    factor, the prediction in factor units for each continuous one (``[N]``, or
    ``[N, dims]`` for a vector factor such as ``bg_color``; the shapes of
    `predict`). ``argmax`` of the probabilities is `predict`'s class. The same
    function object is returned on every call (so compiled callers are reused)."""
    if "predict" not in self._pure_fns:
      module, variables = self.module, self.variables

      def fn(images):
        _, logits, regression = module.apply(variables, images)
        out = {name: jax.nn.softmax(logits[name], axis=-1) for name, _ in CATEGORICAL}
        out.update(decode_regression(regression))
        return out

      self._pure_fns["predict"] = fn
    return self._pure_fns["predict"]

  def features_fn(self) -> Callable[[jax.Array], jax.Array]:
    """A pure, jit-able ``images [N, 64, 64, 3] -> features [N, feature_dim]`` (the
    space of the Fréchet distance; same function object on every call)."""
    if "features" not in self._pure_fns:
      module, variables = self.module, self.variables
      self._pure_fns["features"] = lambda images: module.apply(variables, images)[0]
    return self._pure_fns["features"]

  def predict_proba(self, images: ArrayLike) -> dict[str, np.ndarray]:
    """`predict_fn` on host images, in batches of ``batch_size``: categorical
    probabilities and continuous predictions (numpy)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
      raise ValueError(f"images must be [N, 64, 64, 3], got {images.shape}")
    if "predict_jit" not in self._pure_fns:
      self._pure_fns["predict_jit"] = jax.jit(self.predict_fn())
    fn = self._pure_fns["predict_jit"]
    outs = [
      jax.device_get(fn(images[i : i + self.batch_size]))
      for i in range(0, len(images), self.batch_size)
    ]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def load_featnet(name_or_path: str = checkpoints.SHIPPED_FEATNET) -> FeatureNet:
  """The shipped feature network (default) or an exported featnet folder."""
  path = checkpoints.resolve(name_or_path, (checkpoints.SHIPPED_FEATNET,))
  meta = checkpoints.read_meta(path)
  module = FeatNet(**meta["kwargs"])
  expected = jax.eval_shape(
    module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  )
  variables, meta = checkpoints.load_variables(path, expected, kind="featnet")
  return FeatureNet(module, variables, name=str(name_or_path))


# ---- sample quality ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Quality:
  """``fd``: generated vs held-out real; ``floor``: real vs disjoint real; ``n``
  images in each set."""

  fd: float
  floor: float
  n: int

  def __str__(self):
    return f"FD {self.fd:.3f} (real-vs-real floor {self.floor:.3f}, n={self.n})"


# Held-out real images: None (synthetic faces of HELDOUT_SEEDS), a callable
# ``(n, which) -> [n, 64, 64, 3]`` for which in {0, 1}, or a pair of image arrays.
RealImages = None | Callable[[int, int], Any] | Sequence[Any]


def _real_set(real_images: RealImages, n: int, which: int) -> np.ndarray:
  """Held-out real set ``which`` (0 or 1): ``[n, 64, 64, 3]`` float32."""
  if real_images is None:
    return synthfaces.generate(n, seed=HELDOUT_SEEDS[which]).images
  if callable(real_images):
    where = f"real_images({n}, {which})"
    images = real_images(n, which)
  else:
    where = f"real_images[{which}]"
    images = real_images[which]
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
    raise ValueError(f"{where} must be [N, 64, 64, 3] images in [-1, 1], got shape {images.shape}")
  if len(images) < n:
    raise ValueError(
      f"{where} has {len(images)} images, fewer than n={n}: n must be at most "
      f"the size of each held-out set"
    )
  return images[:n]


def _check_real_images(real_images: RealImages) -> None:
  if real_images is None or callable(real_images):
    return
  try:
    count = len(real_images)
  except TypeError:
    count = None
  if count != 2:
    raise ValueError(
      "real_images must be None (the synthetic faces), a callable "
      "(n, which) -> [n, 64, 64, 3] images for which in {0, 1}, or a pair of "
      f"two disjoint held-out image arrays; got {type(real_images).__name__}"
      + (f" of length {count}" if count is not None else "")
    )
  if real_images[0] is real_images[1]:
    raise ValueError(
      "real_images holds the same array twice; the floor needs two disjoint held-out sets"
    )


@functools.lru_cache(maxsize=4)
def _real_stats(featnet: FeatureNet, n: int, real_images: RealImages = None):
  return [gaussian_stats(featnet.features(_real_set(real_images, n, which))) for which in (0, 1)]


def real_stats(
  featnet: FeatureNet, n: int, real_images: RealImages = None
) -> tuple[np.ndarray, np.ndarray]:
  """``[(mu, sigma)] * 2`` of the two disjoint held-out real sets of ``n`` images.

  Cached per ``(featnet, n, real_images)`` when ``real_images`` is hashable (None,
  functions, ``functools.partial`` …): a callable must return the same images
  for the same ``(n, which)``. Arrays are not cached.
  """
  _check_real_images(real_images)
  try:
    hash(real_images)
  except TypeError:  # e.g. a pair of arrays
    return _real_stats.__wrapped__(featnet, n, real_images)
  return _real_stats(featnet, n, real_images)


def real_floor(featnet: FeatureNet, n: int, real_images: RealImages = None) -> float:
  """Distance between two disjoint held-out real sets of ``n`` images (the
  synthetic faces unless ``real_images`` is given; see `sample_quality`)."""
  (m1, s1), (m2, s2) = real_stats(featnet, n, real_images)
  return frechet_distance_from_stats(m1, s1, m2, s2)


def generated_images(
  generator: Generator, n: int, seed: int = 0, batch_size: int = 250
) -> np.ndarray:
  """``n`` images ``[n, 64, 64, 3]`` of a `cfmod_jax.Generator` from prior latents."""
  z = generator.sample_latents(jax.random.key(seed), n)
  return np.concatenate(
    [np.asarray(generator(z[i : i + batch_size])) for i in range(0, n, batch_size)]
  )


def sample_quality(
  generator: Generator,
  featnet: FeatureNet | None = None,
  n: int = 2000,
  seed: int = 0,
  *,
  real_images: RealImages = None,
) -> Quality:
  """Fréchet distance of ``n`` samples of ``generator`` to ``n`` held-out real
  images, with the real-vs-real floor at the same ``n``.

  ``real_images`` gives the two disjoint held-out real sets: None (default) for
  the synthetic faces of `HELDOUT_SEEDS`, a callable ``(n, which) ->
  [n, 64, 64, 3]`` float32 in [-1, 1] for ``which`` in {0, 1}, or a pair of
  arrays of at least ``n`` images each (the first ``n`` are used). The distance
  is generated vs set 0, the floor set 0 vs set 1.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f"n must be an integer >= 2, got {n!r}")
  featnet = featnet or load_featnet()
  (m1, s1), (m2, s2) = real_stats(featnet, int(n), real_images)
  m, s = gaussian_stats(featnet.features(generated_images(generator, int(n), seed)))
  return Quality(
    fd=frechet_distance_from_stats(m, s, m1, s1),
    floor=frechet_distance_from_stats(m1, s1, m2, s2),
    n=int(n),
  )


__all__ = [
  "CATEGORICAL",
  "CONTINUOUS",
  "HELDOUT_SEEDS",
  "NUM_CONTINUOUS",
  "FeatNet",
  "decode_regression",
  "factor_targets",
  "FeatureNet",
  "Quality",
  "frechet_distance",
  "frechet_distance_from_stats",
  "gaussian_stats",
  "load_featnet",
  "real_floor",
  "real_stats",
  "sample_quality",
]
