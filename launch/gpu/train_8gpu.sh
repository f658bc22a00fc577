#!/usr/bin/env bash
# One 8-GPU node: a single process drives all eight GPUs (fsdp over the node).
#   launch/gpu/train_8gpu.sh CONFIG [azr-jax train args...]
#   e.g. launch/gpu/train_8gpu.sh configs/qwen2.5-7b.py --set model.hf_dir=/data/Qwen2.5-7B --workdir runs/q7b
# Several nodes: start this script on each with JAX_COORDINATOR_ADDRESS=host0:port,
# JAX_NUM_PROCESSES=<nodes> and JAX_PROCESS_ID=<rank>, and a workdir on a shared filesystem.
# rl.micro_batch_size must then split over every GPU (16 rows over 16 GPUs; the Qwen3 preset's 8
# does not): raise it, which changes the reference's per-micro-batch loss weighting, or lay the
# GPUs out with a tensor axis (--set mesh.shape=...), which the batch is not split over.
set -euo pipefail
cd "$(dirname "$0")/../.."
config="${1:?usage: launch/gpu/train_8gpu.sh CONFIG [azr-jax train args...]}"; shift
[ -f "$config" ] || { echo "[azr-jax] no config $config (CONFIG is relative to the checkout)" >&2; exit 2; }
if [ ! -x .venv/bin/azr-jax ]; then
  # Two lines, not a && b: under set -e a failed venv would go on to the GPU check's message.
  "${AZR_PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q -e ".[cuda]"
fi
# A .venv made for the CPU (launch/local.sh) has no CUDA jax: say so instead of failing on the mesh.
.venv/bin/python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || {
  echo "[azr-jax] .venv's jax sees no GPU: install the CUDA build (.venv/bin/pip install -e '.[cuda]')" >&2; exit 2; }
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
if [ "${JAX_NUM_PROCESSES:-1}" -gt 1 ]; then
  # Several nodes: fsdp over every GPU of every node (the preset's -1); gpu-8 would fix it at 8.
  exec .venv/bin/azr-jax train --config "$config" "$@"
fi
exec .venv/bin/azr-jax train --config "$config" --mesh gpu-8 "$@"
