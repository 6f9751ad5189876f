#!/usr/bin/env bash
# One prepared GPU check (at most ~8 minutes): installs the package if needed, prints the GPU,
# then times full-data Lanczos iterations of VGG16 on CIFAR-100-shaped data (benchmarks/gpu_check.py).
# Usage on a CUDA machine, from the repository root:  bash benchmarks/gpu_check.sh [--samples N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import lanczos_optim, diagnostics" 2>/dev/null; then
  "$PY" -m pip install -q -e . || "$PY" -m pip install -q --no-deps -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
export PYTHONUNBUFFERED=1
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
