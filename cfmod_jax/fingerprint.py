"""Fingerprints of generators: a sha256 of everything a generator's images depend on.

`generator_fingerprint` hashes a generator's code (the source of every Python module
defining a class that runs in its forward pass), settings and weights. Cached
results (`cfmod_jax.sweep`'s EIM blocks, the main job's output folders) are keyed
by it, so results of another model or other code are never reused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
import re
import sys
import warnings

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from cfmod_jax.generator import Generator

__all__ = ["CodeFingerprintWarning", "generator_fingerprint"]

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
      # A new function object each time: `jax.eval_shape` shares jit's trace cache, so
      # after ``jax.jit(gen.generate)`` ran on one latent (``gen(z[:1])``) the bound
      # method itself would not be traced again and no module call would be seen.
      with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: gen.generate(v, x), gen.variables, z)
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
