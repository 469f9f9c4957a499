#!/usr/bin/env bash
# Several processes on this machine, as if they were hosts (for trying multi-host runs):
#   launch/multihost_local.sh 2 --generator dcgan-synthfaces --out out/mh
# Each process gets its own CPU devices; process 0 writes the outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
n=$1; shift
port=$((20000 + RANDOM % 20000))
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu .venv/bin/python -m experiments.analyze --coordinator="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
