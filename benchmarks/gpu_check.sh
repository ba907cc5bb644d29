#!/usr/bin/env bash
# One command for a GPU machine (torch and triton installed, no network, mamba_ssm not needed):
# the GPU tests, then benchmarks/gpu_check.py (parity, throughput, scan variants, memory, a bf16
# training run), within about 8 minutes on one H100. Results go to $OUT (default gpu_check_out/):
# pytest.txt, gpu_check.json, gpu_check.md.
#
# Usage: benchmarks/gpu_check.sh [--rehearse]
#   --rehearse (automatic without CUDA): CPU dry run at toy sizes; GPU-only parts are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RESTORECLI_OFFLINE=1
REHEARSE=0
for arg in "$@"; do
    [ "$arg" = "--rehearse" ] && REHEARSE=1
done
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    REHEARSE=1
fi

if [ "$REHEARSE" = 1 ]; then
    # the GPU tests skip without CUDA; collecting them proves the selection works
    TESTS=(-m gpu tests/test_selective_scan.py tests/test_scan_triton.py)
    TEST_LIMIT=60
    BUDGET=120
    EXTRA=(--rehearse)
else
    # GPU-marked tests, and the Triton tests, which run compiled on the GPU (each kernel variant
    # compiles once, a few seconds each)
    TESTS=(tests/test_scan_triton.py tests/test_selective_scan.py -k "triton or cuda or gpu")
    TEST_LIMIT=150
    BUDGET=300
    EXTRA=()
fi

echo "[gpu_check] tests (at most ${TEST_LIMIT} s) -> $OUT_DIR/pytest.txt" >&2
timeout "$TEST_LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" >"$OUT_DIR/pytest.txt" 2>&1
TEST_RC=$?
tail -n 3 "$OUT_DIR/pytest.txt" >&2
# 5: every test deselected (the rehearsal on a machine without CUDA)
if [ "$TEST_RC" != 0 ] && [ "$TEST_RC" != 5 ]; then
    echo "[gpu_check] tests exited with $TEST_RC (124: time limit); continuing with the benchmarks" >&2
fi

"$PYTHON" benchmarks/gpu_check.py --out "$OUT_DIR" --budget-s "$BUDGET" "${EXTRA[@]}"
CHECK_RC=$?
echo "[gpu_check] tests rc=$TEST_RC, check rc=$CHECK_RC; see $OUT_DIR/gpu_check.md" >&2
if [ "$CHECK_RC" != 0 ] || { [ "$TEST_RC" != 0 ] && [ "$TEST_RC" != 5 ]; }; then
    exit 1
fi
exit 0
