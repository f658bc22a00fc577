#!/usr/bin/env bash
# The single-GPU measurements in docs/benchmarks.md, in one go:
#   bash launch/gpu/bench_one_gpu.sh OUTDIR
# 1. `bench sample` and `bench train` at the real Qwen2.5-1.5B and Qwen2.5-Coder-3B shapes
#    (random weights, bf16 compute), each against its torch baseline in the same process;
# 2. the float32 and bf16 parity tests (logits, hidden states, gradients, sampler) on the GPU,
#    between the 1.5B and the 3B benchmarks (the more important ones first).
# Each step has its own time limit and the script goes on after a failure, so one bad step
# still leaves the others' records. Runs from a checkout with no install step when jax (CUDA),
# optax, numpy, safetensors, torch and transformers are importable (PYTHON, default python3);
# the benchmarks and these tests do not import grain, tensorboardX or multiprocessing-logging.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: bench_one_gpu.sh OUTDIR}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Grow JAX's pool on demand: the torch baseline runs in the same process after the JAX side.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS COMMAND... : log to OUTDIR/NAME.log, say how it ended
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "[$name] exit $? after $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  git log -1 --format='commit %H' 2>/dev/null
  "$PY" -c 'import sys, jax, torch, transformers; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices(), "torch", torch.__version__, "transformers", transformers.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

bench() {  # bench NAME SECONDS ARGS... : one benchmark record in OUTDIR/NAME.json
  local name="$1" limit="$2"; shift 2
  # BENCH_EXTRA (appended, so it wins) shrinks every shape for a dry run on a CPU machine.
  step "$name" "$limit" "$PY" -m azr_jax.cli bench "$@" ${BENCH_EXTRA:-} --out "$out/$name.json"
}
# The target shapes of docs/benchmarks.md first (Qwen2.5-1.5B); Coder-3B (the paper's smallest size) last.
bench sample_1.5b 150 sample --preset qwen2.5-1.5b --batch 128 --prompt-len 512 --new-tokens 512 --repeats 3
bench train_1.5b 150 train --preset qwen2.5-1.5b --batch 8 --prompt-len 2048 --new-tokens 2048 \
  --set model.remat=full --repeats 3
# The parity tests pick the GPU when JAX_PLATFORMS says so (tests/conftest.py defaults to cpu).
JAX_PLATFORMS="${TEST_PLATFORMS:-cuda}" step parity_tests 180 "$PY" -m pytest -q -p no:cacheprovider \
  tests/models/test_decoder_parity.py tests/models/test_decoder_cache.py tests/rl/test_grad_parity.py \
  tests/rl/test_update.py tests/rl/test_learning.py tests/sampling/test_sampler.py
tail -n 3 "$out/parity_tests.log"; echo
bench sample_coder3b 120 sample --preset qwen2.5-coder-3b --batch 64 --prompt-len 512 --new-tokens 512 --repeats 2
bench train_coder3b 120 train --preset qwen2.5-coder-3b --batch 4 --prompt-len 1024 --new-tokens 1024 \
  --set model.remat=full --repeats 2
cat "$out"/*.json 2>/dev/null
