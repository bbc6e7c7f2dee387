"""fp8 (e4m3) KV-cache decode under block configs, beside the bf16 decode of the same shape (GPU only).

gpt-oss layer (H=64/8, D=64, sinks, page 16): full-attention decode B=16 at 16K, B=4 at 128K and at 16K (split-KV,
the automatic split count), and window (127, 0) decode B=16 at 2K (48 input sets, so the windows come from HBM).
For each shape: swattn bf16 (shipped config), then ``fp8-kv`` (bf16 queries over the e4m3 cache) and ``fp8`` (q, K,
V e4m3) under the shipped config and the candidates of the shape's list, graph-replayed over several input sets
(cold caches, as ``python -m swattn.bench decode-fp8``), each checked against the bf16 cache's output (e4m3's own
rounding gives about 4% relative there; a broken kernel ~100%). Lines are printed as they are measured, most
important first, so a timeout keeps what ran; each gives us per call, the speed-up over bf16 and the share of the
copy bandwidth on the e4m3 bytes read (``--copy GBPS``, default the H200's 4,221 GB/s of s4-call1).

The questions (docs/notes/2026-12-03-fp8-kv-cache.md, session 4): the split loop's stages (3: one K/V buffer, 5:
two, 7: three; Triton 3.6, sm_90), the e4m3 widening in pairs, the page-table prefetch, and whether the cache's
layout is what holds e4m3 back: in FA3's [pages, page, Hk, D] a KV head's e4m3 row is 64 B, half an L2 line, at a
512-B stride (bf16: a whole 128-B line), so a block touches as many L2 lines as a bf16 block of twice the bytes.

Session 5: the 3-stage capped split loop shipped (configs.FP8_PAGED_SPLIT_STAGES) beside the old 7 stages, and
128-key e4m3 blocks (``WIDE``) at 3-4 programs per SM with one wave's split count (``per_sm``).

Session 6: whether the e4m3 decode is bound by HBM's handling of FA3's layout (a KV head's 64-byte rows at a
512-byte stride) rather than by the bytes a program keeps in flight: two KV heads per program whose tiles are
loaded on their own (``pair=3``: each 128-byte line's halves copied back to back), the split loop with an L2
prefetch of each
row's twin (the other KV head of its 128-byte line, ``partner=1``) or of a contiguous chunk of each page
(``partner=2``), the driver's L2 fetch granularity raised to 128 bytes (``l2fetch``, the context's
``CU_LIMIT_MAX_L2_FETCH_GRANULARITY``, restored after), 256-key blocks (32 KB of K and V per block and program),
and contiguous caches (``contig``) beside the paged ones (``s6_*`` shapes).

Session 7: the illegal memory access of s5-call4 and s6-call4 (the first bf16 graph of the B=16 ~128K section) was
this script's warm-up racing the section's input writes (``gpu_probe.warm_up_on_side_stream`` says how; fixed
there); ``s7_long s7_b16_128k`` run that order again.

Run: ``python scripts/gpu_fp8_decode.py [SHAPE ...]``, shapes: full, long, b4, long16, window (session 5's, the
default), s6_full, s6_more, s6_b4, s6_long16, s6_long, s6_b16_128k, s7_long, s7_b16_128k, and the later sessions'
(``--dry`` lists a shape's candidates); s9_*: the transposed pairs' loop against the shipped one; s10_*: the
pairs' block shapes of the default path (``blocks=``), and head_dim 128 layers (a shape's fifth field: H, Hk, D);
s11b_*: fewer splits at 16K; s11c_*: more splits at B=4 16K; s14_*: the work split (split counts past 64 at B=4,
the pairs' one-warp shapes at B=16 16K); s15q_*: the all-fp8 decode on the pairs (``qkvpairs``). ``--dry --plans``
also prints, computed on the CPU, what each fp8-kv full-decode candidate launches on an H200 (splits, programs, block
shape, programs per SM).
"""

from __future__ import annotations

import contextlib
import sys

import torch
from gpu_probe import DEVICE, graph_calls_us  # scripts/ is on sys.path when this file runs

import swattn
from swattn import interface
from swattn.kernels import combine, configs, fwd
from swattn.kernels.configs import FwdConfig, forced_config

FP8 = torch.float8_e4m3fn
# (quantize q, config[, options]): quantize q None = the bf16 cache, False = fp8-kv (bf16 q over e4m3), True = all
# fp8; config None = what configs.py ships, else (block_n, warps, stages, single loop[, tma, maxnreg]) as
# FwdConfig's fields; options: pairs=True (fwd.WIDEN_E4M3_PAIRS: e4m3 widened in pairs before the layout change),
# splits=N (num_splits instead of the automatic count), prefetch=True (fwd.PREFETCH_PAGE_TABLE: the single loop's
# first page-table entries into L2 once the query load is issued), hnd=True (the cache's memory head-major,
# [pages, Hk, page, D], passed as the same [pages, page, Hk, D] view: one KV head's page is 1 KB contiguous in e4m3
# instead of 16 rows of 64 B at a 512-B stride), pair=1|2|3 (fwd.FP8_TWO_KV_HEADS), per_sm=N (the split count of
# one wave at N programs per SM), partner=1|2 (fwd.FP8_PREFETCH_PARTNER: twin rows | page chunks), l2fetch=N (the
# L2 fetch granularity limit in bytes while the variant runs), contig=True (contiguous [B, S, Hk, D] caches).
PAIRS, PREFETCH, HND = dict(pairs=True), dict(prefetch=True), dict(hnd=True)
# Measured on the H200 (s5-call2, 22:14 UTC, main c10bf58; B=16 16K, bf16 134.45 us): shipped (64, 2, 3) capped
# at 168 106.14 us; (128, 4, 3) capped at 128, 4 per SM 104.47 (B=4 16K 32.24 vs 33.60); (128, 4, 5) capped at 128
# 112.43; (128, 2, 5) 111.34; (128, 4, 3) capped at 168, 3 per SM 113.23; (64, 2, 7) capped at 168 115.07; two KV
# heads per program, one product per head (pair=1): 165-178 us; head-major memory 96.66, with (128, 4, 5) 95.49.
# Candidates now (compiled, Triton 3.6, sm_90: registers, spill, programs per SM):
# - 128-key e4m3 blocks (16 KB of K + V per block, a bf16 64-key block's bytes): (128, 4, 3) capped at 128 (128,
#   none, 4) again, (128, 4, 2) capped at 128 (128, none, 4), (128, 4, 1) capped at 128 (128, 64 B, 4);
# - 64-key blocks at 8 programs per SM ((64, 2, 3) capped at 128: 128, 80 B) or without the pipeline ((64, 2, 1)
#   capped at 168: 168, 16 B, 6);
# - two KV heads per program as interleaved rows (pair=2: the pair's [N, 2 x 64] tiles viewed as [2N, 64], no
#   split): (32, 4, 3) capped at 128 (126, none, 4), (64, 4, 3) capped at 128 (128, 16 B, 4), (64, 8, 3) capped at
#   128 (128, none, 2); half the programs per split, so per_sm's split count doubles.
WIDE = [(False, (128, 4, 3, False, False, 128), dict(per_sm=4)),
        (False, (128, 4, 2, False, False, 128), dict(per_sm=4)),
        (False, (128, 4, 1, False, False, 128), dict(per_sm=4))]
PAIR = [(False, (32, 4, 3, False, False, 128), dict(pair=2, per_sm=4)),
        (False, (64, 4, 3, False, False, 128), dict(pair=2, per_sm=4)),
        (False, (64, 8, 3, False, False, 128), dict(pair=2, per_sm=2))]
# The register double buffering of the interior loop (kvpf) and the window decode's query conversion inside the
# loop (qloop), timed at 22:54 (120-147 us; 4.78 against 4.81 us), were removed (docs/notes/2026-12-03-fp8-kv-cache.md).
# H200 s5-call4 (22:54 UTC, main ~1c11dea; B=16 16K, bf16 134.42 us): shipped 105.74; (128, 4, 2) capped at 128, 4/SM
# 101.81; (64, 2, 3) capped at 128, 8/SM 102.48; (128, 4, 3) capped at 128 104.14; the register prefetch 120.1-147.2;
# interleaved pairs 158.5-197.3; (64, 2, 1) capped at 168 131.1; (128, 4, 1) capped at 128 145.0 (B=4 16K: shipped
# 33.28, (128, 4, 3) 32.06). Now the three best beside the shipped loop at every shape.
BEST = [(False, (128, 4, 2, False, False, 128), dict(per_sm=4)),
        (False, (64, 2, 3, False, False, 128), dict(per_sm=8)), WIDE[0]]
# Since 23:45 (configs.FP8_PAGED_SPLIT_BLOCKS) "shipped" is (128, 4, 2) capped at 128 at 4 per SM; the previous
# default, (64, 2, 3) capped at 168 at 6 per SM, is timed beside it in every shape.
PREVIOUS = (False, (64, 2, 3, False, False, 168), dict(per_sm=6))
# More at 2 stages and 4 warps (compiled, Triton 3.6: (64, 2, 2) capped at 168: 168 registers, no spill, 6 per SM;
# (64, 4, 2) / (64, 4, 3) capped at 128: 117 / 128, none, 4).
FULL = [(False, None), PREVIOUS, *BEST[1:], (False, (64, 2, 2, False, False, 168)),
        (False, (64, 4, 2, False, False, 128), dict(per_sm=4)), (False, (64, 4, 3, False, False, 128), dict(per_sm=4))]
LONG = [(False, None), PREVIOUS, *BEST[1:]]
WINDOW = [(False, None), (True, None)]
# long16: 131040 keys, so the pool (a page more than the context per sequence) stays within 2 GiB: at 131072 it is
# 16 pages past it and raised an illegal memory access at 22:54 (tests/gpu/test_fp8_real_sizes.py's
# test_decode_over_a_pool_past_2_gib asks whether the kernels or the script).
# Session 6 (compiled, Triton 3.6, sm_90): the shipped (128, 4, 2) capped at 128 with the twin / chunk prefetch: 128
# registers, 8 B stack, 4 per SM, interior loop 550 / 563 SASS instructions per block and warp (522 without);
# (256, 4, 2) capped at 128: 136 B stack, 4 per SM; (256, 8, 2) capped at 128: 8 B stack, 2 per SM.
# Two KV heads per program with each head's tiles loaded on their own (pair=3, fwd.PAIR_TWO_LOADS: the two halves
# of each 128-byte line copied back to back by one program): (64, 4, 2) capped at 128: 128 registers, 16 B stack, 4
# per SM, 520 SASS instructions per 2 x 64-key block and warp (the shipped loop's 522 per 128 keys: the same bytes
# and instructions per program step); (64, 4, 3) capped at 128: 32 B stack; (128, 4, 2) capped at 128: 280 B.
PARTNER, CHUNK, L2FETCH = dict(partner=1), dict(partner=2), dict(l2fetch=128)
TWO_LOADS = (False, (64, 4, 2, False, False, 128), dict(pair=3, per_sm=4))
S6_FULL = [(False, None), TWO_LOADS, (False, None, PARTNER), (False, None, CHUNK), (False, None, L2FETCH),
           (None, None, L2FETCH)]
S6_MORE = [(False, None), (False, (64, 4, 3, False, False, 128), dict(pair=3, per_sm=4)),
           (False, None, dict(partner=1, l2fetch=128)), (False, (256, 4, 2, False, False, 128), dict(per_sm=4)),
           (False, (256, 8, 2, False, False, 128), dict(per_sm=2)),
           (None, None, dict(contig=True)), (False, None, dict(contig=True))]
S6_OTHER = [(False, None), TWO_LOADS, (False, None, PARTNER), (False, None, CHUNK), (False, None, L2FETCH)]
# Session 7 (compiled, Triton 3.6, sm_90; interior loop, SASS instructions per block and warp): the fenced widening
# (fenced=1: fwd.FP8_FENCED_WIDENING) on the shipped (128, 4, 2) capped at 128: 522 -> 344, 123 registers, 51.2 KB
# shared, 4 per SM; V only (fenced=2): see loop_sass.py; on (64, 2, 3) capped at 128: 359 per 64 keys, 26.9 KB, 8
# per SM; fa3=True: FA3's fp8 (q, K, V e4m3 with descales; the vLLM build, .peer-kernels) over the same inputs.
FENCED, FENCED_V, FA3_FP8 = (False, None, dict(fenced=1)), (False, None, dict(fenced=2)), (True, None, dict(fa3=True))
FENCED_64 = (False, (64, 2, 3, False, False, 128), dict(fenced=1, per_sm=8))
S7_SPLIT = [(False, None), FENCED, FENCED_V, FA3_FP8]
# Two KV heads per program, each head's tiles loaded on their own (session 6's two-loads pairs), fenced: interior
# loop 519 -> 335 per two 64-key blocks and warp ((64, 4, 2) capped at 128: 8 B stack, 42 KB shared).
TWO_LOADS_FENCED = (False, (64, 4, 2, False, False, 128), dict(pair=3, per_sm=4, fenced=1))
# V only fenced under a 96-register cap: 5 programs per SM (38 KB shared each; 48 B stack, interior loop 383).
FENCED_V_5 = (False, (128, 4, 2, False, False, 96), dict(fenced=2, per_sm=5))
S7B = [(False, None), FENCED_V, FENCED_V_5, TWO_LOADS, TWO_LOADS_FENCED]
# Session 8: two KV heads per program is the default of long full decodes (configs.FP8_KV_PAIRS, where
# configs.fp8_pair_split_count takes them: B=16 16K-128K 8 splits, B=4 64K-128K 33); "shipped" is that default,
# ``kvpairs=False`` the one-head default before it (the (128, 4, 2) loop capped at 128, 4 per SM); at B=4 16K / 32K
# (one head by default: 33 pair splits would be 497 / 994 keys) the pairs forced at 4 and at 2 per SM (33 / 16
# splits).
ONE_HEAD = (False, None, dict(kvpairs=False))
PAIRS_2 = (False, (64, 4, 2, False, False, 128), dict(pair=3, per_sm=2))
PAIRS_4 = (False, (64, 4, 2, False, False, 128), dict(pair=3, per_sm=4))
# More resident pair programs (compiled, Triton 3.6, sm_90; interior loop per block and warp): (32, 2, 2) capped at
# 128: 128 registers, 48 B stack, 11 KB shared, 8 per SM, 572 per 2 x 32 keys (2,288 per 16 KB of K and V, the
# default pairs' (64, 4, 2) 2,076); (64, 4, 2) capped at 96: 96 B stack, 5 per SM, 583 (2,332 per 16 KB).
PAIRS_32_8 = (False, (32, 2, 2, False, False, 128), dict(pair=3, per_sm=8))
PAIRS_96_5 = (False, (64, 4, 2, False, False, 96), dict(pair=3, per_sm=5))
# All KV heads per program, one warp per KV head (scripts/fp8_heads_decode.py, an experiment: batched products, whole
# 512-byte token rows read; compiled, Triton 3.6: (32 keys, 8 warps, 2 stages) capped at 128: 128 registers, no
# stack, 48 KB shared, 2 per SM, 644 interior-loop instructions per 32 keys and warp (2,576 per 16 KB); (16, 8, 2)
# 118 registers, 32 KB, 357 (2,856 per 16 KB)); its splits: a wave at 2 per SM. (block_n, warps, stages, per SM,
# register cap.)
HEADS_32 = (False, None, dict(heads=(32, 8, 2, 2, 128)))
HEADS_16 = (False, None, dict(heads=(16, 8, 2, 2, 0)))
S8 = [(False, None), ONE_HEAD, FA3_FP8]
S8_LONG = S8 + [HEADS_32, HEADS_16, PAIRS_32_8, PAIRS_96_5]
S8_B4 = S8 + [HEADS_32, PAIRS_4, PAIRS_2]
# After s8-call2/3 (the pairs default +2-5.5%; every e4m3 loop ~10-12 cycles per instruction and warp, so fewer
# instructions pay only if the chain does not get longer): the fenced widening on the pairs (compiled, Triton 3.6,
# interior loop per iteration and warp, per 16 KB of K + V): K and V fenced (64, 4, 2) capped 128 335 (1,340; 8 B
# stack, 42 KB shared, 4/SM), V only 352 (1,408; 36 KB); (32, 2, 2) capped 128 at 8/SM: K and V 347 (1,388; 8 B
# stack, 22 KB), V only 401 (1,604; 16 B stack, 19 KB). The default pairs: 519 (2,076).
PAIRS_FENCED, PAIRS_FENCED_V = (False, None, dict(fenced=1)), (False, None, dict(fenced=2))
PAIRS_32_8_FENCED = (False, (32, 2, 2, False, False, 128), dict(pair=3, per_sm=8, fenced=1))
PAIRS_32_8_FENCED_V = (False, (32, 2, 2, False, False, 128), dict(pair=3, per_sm=8, fenced=2))
# K and V fenced under a 96-register cap: 339 per iteration and warp, 40 B stack, 42 KB shared, 5 per SM (20 warps).
PAIRS_96_5_FENCED = (False, (64, 4, 2, False, False, 96), dict(pair=3, per_sm=5, fenced=1))
S8B = [(False, None), PAIRS_FENCED, PAIRS_FENCED_V, PAIRS_32_8_FENCED, PAIRS_32_8_FENCED_V, PAIRS_96_5_FENCED,
       PAIRS_32_8, ONE_HEAD]
# Since 023b991 "shipped" is the pairs on (32, 2, 2) capped at 128, 8/SM, V fenced (configs.FP8_PAIR_FENCED_WIDENING,
# which forced pairs take too; ``pairfence=0`` turns it off). The pairs default of ef54760 beside it, and at shapes
# the rule leaves to one KV head (B=4 16K / 32K, B=8 16K) the new pair shape forced at 8 and 4 per SM.
PAIRS_BEFORE = (False, (64, 4, 2, False, False, 128), dict(pair=3, per_sm=4, pairfence=0))
PAIRS_NEW_8 = (False, (32, 2, 2, False, False, 128), dict(pair=3, per_sm=8))
PAIRS_NEW_4 = (False, (32, 2, 2, False, False, 128), dict(pair=3, per_sm=4))
S8C = [(False, None), PAIRS_BEFORE, ONE_HEAD]
S8C_SHORT = [(False, None), PAIRS_NEW_8, PAIRS_NEW_4]
# Session 9: the pairs' loop transposed (``transposed=1``: configs.FP8_PAIR_TRANSPOSED, fwd.PAIR_TRANSPOSED;
# compiled, Triton 3.6, sm_90, (32, 2, 2) capped at 128: interior loop 313 instructions per 2 x 32 keys and warp
# against 401, 16 HMMA against 32, 5 BAR.SYNC against 8, 128 registers, 8 B stack against 16) beside the shipped
# loop (``transposed=0``), in mirrored order (each variant's mean position the same), FA3's fp8 beside.
LOOP_OLD, LOOP_T = ((False, None, dict(transposed=value)) for value in (0, 1))
# (A loop in halves, each block's keys in two softmaxes (309 instructions, 2 BAR.SYNC), also on 64-key blocks capped
# at 168, was timed in s9-call4 beside them and removed since.)
S9 = [LOOP_OLD, LOOP_T, LOOP_T, LOOP_OLD, FA3_FP8]
# s9-call4 (14:28 UTC, main 9248933; us): B=16 16K transposed 81.50 / 81.53, session 8's loop 89.01 / 89.20, halves
# 136.26 / 136.36, halves (64, 2, 2) capped at 168 86.16; B=4 16K 28.02 / 27.95, 30.00 / 29.96, 45.79 / 45.77,
# 32.71; B=16 131040 599.45 / 601.86, 668.74 / 669.74, 987.10 / 988.27, 597.47. So the transposed loop is the
# default (configs.FP8_PAIR_TRANSPOSED 1); next its block shapes (compiled, Triton 3.6, sm_90, interior loop per
# iteration and warp): (64, 2, 2) capped at 168: 505 per 2 x 64 keys (1,010 per 16 KB of K + V), 165 registers, no
# stack, 36 KB shared, 6 per SM; (64, 4, 2) capped at 128 (Triton takes warpgroup products, HGMMA 64x16x16, for
# these 64-key tiles over 4 warps): 373 (1,492 per 16 KB), 24 B stack, 4 per SM; (32, 2, 3) capped at 128: 332, 8 B
# stack, 8 per SM.
T64_6, T64_4W, T32_3 = ((False, config, dict(pair=4, per_sm=per_sm)) for config, per_sm in (
    ((64, 2, 2, False, False, 168), 6), ((64, 4, 2, False, False, 128), 4), ((32, 2, 3, False, False, 128), 8)))
# One warp per program (no cross-warp exchange; 16 keys: 328 per iteration, 8 B stack, 10 KB shared, 16 per SM; 32
# keys capped at 168: 533, no stack, 18 KB, 12 per SM). Their split count is clamped at MAX_SPLITS (B=4: 64).
T16_1W, T32_1W = ((False, config, dict(pair=4, per_sm=per_sm)) for config, per_sm in (
    ((16, 1, 2, False, False, 128), 16), ((32, 1, 2, False, False, 168), 12)))
S9B = [LOOP_T, LOOP_OLD, T64_6, T64_4W, T32_3, T16_1W, T32_1W, LOOP_T]
# s9-call7 (14:47 UTC, main 23057aa): swattn.bench decode-fp8's B=4 16K row stayed on one KV head (31.14 us, 1.28x):
# its page tables hold exactly the context (16384 keys: 64 splits of 256, under FP8_PAIR_MIN_KEYS_PER_SPLIT's 257,
# and forward_config's single loop), where this script's hold a page more (257 keys: the pairs, 27.83 us). Since
# then the pairs' split loop replaces a short split's single loop (configs.fp8_pair_config); ``minkeys=N`` lowers
# the threshold (configs.FP8_PAIR_MIN_KEYS_PER_SPLIT) for a variant. The s9c shapes' page tables hold exactly the
# context (EXACT_SHAPES), as the benchmark's.
MIN_256, MIN_128 = (False, None, dict(minkeys=256)), (False, None, dict(minkeys=128))
S9C = [(False, None), MIN_256, MIN_128, (False, None)]
# Session 10: the pairs' block shape of the default path (``blocks=(block_n, warps, register cap, per SM)`` in place
# of configs.FP8_PAIR_SPLIT_BLOCKS[16] for the variant: the loop, the split count (``per SM`` programs of one wave
# per SM, at most MAX_SPLITS) and the pairs' fill rule all as they would ship), page tables of exactly the context
# (as swattn.bench's), each candidate twice in mirrored order. s9-call7 timed them forced (page tables a page longer):
# one warp (32, 1, 2) capped at 168 at 12/SM won B=4 16K (26.66 vs 27.83 us) and B=16 131040 (558.50 vs 566-571),
# lost B=16 16K (82.27 vs 80.15); 64-key blocks capped at 168 at 6/SM won B=16 131040 (556.56), lost 16K by 1-3%.
# A per-SM count above what the fill rule allows at B=4 (the pairs need 3/4 of a wave's slots: 16 pair programs x
# 64 splits fill 1,024 of 12 x 132) is given as 8 there: the same 64 splits, so the same launch as s9-call7's.
W1_12, W1_8, W16_16, K64_6 = ((False, None, dict(blocks=blocks)) for blocks in (
    (32, 1, 168, 12), (32, 1, 168, 8), (16, 1, 128, 16), (64, 2, 168, 6)))
# The default's (32, 2, 2) capped at 112 registers (compiled, Triton 3.6, sm_90, B=16 16K: 112 registers, 32 B stack,
# no LDL/STL in the loops, interior loop 317 instructions per 2 x 32 keys and warp against 313, 19 KB shared): 9
# programs (18 warps) per SM instead of 8 (16); B=16 18 splits. Capped at 96 (10 per SM) it spills in the loops
# (72 B, 9 LDL/STL there): not timed.
P112_9 = (False, None, dict(blocks=(32, 2, 112, 9)))
S10_B16 = [(False, None), W1_12, P112_9, K64_6, W16_16, W16_16, K64_6, P112_9, W1_12, (False, None), FA3_FP8]
S10_B4 = [(False, None), W1_8, P112_9, K64_6, K64_6, P112_9, W1_8, (False, None), FA3_FP8]
# At 16K, where ~8 us per call stream nothing (s9-call9: 16K's time less an eighth of 128K's, bf16 and fp8 alike):
# the merge letting the next call's split launch start before its own wait (``early=True``: combine.EARLY_DEPENDENTS,
# issue 21's experiment, session 10), in the graph's back-to-back calls.
EARLY = (False, None, dict(early=True))
S10_B16_16K, S10_B4_16K = ([*s[:5], EARLY, EARLY, *s[5:]] for s in (S10_B16, S10_B4))
# head_dim 128 (H=32 / Hk=8, a Llama-3-8B layer; the shapes' fifth field): the pairs' default block shape spills
# there (compiled, Triton 3.6, sm_90, B=16 16K: 128 registers, 128 B stack, 24 LDL/STL in the loops, 37.9 KB shared,
# interior loop 663 instructions per 2 x 32 keys and warp), against one KV head per program and the pairs capped at
# 168 registers (24 B stack, no LDL/STL in the loops, 614; 6 per SM by registers and shared memory) at 6 and at 8 per
# SM (12 / 16 splits at B=16). (16, 2, 2) capped at 128 spills too (48 B, 13 LDL/STL in the loops).
D128_PAIRS_6, D128_PAIRS_8 = ((False, None, dict(blocks=(32, 2, 168, per_sm))) for per_sm in (6, 8))
S10_D128 = [(False, None), ONE_HEAD, D128_PAIRS_6, D128_PAIRS_8, ONE_HEAD, (False, None)]
# s10-call1 (16:44 UTC, main 7da2d75): D128 B=16 16K pairs capped at 168, 6/SM 158.30 us against 222.29 / 222.31
# (the default capped at 128) and one KV head 203.94 / 203.93; B=4 128K 296.27 against 417.39 / 419.94 and 386.32 /
# 386.26. Since then head_dim 128's pairs take that shape by default (configs.FP8_PAIR_SHAPE_BLOCKS); ``blocks=``
# (which clears that table for the variant) with the default's entry is the shape before.
D128_BEFORE = (False, None, dict(blocks=(32, 2, 128, 8)))
S10B_D128 = [(False, None), D128_BEFORE, ONE_HEAD, ONE_HEAD, D128_BEFORE, (False, None)]
# s10-call3 (17:09 UTC, main 3a077d9): B=4 one warp (32, 1) capped 168 at 64 splits won at 16K and 128K (26.72 vs
# 27.74, 148.1 vs 151.3), B=16 131040 one warp (16, 1) capped 128 at 33 splits (551.8 vs 564.8 / 596.0) but not at
# 16K (80.33 vs 80.0); (32, 2) capped 112 ran as if 8 per SM fitted (B=16 16K 114 us: two waves of 18 splits); the
# merge's early dependents slower at B=16 16K (86.2 vs 80.0). Since then those two are default per shape
# (configs.FP8_PAIR_SHAPE_BLOCKS); the s10c shapes: the new default against the one before (D128_BEFORE's blocks, at
# every shape), and the thresholds: B=16 at 32K / 64K, B=8 (16K, 64K, 128K) against the one-warp shapes.
S10C = [(False, None), D128_BEFORE, D128_BEFORE, (False, None)]
# B=4's one-warp programs past MAX_SPLITS ((32, 1) at 99 splits, (16, 1) at 128: configs.FP8_PAIR_MAX_SPLITS) lost
# in s10-call6 (16K 30.41 / 29.25 us against 26.97; 131072 157.4-158.6 against 151.1-151.5): the switch is removed.
S10C_B4 = S10C
S10C_B16 = [D128_BEFORE, W16_16, W16_16, D128_BEFORE]
S10C_B8 = [D128_BEFORE, W16_16, W1_12, W1_12, W16_16, D128_BEFORE]
# Session 11: the 16K rows' fixed costs on the pairs' launches (the default path, page tables of exactly the
# context). s11-call2 (19:20 UTC, main 689df5e; us): B=4 16K default 26.95 / 26.95; B=16 16K 81.44 / 81.34; B=4
# 131072 150.69 / 152.75; the late merge trigger (fwd.FP8_SPLIT_LATE_DEPENDENTS 2, ``late=2``) 30.26 / 30.27, 80.87
# / 80.92, 162.67 / 163.17; the pairs' L2 preload before their wait with the merge's early dependents 29.11-29.64,
# 98.75-99.01, 161.54 / 163.79 (the early merge alone at B=4 16K 29.74 / 29.75). s11-call5 (~19:40 UTC, main
# 911b559): B=16 16K default 81.77 / 81.60, late 2 81.19 / 81.18; B=16 131040 577.49 / 582.14, late 2 581.16 /
# 593.10. Those switches are removed. Fewer splits at 16K (``blocks=`` with fewer programs per SM planned: the
# same loop, the split count of that many per SM), s11-call5: B=4's one-warp (32, 1) capped at 168 at 6 / 4 per SM
# (49 / 33 splits) 29.62 / 29.59 and 35.25 / 34.78 against 27.16 / 27.08; B=16's (32, 2) capped at 128 at 6 per SM
# (12 splits) 88.23 / 88.49 against 81.77 / 81.60.
W1_6, W1_4, P128_6 = ((False, None, dict(blocks=blocks)) for blocks in (
    (32, 1, 168, 6), (32, 1, 168, 4), (32, 2, 128, 6)))
S11B_B16_16K = [(False, None), P128_6, P128_6, (False, None)]
S11B_B4_16K = [(False, None), W1_6, W1_4, W1_4, W1_6, (False, None)]
# More splits at B=4 16K than MAX_SPLITS' 64 (``maxsplits=N``: interface.MAX_SPLITS raised for the variant, which
# clamps a caller's num_splits; ``splits=`` the count): 72 and 80 splits of the default's one-warp programs (1,152 /
# 1,280 of the 1,584 that fit: 8.7 / 9.7 per SM) between the 64 of the default and s10-call6's 99 (30.41 us against
# 26.97).
SPLITS_72, SPLITS_80 = ((False, None, dict(splits=n, maxsplits=128)) for n in (72, 80))
S11C_B4_16K = [(False, None), SPLITS_72, SPLITS_80, SPLITS_80, SPLITS_72, (False, None)]
# s11-call7 (19:51 UTC, main a615436): 72 splits 30.61 / 30.64, 80 splits 30.45 / 30.51 against 27.05 / 27.10.
# s11-call9 (20:08 UTC, main 7fd35a9): the merge of B=4's 64 splits on 2 / 4 warps (combine.WIDE_MERGE_SPLITS /
# WIDE_MERGE_WARPS, since removed): B=4 16K 29.25 / 29.28 and 27.09 / 27.08 against 27.01 / 27.04; B=4 131072 156.91
# / 162.69 and 150.51 / 152.74 against 151.03 / 153.09.
# s12-call1 (21:35 UTC, main 1f5568b; us, mirrored pairs): helper s11-22b's transposed pairs' split loop in two
# halves, one per warp, merged in the program (fwd.FP8_PAIR_HALVES, since removed): B=4 16K on the 16-key halves
# capped at 128 46.10 / 45.99, at 3 stages 48.33 / 48.41, 32-key halves capped at 168 41.63 / 41.65; B=16 16K forced
# 136.89 / 137.00; B=4 131072 261.19 / 259.30 and 284.97 / 282.74 (3 stages); against the default's 26.95 / 26.97,
# 81.32 / 81.31, 150.94 / 151.02. The default's one-warp (32, 1) loop capped at 168 forced at 3 stages (page-table
# loads two blocks ahead) against the same at 2: B=4 16K 27.23 / 27.24 against 26.96 / 26.94, B=4 131072 150.95 /
# 151.07 (default 150.94 / 151.02).
# Session 14: the work split of the shipped e4m3 pairs (issue 22's 16K rows, where the launch chain's fixed costs
# weigh most), each candidate twice in mirrored order, the default first and last; ``--dry --plans`` prints what each
# launches on an H200. B=4 (16 pair programs per split, one warp each): past MAX_SPLITS' 64 without empty splits,
# 74 (7 blocks of 32 keys each at 16K) and 86 (6), i.e. 9.0 / 10.4 of the 12 programs that fit an SM instead of
# 7.8; and 65 splits (64 with keys, as the default's, plus one empty split), which times the merge's second 64-split
# tile (``combine._launch``'s SPLIT_LOOP for more than 64 splits) and little else: s11-call7's 72 splits (the same
# 1,024 programs with keys and 128 empty ones) cost 3.5 us more than 64, whose cause was not measured. B=16 16K (64
# pair programs per split, (32, 2, 2) capped at 128, 16 splits): one-warp programs at the default's 16 splits ((32,
# 1, 2) capped at 168, the B=4 shape: never timed at B=16 16K) and at 20 splits (10 per SM planned), and (16, 1, 2)
# capped at 128 at 24 splits (12 per SM planned; s10-call3 timed 33 splits at 16 per SM: 80.32 / 80.33 us against
# 79.95 / 80.04, and (32, 1) at 24 splits: 82.65 / 82.74).
S65, S74, S86 = ((False, None, dict(splits=n, maxsplits=128)) for n in (65, 74, 86))
S14_B4 = [(False, None), S65, S74, S86, S86, S74, S65, (False, None)]
W1_10, W16_12 = ((False, None, dict(blocks=blocks)) for blocks in ((32, 1, 168, 10), (16, 1, 128, 12)))
S14_B16 = [(False, None), W1_8, W1_10, W16_12, W16_12, W1_10, W1_8, (False, None)]
# Session 15 (helper s15-fp8q): the all-fp8 full decode (q, K, V e4m3) on fp8-kv's two KV heads per program
# (qkvpairs=True: configs.FP8_QKV_PAIRS, e4m3 q widened to fp16 in the kernel) against its one KV head per program
# on the all-fp8 loop (qkvpairs=False, the default until timed), beside fp8-kv's shipped pairs; mirrored order.
# Compiled (Triton 3.6, sm_90, B=16 16K, 16 splits): the pairs' (32, 2, 2) capped at 128, 128 registers, no stack,
# interior loop 311 instructions per 2 x 32 keys and warp (fp8-kv's: 313, 8 B stack); the all-fp8 loop (128, 4,
# 2) capped at 128: 527 per 128 keys of one head and warp.
QKV_PAIRS, QKV_ONE_HEAD = (True, None, dict(qkvpairs=True)), (True, None, dict(qkvpairs=False))
S15Q = [(False, None), QKV_ONE_HEAD, QKV_PAIRS, QKV_PAIRS, QKV_ONE_HEAD, (False, None)]
SHAPES = {"full": (16, 16384, None, FULL), "long": (4, 131072, None, LONG), "b4": (4, 16384, None, LONG),
          "long16": (16, 131040, None, LONG), "window": (16, 2048, 127, WINDOW),
          "s6_full": (16, 16384, None, S6_FULL), "s6_more": (16, 16384, None, S6_MORE),
          "s6_b4": (4, 16384, None, S6_OTHER), "s6_long16": (16, 131040, None, S6_OTHER),
          "s6_long": (4, 131072, None, S6_OTHER),
          # s6-call4 (05:21 UTC): the first call of this shape after s6_long raised an illegal memory access (its
          # bf16 baseline or reference; s5-call4 saw the same at 131072 after "long"): run it under
          # CUDA_LAUNCH_BLOCKING=1 after s6_long to see which launch faults.
          "s6_b16_128k": (16, 131040, None, [(False, None), TWO_LOADS]),
          # Session 7: that order again without CUDA_LAUNCH_BLOCKING, bf16 and the shipped fp8-kv only, after the
          # fix of the warm-up's race (gpu_probe.warm_up_on_side_stream; scripts/gpu_side_stream_race.py).
          "s7_long": (4, 131072, None, [(False, None)]), "s7_b16_128k": (16, 131040, None, [(False, None)]),
          # Session 7: the fenced widening (fwd.FP8_FENCED_WIDENING) against the shipped loop, FA3's fp8 beside.
          "s7_full": (16, 16384, None, S7_SPLIT + [FENCED_64, TWO_LOADS_FENCED]),
          "s7_b4": (4, 16384, None, S7_SPLIT + [FENCED_64, TWO_LOADS_FENCED]),
          "s7_window": (16, 2048, 127, S7_SPLIT),
          "s7_long_ab": (4, 131072, None, S7_SPLIT + [TWO_LOADS_FENCED]),
          "s7_b16_128k_ab": (16, 131040, None, S7_SPLIT + [TWO_LOADS_FENCED]),
          # After s7-call4 (K and V fenced 10-13% slower than shipped at every split shape): V only, and the
          # two-loads pairs with and without the fence, beside the shipped loop.
          "s7b_full": (16, 16384, None, S7B), "s7b_long": (4, 131072, None, S7B),
          "s7b_b16_128k": (16, 131040, None, S7B),
          "s7b_window": (16, 2048, 127, [(False, None), FENCED_V]),
          "s8_b16_16k": (16, 16384, None, S8_LONG), "s8_b4_16k": (4, 16384, None, S8_B4),
          "s8_b16_32k": (16, 32768, None, S8), "s8_b4_32k": (4, 32768, None, S8_B4),
          "s8_b4_128k": (4, 131072, None, S8_LONG), "s8_b16_128k": (16, 131040, None, S8),
          "s8b_b16_16k": (16, 16384, None, S8B + [FA3_FP8]), "s8b_b4_128k": (4, 131072, None, S8B),
          "s8b_b16_128k": (16, 131040, None, S8B[:3] + [ONE_HEAD]),
          "s8c_b16_16k": (16, 16384, None, S8C + [FA3_FP8]), "s8c_b4_128k": (4, 131072, None, S8C),
          "s8c_b16_128k": (16, 131040, None, S8C[:1] + S8C[2:]), "s8c_b16_32k": (16, 32768, None, S8C[:1]),
          "s8c_b4_64k": (4, 65536, None, S8C[:1] + S8C[2:]),
          "s8c_b4_32k": (4, 32768, None, S8C_SHORT), "s8c_b8_16k": (8, 16384, None, S8C_SHORT),
          "s8c_b4_16k": (4, 16384, None, S8C_SHORT[:2]),
          # Since 122eb1d the pairs reach 257 keys per split: the default at the shapes that had kept one KV head.
          "s8d_b4_16k": (4, 16384, None, [(False, None), ONE_HEAD]),
          "s8d_b4_32k": (4, 32768, None, [(False, None), ONE_HEAD]),
          "s8d_b8_16k": (8, 16384, None, [(False, None), ONE_HEAD]),
          "s8d_b16_16k": (16, 16384, None, [(False, None), ONE_HEAD, FA3_FP8]),
          "s9_b16_16k": (16, 16384, None, S9), "s9_b4_16k": (4, 16384, None, S9),
          "s9_b16_128k": (16, 131040, None, S9), "s9_b4_128k": (4, 131072, None, S9),
          "s9b_b16_16k": (16, 16384, None, S9B), "s9b_b4_16k": (4, 16384, None, S9B),
          "s9b_b16_128k": (16, 131040, None, S9B),
          "s9c_b4_16k": (4, 16384, None, S9C), "s9c_b4_8k": (4, 8192, None, S9C),
          "s9c_b8_8k": (8, 8192, None, S9C), "s9c_b16_4k": (16, 4096, None, S9C),
          # The compile warm-up of S9B's kernels in four processes (the same kernels serve every shape above).
          **{f"s9b_warm{i}": (4, 16384, None, S9B[1 + 2 * i:3 + 2 * i]) for i in range(4)},
          "s10_b16_16k": (16, 16384, None, S10_B16_16K), "s10_b4_16k": (4, 16384, None, S10_B4_16K),
          "s10_b16_128k": (16, 131040, None, S10_B16), "s10_b4_128k": (4, 131072, None, S10_B4),
          "s10_d128_b16_16k": (16, 16384, None, S10_D128, (32, 8, 128)),
          "s10_d128_b4_128k": (4, 131072, None, S10_D128, (32, 8, 128)),
          "s10c_b4_16k": (4, 16384, None, S10C_B4), "s10c_b4_128k": (4, 131072, None, S10C_B4),
          "s10c_b16_128k": (16, 131040, None, S10C), "s10c_b16_32k": (16, 32768, None, S10C_B16),
          "s10c_b16_64k": (16, 65536, None, S10C_B16), "s10c_b8_16k": (8, 16384, None, S10C_B8),
          "s10c_b8_64k": (8, 65536, None, S10C_B8), "s10c_b8_128k": (8, 131072, None, S10C_B8),
          **{f"s10c_warm{i}": (batch, 16384, None, [variant]) for i, (batch, variant) in enumerate(
              ((4, (False, None)), (16, W16_16), (8, W1_12), (4, D128_BEFORE), (16, D128_BEFORE)))},
          "s10b_d128_b16_16k": (16, 16384, None, S10B_D128, (32, 8, 128)),
          "s10b_d128_b4_128k": (4, 131072, None, S10B_D128, (32, 8, 128)),
          # The compile warm-up of the s10 kernels, one process per block shape (the same kernels serve each shape;
          # B=4 16K's splits of 256 keys may specialize differently from B=16's 1,024, so both).
          **{f"s10_warm{i}_b{batch}": (batch, 16384, None, variants) for batch in (4, 16) for i, variants in
             enumerate(([(False, None), FA3_FP8, EARLY], [W1_12, W1_8], [W16_16], [K64_6], [P112_9]))},
          **{f"s10_warm_d128_{i}": (16, 16384, None, [variant], (32, 8, 128)) for i, variant in
             enumerate(((False, None), ONE_HEAD, D128_BEFORE))},
          "s11b_b16_16k": (16, 16384, None, S11B_B16_16K), "s11b_b4_16k": (4, 16384, None, S11B_B4_16K),
          "s11c_b4_16k": (4, 16384, None, S11C_B4_16K),
          "s11c_warm": (4, 16384, None, [(False, None), SPLITS_72, SPLITS_80]),
          "s14_b4_16k": (4, 16384, None, S14_B4), "s14_b16_16k": (16, 16384, None, S14_B16),
          "s14_b4_128k": (4, 131072, None, S14_B4),
          "s15q_b16_16k": (16, 16384, None, S15Q), "s15q_b4_16k": (4, 16384, None, S15Q),
          "s15q_b16_128k": (16, 131040, None, S15Q),
          # The compile warm-up of the s14 kernels, one process per kernel set: the split kernel specializes on
          # whether num_splits is a multiple of 16, the merge on its splits' power of two (and a loop past 64).
          **{f"s14_warm{i}": (batch, context, None, [variant]) for i, (batch, context, variant) in enumerate(
              ((4, 16384, (False, None)), (4, 16384, S74), (16, 16384, (False, None)), (16, 16384, W1_10),
               (16, 16384, W16_12), (16, 16384, W1_8), (4, 131072, (False, None))))},
          "s8b_b4_16k": (4, 16384, None, [(False, None), PAIRS_FENCED_V, (False, (64, 4, 2, False, False, 128),
                                                                         dict(pair=3, per_sm=4, fenced=2))])}
DEFAULT_SHAPES = ["full", "long", "b4", "long16", "window"]
EXACT_SHAPES = {"s9c_b4_16k", "s9c_b4_8k", "s9c_b8_8k", "s9c_b16_4k"}  # page tables of exactly the context
EXACT_SHAPES |= {name for name in SHAPES if name.startswith(("s10", "s11", "s14", "s15"))}
COPY_GBPS = 4221.0


def decode_inputs(batch: int, context: int, heads: int = 64, kv_heads: int = 8, head_dim: int = 64) -> dict:
    """Full-attention decode inputs (bf16, page 16, sinks; the gpt-oss layer by default, as
    ``gpu_probe.full_decode_inputs``), every sequence ``context`` long, page tables a page longer."""
    page_size, pages = 16, context // 16 + 1
    k_cache = torch.randn(batch * pages, page_size, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
    return dict(q=torch.randn(batch, 1, heads, head_dim, device=DEVICE, dtype=torch.bfloat16), k_cache=k_cache,
                v_cache=torch.randn_like(k_cache),
                page_table=torch.randperm(batch * pages, device=DEVICE, dtype=torch.int32).view(batch, pages),
                cache_seqlens=torch.full((batch,), context, device=DEVICE, dtype=torch.int32),
                sinks=torch.randn(heads, device=DEVICE))


def fp8_sets(sets: list[dict], quantize_q: bool) -> list[dict]:
    """The caches in e4m3, one descale per KV head (amax / 448, every sequence the same); q too if asked."""
    out = []
    for s in sets:
        s = dict(s)
        for name in ("k", "v"):
            cache = s.pop(f"{name}_cache")
            descale = cache.float().abs().amax(dim=(0, 1, 3)) / 448
            s[f"{name}_cache"] = (cache.float() / descale[:, None]).to(FP8)
            s[f"{name}_descale"] = descale[None].expand(s["q"].shape[0], -1)
        if quantize_q:
            q = s["q"].float()
            descale = q.abs().amax() / 448
            s["q"], s["q_descale"] = (q / descale).to(FP8), descale.expand(q.shape[0], s["k_descale"].shape[1])
        out.append(s)
    return out


def fa3_fp8_call(call: dict):
    """FA3's fp8 decode over one all-e4m3 input set of ``fp8_sets(..., True)`` (q, K, V e4m3, ``[B, Hk]``
    descales; the vLLM build's positional entry, as ``swattn.bench.decode_fp8`` calls it), as a closure."""
    from swattn.bench import peers
    forward = peers._fa3_forward()
    q = call["q"]
    batch, seqlen_q, heads, head_dim = q.shape
    cu_q = torch.arange(0, batch + 1, device=q.device, dtype=torch.int32) * seqlen_q
    q3 = q.reshape(batch * seqlen_q, heads, head_dim)
    sinks = call["sinks"].to(torch.bfloat16)
    descales = [call[name].contiguous() for name in ("q_descale", "k_descale", "v_descale")]
    table = call["page_table"]
    max_k = table.shape[1] * call["k_cache"].shape[1]
    left = call.get("window_size", (-1, 0))[0]

    def run():
        return forward(q3, call["k_cache"], call["v_cache"], None, None, None, None, cu_q, None, None, None,
                       call["cache_seqlens"], seqlen_q, max_k, table, None, None, None, None, None, *descales,
                       head_dim ** -0.5, True, left, 0, 0.0, True, None, 0, None, 0, sinks, 1, 0,
                       None)[0].view(batch, seqlen_q, heads, head_dim)
    return run


def l2_fetch_limit(value: int | None = None) -> int:
    """The current context's L2 fetch granularity limit (bytes; a hint the driver may clamp); set it to ``value``
    if given. Returns the value before."""
    import ctypes
    cuda = ctypes.CDLL("libcuda.so.1")
    limit = 0x05  # CU_LIMIT_MAX_L2_FETCH_GRANULARITY
    before = ctypes.c_size_t()
    if cuda.cuCtxGetLimit(ctypes.byref(before), limit) != 0:
        raise RuntimeError("cuCtxGetLimit(CU_LIMIT_MAX_L2_FETCH_GRANULARITY) failed")
    if value is not None and cuda.cuCtxSetLimit(limit, ctypes.c_size_t(value)) != 0:
        raise RuntimeError(f"cuCtxSetLimit(CU_LIMIT_MAX_L2_FETCH_GRANULARITY, {value}) failed")
    return before.value


def contiguous(call: dict) -> dict:
    """The call over contiguous [B, S, Hk, D] caches holding the paged ones' keys in order (no page table)."""
    table = call["page_table"].long()
    out = {name: value for name, value in call.items() if name != "page_table"}
    for name in ("k_cache", "v_cache"):
        pool = call[name]
        raw = pool.view(torch.uint8) if pool.element_size() == 1 else pool
        gathered = raw[table].reshape(table.shape[0], -1, *pool.shape[2:])
        out[name] = gathered.view(pool.dtype) if pool.element_size() == 1 else gathered
    return out


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """The same [pages, page, Hk, D] tensor with head-major memory ([pages, Hk, page, D] contiguous)."""
    return cache.transpose(1, 2).contiguous().transpose(1, 2)


@contextlib.contextmanager
def variant_settings(options: dict):
    """The module settings a candidate's ``options`` set while it runs (restored after): every one is part of the
    plans' key (``fwd.settings``) but ``interface.MAX_SPLITS`` (``maxsplits``), which clamps a caller's
    num_splits. ``blocks`` puts its shape in place of the pairs' default (``configs.FP8_PAIR_SPLIT_BLOCKS[16]``,
    the per-shape table ``FP8_PAIR_SHAPE_BLOCKS`` emptied): the loop, the split count of its programs per SM and
    the fill rule as they would ship."""
    saved = [(fwd, "WIDEN_E4M3_PAIRS"), (fwd, "PREFETCH_PAGE_TABLE"), (fwd, "FP8_TWO_KV_HEADS"),
             (fwd, "FP8_PREFETCH_PARTNER"), (fwd, "FP8_FENCED_WIDENING"), (configs, "FP8_KV_PAIRS"),
             (configs, "FP8_PAIR_FENCED_WIDENING"), (configs, "FP8_PAIR_TRANSPOSED"),
             (configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT"), (configs, "FP8_PAIR_SPLIT_BLOCKS"),
             (configs, "FP8_PAIR_SHAPE_BLOCKS"), (configs, "FP8_QKV_PAIRS"), (combine, "EARLY_DEPENDENTS"),
             (interface, "MAX_SPLITS")]
    saved = [(module, name, getattr(module, name)) for module, name in saved]
    try:
        fwd.FP8_TWO_KV_HEADS = options.get("pair", 0)
        configs.FP8_KV_PAIRS = options.get("kvpairs", configs.FP8_KV_PAIRS)
        configs.FP8_QKV_PAIRS = options.get("qkvpairs", configs.FP8_QKV_PAIRS)
        configs.FP8_PAIR_FENCED_WIDENING = options.get("pairfence", configs.FP8_PAIR_FENCED_WIDENING)
        configs.FP8_PAIR_TRANSPOSED = options.get("transposed", configs.FP8_PAIR_TRANSPOSED)
        configs.FP8_PAIR_MIN_KEYS_PER_SPLIT = options.get("minkeys", configs.FP8_PAIR_MIN_KEYS_PER_SPLIT)
        combine.EARLY_DEPENDENTS = options.get("early", combine.EARLY_DEPENDENTS)
        interface.MAX_SPLITS = options.get("maxsplits", interface.MAX_SPLITS)
        if "blocks" in options:
            configs.FP8_PAIR_SPLIT_BLOCKS = {**configs.FP8_PAIR_SPLIT_BLOCKS, 16: options["blocks"]}
            configs.FP8_PAIR_SHAPE_BLOCKS = ()
        fwd.FP8_FENCED_WIDENING = int(options.get("fenced", 0))
        fwd.FP8_PREFETCH_PARTNER = options.get("partner", 0)
        if "pairs" in options:
            fwd.WIDEN_E4M3_PAIRS = options["pairs"]
        if "prefetch" in options:
            fwd.PREFETCH_PAGE_TABLE = options["prefetch"]
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def planned_launch(batch: int, context: int, config, options: dict) -> str:
    """What an fp8-kv candidate launches for a full decode of the gpt-oss layer over a page table of exactly
    ``context`` keys on an H200 (132 SMs: ``loop_sass.H200_SMS``), computed on the CPU: the split count (the
    candidate's own, clamped by ``interface.MAX_SPLITS`` as a caller's is, else ``interface.split_count``'s, as
    ``flash_attn_with_kvcache`` plans it), then the forward's launch under the candidate's settings, captured
    instead of launched (``scripts/loop_sass.py``'s capture): splits, programs per split, KV heads per program,
    block shape, warps, stages, register cap, the splits that hold keys and the split programs per SM."""
    from loop_sass import H200_SMS as sms
    from loop_sass import captured_launch
    from loop_sass import decode_inputs as captured_inputs
    heads, kv_heads, head_dim = 64, 8, 64
    if "per_sm" in options:
        programs = batch * kv_heads // (2 if options.get("pair") else 1)
        options = dict(options, splits=max(1, sms * options["per_sm"] // programs))
    forced = FwdConfig(16, *config) if config is not None else None
    with variant_settings(options):
        if "splits" in options:
            splits = min(options["splits"], interface.MAX_SPLITS)
        else:
            kv_pairs = configs.fp8_kv_pairs_fit(True, True, True, heads // kv_heads, 1, kv_heads, head_dim, True,
                                                True, False)
            splits = interface.split_count(batch * kv_heads, context, sms, heads // kv_heads, True, True, kv_pairs,
                                           head_dim)
        inputs, arguments = captured_inputs("fp8-kv", context, -1, splits, batch=batch)
        grids = []
        _, kwargs = captured_launch(inputs, arguments, {}, forced, grids)  # on 132 SMs (loop_sass.H200_SMS)
    tiles, programs, splits = grids[0]  # (tiles, programs per split, splits)
    block_n, pair = kwargs["BLOCK_N"], kwargs.get("KV_PAIR", 0)
    blocks = -(-context // block_n)
    per_split = -(-blocks // splits)  # fwd._split_blocks: the last splits short or empty
    active = -(-blocks // per_split)
    return (f"{splits} splits ({active} with keys, {per_split} blocks each), {tiles * programs} programs per split "
            f"({2 if pair else 1} KV heads each, KV_PAIR {pair}), ({block_n}, {kwargs.get('num_warps')}, "
            f"{kwargs.get('num_stages')}) cap {kwargs.get('maxnreg')}: {tiles * programs * active} programs with "
            f"keys, {tiles * programs * splits / sms:.2f} per SM")


def describe(quantize_q, config, options: dict) -> tuple[str, str]:
    """A candidate's provider label and its config / options as printed."""
    label = "bf16" if quantize_q is None else "fp8" if quantize_q else "fp8-kv"
    label = "FA3" if options.get("fa3") else label
    shown = "shipped" if config is None else "({},{},{}{}{})".format(
        *config[:3], ",single" if config[3] else "",
        f",maxnreg {config[5]}" if len(config) > 5 and config[5] else "")
    shown += " pairs" if options.get("pairs") else ""
    shown += f" 2 KV heads/program ({options['pair']})" if options.get("pair") else ""
    shown += " head-major" if options.get("hnd") else ""
    shown += f" {options['per_sm']}/SM" if "per_sm" in options else ""
    shown += f" {options['splits']} splits" if "splits" in options else ""
    shown += " prefetch" if options.get("prefetch") else ""
    shown += {0: "", 1: " twin prefetch", 2: " chunk prefetch"}[options.get("partner", 0)]
    shown += f" L2 fetch {options['l2fetch']} B" if "l2fetch" in options else ""
    shown += " contiguous" if options.get("contig") else ""
    shown += " one KV head/program" if options.get("kvpairs") is False else ""
    shown += {None: "", True: " 2 KV heads/program (q widened)", False: " one KV head/program"}[
        options.get("qkvpairs")]
    shown += f" pair widening {options['pairfence']}" if "pairfence" in options else ""
    shown += f" pairs from {options['minkeys']} keys/split" if "minkeys" in options else ""
    shown += " pairs ({},{},cap {}) {}/SM".format(*options["blocks"]) if "blocks" in options else ""
    shown += " merge: early dependents" if options.get("early") else ""
    shown += f" (at most {options['maxsplits']})" if "maxsplits" in options else ""
    shown += {None: "", 0: " session 8's pairs' loop", 1: " pairs' loop transposed"}[
        options.get("transposed")]
    if options.get("heads"):
        shown = "all KV heads/program ({},{},{}) {}/SM cap {}".format(*options["heads"])
    shown += {0: "", 1: " fenced widening", 2: " fenced widening (V)"}[int(options.get("fenced", 0))]
    shown = "fp8 (P rounded to e4m3)" if options.get("fa3") else shown
    return label, shown


def main() -> None:
    args = sys.argv[1:]
    copy = COPY_GBPS
    if "--copy" in args:
        at = args.index("--copy")
        copy = float(args[at + 1])
        del args[at:at + 2]
    warm = "--warm" in args  # compile every variant (one input set, one call each) and time nothing
    if warm:
        args.remove("--warm")
    plans = "--plans" in args  # with --dry: what each fp8-kv full-decode candidate launches on an H200 (CPU)
    if plans:
        args.remove("--plans")
    if "--dry" in args:  # the shapes and candidates only (no GPU): what a run would time
        for name in [a for a in args if a != "--dry"] or DEFAULT_SHAPES:
            batch, context, left, candidates, *layer = SHAPES[name]
            print(f"## {name}: B={batch} ctx={context} window={left}{' H/Hk/D ' + str(layer[0]) if layer else ''}")
            for quantize_q, config, *more in candidates:
                options = more[0] if more else {}
                print("  {:6s} {}".format(*describe(quantize_q, config, options)))
                if plans and quantize_q is False and left is None and not layer and not (
                        {"fa3", "heads", "contig", "hnd"} & set(options)):
                    print(f"         -> {planned_launch(batch, context, config, options)}")
        return
    names = args or DEFAULT_SHAPES
    print(f"fp8 decode configs on {torch.cuda.get_device_name()}; us per call, vs bf16 = bf16 us / this, % of "
          f"copy ({copy:.0f} GB/s) on the bytes read, rel diff vs the bf16 cache's output", flush=True)
    if any(name.startswith("s6") for name in names):
        torch.zeros(1, device="cuda")  # a current context for the driver call below
        try:
            print(f"L2 fetch granularity limit: {l2_fetch_limit()} B", flush=True)
        except (OSError, RuntimeError) as exc:
            print(f"L2 fetch granularity limit: {exc}", flush=True)
    for name in names:
        batch, context, left, candidates, *layer = SHAPES[name]
        heads, kv_heads, head_dim = layer[0] if layer else (64, 8, 64)
        window = dict(window_size=(left, 0)) if left is not None else {}
        kv_bytes = batch * (context if left is None else left + 1) * kv_heads * head_dim * 2 * 2
        count = max(2, min(48, (3 << 30) // (batch * context * kv_heads * head_dim * 4)))
        count = 1 if warm else count
        sets = [dict(decode_inputs(batch, context, heads, kv_heads, head_dim), causal=True, **window)
                for _ in range(count)]
        if name in EXACT_SHAPES:  # capacity = context (full_decode_inputs gives a page more)
            sets = [dict(s, page_table=s["page_table"][:, :context // 16].contiguous()) for s in sets]
        ref = swattn.flash_attn_with_kvcache(**sets[0]).float()
        bf16_us = float("nan") if warm else graph_calls_us(
            [lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in sets])
        print(f"\n## {name}: B={batch} ctx={context} window={left} H/Hk/D {heads}/{kv_heads}/{head_dim}: {count} input "
              f"sets; bf16 {bf16_us:.2f} us "
              f"({kv_bytes / 1e6:.1f} MB bf16 K/V read, {kv_bytes / bf16_us / 1e3 / copy:.0%} of copy)", flush=True)
        variants = {}
        for quantize_q, config, *more in candidates:
            options = more[0] if more else {}
            label, shown = describe(quantize_q, config, options)
            if quantize_q not in variants:
                variants[quantize_q] = sets if quantize_q is None else fp8_sets(sets, quantize_q)
            calls = variants[quantize_q]
            if options.get("contig"):
                calls = [contiguous(c) for c in calls]
            if options.get("hnd"):
                calls = [dict(c, k_cache=head_major(c["k_cache"]), v_cache=head_major(c["v_cache"])) for c in calls]
            if "per_sm" in options:  # the split count of one wave at per_sm programs per SM (interface.split_count's)
                sms = torch.cuda.get_device_properties(0).multi_processor_count
                programs = batch * kv_heads // (2 if options.get("pair") else 1)
                options = dict(options, splits=max(1, sms * options["per_sm"] // programs))
            if "splits" in options:
                calls = [dict(c, num_splits=options["splits"]) for c in calls]
            forced = forced_config(FwdConfig(16, *config)) if config is not None else None
            l2_before = None
            settings = variant_settings(options)
            settings.__enter__()
            try:
                if "l2fetch" in options:
                    l2_before = l2_fetch_limit(options["l2fetch"])
                if forced is not None:
                    forced.__enter__()
                if options.get("fa3"):
                    runs = [fa3_fp8_call(c) for c in calls]
                elif options.get("heads"):
                    from fp8_heads_decode import heads_decode_launch, wave_splits
                    block_n, warps, stages, per_sm, maxnreg = options["heads"]
                    splits = wave_splits(batch, torch.cuda.get_device_properties(0).multi_processor_count, per_sm)
                    runs = [heads_decode_launch(c["q"], c["k_cache"], c["v_cache"], c["page_table"], c["cache_seqlens"],
                                                c["k_descale"], c["v_descale"], c["sinks"], num_splits=splits,
                                                block_n=block_n, num_warps=warps, num_stages=stages,
                                                maxnreg=maxnreg) for c in calls]
                else:
                    runs = [lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in calls]
                out = runs[0]().float()
                err = ((out - ref).norm() / ref.norm()).item()
                us = float("nan") if warm else graph_calls_us(runs)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  {label:6s} {shown:36s}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            finally:
                if forced is not None:
                    forced.__exit__(None, None, None)
                settings.__exit__(None, None, None)
                if l2_before is not None:
                    l2_fetch_limit(l2_before)
            read = kv_bytes if quantize_q is None else kv_bytes / 2
            print(f"  {label:6s} {shown:36s}: {us:8.2f} us {bf16_us / us:5.2f}x {read / us / 1e3 / copy:5.0%} "
                  f"of copy  err {err:.1e}", flush=True)
        variants.clear()
        sets.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
