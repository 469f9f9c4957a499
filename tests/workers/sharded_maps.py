"""Worker for the multi-device / multi-host tests: computes influence maps and
EIMs of a small DCGAN and writes them (process 0 only) to an NPZ.

  python tests/workers/sharded_maps.py OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import sys

import jax


def main(argv):
  out = argv[1]
  if len(argv) > 2:
    jax.distributed.initialize(
      coordinator_address=argv[2], num_processes=int(argv[3]), process_id=int(argv[4])
    )
  import numpy as np  # pylint: disable=g-import-not-at-top

  import cfmod_jax as cf  # pylint: disable=g-import-not-at-top

  gen = cf.init_generator("dcgan", seed=3, width=8, latent_dim=16)
  k1, k2 = jax.random.split(jax.random.key(5))
  z1, z2 = gen.sample_latents(k1, 13), gen.sample_latents(k2, 13)
  c = gen.site_shape("block3")[-1]
  rng = np.random.default_rng(0)
  masks = (rng.random((3, c)) < 0.5).astype(np.float32)
  maps = cf.influence_maps(gen, "block3", masks, z1, z2, pair_chunk=2, mask_chunk=2)
  eims = cf.elementary_influence_maps(
    gen, "block2", n_pairs=11, key=jax.random.key(9), n_groups=2, pair_chunk=2, mask_chunk=4
  )
  if jax.process_index() == 0:
    np.savez(
      out,
      maps=np.asarray(maps),
      eims=np.asarray(eims),
      devices=jax.device_count(),
      processes=jax.process_count(),
    )


if __name__ == "__main__":
  main(sys.argv)
