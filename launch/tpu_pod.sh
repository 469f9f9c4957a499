#!/usr/bin/env bash
# A TPU VM pod slice: the same command on every worker; jax.distributed discovers the
# slice (--coordinator=auto), pairs are sharded over all chips of all hosts, and
# host 0 clusters and writes the report. The repository must be on every worker at
# the same path (e.g. cloned by the first command below), with a shared or
# host-0-local --out.
#   launch/tpu_pod.sh TPU_NAME ZONE --generator dcgan-synthfaces --config.n_pairs=65536 --out out/pod
set -euo pipefail
name=$1; zone=$2; shift 2
repo=${CFMOD_REPO:-"~/cfmod_jax"}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e; cd $repo
  [ -x .venv/bin/python ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]')
  .venv/bin/python -m experiments.analyze --coordinator=auto $args"
