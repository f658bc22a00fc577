#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM and run `azr-jax train` on all of them at once.
#   launch/tpu/run_all_workers.sh NAME ZONE CONFIG [azr-jax train args...]
# On a slice with several hosts, run it with AZR_TPU_MULTIHOST=1 set here: every worker then joins
# jax.distributed (JAX discovers the coordinator on TPU VMs); each host runs its own sandbox pool.
# Give a --workdir on a filesystem all workers share (e.g. a GCS FUSE mount): checkpoints are
# written by every host. azr-jax needs Python >= 3.11 on the workers; where the image's python3 is
# older, install one there and name it with AZR_PYTHON (e.g. AZR_PYTHON=python3.11).
set -euo pipefail
name="$1"; zone="$2"; config="$3"; shift 3
here="$(cd "$(dirname "$0")/../.." && pwd)"
tar -C "$here" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/azr-jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/azr-jax.tgz "$name":~/ --zone "$zone" --worker=all
args=""  # printf with no arguments would still print one empty, quoted argument
[ $# -eq 0 ] || args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e; mkdir -p ~/azr-jax && tar -xzf ~/azr-jax.tgz -C ~/azr-jax && cd ~/azr-jax
  py=${AZR_PYTHON:-python3}
  \$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo \"azr-jax needs Python >= 3.11; \$(hostname) has \$(\$py --version 2>&1): set AZR_PYTHON\" >&2; exit 2; }
  \$py -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'
  AZR_TPU_MULTIHOST=${AZR_TPU_MULTIHOST:-0} nohup .venv/bin/azr-jax train --config $(printf '%q' "$config")$args > train.log 2>&1 &
  echo started on \$(hostname)"
