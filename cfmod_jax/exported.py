"""The exported-folder format of trained networks, and array manifests.

`save_variables` writes, and `load_variables` reads back verified, one folder:
``variables.msgpack`` — the module's inference
variables (``params`` and, for DCGAN, ``batch_stats``; no optimizer state) as
one `flax.serialization.msgpack_serialize` file — and ``checkpoint.json`` — the
architecture (``arch``, ``kwargs``), training ``step`` and ``config``, the
storage dtype, the file's size and sha256, and a manifest (shape, dtype,
sha256) of every array. Why not orbax here: an orbax checkpoint is a tree of
many small files (OCDBT manifests, hashed chunk names, ``_METADATA``…) meant for
sharded, asynchronous saves of large states; a shipped inference checkpoint is a
few MB, is read whole, must survive being packaged as package data, and is
simplest to audit as one file whose hash is in the JSON beside it. Trainer
checkpoints (resumable, with optimizer state) stay orbax.

Floating arrays may be stored as float16 (``storage_dtype``) to halve the size
and are cast back to float32 when loaded; the manifest hashes the stored bytes.

Integrity and errors (all `CheckpointError`, a ValueError):

* missing / unreadable ``checkpoint.json``, or a data file whose size or sha256
  differs from the JSON's (a truncated or corrupted copy) → says which and how;
* arrays whose names or shapes do not match the declared architecture →
  `ArchitectureMismatchError` naming the missing, unexpected and mis-shaped
  parameters;
* an unknown name → lists the valid names;
* a path that is a file, a ``checkpoint.json`` lacking ``file_bytes``,
  ``file_sha256`` or ``manifest`` → says which;
* a ``file`` field that is absolute, contains ``..`` or resolves (symlinks
  included) outside the checkpoint folder → refused before anything is opened:
  loading only ever reads inside the folder.

Both files are written atomically (`cfmod_jax.fileio`), the data file first.

Array manifests (`array_manifest`, `check_structure`, `verify_manifest`) are
shared with the trainer checkpoints of `cfmod_jax.train`. This module is the
bottom layer of checkpoint I/O: it imports no model, generator or trainer
(`cfmod_jax.checkpoints.load_generator` builds generators on top of it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cfmod_jax.fileio import atomic_write_bytes, atomic_write_text

EXPORT_FORMAT = "cfmod_jax.variables/1"
DATA_FILE = "variables.msgpack"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
  """A checkpoint is missing, truncated, corrupted or not of the expected kind."""


class ArchitectureMismatchError(CheckpointError):
  """A checkpoint's arrays do not fit the architecture it declares."""


# ---- manifests ------------------------------------------------------------------------------
def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {
    k: v
    for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()
    if not (isinstance(v, Mapping) and not v)
  }


def sha256(array: Any) -> str:
  """sha256 of an array's C-order bytes."""
  return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()


def array_manifest(tree: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """``{'a/b/kernel': {'shape': [...], 'dtype': 'float32', 'sha256': '…'}}`` of a
  nested dict of arrays (host copies are made as needed)."""
  return {
    k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype), "sha256": sha256(v)}
    for k, v in sorted(_flat(tree).items())
  }


def _describe(mismatch: dict[str, list[str]]) -> str:
  parts = []
  for what, names in mismatch.items():
    if names:
      shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
      parts.append(f"{what}: {shown}")
  return "; ".join(parts)


def check_structure(
  manifest: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Any], *, where: str, arch: str
) -> None:
  """Raises `ArchitectureMismatchError` unless ``manifest`` has exactly the
  array names and shapes of ``expected`` (a nested dict of arrays or
  ShapeDtypeStructs)."""
  want = {k: tuple(v.shape) for k, v in _flat(expected).items()}
  have = {k: tuple(v["shape"]) for k, v in manifest.items()}
  mismatch = {
    "missing": sorted(set(want) - set(have)),
    "unexpected": sorted(set(have) - set(want)),
    "wrong shape": [
      f"{k} (stored {have[k]}, expected {want[k]})"
      for k in sorted(set(want) & set(have))
      if want[k] != have[k]
    ],
  }
  if any(mismatch.values()):
    raise ArchitectureMismatchError(
      f"{where}: the stored arrays do not match the declared architecture {arch}: "
      f"{_describe(mismatch)}"
    )


def verify_manifest(
  manifest: Mapping[str, Mapping[str, Any]], tree: Mapping[str, Any], *, where: str
) -> None:
  """Raises `CheckpointError` unless every array of ``tree`` has the manifest's
  shape, dtype and sha256 (and no array is missing or extra)."""
  flat = _flat(tree)
  bad = []
  for k in sorted(set(manifest) | set(flat)):
    if k not in flat or k not in manifest:
      bad.append(f"{k} ({'missing' if k not in flat else 'not in the manifest'})")
      continue
    arr, entry = np.asarray(flat[k]), manifest[k]
    if list(arr.shape) != list(entry["shape"]) or str(arr.dtype) != entry["dtype"]:
      bad.append(
        f"{k} (read {arr.dtype}{list(arr.shape)}, manifest {entry['dtype']}{entry['shape']})"
      )
    elif sha256(arr) != entry["sha256"]:
      bad.append(f"{k} (sha256 differs)")
  if bad:
    raise CheckpointError(
      f"{where} is corrupted: {len(bad)} array(s) differ from the "
      f"checkpoint's sha256 manifest: {', '.join(bad[:12])}"
    )


def array_manifest_shapes(tree: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Like `array_manifest` with shapes only (no hashing)."""
  return {k: {"shape": list(np.shape(v))} for k, v in _flat(tree).items()}


# ---- exported folders ----------------------------------------------------------------------------
def _to_storage(tree: Any, storage_dtype: str) -> Any:
  def cast(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      y = x.astype(storage_dtype)
      if not np.all(np.isfinite(y)) and np.all(np.isfinite(x)):
        raise ValueError(f"values overflow {storage_dtype}; store as float32")
      return y
    return x

  return jax.tree.map(cast, tree)


def save_variables(
  path: str,
  variables: Mapping[str, Any],
  *,
  kind: str,
  arch: str,
  kwargs: Mapping[str, Any],
  step: int | None = None,
  config: Mapping[str, Any] | None = None,
  storage_dtype: str = "float32",
  extra: Mapping[str, Any] | None = None,
) -> str:
  """Writes ``variables`` (a nested dict of arrays) as an exported folder.

  Args:
    path: the folder (created; its two files are overwritten).
    variables: e.g. ``{'params': ..., 'batch_stats': ...}``.
    kind: ``'generator'`` or ``'featnet'``.
    arch, kwargs: the module (`cfmod_jax.models.build_module(arch, **kwargs)`
      for generators, `cfmod_jax.models.FeatNet(**kwargs)` for 'featnet').
    step, config: training step and config (a dict), for the record.
    storage_dtype: 'float32' or 'float16' (floating arrays only).
    extra: more JSON fields (e.g. ``quality``).
  Returns:
    ``path``.
  """
  if storage_dtype not in ("float32", "float16"):
    raise ValueError(f"storage_dtype must be 'float32' or 'float16', got {storage_dtype!r}")
  stored = _to_storage(jax.device_get(dict(variables)), storage_dtype)
  data = flax.serialization.msgpack_serialize(stored)
  os.makedirs(path, exist_ok=True)
  atomic_write_bytes(os.path.join(path, DATA_FILE), data)
  meta = {
    "format": EXPORT_FORMAT,
    "kind": kind,
    "arch": arch,
    "kwargs": dict(kwargs),
    "step": step,
    "config": config,
    "storage_dtype": storage_dtype,
    "file": DATA_FILE,
    "file_bytes": len(data),
    "file_sha256": hashlib.sha256(data).hexdigest(),
    "manifest": array_manifest(stored),
    **(dict(extra) if extra else {}),
  }
  # The JSON is written last: a folder killed mid-save has no checkpoint.json
  # declaring the new data (the sha256 check rejects a stale JSON's pairing).
  atomic_write_text(os.path.join(path, META_FILE), json.dumps(meta, indent=1, sort_keys=True))
  return path


def read_meta(path: str) -> dict[str, Any]:
  """The ``checkpoint.json`` of an exported folder."""
  check_folder(path)
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise CheckpointError(f"{path} has no {META_FILE}: not an exported cfmod_jax checkpoint")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{meta_path} is unreadable (truncated or corrupted?): {e}") from e
  if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
    raise CheckpointError(f"{meta_path} is not of format {EXPORT_FORMAT!r}")
  return meta


def load_variables(
  path: str, expected: Mapping[str, Any] | None = None, *, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(variables, meta)`` of an exported folder, verified and cast to float32.

  Args:
    path: the folder.
    expected: the variables' expected structure (arrays or ShapeDtypeStructs);
      when given, names and shapes must match (else `ArchitectureMismatchError`).
    kind: when given, the folder's ``kind`` must equal it.
  """
  meta = read_meta(path)
  if kind is not None and meta.get("kind") != kind:
    raise CheckpointError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a {kind!r}")
  data_path = _data_path(path, meta.get("file", DATA_FILE))
  size, digest, manifest = _meta_fields(path, meta)
  if not os.path.isfile(data_path):
    raise CheckpointError(f"{path}: its data file {os.path.basename(data_path)} is missing")
  if os.path.getsize(data_path) != size:  # checked before reading anything
    raise CheckpointError(
      f"{data_path} is truncated or corrupted: it has {os.path.getsize(data_path)} bytes, "
      f"the checkpoint declares {size}"
    )
  with open(data_path, "rb") as f:
    data = f.read(size + 1)
  if len(data) != size:
    raise CheckpointError(
      f"{data_path} is truncated or corrupted: it has {len(data)} bytes, the checkpoint "
      f"declares {size}"
    )
  if hashlib.sha256(data).hexdigest() != digest:
    raise CheckpointError(
      f"{data_path} is corrupted: its sha256 differs from the one in {META_FILE}"
    )
  try:
    stored = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types
    raise CheckpointError(f"{data_path} cannot be decoded: {e}") from e
  verify_manifest(manifest, stored, where=data_path)
  if expected is not None:
    check_structure(
      manifest, expected, where=path, arch=f"{meta['arch']}({kwargs_str(meta['kwargs'])})"
    )
  variables = jax.tree.map(
    lambda x: (
      jnp.asarray(x, jnp.float32) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x)
    ),
    stored,
  )
  return variables, meta


def check_folder(path: str) -> None:
  """A CheckpointError if ``path`` exists and is a file, not a folder."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise CheckpointError(
      f"name_or_path={os.fspath(path)!r} is a file; a checkpoint is a "
      f"folder (holding {META_FILE}, or a trainer workdir)"
    )


def _data_path(folder: str, name: Any) -> str:
  """The data file ``name`` of a manifest, refused unless it lies inside
  ``folder``: a relative path without ``..`` whose real path (symlinks
  resolved) is under the folder's real path. Nothing is opened before this."""
  if (
    not isinstance(name, str)
    or not name
    or os.path.isabs(name)
    or "\0" in name
    or ".." in name.replace("\\", "/").split("/")
  ):
    raise CheckpointError(
      f"{os.path.join(folder, META_FILE)}: its 'file' field must be a "
      f"file name inside the checkpoint folder, got {name!r}"
    )
  root = os.path.realpath(folder)
  real = os.path.realpath(os.path.join(folder, name))
  if os.path.commonpath([root, real]) != root or real == root:
    raise CheckpointError(
      f"{os.path.join(folder, META_FILE)}: its 'file' field {name!r} "
      f"resolves to {real}, outside the checkpoint folder {root}"
    )
  return real


def _meta_fields(path: str, meta: Mapping[str, Any]) -> tuple[int, str, dict]:
  """``(file_bytes, file_sha256, manifest)`` of a checkpoint.json, type-checked."""
  where = os.path.join(path, META_FILE)
  size, digest, manifest = (meta.get(k) for k in ("file_bytes", "file_sha256", "manifest"))
  missing = [
    k
    for k, v in (("file_bytes", size), ("file_sha256", digest), ("manifest", manifest))
    if v is None
  ]
  if missing:
    raise CheckpointError(
      f"{where} lacks the field(s) {', '.join(missing)}: it is incomplete "
      "or was not written by cfmod_jax.checkpoints.save_variables"
    )
  if not isinstance(size, int) or isinstance(size, bool) or size < 0:
    raise CheckpointError(f"{where}: file_bytes must be a non-negative integer, got {size!r}")
  if not isinstance(digest, str) or len(digest) != 64:
    raise CheckpointError(
      f"{where}: file_sha256 must be a 64-character hex string, got {digest!r:.80}"
    )
  if not isinstance(manifest, dict) or not all(
    isinstance(e, dict) and {"shape", "dtype", "sha256"} <= set(e) for e in manifest.values()
  ):
    raise CheckpointError(
      f"{where}: manifest must map array names to {{shape, dtype, sha256}} entries"
    )
  return size, digest, manifest


def kwargs_str(kwargs: Mapping[str, Any]) -> str:
  """``'a=1, b=2'``: an architecture's keyword arguments, sorted, for messages."""
  return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


__all__ = [
  "ArchitectureMismatchError",
  "CheckpointError",
  "load_variables",
  "read_meta",
  "save_variables",
]
