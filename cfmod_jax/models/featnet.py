"""The feature network of `cfmod_jax.lab.quality`: a factor predictor for 64×64 faces.

`FeatNet` predicts the synthetic faces' ground-truth factors
(`cfmod_jax.data.synthfaces.FACTOR_SPECS`): categorical factors (`CATEGORICAL`)
through softmax heads, continuous ones (`CONTINUOUS`, rescaled to [-1, 1]) through
one linear head; `factor_targets` and `decode_regression` convert between factor
units and these targets. Trained by `cfmod_jax.train.featnet`; its penultimate
layer is the feature space of `cfmod_jax.lab.quality.sample_quality`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from cfmod_jax.data import synthfaces

CATEGORICAL = tuple(
  (name, spec[1]) for name, spec in synthfaces.FACTOR_SPECS.items() if spec[0] == "categorical"
)
CONTINUOUS = tuple(
  (name, spec[1], spec[2], int(np.prod(spec[3], dtype=int)))
  for name, spec in synthfaces.FACTOR_SPECS.items()
  if spec[0] == "uniform"
)
NUM_CONTINUOUS = sum(dims for *_, dims in CONTINUOUS)


class FeatNet(nn.Module):
  """Factor predictor for 64×64 faces.

  ``[N, 64, 64, 3]`` in [-1, 1] → ``(features [N, feature_dim], logits, regression)``
  where ``logits`` maps each categorical factor to ``[N, n_values]`` and
  ``regression`` is ``[N, NUM_CONTINUOUS]`` (continuous factors rescaled to [-1, 1],
  in `CONTINUOUS` order). Four 4×4 stride-2 convolutions (w, 2w, 4w, 8w; swish),
  a dense layer to the features (swish), linear heads.
  """

  width: int = 16
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    for mult in (1, 2, 4, 8):
      x = nn.swish(nn.Conv(self.width * mult, (4, 4), (2, 2))(x))
    features = nn.swish(nn.Dense(self.feature_dim, name="features")(x.reshape(x.shape[0], -1)))
    logits = {name: nn.Dense(n, name=f"head_{name}")(features) for name, n in CATEGORICAL}
    regression = nn.Dense(NUM_CONTINUOUS, name="head_continuous")(features)
    return features, logits, regression


def factor_targets(factors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Training targets: ``{name: int32 [N]}`` per categorical factor and
  ``{'continuous': float32 [N, NUM_CONTINUOUS]}`` rescaled to [-1, 1]."""
  out = {name: np.asarray(factors[name], np.int32) for name, _ in CATEGORICAL}
  cols = []
  for name, lo, hi, dims in CONTINUOUS:
    v = np.asarray(factors[name], np.float32).reshape(-1, dims)
    cols.append((v - (lo + hi) / 2) / ((hi - lo) / 2))
  out["continuous"] = np.concatenate(cols, axis=1).astype(np.float32)
  return out


def decode_regression(regression: np.ndarray) -> dict[str, np.ndarray]:
  """Continuous predictions ``[N, NUM_CONTINUOUS]`` back to factor units."""
  out, i = {}, 0
  for name, lo, hi, dims in CONTINUOUS:
    v = regression[:, i : i + dims] * ((hi - lo) / 2) + (lo + hi) / 2
    out[name] = v if dims > 1 else v[:, 0]
    i += dims
  return out


__all__ = [
  "CATEGORICAL",
  "CONTINUOUS",
  "NUM_CONTINUOUS",
  "FeatNet",
  "decode_regression",
  "factor_targets",
]
