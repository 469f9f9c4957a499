"""Helpers shared by the tests (imported as `_helpers`: pytest puts tests/ on sys.path)."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax import analysis
from cfmod_jax.models import biggan as bg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The main job at its smallest: one site, 8 pairs in 2 blocks, K = 2, a tiny evaluation.
TINY_ANALYSIS = dict(
  sites=("block4",),
  n_pairs=8,
  block_pairs=4,
  k=2,
  n_boot=2,
  eval_pairs=4,
  eval_groups=2,
  n_null=2,
  n_ci=10,
  hybrid_rows=2,
  hybrid_cols=2,
  pair_chunk=4,
  mask_chunk=4,
)


def tiny_analysis_config(**overrides) -> analysis.AnalysisConfig:
  """A main-job config that runs in seconds on a width-4 generator: `TINY_ANALYSIS`,
  with ``overrides`` replacing fields (``k=None`` lets K be chosen among ``k_values``)."""
  return analysis.AnalysisConfig(**{**TINY_ANALYSIS, **overrides})


def own_generator_example(name: str = "own_generator"):
  """docs/examples/own_generator.py (user Linen and NNX generators) as module ``name``."""
  if name in sys.modules:
    return sys.modules[name]
  path = os.path.join(ROOT, "docs", "examples", "own_generator.py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod  # dataclasses resolve the Linen fields' annotations there
  spec.loader.exec_module(mod)
  return mod


def random_biggan_variables(cfg: bg.BigGANConfig, seed: int = 0):
  """Random variables with the shapes of `BigGANDeep(cfg)` — much faster than
  `bg.init_variables` (no Flax init): kernels ~ N(0, 1/fan_in), positive variances."""
  template = jax.eval_shape(
    bg.BigGANDeep(cfg).init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, cfg.latent_dim), jnp.float32),
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    shape = leaf.shape
    if "running_vars" in name:
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if "running_means" in name:
      return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    scale = 0.1 if len(shape) == 1 else 1.0 / np.sqrt(fan_in)
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, template)
