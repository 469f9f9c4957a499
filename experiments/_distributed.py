"""The multi-host flags of the experiments' programs (`cfmod_jax.distributed`).

A program that can run as one process per host imports this module (which
defines ``--coordinator``, ``--num_processes`` and ``--process_id``) and calls
`initialize_from_flags` at the start of ``main``.
"""

from __future__ import annotations

from absl import flags

from cfmod_jax import distributed

flags.DEFINE_string("coordinator", "", "host:port of process 0, or 'auto'; empty: one process.")
flags.DEFINE_integer("num_processes", 1, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", 0, "Index of this process.")


def initialize_from_flags() -> None:
  """`cfmod_jax.distributed.initialize` with the values of the flags."""
  f = flags.FLAGS
  distributed.initialize(f.coordinator, num_processes=f.num_processes, process_id=f.process_id)


__all__ = ["initialize_from_flags"]
