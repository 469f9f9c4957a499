"""Your own generator in the main job: a factory, and a registered architecture.

The factory form — no change to cfmod_jax, the file stays where it is:

    python -m experiments.analyze \\
        --generator docs/examples/own_generator_cli.py:make_generator \\
        --generator_args '{"width": 8}' --config.sites=block2 --config.n_pairs=8 \\
        --config.block_pairs=4 --config.k=2 --config.eval_pairs=8 --config.eval_groups=2 \\
        --config.n_null=4 --config.untrained_baseline=false --out out/own

(``--config.untrained_baseline=false``: the untrained baseline is not built automatically for
wrapped plain Linen models yet; a `StagedGenerator` factory gets it.)

(``my_pkg.my_module:make_generator`` works the same for an importable module.)

The checkpoint form — save the weights once as an exported folder whose
``checkpoint.json`` names an architecture, and register that name before loading:

    register()                                   # once per process
    save(make_generator(), "out/own-ckpt")       # then, anywhere:
    gen = cfmod_jax.load_generator("out/own-ckpt")

Both use the Linen generator of ``own_generator.py`` (residual up-blocks, no
cfmod_jax base class), wrapped with `cfmod_jax.wrap_linen`; tests/test_specs.py
runs them.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

import cfmod_jax as cf
from cfmod_jax import checkpoints

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from own_generator import OwnLinenGenerator  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ["ARCH", "SITES", "make_generator", "register", "save"]

ARCH = "own-linen"
SITES = {"block1": "block1", "block2": "block2", "block2.conv1": "block2/conv1"}


def _wrap(module, variables, name):
  return cf.wrap_linen(module, variables, sites=SITES, latent_shape=(module.latent_dim,), name=name)


def make_generator(latent_dim: int = 32, width: int = 16, seed: int = 0) -> cf.Generator:
  """The factory of ``--generator own_generator_cli.py:make_generator``: a
  `cfmod_jax.Generator` (here randomly initialised; load your trained variables
  instead)."""
  module = OwnLinenGenerator(latent_dim=latent_dim, width=width)
  variables = module.init(jax.random.key(seed), jnp.zeros((1, latent_dim)))
  gen = _wrap(module, variables, name=f"own-linen-w{width}")
  gen.dataset = None  # e.g. "synthfaces" if trained on the synthetic faces
  return gen


def register() -> None:
  """Makes ``"arch": "own-linen"`` checkpoints loadable (idempotent)."""
  if ARCH not in cf.models.architectures():
    cf.register_architecture(
      ARCH, OwnLinenGenerator, to_generator=lambda m, v, name: _wrap(m, v, name)
    )


def save(gen: cf.Generator, path: str, dataset: str | None = None) -> str:
  """Writes ``gen``'s variables as an exported folder of arch ``own-linen``."""
  kwargs = {"latent_dim": gen.module.latent_dim, "width": gen.module.width}
  return checkpoints.save_variables(
    path, gen.variables, kind="generator", arch=ARCH, kwargs=kwargs, extra={"dataset": dataset}
  )


if __name__ == "__main__":
  g = make_generator(width=8)
  print(g, {s: g.site_shape(s) for s in g.sites})
