"""Trainer checkpoints: orbax folders ``<workdir>/checkpoints/<step>``.

Each checkpoint holds the train state and a JSON item (`checkpoint_meta`) with
the model, the generator's architecture, the config, the cumulative wall time
and a sha256 manifest of every array (`cfmod_jax.exported.array_manifest`),
verified on every restore (`restore_checkpoint`). `load_run` reads a run's
checkpoint back as a train state (resume, export); the format and its reading
without trainers (`cfmod_jax.load_generator`) are in `cfmod_jax.runs`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from cfmod_jax.exported import CheckpointError, array_manifest, check_structure, verify_manifest
from cfmod_jax.runs import (  # the run format, read without trainers; re-exported here
  RUN_FORMAT,
  checkpoint_dir,
  latest_checkpoint,
  open_manager,
  read_meta,
  restore_state,
)
from cfmod_jax.train.config import Trainer
from cfmod_jax.train.mesh import make_mesh, replicated
from cfmod_jax.train.registry import get_trainer
from cfmod_jax.train.rng import init_key

CHECKPOINT_FORMAT = RUN_FORMAT


def checkpoint_meta(
  trainer: Trainer,
  config: ml_collections.ConfigDict,
  state_dict: Mapping[str, Any],
  step: int,
  wall_time_s: float,
) -> dict[str, Any]:
  """The JSON item stored beside the state in every trainer checkpoint."""
  arch, kwargs = trainer.export_spec(config)
  return {
    "format": CHECKPOINT_FORMAT,
    "model": trainer.name,
    "step": int(step),
    "arch": arch,
    "kwargs": kwargs,
    "config": config.to_dict(),
    "export": {"kind": trainer.export_kind, "variables": dict(trainer.export_paths)},
    "wall_time_s": float(wall_time_s),
    "jax_version": jax.__version__,
    "manifest": array_manifest(state_dict),
  }


def abstract_state(
  trainer: Trainer, config: ml_collections.ConfigDict, mesh: Mesh | None = None
) -> Any:
  """Shapes, dtypes (and shardings) of the train state, without computing it."""
  state = jax.eval_shape(functools.partial(trainer.create_state, config), init_key(0))
  sharding = replicated(mesh) if mesh is not None else None
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore_checkpoint(
  manager: ocp.CheckpointManager,
  step: int,
  trainer: Trainer,
  config: ml_collections.ConfigDict,
  mesh: Mesh | None = None,
) -> tuple[Any, dict[str, Any]]:
  """``(state, meta)`` of checkpoint ``step``, verified against its manifest.

  Raises:
    CheckpointError: unreadable, truncated or corrupted data, or a
      state that does not match the manifest (shapes or sha256).
  """
  path = os.path.join(str(manager.directory), str(step))
  meta = read_meta(manager, step)
  target = abstract_state(trainer, config, mesh)
  target_dict = flax.serialization.to_state_dict(target)
  check_structure(meta["manifest"], target_dict, where=path, arch=f"{trainer.name} trainer state")
  restored = restore_state(manager, step, target_dict)
  verify_manifest(meta["manifest"], restored, where=path)
  return flax.serialization.from_state_dict(target, restored), meta


def load_run(
  workdir: str, step: int | None = None, devices: Sequence[jax.Device] | None = None
) -> tuple[Trainer, ml_collections.ConfigDict, Any, dict[str, Any]]:
  """``(trainer, config, state, meta)`` of a run's checkpoint (latest by default)."""
  manager, latest = latest_checkpoint(workdir)
  try:
    step = latest if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {workdir}")
    meta = read_meta(manager, step)
    config = ml_collections.ConfigDict(meta["config"])
    trainer = get_trainer(meta["model"])
    mesh = make_mesh(jax.devices()[:1] if devices is None else devices)
    state, meta = restore_checkpoint(manager, step, trainer, config, mesh)
  finally:
    manager.close()
  return trainer, config, state, meta


__all__ = [
  "CHECKPOINT_FORMAT",
  "abstract_state",
  "checkpoint_dir",
  "checkpoint_meta",
  "latest_checkpoint",
  "load_run",
  "open_manager",
  "restore_checkpoint",
]
