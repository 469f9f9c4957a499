"""Training of the feature network `cfmod_jax.models.FeatNet` on the factors.

Loss = Σ over categorical factors of the mean softmax cross-entropy
+ ``config.regression_weight`` · mean over examples of the summed squared error
of the continuous factors (rescaled to [-1, 1]). Batches are synthetic faces with
their factors (`cfmod_jax.models.featnet.factor_targets`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfmod_jax.data import synthfaces
from cfmod_jax.models.featnet import CATEGORICAL, FeatNet, factor_targets
from cfmod_jax.train.config import (
  Trainer,
  adam,
  check_adam,
  check_float,
  check_int,
  state_variables,
)


@flax.struct.dataclass
class FeatNetState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def model(config: ml_collections.ConfigDict) -> FeatNet:
  return FeatNet(width=config.featnet.width, feature_dim=config.featnet.feature_dim)


def validate(config: ml_collections.ConfigDict) -> None:
  check_int(config, "featnet.width", 1)
  check_int(config, "featnet.feature_dim", 2)
  check_float(config, "regression_weight", 0.0)
  check_adam(config)


def make_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
  faces = synthfaces.generate(config.batch_size, seed=(config.data_seed, step))
  return {"images": faces.images, **factor_targets(faces.factors)}


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> FeatNetState:
  params = model(config).init(key, jnp.zeros((1, 64, 64, 3), jnp.float32))["params"]
  return FeatNetState(
    step=jnp.zeros((), jnp.int32), params=params, opt_state=adam(config).init(params)
  )


def losses(
  config: ml_collections.ConfigDict, params: Any, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``(loss, metrics)`` of a batch (per-factor accuracies included)."""
  _, logits, regression = model(config).apply({"params": params}, batch["images"])
  metrics, ce_total = {}, 0.0
  for name, _ in CATEGORICAL:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[name], batch[name]).mean()
    ce_total += ce
    metrics[f"acc_{name}"] = jnp.mean(jnp.argmax(logits[name], -1) == batch[name])
  sq = jnp.mean(jnp.sum(jnp.square(regression - batch["continuous"]), axis=-1))
  loss = ce_total + config.regression_weight * sq
  metrics.update(
    loss=loss,
    cross_entropy=ce_total,
    squared_error=sq,
    rmse=jnp.sqrt(jnp.mean(jnp.square(regression - batch["continuous"]))),
  )
  return loss, metrics


def train_step(
  config: ml_collections.ConfigDict,
  state: FeatNetState,
  batch: Mapping[str, jax.Array],
  key: jax.Array,
) -> tuple[FeatNetState, dict[str, jax.Array]]:
  del key  # deterministic
  grads, metrics = jax.grad(lambda p: losses(config, p, batch), has_aux=True)(state.params)
  updates, opt_state = adam(config).update(grads, state.opt_state, state.params)
  return FeatNetState(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  ), metrics


def export_spec(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  return "featnet", {"width": config.featnet.width, "feature_dim": config.featnet.feature_dim}


EXPORT_PATHS = {"params": "params"}


def export_variables(state: FeatNetState) -> dict[str, Any]:
  return state_variables(state, EXPORT_PATHS)


TRAINER = Trainer(
  name="featnet",
  validate=validate,
  create_state=create_state,
  train_step=train_step,
  make_batch=make_batch,
  export_spec=export_spec,
  export_paths=EXPORT_PATHS,
)


__all__ = [
  "FeatNetState",
  "TRAINER",
  "create_state",
  "export_spec",
  "export_variables",
  "losses",
  "make_batch",
  "model",
  "train_step",
  "validate",
]
