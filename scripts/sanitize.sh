#!/usr/bin/env bash
# compute-sanitizer over scripts/sanitize_cases.py on the GPU: memcheck (every global access lands inside an
# allocation) and racecheck (shared-memory hazards). Logs go to $OUT (or /tmp); exits non-zero on any error.
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
out=${OUT:-/tmp}
# Compile every kernel once outside the sanitizer (Triton caches them on disk): the sanitized runs only launch.
python3 scripts/sanitize_cases.py > "$out/sanitize_warmup.log" 2>&1 || { tail -20 "$out/sanitize_warmup.log"; exit 1; }
# One cudaMalloc per tensor: an access past a tensor's end then falls outside every allocation and is reported,
# instead of landing in a neighbour inside one of the caching allocator's large blocks.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 python3 scripts/sanitize_cases.py \
    > "$out/sanitize_$tool.log" 2>&1
  rc=$?
  echo "$tool: exit $rc; $(grep -c '^ok' "$out/sanitize_$tool.log") cases ok;" \
       "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|mismatches' "$out/sanitize_$tool.log" | tr '\n' ' ')"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
