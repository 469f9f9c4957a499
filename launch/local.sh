#!/usr/bin/env bash
# The main job on this machine, on every local device (CPU, or all local GPUs/TPU chips).
#   launch/local.sh --generator dcgan-synthfaces --out out/default [more flags]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e .; }
exec .venv/bin/python -m experiments.analyze "$@"
