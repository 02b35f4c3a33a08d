#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): our training step and the authors' side by side, then
# one row of the authors' table (both methods trained, both FIDs), done within 7 minutes on one
# H100 or H200. Prints as it goes and writes its results into OUT as they exist (at most 8 files).
#   scripts/gpu_check.sh OUT [--budget_s 400]            # on the GPU machine
#   scripts/gpu_check.sh OUT --device cpu --dry-run      # anywhere: tiny sizes, to test it
# What the machine lacks travels in .gpu/ (`make gpu-assets`, or $SYMVAE_GPU_ASSETS): MNIST as
# gzipped IDX files, pytorch-fid's wheel, its Inception weights in fp16 and the authors' code;
# they are unpacked into a temporary folder, installed offline, and used from there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT [--device cpu --dry-run] [--budget_s S]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
assets=${SYMVAE_GPU_ASSETS:-.gpu}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the commit, from git or (on a machine given a copy without .git) from the caller
SYMVAE_COMMIT=${SYMVAE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export SYMVAE_COMMIT
extra=()
if [ -d "$assets" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$py" -m pip install -q --no-index --no-deps --no-cache-dir --target "$work/site" \
        "$assets"/wheels/*.whl
    export PYTHONPATH="$PYTHONPATH:$work/site"
    "$py" -m symvae gpu-assets unpack --assets "$assets" --dest "$work"
    export SYMVAE_DATA="$work/data" TORCH_HOME="$work/torch"
    if [ -d "$assets/authors" ]; then extra+=(--ref "$assets/authors"); fi
else
    case " $* " in
        *" --dry-run "*) ;;
        *) echo "error: $assets is missing: on a machine without internet the check needs" \
                "the packed assets; run \`make gpu-assets AUTHORS=DIR\` and carry .gpu" >&2
           exit 2 ;;
    esac
fi
if [ -n "${SYMVAE_AUTHORS:-}" ]; then extra+=(--ref "$SYMVAE_AUTHORS"); fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$py" -m symvae gpu-check "$out" "${extra[@]}" "$@" 2>&1 | tee "$out/gpu_check.log"
