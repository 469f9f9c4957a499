"""Datasets: procedural synthetic faces (default, embedded) and CelebA via tfds.

Names are resolved lazily: using the synthetic faces does not import
tensorflow_datasets.
"""

import importlib

_EXPORTS = {
  # synthfaces
  "FACTOR_PARTS": ("synthfaces", "FACTOR_PARTS"),
  "FACTOR_SPECS": ("synthfaces", "FACTOR_SPECS"),
  "PART_NAMES": ("synthfaces", "PART_NAMES"),
  "SynthFaces": ("synthfaces", "SynthFaces"),
  "face_regions": ("synthfaces", "face_regions"),
  "generate": ("synthfaces", "generate"),
  "iterate_batches": ("synthfaces", "iterate_batches"),
  "part_masks": ("synthfaces", "part_masks"),
  "part_prior": ("synthfaces", "part_prior"),
  "render": ("synthfaces", "render"),
  "sample_factors": ("synthfaces", "sample_factors"),
  "save_sample_grid": ("synthfaces", "save_sample_grid"),
  # celeba
  "celeba_batches": ("celeba", "celeba_batches"),
  "load_celeba_source": ("celeba", "load_source"),
  "preprocess_celeba": ("celeba", "preprocess"),
}

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def __dir__():
  return sorted(list(globals()) + __all__)
