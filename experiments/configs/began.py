"""BEGAN on the synthetic faces (the shipped ``began-synthfaces``).

Batch 16 as in Berthelot et al.; widths (n = 16 instead of 64–128) and steps
reduced for a 2-core CPU. The paper's γ = 0.5, λ_k = 0.001 and learning rate
1e-4 are meant for far longer training. Tried here: with λ_k = 0.001, k_t was
0.003 after 500 steps and the generator had collapsed to one flat image; with
λ_k = 0.01 and γ = 0.5 it collapsed too, because the flat image's reconstruction
error already satisfies the equilibrium L(G(z)) = γ·L(x). Hence γ = 0.7,
λ_k = 0.01 and a learning rate of 2e-4: the generator then draws a face (hair,
skin, mouth) but, within 3000 steps, still ignores z (mode collapse; see the
model card). Also tried without success within the budget: γ = 1, width 8 with
5000 steps, learning rate 5e-4 (β1 0.5 or 0.9), k_init = 0.3, and holding G
fixed for the first 500 steps. BEGAN needs far more steps than a 2-core CPU
gives in minutes (the same command with ``--config.num_steps`` raised resumes).
"""

import ml_collections

from cfmod_jax.train.common import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("began")
  config.batch_size = 16
  config.num_steps = 3000
  config.checkpoint_every = 250
  config.sample_every = 250
  config.generator = ml_collections.ConfigDict({"latent_dim": 64, "width": 16})
  config.discriminator = ml_collections.ConfigDict({"latent_dim": 64, "width": 16})
  config.gamma = 0.7
  config.lambda_k = 0.01
  config.k_init = 0.0
  config.optimizer = ml_collections.ConfigDict(
      {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999})
  return config
