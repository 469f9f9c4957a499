"""PyTorch contender: the DCGAN-64 generator with weights converted from Flax, and
elementary influence maps computed the way hook-based tools compute them.

`TorchDCGAN` mirrors `cfmod_jax.models.dcgan.DCGANGenerator` (NCHW):
``Linear → view [N, 8w, 4, 4] → BN → ReLU`` then four ``ConvTranspose2d(k=4, s=2,
p=1)`` stages (BN + ReLU, the last with bias + tanh). `from_flax` converts a
Flax variable tree:

* dense ``kernel [z, 16·C]`` (Flax output order ``(h, w, c)``, NHWC) → Linear
  ``weight [16·C, z]`` with rows reordered to ``(c, h, w)`` so that ``view(N, C, 4,
  4)`` is the NCHW image of Flax's reshape;
* ConvTranspose ``kernel [kh, kw, in, out]`` (Flax/`lax.conv_transpose`, not
  flipped, 'SAME') → ``weight [in, out, kh, kw]`` flipped spatially: ``p=1`` and
  the flip give the same 2× output alignment as Flax's 'SAME' padding;
* BatchNorm scale/bias/running mean/var with Flax's eps 1e-5 (eval mode).

`hook_eims` is the benchmark's ``torch_hooks`` contender: a forward hook on the
site's stage replaces channel c by z2's activations, one channel at a time,
batched over pairs — as GAN-Dissection / nnsight-style code does. The stronger
PyTorch contenders (cfmod_jax's own algorithms) are in `benchmarks.torch_fast`.
Of the benchmark's modules only these two (and the worker's matmul peak) import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-5  # flax.linen.BatchNorm's default


class TorchDCGAN(nn.Module):
  """DCGAN-64 generator in PyTorch; ``stages[i]`` outputs site ``block{i+1}``."""

  def __init__(self, latent_dim: int = 100, width: int = 64) -> None:
    super().__init__()
    w = width
    self.latent_dim, self.width = latent_dim, width
    self.project = nn.Linear(latent_dim, 16 * 8 * w, bias=False)
    chans = [8 * w, 4 * w, 2 * w, w]
    self.stages = nn.ModuleList(
      [nn.Sequential(Reshape(8 * w), nn.BatchNorm2d(8 * w, eps=BN_EPS), nn.ReLU())]
    )
    for cin, cout in zip(chans[:-1], chans[1:]):
      self.stages.append(
        nn.Sequential(
          nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
          nn.BatchNorm2d(cout, eps=BN_EPS),
          nn.ReLU(),
        )
      )
    self.stages.append(nn.Sequential(nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=True), nn.Tanh()))
    self.site_names = tuple(f"block{i + 1}" for i in range(4))

  def site_module(self, site: str) -> nn.Module:
    """The module whose output is the activation at ``site``."""
    return self.stages[self.site_names.index(site)]

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    """``z [N, latent_dim]`` → images ``[N, 3, 64, 64]`` in [-1, 1]."""
    x = self.project(z)
    for stage in self.stages:
      x = stage(x)
    return x

  def prefix(self, z: torch.Tensor, site: str) -> torch.Tensor:
    """Activations at ``site``, ``[N, C, H, W]``."""
    x = self.project(z)
    for stage in self.stages[: self.site_names.index(site) + 1]:
      x = stage(x)
    return x


class Reshape(nn.Module):
  """``[N, 16·C]`` → ``[N, C, 4, 4]``."""

  def __init__(self, channels: int) -> None:
    super().__init__()
    self.channels = channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], self.channels, 4, 4)


def _t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, dtype=np.float32))


def convert_conv_transpose_kernel(kernel: Any) -> torch.Tensor:
  """Flax ``[kh, kw, in, out]`` ('SAME', unflipped) → torch ``[in, out, kh, kw]``
  (flipped) for ``ConvTranspose2d(k, s=2, p=1)``."""
  k = np.asarray(kernel, np.float32)[::-1, ::-1]
  return _t(k.transpose(2, 3, 0, 1))


def convert_dense_kernel(kernel: Any, channels: int) -> torch.Tensor:
  """Flax ``[z, 16·C]`` with output order (h, w, c) → torch ``[16·C, z]`` in (c, h, w)."""
  k = np.asarray(kernel, np.float32)
  z = k.shape[0]
  return _t(k.reshape(z, 4, 4, channels).transpose(3, 1, 2, 0).reshape(16 * channels, z))


def _load_bn(bn: nn.BatchNorm2d, params, stats):
  bn.weight.copy_(_t(params["scale"]))
  bn.bias.copy_(_t(params["bias"]))
  bn.running_mean.copy_(_t(stats["mean"]))
  bn.running_var.copy_(_t(stats["var"]))


def from_flax(variables: Any, latent_dim: int = 100, width: int = 64) -> TorchDCGAN:
  """A `TorchDCGAN` in eval mode with the weights of a Flax ``DCGANGenerator``."""
  model = TorchDCGAN(latent_dim, width)
  p, s = variables["params"], variables["batch_stats"]
  with torch.no_grad():
    model.project.weight.copy_(convert_dense_kernel(p["stages_0"]["dense"]["kernel"], 8 * width))
    _load_bn(model.stages[0][1], p["stages_0"]["bn"], s["stages_0"]["bn"])
    for i in range(1, 4):
      conv = p[f"stages_{i}"]["conv"]
      model.stages[i][0].weight.copy_(convert_conv_transpose_kernel(conv["kernel"]))
      _load_bn(model.stages[i][1], p[f"stages_{i}"]["bn"], s[f"stages_{i}"]["bn"])
    last = p["stages_4"]["conv"]
    model.stages[4][0].weight.copy_(convert_conv_transpose_kernel(last["kernel"]))
    model.stages[4][0].bias.copy_(_t(last["bias"]))
  return model.eval()


class _ChannelSwap:
  """Forward-hook state: replaces channel ``c`` of the output by ``donor[:, c]``."""

  def __init__(self):
    self.channel: int | None = None
    self.donor: torch.Tensor | None = None

  def __call__(self, module, inputs, output):
    if self.channel is None:
      return None
    c = self.channel
    output[:, c] = self.donor[:, c]  # a fresh activation tensor: editing it in place is safe
    return output


def hook_eims(
  model: TorchDCGAN,
  site: str,
  z1: np.ndarray,
  z2: np.ndarray,
  *,
  pair_chunk: int = 128,
  channels: Sequence[int] | None = None,
  progress: Callable[[int], None] | None = None,
) -> np.ndarray:
  """Elementary influence maps with a forward hook, one channel at a time.

  For each chunk of pairs: z2's activations at the site and G(z1) are computed
  once; then for each channel c a full forward pass from z1 runs with a hook on
  the site's stage that overwrites channel c with z2's, and ``|hybrid − G(z1)|``
  is accumulated.

  Args:
    model: a `TorchDCGAN` (eval mode).
    z1, z2: ``[N, latent_dim] float32`` latent pairs.
    pair_chunk: pairs per forward pass.
    channels: the channels to compute (default: all).
  Returns:
    ``[C', 64, 64] float32`` (C' = number of channels computed): mean over pairs and
    colour channels of ``|hybrid − G(z1)|``.
  """
  module = model.site_module(site)
  n = z1.shape[0]
  swap = _ChannelSwap()
  handle = module.register_forward_hook(swap)
  try:
    with torch.inference_mode():
      z1t, z2t = _t(z1), _t(z2)
      c_all = model.prefix(z1t[:1], site).shape[1]
      chans = list(range(c_all)) if channels is None else list(channels)
      acc = torch.zeros(len(chans), 64, 64)
      for lo in range(0, n, pair_chunk):
        a, b = z1t[lo : lo + pair_chunk], z2t[lo : lo + pair_chunk]
        swap.channel = None
        swap.donor = model.prefix(b, site)
        x1 = model(a)
        for j, c in enumerate(chans):
          swap.channel = c
          acc[j] += (model(a) - x1).abs().sum(dim=(0, 1))
          if progress is not None:
            progress(1)
  finally:
    handle.remove()
  return (acc / (3.0 * n)).numpy()


def images(model: TorchDCGAN, z: np.ndarray) -> np.ndarray:
  """``G(z)`` as NHWC ``[N, 64, 64, 3]`` numpy (for comparison with Flax)."""
  with torch.inference_mode():
    return model(_t(z)).permute(0, 2, 3, 1).numpy()


__all__ = [
  "BN_EPS",
  "Reshape",
  "TorchDCGAN",
  "convert_conv_transpose_kernel",
  "convert_dense_kernel",
  "from_flax",
  "hook_eims",
  "images",
]
