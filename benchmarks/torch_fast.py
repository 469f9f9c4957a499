"""The strong PyTorch contenders: the algorithms cfmod_jax runs, written in PyTorch.

`hook_eims` (`benchmarks.torch_dcgan`) is what hook-based tools do: a full forward
pass per channel. A performance-minded PyTorch user would write what cfmod_jax
does instead; this module is that code, on the same weights:

* `FoldedDCGAN` — the eval-mode DCGAN-64 of a `TorchDCGAN` with every BatchNorm
  folded into the layer before it (``g = γ / √(var + eps)``: weights scaled by ``g``
  per output channel, bias ``β − mean · g``), in one of the memory `LAYOUTS`
  (contiguous NCHW, ``channels_last``, or 'mixed': torch_linear's contributions in
  NCHW, the rest in ``channels_last``); activations run in place;
* `batched_eims` (contender ``torch_batched``) — cfmod_jax's mask path: per chunk of
  pairs the prefix runs once for z1 and once for z2 and G(z1) once; the hybrids of
  a chunk of channels (one-hot masks, ``torch.where(mask, a2, a1)``) go through the
  suffix as one flat batch, and ``Σ |hybrid − G(z1)|`` is accumulated;
* `linear_eims` (contender ``torch_linear``) — cfmod_jax's linear split: the next
  stage's ConvTranspose (+ folded bias) is applied to a1 once (``pre1``); the
  rank-1 contributions ``delta_c = a2_c − a1_c`` of a chunk of channels go through
  that ConvTranspose as ONE grouped transposed convolution (``groups`` = channels in
  the chunk), ``pre = pre1 + contribution``, then the next stage's activation and
  the rest of the suffix per channel, and the ``|·|`` reduction. For block4 the
  next stage is the final ConvTranspose + bias + tanh.

Both run under ``torch.inference_mode()``. The work per chunk is one function
(`batched_chunk_fn`, `linear_chunk_fn`) of tensors only (masks and weight slices
are arguments), so ``torch.compile`` compiles it once per shape
(`make_chunk_fn(..., compiled=True)`: contenders ``torch_batched_compiled`` and
``torch_linear_compiled``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.torch_dcgan import TorchDCGAN

KINDS = ("batched", "linear")


def _bn_fold(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
  """``(g, shift)`` with ``bn(y) = g · y + shift`` per channel (eval mode)."""
  g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
  return g, bn.bias - bn.running_mean * g


# Memory layouts: (stages in channels_last, linear-split contributions in channels_last).
# 'mixed' computes torch_linear's grouped contributions in NCHW (whose output is then
# already laid out per hybrid: no transposing copy) and every later stage in channels_last.
LAYOUTS = {
  "contiguous": (False, False),
  "channels_last": (True, True),
  "mixed": (True, False),
}


class FoldedDCGAN:
  """A `TorchDCGAN` with BatchNorm folded in, as plain tensors (eval mode only).

  ``stage k`` (0 … 4): k = 0 is ``relu(view(linear(z) + b0))``; k = 1 … 4 is
  ``act(conv_transpose(x, W_k) + b_k)`` (k=4: tanh, else ReLU). Site ``block{i+1}`` is
  the output of stage i. ``layout``: a key of `LAYOUTS`.
  """

  def __init__(self, model: TorchDCGAN, layout: str = "contiguous") -> None:
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    self.layout = layout
    self.channels_last, self.contrib_channels_last = LAYOUTS[layout]
    self.width = model.width
    with torch.no_grad():
      g, shift = _bn_fold(model.stages[0][1])
      self.w0 = (model.project.weight * g.repeat_interleave(16)[:, None]).contiguous()
      self.b0 = shift.repeat_interleave(16).contiguous()
      self.weights, self.biases = [None], [None]
      for k in range(1, 5):
        conv = model.stages[k][0]
        if k < 4:
          g, shift = _bn_fold(model.stages[k][1])
          w, b = conv.weight * g[None, :, None, None], shift
        else:
          w, b = conv.weight, conv.bias
        self.weights.append(self._fmt(w.detach().clone()))
        self.biases.append(b.detach().clone().contiguous())
    self.contrib_weights = [None] + [self.fmt_contrib(w) for w in self.weights[1:]]
    self.channels = (8 * self.width, 4 * self.width, 2 * self.width, self.width)

  @staticmethod
  def _as(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last:
      return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()

  def _fmt(self, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the stages' memory format."""
    return self._as(x, self.channels_last)

  def fmt_contrib(self, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory format of the linear-split contributions."""
    return self._as(x, self.contrib_channels_last)

  @staticmethod
  def act_(k: int, y: torch.Tensor) -> torch.Tensor:
    """The activation of stage ``k`` (tanh for the last, else ReLU), in place."""
    return torch.tanh_(y) if k == 4 else torch.relu_(y)

  def pre(self, k: int, x: torch.Tensor) -> torch.Tensor:
    """The linear part of stage ``k ≥ 1`` with its (folded) bias."""
    return F.conv_transpose2d(self._fmt(x), self.weights[k], self.biases[k], stride=2, padding=1)

  def stage(self, k: int, x: torch.Tensor) -> torch.Tensor:
    if k == 0:
      y = F.linear(x, self.w0, self.b0).view(x.shape[0], 8 * self.width, 4, 4)
      return self._fmt(torch.relu_(y))
    return self.act_(k, self.pre(k, x))  # in place on the fresh pre-activation

  def prefix(self, z: torch.Tensor, i: int) -> torch.Tensor:
    """Activations at site index ``i`` (block{i+1}), ``[N, C, H, W]``."""
    x = z
    for k in range(i + 1):
      x = self.stage(k, x)
    return x

  def suffix(self, h: torch.Tensor, i: int) -> torch.Tensor:
    """Images from the activations ``h`` at site index ``i``."""
    x = h
    for k in range(i + 1, 5):
      x = self.stage(k, x)
    return x

  def rest(self, pre: torch.Tensor, i: int) -> torch.Tensor:
    """Images from the pre-activation (with bias) of stage ``i + 1`` (overwrites ``pre``:
    the activation runs in place)."""
    x = self.act_(i + 1, pre)
    for k in range(i + 2, 5):
      x = self.stage(k, x)
    return x


def batched_chunk_fn(model: FoldedDCGAN, i: int) -> Callable[..., torch.Tensor]:
  """``(a1, a2 [pc, C, H, W], mask [cc, C] bool, x1 [pc, 3, 64, 64]) → [cc, 64, 64]``:
  ``Σ_pairs,colours |suffix(where(mask_j, a2, a1)) − x1|`` for each mask j."""

  def fn(a1, a2, mask, x1):
    cc, pc = mask.shape[0], a1.shape[0]
    h = torch.where(mask[:, None, :, None, None], a2[None], a1[None])  # [cc, pc, C, H, W]
    y = model.suffix(h.reshape(cc * pc, *a1.shape[1:]), i)
    return y.reshape(cc, pc, *y.shape[1:]).sub_(x1[None]).abs_().sum(dim=(1, 2))

  return fn


def linear_chunk_fn(model: FoldedDCGAN, i: int) -> Callable[..., torch.Tensor]:
  """``(pre1 [pc, Co, 2H, 2W], d [pc, cc, H, W], w [cc, Co, 4, 4], x1) → [cc, 64, 64]``:
  each channel's rank-1 contribution ``conv_transpose(d_j, w_j)`` (one grouped
  transposed convolution for the chunk) added to ``pre1``, then the rest of the suffix
  and ``Σ_pairs,colours |· − x1|``."""

  def fn(pre1, d, w, x1):
    pc, cc = d.shape[0], d.shape[1]
    contrib = F.conv_transpose2d(d, w, stride=2, padding=1, groups=cc)  # [pc, cc·Co, 2H, 2W]
    pre = contrib.reshape(pc, cc, *pre1.shape[1:]).add_(pre1[:, None])
    y = model.rest(pre.reshape(pc * cc, *pre1.shape[1:]), i)
    return y.reshape(pc, cc, *y.shape[1:]).sub_(x1[:, None]).abs_().sum(dim=(0, 2))

  return fn


def make_chunk_fn(
  kind: str, model: FoldedDCGAN, i: int, compiled: bool = False
) -> Callable[..., torch.Tensor]:
  """The per-chunk function of ``kind`` ('batched' or 'linear'), eager or
  ``torch.compile``d (``dynamic=False``: one graph per chunk shape, compiled on its
  first call)."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  fn = (batched_chunk_fn if kind == "batched" else linear_chunk_fn)(model, i)
  return torch.compile(fn, dynamic=False) if compiled else fn


def _check_chunks(c: int, channel_chunk: int) -> int:
  if not isinstance(channel_chunk, int) or channel_chunk < 1:
    raise ValueError(f"channel_chunk must be a positive integer, got {channel_chunk!r}")
  return min(channel_chunk, c)


def fast_eims(
  kind: str,
  model: FoldedDCGAN,
  site: str,
  z1: np.ndarray,
  z2: np.ndarray,
  *,
  pair_chunk: int = 32,
  channel_chunk: int = 16,
  chunk_fn: Callable[..., torch.Tensor] | None = None,
  chunk_starts: Sequence[int] | None = None,
) -> np.ndarray:
  """Elementary influence maps ``[C, 64, 64] float32`` by the batched (mask) or
  linear-split algorithm (see the module docstring).

  Args:
    kind: 'batched' or 'linear'.
    model: a `FoldedDCGAN`.
    z1, z2: ``[N, latent_dim] float32`` latent pairs.
    pair_chunk: pairs per chunk (the prefix runs once per chunk).
    channel_chunk: channels whose hybrids are computed together (the last chunk of
      a site whose channel count it does not divide is smaller).
    chunk_fn: `make_chunk_fn` of the same kind, model and site (default: eager).
    chunk_starts: only the channel chunks starting at these channels (warm-up);
      default all. Rows of channels not computed are zero.
  Returns:
    mean over pairs and colour channels of ``|hybrid − G(z1)|`` per channel.
  """
  i = ("block1", "block2", "block3", "block4").index(site)
  c = model.channels[i]
  cc = _check_chunks(c, channel_chunk)
  fn = make_chunk_fn(kind, model, i) if chunk_fn is None else chunk_fn
  starts = list(range(0, c, cc)) if chunk_starts is None else list(chunk_starts)
  n = z1.shape[0]
  acc = torch.zeros(c, 64, 64)
  with torch.inference_mode():
    z1t, z2t = (torch.from_numpy(np.array(z, np.float32)) for z in (z1, z2))
    arange_c = torch.arange(c)
    for lo in range(0, n, pair_chunk):
      a1 = model.prefix(z1t[lo : lo + pair_chunk], i)
      a2 = model.prefix(z2t[lo : lo + pair_chunk], i)
      if kind == "batched":
        x1 = model.suffix(a1, i)
      else:
        pre1 = model.pre(i + 1, a1)
        x1 = model.rest(pre1.clone(), i)
        pre1 = model.fmt_contrib(pre1)
        delta = a2 - a1
        w_next = model.contrib_weights[i + 1]
      for s in starts:
        e = min(s + cc, c)
        if kind == "batched":
          mask = arange_c[None, :] == torch.arange(s, e)[:, None]
          acc[s:e] += fn(a1, a2, mask, x1)
        else:
          d = model.fmt_contrib(delta[:, s:e])
          acc[s:e] += fn(pre1, d, model.fmt_contrib(w_next[s:e]), x1)
  return (acc / (3.0 * n)).numpy()


__all__ = [
  "KINDS",
  "LAYOUTS",
  "FoldedDCGAN",
  "batched_chunk_fn",
  "fast_eims",
  "linear_chunk_fn",
  "make_chunk_fn",
]
