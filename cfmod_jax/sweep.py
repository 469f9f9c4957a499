"""Resumable sweeps of elementary influence maps.

The pairs of a sweep are split into **blocks**; block b draws its latents from
``fold_in(key(seed), b)``, so a block's result does not depend on the others.
Each finished block's sums are written atomically (`cfmod_jax.fileio`: a
temporary file, fsync, ``os.replace``) to ``<cache_dir>/eims/<key>/block_<b>.npz``
with the pair count and a sha256 of the content. A sweep killed at any moment and
restarted with the same arguments loads the finished blocks and computes only the
rest; blocks are added up in a fixed order, so the maps are bitwise identical to
an uninterrupted run. A damaged block (empty, truncated, a flipped byte, wrong
array names, shape, dtype or count, checksum mismatch) is recomputed with a
`CacheBlockWarning` naming the file; it never stops a resume.

``<key>`` is a content hash of everything the numbers depend on: the generator's
code, architecture and every weight (`generator_fingerprint`), the site, seed, pair counts, chunk sizes and
method. Another model, seed or configuration gets another folder, so results are
never mixed. The blocks double as the groups for bootstrap resampling.

With several processes (`jax.distributed`), all of them compute every block
together (pairs are sharded over all devices); process 0 decides which blocks are
still missing, only process 0 reads and writes the cache, and the final maps are
broadcast from process 0 to every process.

**Adaptive pairs** (opt-in, ``SweepConfig.target_reliability``): blocks are taken
in order and, from block ``min_blocks − 1`` on, the split-half reliability of the
EIMs so far (`eim_reliability`) is evaluated after each block; the sweep stops at
the first block where it reaches the target, so ``n_pairs`` becomes a maximum. The
blocks are the very computations of a non-adaptive sweep (the adaptive fields are
not part of the cache key): a later non-adaptive run with the same ``n_pairs``
reuses them, and a resumed adaptive run loads the finished blocks and evaluates the
rule block by block exactly as an uninterrupted run does (same blocks, same
result). With several processes, process 0 evaluates the rule and broadcasts the
decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings

import jax
import numpy as np
from absl import logging

from cfmod_jax._validate import check_chunk, check_positive_int, check_seed
from cfmod_jax.fileio import atomic_savez, atomic_write_json
from cfmod_jax.fingerprint import generator_fingerprint
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.interventions import (
  DEFAULT_MASK_CHUNK,
  DEFAULT_PAIR_CHUNK,
  elementary_influence_map_sums,
)
from cfmod_jax.precision import DEFAULT_PRECISION, check_precision
from cfmod_jax.split_half import eim_reliability

_FORMAT_VERSION = 1


#: Fields of `SweepConfig` that decide how many blocks are used, not what a block
#: holds: they are left out of the cache key, so adaptive and full sweeps share blocks.
ADAPTIVE_FIELDS = ("target_reliability", "min_blocks")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """Settings of an EIM sweep.

  ``n_pairs`` pairs in blocks of ``block_pairs`` (the last one may be smaller),
  latents from ``seed``; ``pair_chunk``, ``mask_chunk`` (None: chosen from the
  device's memory), ``method`` and ``precision`` as in
  `interventions.elementary_influence_map_sums`. ``precision`` enters the cache
  key (bf16 blocks are never mixed with float32 ones).

  Adaptive pairs (opt-in): with ``target_reliability`` t (0 < t < 1) the sweep
  stops after the first block b ≥ ``min_blocks`` − 1 at which `eim_reliability` of
  blocks 0…b reaches t; ``n_pairs`` is then the maximum. ``min_blocks`` (≥ 2, at
  most the number of blocks when adaptive) is the fewest blocks used. Neither
  field enters the cache key (`ADAPTIVE_FIELDS`).
  """

  n_pairs: int = 128
  block_pairs: int = 32
  seed: int = 0
  pair_chunk: int | None = DEFAULT_PAIR_CHUNK
  mask_chunk: int | None = DEFAULT_MASK_CHUNK
  method: str = "auto"
  target_reliability: float | None = None
  min_blocks: int = 2
  precision: str = DEFAULT_PRECISION

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    """ValueError naming the first bad field (run on construction)."""
    for name in ("n_pairs", "block_pairs"):
      check_positive_int(getattr(self, name), name)
    for name in ("pair_chunk", "mask_chunk"):
      check_chunk(getattr(self, name), name)
    check_precision(self.precision)
    check_seed(self.seed, "seed")
    if self.block_pairs > self.n_pairs:
      raise ValueError(f"block_pairs={self.block_pairs} exceeds n_pairs={self.n_pairs}")
    if self.method not in ("auto", "linear", "masks"):
      raise ValueError(f"method must be 'auto', 'linear' or 'masks', got {self.method!r}")
    check_target_reliability(self.target_reliability, "target_reliability")
    m = self.min_blocks
    if not isinstance(m, (int, np.integer)) or isinstance(m, (bool, np.bool_)) or m < 2:
      raise ValueError(f"min_blocks must be an integer ≥ 2, got {m!r}")
    if self.target_reliability is not None and m > self.n_blocks:
      raise ValueError(
        f"min_blocks={m} exceeds the {self.n_blocks} block(s) of n_pairs={self.n_pairs} "
        f"in blocks of block_pairs={self.block_pairs}; the reliability needs at least "
        "two blocks"
      )

  @property
  def n_blocks(self) -> int:
    """Blocks of the full sweep (the most an adaptive sweep uses)."""
    return -(-self.n_pairs // self.block_pairs)

  def block_size(self, b: int) -> int:
    return min(self.block_pairs, self.n_pairs - b * self.block_pairs)


def check_target_reliability(value, name: str = "target_reliability") -> float | None:
  """``value`` as a float if it is None or a number strictly between 0 and 1; else
  ValueError naming ``name``."""
  if value is None:
    return None
  if (
    not isinstance(value, (int, float, np.integer, np.floating))
    or isinstance(value, (bool, np.bool_))
    or not 0 < float(value) < 1
  ):
    raise ValueError(
      f"{name} must be None (off) or a number strictly between 0 and 1, e.g. 0.95; got {value!r}"
    )
  return float(value)


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """EIMs of one site. ``eim_groups[b]`` are the EIMs of block b's pairs.

  ``blocks_used``/``pairs_used``: the blocks and pairs the maps are made of (all
  of them unless an adaptive sweep stopped early). ``reliability[b]``: the
  `eim_reliability` of blocks 0…b where the stopping rule was evaluated (rounded
  to float32, as process 0 broadcasts it and as it is compared with the target),
  NaN elsewhere (always NaN without ``target_reliability``). ``block_seconds[b]``:
  seconds this call spent computing block b (NaN: loaded from the cache);
  ``reliability_seconds``: seconds spent evaluating the rule.
  """

  eims: np.ndarray  # [C, H, W] float32
  eim_groups: np.ndarray  # [B, C, H, W] float32
  counts: np.ndarray  # [B] pairs per block
  key: str
  computed_blocks: int  # blocks computed by this call (the rest were loaded)
  seconds: float
  blocks_used: int = 0
  pairs_used: int = 0
  reliability: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  stopped_early: bool = False
  block_seconds: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  reliability_seconds: float = 0.0


def _block_fields(cfg: SweepConfig) -> dict:
  """The fields of ``cfg`` that blocks depend on (all but `ADAPTIVE_FIELDS`)."""
  fields = dataclasses.asdict(cfg)
  for name in ADAPTIVE_FIELDS:
    fields.pop(name)
  return fields


def sweep_key(fingerprint: str, site: str, cfg: SweepConfig) -> str:
  """Cache folder name: a hash of the generator, site and the block fields of
  ``cfg`` (not `ADAPTIVE_FIELDS`: adaptive and full sweeps share blocks)."""
  payload = json.dumps(
    {"v": _FORMAT_VERSION, "generator": fingerprint, "site": site, **_block_fields(cfg)},
    sort_keys=True,
    default=int,
  )
  return hashlib.sha256(payload.encode()).hexdigest()[:24]


def block_latents(gen: Generator, seed: int, b: int, n: int) -> tuple[jax.Array, jax.Array]:
  """The pairs ``(z1, z2)`` of block ``b`` (``n`` each) of a sweep with ``seed``."""
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(seed), b))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


class CacheBlockWarning(UserWarning):
  """A cached block was damaged or of another format; it is recomputed."""


def _block_digest(sums: np.ndarray, count: int) -> str:
  """sha256 of a block's sums (dtype, shape, bytes) and pair count."""
  h = hashlib.sha256()
  h.update(f"{sums.dtype.str}{sums.shape}{int(count)}".encode())
  h.update(np.ascontiguousarray(sums).tobytes())
  return h.hexdigest()


def _save_block(path: str, sums: np.ndarray, count: int) -> None:
  """Writes a block atomically with a sha256 of its content."""
  atomic_savez(
    path,
    compress=False,
    sums=sums,
    count=np.int64(count),
    sha256=np.array(_block_digest(sums, count)),
  )


def _read_block(path: str, shape, count: int) -> np.ndarray:
  """A finished block's sums; ValueError saying what is wrong with the file.

  Checks: a readable .npz (zip CRC included), arrays ``sums`` (float32 of
  ``shape``, finite), ``count`` (== the block's pairs) and ``sha256`` (the stored
  sha256 of the content).
  """
  with open(path, "rb") as f:  # our own handle: numpy leaks its own on a bad zip
    size = os.fstat(f.fileno()).st_size
    if f.read(4) != b"PK\x03\x04":
      raise ValueError(f"not an .npz (zip) file ({size} bytes{', empty' if not size else ''})")
    f.seek(0)
    try:
      with np.load(f, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k in ("sums", "count", "sha256")}
        names = list(data.files)
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError, ValueError...
      raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
  missing = {"sums", "count", "sha256"} - set(arrays)
  if missing:
    raise ValueError(f"missing array(s) {sorted(missing)} (has {sorted(names)})")
  sums, stored_count, digest = arrays["sums"], arrays["count"], arrays["sha256"]
  if sums.dtype != np.float32 or sums.shape != tuple(shape):
    raise ValueError(f"sums is {sums.dtype}{list(sums.shape)}, expected float32{list(shape)}")
  if (
    stored_count.shape != ()
    or not np.issubdtype(stored_count.dtype, np.integer)
    or int(stored_count) != count
  ):
    raise ValueError(f"count is {stored_count!r}, expected {count}")
  if digest.shape != () or str(digest) != _block_digest(sums, count):
    raise ValueError("its sha256 does not match its content")
  if not np.all(np.isfinite(sums)) or np.any(sums < 0):
    raise ValueError("sums contain NaN, inf or negative values")
  return sums


def _load_block(path: str, shape, count: int) -> np.ndarray | None:
  """A finished block's sums, or None if absent or damaged (then it is
  recomputed; a damaged file gets a `CacheBlockWarning` naming it)."""
  if not os.path.exists(path):
    return None
  try:
    return _read_block(path, shape, count)
  except (ValueError, OSError) as e:  # OSError: e.g. a folder or an unreadable file
    msg = f"damaged sweep cache block {path}: {e}; recomputing it"
    warnings.warn(msg, CacheBlockWarning, stacklevel=3)
    logging.warning(msg)
    return None


def broadcast_from_host0(x: np.ndarray) -> np.ndarray:
  """Process 0's value of ``x`` on every process (identity with one process)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def eim_sweep(
  gen: Generator,
  site: str,
  cfg: SweepConfig,
  cache_dir: str | None = None,
  *,
  fingerprint: str | None = None,
  log_every_s: float = 10.0,
) -> SweepResult:
  """EIMs of ``site`` over ``cfg.n_pairs`` pairs, resumable from ``cache_dir``
  (None: no cache, every block is computed).

  Blocks are taken in order 0, 1, …: loaded from the cache when finished, else
  computed (one compiled call of `interventions.elementary_influence_map_sums`
  each) and saved. With ``cfg.target_reliability`` the stopping rule is evaluated
  after each block from ``cfg.min_blocks − 1`` on and the sweep stops at the first
  block where `eim_reliability` reaches the target (module docstring); which
  blocks were loaded and which computed does not change where it stops.
  """
  check_generator(gen, "gen")
  gen.site_index(site)
  if not isinstance(cfg, SweepConfig):  # a SweepConfig checks its fields when made
    raise ValueError(f"cfg must be a SweepConfig, got {type(cfg).__name__}")
  fingerprint = fingerprint or generator_fingerprint(gen)
  key = sweep_key(fingerprint, site, cfg)
  folder = None if cache_dir is None else os.path.join(cache_dir, "eims", key)
  h, w, _ = gen.image_shape
  shape = (gen.site_shape(site)[-1], h, w)
  is_host0 = jax.process_index() == 0
  n_blocks = cfg.n_blocks
  paths = [folder and os.path.join(folder, f"block_{b:05d}.npz") for b in range(n_blocks)]
  loaded: dict[int, np.ndarray] = {}
  if is_host0 and folder is not None:
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(
      os.path.join(folder, "config.json"),
      {"site": site, "generator": gen.name, "fingerprint": fingerprint, **_block_fields(cfg)},
      default=str,
    )
    for b, p in enumerate(paths):
      sums = _load_block(p, shape, cfg.block_size(b))
      if sums is not None:
        loaded[b] = sums
  done = np.zeros(n_blocks, np.int32)
  done[list(loaded)] = 1
  done = broadcast_from_host0(done)
  todo = [b for b in range(n_blocks) if not done[b]]
  if loaded:
    logging.info(
      "site %s: resuming, %d/%d blocks already in %s", site, len(loaded), n_blocks, folder
    )
  target = cfg.target_reliability
  counts = np.array([cfg.block_size(b) for b in range(n_blocks)])
  reliability = np.full(n_blocks, np.nan)
  block_seconds = np.full(n_blocks, np.nan)
  t0 = last_log = time.perf_counter()
  used, computed, t_rel = n_blocks, 0, 0.0
  for b in range(n_blocks):
    if not done[b]:
      tb = time.perf_counter()
      z1, z2 = block_latents(gen, cfg.seed, b, cfg.block_size(b))
      sums, _ = elementary_influence_map_sums(
        gen,
        site,
        z1,
        z2,
        pair_chunk=cfg.pair_chunk,
        mask_chunk=cfg.mask_chunk,
        method=cfg.method,
        precision=cfg.precision,
      )
      if is_host0:
        loaded[b] = np.asarray(sums[0])
        if folder is not None:
          _save_block(paths[b], loaded[b], cfg.block_size(b))
      else:
        jax.block_until_ready(sums)
      computed += 1
      now = time.perf_counter()
      block_seconds[b] = now - tb
      if now - last_log >= log_every_s or b == todo[-1]:
        last_log = now
        rate = sum(cfg.block_size(x) for x in todo[:computed]) * shape[0] / (now - t0)
        left = sum(cfg.block_size(x) for x in todo[computed:]) * shape[0]
        logging.info(
          "site %s: block %d/%d, %.0f hybrids/s, ETA %s%.0f s",
          site,
          b + 1,
          n_blocks,
          rate,
          "at most " if target is not None else "",
          left / rate,
        )
    if target is None or b + 1 < cfg.min_blocks:
      continue
    tr = time.perf_counter()
    value = np.zeros(1, np.float32)
    if is_host0:
      value[0] = eim_reliability(np.stack([loaded[x] for x in range(b + 1)]), counts[: b + 1])
    value = broadcast_from_host0(value)  # process 0 decides for every process
    reliability[b] = float(value[0])
    t_rel += time.perf_counter() - tr
    logging.info(
      "site %s: split-half reliability %.4f after %d pairs (target %g)",
      site,
      reliability[b],
      counts[: b + 1].sum(),
      target,
    )
    if reliability[b] >= target:
      used = b + 1
      break
  seconds = time.perf_counter() - t0
  counts = counts[:used]
  pairs = int(counts.sum())
  sums = (
    np.stack([loaded[b] for b in range(used)]) if is_host0 else np.zeros((used, *shape), np.float32)
  )
  sums = broadcast_from_host0(sums)  # every process gets host 0's maps
  groups = sums / (3.0 * counts[:, None, None, None].astype(np.float32))
  eims = sums.sum(axis=0) / np.float32(3.0 * pairs)
  if used < n_blocks:
    logging.info(
      "site %s: reliability %.4f ≥ %g after %d of %d pairs: stopped",
      site,
      reliability[used - 1],
      target,
      pairs,
      cfg.n_pairs,
    )
  return SweepResult(
    eims.astype(np.float32),
    groups.astype(np.float32),
    counts,
    key,
    computed,
    seconds,
    blocks_used=used,
    pairs_used=pairs,
    reliability=reliability[:used],
    stopped_early=used < n_blocks,
    block_seconds=block_seconds[:used],
    reliability_seconds=t_rel,
  )


__all__ = [
  "ADAPTIVE_FIELDS",
  "CacheBlockWarning",
  "SweepConfig",
  "SweepResult",
  "block_latents",
  "broadcast_from_host0",
  "check_target_reliability",
  "eim_sweep",
  "sweep_key",
]
