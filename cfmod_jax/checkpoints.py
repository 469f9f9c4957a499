"""Loading and saving trained networks: `load_generator` and its file format.

``load_generator(name_or_path)`` returns a `cfmod_jax.Generator` from

* a shipped name — ``"dcgan-synthfaces"``, ``"vae-synthfaces"``,
  ``"began-synthfaces"`` (folders under ``cfmod_jax/weights/``);
* an exported folder (written by `save_variables`, e.g. by
  ``python -m experiments.train ... --export DIR``);
* a trainer run: its workdir, its ``checkpoints/`` folder or one step folder
  ``checkpoints/<step>`` (orbax, written by `cfmod_jax.train`).

**Exported format**: one folder, ``variables.msgpack`` (inference variables) and
``checkpoint.json`` (architecture, config, sha256 manifest of every array); the
format, its integrity checks and their errors are described and implemented in
`cfmod_jax.exported` (re-exported here: `save_variables`, `load_variables`,
`read_meta`, `CheckpointError`, …). This module adds the names, the architecture
registry, trainer runs and BigGAN folders on top of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp

from cfmod_jax.exported import (  # the format, re-exported as part of this module's API
  DATA_FILE,  # noqa: F401
  EXPORT_FORMAT,  # noqa: F401
  META_FILE,
  ArchitectureMismatchError,
  CheckpointError,
  array_manifest,  # noqa: F401
  array_manifest_shapes,
  check_folder,
  check_structure,
  kwargs_str,
  load_variables,
  read_meta,
  save_variables,
  sha256,  # noqa: F401
  verify_manifest,  # noqa: F401
)
from cfmod_jax.generator import Generator

# The shipped networks: package data, one exported folder per name.
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
SHIPPED_GENERATORS = ("dcgan-synthfaces", "vae-synthfaces", "began-synthfaces")
SHIPPED_FEATNET = "featnet-synthfaces"


# ---- generators ------------------------------------------------------------------------------------
def _expected_variables(module) -> dict[str, Any] | None:
  """Abstract variables of ``module.init`` (None for a module without ``latent_shape``:
  a registered architecture's ``to_generator`` checks its variables itself)."""
  if getattr(module, "latent_shape", None) is None:
    return None
  z = jax.ShapeDtypeStruct((1, *module.latent_shape), jnp.float32)
  return flax.core.unfreeze(jax.eval_shape(module.init, jax.random.key(0), z))


def generator_from_variables(
  arch: str,
  kwargs: Mapping[str, Any],
  variables: Mapping[str, Any],
  *,
  name: str,
  dataset: str | None = None,
) -> Generator:
  """A `Generator` of architecture ``arch(**kwargs)`` with checked ``variables``."""
  from cfmod_jax import models  # pylint: disable=g-import-not-at-top

  module = models.build_module(arch, **kwargs)
  expected = _expected_variables(module)
  if expected is not None:
    check_structure(
      array_manifest_shapes(variables), expected, where=name, arch=f"{arch}({kwargs_str(kwargs)})"
    )
  return models.make_generator(arch, module, variables, name=name, dataset=dataset)


def dataset_of(meta: Mapping[str, Any]) -> str | None:
  """The data set a checkpoint was trained on: its ``dataset`` field (None when not
  recorded)."""
  dataset = meta.get("dataset")
  if dataset is not None and (not isinstance(dataset, str) or not dataset):
    raise CheckpointError(f"{META_FILE}: dataset must be a non-empty string, got {dataset!r}")
  return dataset


def resolve(name_or_path: str, valid_names: Sequence[str] = SHIPPED_GENERATORS) -> str:
  """The folder of a shipped name, or ``name_or_path`` if it exists."""
  if not isinstance(name_or_path, (str, os.PathLike)):
    raise CheckpointError(
      f"name_or_path must be a checkpoint name or a folder path (str), "
      f"got {type(name_or_path).__name__}"
    )
  name_or_path = os.fspath(name_or_path)
  if name_or_path in valid_names:
    return os.path.join(WEIGHTS_DIR, name_or_path)
  if os.path.exists(name_or_path):
    return name_or_path
  raise CheckpointError(
    f"{name_or_path!r} is neither a shipped checkpoint nor an existing "
    f"path; valid names: {', '.join(valid_names)}"
  )


def load_generator(name_or_path: str) -> Generator:
  """A trained `Generator` from a shipped name, an exported folder or a trainer run.

  Args:
    name_or_path: ``"dcgan-synthfaces"``, ``"vae-synthfaces"``,
      ``"began-synthfaces"``, or a path (exported folder; trainer workdir,
      its ``checkpoints/`` folder or a ``checkpoints/<step>`` folder).
      A folder written by ``experiments.convert_biggan`` (arch ``biggan-deep``)
      gives a BigGAN-deep generator (truncation 0.4).
      Checkpoints of architectures added with
      `cfmod_jax.register_architecture` load once that name is registered.
  Returns:
    A `Generator` (float32 variables, inference mode): ``gen(z)`` maps
    ``[N, latent_dim]`` to images ``[N, 64, 64, 3]`` in [-1, 1]. ``gen.dataset``
    is the data set it was trained on (``checkpoint.json``'s ``dataset``, or
    the trainer config's; ``'imagenet'`` for BigGAN).
  Raises:
    CheckpointError: unknown name, truncated or corrupted data, wrong kind.
    ArchitectureMismatchError: arrays that do not fit the declared architecture.
  """
  path = resolve(name_or_path)
  check_folder(path)
  label = (
    os.fspath(name_or_path)
    if name_or_path in SHIPPED_GENERATORS
    else os.path.basename(os.path.normpath(path))
  )
  if is_biggan_folder(path):
    return load_biggan_folder(path, name=label)
  if os.path.isfile(os.path.join(path, META_FILE)):
    meta = read_meta(path)
    if meta.get("kind") != "generator":
      raise CheckpointError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a generator")
    from cfmod_jax import models  # pylint: disable=g-import-not-at-top

    if not isinstance(meta.get("kwargs"), dict) or "arch" not in meta:
      raise CheckpointError(
        f"{os.path.join(path, META_FILE)} must declare 'arch' and a 'kwargs' dict"
      )
    try:
      module = models.build_module(meta["arch"], **meta["kwargs"])
    except (TypeError, ValueError) as e:
      raise CheckpointError(
        f"{path}: cannot build arch={meta['arch']!r} with kwargs {meta['kwargs']}: {e}"
      ) from e
    variables, _ = load_variables(path, _expected_variables(module), kind="generator")
    return models.make_generator(
      meta["arch"], module, variables, name=label, dataset=dataset_of(meta)
    )
  return _generator_from_run(path, label)


def is_biggan_folder(path: str) -> bool:
  """Whether ``path`` is a folder written by `cfmod_jax.models.biggan.save_biggan`
  (``experiments.convert_biggan``; arch ``biggan-deep`` in its ``checkpoint.json``)."""
  from cfmod_jax.models import biggan  # pylint: disable=g-import-not-at-top

  return biggan.is_biggan_folder(path)


def load_biggan_folder(
  path: str, *, name: str | None = None, truncation: float = 0.4, **kwargs: Any
) -> Generator:
  """A BigGAN-deep `Generator` from a converter folder (`is_biggan_folder`),
  ``dataset='imagenet'``; ``truncation`` and ``kwargs`` (``classes``,
  ``class_sampler``) go to `cfmod_jax.models.biggan.load_biggan`. Its errors
  (unreadable files, variables not fitting the config) are `CheckpointError`."""
  from cfmod_jax.models import biggan  # pylint: disable=g-import-not-at-top

  if name is not None:
    kwargs["name"] = name
  try:
    gen = biggan.load_biggan(path, truncation, **kwargs)
  except (OSError, KeyError) as e:
    raise CheckpointError(f"{path} is not a readable BigGAN folder: {e}") from e
  except ValueError as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{path}: {e}") from e
  gen.dataset = "imagenet"
  return gen


def _generator_from_run(path: str, label: str) -> Generator:
  # Function-level: reading a run needs orbax (`cfmod_jax.runs`), not needed for
  # exported folders. No trainer code: the run's metadata names the exported
  # architecture and where its variables lie in the state.
  from cfmod_jax import runs  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(path)
  step = None
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    step, path = int(base), os.path.dirname(os.path.normpath(path))
  elif not (
    os.path.isdir(os.path.join(path, "checkpoints")) or any(n.isdigit() for n in os.listdir(path))
  ):
    raise CheckpointError(
      f"{path} is neither an exported checkpoint (no {META_FILE}) nor a "
      "trainer workdir or checkpoint folder"
    )
  meta, state = runs.read_run(path, step)
  export = meta.get("export")
  if not isinstance(export, Mapping) or not isinstance(export.get("variables"), Mapping):
    raise CheckpointError(f"{path}: its checkpoint metadata lacks the 'export' record")
  if export.get("kind") != "generator":
    raise CheckpointError(f"{path} is a {meta.get('model')!r} run, not a generator")
  variables = jax.device_get(runs.select_variables(state, export["variables"]))
  return generator_from_variables(
    meta["arch"],
    meta["kwargs"],
    variables,
    name=f"{label}@{meta['step']}",
    dataset=meta["config"].get("dataset", "synthfaces"),
  )


__all__ = [
  "ArchitectureMismatchError",
  "CheckpointError",
  "SHIPPED_GENERATORS",
  "load_generator",
  "load_variables",
  "read_meta",
  "save_variables",
]
