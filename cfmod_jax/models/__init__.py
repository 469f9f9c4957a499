"""Generators shipped with cfmod_jax, and a registry to build them by name."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax._validate import check_positive_int, check_seed
from cfmod_jax.generator import Generator
from cfmod_jax.models.began import BEGANDiscriminator, BEGANGenerator
from cfmod_jax.models.biggan import (
  BigGANDeep,
  biggan_generator,
  load_biggan,
  sample_latents_for_classes,
)
from cfmod_jax.models.dcgan import DCGANDiscriminator, DCGANGenerator
from cfmod_jax.models.featnet import FeatNet
from cfmod_jax.models.vae import BetaVAE, VAEDecoder, decoder_variables

ARCHITECTURES = {
  "dcgan": DCGANGenerator,
  "vae": VAEDecoder,
  "began": BEGANGenerator,
}
BUILTIN_ARCHITECTURES = tuple(ARCHITECTURES)


@dataclasses.dataclass(frozen=True)
class _Registered:
  """A user architecture: ``build_fn(**kwargs)`` returns the Linen module;
  ``to_generator(module, variables, name=...)`` makes the `Generator`."""

  build_fn: Callable[..., nn.Module]
  to_generator: Callable[..., Generator] | None = None


_REGISTRY: dict[str, _Registered] = {}


def architectures() -> list[str]:
  """Names accepted by `build_module` / `init_generator` / checkpoints: the
  shipped ones and those added with `register_architecture`."""
  return sorted({*ARCHITECTURES, *_REGISTRY})


def register_architecture(
  name: str,
  build_fn: Callable[..., nn.Module],
  *,
  to_generator: Callable[..., Generator] | None = None,
  replace: bool = False,
) -> None:
  """Makes the architecture ``name`` known to `build_module`, `init_generator`
  and `cfmod_jax.load_generator` (checkpoints whose ``checkpoint.json`` has
  ``"arch": name``).

  Args:
    name: a new architecture name (a non-empty string without ``':'``).
    build_fn: ``build_fn(**kwargs) -> flax.linen.Module``; ``kwargs`` are the
      checkpoint's ``kwargs`` (or `init_generator`'s). By default the module is a
      `StagedGenerator` (it has ``site_names`` and ``latent_shape``).
    to_generator: ``to_generator(module, variables, name=...) -> Generator`` for
      modules that are not staged, e.g.
      ``lambda m, v, name: cfmod_jax.wrap_linen(m, v, sites=[...], latent_shape=(64,), name=name)``.
    replace: allow replacing an architecture registered before (never a shipped one).
  Raises:
    ValueError: a bad name, a name already taken (without ``replace``) or a
      shipped name, or a ``build_fn`` / ``to_generator`` that is not callable.
  """
  if not isinstance(name, str) or not name or ":" in name or name != name.strip():
    raise ValueError(
      f"name must be a non-empty string without ':' or surrounding spaces, got {name!r}"
    )
  if name in ARCHITECTURES:
    raise ValueError(
      f"name={name!r} is a shipped architecture and cannot be replaced; "
      f"registered so far: {architectures()}"
    )
  if name in _REGISTRY and not replace:
    raise ValueError(
      f"name={name!r} is already registered (by "
      f"{_describe(_REGISTRY[name].build_fn)}); pass replace=True to replace "
      f"it, or choose another name; registered so far: {architectures()}"
    )
  if not callable(build_fn):
    raise ValueError(
      f"build_fn must be callable (kwargs -> flax.linen.Module), got {type(build_fn).__name__}"
    )
  if to_generator is not None and not callable(to_generator):
    raise ValueError(
      f"to_generator must be callable ((module, variables, name=...) -> "
      f"Generator) or None, got {type(to_generator).__name__}"
    )
  _REGISTRY[name] = _Registered(build_fn, to_generator)


def unregister_architecture(name: str) -> None:
  """Removes an architecture added with `register_architecture` (tests, notebooks)."""
  if name not in _REGISTRY:
    raise ValueError(
      f"name={name!r} is not a registered architecture; registered: {sorted(_REGISTRY)}"
    )
  del _REGISTRY[name]


def _describe(fn) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _check_arch(arch) -> None:
  if not isinstance(arch, str) or (arch not in ARCHITECTURES and arch not in _REGISTRY):
    raise ValueError(
      f"arch={arch!r} is unknown; expected one of {architectures()} "
      "(add your own with cfmod_jax.register_architecture(name, build_fn))"
    )


def make_generator(
  arch: str, module: nn.Module, variables: Any, *, name: str, **metadata: Any
) -> Generator:
  """The `Generator` of a module of architecture ``arch`` built by `build_module`
  (a `StagedGenerator`, or a registered architecture's ``to_generator``).
  ``metadata``: `Generator`'s ``dataset``/``code_version``, set as attributes."""
  _check_arch(arch)
  reg = _REGISTRY.get(arch)
  if reg is None or reg.to_generator is None:
    return Generator(module, variables, name=name, **metadata)
  gen = reg.to_generator(module, variables, name=name)
  if not isinstance(gen, Generator):
    raise ValueError(
      f"to_generator of arch={arch!r} must return a cfmod_jax.Generator, got {type(gen).__name__}"
    )
  for key, value in metadata.items():
    if value is not None:
      setattr(gen, key, value)
  return gen


def _check_kwargs(arch: str, cls, kwargs) -> dict:
  """Field names and values of ``cls`` checked: integer fields (``latent_dim``,
  ``width``) must be positive integers, boolean fields booleans."""
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(
      f"unknown argument(s) {', '.join(unknown)} for arch={arch!r}; valid: "
      f"{', '.join(sorted(fields))}"
    )
  out = {}
  for k, v in kwargs.items():
    default = fields[k].default
    if isinstance(default, bool):
      if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{k} must be True or False for arch={arch!r}, got {v!r}")
      v = bool(v)
    elif isinstance(default, int):
      try:
        v = check_positive_int(v, k)
      except ValueError:
        raise ValueError(f"{k} must be a positive integer for arch={arch!r}, got {v!r}") from None
    out[k] = v
  return out


def build_module(arch: str, **kwargs: Any) -> nn.Module:
  """The Linen generator module of architecture ``arch`` (dcgan, vae, began, or
  one added with `register_architecture`: then ``build_fn(**kwargs)``).

  Keyword arguments are the module's fields (``latent_dim``, ``width``, and
  BEGAN's ``batch_norm``/``skip``); unknown names, non-positive or non-integer
  sizes and non-boolean flags raise a ValueError naming the argument.
  """
  _check_arch(arch)
  if arch in _REGISTRY:
    try:
      module = _REGISTRY[arch].build_fn(**kwargs)
    except TypeError as e:  # e.g. an unexpected keyword argument
      raise ValueError(f"cannot build arch={arch!r} with kwargs {kwargs}: {e}") from e
    if not isinstance(module, nn.Module):
      raise ValueError(
        f"the build_fn of arch={arch!r} must return a flax.linen Module, got "
        f"{type(module).__name__}"
      )
    return module
  cls = ARCHITECTURES[arch]
  return cls(**_check_kwargs(arch, cls, kwargs))


@functools.lru_cache(maxsize=32)
def _compiled_init(arch: str, kwargs: tuple[tuple[str, Any], ...]):
  """``(module, jitted init)`` of a built-in architecture: one compilation per
  (arch, kwargs) in a process, shared by every seed."""
  module = build_module(arch, **dict(kwargs))
  return module, jax.jit(module.init)


def init_generator(arch: str, seed: int = 0, **kwargs: Any) -> Generator:
  """A randomly initialised `Generator` of architecture ``arch`` (see
  `build_module` for ``kwargs``); ``seed`` is a non-negative integer."""
  seed = check_seed(seed, "seed")
  _check_arch(arch)
  if arch in ARCHITECTURES and arch not in _REGISTRY:
    checked = _check_kwargs(arch, ARCHITECTURES[arch], kwargs)  # errors name the argument
    module, init = _compiled_init(arch, tuple(sorted(checked.items())))
  else:  # a registered build_fn may return a new module (or new code) on every call
    module = build_module(arch, **kwargs)
    init = jax.jit(module.init)
  shape = getattr(module, "latent_shape", None)
  if shape is None:
    raise ValueError(
      f"init_generator needs the module of arch={arch!r} to have a "
      "latent_shape attribute (the shape of one latent code)"
    )
  z = jnp.zeros((1, *shape), jnp.float32)
  variables = init(jax.random.key(seed), z)
  return make_generator(arch, module, variables, name=f"{arch}-random")


__all__ = [
  "ARCHITECTURES",
  "architectures",
  "make_generator",
  "register_architecture",
  "unregister_architecture",
  "BEGANDiscriminator",
  "BEGANGenerator",
  "BetaVAE",
  "BigGANDeep",
  "biggan_generator",
  "load_biggan",
  "sample_latents_for_classes",
  "DCGANDiscriminator",
  "DCGANGenerator",
  "FeatNet",
  "VAEDecoder",
  "build_module",
  "decoder_variables",
  "init_generator",
]
