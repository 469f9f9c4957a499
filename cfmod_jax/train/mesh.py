"""The data-parallel mesh: one axis, ``'data'``, over the devices.

Every batch array is sharded along its leading (batch) axis and the train state
is replicated; XLA inserts the cross-device reductions of the jitted step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("need at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array copied on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of an array split along its leading (batch) axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts every array of ``batch`` on the mesh, split along its leading axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}


__all__ = ["DATA_AXIS", "batch_sharded", "make_mesh", "replicated", "shard_batch"]
