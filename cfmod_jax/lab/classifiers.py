"""Image classifiers for `cfmod_jax.lab.robustness`: a `Classifier` is a pure
``apply(params, images [N, H, W, 3] in [-1, 1]) -> logits [N, n_classes]`` with its
parameters (passed to the compiled kernels as arguments), made from a plain function
(`as_classifier`) or from one factor head of the shipped feature network
(`factor_classifier`), and checked against a generator's image shape
(`check_classifier`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from cfmod_jax.lab import quality


# ---- classifiers ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
  """An image classifier as a pure function of its parameters.

  Attributes:
    apply: ``(params, images [N, H, W, 3] float32 in [-1, 1]) -> logits [N, n_classes]``;
      traceable by `jax.jit`.
    params: its parameters (any pytree; passed to the compiled function as an
      argument, not baked in as constants).
    name: a label used in outputs.
  """

  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any = None
  name: str = "classifier"


# A `Classifier`, or a plain function ``images [N, H, W, 3] -> logits [N, n_classes]``.
ClassifierLike = Classifier | Callable[[jax.Array], jax.Array]


def as_classifier(classifier: ClassifierLike, name: str | None = None) -> Classifier:
  """A `Classifier` from itself or from a plain function ``images -> logits``."""
  if isinstance(classifier, Classifier):
    return classifier if name is None else dataclasses.replace(classifier, name=name)
  if not callable(classifier):
    raise TypeError(
      f"classifier must be a Classifier or a function images -> logits, got "
      f"{type(classifier).__name__}"
    )
  fn = classifier
  return Classifier(lambda _, x: fn(x), None, name or getattr(fn, "__name__", "classifier"))


def factor_classifier(featnet: quality.FeatureNet, factor: str = "hair_color") -> Classifier:
  """The head of one categorical factor of a `quality.FeatureNet` as a classifier.

  ``featnet`` is e.g. ``quality.load_featnet()``; images are ``[N, 64, 64, 3]``.
  """
  from cfmod_jax.lab import quality  # pylint: disable=g-import-not-at-top

  names = [n for n, _ in quality.CATEGORICAL]
  if factor not in names:
    raise ValueError(
      f"factor={factor!r} is not a categorical factor of the feature "
      f"network; valid: {', '.join(names)}"
    )
  module = featnet.module
  return Classifier(
    lambda v, x: module.apply(v, x)[1][factor], featnet.variables, f"{featnet.name}:{factor}"
  )


def check_classifier(classifier: Classifier, image_shape: Sequence[int]) -> int:
  """Number of classes; a clear ValueError unless ``apply`` maps images
  ``[N, *image_shape]`` to float logits ``[N, n_classes]`` with ``n_classes ≥ 2``."""
  n = 2
  x = jax.ShapeDtypeStruct((n, *image_shape), jnp.float32)
  try:
    out = jax.eval_shape(classifier.apply, classifier.params, x)
  except Exception as exc:  # pylint: disable=broad-except
    raise ValueError(
      f"classifier {classifier.name!r} failed on images of shape "
      f"[N, {', '.join(map(str, image_shape))}] (the generator's output): "
      f"{type(exc).__name__}: {exc}"
    ) from exc
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != n or shape[1] < 2:
    got = shape if shape is not None else type(out).__name__
    raise ValueError(
      f"classifier {classifier.name!r} must return logits [N, n_classes] "
      f"with n_classes ≥ 2 for images [N, {', '.join(map(str, image_shape))}]"
      f"; for N={n} it returned {got}"
    )
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"classifier {classifier.name!r} must return float logits, got {out.dtype}")
  return int(shape[1])


__all__ = ["Classifier", "ClassifierLike", "as_classifier", "check_classifier", "factor_classifier"]
