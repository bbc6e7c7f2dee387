"""Block shapes and launch settings of the forward and backward kernels, as data.

Under the interpreter (CPU tests) one small pinned config is used, and tests may force others with
``forced_config``. GPU defaults were picked from bf16 measurements recorded in docs/notes/performance-log.md; fp32
tiles are twice as large, so every choice is then shrunk until its streamed tiles fit in shared memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from swattn._compat import interpreter_enabled, next_power_of_2


@dataclass(frozen=True)
class FwdConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    single_loop: bool = False  # one masked KV loop instead of masked head / unmasked interior / masked tail
    # K/V blocks through tensor descriptors (Hopper's TMA copy engine) where the tensors allow it (dense or varlen
    # K/V, 16-byte aligned rows; not paged caches); the descriptor's row count ends at the tile's last visible
    # key, so its zero fill is exactly the masked load.
    tma: bool = False
    # Register cap per thread (Triton's ``maxnreg``): more resident programs per SM for latency-bound short loops,
    # at the risk of spills. None: the compiler's choice.
    maxnreg: int | None = None
    # With single_loop: mask only the blocks that some row of the tile cannot see whole (a branch per block), not
    # every block of the loop: the window-127 prefill masks 2 of its 5 blocks per tile.
    mask_edges_only: bool = False
    # With single_loop, one split: keys of a tile spanning at most block_n + head_block keys as one block_n-key block
    # ending at the tile's last key and one head_block-key block before it, both loaded up front (fwd's HEAD_N): a
    # k-token verify at window (127, 0) sees 127 + k keys, which one 256-key block covered with 125 - k keys of
    # masked work. 0: off.
    head_block: int = 0


@dataclass(frozen=True)
class BwdConfig:
    """Block shapes of the backward: the dK/dV kernel holds BLOCK_N keys and walks BLOCK_M query rows at a time;
    the dQ kernel holds BLOCK_M query rows and walks BLOCK_N keys at a time (FlashAttention-2's split)."""

    dkdv_block_m: int
    dkdv_block_n: int
    dq_block_m: int
    dq_block_n: int
    num_warps: int
    num_stages: int
    # A block's rows are (position, head) pairs of one KV head's query heads (when the group size divides both
    # BLOCK_Ms and is a power of two): fewer, larger steps and a shorter dQ span for small windows.
    pack_gqa: bool = False
    # Streamed tiles through tensor descriptors (TMA), as FwdConfig.tma: K/V of the dQ loop, q/dO of the dK/dV
    # loop when not packed.
    tma: bool = False
    # Stages of the dK/dV loop when it should differ from the dQ loop's ``num_stages`` (None: the same). Compiled
    # for sm_90 (scripts/kernel_resources.py), the pipelined dK/dV loop holds 255 registers and spills (W(127,0)
    # D64: 448 B; W(4095,0) D128: 624 B), one stage 155-224 registers without spills.
    dkdv_num_stages: int | None = None


# Bytes of streamed tiles a config may keep in shared memory. Hopper gives a block 227 KiB; Triton also needs
# scratch for layout conversions, and the bf16 choices below (measured to compile and run) stay within this.
SHARED_MEMORY_BUDGET = 160 * 1024

_forced: FwdConfig | None = None

# Speculative verify at a small window: a PackGQA tile of k query positions x G heads sees left + k keys (127 + k at
# window (127, 0)), two 128-key blocks where decode's 128 keys are one. Per tile height (rows_per_tile, rounded up to
# a power of two: k * G), (block_n, num_warps) to use instead of (128, 4) when the tile's keys fit one block of
# block_n. H200 (scripts/gpu_probe.py verify_blocks, W(127,0) B=16 1K page 16, cold caches, 2026-12-03): one
# 256-key block with 8 warps, k = 2: 11.22 us vs 11.78 (append launch + attention + zeroed-flag redo); k = 4: 12.81
# vs 12.82; with the fused append and no redo launch 7.03 / 8.58 us, the fastest variants measured. k = 8 (64 rows)
# lost (15.82 vs 13.74; compiled for sm_90 it spills 16 B) and keeps two 128-key blocks. Only for grids of at most
# one program per SM (measured: 128 programs on 132 SMs): an 8-warp tile of ~160 registers is one program per SM
# (sm_90, Triton 3.6 and 3.9), so a larger grid would run in more than one wave.
VERIFY_BLOCKS: dict[int, tuple[int, int]] = {16: (256, 8), 32: (256, 8)}
# Per tile height, num_warps of the head-block verify config (FwdConfig.head_block): one 128-key block ending at the
# tile's last key and a 16-key block before it, for tiles of 129-144 keys (k = 2-17 tokens at window (127, 0)), in
# grids of at most one program per SM; it takes precedence over VERIFY_BLOCKS (which bf16 / fp16 K/V no longer take).
# H200 (scripts/gpu_probe.py verify_window, main of 18:25 UTC, 2026-12-03), W(127,0) B=16 1K page 16, fused append,
# us cold (48 input sets) | warm, with the one pass's guard behind a branch (fwd.GUARD_BRANCH): k = 2 6.79 | 5.33
# against 8.20 | 6.82 for (16, 256, 8, 1); k = 4 7.63 | 6.13 against 9.52 | 8.07 for (32, 256, 8, 1); k = 8, the
# guarded one pass at 64 rows (fwd.GUARD_ONE_PASS_MAX_ROWS_HEAD_BLOCK), 8.26 | 6.98 against 13.63 | 12.03 for
# (64, 128, 4, 1) and the redo launch; decode 5.45 | 4.19, FA3 12.5-12.8 | 11.7-11.8. 4 warps at k = 4: 8.70.
# Compiled for sm_90 (Triton 3.6), main launch: k = 4 (32, 128, 8, 1, head 16) 158 registers, 1944 SASS
# instructions against (32, 256, 8, 1) 229, 2768.
# H200 (scripts/gpu_probe.py verify_window PROBE_SET=s5, 22:54 UTC call, with fwd.GUARD_CHECKS_OUTPUT): k = 8 on 4
# warps 6.98 | 5.76 against 8.19 | 7.10 on 8 (the 64-row tile is one warpgroup's wgmma on 4 warps; on 8 the rows'
# max and sum cross two warpgroups); k = 4 on 4 warps 7.37 | 5.76 against 7.31 | 5.79 on 8 (kept).
VERIFY_HEAD_BLOCKS: dict[int, int] = {16: 8, 32: 8, 64: 4}
# Per tile height, a taller tile for the head-block verify config (its rows past the k x G real ones are masked, as
# a decode tile's 8 of 16). The k = 8 tile (64 rows, 4 warps: one warpgroup's wgmma) took 6.98 us cold where k = 4's
# 32 rows on 8 warps (mma.sync, the rows' max and sum across warps) took 7.31 (H200, s5-call4): {32: 64} runs k = 4
# as k = 8's tile, with VERIFY_HEAD_BLOCKS[64]'s warps. H200 (scripts/gpu_probe.py serving_s6, s6-call4, main
# 215a719), W(127,0) B=16 1K page 16, k = 4 with the fused append, us cold | warm: 6.79 | 5.66 against 7.33 | 5.80;
# with fwd.PRELOAD_L2 = 2 6.27 | 5.89 against 6.54 | 5.75 (the 64-row tile is two programs per SM, Triton 3.6: the
# next call's programs fit beside it before their wait; the 8-warp 32-row tile is one). k = 2 (16 rows) too: H200
# (scripts/gpu_probe.py serving_s7, s7-call11), with the row-bound mask, 5.22 | 4.76 us against 5.46 | 4.69 on 16
# rows and 8 warps (decode + append 4.46 cold: 1.17x against 1.22x).
VERIFY_PADDED_ROWS: dict[int, int] = {16: 64, 32: 64}

# Resident programs per SM of a split-KV decode launch, by PackGQA tile height (query positions x G heads, rounded
# up to a power of two; speculative verify of k tokens at G = 8: 16 rows for k <= 2, 32 for 4, 64 for 8): the
# automatic split count (``interface.split_count``) fills this many per SM in one wave. Compiled for sm_90 with
# Triton 3.6 (the GPU's; scripts/kernel_resources.py), main launch, registers per thread -> programs per SM:
# pipelined loop (long splits): (16, 64, 2, 3) 156-162 -> 6; (32, 64, 4, 3) 126 -> 4; (64, 64, 4, 3) 128 -> 4.
# One-stage 128-key loop (short splits): (16, 128, 4, 1) 105-127 -> 4; (32, ...) 128 -> 4; (64, ...) 167 -> 3.
# The rule assumed six per SM for every tile until 2026-12-03: a k = 4 verify at B=16 (128 programs per split)
# got 6 splits, 768 programs for 528 resident slots, a second wave (the model step's verify, 8K: FA3 1.35x ahead).
SPLIT_PROGRAMS_PER_SM = {16: 6, 32: 4, 64: 4}
SHORT_SPLIT_PROGRAMS_PER_SM = {16: 4, 32: 4, 64: 3}

# Stages of the pipelined split loop over a PAGED cache, per tile height (absent: 3). Triton's pipeliner splits a
# loop's stages between the page-table load and the K/V load whose addresses come from it: at 3 and 4 stages the
# compiled loop (TTGIR, Triton 3.6, sm_90) holds ONE K/V buffer, one block in flight per program; at 5 and 6 two,
# at 7 three. A contiguous cache has no such chain: 3 stages are already two K/V buffers there.
# H200 (scripts/gpu_probe.py verify_full_tiles / verify_full, full-attention verify B=16 8K page 16, one 268 MB input
# set): 32-row tiles (k = 4) with 5 stages at 3 splits 95.8 us against 98.1 at 3 stages and 4 splits (17:10 call:
# 93.6 against 96.5); 64-row tiles (k = 8) 94.0 against 97.6 (17:10: 89.8 against 95.0). 16-row tiles (decode)
# keep 3: (16, 64, 2, 5) lost at B=4 16K (43.7 us against 40.6) and B=16 8K (73.5 against 71.0).
PAGED_SPLIT_STAGES: dict[int, int] = {32: 5, 64: 5}
# Resident programs per SM of the split loop with 5 stages (Triton 3.6, sm_90): (16, 64, 2, 5) 164 registers, 37
# KB of shared memory -> 6; (32, 64, 4, 5) 152 -> 3; (64, 64, 4, 5) 164 -> 3.
SPLIT_PROGRAMS_PER_SM_5_STAGES = {16: 6, 32: 3, 64: 3}
# Per tile height (k x G rows, a power of two), (block_m, block_n, num_warps, num_stages, programs per SM) of the
# pipelined split loop over a PAGED cache (bf16 / fp16 K/V) in place of the default (the tile's own rows, 64-key
# blocks, 2 warps for 16 rows and 4 for taller tiles, PAGED_SPLIT_STAGES, programs per SM from the tables above);
# the programs per SM set the automatic split count. Compiled for sm_90 (Triton 3.6), interior loop per 64 keys and
# program (SASS instructions): k = 4's (32, 64, 4, 5) 4 x 471 = 1884, 152 registers, 3 per SM (its 2 x 2 warps
# reduce each row's max and sum across warps through shared memory); (32, 64, 2, 5) 2 x 707 = 1414, 255 registers,
# 4 per SM; k = 8's 64-row wgmma tile (64, 64, 4, 5) 4 x 476 = 1904, 164 registers, 3 per SM; decode's (16, 64, 2,
# 3) 2 x 477 = 954. H200 (scripts/gpu_probe.py serving_s8, s8-call5, main ec1065b), full-attention verify k = 4,
# B=16 page 16, appended, us per call: 8K (one set) the 64-row tile at 3 splits 83.94 against 95.75 for (32, 64, 4,
# 5) at 3, (32, 64, 2, 5) at 4 splits 83.75, (32, 64, 2, 3) at 4 92.38, (32, 128, 4, 3) at 2 96.24, FA3 76.93; 1K
# (16 cold sets) 26.68 against 26.80, (32, 64, 2, 5) at 4 28.23, FA3 20.29. So k = 4 runs in k = 8's tile (its 32
# padded rows masked, as VERIFY_PADDED_ROWS does for the window verify).
PAGED_SPLIT_TILES: dict[int, tuple[int, int, int, int, int]] = {32: (64, 64, 4, 5, 3)}


# fp8 (e4m3) K/V on decode-sized PackGQA tiles (bf16 q over an e4m3 cache, or q/K/V all e4m3). A K/V block is half
# a bf16 block's bytes, and the paged split loop at 3 stages holds ONE K/V buffer (the pipeliner puts the page-table
# load in stage 0 and the K/V copies in stage 1): each step waits for its block, computes it, then issues the next
# block's copies, so a step costs latency + compute with nothing in flight while it computes, and 6 programs per SM
# x 8 KB in flight left HBM at 56% of copy bandwidth (H200, B=16 16K: 113.8 us vs bf16 132.1; docs/notes/
# 2026-12-03-fp8-kv-cache.md, session 4). Stages of the paged split loop per tile height (absent: bf16's): compiled
# (Triton 3.6, sm_90) (16, 64, 2, 5) keeps two K/V buffers and (16, 64, 2, 7) three, both at 168 registers, 6
# programs per SM (as bf16's 3 stages; shared 21 / 29 KB). Under the register cap below, fewer stages won: H200
# (s4-call3, main 15a8cfe, scripts/gpu_fp8_decode.py full, fp8-kv B=16 16K page 16, bf16 134.7 us) (16, 64, 2, 3)
# 106.0 us, (.., 5) 109.6, (.., 7) 114.6.
FP8_PAGED_SPLIT_STAGES: dict[int, int] = {16: 2}
# (block_n, num_warps, register cap, programs per SM) of that loop per tile height where it differs from bf16's
# (block_n, num_warps) and ``FP8_DECODE_MAXNREG``; the programs per SM set the automatic split count
# (``split_programs_per_sm`` with ``fp8``). Empty: bf16's block shape (6 two-warp programs per SM). 128-key e4m3
# blocks (16 KB of K and V per block, a bf16 64-key block's bytes) in 4-warp programs capped at 128 registers, 4 per
# SM: H200 (scripts/gpu_fp8_decode.py, one wave of splits), B=16 16K page 16, fp8-kv: at 2 stages 101.81 us against
# 105.74 for (64, 2, 3) capped at 168 at 6 per SM (s5-call4, 22:54 UTC); at 3 stages 104.14 / 104.47 against
# 105.74 / 106.14 (s5-call4, s5-call2), B=4 16K 32.06 / 32.24 against 33.28 / 33.60. Compiled (Triton 3.6, sm_90):
# (16, 128, 4, 2) capped at 128: 128 registers, no spill, 22.5 KB shared, 4 programs per SM.
FP8_PAGED_SPLIT_BLOCKS: dict[int, tuple[int, int, int | None, int]] = {16: (128, 4, 128, 4)}
# Register cap of that loop: with unsigned page arithmetic (``fwd._cache_token_offsets``) it takes 178 registers
# (5 programs per SM) uncapped; capped at 168 it compiles to 151 without spills (Triton 3.6, sm_90; all-fp8 156).
FP8_DECODE_MAXNREG: int | None = 168
# Stages of the one-block small-window decode loop (the single masked loop) with fp8 K/V: at one stage the e4m3 V
# tile's layout change sits between V's load and K's (two dependent memory round trips); at two both tiles are
# asynchronous copies issued together (H200, W(127,0) B=16 2K, s4-call1: fp8-kv 5.14 vs 5.36 us, all-fp8 4.77 vs
# 4.91, bf16 4.92), and the launch takes 128 registers instead of 167 (4 programs per SM instead of 3).
FP8_SINGLE_LOOP_STAGES = 2


# The most splits of one sequence's KV loop that the automatic split count plans (interface.split_count).
MAX_SPLITS = 64

# Two KV heads per program (fwd's PAIR_TWO_LOADS: KV heads 2k and 2k + 1 in one 16-row PackGQA tile, each head's
# [block_n, D] e4m3 tiles loaded on their own, one product per head) on the paged split loop of a full-attention
# decode over an e4m3 cache with fp16/bf16 queries (FP8_KV): the default where ``fp8_pair_split_count`` says so,
# off with ``FP8_KV_PAIRS = False`` (or SWATTN_FP8_KV_PAIRS=0 at import; fwd.FP8_TWO_KV_HEADS forces a pair mode
# for experiments). H200, gpt-oss layer (H=64/8, D=64, sinks, page 16), fp8-kv, graph replay, against the one-head
# (128, 4, 2) default in the same run: B=16 16K 99.98 vs 102.21 us, B=4 128K 187.51 vs 197.60 (s6-call4); B=4 128K
# 198.54 vs 208.52, B=16 131040 785.27 vs 837.79 (s6 final, under CUDA_LAUNCH_BLOCKING); B=16 131040 747.74 vs
# 777.41 (s7-call11); but B=4 16K 32.44 vs 31.77 (s6-call4): 33 splits of 497 keys, 8 blocks of 64 keys each.
# (block_n, num_warps, register cap, programs per SM) per tile height, as FP8_PAGED_SPLIT_BLOCKS, and the widening:
# (16, 32, 2, 2) capped at 128 with V fenced (FP8_PAIR_FENCED_WIDENING 2), 8 two-warp programs per SM: H200
# (s8-call4, 12:25 UTC, main 25b8463, scripts/gpu_fp8_decode.py s8b_*; us, vs the same run's bf16): B=16 16K 88.06
# (1.50x, 72% of copy) against 99.15 for (16, 64, 4, 2) capped at 128, 4 per SM, not fenced (the default before),
# 91.36 for that shape with V fenced, 104.22 with K and V fenced, 98.38 for (16, 32, 2, 2) not fenced, 101.15 for one
# KV head; B=4 128K 167.26 (1.52x, 76%) against 186.61 / 172.65 / 196.84 / 192.86 / 196.92. B=16 131040 (not timed
# at this shape): (16, 64, 4, 2) with V fenced 676.69 (1.45x, 75%) against 722.28 not fenced. Compiled (Triton 3.6,
# sm_90): 128 registers, 16 B stack, 19 KB shared, 401 interior-loop instructions per 2 x 32 keys and warp. The
# split count plans a wave of them (half the programs per split of one KV head at twice the programs per SM, so
# four times the splits, at most MAX_SPLITS).
FP8_KV_PAIRS = os.environ.get("SWATTN_FP8_KV_PAIRS", "1") != "0"
FP8_PAIR_SPLIT_BLOCKS: dict[int, tuple[int, int, int | None, int]] = {16: (32, 2, 128, 8)}
# Where another block shape of the pairs' loop streams faster (``fp8_pair_blocks``): (head_dim, most one-head
# programs per split, fewest keys, (block_n, num_warps, register cap, programs per SM)), the first match taken; the
# programs per SM are what the split count plans and the fill rule asks (``fp8_pair_split_count``).
# head_dim 128 (32, 2, 2) capped at 168 registers, 6 per SM: capped at 128 (FP8_PAIR_SPLIT_BLOCKS') the loop spills
# there (Triton 3.6, sm_90: 128 B stack, 24 LDL/STL in the loops, interior loop 663 instructions per 2 x 32 keys and
# warp), at 168 it does not (24 B stack, none in the loops, 614; 37,888 B shared; 6 per SM by registers). H200
# (s10-call1, 16:44 UTC, main 7da2d75, scripts/gpu_fp8_decode.py s10_d128_*: H=32 / Hk=8, D=128, page 16, sinks,
# page tables of exactly the context; fp8-kv us, vs the same run's bf16): B=16 16K 158.30 (1.87x, 80% of copy)
# against 222.29 / 222.31 capped at 128 and 203.94 / 203.93 for one KV head per program (whose (128, 4, 2) loop
# spills 264 B); the same block shape at 8 per SM (16 splits: 1,024 programs over 792 slots) 210.65; B=4 128K 296.27
# (2.00x, 86%) against 417.39 / 419.94, one KV head 386.32 / 386.26, at 8 per SM 398.29.
# head_dim 64, at most 32 one-head programs per split (B <= 4 with 8 KV heads), from 16K keys: one-warp programs on
# 32-key blocks capped at 168 registers (Triton 3.6: no stack, 18 KB shared, 12 resident per SM), planned at 8 per
# SM (the 64 splits of MAX_SPLITS either way; at 12 the fill rule would refuse 16 x 64 pair programs). H200, gpt-oss
# layer, page tables of exactly the context, us against the default in the same run: B=4 16K 26.72 / 26.73 vs
# 27.73 / 27.75, B=4 131072 148.03 / 148.14 vs 151.47 / 151.14 (s10-call3, main 3a077d9); B=4 131072 147.84 vs
# 151.15 (s10-call1); forced, a page-longer table, B=4 16K 26.66 vs 27.83 (s9-call7).
# head_dim 64, 33 to 64 one-head programs per split (B=8): the default's shape (the one-warp shapes measured no faster,
# s10-call6, us: B=8 64K (32, 2) capped 128 152.52 / 167.94, (16, 1) capped 128 153.07 / 153.11, (32, 1) capped 168
# 156.41 / 156.42; B=8 128K 295.50 / 315.28, 296.69 / 311.41, 299.02 / 300.99).
# head_dim 64, at most 128 one-head programs per split (B <= 16), from 96K keys: one-warp programs on 16-key blocks
# capped at 128 (8 B stack, 10 KB shared, 16 per SM: 33 splits at B=16). B=16 131040 551.20 / 552.34 vs 564.80 /
# 595.96 (s10-call3), 571.74 / 574.79 vs 589.39 / 583.81 (s10-call6), 558.54 vs 566.21 / 571.45 (s9-call7, forced,
# the same 33 splits); no gain at B=16 16K (80.32 / 80.33 vs 79.95 / 80.04, s10-call3), 32K (157.89 / 156.32 vs
# 154.42 / 157.72) or 64K (312.30 / 295.57 vs 298.30 / 297.68, s10-call6); 96K is the midpoint between 64K and 128K.
# More than MAX_SPLITS splits at B=4 lost (s10-call6, an experiment since removed: 16K (16, 1) at 128 splits 29.25,
# (32, 1) at 99 30.41 against the default's 26.97; 131072 154.84 / 158.57 and 157.42 / 158.15 against 151.11 /
# 151.53).
FP8_PAIR_SHAPE_BLOCKS: tuple[tuple[int, int, int, tuple[int, int, int | None, int]], ...] = (
    (128, 1 << 30, 0, (32, 2, 168, 6)),
    (64, 32, 16384, (32, 1, 168, 8)),
    (64, 64, 0, FP8_PAIR_SPLIT_BLOCKS[16]),
    (64, 128, 98304, (16, 1, 128, 16)),
)
# The e4m3 widening of the pairs' loop where fwd.FP8_FENCED_WIDENING does not set one (0: plain ``.to``; 1: K and V
# fenced; 2: V only; compiled only, see fwd.FP8_FENCED_WIDENING).
FP8_PAIR_FENCED_WIDENING = 2
# The pairs' loop (the same loads, block shape and split count): 1 (the default) transposed (fwd's PAIR_TRANSPOSED,
# ``_softmax_step_transposed``): scores as K q^T, so the loop-invariant queries are the product's B operand (no
# register moves rebuilding them per block), each head's products only its own rows' 8-column tile, the row sums
# kept per key until the loop ends; 0: as PAIR_TWO_LOADS (session 8's). H200 (s9-call4, 14:28 UTC, main 9248933,
# scripts/gpu_fp8_decode.py s9_*, two mirrored runs each; us, vs the same run's bf16): B=16 16K 81.50 / 81.53 (1.65x,
# 78% of copy) against 89.01 / 89.20 with 0; B=4 16K 28.02 / 27.95 (1.46x) against 30.00 / 29.96; B=16 131040
# 599.45 / 601.86 (1.67x, 84%) against 668.74 / 669.74. A third loop (each block's keys in two halves with their own
# online softmax, one per warp) took 136.26 / 45.79 / 987.10 us in the same runs and was removed.
# SWATTN_FP8_PAIR_TRANSPOSED=0 at import (or the attribute) takes session 8's loop.
FP8_PAIR_TRANSPOSED = int(os.environ.get("SWATTN_FP8_PAIR_TRANSPOSED", "1") or 0)
# Fewest keys per split (with the pairs' split count) for which the pairs are taken (their split loop then replaces
# the single loop that forward_config gives splits of at most SHORT_SPLIT_KEYS keys: fp8_pair_config). H200
# (s9-call8, 15:00 UTC, main 0f6eb71, scripts/gpu_fp8_decode.py s9c_*: page tables of exactly the context, as
# swattn.bench's; fp8-kv us, one KV head per program (the rule's choice at 257) against the pairs from 256 / 128 keys
# per split): B=4 16K (64 splits of 256) 31.70 vs 27.84 / 27.84, B=16 4K (16 of 256) 31.70 vs 27.37 / 27.36, B=4 8K
# (64 of 128) 19.75 vs 19.75 (one head) / 18.10, B=8 8K (33 of 249) 31.54 vs 31.57 (one head) / 27.35. Earlier
# (s8-call5, forced, page tables a page longer): B=4 16K 64 splits of 257 keys 29.95 vs 32.11, B=8 16K 33 of 497
# 49.61 vs 55.15, B=4 32K 64 of 513 49.95 vs 55.65. Below 128 keys per split: not measured.
FP8_PAIR_MIN_KEYS_PER_SPLIT = 128
# All-fp8 decodes (e4m3 q over an e4m3 cache, FlashAttention 3's fp8 API) on the same two-KV-heads loop where
# ``fp8_kv_pairs_fit`` takes it (its ``e4m3_q``): the kernel widens q to fp16 at its load (exact) and folds
# q_descale into each row's score scale beside k_descale (fwd's FP8_KV loop with e4m3 q; the launch is FP8_KV, the
# output bf16 as for all-fp8); off: one KV head per program on the all-fp8 (FP8_QKV) loop. Off until timed on the
# GPU (scripts/gpu_queue/fp8_allfp8_pairs.sh; session 15, docs/notes/2026-12-03-fp8-kv-cache.md): the all-fp8 full
# decode measured 100.1 us at B=16 16K (H200, 1.32x of bf16) against fp8-kv's 78.72 us on the pairs (s10-call5,
# docs/performance.md).
# SWATTN_FP8_QKV_PAIRS=1 at import (or the attribute) turns it on.
FP8_QKV_PAIRS = os.environ.get("SWATTN_FP8_QKV_PAIRS", "0") == "1"


def fp8_kv_pairs_fit(fp8_kv: bool, pack_gqa: bool, full_attention: bool, rows_per_tile: int, seqlen_q: int,
                     num_kv_heads: int, head_dim: int, adjacent_heads: bool, paged: bool, append: bool,
                     e4m3_q: bool = False) -> bool:
    """Whether a decode may take two KV heads per program (where ``fp8_pair_split_count`` says they pay):
    ``fp8_kv`` (an e4m3 cache; with fp16/bf16 queries, or with ``e4m3_q`` e4m3 queries too, which take the pairs
    only with ``FP8_QKV_PAIRS`` and a ``head_dim`` of at least 32, all-fp8's padded head_dim), ``pack_gqa``
    single-query tiles (``seqlen_q`` 1,
    ``rows_per_tile`` = queries per KV head) whose two heads' rows fit one ``FP8_PAIR_SPLIT_BLOCKS`` tile,
    ``full_attention`` (no window or attention chunk: what was measured), an even ``num_kv_heads``, a power-of-two
    ``head_dim`` of at most 128 (what was measured: 64 and 128, whose loop already needs 168 registers; 256 not
    compiled) whose two heads' rows are adjacent in memory (``adjacent_heads``: head stride = head_dim), a ``paged``
    cache, no fused ``append``; and ``FP8_KV_PAIRS`` on. The one place that decides: ``interface.split_count``
    plans the pairs' splits and fwd takes them from it (with ``fp8_pair_split_count`` / ``fp8_pairs_taken``)."""
    if e4m3_q and not (FP8_QKV_PAIRS and head_dim >= 32):
        return False
    return (FP8_KV_PAIRS and fp8_kv and pack_gqa and full_attention and seqlen_q == 1
            and max(16, next_power_of_2(2 * rows_per_tile)) in FP8_PAIR_SPLIT_BLOCKS
            and num_kv_heads % 2 == 0
            and head_dim == next_power_of_2(head_dim) and head_dim <= 128 and adjacent_heads and paged and not append)


def fp8_pair_split_count(programs: int, keys: int, sms: int, head_dim: int = 64) -> int:
    """The split count of a decode that ``fp8_kv_pairs_fit`` with two KV heads per program, or 0 where one KV head
    per program stays: ``programs`` one-head programs per split (batch x KV heads) whose sequences see at most
    ``keys`` keys, on ``sms`` SMs. Pairs are taken in the split regime (fewer programs than SMs) where a wave of
    pair programs (``fp8_pair_blocks``' programs per SM for ``head_dim``, at most ``MAX_SPLITS`` splits)
    fills at least three quarters of the SMs' slots and leaves each split at least ``FP8_PAIR_MIN_KEYS_PER_SPLIT``
    keys. A function of shapes only: ``interface.split_count`` plans the splits from it and ``fwd`` takes the pairs
    through ``fp8_pairs_taken``, which asks it, so the two agree."""
    if programs >= sms or programs % 2:
        return 0
    per_sm = fp8_pair_blocks(programs, keys, head_dim)[3]
    splits = max(1, min(per_sm * sms // (programs // 2), MAX_SPLITS))
    if not _pairs_fill(programs, splits, sms, per_sm) or -(-keys // splits) < FP8_PAIR_MIN_KEYS_PER_SPLIT:
        return 0
    return splits


def fp8_pair_blocks(programs: int, keys: int, head_dim: int = 64) -> tuple[int, int, int | None, int]:
    """(block_n, num_warps, register cap, programs per SM) of the two-KV-heads split loop for ``programs`` one-head
    programs per split whose sequences see at most ``keys`` keys of ``head_dim``: the first
    ``FP8_PAIR_SHAPE_BLOCKS`` entry that matches, else ``FP8_PAIR_SPLIT_BLOCKS``' 16-row tile's."""
    for dim, most_programs, fewest_keys, blocks in FP8_PAIR_SHAPE_BLOCKS:
        if dim == head_dim and programs <= most_programs and keys >= fewest_keys:
            return blocks
    return FP8_PAIR_SPLIT_BLOCKS[16]


def _pairs_fill(programs: int, splits: int, sms: int, per_sm: int) -> bool:
    """Pair programs of ``splits`` splits fill at least three quarters of a wave's slots (``per_sm`` per SM)."""
    return 4 * (programs // 2) * splits >= 3 * per_sm * sms


def fp8_pairs_taken(programs: int, keys: int, sms: int, num_splits: int, head_dim: int = 64) -> bool:
    """Whether the forward kernel takes two KV heads per program for a decode that ``fp8_kv_pairs_fit``, handed
    ``num_splits`` (arguments otherwise as ``fp8_pair_split_count``): where that function plans pairs and the pair
    programs of ``num_splits`` splits fill at least three quarters of a wave. The automatic count fills one; a
    caller's own smaller count (or one planned with ``sm_margin`` far below) keeps one KV head per program, whose
    twice as many programs fill more of the SMs."""
    return (fp8_pair_split_count(programs, keys, sms, head_dim) > 0
            and _pairs_fill(programs, num_splits, sms, fp8_pair_blocks(programs, keys, head_dim)[3]))


def fp8_pair_config(config: FwdConfig, programs: int, keys: int, head_dim: int = 64) -> FwdConfig:
    """The block shape of the two-KV-heads split loop (``fp8_pair_blocks`` of ``programs`` one-head programs per
    split, ``keys`` keys and ``head_dim`` for 16-row tiles, else ``FP8_PAIR_SPLIT_BLOCKS``') in place of
    ``config``'s, on the
    split loop (a short split's single loop, which ``forward_config`` gives splits of at most ``SHORT_SPLIT_KEYS``
    keys, replaced too)."""
    block_n, num_warps, maxnreg, _ = (fp8_pair_blocks(programs, keys, head_dim) if config.block_m == 16
                                      else FP8_PAIR_SPLIT_BLOCKS[config.block_m])
    return replace(config, block_n=block_n, num_warps=num_warps, maxnreg=maxnreg,
                   num_stages=FP8_PAGED_SPLIT_STAGES.get(config.block_m, config.num_stages), single_loop=False,
                   head_block=0, mask_edges_only=False)


def split_programs_per_sm(rows_per_tile: int, short: bool, paged: bool = False, fp8: bool = False,
                          qv_tile: bool = False) -> int:
    """Resident programs per SM that the automatic split count plans for a decode-sized tile of ``rows_per_tile``
    rows (``short``: splits of at most ``SHORT_SPLIT_KEYS`` keys, the one-stage loop; ``paged``: a paged cache,
    whose loop takes ``PAGED_SPLIT_STAGES``; ``fp8``: an e4m3 cache, whose paged loop takes
    ``FP8_PAGED_SPLIT_BLOCKS``; ``qv_tile``: MLA's ``QV_PACKED_TILE``, ``qv_packed_tile``); larger tiles as 64
    rows."""
    if qv_tile:
        return QV_PACKED_PROGRAMS_PER_SM
    block_m = min(64, max(16, next_power_of_2(max(rows_per_tile, 1))))
    if short:
        return SHORT_SPLIT_PROGRAMS_PER_SM[block_m]
    if fp8 and paged and block_m in FP8_PAGED_SPLIT_BLOCKS:
        return FP8_PAGED_SPLIT_BLOCKS[block_m][3]
    if paged and not fp8 and block_m in PAGED_SPLIT_TILES:
        return PAGED_SPLIT_TILES[block_m][4]
    if paged and PAGED_SPLIT_STAGES.get(block_m, 3) >= 5:
        return SPLIT_PROGRAMS_PER_SM_5_STAGES[block_m]
    return SPLIT_PROGRAMS_PER_SM[block_m]


# A split-KV share of at most this many keys (two 128-key blocks) is latency-bound: decode tiles run it on the
# one-stage loop, and the automatic split count (``interface.split_count``) makes such splits at short contexts.
SHORT_SPLIT_KEYS = 256


def _streamed_bytes(resident_rows: int, streamed_rows: int, num_stages: int, head_dim: int, element_size: int) -> int:
    """Shared memory of a loop that keeps ``resident_rows`` rows and streams two tiles of ``streamed_rows`` rows
    (K and V, or Q and dO) through ``num_stages - 1`` prefetch buffers (at least one)."""
    return (resident_rows + 2 * streamed_rows * max(1, num_stages - 1)) * head_dim * element_size


def _within_shared_memory(config: FwdConfig, shared_bytes: Callable[[FwdConfig], int]) -> FwdConfig:
    """``config`` with fewer stages, then narrower KV blocks, then fewer rows (down to 16) until ``shared_bytes``
    of it fits ``SHARED_MEMORY_BUDGET``."""
    while shared_bytes(config) > SHARED_MEMORY_BUDGET:
        if config.num_stages > 1:
            config = replace(config, num_stages=config.num_stages - 1)
        elif config.block_n > 16:
            config = replace(config, block_n=config.block_n // 2)
        elif config.block_m > 16:
            config = replace(config, block_m=config.block_m // 2)
        else:
            break
    return config


def _fit_forward(config: FwdConfig, head_dim: int, element_size: int) -> FwdConfig:
    return _within_shared_memory(config, lambda c: _streamed_bytes(c.block_m, c.block_n, c.num_stages, head_dim,
                                                                   element_size))


@contextlib.contextmanager
def forced_config(config: FwdConfig) -> Iterator[None]:
    """Use ``config`` for every forward launch inside the block (tests, benchmark sweeps)."""
    global _forced
    previous, _forced = _forced, config
    try:
        yield
    finally:
        _forced = previous


def forced_config_in_use() -> FwdConfig | None:
    """The config ``forced_config`` sets, if any (part of every forward plan's key)."""
    return _forced


def forward_config(head_dim_padded: int, rows_per_tile: int, pack_gqa: bool, window_span: int | None,
                   element_size: int = 2, keys_per_split: int | None = None,
                   programs_per_sm: float | None = None, paged: bool = False, fp8_kv: bool = False,
                   value_dim_padded: int | None = None, qv: bool = False) -> FwdConfig:
    """Pick block shapes from shapes only (never from GPU values, so CUDA graphs and torch.compile are safe).

    ``element_size``: bytes per q/k/v element (fp32 shrinks the bf16 choice to fit shared memory);
    ``rows_per_tile``: rows of one sequence's tiles (PackGQA: query positions * queries per KV head);
    ``window_span``: ``left + right + 1`` when both sides are bounded, else None; ``keys_per_split``: the most
    keys one split of a sequence's KV loop covers (None: unknown); ``programs_per_sm``: the grid's programs (at
    least one tile per sequence and head axis) per SM (None: unknown); ``paged``: K/V through a page table;
    ``fp8_kv``: K/V in e4m3 (decode tiles then take ``FP8_PAGED_SPLIT_STAGES`` / ``FP8_SINGLE_LOOP_STAGES``);
    ``value_dim_padded``: V's padded head_dim when it differs from K's (``value_dim_config``); ``qv``: the call
    passes FlashAttention 3's qv (``value_dim_config`` whatever the two head dims). Choices come from
    the H100 and H200 sweeps
    recorded in docs/notes/performance-log.md (scripts/gpu_sweep.py, gpu_splits.py).
    """
    if _forced is not None:
        return _forced
    if interpreter_enabled():
        return FwdConfig(16, 16, 4, 1)
    if value_dim_padded is not None and (value_dim_padded != head_dim_padded or qv):
        return value_dim_config(head_dim_padded, value_dim_padded, rows_per_tile, pack_gqa, window_span,
                                element_size, keys_per_split, programs_per_sm, paged, qv)
    # The head-block verify tile (VERIFY_HEAD_BLOCKS) was compiled and timed for bf16 K/V only.
    config = _bf16_forward_config(head_dim_padded, rows_per_tile, pack_gqa, window_span, keys_per_split,
                                  programs_per_sm, paged, head_blocks=not fp8_kv and element_size == 2)
    if element_size != 2:
        # Descriptor loads and register caps were measured (and are used) for fp16/bf16 only.
        config = replace(config, tma=False, maxnreg=None)
    if fp8_kv:
        config = _fp8_decode_stages(config, rows_per_tile, pack_gqa, paged)
    return _fit_forward(config, head_dim_padded, element_size)


# Tiles whose V rows are longer than this (FlashAttention 3's headdim_v up to 512 with a key head_dim of at most
# 64) take the LARGE_VALUE_* limits: their accumulator is [block_m, 512] fp32.
LARGE_VALUE_DIM = 256
# Compiled for sm_90 (Triton 3.6, scripts/kernel_resources.py; registers main / redo launch, spills): D64 Dv512
# split decode (16, 32, 4, 2) 255 regs and 32 B of spills, (16, 32, 8, 2) 181, (16, 16, 8, 2) 128, (16, 64, 8, 2)
# 212; causal prefill (64, 32, 8, 2) 228 / 255 with 272 B spilled in the redo launch, (64, 16, 8, 2) 214 / 253, (32,
# 32, 8, 2) 233 / 255 with 24 B. So: 8 warps, at most 64 rows, 16-key blocks at 64 rows (else 32), 2 stages. Not
# timed on a GPU.
LARGE_VALUE_BLOCK_M = 64
LARGE_VALUE_WARPS = 8
LARGE_VALUE_STAGES = 2


def _large_value_block_n(block_m: int) -> int:
    return 16 if block_m >= 64 else 32


# FlashAttention 3's qv keeps its [block_m, Dv] tile resident beside the accumulator. Compiled for sm_90 (Triton 3.6,
# scripts/kernel_resources.py; registers of the main / redo launch, spills), D 64, a paged split decode of 128 query
# heads over one KV head (PackGQA) and a causal 512-query prefill: Dv 512 decode (64, 16, 8, 2) 255 regs and 104 B
# spilled, (32, 32, 8, 2) 180, (32, 16, 8, 2) 128; prefill (64, 16, 8, 2) 255 / 255 with 128 / 240 B, (32, 32, 8,
# 2) 181 / 255 with 64 B in the redo, (32, 16, 8, 2) 177 / 253. Dv 256 decode (64, 64, 8, 2) 234, (64, 32, 8, 2)
# 201; prefill (64, 64, 8, 2) 234 / 255 with 208 B in the redo, (64, 32, 8, 2) 187 / 254. So, at most: V rows
# longer than LARGE_VALUE_DIM QV_LARGE_VALUE_TILE, longer than 128 QV_VALUE_TILE (block_m, block_n, warps, stages),
# none spilling. Not timed on a GPU.
QV_LARGE_VALUE_TILE = (32, 16, 8, 2)
QV_VALUE_TILE = (64, 32, 8, 2)

# MLA's absorbed decode (FlashAttention 3's qv with Dv 512 over D 64, PackGQA: 16 to 128 query heads on one latent KV
# head): tiles of at least QV_PACKED_MIN_ROWS packed rows take QV_PACKED_TILE, 16-bit inputs only (fp32 doubles the
# resident qv). QV_LARGE_VALUE_TILE's 32 rows run on mma.sync (no warpgroup product below 64 rows): H200 (s14-call2,
# main 56bc0f3, python -m swattn.bench decode-mla, D 64 Dv 512 H 128/1, page 64, 8K context) B=16 634.8 us (12
# splits, 768 programs of 2 per SM) against FA3's 81.9, B=64 2432 against 278. The work is 1088 multiply-adds per
# (query head, key) (q k^T 64, qv v^T 512, P V 512): 36.5 GFLOP at B=16, about 55 us at the bf16 product's measured
# 684 TFLOP/s, above the bytes' floor (35.6 us). Compiled for sm_90 (Triton 3.6, scripts/kernel_resources.py), the
# 64-row warpgroup tiles, registers / stack, loop SASS instructions per block (spill instructions in the loops):
# (64, 32, 8, 2) one masked loop 255 / 0 B, 844 (0), 147 KB shared, 1 program per SM; three loops (64, 32, 8, 2)
# 255 / 152 B (interior 769 with 2 spill instructions), (64, 32, 8, 3) 255 / 144 B; (64, 16, 8, 2) one loop 249 / 0
# B, 664 per 16 keys; (64, 64, 8, 2) one loop 255 / 24 B, 1257 (3); 16 warps (a 64-column accumulator each, but 4
# warpgroups each computing the tile's whole scores) (64, 16 / 32 / 64, 16, 2) 128 / 312-600 B. Its programs per SM
# (QV_PACKED_PROGRAMS_PER_SM) set the automatic split count: B=16 4 splits (128 programs), B=64 one (128).
QV_PACKED_TILE = FwdConfig(64, 32, 8, 2, single_loop=True)
QV_PACKED_MIN_ROWS = 64
QV_PACKED_PROGRAMS_PER_SM = 1


# A prefill whose key head_dim pads past 128 (DeepSeek's D 192 pads to 256) with V rows of at most 128 (Dv 128),
# without qv, over a large window or none: the equal-dims D 256 choice (64, 64, 8, 2) holds 64 rows in two
# warpgroups, each computing the tile's whole [64, 64] scores (Triton's layout of a product that feeds another: the
# warps along the rows); 128-row tiles give each warpgroup its own 64 rows. Compiled for sm_90 (Triton 3.6,
# scripts/kernel_resources.py), D 192 Dv 128 causal, main / redo launch registers and stack, interior loop SASS
# instructions and warpgroup products per 64-key block: (64, 64, 8, 2) 178 / 255 with 40 B, 403 and 36 (64 rows);
# (128, 64, 8, 2) 194 / 255 with 0 B, 389 and 20 (128 rows), 160 KB shared; (128, 64, 8, 3) 171 / 255 with 40 B,
# 461, 208 KB; (128, 32, 8, 3) 130 / 228, 329 per 32 keys. H200 (s14-call2, main 56bc0f3, python -m swattn.bench
# prefill-dv, H 128/128) with (64, 64, 8, 2): S=8192 17021 us (162 TFLOP/s) against FA3's 4233, S=16384 66675
# against 16044. Not timed on a GPU.
WIDE_KEY_PREFILL_TILE = FwdConfig(128, 64, 8, 2)


def _wide_key_prefill(head_dim_padded: int, value_dim_padded: int, rows_per_tile: int, pack_gqa: bool,
                      window_span: int | None, element_size: int, qv: bool) -> bool:
    """Whether a forward takes ``WIDE_KEY_PREFILL_TILE``: 16-bit, no qv, a key head_dim padded past 128 with V rows
    of at most 128, tiles of more than 64 rows that are not PackGQA decode tiles, a window of more than 512 keys or
    none."""
    return (not qv and element_size == 2 and head_dim_padded > 128 and value_dim_padded <= 128
            and rows_per_tile > 64 and not pack_gqa and (window_span is None or window_span > 512))


def qv_packed_tile(rows_per_tile: int, pack_gqa: bool, value_dim_padded: int, qv: bool, element_size: int = 2) -> bool:
    """Whether a forward takes ``QV_PACKED_TILE``: FlashAttention 3's ``qv`` with V rows longer than
    ``LARGE_VALUE_DIM`` (``value_dim_padded``, padded), PackGQA tiles of at least ``QV_PACKED_MIN_ROWS`` rows, 16-bit
    inputs (MLA's decode)."""
    return (qv and pack_gqa and rows_per_tile >= QV_PACKED_MIN_ROWS and value_dim_padded > LARGE_VALUE_DIM
            and element_size == 2)


def value_dim_config(head_dim_padded: int, value_dim_padded: int, rows_per_tile: int, pack_gqa: bool,
                     window_span: int | None, element_size: int = 2, keys_per_split: int | None = None,
                     programs_per_sm: float | None = None, paged: bool = False, qv: bool = False) -> FwdConfig:
    """Block shapes of a forward whose V head_dim (``value_dim_padded``, padded) differs from K's: the equal-dims
    choice at the larger of the two (its register and shared-memory budget covers the accumulator and both
    tiles), without the head-block verify tile (which loads V as K); V rows longer than ``LARGE_VALUE_DIM`` within
    the LARGE_VALUE_* limits and without descriptor loads (a TMA box spans at most 256 elements). Correct for any
    shape; not tuned (no GPU measured it).
    ``qv`` (FlashAttention 3's, with any two head dims): V rows longer than 128 within ``QV_VALUE_TILE`` /
    ``QV_LARGE_VALUE_TILE``, its resident ``[block_m, Dv]`` tile counted in the shared-memory budget, and no
    register cap (those were chosen for launches without it); MLA's packed decode tiles ``QV_PACKED_TILE``
    (``qv_packed_tile``); DeepSeek-style prefill (D 192, Dv 128) ``WIDE_KEY_PREFILL_TILE``."""
    if qv_packed_tile(rows_per_tile, pack_gqa, value_dim_padded, qv, element_size):
        return QV_PACKED_TILE
    if _wide_key_prefill(head_dim_padded, value_dim_padded, rows_per_tile, pack_gqa, window_span, element_size, qv):
        return WIDE_KEY_PREFILL_TILE
    config = _bf16_forward_config(max(head_dim_padded, value_dim_padded), rows_per_tile, pack_gqa, window_span,
                                  keys_per_split, programs_per_sm, paged, head_blocks=False)
    if element_size != 2:
        config = replace(config, tma=False, maxnreg=None)
    if value_dim_padded > LARGE_VALUE_DIM:
        block_m = min(config.block_m, LARGE_VALUE_BLOCK_M)
        config = replace(config, block_m=block_m, block_n=min(config.block_n, _large_value_block_n(block_m)),
                         num_warps=LARGE_VALUE_WARPS, num_stages=min(config.num_stages, LARGE_VALUE_STAGES),
                         tma=False, maxnreg=None, mask_edges_only=False)
    if qv:
        config = replace(config, maxnreg=None)
        if value_dim_padded > 128:
            block_m, block_n, warps, stages = (QV_LARGE_VALUE_TILE if value_dim_padded > LARGE_VALUE_DIM
                                               else QV_VALUE_TILE)
            config = replace(config, block_m=min(config.block_m, block_m), block_n=min(config.block_n, block_n),
                             num_warps=warps, num_stages=min(config.num_stages, stages))
    resident_dim = head_dim_padded + (value_dim_padded if qv else 0)  # q's row, and qv's
    return _within_shared_memory(config, lambda c: (c.block_m * resident_dim + (head_dim_padded + value_dim_padded)
                                                    * c.block_n * max(1, c.num_stages - 1)) * element_size)


def _fp8_decode_stages(config: FwdConfig, rows_per_tile: int, pack_gqa: bool, paged: bool) -> FwdConfig:
    """The stages of a decode-sized PackGQA tile over e4m3 K/V (see ``FP8_PAGED_SPLIT_STAGES``); other launches
    keep the bf16 choice."""
    if not pack_gqa or rows_per_tile > 64 or config.maxnreg is not None:
        return config
    if config.single_loop:
        # Measured for the decode tile's one 128-key block (16 rows); verify's 256-key blocks keep one stage.
        if config.num_stages == 1 and config.block_m == 16 and config.block_n == 128:
            return replace(config, num_stages=FP8_SINGLE_LOOP_STAGES)
        return config
    if paged and config.block_m in FP8_PAGED_SPLIT_STAGES:
        config = replace(config, num_stages=FP8_PAGED_SPLIT_STAGES[config.block_m], maxnreg=FP8_DECODE_MAXNREG)
        if config.block_m in FP8_PAGED_SPLIT_BLOCKS:
            block_n, num_warps, maxnreg, _ = FP8_PAGED_SPLIT_BLOCKS[config.block_m]
            config = replace(config, block_n=block_n, num_warps=num_warps, maxnreg=maxnreg)
    return config


def _bf16_forward_config(head_dim_padded: int, rows_per_tile: int, pack_gqa: bool,
                         window_span: int | None, keys_per_split: int | None = None,
                         programs_per_sm: float | None = None, paged: bool = False,
                         head_blocks: bool = True) -> FwdConfig:
    # head_blocks: bf16 / fp16 K/V, where VERIFY_HEAD_BLOCKS and PAGED_SPLIT_TILES were compiled and timed.
    small_window = window_span is not None and window_span <= 512
    if pack_gqa and rows_per_tile <= 64:
        # Decode / extend: every query head of a KV head in one tile; 128-key blocks so a 128-key window is one
        # block. Measured: W127 decode 4.35 us with (16, 128, 4, 1); full 128K decode best with (16, 64, 4, 3).
        # Splits of at most two 128-key blocks (short full-attention contexts) take the same one-stage loop, H200
        # (gpu_splits.py): 1K B=4 8 splits 8.3 us vs 10.6 with (16, 64, 2, 3); 4K B=4 16 splits 16.9 vs 17.2.
        block_m = max(16, next_power_of_2(rows_per_tile))
        # Padded by the tile's real rows (a power of two of them): a decode tile's 8 rows keep their 16.
        head_m = VERIFY_PADDED_ROWS.get(next_power_of_2(rows_per_tile), block_m)
        head_warps = VERIFY_HEAD_BLOCKS.get(head_m) if head_blocks else None
        if (small_window and head_warps is not None and keys_per_split is not None and head_dim_padded <= 128
                and 128 < keys_per_split <= 128 + 16 and programs_per_sm is not None and programs_per_sm <= 1):
            return FwdConfig(head_m, 128, head_warps, 1, single_loop=True, head_block=16)
        verify = VERIFY_BLOCKS.get(block_m)
        if (small_window and verify is not None and keys_per_split is not None and head_dim_padded <= 128
                and 128 < keys_per_split <= verify[0] and programs_per_sm is not None and programs_per_sm <= 1):
            return FwdConfig(block_m, verify[0], verify[1], 1, single_loop=True)
        if small_window or (keys_per_split is not None and keys_per_split <= SHORT_SPLIT_KEYS):
            return FwdConfig(block_m, 128 if head_dim_padded <= 128 else 64, 4, 1, single_loop=True)
        # Full decode, H200 (gpu_probe.py splits, 16K, page 16): two warps per 16-row tile fit twice the
        # programs per SM, more loads in flight: B=16 137 us (12 splits) vs 150 us with four warps, B=4 42 vs 46.
        # Paged caches: PAGED_SPLIT_STAGES (two K/V blocks in flight take 5 stages there) and PAGED_SPLIT_TILES.
        if paged and head_blocks and block_m in PAGED_SPLIT_TILES:
            tile_m, block_n, warps, stages, _ = PAGED_SPLIT_TILES[block_m]
            return FwdConfig(tile_m, block_n, warps, stages)
        return FwdConfig(block_m, 64, 2 if block_m <= 16 else 4, PAGED_SPLIT_STAGES.get(block_m, 3) if paged else 3)
    if small_window:
        # Short KV loops: one masked loop; W127 D64 16K: 252 us (64, 32, 4, 2, single) vs 262 us three loops.
        # H200 (gpu_probe.py edges, 907004d): masking only the edge blocks, capped at 96 registers (5 programs per
        # SM, no spills; uncapped it takes 109-117 and fits 4), 228.5 us vs 246.6 us; uncapped 284 us.
        if head_dim_padded <= 64:
            return FwdConfig(64, 32, 4, 2, single_loop=True, mask_edges_only=True, maxnreg=96)
        return FwdConfig(64, 64, 4, 2, single_loop=True)
    # Large windows and full attention: K/V through tensor descriptors (docs/notes/performance-log.md, "tensor-
    # descriptor (TMA) loads", S=16K): W4095 D128 2147 -> 1907 us, causal D128 4572 -> 3951 us, W4095 D64 2540 ->
    # 2398 us. (Small windows got slower: the descriptors are built per program, and their tiles' loops are short.)
    if head_dim_padded <= 64:
        return FwdConfig(128, 64, 4, 3, tma=True)
    if head_dim_padded <= 128:
        # Pointer loads: causal 16K D128 4573 us, W4095 2135 us (both best of the pointer-load sweep).
        return FwdConfig(128, 128, 8, 3, tma=True)
    return FwdConfig(64, 64, 8, 2)


def value_dim_backward_config(head_dim_padded: int, value_dim_padded: int, left: int,
                              element_size: int = 2) -> BwdConfig:
    """Block shapes of a backward whose V head_dim (padded; up to 256) differs from q / K's: the equal-dims choice at
    the larger of the two, with half the streamed and resident rows above 128. Compiled for sm_90 (Triton 3.6), dQ /
    dK-dV registers and spills: D192 Dv128 with the D256 choice (16, 64, 64, 16, 8 warps) 255 / 255 and 88 / 160 B,
    with (16, 32, 32, 16, 8 warps) 152 / 154 and none; D64 Dv256 184 / 255 against 122 / 160 (D256 Dv256 itself,
    shipped unchanged: 255 / 255, 344 / 544 B). Not timed on a GPU."""
    config = backward_config(max(head_dim_padded, value_dim_padded), left, element_size)
    if max(head_dim_padded, value_dim_padded) > 128:
        config = replace(config, dkdv_block_n=min(config.dkdv_block_n, 32), dq_block_m=min(config.dq_block_m, 32))
    return config


def backward_config(head_dim_padded: int, left: int, element_size: int = 2) -> BwdConfig:
    """Block shapes from shapes only. H100, bf16, S=8192, backward alone:
    D=64 H=64/8 window (127, 0): 32/64/64/32 4 warps 512 us vs 687 us for the tutorial's 32/128/128/32;
    full causal: 64/64/64/64 5.19 ms vs 5.41 ms. D=128 H=32/8 window (127, 0): 32/64/64/32 455 us (64/64: 643 us);
    window (4095, 0) and causal: 64/64/64/64 3.43 / 4.39 ms (32/64: 3.65 / 4.96 ms). D=256 not measured.
    PackGQA (scripts/gpu_sweep_bwd.py, S=32768, window (127, 0)): D=64 H=64/8 1467 us packed vs 1832 us; D=128
    H=32/8 1705 vs 1704 us (kept unpacked); window (4095, 0) D=128: unpacked 15.96 ms, best packed 17.15 ms.
    Descriptor (TMA) loads for D<=128 (not packed D=64), fp16/bf16 only (measured there).
    fp32 (``element_size`` 4) halves the streamed blocks with one stage."""
    small_window = 0 <= left < 1024
    if interpreter_enabled():
        return BwdConfig(16, 16, 16, 16, 4, 1, pack_gqa=small_window)
    if head_dim_padded <= 64:
        # Window (4095, 0), S=32768: descriptors and 2 stages 16675 us, pointers and 3 stages 18478 us.
        # Window (127, 0), H200 (gpu_sweep_bwd.py --tma, S=32768): an unpipelined dK/dV loop (no spills) 1362 us
        # against 1413 us with three stages; with D=128 or the large window one stage was slower (1858 vs 1455 us).
        config = (BwdConfig(32, 64, 64, 32, 4, 3, True, dkdv_num_stages=1) if small_window
                  else BwdConfig(64, 64, 64, 64, 4, 2, tma=True))
    elif head_dim_padded <= 128:
        # Descriptor loads (scripts/gpu_sweep_bwd.py --tma, S=32768): W(127, 0) 1681 -> 1534 us, W(4095, 0)
        # 15457 -> 13254 us (3 stages with descriptors: 17216 us). Packed D=64 got slower (1474 -> 1563 us).
        config = (BwdConfig(32, 64, 64, 32, 4, 2, tma=True) if small_window
                  else BwdConfig(64, 64, 64, 64, 4, 2, tma=True))
    else:
        config = BwdConfig(16, 64, 64, 16, 8, 1)
    if element_size != 2:
        config = replace(config, tma=False, dkdv_num_stages=None)  # fp32 shrinks one shared stage count
    while element_size > 2 and (
            _streamed_bytes(config.dkdv_block_n, config.dkdv_block_m, config.num_stages, head_dim_padded,
                            element_size) > SHARED_MEMORY_BUDGET // 2
            or _streamed_bytes(config.dq_block_m, config.dq_block_n, config.num_stages, head_dim_padded,
                               element_size) > SHARED_MEMORY_BUDGET // 2):
        if config.num_stages > 1:
            config = replace(config, num_stages=config.num_stages - 1)
        elif max(config.dkdv_block_n, config.dq_block_m) > 16:
            config = replace(config, dkdv_block_n=max(16, config.dkdv_block_n // 2),
                             dq_block_m=max(16, config.dq_block_m // 2))
        else:
            break
    return config
