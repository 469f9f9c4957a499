"""Counterfactual hybrids and influence maps (Besserve et al. 2020, §3).

At a site with C channels, a mask ``m ∈ [0, 1]^C`` mixes the activations of two
latent codes, ``h = (1 - m) · h_site(z1) + m · h_site(z2)`` (broadcast over
H, W), and the suffix turns ``h`` into the **hybrid** image. The **influence
map** of a mask is ``mean over pairs and colour channels of |hybrid - G(z1)|``.

Masks are arrays passed to compiled functions, so one compilation serves every
mask. One engine, `hybrid_map_reduce`, streams the hybrids through a
caller-supplied reduction (|hybrid − G(z1)| for `influence_map_sums`, a classifier
for `cfmod_jax.lab.robustness`, factor predictions for `cfmod_jax.lab.factors`);
memory is bounded by the chunk sizes, not by ``M × N``; the pairs are sharded over
every device (its kernel: `cfmod_jax._engine`). `hybrids` runs the same kernel
unsharded on one chunk of all pairs, so that it also works inside `jax.jit`.
`masks_from_labels` turns a partition into module masks; `hybrid_grid` computes
the paper's figure (originals × donors; `cfmod_jax.viz.grid_panel` lays it out).

Elementary influence maps use a faster path when the stage after the site is
``post(pre(x))`` with ``pre`` linear (`Generator.has_linear_split`): a
single-channel hybrid's pre-activation is ``pre(h(z1)) + pre_c(h_c(z2) − h_c(z1))``,
so each channel costs only its own contribution instead of a full layer.

``precision=`` (every function here; `cfmod_jax.precision`) runs the suffix in
``"float32"`` (default), ``"tf32"`` (TF32 matmuls on GPUs; a no-op on CPU) or
``"bfloat16"`` (suffix parameters and activations in bf16; sums and outputs in
float32).

**The chunk rule** (one rule for every function here, `_chunks`): integers are
used as given; ``pair_chunk=None`` / ``mask_chunk=None`` (the defaults) are chosen
from the device's memory by `cfmod_jax.memory.choose_chunks`: on CPU that is
``DEFAULT_PAIR_CHUNK`` × ``DEFAULT_MASK_CHUNK`` (32 × 16, capped by the pairs per
device and the number of masks) unless RAM is short; on GPU/TPU the largest chunks
that fit half the device's memory. Results do not depend on the chunk sizes (up to
float rounding), only speed and memory do. Arguments are checked once, by the public
function they enter; the kernel trusts them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from cfmod_jax import _engine
from cfmod_jax import memory as _memory
from cfmod_jax import precision as _precision
from cfmod_jax._arguments import (  # check_masks, check_pairs, check_groups: also for cfmod_jax.lab
  Call,
  check_call,
  check_groups,  # noqa: F401
  check_masks,
  check_method,
  check_pairs,
)
from cfmod_jax._engine import PairChunk
from cfmod_jax._validate import check_chunk, check_key, check_positive_int
from cfmod_jax.generator import Generator, check_generator, check_latents

DEFAULT_PAIR_CHUNK = _memory.CPU_PAIR_CHUNK  # 32: the chunk rule's choice on CPU
DEFAULT_MASK_CHUNK = _memory.CPU_MASK_CHUNK  # 16


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
    out with `cfmod_jax.viz.grid_panel`.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, one = check_masks(gen, site, masks)
  z1, z2 = np.asarray(check_latents(gen, z1, "z1")), np.asarray(check_latents(gen, z2, "z2"))
  r, d = z1.shape[0], z2.shape[0]
  z1r = jnp.asarray(np.repeat(z1, d, axis=0))
  z2t = jnp.asarray(np.tile(z2, (r,) + (1,) * (z2.ndim - 1)))
  out = _hybrids(gen, site, masks, z1r, z2t, None, _precision.DEFAULT_PRECISION)
  out = out.reshape(out.shape[0], r, d, *out.shape[2:])
  return out[0] if one else out


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
    mask_chunk: masks evaluated together in one vectorised call (None: the chunk
      rule, see the module docstring).
    precision: of the suffix, ``'float32'``, ``'tf32'`` or ``'bfloat16'``
      (`cfmod_jax.precision`); the hybrids are float32 in every case.
  Works inside `jax.jit` (masks and codes may be traced). Traced masks cannot be
  range-checked: a mask row with a value outside [0, 1] or a NaN gives all-NaN
  hybrids for that row (see `check_masks`); concrete masks raise a ValueError.
  Returns:
    ``[M, N, H, W, 3] float32`` in [-1, 1] (``[N, H, W, 3]`` for a 1-D mask): z1's
    activations at ``site`` with the masked channels taken from z2, then the suffix.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  masks, one = check_masks(gen, site, masks)
  z1, z2 = check_pairs(gen, z1, z2)
  mask_chunk = check_chunk(mask_chunk, "mask_chunk")
  precision = _precision.check_precision(precision)
  out = _hybrids(gen, site, masks, z1, z2, mask_chunk, precision)
  return out[0] if one else out


def _hybrids(gen, site, masks, z1, z2, mask_chunk, precision) -> jax.Array:
  """`hybrids` of checked arguments, ``[M, N, H, W, 3]``."""
  m, n = masks.shape[0], z1.shape[0]
  if mask_chunk is None:
    _, mask_chunk = _engine.chunks(
      gen, site, n, None, n, m, 1, precision, n_devices=1, sharded=False
    )
  masks, mask_chunk = _engine.pad_masks(masks, mask_chunk)
  fn = gen.jitted(
    ("hybrids", site, mask_chunk, *_precision.cache_key(precision)),
    lambda: _engine.hybrids_fn(gen, site, mask_chunk, precision),
  )
  return fn(gen.variables, masks, z1, z2)[:m]


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
  classifier robustness (`cfmod_jax.lab.robustness`) and factor transfer
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
    pair_chunk, mask_chunk: pairs per scan step, masks per flat batch; None: the
      chunk rule (module docstring; it estimates the generator's suffix only: pass
      integers if ``hybrid_fn`` needs much more memory per hybrid than the generator).
    precision: of the generator's suffix (hybrids and the default ``ctx``),
      ``'float32'``, ``'tf32'`` or ``'bfloat16'`` (`cfmod_jax.precision`);
      ``hybrid_fn`` receives float32 hybrids whatever the precision.
  Returns:
    a `HybridReduction`.
  """

  def check_fns():
    if not callable(hybrid_fn) or (pair_fn is not None and not callable(pair_fn)):
      raise ValueError("hybrid_fn (and pair_fn, if given) must be functions")

  call = check_call(
    gen, site, masks, z1, z2, groups, pair_chunk, mask_chunk, precision, extra=check_fns
  )
  key = (pair_fn, hybrid_fn) if cache_key is None else cache_key
  return _map_reduce(gen, site, call, hybrid_fn, pair_fn, params, bool(per_pair), key)


def _map_reduce(gen, site, call: Call, hybrid_fn, pair_fn, params, per_pair, key):
  """`hybrid_map_reduce` of checked arguments."""
  m = call.masks.shape[0]
  pair_chunk, mask_chunk = _engine.chunks(
    gen,
    site,
    call.pair_chunk,
    call.mask_chunk,
    call.z1.shape[0],
    m,
    int(call.groups.max()) + 1,
    call.precision,
  )
  masks, mask_chunk = _engine.pad_masks(call.masks, mask_chunk)
  (hyb, pair), counts = _engine.run_sharded(
    gen,
    ("map_reduce", key, site, mask_chunk, *_precision.cache_key(call.precision)),
    lambda pc: _engine.local_hybrid_stream(
      gen, site, pair_fn, hybrid_fn, pc, mask_chunk, per_pair, call.precision
    ),
    (masks, params),
    call.z1,
    call.z2,
    call.groups,
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
  """Unnormalised influence maps per group of pairs: `hybrid_map_reduce` with the
  reduction Σ_colour |hybrid − G(z1)| (`cfmod_jax._engine.influence_sums`).

  Args:
    groups: optional int array ``[N]`` assigning each pair to a group ``0..G-1``
      (e.g. for bootstrap resampling); default: one group.
    pair_chunk, mask_chunk, precision: as in `hybrid_map_reduce`.
  Returns:
    ``(sums [G, M, H, W], counts [G])`` where ``sums[g] / (3 · counts[g])`` is the
    influence map of group g (float32 whatever the precision).
  """
  out = hybrid_map_reduce(
    gen,
    site,
    masks,
    z1,
    z2,
    _engine.influence_sums,
    groups=groups,
    cache_key="influence",
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
    precision=precision,
  )
  return jnp.asarray(out.hybrid), out.counts


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

  ``pair_chunk``, ``mask_chunk`` (None: the chunk rule) and ``precision`` as in
  `hybrid_map_reduce`.

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
  call = check_call(gen, site, None, z1, z2, groups, pair_chunk, mask_chunk, precision)
  return _eim_sums(gen, site, call, _check_linear(gen, site, method))


def _check_linear(gen: Generator, site: str, method) -> bool:
  """Whether the EIMs take the linear path (``method`` checked)."""
  method = check_method(method)
  linear = gen.has_linear_split(site)
  if method == "linear" and not linear:
    raise ValueError(f"method='linear' needs a linear split of the stage after site {site!r}")
  return linear and method != "masks"


def _eim_sums(gen, site, call: Call, linear: bool) -> tuple[jax.Array, np.ndarray]:
  """`elementary_influence_map_sums` of checked arguments."""
  c = gen.site_shape(site)[-1]
  pair_chunk, mask_chunk = _engine.chunks(
    gen,
    site,
    call.pair_chunk,
    call.mask_chunk,
    call.z1.shape[0],
    c,
    int(call.groups.max()) + 1,
    call.precision,
  )
  if not linear:
    call = call._replace(
      masks=jnp.eye(c, dtype=jnp.float32), pair_chunk=pair_chunk, mask_chunk=mask_chunk
    )
    out = _map_reduce(gen, site, call, _engine.influence_sums, None, (), False, "influence")
    return jnp.asarray(out.hybrid), out.counts
  cc = _engine.largest_divisor_at_most(c, mask_chunk)
  sums, counts = _engine.run_sharded(
    gen,
    ("eim", site, cc, *_precision.cache_key(call.precision)),
    lambda pc: _engine.local_eim_sums(gen, site, pc, cc, call.precision),
    (),
    call.z1,
    call.z2,
    call.groups,
    pair_chunk,
  )
  return jnp.asarray(sums), counts


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
      linear path uses its largest divisor of C). None (default): the chunk rule
      (module docstring): 32 and 16 on CPU unless RAM is short, larger chunks that
      fit on GPU/TPU.
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
  linear = _check_linear(gen, site, method)
  call = Call(
    None,
    None,
    None,
    (np.arange(n_pairs) * n_groups) // n_pairs,
    check_chunk(pair_chunk, "pair_chunk"),
    check_chunk(mask_chunk, "mask_chunk"),
    _precision.check_precision(precision),
  )
  key = jax.random.key(0) if key is None else check_key(key, "key")
  k1, k2 = jax.random.split(key)
  call = call._replace(z1=gen.sample_latents(k1, n_pairs), z2=gen.sample_latents(k2, n_pairs))
  sums, counts = _eim_sums(gen, site, call, linear)
  maps = sums / (3.0 * jnp.asarray(counts, jnp.float32)[:, None, None, None])
  return maps if n_groups > 1 else maps[0]


__all__ = [
  "HybridReduction",
  "PairChunk",
  "elementary_influence_map_sums",
  "elementary_influence_maps",
  "hybrid_grid",
  "hybrid_map_reduce",
  "hybrids",
  "influence_map_sums",
  "influence_maps",
  "masks_from_labels",
]
