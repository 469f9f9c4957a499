"""Worker for the resume test: an EIM sweep of a small DCGAN with many blocks.

python tests/workers/sweep_worker.py CACHE_DIR OUT.npz [SEED]
"""

import sys

import numpy as np

import cfmod_jax as cf
from cfmod_jax.sweep import SweepConfig, eim_sweep


def main(argv):
  cache, out = argv[1], argv[2]
  seed = int(argv[3]) if len(argv) > 3 else 0
  gen = cf.init_generator("dcgan", seed=3, width=8, latent_dim=16)
  res = eim_sweep(
    gen,
    "block2",
    SweepConfig(n_pairs=60, block_pairs=4, seed=seed, pair_chunk=2, mask_chunk=8),
    cache,
  )
  np.savez(out, eims=res.eims, groups=res.eim_groups, computed=res.computed_blocks)


if __name__ == "__main__":
  main(sys.argv)
