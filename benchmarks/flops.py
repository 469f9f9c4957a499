"""FLOP accounting of the EIM benchmark: one definition of useful work for every contender.

With ``F_prefix`` and ``F_suffix`` the FLOPs per image that XLA's cost analysis
reports for `Generator.prefix` (latent → site) and `Generator.suffix` (site →
image), compiled for one batch and divided by its size (`flops_per_image`),

    useful_flops(site, N) = N · (2 · F_prefix + (C + 1) · F_suffix)

i.e. the work of the plain algorithm that runs the prefix once for each code of
a pair (z1 and z2), the suffix once for the reference G(z1) and once per hybrid
(C channels). A contender that recomputes the prefix per channel does more work
than this; cfmod_jax's linear path does less (it skips most of the first layer
after the site), so its "useful GFLOP/s" may exceed the machine's peak: that is
the algorithmic saving, not faster arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cfmod_jax.generator import Generator

DEFINITION = (
  "N * (2 * F_prefix + (C + 1) * F_suffix); F_* = XLA cost_analysis()['flops'] per image "
  "of Generator.prefix (latent -> site) / Generator.suffix (site -> image), batch 32"
)


def flops_per_image(gen: Generator, site: str, batch: int = 32) -> tuple[float, float]:
  """``(F_prefix, F_suffix)``: XLA cost-analysis FLOPs per image of the prefix up to
  ``site`` and the suffix from ``site``, compiled for a batch of ``batch``."""
  z = jax.ShapeDtypeStruct((batch, *gen.latent_shape), jnp.float32)
  h = jax.ShapeDtypeStruct((batch, *gen.site_shape(site)), jnp.float32)

  def flops(fn, *args):
    cost = jax.jit(fn).lower(gen.variables, *args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / batch

  return (
    flops(lambda v, z: gen.prefix(v, z, site), z),
    flops(lambda v, h, z: gen.suffix(v, h, z, site), h, z),
  )


def useful_flops(f_prefix: float, f_suffix: float, channels: int, n_pairs: int) -> float:
  """``N · (2 · F_prefix + (C + 1) · F_suffix)`` (see the module docstring)."""
  return n_pairs * (2.0 * f_prefix + (channels + 1) * f_suffix)


__all__ = ["DEFINITION", "flops_per_image", "useful_flops"]
