#!/usr/bin/env bash
# Creates .venv and installs the library with pinned versions (CPU torch; see constraints.txt).
#
# torch comes from pip's configured index. On a machine where that is plain PyPI, Linux wheels of
# torch are CUDA builds (several GB with their nvidia packages); for the CPU build point
# TORCH_INDEX_URL at PyTorch's CPU wheel index:
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX_URL" "torch==2.13.0"
else
    .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,splats,rerun]"
