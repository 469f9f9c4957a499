"""The engine's kernel: one compiled stream of hybrids, reduced per chunk.

Private module behind `cfmod_jax.interventions` (its public functions check their
arguments and call these; nothing here checks again). An outer `lax.scan` over
chunks of pairs (the prefix runs once per chunk and is reused by every mask) and
an inner `lax.map` over chunks of masks, whose hybrids go through the suffix as one
flat batch and then to a reduction; the pairs are sharded over every device with
`jax.shard_map` and per-device sums added with one `psum` (or per-pair outputs
gathered). `local_eim_sums` is the fast path of elementary influence maps through
the linear split of the stage after the site.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cfmod_jax import memory
from cfmod_jax import precision as _precision
from cfmod_jax.generator import Generator, replicate


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


def pad_masks(masks, mask_chunk: int):
  """Zero masks appended so that M is a multiple of the chunk (sliced off later)."""
  mask_chunk = min(mask_chunk, masks.shape[0])
  pad = -masks.shape[0] % mask_chunk
  if pad:
    masks = jnp.concatenate([masks, jnp.zeros((pad, masks.shape[1]), masks.dtype)])
  return masks, mask_chunk


def pair_chunks(x, pair_chunk):
  return x.reshape(x.shape[0] // pair_chunk, pair_chunk, *x.shape[1:])


def suffix_runner(gen: Generator, variables, site: str, precision: str):
  """``suffix(h, latents) -> images`` at ``precision``: ``gen.suffix`` itself for
  float32/tf32; for bfloat16 the variables (cast once, where this is traced), the
  activations and latents go in as bf16 and the images come out as float32."""
  dt = _precision.compute_dtype(precision)
  if dt is None:
    return lambda h, z: gen.suffix(variables, h, z, site)
  low = _precision.cast_floating(variables, dt)
  return lambda h, z: gen.suffix(low, h.astype(dt), z.astype(dt), site).astype(jnp.float32)


def suffix_of_mixes(suffix, ms, a1, a2, z1):
  """Hybrids of a chunk of masks ``ms [m, C]`` with pairs ``a1, a2 [n, …]``:
  ``[m, n, H, W, 3]``, computed as one flat batch of m·n (an explicit reshape is
  several times faster on CPU than vmapping the suffix over masks). ``suffix`` is
  a `suffix_runner`; the mixing is float32 whatever its precision."""
  m, n = ms.shape[0], a1.shape[0]
  w = ms.reshape(m, 1, *([1] * (a1.ndim - 2)), ms.shape[-1])
  h = ((1.0 - w) * a1[None] + w * a2[None]).reshape(m * n, *a1.shape[1:])
  zt = jnp.tile(z1, (m,) + (1,) * (z1.ndim - 1))
  y = suffix(h, zt)
  return y.reshape(m, n, *y.shape[1:])


def local_hybrid_stream(
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
    suffix = suffix_runner(gen, variables, site, precision)

    def chunk_outputs(z1b, z2b, wb):
      a1 = gen.prefix(variables, z1b, site)
      a2 = gen.prefix(variables, z2b, site)
      chunk = PairChunk(variables, params, z1b, z2b, a1, a2, wb)
      if pair_fn is None:
        ctx, pair_out = suffix(a1, z1b), ()
      else:
        ctx, pair_out = pair_fn(chunk)

      def per_chunk(ms):
        y = suffix_of_mixes(suffix, ms, a1, a2, z1b)
        return hybrid_fn(chunk, ctx, y)

      return lax.map(per_chunk, mask_chunks), pair_out

    xs = tuple(pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
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


def local_eim_sums(
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
        return influence_sums(None, x1, y, wb)

      sums = lax.map(per_chunk, jnp.arange(0, c, channel_chunk))  # [C/cc, G, cc, H, W]
      sums = jnp.moveaxis(sums, 1, 0).reshape(acc.shape)
      return acc + sums, None

    h, w = gen.image_shape[:2]
    acc0 = jnp.zeros((weights.shape[1], c, h, w), jnp.float32)
    xs = tuple(pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
    return lax.scan(pair_step, acc0, xs)[0]

  return _precision.traced_with(local, precision)


def influence_sums(chunk, x1, y, wb=None):
  """Influence reduction: per group, the weighted sum over pairs of
  Σ_colour |hybrid − G(z1)|, ``[G, mc, H, W]``."""
  wb = chunk.weights if wb is None else wb
  dist = jnp.abs(y - x1[None]).sum(axis=-1)  # [mc, pc, H, W]
  return jnp.einsum("jphw,pg->gjhw", dist, wb)


def identity(chunk, ctx, y):
  del chunk, ctx
  return y


def pair_mesh() -> Mesh:
  """A 1-D mesh named 'pairs' over every device (all hosts)."""
  return Mesh(np.asarray(jax.devices()), ("pairs",))


def sharded(local, mesh: Mesh, per_pair: bool):
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


def to_global(x, mesh: Mesh, spec: P):
  """Host array (identical on every process) → global array with ``spec``."""
  if spec == P():
    return replicate(x, mesh)
  sharding = NamedSharding(mesh, spec)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(x) -> np.ndarray:
  """A replicated global array → numpy (works with several processes too)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


def host_pairs(x) -> np.ndarray:
  """A global array split over 'pairs' → numpy of all pairs, on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def run_sharded(
  gen: Generator, key, local_factory, extra, z1, z2, groups, pair_chunk, per_pair=False
):
  """Pads the pairs to a multiple of (devices × pair_chunk) by repeating the first
  pair (weight 0), shards them over every device and runs the local kernel.

  Returns ``(out, counts [G])``: ``out`` summed over devices (numpy pytree) or, with
  ``per_pair``, the per-pair outputs of the N real pairs (leading axis N)."""
  mesh = pair_mesh()
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
    lambda: sharded(local_factory(pair_chunk), mesh, per_pair),
  )
  rep = lambda t: jax.tree.map(lambda a: to_global(np.asarray(a), mesh, P()), t)
  out = fn(
    gen.replicated_variables(mesh),
    rep(extra),
    to_global(z1, mesh, P("pairs")),
    to_global(z2, mesh, P("pairs")),
    to_global(weights, mesh, P("pairs")),
  )
  if per_pair:
    out = jax.tree.map(lambda a: host_pairs(a)[:n], out)
  else:
    out = jax.tree.map(to_host, out)
  return out, np.bincount(groups, minlength=n_groups)


def largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def hybrids_fn(gen: Generator, site: str, mask_chunk: int, precision: str):
  """The engine's kernel on one chunk of all N pairs, unsharded and traceable
  (`hybrids` works inside `jax.jit`), per pair: ``[M, N, H, W, 3]``."""

  def fn(variables, masks, z1, z2):
    n = z1.shape[0]
    local = local_hybrid_stream(gen, site, no_context, identity, n, mask_chunk, True, precision)
    out, _ = local(variables, (masks, ()), z1, z2, jnp.ones((n, 1), jnp.float32))
    return jnp.moveaxis(out, 0, 1)

  return jax.jit(fn)


def no_context(chunk):
  del chunk
  return (), ()


# ---- the chunk rule (see `cfmod_jax.interventions`) -------------------------------
def chunks(
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
  """The engine's one chunk rule (documented in `cfmod_jax.interventions`): integers
  as given; None chosen by `cfmod_jax.memory.choose_chunks` (on CPU 32 and 16 unless
  RAM is short; on GPU/TPU the largest that fit). For the sharded kernels every
  process uses process 0's choice (their compiled programs must match)."""
  if pair_chunk is not None and mask_chunk is not None:
    return pair_chunk, mask_chunk
  pc, mc = memory.choose_chunks(
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
