"""BEGAN on the synthetic faces (the shipped ``began-synthfaces``).

Defaults = the shipped run: batch 16 as in Berthelot et al., widths reduced to 16 for a
2-core CPU, BatchNorm in the generator and γ = 1 (the two departures from the paper's
settings, both needed here), λ_k = 0.01, feature matching λ_fm = 0.1 on the
discriminator's encoder code, moving average of G 0.999, 16000 steps, exported at the
step of the lowest FD. Why each setting is what it is, and every run tried: "Training
history" in cfmod_jax/weights/began-synthfaces/MODEL_CARD.md.
"""

import ml_collections

from cfmod_jax.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("began")
  config.batch_size = 16
  config.num_steps = 16000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 40
  config.sample_every = 1000
  config.generator = ml_collections.ConfigDict(
    {"latent_dim": 64, "width": 16, "batch_norm": True, "skip": False}
  )
  config.discriminator = ml_collections.ConfigDict({"latent_dim": 64, "width": 16})
  config.gamma = 1.0
  config.lambda_k = 0.01
  config.k_init = 0.0
  config.mode_seeking = 0.0
  config.feature_matching = 0.1
  config.ema_decay = 0.999
  config.optimizer = ml_collections.ConfigDict({"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999})
  return config


__all__ = ["get_config"]
