"""The trainers by ``config.model`` name, and the check of a whole config."""

from __future__ import annotations

import ml_collections

from cfmod_jax.train import began, dcgan, featnet, vae
from cfmod_jax.train.config import Trainer, check_config_seed, check_int
from cfmod_jax.train.data import check_dataset


def _registry() -> dict[str, Trainer]:
  return {t.name: t for t in (dcgan.TRAINER, vae.TRAINER, began.TRAINER, featnet.TRAINER)}


def get_trainer(model: str) -> Trainer:
  """The trainer of ``config.model``; a ValueError lists the valid names."""
  trainers = _registry()
  if model not in trainers:
    raise ValueError(
      f"config.model={model!r} is unknown; valid models: {', '.join(sorted(trainers))}"
    )
  return trainers[model]


def validate_config(config: ml_collections.ConfigDict) -> Trainer:
  """Checks the loop fields and the trainer's own fields; returns the trainer.

  Everything is checked before anything is compiled; errors are ValueErrors
  naming the field.
  """
  if "model" not in config:
    raise ValueError("config.model is missing")
  trainer = get_trainer(config.model)
  for field in (
    "num_steps",
    "batch_size",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_samples",
    "quality_samples",
  ):
    check_int(config, field, 1)
  for field in ("seed", "data_seed"):
    check_config_seed(config, field)
  check_int(config, "sample_every", 0)
  check_dataset(config)
  trainer.validate(config)
  return trainer


__all__ = ["get_trainer", "validate_config"]
