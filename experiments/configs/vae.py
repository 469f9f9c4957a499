"""β-VAE on the synthetic faces (the shipped ``vae-synthfaces``).

Likelihood: Gaussian with fixed σ = ``obs_sigma`` on images in [-1, 1]
(``likelihood='bernoulli'`` for the cross-entropy on (x+1)/2); β weights the KL.
σ = 0.2 and β = 2: the KL weighs 2σ²β = 0.16 against the summed squared error,
8× more than with σ = 0.1, β = 1, whose KL reached ~150 nats and whose samples
from the prior were muddy (prior holes).
"""

import ml_collections

from cfmod_jax.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("vae")
  config.batch_size = 32
  config.num_steps = 2500
  config.checkpoint_every = 250
  config.sample_every = 250
  config.generator = ml_collections.ConfigDict({"latent_dim": 32, "width": 32})
  config.beta = 2.0
  config.likelihood = "gaussian"
  config.obs_sigma = 0.2
  config.optimizer = ml_collections.ConfigDict({"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999})
  return config


__all__ = ["get_config"]
