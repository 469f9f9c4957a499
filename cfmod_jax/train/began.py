"""BEGAN training (Berthelot, Schumm & Metz 2017).

The discriminator is an autoencoder (`cfmod_jax.models.BEGANDiscriminator`); its
L1 reconstruction loss ``L(v) = mean |v − D(v)|`` is low for what it thinks is real.
With ``k_t ∈ [0, 1]`` (a state variable, starts at ``config.k_init``):

    L_D = L(x) − k_t · L(G(z))          L_G = L(G(z))
    k_{t+1} = clip(k_t + λ_k · (γ · L(x) − L(G(z))), 0, 1)
    M_global = L(x) + |γ · L(x) − L(G(z))|     (convergence measure, logged)

γ = ``config.gamma`` (diversity ratio), λ_k = ``config.lambda_k``. Both networks
are updated simultaneously from the same ``G(z)`` (as in the paper); Adam with
``config.optimizer`` for each.

``config.generator.skip`` gives the generator BEGAN's skip connections (see
`cfmod_jax.models.BEGANGenerator`). With ``config.generator.batch_norm`` the generator has
BatchNorm layers, run in training mode (batch statistics) inside the step and
with their running averages everywhere else (samples, export, analysis); the
discriminator never has any (as in the paper).

``config.mode_seeking`` (λ_ms ≥ 0, default 0 = off): adds Mao et al.'s (2019)
mode-seeking term to G's loss, ``λ_ms / (r + 1e-5)`` with
``r = mean_i mean|G(z_i) − G(z'_i)| / mean|z_i − z'_i|`` over the pairs formed by the
first and second half of the batch's latents: small when two latents give nearly the
same image, so it penalises the collapse onto one background colour that BEGAN's
reconstruction energy does not see (any flat colour is as easy to reconstruct as
another). It reaches G only; D's update is unchanged.

``config.feature_matching`` (λ_fm ≥ 0, default 0 = off): adds to G's loss
``λ_fm · [mean_j (μ_j^real − μ_j^fake)² + mean_j (σ_j^real − σ_j^fake)²] / mean_j var_j^real``,
the batch mean μ and standard deviation σ of each dimension j of the discriminator's
encoder code (`cfmod_jax.models.BEGANEncoder`) for the real and the generated batch:
Salimans et al.'s (2016) feature matching with the second moment added and the scale
of the code divided out. The code must describe the background colour for D to
reconstruct real faces, so a generator whose samples share one background has a code
spread smaller than the real one and pays for it. D's parameters are held fixed in this
term (one extra encoder pass, over the fakes; no gradient to D): D's update is unchanged.

``config.ema_decay`` (in [0, 1), default 0): the state carries an exponential moving
average of G's parameters and BatchNorm statistics, ``ema ← decay · ema + (1 − decay)
· new`` after every step; samples, exports and analysis use it. ``ema_decay = 0``
exports the last step's G exactly.

Latents are standard normal (the paper samples z uniformly in [-1, 1]) so that
every shipped generator shares the prior `cfmod_jax.Generator.sample_latents`
draws from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfmod_jax.models import BEGANDiscriminator, BEGANGenerator
from cfmod_jax.train.config import (
  Trainer,
  adam,
  check_adam,
  check_float,
  check_int,
  moving_average,
  state_variables,
)
from cfmod_jax.train.data import training_images


@flax.struct.dataclass
class BEGANState:
  step: jax.Array
  k: jax.Array
  g_params: dict
  g_batch_stats: dict  # empty without config.generator.batch_norm
  d_params: dict
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  ema_params: dict  # G's moving average (config.ema_decay); what is exported
  ema_batch_stats: dict


def generator(config: ml_collections.ConfigDict) -> BEGANGenerator:
  return BEGANGenerator(
    latent_dim=config.generator.latent_dim,
    width=config.generator.width,
    batch_norm=config.generator.get("batch_norm", False),
    skip=config.generator.get("skip", False),
  )


def discriminator(config: ml_collections.ConfigDict) -> BEGANDiscriminator:
  return BEGANDiscriminator(
    latent_dim=config.discriminator.latent_dim, width=config.discriminator.width
  )


def validate(config: ml_collections.ConfigDict) -> None:
  for field in (
    "generator.latent_dim",
    "generator.width",
    "discriminator.latent_dim",
    "discriminator.width",
  ):
    check_int(config, field, 1)
  for flag in ("batch_norm", "skip"):
    if not isinstance(config.generator.get(flag, False), bool):
      raise ValueError(
        f"config.generator.{flag} must be True or False, got {config.generator[flag]!r}"
      )
  check_float(config, "gamma", 0.0, 1.0, low_open=True)
  check_float(config, "lambda_k", 0.0)
  check_float(config, "k_init", 0.0, 1.0)
  if "mode_seeking" in config:
    check_float(config, "mode_seeking", 0.0, float("inf"))
  if "feature_matching" in config:
    check_float(config, "feature_matching", 0.0, float("inf"))
  if "ema_decay" in config:
    check_float(config, "ema_decay", 0.0, 1.0, high_open=True)
  check_adam(config)


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> BEGANState:
  kg, kd = jax.random.split(key)
  g_vars = generator(config).init(kg, jnp.zeros((1, config.generator.latent_dim), jnp.float32))
  g_params = g_vars["params"]
  d_params = discriminator(config).init(kd, jnp.zeros((1, 64, 64, 3), jnp.float32))["params"]
  tx = adam(config)
  return BEGANState(
    step=jnp.zeros((), jnp.int32),
    k=jnp.asarray(config.k_init, jnp.float32),
    g_params=g_params,
    g_batch_stats=g_vars.get("batch_stats", {}),
    d_params=d_params,
    g_opt_state=tx.init(g_params),
    d_opt_state=tx.init(d_params),
    ema_params=g_params,
    ema_batch_stats=g_vars.get("batch_stats", {}),
  )


def encode(disc: nn.Module, d_params: Any, images: jax.Array) -> jax.Array:
  """The discriminator's encoder code of ``images``: [N, latent_dim]."""
  return disc.apply({"params": d_params}, images, method=lambda m, x: m.encoder(x))


def reconstruction_and_code(
  disc: nn.Module, d_params: Any, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """``mean |images − D(images)|`` (a scalar) and D's encoder code of ``images``
  ([N, latent_dim]), from one encoder pass."""
  code = encode(disc, d_params, images)
  recon = disc.apply({"params": d_params}, code, method=lambda m, c: m.decoder(c))
  return jnp.mean(jnp.abs(images - recon)), code


def reconstruction_loss(disc: nn.Module, d_params: Any, images: jax.Array) -> jax.Array:
  """``mean |images − D(images)|`` over the batch and pixels (a scalar)."""
  return reconstruction_and_code(disc, d_params, images)[0]


def scale_gradient(tree: Any, scale: float | jax.Array) -> Any:
  """Identity in the forward pass; multiplies the gradient by ``scale``."""
  return jax.tree.map(
    lambda x: jax.lax.stop_gradient(x) + scale * (x - jax.lax.stop_gradient(x)), tree
  )


def mode_seeking_ratio(images: jax.Array, z: jax.Array) -> jax.Array:
  """Mao et al.'s ratio over the pairs (first half, second half) of a batch.

  ``mean_i [mean|images_i − images_{h+i}| / mean|z_i − z_{h+i}|]``, h = N // 2.
  """
  h = images.shape[0] // 2
  d_images = jnp.mean(jnp.abs(images[:h] - images[h : 2 * h]), axis=(1, 2, 3))
  d_z = jnp.mean(jnp.abs(z[:h] - z[h : 2 * h]), axis=1)
  return jnp.mean(d_images / d_z)


def feature_matching_loss(real_codes: jax.Array, fake_codes: jax.Array) -> jax.Array:
  """Squared differences of the per-dimension batch means and standard deviations
  of two [N, J] code batches, averaged over J, divided by the real codes' mean variance."""

  def moments(codes):
    mean = jnp.mean(codes, axis=0)
    return mean, jnp.sqrt(jnp.mean((codes - mean) ** 2, axis=0) + 1e-8)

  (mean_r, std_r), (mean_f, std_f) = moments(real_codes), moments(fake_codes)
  scale = jnp.mean(std_r**2) + 1e-8
  return (jnp.mean((mean_r - mean_f) ** 2) + jnp.mean((std_r - std_f) ** 2)) / scale


def train_step(
  config: ml_collections.ConfigDict,
  state: BEGANState,
  batch: Mapping[str, jax.Array],
  key: jax.Array,
) -> tuple[BEGANState, dict[str, jax.Array]]:
  gen, disc, tx = generator(config), discriminator(config), adam(config)
  real = batch["images"]
  z = jax.random.normal(key, (real.shape[0], config.generator.latent_dim), jnp.float32)
  mode_seeking = float(config.get("mode_seeking", 0.0))
  feature_matching = float(config.get("feature_matching", 0.0))

  def total_loss(g_params, d_params):
    # One pass of D over the fakes serves both losses: the gradient of
    # L(G(z)) reaches θ_G unchanged (L_G) and θ_D scaled by −k_t (L_D).
    fake, g_updates = gen.apply(
      {"params": g_params, "batch_stats": state.g_batch_stats},
      z,
      train=True,
      mutable=["batch_stats"],
    )
    loss_real, real_code = reconstruction_and_code(disc, d_params, real)
    loss_fake = reconstruction_loss(disc, scale_gradient(d_params, -state.k), fake)
    d_loss = loss_real - state.k * loss_fake
    ratio = mode_seeking_ratio(fake, z)
    total = loss_real + loss_fake
    if mode_seeking > 0.0:  # static config value; the term depends on θ_G only
      total = total + mode_seeking / (ratio + 1e-5)
    fm = jnp.zeros((), jnp.float32)
    if feature_matching > 0.0:  # static; D's parameters held fixed in this term
      frozen = jax.lax.stop_gradient(d_params)
      fake_code = encode(disc, frozen, fake)  # the real code is L(x)'s, without its gradient
      fm = feature_matching_loss(jax.lax.stop_gradient(real_code), fake_code)
      total = total + feature_matching * fm
    aux = (d_loss, loss_real, loss_fake, ratio, fm, g_updates.get("batch_stats", {}))
    return total, aux

  (g_grads, d_grads), (d_loss, loss_real, loss_fake, ratio, fm, g_batch_stats) = jax.grad(
    total_loss, argnums=(0, 1), has_aux=True
  )(state.g_params, state.d_params)
  g_upd, g_opt_state = tx.update(g_grads, state.g_opt_state, state.g_params)
  d_upd, d_opt_state = tx.update(d_grads, state.d_opt_state, state.d_params)
  balance = config.gamma * loss_real - loss_fake
  k = jnp.clip(state.k + config.lambda_k * balance, 0.0, 1.0)
  g_params = optax.apply_updates(state.g_params, g_upd)
  decay = float(config.get("ema_decay", 0.0))

  new_state = BEGANState(
    step=state.step + 1,
    k=k,
    g_params=g_params,
    g_batch_stats=g_batch_stats,
    d_params=optax.apply_updates(state.d_params, d_upd),
    g_opt_state=g_opt_state,
    d_opt_state=d_opt_state,
    ema_params=moving_average(state.ema_params, g_params, decay),
    ema_batch_stats=moving_average(state.ema_batch_stats, g_batch_stats, decay),
  )
  metrics = {
    "d_loss": d_loss,
    "g_loss": loss_fake,
    "loss_real": loss_real,
    "k": state.k,
    "m_global": loss_real + jnp.abs(balance),
    "ms_ratio": ratio,
  }
  if feature_matching > 0.0:
    metrics["feature_matching"] = fm
  return new_state, metrics


def export_spec(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  kwargs = {"latent_dim": config.generator.latent_dim, "width": config.generator.width}
  for flag in ("batch_norm", "skip"):
    if config.generator.get(flag, False):
      kwargs[flag] = True
  return "began", kwargs


# G's variables as exported and sampled: the moving average (``config.ema_decay``);
# no batch_stats without batch norm (an empty subtree is left out).
EXPORT_PATHS = {"params": "ema_params", "batch_stats": "ema_batch_stats"}


def export_variables(state: BEGANState) -> dict[str, Any]:
  """G's variables as exported and sampled (`EXPORT_PATHS`)."""
  return state_variables(state, EXPORT_PATHS)


def sample(config: ml_collections.ConfigDict, state: BEGANState, latents: jax.Array) -> jax.Array:
  return generator(config).apply(export_variables(state), latents)


TRAINER = Trainer(
  name="began",
  validate=validate,
  create_state=create_state,
  train_step=train_step,
  make_batch=training_images,
  export_spec=export_spec,
  export_paths=EXPORT_PATHS,
  sample=sample,
  latent_dim=lambda config: config.generator.latent_dim,
)


__all__ = [
  "BEGANState",
  "TRAINER",
  "create_state",
  "discriminator",
  "export_spec",
  "encode",
  "export_variables",
  "feature_matching_loss",
  "generator",
  "mode_seeking_ratio",
  "reconstruction_and_code",
  "reconstruction_loss",
  "sample",
  "scale_gradient",
  "train_step",
  "validate",
]
