"""JAX implementations of the ATen ops that generators use (the op table).

Keys are ATen overloads by name (``"aten.convolution.default"``) or Python
callables (``operator.mul`` for the symbolic batch size); values take what the
exported graph passes: JAX arrays for tensors, and Python values (ints, floats,
bools, lists, ``None``, torch dtypes) for the rest, in the op's argument order.
Tensors keep PyTorch's layout (NCHW): the bridge transposes only at the sites
and at the image. This module holds the table, the elementwise, shape, creation
and reduction ops; `cfmod_jax.torch_bridge.ops_nn` the neural-network ops
(activations, matmuls, convolution, normalisation, pooling, upsampling).

An op missing here makes `cfmod_jax.torch_bridge.from_torch` raise a ValueError
naming it; add one with `register_op`::

    from cfmod_jax.torch_bridge import register_op
    register_op("aten.cumsum.default", lambda x, dim, *, dtype=None: jnp.cumsum(x, dim))

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


def implements(*names: str):
  """Decorator: registers a function under the given op names (the table's own entries)."""

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


implements("aten.add.Tensor", "aten.add.Scalar")(_binary(jnp.add))
implements("aten.sub.Tensor", "aten.sub.Scalar")(_binary(jnp.subtract))
implements("aten.rsub.Scalar", "aten.rsub.Tensor")(lambda a, b, *, alpha=1: b - a * alpha)
implements("aten.mul.Tensor", "aten.mul.Scalar")(jnp.multiply)
implements("aten.div.Tensor", "aten.div.Scalar")(jnp.true_divide)


@implements("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(a, b, *, rounding_mode=None):
  q = jnp.true_divide(a, b)
  if rounding_mode == "floor":
    return jnp.floor(q) if jnp.issubdtype(q.dtype, jnp.floating) else jnp.floor_divide(a, b)
  if rounding_mode == "trunc":
    return jnp.trunc(q)
  return q


implements("aten.neg.default")(jnp.negative)
implements("aten.abs.default")(jnp.abs)
implements("aten.exp.default")(jnp.exp)
implements("aten.log.default")(jnp.log)
implements("aten.log1p.default")(jnp.log1p)
implements("aten.expm1.default")(jnp.expm1)
implements("aten.sqrt.default")(jnp.sqrt)
implements("aten.rsqrt.default")(lax.rsqrt)
implements("aten.reciprocal.default")(jnp.reciprocal)
implements("aten.sin.default")(jnp.sin)
implements("aten.cos.default")(jnp.cos)
implements("aten.erf.default")(jax.scipy.special.erf)
implements("aten.sign.default")(jnp.sign)
implements("aten.floor.default")(jnp.floor)
implements("aten.ceil.default")(jnp.ceil)
implements("aten.round.default")(jnp.round)
implements("aten.trunc.default")(jnp.trunc)
implements("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")(jnp.power)
implements("aten.maximum.default")(jnp.maximum)
implements("aten.minimum.default")(jnp.minimum)
implements("aten.eq.Tensor", "aten.eq.Scalar")(jnp.equal)
implements("aten.ne.Tensor", "aten.ne.Scalar")(jnp.not_equal)
implements("aten.gt.Tensor", "aten.gt.Scalar")(jnp.greater)
implements("aten.ge.Tensor", "aten.ge.Scalar")(jnp.greater_equal)
implements("aten.lt.Tensor", "aten.lt.Scalar")(jnp.less)
implements("aten.le.Tensor", "aten.le.Scalar")(jnp.less_equal)
implements("aten.logical_not.default")(jnp.logical_not)
implements("aten.logical_and.default")(jnp.logical_and)
implements("aten.logical_or.default")(jnp.logical_or)
implements("aten.bitwise_not.default")(jnp.invert)
implements(
  "aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar"
)(jnp.where)


@implements("aten.clamp.default", "aten.clamp.Tensor")
def _clamp(x, min=None, max=None):  # noqa: A002
  if min is not None:
    x = jnp.maximum(x, jnp.asarray(min, x.dtype))
  if max is not None:
    x = jnp.minimum(x, jnp.asarray(max, x.dtype))
  return x


implements("aten.clamp_min.default")(lambda x, m: _clamp(x, min=m))
implements("aten.clamp_max.default")(lambda x, m: _clamp(x, max=m))


# ---- shapes ------------------------------------------------------------------------------
@implements("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(x, size):
  return jnp.reshape(x, tuple(int(s) for s in size))


implements("aten.permute.default")(lambda x, dims: jnp.transpose(x, tuple(dims)))
implements("aten.t.default")(lambda x: x.T)
implements("aten.transpose.int")(lambda x, d0, d1: jnp.swapaxes(x, d0, d1))
implements("aten.unsqueeze.default")(jnp.expand_dims)
implements(
  "aten.clone.default",
  "aten.alias.default",
  "aten.detach.default",
  "aten.lift_fresh_copy.default",
  "aten.contiguous.default",
)(lambda x, **kw: x)


@implements("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default")
def _squeeze(x, dims=None):
  if dims is None:
    return jnp.squeeze(x)
  dims = [dims] if isinstance(dims, int) else list(dims)
  dims = tuple(d % x.ndim for d in dims if x.shape[d] == 1)
  return jnp.squeeze(x, dims) if dims else x


@implements("aten.expand.default")
def _expand(x, size, *, implicit=False):
  del implicit
  size = list(size)
  lead = len(size) - x.ndim
  out = [x.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(size)]
  return jnp.broadcast_to(x, tuple(int(s) for s in out))


@implements("aten.cat.default")
def _cat(tensors, dim=0):
  tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)]  # torch skips []
  return jnp.concatenate(tensors, axis=dim)


implements("aten.stack.default")(lambda tensors, dim=0: jnp.stack(tensors, axis=dim))


@implements("aten.slice.Tensor")
def _slice(x, dim=0, start=None, end=None, step=1):
  n = x.shape[dim]
  start = 0 if start is None else start
  end = n if end is None else end
  start, end, step = slice(start, end, step).indices(n)
  return lax.slice_in_dim(x, start, max(start, end), step, axis=dim)


@implements("aten.select.int")
def _select(x, dim, index):
  return jnp.take(x, index, axis=dim)


@implements("aten.index.Tensor")
def _index(x, indices):
  return x[tuple(slice(None) if i is None else i for i in indices)]


@implements("aten.split_with_sizes.default")
def _split_with_sizes(x, sizes, dim=0):
  return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=dim)


@implements("aten.split.Tensor")
def _split(x, size, dim=0):
  n = x.shape[dim]
  return jnp.split(x, list(range(size, n, size)), axis=dim)


@implements("aten.repeat.default")
def _repeat(x, repeats):
  repeats = list(repeats)
  x = jnp.reshape(x, (1,) * (len(repeats) - x.ndim) + x.shape)
  return jnp.tile(x, tuple(repeats))


implements("aten.flip.default")(lambda x, dims: jnp.flip(x, tuple(dims)))
implements("aten.roll.default")(lambda x, shifts, dims=(): jnp.roll(x, tuple(shifts), tuple(dims)))


@implements("aten.constant_pad_nd.default")
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


implements("aten.reflection_pad1d.default", "aten.reflection_pad2d.default")(_np_pad("reflect"))
implements("aten.replication_pad1d.default", "aten.replication_pad2d.default")(_np_pad("edge"))


# ---- creation and casts ---------------------------------------------------------------------
@implements("aten._to_copy.default")
def _to_copy(x, *, dtype=None, **kw):
  del kw
  return x if dtype is None else x.astype(jax_dtype(dtype))


implements("aten.to.dtype")(lambda x, dtype, *a, **kw: x.astype(jax_dtype(dtype)))


@implements("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def _arange(*args, dtype=None, **kw):
  del kw
  dt = jax_dtype(dtype)
  if dt is None:
    dt = jnp.int32 if all(isinstance(a, int) for a in args) else jnp.float32
  return jnp.arange(*args, dtype=dt)


@implements("aten.full.default")
def _full(size, value, *, dtype=None, **kw):
  del kw
  dt = jax_dtype(dtype) or (jnp.float32 if isinstance(value, float) else jnp.int32)
  return jnp.full(tuple(size), value, dt)


@implements("aten.scalar_tensor.default")
def _scalar_tensor(value, *, dtype=None, **kw):
  del kw
  return jnp.asarray(value, jax_dtype(dtype) or jnp.float32)


@implements("aten.full_like.default")
def _full_like(x, value, *, dtype=None, **kw):
  del kw
  return jnp.full(x.shape, value, jax_dtype(dtype) or x.dtype)


implements("aten.zeros_like.default")(lambda x, *, dtype=None, **kw: _full_like(x, 0, dtype=dtype))
implements("aten.ones_like.default")(lambda x, *, dtype=None, **kw: _full_like(x, 1, dtype=dtype))


# ---- reductions --------------------------------------------------------------------------
def _dims(x, dim):
  if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
    return None
  return (dim,) if isinstance(dim, int) else tuple(dim)


@implements("aten.mean.dim", "aten.mean.default")
def _mean(x, dim=None, keepdim=False, *, dtype=None):
  x = x if dtype is None else x.astype(jax_dtype(dtype))
  return jnp.mean(x, axis=_dims(x, dim), keepdims=keepdim)


@implements("aten.sum.dim_IntList", "aten.sum.default")
def _sum(x, dim=None, keepdim=False, *, dtype=None):
  x = x if dtype is None else x.astype(jax_dtype(dtype))
  return jnp.sum(x, axis=_dims(x, dim), keepdims=keepdim)


@implements("aten.var.correction")
def _var(x, dim=None, *, correction=1, keepdim=False):
  return jnp.var(
    x, axis=_dims(x, dim), ddof=1 if correction is None else correction, keepdims=keepdim
  )


implements("aten.amax.default")(
  lambda x, dim=(), keepdim=False: jnp.max(x, _dims(x, dim), keepdims=keepdim)
)
implements("aten.amin.default")(
  lambda x, dim=(), keepdim=False: jnp.min(x, _dims(x, dim), keepdims=keepdim)
)


__all__ = ["OPS", "implements", "jax_dtype", "op_key", "register_op"]
