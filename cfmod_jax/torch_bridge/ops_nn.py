"""JAX implementations of the neural-network ATen ops: activations, linear algebra,
convolution, normalisation, pooling, upsampling (the rest of the table is in
`cfmod_jax.torch_bridge.ops`). Tensors are in PyTorch's layout (NCHW)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cfmod_jax.ops import conv_transpose
from cfmod_jax.torch_bridge.ops import implements

# ---- activations -------------------------------------------------------------------------
implements("aten.relu.default")(lambda x: jnp.maximum(x, jnp.zeros((), x.dtype)))
implements("aten.tanh.default")(jnp.tanh)
implements("aten.sigmoid.default")(jax.nn.sigmoid)
implements("aten.silu.default")(jax.nn.silu)
implements("aten.leaky_relu.default")(
  lambda x, negative_slope=0.01: jnp.where(x > 0, x, x * jnp.asarray(negative_slope, x.dtype))
)
implements("aten.hardtanh.default")(
  lambda x, min_val=-1.0, max_val=1.0: jnp.clip(x, jnp.asarray(min_val, x.dtype), max_val)
)


@implements("aten.gelu.default")
def _gelu(x, *, approximate="none"):
  return jax.nn.gelu(x, approximate=approximate == "tanh")


@implements("aten.elu.default")
def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
  neg = alpha * jnp.expm1(jnp.minimum(x, 0) * input_scale)
  return scale * jnp.where(x > 0, x, neg)


@implements("aten.softplus.default")
def _softplus(x, beta=1.0, threshold=20.0):
  bx = x * beta
  return jnp.where(bx > threshold, x, jnp.log1p(jnp.exp(jnp.minimum(bx, threshold))) / beta)


@implements("aten.hardswish.default")
def _hardswish(x):
  return x * jnp.clip(x + 3, 0, 6) / 6


@implements("aten._softmax.default")
def _softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.softmax(x, axis=dim)


@implements("aten._log_softmax.default")
def _log_softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.log_softmax(x, axis=dim)


# ---- linear algebra ------------------------------------------------------------------------
implements("aten.mm.default", "aten.bmm.default", "aten.matmul.default")(jnp.matmul)


@implements("aten.addmm.default")
def _addmm(bias, a, b, *, beta=1, alpha=1):
  out = jnp.matmul(a, b)
  out = out if alpha == 1 else alpha * out
  return out + (bias if beta == 1 else beta * bias)


@implements("aten.linear.default")
def _linear(x, w, b=None):
  out = jnp.matmul(x, w.T)
  return out if b is None else out + b


@implements("aten.embedding.default")
def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
  del padding_idx, scale_grad_by_freq, sparse  # training-time options
  return jnp.take(weight, indices.astype(jnp.int32), axis=0)


# ---- convolution ---------------------------------------------------------------------------
def _dn(nd: int) -> tuple[str, str, str]:
  sp = "DHW"[3 - nd :]
  return ("NC" + sp, "OI" + sp, "NC" + sp)


def is_dcgan_layer(weight_shape, stride, padding, dilation, output_padding) -> bool:
  """Whether a transposed convolution is the DCGAN layer: 2-D, kernel 4, stride 2,
  padding 1, no dilation or output padding — Flax's 'SAME' transposed convolution with
  the kernel flipped in space, for which `cfmod_jax.ops` has a sub-pixel form."""

  def two(v):
    return list(v) * 2 if len(v) == 1 else list(v)

  return (
    len(weight_shape) == 4
    and tuple(weight_shape[2:]) == (4, 4)
    and two(stride) == [2, 2]
    and two(padding) == [1, 1]
    and two(dilation) == [1, 1]
    and two(output_padding) == [0, 0]
  )


@implements("aten.convolution.default")
def convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
  """``aten.convolution`` (NCHW, torch weight layouts) with ``lax.conv_general_dilated``.

  A transposed convolution (weight ``[C_in, C_out / groups, *k]``) is the
  gradient of a convolution: the input dilated by ``stride``, the kernel flipped
  in space with its in/out axes swapped per group, padded by
  ``dilation · (k − 1) − padding`` (plus ``output_padding`` at the end).
  """
  nd = w.ndim - 2
  stride, padding, dilation = (
    list(v) * (nd if len(v) == 1 else 1) for v in (stride, padding, dilation)
  )
  if not transposed:
    out = lax.conv_general_dilated(
      x,
      w,
      window_strides=stride,
      padding=[(p, p) for p in padding],
      rhs_dilation=dilation,
      dimension_numbers=_dn(nd),
      feature_group_count=groups,
    )
  elif groups == 1 and is_dcgan_layer(w.shape, stride, padding, dilation, output_padding):
    # The DCGAN layer (k 4, s 2, p 1): our sub-pixel transposed convolution, which is
    # Flax's 'SAME' with the kernel flipped in space (channels last inside).
    kernel = jnp.flip(w, axis=(2, 3)).transpose(2, 3, 0, 1)
    out = conv_transpose(x.transpose(0, 2, 3, 1), kernel, (2, 2)).transpose(0, 3, 1, 2)
  else:
    output_padding = list(output_padding) * (nd if len(output_padding) == 1 else 1)
    cin, cout_g, *k = w.shape
    wt = w.reshape(groups, cin // groups, cout_g, *k)
    wt = jnp.swapaxes(wt, 1, 2).reshape(groups * cout_g, cin // groups, *k)
    wt = jnp.flip(wt, axis=tuple(range(2, 2 + nd)))
    pads = [
      (d * (kk - 1) - p, d * (kk - 1) - p + op)
      for kk, p, d, op in zip(k, padding, dilation, output_padding)
    ]
    out = lax.conv_general_dilated(
      x,
      wt,
      window_strides=[1] * nd,
      padding=pads,
      lhs_dilation=stride,
      rhs_dilation=dilation,
      dimension_numbers=_dn(nd),
      feature_group_count=groups,
    )
  if bias is not None:
    out = out + bias.reshape((1, -1) + (1,) * nd)
  return out


# ---- normalisation -------------------------------------------------------------------------
def _channel(v, ndim):
  return v.reshape((1, -1) + (1,) * (ndim - 2))


def _affine(y, weight, bias):
  if weight is not None:
    y = y * _channel(weight, y.ndim)
  if bias is not None:
    y = y + _channel(bias, y.ndim)
  return y


def _no_stats(x):
  return jnp.zeros((0,), x.dtype)


@implements("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps):
  del momentum
  inv = lax.rsqrt(running_var + eps)
  y = (x - _channel(running_mean, x.ndim)) * _channel(inv, x.ndim)
  return _affine(y, weight, bias), _no_stats(x), _no_stats(x)


def _batch_stats_norm(x, weight, bias, eps):
  axes = (0,) + tuple(range(2, x.ndim))
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  y = (x - mean) * lax.rsqrt(var + eps)
  return _affine(y, weight, bias), mean.reshape(-1), lax.rsqrt(var + eps).reshape(-1)


@implements("aten._native_batch_norm_legit.no_stats")
def _batch_norm_no_stats(x, weight, bias, training, momentum, eps):
  """Normalisation by the batch's own statistics: what InstanceNorm without
  running statistics decomposes into (a view of ``[1, N·C, H, W]``)."""
  del training, momentum
  return _batch_stats_norm(x, weight, bias, eps)


@implements("aten.native_batch_norm.default", "aten._native_batch_norm_legit.default")
def _native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
  del momentum
  if training or running_mean is None:
    return _batch_stats_norm(x, weight, bias, eps)
  return _batch_norm_eval(x, weight, bias, running_mean, running_var, 0.0, eps)


@implements("aten.native_layer_norm.default")
def _layer_norm(x, normalized_shape, weight, bias, eps):
  axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  rstd = lax.rsqrt(var + eps)
  y = (x - mean) * rstd
  if weight is not None:
    y = y * weight
  if bias is not None:
    y = y + bias
  return y, mean, rstd


@implements("aten.native_group_norm.default")
def _group_norm(x, weight, bias, n, c, hw, group, eps):
  del n, c, hw
  shape = x.shape
  xg = x.reshape(shape[0], group, -1)
  mean = jnp.mean(xg, axis=2, keepdims=True)
  var = jnp.mean(jnp.square(xg - mean), axis=2, keepdims=True)
  rstd = lax.rsqrt(var + eps)
  y = ((xg - mean) * rstd).reshape(shape)
  return _affine(y, weight, bias), mean[..., 0], rstd[..., 0]


# ---- pooling ------------------------------------------------------------------------------
def _pool_sum(x, k, s, pads):
  window = (1, 1, *k)
  strides = (1, 1, *s)
  cfg = ((0, 0), (0, 0), *pads)
  return lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, window, strides, cfg)


@implements("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
def _avg_pool(
  x,
  kernel_size,
  stride=(),
  padding=0,
  ceil_mode=False,
  count_include_pad=True,
  divisor_override=None,
):
  """Average pooling with torch's output sizes (``ceil_mode``) and divisors: the window's
  cells inside the zero-padded input (``count_include_pad``) or inside the input."""
  nd = x.ndim - 2

  def seq(v, default):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    v = v or list(default)
    return v * nd if len(v) == 1 else v

  k = seq(kernel_size, ())
  s = seq(stride, k)
  p = seq(padding, [0])
  pads, sizes = [], []
  for n, kk, ss, pp in zip(x.shape[2:], k, s, p):
    span = n + 2 * pp - kk
    out = (-(-span // ss) if ceil_mode else span // ss) + 1
    if ceil_mode and (out - 1) * ss >= n + pp:  # the last window must start inside
      out -= 1
    pads.append((pp, (out - 1) * ss + kk - n - pp))
    sizes.append(out)
  total = _pool_sum(x, k, s, pads)
  if divisor_override:
    return total / divisor_override
  ones = np.ones(x.shape[2:], np.float32)
  if count_include_pad:  # the padded input counts, the extra cells of ceil_mode do not
    ones = np.pad(ones, [(pp, pp) for pp in p], constant_values=1.0)
    pads = [(0, hi - pp) for (_, hi), pp in zip(pads, p)]
  count = _pool_sum(jnp.asarray(ones)[None, None], k, s, pads)
  return total / count.astype(x.dtype)


@implements("aten._adaptive_avg_pool2d.default", "aten._adaptive_avg_pool3d.default")
def _adaptive_avg_pool(x, output_size):
  """Bins ``[floor(i·n/out), ceil((i+1)·n/out))`` along each spatial axis, averaged."""
  nd = len(output_size)
  for i, out in enumerate(output_size):
    axis = x.ndim - nd + i
    n = x.shape[axis]
    parts = []
    for j in range(out):
      lo, hi = (j * n) // out, -(-((j + 1) * n) // out)
      parts.append(jnp.mean(lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True))
    x = jnp.concatenate(parts, axis=axis)
  return x


# ---- upsampling ----------------------------------------------------------------------------
def _out_sizes(x, output_size, scale_factors, nd):
  spatial = x.shape[-nd:]
  if output_size is not None:
    return [int(s) for s in output_size], [None] * nd
  sf = list(scale_factors)
  return [int(math.floor(s * f)) for s, f in zip(spatial, sf)], sf


def _src_scale(n_in, n_out, factor, align_corners):
  if align_corners:
    return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  return 1.0 / factor if factor is not None and factor > 0 else n_in / n_out


@implements(
  "aten.upsample_nearest2d.vec", "aten.upsample_nearest1d.vec", "aten.upsample_nearest3d.vec"
)
def _upsample_nearest(x, output_size, scale_factors):
  nd = len(output_size) if output_size is not None else len(scale_factors)
  sizes, factors = _out_sizes(x, output_size, scale_factors, nd)
  for i, (n_out, f) in enumerate(zip(sizes, factors)):
    axis = x.ndim - nd + i
    n_in = x.shape[axis]
    scale = np.float32(_src_scale(n_in, n_out, f, False))
    src = np.minimum(
      np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1
    )
    x = jnp.take(x, src, axis=axis)
  return x


def _linear_weights(n_in, n_out, f, align_corners):
  """Source indices and weights of linear interpolation along one axis, as torch
  computes them (float32 source coordinates)."""
  scale = np.float32(_src_scale(n_in, n_out, f, align_corners))
  dst = np.arange(n_out, dtype=np.float32)
  src = (
    dst * scale
    if align_corners
    else np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), 0)
  )
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  lam = (src - i0).astype(np.float32)
  return i0, i1, lam


@implements("aten.upsample_bilinear2d.vec", "aten.upsample_linear1d.vec")
def _upsample_linear(x, output_size, align_corners, scale_factors):
  nd = len(output_size) if output_size is not None else len(scale_factors)
  sizes, factors = _out_sizes(x, output_size, scale_factors, nd)
  for i, (n_out, f) in enumerate(zip(sizes, factors)):
    axis = x.ndim - nd + i
    i0, i1, lam = _linear_weights(x.shape[axis], n_out, f, align_corners)
    shape = [1] * x.ndim
    shape[axis] = n_out
    lam = jnp.asarray(lam, x.dtype).reshape(shape)
    x = jnp.take(x, i0, axis=axis) * (1 - lam) + jnp.take(x, i1, axis=axis) * lam
  return x


__all__ = ["convolution"]
