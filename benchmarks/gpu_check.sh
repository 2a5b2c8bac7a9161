#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU and no network:
#   1. the environment (GPU, driver, torch, nvcc) into env.json;
#   2. the operator built for the GPU present (TORCH_CUDA_ARCH_LIST from its compute
#      capability: 9.0, sm_90, on Hopper), CPU and CUDA libraries side by side;
#   3. the GPU tests (tests/test_gpu.py: every dtype, odd shapes, float64 reference,
#      outputs poisoned with NaN, fused CUDA against the portable CPU path, flex) and,
#      alongside, compute-sanitizer memcheck on a small fused/portable forward+backward;
#   4. the timing table (benchmarks/gpu_check.py bench), printed last.
#
#   bash benchmarks/gpu_check.sh             on the GPU machine, with whatever python3 and
#                                            torch it has (PYTHON=... to pick another)
#   bash benchmarks/gpu_check.sh --dry-run   everything but the GPU parts, on any machine
#
# It installs nothing.  Results go to $OUT when set, else to benchmarks/results/ (a dry run's
# to a temporary folder, so that no CPU table lands among the GPU results): gpu_check.md (the
# table), gpu_check.csv, env.json, ceilings.json, logs/ (one per step).
# It must finish in under 4 minutes on one H100/H200: the timing gets what is left of
# 225 s after the other steps, and the table marks what its budget left out.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
case "${1:-}" in
    --dry-run) dry=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
dry_flag=$([ "$dry" = 1 ] && echo --dry-run || true)

PY=${PYTHON:-python3}
if [ "$dry" = 1 ]; then
    results=${OUT:-${TMPDIR:-/tmp}/ccnet_edu_gpu_check/dry_run}
else
    results=${OUT:-benchmarks/results}
fi
logs=$results/logs
mkdir -p "$logs"
results=$(cd "$results" && pwd)
logs=$results/logs

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
# Fresh caches of our own: the operator's build and torch.compile's kernels.
export CCNET_EDU_BUILD_DIR=${CCNET_EDU_BUILD_DIR:-${TMPDIR:-/tmp}/ccnet_edu_gpu_check/build}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/ccnet_edu_gpu_check/inductor}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# torch's extension builder runs the `ninja` executable: a pip-installed ninja sits next to
# the interpreter or inside its package.
pybin=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
ninja_bin=$("$PY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null || true)
export PATH=$pybin${ninja_bin:+:$ninja_bin}:$PATH:/usr/local/cuda/bin

# step NAME SECONDS COMMAND...: run with a time limit, log to logs/NAME.log; the outcome goes
# to logs/NAME.status (steps also run in the background, as subshells).
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    printf 'rc=%-3s %4d s   logs/%s.log\n' "$rc" $((SECONDS - start)) "$name" >"$logs/$name.status"
    return "$rc"
}
# note NAME TEXT: an outcome without a run (skipped steps, dry-run remarks).
note() { echo "$2" >>"$logs/$1.status"; }
rm -f "$logs"/*.status
failed=0

echo "gpu_check: results in $results$([ "$dry" = 1 ] && echo ' (dry run: no GPU parts)')"

# 1. environment ------------------------------------------------------------------
step env 60 "$PY" benchmarks/gpu_check.py env --out "$results" $dry_flag || failed=1
nvidia-smi >"$logs/nvidia-smi-before.txt" 2>&1 || echo "no nvidia-smi" >"$logs/nvidia-smi-before.txt"

# 2. build for the GPU present ----------------------------------------------------
if [ "$dry" = 1 ]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # what a Hopper machine builds
else
    cap=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') || {
        echo "gpu_check: torch sees no GPU (run with --dry-run on a machine without one)" >&2
        exit 2
    }
    export TORCH_CUDA_ARCH_LIST=$cap
fi
echo "gpu_check: building for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST with $MAX_JOBS jobs"
load() { echo "from ccnet_edu.ops import _build; print(_build.load_$1(verbose=True))"; }
# The two libraries build side by side; a dry run on a small machine is given longer.
build_limit=$([ "$dry" = 1 ] && echo 900 || echo 200)
step build_cpu "$build_limit" "$PY" -c "$(load cpu)" &
cpu_pid=$!
if "$PY" -c 'import sys; from ccnet_edu.ops import find_nvcc; sys.exit(find_nvcc() is None)'; then
    cuda_rc=0
    step build_cuda "$build_limit" "$PY" -c "$(load cuda)" || { cuda_rc=1; failed=1; }
else
    note build_cuda "skipped: no nvcc"
    cuda_rc=1
    [ "$dry" = 1 ] || failed=1
fi
wait "$cpu_pid" || failed=1

# 3. GPU tests and, alongside, the memory checker ----------------------------------
export CCNET_EDU_CUDA_POISON=1  # outputs and scratch start as NaN in the tiled kernels
step tests 150 "$PY" -m pytest tests/test_gpu.py -q -x -p no:cacheprovider -rs &
tests_pid=$!
sanitizer=$(command -v compute-sanitizer || true)
if [ "$dry" = 1 ]; then
    step sanitize 120 "$PY" benchmarks/gpu_check.py sanitize --dry-run || failed=1
    note sanitize "  dry run: its workload ran on the CPU, without compute-sanitizer"
elif [ -n "$sanitizer" ] && [ "$cuda_rc" = 0 ]; then
    step sanitize 150 "$sanitizer" --tool memcheck --leak-check no --error-exitcode 1 \
        "$PY" benchmarks/gpu_check.py sanitize || failed=1
else
    note sanitize "skipped: ${sanitizer:+the CUDA build failed}${sanitizer:-no compute-sanitizer}"
    failed=1
fi
wait "$tests_pid" || failed=1
note tests "  $(tail -n 1 "$logs/tests.log" | cut -c1-100)"
unset CCNET_EDU_CUDA_POISON

# 4. timing ---------------------------------------------------------------------------
budget=$((225 - SECONDS))
[ "$budget" -lt 30 ] && budget=30
step bench $((budget + 90)) "$PY" benchmarks/gpu_check.py bench --out "$results" \
    --budget "$budget" $dry_flag || failed=1
nvidia-smi >"$logs/nvidia-smi-after.txt" 2>&1 || true

echo
echo "gpu_check: steps ($SECONDS s in all)"
for name in env build_cpu build_cuda tests sanitize bench; do
    [ -f "$logs/$name.status" ] && sed "1s/^/  $(printf '%-10s' "$name") /; 2,\$s/^/             /" "$logs/$name.status"
done
echo
if [ -f "$results/gpu_check.md" ]; then
    cat "$results/gpu_check.md"
else
    echo "gpu_check: no table (see $logs/bench.log)"
fi
exit "$failed"
