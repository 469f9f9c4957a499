"""`TorchGenerator`: a PyTorch generator, interpreted with JAX, as a `Generator`.

See `cfmod_jax.torch_bridge` for the user's view. Layouts: the model's own
tensors stay in PyTorch's layout (NCHW) inside the graph; a site's activations
are handed out channels-last (``[N, H, W, C]``: the channel axis moved last) and
the images are ``[N, H, W, C]``.

Latents: an unconditional model's latent is its input ``[N, *latent_shape]``
unchanged (e.g. ``[N, 100, 1, 1]`` for the DCGAN tutorial's generator). A model
with conditioning inputs (``forward(z, y, …)``) has one flat float latent
``concat(z, y, …)`` of ``[N, D]`` (each input flattened per sample; integer inputs
such as class labels stored as floats and rounded back), so that it fits the
generator protocol as BigGAN does; `TorchGenerator.make_latents` and
`TorchGenerator.split_latents` convert. In a hybrid, everything after the site
that reads an input (the class embedding, the noise through a skip) reads z1's.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax.generator import Generator
from cfmod_jax.ops import conv_transpose_per_channel
from cfmod_jax.torch_bridge.export import Program, import_torch, to_numpy
from cfmod_jax.torch_bridge.ops import op_key
from cfmod_jax.torch_bridge.ops_nn import convolution, is_dcgan_layer

_TRACE_BATCH = 3  # batch of the shape-only passes that check the sites


def _to_channels_last(x):
  return jnp.moveaxis(x, 1, -1) if x.ndim >= 3 else x


def _to_channels_first(x):
  return jnp.moveaxis(x, -1, 1) if x.ndim >= 3 else x


def _transposed_per_channel(delta, weight, stride, padding, output_padding):
  """Each input channel's contribution to a 2-D transposed convolution, tap by tap.

  ``delta [N, H, W, m]``, ``weight [m, C_out, kh, kw]`` (PyTorch's layout, the m
  channels' slices) → ``[m, N, C_out, H', W']`` (no bias). Kernel tap ``(a, b)`` adds
  ``delta[n, i, j, c] · weight[c, :, a, b]`` at output ``(s·i − p + a, s·j − p + b)``:
  one outer product per tap and channel, no multiplications by the zeros of a dilated
  input (a transposed convolution as a convolution over the stride-dilated input does
  s² times the work, and per channel it does not batch well).
  """
  n, h, w, m = delta.shape
  _, c_out, kh, kw = weight.shape
  (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
  full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
  out = jnp.zeros((m, n, c_out, full_h + oh, full_w + ow), delta.dtype)
  for a in range(kh):
    for b in range(kw):
      tap = jnp.einsum("nijc,co->cnoij", delta, weight[:, :, a, b])
      out = out.at[:, :, :, a : a + (h - 1) * sh + 1 : sh, b : b + (w - 1) * sw + 1 : sw].add(tap)
  return out[:, :, :, ph : full_h + oh - ph, pw : full_w + ow - pw]


class TorchGenerator(Generator):
  """A PyTorch generator imported with `cfmod_jax.torch_bridge.from_torch`.

  Attributes (beyond `Generator`'s):
    variables: ``{"params", "buffers", "constants"}`` → ``{PyTorch name: array}``
      (passed to the compiled functions as arguments, never baked in).
    site_paths: site name → PyTorch submodule path.
    noise_shape: shape of the model's first input (one sample).
    condition_shapes, condition_dtypes: of the further inputs (one sample each).
    trace_count: how many times the graph has been traced (a diagnostic: a new mask
      value must not add a trace).
  """

  def __init__(
    self,
    program: Program,
    sites: Mapping[str, str],
    noise_shape: tuple[int, ...],
    conditions: Sequence[tuple[tuple[int, ...], Any]],
    *,
    name: str,
    latent_sampler: Callable | None,
    condition_sampler: Callable | None,
    torch_model: Any = None,
  ):
    # The attributes `Generator.__init__` sets (it validates a Flax module, which
    # this generator does not have).
    self.module = program
    self.program = program
    self.torch_model = torch_model  # kept (never modified) for `init_variables`
    self.name = name
    self.noise_shape = tuple(noise_shape)
    self.condition_shapes = tuple(tuple(s) for s, _ in conditions)
    self.condition_dtypes = tuple(d for _, d in conditions)
    if conditions:
      sizes = [math.prod(self.noise_shape)] + [math.prod(s) for s in self.condition_shapes]
      self.latent_shape = (sum(sizes),)
      self._offsets = np.cumsum([0, *sizes]).tolist()
    else:
      self.latent_shape = self.noise_shape
    self._noise_sampler = latent_sampler
    self._condition_sampler = condition_sampler
    self._latent_sampler = self._sample if (latent_sampler or conditions) else None
    self.variables = jax.tree.map(jnp.asarray, program.variables)
    self._jit_cache: dict[Any, Callable] = {}
    self.trace_count = 0
    nodes = program.module_outputs
    order = {n: i for i, n in enumerate(program.nodes)}
    names = sorted(sites, key=lambda s: order[nodes[sites[s]]])
    self.sites: tuple[str, ...] = tuple(names)
    self.site_paths: dict[str, str] = {s: sites[s] for s in names}
    self._site_nodes = {s: nodes[p] for s, p in self.site_paths.items()}
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._check_shapes()

  def __repr__(self):
    return f"TorchGenerator({self.name}, sites={self.sites}, latent_shape={self.latent_shape})"

  def _check_shapes(self) -> None:
    z = jax.ShapeDtypeStruct((_TRACE_BATCH, *self.latent_shape), jnp.float32)
    image = jax.eval_shape(self.generate, self.variables, z)
    if image.ndim != 4:
      raise ValueError(
        f"{self.name} must return images [N, C, H, W], got shape {image.shape} "
        f"(channels last here) for a batch of {_TRACE_BATCH}"
      )
    for site, path in self.site_paths.items():
      out = jax.eval_shape(functools.partial(self.prefix, site=site), self.variables, z)
      if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim < 2 or out.shape[0] != _TRACE_BATCH:
        raise ValueError(
          f"site {site!r}: the output of {path!r} must be one tensor [N, C, …] (batch "
          f"first) to be a site; for a batch of {_TRACE_BATCH} it is {out}"
        )
      self._shapes[site] = tuple(out.shape[1:])
    self.trace_count = 0

  # ---- latents ------------------------------------------------------------------------
  def split_latents(self, latents: jax.Array) -> tuple[jax.Array, ...]:
    """The model's inputs ``(z, *conditions)`` from latents ``[N, *latent_shape]``."""
    if not self.condition_shapes:
      return (latents,)
    n = latents.shape[0]
    o = self._offsets
    z = latents[:, o[0] : o[1]].reshape(n, *self.noise_shape)
    conds = []
    for i, (shape, dtype) in enumerate(zip(self.condition_shapes, self.condition_dtypes)):
      c = latents[:, o[i + 1] : o[i + 2]].reshape(n, *shape)
      if not jnp.issubdtype(dtype, jnp.floating):
        c = jnp.round(c)
      conds.append(c.astype(dtype))
    return (z, *conds)

  def make_latents(self, z: Any, *conditions: Any) -> jax.Array:
    """Latents ``[N, *latent_shape]`` from the model's inputs (numpy, JAX or torch)."""
    arrays = [jnp.asarray(np.asarray(a)) for a in (z, *conditions)]
    if len(arrays) != 1 + len(self.condition_shapes):
      raise ValueError(
        f"{self.name} takes {1 + len(self.condition_shapes)} inputs (the noise and "
        f"{len(self.condition_shapes)} conditions), got {len(arrays)}"
      )
    if not self.condition_shapes:
      return arrays[0].astype(jnp.float32)
    n = arrays[0].shape[0]
    return jnp.concatenate([a.reshape(n, -1).astype(jnp.float32) for a in arrays], axis=1)

  def _sample(self, key: jax.Array, n: int) -> jax.Array:
    kz, kc = jax.random.split(key)
    if self._noise_sampler is not None:
      z = self._noise_sampler(kz, n)
    else:
      z = jax.random.normal(kz, (n, *self.noise_shape), jnp.float32)
    if not self.condition_shapes:
      return jnp.asarray(z, jnp.float32)
    conds = tuple(self._condition_sampler(kc, n))
    return self.make_latents(z, *conds)

  # ---- pure functions ---------------------------------------------------------------------
  def _count(self):
    self.trace_count += 1

  def prefix(self, variables, latents: jax.Array, site: str) -> jax.Array:
    """Activations at ``site`` (channels last); only the graph up to the site runs."""
    node = self._site_nodes[self.sites[self.site_index(site)]]
    out = self.program.run(variables, self.split_latents(latents), stop=node, on_trace=self._count)
    return _to_channels_last(out)

  def suffix(self, variables, h: jax.Array, latents: jax.Array, site: str) -> jax.Array:
    """Images from ``h`` at ``site``: the graph from the site on, where every other
    read of an input (conditioning, skips from before the site) sees ``latents``."""
    site = self.sites[self.site_index(site)]
    shape = self._shapes[site]
    if tuple(h.shape[1:]) != shape or h.shape[0] != latents.shape[0]:
      raise ValueError(
        f"h must have shape [N, {', '.join(map(str, shape))}] with "
        f"N={latents.shape[0]} at site {site!r}, got {tuple(h.shape)}"
      )
    given = (self._site_nodes[site], _to_channels_first(h))
    out = self.program.run(
      variables, self.split_latents(latents), given=given, on_trace=self._count
    )
    return _to_channels_last(out)

  def generate(self, variables, latents: jax.Array) -> jax.Array:
    out = self.program.run(variables, self.split_latents(latents), on_trace=self._count)
    return _to_channels_last(out)

  # ---- the linear split (the fast EIM path) ----------------------------------------------
  def _split_conv(self, site: str):
    """The convolution that alone reads ``site``'s output (its only consumer), when its
    weight and bias are the model's own and it has one group; else None."""
    node = self._site_nodes[self.sites[self.site_index(site)]]
    users = list(node.users)
    if len(users) != 1:
      return None
    conv = users[0]
    if conv.op != "call_function" or op_key(conv.target) != "aten.convolution.default":
      return None
    x, w, b, *_, groups = conv.args
    params = [a for a in (w, b) if a is not None]
    if x is not node or groups != 1 or not all(self.program.is_variable(a) for a in params):
      return None
    return conv

  def has_linear_split(self, site: str) -> bool:
    """True when the site's only consumer is a (transposed) convolution with one group:
    then ``pre`` is that convolution, each channel's contribution to it is a
    convolution of that channel alone (`suffix_pre_delta`), and ``post`` the rest."""
    return self._split_conv(site) is not None

  def suffix_pre(self, variables, h: jax.Array, site: str) -> jax.Array:
    """The convolution after ``site`` (with its bias), ``[N, C_out, H', W']`` (NCHW)."""
    conv = self._split_conv(site)
    given = (self._site_nodes[self.sites[self.site_index(site)]], _to_channels_first(h))
    return self.program.run(variables, (), stop=conv, given=given, on_trace=self._count)

  def suffix_pre_delta(self, variables, delta: jax.Array, start, site: str) -> jax.Array:
    """``[m, N, C_out, H', W']``: the convolution (without bias) of each of the m
    channels of ``delta [N, H, W, m]`` (site channels ``start…start+m−1``) alone."""
    conv = self._split_conv(site)
    _, w, _, stride, padding, dilation, transposed, output_padding, _ = conv.args
    weight = self.program.variable(variables, w)
    m = delta.shape[-1]
    # Input channels are axis 0 of a transposed convolution's weight, axis 1 otherwise.
    axis = 0 if transposed else 1
    weight = jax.lax.dynamic_slice_in_dim(weight, start, m, axis=axis)
    if transposed and is_dcgan_layer(weight.shape, stride, padding, dilation, output_padding):
      # Our sub-pixel per-channel transposed convolution (flipped kernel, 'SAME').
      kernel = jnp.flip(weight, axis=(2, 3)).transpose(2, 3, 0, 1)
      return conv_transpose_per_channel(delta, kernel, (2, 2)).transpose(0, 1, 4, 2, 3)
    if transposed and len(stride) == 2 and all(d == 1 for d in dilation):
      return _transposed_per_channel(delta, weight, stride, padding, output_padding)
    x = _to_channels_first(delta)  # [N, m, H, W]

    def one(xj, wj):  # one input channel: [N, H, W] and its weight slice
      wj = jnp.expand_dims(wj, axis)
      return convolution(
        xj[:, None], wj, None, stride, padding, dilation, transposed, output_padding, 1
      )

    return jax.vmap(one, in_axes=(1, axis))(x, weight)

  def suffix_post(self, variables, y: jax.Array, latents: jax.Array, site: str) -> jax.Array:
    """Images from the convolution's output ``y`` (the rest of the suffix)."""
    conv = self._split_conv(site)
    out = self.program.run(
      variables, self.split_latents(latents), given=(conv, y), on_trace=self._count
    )
    return _to_channels_last(out)

  def init_variables(self, key: jax.Array) -> Any:
    """Variables of the same model freshly initialised, as PyTorch initialises it.

    A deep copy of the imported model gets every submodule's ``reset_parameters()``
    (BatchNorm's also resets its running statistics to mean 0, variance 1) under
    ``torch.manual_seed(s)``, ``s = jax.random.randint(key, (), 0, 2**31 - 1)`` (PyTorch's global random
    state is restored afterwards); the imported model is not touched. Used by
    `cfmod_jax.baselines.untrained_like` for the main job's untrained baseline.
    """
    if self.torch_model is None:
      raise ValueError(
        f"{self.name}: this generator keeps no PyTorch model to re-initialise; "
        "import the model with cfmod_jax.torch_bridge.from_torch"
      )
    torch = import_torch()
    seed = int(np.asarray(jax.random.randint(key, (), 0, 2**31 - 1)))
    fresh = copy.deepcopy(self.torch_model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
      torch.manual_seed(seed)
      for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
          reset()
    tensors = dict(fresh.named_parameters()) | dict(fresh.named_buffers())
    return {
      coll: {
        k: jnp.asarray(to_numpy(tensors[k]) if coll != "constants" and k in tensors else v)
        for k, v in group.items()
      }
      for coll, group in self.variables.items()
    }

  def with_variables(
    self,
    variables: Any,
    *,
    name: str | None = None,
    latent_sampler: Callable | None = None,
  ) -> TorchGenerator:
    """The same graph and sites with other variables of the same structure and shapes
    (and, if given, ``latent_sampler(key, n) -> [n, *latent_shape]`` as its sampler)."""
    old, new = (jax.tree_util.tree_flatten_with_path(v) for v in (self.variables, variables))
    if old[1] != new[1]:
      raise ValueError(f"variables must have the tree structure of {self.name}'s variables")
    for (path, a), (_, b) in zip(old[0], new[0]):
      if np.shape(a) != np.shape(b):
        raise ValueError(
          f"variables{jax.tree_util.keystr(path)} has shape {np.shape(b)}, "
          f"{self.name} has {np.shape(a)}"
        )
    twin = copy.copy(self)
    twin.variables, twin._jit_cache, twin.trace_count = variables, {}, 0
    twin.name = name or self.name
    if latent_sampler is not None:
      twin._latent_sampler = latent_sampler
    return twin


__all__ = ["TorchGenerator"]
