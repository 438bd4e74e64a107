#!/usr/bin/env bash
# The GPU check, in one short script (under 8 minutes on one GPU): the test suite's CUDA cases
# (the backends of tests/cases.py include torch-cuda when a GPU is present) and the GPU benchmark.
# Run on a machine with CUDA torch:  bash benchmarks/gpu_check.sh   (then record the figures in
# benchmarks/README.md, section "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
export OMP_NUM_THREADS=4
timeout 300 "$PY" -m pytest -q -p no:warnings -k "cuda" tests/test_solvers.py tests/test_operators.py \
    tests/test_influence.py tests/test_nystrom.py tests/test_scale.py tests/test_adapter_core.py
echo "--- benchmark"
timeout 180 "$PY" -m benchmarks.bench_gpu --repeats 3 --threads 4
