"""cfmod_jax: counterfactual modularity analysis of deep generative models.

The paper's pipeline in one import (see README), one name per concept:
  Generator, StagedGenerator          the generator protocol (generator.py)
  init_generator, load_generator,
  register_architecture               shipped architectures and checkpoints (models/, checkpoints.py)
  wrap_linen, wrap_nnx                your own Flax generator (wrap.py)
  hybrids, influence_maps,
  elementary_influence_maps,
  hybrid_map_reduce, masks_from_labels  interventions, the engine (interventions.py)
  find_modules                        EIMs → K → modules of one site in one call (modules.py)
  cluster_channels, choose_k          clustering of given EIMs into modules (clustering.py)
  module_overlap                      the paper's modularity metric (metrics.py)
  AnalysisConfig, analyze             the main job: every site, baselines, files (analysis.py)
  from_torch                          a PyTorch nn.Module as a Generator (torch_bridge/)
Everything else stays importable from its module.
"""

from cfmod_jax.analysis import AnalysisConfig
from cfmod_jax.analysis import run as analyze  # the main job in one call
from cfmod_jax.checkpoints import load_generator
from cfmod_jax.clustering import choose_k, cluster_channels
from cfmod_jax.generator import Generator, StagedGenerator
from cfmod_jax.interventions import (
  elementary_influence_maps,
  hybrid_map_reduce,
  hybrids,
  influence_maps,
  masks_from_labels,
)
from cfmod_jax.metrics import module_overlap
from cfmod_jax.models import init_generator, register_architecture
from cfmod_jax.modules import find_modules
from cfmod_jax.torch_bridge import from_torch
from cfmod_jax.wrap import wrap_linen, wrap_nnx

__all__ = [
  "AnalysisConfig",
  "Generator",
  "StagedGenerator",
  "choose_k",
  "cluster_channels",
  "analyze",
  "elementary_influence_maps",
  "find_modules",
  "from_torch",
  "hybrid_map_reduce",
  "hybrids",
  "influence_maps",
  "init_generator",
  "load_generator",
  "masks_from_labels",
  "module_overlap",
  "register_architecture",
  "wrap_linen",
  "wrap_nnx",
]
