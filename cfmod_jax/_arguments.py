"""Argument checks of the engine's entry points (`cfmod_jax.interventions`).

Each public function checks its arguments once, here, on the host and before any
compilation; the kernel (`cfmod_jax._engine`) trusts them. `check_masks`,
`check_pairs` and `check_groups` are also used by the applications that build on
`hybrid_map_reduce` (`cfmod_jax.lab`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax import precision as _precision
from cfmod_jax._validate import check_chunk
from cfmod_jax.generator import Generator, check_generator, check_latents


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_masks(gen: Generator, site: str, masks) -> tuple[jax.Array, bool]:
  """Validates masks ``[M, C]`` or ``[C]`` in [0, 1]; returns ``([M, C], was_1d)``.

  Concrete masks (numpy, lists, jax arrays outside a trace) are checked by value:
  complex, non-numeric, NaN, infinite or out-of-range entries raise a ValueError
  naming ``masks``. **Traced masks** (inside `jax.jit`, `jax.grad`, `vmap`…)
  cannot be checked by value without a host round trip, so they are checked by
  shape and dtype only and every mask row that holds a value outside [0, 1] or
  a NaN is replaced by NaN: its hybrids and influence maps come out all-NaN
  instead of silently extrapolating (a mask of 5.0 is never computed as if it
  were valid). Rows whose entries are all in [0, 1] are untouched (and
  differentiable).
  """
  check_generator(gen, "gen")
  c = gen.site_shape(site)[-1]
  shape = tuple(np.shape(masks))
  if len(shape) not in (1, 2) or shape[-1] != c:
    raise ValueError(
      f"masks must have shape [M, {c}] or [{c}] (the {c} channels at site {site!r}), got {shape}"
    )
  if len(shape) == 2 and shape[0] == 0:
    raise ValueError("masks is empty: need at least one mask (M ≥ 1)")
  dtype = getattr(masks, "dtype", None)
  try:
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(masks).dtype
  except TypeError as e:  # e.g. jax key dtypes
    raise ValueError(f"masks must be boolean or numeric, got dtype {dtype}") from e
  if np.issubdtype(dtype, np.complexfloating):
    raise ValueError(
      f"masks must be real (boolean, integer or float) values in [0, 1], got "
      f"complex dtype {dtype}; pass masks.real if the imaginary part is zero"
    )
  if dtype != np.dtype(bool) and not np.issubdtype(dtype, np.number):
    raise ValueError(f"masks must be boolean or numeric, got dtype {dtype}")
  if _is_tracer(masks):
    m = jnp.asarray(masks).astype(jnp.float32)
    ok = jnp.all((m >= 0) & (m <= 1), axis=-1, keepdims=True)  # False for NaN
    masks = jnp.where(ok, m, jnp.nan)
  else:
    arr = np.asarray(masks).astype(np.float32)
    if np.isnan(arr).any():
      where = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
      raise ValueError(f"masks contains NaN (first at index {where}); values must lie in [0, 1]")
    if np.isinf(arr).any() or arr.min() < 0 or arr.max() > 1:
      raise ValueError(f"masks values must lie in [0, 1], got range [{arr.min()}, {arr.max()}]")
    masks = arr
  masks = jnp.asarray(masks, jnp.float32)
  return (masks[None] if len(shape) == 1 else masks), len(shape) == 1


def check_pairs(gen: Generator, z1, z2) -> tuple[jax.Array, jax.Array]:
  check_generator(gen, "gen")
  z1 = check_latents(gen, z1, "z1")
  z2 = check_latents(gen, z2, "z2")
  if z1.shape[0] != z2.shape[0]:
    raise ValueError(
      f"z1 and z2 must hold the same number of latent codes, got {z1.shape[0]} and {z2.shape[0]}"
    )
  return z1, z2


def check_groups(groups, n: int) -> np.ndarray:
  """Validates an optional int ``[n]`` group of each pair (None: one group)."""
  if groups is None:
    return np.zeros(n, np.int32)
  groups = np.asarray(groups)
  if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
    raise ValueError(
      f"groups must be non-negative integers of shape [{n}], got {groups.shape} {groups.dtype}"
    )
  empty = np.flatnonzero(np.bincount(groups) == 0)
  if empty.size:
    raise ValueError(
      f"groups must give every group 0…{groups.max()} at least one pair (an "
      f"empty group's maps would be 0/0 = NaN); group(s) "
      f"{empty[:10].tolist()} have none"
    )
  return groups


def check_method(method):
  if method not in ("auto", "linear", "masks"):
    raise ValueError(f"method must be 'auto', 'linear' or 'masks', got {method!r}")
  return method


class Call(NamedTuple):
  """The checked arguments of one call of the stream."""

  masks: jax.Array | None
  z1: jax.Array
  z2: jax.Array
  groups: np.ndarray
  pair_chunk: int | None
  mask_chunk: int | None
  precision: str


def check_call(
  gen, site, masks, z1, z2, groups, pair_chunk, mask_chunk, precision, extra=None
) -> Call:
  """The checks every entry point of the stream makes, once (``masks`` None: none
  given; ``extra`` checks the entry's own arguments after the pairs)."""
  check_generator(gen, "gen")
  gen.site_index(site)
  if masks is not None:
    masks, _ = check_masks(gen, site, masks)
  z1, z2 = check_pairs(gen, z1, z2)
  if extra is not None:
    extra()
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  precision = _precision.check_precision(precision)
  groups = check_groups(groups, z1.shape[0])
  return Call(masks, z1, z2, groups, pair_chunk, mask_chunk, precision)
