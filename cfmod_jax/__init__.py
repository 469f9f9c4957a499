"""cfmod_jax: counterfactual modularity analysis of deep generative models.

Public API (see README):
  Generator, StagedGenerator          the generator protocol (generator.py)
  hybrids, influence_maps,
  elementary_influence_maps           interventions (interventions.py)
  init_generator, build_module        the shipped architectures (models/)
  load_generator                      shipped or trained checkpoints (checkpoints.py)
  register_architecture               checkpoints of your own architectures (models/)
  wrap_linen, wrap_nnx                sites inside unmodified Flax generators (wrap.py)
"""

from cfmod_jax.checkpoints import load_generator
from cfmod_jax.generator import Generator, StagedGenerator
from cfmod_jax.interventions import (
  elementary_influence_map_sums,
  elementary_influence_maps,
  hybrids,
  influence_map_sums,
  influence_maps,
)
from cfmod_jax.models import build_module, init_generator, register_architecture
from cfmod_jax.wrap import LinenGenerator, NNXGenerator, wrap_linen, wrap_nnx

__all__ = [
  "Generator",
  "LinenGenerator",
  "NNXGenerator",
  "StagedGenerator",
  "build_module",
  "elementary_influence_map_sums",
  "elementary_influence_maps",
  "hybrids",
  "influence_map_sums",
  "influence_maps",
  "init_generator",
  "load_generator",
  "register_architecture",
  "wrap_linen",
  "wrap_nnx",
]
