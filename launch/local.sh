#!/usr/bin/env bash
# Runs the main job on this machine (all local devices), e.g.:
#   launch/local.sh --out out/default
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m experiments.analyze "$@"
