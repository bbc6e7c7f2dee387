# Issue 17: HALF_DIAGONAL (SOFTMAX_TRIMS bit 1024, off by default): its GPU tests, then the probe's D128 rows with
# it against the shipped kernel and FA3 (~250-300 s with compiles). Ship it (Triton < 3.7 only: 3.9's stack) if it
# wins causal D128 here and in a second run.
source scripts/gpu_queue/peers.sh
SWATTN_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_gluon_fwd.py \
  -k half_diagonal 2>&1 | tail -15
timeout 200 python3 scripts/gpu_gluon_probe.py --rows D128 --variants shipped,diag,FA3 --rounds 7 --reps 3 \
  --out "$OUT/probe.md"
