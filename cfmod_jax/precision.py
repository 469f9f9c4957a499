"""Numerical precision of the hybrids' suffix (``precision=`` of `cfmod_jax.interventions`).

Three settings; the default leaves every computation as it always was:

* ``"float32"`` (default): parameters, activations and arithmetic in float32.
* ``"tf32"``: float32 storage; every matmul and convolution (prefix and suffix) is
  traced under ``jax.default_matmul_precision("tensorfloat32")``. XLA's CPU backend
  ignores the hint (results are bitwise those of ``"float32"``); on NVIDIA Ampere
  and newer GPUs the products use TF32 tensor cores (10-bit mantissa inputs,
  float32 accumulation); on TPUs it selects the bf16×3 pass.
* ``"bfloat16"``: the **suffix** (everything after the site: the hybrids and the
  reference ``G(z1)``) runs with parameters, site activations, latents and every
  intermediate activation in bfloat16 (8-bit mantissa). Kept in float32: the
  prefix (it runs once per pair, not once per hybrid), the mixing of the two
  codes' activations (rounded to bf16 afterwards), the sum of the linear split's
  pre-activation and its per-channel contribution (`_local_eim_sums`), the
  hybrids handed to reductions (cast back to float32), ``|hybrid − G(z1)|`` and
  every accumulated sum and output.

  Matmuls and convolutions on bf16 operands accumulate in float32 on all three
  backends without anything in the model code: XLA's CPU backend upcasts bf16
  dots/convolutions to float32 and rounds the result (checked in
  ``tests/test_precision.py``), cuBLAS/cuDNN run bf16 GEMMs and convolutions with
  a float32 compute type, and the TPU MXU accumulates in float32. What is rounded
  to bf16 is each layer's *output* (one rounding per stored activation). The
  model code (Flax layers with ``dtype=None``) follows its inputs' dtype, which
  is why parameters and latents are cast too: a float32 kernel would promote a
  bf16 activation back to float32.

Because the reference ``G(z1)`` goes through the same bf16 suffix as the
hybrids, a pixel that a channel cannot reach gets exactly zero influence in bf16
too (both images see identical bf16 inputs there); the rounding error is
confined to the pixels a channel influences. See docs/gpu_check.md for the error
against float32 measured on the shipped generators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PRECISIONS = ("float32", "tf32", "bfloat16")
DEFAULT_PRECISION = "float32"


def check_precision(precision: Any) -> str:
  """``precision`` if it is one of `PRECISIONS`; else a ValueError naming ``precision``."""
  if not isinstance(precision, str) or precision not in PRECISIONS:
    raise ValueError(
      f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {precision!r}"
    )
  return precision


def compute_dtype(precision: str) -> jnp.dtype | None:
  """The dtype of the suffix's parameters and activations: ``bfloat16`` for
  ``"bfloat16"``, None (no cast: float32) otherwise."""
  return jnp.dtype(jnp.bfloat16) if check_precision(precision) == "bfloat16" else None


def cast_floating(tree: Any, dtype: Any) -> Any:
  """``tree`` with every floating-point leaf cast to ``dtype`` (integer, boolean
  and key leaves untouched); ``dtype=None`` returns ``tree`` itself."""
  if dtype is None:
    return tree

  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x

  return jax.tree.map(cast, tree)


@contextlib.contextmanager
def matmul_scope(precision: str) -> Iterator[None]:
  """Context in which traced matmuls/convolutions get ``precision``'s default
  (``jax.default_matmul_precision('tensorfloat32')`` for ``"tf32"``; nothing
  otherwise). Must be active while the function is *traced*."""
  if check_precision(precision) == "tf32":
    with jax.default_matmul_precision("tensorfloat32"):
      yield
  else:
    yield


def traced_with(fn: Callable, precision: str) -> Callable:
  """``fn`` traced inside `matmul_scope` (``fn`` itself unless ``"tf32"``)."""
  if check_precision(precision) != "tf32":
    return fn

  def wrapped(*args, **kwargs):
    with matmul_scope(precision):
      return fn(*args, **kwargs)

  return wrapped


def cache_key(precision: str) -> tuple[str, ...]:
  """Suffix of a compile-cache key: ``()`` for float32 (keys unchanged), else
  ``(precision,)``."""
  return () if check_precision(precision) == DEFAULT_PRECISION else (precision,)


def relative_errors(approx: ArrayLike, ref: ArrayLike) -> dict[str, float]:
  """Error of ``approx`` against ``ref`` relative to the mean magnitude of ``ref``:
  ``{'max': max|Δ| / mean|ref|, 'mean': mean|Δ| / mean|ref|}`` (float64 on host)."""
  a = np.asarray(approx, np.float64)
  r = np.asarray(ref, np.float64)
  if a.shape != r.shape:
    raise ValueError(f"approx and ref must have the same shape, got {a.shape} and {r.shape}")
  scale = float(np.abs(r).mean())
  d = np.abs(a - r)
  if scale == 0.0:
    return {"max": float(d.max()), "mean": float(d.mean())}
  return {"max": float(d.max()) / scale, "mean": float(d.mean()) / scale}


__all__ = [
  "PRECISIONS",
  "relative_errors",
]
