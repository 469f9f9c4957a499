"""The feature network of the sample-quality number (the shipped ``featnet-synthfaces``)."""

import ml_collections

from cfmod_jax.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("featnet")
  config.batch_size = 64
  config.num_steps = 2000
  config.sample_every = 0  # nothing to sample
  config.featnet = ml_collections.ConfigDict({"width": 16, "feature_dim": 64})
  config.regression_weight = 1.0
  config.optimizer = ml_collections.ConfigDict({"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999})
  return config


__all__ = ["get_config"]
