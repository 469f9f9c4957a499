"""Testing utilities: generators with a planted modular structure (`planted`), and
`tiny_biggan_config` (a BigGAN-deep small enough for tests and ``--tiny`` checks)."""

from cfmod_jax.models.biggan import BigGANConfig
from cfmod_jax.testing.planted import (
  NEW_SETTINGS,
  OLD_SETTINGS,
  SITE,
  VARIANTS,
  PlantedSpec,
  PlantedTruth,
  planted_eim_groups,
  planted_generator,
  region_masks,
  run_case,
  run_suite,
  score,
  strip_regions,
  tiled_regions,
  variant,
)


def tiny_biggan_config() -> BigGANConfig:
  """A BigGAN-deep of 4 blocks, width 4, 16×16 images, 10 classes: 4 → 8 → 16,
  self-attention before block1 (8×8, 32 channels); runs in seconds on a CPU."""
  return BigGANConfig(
    output_dim=16,
    z_dim=8,
    class_embed_dim=8,
    channel_width=4,
    num_classes=10,
    layers=((True, 16, 8), (True, 8, 4), (False, 4, 2), (False, 2, 1)),
    attention_layer_position=1,
    n_stats=3,
  )


__all__ = [
  "tiny_biggan_config",
  "NEW_SETTINGS",
  "OLD_SETTINGS",
  "SITE",
  "VARIANTS",
  "PlantedSpec",
  "PlantedTruth",
  "planted_eim_groups",
  "planted_generator",
  "region_masks",
  "run_case",
  "run_suite",
  "score",
  "strip_regions",
  "tiled_regions",
  "variant",
]
