#!/usr/bin/env bash
# One prepared GPU check (at most ~9 minutes): installs the package if needed, prints the GPU,
# then (1) one optimiser step of SGD, Adam, LanczosNewton and LanczosSaddleFreeNewton on a
# CUDA ResNet-18 with batch 128, as multiples of the SGD step (benchmarks/step_cost.py), and
# (2) full-data Lanczos iterations of VGG16 on CIFAR-100-shaped data per precision policy
# (benchmarks/gpu_check.py).
# Usage on a CUDA machine, from the repository root:  bash benchmarks/gpu_check.sh [--samples N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import lanczos_optim, diagnostics" 2>/dev/null; then
  "$PY" -m pip install -q -e . || "$PY" -m pip install -q --no-deps -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
export PYTHONUNBUFFERED=1
if [ "${1:-}" != "--cpu-smoke" ]; then
  timeout 150 "$PY" benchmarks/step_cost.py --device cuda --repeats 3 || echo "step_cost: failed ($?)"
fi
timeout 390 "$PY" benchmarks/gpu_check.py "$@"
