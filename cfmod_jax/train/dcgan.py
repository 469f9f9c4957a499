"""DCGAN training (Radford et al. 2016) with the non-saturating GAN loss.

Discriminator (`cfmod_jax.models.DCGANDiscriminator`): 4×4 stride-2 convolutions
64×64×3 → 32×32×d → 16×16×2d → 8×8×4d → 4×4×8d (LeakyReLU 0.2, BatchNorm on all
but the first), then a 4×4 'VALID' convolution to one logit. Generator:
`cfmod_jax.models.DCGANGenerator`.

One step (both networks in training mode, BatchNorm on batch statistics):

1. ``fake = G(z)`` once, keeping its VJP (G's parameters are those before the step);
2. D update on ``softplus(-D(x)) + softplus(D(fake))`` (real and fake batches
   through D separately, as in the reference implementation);
3. G update on the non-saturating loss ``softplus(-D'(fake))`` with the
   *updated* D', back-propagated into G through the VJP of step 1.

Adam(2e-4, β1 = 0.5) for both by default (``config.optimizer``).

``config.ema_decay`` (in [0, 1)): the state also carries an exponential moving
average of G's parameters and BatchNorm statistics,
``ema ← decay · ema + (1 − decay) · new`` after every step; the exported and
sampled generator is the average. GAN training oscillates (the discriminator
wins for a while, the samples drift), and the average smooths this out.
``ema_decay = 0`` exports the last step's G exactly (``0 · ema + 1 · new``).

``config.r1_gamma`` (≥ 0, default 0 = off): adds Mescheder et al.'s (2018) R1
penalty ``γ/2 · E‖∇ₓD(x)‖²`` on real images to D's loss. It keeps D from growing
arbitrarily sharp around the data (with it off, D's real/fake outputs sit at
0.99/0.02 after a few thousand steps and G's samples stop improving).
``config.r1_batch`` (default: the whole batch): the penalty's expectation is taken
over the first ``r1_batch`` real images only (its own D pass, batch statistics of
that sub-batch): the double back-propagation through D triples a step's cost on
the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfmod_jax.models import DCGANDiscriminator, DCGANGenerator
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
class GANState:
  step: jax.Array
  g_params: dict
  g_batch_stats: dict
  d_params: dict
  d_batch_stats: dict
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  ema_params: dict
  ema_batch_stats: dict


def generator(config: ml_collections.ConfigDict) -> DCGANGenerator:
  return DCGANGenerator(latent_dim=config.generator.latent_dim, width=config.generator.width)


def discriminator(config: ml_collections.ConfigDict) -> DCGANDiscriminator:
  return DCGANDiscriminator(width=config.discriminator.width)


def validate(config: ml_collections.ConfigDict) -> None:
  for field in ("generator.latent_dim", "generator.width", "discriminator.width"):
    check_int(config, field, 1)
  check_adam(config)
  check_float(config, "ema_decay", 0.0, 1.0, high_open=True)
  if "r1_gamma" in config:
    check_float(config, "r1_gamma", 0.0, float("inf"))
  if "r1_batch" in config:
    check_int(config, "r1_batch", 1)


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> GANState:
  kg, kd = jax.random.split(key)
  z = jnp.zeros((1, config.generator.latent_dim), jnp.float32)
  g_vars = generator(config).init(kg, z)
  d_vars = discriminator(config).init(kd, jnp.zeros((1, 64, 64, 3), jnp.float32))
  tx = adam(config)
  return GANState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_vars["params"],
    g_batch_stats=g_vars["batch_stats"],
    d_params=d_vars["params"],
    d_batch_stats=d_vars["batch_stats"],
    g_opt_state=tx.init(g_vars["params"]),
    d_opt_state=tx.init(d_vars["params"]),
    ema_params=g_vars["params"],
    ema_batch_stats=g_vars["batch_stats"],
  )


def train_step(
  config: ml_collections.ConfigDict, state: GANState, batch: Mapping[str, jax.Array], key: jax.Array
) -> tuple[GANState, dict[str, jax.Array]]:
  gen, disc, tx = generator(config), discriminator(config), adam(config)
  real = batch["images"]
  z = jax.random.normal(key, (real.shape[0], config.generator.latent_dim), jnp.float32)

  def g_forward(g_params):
    return gen.apply(
      {"params": g_params, "batch_stats": state.g_batch_stats},
      z,
      train=True,
      mutable=["batch_stats"],
    )

  fake, g_vjp, g_updates = jax.vjp(g_forward, state.g_params, has_aux=True)

  r1_gamma = float(config.get("r1_gamma", 0.0))
  r1_batch = int(config.get("r1_batch", real.shape[0]))

  def d_loss_fn(d_params):
    def d_real(images):
      logits, upd = disc.apply(
        {"params": d_params, "batch_stats": state.d_batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
      )
      return jnp.sum(logits), (logits, upd)

    _, (logits_real, upd) = d_real(real)
    if r1_gamma > 0.0:  # static config value, not a traced one
      grad_x = jax.grad(lambda x: d_real(x)[0])(real[:r1_batch])
      r1 = jnp.mean(jnp.sum(jnp.square(grad_x), axis=(1, 2, 3)))
    else:
      r1 = jnp.zeros((), jnp.float32)
    logits_fake, upd = disc.apply(
      {"params": d_params, "batch_stats": upd["batch_stats"]},
      jax.lax.stop_gradient(fake),
      train=True,
      mutable=["batch_stats"],
    )
    loss = jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake))
    return loss + 0.5 * r1_gamma * r1, (upd["batch_stats"], logits_real, logits_fake, r1)

  (d_loss, (d_stats, logits_real, logits_fake, r1)), d_grads = jax.value_and_grad(
    d_loss_fn, has_aux=True
  )(state.d_params)
  d_upd, d_opt_state = tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_upd)

  def g_loss_fn(images):  # non-saturating: -log D(G(z)) with the updated D
    logits, _ = disc.apply(
      {"params": d_params, "batch_stats": d_stats}, images, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(jax.nn.softplus(-logits))

  g_loss, d_images = jax.value_and_grad(g_loss_fn)(fake)
  (g_grads,) = g_vjp(d_images)
  g_upd, g_opt_state = tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_upd)

  decay = config.ema_decay

  new_state = GANState(
    step=state.step + 1,
    g_params=g_params,
    g_batch_stats=g_updates["batch_stats"],
    d_params=d_params,
    d_batch_stats=d_stats,
    g_opt_state=g_opt_state,
    d_opt_state=d_opt_state,
    ema_params=moving_average(state.ema_params, g_params, decay),
    ema_batch_stats=moving_average(state.ema_batch_stats, g_updates["batch_stats"], decay),
  )
  metrics = {
    "d_loss": d_loss,
    "g_loss": g_loss,
    "d_real": jnp.mean(jax.nn.sigmoid(logits_real)),
    "d_fake": jnp.mean(jax.nn.sigmoid(logits_fake)),
    "r1": r1,
  }
  return new_state, metrics


def export_spec(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  return "dcgan", {"latent_dim": config.generator.latent_dim, "width": config.generator.width}


# G's variables as exported and sampled: the moving average (``config.ema_decay``).
EXPORT_PATHS = {"params": "ema_params", "batch_stats": "ema_batch_stats"}


def export_variables(state: GANState) -> dict[str, Any]:
  """G's variables as exported and sampled (`EXPORT_PATHS`)."""
  return state_variables(state, EXPORT_PATHS)


def sample(config: ml_collections.ConfigDict, state: GANState, latents: jax.Array) -> jax.Array:
  return generator(config).apply(export_variables(state), latents)


TRAINER = Trainer(
  name="dcgan",
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
  "GANState",
  "TRAINER",
  "create_state",
  "discriminator",
  "export_spec",
  "export_variables",
  "generator",
  "sample",
  "train_step",
  "validate",
]
