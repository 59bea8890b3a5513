#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# One GPU session, everything it measures written to $OUT (default .gpu/out), step by step,
# so that a step that fails or runs out of time loses nothing written before it:
#
#   env       device, driver, versions, date, commit
#   tests     tests/test_triton.py without gpu_long (pytest-xdist, per-test timeout, -rf to
#             failed.txt, per-test durations, junit XML) with the short autotune list; writes
#             the verification record verified.json (the committed one plus this run)
#   headline  attention_gpu.py at B=8 128x128 C=128 window 8: triton, sdpa, timm, timm compiled
#   backward  tune_triton.py --backward-only: query rows, warps, programs/SM against the floor
#   host      triton_host.py: eager against CUDA graph, host profile of one fwd+bwd
#   models    models_gpu.py: STF and WACNN against the official code (needs CompressAI 1.2.8
#             and the official files in .gpu/STF; see docs/triton.md)
#   grid      attention_gpu.py --grid, triton, bf16, tuned autotune key
#   compare   headline and grid against the committed H100 results, row by row
#   long      the gpu_long tests, if time is left
#
# Usage (repository root):
#   bash benchmarks/gpu_session.sh              # on the GPU machine
#   bash benchmarks/gpu_session.sh --dry-run    # on the CPU: every step small, interpreter
# Environment: GPU_SESSION_BUDGET (seconds for all steps, default 450), GPU_SESSION_STEPS
# (the steps to run, in order; e.g. "tests" for a rerun), PYTHON (default python3),
# STF_OFFICIAL (default .gpu/STF).
#
# With the device tool (carry .whl and .gpu/STF, made by benchmarks/gpu_prepare.sh;
# timeout_s 540 leaves a few minutes of a 15-minute lease for a short rerun):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
#     bash benchmarks/gpu_session.sh
#
# $OUT keeps at most a few files (the device tool returns 8): session.tgz (every log and JSON,
# repacked after each step), summary.txt, verified.json, failed.txt.

set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$ROOT/.gpu/out}
PY=${PYTHON:-python3}
BUDGET=${GPU_SESSION_BUDGET:-450}
STEPS=${GPU_SESSION_STEPS:-env tests headline backward host models grid compare long}
OFFICIAL=${STF_OFFICIAL:-$ROOT/.gpu/STF}
WORK=$(mktemp -d /tmp/gpu_session.XXXXXX)
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$WORK/triton_cache TRITON_CACHE_AUTOTUNING=1
if [ $DRY = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi
cp winattn/backends/triton/verified.json "$WORK/verified.json"

pack() {
    tar czf "$OUT/session.tgz.tmp" -C "$WORK" --exclude ./triton_cache . && mv "$OUT/session.tgz.tmp" "$OUT/session.tgz"
    cp "$WORK/summary.txt" "$WORK/verified.json" "$OUT/" 2>/dev/null
    [ -f "$WORK/failed.txt" ] && cp "$WORK/failed.txt" "$OUT/"
    return 0
}

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with a timeout of min(CAP, time left),
# its output in NAME.log; records the exit status and seconds in summary.txt.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ $left -lt 20 ]; then
        echo "$name: skipped, $left s of the budget left" | tee -a "$WORK/summary.txt"
        return
    fi
    local limit=$((cap < left ? cap : left)) t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc seconds=$(($(date +%s) - t0)) limit=$limit" | tee -a "$WORK/summary.txt"
    tail -n 15 "$WORK/$name.log"
    pack
}

has() { $PY -c "import $1" 2>/dev/null; }

run_env() {
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null || echo "commit: unknown (no .git here)"
    nvidia-smi 2>&1 | head -20
    $PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__)
try:
    import triton; print("triton", triton.__version__)
except ImportError: print("triton missing")
for name in ("timm", "compressai", "xdist", "pytest_timeout"):
    try:
        m = __import__(name); print(name, getattr(m, "__version__", "present"))
    except ImportError: print(name, "missing")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "capability", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count)
EOF
}

run_tests() {  # run_tests MARKER [extra pytest args]
    local marker=$1
    shift
    local opts=(-p no:cacheprovider -q -rf --durations=0 --junitxml="$WORK/junit-${marker// /_}.xml")
    has xdist && opts+=(-n "${GPU_SESSION_WORKERS:-8}")
    has pytest_timeout && opts+=(--timeout "${GPU_SESSION_TEST_TIMEOUT:-150}")
    WINATTN_TRITON_CONFIGS=few WINATTN_TRITON_RECORD_OUT="$WORK/verified.json" \
        $PY -m pytest tests/test_triton.py tests/backends/test_triton_verification.py -m "$marker" \
        "${opts[@]}" "$@"
    local rc=$?
    $PY -c "from pathlib import Path; from winattn.backends.triton.verification import merge_parts; merge_parts(Path('$WORK/verified.json'))"
    return $rc
}

# run_compare NEW.json OLD.json...: ratio table of matching rows (same shape, dtype, method, mode).
run_compare() {
    $PY - "$@" <<'EOF'
import json, sys
from pathlib import Path

new_path, *old_paths = map(Path, sys.argv[1:])
if not new_path.exists():
    sys.exit(f"{new_path} missing (its step failed or was skipped)")
new = json.loads(new_path.read_text())
key = lambda r: (r["batch"], r["size"], r["dim"], r["heads"], r["window"], r["dtype"], r["method"], r["mode"])
old = {}
for p in old_paths:
    data = json.loads(p.read_text())
    old.update({key(r): (r, data["device"]) for r in data["rows"] if "ms" in r})
print(f"new: {new['device']} {new['date']}")
for r in new["rows"]:
    if "ms" not in r or key(r) not in old:
        continue
    o, device = old[key(r)]
    print("B{} {}x{} C{} h{} w{} {} {:14s} {:14s} new {:8.3f} ms  old {:8.3f} ms ({})  new/old {:.2f}".format(
        r["batch"], r["size"], r["size"], r["dim"], r["heads"], r["window"], r["dtype"], r["method"],
        r["mode"], r["ms"], o["ms"], device, r["ms"] / o["ms"]))
EOF
}

failed_list() {
    grep -h "^FAILED\|^ERROR" "$WORK"/tests.log "$WORK"/long.log 2>/dev/null >"$WORK/failed.txt" || true
}

export -f has run_env run_tests run_compare
export WORK PY

for s in $STEPS; do
    case $s in
    env) step env 60 run_env ;;
    tests)
        if [ $DRY = 1 ]; then
            step tests 600 run_tests "not gpu and not gpu_long" -k "w4x4-s0x0-4x8 or smaller or verification"
        else
            step tests 270 run_tests "not gpu_long"
        fi
        failed_list
        pack
        ;;
    headline)
        if [ $DRY = 1 ]; then
            step headline 30 $PY benchmarks/attention_gpu.py --help
        else
            step headline 120 $PY benchmarks/attention_gpu.py --shape 8,128,128,4,8 \
                --methods triton sdpa timm timm-compiled --dtypes bf16 fp32 --out "$WORK/headline.json"
        fi
        ;;
    backward)
        if [ $DRY = 1 ]; then
            step backward 30 $PY benchmarks/tune_triton.py --help
        else
            step backward 90 $PY benchmarks/tune_triton.py --shape 8,128,128,4,8 --dtype bf16 \
                --backward-only --json "$WORK/backward.json"
        fi
        ;;
    host)
        if [ $DRY = 1 ]; then
            step host 120 $PY benchmarks/triton_host.py --mock --repeat 2 --inner 20 --json "$WORK/host.json"
        else
            step host 60 $PY benchmarks/triton_host.py --shape 8,128,128,4,8 --dtype bf16 --json "$WORK/host.json"
        fi
        ;;
    models)
        if [ $DRY = 1 ]; then
            step models 300 $PY benchmarks/models_gpu.py --official "$OFFICIAL" --device cpu --size 64 64 \
                --arch cnn --dtypes fp32 --train-batch 1 --train-size 64 --repeat 1 --json "$WORK/models.json"
        else
            WINATTN_TRITON_CONFIGS=few step models 180 $PY benchmarks/models_gpu.py --official "$OFFICIAL" \
                --json "$WORK/models.json"
        fi
        ;;
    grid)
        if [ $DRY = 1 ]; then
            step grid 30 $PY benchmarks/attention_gpu.py --help
        else
            step grid 150 $PY benchmarks/attention_gpu.py --grid --methods triton --dtypes bf16 \
                --modes fwd fwd-graph fwd+bwd-graph --out "$WORK/grid.json"
        fi
        ;;
    compare)
        OLD=(benchmarks/results/attention_gpu-H100-*.json)
        if [ $DRY = 1 ]; then
            step compare 60 run_compare "${OLD[0]}" "${OLD[@]}"
        else
            step compare 60 bash -c "run_compare '$WORK/headline.json' ${OLD[*]}; run_compare '$WORK/grid.json' ${OLD[*]}"
        fi
        ;;
    long)
        [ $DRY = 1 ] && continue
        step long 240 run_tests gpu_long
        failed_list
        pack
        ;;
    *) echo "unknown step $s" | tee -a "$WORK/summary.txt" ;;
    esac
done
echo "total: $(($(date +%s) - START)) s of a $BUDGET s budget" | tee -a "$WORK/summary.txt"
pack
cat "$WORK/summary.txt"
