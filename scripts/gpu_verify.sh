#!/usr/bin/env bash
# On the H200, one device call: the GPU tests of every path that has not run there yet (pytest-xdist, 4 workers),
# then the benchmark scenarios given as arguments (each a quoted `python -m swattn.bench` argument list, or
# "probe" for scripts/gpu_gluon_probe.py with $PROBE_ARGS). Logs and tables land in $OUT.
# Usage: TESTS="tests/gpu/x.py ..." bash scripts/gpu_verify.sh "host" "probe"
set -uo pipefail
if [ -d .peer-kernels ]; then
  mkdir -p /tmp/site
  [ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site
  [ -d /tmp/site/flash_attn/cute ] || [ ! -f .peer-kernels/fa4site.tar.xz ] || tar -xJf .peer-kernels/fa4site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
export SWATTN_COMMIT=${SWATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
if [ -n "${TESTS:-}" ]; then
  # -v: every result is logged as it ends, so a run cut by its timeout still names what failed.
  # shellcheck disable=SC2086
  SWATTN_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -v --tb=short -n "${WORKERS:-4}" \
    -p no:cacheprovider $TESTS ${TEST_K:+-k "$TEST_K"} > "$out/tests.log" 2>&1
  echo "pytest exit $? (124: cut by TEST_TIMEOUT)"
  grep -E " (FAILED|ERROR) " "$out/tests.log" | head -30
  tail -3 "$out/tests.log"
fi
i=0
for scenario in "$@"; do
  i=$((i + 1))
  if [ "$scenario" = probe ]; then
    # shellcheck disable=SC2086
    timeout "${PROBE_TIMEOUT:-240}" python3 scripts/gpu_gluon_probe.py ${PROBE_ARGS:-} --out "$out/gluon-probe.md" 2>&1 | tail -40
  else
    name="bench-${scenario%% *}-$i"
    timeout "${BENCH_TIMEOUT:-200}" python3 -m swattn.bench $scenario --out "$out/$name.md" 2>&1 | tail -40
  fi
done
