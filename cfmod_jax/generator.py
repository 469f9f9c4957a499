"""The generator protocol: a generator is an ordered sequence of stages.

A *site* is the output of every stage but the last (the image). Running the
**prefix** up to a site and the **suffix** from a site are pure functions of
``(variables, latents[, activations])``, so the prefix is computed once and
reused for every intervention at that site.

Writing your own generator takes two steps (see README "Your own generator"):

1. Subclass `StagedGenerator` (a Flax Linen module): create ``self.stages`` in
   ``setup()`` — one module per stage, each called as ``stage(x, train=...)`` —
   and list ``site_names`` (one name per stage but the last).
2. Wrap initialised or trained variables: ``Generator(module, variables)``.

Conditional generators whose later stages also read the latent code (BigGAN's
class and z conditioning) override `StagedGenerator.call_stage`; in a hybrid
those stages receive z1's latent (the counterfactual changes only the site).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.typing import ArrayLike

from cfmod_jax._validate import check_key


class StagedGenerator(nn.Module):
  """Base Linen module for generators written as stages.

  Subclasses define ``setup()`` creating ``self.stages`` (a list of modules) and
  the attributes ``site_names`` (tuple of ``len(stages) - 1`` names) and
  ``latent_shape`` (shape of one latent code, e.g. ``(100,)``).

  ``__call__(latent, h=None, *, start=0, stop=None, train=False)`` runs stages
  ``[start, stop)``: from the latent when ``start == 0``, else from ``h``, the
  activations at site ``start - 1``. ``start``/``stop`` are Python ints (static).
  """

  def call_stage(self, index: int, x: jax.Array, latent: jax.Array, train: bool) -> jax.Array:
    """Runs stage ``index`` on ``x``. Override to feed the latent to a stage."""
    del latent
    return self.stages[index](x, train=train)

  def stage_reads_latent(self, index: int) -> bool:
    """Whether `call_stage` feeds the latent to stage ``index`` (such stages get no
    fast EIM path). Default: any stage of a class that overrides `call_stage`;
    override for a finer answer (reads only dataclass fields: the module is unbound)."""
    del index
    return type(self).call_stage is not StagedGenerator.call_stage

  def __call__(
    self,
    latent: jax.Array,
    h: jax.Array | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    train: bool = False,
  ) -> jax.Array:
    stop = len(self.stages) if stop is None else stop
    x = latent if start == 0 else h
    for i in range(start, stop):
      x = self.call_stage(i, x, latent, train)
    return x

  # Optional linear split of a stage, ``stage(x) = stage.post(stage.pre(x))`` with
  # ``pre`` linear in x and ``stage.pre_delta(delta, start)`` giving each input
  # channel's contribution to ``pre`` alone. Used by the fast EIM path.
  def stage_pre(self, index: int, x: jax.Array) -> jax.Array:
    return self.stages[index].pre(x)

  def stage_pre_delta(self, index: int, delta: jax.Array, start: jax.Array | int) -> jax.Array:
    return self.stages[index].pre_delta(delta, start)

  def stage_post_and_rest(self, index: int, y: jax.Array, latent: jax.Array) -> jax.Array:
    x = self.stages[index].post(y, train=False)
    return self(latent, x, start=index + 1)


class VectorLatentGenerator(StagedGenerator):
  """A `StagedGenerator` whose latent code is a vector of ``latent_dim`` (a field
  the subclass declares)."""

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return (self.latent_dim,)


class SplitStage(nn.Module):
  """A stage written as ``post(pre(x))`` with ``pre`` linear in ``x``.

  Subclasses define ``pre(x)``, ``post(y, train)`` and, for the fast EIM path,
  ``pre_delta(delta, start)`` (each input channel's contribution to ``pre``).
  """

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.post(self.pre(x), train)


def _module_attr(module, name):
  value = getattr(module, name, None)
  if value is None:
    raise TypeError(
      f"module {type(module).__name__} must define `{name}` to be used as a staged generator"
    )
  return value


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  flat = traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {k: tuple(np.shape(v)) for k, v in flat.items() if hasattr(v, "shape")}


_EXPECTED_SHAPES: dict[tuple[type, str], dict[str, tuple[int, ...]] | None] = {}


def _expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]] | None:
  """Flat shapes of ``module.init``'s variables (abstract; cached per module
  class and fields), or None if ``init`` cannot be traced from one latent."""
  cache_key = (type(module), repr(module))
  if cache_key not in _EXPECTED_SHAPES:
    z = jax.ShapeDtypeStruct((1, *module.latent_shape), jnp.float32)
    try:
      shapes = _flat_shapes(jax.eval_shape(module.init, jax.random.key(0), z))
    except Exception:  # pylint: disable=broad-except
      shapes = None
    if len(_EXPECTED_SHAPES) > 64:
      _EXPECTED_SHAPES.clear()
    _EXPECTED_SHAPES[cache_key] = shapes
  return _EXPECTED_SHAPES[cache_key]


def check_variables(module: nn.Module, variables: Any, name: str = "variables") -> None:
  """Raises a ValueError unless ``variables`` has every array that
  ``module.init`` creates, with the same shape (checked abstractly with
  `jax.eval_shape`: nothing is computed). The message names the first
  mismatching path (e.g. ``params/stages_0/Dense_0/kernel``). Extra entries
  are allowed (flax ignores them). Modules whose ``init`` cannot be traced from
  one latent code ``[1, *latent_shape]`` are not checked."""
  if not isinstance(variables, Mapping):
    raise ValueError(
      f"{name} must be a dict of variable collections such as "
      f"{{'params': ...}} (from module.init or a checkpoint), got "
      f"{type(variables).__name__}"
    )
  want = _expected_shapes(module)
  if want is None:
    return  # an unusual module; its own errors will show when it is applied
  have = _flat_shapes(variables)
  order = sorted(want, key=lambda k: (not k.startswith("params/"), k))  # params first
  missing = [k for k in order if k not in have]
  wrong = [k for k in order if k in have and have[k] != want[k]]
  if not (missing or wrong):
    return
  what = type(module).__name__
  if wrong:
    k = wrong[0]
    first = f"{k} has shape {have[k]}, {what} expects {want[k]}"
  else:
    first = f"{missing[0]} is missing"
  more = len(wrong) + len(missing) - 1
  raise ValueError(
    f"{name} do not fit the module {what} (checked against module.init): "
    f"{first}"
    + (f" (and {more} more mismatching or missing entries)" if more else "")
    + "; were they made for another architecture, width or latent_dim?"
  )


def _check_optional_str(value, name: str) -> str | None:
  if value is not None and (not isinstance(value, str) or not value):
    raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
  return value


class Generator:
  """A staged generator with its variables, ready for interventions.

  Attributes:
    module: the `StagedGenerator` Linen module.
    variables: its variables (``{'params': ..., 'batch_stats': ...}``).
    sites: names of the intervention sites, in forward order.
    latent_shape: shape of one latent code.
    name: a label used in outputs.
    dataset: the data set the weights were trained on (``"synthfaces"``,
      ``"celeba"``, …; from a checkpoint's ``checkpoint.json``), or None
      (generators built in code, random initialisations).
    code_version: a version string of the generator's code, part of
      `cfmod_jax.sweep.generator_fingerprint` (needed where Python cannot read the
      source of the generator's classes, e.g. classes made in ``exec``; bump it
      when such code changes so that cached results are not reused).

  Calling the generator on latents ``[N, *latent_shape]`` returns images
  ``[N, H, W, 3] float32`` in [-1, 1], in inference mode.
  """

  # Class-level defaults: subclasses that do not call __init__ (cfmod_jax.wrap) have them.
  dataset: str | None = None
  code_version: str | None = None

  def __init__(
    self,
    module: StagedGenerator,
    variables: Any,
    *,
    name: str | None = None,
    latent_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
    dataset: str | None = None,
    code_version: str | None = None,
  ):
    if not isinstance(module, nn.Module):
      raise ValueError(
        f"module must be a flax.linen Module (a StagedGenerator), got {type(module).__name__}"
      )
    self.module = module
    self.sites: tuple[str, ...] = tuple(_module_attr(module, "site_names"))
    self.latent_shape: tuple[int, ...] = tuple(_module_attr(module, "latent_shape"))
    check_variables(module, variables, "variables")
    self.variables = variables
    self.name = name or type(module).__name__
    self.dataset = _check_optional_str(dataset, "dataset")
    self.code_version = _check_optional_str(code_version, "code_version")
    self._latent_sampler = latent_sampler
    self._jit_cache: dict[Any, Callable] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}

  def __repr__(self):
    return f"Generator({self.name}, sites={self.sites}, latent_shape={self.latent_shape})"

  # ---- sites -----------------------------------------------------------------
  def site_index(self, site: str) -> int:
    """Index of ``site`` in `sites`; a clear ValueError for an unknown site."""
    if not isinstance(site, str) or site not in self.sites:
      raise ValueError(
        f"site={site!r} is not a site of {self.name}; valid sites: {', '.join(self.sites)}"
      )
    return self.sites.index(site)

  def site_shape(self, site: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of the activations at ``site`` (channels last)."""
    self.site_index(site)
    if site not in self._shapes:
      z = jax.ShapeDtypeStruct((1, *self.latent_shape), jnp.float32)
      out = jax.eval_shape(lambda v, z: self.prefix(v, z, site), self.variables, z)
      self._shapes[site] = tuple(out.shape[1:])
    return self._shapes[site]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    z = jax.ShapeDtypeStruct((1, *self.latent_shape), jnp.float32)
    return tuple(jax.eval_shape(self.generate, self.variables, z).shape[1:])

  # ---- pure functions (trace-safe; site is static) ------------------------------
  def prefix(self, variables: Any, latents: jax.Array, site: str) -> jax.Array:
    """Activations at ``site``: ``[N, *latent_shape] -> [N, H, W, C]``."""
    i = self.site_index(site)
    return self.module.apply(variables, latents, start=0, stop=i + 1)

  def suffix(self, variables: Any, h: jax.Array, latents: jax.Array, site: str) -> jax.Array:
    """Images from activations ``h [N, H, W, C]`` at ``site``; ``latents`` are
    the codes that condition later stages (unused by unconditional models)."""
    i = self.site_index(site)
    return self.module.apply(variables, latents, h, start=i + 1)

  def has_linear_split(self, site: str) -> bool:
    """True if the stage after ``site`` splits into a linear ``pre`` (with per-channel
    contributions) and ``post`` — then single-channel hybrids need no full
    convolution of the first layer after the site."""
    i = self.site_index(site)
    if self.module.stage_reads_latent(i + 1):
      return False
    stage = self.module.bind(self.variables).stages[i + 1]
    return all(callable(getattr(stage, m, None)) for m in ("pre", "pre_delta", "post"))

  def suffix_pre(self, variables: Any, h: jax.Array, site: str) -> jax.Array:
    """Linear part of the first stage after ``site``."""
    i = self.site_index(site)
    return self.module.apply(variables, i + 1, h, method=StagedGenerator.stage_pre)

  def suffix_pre_delta(
    self, variables: Any, delta: jax.Array, start: jax.Array | int, site: str
  ) -> jax.Array:
    """``[m, N, …]``: contribution to `suffix_pre` of each of the m channels of
    ``delta [N, H, W, m]`` (channels ``start…start+m−1`` of the site), alone."""
    i = self.site_index(site)
    return self.module.apply(variables, i + 1, delta, start, method=StagedGenerator.stage_pre_delta)

  def suffix_post(self, variables: Any, y: jax.Array, latents: jax.Array, site: str) -> jax.Array:
    """The rest of the suffix after `suffix_pre`: images."""
    i = self.site_index(site)
    return self.module.apply(
      variables, i + 1, y, latents, method=StagedGenerator.stage_post_and_rest
    )

  def generate(self, variables: Any, latents: jax.Array) -> jax.Array:
    """Images ``[N, H, W, 3]`` in [-1, 1] (inference mode)."""
    return self.module.apply(variables, latents)

  # ---- conveniences (jit-compiled, bound to self.variables) ----------------------
  def jitted(self, key: Hashable, make: Callable[[], Callable]) -> Callable:
    """Per-generator cache of compiled functions (one compile per key)."""
    fn = self._jit_cache.get(key)
    if fn is None:
      fn = self._jit_cache[key] = make()
    return fn

  def replicated_variables(self, mesh: jax.sharding.Mesh) -> Any:
    """``self.variables`` replicated on every device of ``mesh`` (all hosts).

    Transferred once per mesh size and variables object and then cached with the
    compiled functions (a sweep calls the sharded kernels once per block);
    replacing ``self.variables`` transfers the new ones on the next call.
    """
    key = ("replicated", mesh.size)
    cached = self._jit_cache.get(key)
    if cached is None or cached[0] is not self.variables:
      placed = jax.tree.map(lambda a: replicate(np.asarray(a), mesh), self.variables)
      cached = self._jit_cache[key] = (self.variables, placed)
    return cached[1]

  def __call__(self, latents: ArrayLike) -> jax.Array:
    latents = check_latents(self, latents, "latents")
    fn = self.jitted("generate", lambda: jax.jit(self.generate))
    return fn(self.variables, latents)

  def run_prefix(self, site: str, latents: ArrayLike) -> jax.Array:
    self.site_index(site)
    latents = check_latents(self, latents, "latents")
    fn = self.jitted(("prefix", site), lambda: jax.jit(functools.partial(self.prefix, site=site)))
    return fn(self.variables, latents)

  def run_suffix(self, site: str, h: ArrayLike, latents: ArrayLike) -> jax.Array:
    self.site_index(site)
    latents = check_latents(self, latents, "latents")
    shape = self.site_shape(site)
    if tuple(np.shape(h)[1:]) != shape or np.shape(h)[0] != latents.shape[0]:
      raise ValueError(
        f"h must have shape [N, {', '.join(map(str, shape))}] with "
        f"N={latents.shape[0]} at site {site!r}, got {np.shape(h)}"
      )
    fn = self.jitted(("suffix", site), lambda: jax.jit(functools.partial(self.suffix, site=site)))
    return fn(self.variables, h, latents)

  def sample_latents(self, key: jax.Array, n: int) -> jax.Array:
    """``n`` latent codes ``[n, *latent_shape]`` from the prior (standard normal
    unless the generator was given its own sampler)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)) or n < 1:
      raise ValueError(f"n must be a positive integer, got {n!r}")
    key = check_key(key, "key")
    if self._latent_sampler is not None:
      return self._latent_sampler(key, int(n))
    return jax.random.normal(key, (int(n), *self.latent_shape), jnp.float32)


def check_latents(gen: Generator, z: ArrayLike, name: str) -> jax.Array:
  """Validates latents ``[N, *latent_shape]`` (N ≥ 1, finite); returns an array."""
  if isinstance(z, jax.core.Tracer):
    if tuple(z.shape[1:]) != gen.latent_shape:
      raise ValueError(
        f"{name} must have shape [N, {', '.join(map(str, gen.latent_shape))}], got {tuple(z.shape)}"
      )
    return z
  arr = np.asarray(z)
  if arr.ndim != 1 + len(gen.latent_shape) or tuple(arr.shape[1:]) != gen.latent_shape:
    raise ValueError(
      f"{name} must have shape [N, {', '.join(map(str, gen.latent_shape))}]"
      f" for {gen.name}, got {arr.shape}"
    )
  if arr.shape[0] == 0:
    raise ValueError(f"{name} is empty: need at least one latent code (N ≥ 1)")
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{name} must be a float array, got dtype {arr.dtype}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains NaN or inf")
  return jnp.asarray(z, jnp.float32)


def stage_names(prefix: str, n: int) -> tuple[str, ...]:
  """``('block1', …, 'blockN')``."""
  return tuple(f"{prefix}{i + 1}" for i in range(n))


def replicate(x: ArrayLike, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host array (identical on every process) replicated on every device of
  ``mesh`` (``jax.device_put`` with one process, assembled per device with several)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def check_generator(gen: Any, name: str = "gen") -> Any:
  """``gen`` if it is a `cfmod_jax.Generator`; else ValueError naming ``name``."""
  if not isinstance(gen, Generator):
    raise ValueError(
      f"{name} must be a cfmod_jax.Generator (e.g. cfmod_jax.load_generator("
      f"'dcgan-synthfaces'), cfmod_jax.init_generator('dcgan') or Generator(module, "
      f"variables)), got {type(gen).__name__} {gen!r:.60}"
    )
  return gen


__all__ = [
  "Generator",
  "SplitStage",
  "StagedGenerator",
  "VectorLatentGenerator",
]
