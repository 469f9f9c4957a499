"""Counterfactual hybrids and influence maps (Besserve et al. 2020, §3).

At a site with C channels, a mask ``m ∈ [0, 1]^C`` mixes the activations of two
latent codes, ``h = (1 - m) · h_site(z1) + m · h_site(z2)`` (broadcast over
H, W), and the suffix turns ``h`` into the **hybrid** image. The **influence
map** of a mask is ``mean over pairs and colour channels of |hybrid - G(z1)|``.

Masks are arrays passed to compiled functions, so one compilation serves every
mask. Influence maps are accumulated in a stream: an outer `lax.scan` over chunks
of pairs (the prefix runs once per chunk and is reused by every mask) and an
inner `lax.map` over chunks of masks; memory is bounded by the chunk sizes, not
by ``M × N``. The pairs are sharded over every device (all local devices, and
all hosts after `jax.distributed.initialize`) with `jax.shard_map`; per-device
sums are added with one `psum`.

Elementary influence maps use a faster path when the stage after the site is
``post(pre(x))`` with ``pre`` linear (`Generator.has_linear_split`): a
single-channel hybrid's pre-activation is ``pre(h(z1)) + pre_c(h_c(z2) − h_c(z1))``,
so each channel costs only its own contribution instead of a full layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cfmod_jax._validate import check_generator, check_key, check_positive_int
from cfmod_jax.generator import Generator, check_latents

DEFAULT_PAIR_CHUNK = 32
DEFAULT_MASK_CHUNK = 16


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


_check_positive_int = check_positive_int


# ---- compiled kernels --------------------------------------------------------------
def _hybrids_fn(gen: Generator, site: str, mask_chunk: int):
  def fn(variables, masks, z1, z2):
    a1 = gen.prefix(variables, z1, site)
    a2 = gen.prefix(variables, z2, site)
    per_chunk = lambda ms: _suffix_of_mixes(gen, variables, site, ms, a1, a2, z1)
    out = lax.map(per_chunk, masks.reshape(-1, mask_chunk, masks.shape[-1]))
    return out.reshape(-1, *out.shape[2:])

  return jax.jit(fn)


def _pad_masks(masks, mask_chunk: int):
  """Zero masks appended so that M is a multiple of the chunk (sliced off later)."""
  mask_chunk = min(mask_chunk, masks.shape[0])
  pad = -masks.shape[0] % mask_chunk
  if pad:
    masks = jnp.concatenate([masks, jnp.zeros((pad, masks.shape[1]), masks.dtype)])
  return masks, mask_chunk


def _pair_chunks(x, pair_chunk):
  return x.reshape(x.shape[0] // pair_chunk, pair_chunk, *x.shape[1:])


def _suffix_of_mixes(gen: Generator, variables, site, ms, a1, a2, z1):
  """Hybrids of a chunk of masks ``ms [m, C]`` with pairs ``a1, a2 [n, …]``:
  ``[m, n, H, W, 3]``, computed as one flat batch of m·n (an explicit reshape is
  several times faster on CPU than vmapping the suffix over masks)."""
  m, n = ms.shape[0], a1.shape[0]
  w = ms.reshape(m, 1, *([1] * (a1.ndim - 2)), ms.shape[-1])
  h = ((1.0 - w) * a1[None] + w * a2[None]).reshape(m * n, *a1.shape[1:])
  zt = jnp.tile(z1, (m,) + (1,) * (z1.ndim - 1))
  y = gen.suffix(variables, h, zt, site)
  return y.reshape(m, n, *y.shape[1:])


def _local_mask_sums(gen: Generator, site: str, pair_chunk: int, mask_chunk: int):
  """Per-device ``(variables, masks [M,C], z1, z2, weights [n, G]) -> [G, M, H, W]``:
  per group g, the weighted sum over pairs of Σ_colour |hybrid − G(z1)|.
  M must be a multiple of ``mask_chunk``."""

  def local(variables, masks, z1, z2, weights):
    mask_chunks = masks.reshape(-1, mask_chunk, masks.shape[-1])

    def pair_step(acc, xs):
      z1b, z2b, wb = xs
      a1 = gen.prefix(variables, z1b, site)
      a2 = gen.prefix(variables, z2b, site)
      x1 = gen.suffix(variables, a1, z1b, site)

      def per_chunk(ms):
        y = _suffix_of_mixes(gen, variables, site, ms, a1, a2, z1b)
        dist = jnp.abs(y - x1[None]).sum(axis=-1)  # [mc, pair_chunk, H, W]
        return jnp.einsum("jphw,pg->gjhw", dist, wb)

      sums = lax.map(per_chunk, mask_chunks)  # [M/mc, G, mc, H, W]
      return acc + jnp.moveaxis(sums, 1, 0).reshape(acc.shape), None

    h, w = gen.image_shape[:2]
    acc0 = jnp.zeros((weights.shape[1], masks.shape[0], h, w), jnp.float32)
    xs = tuple(_pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
    return lax.scan(pair_step, acc0, xs)[0]

  return local


def _local_eim_sums(gen: Generator, site: str, pair_chunk: int, channel_chunk: int):
  """Per-device fast EIM sums ``(variables, (), z1, z2, weights) -> [G, C, H, W]``
  using the linear split of the stage after the site."""
  c = gen.site_shape(site)[-1]

  def local(variables, _, z1, z2, weights):
    def pair_step(acc, xs):
      z1b, z2b, wb = xs
      a1 = gen.prefix(variables, z1b, site)
      delta = gen.prefix(variables, z2b, site) - a1
      pre1 = gen.suffix_pre(variables, a1, site)
      x1 = gen.suffix_post(variables, pre1, z1b, site)
      z1t = jnp.tile(z1b, (channel_chunk,) + (1,) * (z1b.ndim - 1))

      def per_chunk(start):
        d = lax.dynamic_slice_in_dim(delta, start, channel_chunk, axis=-1)
        pre = pre1[None] + gen.suffix_pre_delta(variables, d, start, site)  # [cc, pc, …]
        y = gen.suffix_post(variables, pre.reshape(-1, *pre.shape[2:]), z1t, site)
        y = y.reshape(channel_chunk, pair_chunk, *y.shape[1:])
        dist = jnp.abs(y - x1[None]).sum(axis=-1)  # [cc, pc, H, W]
        return jnp.einsum("jphw,pg->gjhw", dist, wb)

      sums = lax.map(per_chunk, jnp.arange(0, c, channel_chunk))  # [C/cc, G, cc, H, W]
      sums = jnp.moveaxis(sums, 1, 0).reshape(acc.shape)
      return acc + sums, None

    h, w = gen.image_shape[:2]
    acc0 = jnp.zeros((weights.shape[1], c, h, w), jnp.float32)
    xs = tuple(_pair_chunks(x, pair_chunk) for x in (z1, z2, weights))
    return lax.scan(pair_step, acc0, xs)[0]

  return local


def _pair_mesh() -> Mesh:
  """A 1-D mesh named 'pairs' over every device (all hosts)."""
  return Mesh(np.asarray(jax.devices()), ("pairs",))


def _sharded_sum(local, mesh: Mesh):
  """jit(shard_map(local)) with pairs split over the mesh and a psum of the sums."""

  def summed(variables, extra, z1, z2, weights):
    return lax.psum(local(variables, extra, z1, z2, weights), "pairs")

  return jax.jit(
    jax.shard_map(
      summed,
      mesh=mesh,
      in_specs=(P(), P(), P("pairs"), P("pairs"), P("pairs")),
      out_specs=P(),
      check_vma=False,
    )
  )


def _global(x, mesh: Mesh, spec: P):
  """Host array (identical on every process) → global array with ``spec``."""
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


def _replicated_variables(gen: Generator, mesh: Mesh, rep):
  """``gen.variables`` replicated over the mesh, transferred once per generator,
  mesh size and variables object (a sweep calls the kernel once per block)."""
  key = ("replicated", mesh.size)
  cached = gen._jit_cache.get(key)  # pylint: disable=protected-access
  if cached is None or cached[0] is not gen.variables:
    cached = gen._jit_cache[key] = (gen.variables, rep(gen.variables))  # pylint: disable=protected-access
  return cached[1]


def _run_sharded(gen: Generator, key, local_factory, extra, z1, z2, groups, pair_chunk):
  """Pads the pairs to a multiple of (devices × pair_chunk), shards and sums."""
  mesh = _pair_mesh()
  n, n_dev = z1.shape[0], mesh.size
  pair_chunk = min(pair_chunk, -(-n // n_dev))
  n_pad = -n % (n_dev * pair_chunk)
  n_groups = int(groups.max()) + 1
  weights = np.zeros((n + n_pad, n_groups), np.float32)
  weights[np.arange(n), groups] = 1.0
  pad = lambda z: np.concatenate([z, np.repeat(z[:1], n_pad, axis=0)]) if n_pad else z
  z1, z2 = pad(np.asarray(z1)), pad(np.asarray(z2))
  fn = gen.jitted((*key, pair_chunk, n_dev), lambda: _sharded_sum(local_factory(pair_chunk), mesh))
  rep = lambda t: jax.tree.map(lambda a: _global(np.asarray(a), mesh, P()), t)
  out = fn(
    _replicated_variables(gen, mesh, rep),
    rep(extra),
    _global(z1, mesh, P("pairs")),
    _global(z2, mesh, P("pairs")),
    _global(weights, mesh, P("pairs")),
  )
  return _host(out), np.bincount(groups, minlength=n_groups)


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


# ---- public API ----------------------------------------------------------------------
def masks_from_labels(labels, k: int | None = None) -> np.ndarray:
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


def hybrid_grid(gen: Generator, site: str, masks, z1, z2) -> jax.Array:
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


def grid_panel(originals, donors, cells) -> np.ndarray:
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
  gen: Generator, site: str, masks, z1, z2, *, mask_chunk: int = DEFAULT_MASK_CHUNK
) -> jax.Array:
  """Counterfactual hybrids.

  Args:
    gen: a `Generator`.
    site: one of ``gen.sites``.
    masks: ``[M, C]`` (or ``[C]``) values in [0, 1]; 1 takes the channel from z2.
    z1, z2: ``[N, *latent_shape]`` latent codes (originals and donors).
    mask_chunk: masks evaluated together in one vectorised call.
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
  mask_chunk = _check_positive_int(mask_chunk, "mask_chunk")
  m = masks.shape[0]
  masks, mask_chunk = _pad_masks(masks, mask_chunk)
  fn = gen.jitted(("hybrids", site, mask_chunk), lambda: _hybrids_fn(gen, site, mask_chunk))
  out = fn(gen.variables, masks, z1, z2)[:m]
  return out[0] if one else out


def influence_map_sums(
  gen: Generator,
  site: str,
  masks,
  z1,
  z2,
  *,
  groups=None,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
) -> tuple[jax.Array, np.ndarray]:
  """Unnormalised influence maps per group of pairs.

  Args:
    groups: optional int array ``[N]`` assigning each pair to a group ``0..G-1``
      (e.g. for bootstrap resampling); default: one group.
  Returns:
    ``(sums [G, M, H, W], counts [G])`` where ``sums[g] / (3 · counts[g])`` is the
    influence map of group g.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, _ = _check_masks(gen, site, masks)
  z1, z2 = _check_pairs(gen, z1, z2)
  pair_chunk = _check_positive_int(pair_chunk, "pair_chunk")
  mask_chunk = _check_positive_int(mask_chunk, "mask_chunk")
  groups = _check_groups(groups, z1.shape[0])
  m = masks.shape[0]
  masks, mask_chunk = _pad_masks(masks, mask_chunk)
  sums, counts = _run_sharded(
    gen,
    ("influence", site, mask_chunk),
    lambda pc: _local_mask_sums(gen, site, pc, mask_chunk),
    masks,
    z1,
    z2,
    groups,
    pair_chunk,
  )
  return jnp.asarray(sums)[:, :m], counts


def influence_maps(
  gen: Generator,
  site: str,
  masks,
  z1,
  z2,
  *,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
) -> jax.Array:
  """Influence maps of masks at a site.

  Returns:
    ``[M, H, W] float32 ≥ 0`` (``[H, W]`` for a 1-D mask): the mean over the N
    pairs and the 3 colour channels of ``|hybrid(z1, z2) − G(z1)|``. Results do
    not depend on the chunk sizes (up to float rounding).
  """
  check_generator(gen, "gen")
  one = np.ndim(masks) == 1
  sums, counts = influence_map_sums(
    gen, site, masks, z1, z2, pair_chunk=pair_chunk, mask_chunk=mask_chunk
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
  z1,
  z2,
  *,
  groups=None,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
  method: str = "auto",
) -> tuple[jax.Array, np.ndarray]:
  """Unnormalised EIMs of given pairs: ``(sums [G, C, H, W], counts [G])``.

  ``sums[g] / (3 · counts[g])`` are the EIMs of the pairs in group g. See
  `elementary_influence_maps` for ``method``.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  z1, z2 = _check_pairs(gen, z1, z2)
  pair_chunk = _check_positive_int(pair_chunk, "pair_chunk")
  mask_chunk = _check_positive_int(mask_chunk, "mask_chunk")
  method = _check_method(method)
  linear = gen.has_linear_split(site)
  if method == "linear" and not linear:
    raise ValueError(f"method='linear' needs a linear split of the stage after site {site!r}")
  groups = _check_groups(groups, z1.shape[0])
  c = gen.site_shape(site)[-1]
  if linear and method != "masks":
    cc = _largest_divisor_at_most(c, mask_chunk)
    sums, counts = _run_sharded(
      gen,
      ("eim", site, cc),
      lambda pc: _local_eim_sums(gen, site, pc, cc),
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
  )


def elementary_influence_maps(
  gen: Generator,
  site: str,
  n_pairs: int = 128,
  key=None,
  *,
  n_groups: int = 1,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
  method: str = "auto",
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
  Returns:
    ``[C, H, W] float32`` (or ``[n_groups, C, H, W]`` when ``n_groups > 1``).
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  n_pairs = _check_positive_int(n_pairs, "n_pairs")
  n_groups = _check_positive_int(n_groups, "n_groups")
  if n_groups > n_pairs:
    raise ValueError(f"n_groups={n_groups} exceeds n_pairs={n_pairs}")
  _check_method(method)
  key = jax.random.key(0) if key is None else check_key(key, "key")
  k1, k2 = jax.random.split(key)
  z1, z2 = gen.sample_latents(k1, n_pairs), gen.sample_latents(k2, n_pairs)
  groups = (np.arange(n_pairs) * n_groups) // n_pairs
  sums, counts = elementary_influence_map_sums(
    gen, site, z1, z2, groups=groups, pair_chunk=pair_chunk, mask_chunk=mask_chunk, method=method
  )
  maps = sums / (3.0 * jnp.asarray(counts, jnp.float32)[:, None, None, None])
  return maps if n_groups > 1 else maps[0]


# Old public names of internals, kept importable for other modules (to be removed).
check_masks = _check_masks
check_pairs = _check_pairs
pair_mesh = _pair_mesh

__all__ = [
  "DEFAULT_MASK_CHUNK",
  "DEFAULT_PAIR_CHUNK",
  "elementary_influence_map_sums",
  "elementary_influence_maps",
  "grid_panel",
  "hybrid_grid",
  "hybrids",
  "influence_map_sums",
  "influence_maps",
  "masks_from_labels",
]
