"""The site machinery shared by `cfmod_jax.wrap`'s Linen and NNX wrappers (private
module): the `Wrapped` generator base (prefix = the forward pass stopped at the site,
suffix = the forward pass with the site's output replaced) and the shape-only pass that
finds the submodules a network calls.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax.generator import Generator


class SiteReached(BaseException):
  """Carries the site's activations out of the forward pass (ends the prefix).

  A BaseException so that a user's ``except Exception`` does not swallow it."""

  def __init__(self, value):
    super().__init__()
    self.value = value


def normalise_sites(sites) -> dict[str, str]:
  """``{site name: submodule path}`` from a list of paths or a name → path mapping."""
  if isinstance(sites, str):
    raise ValueError(
      f"sites must be a list of submodule paths or a mapping name → path, "
      f"got the string {sites!r} (write [{sites!r}])"
    )
  items = list(sites.items()) if isinstance(sites, Mapping) else [(s, s) for s in sites]
  if not items:
    raise ValueError("sites is empty: give at least one submodule path")
  for name, path in items:
    if not isinstance(name, str) or not isinstance(path, str) or not path:
      raise ValueError(
        f"sites must map names (str) to '/'-separated submodule paths (str), got {name!r}: {path!r}"
      )
  names = [n for n, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f"site names must be distinct, got {names}")
  return dict(items)


def latent_shape_of(module, latent_shape) -> tuple[int, ...]:
  latent_shape = latent_shape if latent_shape is not None else getattr(module, "latent_shape", None)
  if latent_shape is None:
    raise ValueError(
      "latent_shape is required (the shape of one latent code, e.g. (128,)): "
      f"{type(module).__name__} has no `latent_shape` attribute"
    )
  shape = tuple(latent_shape)
  if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f"latent_shape must be a tuple of positive ints, got {latent_shape!r}")
  return tuple(int(d) for d in shape)


class Wrapped(Generator):
  """Shared part of the wrappers: site table, checks, and the Generator protocol.

  Subclasses implement ``_run(variables, latents, hook, paths=None)``: the forward
  pass in inference mode where ``hook(path, call)`` is consulted at the
  ``__call__`` of the submodules at ``paths`` (default: every submodule; it may
  be consulted for others too) and returns its output; ``call()`` runs the
  submodule.
  """

  def _setup(
    self,
    module,
    variables,
    sites,
    latent_shape,
    name,
    latent_sampler,
    calls: dict[str, jax.ShapeDtypeStruct | None],
  ):
    """``calls``: every submodule path called in a forward pass, in call order, with
    its output's shape/dtype (None when it is not a single array, `_LIFTED` when it
    is computed inside a lifted transform)."""
    sites = normalise_sites(sites)
    available = ", ".join(calls) or "(none)"
    for site_name, path in sites.items():
      if path not in calls:
        raise ValueError(
          f"site {site_name!r}: submodule path {path!r} is not a submodule "
          f"called in the forward pass of {name}; available paths: "
          f"{available}"
        )
      out = calls[path]
      if out is _LIFTED:
        raise ValueError(
          f"site {site_name!r}: the output of {path!r} is computed inside a lifted "
          "transform (nn.remat, nn.scan, nn.jit, nnx.remat, …) and cannot be taken out "
          "of it; choose a module outside the transform (e.g. the parent of the "
          "transformed module)"
        )
      if out is None or len(out.shape) < 2 or out.shape[0] != _TRACE_BATCH:
        raise ValueError(
          f"site {site_name!r}: the output of {path!r} must be one array "
          f"[N, ..., C] (batch first) to be a site; with N={_TRACE_BATCH} it is "
          f"{out}"
        )
    order = list(calls)
    names = sorted(sites, key=lambda s: order.index(sites[s]))  # forward order
    # The attributes `Generator.__init__` sets (it is not called: it validates a staged
    # Linen module and its variables, which a wrapped generator need not have).
    self.module = module
    self.variables = variables
    self.sites: tuple[str, ...] = tuple(names)
    self.latent_shape: tuple[int, ...] = latent_shape
    self.name = name
    self._latent_sampler = latent_sampler
    self._jit_cache: dict[Any, Callable] = {}
    self.site_paths: dict[str, str] = {s: sites[s] for s in names}
    self._site_out = {s: calls[p] for s, p in self.site_paths.items()}
    self._shapes = {s: tuple(o.shape[1:]) for s, o in self._site_out.items()}
    self.submodule_paths: tuple[str, ...] = tuple(calls)

  def __repr__(self):
    return (
      f"{type(self).__name__}({self.name}, sites={self.sites}, latent_shape={self.latent_shape})"
    )

  def _run(self, variables, latents, hook, paths=None):
    raise NotImplementedError

  def with_variables(
    self,
    variables: Any,
    *,
    name: str | None = None,
    latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
  ) -> Wrapped:
    """The same generator and sites with other variables (e.g. an untrained copy):
    ``variables`` must have the tree structure and shapes of ``self.variables``."""
    old, new = (jax.tree_util.tree_flatten_with_path(v) for v in (self.variables, variables))
    if old[1] != new[1]:
      raise ValueError(f"variables must have the tree structure of {self.name}'s variables")
    for (path, a), (_, b) in zip(old[0], new[0]):
      if np.shape(a) != np.shape(b):
        raise ValueError(
          f"variables{jax.tree_util.keystr(path)} has shape {np.shape(b)}, "
          f"{self.name} has {np.shape(a)}"
        )
    twin = copy.copy(self)
    twin.variables, twin._jit_cache = variables, {}
    twin.name = name or self.name
    twin._latent_sampler = latent_sampler if latent_sampler is not None else self._latent_sampler
    return twin

  # ---- pure functions -----------------------------------------------------------------
  def prefix(self, variables, latents: jax.Array, site: str) -> jax.Array:
    """Activations at ``site``: the forward pass stops when the site's submodule returns."""
    path = self.site_paths[self.sites[self.site_index(site)]]

    def hook(p, call):
      if p == path:
        raise SiteReached(call())
      return call()

    try:
      self._run(variables, latents, hook, (path,))
    except SiteReached as reached:
      return reached.value
    raise RuntimeError(f"the forward pass of {self.name} did not call {path!r}")

  def suffix(self, variables, h: jax.Array, latents: jax.Array, site: str) -> jax.Array:
    """Images from ``h`` at ``site``: a forward pass on ``latents`` in which the site's
    first call returns ``h`` (the layers before it are traced again; see the module
    docstring for what that costs under jit)."""
    site = self.sites[self.site_index(site)]
    path, out = self.site_paths[site], self._site_out[site]
    if tuple(h.shape[1:]) != tuple(out.shape[1:]) or h.shape[0] != latents.shape[0]:
      raise ValueError(
        f"h must have shape [N, {', '.join(map(str, out.shape[1:]))}] with "
        f"N={latents.shape[0]} at site {site!r}, got {tuple(h.shape)}"
      )
    replaced = []

    def hook(p, call):
      if p == path and not replaced:
        replaced.append(True)
        return jnp.asarray(h, out.dtype)
      return call()

    images = self._run(variables, latents, hook, (path,))
    if not replaced:
      raise RuntimeError(f"the forward pass of {self.name} did not call {path!r}")
    return images

  def generate(self, variables, latents: jax.Array) -> jax.Array:
    return self._run(variables, latents, lambda p, call: call(), ())

  def has_linear_split(self, site: str) -> bool:
    """Always False: wrapped generators use the one-hot-mask path for EIMs."""
    self.site_index(site)
    return False


def check_image(out, name):
  if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 4:
    raise ValueError(f"the forward pass of {name} must return images [N, H, W, C], got {out}")


def shape_or_none(out):
  if isinstance(out, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(out, "shape"):
    return jax.ShapeDtypeStruct(tuple(out.shape), out.dtype)
  return None


# Marks a submodule output traced inside a lifted transform (an inner trace's tracer).
_LIFTED = "lifted"
_TRACE_BATCH = 3  # batch size of the shape-only forward pass that finds the submodules


def record_calls(run: Callable, variables, latent_shape) -> tuple[dict, Any]:
  """Traces one forward pass (no FLOPs) and records every submodule call's output."""
  calls: dict[str, jax.ShapeDtypeStruct | None] = {}

  def trace(v, z):
    def hook(p, call):
      out = call()
      if p not in calls:
        inner = isinstance(out, jax.core.Tracer) and (
          getattr(out, "_trace", None) is not getattr(z, "_trace", None)
        )
        calls[p] = _LIFTED if inner else shape_or_none(out)
      return out

    return run(v, z, hook)

  z = jax.ShapeDtypeStruct((_TRACE_BATCH, *latent_shape), jnp.float32)
  try:
    image = jax.eval_shape(trace, variables, z)
  except Exception as e:  # pylint: disable=broad-except  # Flax's shape errors are not ValueErrors
    raise ValueError(
      f"the forward pass fails on latents [{_TRACE_BATCH}, "
      f"{', '.join(map(str, latent_shape))}] (latent_shape={latent_shape}): "
      f"{type(e).__name__}: {e}"
    ) from e
  return calls, image
