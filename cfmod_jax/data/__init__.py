"""Datasets: procedural synthetic faces (default, embedded) and CelebA via tfds.

The CelebA names are imported lazily so that using the synthetic faces does not
import jax / tensorflow_datasets.
"""

from cfmod_jax.data.synthfaces import (
    FACTOR_PARTS,
    FACTOR_SPECS,
    PART_NAMES,
    SynthFaces,
    generate,
    iterate_batches,
    part_masks,
    part_prior,
    render,
    sample_factors,
    save_sample_grid,
)

_CELEBA = ("celeba_batches", "load_source", "preprocess", "CROP_SIZE", "IMAGE_SIZE")

__all__ = [
    "FACTOR_PARTS",
    "FACTOR_SPECS",
    "PART_NAMES",
    "SynthFaces",
    "generate",
    "iterate_batches",
    "part_masks",
    "part_prior",
    "render",
    "sample_factors",
    "save_sample_grid",
    "celeba_batches",
    "load_celeba_source",
    "preprocess_celeba",
]


def __getattr__(name):
    aliases = {"load_celeba_source": "load_source", "preprocess_celeba": "preprocess"}
    target = aliases.get(name, name)
    if target in _CELEBA:
        from cfmod_jax.data import celeba

        return getattr(celeba, target)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
