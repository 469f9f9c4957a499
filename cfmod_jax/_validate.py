"""Shared argument checks: each raises a ValueError naming the argument and the
expected form, before any expensive work.

Used by `cfmod_jax.sweep`, `cfmod_jax.interventions`, `cfmod_jax.generator`,
the analysis configuration (``check_seed(cfg.seed, "seed")``), and the host-side
statistics: `cfmod_jax.clustering` and `cfmod_jax.metrics` share the checks of
influence maps, labels, numbers of modules and percentiles (`check_maps`,
`check_eims`, `check_eim_groups`, `check_labels`, `check_k`, `check_percentile`, …).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "MAX_SEED",
  "check_choice",
  "check_eim_groups",
  "check_eims",
  "check_k",
  "check_key",
  "check_labels",
  "check_maps",
  "check_percentile",
  "check_positive_float",
  "check_chunk",
  "check_positive_int",
  "check_prep_percentile",
  "check_seed",
  "check_sigma",
]

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


def check_chunk(value: Any, name: str) -> int | None:
  """``value`` if it is None (chosen from the device's memory, `cfmod_jax.memory`) or
  an integer ≥ 1; else a ValueError naming ``name``."""
  if value is None:
    return None
  if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
    raise ValueError(
      f"{name} must be a positive integer or None (chosen from the device's memory), got {value!r}"
    )
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


# ---- influence maps, partitions and clustering settings (clustering, metrics) ----------
def check_maps(x: Any, name: str, ndim: int = 3, form: str = "[C, H, W]") -> np.ndarray:
  """``x`` as float64 after checking its dimensionality, size, finiteness and sign
  (influence maps are non-negative)."""
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{name} must be a numeric array of shape {form}") from exc
  if arr.ndim != ndim:
    raise ValueError(f"{name} must be a {ndim}-D array of shape {form}, got shape {arr.shape}")
  if arr.size == 0:
    raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
  if np.any(arr < 0):
    raise ValueError(
      f"{name} must be non-negative (influence maps are mean absolute "
      f"differences), min value is {arr.min():g}"
    )
  return arr


def check_eims(eims: Any) -> np.ndarray:
  """Elementary influence maps float64 ``[C, H, W]`` (`check_maps`)."""
  return check_maps(eims, "eims", 3, "[C, H, W]")


def check_eim_groups(eim_groups: Any) -> np.ndarray:
  """Grouped EIMs float64 ``[G, C, H, W]`` with G ≥ 2 groups to resample."""
  arr = check_maps(eim_groups, "eim_groups", 4, "[G, C, H, W]")
  if arr.shape[0] < 2:
    raise ValueError(
      "eim_groups must hold at least G=2 groups of latent pairs to resample "
      f"(shape [G, C, H, W]), got G={arr.shape[0]}; compute the EIMs on several "
      "disjoint groups of pairs"
    )
  return arr


def check_k(k: Any, n_channels: int, name: str = "k") -> int:
  """A number of modules ``1 ≤ k ≤ n_channels`` as an int."""
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"{name} must be an integer number of modules, got {k!r}")
  k = int(k)
  if k < 1:
    raise ValueError(f"{name}={k} must be >= 1")
  if k > n_channels:
    raise ValueError(f"{name}={k} larger than the number of channels C={n_channels}")
  return k


def check_choice(value: Any, choices: tuple, name: str) -> Any:
  """``value`` if it is one of ``choices``; else ValueError naming ``name``."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  return value


def check_percentile(percentile: Any) -> float:
  """A percentile in ``[0, 100)`` as a float."""
  p = float(percentile)
  if not (0.0 <= p < 100.0) or not np.isfinite(p):
    raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
  return p


def check_prep_percentile(percentile: Any) -> float:
  """Percentile of the EIM preprocessing: None means no threshold (0)."""
  return 0.0 if percentile is None else check_percentile(percentile)


def check_sigma(sigma: Any, default: float) -> float:
  """A smoothing width ≥ 0 in pixels as a float; ``None`` gives ``default``."""
  if sigma is None:
    return default
  s = float(sigma)
  if not np.isfinite(s) or s < 0:
    raise ValueError(f"sigma must be >= 0 (pixels) or None, got {sigma!r}")
  return s


def check_positive_float(value: Any, name: str) -> float:
  """A finite number > 0 as a float."""
  t = float(value)
  if not np.isfinite(t) or t <= 0:
    raise ValueError(f"{name} must be a positive number, got {value!r}")
  return t


def check_labels(labels: Any, n_channels: int, k: int) -> np.ndarray:
  """A partition: int64 ``[C]`` with values in ``[0, k)`` (integral floats accepted)."""
  lab = np.asarray(labels)
  if lab.ndim != 1 or lab.shape[0] != n_channels:
    raise ValueError(
      f"labels must be a 1-D integer array of length C={n_channels}, got shape {lab.shape}"
    )
  if lab.size and not np.issubdtype(lab.dtype, np.integer):
    if not np.all(np.equal(np.mod(lab, 1), 0)):
      raise ValueError("labels must be integers in [0, k)")
  lab = lab.astype(np.int64)
  if lab.size and (lab.min() < 0 or lab.max() >= k):
    raise ValueError(
      f"labels must be integers in [0, k) with k={k}, got values in [{lab.min()}, {lab.max()}]"
    )
  return lab
