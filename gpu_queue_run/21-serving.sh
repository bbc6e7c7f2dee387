#!/bin/bash
# Issue 21 (serving step), wt-21, session 5. At most ~88 s:
#   phase 1 (<= 32 s): the serving GPU tests (tests/gpu/test_serving_bf16.py, -n 8);
#   phase 2 (<= 20 s, parallel): scripts/gpu_probe.py verify_ablate / fused_append_splits compile (PROBE_WARM=1);
#   phase 3 (<= 34 s): verify_ablate (W(127,0) verify k = 1, 2, 4, 8 without the append, the isolation, both, 4 warps;
#            decode with 8 warps), then fused_append_splits (the model step's full layer, B=16 8K: fused append at the
#            automatic split count and at 5 / 4 / 3 splits, against the append launch). FA3 is not in these probes.
# Runs from the root of a copy of main, PYTHONPATH=.:/tmp/site.
OUT=${OUT:-/tmp/out21}
mkdir -p "$OUT"
echo "21-serving (s5): main $(git rev-parse --short HEAD 2>/dev/null)"
SWATTN_TEST_DEVICE=cuda timeout 32 python -m pytest -q -x -n 8 -p no:cacheprovider --tb=short \
    tests/gpu/test_serving_bf16.py > "$OUT/21-tests.log" 2>&1
echo "tests rc=$? (124: cut by its timeout): $(tail -1 "$OUT/21-tests.log")"
export PROBE_ROUNDS=1
for part in 1,2 4 8; do
    PROBE_WARM=1 PROBE_KS=$part timeout 20 python scripts/gpu_probe.py verify_ablate > "$OUT/21-warm-$part.log" 2>&1 &
done
PROBE_WARM=1 timeout 20 python scripts/gpu_probe.py fused_append_splits > "$OUT/21-warm-full.log" 2>&1 &
wait
timeout 34 python scripts/gpu_probe.py verify_ablate fused_append_splits > "$OUT/21-serving.log" 2>&1
echo "probes rc=$? (124: cut by its timeout)"
grep -E "^##|  k=[0-9]+ |splits|failed" "$OUT/21-serving.log" | head -50
