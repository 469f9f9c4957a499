"""JAX implementations of the ATen ops that generators use (the op table).

Keys are ATen overloads by name (``"aten.convolution.default"``) or Python
callables (``operator.mul`` for the symbolic batch size); values take what the
exported graph passes: JAX arrays for tensors, and Python values (ints, floats,
bools, lists, ``None``, torch dtypes) for the rest, in the op's argument order.
Tensors keep PyTorch's layout (NCHW): the bridge transposes only at the sites
and at the image.

An op missing here makes `cfmod_jax.torch_bridge.from_torch` raise a ValueError
naming it; add one with `register_op`::

    from cfmod_jax.torch_bridge import register_op
    register_op("aten.hardswish.default", lambda x: x * jnp.clip(x + 3, 0, 6) / 6)

and check it against PyTorch on random inputs (as tests/test_torch_bridge_ops.py does).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

OPS: dict[Any, Callable] = {}


def register_op(target: Any, fn: Callable | None = None):
  """Adds (or replaces) the JAX implementation of an ATen op.

  ``target``: the overload's name (``"aten.foo.default"``), the overload itself
  (``torch.ops.aten.foo.default``) or a Python callable used as a graph target.
  ``fn`` receives the node's arguments (JAX arrays for tensors). Usable as a
  decorator: ``@register_op("aten.foo.default")``.
  """

  def add(f):
    OPS[op_key(target)] = f
    return f

  return add if fn is None else add(fn)


def op_key(target: Any) -> Any:
  """The table's key of a graph target: ``"aten.name.overload"`` for ATen ops."""
  if isinstance(target, str):
    return target
  name = getattr(target, "_schema", None)
  if name is not None:  # an OpOverload: "aten::convolution" + overload
    ns, op = target._schema.name.split("::")
    return f"{ns}.{op}.{target._overloadname}"
  return target


def _ops(*names):
  def add(f):
    for n in names:
      OPS[n] = f
    return f

  return add


# ---- dtypes ----------------------------------------------------------------------------
def jax_dtype(dtype: Any) -> Any:
  """The JAX dtype of a torch dtype (64-bit types map to 32-bit: JAX's default)."""
  if dtype is None:
    return None
  name = str(dtype).replace("torch.", "")
  return {
    "float64": jnp.float32,
    "double": jnp.float32,
    "float32": jnp.float32,
    "float": jnp.float32,
    "float16": jnp.float16,
    "half": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "int64": jnp.int32,
    "long": jnp.int32,
    "int32": jnp.int32,
    "int": jnp.int32,
    "int16": jnp.int16,
    "int8": jnp.int8,
    "uint8": jnp.uint8,
    "bool": jnp.bool_,
  }[name]


def _float_like(x):
  return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


# ---- Python arithmetic on sizes (symbolic batch) --------------------------------------
for _f in (
  operator.add,
  operator.sub,
  operator.mul,
  operator.floordiv,
  operator.truediv,
  operator.mod,
  operator.neg,
  operator.getitem,
):
  OPS[_f] = _f
OPS["aten.sym_size.int"] = lambda x, dim: x.shape[dim]
OPS["aten.sym_numel.default"] = lambda x: math.prod(x.shape)


# ---- elementwise ---------------------------------------------------------------------------
def _binary(f):
  def op(a, b, *, alpha=1):
    if alpha != 1:
      b = b * alpha
    return f(a, b)

  return op


_ops("aten.add.Tensor", "aten.add.Scalar")(_binary(jnp.add))
_ops("aten.sub.Tensor", "aten.sub.Scalar")(_binary(jnp.subtract))
_ops("aten.rsub.Scalar", "aten.rsub.Tensor")(lambda a, b, *, alpha=1: b - a * alpha)
_ops("aten.mul.Tensor", "aten.mul.Scalar")(jnp.multiply)
_ops("aten.div.Tensor", "aten.div.Scalar")(jnp.true_divide)


@_ops("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(a, b, *, rounding_mode=None):
  q = jnp.true_divide(a, b)
  if rounding_mode == "floor":
    return jnp.floor(q) if jnp.issubdtype(q.dtype, jnp.floating) else jnp.floor_divide(a, b)
  if rounding_mode == "trunc":
    return jnp.trunc(q)
  return q


_ops("aten.neg.default")(jnp.negative)
_ops("aten.abs.default")(jnp.abs)
_ops("aten.exp.default")(jnp.exp)
_ops("aten.log.default")(jnp.log)
_ops("aten.log1p.default")(jnp.log1p)
_ops("aten.expm1.default")(jnp.expm1)
_ops("aten.sqrt.default")(jnp.sqrt)
_ops("aten.rsqrt.default")(lax.rsqrt)
_ops("aten.reciprocal.default")(jnp.reciprocal)
_ops("aten.sin.default")(jnp.sin)
_ops("aten.cos.default")(jnp.cos)
_ops("aten.erf.default")(jax.scipy.special.erf)
_ops("aten.sign.default")(jnp.sign)
_ops("aten.floor.default")(jnp.floor)
_ops("aten.ceil.default")(jnp.ceil)
_ops("aten.round.default")(jnp.round)
_ops("aten.trunc.default")(jnp.trunc)
_ops("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")(jnp.power)
_ops("aten.maximum.default")(jnp.maximum)
_ops("aten.minimum.default")(jnp.minimum)
_ops("aten.eq.Tensor", "aten.eq.Scalar")(jnp.equal)
_ops("aten.ne.Tensor", "aten.ne.Scalar")(jnp.not_equal)
_ops("aten.gt.Tensor", "aten.gt.Scalar")(jnp.greater)
_ops("aten.ge.Tensor", "aten.ge.Scalar")(jnp.greater_equal)
_ops("aten.lt.Tensor", "aten.lt.Scalar")(jnp.less)
_ops("aten.le.Tensor", "aten.le.Scalar")(jnp.less_equal)
_ops("aten.logical_not.default")(jnp.logical_not)
_ops("aten.logical_and.default")(jnp.logical_and)
_ops("aten.logical_or.default")(jnp.logical_or)
_ops("aten.bitwise_not.default")(jnp.invert)
_ops("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")(
  jnp.where
)


@_ops("aten.clamp.default", "aten.clamp.Tensor")
def _clamp(x, min=None, max=None):  # noqa: A002
  if min is not None:
    x = jnp.maximum(x, jnp.asarray(min, x.dtype))
  if max is not None:
    x = jnp.minimum(x, jnp.asarray(max, x.dtype))
  return x


_ops("aten.clamp_min.default")(lambda x, m: _clamp(x, min=m))
_ops("aten.clamp_max.default")(lambda x, m: _clamp(x, max=m))


# ---- activations -------------------------------------------------------------------------
_ops("aten.relu.default")(lambda x: jnp.maximum(x, jnp.zeros((), x.dtype)))
_ops("aten.tanh.default")(jnp.tanh)
_ops("aten.sigmoid.default")(jax.nn.sigmoid)
_ops("aten.silu.default")(jax.nn.silu)
_ops("aten.leaky_relu.default")(
  lambda x, negative_slope=0.01: jnp.where(x > 0, x, x * jnp.asarray(negative_slope, x.dtype))
)
_ops("aten.hardtanh.default")(
  lambda x, min_val=-1.0, max_val=1.0: jnp.clip(x, jnp.asarray(min_val, x.dtype), max_val)
)


@_ops("aten.gelu.default")
def _gelu(x, *, approximate="none"):
  return jax.nn.gelu(x, approximate=approximate == "tanh")


@_ops("aten.elu.default")
def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
  neg = alpha * jnp.expm1(jnp.minimum(x, 0) * input_scale)
  return scale * jnp.where(x > 0, x, neg)


@_ops("aten.softplus.default")
def _softplus(x, beta=1.0, threshold=20.0):
  bx = x * beta
  return jnp.where(bx > threshold, x, jnp.log1p(jnp.exp(jnp.minimum(bx, threshold))) / beta)


@_ops("aten.hardswish.default")
def _hardswish(x):
  return x * jnp.clip(x + 3, 0, 6) / 6


@_ops("aten._softmax.default")
def _softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.softmax(x, axis=dim)


@_ops("aten._log_softmax.default")
def _log_softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.log_softmax(x, axis=dim)


# ---- shapes ------------------------------------------------------------------------------
@_ops("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(x, size):
  return jnp.reshape(x, tuple(int(s) for s in size))


_ops("aten.permute.default")(lambda x, dims: jnp.transpose(x, tuple(dims)))
_ops("aten.t.default")(lambda x: x.T)
_ops("aten.transpose.int")(lambda x, d0, d1: jnp.swapaxes(x, d0, d1))
_ops("aten.unsqueeze.default")(jnp.expand_dims)
_ops(
  "aten.clone.default",
  "aten.alias.default",
  "aten.detach.default",
  "aten.lift_fresh_copy.default",
  "aten.contiguous.default",
)(lambda x, **kw: x)


@_ops("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default")
def _squeeze(x, dims=None):
  if dims is None:
    return jnp.squeeze(x)
  dims = [dims] if isinstance(dims, int) else list(dims)
  dims = tuple(d % x.ndim for d in dims if x.shape[d] == 1)
  return jnp.squeeze(x, dims) if dims else x


@_ops("aten.expand.default")
def _expand(x, size, *, implicit=False):
  del implicit
  size = list(size)
  lead = len(size) - x.ndim
  out = [x.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(size)]
  return jnp.broadcast_to(x, tuple(int(s) for s in out))


@_ops("aten.cat.default")
def _cat(tensors, dim=0):
  tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)]  # torch skips []
  return jnp.concatenate(tensors, axis=dim)


_ops("aten.stack.default")(lambda tensors, dim=0: jnp.stack(tensors, axis=dim))


@_ops("aten.slice.Tensor")
def _slice(x, dim=0, start=None, end=None, step=1):
  n = x.shape[dim]
  start = 0 if start is None else start
  end = n if end is None else end
  start, end, step = slice(start, end, step).indices(n)
  return lax.slice_in_dim(x, start, max(start, end), step, axis=dim)


@_ops("aten.select.int")
def _select(x, dim, index):
  return jnp.take(x, index, axis=dim)


@_ops("aten.index.Tensor")
def _index(x, indices):
  return x[tuple(slice(None) if i is None else i for i in indices)]


@_ops("aten.split_with_sizes.default")
def _split_with_sizes(x, sizes, dim=0):
  return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=dim)


@_ops("aten.split.Tensor")
def _split(x, size, dim=0):
  n = x.shape[dim]
  return jnp.split(x, list(range(size, n, size)), axis=dim)


@_ops("aten.repeat.default")
def _repeat(x, repeats):
  repeats = list(repeats)
  x = jnp.reshape(x, (1,) * (len(repeats) - x.ndim) + x.shape)
  return jnp.tile(x, tuple(repeats))


_ops("aten.flip.default")(lambda x, dims: jnp.flip(x, tuple(dims)))
_ops("aten.roll.default")(lambda x, shifts, dims=(): jnp.roll(x, tuple(shifts), tuple(dims)))


@_ops("aten.constant_pad_nd.default")
def _constant_pad(x, pad, value=0.0):
  cfg = [(0, 0, 0)] * x.ndim
  for i in range(len(pad) // 2):  # torch lists the last dimension first
    cfg[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
  return lax.pad(x, jnp.asarray(value, x.dtype), cfg)  # negative pads crop, as in torch


def _np_pad(mode):
  def op(x, padding):
    cfg = [(0, 0)] * x.ndim
    for i in range(len(padding) // 2):
      cfg[x.ndim - 1 - i] = (padding[2 * i], padding[2 * i + 1])
    return jnp.pad(x, cfg, mode=mode)

  return op


_ops("aten.reflection_pad1d.default", "aten.reflection_pad2d.default")(_np_pad("reflect"))
_ops("aten.replication_pad1d.default", "aten.replication_pad2d.default")(_np_pad("edge"))


# ---- creation and casts ---------------------------------------------------------------------
@_ops("aten._to_copy.default")
def _to_copy(x, *, dtype=None, **kw):
  del kw
  return x if dtype is None else x.astype(jax_dtype(dtype))


_ops("aten.to.dtype")(lambda x, dtype, *a, **kw: x.astype(jax_dtype(dtype)))


@_ops("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def _arange(*args, dtype=None, **kw):
  del kw
  dt = jax_dtype(dtype)
  if dt is None:
    dt = jnp.int32 if all(isinstance(a, int) for a in args) else jnp.float32
  return jnp.arange(*args, dtype=dt)


@_ops("aten.full.default")
def _full(size, value, *, dtype=None, **kw):
  del kw
  dt = jax_dtype(dtype) or (jnp.float32 if isinstance(value, float) else jnp.int32)
  return jnp.full(tuple(size), value, dt)


@_ops("aten.scalar_tensor.default")
def _scalar_tensor(value, *, dtype=None, **kw):
  del kw
  return jnp.asarray(value, jax_dtype(dtype) or jnp.float32)


@_ops("aten.full_like.default")
def _full_like(x, value, *, dtype=None, **kw):
  del kw
  return jnp.full(x.shape, value, jax_dtype(dtype) or x.dtype)


_ops("aten.zeros_like.default")(lambda x, *, dtype=None, **kw: _full_like(x, 0, dtype=dtype))
_ops("aten.ones_like.default")(lambda x, *, dtype=None, **kw: _full_like(x, 1, dtype=dtype))


# ---- reductions --------------------------------------------------------------------------
def _dims(x, dim):
  if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
    return None
  return (dim,) if isinstance(dim, int) else tuple(dim)


@_ops("aten.mean.dim", "aten.mean.default")
def _mean(x, dim=None, keepdim=False, *, dtype=None):
  x = x if dtype is None else x.astype(jax_dtype(dtype))
  return jnp.mean(x, axis=_dims(x, dim), keepdims=keepdim)


@_ops("aten.sum.dim_IntList", "aten.sum.default")
def _sum(x, dim=None, keepdim=False, *, dtype=None):
  x = x if dtype is None else x.astype(jax_dtype(dtype))
  return jnp.sum(x, axis=_dims(x, dim), keepdims=keepdim)


@_ops("aten.var.correction")
def _var(x, dim=None, *, correction=1, keepdim=False):
  return jnp.var(
    x, axis=_dims(x, dim), ddof=1 if correction is None else correction, keepdims=keepdim
  )


_ops("aten.amax.default")(
  lambda x, dim=(), keepdim=False: jnp.max(x, _dims(x, dim), keepdims=keepdim)
)
_ops("aten.amin.default")(
  lambda x, dim=(), keepdim=False: jnp.min(x, _dims(x, dim), keepdims=keepdim)
)


# ---- linear algebra ------------------------------------------------------------------------
_ops("aten.mm.default", "aten.bmm.default", "aten.matmul.default")(jnp.matmul)


@_ops("aten.addmm.default")
def _addmm(bias, a, b, *, beta=1, alpha=1):
  out = jnp.matmul(a, b)
  out = out if alpha == 1 else alpha * out
  return out + (bias if beta == 1 else beta * bias)


@_ops("aten.linear.default")
def _linear(x, w, b=None):
  out = jnp.matmul(x, w.T)
  return out if b is None else out + b


@_ops("aten.embedding.default")
def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
  del padding_idx, scale_grad_by_freq, sparse  # training-time options
  return jnp.take(weight, indices.astype(jnp.int32), axis=0)


# ---- convolution ---------------------------------------------------------------------------
def _dn(nd: int) -> tuple[str, str, str]:
  sp = "DHW"[3 - nd :]
  return ("NC" + sp, "OI" + sp, "NC" + sp)


@_ops("aten.convolution.default")
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


@_ops("aten._native_batch_norm_legit_no_training.default")
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


@_ops("aten._native_batch_norm_legit.no_stats")
def _batch_norm_no_stats(x, weight, bias, training, momentum, eps):
  """Normalisation by the batch's own statistics: what InstanceNorm without
  running statistics decomposes into (a view of ``[1, N·C, H, W]``)."""
  del training, momentum
  return _batch_stats_norm(x, weight, bias, eps)


@_ops("aten.native_batch_norm.default", "aten._native_batch_norm_legit.default")
def _native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
  del momentum
  if training or running_mean is None:
    return _batch_stats_norm(x, weight, bias, eps)
  return _batch_norm_eval(x, weight, bias, running_mean, running_var, 0.0, eps)


@_ops("aten.native_layer_norm.default")
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


@_ops("aten.native_group_norm.default")
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


@_ops("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
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


@_ops("aten._adaptive_avg_pool2d.default", "aten._adaptive_avg_pool3d.default")
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


@_ops("aten.upsample_nearest2d.vec", "aten.upsample_nearest1d.vec", "aten.upsample_nearest3d.vec")
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


@_ops("aten.upsample_bilinear2d.vec", "aten.upsample_linear1d.vec")
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


__all__ = ["OPS", "convolution", "jax_dtype", "op_key", "register_op"]
