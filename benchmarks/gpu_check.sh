#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU and no network, done in at
# most GPU_CHECK_BUDGET = 540 s whatever fails.  Each step runs under its own `timeout`
# (its cap, and never past what the later steps need), and a failed step never stops the
# later ones:
#   wheels     the carried wheels (.gpu-wheels, `make gpu-wheels`) installed with --no-index
#              into a scratch folder, for the notebooks; in the background from the start
#   env        nvidia-smi, torch, driver, nvcc; the GPU's copy bandwidth and matrix rates
#              (bf16, tf32, fp32 with TF32 off) into env.json
#   build      the CPU and CUDA libraries side by side, for the GPU present
#              (TORCH_CUDA_ARCH_LIST from its compute capability), after removing the lock
#              files and unfinished builds a killed run leaves in the build folder
#   tests      tests/test_gpu.py and the GPU tests of tests/test_ops.py, outputs poisoned
#              with NaN, a time limit per test, every test run (no -x)
#   sanitize   compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1) then
#              racecheck on a small case, beside the tests
#   bench      the timing: einsum, then fused, then flex, then the rest while time is
#              left; each row written to gpu_check.csv as it is measured
#   notebooks  every notebook under nbval, in parallel, sharing the operator's build and
#              the inductor cache, each with a JUnit report
#   pack       gpu_check.md (the table), summary.md (printed last), logs.tar.gz
# Its files in $OUT (at most 8): summary.md, gpu_check.md, gpu_check.csv, env.json,
# notebooks.xml, logs.tar.gz.  Without OUT they go to benchmarks/results/gpu_check_run/
# (a dry run's to a temporary folder).
#
#   bash benchmarks/gpu_check.sh                 on the GPU machine (python3 there; PYTHON=...)
#   bash benchmarks/gpu_check.sh --dry-run       every step that needs no GPU, on the CPU:
#                                                tiny timing, workloads without the sanitizer,
#                                                GPU tests collected (they skip), a subset of
#                                                the notebooks (GPU_CHECK_NOTEBOOKS)
#   ... --steps env,bench                        only those steps
# benchmarks/gpu_notes.md says how a session with a GPU runs it and what to do with the files.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
all_steps="wheels env build tests sanitize bench notebooks"

usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--steps STEP,...]" \
        "(steps: ${all_steps// /, })" >&2
}
dry=0
only=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1 ;;
        --steps) [ $# -ge 2 ] || { usage; exit 2; }; only=$2; shift ;;
        --steps=*) only=${1#--steps=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
    shift
done
for s in ${only//,/ }; do
    case " $all_steps " in
        *" $s "*) ;;
        *) echo "gpu_check: unknown step '$s'"; usage; exit 2 ;;
    esac
done
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
dry_flag=$([ "$dry" = 1 ] && echo --dry-run || true)

PY=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET:-$([ "$dry" = 1 ] && echo 2400 || echo 540)}
work=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/ccnet_edu_gpu_check$([ "$dry" = 1 ] && echo _dry)}
if [ -n "${OUT:-}" ]; then
    out=$OUT
elif [ "$dry" = 1 ]; then
    out=$work/out
else
    out=$root/benchmarks/results/gpu_check_run
fi
wheels=${GPU_CHECK_WHEELS:-$root/.gpu-wheels}
logs=$work/logs
mkdir -p "$out" "$work" || exit 2
out=$(cd "$out" && pwd)
work=$(cd "$work" && pwd)
logs=$work/logs
rm -rf "$logs" "$work/site" "$work/pids"
mkdir -p "$logs"
rm -f "$out"/{summary.md,gpu_check.md,gpu_check.csv,env.json,notebooks.xml,logs.tar.gz}

# Time: microseconds from EPOCHREALTIME (bash 5), seconds since the start, step limits.
now_us() {
    if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/[.,]/}"; else echo $(($(date +%s%N) / 1000)); fi
}
t0_us=$(now_us)
elapsed_s() { echo $((($(now_us) - t0_us) / 1000000)); }
seconds() { printf '%d.%d' $(($1 / 1000000)) $((($1 / 100000) % 10)); }
pack_reserve=25  # the report and the tarball
kill_after=10    # a step that ignores SIGTERM is killed this much later
deadline=$((budget - pack_reserve))
# caps (each step's own limit) and what later steps are guaranteed
if [ "$dry" = 1 ]; then
    cap_wheels=300 cap_env=300 cap_build=1500 cap_tests=600 cap_memcheck=300
    cap_racecheck=300 cap_bench=600 cap_notebooks=900 per_test=300
else
    cap_wheels=90 cap_env=60 cap_build=240 cap_tests=150 cap_memcheck=100
    cap_racecheck=45 cap_bench=150 cap_notebooks=300 per_test=90
fi
keep_notebooks=120
keep_bench=$((60 + keep_notebooks))
keep_tests=$((45 + keep_bench))
keep_build=$((60 + keep_tests))
# limit_for CAP KEEP: the cap, or less so that KEEP seconds stay for the later steps
limit_for() {
    local left=$((deadline - $(elapsed_s) - $2 - kill_after))
    echo $(($1 < left ? $1 : left))
}

export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The operator's build and torch.compile's kernels: one cache each, shared by every step
# and every notebook.
own_build_dir=0
if [ -n "${GPU_CHECK_BUILD_DIR:-}" ]; then
    export CCNET_EDU_BUILD_DIR=$GPU_CHECK_BUILD_DIR
else
    export CCNET_EDU_BUILD_DIR=$work/build
    own_build_dir=1
fi
export TORCHINDUCTOR_CACHE_DIR=$work/inductor TRITON_CACHE_DIR=$work/triton
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# torch's extension builder runs the `ninja` executable: a pip-installed ninja sits next to
# the interpreter or inside its package.  They go last on PATH: a ninja already there wins,
# as it does for every other caller, since two ninja versions sharing a build folder
# rebuild each other's objects (their logs differ).
pybin=$(dirname "$("$PY" -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)")
ninja_bin=$("$PY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null || true)
export PATH=$PATH:$pybin${ninja_bin:+:$ninja_bin}:/usr/local/cuda/bin
export PYDEVD_DISABLE_FILE_VALIDATION=1

# record NAME RC SECONDS LIMIT NOTE: one line in steps.tsv and one on stdout
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$logs/steps.tsv"
    printf 'gpu_check: %-10s rc=%-7s %7s s (limit %s s) %s\n' "$@"
}
# run_step NAME CAP KEEP COMMAND...: COMMAND under `timeout`, output to logs/NAME.log;
# GPU_CHECK_STEP_LIMIT tells a Python step its limit, so it stops in time by itself.
run_step() {
    local name=$1 cap=$2 keep=$3 limit start rc note="" pid
    shift 3
    limit=$(limit_for "$cap" "$keep")
    if [ "$limit" -lt 5 ]; then
        record "$name" skipped 0 "$limit" "no time left"
        return 1
    fi
    start=$(now_us)
    GPU_CHECK_STEP_LIMIT=$limit timeout --kill-after="$kill_after" "$limit" "$@" \
        >"$logs/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$work/pids"
    wait "$pid"
    rc=$?
    case $rc in 124 | 137) note="stopped at its limit" ;; esac
    record "$name" "$rc" "$(seconds $(($(now_us) - start)))" "$limit" "$note"
    return "$rc"
}
not_selected() { record "$1" - 0 - "not selected (--steps)"; }

pack() {
    local start
    start=$(now_us)
    record total - "$(seconds $((start - t0_us)))" "$budget" "before packing"
    timeout 8 nvidia-smi >"$logs/nvidia-smi-after.txt" 2>&1 || true
    [ -f "$logs/notebooks.xml" ] && cp "$logs/notebooks.xml" "$out/notebooks.xml"
    timeout 12 "$PY" benchmarks/gpu_check.py report --work "$work" --out "$out" \
        >"$logs/report.log" 2>&1 || echo "gpu_check: the report failed (logs/report.log)"
    rm -f "$work/pids"
    tar -czf "$out/.logs.tar.gz.part" -C "$work" logs && mv -f "$out/.logs.tar.gz.part" "$out/logs.tar.gz"
    local files
    files=$(find "$out" -type f | wc -l)
    echo "gpu_check: $files files in $out ($(du -sh "$out" | cut -f1)), packed in" \
        "$(seconds $(($(now_us) - start))) s, $(seconds $(($(now_us) - t0_us))) s in all"
    [ "$files" -le 8 ] || echo "gpu_check: more than 8 files in $out: the GPU machine returns 8"
}
on_signal() {
    trap - TERM INT
    echo "gpu_check: stopped by a signal; packing what there is"
    [ -f "$work/pids" ] && while read -r p; do kill -TERM "$p" 2>/dev/null; done <"$work/pids"
    sleep 2
    pack
    exit 143
}
trap on_signal TERM INT

echo "gpu_check: $([ "$dry" = 1 ] && echo 'dry run (no GPU parts), ')budget $budget s," \
    "results in $out, scratch in $work"

# wheels (background) --------------------------------------------------------------------
if wanted wheels; then
    run_step wheels "$cap_wheels" 0 "$PY" benchmarks/gpu_check.py wheels-install \
        --wheels "$wheels" --target "$work/site" $dry_flag &
    wheels_job=$!
else
    not_selected wheels
    wheels_job=""
fi

# env -------------------------------------------------------------------------------------
timeout 30 nvidia-smi >"$logs/nvidia-smi-before.txt" 2>&1 || true
if wanted env; then
    run_step env "$cap_env" "$keep_build" "$PY" benchmarks/gpu_check.py env --out "$out/env.json" $dry_flag
else
    not_selected env
fi

# build -----------------------------------------------------------------------------------
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    if [ "$dry" = 1 ]; then
        TORCH_CUDA_ARCH_LIST=9.0  # what an H100 or H200 builds
    else
        TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["capability"])' \
            "$out/env.json" 2>/dev/null ||
            timeout 60 "$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' \
                2>/dev/null || echo 9.0)
    fi
fi
export TORCH_CUDA_ARCH_LIST
echo "gpu_check: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, $MAX_JOBS build jobs, build folder $CCNET_EDU_BUILD_DIR"
if wanted build; then
    if [ "$own_build_dir" = 1 ] && [ -d "$CCNET_EDU_BUILD_DIR" ]; then
        # A killed run leaves torch's lock file (a later build would wait on it for ever)
        # and objects of an unfinished build: a library folder without its .so starts over.
        {
            find "$CCNET_EDU_BUILD_DIR" -maxdepth 2 -name lock -type f -print -delete
            for d in "$CCNET_EDU_BUILD_DIR"/*/; do
                compgen -G "$d*.so" >/dev/null || { echo "unfinished: $d"; rm -rf "$d"; }
            done
        } >"$logs/build_cleanup.log" 2>&1
    fi
    load() { echo "from ccnet_edu.ops import _build; print(_build.load_$1(verbose=True))"; }
    run_step build_cpu "$cap_build" "$keep_tests" "$PY" -c "$(load cpu)" &
    cpu_job=$!
    if [ "$dry" = 1 ] && ! "$PY" -c 'import sys; from ccnet_edu.ops import find_nvcc; sys.exit(find_nvcc() is None)'; then
        record build_cuda - 0 - "dry run: no nvcc here"
    else
        run_step build_cuda "$cap_build" "$keep_tests" "$PY" -c "$(load cuda)"
    fi
    wait "$cpu_job"
else
    not_selected build
fi

# tests and, beside them, the sanitizer ------------------------------------------------------
gpu_tests=(  # the quick ones first: test_gpu.py ends with FlexAttention's compilations
    tests/test_ops.py::test_gpu_matches_reference
    tests/test_ops.py::test_gpu_gradcheck_and_opcheck
    tests/test_gpu.py
)
jobs_here=()
if wanted tests; then
    run_step tests "$cap_tests" "$keep_bench" env CCNET_EDU_CUDA_POISON=1 \
        "$PY" benchmarks/gpu_check.py tests --log-dir "$logs" --per-test "$per_test" "${gpu_tests[@]}" &
    jobs_here+=($!)
else
    not_selected tests
fi
if wanted sanitize; then
    sanitizer=$(command -v compute-sanitizer ||
        compgen -G '/usr/local/cuda*/bin/compute-sanitizer' ||
        compgen -G '/usr/local/cuda*/compute-sanitizer/compute-sanitizer' ||
        echo compute-sanitizer)
    sanitizer=${sanitizer%%$'\n'*}
    if [ "$dry" = 1 ]; then
        {
            echo "compute-sanitizer: $sanitizer"
            timeout 30 "$sanitizer" --version 2>&1 | tail -n 2 || echo "(not here)"
        } >"$logs/sanitizer_version.log" 2>&1
        (
            run_step memcheck "$cap_memcheck" "$keep_bench" "$PY" benchmarks/gpu_check.py sanitize --dry-run
            run_step racecheck "$cap_racecheck" "$keep_bench" "$PY" benchmarks/gpu_check.py sanitize --small --dry-run
        ) &
    else
        (
            run_step memcheck "$cap_memcheck" "$keep_bench" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
                "$sanitizer" --tool memcheck --leak-check no --error-exitcode 1 --print-limit 50 \
                "$PY" benchmarks/gpu_check.py sanitize
            run_step racecheck "$cap_racecheck" "$keep_bench" \
                "$sanitizer" --tool racecheck --error-exitcode 1 --print-limit 50 \
                "$PY" benchmarks/gpu_check.py sanitize --small
        ) &
    fi
    jobs_here+=($!)
else
    not_selected sanitize
fi
for job in "${jobs_here[@]}"; do wait "$job"; done

# timing ------------------------------------------------------------------------------------
if wanted bench; then
    run_step bench "$cap_bench" "$keep_notebooks" "$PY" benchmarks/gpu_check.py bench \
        --csv "$out/gpu_check.csv" --env "$out/env.json" $dry_flag
else
    not_selected bench
fi

# notebooks ---------------------------------------------------------------------------------
[ -n "$wheels_job" ] && wait "$wheels_job"
if wanted notebooks; then
    if [ -n "${GPU_CHECK_NOTEBOOKS:-}" ]; then
        read -r -a notebooks <<<"$GPU_CHECK_NOTEBOOKS"
    elif [ "$dry" = 1 ]; then
        notebooks=(notebooks/03_recurrent_propagation.ipynb notebooks/04b_fast_on_a_gpu.ipynb)
    else
        notebooks=(notebooks/*.ipynb)
    fi
    cores=$(nproc)
    nb_jobs=$((${#notebooks[@]} < cores ? ${#notebooks[@]} : cores))
    threads=$((cores / nb_jobs > 2 ? cores / nb_jobs : 2))
    [ "$dry" = 1 ] && threads=1
    run_step notebooks "$cap_notebooks" 0 env PYTHONPATH="$work/site:$PYTHONPATH" \
        "$PY" benchmarks/gpu_check.py notebooks --log-dir "$logs" --jobs "$nb_jobs" \
        --threads "$threads" "${notebooks[@]}"
else
    not_selected notebooks
fi

trap - TERM INT
pack
echo
cat "$out/summary.md" 2>/dev/null || echo "gpu_check: no summary (see $out/logs.tar.gz)"
awk -F '\t' '$2 != "0" && $2 != "-" { bad = 1 } END { exit bad }' "$logs/steps.tsv"
