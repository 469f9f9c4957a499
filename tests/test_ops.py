"""The sub-pixel transposed convolution equals Flax's ConvTranspose."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfmod_jax import ops


@pytest.mark.parametrize(
  "kernel,stride",
  [
    ((4, 4), (2, 2)),
    ((2, 2), (2, 2)),
    ((3, 3), (1, 1)),
    ((6, 6), (3, 3)),
    ((4, 2), (2, 1)),
    ((3, 3), (2, 2)),
  ],
)
def test_conv_transpose_matches_flax(kernel, stride):
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7))
  ref = nn.ConvTranspose(4, kernel, stride, padding="SAME")
  ours = ops.ConvTranspose(4, kernel, stride)
  variables = ref.init(jax.random.key(1), x)
  # Non-zero bias so that its handling is checked too.
  variables = jax.tree.map(lambda p: p + 0.1, variables)
  want = ref.apply(variables, x)
  got = ours.apply(variables, x)  # same parameter names and shapes
  assert got.shape == want.shape == (2, 5 * stride[0], 6 * stride[1], 4)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def _scatter_reference(x, k, s):
  """Plain-loop definition: y[s*i + p - t] += x[i] K[t] per axis (p: SAME padding)."""
  b, h, w, _ = x.shape
  kh, kw, _, cout = k.shape
  ph, pw = ops._same_pad_before(kh, s), ops._same_pad_before(kw, s)
  y = np.zeros((b, h * s, w * s, cout))
  for i in range(h):
    for j in range(w):
      for th in range(kh):
        for tw in range(kw):
          oh, ow = s * i + ph - th, s * j + pw - tw
          if 0 <= oh < h * s and 0 <= ow < w * s:
            y[:, oh, ow] += x[:, i, j] @ k[th, tw]
  return y


@pytest.mark.parametrize("k,s", [(4, 2), (3, 2), (6, 3)])
def test_conv_transpose_matches_scatter_loop(k, s):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 4, 3, 3)).astype(np.float32)
  kern = rng.normal(size=(k, k, 3, 5)).astype(np.float32)
  got = ops.conv_transpose(jnp.asarray(x), jnp.asarray(kern), (s, s))
  np.testing.assert_allclose(got, _scatter_reference(x, kern, s), atol=1e-4)


def test_upsample_nearest():
  x = jnp.arange(8.0).reshape(1, 2, 2, 2)
  up = ops.upsample_nearest(x, 2)
  np.testing.assert_array_equal(up, np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2))
