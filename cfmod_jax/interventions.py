"""Counterfactual hybrids and influence maps (Besserve et al. 2020, §3).

At a site with C channels, a mask ``m ∈ [0, 1]^C`` mixes the activations of two
latent codes, ``h = (1 - m) · h_site(z1) + m · h_site(z2)`` (broadcast over
H, W), and the suffix turns ``h`` into the **hybrid** image. The **influence
map** of a mask is ``mean over pairs and colour channels of |hybrid - G(z1)|``.

Masks are arrays passed to compiled functions, so one compilation serves every
mask. One engine, `hybrid_map_reduce`, streams the hybrids: an outer `lax.scan`
over chunks of pairs (the prefix runs once per chunk and is reused by every mask)
and an inner `lax.map` over chunks of masks, whose hybrids go through the suffix
as one flat batch and then to a caller-supplied reduction (|hybrid − G(z1)| for
influence maps, a classifier for `cfmod_jax.lab.robustness`, factor predictions for
`cfmod_jax.lab.factors`); memory is bounded by the chunk sizes, not by ``M × N``. The
pairs are sharded over every device (all local devices, and all hosts after
`jax.distributed.initialize`) with `jax.shard_map`; per-device sums are added
with one `psum` (or per-pair outputs gathered). `hybrids` runs the same kernel
unsharded on one chunk of all pairs, so that it also works inside `jax.jit`.

`masks_from_labels` turns a partition into module masks; `hybrid_grid` and
`grid_panel` make the paper's figure (originals × donors).

Elementary influence maps use a faster path when the stage after the site is
``post(pre(x))`` with ``pre`` linear (`Generator.has_linear_split`): a
single-channel hybrid's pre-activation is ``pre(h(z1)) + pre_c(h_c(z2) − h_c(z1))``,
so each channel costs only its own contribution instead of a full layer.

``precision=`` (every function here; `cfmod_jax.precision`) runs the suffix in
``"float32"`` (default), ``"tf32"`` (TF32 matmuls on GPUs; a no-op on CPU) or
``"bfloat16"`` (suffix parameters and activations in bf16; sums and outputs in
float32). ``pair_chunk=None`` / ``mask_chunk=None`` (the defaults) choose the
chunks from the device's memory (`cfmod_jax.memory.choose_chunks`): on CPU that
is ``DEFAULT_PAIR_CHUNK``/``DEFAULT_MASK_CHUNK`` (32, 16) unless RAM is short;
on GPU/TPU larger chunks that fit. Integers are used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from cfmod_jax import memory as _memory
from cfmod_jax import precision as _precision
from cfmod_jax._validate import check_chunk, check_key, check_positive_int
from cfmod_jax.generator import Generator, check_generator, check_latents, replicate

DEFAULT_PAIR_CHUNK = _memory.CPU_PAIR_CHUNK  # 32: tuned on CPU; the auto choice there
DEFAULT_MASK_CHUNK = _memory.CPU_MASK_CHUNK  # 16


# ---- validation (host side, before any compilation) --------------------------------
def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_masks(gen: Generator, site: str, masks) -> tuple[jax.Array, bool]:
  """Validates masks ``[M, C]`` or ``[C]`` in [0, 1]; returns ``([M, C], was_1d)``.

  Concrete masks (numpy, lists, jax arrays outside a trace) are checked by value:
  complex, non-numeric, NaN, infinite or out-of-range entries raise a ValueError
  naming ``masks``. **Traced masks** (inside `jax.jit`, `jax.grad`, `vmap`…)
  cannot be checked by value without a host round trip, so they are checked by
  shape and dtype only and every mask row that holds a value outside [0, 1] or
  a NaN is replaced by NaN: its hybrids and influence maps come out all-NaN
  instead of silently extrapolating (a mask of 5.0 is never computed as if it
  were valid). Rows whose entries are all in [0, 1] are untouched (and
  differentiable).
  """
  check_generator(gen, "gen")
  c = gen.site_shape(site)[-1]
  shape = tuple(np.shape(masks))
  if len(shape) not in (1, 2) or shape[-1] != c:
    raise ValueError(
      f"masks must have shape [M, {c}] or [{c}] (the {c} channels at site {site!r}), got {shape}"
    )
  if len(shape) == 2 and shape[0] == 0:
    raise ValueError("masks is empty: need at least one mask (M ≥ 1)")
  dtype = getattr(masks, "dtype", None)
  try:
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(masks).dtype
  except TypeError as e:  # e.g. jax key dtypes
    raise ValueError(f"masks must be boolean or numeric, got dtype {dtype}") from e
  if np.issubdtype(dtype, np.complexfloating):
    raise ValueError(
      f"masks must be real (boolean, integer or float) values in [0, 1], got "
      f"complex dtype {dtype}; pass masks.real if the imaginary part is zero"
    )
  if dtype != np.dtype(bool) and not np.issubdtype(dtype, np.number):
    raise ValueError(f"masks must be boolean or numeric, got dtype {dtype}")
  if _is_tracer(masks):
    m = jnp.asarray(masks).astype(jnp.float32)
    ok = jnp.all((m >= 0) & (m <= 1), axis=-1, keepdims=True)  # False for NaN
    masks = jnp.where(ok, m, jnp.nan)
  else:
    arr = np.asarray(masks).astype(np.float32)
    if np.isnan(arr).any():
      where = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
      raise ValueError(f"masks contains NaN (first at index {where}); values must lie in [0, 1]")
    if np.isinf(arr).any() or arr.min() < 0 or arr.max() > 1:
      raise ValueError(f"masks values must lie in [0, 1], got range [{arr.min()}, {arr.max()}]")
    masks = arr
  masks = jnp.asarray(masks, jnp.float32)
  return (masks[None] if len(shape) == 1 else masks), len(shape) == 1


def _check_pairs(gen: Generator, z1, z2) -> tuple[jax.Array, jax.Array]:
  check_generator(gen, "gen")
  z1 = check_latents(gen, z1, "z1")
  z2 = check_latents(gen, z2, "z2")
  if z1.shape[0] != z2.shape[0]:
    raise ValueError(
      f"z1 and z2 must hold the same number of latent codes, got {z1.shape[0]} and {z2.shape[0]}"
    )
  return z1, z2


# ---- the engine: one compiled stream of hybrids, reduced per chunk ----------------
class PairChunk(NamedTuple):
  """One chunk of pairs inside the compiled stream of `hybrid_map_reduce`.

  Attributes:
    variables: the generator's variables.
    params: the ``params`` pytree given to `hybrid_map_reduce` (e.g. a classifier's).
    z1, z2: ``[pc, *latent_shape]`` the chunk's originals and donors.
    a1, a2: ``[pc, *site_shape]`` their activations at the site.
    weights: ``[pc, G]`` float32, one-hot group of each pair (all zero for the
      padding pairs that make N a multiple of devices × pair_chunk).
  """

  variables: Any
  params: Any
  z1: jax.Array
  z2: jax.Array
  a1: jax.Array
  a2: jax.Array
  weights: jax.Array


def _pad_masks(masks, mask_chunk: int):
  """Zero masks appended so that M is a multiple of the chunk (sliced off later)."""
  mask_chunk = min(mask_chunk, masks.shape[0])
  pad = -masks.shape[0] % mask_chunk
  if pad:
    masks = jnp.concatenate([masks, jnp.zeros((pad, masks.shape[1]), masks.dtype)])
  return masks, mask_chunk


def _pair_chunks(x, pair_chunk):
  return x.reshape(x.shape[0] // pair_chunk, pair_chunk, *x.shape[1:])


def _suffix_runner(gen: Generator, variables, site: str, precision: str):
  """``suffix(h, latents) -> images`` at ``precision``: ``gen.suffix`` itself for
  float32/tf32; for bfloat16 the variables (cast once, where this is traced), the
  activations and latents go in as bf16 and the images come out as float32."""
  dt = _precision.compute_dtype(precision)
  if dt is None:
    return lambda h, z: gen.suffix(variables, h, z, site)
  low = _precision.cast_floating(variables, dt)
  return lambda h, z: gen.suffix(low, h.astype(dt), z.astype(dt), site).astype(jnp.float32)


def _suffix_of_mixes(suffix, ms, a1, a2, z1):
  """Hybrids of a chunk of masks ``ms [m, C]`` with pairs ``a1, a2 [n, …]``:
  ``[m, n, H, W, 3]``, computed as one flat batch of m·n (an explicit reshape is
  several times faster on CPU than vmapping the suffix over masks). ``suffix`` is
  a `_suffix_runner`; the mixing is float32 whatever its precision."""
  m, n = ms.shape[0], a1.shape[0]
  w = ms.reshape(m, 1, *([1] * (a1.ndim - 2)), ms.shape[-1])
  h = ((1.0 - w) * a1[None] + w * a2[None]).reshape(m * n, *a1.shape[1:])
  zt = jnp.tile(z1, (m,) + (1,) * (z1.ndim - 1))
  y = suffix(h, zt)
  return y.reshape(m, n, *y.shape[1:])


def _local_hybrid_stream(
  gen: Generator,
  site: str,
  pair_fn,
  hybrid_fn,
  pair_chunk: int,
  mask_chunk: int,
  per_pair: bool,
  precision: str = _precision.DEFAULT_PRECISION,
):
  """Per-device kernel ``(variables, (masks [M, C], params), z1, z2, weights [n, G])``.

  An outer `lax.scan` over chunks of ``pair_chunk`` pairs (prefixes and ``pair_fn``
  run once per chunk) and an inner `lax.map` over chunks of ``mask_chunk`` masks,
  whose hybrids ``[mc, pc, H, W, 3]`` are one flat batch through the suffix and go
  to ``hybrid_fn``. M must be a multiple of ``mask_chunk``. Returns
  ``(hybrid_out, pair_out)``:

  * sums (``per_pair=False``): ``hybrid_fn`` leaves ``[G, mc, …]`` (weighted by the
    caller with ``chunk.weights``) accumulate to ``[G, M, …]``; ``pair_fn``'s second
    output's leaves ``[G, …]`` to ``[G, …]``.
  * per pair: ``hybrid_fn`` leaves ``[mc, pc, …]`` come back as ``[n, M, …]``;
    ``pair_fn``'s leaves ``[pc, …]`` as ``[n, …]``.

  ``precision`` applies to the suffix of the hybrids and of the default context
  ``G(z1)``; ``hybrid_fn`` always gets float32 hybrids.
  """

  def local(variables, extra, z1, z2, weights):
    masks, params = extra
    mask_chunks = masks.reshape(-1, mask_chunk, masks.shape[-1])
    suffix = _suffix_runner(gen, variables, site, precision)

    def chunk_outputs(z1b, z2b, wb):
      a1 = gen.prefix(variables, z1b, site)
      a2 = gen.prefix(variables, z2b, site)
      chunk = PairChunk(variables, params, z1b, z2b, a1, a2, wb)
      if pair_fn is None:
        ctx, pair_out = suffix(a1, z1b), ()
      else:
        ctx, pair_out = pair_fn(chunk)

      def per_chunk(ms):
        y = _suffix_of_mixes(suffix, ms, a1, a2, z1b)
        return hybrid_fn(chunk, ctx, y)

      return lax.map(per_chunk, mask_chunks), pair_out

    xs = tuple(_pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
    if per_pair:

      def pair_step(carry, xs):
        outs, pair_out = chunk_outputs(*xs)  # leaves [M/mc, mc, pc, …]
        outs = jax.tree.map(lambda o: jnp.moveaxis(o.reshape(-1, *o.shape[2:]), 1, 0), outs)
        return carry, (outs, pair_out)

      ys = lax.scan(pair_step, None, xs)[1]
      return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), ys)

    def pair_step(acc, xs):
      sums, pair_out = chunk_outputs(*xs)  # leaves [M/mc, G, mc, …], [G, …]
      acc_h, acc_p = acc
      acc_h = jax.tree.map(lambda a, s: a + jnp.moveaxis(s, 1, 0).reshape(a.shape), acc_h, sums)
      acc_p = jax.tree.map(lambda a, s: a + s, acc_p, pair_out)
      return (acc_h, acc_p), None

    first = tuple(x[0] for x in xs)
    shapes = jax.eval_shape(chunk_outputs, *first)
    m = masks.shape[0]
    acc0 = (
      jax.tree.map(lambda s: jnp.zeros((s.shape[1], m, *s.shape[3:]), s.dtype), shapes[0]),
      jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1]),
    )
    return lax.scan(pair_step, acc0, xs)[0]

  return _precision.traced_with(local, precision)


def _local_eim_sums(
  gen: Generator,
  site: str,
  pair_chunk: int,
  channel_chunk: int,
  precision: str = _precision.DEFAULT_PRECISION,
):
  """Per-device fast EIM sums ``(variables, (), z1, z2, weights) -> [G, C, H, W]``
  using the linear split of the stage after the site: the hybrids of one-hot masks
  without their full layer (each channel's contribution to the next stage's
  pre-activation), fed to the same sharded pair stream.

  With ``precision='bfloat16'`` the stage's linear part, its per-channel
  contributions and the rest of the suffix run in bf16 (prefix in float32); the
  pre-activation ``pre(h(z1)) + contribution`` is summed in float32 and rounded
  once, and the images are float32 again before ``|hybrid − G(z1)|``."""
  c = gen.site_shape(site)[-1]
  dt = _precision.compute_dtype(precision)

  def local(variables, _, z1, z2, weights):
    low = _precision.cast_floating(variables, dt)
    out = (lambda y: y) if dt is None else (lambda y: y.astype(jnp.float32))

    def pair_step(acc, xs):
      z1b, z2b, wb = xs
      a1 = gen.prefix(variables, z1b, site)
      delta = gen.prefix(variables, z2b, site) - a1
      z1s = z1b
      if dt is not None:
        a1, delta, z1s = a1.astype(dt), delta.astype(dt), z1b.astype(dt)
      pre1 = gen.suffix_pre(low, a1, site)
      x1 = out(gen.suffix_post(low, pre1, z1s, site))
      z1t = jnp.tile(z1s, (channel_chunk,) + (1,) * (z1s.ndim - 1))

      def per_chunk(start):
        d = lax.dynamic_slice_in_dim(delta, start, channel_chunk, axis=-1)
        if dt is None:
          pre = pre1[None] + gen.suffix_pre_delta(low, d, start, site)  # [cc, pc, …]
        else:  # the sum in float32, one rounding
          contribution = gen.suffix_pre_delta(low, d, start, site).astype(jnp.float32)
          pre = (pre1.astype(jnp.float32)[None] + contribution).astype(dt)
        y = out(gen.suffix_post(low, pre.reshape(-1, *pre.shape[2:]), z1t, site))
        y = y.reshape(channel_chunk, pair_chunk, *y.shape[1:])
        return _influence_sums(None, x1, y, wb)

      sums = lax.map(per_chunk, jnp.arange(0, c, channel_chunk))  # [C/cc, G, cc, H, W]
      sums = jnp.moveaxis(sums, 1, 0).reshape(acc.shape)
      return acc + sums, None

    h, w = gen.image_shape[:2]
    acc0 = jnp.zeros((weights.shape[1], c, h, w), jnp.float32)
    xs = tuple(_pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
    return lax.scan(pair_step, acc0, xs)[0]

  return _precision.traced_with(local, precision)


def _influence_sums(chunk, x1, y, wb=None):
  """Influence reduction: per group, the weighted sum over pairs of
  Σ_colour |hybrid − G(z1)|, ``[G, mc, H, W]``."""
  wb = chunk.weights if wb is None else wb
  dist = jnp.abs(y - x1[None]).sum(axis=-1)  # [mc, pc, H, W]
  return jnp.einsum("jphw,pg->gjhw", dist, wb)


def _identity(chunk, ctx, y):
  del chunk, ctx
  return y


def _pair_mesh() -> Mesh:
  """A 1-D mesh named 'pairs' over every device (all hosts)."""
  return Mesh(np.asarray(jax.devices()), ("pairs",))


def _sharded(local, mesh: Mesh, per_pair: bool):
  """jit(shard_map(local)) with pairs split over the mesh: per-device sums added
  with one psum, or per-pair outputs left split over the devices."""

  def summed(variables, extra, z1, z2, weights):
    return lax.psum(local(variables, extra, z1, z2, weights), "pairs")

  return jax.jit(
    jax.shard_map(
      local if per_pair else summed,
      mesh=mesh,
      in_specs=(P(), P(), P("pairs"), P("pairs"), P("pairs")),
      out_specs=P("pairs") if per_pair else P(),
      check_vma=False,
    )
  )


def _global(x, mesh: Mesh, spec: P):
  """Host array (identical on every process) → global array with ``spec``."""
  if spec == P():
    return replicate(x, mesh)
  sharding = NamedSharding(mesh, spec)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _host(x) -> np.ndarray:
  """A replicated global array → numpy (works with several processes too)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


def _host_pairs(x) -> np.ndarray:
  """A global array split over 'pairs' → numpy of all pairs, on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _run_sharded(
  gen: Generator, key, local_factory, extra, z1, z2, groups, pair_chunk, per_pair=False
):
  """Pads the pairs to a multiple of (devices × pair_chunk) by repeating the first
  pair (weight 0), shards them over every device and runs the local kernel.

  Returns ``(out, counts [G])``: ``out`` summed over devices (numpy pytree) or, with
  ``per_pair``, the per-pair outputs of the N real pairs (leading axis N)."""
  mesh = _pair_mesh()
  n, n_dev = z1.shape[0], mesh.size
  pair_chunk = min(pair_chunk, -(-n // n_dev))
  n_pad = -n % (n_dev * pair_chunk)
  n_groups = int(groups.max()) + 1
  weights = np.zeros((n + n_pad, n_groups), np.float32)
  weights[np.arange(n), groups] = 1.0
  pad = lambda z: np.concatenate([z, np.repeat(z[:1], n_pad, axis=0)]) if n_pad else z
  z1, z2 = pad(np.asarray(z1)), pad(np.asarray(z2))
  fn = gen.jitted(
    (*key, pair_chunk, n_dev, *(("per_pair",) if per_pair else ())),
    lambda: _sharded(local_factory(pair_chunk), mesh, per_pair),
  )
  rep = lambda t: jax.tree.map(lambda a: _global(np.asarray(a), mesh, P()), t)
  out = fn(
    gen.replicated_variables(mesh),
    rep(extra),
    _global(z1, mesh, P("pairs")),
    _global(z2, mesh, P("pairs")),
    _global(weights, mesh, P("pairs")),
  )
  if per_pair:
    out = jax.tree.map(lambda a: _host_pairs(a)[:n], out)
  else:
    out = jax.tree.map(_host, out)
  return out, np.bincount(groups, minlength=n_groups)


def _check_groups(groups, n):
  if groups is None:
    return np.zeros(n, np.int32)
  groups = np.asarray(groups)
  if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
    raise ValueError(
      f"groups must be non-negative integers of shape [{n}], got {groups.shape} {groups.dtype}"
    )
  empty = np.flatnonzero(np.bincount(groups) == 0)
  if empty.size:
    raise ValueError(
      f"groups must give every group 0…{groups.max()} at least one pair (an "
      f"empty group's maps would be 0/0 = NaN); group(s) "
      f"{empty[:10].tolist()} have none"
    )
  return groups


def _largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def _chunks(
  gen: Generator,
  site: str,
  pair_chunk: int | None,
  mask_chunk: int | None,
  n_pairs: int,
  n_masks: int,
  n_groups: int,
  precision: str,
  *,
  n_devices: int | None = None,
  sharded: bool = True,
) -> tuple[int, int]:
  """The chunks of a call: integers as given; None chosen by
  `cfmod_jax.memory.choose_chunks` (on CPU the defaults 32 and 16 unless RAM is
  short). For the sharded kernels every process uses process 0's choice (their
  compiled programs must match)."""
  if pair_chunk is not None and mask_chunk is not None:
    return pair_chunk, mask_chunk
  pc, mc = _memory.choose_chunks(
    gen,
    site,
    n_pairs,
    n_masks,
    precision=precision,
    n_groups=n_groups,
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
    n_devices=n_devices,
  )
  if sharded and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    pc, mc = (int(v) for v in multihost_utils.broadcast_one_to_all(np.array([pc, mc], np.int32)))
  return pc, mc


# ---- public API ----------------------------------------------------------------------
def masks_from_labels(labels: ArrayLike, k: int | None = None) -> np.ndarray:
  """One-hot channel masks of a partition of a site's channels into modules.

  Args:
    labels: int ``[C]``, the module ``0…K-1`` of each channel.
    k: number of modules K (default ``labels.max() + 1``); modules without a
      channel get an all-zero mask.
  Returns:
    ``[K, C] float32``: ``masks[j, c] = 1.0`` iff ``labels[c] == j`` (the masks that
    swap one module), exactly ``(labels[None, :] == arange(K)[:, None])``.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"labels must be a non-empty 1-D integer array, got shape {labels.shape} {labels.dtype}"
    )
  if k is None:
    k = int(labels.max()) + 1
  k = check_positive_int(k, "k")
  return (labels[None, :] == np.arange(k)[:, None]).astype(np.float32)


def hybrid_grid(
  gen: Generator, site: str, masks: ArrayLike, z1: ArrayLike, z2: ArrayLike
) -> jax.Array:
  """Hybrids of every (original, donor) combination, per mask.

  Args:
    gen: a `Generator`.
    site: one of ``gen.sites``.
    masks: ``[M, C]`` (or ``[C]``) in [0, 1]; 1 takes the channel from the donor.
    z1: ``[R, *latent_shape]`` originals (the grid's rows).
    z2: ``[D, *latent_shape]`` donors (the grid's columns).
  Returns:
    ``[M, R, D, H, W, 3] float32`` in [-1, 1] (``[R, D, H, W, 3]`` for a 1-D mask):
    cell ``[m, r, d]`` is ``hybrids(gen, site, masks[m], z1[r], z2[d])``; computed
    as one `hybrids` call on the R·D pairs ``(repeat(z1, D), tile(z2, R))``. Lay it
    out with `grid_panel`.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  one = np.ndim(masks) == 1
  masks, _ = _check_masks(gen, site, masks)
  z1, z2 = np.asarray(z1), np.asarray(z2)
  if z1.ndim < 1 or z2.ndim < 1 or z1.shape[0] == 0 or z2.shape[0] == 0:
    raise ValueError(
      f"z1 and z2 must be non-empty [N, *latent_shape], got {z1.shape} and {z2.shape}"
    )
  r, d = z1.shape[0], z2.shape[0]
  z1r = np.repeat(z1, d, axis=0)
  z2t = np.tile(z2, (r,) + (1,) * (z2.ndim - 1))
  out = hybrids(gen, site, masks, z1r, z2t)
  out = out.reshape(out.shape[0], r, d, *out.shape[2:])
  return out[0] if one else out


def grid_panel(originals: ArrayLike, donors: ArrayLike, cells: ArrayLike) -> np.ndarray:
  """Lays out a hybrid grid (the paper's figure for one module).

  Args:
    originals: ``[R, H, W, 3]`` images of the originals (down the left).
    donors: ``[D, H, W, 3]`` images of the donors (across the top).
    cells: ``[R, D, H, W, 3]`` hybrids, e.g. one mask of `hybrid_grid`.
  All in [-1, 1]. Returns an RGB image in [0, 1] (blank top-left corner).
  """
  from cfmod_jax import viz  # pylint: disable=g-import-not-at-top

  originals, donors, cells = (viz.to_unit(np.asarray(a)) for a in (originals, donors, cells))
  r, d = cells.shape[:2]
  blank = np.ones((1, *cells.shape[2:]), np.float32)
  rows = [np.concatenate([blank, donors])]
  rows += [np.concatenate([originals[i : i + 1], cells[i]]) for i in range(r)]
  return viz.tile(np.concatenate(rows), d + 1, pad=3)


def hybrids(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  mask_chunk: int | None = None,
  precision: str = _precision.DEFAULT_PRECISION,
) -> jax.Array:
  """Counterfactual hybrids.

  Args:
    gen: a `Generator`.
    site: one of ``gen.sites``.
    masks: ``[M, C]`` (or ``[C]``) values in [0, 1]; 1 takes the channel from z2.
    z1, z2: ``[N, *latent_shape]`` latent codes (originals and donors).
    mask_chunk: masks evaluated together in one vectorised call (None: from the
      device's memory, `cfmod_jax.memory.choose_chunks`).
    precision: of the suffix, ``'float32'``, ``'tf32'`` or ``'bfloat16'``
      (`cfmod_jax.precision`); the hybrids are float32 in every case.
  Works inside `jax.jit` (masks and codes may be traced). Traced masks cannot be
  range-checked: a mask row with a value outside [0, 1] or a NaN gives all-NaN
  hybrids for that row (see `_check_masks`); concrete masks raise a ValueError.
  Returns:
    ``[M, N, H, W, 3] float32`` in [-1, 1] (``[N, H, W, 3]`` for a 1-D mask): z1's
    activations at ``site`` with the masked channels taken from z2, then the suffix.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, one = _check_masks(gen, site, masks)
  z1, z2 = _check_pairs(gen, z1, z2)
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  precision = _precision.check_precision(precision)
  m, n = masks.shape[0], z1.shape[0]
  if mask_chunk is None:
    _, mask_chunk = _chunks(gen, site, n, None, n, m, 1, precision, n_devices=1, sharded=False)
  masks, mask_chunk = _pad_masks(masks, mask_chunk)
  fn = gen.jitted(
    ("hybrids", site, mask_chunk, *_precision.cache_key(precision)),
    lambda: _hybrids_fn(gen, site, mask_chunk, precision),
  )
  out = fn(gen.variables, masks, z1, z2)[:m]
  return out[0] if one else out


def _hybrids_fn(gen: Generator, site: str, mask_chunk: int, precision: str):
  """The engine's kernel on one chunk of all N pairs, unsharded and traceable
  (`hybrids` works inside `jax.jit`), per pair: ``[M, N, H, W, 3]``."""

  def fn(variables, masks, z1, z2):
    n = z1.shape[0]
    local = _local_hybrid_stream(gen, site, _no_context, _identity, n, mask_chunk, True, precision)
    out, _ = local(variables, (masks, ()), z1, z2, jnp.ones((n, 1), jnp.float32))
    return jnp.moveaxis(out, 0, 1)

  return jax.jit(fn)


def _no_context(chunk):
  del chunk
  return (), ()


class HybridReduction(NamedTuple):
  """Output of `hybrid_map_reduce` (host numpy arrays).

  Attributes:
    hybrid: what ``hybrid_fn`` returned, accumulated: leaves ``[G, M, …]`` (sums
      per group of pairs) or, with ``per_pair=True``, ``[M, N, …]``.
    pair: the second output of ``pair_fn``, accumulated: leaves ``[G, …]`` or
      ``[N, …]`` (``()`` without ``pair_fn``).
    counts: int ``[G]``, pairs per group.
  """

  hybrid: Any
  pair: Any
  counts: np.ndarray


def hybrid_map_reduce(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  hybrid_fn: Callable[[PairChunk, Any, jax.Array], Any],
  *,
  pair_fn: Callable[[PairChunk], tuple[Any, Any]] | None = None,
  params: Any = (),
  per_pair: bool = False,
  groups: ArrayLike | None = None,
  cache_key: Hashable | None = None,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  precision: str = _precision.DEFAULT_PRECISION,
) -> HybridReduction:
  """Streams every hybrid (mask m, pair i) through a reduction, sharded over devices.

  The engine behind `influence_maps`, `elementary_influence_maps` (one-hot masks),
  `hybrids`, classifier robustness (`cfmod_jax.lab.robustness`) and factor transfer
  (`cfmod_jax.lab.factors`). One compiled call: the pairs are split over every device
  (`jax.shard_map`), each device runs a `lax.scan` over chunks of ``pair_chunk``
  pairs (the prefix runs once per chunk, then ``pair_fn``) and, inside, a `lax.map`
  over chunks of ``mask_chunk`` masks: the chunk's ``mask_chunk × pair_chunk``
  hybrids go through the suffix as one flat batch and then to ``hybrid_fn``.
  Memory is bounded by the chunk sizes, never by ``M × N``.

  Args:
    gen, site: the generator and one of its sites.
    masks: ``[M, C]`` (or ``[C]``) in [0, 1]; 1 takes the channel from z2.
    z1, z2: ``[N, *latent_shape]`` originals and donors (concrete arrays).
    hybrid_fn: traceable ``(chunk, ctx, y) -> pytree``; ``y [mc, pc, H, W, 3]`` are
      the hybrids of ``mc`` masks with the chunk's ``pc`` pairs (`PairChunk`),
      ``ctx`` what ``pair_fn`` computed for the chunk. Summing (default): return
      leaves ``[G, mc, …]`` weighted with ``chunk.weights [pc, G]`` (e.g.
      ``einsum('jp…,pg->gj…', v, chunk.weights)``; padding pairs have weight 0).
      With ``per_pair``: return leaves ``[mc, pc, …]``.
    pair_fn: traceable ``chunk -> (ctx, pair_out)``, once per chunk of pairs;
      ``pair_out`` leaves are ``[G, …]`` weighted sums (``[pc, …]`` with
      ``per_pair``). Default: ``ctx = G(z1)`` of the chunk, ``pair_out = ()``.
    params: a pytree passed to the kernel as an argument (``chunk.params``),
      e.g. a classifier's parameters; replicated on every device.
    per_pair: keep every pair's outputs instead of summing them.
    groups: optional int ``[N]`` in ``0…G−1`` (default: one group).
    cache_key: identifies (pair_fn, hybrid_fn) in the generator's compile cache;
      default: the two function objects (keep them the same between calls).
    pair_chunk, mask_chunk: pairs per scan step, masks per flat batch; None
      chooses them from the device's memory (`cfmod_jax.memory.choose_chunks`,
      which estimates the generator's suffix only: pass integers if
      ``hybrid_fn`` needs much more memory per hybrid than the generator).
    precision: of the generator's suffix (hybrids and the default ``ctx``),
      ``'float32'``, ``'tf32'`` or ``'bfloat16'`` (`cfmod_jax.precision`);
      ``hybrid_fn`` receives float32 hybrids whatever the precision.
  Returns:
    a `HybridReduction`.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, _ = _check_masks(gen, site, masks)
  z1, z2 = _check_pairs(gen, z1, z2)
  if not callable(hybrid_fn) or (pair_fn is not None and not callable(pair_fn)):
    raise ValueError("hybrid_fn (and pair_fn, if given) must be functions")
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  precision = _precision.check_precision(precision)
  groups = _check_groups(groups, z1.shape[0])
  m = masks.shape[0]
  pair_chunk, mask_chunk = _chunks(
    gen, site, pair_chunk, mask_chunk, z1.shape[0], m, int(groups.max()) + 1, precision
  )
  masks, mask_chunk = _pad_masks(masks, mask_chunk)
  per_pair = bool(per_pair)
  key = (pair_fn, hybrid_fn) if cache_key is None else cache_key
  (hyb, pair), counts = _run_sharded(
    gen,
    ("map_reduce", key, site, mask_chunk, *_precision.cache_key(precision)),
    lambda pc: _local_hybrid_stream(
      gen, site, pair_fn, hybrid_fn, pc, mask_chunk, per_pair, precision
    ),
    (masks, params),
    z1,
    z2,
    groups,
    pair_chunk,
    per_pair,
  )
  if per_pair:  # [N, M_pad, …] → [M, N, …]
    hyb = jax.tree.map(lambda a: np.moveaxis(a[:, :m], 1, 0), hyb)
  else:
    hyb = jax.tree.map(lambda a: a[:, :m], hyb)
  return HybridReduction(hyb, pair, counts)


def influence_map_sums(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  groups: ArrayLike | None = None,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  precision: str = _precision.DEFAULT_PRECISION,
) -> tuple[jax.Array, np.ndarray]:
  """Unnormalised influence maps per group of pairs.

  Args:
    groups: optional int array ``[N]`` assigning each pair to a group ``0..G-1``
      (e.g. for bootstrap resampling); default: one group.
    pair_chunk, mask_chunk, precision: as in `hybrid_map_reduce`.
  Returns:
    ``(sums [G, M, H, W], counts [G])`` where ``sums[g] / (3 · counts[g])`` is the
    influence map of group g (float32 whatever the precision).
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, _ = _check_masks(gen, site, masks)
  z1, z2 = _check_pairs(gen, z1, z2)
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  precision = _precision.check_precision(precision)
  groups = _check_groups(groups, z1.shape[0])
  m = masks.shape[0]
  pair_chunk, mask_chunk = _chunks(
    gen, site, pair_chunk, mask_chunk, z1.shape[0], m, int(groups.max()) + 1, precision
  )
  masks, mask_chunk = _pad_masks(masks, mask_chunk)
  (sums, _), counts = _run_sharded(
    gen,
    ("influence", site, mask_chunk, *_precision.cache_key(precision)),
    lambda pc: _local_hybrid_stream(
      gen, site, None, _influence_sums, pc, mask_chunk, False, precision
    ),
    (masks, ()),
    z1,
    z2,
    groups,
    pair_chunk,
  )
  return jnp.asarray(sums)[:, :m], counts


def influence_maps(
  gen: Generator,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  precision: str = _precision.DEFAULT_PRECISION,
) -> jax.Array:
  """Influence maps of masks at a site.

  ``pair_chunk``, ``mask_chunk`` (None: from the device's memory) and
  ``precision`` as in `hybrid_map_reduce`.

  Returns:
    ``[M, H, W] float32 ≥ 0`` (``[H, W]`` for a 1-D mask): the mean over the N
    pairs and the 3 colour channels of ``|hybrid(z1, z2) − G(z1)|``. Results do
    not depend on the chunk sizes (up to float rounding).
  """
  check_generator(gen, "gen")
  one = np.ndim(masks) == 1
  sums, counts = influence_map_sums(
    gen, site, masks, z1, z2, pair_chunk=pair_chunk, mask_chunk=mask_chunk, precision=precision
  )
  maps = sums[0] / (3.0 * counts[0])
  return maps[0] if one else maps


def _check_method(method):
  if method not in ("auto", "linear", "masks"):
    raise ValueError(f"method must be 'auto', 'linear' or 'masks', got {method!r}")
  return method


def elementary_influence_map_sums(
  gen: Generator,
  site: str,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  groups: ArrayLike | None = None,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  method: str = "auto",
  precision: str = _precision.DEFAULT_PRECISION,
) -> tuple[jax.Array, np.ndarray]:
  """Unnormalised EIMs of given pairs: ``(sums [G, C, H, W], counts [G])``.

  ``sums[g] / (3 · counts[g])`` are the EIMs of the pairs in group g. See
  `elementary_influence_maps` for ``method``, ``precision`` and the chunks.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  z1, z2 = _check_pairs(gen, z1, z2)
  pair_chunk = check_chunk(pair_chunk, "pair_chunk")
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  method = _check_method(method)
  precision = _precision.check_precision(precision)
  linear = gen.has_linear_split(site)
  if method == "linear" and not linear:
    raise ValueError(f"method='linear' needs a linear split of the stage after site {site!r}")
  groups = _check_groups(groups, z1.shape[0])
  c = gen.site_shape(site)[-1]
  pair_chunk, mask_chunk = _chunks(
    gen, site, pair_chunk, mask_chunk, z1.shape[0], c, int(groups.max()) + 1, precision
  )
  if linear and method != "masks":
    cc = _largest_divisor_at_most(c, mask_chunk)
    sums, counts = _run_sharded(
      gen,
      ("eim", site, cc, *_precision.cache_key(precision)),
      lambda pc: _local_eim_sums(gen, site, pc, cc, precision),
      (),
      z1,
      z2,
      groups,
      pair_chunk,
    )
    return jnp.asarray(sums), counts
  return influence_map_sums(
    gen,
    site,
    np.eye(c, dtype=np.float32),
    z1,
    z2,
    groups=groups,
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
    precision=precision,
  )


def elementary_influence_maps(
  gen: Generator,
  site: str,
  n_pairs: int = 128,
  key: jax.Array | None = None,
  *,
  n_groups: int = 1,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  method: str = "auto",
  precision: str = _precision.DEFAULT_PRECISION,
) -> jax.Array:
  """Elementary influence maps (EIMs): one influence map per channel of ``site``.

  Args:
    n_pairs: number of latent pairs (z1, z2) drawn from the prior with ``key``.
    key: a `jax.random` key (default ``jax.random.key(0)``).
    n_groups: if > 1, return the EIMs of ``n_groups`` disjoint, equal-sized groups
      of pairs (for bootstrap/stability); their mean is the EIM.
    method: ``'linear'`` uses the linear split of the stage after the site (each
      channel's contribution to the next layer alone); ``'masks'`` runs the
      general one-hot-mask path; ``'auto'`` picks 'linear' when available.
    pair_chunk: pairs per scan step; mask_chunk: channels per flat batch (the
      linear path uses its largest divisor of C). None (default): chosen from the
      device's memory (`cfmod_jax.memory.choose_chunks`): 32 and 16 on CPU unless
      RAM is short, larger chunks that fit on GPU/TPU.
    precision: ``'float32'`` (default), ``'tf32'`` (TF32 matmuls/convolutions on
      GPUs; bitwise float32 on CPU) or ``'bfloat16'`` (the suffix in bf16; sums
      and outputs float32); see `cfmod_jax.precision` and docs/gpu_check.md for
      the error of bf16.
  Returns:
    ``[C, H, W] float32`` (or ``[n_groups, C, H, W]`` when ``n_groups > 1``).
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  n_pairs = check_positive_int(n_pairs, "n_pairs")
  n_groups = check_positive_int(n_groups, "n_groups")
  if n_groups > n_pairs:
    raise ValueError(f"n_groups={n_groups} exceeds n_pairs={n_pairs}")
  _check_method(method)
  _precision.check_precision(precision)
  check_chunk(pair_chunk, "pair_chunk")
  check_chunk(mask_chunk, "mask_chunk")
  key = jax.random.key(0) if key is None else check_key(key, "key")
  k1, k2 = jax.random.split(key)
  z1, z2 = gen.sample_latents(k1, n_pairs), gen.sample_latents(k2, n_pairs)
  groups = (np.arange(n_pairs) * n_groups) // n_pairs
  sums, counts = elementary_influence_map_sums(
    gen,
    site,
    z1,
    z2,
    groups=groups,
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
    method=method,
    precision=precision,
  )
  maps = sums / (3.0 * jnp.asarray(counts, jnp.float32)[:, None, None, None])
  return maps if n_groups > 1 else maps[0]


__all__ = [
  "DEFAULT_MASK_CHUNK",
  "DEFAULT_PAIR_CHUNK",
  "elementary_influence_map_sums",
  "elementary_influence_maps",
  "HybridReduction",
  "PairChunk",
  "grid_panel",
  "hybrid_map_reduce",
  "hybrid_grid",
  "hybrids",
  "influence_map_sums",
  "influence_maps",
  "masks_from_labels",
]
