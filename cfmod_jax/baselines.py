"""Baselines for the modularity metrics: the same architecture with random weights.

A metric of learned modularity must beat what an *untrained* network of the same
shape already shows: random convolutions have local receptive fields, so their
channels' influence maps can look "distinct" without any learning. `untrained_like`
gives that network for any `Generator`: the same Linen module (architecture and
hyper-parameters), variables from ``module.init`` (or a wrapped generator's
``init_variables``, `cfmod_jax.wrap`) with a fixed seed, BatchNorm
statistics at their initial values (mean 0, variance 1), and the same latent
sampler, so sweeps with the same seed use the same latent pairs.

Scale: an untrained DCGAN (N(0, 0.02) weights) draws nearly flat images (pixel std
~1e-3 against ~0.5 for a trained one), so its influence maps are orders of
magnitude smaller. Compare only scale-free quantities (cosines, shares,
normalised distributions), never raw map magnitudes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax.generator import Generator

# Seed of the untrained baseline: far from the small seeds used for
# ``random:<arch>`` generators (``init_generator`` defaults to 0; tests use 1–9), so
# the baseline of a random generator is *another* random network.
UNTRAINED_SEED = 20_200_917


def untrained_like(gen: Generator, seed: int = UNTRAINED_SEED) -> Generator:
  """``gen``'s architecture with freshly initialised variables.

  Args:
    gen: any `Generator` (trained or not).
    seed: initialisation seed (``jax.random.key(seed)`` for ``module.init``).

  Returns:
    A `Generator` named ``<gen.name>-untrained`` whose variables have exactly the
    tree structure, shapes and dtypes of ``gen.variables`` (so sites, site shapes
    and every function of the library apply unchanged), and whose latents come from
    ``gen.sample_latents``.

  Raises:
    ValueError: ``seed`` is not an integer, or ``module.init`` does not produce
      the variables ``gen`` has (e.g. variables that were not made by ``init``).
  """
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  module = gen.module
  if hasattr(gen, "init_variables"):  # wrapped generators (cfmod_jax.wrap) know their init
    fresh = gen.init_variables(jax.random.key(int(seed)))
  else:
    z = jnp.zeros((1, *gen.latent_shape), jnp.float32)
    fresh = jax.jit(module.init)(jax.random.key(int(seed)), z)
  fresh_leaves = {
    jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(fresh)[0]
  }
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(gen.variables)
  leaves = []
  for path, leaf in paths_leaves:
    name = jax.tree_util.keystr(path)
    new = fresh_leaves.pop(name, None)
    if new is None or tuple(np.shape(new)) != tuple(np.shape(leaf)):
      raise ValueError(
        f"gen.variables{name} (shape {np.shape(leaf)}) has no counterpart of the same "
        f"shape in {type(module).__name__}.init "
        f"({'missing' if new is None else np.shape(new)}); untrained_like needs "
        "variables shaped as the module's own initialisation"
      )
    leaves.append(jnp.asarray(new, dtype=jnp.result_type(leaf)))
  if fresh_leaves:
    raise ValueError(
      f"gen.variables lack {sorted(fresh_leaves)} that {type(module).__name__}.init creates"
    )
  variables = jax.tree_util.tree_unflatten(treedef, leaves)
  if hasattr(gen, "with_variables"):  # keeps the wrapper's sites and hooks
    return gen.with_variables(
      variables, name=f"{gen.name}-untrained", latent_sampler=gen.sample_latents
    )
  return Generator(
    module, variables, name=f"{gen.name}-untrained", latent_sampler=gen.sample_latents
  )


__all__ = ["UNTRAINED_SEED", "untrained_like"]
