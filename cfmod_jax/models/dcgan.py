"""DCGAN generator (Radford et al. 2016) at 64×64, written as stages, and its
discriminator (`DCGANDiscriminator`, trained by `cfmod_jax.train.dcgan`).

z [N, latent_dim] → block1 4×4×8w → block2 8×8×4w → block3 16×16×2w →
block4 32×32×w → image 64×64×3 (tanh). BatchNorm + ReLU after every hidden
layer; w = ``width`` (64 in the paper's model). Sites: block1 … block4.

Every stage is ``post(pre(x))`` with ``pre`` linear in its input (see
`cfmod_jax.generator.StagedGenerator` — this enables the fast path for
elementary influence maps).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfmod_jax.generator import SplitStage, VectorLatentGenerator, stage_names
from cfmod_jax.ops import ConvTranspose

_BN_MOMENTUM = 0.9
# DCGAN's initialisation: N(0, 0.02) weights.
_INIT = nn.initializers.normal(0.02)


class ProjectStage(SplitStage):
  """Latent → [N, 4, 4, features]: dense projection, (BN), ReLU.

  ``batch_norm=False`` (the β-VAE decoder) gives the dense layer a bias instead.
  """

  features: int
  batch_norm: bool = True
  kernel_init: nn.initializers.Initializer = _INIT

  def setup(self) -> None:
    self.dense = nn.Dense(
      4 * 4 * self.features, use_bias=not self.batch_norm, kernel_init=self.kernel_init
    )
    if self.batch_norm:
      self.bn = nn.BatchNorm(momentum=_BN_MOMENTUM)

  def pre(self, z: jax.Array) -> jax.Array:
    return self.dense(z).reshape(z.shape[0], 4, 4, self.features)

  def post(self, y: jax.Array, train: bool = False) -> jax.Array:
    if self.batch_norm:
      y = self.bn(y, use_running_average=not train)
    return nn.relu(y)


class UpStage(SplitStage):
  """×2 transposed convolution (4×4, stride 2), then (BN +) ReLU, or tanh when ``rgb``.

  Without BatchNorm (``batch_norm=False`` or ``rgb``) the convolution has a bias.
  """

  features: int
  rgb: bool = False
  batch_norm: bool = True
  kernel_init: nn.initializers.Initializer = _INIT

  @property
  def _bn(self) -> bool:
    return self.batch_norm and not self.rgb

  def setup(self) -> None:
    self.conv = ConvTranspose(
      self.features, (4, 4), (2, 2), use_bias=not self._bn, kernel_init=self.kernel_init
    )
    if self._bn:
      self.bn = nn.BatchNorm(momentum=_BN_MOMENTUM)

  def pre(self, x: jax.Array) -> jax.Array:
    return self.conv(x)

  def pre_delta(self, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    return self.conv.per_channel(delta, start)

  def post(self, y: jax.Array, train: bool = False) -> jax.Array:
    if self.rgb:
      return jnp.tanh(y)
    if self._bn:
      y = self.bn(y, use_running_average=not train)
    return nn.relu(y)


class DCGANGenerator(VectorLatentGenerator):
  """DCGAN-64 generator. ``width`` is the channel count of the last hidden layer."""

  latent_dim: int = 100
  width: int = 64

  site_names = stage_names("block", 4)

  def setup(self) -> None:
    w = self.width
    self.stages = [
      ProjectStage(8 * w),
      UpStage(4 * w),
      UpStage(2 * w),
      UpStage(w),
      UpStage(3, rgb=True),
    ]


class DCGANDiscriminator(nn.Module):
  """``[N, 64, 64, 3] -> [N]`` logits (real > 0).

  4×4 stride-2 convolutions 64×64×3 → 32×32×d → 16×16×2d → 8×8×4d → 4×4×8d
  (LeakyReLU 0.2, BatchNorm on all but the first), then a 4×4 'VALID'
  convolution to one logit; d = ``width``.
  """

  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    d = self.width
    x = nn.leaky_relu(nn.Conv(d, (4, 4), (2, 2), padding="SAME")(x), 0.2)
    for mult in (2, 4, 8):
      x = nn.Conv(d * mult, (4, 4), (2, 2), padding="SAME", use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding="VALID")(x)  # 4×4 -> 1×1
    return x.reshape(x.shape[0])


__all__ = ["DCGANDiscriminator", "DCGANGenerator"]
