"""Testing utilities: generators with a planted modular structure (`planted`)."""

from cfmod_jax.testing.planted import (SITE, VARIANTS, PlantedSpec, PlantedTruth,
                                       planted_eim_groups, planted_generator, region_masks,
                                       score, strip_regions, tiled_regions, variant)

__all__ = ["SITE", "VARIANTS", "PlantedSpec", "PlantedTruth", "planted_eim_groups",
           "planted_generator", "region_masks", "score", "strip_regions", "tiled_regions",
           "variant"]
