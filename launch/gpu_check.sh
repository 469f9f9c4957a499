#!/usr/bin/env bash
# Speed and precision check on whatever backend is present (CPU, every local GPU or
# TPU chip): writes <out>/gpu_check.json (docs/gpu_check.md).
#   launch/gpu_check.sh --out out/gpu_check            # full (minutes on a GPU)
#   launch/gpu_check.sh --tiny --out /tmp/gpu_check    # everything, tiny (< 1 min on CPU)
#   launch/gpu_check.sh --study --out out/gpu_check    # + bf16 vs f32 on the shipped generators
# On a GPU machine install a CUDA jaxlib first: .venv/bin/pip install -U "jax[cuda12]"
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e .; }
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec .venv/bin/python -m studies.gpu_check "$@"
