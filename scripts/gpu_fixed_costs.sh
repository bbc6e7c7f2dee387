#!/usr/bin/env bash
# Issue 21, session 10 (helper s10-21): full decode B=4 16K's fixed costs. Run from the repository root (main with
# gpu_probe.py fixed_costs_defaults); logs in $OUT. Budget: <= 90 s wall.
# FIXED_COSTS_SECTION (default fixed_costs_defaults):
#  - fixed_costs_defaults: fwd.SPLIT_LATE_DEPENDENTS against shipped, three alternated rounds, at every split
#    launch a default would change (full decode B=4 16K, B=8 8K, B=16 4K / 16K / 1K, e4m3 decode B=4 / 16 16K, full
#    verify k=4 B=16 1K / 8K), bitwise against shipped;
#  - fixed_costs: per-program %globaltimer stamps of the split and merge launches (ramp, drain, merge) and the
#    candidate set FIXED_COSTS_SET (s10a: s10-call1's, s10b: s10-call5's), FA3 beside; raw records $OUT/stamps.pt.
set -uo pipefail
out=${OUT:-/tmp/21-out}
mkdir -p "$out" /tmp/site
[ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 OUT="$out"
section=${FIXED_COSTS_SECTION:-fixed_costs_defaults}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
git log --oneline -1 > "$out/commit.txt" 2>&1
# Compile every variant into Triton's cache in parallel processes (PROBE_WARM=1 times nothing).
warm() {  # name, then environment assignments
  local name=$1; shift
  env PROBE_WARM=1 "$@" timeout 50 python3 scripts/gpu_probe.py "$section" > "$out/warm-$name.log" 2>&1 &
}
if [ "$section" = fixed_costs_defaults ]; then
  warm decode "FIXED_COSTS_CASES=full decode B=4 16K,full decode B=16 1K"
  warm fp8a "FIXED_COSTS_CASES=e4m3 decode B=4 16K"
  warm fp8b "FIXED_COSTS_CASES=e4m3 decode B=16 16K"
  warm verify1k "FIXED_COSTS_CASES=full verify k=4 B=16 1K"
  warm verify8k "FIXED_COSTS_CASES=full verify k=4 B=16 8K"
else
  warm shipped FIXED_COSTS_VARIANTS=shipped
  warm late "FIXED_COSTS_VARIANTS=late,early + preload 1"
  warm lep1 "FIXED_COSTS_VARIANTS=late + early + preload 1"
fi
wait
echo "warm done after $(elapsed) s" | tee "$out/times.txt"
timeout $(( 87 - $(elapsed) )) python3 scripts/gpu_probe.py "$section" > "$out/fixed-costs.log" 2>&1
echo "probe rc $? after $(elapsed) s" | tee -a "$out/times.txt"
grep -h -i -E "error|Traceback" "$out"/warm-*.log | head -20 > "$out/warm-errors.txt"
cat "$out/fixed-costs.log"
