"""Sites anywhere in an unmodified Flax generator (Linen or NNX), no rewrite.

`StagedGenerator` asks a user to write the generator as ordered stages. This
module instead wraps a generator *as it is* — any Linen module with an ordinary
``__call__(z)``, or any `flax.nnx.Module` — and makes the output of any named
submodule a site:

    gen = wrap_linen(module, variables, sites=["block2/conv1", "block3"],
                     latent_shape=(128,), apply_kwargs={"train": False})
    gen = wrap_nnx(model, sites=["blocks/1/conv1"], latent_shape=(128,))
    cf.elementary_influence_maps(gen, "block2/conv1", n_pairs=64)

A site is named by its submodule path, ``'/'``-separated (Linen: the module
names, e.g. ``"Conv_1"``, ``"stages_1"`` or ``"block2/conv"``; NNX: the
attribute names and list indices, e.g. ``"blocks/0/conv1"``), or by a name of
your own: ``sites={"early": "block2/conv1"}``. The site is the output of the
submodule's ``__call__`` at its **first** call in a forward pass (a submodule
applied twice is intercepted at its first application). The output must be one
array ``[N, …, C]`` (channels last).

Both wrappers are `cfmod_jax.Generator` objects: `hybrids`, `influence_maps`,
`influence_map_sums`, `elementary_influence_maps` and `cfmod_jax.analysis.run`
work unchanged, with masks as jit arguments and the site activations of each
pair computed once and reused by every mask.

How it works and what it costs:

* **prefix** (``variables, latents -> activations``) runs the network until the
  site's ``__call__`` returns, then stops (an internal exception carries the
  activations out), so nothing after the site is traced or computed.
* **suffix** (``variables, h, latents -> images``) runs the whole ``__call__``
  on ``latents`` (z1's codes in a hybrid) and, when the site's ``__call__`` is
  reached, returns ``h`` instead of calling it. The layers *before* the site
  are therefore traced again in the suffix, because ``__call__`` is monolithic.
  Under `jax.jit` (which every intervention uses) their results are dead code
  when nothing but the site reads them, and XLA removes them: for a sequential
  network the compiled suffix costs the same FLOPs as a staged one (checked in
  tests/test_wrap.py with XLA's cost analysis). Layers before the site whose
  outputs reach the image by another path (skip or residual connections) do run,
  on z1's codes — exactly the counterfactual: only the site is changed.
* Elementary influence maps use the one-hot-mask path: wrapped generators have
  no linear split of the layer after the site (`Generator.has_linear_split` is
  False), so they do not get the staged generators' fast EIM path.

`LinenGenerator.init_variables(key)` and ``gen.with_variables(variables)`` give
an untrained twin for baselines (NNX has no generic re-initialisation: build the
model again with another seed and wrap it).

Mechanisms: Linen uses `flax.linen.intercept_methods`; NNX splits the model
once (`nnx.split`) and, inside the pure functions, merges a fresh copy and puts
a proxy in place of the site's submodule (attribute reads and ``isinstance``
see the submodule; its ``__call__`` is hooked). The copy is discarded: the
user's model is never changed. Limits: a site inside a lifted transform
(``nn.remat``, ``nn.scan``, ``nn.jit``, ``nnx.remat``, …), including the
transformed module's own output in Linen, cannot be taken out of it (it is a
tracer of the inner transform; wrapping raises a ValueError); an NNX submodule reached
through another reference than its path is not seen by the hook (wrapping
raises a ValueError if the site is never called). Inference mode: Linen passes
``apply_kwargs`` (e.g. ``{"train": False}``) to every ``apply``; NNX calls
``.eval()`` on its copy (BatchNorm uses running averages, Dropout is off).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfmod_jax.generator import Generator


class _SiteReached(BaseException):
  """Carries the site's activations out of the forward pass (ends the prefix).

  A BaseException so that a user's ``except Exception`` does not swallow it."""

  def __init__(self, value):
    super().__init__()
    self.value = value


def _normalise_sites(sites) -> dict[str, str]:
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


def _latent_shape(module, latent_shape) -> tuple[int, ...]:
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


class _Wrapped(Generator):
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
    sites = _normalise_sites(sites)
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
  ) -> _Wrapped:
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
        raise _SiteReached(call())
      return call()

    try:
      self._run(variables, latents, hook, (path,))
    except _SiteReached as reached:
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


def _check_image(out, name):
  if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 4:
    raise ValueError(f"the forward pass of {name} must return images [N, H, W, C], got {out}")


def _shape_or_none(out):
  if isinstance(out, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(out, "shape"):
    return jax.ShapeDtypeStruct(tuple(out.shape), out.dtype)
  return None


# Marks a submodule output traced inside a lifted transform (an inner trace's tracer).
_LIFTED = "lifted"
_TRACE_BATCH = 3  # batch size of the shape-only forward pass that finds the submodules


def _record_calls(run: Callable, variables, latent_shape) -> tuple[dict, Any]:
  """Traces one forward pass (no FLOPs) and records every submodule call's output."""
  calls: dict[str, jax.ShapeDtypeStruct | None] = {}

  def trace(v, z):
    def hook(p, call):
      out = call()
      if p not in calls:
        inner = isinstance(out, jax.core.Tracer) and (
          getattr(out, "_trace", None) is not getattr(z, "_trace", None)
        )
        calls[p] = _LIFTED if inner else _shape_or_none(out)
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


# ---- Linen ---------------------------------------------------------------------------------
class LinenGenerator(_Wrapped):
  """A Linen generator with sites at named submodules (see the module docstring).

  Attributes (beyond `Generator`'s): ``site_paths`` (site name → submodule path),
  ``submodule_paths`` (every submodule called in a forward pass, in call order).
  """

  def __init__(
    self,
    module: nn.Module,
    variables: Any,
    sites: Sequence[str] | Mapping[str, str],
    *,
    latent_shape: Sequence[int] | None = None,
    apply_kwargs: Mapping | None = None,
    method: Callable | str | None = None,
    name: str | None = None,
    latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
  ) -> None:
    if not isinstance(module, nn.Module):
      raise ValueError(f"module must be a flax.linen.Module, got {type(module).__name__}")
    self._apply_kwargs = dict(apply_kwargs or {})
    self._method = method
    name = name or type(module).__name__
    shape = _latent_shape(module, latent_shape)
    self.module = module
    calls, image = _record_calls(self._run, variables, shape)
    _check_image(image, name)
    self._setup(module, variables, sites, shape, name, latent_sampler, calls)

  def init_variables(self, key: jax.Array) -> Any:
    """Freshly initialised variables (``module.init``) for `with_variables`."""
    z = jnp.zeros((1, *self.latent_shape), jnp.float32)
    return jax.jit(functools.partial(self.module.init, method=self._method, **self._apply_kwargs))(
      key, z
    )

  def _run(self, variables, latents, hook, paths=None):
    # The interceptor sees every call (hook ignores the paths it does not want).
    if paths is not None and not paths:
      return self.module.apply(variables, latents, method=self._method, **self._apply_kwargs)

    active = set()  # a __call__ that calls super().__call__ is hooked once, outside

    def interceptor(next_fun, args, kwargs, context):
      path = "/".join(context.module.path)
      if context.method_name != "__call__" or not path or path in active:
        return next_fun(*args, **kwargs)
      active.add(path)
      try:
        return hook(path, lambda: next_fun(*args, **kwargs))
      finally:
        active.discard(path)

    with nn.intercept_methods(interceptor):
      return self.module.apply(variables, latents, method=self._method, **self._apply_kwargs)


def wrap_linen(
  module: nn.Module,
  variables: Any,
  sites: Sequence[str] | Mapping[str, str],
  *,
  latent_shape: Sequence[int] | None = None,
  apply_kwargs: Mapping | None = None,
  method: Callable | str | None = None,
  name: str | None = None,
  latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
) -> LinenGenerator:
  """Wraps an unmodified Linen generator; the outputs of named submodules are sites.

  Args:
    module: a `flax.linen.Module` whose ``apply(variables, z, **apply_kwargs)``
      (or ``method``) returns images ``[N, H, W, 3]``.
    variables: its variables (``{'params': ..., 'batch_stats': ...}``).
    sites: submodule paths (``"Conv_1"``, ``"block2/conv"``; the site's name is
      the path) or a mapping ``{site name: path}``. Order does not matter:
      ``gen.sites`` lists them in forward order.
    latent_shape: shape of one latent code (default: ``module.latent_shape``).
    apply_kwargs: fixed keyword arguments of every forward pass, e.g.
      ``{"train": False}`` for inference mode.
    method: the method to apply instead of ``__call__`` (as in ``Module.apply``).
    name: a label used in outputs (default: the class name).
    latent_sampler: ``(key, n) -> [n, *latent_shape]`` (default: standard normal).
  Returns:
    A `LinenGenerator` (a `cfmod_jax.Generator`).
  Raises:
    ValueError: an unknown submodule path (the message lists the available
      paths), a site whose output is not one array, or output that is not images.
  """
  return LinenGenerator(
    module,
    variables,
    sites,
    latent_shape=latent_shape,
    apply_kwargs=apply_kwargs,
    method=method,
    name=name,
    latent_sampler=latent_sampler,
  )


# ---- NNX -----------------------------------------------------------------------------------
class _Hook:
  """Stands in for a submodule inside a throw-away copy of an NNX model: its
  ``__call__`` goes through ``hook``; attribute reads and ``isinstance`` see the
  submodule."""

  def __init__(self, inner, path: str, hook):
    self.__dict__.update(_inner=inner, _path=path, _hook=hook)

  def __getattr__(self, name):
    return getattr(self.__dict__["_inner"], name)

  @property
  def __class__(self):
    return type(self.__dict__["_inner"])

  def __call__(self, *args, **kwargs):
    d = self.__dict__
    return d["_hook"](d["_path"], lambda: d["_inner"](*args, **kwargs))


def _child(parent, key):
  if isinstance(key, int) or isinstance(parent, Mapping):
    return parent[key]
  return getattr(parent, key)


def _set_child(parent, key, value):
  if isinstance(key, int) or isinstance(parent, Mapping):
    parent[key] = value
  else:
    setattr(parent, key, value)


class NNXGenerator(_Wrapped):
  """An NNX generator with sites at named submodules (see the module docstring).

  ``variables`` is the model's `nnx.State` (random-number streams excluded: they
  are kept as constants); ``module`` is its `nnx.GraphDef`. The pure functions
  merge a fresh copy of the model from ``(module, variables)`` at every call.
  """

  def __init__(
    self,
    model: nnx.Module,
    sites: Sequence[str] | Mapping[str, str],
    *,
    latent_shape: Sequence[int] | None = None,
    call_kwargs: Mapping | None = None,
    eval_mode: bool = True,
    name: str | None = None,
    latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
  ) -> None:
    if not isinstance(model, nnx.Module):
      raise ValueError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    name = name or type(model).__name__
    shape = _latent_shape(model, latent_shape)
    twin = nnx.merge(*nnx.split(model))  # never change the user's model
    if eval_mode:
      twin.eval()
    graphdef, self._rng_state, variables = nnx.split(twin, nnx.RngState, ...)
    self.module = graphdef
    self._call_kwargs = dict(call_kwargs or {})
    self._key_paths = {"/".join(map(str, p)): p for p, _ in nnx.iter_modules(twin) if p}
    calls, image = _record_calls(self._run, variables, shape)
    _check_image(image, name)
    self._setup(graphdef, variables, sites, shape, name, latent_sampler, calls)

  def init_variables(self, key: jax.Array) -> Any:
    """Not available: NNX builds variables in the model's constructor."""
    del key
    raise ValueError(
      f"{self.name}: an NNX model has no generic re-initialisation; build it "
      "again with another seed, wrap it with wrap_nnx, and pass that (e.g. as "
      "analysis.run(..., baseline=...))"
    )

  def _run(self, variables, latents, hook, paths=None):
    model = nnx.merge(self.module, self._rng_state, variables)
    keys = [self._key_paths[p] for p in (self._key_paths if paths is None else paths)]
    # Deepest first: a submodule is hooked inside its parent before the parent is.
    for k in sorted(keys, key=len, reverse=True):
      parent = model
      for part in k[:-1]:
        parent = _child(parent, part)
      child = _child(parent, k[-1])
      if callable(child):
        _set_child(parent, k[-1], _Hook(child, "/".join(map(str, k)), hook))
    return model(latents, **self._call_kwargs)


def wrap_nnx(
  model: nnx.Module,
  sites: Sequence[str] | Mapping[str, str],
  *,
  latent_shape: Sequence[int] | None = None,
  call_kwargs: Mapping | None = None,
  eval_mode: bool = True,
  name: str | None = None,
  latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
) -> NNXGenerator:
  """Wraps an unmodified NNX generator; the outputs of named submodules are sites.

  Args:
    model: a `flax.nnx.Module` whose ``model(z, **call_kwargs)`` returns images
      ``[N, H, W, 3]``. It is not modified (the wrapper works on a copy).
    sites: submodule paths (attribute names and list indices joined by ``'/'``,
      e.g. ``"blocks/0/conv1"``) or a mapping ``{site name: path}``.
    latent_shape: shape of one latent code (default: ``model.latent_shape``).
    call_kwargs: fixed keyword arguments of every forward pass.
    eval_mode: call ``.eval()`` on the copy (BatchNorm running averages, no dropout).
    name, latent_sampler: as in `wrap_linen`.
  Returns:
    An `NNXGenerator` (a `cfmod_jax.Generator`) whose ``variables`` is an `nnx.State`.
  Raises:
    ValueError: as `wrap_linen`.
  """
  return NNXGenerator(
    model,
    sites,
    latent_shape=latent_shape,
    call_kwargs=call_kwargs,
    eval_mode=eval_mode,
    name=name,
    latent_sampler=latent_sampler,
  )


__all__: Sequence[str] = ("LinenGenerator", "NNXGenerator", "wrap_linen", "wrap_nnx")
