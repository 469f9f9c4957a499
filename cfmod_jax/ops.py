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
from typing import Sequence

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


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   *, precision=None) -> jax.Array:
  """Transposed convolution with 'SAME' padding (Flax ConvTranspose semantics).

  Args:
    x: [B, H, W, C_in] input.
    kernel: [kh, kw, C_in, C_out] kernel in Flax layout (not flipped).
    strides: (sh, sw).
  Returns:
    [B, H*sh, W*sw, C_out].
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  if kh % sh or kw % sw:  # No sub-pixel form: fall back to the reference.
    return lax.conv_transpose(x, kernel, (sh, sw), "SAME", dimension_numbers=_DN,
                              precision=precision)
  plan_h, plan_w = _phase_plan(kh, sh), _phase_plan(kw, sw)
  th, tw = kh // sh, kw // sw
  # Sub-kernels: [th, tw, C_in, sh, sw, C_out], phase (a, b) in the middle.
  rows = []
  for _, taps_h in plan_h:
    cols = []
    for _, taps_w in plan_w:
      cols.append(kernel[jnp.array(taps_h)][:, jnp.array(taps_w)])  # [th,tw,ci,co]
    rows.append(jnp.stack(cols, axis=3))  # [th, tw, ci, sw, co]
  sub = jnp.stack(rows, axis=3).reshape(th, tw, cin, sh * sw * cout)
  # Pad so every phase's window is inside the padded input.
  lo_h = -min(d for d, _ in plan_h)
  hi_h = max(d + th - 1 for d, _ in plan_h)
  lo_w = -min(d for d, _ in plan_w)
  hi_w = max(d + tw - 1 for d, _ in plan_w)
  xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  y = lax.conv_general_dilated(xp, sub, (1, 1), "VALID", dimension_numbers=_DN,
                               precision=precision)
  b, h, w = x.shape[:3]
  y = y.reshape(b, y.shape[1], y.shape[2], sh, sw, cout)
  phases = []
  for a, (dh, _) in enumerate(plan_h):
    row = []
    for c, (dw, _) in enumerate(plan_w):
      oh, ow = dh + lo_h, dw + lo_w
      row.append(y[:, oh:oh + h, ow:ow + w, a, c])  # [B, H, W, C_out]
    phases.append(jnp.stack(row, axis=3))  # [B, H, W, sw, C_out]
  out = jnp.stack(phases, axis=2)  # [B, H, sh, W, sw, C_out]
  return out.reshape(b, h * sh, w * sw, cout)


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
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    y = conv_transpose(x, kernel.astype(x.dtype), self.strides)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(x.dtype)
    return y


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, H*f, W*f, C] nearest-neighbour upsampling."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)
