#!/usr/bin/env bash
# On the GPU machine, the reliability runs; logs land in $OUT (or /tmp). Steps, each one argument:
#   tests          the whole pytest suite on CUDA (SWATTN_TEST_DEVICE=cuda; tests/gpu adds bf16 at real sizes)
#   sanitize       scripts/sanitize.sh (compute-sanitizer memcheck and racecheck)
#   selfcheck:N    python -m swattn.selfcheck --minutes N
# e.g. bash scripts/gpu_reliability.sh tests sanitize selfcheck:5
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader);" \
     "$(python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
status=0
for step in "$@"; do
  start=$(date +%s)
  case "$step" in
    tests)
      SWATTN_TEST_DEVICE=cuda timeout "${TESTS_TIMEOUT:-500}" python3 -m pytest -q -n 8 -p no:cacheprovider -rfE tests \
        > "$out/pytest_cuda.log" 2>&1
      rc=$?; grep -E "passed|failed|error" "$out/pytest_cuda.log" | tail -3
      grep -E "^(FAILED|ERROR)" "$out/pytest_cuda.log" | head -40 ;;
    sanitize)
      timeout "${SANITIZE_TIMEOUT:-560}" bash scripts/sanitize.sh; rc=$? ;;
    selfcheck:*)
      timeout $(( ${step#selfcheck:} * 60 + 120 )) python3 -m swattn.selfcheck --minutes "${step#selfcheck:}" \
        > "$out/selfcheck.log" 2>&1
      rc=$?; tr '\r' '\n' < "$out/selfcheck.log" | grep -v '^\s*$' | tail -40 ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  echo "== $step: exit $rc in $(( $(date +%s) - start )) s"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
