#!/usr/bin/env bash
# The whole GPU check, for a machine with an NVIDIA GPU and driver (CUDA 12+ or 13) and no
# network. Run from the repository root:
#
#   OUT=gpu-out bash scripts/gpu-check.sh        (OUT defaults to ./gpu-out)
#
# It needs .gpu-bin/cuda-tests and .gpu-bin/cuda-bench from scripts/gpu-build.sh (the GPU
# machine has no Rust toolchain; where cargo exists and they are missing, it builds them).
# Steps, each bounded by `timeout` (10 + 10 + 150 + 45 + 15 + 60 s at most by default;
# TESTS_TIMEOUT, BENCH_TIMEOUT and TORCH_TIMEOUT override three of them) so that the whole
# check ends within 5 minutes:
#   1. nvidia-smi: card, driver, CUDA version                       ($OUT/nvidia-smi.txt)
#   2. the GPU tests, REQUIRE_CUDA=1 (a missing GPU fails them)     ($OUT/tests.log)
#   3. the kernel and training-step benchmarks                     ($OUT/bench.json, bench.log)
#   4. PyTorch's baselines, when torch imports                     ($OUT/pytorch.json, pytorch.log)
#   5. scripts/gpu-report.py merges everything (and .gpu-bin/BUILD.txt) into
#      $OUT/gpu-check.json and prints a short table last.
# $OUT receives exactly those 7 files.
# The exit status is 0 only when every test passed and the benchmarks ran.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-./gpu-out}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-45}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-60}
mkdir -p "$OUT"
BIN=.gpu-bin
T0=$(date +%s)
export RUST_BACKTRACE=1

step() {
    echo
    echo "== $* ($(($(date +%s) - T0)) s)"
}

if [[ ! -x $BIN/cuda-tests || ! -x $BIN/cuda-bench ]]; then
    if command -v cargo >/dev/null 2>&1; then
        step "building $BIN (cargo found, executables missing)"
        timeout 900 bash scripts/gpu-build.sh || echo "build failed"
    else
        echo "$BIN/cuda-tests or $BIN/cuda-bench is missing and there is no cargo here:"
        echo "run scripts/gpu-build.sh on a machine with Rust and carry $BIN"
    fi
fi
step "nvidia-smi"
# One file (the device tool returns at most 8): the query's csv line, then the full banner.
{
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv,noheader 2>&1
    echo
    timeout 10 nvidia-smi 2>&1
} >"$OUT/nvidia-smi.txt"
echo "nvidia-smi exit status $?"
head -n 14 "$OUT/nvidia-smi.txt"

step "GPU tests (REQUIRE_CUDA=1, one thread)"
tests_rc=127
if [[ -x $BIN/cuda-tests ]]; then
    REQUIRE_CUDA=1 timeout --kill-after=5 "$TESTS_TIMEOUT" "$BIN/cuda-tests" --test-threads=1 --show-output \
        >"$OUT/tests.log" 2>&1
    tests_rc=$?
    grep -E '^test .* \.\.\. |^test result:' "$OUT/tests.log"
fi
echo "tests exit status $tests_rc"

step "benchmarks"
bench_rc=127
if [[ -x $BIN/cuda-bench ]]; then
    timeout --kill-after=5 "$BENCH_TIMEOUT" "$BIN/cuda-bench" --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
    bench_rc=$?
    tail -n 30 "$OUT/bench.log"
fi
echo "benchmarks exit status $bench_rc"

step "PyTorch baselines"
pytorch_rc=-1
if timeout 15 python3 -c 'import torch' >/dev/null 2>&1; then
    PYTHONUNBUFFERED=1 timeout --kill-after=5 "$TORCH_TIMEOUT" python3 benches/pytorch_gpu.py \
        --out "$OUT/pytorch.json" >"$OUT/pytorch.log" 2>&1
    pytorch_rc=$?
    tail -n 12 "$OUT/pytorch.log"
else
    echo "torch does not import here: no PyTorch baselines"
fi
echo "PyTorch exit status $pytorch_rc"

step "report"
python3 scripts/gpu-report.py --dir "$OUT" --build-file "$BIN/BUILD.txt" --tests-rc "$tests_rc" \
    --bench-rc "$bench_rc" --pytorch-rc "$pytorch_rc" --elapsed "$(($(date +%s) - T0))"
report_rc=$?

[[ $tests_rc -eq 0 && $bench_rc -eq 0 && $report_rc -eq 0 ]]
