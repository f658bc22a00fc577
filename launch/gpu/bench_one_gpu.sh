#!/usr/bin/env bash
# The single-GPU measurements in docs/benchmarks.md, in one go:
#   bash launch/gpu/bench_one_gpu.sh OUTDIR
# 1. `bench sample` and `bench train` at the real Qwen2.5-1.5B and Qwen2.5-Coder-3B shapes
#    (random weights, bf16 compute), each against its torch baseline in the same process;
# 2. the float32 and bf16 parity tests (logits, hidden states, gradients, sampler) on the GPU,
#    between the 1.5B and the 3B benchmarks (the more important ones first);
# 3. `bench logits` at the 1.5B shape: the update's memory and time with the output head in
#    chunks of 1024 positions (rl.logits_chunk) against the whole head.
# Each step has its own time limit and the script goes on after a failure, so one bad step
# still leaves the others' records. Runs from a checkout with no install step when jax (CUDA),
# optax, numpy, safetensors, torch, transformers and pytest are importable (PYTHON, default python3);
# the benchmarks and these tests do not import grain or tensorboardX.
set -uo pipefail
out="${1:?usage: bench_one_gpu.sh OUTDIR}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"  # a relative OUTDIR is the caller's, not the repo's
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
# Every step on the accelerator (TEST_PLATFORMS=cpu for a dry run): a CUDA plugin that fails to
# load then stops the step instead of falling back to the CPU and burning its time limit.
export JAX_PLATFORMS="${TEST_PLATFORMS:-cuda}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# bench train runs its torch baseline first and frees that memory; JAX then grows its pool on
# demand up to 90 % of the GPU (it keeps what it takes until the process ends).
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Four files come back (the device returns at most eight): env.txt, steps.txt, logs.txt (every
# step's output, one after another) and records.jsonl (one benchmark record per line).
: >"$out/logs.txt"; : >"$out/records.jsonl"; : >"$out/steps.txt"

step() {  # step NAME SECONDS COMMAND... : output appended to logs.txt, how it ended to steps.txt
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "===== $name (limit $limit s)" >>"$out/logs.txt"
  timeout "$limit" "$@" >>"$out/logs.txt" 2>&1
  echo "[$name] exit $? after $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # The device gets the working tree without .git: pass AZR_COMMIT=<hash> in the command.
  echo "commit ${AZR_COMMIT:-unknown}"
  "$PY" -c 'import sys, jax, torch, transformers; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices(), "torch", torch.__version__, "cuda for torch", torch.cuda.is_available(), "transformers", transformers.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

bench() {  # bench NAME SECONDS ARGS... : one benchmark record appended to records.jsonl
  local name="$1" limit="$2"; shift 2
  local record="${TMPDIR:-/tmp}/azr_bench_$name.json"
  rm -f "$record"
  # BENCH_EXTRA (appended, so it wins) shrinks every shape for a dry run on a CPU machine.
  step "$name" "$limit" "$PY" -m azr_jax.cli bench "$@" ${BENCH_EXTRA:-} --out "$record"
  [ -s "$record" ] && cat "$record" >>"$out/records.jsonl"
}
# The target shapes of docs/benchmarks.md first (Qwen2.5-1.5B); Coder-3B (the paper's smallest
# size) last. Micro-batches of 2 rows keep the float32 logits (rows x length x 151936 x 4 bytes
# per copy) to a few GB on both sides. The limits of the five steps below add up to 540 s, under the 600 s of one call; bench logits comes after them.
bench sample_1.5b 110 sample --preset qwen2.5-1.5b --batch 128 --prompt-len 512 --new-tokens 512 --repeats 3
bench train_1.5b 130 train --preset qwen2.5-1.5b --batch 8 --micro-batch 2 --prompt-len 2048 --new-tokens 2048 \
  --set model.remat=full --repeats 3
# The parity tests run on the platform above (tests/conftest.py defaults to cpu); the tests that
# need an 8-device mesh are reported as skipped on one GPU.
step parity_tests 130 "$PY" -m pytest -q -p no:cacheprovider \
  tests/models/test_decoder_parity.py tests/models/test_decoder_cache.py tests/rl/test_grad_parity.py \
  tests/rl/test_update.py tests/rl/test_learning.py tests/sampling/test_sampler.py
grep -E "passed|failed|error" "$out/logs.txt" | tail -n 2; echo
bench sample_coder3b 80 sample --preset qwen2.5-coder-3b --batch 64 --prompt-len 512 --new-tokens 512 --repeats 2
bench train_coder3b 90 train --preset qwen2.5-coder-3b --batch 4 --micro-batch 2 --prompt-len 1024 --new-tokens 1024 \
  --set model.remat=full --repeats 2
# Last, and past the 540 s above: if the call's 600 s run out here, only this record is lost.
bench logits_1.5b 55 logits --preset qwen2.5-1.5b --batch 2 --prompt-len 64 --new-tokens 4032 --logits-chunk 1024 \
  --set model.remat=full --repeats 2
cat "$out/records.jsonl"
