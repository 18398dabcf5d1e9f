#!/usr/bin/env bash
# The GPU device check, one GPU, under 8 minutes: the CUDA tests (`pytest -m gpu`), the unroll speed on the
# GPU, then full-width Fashion-MNIST (experts, MTT IPC 10 × 1000 iterations, 3 evaluation models).
# Writes benchmarks/results/{distill_speed_cuda,gpu_fmnist}.{json,md}, each with the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider
timeout 90 "$PY" benchmarks/distill_speed.py --device cuda --skip-expert
timeout 300 "$PY" benchmarks/gpu_fmnist.py "$@"
