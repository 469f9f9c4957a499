"""Shared argument checks: each raises a ValueError naming the argument and the
expected form, before any expensive work.

Used by `cfmod_jax.sweep`, `cfmod_jax.interventions`, `cfmod_jax.generator`
and the analysis configuration (``check_seed(cfg.seed, "seed")``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MAX_SEED = 2**63 - 1  # jax.random.key and numpy's generators accept 0 … 2**63 − 1


def check_seed(value: Any, name: str = "seed") -> int:
  """``value`` as an int if it is an integer in ``[0, 2**63 − 1]`` (not a bool,
  not a float); else ValueError naming ``name``."""
  if (
    not isinstance(value, (int, np.integer))
    or isinstance(value, (bool, np.bool_))
    or not 0 <= int(value) <= MAX_SEED
  ):
    raise ValueError(f"{name} must be a non-negative integer (0 … 2**63 − 1), got {value!r}")
  return int(value)


def check_positive_int(value: Any, name: str) -> int:
  """``value`` as an int if it is an integer ≥ 1 (not a bool); else ValueError."""
  if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def check_key(key: Any, name: str = "key") -> jax.Array:
  """A `jax.random` key: a typed key (``jax.random.key(seed)``, shape ``()``) or
  a legacy raw key (``jax.random.PRNGKey(seed)``, uint32 ``[2]``). Tracers are
  checked by dtype and shape. Anything else → ValueError naming ``name``."""
  hint = f"{name} must be a jax.random key, e.g. jax.random.key(0)"
  if not hasattr(key, "dtype") or not hasattr(key, "shape"):
    raise ValueError(f"{hint}; got {type(key).__name__} {key!r:.60}")
  dtype, shape = key.dtype, tuple(key.shape)
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ValueError(f"{hint} (one key, shape ()); got a batch of keys of shape {shape}")
    return key
  if dtype == np.uint32 and shape == (2,) and isinstance(key, (jax.Array, np.ndarray)):
    return jnp.asarray(key)
  raise ValueError(
    f"{hint} (or a legacy uint32[2] jax.random.PRNGKey); got "
    f"{type(key).__name__} of dtype {dtype} and shape {shape}"
  )


def check_generator(gen: Any, name: str = "gen"):
  """``gen`` if it is a `cfmod_jax.Generator`; else ValueError naming ``name``."""
  from cfmod_jax.generator import Generator  # pylint: disable=g-import-not-at-top

  if not isinstance(gen, Generator):
    raise ValueError(
      f"{name} must be a cfmod_jax.Generator (e.g. cfmod_jax.load_generator("
      f"'dcgan-synthfaces'), cfmod_jax.init_generator('dcgan') or Generator(module, "
      f"variables)), got {type(gen).__name__} {gen!r:.60}"
    )
  return gen
