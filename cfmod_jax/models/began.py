"""BEGAN generator (Berthelot et al. 2017): the decoder of BEGAN's autoencoder.

z [N, latent_dim] → dense 8×8×n → (conv3×3 ELU ×2) → block1 8×8×n →
[nearest ×2, (conv3×3 ELU) ×2] → block2 16×16×n → block3 32×32×n →
block4 64×64×n → conv3×3 → image (tanh, so images lie in [-1, 1]).
No normalisation layers, as in the paper. ``width`` is n.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cfmod_jax.generator import SplitStage, VectorLatentGenerator, stage_names
from cfmod_jax.ops import Conv, upsample_nearest


class ConvPair(SplitStage):
  """(×2 nearest upsampling) → conv3×3 → ELU → conv3×3 → ELU.

  ``pre`` = upsampling + first convolution (linear in the input).
  """
  features: int
  upsample: bool

  def setup(self):
    self.conv1 = Conv(self.features, (3, 3))
    self.conv2 = Conv(self.features, (3, 3))

  def _up(self, x):
    return upsample_nearest(x, 2) if self.upsample else x

  def pre(self, x):
    return self.conv1(self._up(x))

  def pre_delta(self, delta, start):
    return self.conv1.per_channel(self._up(delta), start)

  def post(self, y, train: bool = False):
    return nn.elu(self.conv2(nn.elu(y)))


class BEGANProject(nn.Module):
  features: int

  def setup(self):
    self.dense = nn.Dense(8 * 8 * self.features)
    self.convs = ConvPair(self.features, upsample=False)

  def __call__(self, z, train: bool = False):
    x = self.dense(z).reshape(z.shape[0], 8, 8, self.features)
    return self.convs(x, train)


class BEGANToRGB(SplitStage):

  def setup(self):
    self.conv = Conv(3, (3, 3))

  def pre(self, x):
    return self.conv(x)

  def pre_delta(self, delta, start):
    return self.conv.per_channel(delta, start)

  def post(self, y, train: bool = False):
    return jnp.tanh(y)


class BEGANGenerator(VectorLatentGenerator):
  """BEGAN decoder-style generator at 64×64."""
  latent_dim: int = 64
  width: int = 64

  site_names = stage_names("block", 4)

  def setup(self):
    n = self.width
    self.stages = [BEGANProject(n), ConvPair(n, True), ConvPair(n, True), ConvPair(n, True),
                   BEGANToRGB()]


class BEGANEncoder(nn.Module):
  """Encoder half of BEGAN's discriminator autoencoder: image → [N, latent_dim]."""
  latent_dim: int = 64
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    n = self.width
    x = nn.elu(nn.Conv(n, (3, 3))(x))
    for mult in (1, 2, 3):
      x = nn.elu(nn.Conv(n * mult, (3, 3))(x))
      x = nn.elu(nn.Conv(n * mult, (3, 3))(x))
      x = nn.elu(nn.Conv(n * (mult + 1), (3, 3), strides=(2, 2))(x))  # 64→32→16→8
    x = nn.elu(nn.Conv(n * 4, (3, 3))(x))
    x = nn.elu(nn.Conv(n * 4, (3, 3))(x))
    return nn.Dense(self.latent_dim)(x.reshape(x.shape[0], -1))


class BEGANDiscriminator(nn.Module):
  """BEGAN's discriminator: an autoencoder; its decoder mirrors the generator."""
  latent_dim: int = 64
  width: int = 64

  def setup(self):
    self.encoder = BEGANEncoder(self.latent_dim, self.width)
    self.decoder = BEGANGenerator(self.latent_dim, self.width)

  def __call__(self, x, train: bool = False):
    return self.decoder(self.encoder(x, train), train=train)
