"""Resumable sweeps of elementary influence maps.

The pairs of a sweep are split into **blocks**; block b draws its latents from
``fold_in(key(seed), b)``, so a block's result does not depend on the others.
Each finished block's sums are written atomically (write to a temporary file,
then ``os.replace``) to ``<cache_dir>/eims/<key>/<site>/block_<b>.npz``. A sweep
killed at any moment and restarted with the same arguments loads the finished
blocks and computes only the rest; blocks are added up in a fixed order, so the
maps are bitwise identical to an uninterrupted run.

``<key>`` is a content hash of everything the numbers depend on: the generator's
architecture and every weight, the site, seed, pair counts, chunk sizes and
method. Another model, seed or configuration gets another folder, so results are
never mixed. The blocks double as the groups for bootstrap resampling.

With several processes (`jax.distributed`), all of them compute every block
together (pairs are sharded over all devices); process 0 decides which blocks are
still missing, only process 0 reads and writes the cache, and the final maps are
broadcast from process 0 to every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from cfmod_jax.generator import Generator
from cfmod_jax.interventions import (DEFAULT_MASK_CHUNK, DEFAULT_PAIR_CHUNK,
                                     elementary_influence_map_sums)

_FORMAT_VERSION = 1


def generator_fingerprint(gen: Generator) -> str:
  """sha256 of the generator's architecture (module fields) and all its variables."""
  h = hashlib.sha256()
  h.update(repr(gen.module).encode())
  leaves = jax.tree_util.tree_flatten_with_path(gen.variables)[0]
  for path, leaf in leaves:
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  n_pairs: int = 128
  block_pairs: int = 32
  seed: int = 0
  pair_chunk: int = DEFAULT_PAIR_CHUNK
  mask_chunk: int = DEFAULT_MASK_CHUNK
  method: str = "auto"

  def check(self):
    for name in ("n_pairs", "block_pairs", "pair_chunk", "mask_chunk"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if self.block_pairs > self.n_pairs:
      raise ValueError(f"block_pairs={self.block_pairs} exceeds n_pairs={self.n_pairs}")
    if self.method not in ("auto", "linear", "masks"):
      raise ValueError(f"method must be 'auto', 'linear' or 'masks', got {self.method!r}")

  @property
  def n_blocks(self) -> int:
    return -(-self.n_pairs // self.block_pairs)

  def block_size(self, b: int) -> int:
    return min(self.block_pairs, self.n_pairs - b * self.block_pairs)


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """EIMs of one site. ``eim_groups[b]`` are the EIMs of block b's pairs."""
  eims: np.ndarray          # [C, H, W] float32
  eim_groups: np.ndarray    # [B, C, H, W] float32
  counts: np.ndarray        # [B] pairs per block
  key: str
  computed_blocks: int      # blocks computed by this call (the rest were loaded)
  seconds: float


def sweep_key(fingerprint: str, site: str, cfg: SweepConfig) -> str:
  payload = json.dumps({"v": _FORMAT_VERSION, "generator": fingerprint, "site": site,
                        **dataclasses.asdict(cfg)}, sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:24]


def block_latents(gen: Generator, seed: int, b: int, n: int):
  k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(seed), b))
  return gen.sample_latents(k1, n), gen.sample_latents(k2, n)


def _save_atomic(path: str, **arrays) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _load_block(path: str, shape) -> np.ndarray | None:
  """A finished block's sums, or None if absent/unreadable (then it is recomputed)."""
  try:
    with np.load(path) as data:
      sums = data["sums"]
    return sums if sums.shape == shape else None
  except (OSError, ValueError, KeyError, EOFError):
    return None


def broadcast_from_host0(x: np.ndarray) -> np.ndarray:
  """Process 0's value of ``x`` on every process (identity with one process)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def eim_sweep(gen: Generator, site: str, cfg: SweepConfig, cache_dir: str, *,
              fingerprint: str | None = None, log_every_s: float = 10.0) -> SweepResult:
  """EIMs of ``site`` over ``cfg.n_pairs`` pairs, resumable from ``cache_dir``."""
  gen.site_index(site)
  cfg.check()
  fingerprint = fingerprint or generator_fingerprint(gen)
  key = sweep_key(fingerprint, site, cfg)
  folder = os.path.join(cache_dir, "eims", key)
  h, w, _ = gen.image_shape
  shape = (gen.site_shape(site)[-1], h, w)
  is_host0 = jax.process_index() == 0
  paths = [os.path.join(folder, f"block_{b:05d}.npz") for b in range(cfg.n_blocks)]
  loaded: dict[int, np.ndarray] = {}
  if is_host0:
    os.makedirs(folder, exist_ok=True)
    _write_json_atomic(os.path.join(folder, "config.json"),
                       {"site": site, "generator": gen.name, "fingerprint": fingerprint,
                        **dataclasses.asdict(cfg)})
    for b, p in enumerate(paths):
      if os.path.exists(p):
        sums = _load_block(p, shape)
        if sums is not None:
          loaded[b] = sums
  done = np.zeros(cfg.n_blocks, np.int32)
  done[list(loaded)] = 1
  done = broadcast_from_host0(done)
  todo = [b for b in range(cfg.n_blocks) if not done[b]]
  if loaded:
    logging.info("site %s: resuming, %d/%d blocks already in %s", site, len(loaded),
                 cfg.n_blocks, folder)
  t0 = last_log = time.perf_counter()
  for i, b in enumerate(todo):
    z1, z2 = block_latents(gen, cfg.seed, b, cfg.block_size(b))
    sums, _ = elementary_influence_map_sums(gen, site, z1, z2, pair_chunk=cfg.pair_chunk,
                                            mask_chunk=cfg.mask_chunk, method=cfg.method)
    if is_host0:
      loaded[b] = np.asarray(sums[0])
      _save_atomic(paths[b], sums=loaded[b], count=np.int64(cfg.block_size(b)))
    now = time.perf_counter()
    if now - last_log >= log_every_s or i == len(todo) - 1:
      last_log = now
      rate = sum(cfg.block_size(x) for x in todo[:i + 1]) * shape[0] / (now - t0)
      left = sum(cfg.block_size(x) for x in todo[i + 1:]) * shape[0]
      logging.info("site %s: block %d/%d, %.0f hybrids/s, ETA %.0f s", site,
                   cfg.n_blocks - len(todo) + i + 1, cfg.n_blocks, rate, left / rate)
  seconds = time.perf_counter() - t0
  counts = np.array([cfg.block_size(b) for b in range(cfg.n_blocks)])
  sums = (np.stack([loaded[b] for b in range(cfg.n_blocks)]) if is_host0
          else np.zeros((cfg.n_blocks, *shape), np.float32))
  sums = broadcast_from_host0(sums)  # every process gets host 0's maps
  groups = sums / (3.0 * counts[:, None, None, None].astype(np.float32))
  eims = sums.sum(axis=0) / np.float32(3.0 * cfg.n_pairs)
  return SweepResult(eims.astype(np.float32), groups.astype(np.float32), counts, key,
                     len(todo), seconds)
