#!/usr/bin/env bash
# Training dynamics of both codes side by side (docs/fidelity.md, "Dynamics"): mnist-ladder
# symmetric learning at batch 64, step size 1e-4, SEEDS seeds of the authors' unmodified
# main_sym.py and of ours, UPDATES updates each, JOBS runs at a time with one thread each; then
# the table of scripts/compare_dynamics.py over every log in OUT.
#   scripts/dynamics.sh REF OUT      # REF: a checkout of the authors' repository
# CODES="authors ours" (default) or one of them: the runs are deterministic per seed and code,
# so the two codes' runs may be made at different times into the same OUT.
# On the 2-core CPU with JOBS=2: about 0.76 s (ours) and 0.9 s (theirs) per update and run,
# so 3 + 3 runs of 4000 updates take about three hours.
set -euo pipefail
ref=${1:?usage: scripts/dynamics.sh AUTHORS_CHECKOUT OUT_DIR}
out=$(mkdir -p "${2:?usage: scripts/dynamics.sh AUTHORS_CHECKOUT OUT_DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
seeds=${SEEDS:-1 2 3}
updates=${UPDATES:-4000}
flags="--nz0 30 --nz1 100 --stepsize 1e-4 --bs 64 --niterations $updates"
export OMP_NUM_THREADS=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# glibc keeps freed memory, as symvae.learn.runtime makes it do for ours, so that neither code pays
# for page faults (docs/benchmarks.md); their figures stay the same to the last digit
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776}

jobs_file="$out/jobs.txt"
: > "$jobs_file"
codes=${CODES:-authors ours}
for s in $seeds; do
  [[ " $codes " == *" authors "* ]] && echo "$py $repo/scripts/run_authors.py --ref $ref --experiment mnist-ladder" \
       "--workdir $out/authors --seed $s main_sym.py --call_prefix s$s $flags" >> "$jobs_file"
  [[ " $codes " == *" ours "* ]] || continue
  mkdir -p "$out/ours"
  cp "$repo"/mnist-ladder/*.py "$out/ours/"
  echo "cd $out/ours && $py main_sym.py --call_prefix s$s --seed $s --device cpu" \
       "--no_progress --overwrite $flags" >> "$jobs_file"
done
xargs -P "${JOBS:-2}" -I{} bash -c '{}' < "$jobs_file"

shopt -s nullglob
"$py" "$repo/scripts/compare_dynamics.py" --ours "$out"/ours/logs/log-s*.txt \
  --theirs "$out"/authors/logs/log-s*.txt --at ${AT:-1000 2000 3000 4000} | tee "$out/table.md"
