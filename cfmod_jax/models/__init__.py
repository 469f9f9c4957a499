"""Generators shipped with cfmod_jax, and a registry to build them by name."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax._validate import check_seed
from cfmod_jax.generator import Generator
from cfmod_jax.models.biggan import (BigGANDeep, biggan_generator, load_biggan,
                                     sample_latents_for_classes)
from cfmod_jax.models.began import BEGANDiscriminator, BEGANGenerator
from cfmod_jax.models.dcgan import DCGANGenerator
from cfmod_jax.models.vae import BetaVAE, VAEDecoder, decoder_variables

ARCHITECTURES = {
    "dcgan": DCGANGenerator,
    "vae": VAEDecoder,
    "began": BEGANGenerator,
}


def _check_kwargs(arch: str, cls, kwargs) -> dict:
  """Field names and values of ``cls`` checked: integer fields (``latent_dim``,
  ``width``) must be positive integers, boolean fields booleans."""
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f"unknown argument(s) {', '.join(unknown)} for arch={arch!r}; valid: "
                     f"{', '.join(sorted(fields))}")
  out = {}
  for k, v in kwargs.items():
    default = fields[k].default
    if isinstance(default, bool):
      if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{k} must be True or False for arch={arch!r}, got {v!r}")
      v = bool(v)
    elif isinstance(default, int):
      if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
        raise ValueError(f"{k} must be a positive integer for arch={arch!r}, got {v!r}")
      v = int(v)
    out[k] = v
  return out


def build_module(arch: str, **kwargs):
  """The Linen generator module of architecture ``arch`` (dcgan, vae, began).

  Keyword arguments are the module's fields (``latent_dim``, ``width``, and
  BEGAN's ``batch_norm``/``skip``); unknown names, non-positive or non-integer
  sizes and non-boolean flags raise a ValueError naming the argument.
  """
  if not isinstance(arch, str) or arch not in ARCHITECTURES:
    raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
  cls = ARCHITECTURES[arch]
  return cls(**_check_kwargs(arch, cls, kwargs))


def init_generator(arch: str, seed: int = 0, **kwargs) -> Generator:
  """A randomly initialised `Generator` of architecture ``arch`` (see
  `build_module` for ``kwargs``); ``seed`` is a non-negative integer."""
  seed = check_seed(seed, "seed")
  module = build_module(arch, **kwargs)
  z = jnp.zeros((1, *module.latent_shape), jnp.float32)
  variables = jax.jit(module.init)(jax.random.key(seed), z)
  return Generator(module, variables, name=f"{arch}-random")


__all__ = ["ARCHITECTURES", "BEGANDiscriminator", "BEGANGenerator", "BetaVAE", "BigGANDeep",
           "biggan_generator", "load_biggan", "sample_latents_for_classes",
           "DCGANGenerator", "VAEDecoder", "build_module", "decoder_variables",
           "init_generator"]
