"""DCGAN generator (Radford et al. 2016) at 64×64, written as stages.

z [N, latent_dim] → block1 4×4×8w → block2 8×8×4w → block3 16×16×2w →
block4 32×32×w → image 64×64×3 (tanh). BatchNorm + ReLU after every hidden
layer; w = ``width`` (64 in the paper's model). Sites: block1 … block4.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cfmod_jax.generator import StagedGenerator, stage_names
from cfmod_jax.ops import ConvTranspose

_BN_MOMENTUM = 0.9


class ProjectStage(nn.Module):
  """Latent → [N, 4, 4, features] (dense projection, BN, ReLU)."""
  features: int

  @nn.compact
  def __call__(self, z, train: bool = False):
    x = nn.Dense(4 * 4 * self.features, use_bias=False)(z)
    x = x.reshape(z.shape[0], 4, 4, self.features)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM)(x)
    return nn.relu(x)


class UpStage(nn.Module):
  """×2 transposed convolution (4×4, stride 2) + BN + ReLU."""
  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ConvTranspose(self.features, (4, 4), (2, 2), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM)(x)
    return nn.relu(x)


class RGBUpStage(nn.Module):
  """×2 transposed convolution to RGB + tanh."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return jnp.tanh(ConvTranspose(3, (4, 4), (2, 2))(x))


class DCGANGenerator(StagedGenerator):
  """DCGAN-64 generator. ``width`` is the channel count of the last hidden layer."""
  latent_dim: int = 100
  width: int = 64

  site_names = stage_names("block", 4)

  @property
  def latent_shape(self):
    return (self.latent_dim,)

  def setup(self):
    w = self.width
    self.stages = [ProjectStage(8 * w), UpStage(4 * w), UpStage(2 * w), UpStage(w),
                   RGBUpStage()]
