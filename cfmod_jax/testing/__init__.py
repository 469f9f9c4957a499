"""Testing utilities: generators with a planted modular structure (`planted`)."""

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
  suite_markdown,
  tiled_regions,
  variant,
)

__all__ = [
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
  "suite_markdown",
  "tiled_regions",
  "variant",
]
