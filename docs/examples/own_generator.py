"""Your own generator, unmodified: sites inside its blocks (Linen and NNX).

Two ordinary Flax generators — no cfmod_jax base class, no stages — analysed at
the output of a layer *inside* a residual/up-sampling block, with
`cfmod_jax.wrap.wrap_linen` and `cfmod_jax.wrap.wrap_nnx`:

    python docs/examples/own_generator.py

prints the site shapes and the elementary influence maps' shapes. The models
are also used by tests/test_wrap.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cfmod_jax as cf
from cfmod_jax.wrap import wrap_linen, wrap_nnx

__all__ = [
  "NNXUpBlock",
  "OwnLinenGenerator",
  "OwnNNXGenerator",
  "ResUpBlock",
  "main",
  "upsample",
]


def upsample(x: jax.Array) -> jax.Array:
  """×2 nearest-neighbour upsampling of ``[N, H, W, C]``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ---- a Linen generator ------------------------------------------------------------------
class ResUpBlock(nn.Module):
  """upsample → relu → conv1 → relu → conv2, plus a 1×1 shortcut of the upsampled input."""

  features: int

  def setup(self) -> None:
    self.conv1 = nn.Conv(self.features, (3, 3))
    self.conv2 = nn.Conv(self.features, (3, 3))
    self.shortcut = nn.Conv(self.features, (1, 1))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = upsample(x)
    return self.conv2(nn.relu(self.conv1(nn.relu(x)))) + self.shortcut(x)


class OwnLinenGenerator(nn.Module):
  """z [N, latent_dim] → 4×4 → three residual up-blocks → image 32×32×3 in [-1, 1]."""

  latent_dim: int = 32
  width: int = 16

  def setup(self) -> None:
    w = self.width
    self.project = nn.Dense(4 * 4 * 2 * w)
    self.block1 = ResUpBlock(2 * w)
    self.block2 = ResUpBlock(w)
    self.block3 = ResUpBlock(w)
    self.to_rgb = nn.Conv(3, (3, 3))

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.project(z).reshape(z.shape[0], 4, 4, 2 * self.width)
    x = self.block3(self.block2(self.block1(x)))
    return jnp.tanh(self.to_rgb(nn.relu(x)))


# ---- an NNX generator -------------------------------------------------------------------
class NNXUpBlock(nnx.Module):
  """upsample → conv1 → BatchNorm → relu → conv2 → relu."""

  def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> None:
    self.conv1 = nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(c_out, rngs=rngs)
    self.conv2 = nnx.Conv(c_out, c_out, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(self.conv1(upsample(x)))
    return nnx.relu(self.conv2(nnx.relu(x)))


class OwnNNXGenerator(nnx.Module):
  """z [N, latent_dim] → 4×4 → three up-blocks → dropout → image 32×32×3 in [-1, 1]."""

  def __init__(self, latent_dim: int = 32, width: int = 16, *, rngs: nnx.Rngs) -> None:
    w = width
    self.width = w
    self.project = nnx.Linear(latent_dim, 4 * 4 * 2 * w, rngs=rngs)
    self.blocks = nnx.List(
      [
        NNXUpBlock(2 * w, 2 * w, rngs=rngs),
        NNXUpBlock(2 * w, w, rngs=rngs),
        NNXUpBlock(w, w, rngs=rngs),
      ]
    )
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.to_rgb = nnx.Conv(w, 3, (3, 3), rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.project(z).reshape(z.shape[0], 4, 4, 2 * self.width)
    for block in self.blocks:
      x = block(x)
    return jnp.tanh(self.to_rgb(self.dropout(x)))


def main() -> None:
  latent_dim = 32
  module = OwnLinenGenerator(latent_dim=latent_dim)
  variables = module.init(jax.random.key(0), jnp.zeros((1, latent_dim)))
  linen_gen = wrap_linen(
    module,
    variables,
    sites=["block2/conv1", "block3"],
    latent_shape=(latent_dim,),
    name="own-linen",
  )
  nnx_gen = wrap_nnx(
    OwnNNXGenerator(latent_dim, rngs=nnx.Rngs(0)),
    sites={"block2.conv1": "blocks/1/conv1", "block3": "blocks/2"},
    latent_shape=(latent_dim,),
    name="own-nnx",
  )
  for gen in (linen_gen, nnx_gen):
    print(gen)
    for site in gen.sites:
      eims = cf.elementary_influence_maps(gen, site, n_pairs=8)
      print(
        f"  {site}: activations {gen.site_shape(site)}, EIMs {eims.shape}, "
        f"max {float(np.max(eims)):.4f}"
      )


if __name__ == "__main__":
  main()
