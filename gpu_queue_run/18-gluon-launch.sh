#!/bin/bash
# Issue 18, the Gluon forward's launch host cost (helper wt-18g): gluon_fwd.forward planned once per call signature,
# then Triton's compiled launcher called directly with the four tensor descriptors copied per call (_launch.Launch +
# Descriptor), instead of JITFunction.run + four TensorDescriptor.from_tensor per call (~185 us host at 18:20).
# 1) tests/gpu/test_gluon_launch.py: direct launch == plain launch bit for bit (output, LSE) on gpt-oss W(127,0)
#    D64 sinks, causal D128, varlen W(255,0) D128, paged-16 W(127,0) D64; nothing recompiled; a CUDA graph of direct
#    launches. 2) scripts/host_profile.py, the Gluon kernel forced (GLUON_MODE=1): host / eager / graph us per call,
#    direct vs plain launch (_launch.DIRECT_LAUNCH off), prefill 4K and 16K W(127,0) D64 gpt-oss and 16K causal
#    D128 (H32/8), then the 4K launch taken apart (gluon_parts). At most 88 s.
set -u
export SWATTN_TEST_DEVICE=cuda
start=$(date +%s)
timeout 42 python -m pytest -n 5 -v --tb=short -p no:cacheprovider tests/gpu/test_gluon_launch.py \
    > "$OUT/18-gluon-launch-tests.log" 2>&1
rc_tests=$?
echo "18-gluon-launch tests: exit $rc_tests (124 = timed out) after $(( $(date +%s) - start )) s"
grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/18-gluon-launch-tests.log" | cut -c1-160 | tail -9
grep -E "^E  " "$OUT/18-gluon-launch-tests.log" | head -8 | cut -c1-220
left=$(( 88 - ($(date +%s) - start) ))
timeout $left python scripts/host_profile.py --calls 300 \
    --only gluon_4k,gluon_4k_plain,gluon_parts,gluon_16k,gluon_16k_plain,gluon_causal,gluon_causal_plain \
    --out "$OUT/18-gluon-launch-profile.txt" > "$OUT/18-gluon-launch-profile.log" 2>&1
rc_profile=$?
echo "18-gluon-launch profile: exit $rc_profile (124 = timed out; what was measured is in the .log)"
grep -E "^## |^host |^[a-zA-Z0-9 ._()\[\]'/,-]+: [0-9.]+ \(best|^grid|did not serve|FAILED" \
    "$OUT/18-gluon-launch-profile.log" | cut -c1-200 | head -40
[ $rc_tests -eq 0 ] && exit $rc_profile
exit $rc_tests
