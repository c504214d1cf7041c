#!/usr/bin/env bash
# One device call that fills BENCHMARKS.md's GPU table within a 15-minute device budget.
#
# The device image has CUDA torch, peft, accelerate and transformers but not diffusers; carry the
# pure-Python wheels this project was tested with (download them here once, into the ignored .whl/):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 peft==0.21.2 transformers==5.24.0
#
# then run, through the device tool, with carry [".whl"] and timeout_s 590:
#
#   bash benchmarks/gpu_session.sh
#
# CONFIGS (comma-separated, see `bench_gpu_14b.py --list`) picks the rows; the default is the rows
# the goals rest on, most important first, each limited to PER_CONFIG_S seconds, so that
# what finished comes back (in $OUT) even when the call runs out of time. DEVICE=cpu SIZE=small
# PYTHON=.venv/bin/python runs the same plumbing on a CPU.
set -uo pipefail
OUT=${OUT:-/tmp/fourdnex-gpu-out}
mkdir -p "$OUT"
CONFIGS=${CONFIGS:-bf16,fp8mm,fp8-swap-24gb,bf16-stepcache,fp8,train-fp8-swap-24gb,train-full-offload-24gb,bf16-cudnn,bf16-swap-24gb}
PER_CONFIG_S=${PER_CONFIG_S:-150}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-14b}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}  # on the device, python3 is the one with CUDA torch

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fourdnex-site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fourdnex-site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/environment.txt"

# shellcheck disable=SC2086  # EXTRA holds several arguments
"$PYTHON" benchmarks/bench_gpu_14b.py --device "$DEVICE" --size "$SIZE" --configs "$CONFIGS" \
    --timeout "$PER_CONFIG_S" --json "$OUT/gpu_14b.jsonl" $EXTRA 2>&1 | tee "$OUT/gpu_14b.md"
