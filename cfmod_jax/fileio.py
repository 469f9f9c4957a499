"""Crash-safe output files: atomic writes, a per-folder run lock, run manifests.

Every output file of cfmod_jax is written **atomically**: the bytes go to a
temporary file in the same folder (``.<name>.<random>.tmp<ext>``), which is
flushed and ``fsync``-ed, then renamed over the destination with `os.replace`
(atomic on POSIX within one filesystem). A reader therefore sees either the old
file or the complete new one, never a half-written file, even if the writer is
killed (SIGKILL, power loss after the rename is journaled). A temporary file
left by a killed writer starts with ``.`` and ends in ``.tmp*``; it is never
read and may be deleted.

Helpers:

* `atomic_write_bytes`, `atomic_write_text`, `atomic_write_json` — whole files.
* `atomic_savez` — an ``.npz`` like ``np.savez_compressed`` (or ``np.savez``),
  bitwise reproducible (fixed member dates), into a temporary file, then rename.
* `atomic_path` — a context manager yielding a temporary path for writers that
  want a file name (matplotlib ``savefig``, PIL ``Image.save``); the path keeps
  the destination's extension so format detection still works::

      with atomic_path("out/fig.png") as tmp:
        fig.savefig(tmp)

* `RunLock` — an exclusive, non-blocking lock on ``<out_dir>/.lock`` so two runs
  never write the same output folder at once.
* `write_manifest` / `read_manifest` — ``<out_dir>/run.json`` recording the
  settings and generator fingerprint a folder's results were made with, so a
  rerun can tell whether existing results are its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

MANIFEST_FILE = "run.json"
MANIFEST_FORMAT = "cfmod_jax.run/1"
LOCK_FILE = ".lock"


def _fsync_dir(folder: str) -> None:
  """Makes a rename in ``folder`` durable (best effort: not every OS/filesystem
  allows opening a directory)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _umask() -> int:
  mask = os.umask(0o22)
  os.umask(mask)
  return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give a new file


def _temp_in(path: str) -> tuple[int, str]:
  folder, name = os.path.split(os.path.abspath(os.fspath(path)))
  os.makedirs(folder, exist_ok=True)
  ext = os.path.splitext(name)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".tmp{ext}")
  os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files
  return fd, tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path in ``path``'s folder; on normal exit the file
  written there is fsync-ed and renamed to ``path``; on an exception it is
  deleted and ``path`` is left untouched.

  The temporary name ends with ``path``'s extension (``.png``, ``.pdf``…), so
  ``fig.savefig(tmp)`` / ``image.save(tmp)`` pick the right format. The parent
  folder is created if needed. The writer must create the file at the yielded
  path (an empty temporary file already exists there and may be overwritten).
  """
  path = os.fspath(path)
  fd, tmp = _temp_in(path)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """Writes ``data`` to ``path`` atomically (temp file, fsync, `os.replace`).
  Returns ``path``."""
  path = os.fspath(path)
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
  """Writes ``text`` (UTF-8) to ``path`` atomically. Returns ``path``."""
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(
  path: str | os.PathLike,
  obj: Any,
  *,
  indent: int | None = 2,
  sort_keys: bool = True,
  default: Callable[[Any], Any] | None = None,
) -> str:
  """Writes ``obj`` as JSON (plus a final newline) to ``path`` atomically.

  The object is serialised before anything is written, so an unserialisable
  value raises without touching ``path``. ``default`` is passed to `json.dumps`
  (e.g. ``str`` to write arbitrary values as strings). Returns ``path``.
  """
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
  return atomic_write_text(path, text)


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same arrays give the same bytes


def atomic_savez(path: str | os.PathLike, *, compress: bool = True, **arrays: ArrayLike) -> str:
  """``np.savez_compressed(path, **arrays)`` (``np.savez`` if ``compress`` is
  False), written atomically and bitwise reproducibly: numpy stamps each member
  with the current time, here every member has one fixed date. `np.load` reads it
  like any ``.npz``. ``path`` is used exactly as given (numpy's habit of appending
  ``.npz`` does not apply). Returns ``path``."""
  path = os.fspath(path)
  kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with atomic_path(path) as tmp:
    with zipfile.ZipFile(tmp, "w", compression=kind) as zf:
      for name, value in arrays.items():
        info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
        info.compress_type = kind
        info.external_attr = 0o644 << 16
        with zf.open(info, "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
  return path


# ---- run lock -------------------------------------------------------------------------
class OutputLockedError(RuntimeError):
  """Another live process holds the `RunLock` of an output folder."""


class RunLock:
  """An exclusive lock on an output folder, held for the duration of a run.

  ``with RunLock(out_dir): ...`` (or `acquire` / `release`) takes a
  non-blocking ``fcntl.flock`` on ``<out_dir>/.lock`` (the folder is created).
  If another process (or another `RunLock` object in this process) holds it,
  `OutputLockedError` is raised at once: ``another run is writing <out_dir>
  (pid N on HOST, since …)``. The holder's pid, host and start time are written
  into the lock file for that message.

  The lock belongs to the open file, so the kernel releases it when the
  holding process exits for any reason, SIGKILL included: a lock file left by
  a dead process never blocks a new run (the file itself is harmless and
  reused). flock is advisory and local to one machine; on network filesystems
  it may not exclude writers on other hosts.
  """

  def __init__(self, out_dir: str | os.PathLike) -> None:
    self.out_dir = os.fspath(out_dir)
    self.path = os.path.join(self.out_dir, LOCK_FILE)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> RunLock:
    if self._fd is not None:
      return self
    os.makedirs(self.out_dir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      try:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
      except OSError:
        holder = ""
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise OutputLockedError(
          f"another run is writing {self.out_dir} "
          f"({holder or 'pid unknown'}); wait for it to finish or "
          "choose another output folder"
        ) from None
      raise
    info = (
      f"pid {os.getpid()} on {socket.gethostname()}, since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}"
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode() + b"\n", 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def __del__(self):
    with contextlib.suppress(Exception):
      self.release()


# ---- run manifests -----------------------------------------------------------------------
def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
  """``settings`` as JSON would read them back (tuples → lists, other values →
  str), so a manifest written and read compares equal to fresh settings."""
  return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def write_manifest(
  out_dir: str | os.PathLike, settings: Mapping[str, Any], fingerprint: str
) -> str:
  """Writes ``<out_dir>/run.json`` atomically and returns its path.

  Args:
    out_dir: the run's output folder (created).
    settings: everything the results depend on (a JSON-able dict; values that
      JSON cannot hold are written with `str`).
    fingerprint: the generator's fingerprint (`cfmod_jax.fingerprint.generator_fingerprint`).
  The file holds ``{"format", "settings", "fingerprint", "written"}``.
  """
  if not isinstance(settings, Mapping):
    raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
  if not isinstance(fingerprint, str) or not fingerprint:
    raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
  path = os.path.join(os.fspath(out_dir), MANIFEST_FILE)
  atomic_write_json(
    path,
    {
      "format": MANIFEST_FORMAT,
      "settings": _normalise(settings),
      "fingerprint": fingerprint,
      "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    },
  )
  return path


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The manifest of ``out_dir`` (``{"settings", "fingerprint", …}``), or None if
  the folder has none. A manifest that is unreadable or not of this format
  raises ValueError naming the file."""
  path = os.path.join(os.fspath(out_dir), MANIFEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable (truncated or corrupted?): {e}") from e
  if (
    not isinstance(meta, dict)
    or meta.get("format") != MANIFEST_FORMAT
    or not isinstance(meta.get("settings"), dict)
    or not isinstance(meta.get("fingerprint"), str)
  ):
    raise ValueError(f"{path} is not a {MANIFEST_FORMAT} run manifest")
  return meta


def manifest_matches(
  out_dir: str | os.PathLike, settings: Mapping[str, Any], fingerprint: str
) -> bool | None:
  """None if ``out_dir`` has no manifest; else whether its settings and
  fingerprint equal these (i.e. whether its results were made by the same run
  configuration and may be reused)."""
  meta = read_manifest(out_dir)
  if meta is None:
    return None
  return meta["settings"] == _normalise(settings) and meta["fingerprint"] == fingerprint


__all__ = [
  "LOCK_FILE",
  "MANIFEST_FILE",
  "OutputLockedError",
  "RunLock",
  "atomic_path",
  "atomic_savez",
  "atomic_write_bytes",
  "atomic_write_json",
  "atomic_write_text",
  "manifest_matches",
  "read_manifest",
  "write_manifest",
]
