"""BEGAN generator (Berthelot et al. 2017): the decoder of BEGAN's autoencoder.

z [N, latent_dim] → dense 8×8×n → (conv3×3 ELU ×2) → block1 8×8×n →
[nearest ×2, (conv3×3 ELU) ×2] → block2 16×16×n → block3 32×32×n →
block4 64×64×n → conv3×3 → image (tanh, so images lie in [-1, 1]).
``width`` is n. Two options, both off by default and in the discriminator's
decoder (``experiments/configs/began.py`` says what they changed on the
synthetic faces; the shipped ``began-synthfaces`` uses BatchNorm only):

* ``batch_norm=True`` puts BatchNorm before every ELU of the generator (the
  paper uses no normalisation; DCGAN's generator has BatchNorm).
* ``skip=True`` adds the paper's skip connections: the first layer's output
  h0 = dense(z) (8×8×n), upsampled to each block's input size, is concatenated
  to the inputs of block2…block4. These blocks then read the latent
  (`StagedGenerator.call_stage`): in a hybrid at block1…block3 the later blocks
  see z1's h0, and those sites use the masks path for elementary influence maps
  (block4 keeps the fast linear path).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfmod_jax.generator import SplitStage, VectorLatentGenerator, stage_names
from cfmod_jax.ops import Conv, upsample_nearest

_BN_MOMENTUM = 0.9


class ConvPair(SplitStage):
  """(×2 nearest upsampling) → conv3×3 → (BN) → ELU → conv3×3 → (BN) → ELU.

  ``pre`` = upsampling + first convolution (linear in the input). With
  ``batch_norm`` the convolutions have no bias (BatchNorm's shift replaces it).
  """

  features: int
  upsample: bool
  batch_norm: bool = False

  def setup(self) -> None:
    self.conv1 = Conv(self.features, (3, 3), use_bias=not self.batch_norm)
    self.conv2 = Conv(self.features, (3, 3), use_bias=not self.batch_norm)
    if self.batch_norm:
      self.bn1 = nn.BatchNorm(momentum=_BN_MOMENTUM)
      self.bn2 = nn.BatchNorm(momentum=_BN_MOMENTUM)

  def _norm(self, bn_name, y, train):
    if not self.batch_norm:
      return y
    return getattr(self, bn_name)(y, use_running_average=not train)

  def _up(self, x):
    return upsample_nearest(x, 2) if self.upsample else x

  def pre(self, x: jax.Array) -> jax.Array:
    return self.conv1(self._up(x))

  def pre_delta(self, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    return self.conv1.per_channel(self._up(delta), start)

  def post(self, y: jax.Array, train: bool = False) -> jax.Array:
    y = nn.elu(self._norm("bn1", y, train))
    return nn.elu(self._norm("bn2", self.conv2(y), train))


class BEGANProject(nn.Module):
  features: int
  batch_norm: bool = False

  def setup(self) -> None:
    self.dense = nn.Dense(8 * 8 * self.features)
    self.convs = ConvPair(self.features, upsample=False, batch_norm=self.batch_norm)

  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    x = self.dense(z).reshape(z.shape[0], 8, 8, self.features)
    return self.convs(x, train)


class BEGANToRGB(SplitStage):
  def setup(self) -> None:
    self.conv = Conv(3, (3, 3))

  def pre(self, x: jax.Array) -> jax.Array:
    return self.conv(x)

  def pre_delta(self, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    return self.conv.per_channel(delta, start)

  def post(self, y: jax.Array, train: bool = False) -> jax.Array:
    return jnp.tanh(y)


class BEGANGenerator(VectorLatentGenerator):
  """BEGAN decoder-style generator at 64×64 (``batch_norm``: see the module doc)."""

  latent_dim: int = 64
  width: int = 64
  batch_norm: bool = False
  skip: bool = False

  site_names = stage_names("block", 4)

  def call_stage(self, index: int, x: jax.Array, latent: jax.Array, train: bool) -> jax.Array:
    if self.stage_reads_latent(index):
      # BEGAN's skip connections: the first layer's output h0 (the dense
      # projection of z, 8×8×n), upsampled to the block's input size, is
      # concatenated to its input. In a hybrid these blocks see z1's h0.
      h0 = self.stages[0].dense(latent).reshape(latent.shape[0], 8, 8, self.width)
      x = jnp.concatenate([x, upsample_nearest(h0, 2 ** (index - 1))], axis=-1)
    return self.stages[index](x, train=train)

  def stage_reads_latent(self, index: int) -> bool:
    return self.skip and 1 <= index <= 3

  def setup(self) -> None:
    n, bn = self.width, self.batch_norm
    self.stages = [
      BEGANProject(n, bn),
      ConvPair(n, True, bn),
      ConvPair(n, True, bn),
      ConvPair(n, True, bn),
      BEGANToRGB(),
    ]


class BEGANEncoder(nn.Module):
  """Encoder half of BEGAN's discriminator autoencoder: image → [N, latent_dim]."""

  latent_dim: int = 64
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
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

  def setup(self) -> None:
    self.encoder = BEGANEncoder(self.latent_dim, self.width)
    self.decoder = BEGANGenerator(self.latent_dim, self.width)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.decoder(self.encoder(x, train), train=train)


__all__ = ["BEGANDiscriminator", "BEGANEncoder", "BEGANGenerator"]
