#!/bin/bash
# Issue 18 (helper wt-18b): eager host cost of the backward and the decodes with the append, on main. At most 88 s.
# 1. scripts/eager_gap.py: the full decode with the append launch (46.1 us host but 83.9 us eager at 19:33) and the
#    plain full decode: host and eager before and after a CUDA-graph capture, a profiler trace (GPU busy time and
#    span per call, CUDA API calls per call), then the same with SWATTN_PDL=0 (a child process).
# 2. python -m swattn.bench host --rows decode,backward with FA3: the decode rows (window and full, with and
#    without the append) and the backward rows (swattn, multithreading off, the autograd engine alone).
# 3. scripts/host_profile.py --only decode_full_append (cProfile of the call).
set -u
timeout 30 python scripts/eager_gap.py --only decode_full_append,decode_full --variants pdl0 --calls 120 \
    > "$OUT/18-host-b-gap.log" 2>&1
echo "eager_gap: exit $? (124 = timed out)"
grep -v "^$" "$OUT/18-host-b-gap.log" | grep -v Warning | cut -c1-400 | head -24
timeout 44 python -m swattn.bench host --providers swattn,fa3 --rows decode,backward --out "$OUT/18-host-b-bench.md" \
    > "$OUT/18-host-b-bench.log" 2>&1
echo "bench host: exit $? (124 = timed out; rows measured so far are in the .log)"
grep "^|" "$OUT/18-host-b-bench.md" 2>/dev/null | cut -c1-200 || tail -20 "$OUT/18-host-b-bench.log"
timeout 12 python scripts/host_profile.py --only decode_full_append --calls 300 --out "$OUT/18-host-b-profile.txt" \
    > "$OUT/18-host-b-profile.log" 2>&1
echo "host_profile: exit $?"
grep "^host\|^kernels" "$OUT/18-host-b-profile.log" | cut -c1-300
exit 0
