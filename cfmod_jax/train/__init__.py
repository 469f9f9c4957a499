"""Trainers for the shipped generators and the feature network.

``python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan``
runs `train_and_evaluate`; the package's modules:

  config    the `Trainer` bundle, `base_config` and the config field checks
  data      batch ``step`` of the training images (synthetic faces or CelebA)
  mesh      the data-parallel mesh and batch sharding
  rng       random keys as functions of (seed, step)
  registry  trainers by ``config.model``; `validate_config`
  state_io  orbax checkpoints of a run (save metadata, verified restore, `load_run`)
  loop      `train_and_evaluate` (determinism by step, resumption, logs)
  export    `cfmod_jax.train.export.export_run`: a run's final network as a folder
            that `cfmod_jax.load_generator` (or `cfmod_jax.lab.quality.load_featnet`)
            reads, with samples, quality and a model card

and the model files, one objective each:

  dcgan     non-saturating GAN loss, DCGAN discriminator (dcgan.py)
  vae       β-VAE, Gaussian or Bernoulli likelihood (vae.py)
  began     BEGAN with the k_t equilibrium term (began.py)
  featnet   factor predictor used for sample quality (featnet.py)

`export` is not imported here: it builds on `cfmod_jax.checkpoints`, which
reads trainer runs through `state_io` (``from cfmod_jax.train.export import
export_run``).
"""

from cfmod_jax.train.config import Trainer, base_config
from cfmod_jax.train.loop import RunResult, train_and_evaluate
from cfmod_jax.train.mesh import make_mesh
from cfmod_jax.train.registry import get_trainer, validate_config
from cfmod_jax.train.state_io import load_run

__all__ = [
  "RunResult",
  "Trainer",
  "base_config",
  "get_trainer",
  "load_run",
  "make_mesh",
  "train_and_evaluate",
  "validate_config",
]
