#!/usr/bin/env bash
# Create a single-host TPU slice as a queued resource, install azr-jax on it and start training.
#   launch/tpu/queued_resource.sh NAME ZONE ACCELERATOR CONFIG [azr-jax train args...]
#   e.g. launch/tpu/queued_resource.sh azr-q7b us-east5-a v5p-8 configs/qwen2.5-7b.py \
#          --mesh v5p-8 --set model.hf_dir=/data/Qwen2.5-7B --workdir /data/runs/q7b
# The model checkpoint and the workdir must be on a disk the VM can read (nothing is downloaded).
set -euo pipefail
name="$1"; zone="$2"; accel="$3"; shift 3
# The TPU software version for JAX by generation (Cloud TPU's runtime table); AZR_TPU_RUNTIME wins.
# gcloud names v5e slices v5litepod-N (azr-jax's --mesh v5e-8).
case "$accel" in
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  v5litepod-*|v5e-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  *) default_runtime=tpu-ubuntu2204-base ;;  # v4 and older
esac
runtime="${AZR_TPU_RUNTIME:-$default_runtime}"
gcloud compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
  --accelerator-type "$accel" --runtime-version "$runtime"
echo "[azr-jax] waiting for $name to become ACTIVE ..." >&2
while true; do
  state="$(gcloud compute tpus queued-resources describe "$name" --zone "$zone" --format='value(state.state)')"
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED|SUSPENDING|DELETING) echo "[azr-jax] $name is $state; not starting" >&2; exit 1 ;;
  esac
  sleep 30
done
exec "$(dirname "$0")/run_all_workers.sh" "$name" "$zone" "$@"
