"""β-VAE training (Higgins et al. 2017) on 64×64 images in [-1, 1].

Loss per image (averaged over the batch), with the encoder's Gaussian
posterior ``q(z|x) = N(mean, exp(logvar))`` and one reparameterised sample:

    loss = NLL(x | x̂) + β · KL(q(z|x) ‖ N(0, I)),   x̂ = decoder(z) ∈ [-1, 1]

``config.likelihood`` picks the NLL (summed over the 64·64·3 values):

* ``'gaussian'`` (default): ``Σ (x − x̂)² / (2 σ²)`` — a Gaussian with mean x̂ and
  fixed standard deviation ``σ = config.obs_sigma`` (in [-1, 1] units; the
  constant ``log σ√2π`` is dropped). σ trades reconstruction against the KL
  exactly like β does: the objective is that of β' = 2σ²β with σ² = 1/2.
* ``'bernoulli'``: the binary cross-entropy between the targets
  ``t = (x + 1) / 2`` and ``p = (x̂ + 1) / 2`` (clipped to [1e-6, 1 − 1e-6]) — the
  "Bernoulli" likelihood commonly used for images, applied to grey levels.

The generator is the decoder (`cfmod_jax.models.VAEDecoder`); samples are
``decoder(z)`` with ``z ~ N(0, I)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfmod_jax.models import BetaVAE, VAEDecoder
from cfmod_jax.train.config import (
  Trainer,
  adam,
  check_adam,
  check_float,
  check_int,
  state_variables,
)
from cfmod_jax.train.data import training_images

LIKELIHOODS = ("gaussian", "bernoulli")


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def model(config: ml_collections.ConfigDict) -> BetaVAE:
  return BetaVAE(latent_dim=config.generator.latent_dim, width=config.generator.width)


def validate(config: ml_collections.ConfigDict) -> None:
  check_int(config, "generator.latent_dim", 1)
  check_int(config, "generator.width", 1)
  check_float(config, "beta", 0.0)
  check_float(config, "obs_sigma", 0.0, low_open=True)
  if config.likelihood not in LIKELIHOODS:
    raise ValueError(
      f"config.likelihood={config.likelihood!r} is unknown; expected one of "
      f"{', '.join(LIKELIHOODS)}"
    )
  check_adam(config)


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> VAEState:
  k_init, k_sample = jax.random.split(key)
  variables = model(config).init(
    {"params": k_init, "sample": k_sample}, jnp.zeros((1, 64, 64, 3), jnp.float32)
  )
  return VAEState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    opt_state=adam(config).init(variables["params"]),
  )


def negative_log_likelihood(
  config: ml_collections.ConfigDict, x: jax.Array, recon: jax.Array
) -> jax.Array:
  """Per-image NLL ``[N]`` of images ``x`` given decoder means ``recon``."""
  if config.likelihood == "gaussian":
    return jnp.sum(jnp.square(x - recon), axis=(1, 2, 3)) / (2.0 * config.obs_sigma**2)
  t = (x + 1.0) / 2.0
  p = jnp.clip((recon + 1.0) / 2.0, 1e-6, 1.0 - 1e-6)
  return -jnp.sum(t * jnp.log(p) + (1.0 - t) * jnp.log1p(-p), axis=(1, 2, 3))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mean, exp(logvar)) ‖ N(0, I))`` per example, ``[N]``."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def train_step(
  config: ml_collections.ConfigDict, state: VAEState, batch: Mapping[str, jax.Array], key: jax.Array
) -> tuple[VAEState, dict[str, jax.Array]]:
  x = batch["images"]
  vae, tx = model(config), adam(config)

  def loss_fn(params):
    recon, mean, logvar = vae.apply({"params": params}, x, train=True, rngs={"sample": key})
    nll = negative_log_likelihood(config, x, recon)
    kl = kl_divergence(mean, logvar)
    loss = jnp.mean(nll + config.beta * kl)
    return loss, {
      "loss": loss,
      "nll": jnp.mean(nll),
      "kl": jnp.mean(kl),
      "mse": jnp.mean(jnp.square(x - recon)),
    }

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return VAEState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def export_spec(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  return "vae", {"latent_dim": config.generator.latent_dim, "width": config.generator.width}


EXPORT_PATHS = {"params": "params/decoder"}  # the decoder (`models.vae.decoder_variables`)


def export_variables(state: VAEState) -> dict[str, Any]:
  return state_variables(state, EXPORT_PATHS)


def sample(config: ml_collections.ConfigDict, state: VAEState, latents: jax.Array) -> jax.Array:
  decoder = VAEDecoder(latent_dim=config.generator.latent_dim, width=config.generator.width)
  return decoder.apply(export_variables(state), latents)


TRAINER = Trainer(
  name="vae",
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
  "LIKELIHOODS",
  "TRAINER",
  "VAEState",
  "create_state",
  "export_spec",
  "export_variables",
  "kl_divergence",
  "model",
  "negative_log_likelihood",
  "sample",
  "train_step",
  "validate",
]
