"""Training configs: the `Trainer` bundle, the loop fields and the field checks.

`base_config` holds the fields every config has (`LOOP_FIELDS` only steer the
loop and do not change the compiled step); the model files of `cfmod_jax.train`
add their own fields and check them with `check_int`, `check_float` and
`check_adam`. Errors are ValueErrors naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax

from cfmod_jax._validate import check_seed
from cfmod_jax.runs import select_variables

# Config fields that only steer the loop; they do not change the compiled step.
LOOP_FIELDS = (
  "num_steps",
  "log_every",
  "sample_every",
  "checkpoint_every",
  "keep_checkpoints",
  "num_samples",
  "quality_samples",
)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The pure functions that define one model's training.

  Attributes:
    name: the ``config.model`` value.
    validate: ``config -> None``; raises ValueError for bad trainer fields.
    create_state: ``(config, key) -> state``; a pytree whose ``.step`` is an
      int32 scalar (completed steps).
    train_step: ``(config, state, batch, key) -> (state, metrics)``; metrics is
      a dict of float32 scalars. ``batch`` is ``make_batch``'s dict as arrays.
    make_batch: ``(config, step) -> dict[str, np.ndarray]`` (leading axis =
      ``config.batch_size``); a pure function of ``(config, step)``.
    export_spec: ``config -> (arch, kwargs)`` of the exported module.
    export_paths: ``{collection: 'a/b'}``, the path in the state dict of each
      variable collection of the exported module (`cfmod_jax.runs.select_variables`;
      recorded in every checkpoint, so that loading a run needs no trainer code).
    sample: ``(config, state, latents) -> images [N, 64, 64, 3]`` in [-1, 1],
      or None for models that do not generate (the feature network).
    latent_dim: ``config -> int`` (only used when ``sample`` is set).
  """

  name: str
  validate: Callable[[ml_collections.ConfigDict], None]
  create_state: Callable[..., Any]
  train_step: Callable[..., tuple[Any, dict[str, jax.Array]]]
  make_batch: Callable[[ml_collections.ConfigDict, int], dict[str, np.ndarray]]
  export_spec: Callable[[ml_collections.ConfigDict], tuple[str, dict[str, Any]]]
  export_paths: Mapping[str, str]
  sample: Callable[..., jax.Array] | None = None
  latent_dim: Callable[[ml_collections.ConfigDict], int] | None = None

  @property
  def export_kind(self) -> str:
    """``'generator'``, or ``'featnet'`` for a model that does not generate."""
    return "featnet" if self.sample is None else "generator"

  def export_variables(self, state: Any) -> dict[str, Any]:
    """The exported module's variables of a train state (``export_paths``)."""
    return state_variables(state, self.export_paths)


def state_variables(state: Any, paths: Mapping[str, str]) -> dict[str, Any]:
  """The variables at ``paths`` of a train state (`cfmod_jax.runs.select_variables`)."""
  return select_variables(flax.serialization.to_state_dict(state), paths)


def base_config(model: str) -> ml_collections.ConfigDict:
  """The loop fields every config has; model files add their own fields.

  Fields:
    model: trainer name (dcgan, vae, began, featnet).
    seed: parameter initialisation and per-step random keys.
    dataset: 'synthfaces' (embedded default) or 'celeba' (tfds, read from data_dir).
    data_dir: tfds data_dir holding the prepared celeb_a (array_record), for 'celeba'.
    data_seed: batch ``s`` is ``synthfaces.generate(batch_size, seed=(data_seed, s))``,
      or CelebA batch ``s`` of the stream shuffled by data_seed (`celeba.celeba_batch`).
    batch_size: global batch (a multiple of the number of devices).
    num_steps: total train steps (a resumed run continues up to it).
    log_every: steps between metrics.jsonl lines / progress lines.
    sample_every: steps between sample grids (0: none).
    checkpoint_every: steps between checkpoints (the last step is always saved).
    keep_checkpoints: how many checkpoints to keep.
    num_samples: images in a sample grid.
    quality_samples: images per set of the Fréchet distance at export.
  """
  return ml_collections.ConfigDict(
    {
      "model": model,
      "dataset": "synthfaces",
      "data_dir": "",
      "seed": 0,
      "data_seed": 0,
      "batch_size": 64,
      "num_steps": 1000,
      "log_every": 50,
      "sample_every": 500,
      "checkpoint_every": 500,
      "keep_checkpoints": 2,
      "num_samples": 64,
      "quality_samples": 2000,
    }
  )


def check_int(config: ml_collections.ConfigDict, field: str, minimum: int = 1) -> None:
  """Checks that ``config.<field>`` (dotted: ``generator.width``) is an integer
  >= ``minimum`` (not a bool)."""
  value = config
  for part in field.split("."):
    if part not in value:
      raise ValueError(f"config.{field} is missing")
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"config.{field} must be an integer >= {minimum}, got {value!r}")


def check_float(
  config: ml_collections.ConfigDict,
  field: str,
  low: float,
  high: float = float("inf"),
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Checks that ``config.<field>`` is a finite number in the given interval."""
  value = config
  for part in field.split("."):
    if part not in value:
      raise ValueError(f"config.{field} is missing")
    value = value[part]
  ok = (
    isinstance(value, (int, float, np.floating, np.integer))
    and not isinstance(value, bool)
    and bool(np.isfinite(value))
  )
  if ok:
    ok = (value > low if low_open else value >= low) and (
      value < high if high_open else value <= high
    )
  if not ok:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    raise ValueError(f"config.{field} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def adam(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam from ``config.optimizer`` (learning_rate, b1, b2), as every trainer uses."""
  o = config.optimizer
  return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)


def moving_average(old: Any, new: Any, decay: float) -> Any:
  """``decay · old + (1 − decay) · new`` leaf by leaf (decay 0: ``new`` exactly)."""
  return jax.tree.map(lambda o, n: decay * o + (1.0 - decay) * n, old, new)


def check_adam(config: ml_collections.ConfigDict) -> None:
  """ValueError unless ``config.optimizer`` holds a valid `adam` setting."""
  check_float(config, "optimizer.learning_rate", 0.0, low_open=True)
  check_float(config, "optimizer.b1", 0.0, 1.0, high_open=True)
  check_float(config, "optimizer.b2", 0.0, 1.0, high_open=True)


def check_config_seed(config: ml_collections.ConfigDict, field: str) -> None:
  """Checks that ``config.<field>`` is a seed (`cfmod_jax._validate.check_seed`)."""
  if field not in config:
    raise ValueError(f"config.{field} is missing")
  check_seed(config[field], f"config.{field}")


__all__ = [
  "LOOP_FIELDS",
  "Trainer",
  "adam",
  "base_config",
  "check_adam",
  "check_config_seed",
  "check_float",
  "check_int",
  "state_variables",
]
