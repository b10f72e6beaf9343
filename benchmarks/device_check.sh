#!/usr/bin/env bash
# One call on a GPU machine: known fixes, the GPU tests (with compute-sanitizer memcheck on one),
# the kernel and step benchmarks against cuDNN, full logs + JSON in the output folder, a compact
# table last, and ncu counters of the default conv kernels. Time-boxed to about 8 minutes in all.
#
#   benchmarks/device_check.sh [OUTDIR]      (OUTDIR: else $OUT, else bench-out/)
#
# Before calling it, carry a numpy 2.4 wheel for Python 3.12 in .whl/ (numba-cuda 0.30 fails on
# numpy 2.5; see the README, "GPU machine").
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-bench-out}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
fi
[ -d /usr/local/cuda/include ] && export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
export UNETCU_CACHE_DIR=/tmp/unetcu-cache

step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUTDIR/NAME.log, show the output
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s): $*"
  timeout "$secs" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  cat "$OUTDIR/$name.log"
  echo "=== $name: exit $rc"
  echo "$name $rc" >> "$OUTDIR/status.txt"
}

rm -f "$OUTDIR/status.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUTDIR/gpu.txt" 2>&1; cat "$OUTDIR/gpu.txt"
step engines 20 python3 -m unetcu.cli engines
step gpu_tests 120 python3 -m pytest -q -m gpu -x tests
if command -v compute-sanitizer >/dev/null; then
  step memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x tests/test_ops.py -m gpu -k "chain and cuda"
fi
step kernels 150 python3 -m benchmarks.bench_kernels --engine cuda --quick --tiles --json "$OUTDIR/kernels.json"
step step 80 python3 -m benchmarks.bench_step --engine cuda --quick --json "$OUTDIR/step.json"
if command -v ncu >/dev/null; then  # counters of the default conv kernels: what limits each
  step profile 45 ncu --clock-control none --csv --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats --kernel-name regex:conv3x3_ python3 -m benchmarks.profile_conv
fi
if command -v ncu >/dev/null; then  # unetcu profile's counts against ncu's, key by key, on the planted patterns
  METRICS=$(python3 -c "from benchmarks.compare_ncu import KEYS; print(','.join(KEYS))")
  step ncu_planted 60 ncu --clock-control none --csv --print-units base --metrics "$METRICS" python3 tests/profile_planted.py --engine cuda
  step emu_planted 60 python3 -m unetcu.cli profile --json "$OUTDIR/emu_planted.json" -- python3 tests/profile_planted.py
  step compare_ncu 10 python3 -m benchmarks.compare_ncu "$OUTDIR/emu_planted.json" "$OUTDIR/ncu_planted.log"
fi
step results 15 python3 -m benchmarks.make_results "$OUTDIR" --out "$OUTDIR/RESULTS.md"

echo
echo "=== summary ($OUTDIR)"
cat "$OUTDIR/status.txt"
grep -h "slowest relative to cuDNN" "$OUTDIR/kernels.log" 2>/dev/null
grep -h "^paper" "$OUTDIR/step.log" 2>/dev/null
grep -h "passed\|failed" "$OUTDIR/gpu_tests.log" 2>/dev/null | tail -1
