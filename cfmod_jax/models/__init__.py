"""Generators shipped with cfmod_jax, and a registry to build them by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def build_module(arch: str, **kwargs):
  """The Linen generator module of architecture ``arch`` (dcgan, vae, began)."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[arch](**kwargs)


def init_generator(arch: str, seed: int = 0, **kwargs) -> Generator:
  """A randomly initialised `Generator` of architecture ``arch``."""
  module = build_module(arch, **kwargs)
  z = jnp.zeros((1, *module.latent_shape), jnp.float32)
  variables = jax.jit(module.init)(jax.random.key(seed), z)
  return Generator(module, variables, name=f"{arch}-random")


__all__ = ["ARCHITECTURES", "BEGANDiscriminator", "BEGANGenerator", "BetaVAE", "BigGANDeep",
           "biggan_generator", "load_biggan", "sample_latents_for_classes",
           "DCGANGenerator", "VAEDecoder", "build_module", "decoder_variables",
           "init_generator"]
