"""DCGAN on the synthetic faces (the shipped ``dcgan-synthfaces``).

Width 32 (half the paper's 64) so that it trains on a 2-core CPU in ~12 minutes
and its float32 generator fits the 5 MB checkpoint budget.
"""

import ml_collections

from cfmod_jax.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("dcgan")
  config.batch_size = 32
  config.num_steps = 2000
  config.checkpoint_every = 250
  config.sample_every = 250
  config.generator = ml_collections.ConfigDict({"latent_dim": 100, "width": 32})
  config.discriminator = ml_collections.ConfigDict({"width": 32})
  config.optimizer = ml_collections.ConfigDict({"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999})
  # Exported G = moving average of G's weights (smooths the GAN's oscillation).
  config.ema_decay = 0.999
  # R1 penalty on D at real images (0 = off); see cfmod_jax.train.dcgan.
  config.r1_gamma = 1.0
  config.r1_batch = 8
  return config


__all__ = ["get_config"]
