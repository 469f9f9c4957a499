"""XLA's own account of the engine's memory, to compare with `cfmod_jax.memory`'s
estimate (`studies.gpu_check` prints both side by side)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cfmod_jax import _engine
from cfmod_jax._validate import check_positive_int
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.memory import abstract_tree
from cfmod_jax.precision import check_precision


def compiled_chunk_bytes(
  gen: Generator, site: str, pair_chunk: int, mask_chunk: int, precision: str = "float32"
) -> dict[str, int] | None:
  """XLA's own account (``compiled.memory_analysis()``) of one chunk of the stream:
  the influence-map kernel of `cfmod_jax.interventions` (`cfmod_jax._engine`)
  compiled for one chunk of ``pair_chunk`` pairs and ``mask_chunk`` masks at
  ``site`` (nothing is run).

  Returns ``{'temp', 'argument', 'output', 'total'}`` bytes, or None where the
  backend gives no memory analysis. Compare ``total`` with
  ``memory.working_set_bytes(memory.chunk_cost(...), pair_chunk, mask_chunk, mask_chunk)``.
  """
  check_generator(gen, "gen")
  c = gen.site_shape(site)[-1]
  pair_chunk = check_positive_int(pair_chunk, "pair_chunk")
  mask_chunk = check_positive_int(mask_chunk, "mask_chunk")
  local = _engine.local_hybrid_stream(
    gen,
    site,
    None,
    _engine.influence_sums,
    pair_chunk,
    mask_chunk,
    False,
    check_precision(precision),
  )
  z = jax.ShapeDtypeStruct((pair_chunk, *gen.latent_shape), jnp.float32)
  args = (
    abstract_tree(gen.variables),
    (jax.ShapeDtypeStruct((mask_chunk, c), jnp.float32), ()),
    z,
    z,
    jax.ShapeDtypeStruct((pair_chunk, 1), jnp.float32),
  )
  analysis = jax.jit(local).lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  out = {
    "temp": int(analysis.temp_size_in_bytes),
    "argument": int(analysis.argument_size_in_bytes),
    "output": int(analysis.output_size_in_bytes),
  }
  out["total"] = sum(out.values())
  return out


__all__ = ["compiled_chunk_bytes"]
