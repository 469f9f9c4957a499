"""Worker for the main job's kill-and-resume tests: the analysis of a tiny DCGAN.

  python tests/workers/main_job_worker.py OUT_DIR [SEED]

With ``CFMOD_KILL_AT`` set, the process SIGKILLs itself in the middle of one phase:

* ``sweep``: right after the first EIM block is saved (the sweep is unfinished);
* ``clustering``: when the modules are clustered;
* ``figures``: while the second PNG is written (its temporary file is complete,
  the rename has not happened);
* ``npz``: in the middle of writing ``analysis.npz`` (a few arrays written).

The hooks patch library functions from here; the library holds no test code.
"""

import os
import signal
import sys

import cfmod_jax as cf
from cfmod_jax import analysis


def tiny():
  """The generator and settings every run of the tests uses."""
  gen = cf.init_generator("dcgan", width=4)
  cfg = analysis.AnalysisConfig(
    sites=("block4",),
    n_pairs=32,
    block_pairs=16,
    k=2,
    eval_pairs=16,
    eval_groups=4,
    n_null=4,
    n_ci=20,
    n_boot=2,
    hybrid_rows=2,
    hybrid_cols=2,
    untrained_baseline=False,
    factor_transfer="none",
    parts="none",
    hybrid_fd_samples=0,
  )
  return gen, cfg


def _die():
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def install_kill_hook(phase: str) -> None:
  if phase == "sweep":
    from cfmod_jax import sweep

    save = sweep._save_block

    def save_then_die(*args, **kwargs):
      save(*args, **kwargs)
      _die()

    sweep._save_block = save_then_die
  elif phase == "clustering":
    from cfmod_jax import clustering

    def die(*args, **kwargs):
      _die()

    clustering.cluster_channels = die
  elif phase == "figures":
    from cfmod_jax import fileio

    replace, seen = os.replace, []

    def replace_or_die(src, dst):
      if dst.endswith(".png"):
        seen.append(dst)
        if len(seen) == 2:
          _die()
      replace(src, dst)

    fileio.os = type(os)("os_patched")
    fileio.os.__dict__.update(os.__dict__)
    fileio.os.replace = replace_or_die
  elif phase == "npz":
    import numpy as np

    from cfmod_jax import fileio

    write, savez, seen = np.lib.format.write_array, fileio.atomic_savez, []

    def write_or_die(*args, **kwargs):
      seen.append(1)
      if len(seen) == 3:
        _die()
      write(*args, **kwargs)

    def savez_and_die(*args, **kwargs):  # only analysis.npz's arrays are counted
      np.lib.format.write_array = write_or_die
      savez(*args, **kwargs)

    fileio.atomic_savez = savez_and_die  # the writer's; the sweep's blocks are written by then
  else:
    raise ValueError(f"CFMOD_KILL_AT must be sweep, clustering, figures or npz, got {phase!r}")


def main(argv):
  out = argv[1]
  gen, cfg = tiny()
  if len(argv) > 2:
    import dataclasses

    cfg = dataclasses.replace(cfg, seed=int(argv[2]))
  if os.environ.get("CFMOD_KILL_AT"):
    install_kill_hook(os.environ["CFMOD_KILL_AT"])
  analysis.run(gen, cfg, out)


if __name__ == "__main__":
  main(sys.argv)
