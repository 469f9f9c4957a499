"""β-VAE (Higgins et al. 2017) for 64×64 images; its decoder is the generator.

Encoder: 4 stride-2 convolutions (64→32→16→8→4) + dense → (mean, log-variance).
Decoder (`VAEDecoder`, staged like DCGAN without BatchNorm): z → block1 4×4×8w →
block2 8×8×4w → block3 16×16×2w → block4 32×32×w → image (tanh). The decoder
output is the mean of the likelihood over images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfmod_jax.generator import VectorLatentGenerator, stage_names
from cfmod_jax.models.dcgan import ProjectStage, UpStage


class VAEDecoder(VectorLatentGenerator):
  latent_dim: int = 32
  width: int = 32

  site_names = stage_names("block", 4)

  def setup(self) -> None:
    w, init = self.width, nn.initializers.lecun_normal()
    up = lambda f, **kw: UpStage(f, batch_norm=False, kernel_init=init, **kw)
    self.stages = [
      ProjectStage(8 * w, batch_norm=False, kernel_init=init),
      up(4 * w),
      up(2 * w),
      up(w),
      up(3, rgb=True),
    ]


class VAEEncoder(nn.Module):
  latent_dim: int = 32
  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    for mult in (1, 2, 4, 8):
      x = nn.relu(nn.Conv(self.width * mult, (4, 4), strides=(2, 2))(x))
    x = x.reshape(x.shape[0], -1)
    stats = nn.Dense(2 * self.latent_dim)(x)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, logvar


class BetaVAE(nn.Module):
  """Returns ``(reconstruction, mean, logvar)``; needs an rng named 'sample'."""

  latent_dim: int = 32
  width: int = 32

  def setup(self) -> None:
    self.encoder = VAEEncoder(self.latent_dim, self.width)
    self.decoder = VAEDecoder(self.latent_dim, self.width)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean, logvar = self.encoder(x)
    if train:
      eps = jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype)
      z = mean + jnp.exp(0.5 * logvar) * eps
    else:
      z = mean
    return self.decoder(z, train=train), mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)


def decoder_variables(vae_variables: Mapping[str, Any]) -> dict[str, Any]:
  """Extracts the decoder's variables from a `BetaVAE`'s variables."""
  return {"params": vae_variables["params"]["decoder"]}


__all__ = ["BetaVAE", "VAEDecoder", "VAEEncoder", "decoder_variables"]
