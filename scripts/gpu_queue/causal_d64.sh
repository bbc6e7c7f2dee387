# Issue 17: gpt-oss's causal D64 layers (64 query heads, 8 KV heads, with and without sinks) against FA3: the GPU
# tests of three consumer warpgroups over 128-key blocks (FA3's 192 x 128 tile) with HALF_DIAGONAL off and on, then
# the probe's two causal D64 rows over the candidates (~60-80 s a row with compiles). Ship a candidate only if it
# wins here and in a second run (docs/notes/2026-12-03-gluon-forward.md, "Session 15, helper s15-d64").
source scripts/gpu_queue/peers.sh
SWATTN_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_gluon_fwd.py \
  -k three_warpgroups 2>&1 | tail -15
timeout 240 python3 scripts/gpu_gluon_probe.py --rows causal_D64 --variants shipped,3WG,S3,half_diag,packed_2WG,FA3 \
  --rounds 7 --reps 3 --out "$OUT/probe.md"
