"""Chunk sizes of the hybrid stream from the device's memory (``pair_chunk=None`` /
``mask_chunk=None`` in `cfmod_jax.interventions`).

`cfmod_jax.interventions.hybrid_map_reduce` holds, per device, one flat batch of
``mask_chunk × pair_chunk`` hybrids in the suffix at a time, plus one chunk of
pairs' prefix activations and the accumulated sums. `choose_chunks` picks the
largest chunks whose estimated working set fits a budget:

* **Estimate** (`chunk_cost`): the per-hybrid bytes are the peak of the bytes
  alive while the suffix runs, found by walking the suffix's jaxpr
  (`peak_live_bytes`: each intermediate is allocated at its equation and freed
  after its last use) for batches of 64 and 8, divided by 56, so that the
  parameters and batch-independent intermediates drop out; plus the float32
  mixed activations, the hybrid and ``|hybrid − G(z1)|``. Per pair: the two codes' site
  activations, the reference image and the prefix's peak. Fixed: the variables
  (and their bf16 copy) and three copies of the ``[G, M, H, W]`` float32 sums.
  XLA fuses elementwise chains, so this is an upper estimate of what it
  allocates; `studies.gpu_check` prints it next to XLA's own
  ``compiled.memory_analysis()`` (`cfmod_jax.lab.memory.compiled_chunk_bytes`).
* **Budget** (`memory_budget`): ``fraction`` (default 0.5) of the smallest local
  device's ``memory_stats()['bytes_limit']`` on GPU/TPU; on CPU (``memory_stats()``
  is None) of the host's *available* RAM, divided by the number of local CPU
  devices.
* **Choice**: candidates grow along one ladder — (1, 1), (2, 1), (2, 2), (4, 2),
  (4, 4), … doubling the pair chunk and the mask chunk in turn — capped by the
  pairs per device, the number of masks and, on CPU, by today's tuned defaults
  (32, 16); on GPU/TPU by 256 each and 4096 hybrids per flat batch. The last
  candidate that fits wins, so a smaller budget never gives larger chunks, and on
  CPU the defaults are kept (bitwise-identical outputs) unless memory is short.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from cfmod_jax._validate import check_positive_int
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.precision import compute_dtype

CPU_PAIR_CHUNK = 32  # the chunk rule on CPU (interventions.DEFAULT_PAIR_CHUNK; tuned)
CPU_MASK_CHUNK = 16  # == interventions.DEFAULT_MASK_CHUNK
MAX_PAIR_CHUNK = 256
MAX_MASK_CHUNK = 256
MAX_HYBRIDS_PER_BATCH = 4096
DEFAULT_FRACTION = 0.5
ACCUMULATOR_COPIES = 3  # running sums, the stacked sums of one chunk, their reshaped copy


@dataclasses.dataclass(frozen=True)
class ChunkCost:
  """Bytes of the hybrid stream at one site (see the module docstring).

  Attributes:
    per_hybrid: bytes per hybrid of one flat batch (``mask_chunk × pair_chunk`` of them).
    per_pair: bytes per pair of one chunk of pairs.
    fixed: bytes independent of the chunks (variables and batch-independent
      intermediates), without the accumulated sums.
    per_output_map: float32 bytes of one accumulated ``[H, W]`` map (per mask, per group).
  """

  per_hybrid: int
  per_pair: int
  fixed: int
  per_output_map: int


def _nbytes(aval: Any) -> int:
  try:
    return int(np.prod(aval.shape, dtype=np.int64)) * int(np.dtype(aval.dtype).itemsize)
  except (TypeError, AttributeError):  # tokens, key types
    return 0


def _sub_jaxprs(params: dict) -> list:
  out = []
  for v in params.values():
    for x in v if isinstance(v, (tuple, list)) else (v,):
      if isinstance(x, jex_core.ClosedJaxpr):
        out.append(x.jaxpr)
      elif isinstance(x, jex_core.Jaxpr):
        out.append(x)
  return out


def _jaxpr_peak(jaxpr, counted_inputs: Sequence[bool] | None = None) -> int:
  """Peak bytes alive while ``jaxpr`` runs in order (inputs included when counted)."""
  Var = jex_core.Var  # noqa: N806
  counted = [True] * len(jaxpr.invars) if counted_inputs is None else list(counted_inputs)
  last_use: dict[Any, int] = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if isinstance(v, Var):
        last_use[v] = i
  outs = {v for v in jaxpr.outvars if isinstance(v, Var)}
  size: dict[Any, int] = {}
  live = 0
  for v, c in zip(jaxpr.invars, counted, strict=True):
    if c:
      size[v] = _nbytes(v.aval)
      live += size[v]
  peak = live
  for i, eqn in enumerate(jaxpr.eqns):
    inner = 0
    for sub in _sub_jaxprs(eqn.params):
      # Inputs of a sub-jaxpr alias values already counted here.
      inner = max(inner, _jaxpr_peak(sub, [False] * len(sub.invars)))
    new = sum(_nbytes(v.aval) for v in eqn.outvars)
    peak = max(peak, live + inner + new)
    for v in eqn.outvars:
      if isinstance(v, Var):
        size[v] = _nbytes(v.aval)
        live += size[v]
    for v in {v for v in eqn.invars if isinstance(v, Var)}:
      if last_use.get(v) == i and v not in outs and v in size:
        live -= size.pop(v)
    for v in eqn.outvars:  # results nobody reads
      if isinstance(v, Var) and v not in last_use and v not in outs and v in size:
        live -= size.pop(v)
  return peak


def peak_live_bytes(fn: Callable, *args: Any, uncounted: int = 0) -> int:
  """Peak bytes alive while ``fn(*args)`` runs its jaxpr equation by equation.

  ``args`` may be abstract (`jax.ShapeDtypeStruct` pytrees); the leaves of the first
  ``uncounted`` arguments (e.g. the variables) are not counted as inputs. Nested
  jaxprs (``jit``, ``custom_jvp``, control flow) add their own peak while they run.
  """
  closed = jax.make_jaxpr(fn)(*args)
  n_skip = sum(len(jax.tree.leaves(a)) for a in args[:uncounted])
  counted = [i >= n_skip for i in range(len(closed.jaxpr.invars))]
  return _jaxpr_peak(closed.jaxpr, counted)


def abstract_tree(tree: Any, dtype: Any = None) -> Any:
  def leaf(a):
    dt = np.dtype(getattr(a, "dtype", np.float32))
    if dtype is not None and jnp.issubdtype(dt, jnp.floating):
      dt = np.dtype(dtype)
    return jax.ShapeDtypeStruct(np.shape(a), dt)

  return jax.tree.map(leaf, tree)


def _tree_bytes(tree: Any) -> int:
  return sum(
    int(np.prod(np.shape(a), dtype=np.int64)) * np.dtype(getattr(a, "dtype", np.float32)).itemsize
    for a in jax.tree.leaves(tree)
  )


_BATCHES = (8, 64)  # per-image bytes = (peak at 64 − peak at 8) / 56
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chunk_cost(gen: Generator, site: str, precision: str = "float32") -> ChunkCost:
  """The `ChunkCost` of the hybrid stream at ``site`` (abstract tracing only, no
  compilation; cached per generator, site and storage dtype: tf32 stores what
  float32 stores)."""
  check_generator(gen, "gen")
  gen.site_index(site)
  dt = compute_dtype(precision) or jnp.dtype(jnp.float32)
  cache = _COSTS.setdefault(gen, {})
  if (site, dt.name) in cache:
    return cache[(site, dt.name)]
  site_shape, image_shape = gen.site_shape(site), gen.image_shape
  f32 = 4
  site_bytes = int(np.prod(site_shape)) * f32
  image_bytes = int(np.prod(image_shape)) * f32
  latent_bytes = int(np.prod(gen.latent_shape)) * f32
  v_f32 = abstract_tree(gen.variables)
  v_suffix = abstract_tree(gen.variables, dt)

  def suffix(v, h, z):
    return gen.suffix(v, h, z, site)

  def prefix(v, z):
    return gen.prefix(v, z, site)

  lo, hi = _BATCHES

  def peaks(fn, v, make_args):
    return [peak_live_bytes(fn, v, *make_args(b), uncounted=1) for b in _BATCHES]

  if (site, "prefix") not in cache:  # the prefix is float32 whatever the precision
    cache[(site, "prefix")] = peaks(
      prefix, v_f32, lambda b: (jax.ShapeDtypeStruct((b, *gen.latent_shape), jnp.float32),)
    )

  s1, s2 = peaks(
    suffix,
    v_suffix,
    lambda b: (
      jax.ShapeDtypeStruct((b, *site_shape), dt),
      jax.ShapeDtypeStruct((b, *gen.latent_shape), dt),
    ),
  )
  p1, p2 = cache[(site, "prefix")]
  suffix_per, prefix_per = (max(b - a, 0) // (hi - lo) for a, b in ((s1, s2), (p1, p2)))
  var_bytes = _tree_bytes(gen.variables)
  var_copy = _tree_bytes(v_suffix) if dt != jnp.float32 else 0
  cost = ChunkCost(
    per_hybrid=suffix_per + site_bytes + 2 * image_bytes,
    per_pair=2 * site_bytes + 2 * image_bytes + 2 * latent_bytes + prefix_per,
    fixed=var_bytes + var_copy + max(s1 - lo * suffix_per, 0) + max(p1 - lo * prefix_per, 0),
    per_output_map=int(np.prod(image_shape[:2])) * f32,
  )
  cache[(site, dt.name)] = cost
  return cost


def working_set_bytes(
  cost: ChunkCost, pair_chunk: int, mask_chunk: int, n_masks: int, n_groups: int = 1
) -> int:
  """Estimated bytes per device of the stream with these chunks: fixed + per-pair
  × pair_chunk + per-hybrid × pair_chunk × mask_chunk + the accumulated sums."""
  masks_padded = -(-n_masks // mask_chunk) * mask_chunk
  return (
    cost.fixed
    + cost.per_pair * pair_chunk
    + cost.per_hybrid * pair_chunk * mask_chunk
    + ACCUMULATOR_COPIES * cost.per_output_map * masks_padded * n_groups
  )


def _available_ram() -> int:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 8 << 30


def memory_budget(
  devices: Sequence[Any] | None = None, fraction: float = DEFAULT_FRACTION
) -> tuple[int, str]:
  """``(bytes, platform)``: the memory one device may use for the stream.

  GPU/TPU: ``fraction`` × the smallest ``memory_stats()['bytes_limit']`` of
  ``devices`` (default: the local devices). CPU (``memory_stats()`` is None):
  ``fraction`` × the host's available RAM / the number of local CPU devices.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices must not be empty")
  platform = devices[0].platform
  limits = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  (some backends raise instead)
      stats = None
    if stats and stats.get("bytes_limit"):
      limits.append(int(stats["bytes_limit"]))
  if limits:
    return int(fraction * min(limits)), platform
  return int(fraction * _available_ram() / len(devices)), platform


def chunk_ladder(
  pair_cap: int,
  mask_cap: int,
  *,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  max_hybrids: int | None = None,
) -> list[tuple[int, int]]:
  """Candidate ``(pair_chunk, mask_chunk)`` in increasing size (see the module
  docstring); a given ``pair_chunk``/``mask_chunk`` stays fixed."""
  pair_cap, mask_cap = (
    check_positive_int(pair_cap, "pair_cap"),
    check_positive_int(mask_cap, "mask_cap"),
  )
  pc = pair_chunk if pair_chunk is not None else 1
  mc = mask_chunk if mask_chunk is not None else 1
  pc_cap = pair_chunk if pair_chunk is not None else pair_cap
  mc_cap = mask_chunk if mask_chunk is not None else mask_cap
  ladder = [(pc, mc)]
  while pc < pc_cap or mc < mc_cap:
    if mc < mc_cap and (2 * mc <= pc or pc >= pc_cap):
      mc = min(2 * mc, mc_cap)
    else:
      pc = min(2 * pc, pc_cap)
    if max_hybrids is not None and pc * mc > max_hybrids:
      break
    ladder.append((pc, mc))
  return ladder


def choose_chunks(
  gen: Generator,
  site: str,
  n_pairs: int,
  n_masks: int,
  *,
  precision: str = "float32",
  n_groups: int = 1,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  n_devices: int | None = None,
  budget_bytes: int | None = None,
  platform: str | None = None,
  max_hybrids: int = MAX_HYBRIDS_PER_BATCH,
) -> tuple[int, int]:
  """``(pair_chunk, mask_chunk)`` for streaming ``n_masks`` masks over ``n_pairs``
  pairs at ``site`` (see the module docstring).

  Args:
    gen, site: the generator and site.
    n_pairs: pairs in all; each of ``n_devices`` (default: all devices) gets
      ``ceil(n_pairs / n_devices)``, the largest pair chunk offered.
    n_masks: masks (channels for EIMs), the largest mask chunk offered.
    precision: of the suffix (`cfmod_jax.precision`); bf16 halves activations.
    n_groups: groups of pairs (the sums are ``[n_groups, n_masks, H, W]``).
    pair_chunk, mask_chunk: keep this one fixed and choose the other.
    n_devices: devices the pairs are split over (default ``len(jax.devices())``).
    budget_bytes, platform: inject the budget per device and the platform
      (``'cpu'`` caps at the CPU defaults 32, 16); default `memory_budget()`.
    max_hybrids: largest flat batch on GPU/TPU.
  Returns:
    the chunks, each ≥ 1, ``pair_chunk ≤ ceil(n_pairs / n_devices)`` and
    ``mask_chunk ≤ n_masks`` unless given.
  """
  n_pairs = check_positive_int(n_pairs, "n_pairs")
  n_masks = check_positive_int(n_masks, "n_masks")
  if pair_chunk is not None and mask_chunk is not None:
    return check_positive_int(pair_chunk, "pair_chunk"), check_positive_int(
      mask_chunk, "mask_chunk"
    )
  n_devices = len(jax.devices()) if n_devices is None else n_devices
  if budget_bytes is None or platform is None:
    auto_budget, auto_platform = memory_budget()
    budget_bytes = auto_budget if budget_bytes is None else budget_bytes
    platform = auto_platform if platform is None else platform
  return choose_chunks_for_cost(
    chunk_cost(gen, site, precision),
    n_pairs,
    n_masks,
    budget_bytes=budget_bytes,
    platform=platform,
    n_groups=n_groups,
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
    n_devices=n_devices,
    max_hybrids=max_hybrids,
  )


def choose_chunks_for_cost(
  cost: ChunkCost,
  n_pairs: int,
  n_masks: int,
  *,
  budget_bytes: int,
  platform: str,
  n_groups: int = 1,
  pair_chunk: int | None = None,
  mask_chunk: int | None = None,
  n_devices: int = 1,
  max_hybrids: int = MAX_HYBRIDS_PER_BATCH,
) -> tuple[int, int]:
  """`choose_chunks` for a known `ChunkCost` (e.g. to plan a machine you are not on):
  the last candidate of `chunk_ladder` whose `working_set_bytes` fits ``budget_bytes``
  (the first one if none fits)."""
  n_pairs = check_positive_int(n_pairs, "n_pairs")
  n_masks = check_positive_int(n_masks, "n_masks")
  n_groups = check_positive_int(n_groups, "n_groups")
  n_devices = check_positive_int(n_devices, "n_devices")
  if pair_chunk is not None:
    pair_chunk = check_positive_int(pair_chunk, "pair_chunk")
  if mask_chunk is not None:
    mask_chunk = check_positive_int(mask_chunk, "mask_chunk")
  per_device = -(-n_pairs // n_devices)
  if platform == "cpu":
    pair_cap, mask_cap, limit = min(CPU_PAIR_CHUNK, per_device), min(CPU_MASK_CHUNK, n_masks), None
  else:
    pair_cap, mask_cap = min(MAX_PAIR_CHUNK, per_device), min(MAX_MASK_CHUNK, n_masks)
    limit = check_positive_int(max_hybrids, "max_hybrids")
  ladder = chunk_ladder(
    pair_cap, mask_cap, pair_chunk=pair_chunk, mask_chunk=mask_chunk, max_hybrids=limit
  )
  best = ladder[0]
  for pc, mc in ladder:
    if working_set_bytes(cost, pc, mc, n_masks, n_groups) > budget_bytes:
      break
    best = (pc, mc)
  return best


def format_bytes(n: float) -> str:
  """``1536 → '1.5 KiB'``."""
  units = ("B", "KiB", "MiB", "GiB", "TiB")
  i = 0 if n < 1024 else min(int(math.log(n, 1024)), len(units) - 1)
  return f"{n / 1024**i:.1f} {units[i]}" if i else f"{int(n)} B"


__all__ = [
  "ChunkCost",
  "choose_chunks",
  "choose_chunks_for_cost",
  "chunk_cost",
  "format_bytes",
  "memory_budget",
  "peak_live_bytes",
  "working_set_bytes",
]
