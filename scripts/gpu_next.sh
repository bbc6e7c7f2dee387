#!/usr/bin/env bash
# On the GPU machine: the next device run of docs/performance.md ("Plan for the next device run"), one part per
# device call (each fits the 600 s limit of one call). Logs and tables land in $OUT. Carry .peer-kernels for
# "bench" and "backward". Usage: SWATTN_COMMIT=<sha> bash scripts/gpu_next.sh fused|bench|backward|tests
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export SWATTN_COMMIT=${SWATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
OUT=${OUT:-/tmp}
case "${1:-}" in
  fused)  # the experimental fused append (swattn.ops.FUSED_APPEND): bitwise against the append launch, then timed
    SWATTN_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -x tests/gpu -k fused_append 2>&1 | tail -3 \
      | tee "$OUT/tests_fused.log"
    timeout 300 python3 scripts/gpu_probe.py fused_append 2>&1 | tee "$OUT/fused_append.log" ;;
  bench)  # decode with peers after the epilogue change, and the W(127,0) D64 prefill with FA3 and Flex
    timeout 250 bash scripts/gpu_bench.sh "decode --page-sizes 16,1 --contexts 1024,131072 --providers \
swattn,fa4,fa3,flex" 2>&1 | grep -v eager | grep "^|" | tee "$OUT/decode.log"
    timeout 300 bash scripts/gpu_bench.sh "prefill --seqlens 16384 --head-dims 64 --lefts 127 --providers \
swattn,fa3,flex" 2>&1 | grep "^|" | tee "$OUT/prefill.log" ;;
  backward)  # issue 5: forward + backward at 32K against Flex (~6 min, most of it Flex's compile)
    timeout 560 bash scripts/gpu_bench.sh "backward --seqlens 32768 --providers swattn,flex" 2>&1 | grep "^|" \
      | tee "$OUT/backward.log" ;;
  tests)  # all of tests/gpu in two halves (~7 min)
    SWATTN_TEST_DEVICE=cuda timeout 280 python3 -m pytest -q -x tests/gpu \
      -k "paged_decode or backward or programmatic or split_kv or gpt_oss or edge_only" 2>&1 | tail -5 | tee "$OUT/tests1.log"
    SWATTN_TEST_DEVICE=cuda timeout 280 python3 -m pytest -q -x tests/gpu \
      -k "not (paged_decode or backward or programmatic or split_kv or gpt_oss or edge_only)" 2>&1 | tail -5 \
      | tee "$OUT/tests2.log" ;;
  *) echo "usage: bash scripts/gpu_next.sh fused|bench|backward|tests" >&2; exit 2 ;;
esac
