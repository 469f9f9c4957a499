"""Naive JAX contender: one jitted call per channel, each recomputing the forward pass.

This is deliberately the straightforward port of the hook-based loop: compile a
function of ``(variables, z1, a2, x1, c)`` once (``c`` is a traced channel
index, so no recompilation), then loop over channels in Python. Each call runs the
prefix from z1, overwrites channel c with z2's activations ``a2`` (computed once
per pair chunk), runs the suffix, and returns ``Σ_pairs,colours |hybrid − G(z1)|``.
No reuse of the prefix across channels, no batching over channels, no linearity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax.generator import Generator


def channel_sum_fn(gen: Generator, site: str) -> Callable:
  """``(variables, z1 [B, z], a2 [B, H, W, C], x1 [B, 64, 64, 3], c) → [64, 64]``."""

  def fn(variables, z1, a2, x1, c):
    a1 = gen.prefix(variables, z1, site)
    onehot = (jnp.arange(a1.shape[-1]) == c).astype(a1.dtype)
    h = a1 + onehot * (a2 - a1)
    y = gen.suffix(variables, h, z1, site)
    return jnp.abs(y - x1).sum(axis=(0, 3))

  return jax.jit(fn)


def naive_eims(
  gen: Generator,
  site: str,
  z1: np.ndarray,
  z2: np.ndarray,
  *,
  pair_chunk: int = 128,
  channels: Sequence[int] | None = None,
  progress: Callable[[int], None] | None = None,
  timings: dict | None = None,
) -> np.ndarray:
  """EIMs ``[C', H, W] float32`` by one jitted forward pass per channel (and pair chunk).

  ``timings``, if given, receives ``compile_s``: time spent getting the per-channel
  function (lowering + XLA compilation with ``jit(...).lower().compile()`` on the
  first call for a site and batch size; ~0 afterwards, as it is cached on ``gen``).
  """
  z1, z2 = np.asarray(z1, np.float32), np.asarray(z2, np.float32)
  n = z1.shape[0]
  c_all = gen.site_shape(site)[-1]
  chans = list(range(c_all)) if channels is None else list(channels)
  prefix = gen.jitted(("naive_prefix", site), lambda: jax.jit(lambda v, z: gen.prefix(v, z, site)))
  generate = gen.jitted("naive_generate", lambda: jax.jit(gen.generate))
  acc = np.zeros((len(chans), *gen.image_shape[:2]), np.float32)
  for lo in range(0, n, pair_chunk):
    a, b = jnp.asarray(z1[lo : lo + pair_chunk]), jnp.asarray(z2[lo : lo + pair_chunk])
    a2, x1 = prefix(gen.variables, b), generate(gen.variables, a)
    t0 = time.perf_counter()  # compiled once per site and batch size, cached on `gen`
    fn = gen.jitted(
      ("naive_channel_sum", site, a.shape[0]),
      lambda: channel_sum_fn(gen, site).lower(gen.variables, a, a2, x1, jnp.int32(0)).compile(),  # noqa: B023 (called at once)
    )
    if timings is not None:
      timings["compile_s"] = timings.get("compile_s", 0.0) + time.perf_counter() - t0
    for j, c in enumerate(chans):
      acc[j] += np.asarray(fn(gen.variables, a, a2, x1, jnp.int32(c)))
      if progress is not None:
        progress(1)
  return acc / (3.0 * n)


__all__ = ["channel_sum_fn", "naive_eims"]
