"""Hybrid realism: how far a module's hybrids sit from the generator's own samples,
as the Fréchet distance in the features of the factor network (`quality.FeatureNet`)
between the hybrids of each mask and a held-out real set, beside the plain samples'
distance (the all-zero mask) and the distance between two real sets (the floor). The
features of every mask's hybrids are streamed through
`interventions.hybrid_map_reduce` as sums and outer products: no image is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from cfmod_jax._validate import check_chunk
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import (
  DEFAULT_MASK_CHUNK,
  DEFAULT_PAIR_CHUNK,
  check_masks,
  check_pairs,
  hybrid_map_reduce,
)
from cfmod_jax.lab import quality

__all__ = ["HybridRealism", "hybrid_feature_stats", "hybrid_realism"]


def _feature_sums(features_fn):
  """``hybrid_fn`` of `interventions.hybrid_map_reduce` (``params`` = shift ``[D]``):
  per group, weighted sums of ``f − shift`` and of its outer products over the
  hybrids' features f, ``[G, mc, D + D²]``."""

  def hybrid_fn(chunk, ctx, y):
    del ctx
    mc, pc = y.shape[:2]
    f = features_fn(y.reshape(-1, *y.shape[2:])) - chunk.params
    f = f.reshape(mc, pc, -1)
    s1 = jnp.einsum("jpd,pg->gjd", f, chunk.weights)
    s2 = jnp.einsum("jpd,jpe,pg->gjde", f, f, chunk.weights)
    return jnp.concatenate([s1, s2.reshape(*s2.shape[:2], -1)], axis=-1)

  return hybrid_fn


def _no_context(chunk):
  del chunk
  return (), ()


def hybrid_feature_stats(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  features_fn: Callable[[jax.Array], jax.Array],
  shift: ArrayLike,
  *,
  pair_chunk: int | None = DEFAULT_PAIR_CHUNK,
  mask_chunk: int | None = DEFAULT_MASK_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[M, D]`` and unbiased covariance ``[M, D, D]`` (float64) of the features
  of each mask's N hybrids, streamed (no image array is kept).

  ``features_fn`` is a pure ``images -> [n, D]`` (e.g. ``featnet.features_fn()``);
  ``shift [D]`` is subtracted before the float32 sums (use a mean close to the
  features', e.g. the real set's, to avoid cancellation in the covariance).
  """
  gen.site_index(site)
  masks, _ = check_masks(gen, site, masks)
  z1, z2 = check_pairs(gen, z1, z2)
  n = z1.shape[0]
  if n < 2:
    raise ValueError(f"need at least 2 pairs for a covariance, got N={n}")
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  out = jax.eval_shape(features_fn, jax.ShapeDtypeStruct((3, *gen.image_shape), jnp.float32))
  shift = np.asarray(shift, np.float32)
  if len(out.shape) != 2 or out.shape[0] != 3 or shift.shape != (out.shape[1],):
    raise ValueError(
      f"features_fn must map [N, H, W, 3] images to [N, D] and shift must be "
      f"[D]; got features {tuple(out.shape)} for N=3 and shift {shift.shape}"
    )
  m, d = masks.shape[0], shift.shape[0]
  sums, _, _ = hybrid_map_reduce(
    gen,
    site,
    masks,
    z1,
    z2,
    _feature_sums(features_fn),
    pair_fn=_no_context,
    params=jnp.asarray(shift),
    cache_key=("hybrid_features", features_fn),
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
  )
  sums = np.asarray(sums, np.float64)[0, :m]
  mean_shifted = sums[:, :d] / n
  second = sums[:, d:].reshape(m, d, d)
  cov = (second - n * mean_shifted[:, :, None] * mean_shifted[:, None, :]) / (n - 1)
  return mean_shifted + shift.astype(np.float64), cov


@dataclasses.dataclass(frozen=True)
class HybridRealism:
  """``fd [M]``: each mask's hybrids vs held-out real faces; ``plain_fd``: the
  plain samples G(z1) of the same latents; ``floor``: real vs disjoint real; all
  at ``n`` images."""

  fd: np.ndarray
  plain_fd: float
  floor: float
  n: int


def hybrid_realism(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  featnet: quality.FeatureNet | None = None,
  n: int = 500,
  seed: int = 0,
  *,
  z1: ArrayLike | None = None,
  z2: ArrayLike | None = None,
  real_images: quality.RealImages = None,
  pair_chunk: int | None = DEFAULT_PAIR_CHUNK,
  mask_chunk: int | None = DEFAULT_MASK_CHUNK,
) -> HybridRealism:
  """Fréchet distance of module hybrids to held-out real faces (§ the paper's
  observation that hybrids of a good module stay realistic).

  Args:
    masks: ``[M, C]`` (or ``[C]``) masks at ``site``.
    featnet: the feature network (default: the shipped one).
    n: number of pairs (hybrids per mask) and of real images; ≥ 2.
    seed: draws z1, z2 from the prior (``jax.random.key(seed)`` split in two)
      unless ``z1`` and ``z2`` (``[n, …]``) are given.
    real_images: held-out real sets, as in `quality.sample_quality` (set 0 is
      the reference, sets 0 and 1 give the floor).
  Returns:
    `HybridRealism`. ``plain_fd`` is the hybrid of the all-zero mask, i.e. G(z1),
    computed in the same call.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f"n must be an integer >= 2, got {n!r}")
  n = int(n)
  gen.site_index(site)
  masks, _ = check_masks(gen, site, masks)
  if (z1 is None) != (z2 is None):
    raise ValueError("give both z1 and z2, or neither (then they are drawn with seed)")
  if z1 is None:
    k1, k2 = jax.random.split(jax.random.key(seed))
    z1, z2 = gen.sample_latents(k1, n), gen.sample_latents(k2, n)
  z1, z2 = check_pairs(gen, z1, z2)
  if z1.shape[0] != n:
    raise ValueError(f"z1 and z2 must hold n={n} latent codes, got {z1.shape[0]}")
  featnet = featnet or quality.load_featnet()
  (mu0, s0), (mu1, s1) = quality.real_stats(featnet, n, real_images)
  all_masks = jnp.concatenate([jnp.zeros((1, masks.shape[1]), jnp.float32), masks])
  means, covs = hybrid_feature_stats(
    gen,
    site,
    all_masks,
    z1,
    z2,
    featnet.features_fn(),
    mu0,
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
  )
  fds = [quality.frechet_distance_from_stats(mu, cov, mu0, s0) for mu, cov in zip(means, covs)]
  return HybridRealism(
    fd=np.asarray(fds[1:]),
    plain_fd=fds[0],
    floor=quality.frechet_distance_from_stats(mu0, s0, mu1, s1),
    n=n,
  )
