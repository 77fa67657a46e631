#!/usr/bin/env bash
# The checks a CPU cannot make, in at most 8 minutes on one GPU; one summary table at the end.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default: results/gpu_check
#
# 1. the CUDA path of the test suite (tests marked `cuda`; skipped on CPU machines);
# 2. a tiny and a full-size (RRDB 23, gt 256, batch 12) GAN + LDL step: the released step in fp32 against ours
#    in fp32, bf16 and fp16 AMP, with and without channels_last, and bf16 + channels_last + torch.compile;
# 3. the LDL map, detection (indicator) and tiling benchmarks on the GPU.
# Each part has its own time limit, so one slow part cannot eat the others' time; a part that fails or times
# out is reported in the table and the others still run. Without CUDA it says so in one line and exits 0.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: skipped: no CUDA device here (torch.cuda.is_available() is False)"
    exit 0
fi

OUT=${1:-results/gpu_check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
START=$(date +%s)
"$PY" - <<'EOF' > "$SUMMARY"
import torch
p = torch.cuda.get_device_properties(0)
print(f'# gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')
print()
print('| part | status | seconds | log |')
print('|---|---|---|---|')
EOF

part() {  # part NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local log="$OUT/${name}.log" t0 rc status
    t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124|130|137) status="timed out (${limit}s)" ;; *) status="failed (exit $rc)" ;; esac
    echo "| $name | $status | $(( $(date +%s) - t0 )) | $log |" >> "$SUMMARY"
    tail -n 25 "$log"
}

part cuda_tests 100 "$PY" -m pytest -q -m cuda tests/
part train_step_tiny 40 "$PY" benchmarks/train_step.py --device cuda --blocks 2 --gt-size 128 --batch 2 \
    --repeats 3 --variants plain fp32 bf16 fp16 bf16+cl
part train_step_full 200 "$PY" benchmarks/train_step.py --device cuda --blocks 23 --gt-size 256 --batch 12 \
    --repeats 3 --variants plain fp32 fp32+nocl bf16 bf16+cl fp16+cl bf16+cl+compile
part ldl_map 50 "$PY" benchmarks/ldl_map.py --device cuda --threads 1 --load none
part detect_indicator 30 "$PY" benchmarks/detect_indicator.py --part indicator --device cuda
part tiling 40 "$PY" benchmarks/tiling.py --device cuda --quick

{
    echo
    echo "Total: $(( $(date +%s) - START )) s"
    for f in train_step_tiny train_step_full ldl_map detect_indicator tiling; do
        [ -f "$OUT/$f.log" ] || continue
        echo
        echo "## $f"
        echo
        grep -E '^\||x$|ratio|speed' "$OUT/$f.log" | head -n 40
    done
} >> "$SUMMARY"
echo
cat "$SUMMARY"
