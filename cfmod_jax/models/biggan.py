"""BigGAN-deep generator (Brock et al. 2019) as stages, for pretrained ImageNet weights.

The computation matches the PyTorch port ``pytorch-pretrained-biggan`` (Hugging
Face) in inference mode, in NHWC layout; `cfmod_jax.models.biggan_convert` turns
its state dicts into our variables (see docs/biggan.md).

Latent code (one array, so BigGAN fits the generator protocol)::

    latent = concat(z, y)            [N, z_dim + num_classes] float32
      z  [N, z_dim]        noise; the prior is truncnorm(-2, 2) · truncation
      y  [N, num_classes]  class vector: one-hot, or any soft mixture of classes

    cond = concat(z, y @ E)          [N, 2 · z_dim]; E = class embedding

``cond`` feeds the first linear layer and the conditional BatchNorm of every
residual block (gain ``1 + cond @ W_scale``, bias ``cond @ W_offset``).

Network (channel width ``ch``; ``config.layers[i] = (upsample, in_mult, out_mult)``)::

    gen_z    dense(cond) → [N, 4, 4, 16·ch]
    block_i  residual block i (4 × [cond BN → ReLU → conv], ×2 nearest upsampling
             inside when upsample); self-attention precedes block
             ``attention_layer_position`` (at 64×64 in the pretrained models)
    output   BN → ReLU → conv3×3 → first 3 channels → tanh → [N, R, R, 3] in [-1, 1]

**Sites:** ``gen_z, block0, …, block{L-1}`` — the output of the first dense layer
and of every residual block, with ``i`` the index into ``config.layers`` (so
``block7`` of BigGAN-deep-256 is 64×64×512, taken *before* the self-attention).

**Hybrids:** every stage after the site reads the latent too; in a hybrid it gets
**z1's** latent — z1's noise and z1's class embedding condition all downstream
BatchNorms. Only the channels at the site come from z2.

**Truncation** is a field of the module (static): it scales the sampled noise and
selects the *standing* BatchNorm statistics. Each BatchNorm keeps ``n_stats``
running means/variances for truncations ``0, 1/(n_stats-1), …, 1`` and
interpolates them exactly as the PyTorch port does (including its weighting).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cfmod_jax import exported
from cfmod_jax._validate import check_positive_int, check_seed
from cfmod_jax.generator import Generator, StagedGenerator
from cfmod_jax.ops import upsample_nearest

# ---- configs -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BigGANConfig:
  """Architecture of a BigGAN-deep generator (same fields and JSON keys as the
  ``config.json`` of ``pytorch-pretrained-biggan``).

  ``layers[i] = (upsample, in_mult, out_mult)``: block i maps ``ch·in_mult`` to
  ``ch·out_mult`` channels. ``class_embed_dim`` is informational: as in the
  PyTorch port, the class embedding has ``z_dim`` features.
  """

  output_dim: int = 256
  z_dim: int = 128
  class_embed_dim: int = 128
  channel_width: int = 128
  num_classes: int = 1000
  layers: tuple[tuple[bool, int, int], ...] = ()
  attention_layer_position: int = 8
  eps: float = 1e-4
  n_stats: int = 51

  def __post_init__(self) -> None:
    object.__setattr__(self, "layers", tuple((bool(u), int(i), int(o)) for u, i, o in self.layers))
    problems = []
    if not self.layers:
      problems.append("layers is empty")
    else:
      if self.layers[0][1] != 16:
        problems.append(
          "layers[0] must take 16·channel_width channels (the 4×4×16ch "
          f"projection), got in_mult={self.layers[0][1]}"
        )
      if self.layers[-1][2] != 1:
        problems.append(
          f"the last layer must output channel_width channels, got out_mult={self.layers[-1][2]}"
        )
      for i, (_, cin, cout) in enumerate(self.layers):
        if i and cin != self.layers[i - 1][2]:
          problems.append(
            f"layers[{i}] takes in_mult={cin} but layers[{i - 1}] gives {self.layers[i - 1][2]}"
          )
        if (
          cout not in (cin, cin // 2)
          or cin * self.channel_width < 4
          or (cin * self.channel_width) % 4
        ):
          problems.append(
            f"layers[{i}]={(cin, cout)}: out_mult must equal in_mult or "
            "in_mult/2 and ch·in_mult must be a positive multiple of 4"
          )
      if not 0 <= self.attention_layer_position < len(self.layers):
        problems.append(
          f"attention_layer_position={self.attention_layer_position} is not "
          f"in [0, {len(self.layers)})"
        )
      elif (self.channel_width * self.layers[self.attention_layer_position][1]) % 8:
        problems.append("the self-attention input must have a multiple of 8 channels")
      elif self.resolutions[self.attention_layer_position] % 2:
        problems.append("the self-attention input must have an even resolution")
      if self.resolution != self.output_dim:
        problems.append(
          f"output_dim={self.output_dim} but the layers produce "
          f"{self.resolution}×{self.resolution} images"
        )
    if self.n_stats < 2:
      problems.append(f"n_stats must be ≥ 2, got {self.n_stats}")
    for name in ("z_dim", "channel_width", "num_classes"):
      try:
        check_positive_int(getattr(self, name), name)
      except ValueError as e:
        problems.append(str(e))
    if problems:
      raise ValueError("invalid BigGAN config: " + "; ".join(problems))

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Input resolution of every block."""
    res, out = 4, []
    for up, _, _ in self.layers:
      out.append(res)
      res *= 2 if up else 1
    return tuple(out)

  @property
  def resolution(self) -> int:
    """Side of the output images."""
    return 4 * 2 ** sum(up for up, _, _ in self.layers)

  @property
  def latent_dim(self) -> int:
    return self.z_dim + self.num_classes

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layers"] = [list(layer) for layer in self.layers]
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> BigGANConfig:
    """From a dict such as the package's ``config.json`` (unknown keys rejected)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown BigGAN config keys: {unknown}")
    return cls(**dict(d))


def _deep_layers(n_blocks_at: Sequence[tuple[int, int]]):
  """Pairs (no upsample, upsample) per stage, as listed in the port's configs."""
  layers = []
  for cin, cout in n_blocks_at:
    layers += [(False, cin, cin), (True, cin, cout)]
  return tuple(layers)


_BASE = dict(
  z_dim=128,
  class_embed_dim=128,
  channel_width=128,
  num_classes=1000,
  attention_layer_position=8,
  eps=1e-4,
  n_stats=51,
)
CONFIGS: dict[str, BigGANConfig] = {
  "biggan-deep-128": BigGANConfig(
    output_dim=128, layers=_deep_layers([(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)]), **_BASE
  ),
  "biggan-deep-256": BigGANConfig(
    output_dim=256,
    layers=_deep_layers([(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)]),
    **_BASE,
  ),
  "biggan-deep-512": BigGANConfig(
    output_dim=512,
    layers=_deep_layers([(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)]),
    **_BASE,
  ),
}


def get_config(config: str | BigGANConfig | Mapping[str, Any]) -> BigGANConfig:
  """A `BigGANConfig` from a name in `CONFIGS`, a dict, or a config."""
  if isinstance(config, BigGANConfig):
    return config
  if isinstance(config, str):
    if config not in CONFIGS:
      raise ValueError(f"config={config!r} is unknown; expected one of {sorted(CONFIGS)}")
    return CONFIGS[config]
  if isinstance(config, Mapping):
    return BigGANConfig.from_dict(config)
  raise TypeError(f"config must be a name, a dict or a BigGANConfig, got {type(config)}")


# ---- validation ------------------------------------------------------------------------


def check_truncation(truncation: Any) -> float:
  """The truncation as a float; ValueError unless it lies in (0, 1]."""
  try:
    t = float(truncation)
  except (TypeError, ValueError):
    raise ValueError(f"truncation must be a number in (0, 1], got {truncation!r}") from None
  if not 0.0 < t <= 1.0:  # also rejects NaN
    raise ValueError(f"truncation must lie in (0, 1], got {truncation!r}")
  return t


def class_vectors(classes: Any, num_classes: int) -> np.ndarray:
  """Class vectors ``[N, num_classes] float32``.

  ``classes`` is either ``[N]`` integer class indices (→ one-hot) or ``[N,
  num_classes]`` non-negative weights (soft classes, returned as given).
  """
  arr = np.asarray(classes)
  if arr.ndim == 1 and (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
    if arr.size == 0:
      raise ValueError("classes is empty: need at least one class")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
      raise ValueError(
        f"class indices must lie in [0, {num_classes}), got {sorted(set(bad.tolist()))[:10]}"
      )
    return np.eye(num_classes, dtype=np.float32)[arr]
  if arr.ndim == 2 and arr.shape[1] == num_classes and np.issubdtype(arr.dtype, np.number):
    arr = arr.astype(np.float32)
    if arr.shape[0] == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0:
      raise ValueError("class vectors must be finite, non-negative and non-empty")
    return arr
  raise ValueError(
    f"classes must be integer indices [N] or class vectors [N, {num_classes}],"
    f" got shape {arr.shape} dtype {arr.dtype}"
  )


# ---- latents -------------------------------------------------------------------------


def truncated_noise(key: jax.Array, n: int, z_dim: int, truncation: float) -> jax.Array:
  """``[n, z_dim]`` noise: standard normal truncated to [-2, 2], times truncation
  (the distribution of the port's ``truncated_noise_sample``)."""
  t = check_truncation(truncation)
  return t * jax.random.truncated_normal(key, -2.0, 2.0, (n, z_dim), jnp.float32)


def make_latents(z: Any, classes: Any, num_classes: int) -> jax.Array:
  """``concat(z, class_vectors(classes))`` → ``[N, z_dim + num_classes] float32``."""
  y = class_vectors(classes, num_classes)
  z = jnp.asarray(z, jnp.float32)
  if z.ndim != 2 or z.shape[0] != y.shape[0]:
    raise ValueError(f"z must have shape [N, z_dim] with N={y.shape[0]} classes, got {z.shape}")
  return jnp.concatenate([z, jnp.asarray(y)], axis=1)


def split_latents(latents: jax.Array, z_dim: int) -> tuple[jax.Array, jax.Array]:
  """``[N, z_dim + num_classes] → (z [N, z_dim], class vectors [N, num_classes])``."""
  return latents[:, :z_dim], latents[:, z_dim:]


def sample_latents_for_classes(
  key: jax.Array,
  classes: Any,
  truncation: float = 0.4,
  config: str | BigGANConfig = "biggan-deep-256",
) -> jax.Array:
  """Latents ``[N, z_dim + num_classes]`` with truncated noise for given classes.

  Args:
    key: a `jax.random` key.
    classes: ``[N]`` class indices or ``[N, num_classes]`` (soft) class vectors.
    truncation: in (0, 1]; use the generator's truncation.
    config: gives ``z_dim`` and ``num_classes``.
  """
  cfg = get_config(config)
  y = class_vectors(classes, cfg.num_classes)
  z = truncated_noise(key, y.shape[0], cfg.z_dim, truncation)
  return jnp.concatenate([z, jnp.asarray(y)], axis=1)


# ---- layers ----------------------------------------------------------------------------


def _interpolated_stats(means, variances, truncation: float, n_stats: int):
  """Standing statistics for ``truncation``, computed as the PyTorch port does:
  ``coef, i = modf(t / step)``; ``coef · s[i] + (1 − coef) · s[i + 1]`` (sic)."""
  coef, start = math.modf(truncation / (1.0 / (n_stats - 1)))
  start = int(start)
  if coef == 0.0:
    return means[start], variances[start]
  return (
    means[start] * coef + means[start + 1] * (1 - coef),
    variances[start] * coef + variances[start + 1] * (1 - coef),
  )


class ConditionalBatchNorm(nn.Module):
  """BatchNorm with standing statistics per truncation and a (z, class)-dependent
  gain ``1 + cond @ scale`` and bias ``cond @ offset``. Inference only."""

  features: int
  n_stats: int
  eps: float
  truncation: float

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    means = self.variable("batch_stats", "running_means", jnp.zeros, (self.n_stats, self.features))
    variances = self.variable(
      "batch_stats", "running_vars", jnp.ones, (self.n_stats, self.features)
    )
    mean, var = _interpolated_stats(means.value, variances.value, self.truncation, self.n_stats)
    gain = 1.0 + nn.Dense(self.features, use_bias=False, name="scale")(cond)
    bias = nn.Dense(self.features, use_bias=False, name="offset")(cond)
    return (x - mean) / jnp.sqrt(var + self.eps) * gain[:, None, None, :] + bias[:, None, None, :]


class BatchNorm(nn.Module):
  """Unconditional BatchNorm with standing statistics per truncation."""

  features: int
  n_stats: int
  eps: float
  truncation: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    means = self.variable("batch_stats", "running_means", jnp.zeros, (self.n_stats, self.features))
    variances = self.variable(
      "batch_stats", "running_vars", jnp.ones, (self.n_stats, self.features)
    )
    mean, var = _interpolated_stats(means.value, variances.value, self.truncation, self.n_stats)
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


def _conv(features, kernel, use_bias=True, name=None):
  pad = kernel // 2
  return nn.Conv(
    features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias, name=name
  )


class SelfAttention(nn.Module):
  """SAGAN self-attention: keys and values max-pooled 2×2; ``x + gamma · o``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2))
    theta = _conv(c // 8, 1, False, "theta")(x).reshape(n, h * w, c // 8)
    phi = pool(_conv(c // 8, 1, False, "phi")(x)).reshape(n, h * w // 4, c // 8)
    g = pool(_conv(c // 2, 1, False, "g")(x)).reshape(n, h * w // 4, c // 2)
    attn = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", theta, phi), axis=-1)
    out = jnp.einsum("nqk,nkc->nqc", attn, g).reshape(n, h, w, c // 2)
    out = _conv(c, 1, False, "o_conv")(out)
    gamma = self.param("gamma", nn.initializers.zeros, (1,))
    return x + gamma * out


class GenBlock(nn.Module):
  """BigGAN-deep residual block: bottleneck ``in/4`` channels, 4 × (cond BN, ReLU,
  conv 1×1 | 3×3 | 3×3 | 1×1), ×2 nearest upsampling before the first 3×3; the
  skip path keeps the first ``out`` channels (when ``out < in``) and upsamples."""

  in_features: int
  out_features: int
  upsample: bool
  n_stats: int
  eps: float
  truncation: float

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    mid = self.in_features // 4
    bn = lambda f, i: ConditionalBatchNorm(
      f, self.n_stats, self.eps, self.truncation, name=f"bn_{i}"
    )
    h = _conv(mid, 1, name="conv_0")(nn.relu(bn(self.in_features, 0)(x, cond)))
    h = nn.relu(bn(mid, 1)(h, cond))
    if self.upsample:
      h = upsample_nearest(h, 2)
    h = _conv(mid, 3, name="conv_1")(h)
    h = _conv(mid, 3, name="conv_2")(nn.relu(bn(mid, 2)(h, cond)))
    h = _conv(self.out_features, 1, name="conv_3")(nn.relu(bn(mid, 3)(h, cond)))
    skip = x
    if self.in_features != self.out_features:
      skip = skip[..., : self.in_features // 2]
    if self.upsample:
      skip = upsample_nearest(skip, 2)
    return h + skip


class BlockStage(nn.Module):
  """One stage: (self-attention, if it sits here) then a residual block."""

  in_features: int
  out_features: int
  upsample: bool
  attention: bool
  n_stats: int
  eps: float
  truncation: float

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    if self.attention:
      x = SelfAttention(name="attention")(x)
    return GenBlock(
      self.in_features,
      self.out_features,
      self.upsample,
      self.n_stats,
      self.eps,
      self.truncation,
      name="block",
    )(x, cond)


class ProjectStage(nn.Module):
  """cond ``[N, 2 z_dim]`` → ``[N, 4, 4, features]`` (dense; TF's HWC order)."""

  features: int

  @nn.compact
  def __call__(self, cond: jax.Array) -> jax.Array:
    return nn.Dense(4 * 4 * self.features, name="dense")(cond).reshape(
      cond.shape[0], 4, 4, self.features
    )


class OutputStage(nn.Module):
  """BN → ReLU → conv3×3 to RGB → tanh. (The port's conv has ``ch`` outputs of
  which it keeps 3; the converter keeps only those 3 filters.)"""

  features: int
  n_stats: int
  eps: float
  truncation: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(BatchNorm(self.features, self.n_stats, self.eps, self.truncation, name="bn")(x))
    return jnp.tanh(_conv(3, 3, name="conv_to_rgb")(x))


# ---- the generator ---------------------------------------------------------------------


class BigGANDeep(StagedGenerator):
  """BigGAN-deep generator (inference mode).

  Attributes:
    config: a `BigGANConfig` (see `CONFIGS`).
    truncation: in (0, 1]; selects the standing BatchNorm statistics.

  ``__call__(latents [N, z_dim + num_classes], …) → [N, R, R, 3] float32`` in [-1, 1].
  Sites: ``gen_z, block0 … block{L-1}`` (see the module docstring).
  """

  config: BigGANConfig = CONFIGS["biggan-deep-256"]
  truncation: float = 0.4

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return (self.config.latent_dim,)

  @property
  def site_names(self) -> tuple[str, ...]:
    return ("gen_z",) + tuple(f"block{i}" for i in range(len(self.config.layers)))

  def setup(self) -> None:
    check_truncation(self.truncation)
    cfg, ch, t = self.config, self.config.channel_width, float(self.truncation)
    self.embeddings = nn.Dense(cfg.z_dim, use_bias=False)
    self.gen_z = ProjectStage(16 * ch)
    self.blocks = [
      BlockStage(
        ch * cin, ch * cout, up, i == cfg.attention_layer_position, cfg.n_stats, cfg.eps, t
      )
      for i, (up, cin, cout) in enumerate(cfg.layers)
    ]
    self.output = OutputStage(ch, cfg.n_stats, cfg.eps, t)

  @property
  def stages(self) -> list[nn.Module]:
    return [self.gen_z, *self.blocks, self.output]

  def condition(self, latent: jax.Array) -> jax.Array:
    """``cond = concat(z, y @ E)`` ``[N, 2 z_dim]`` from latents ``[N, z_dim + K]``."""
    z, y = split_latents(latent, self.config.z_dim)
    return jnp.concatenate([z, self.embeddings(y)], axis=1)

  def call_stage(self, index: int, x: jax.Array, latent: jax.Array, train: bool) -> jax.Array:
    if train:
      raise NotImplementedError("BigGANDeep is inference-only (standing BatchNorm stats)")
    if index == len(self.config.layers) + 1:
      return self.output(x)
    cond = self.condition(latent)
    if index == 0:
      return self.gen_z(cond)
    return self.blocks[index - 1](x, cond)


# ---- building, saving, loading -----------------------------------------------------------


def init_variables(config: str | BigGANConfig, seed: int = 0) -> dict[str, Any]:
  """Randomly initialised variables (for tests; real use converts pretrained weights)."""
  seed = check_seed(seed, "seed")
  module = BigGANDeep(get_config(config))
  z = jnp.zeros((1, *module.latent_shape), jnp.float32)
  return jax.jit(module.init)(jax.random.key(seed), z)


def _class_sampler_from(classes, num_classes):
  pool = np.asarray(classes)
  if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer):
    raise ValueError(f"classes must be a non-empty list of class indices, got {classes!r}")
  class_vectors(pool, num_classes)  # range check
  pool = jnp.asarray(pool)
  return lambda key, n: jax.random.choice(key, pool, (n,))


def biggan_generator(
  variables: Any,
  config: str | BigGANConfig = "biggan-deep-256",
  truncation: float = 0.4,
  *,
  class_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
  classes: Sequence[int] | None = None,
  name: str | None = None,
) -> Generator:
  """A `Generator` for BigGAN-deep variables (e.g. from `load_biggan`).

  Args:
    variables: ``{'params': …, 'batch_stats': …}`` of `BigGANDeep`.
    config: a name in `CONFIGS` or a `BigGANConfig`.
    truncation: in (0, 1]; scales sampled noise and selects BatchNorm statistics.
    class_sampler: ``fn(key, n) -> [n] int`` class indices or ``[n, num_classes]``
      class vectors, used by ``sample_latents`` (default: uniform over all classes).
    classes: shortcut for a sampler drawing uniformly among these class indices.
    name: label of the generator.
  Returns:
    a `Generator` whose ``sample_latents(key, n)`` draws truncated noise and classes.
  """
  cfg = get_config(config)
  t = check_truncation(truncation)
  if class_sampler is not None and classes is not None:
    raise ValueError("give class_sampler or classes, not both")
  if classes is not None:
    class_sampler = _class_sampler_from(classes, cfg.num_classes)
  if class_sampler is None:
    class_sampler = lambda key, n: jax.random.randint(key, (n,), 0, cfg.num_classes)

  def sampler(key, n):
    kz, ky = jax.random.split(key)
    y = class_sampler(ky, n)
    if y.ndim == 1:
      y = jax.nn.one_hot(y, cfg.num_classes, dtype=jnp.float32)
    return jnp.concatenate(
      [truncated_noise(kz, n, cfg.z_dim, t), jnp.asarray(y, jnp.float32)], axis=1
    )

  module = BigGANDeep(cfg, t)
  return Generator(
    module, variables, name=name or f"biggan-deep-{cfg.resolution}-t{t:g}", latent_sampler=sampler
  )


ARCH = "biggan-deep"  # the ``arch`` of a BigGAN folder's checkpoint.json


def save_biggan(path: str, variables: Any, config: str | BigGANConfig | Mapping[str, Any]) -> str:
  """Writes BigGAN-deep ``variables`` to the folder ``path`` in cfmod_jax's exported
  format (`cfmod_jax.exported.save_variables`, also `cfmod_jax.checkpoints`'):
  ``variables.msgpack`` + ``checkpoint.json`` with a sha256 manifest, the config in
  the checkpoint's ``kwargs`` (``{"config": BigGANConfig.to_dict()}``), arch
  ``biggan-deep``, dataset ``imagenet``. Returns ``path``."""
  cfg = get_config(config)
  return exported.save_variables(
    path,
    jax.tree.map(np.asarray, variables),
    kind="generator",
    arch=ARCH,
    kwargs={"config": cfg.to_dict()},
    extra={"dataset": "imagenet"},
  )


def _meta_path(path: str) -> str:
  return os.path.join(path, exported.META_FILE)


def is_biggan_folder(path: str) -> bool:
  """Whether ``path`` is a BigGAN folder written by `save_biggan` (its
  ``checkpoint.json`` declares arch ``biggan-deep``)."""
  if not os.path.isfile(_meta_path(path)):
    return False
  try:
    with open(_meta_path(path), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and meta.get("arch") == ARCH


def _abstract_variables(cfg: BigGANConfig) -> Any:
  return jax.eval_shape(
    BigGANDeep(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, cfg.latent_dim), jnp.float32)
  )


def load_biggan_variables(path: str) -> tuple[BigGANConfig, Any]:
  """``(config, variables)`` of a BigGAN folder (`is_biggan_folder`).

  Raises:
    CheckpointError (a ValueError): a folder that is not a BigGAN checkpoint, a
      truncated or corrupted file, variables that do not fit the config.
  """
  if not os.path.isdir(path):
    raise exported.CheckpointError(
      f"{path}: no such folder (expected one written by experiments.convert_biggan)"
    )
  if not os.path.isfile(_meta_path(path)):
    raise exported.CheckpointError(
      f"{path} is not a BigGAN folder: it has no {exported.META_FILE} (written by "
      f"experiments.convert_biggan)"
    )
  meta = exported.read_meta(path)
  kwargs = meta.get("kwargs")
  if meta.get("arch") != ARCH or not isinstance(kwargs, dict) or "config" not in kwargs:
    raise exported.CheckpointError(
      f"{path} is not a BigGAN checkpoint (its {exported.META_FILE} declares arch "
      f"{meta.get('arch')!r}; expected {ARCH!r} with kwargs {{'config': ...}})"
    )
  cfg = BigGANConfig.from_dict(kwargs["config"])
  variables, _ = exported.load_variables(path, _abstract_variables(cfg), kind="generator")
  return cfg, variables


def load_biggan(path: str, truncation: float = 0.4, **kwargs: Any) -> Generator:
  """A `Generator` from a folder written by `save_biggan` (``experiments.convert_biggan``).

  ``kwargs`` go to `biggan_generator` (``class_sampler``, ``classes``, ``name``).
  """
  cfg, variables = load_biggan_variables(path)
  return biggan_generator(variables, cfg, truncation, **kwargs)


__all__ = [
  "CONFIGS",
  "BigGANConfig",
  "BigGANDeep",
  "biggan_generator",
  "get_config",
  "load_biggan",
  "sample_latents_for_classes",
  "save_biggan",
]
