#!/usr/bin/env bash
# On the H200: the Gluon forward's GPU tests, then the 16K prefill benchmark (Gluon, the Triton kernels and the
# peers in one run); GLUON_BENCH=probe runs scripts/gpu_gluon_probe.py's variants instead (PROBE_ARGS passed on),
# none the tests only. A shorthand for scripts/gpu_verify.sh. Usage: bash scripts/gpu_gluon.sh [pytest -k expression]
case "${GLUON_BENCH:-bench}" in
  bench) scenario="prefill --seqlens 16384" ;;
  probe) scenario=probe ;;
  *) scenario= ;;
esac
TESTS=tests/gpu/test_gluon_fwd.py TEST_K="${1:-}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-420}" \
  exec bash "$(dirname "$0")/gpu_verify.sh" ${scenario:+"$scenario"}
