"""Reading a trainer run's orbax checkpoints without the trainers.

A run of `cfmod_jax.train` keeps, under ``<workdir>/checkpoints/<step>/``, two orbax
items: ``state`` (the train state as a state dict) and ``meta`` (JSON: format
`RUN_FORMAT`, model, step, the exported architecture ``arch``/``kwargs``, the
training config, a sha256 ``manifest`` of every state array, and ``export``: the
exported kind and, per variable collection, the path of its subtree in the state).
`read_run` restores both as saved and verifies every array against the manifest;
`select_variables` picks the exported variables out of the state. So
`cfmod_jax.checkpoints.load_generator` reads a run with no trainer code, and
`cfmod_jax.train` builds its checkpoints and exports on the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from cfmod_jax.exported import CheckpointError, verify_manifest

RUN_FORMAT = "cfmod_jax.train/1"


def checkpoint_dir(workdir: str) -> str:
  """``<workdir>/checkpoints``, absolute: the orbax folder of a run."""
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def open_manager(
  workdir_or_dir: str, keep: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
  """The orbax manager of a checkpoint folder (items ``state`` and ``meta``)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only
  )
  return ocp.CheckpointManager(
    os.path.abspath(workdir_or_dir), options=options, item_names=("state", "meta")
  )


def latest_checkpoint(workdir: str) -> tuple[ocp.CheckpointManager, int | None]:
  """``(manager, step)`` of the latest checkpoint in a run's workdir (or its
  ``checkpoints/`` folder); step is None when there is none."""
  directory = workdir
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    directory = os.path.join(workdir, "checkpoints")
  manager = open_manager(directory, read_only=True)
  return manager, manager.latest_step()


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The ``meta`` item of checkpoint ``step``, checked to be a run's (`RUN_FORMAT`)."""
  path = os.path.join(str(manager.directory), str(step))
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many types; say what is wrong.
    raise CheckpointError(
      f"checkpoint {path} has no readable metadata (truncated or corrupted?): {e}"
    ) from e
  if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
    raise CheckpointError(
      f"checkpoint {path} is not a cfmod_jax trainer checkpoint (format {RUN_FORMAT})"
    )
  return meta


def restore_state(
  manager: ocp.CheckpointManager, step: int, target: Mapping[str, Any] | None = None
) -> Any:
  """The ``state`` item of checkpoint ``step`` (as saved, or shaped like the state
  dict ``target``); unreadable data → `CheckpointError`."""
  path = os.path.join(str(manager.directory), str(step))
  try:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
      "state"
    ]
  except Exception as e:
    detail = str(e).split(" See full TensorStore details")[0][:400]
    raise CheckpointError(
      f"could not read the arrays of checkpoint {path} (truncated or corrupted?): "
      f"{type(e).__name__}: {detail}"
    ) from e


def read_run(workdir: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(meta, state_dict)`` of a run's checkpoint (latest by default), every array
  verified against the manifest.

  Raises:
    CheckpointError: no checkpoint, unreadable, truncated or corrupted data.
  """
  manager, latest = latest_checkpoint(workdir)
  try:
    step = latest if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {workdir}")
    meta = read_meta(manager, step)
    state = restore_state(manager, step)
    verify_manifest(meta["manifest"], state, where=os.path.join(str(manager.directory), str(step)))
  finally:
    manager.close()
  return meta, state


def select_variables(state_dict: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
  """``{collection: subtree}`` of ``state_dict`` at each ``'a/b'`` path of ``paths``
  (the exported variables of a train state); empty or absent subtrees are left out."""
  out = {}
  for collection, path in paths.items():
    node: Any = state_dict
    for key in path.split("/"):
      node = node.get(key, {}) if isinstance(node, Mapping) else {}
    if not (isinstance(node, Mapping) and not node):
      out[collection] = node
  return out


__all__ = ["RUN_FORMAT", "read_run", "select_variables"]
