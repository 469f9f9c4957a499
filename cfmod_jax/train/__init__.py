"""Trainers for the shipped generators and the feature network.

``python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan``
runs `train_and_evaluate`; see `cfmod_jax.train.common` for the loop (data
parallelism, determinism by step, checkpoints and resumption, logs) and the
model files for each objective:

  dcgan     non-saturating GAN loss, DCGAN discriminator (dcgan.py)
  vae       β-VAE, Gaussian or Bernoulli likelihood (vae.py)
  began     BEGAN with the k_t equilibrium term (began.py)
  featnet   factor predictor used for sample quality (featnet.py)

`export_run` copies a run's final network into a folder that
`cfmod_jax.load_generator` (or `cfmod_jax.quality.load_featnet`) reads.
"""

from cfmod_jax.train.common import (
  RunResult,
  Trainer,
  base_config,
  get_trainer,
  load_run,
  make_mesh,
  train_and_evaluate,
  validate_config,
)
from cfmod_jax.train.export import export_run

__all__ = [
  "RunResult",
  "Trainer",
  "base_config",
  "export_run",
  "get_trainer",
  "load_run",
  "make_mesh",
  "train_and_evaluate",
  "validate_config",
]
