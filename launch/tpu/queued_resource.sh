#!/usr/bin/env bash
# Create a single-host TPU slice as a queued resource, install azr-jax on it and start training.
#   launch/tpu/queued_resource.sh NAME ZONE ACCELERATOR CONFIG [azr-jax train args...]
#   e.g. AZR_TPU_CREATE_FLAGS="--data-disk source=projects/P/zones/us-east5-a/disks/models,mode=read-only" \
#        launch/tpu/queued_resource.sh azr-q7b us-east5-a v5p-8 configs/qwen2.5-7b.py \
#          --mesh v5p-8 --set model.hf_dir=/mnt/models/Qwen2.5-7B --workdir /mnt/runs/q7b
# The model checkpoint and the workdir must be on a disk every worker can read (nothing is
# downloaded): attach one with AZR_TPU_CREATE_FLAGS (extra flags for `gcloud compute tpus
# queued-resources create`, split on spaces) and mount it, or set AZR_TPU_CREATE_ONLY=1 to stop once
# the slice is ACTIVE, prepare the workers, then start training with run_all_workers.sh.
set -euo pipefail
usage="usage: $0 NAME ZONE ACCELERATOR CONFIG [azr-jax train args...]"
[ $# -ge 4 ] || { echo "$usage" >&2; exit 2; }
name="$1"; zone="$2"; accel="$3"; shift 3
# Check what can be checked here before a slice (and its bill) exists.
here="$(cd "$(dirname "$0")/../.." && pwd)"
case "$1" in
  /*) ;;  # a path on the workers; it cannot be checked from here
  *) [ -f "$here/$1" ] || { echo "[azr-jax] no config $1 in $here (CONFIG is relative to the checkout)" >&2; exit 2; } ;;
esac
command -v gcloud >/dev/null || { echo "[azr-jax] gcloud is not on PATH" >&2; exit 2; }
# gcloud names v5e slices v5litepod-N (azr-jax's --mesh v5e-8): v5e-N is passed on as that.
case "$accel" in v5e-*) accel="v5litepod-${accel#v5e-}" ;; esac
# The TPU software version for JAX by generation (Cloud TPU's runtime table); AZR_TPU_RUNTIME wins.
case "$accel" in
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  *) default_runtime=tpu-ubuntu2204-base ;;  # v4 and older
esac
runtime="${AZR_TPU_RUNTIME:-$default_runtime}"
read -r -a create_flags <<< "${AZR_TPU_CREATE_FLAGS:-}"  # split on spaces, no glob expansion
gcloud compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
  --accelerator-type "$accel" --runtime-version "$runtime" ${create_flags[@]+"${create_flags[@]}"}
echo "[azr-jax] waiting for $name to become ACTIVE ..." >&2
while true; do
  state="$(gcloud compute tpus queued-resources describe "$name" --zone "$zone" --format='value(state.state)')"
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED|SUSPENDING|DELETING) echo "[azr-jax] $name is $state; not starting" >&2; exit 1 ;;
  esac
  sleep 30
done
if [ "${AZR_TPU_CREATE_ONLY:-0}" = 1 ]; then
  echo "[azr-jax] $name is ACTIVE; start training with: $(dirname "$0")/run_all_workers.sh$(printf ' %q' "$name" "$zone" "$@")" >&2
  exit 0
fi
exec "$(dirname "$0")/run_all_workers.sh" "$name" "$zone" "$@"
