"""The training data of the trainers: batch ``step`` as a function of (data_seed, step).

``config.dataset`` is 'synthfaces' (the procedural faces, generated on the fly)
or 'celeba' (tfds ``celeb_a`` prepared in ``config.data_dir``, split 'train').
"""

from __future__ import annotations

import functools
from typing import Any

import ml_collections
import numpy as np

from cfmod_jax.data import synthfaces


def training_images(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
  """Batch ``step`` of the training images: ``{'images': [B, 64, 64, 3]}`` in [-1, 1],
  from the synthetic faces or CelebA (``config.dataset``); a function of
  (data_seed, step), so resumed runs see the same data."""
  if config.get("dataset", "synthfaces") == "celeba":
    from cfmod_jax.data import celeba  # pylint: disable=g-import-not-at-top

    source = _celeba_source(config.data_dir)
    return {"images": celeba.celeba_batch(source, step, config.batch_size, config.data_seed)}
  return {"images": synthfaces.generate(config.batch_size, seed=(config.data_seed, step)).images}


DATASETS = ("synthfaces", "celeba")


@functools.lru_cache(maxsize=2)
def _celeba_source(data_dir: str) -> Any:
  from cfmod_jax.data import celeba  # pylint: disable=g-import-not-at-top

  return celeba.load_source(data_dir, celeba.TRAIN_SPLIT)


def check_dataset(config: ml_collections.ConfigDict) -> None:
  """Unknown dataset → ValueError; CelebA missing or unprepared → the loader's clear error."""
  dataset = config.get("dataset", "synthfaces")
  if dataset not in DATASETS:
    raise ValueError(f"config.dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
  if dataset != "synthfaces" and config.model == "featnet":
    raise ValueError(
      "config.model='featnet' learns the synthetic faces' factors; it needs "
      "config.dataset='synthfaces'"
    )
  if dataset == "celeba":
    if not config.get("data_dir"):
      raise ValueError(
        "config.dataset='celeba' needs config.data_dir: the tfds data_dir "
        "holding the prepared celeb_a dataset"
      )
    _celeba_source(config.data_dir)


__all__ = ["DATASETS", "check_dataset", "training_images"]
