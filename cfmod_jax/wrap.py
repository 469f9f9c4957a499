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

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from cfmod_jax import _wrapped


# ---- Linen ---------------------------------------------------------------------------------
class LinenGenerator(_wrapped.Wrapped):
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
    shape = _wrapped.latent_shape_of(module, latent_shape)
    self.module = module
    calls, image = _wrapped.record_calls(self._run, variables, shape)
    _wrapped.check_image(image, name)
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


class NNXGenerator(_wrapped.Wrapped):
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
    shape = _wrapped.latent_shape_of(model, latent_shape)
    twin = nnx.merge(*nnx.split(model))  # never change the user's model
    if eval_mode:
      twin.eval()
    graphdef, self._rng_state, variables = nnx.split(twin, nnx.RngState, ...)
    self.module = graphdef
    self._call_kwargs = dict(call_kwargs or {})
    self._key_paths = {"/".join(map(str, p)): p for p, _ in nnx.iter_modules(twin) if p}
    calls, image = _wrapped.record_calls(self._run, variables, shape)
    _wrapped.check_image(image, name)
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
