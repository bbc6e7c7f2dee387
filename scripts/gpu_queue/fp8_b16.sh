# Issue 22: the fp8-kv full decode B=16 16K work split again (s14-call3-12: one-warp pairs (32, 1, 168) at 8 per SM
# 79.6 us against 81.4-82.4 shipped, one run); a second run decides the B=16 default (~40-60 s).
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 scripts/gpu_fp8_decode.py --copy 4222 s14_b16_16k
