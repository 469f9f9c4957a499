#!/usr/bin/env bash
# One host with several GPUs: one process drives all of them (pairs are sharded over
# jax.devices()). Needs a CUDA build of jaxlib:
#   .venv/bin/pip install -U "jax[cuda12]"
#   launch/multigpu.sh --generator dcgan-synthfaces --config.n_pairs=4096 --out out/gpu
# CUDA_VISIBLE_DEVICES selects the GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec .venv/bin/python -m experiments.analyze "$@"
