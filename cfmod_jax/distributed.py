"""Multi-host start-up shared by the entry points.

One process per host runs the same program. `initialize` calls
`jax.distributed.initialize` when asked to: with an explicit coordinator
address (``initialize("host:port", num_processes=P, process_id=i)``), or with
``coordinator="auto"`` on platforms that describe the cluster themselves (TPU VM
pod slices, SLURM, Open MPI). Afterwards `jax.devices()` lists every host's
devices and the influence-map kernels shard pairs over all of them.

This module defines no command-line flags: the programs do
(`experiments._distributed` defines ``--coordinator``, ``--num_processes`` and
``--process_id`` and passes them here).
"""

from __future__ import annotations

import jax
from absl import logging

from cfmod_jax._validate import check_positive_int


def initialize(coordinator: str = "", num_processes: int = 1, process_id: int = 0) -> None:
  """Joins the processes of a multi-host run (nothing to do for ``coordinator=""``).

  Args:
    coordinator: ``"host:port"`` of process 0, ``"auto"`` (the platform describes
      the cluster), or ``""`` for a single process.
    num_processes: number of processes (hosts), for an explicit ``coordinator``.
    process_id: index of this process in ``[0, num_processes)``.
  Raises:
    ValueError: ``num_processes`` < 1 or ``process_id`` out of range.
  """
  if not coordinator:
    return
  if coordinator == "auto":
    jax.distributed.initialize()
  else:
    check_positive_int(num_processes, "num_processes")
    if not 0 <= process_id < num_processes:
      raise ValueError(
        f"process_id must be in [0, num_processes={num_processes}), got {process_id}"
      )
    jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
  logging.info(
    "process %d/%d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


__all__ = ["initialize"]
