"""Fast building blocks shared by the models.

`conv_transpose` computes exactly what `flax.linen.ConvTranspose` (and
`lax.conv_transpose` with ``transpose_kernel=False``) computes for 'SAME'
padding, but as a *sub-pixel* convolution: when the kernel size is a multiple of
the stride ``s``, every output phase ``(a, b)`` (``y[s*i + a, s*j + b]``) is an
ordinary stride-1 convolution of the input with ``k/s × k/s`` taps of the kernel.
All ``s²`` phases are computed by one stride-1 convolution with ``s² · C_out``
output channels, followed by depth-to-space. This avoids the zero-dilated input
of the textbook formulation (``s²`` times fewer multiply-adds) and is 2–3× faster
on CPU; parameters keep Flax's layout (``kernel [kh, kw, C_in, C_out]``), so
weights convert either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _same_pad_before(k: int, s: int) -> int:
  """Left padding of the zero-dilated input used by lax.conv_transpose('SAME')."""
  pad_len = k + s - 2
  return k - 1 if s > k - 1 else math.ceil(pad_len / 2)


def _phase_plan(k: int, s: int):
  """For each output phase a: first input offset d_lo(a) and tap indices.

  y[s*i + a] = sum_w x[i + d_lo(a) + w] * K[t(a, w)], w = 0..k/s-1.
  """
  p = _same_pad_before(k, s)
  plan = []
  for a in range(s):
    d_lo = -((p - a) // s)  # ceil((a - p) / s)
    taps = [s * (d_lo + w) + p - a for w in range(k // s)]
    plan.append((d_lo, taps))
  return plan


def _subpixel_plan(kernel_shape, strides):
  """Sub-kernel tap indices and paddings of the sub-pixel form of a transposed conv."""
  kh, kw = kernel_shape[:2]
  sh, sw = strides
  plan_h, plan_w = _phase_plan(kh, sh), _phase_plan(kw, sw)
  pads = (
    (-min(d for d, _ in plan_h), max(d + kh // sh - 1 for d, _ in plan_h)),
    (-min(d for d, _ in plan_w), max(d + kw // sw - 1 for d, _ in plan_w)),
  )
  return plan_h, plan_w, pads


def _subpixel_kernel(kernel, strides):
  """[kh, kw, Ci, Co] → [kh/sh, kw/sw, Ci, sh·sw·Co]: one stride-1 conv for all phases."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  plan_h, plan_w, _ = _subpixel_plan(kernel.shape, strides)
  rows = []
  for _, taps_h in plan_h:
    cols = [kernel[jnp.array(taps_h)][:, jnp.array(taps_w)] for _, taps_w in plan_w]
    rows.append(jnp.stack(cols, axis=3))  # [th, tw, ci, sw, co]
  return jnp.stack(rows, axis=3).reshape(kh // sh, kw // sw, cin, sh * sw * cout)


def _phases_to_space(y, hw, strides, kernel_shape):
  """[B, H+…, W+…, sh·sw·Co] stride-1 output → [B, H·sh, W·sw, Co]."""
  sh, sw = strides
  h, w = hw
  plan_h, plan_w, pads = _subpixel_plan(kernel_shape, strides)
  b, cout = y.shape[0], y.shape[-1] // (sh * sw)
  y = y.reshape(b, y.shape[1], y.shape[2], sh, sw, cout)
  phases = []
  for a, (dh, _) in enumerate(plan_h):
    row = []
    for c, (dw, _) in enumerate(plan_w):
      oh, ow = dh + pads[0][0], dw + pads[1][0]
      row.append(y[:, oh : oh + h, ow : ow + w, a, c])  # [B, H, W, C_out]
    phases.append(jnp.stack(row, axis=3))  # [B, H, W, sw, C_out]
  return jnp.stack(phases, axis=2).reshape(b, h * sh, w * sw, cout)


def _has_subpixel_form(kernel_shape, strides) -> bool:
  return kernel_shape[0] % strides[0] == 0 and kernel_shape[1] % strides[1] == 0


def conv_transpose(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int],
  *,
  precision: lax.PrecisionLike = None,
) -> jax.Array:
  """Transposed convolution with 'SAME' padding (Flax ConvTranspose semantics).

  Args:
    x: [B, H, W, C_in] input.
    kernel: [kh, kw, C_in, C_out] kernel in Flax layout (not flipped).
    strides: (sh, sw).
  Returns:
    [B, H*sh, W*sw, C_out].
  """
  strides = tuple(strides)
  if not _has_subpixel_form(kernel.shape, strides):  # fall back to the reference
    return lax.conv_transpose(
      x, kernel, strides, "SAME", dimension_numbers=_DN, precision=precision
    )
  _, _, pads = _subpixel_plan(kernel.shape, strides)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  y = lax.conv_general_dilated(
    xp,
    _subpixel_kernel(kernel, strides),
    (1, 1),
    "VALID",
    dimension_numbers=_DN,
    precision=precision,
  )
  return _phases_to_space(y, x.shape[1:3], strides, kernel.shape)


def _per_channel_conv(xp, kernel, out_hw):
  """Each input channel alone through a stride-1 VALID conv.

  Args:
    xp: [B, Hp, Wp, m] padded input; kernel: [th, tw, m, Co].
  Returns:
    [m, B, Ho, Wo, Co]: output j is ``conv(xp[..., j:j+1], kernel[:, :, j:j+1])``.

  Written as a sum over the th·tw taps of broadcast products (shifted input ×
  that tap's kernel row), not as a contraction: with one input channel each
  output needs only th·tw multiply-adds, which no matrix unit can use, and the
  elementwise form lets XLA fuse it with what consumes it (the add to the
  stage's pre-activation, BatchNorm, the activation, depth-to-space), so the
  [m, B, Ho, Wo, Co] tensor is written once. Measured on a 2-core CPU (DCGAN-64
  EIMs, 64 pairs): 1.52 → 1.21 s at block3, 0.35 → 0.27 s at block4 against the
  contraction ``patches @ kernel``.
  """
  th, tw, _, _ = kernel.shape
  ho, wo = out_hw
  xt = jnp.moveaxis(xp, -1, 0)  # [m, B, Hp, Wp]
  out = None
  for u in range(th):
    for v in range(tw):
      term = xt[:, :, u : u + ho, v : v + wo, None] * kernel[u, v][:, None, None, None, :]
      out = term if out is None else out + term
  return out


def conv_transpose_per_channel(
  x: jax.Array, kernel: jax.Array, strides: Sequence[int]
) -> jax.Array:
  """Per-input-channel transposed convolutions (no bias).

  Args:
    x: [B, H, W, m]; kernel: [kh, kw, m, C_out].
  Returns:
    [m, B, H·sh, W·sw, C_out], entry j = ``conv_transpose(x ⊙ e_j, kernel)``.
  """
  strides = tuple(strides)
  m, b, (h, w) = x.shape[-1], x.shape[0], x.shape[1:3]
  if not _has_subpixel_form(kernel.shape, strides):
    one = lambda xj, kj: conv_transpose(xj[..., None], kj[:, :, None, :], strides)
    return jax.vmap(one, in_axes=(-1, 2))(x, kernel)
  _, _, pads = _subpixel_plan(kernel.shape, strides)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  sub = _subpixel_kernel(kernel, strides)
  out_hw = (xp.shape[1] - sub.shape[0] + 1, xp.shape[2] - sub.shape[1] + 1)
  y = _per_channel_conv(xp, sub, out_hw)  # [m, B, Ho, Wo, s·s·Co]
  y = _phases_to_space(y.reshape(m * b, *y.shape[2:]), (h, w), strides, kernel.shape)
  return y.reshape(m, b, *y.shape[1:])


def conv_same_per_channel(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Per-input-channel stride-1 'SAME' convolutions (no bias): [m, B, H, W, C_out]."""
  kh, kw = kernel.shape[:2]
  pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  return _per_channel_conv(xp, kernel, x.shape[1:3])


def _kernel_slice(module, start, size):
  """``kernel[:, :, start:start+size]`` of a bound module (start may be traced)."""
  kernel = module.variables["params"]["kernel"]
  return lax.dynamic_slice_in_dim(kernel, start, size, axis=2)


class ConvTranspose(nn.Module):
  """Drop-in for `flax.linen.ConvTranspose` (padding 'SAME'), sub-pixel fast path.

  Parameters are named and shaped like Flax's: ``kernel [kh, kw, C_in, C_out]``,
  ``bias [C_out]``.
  """

  features: int
  kernel_size: tuple[int, int] = (4, 4)
  strides: tuple[int, int] = (2, 2)
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    y = conv_transpose(x, kernel.astype(x.dtype), self.strides)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(x.dtype)
    return y

  def per_channel(self, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    """Contributions of input channels ``start … start+m−1`` taken one at a time.

    Args:
      delta: [B, H, W, m] values of those channels; start: first channel index.
    Returns:
      [m, B, H·sh, W·sw, features] (linear part only: no bias).
    """
    kernel = _kernel_slice(self, start, delta.shape[-1]).astype(delta.dtype)
    return conv_transpose_per_channel(delta, kernel, self.strides)


class Conv(nn.Conv):
  """`flax.linen.Conv` ('SAME', stride 1) with a per-input-channel linear part."""

  def per_channel(self, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    """[B, H, W, m] values of channels start… → [m, B, H, W, features] (no bias)."""
    strides = self.strides if self.strides is not None else 1
    if strides not in (1, (1, 1)) or self.padding != "SAME":
      raise NotImplementedError("per_channel needs stride 1 and 'SAME' padding")
    kernel = _kernel_slice(self, start, delta.shape[-1]).astype(delta.dtype)
    return conv_same_per_channel(delta, kernel)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, H*f, W*f, C] nearest-neighbour upsampling."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


__all__ = [
  "Conv",
  "ConvTranspose",
  "conv_same_per_channel",
  "conv_transpose",
  "conv_transpose_per_channel",
  "upsample_nearest",
]
