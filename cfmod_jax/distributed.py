"""Multi-host start-up shared by the entry points.

One process per host runs the same program. `initialize` calls
`jax.distributed.initialize` when asked to: with an explicit coordinator
address (``--coordinator=host:port --num_processes=P --process_id=i``), or with
``--coordinator=auto`` on platforms that describe the cluster themselves (TPU VM
pod slices, SLURM, Open MPI). Afterwards `jax.devices()` lists every host's
devices and the influence-map kernels shard pairs over all of them.
"""

from __future__ import annotations

import jax
from absl import flags, logging

flags.DEFINE_string("coordinator", "", "host:port of process 0, or 'auto'; empty: one process.")
flags.DEFINE_integer("num_processes", 1, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", 0, "Index of this process.")


def initialize() -> None:
  f = flags.FLAGS
  if not f.coordinator:
    return
  if f.coordinator == "auto":
    jax.distributed.initialize()
  else:
    if f.num_processes < 1 or not 0 <= f.process_id < f.num_processes:
      raise ValueError(
        f"process_id must be in [0, num_processes={f.num_processes}), got {f.process_id}"
      )
    jax.distributed.initialize(
      coordinator_address=f.coordinator, num_processes=f.num_processes, process_id=f.process_id
    )
  logging.info(
    "process %d/%d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
