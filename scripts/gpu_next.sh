#!/usr/bin/env bash
# On the GPU machine: the next device run of docs/performance.md ("Plan for the next device run"), one part per
# device call (each fits the 600 s limit of one call). Logs and tables land in $OUT. Carry .peer-kernels for
# "bench" and "backward". Usage: SWATTN_COMMIT=<sha> bash scripts/gpu_next.sh probe|bench|backward|tests
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export SWATTN_COMMIT=${SWATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
OUT=${OUT:-/tmp}
case "${1:-}" in
  probe)  # the short-context split rule at 1K/4K against the sweep's rows, host time per eager call (~4 min)
    timeout 200 python3 scripts/gpu_splits.py 4,1024 16,1024 4,4096 16,4096 --configs 128,4,1,1/64,2,3 \
      --splits 4,8,16 2>&1 | tee "$OUT/splits.log"
    # host time per eager decode call after the host-side trims (225-307 us on the H100 host before them)
    timeout 150 python3 scripts/gpu_probe.py eager 2>&1 | tee "$OUT/eager.log"
    timeout 60 python3 scripts/host_time.py 2>&1 | tee "$OUT/host_time.log" ;;
  bench)  # full decode at short contexts (the new split rule) and the D128 prefill rows under the graph timer
    timeout 200 bash scripts/gpu_bench.sh "decode --page-sizes 16,1 --contexts 1024,4096 --providers swattn,fa4,fa3" \
      2>&1 | grep -v eager | grep "^|" | tee "$OUT/decode.log"
    timeout 380 bash scripts/gpu_bench.sh "prefill --seqlens 16384 --head-dims 128 --lefts 127,4095 --providers \
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
  *) echo "usage: bash scripts/gpu_next.sh probe|bench|backward|tests" >&2; exit 2 ;;
esac
