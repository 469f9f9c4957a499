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
`CacheBlockWarning` naming the file; it never stops a resume. Blocks written
before checksums were added are still used when all other checks pass.

``<key>`` is a content hash of everything the numbers depend on: the generator's
code, architecture and every weight (`generator_fingerprint`), the site, seed, pair counts, chunk sizes and
method. Another model, seed or configuration gets another folder, so results are
never mixed. The blocks double as the groups for bootstrap resampling.

With several processes (`jax.distributed`), all of them compute every block
together (pairs are sharded over all devices); process 0 decides which blocks are
still missing, only process 0 reads and writes the cache, and the final maps are
broadcast from process 0 to every process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import time
import warnings

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax import nnx

from cfmod_jax._validate import check_positive_int, check_seed
from cfmod_jax.fileio import atomic_savez, atomic_write_json
from cfmod_jax.generator import Generator, check_generator
from cfmod_jax.interventions import (
  DEFAULT_MASK_CHUNK,
  DEFAULT_PAIR_CHUNK,
  elementary_influence_map_sums,
)

_FORMAT_VERSION = 1


# Libraries whose classes count by their version, not their source.
_LIBRARIES = ("flax", "jax", "jaxlib", "numpy", "optax", "builtins", "abc", "typing", "functools")
# Salt of fingerprints whose code cannot be read: results are then never reused by
# another process (a warning says to set `Generator.code_version`).
_PROCESS_SALT = os.urandom(16).hex()
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


def _module_classes(gen: Generator) -> set[type]:
  """Every class whose code runs in ``gen``'s forward pass: the Flax module classes
  of its module tree (Linen: each module whose method is called while
  ``gen.generate`` is traced, abstractly; NNX: every node of the model), with
  their base classes, plus the class of ``gen`` itself."""
  classes: set[type] = {type(gen)}
  module = gen.module
  if isinstance(module, nnx.GraphDef):
    state = [s for s in (getattr(gen, "_rng_state", None), gen.variables) if s is not None]
    model = nnx.merge(module, *state)
    classes.update(type(m) for _, m in nnx.iter_modules(model))
  else:
    classes.add(type(module))

    def record(next_fun, args, kwargs, context):
      classes.add(type(context.module))
      return next_fun(*args, **kwargs)

    z = jax.ShapeDtypeStruct((1, *gen.latent_shape), jax.numpy.float32)
    try:
      with nn.intercept_methods(record):
        jax.eval_shape(gen.generate, gen.variables, z)
    except Exception:  # pylint: disable=broad-except
      pass  # not traceable from one latent: the classes of its fields still count
    for value in _fields(module):
      classes.add(type(value))
  return {base for cls in classes for base in cls.__mro__}


def _fields(module, depth: int = 0):
  """Linen submodules held in ``module``'s dataclass fields (lists, dicts), recursively."""
  if depth > 8:
    return
  values = (
    [
      getattr(module, f.name, None)
      for f in dataclasses.fields(module)
      if f.name not in ("parent", "name")
    ]
    if dataclasses.is_dataclass(module)
    else []
  )
  while values:
    value = values.pop()
    if isinstance(value, (list, tuple)):
      values.extend(value)
    elif isinstance(value, dict):
      values.extend(value.values())
    elif isinstance(value, nn.Module):
      yield value
      yield from _fields(value, depth + 1)


def _code_of(gen: Generator) -> tuple[list[str], list[str]]:
  """``(code, unreadable)``: for each Python module defining a class of
  `_module_classes` (or ``gen``'s latent sampler), ``'<module>:<sha256 of its
  source>'``; library modules count as ``'<library>==<version>'``. ``unreadable``
  names the classes whose source Python cannot read."""
  objects = list(_module_classes(gen))
  sampler = getattr(gen, "_latent_sampler", None)
  while isinstance(sampler, functools.partial):
    sampler = sampler.func
  if sampler is not None:
    objects.append(sampler)
  code, unreadable = set(), []
  for obj in objects:
    modname = getattr(obj, "__module__", None) or "?"
    top = modname.split(".")[0]
    if top in _LIBRARIES or top in sys.stdlib_module_names:
      version = getattr(sys.modules.get(top), "__version__", None)
      if version:
        code.add(f"{top}=={version}")
      continue
    try:
      pymod = sys.modules.get(modname)
      source = inspect.getsource(pymod) if pymod is not None else inspect.getsource(obj)
    except (OSError, TypeError):
      try:  # e.g. a module without a file whose class has a readable definition
        source = inspect.getsource(obj)
      except (OSError, TypeError):
        unreadable.append(f"{modname}.{getattr(obj, '__qualname__', repr(obj))}")
        continue
    # The module's name is left out: the same file imported under another name
    # (a path form `file.py:factory`) is the same code.
    code.add(f"source:{hashlib.sha256(source.encode()).hexdigest()}")
  return sorted(code), sorted(unreadable)


def generator_fingerprint(gen: Generator) -> str:
  """sha256 of everything a generator's images depend on: its code, settings and weights.

  * **code**: the full source of every Python module that defines a Flax module
    class of the generator (Linen: each module called in the forward pass, found
    by tracing it abstractly; NNX: each node of the model; wrapped generators:
    the wrapped model's), of their base classes, of ``type(gen)`` and of the
    latent sampler; library classes (flax…) count by the library's version; plus
    ``gen.code_version`` when set. Functions imported from *other* modules that
    define no such class are not seen: set ``code_version`` if they change.
    Where Python cannot read a source (classes made by ``exec`` or typed into
    ``python -c``) and ``code_version`` is not set, a per-process salt is used and
    a warning is given: results are then not reused by another process.
  * **settings**: ``repr(gen.module)`` (the fields; memory addresses removed),
    ``gen.sites`` and ``gen.latent_shape``.
  * **weights**: every array of ``gen.variables`` (path, dtype, shape, bytes).

  Deterministic across processes (nothing depends on ids or hash seeds).
  """
  h = hashlib.sha256()
  h.update(b"cfmod_jax.fingerprint/2\0")
  code, unreadable = _code_of(gen)
  code_version = getattr(gen, "code_version", None)
  if unreadable and code_version is None:
    warnings.warn(
      f"the source of {', '.join(unreadable[:5])} cannot be read, so cached results of "
      f"{gen.name} are not reused by another process; set the generator's code_version "
      "(e.g. gen.code_version = 'v2') to a string that changes with its code",
      CodeFingerprintWarning,
      stacklevel=2,
    )
    code.append(f"unreadable:{_PROCESS_SALT}")
  for item in code:
    h.update(item.encode() + b"\0")
  h.update(f"code_version={code_version!r}\0".encode())
  h.update(_ADDRESS.sub("", repr(gen.module)).encode() + b"\0")
  h.update(f"sites={tuple(gen.sites)!r};latent_shape={tuple(gen.latent_shape)!r}\0".encode())
  leaves = jax.tree_util.tree_flatten_with_path(gen.variables)[0]
  for path, leaf in leaves:
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
  return h.hexdigest()


class CodeFingerprintWarning(UserWarning):
  """A generator's code cannot be read: its results are not reused across processes."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  n_pairs: int = 128
  block_pairs: int = 32
  seed: int = 0
  pair_chunk: int = DEFAULT_PAIR_CHUNK
  mask_chunk: int = DEFAULT_MASK_CHUNK
  method: str = "auto"

  def check(self) -> None:
    for name in ("n_pairs", "block_pairs", "pair_chunk", "mask_chunk"):
      check_positive_int(getattr(self, name), name)
    check_seed(self.seed, "seed")
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

  eims: np.ndarray  # [C, H, W] float32
  eim_groups: np.ndarray  # [B, C, H, W] float32
  counts: np.ndarray  # [B] pairs per block
  key: str
  computed_blocks: int  # blocks computed by this call (the rest were loaded)
  seconds: float


def sweep_key(fingerprint: str, site: str, cfg: SweepConfig) -> str:
  payload = json.dumps(
    {"v": _FORMAT_VERSION, "generator": fingerprint, "site": site, **dataclasses.asdict(cfg)},
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
  ``shape``, finite) and ``count`` (== the block's pairs), and — for blocks
  written since checksums were added — the stored sha256 of the content.
  Blocks from before (no ``sha256``) are accepted when every other check passes.
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
  missing = {"sums", "count"} - set(arrays)
  if missing:
    raise ValueError(f"missing array(s) {sorted(missing)} (has {sorted(names)})")
  sums, stored_count, digest = arrays["sums"], arrays["count"], arrays.get("sha256")
  if sums.dtype != np.float32 or sums.shape != tuple(shape):
    raise ValueError(f"sums is {sums.dtype}{list(sums.shape)}, expected float32{list(shape)}")
  if (
    stored_count.shape != ()
    or not np.issubdtype(stored_count.dtype, np.integer)
    or int(stored_count) != count
  ):
    raise ValueError(f"count is {stored_count!r}, expected {count}")
  if digest is not None and (digest.shape != () or str(digest) != _block_digest(sums, count)):
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
  cache_dir: str,
  *,
  fingerprint: str | None = None,
  log_every_s: float = 10.0,
) -> SweepResult:
  """EIMs of ``site`` over ``cfg.n_pairs`` pairs, resumable from ``cache_dir``."""
  check_generator(gen, "gen")
  gen.site_index(site)
  if not isinstance(cfg, SweepConfig):
    raise ValueError(f"cfg must be a SweepConfig, got {type(cfg).__name__}")
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
    atomic_write_json(
      os.path.join(folder, "config.json"),
      {"site": site, "generator": gen.name, "fingerprint": fingerprint, **dataclasses.asdict(cfg)},
      default=str,
    )
    for b, p in enumerate(paths):
      sums = _load_block(p, shape, cfg.block_size(b))
      if sums is not None:
        loaded[b] = sums
  done = np.zeros(cfg.n_blocks, np.int32)
  done[list(loaded)] = 1
  done = broadcast_from_host0(done)
  todo = [b for b in range(cfg.n_blocks) if not done[b]]
  if loaded:
    logging.info(
      "site %s: resuming, %d/%d blocks already in %s", site, len(loaded), cfg.n_blocks, folder
    )
  t0 = last_log = time.perf_counter()
  for i, b in enumerate(todo):
    z1, z2 = block_latents(gen, cfg.seed, b, cfg.block_size(b))
    sums, _ = elementary_influence_map_sums(
      gen, site, z1, z2, pair_chunk=cfg.pair_chunk, mask_chunk=cfg.mask_chunk, method=cfg.method
    )
    if is_host0:
      loaded[b] = np.asarray(sums[0])
      _save_block(paths[b], loaded[b], cfg.block_size(b))
    now = time.perf_counter()
    if now - last_log >= log_every_s or i == len(todo) - 1:
      last_log = now
      rate = sum(cfg.block_size(x) for x in todo[: i + 1]) * shape[0] / (now - t0)
      left = sum(cfg.block_size(x) for x in todo[i + 1 :]) * shape[0]
      logging.info(
        "site %s: block %d/%d, %.0f hybrids/s, ETA %.0f s",
        site,
        cfg.n_blocks - len(todo) + i + 1,
        cfg.n_blocks,
        rate,
        left / rate,
      )
  seconds = time.perf_counter() - t0
  counts = np.array([cfg.block_size(b) for b in range(cfg.n_blocks)])
  sums = (
    np.stack([loaded[b] for b in range(cfg.n_blocks)])
    if is_host0
    else np.zeros((cfg.n_blocks, *shape), np.float32)
  )
  sums = broadcast_from_host0(sums)  # every process gets host 0's maps
  groups = sums / (3.0 * counts[:, None, None, None].astype(np.float32))
  eims = sums.sum(axis=0) / np.float32(3.0 * cfg.n_pairs)
  return SweepResult(
    eims.astype(np.float32), groups.astype(np.float32), counts, key, len(todo), seconds
  )


__all__ = [
  "CacheBlockWarning",
  "CodeFingerprintWarning",
  "SweepConfig",
  "SweepResult",
  "block_latents",
  "broadcast_from_host0",
  "eim_sweep",
  "generator_fingerprint",
  "sweep_key",
]
