#!/usr/bin/env bash
# Run on the GPU machine (see tools/device_prep.sh, which must have filled .device/ here first):
#   the full profile of every chapter, the chapters concurrently (one GPU, 16 cores), each under a time limit;
#   then benchmarks/train_steps.py (never step-capped). Logs go to $OUT (or ./device-out): <chapter>.log
#   with per-cell seconds and one line per training run (steps, seconds, speed), summary.txt (exit code and wall
#   time per chapter) and bench.txt (its side-by-side table counts host syncs per training step with
#   torch.cuda.set_sync_debug_mode on CUDA: the GPU check of issue 15, 0 per step expected in the steady state).
# A device call: carry [".device"], command `bash tools/device_check.sh 480`, timeout_s 600 (the chapters' limit
# plus ~1 min install and ~1.5 min benchmark); FMLIB_MAX_STEPS=N as a second argument makes it a smoke test.
# Usage: bash tools/device_check.sh [seconds per chapter, default 480] [extra env, e.g. FMLIB_MAX_STEPS=200]
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-480}
shift || true
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl \
  || { echo "installing the carried wheels failed" | tee "$OUT/summary.txt"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FMLIB_PROGRESS=summary FMLIB_PROFILE=full FMLIB_CACHE_DIR=/tmp/fmlib-cache FMLIB_THREADS=4 "$@"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "from fmlib import runtime; print(runtime.describe())"; } 2>&1 | tee "$OUT/summary.txt"
pids=()
for script in .device/*.py; do
  name=$(basename "$script" .py)
  ( start=$(date +%s); timeout "$LIMIT" python3 "$script" > "$OUT/$name.log" 2>&1; rc=$?
    echo "$name: rc=$rc in $(( $(date +%s) - start )) s (rc 124 = over the ${LIMIT} s limit)" >> "$OUT/summary.txt" ) &
  pids+=($!)
done
wait "${pids[@]}"
timeout 120 env -u FMLIB_MAX_STEPS python3 benchmarks/train_steps.py > "$OUT/bench.txt" 2>&1 || echo "benchmark rc=$?" >> "$OUT/bench.txt"
cat "$OUT/summary.txt"; grep -h "FAILED\|^total" "$OUT"/*.log; cat "$OUT/bench.txt"
