# Issue 22: the all-fp8 full decode (q, K, V e4m3, FA3's fp8 API) on fp8-kv's two KV heads per program
# (configs.FP8_QKV_PAIRS: e4m3 q widened to fp16 in the kernel, q_descale in each row's score scale; off by default
# until this runs). First its correctness (both switch settings against the reference on the dequantized inputs,
# B=16 16K / B=4 16K / B=16 ~128K; exits 1 on a failure), then the timings: bf16, fp8-kv shipped, all-fp8 one KV
# head per program (shipped) and on the pairs, mirrored, at the same three shapes (~100-120 s in all).
# Flip FP8_QKV_PAIRS on if the pairs are right and faster at every shape (docs/notes/2026-12-03-fp8-kv-cache.md,
# session 15, helper s15-fp8q, has the prediction).
export PYTHONPATH=$PWD:${PYTHONPATH:-}
timeout 75 python3 scripts/gpu_fp8_qkv_pairs_check.py
timeout 100 python3 scripts/gpu_fp8_decode.py --copy 4222 s15q_b16_16k s15q_b4_16k s15q_b16_128k
