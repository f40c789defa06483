#!/usr/bin/env bash
# Create .venv and install charlm into it, with the CPU build of PyTorch where there is no
# NVIDIA GPU (the default Linux wheel of torch carries several GB of CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
quiet() { "$@" 2>&1 | { grep -v -e "is ignored: it is neither" -e "^WARNING: Retrying" || true; }; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    quiet $PIP install -q "torch==$TORCH_VERSION"
  else
    # The CPU index is an extra one, so a local wheel or mirror of the same version works offline too.
    quiet $PIP install -q --retries 1 "torch==$TORCH_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
quiet $PIP install -q -e ".[test,docs]"   # docs: `make test` builds the site strictly
.venv/bin/python -c "import torch, charlm; print(f'charlm {charlm.__version__} with torch {torch.__version__} in .venv')"
