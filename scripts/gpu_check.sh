#!/usr/bin/env bash
# GPU check (docs/benchmarks.md): every experiment x method at batch 1024 on CUDA, eager and
# torch.compile'd, on synthetic data (no data set, no network). About 3-4 minutes on an H100;
# prints one markdown table and writes docs/bench-gpu.json and docs/bench-gpu.md.
#   scripts/gpu_check.sh                 # uses `python`; PYTHON=/path/to/python to override
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"${PYTHON:-python}" -m symvae.bench --gpu-check --out docs/bench-gpu.json --md docs/bench-gpu.md "$@"
