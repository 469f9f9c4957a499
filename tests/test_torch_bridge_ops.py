"""Each ATen op of cfmod_jax.torch_bridge's table against PyTorch itself (random
float32 inputs, the op called directly on both sides)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cfmod_jax.torch_bridge import ops

rng = np.random.default_rng(0)


def r(*shape, lo=-2.0, hi=2.0):
  return rng.uniform(lo, hi, shape).astype(np.float32)


def pos(*shape):
  return r(*shape, lo=0.2, hi=2.0)


def idx(n, *shape):
  return rng.integers(0, n, shape).astype(np.int64)


def T(a):  # noqa: N802
  return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def J(a):  # noqa: N802
  return jnp.asarray(a) if isinstance(a, np.ndarray) else a


def _deep(f, a):
  if isinstance(a, (list, tuple)):
    return type(a)(_deep(f, x) for x in a)
  return f(a)


x4 = r(2, 6, 5, 7)
CASES = [
  # convolutions: plain, strided/padded/dilated, groups, 1-d
  ("aten.convolution.default", (x4, r(4, 6, 3, 3), r(4), [1, 1], [1, 1], [1, 1], False, [0, 0], 1)),
  ("aten.convolution.default", (x4, r(4, 6, 3, 2), None, [2, 1], [0, 2], [2, 1], False, [0, 0], 1)),
  ("aten.convolution.default", (x4, r(9, 2, 3, 3), r(9), [1, 2], [1, 0], [1, 1], False, [0, 0], 3)),
  ("aten.convolution.default", (r(2, 4, 9), r(5, 4, 3), r(5), [2], [1], [1], False, [0], 1)),
  # transposed: the DCGAN layers, output_padding, dilation, groups, non-square
  (
    "aten.convolution.default",
    (r(2, 6, 1, 1), r(6, 4, 4, 4), None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1),
  ),
  ("aten.convolution.default", (x4, r(6, 4, 4, 4), r(4), [2, 2], [1, 1], [1, 1], True, [0, 0], 1)),
  ("aten.convolution.default", (x4, r(6, 3, 3, 2), r(3), [2, 3], [1, 0], [1, 1], True, [1, 2], 1)),
  ("aten.convolution.default", (x4, r(6, 2, 3, 3), None, [2, 2], [2, 1], [2, 1], True, [1, 0], 3)),
  ("aten.convolution.default", (r(2, 4, 9), r(4, 5, 3), r(5), [2], [1], [1], True, [1], 1)),
  # linear algebra
  ("aten.addmm.default", (r(5), r(3, 4), r(4, 5))),
  ("aten.mm.default", (r(3, 4), r(4, 5))),
  ("aten.bmm.default", (r(2, 3, 4), r(2, 4, 5))),
  ("aten.embedding.default", (r(7, 4), idx(7, 3, 2))),
  # normalisation
  ("aten._native_batch_norm_legit_no_training.default", (x4, r(6), r(6), r(6), pos(6), 0.1, 1e-5)),
  (
    "aten._native_batch_norm_legit_no_training.default",
    (r(3, 6), None, None, r(6), pos(6), 0.1, 1e-3),
  ),
  ("aten._native_batch_norm_legit.no_stats", (r(1, 12, 4, 4), r(12), r(12), True, 0.1, 1e-5)),
  ("aten.native_layer_norm.default", (x4, [5, 7], r(5, 7), r(5, 7), 1e-5)),
  ("aten.native_group_norm.default", (x4, r(6), r(6), 2, 6, 35, 3, 1e-5)),
  # activations
  ("aten.relu.default", (x4,)),
  ("aten.leaky_relu.default", (x4, 0.2)),
  ("aten.tanh.default", (x4,)),
  ("aten.sigmoid.default", (x4,)),
  ("aten.silu.default", (x4,)),
  ("aten.gelu.default", (x4,)),
  ("aten.elu.default", (x4, 0.7)),
  ("aten.softplus.default", (r(3, 4, lo=-30, hi=30), 2.0, 20.0)),
  ("aten.hardtanh.default", (x4, -0.5, 0.8)),
  ("aten.hardswish.default", (r(3, 4, lo=-5, hi=5),)),
  ("aten._softmax.default", (x4, 1, False)),
  # upsampling: nearest (factor and size), bilinear (align_corners both, factor and size)
  ("aten.upsample_nearest2d.vec", (x4, None, [2.0, 3.0])),
  ("aten.upsample_nearest2d.vec", (x4, [8, 9], None)),
  ("aten.upsample_bilinear2d.vec", (x4, None, False, [2.0, 2.0])),
  ("aten.upsample_bilinear2d.vec", (x4, None, True, [2.0, 3.0])),
  ("aten.upsample_bilinear2d.vec", (x4, [9, 4], False, None)),
  ("aten.upsample_bilinear2d.vec", (x4, [9, 13], True, None)),
  # elementwise and comparisons
  ("aten.add.Tensor", (x4, r(5, 7))),
  ("aten.add.Scalar", (x4, 1.5)),
  ("aten.sub.Tensor", (x4, r(6, 1, 1))),
  ("aten.rsub.Scalar", (x4, 1.0)),
  ("aten.mul.Tensor", (x4, r(1, 6, 1, 1))),
  ("aten.mul.Scalar", (x4, -0.5)),
  ("aten.div.Tensor", (x4, pos(7))),
  ("aten.neg.default", (x4,)),
  ("aten.exp.default", (x4,)),
  ("aten.log.default", (pos(4, 5),)),
  ("aten.sqrt.default", (pos(4, 5),)),
  ("aten.rsqrt.default", (pos(4, 5),)),
  ("aten.pow.Tensor_Scalar", (pos(4, 5), 2.5)),
  ("aten.abs.default", (x4,)),
  ("aten.clamp.default", (x4, -0.5, 0.7)),
  ("aten.where.self", (x4 > 0, x4, r(2, 6, 5, 7))),
  ("aten.gt.Scalar", (x4, 0.3)),
  ("aten.maximum.default", (x4, r(7))),
  # shapes
  ("aten.view.default", (x4, [2, 6, 35])),
  ("aten.permute.default", (x4, [0, 2, 3, 1])),
  ("aten.transpose.int", (x4, 1, 3)),
  ("aten.unsqueeze.default", (x4, 2)),
  ("aten.squeeze.dims", (r(2, 1, 3, 1), [1, 3])),
  ("aten.expand.default", (r(2, 1, 5, 1), [2, 4, -1, 3])),
  ("aten.cat.default", ([x4, r(2, 3, 5, 7)], 1)),
  ("aten.stack.default", ([x4, x4 * 2], 1)),
  ("aten.slice.Tensor", (x4, 2, 1, -1)),
  ("aten.slice.Tensor", (x4, 3, 0, 9223372036854775807, 2)),
  ("aten.select.int", (x4, 1, 2)),
  ("aten.split_with_sizes.default", (x4, [2, 4], 1)),
  ("aten.repeat.default", (r(3, 4), [2, 1, 2])),
  ("aten.clone.default", (x4,)),
  ("aten.flip.default", (x4, [2, 3])),
  ("aten.constant_pad_nd.default", (x4, [1, 2, 0, 3], 0.5)),
  ("aten.constant_pad_nd.default", (x4, [-1, 2], 0.0)),
  ("aten.reflection_pad2d.default", (x4, [1, 2, 2, 1])),
  ("aten.replication_pad2d.default", (x4, [2, 0, 1, 1])),
  # reductions
  ("aten.mean.dim", (x4, [2, 3], True)),
  ("aten.sum.dim_IntList", (x4, [1])),
  ("aten.amax.default", (x4, [1], True)),
  ("aten.amin.default", (x4, [2, 3])),
  ("aten.sum.default", (x4,)),
  ("aten.mean.default", (x4,)),
  ("aten.var.correction", (x4, [2, 3])),
  # the rest of the table
  ("aten.native_batch_norm.default", (x4, r(6), r(6), r(6), pos(6), False, 0.1, 1e-5)),
  ("aten._native_batch_norm_legit.default", (x4, r(6), r(6), r(6), pos(6), False, 0.1, 1e-5)),
  ("aten._log_softmax.default", (x4, 1, False)),
  ("aten.upsample_nearest1d.vec", (r(2, 3, 5), None, [3.0])),
  ("aten.upsample_nearest3d.vec", (r(1, 2, 3, 4, 2), [6, 4, 5], None)),
  ("aten.upsample_linear1d.vec", (r(2, 3, 5), [11], False, None)),
  ("aten.reflection_pad1d.default", (r(2, 3, 5), [2, 1])),
  ("aten.replication_pad1d.default", (r(2, 3, 5), [0, 3])),
  ("aten.linear.default", (r(3, 4), r(5, 4), r(5))),
  ("aten.matmul.default", (r(2, 3, 4), r(4, 5))),
  ("aten.index.Tensor", (x4, [None, idx(6, 4), None, idx(7, 4)])),
  ("aten.squeeze.dim", (r(2, 1, 3), 1)),
  ("aten.squeeze.default", (r(1, 3, 1, 2),)),
  ("aten.split.Tensor", (x4, 4, 1)),
  ("aten.roll.default", (x4, [1, -2], [2, 3])),
  ("aten.t.default", (r(3, 4),)),
  ("aten._unsafe_view.default", (x4, [12, 35])),
  ("aten.alias.default", (x4,)),
  ("aten.detach.default", (x4,)),
  ("aten.sub.Scalar", (x4, 0.5)),
  ("aten.div.Scalar", (x4, 3.0)),
  ("aten.rsub.Tensor", (x4, r(7))),
  ("aten.pow.Tensor_Tensor", (pos(3, 4), r(4))),
  ("aten.pow.Scalar", (2.0, r(3, 4))),
  ("aten.minimum.default", (x4, r(7))),
  ("aten.clamp_min.default", (x4, 0.1)),
  ("aten.clamp_max.default", (x4, 0.1)),
  ("aten.reciprocal.default", (pos(3, 4),)),
  ("aten.log1p.default", (pos(3, 4),)),
  ("aten.expm1.default", (r(3, 4),)),
  ("aten.erf.default", (r(3, 4),)),
  ("aten.sin.default", (r(3, 4),)),
  ("aten.cos.default", (r(3, 4),)),
  ("aten.sign.default", (x4,)),
  ("aten.floor.default", (x4,)),
  ("aten.ceil.default", (x4,)),
  ("aten.round.default", (x4 * 3,)),
  ("aten.trunc.default", (x4,)),
  ("aten.eq.Scalar", (np.round(x4), 1.0)),
  ("aten.ne.Tensor", (np.round(x4), np.round(x4[:, :, ::-1]))),
  ("aten.ge.Tensor", (x4, r(7))),
  ("aten.lt.Scalar", (x4, 0.0)),
  ("aten.le.Scalar", (x4, 0.5)),
  ("aten.logical_not.default", (x4 > 0,)),
  ("aten.logical_and.default", (x4 > 0, x4 < 1)),
  ("aten.logical_or.default", (x4 > 1, x4 < -1)),
  ("aten.where.ScalarSelf", (x4 > 0, 0.5, x4)),
  ("aten.where.ScalarOther", (x4 > 0, x4, -1.0)),
  ("aten.full_like.default", (x4, 0.25)),
  # pooling: torch's sizes and divisors (ceil_mode, count_include_pad, divisor_override)
  ("aten.avg_pool2d.default", (x4, [2, 2])),
  ("aten.avg_pool2d.default", (x4, [3, 2], [2, 1], [1, 1])),
  ("aten.avg_pool2d.default", (x4, [3, 3], [2, 2], [1, 1], True, True)),
  ("aten.avg_pool2d.default", (x4, [3, 3], [2, 2], [1, 0], True, False)),
  ("aten.avg_pool2d.default", (x4, [2, 3], [2, 2], [0, 1], False, True, 4)),
  ("aten.avg_pool1d.default", (r(2, 3, 9), [3], [2], [1], True, False)),
  ("aten.avg_pool1d.default", (r(2, 3, 5), [3], [3], [1], True, True)),  # a window dropped
  ("aten._adaptive_avg_pool2d.default", (x4, [3, 4])),
  ("aten._adaptive_avg_pool2d.default", (x4, [1, 1])),
  ("aten.zeros_like.default", (x4,)),
  ("aten.ones_like.default", (x4,)),
]


@pytest.mark.parametrize("name,args", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_op_matches_torch(name, args):
  _, op, overload = name.split(".")
  want = getattr(getattr(torch.ops.aten, op), overload)(*_deep(T, args))
  got = ops.OPS[name](*_deep(J, args))
  if isinstance(want, (tuple, list)):
    want, got = want[0], got[0]  # the normalised output (statistics: internal)
  want = want.numpy()
  got = np.asarray(got)
  assert got.shape == want.shape
  if want.dtype == np.bool_:
    np.testing.assert_array_equal(got, want)
  else:
    assert np.max(np.abs(got - want.astype(np.float32)), initial=0.0) <= 2e-5


KW_CASES = [
  ("aten.gelu.default", (r(3, 5),), {"approximate": "tanh"}),
  ("aten.add.Tensor", (r(3, 5), r(1, 5)), {"alpha": 3}),
  ("aten.addmm.default", (r(4), r(3, 5), r(5, 4)), {"beta": 0.5, "alpha": 2}),
  ("aten.div.Tensor_mode", (r(3, 5), pos(5)), {"rounding_mode": "floor"}),
  ("aten.div.Tensor_mode", (r(3, 5), pos(5)), {"rounding_mode": "trunc"}),
  ("aten.mean.dim", (r(3, 5), [0]), {"dtype": torch.float32}),
  ("aten._to_copy.default", (r(3, 5) * 4,), {"dtype": torch.int32}),
  ("aten.arange.start_step", (-2, 7, 3), {"dtype": torch.float32}),
  ("aten.full.default", ([2, 3], 1.5), {"dtype": torch.float32}),
  ("aten.scalar_tensor.default", (2.5,), {"dtype": torch.float32}),
  ("aten.sum.dim_IntList", (r(3, 5), [1], True), {"dtype": torch.float32}),
]


@pytest.mark.parametrize("name,args,kw", KW_CASES, ids=[c[0] for c in KW_CASES])
def test_keyword_arguments_match_torch(name, args, kw):
  _, op, overload = name.split(".")
  want = getattr(getattr(torch.ops.aten, op), overload)(*_deep(T, args), **kw).numpy()
  got = np.asarray(ops.OPS[name](*_deep(J, args), **kw))
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= 2e-5


def test_register_op_by_name_and_overload():
  key = ops.op_key(torch.ops.aten.cumsum.default)
  assert key == "aten.cumsum.default"
  assert key not in ops.OPS
  try:
    ops.register_op(torch.ops.aten.cumsum.default, lambda x, dim, **kw: jnp.cumsum(x, dim))
    x = r(3, 4)
    got = ops.OPS[key](J(x), 1)
    np.testing.assert_allclose(np.asarray(got), torch.cumsum(T(x), 1).numpy(), atol=1e-6)
  finally:
    ops.OPS.pop(key, None)
