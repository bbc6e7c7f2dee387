#!/usr/bin/env bash
# Issue 21, session 10 (helper s10-21): where full decode B=4 16K's ~10 us per call that stream nothing go.
# Run from the repository root (needs main with fwd.SPLIT_LATE_DEPENDENTS / SPLIT_BALANCED); logs in $OUT. <= 90 s wall.
# FIXED_COSTS_SET=s10a: s10-call1's candidates (preload, early dependents, no PDL, split counts) instead.
# `python scripts/gpu_probe.py fixed_costs`: per-program %globaltimer stamps of the split and merge launches in a
# replayed graph of 20 calls (ramp, drain, split -> merge, the merge, merge -> next call), candidate fixes against
# the shipped path, FA3 beside. Raw stamp records: $OUT/stamps.pt ({variant: [split, merge] records}).
set -uo pipefail
out=${OUT:-/tmp/21-out}
mkdir -p "$out" /tmp/site
[ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 OUT="$out"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
git log --oneline -1 > "$out/commit.txt" 2>&1
# Compile every variant into Triton's cache in parallel processes (PROBE_WARM=1 times nothing).
warm() {  # name, then environment assignments
  local name=$1; shift
  env PROBE_WARM=1 "$@" timeout 50 python3 scripts/gpu_probe.py fixed_costs > "$out/warm-$name.log" 2>&1 &
}
warm shipped FIXED_COSTS_VARIANTS=shipped
warm late "FIXED_COSTS_VARIANTS=late,late + balanced"
warm balanced "FIXED_COSTS_VARIANTS=balanced,early + preload 1"
warm lep1 "FIXED_COSTS_VARIANTS=late + early + preload 1"
warm lbep1 "FIXED_COSTS_VARIANTS=late + balanced + early + preload 1"
wait
echo "warm done after $(elapsed) s" | tee "$out/times.txt"
timeout $(( 87 - $(elapsed) )) python3 scripts/gpu_probe.py fixed_costs > "$out/fixed-costs.log" 2>&1
echo "probe rc $? after $(elapsed) s" | tee -a "$out/times.txt"
grep -h -i -E "error|Traceback" "$out"/warm-*.log | head -20 > "$out/warm-errors.txt"
cat "$out/fixed-costs.log"
