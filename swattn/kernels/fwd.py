"""The forward kernel family: dense, varlen and KV-cache (contiguous or paged) attention with n_offset tiling.

Legend (kernel-local names): ``pos`` = query position inside its sequence; ``row`` = a row of the tile, which is
one (position, head) pair: with PackGQA the ``G = H // Hk`` query heads of one KV head are packed into the rows
(row r -> position r // G, head kv_head * G + r % G), otherwise a tile holds one head. ``m_i`` / ``l_i`` /
``acc`` are the running max (log2 units), denominator and numerator of the online softmax.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import os
import weakref
from dataclasses import replace

import torch
import triton
import triton.language as tl

from swattn import _compat
from swattn._compat import (
    TRITON_SCRATCH,
    ceil_div,
    device_properties,
    ensure_triton_allocator,
    needs_upcast,
    next_power_of_2,
    pdl_enabled,
    pdl_launch_options,
    tma_compatible,
)
from swattn.kernels import _common, _launch, combine, configs, gluon_fwd
from swattn.kernels._common import (
    LOG2E,
    block_ranges,
    descale_strides,
    dot,
    finish_rows,
    first_visible_key,
    in_window,
    kept_max,
    last_visible_key,
    let_dependents_launch,
    lse_strides,
    ones_descale,
    record_stamps,
    safe_pivot,
    sequence_bounds,
    softcap_scores,
    time_stamp,
    token_strides,
    wait_for_previous_grid,
    wait_only_for_previous_grid,
)
from swattn.kernels._launch import (
    MAX_GRID_YZ,
    Launch,
    Layout,
    PlanCache,
    kept_buffer,
    stream_key,
    tensor_signature,
)
from swattn.kernels.combine import combine_launch
from swattn.kernels.configs import forward_config
from swattn.window import visible_span

# Exact non-finite isolation (see NON_FINITE_PASS in the kernel): on by default; SWATTN_ISOLATE_NON_FINITE=0 at
# import drops the second launch, and a non-finite value row may then reach the other rows of its tile.
ISOLATE_NON_FINITE = os.environ.get("SWATTN_ISOLATE_NON_FINITE", "1") not in ("", "0")

# A dense call's plan of a new length made from its family's latest plan (``_ForwardPlan.rebased``, and the
# backward's ``_BackwardPlan.rebased``), and the compiled kernels a new plan takes from it where Triton specializes
# alike (``Launch.with_scalars`` / ``take_compiled``): exact in the CPU tests (the same launches and bits as plans
# made from nothing, tests/test_free_lengths.py), not yet run on a GPU (sessions 14-15). SWATTN_REBASE_PLANS=0 at
# import (or this attribute) makes every new length's plan from nothing, as before session 14.
REBASE_PLANS = os.environ.get("SWATTN_REBASE_PLANS", "1") not in ("", "0")

# NON_FINITE_PASS values: no isolation; the main pass, which also flags rows holding a NaN; the redo pass behind the
# raised flag; the redo pass that reads every tile's flags itself (no raised flag to zero before the main pass).
NO_ISOLATION, FLAG_NON_FINITE, REDO_FLAGGED = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
REDO_SCANNED = tl.constexpr(3)
# The main pass runs the guarded loop itself (exact isolation in one launch: no flags, no redo launch).
GUARD_ONE_PASS = tl.constexpr(4)
# GUARD_ONE_PASS with the guard behind a branch: each block's V is checked for a non-finite value (one reduction of
# the tile to a scalar) and only a block holding one takes the guarded product; finite blocks take the plain one
# (the same bits). ``GUARD_BRANCH`` picks it for the one pass.
GUARD_ONE_PASS_BRANCHED = tl.constexpr(5)
# GUARD_ONE_PASS with the check after the product: the plain product first; only if its result holds a non-finite
# value (which any non-finite value in the block's V causes in every row: 0 * inf is NaN) is the block redone with
# the guarded product (the same bits: on finite results the guard changes nothing). ``GUARD_CHECKS_OUTPUT`` picks it.
GUARD_ONE_PASS_CHECKED = tl.constexpr(6)

# Grids of at most this many tiles (None: one per redo program, ``_persistent_programs``) take REDO_SCANNED: each
# redo program reads its one tile's flags, and the call allocates the raised flag without zeroing it. The zeroing is
# a kernel launch of its own in front of the main pass, and it breaks the chain of programmatic dependent launches;
# a 4-token verify step measured 0.9-1.0 us less with a scanning redo pass (H100, docs/notes/performance-log.md,
# 2026-11-25), which prefill-sized grids (many tiles per redo program) did not keep.
SCAN_FLAGS_MAX_WORK: int | None = None

# FP8 values: no fp8 input; fp16/bf16 queries over an e4m3 K/V (cache); q, K and V all e4m3 (output bf16).
NO_FP8, FP8_KV, FP8_QKV = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# KV_PAIR values (``FP8_TWO_KV_HEADS``): one KV head per program; two, one product per head (each row selects its
# head's); two, the [BLOCK_N, 2 * D] tiles viewed as [2 * BLOCK_N, D] (token j's rows of the two heads are rows 2j
# and 2j + 1: a reshape, no split) and one product of each over both heads, each row's scores for the other head's
# rows masked to -inf (the same tensor-core work and accumulator; a NaN value of one head also reaches the other
# head's rows through P @ V, 0 x NaN: experimental only); two, each head's [BLOCK_N, D] tiles loaded on their own
# (the two 64-byte halves of each e4m3 token row's 128-byte line copied back to back by one program, no split of a
# loaded tile) and one product per head as PAIR_TWO_PRODUCTS.
NO_PAIR, PAIR_TWO_PRODUCTS, PAIR_INTERLEAVED = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
PAIR_TWO_LOADS = tl.constexpr(3)
# PAIR_TWO_LOADS' loads, its loop transposed (``_softmax_step_transposed``; configs.FP8_PAIR_TRANSPOSED).
PAIR_TRANSPOSED = tl.constexpr(4)
# The modes that load each head's tiles on their own.
_TWO_LOADS = (PAIR_TWO_LOADS.value, PAIR_TRANSPOSED.value)

# Grids of at most this many tiles (None: one per SM, ``_persistent_programs``; 0: never) whose loop is the single
# masked loop (decode-sized tiles of at most 32 rows: speculative verify of k <= 4 tokens, short extends) run
# GUARD_ONE_PASS instead: the guarded loop (V through registers, finite rows' bits unchanged) in the main pass and no
# redo launch. H200 (scripts/gpu_probe.py append_fold, 2b3c95a, 2026-12-03 17:10 UTC), W(127,0) verify k=4 B=16 1K
# page 16 with the fused append reading k / v: 9.62 us cold | 8.13 warm against 9.74 | 8.42 with the scanning redo
# launch.
GUARD_ONE_PASS_MAX_WORK: int | None = None
# ... and tiles of at most this many rows: at 64 rows (k = 8 verify tiles, two 128-key blocks) the guarded loop
# spilled (sm_90, Triton 3.9: 80 B); 16 and 32 rows fit.
GUARD_ONE_PASS_MAX_ROWS = 32
# ... and for the head-block verify tile (FwdConfig.head_block), whose guarded loop fits 64 rows (k = 8: (64, 128 +
# 16, 8, 1) 177 registers, no spills, Triton 3.6 sm_90). H200 (scripts/gpu_probe.py verify_window, 18:25 UTC call),
# W(127,0) B=16 1K page 16, k=8: 8.88 us cold against 10.97 with the redo launch (with GUARD_BRANCH 8.26).
GUARD_ONE_PASS_MAX_ROWS_HEAD_BLOCK = 64
# The one pass's guard behind a per-block branch (GUARD_ONE_PASS_BRANCHED). Compiled for sm_90 (Triton 3.6), the
# always-guarded product is ~30% of a verify tile's main launch (W(127,0) k=4 (32, 256, 8, 1): 2768 SASS
# instructions, 1912 without isolation). H200 (scripts/gpu_probe.py verify_window, 18:25 UTC call), W(127,0) B=16 1K
# page 16, us cold | warm: k = 4 on the 256-key block 8.76 | 7.36 against 9.52 | 8.07 always guarded (no isolation:
# 7.97 | 6.63); with the head block k = 2 6.79 | 5.33 against 7.05 | 5.50, k = 4 7.63 | 6.13 against 8.02 | 6.40, k = 8
# 8.26 | 6.98 against 8.88 | 7.59.
GUARD_BRANCH = True
# The one pass's guard behind a check of the product's result instead of V's values (GUARD_ONE_PASS_CHECKED): one
# reduction of the [rows x head_dim] result to a scalar per block instead of one per V tile (the head-block step
# has two), after the product rather than beside it. H200 (scripts/gpu_probe.py verify_ablate, s5-call3, main
# 47c77a4), W(127,0) B=16 1K page 16, us cold: the branched guard cost 0.76 / 0.83 / 0.57 us over no isolation at
# k = 2 / 4 / 8 (6.81 / 7.67 / 8.28 against 6.05 / 6.84 / 7.71; decode 5.43). With the check on the result (22:54
# UTC call, verify_window PROBE_SET=s5): 6.31 / 7.31 / 8.19 us cold against 6.76 / 7.82 / 8.32 with the branch on V
# (no isolation 6.12 / 6.81 / 7.62; decode 5.41). SWATTN_GUARD_CHECKS_OUTPUT=0: the branch on V's values.
GUARD_CHECKS_OUTPUT = os.environ.get("SWATTN_GUARD_CHECKS_OUTPUT", "1") not in ("", "0")


# The head-block verify tile (FwdConfig.head_block) masks its scores by per-row key bounds (``_mask_columns``): each
# row's first and last visible key (swattn.window's first / last visible key, the twins in _common), compared with
# the block's column indices, and of the two compares only those some row of the tile needs in that block (a branch
# on the tile's extreme rows: at window (127, 0) the 128-key block needs only the causal bound, the 16-key block only
# the window's start). ``in_window`` on the [rows x keys] indices cost two compares, two selects and the key indices
# per element, and its predicates were kept in registers for the guarded redo. Compiled for sm_90 (Triton 3.6), B=16
# W(127,0) verify k = 8 (and k = 4 in the same 64-row tile) with the fused append, the main launch's path on finite
# data (the guarded redo skipped, the verify step's mask branches): 2650 SASS instructions per warp with in_window and
# the exact finiteness check, 2266 with two-sided row bounds, 2042 with the one-sided compares and the summed check
# (``_all_finite``); decode + append 1411. The same bits. False (SWATTN_ROW_BOUND_MASK=0): ``in_window``.
ROW_BOUND_MASK = os.environ.get("SWATTN_ROW_BOUND_MASK", "1") not in ("", "0")

# The fused append (APPEND_NEW) on the single masked loop (window decode and verify, short splits): each program
# loads the new tokens of its blocks from k / v (the call's new tokens), uses them, and writes them into the cache
# from the same registers, instead of first copying them into the cache and reading them back behind a barrier.
# The copy's load of k / v was a dependent memory round trip in front of the K/V loads (a warp issues in order: the
# store waits for its data, and every later load waits behind it); here those loads are all in flight together.
# Same bits (the same values, loaded from k / v instead of their copy). H200 (scripts/gpu_probe.py append_fold,
# 2b3c95a, 2026-12-03 17:10 UTC), W(127,0) B=16 1K page 16, us cold (48 input sets) | warm: decode 5.49 | 4.19
# against 5.73 | 4.54 for the write-then-read fused append (6.89 | 5.06 with the append launch); verify k=4 9.74 |
# 8.42 against 10.08 | 8.75. False (SWATTN_APPEND_READS_INPUT=0): the write-then-read fused append everywhere (the
# split loops and the redo launch always take it).
APPEND_READS_INPUT = os.environ.get("SWATTN_APPEND_READS_INPUT", "1") not in ("", "0")

# Experimental (off until timed on the GPU: scripts/gpu_fp8_decode.py): paged launches on the single masked loop
# (window decode, short splits) prefetch their first block's page-table entries into L2 before loading the query
# tile (``_attend_tile``), so the loop's page-table read after the query's round trip hits L2.
PREFETCH_PAGE_TABLE = os.environ.get("SWATTN_PREFETCH_PAGE_TABLE", "0") not in ("", "0")

# Experimental (off until timed on the GPU: scripts/gpu_probe.py serving_s6): with programmatic dependent launch, a
# program is resident before the previous kernel in the stream has finished (that kernel lets the next one launch
# once its programs have passed their own wait) and spends that time at its own wait. PRELOAD_L2 uses it to warm
# L2 with what the program will read, before the wait: the decode step's dependent chain (sequence length -> page
# table -> K/V) then runs on L2 hits after the wait instead of three DRAM round trips. Only prefetches: values read
# before the wait (the length, the page-table entries, with volatile loads) choose which lines to prefetch and are
# then dropped; every value the kernel uses is loaded again after the wait, so a stale value before it costs a
# useless prefetch, never a wrong result (L2 is the device's point of coherence: a line prefetched early holds
# whatever the previous kernel writes into it). 1: the query rows, the length and the page-table entries of the
# loop's first block (one round trip before the wait); 2: also that block's K and V rows and the new tokens (two
# round trips before the wait). (3, the loop's first two blocks, lost on split launches: s10-call1, full decode B=4
# 16K with the merge's early dependents 41.1 us against 40.2 with 1; removed in session 11.) The gain needs the
# previous kernel to let this one launch early (swattn's kernels do; in a model step the kernel before an attention
# call is usually a GEMM); without that, 2 can add its round trips in front of the wait. Paged caches with
# per-sequence lengths, PackGQA, fp16 / bf16 or an e4m3 cache (its rows in e4m3 bytes, and the descales), no
# cache_batch_idx / cache_leftpad / varlen / chunk, and (the default) one split on the single masked loop: window
# decode and verify. Under the interpreter: plain loads (CPU tests).
# H200 (scripts/gpu_probe.py serving_s6, s6-call4, main 215a719), W(127,0) B=16 page 16 with the fused append, us
# per call cold (48 input sets) | warm: decode 1K 5.44 | 4.15 -> 4.37 | 3.93 with 2 (4.94 | 3.90 with 1), 128K 5.49
# | 4.18 -> 4.39 | 3.90; verify k = 2 / 4 / 8 cold 6.32 / 7.33 / 7.01 -> 5.51 / 6.54 / 6.71 (k = 8 warm 5.78 ->
# 6.16). Full decode B=4 16K (split loop + merge) lost: 41.0 -> 42.7 us (42.5 with 1), so split launches take it only
# with PRELOAD_L2_SPLITS. SWATTN_PRELOAD_L2=0: off.
PRELOAD_L2 = int(os.environ.get("SWATTN_PRELOAD_L2", "2") or 0)
PRELOAD_L2_SPLITS = False

# Split launches of one query per sequence over a 16-bit cache (full-attention decode) let the next kernel (their
# merge) launch only once each program is done with its KV loop, not right after its PDL wait. With the early
# trigger the merge's 256 one-warp programs become resident while the split launch runs, on the few SMs with free
# registers (the last split's short programs', and those holding 5 split programs): H200 s10-call1 (per-program
# %globaltimer stamps, full decode B=4 16K) 107-112 of 132 SMs held none and 7-8 held 24, and the merge took 2.05 us
# from its wait to its last program's end; without PDL (one or two per SM) 0.9 us. Launched at the split programs'
# ends they spread over the freed SMs (s10-call5: 124 SMs with 2, 8 with 1; the merge 1.13 us) while the split grid
# completes. 1: after the program's stores; 2 (default): before its epilogue (its rows' last reductions and
# stores). H200, graph-replayed, us per call (scripts/gpu_probe.py fixed_costs / fixed_costs_defaults; three
# alternated rounds in s10-call6): full decode B=4 16K 41.03-41.14 -> 40.42-40.92 (1) / 40.57-40.68 (2) (s10-call5:
# 40.70-40.98 -> 40.17-40.22 with 1), B=8 8K 40.79-40.95 -> 40.35-40.44 (2), B=16 4K 40.69-40.71 -> 40.49-40.58,
# B=16 1K 13.65-13.73 -> 13.29-13.34, B=16 16K 132.96-133.30 -> 132.79-133.90 (noise); same bits. Not taken
# elsewhere: e4m3 decode B=4 16K 27.13 -> 31.2 us with 1 (H200 s11-call2 stamps: the next call's one-warp pair
# programs, 12 of which fit an SM, start only once the late merge has ended and crowd onto 90 SMs; s11-call2/5 with
# 2: B=4 16K +3.3, B=4 131072 +12, B=16 131040 +4..+11, B=16 16K -0.5 us; docs/notes/2026-12-03-fp8-kv-cache.md),
# full verify k = 4 B=16 1K 26.78 -> 27.16. 0: off.
SPLIT_LATE_DEPENDENTS = int(os.environ.get("SWATTN_SPLIT_LATE_DEPENDENTS", "2") or 0)


# Experimental (off: measured slower): e4m3 tiles widened in pairs before their layout change (``_widen_e4m3``).
# Fewer instructions (full decode loop 523 -> 460 per block and warp, window kernel 1304 -> 1240 with it, Triton
# 3.6), but H200 (s4-call2, 18:25 UTC): full decode B=16 16K 124.3 us vs 115.0 with the plain ``.to``, window
# (127,0) 5.05 vs 4.82 us; its fp16 V tile is one more shared-memory round trip (store, barrier, ldmatrix) per block
# and 8 KB more shared memory per program.
WIDEN_E4M3_PAIRS = os.environ.get("SWATTN_WIDEN_E4M3_PAIRS", "0") not in ("", "0")

# Experimental (off: measured slower): e4m3 tiles widened to fp16 and
# then passed through an identity with a side effect (inline PTX ``mov.b32``, ``_fence_16bit``), so that Triton lays
# the products out for 16-bit operands. Triton picks a dot operand's register layout (kWidth) from the narrowest
# load it can trace the operand back to through pure elementwise ops and views: an e4m3 load gives kWidth 4 to both
# operands of both products, whose V operand is then gathered from shared memory one byte at a time (64 ``LDS.U8``
# per 128x64 tile and thread) and whose operand registers are shuffled into each ``HMMA``'s register quads by
# moves (~90 ``IMAD.MOV`` per block and warp); a side effect stops the trace (kWidth 2): the widened tiles go
# through shared memory as fp16 and reach the products through ``ldmatrix`` in the quads the ``HMMA`` reads.
# Compiled for sm_90 (Triton 3.6), the full decode's interior loop (16, 128, 4, 2) capped at 128: 522 -> 344 SASS
# instructions per block and warp (V only: 378). But H200 (scripts/gpu_fp8_decode.py s7_*, s7-call4/5, main
# 75434b0 / 723c88e): B=16 16K 101.9 -> 114.1 us, B=16 131040 772.7 -> 871.7 (10-13% slower at every split shape; V
# only 102.4 -> 102.1): K's extra shared-memory round trip lengthens each block's chain, which (not the instruction
# count) bounds this loop. Not under the interpreter (no PTX): a plain ``.to`` there.
# 1: K and V fenced; 2: V only (P @ V takes kWidth 2, Q K^T keeps kWidth 4 with K read as before: no fp16 copy of K
# in shared memory, Q's operand still rebuilt by moves).
FP8_FENCED_WIDENING = int(os.environ.get("SWATTN_FP8_FENCED_WIDENING", "0") or 0)
# _widen_e4m3's modes (the kernels' WIDEN): a plain ``.to``, in pairs (WIDEN_E4M3_PAIRS), fenced (FP8_FENCED_WIDENING
# 1), values only fenced (FP8_FENCED_WIDENING 2).
WIDEN_TO, WIDEN_IN_PAIRS, WIDEN_FENCED, WIDEN_FENCED_VALUES = (tl.constexpr(0), tl.constexpr(1), tl.constexpr(2),
                                                               tl.constexpr(3))
_FENCED_MODES = {1: WIDEN_FENCED.value, 2: WIDEN_FENCED_VALUES.value}  # by FP8_FENCED_WIDENING

# A decode program over an e4m3 cache reads TWO KV heads (2k, 2k + 1) and attends the query heads of both
# (``KV_PAIR``). PAIR_TRANSPOSED (PAIR_TWO_LOADS' loads, its loop transposed: configs.FP8_PAIR_TRANSPOSED) is the
# default of long full-attention decodes where configs.fp8_pair_split_count says so (configs.FP8_KV_PAIRS, measured
# there); this switch forces a mode wherever the shapes allow it (experiments:
# scripts/gpu_fp8_decode.py). In FlashAttention 3's cache layout
# [pages, page, Hk, D] a KV head's e4m3 token row is 64 bytes, half an L2 line, at a stride of Hk * D bytes; the
# rows of two neighbouring KV heads are 128 contiguous bytes, one load per token row of the pair (the read-only
# stream of docs/notes/2026-12-03-fp8-kv-cache.md: 51% of copy against 45% one head per program). Taken by the split
# loop of single-query PackGQA decode tiles over an fp16/bf16 query (FP8_KV) whose two heads' rows fit the tile
# (2 x group <= block_m), K/V heads adjacent in memory (stride of a head = head_dim = the padded head_dim), an even
# KV head count, and no fused append; the window decode (the single loop) keeps one KV head per program (half the
# grid would leave SMs idle).
# 0: not forced (configs.FP8_KV_PAIRS decides); 1: PAIR_TWO_PRODUCTS; 2: PAIR_INTERLEAVED; 3: PAIR_TWO_LOADS; 4:
# PAIR_TRANSPOSED (see KV_PAIR). (Session 9's loop in halves, each block's keys in two softmaxes, one per warp, ran
# 1.6-1.7x slower than the transposed loop on the H200 and was removed; so was session 11's split loop in two halves
# of the split's blocks, one per warp, merged in the program: 1.5-1.9x slower in s12-call1. See
# docs/notes/2026-12-03-fp8-kv-cache.md.)
FP8_TWO_KV_HEADS = int(os.environ.get("SWATTN_FP8_TWO_KV_HEADS", "0") or 0)

# Experimental (off until timed on the GPU: scripts/gpu_fp8_decode.py): the split loop of an e4m3 decode over a paged
# cache whose KV heads' rows are 64 bytes, adjacent (e4m3, head_dim 64: FA3's [pages, page, Hk, D], a page one
# contiguous piece), asks L2 for more than its own rows next to its own copies, so that HBM sees larger pieces than
# the 64-byte rows of one KV head at a 512-byte stride. A read-only stream of that layout reaches 63-69% of copy
# bandwidth with one KV head per program whatever the bytes in flight (46 or 93 KB per SM), 90% with two heads'
# 128-byte rows per program (docs/notes/2026-12-03-fp8-kv-cache.md, session 5): if the 64-byte pieces are what costs
# HBM its efficiency, larger pieces requested from one SM should recover it without changing what a program
# computes (the other KV heads' programs, which read the rest at about the same time, then hit L2).
# 0: off; 1 (PREFETCH_TWIN): the other half of each row's 128-byte line, the row of KV head h ^ 1 (``prefetch.global.
# L2`` per row; an even KV head count); 2 (PREFETCH_CHUNK): the program of KV head h asks for the h-th of its
# block's pages' Hk equal contiguous chunks (page_size * head_dim bytes: every KV head's rows of page_size / Hk
# slots), 64 bytes per row of its tile (page_size a multiple of Hk). (One ``cp.async.bulk.prefetch.L2`` per page
# instead compiled, Triton 3.6, to a loop over a warp's lanes, its address operand being uniform, and spilled 112 B.)
FP8_PREFETCH_PARTNER = int(os.environ.get("SWATTN_FP8_PREFETCH_PARTNER", "0") or 0)
PREFETCH_TWIN, PREFETCH_CHUNK = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _cache_token_offsets(offs_n, mask, batch_kv, page_table_row, stride_kb, stride_ks, page_size,
                         IS_PAGED: tl.constexpr, UNSIGNED_KEYS: tl.constexpr = False):
    """Element offsets of key/value tokens ``offs_n`` of one sequence (the page table is read only under
    ``mask``). ``UNSIGNED_KEYS``: token indices and page ids (never negative) in unsigned arithmetic, so a page
    and slot are a shift and a mask and both widen to 64 bits without sign extension; compiled for sm_90 (Triton
    3.6) that is ~90 fewer instructions per 64-key K/V block and warp of the paged decode loop, but more registers
    (bf16 (16, 64, 2, 3): 483 -> 320 instructions, 162 -> 168 registers and an 8-byte spill): on for the e4m3
    launches (under their register cap, ``configs.FP8_DECODE_MAXNREG``), not yet for bf16 (not measured)."""
    if IS_PAGED:
        if UNSIGNED_KEYS:
            keys = offs_n.to(tl.uint32)
            page = tl.load(page_table_row + keys // page_size, mask=mask, other=0).to(tl.uint32).to(tl.int64)
            return page * stride_kb + (keys % page_size).to(tl.int64) * stride_ks
        else:
            page = tl.load(page_table_row + offs_n // page_size, mask=mask, other=0).to(tl.int64)
            return page * stride_kb + (offs_n % page_size).to(tl.int64) * stride_ks
    else:
        return batch_kv * stride_kb + offs_n.to(tl.int64) * stride_ks


@triton.jit
def _prefetch_rows_l2(pointers):
    """Ask for the 64 bytes (two 32-byte sectors) at each of ``pointers`` (a tensor, 64-byte aligned) in L2, without
    waiting for them."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tprefetch.global.L2 [$1+32];\n\tmov.u32 $0, 0;", "=r,l",
                              [pointers], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _load_kv(base, offs_n, offs_d, load_mask, batch_kv, page_table_row, stride_kb, stride_ks, page_size,
             IS_PAGED: tl.constexpr, MASK_D: tl.constexpr, HEAD_DIM: tl.constexpr, key_shift=0,
             SHIFT_PAGED_KEYS: tl.constexpr = False, UNSIGNED_KEYS: tl.constexpr = False, partner=0,
             chunk_slot=0, PREFETCH_PARTNER: tl.constexpr = 0):
    """Load a [BLOCK_N, BLOCK_D] tile of keys or values ``offs_n`` (absolute token indices).

    Paged caches look each token's page up on its own, so a block may start anywhere and straddle pages; the page
    table is read only for tokens in ``load_mask``, so entries outside the window are never dereferenced.
    ``page_size`` is a compile-time constant of the kernel: page and slot are a shift and a mask for power-of-two
    pages instead of an integer division on the decode step's dependent chain (one compile per page size).
    ``SHIFT_PAGED_KEYS`` (cache_leftpad with a paged cache): key ``j`` of the sequence is its page-table slot
    ``j + key_shift`` (a contiguous cache takes the shift in ``base`` instead).
    ``PREFETCH_PARTNER`` (``FP8_PREFETCH_PARTNER``, paged e4m3 caches; masked rows read page 0, inside the pool):
    PREFETCH_TWIN prefetches each row's twin ``partner`` elements away (the other KV head of its 128-byte line) into
    L2; PREFETCH_CHUNK, with ``partner`` the offset to KV head 0 of a row, the ``page_size * HEAD_DIM`` bytes from
    the row of slot ``chunk_slot`` of each page of the block, the ``HEAD_DIM`` bytes of its slot's turn per row.
    """
    if SHIFT_PAGED_KEYS:
        offs_n = offs_n + key_shift
    token_offset = _cache_token_offsets(offs_n, load_mask, batch_kv, page_table_row, stride_kb, stride_ks,
                                        page_size, IS_PAGED, UNSIGNED_KEYS)
    if PREFETCH_PARTNER == PREFETCH_TWIN:
        _prefetch_rows_l2(base + partner + token_offset)
    elif PREFETCH_PARTNER == PREFETCH_CHUNK:
        slot = offs_n % page_size
        _prefetch_rows_l2(base + partner + token_offset + (chunk_slot - slot) * stride_ks + slot * HEAD_DIM)
    ptrs = base + token_offset[:, None] + offs_d[None, :]
    if MASK_D:
        return tl.load(ptrs, mask=load_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        return tl.load(ptrs, mask=load_mask[:, None], other=0.0)


@triton.jit
def _prefetch_l2(pointer, BY_LOADS: tl.constexpr = False):
    """Ask for the 32-byte sector at ``pointer`` (a scalar) in L2, without waiting for it. ``BY_LOADS`` (the
    interpreter, which runs no PTX): a plain load whose value is dropped, so the addresses are still computed and
    read."""
    if BY_LOADS:
        tl.load(pointer, volatile=True)
    else:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [pointer], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _fence_16bit(x):
    """``x`` (a 16-bit tile) unchanged, through an identity with a side effect (``FP8_FENCED_WIDENING``): Triton's
    choice of a dot operand's layout does not look past it to the e4m3 load (compiled only: PTX)."""
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=False, pack=2)


@triton.jit
def _widen_e4m3(x, WIDEN: tl.constexpr, VALUES: tl.constexpr = False):
    """An e4m3 tile ``[BLOCK_N, BLOCK_D]`` in fp16 (exact: every e4m3 value is an fp16).

    ``WIDEN``: WIDEN_TO a plain ``.to``; WIDEN_FENCED (``FP8_FENCED_WIDENING``, compiled) the ``.to`` followed by
    ``_fence_16bit``, so the products take 16-bit operand layouts (WIDEN_FENCED_VALUES: only for ``VALUES``, the V
    tile, K as WIDEN_TO); WIDEN_IN_PAIRS (``WIDEN_E4M3_PAIRS``, sm_89+,
    compiled): each pair of neighbouring elements of a row, as one 16-bit word, through
    one ``cvt.rn.f16x2.e4m3x2`` (the instruction ``.to(tl.float16)`` compiles to). The point is where it happens:
    with ``.to`` Triton moves the widening after the tile's layout change into the dot operand, so the P @ V
    operand (which pairs keys, a row apart) is gathered from shared memory one byte at a time (64 ``LDS.U8`` per
    64x64 tile and thread) and its fp16 operands come in a 4-element layout that costs register moves at every
    product. The pairs' reshape / split / join pin the widening to the loaded layout: V then reaches the operand
    as fp16 through ``ldmatrix.trans`` like a bf16 tile, K straight from its load (compiled for sm_90, Triton 3.6:
    the full decode's interior loop 639 -> 496 instructions per 64-key block and warp at 3 stages, 733 -> 541 at
    7). Without it (the interpreter, older GPUs) a plain ``.to``."""
    if WIDEN == WIDEN_IN_PAIRS:
        BLOCK_N: tl.constexpr = x.shape[0]
        BLOCK_D: tl.constexpr = x.shape[1]
        pairs = tl.reshape(x.to(tl.uint8, bitcast=True), [BLOCK_N, BLOCK_D // 2, 2], can_reorder=False)
        low, high = tl.split(pairs)
        word = low.to(tl.uint16) | (high.to(tl.uint16) << 8)
        low16, high16 = tl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.rn.f16x2.e4m3x2 t, $2; mov.b32 {$0, $1}, t; }", "=h,=h,h", [word],
            dtype=(tl.float16, tl.float16), is_pure=True, pack=1)
        return tl.reshape(tl.join(low16, high16), [BLOCK_N, BLOCK_D], can_reorder=False)
    elif WIDEN == WIDEN_FENCED or (WIDEN == WIDEN_FENCED_VALUES and VALUES):
        return _fence_16bit(x.to(tl.float16))
    else:
        return x.to(tl.float16)


@triton.jit
def _kv_halves(x):
    """A ``[BLOCK_N, 2 * D]`` tile of two KV heads' rows (``KV_PAIR``) as the two heads' ``[BLOCK_N, D]`` tiles."""
    BLOCK_N: tl.constexpr = x.shape[0]
    D: tl.constexpr = x.shape[1] // 2
    return tl.split(tl.permute(tl.reshape(x, [BLOCK_N, 2, D]), (0, 2, 1)))


@triton.jit
def _rows_to_fp16(q):
    """bf16 queries ``[BLOCK_M, BLOCK_D]`` in fp16, for fp16 products with the e4m3 cache widened to fp16 (one
    conversion per pair; to bf16 it is three): each row times the power of two that brings its largest magnitude
    into [2^14, 2^15), so every value down to 2^-28 of it is exact in fp16 (a bf16 has 8 significant bits, fp16
    11) and none overflows; a row's factor depends on that row only, so a non-finite query reaches no other row.
    Returns ``(q16, unscale)``: scores of q16 times ``unscale`` ``[BLOCK_M]`` are those of q, exactly."""
    q32 = q.to(tl.float32)
    amax = tl.max(tl.abs(q32), 1)
    exponent = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    shift = tl.minimum(tl.maximum(14 - exponent, -112), 40)
    up = ((shift + 127) << 23).to(tl.float32, bitcast=True)
    down = ((127 - shift) << 23).to(tl.float32, bitcast=True)
    return (q32 * up[:, None]).to(tl.float16), down


@triton.jit
def _load_block(k_base, v_base, offs_n, offs_d, load_mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb,
                stride_vs, page_size, IS_PAGED: tl.constexpr, MASK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                key_shift, SHIFT_PAGED_KEYS: tl.constexpr, K_NEW, V_NEW, new_source, first_new, stride_ns,
                READ_NEW: tl.constexpr, UNSIGNED_KEYS: tl.constexpr = False, k_partner=0, v_partner=0,
                chunk_slot=0, PREFETCH_PARTNER: tl.constexpr = 0, offs_dv=None, MASK_DV: tl.constexpr = False,
                HEAD_DIM_V: tl.constexpr = 0):
    """The K and V tiles of keys ``offs_n`` (``load_mask``; zeros elsewhere) through pointers; ``READ_NEW``: see
    ``_attend_blocks``; ``UNSIGNED_KEYS``: see ``_cache_token_offsets`` (not on the READ_NEW path);
    ``PREFETCH_PARTNER``: see ``_load_kv`` (not on the READ_NEW path). ``HEAD_DIM_V`` > 0: V's head_dim differs from
    K's, its tile spans ``offs_dv`` (``MASK_DV``: masked to HEAD_DIM_V); 0: V as K (not on the READ_NEW path)."""
    tl.static_assert(HEAD_DIM_V == 0 or not READ_NEW, "the fused append takes equal head dims only")
    if READ_NEW:
        # Each row's pointer is its cached key's or, from ``first_new`` on, its new token's in k / v: one load
        # per tile as without the append, no copy to wait for. The new rows then go into the cache from the
        # loaded tile (no program reads them from there in this launch).
        k_rows, v_rows, k_cache, v_cache, fresh = _block_rows(
            k_base, v_base, offs_n, load_mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
            page_size, IS_PAGED, key_shift, False, K_NEW, V_NEW, new_source, first_new, stride_ns, True, False)
        if MASK_D:
            d_mask = offs_d[None, :] < HEAD_DIM
        else:
            d_mask = offs_d[None, :] >= 0
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=load_mask[:, None] & d_mask, other=0.0)
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=load_mask[:, None] & d_mask, other=0.0)
        tl.store(v_cache[:, None] + offs_d[None, :], v, mask=fresh[:, None] & d_mask)
        tl.store(k_cache[:, None] + offs_d[None, :], k, mask=fresh[:, None] & d_mask)
    else:
        # V before K: Triton converts the K tile's layout (a trip through shared memory that waits for its
        # data) right after K's load, so loads issued after K wait for K. Single-stage decode (one block per
        # program) then paid two dependent memory round trips; in this order both tiles are in flight at once
        # (SASS, Triton 3.6; pipelined loops compile to the same code either way).
        if HEAD_DIM_V == 0:
            v = _load_kv(v_base, offs_n, offs_d, load_mask, batch_kv, page_table_row, stride_vb, stride_vs,
                         page_size, IS_PAGED, MASK_D, HEAD_DIM, key_shift, SHIFT_PAGED_KEYS, UNSIGNED_KEYS, v_partner,
                         chunk_slot, PREFETCH_PARTNER)
        else:
            v = _load_kv(v_base, offs_n, offs_dv, load_mask, batch_kv, page_table_row, stride_vb, stride_vs,
                         page_size, IS_PAGED, MASK_DV, HEAD_DIM_V, key_shift, SHIFT_PAGED_KEYS, UNSIGNED_KEYS,
                         v_partner, chunk_slot, PREFETCH_PARTNER)
        k = _load_kv(k_base, offs_n, offs_d, load_mask, batch_kv, page_table_row, stride_kb, stride_ks,
                     page_size, IS_PAGED, MASK_D, HEAD_DIM, key_shift, SHIFT_PAGED_KEYS, UNSIGNED_KEYS, k_partner,
                     chunk_slot, PREFETCH_PARTNER)
    return k, v


@triton.jit
def _token_offsets(offs_n, mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs, page_size,
                   IS_PAGED: tl.constexpr, UNSIGNED_KEYS: tl.constexpr):
    """``_cache_token_offsets`` of tokens ``offs_n`` in K and in V (the two page-table reads are the same load:
    the compiler keeps one)."""
    return (_cache_token_offsets(offs_n, mask, batch_kv, page_table_row, stride_kb, stride_ks, page_size, IS_PAGED,
                                 UNSIGNED_KEYS),
            _cache_token_offsets(offs_n, mask, batch_kv, page_table_row, stride_vb, stride_vs, page_size, IS_PAGED,
                                 UNSIGNED_KEYS))


@triton.jit
def _block_rows(k_base, v_base, offs_n, mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, IS_PAGED: tl.constexpr, key_shift, SHIFT_PAGED_KEYS: tl.constexpr, K_NEW, V_NEW,
                new_source, first_new, stride_ns, READ_NEW: tl.constexpr, UNSIGNED_KEYS: tl.constexpr):
    """Row pointers of keys ``offs_n`` in K and V (``_load_block``'s, without the loads): ``(k_rows, v_rows,
    k_cache_rows, v_cache_rows, fresh)``; with ``READ_NEW`` the new tokens' rows point into ``K_NEW`` / ``V_NEW``
    (``fresh``), the cache rows are where they go."""
    if SHIFT_PAGED_KEYS:
        offs_n = offs_n + key_shift
    k_offsets, v_offsets = _token_offsets(offs_n, mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb,
                                          stride_vs, page_size, IS_PAGED, UNSIGNED_KEYS)
    k_cache_rows = k_base + k_offsets
    v_cache_rows = v_base + v_offsets
    if READ_NEW:
        fresh = mask & (offs_n >= first_new)
        new_rows = new_source + (offs_n - first_new).to(tl.int64) * stride_ns
        return (tl.where(fresh, K_NEW + new_rows, k_cache_rows), tl.where(fresh, V_NEW + new_rows, v_cache_rows),
                k_cache_rows, v_cache_rows, fresh)
    else:
        return k_cache_rows, v_cache_rows, k_cache_rows, v_cache_rows, mask & False


@triton.jit
def _load_two_blocks(k_base, v_base, offs_h, head_mask, offs_n, load_mask, offs_d, batch_kv, page_table_row,
                     stride_kb, stride_ks, stride_vb, stride_vs, page_size, IS_PAGED: tl.constexpr,
                     MASK_D: tl.constexpr, HEAD_DIM: tl.constexpr, key_shift, SHIFT_PAGED_KEYS: tl.constexpr, K_NEW,
                     V_NEW, new_source, first_new, stride_ns, READ_NEW: tl.constexpr,
                     UNSIGNED_KEYS: tl.constexpr = False, PREFETCH_HEAD: tl.constexpr = False):
    """The K and V tiles of the head block (keys ``offs_h``) and the main block (``offs_n``) of ``HEAD_N``
    (``_attend_blocks``): both blocks' page-table entries first, then the four tiles' loads, V before K, then (with
    ``READ_NEW``) the new rows' stores into the cache. Loaded block by block (``_load_block`` twice), the head's K
    tile went through shared memory (its layout change for the product, which waits for its data) before the main
    block's page-table and K/V loads were issued: compiled for sm_90 (Triton 3.6), five dependent memory round trips
    in front of the first product (lengths and q, the head's pages, its K/V, the main block's pages, its K/V)
    where decode has three."""
    kh_rows, vh_rows, kh_cache, vh_cache, fresh_h = _block_rows(
        k_base, v_base, offs_h, head_mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
        page_size, IS_PAGED, key_shift, SHIFT_PAGED_KEYS, K_NEW, V_NEW, new_source, first_new, stride_ns, READ_NEW,
        UNSIGNED_KEYS)
    k_rows, v_rows, k_cache, v_cache, fresh = _block_rows(
        k_base, v_base, offs_n, load_mask, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
        page_size, IS_PAGED, key_shift, SHIFT_PAGED_KEYS, K_NEW, V_NEW, new_source, first_new, stride_ns, READ_NEW,
        UNSIGNED_KEYS)
    if MASK_D:
        d_mask = offs_d[None, :] < HEAD_DIM
    else:
        d_mask = offs_d[None, :] >= 0
    v = tl.load(v_rows[:, None] + offs_d[None, :], mask=load_mask[:, None] & d_mask, other=0.0)
    k = tl.load(k_rows[:, None] + offs_d[None, :], mask=load_mask[:, None] & d_mask, other=0.0)
    v_head = tl.load(vh_rows[:, None] + offs_d[None, :], mask=head_mask[:, None] & d_mask, other=0.0)
    k_head = tl.load(kh_rows[:, None] + offs_d[None, :], mask=head_mask[:, None] & d_mask, other=0.0)
    if READ_NEW:
        tl.store(vh_cache[:, None] + offs_d[None, :], v_head, mask=fresh_h[:, None] & d_mask)
        tl.store(kh_cache[:, None] + offs_d[None, :], k_head, mask=fresh_h[:, None] & d_mask)
        tl.store(v_cache[:, None] + offs_d[None, :], v, mask=fresh[:, None] & d_mask)
        tl.store(k_cache[:, None] + offs_d[None, :], k, mask=fresh[:, None] & d_mask)
    return k_head, v_head, k, v


@triton.jit
def _dot_into(a, b, acc):
    """``acc + a @ b`` as one product accumulating into ``acc`` (fp32 operands in full precision, as ``dot``)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _block_scores(q, k, v, offs_n, load_mask, row_pos, offset, left, right, softmax_scale, softcap, block,
                  masked_head_end, unmasked_end, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, MASK: tl.constexpr, MASK_EDGES_ONLY: tl.constexpr,
                  chunk, HAS_CHUNK: tl.constexpr, FP8: tl.constexpr, row_unscale, WIDEN: tl.constexpr = 0,
                  pair_second=None, KV_PAIR: tl.constexpr = 0, k2=None, qv=None, HAS_QV: tl.constexpr = False):
    """The scores of one block (keys ``offs_n``, ``load_mask``) and what the softmax step needs with them:
    ``(qk, qk_scale, v, visible)``; scores in log2 units are ``qk * qk_scale`` (``_exp_scores``), masked keys -inf;
    ``v`` as the product takes it; ``visible`` the mask (MASK without MASK_EDGES_ONLY; else True).
    ``KV_PAIR``: ``k`` / ``v`` hold two KV heads' rows side by side (``[BLOCK_N, 2 * D]``); each row's scores are
    those of its own head (``pair_second`` [BLOCK_M]: the row belongs to the second): one product per head, each
    row taking its head's (a select, so a non-finite key of one head never reaches the other head's rows); with
    PAIR_TWO_LOADS the second head's keys are ``k2``, each tile ``[BLOCK_N, D]``.
    ``HAS_QV`` (FlashAttention 3's ``qv``, MLA's second query term; 16-bit inputs, no KV pairs): the scores are
    ``q k^T + qv v^T`` (``qv`` ``[BLOCK_M, BLOCK_DV]``, ``v`` the block's V tile), before the scale, the softcap and
    the masks, as FlashAttention 3 sums its two products."""
    tl.static_assert(not HAS_QV or (KV_PAIR == NO_PAIR and FP8 == NO_FP8), "qv: 16-bit inputs, no KV pairs")
    if FP8 == FP8_KV:
        # Half the bytes of a bf16 cache; both products then run in fp16.
        k = _widen_e4m3(k, WIDEN)
        v = _widen_e4m3(v, WIDEN, VALUES=True)
    elif FP8 == FP8_QKV:
        # Q K^T in e4m3 (fp32 accumulation); P @ V in fp16, so P is not rounded to e4m3 (FlashAttention 3
        # rounds it; its 2^-4 relative step would dominate the error).
        v = _widen_e4m3(v, WIDEN, VALUES=True)
        if q.dtype == tl.float16:  # a decode tile's e4m3 q widened and fenced (_attend_tile): K alike
            k = _widen_e4m3(k, WIDEN)
    if UPCAST:
        k = k.to(tl.float32)
    if KV_PAIR == PAIR_TWO_PRODUCTS or KV_PAIR == PAIR_TWO_LOADS:
        if KV_PAIR == PAIR_TWO_LOADS:
            k_first, k_second = k, _widen_e4m3(k2, WIDEN)  # FP8_KV only
        else:
            k_first, k_second = _kv_halves(k)
        qk = tl.where(pair_second[:, None], dot(q, tl.trans(k_second)), dot(q, tl.trans(k_first)))
    elif KV_PAIR == PAIR_INTERLEAVED:
        # Rows 2j and 2j + 1 are token j's of the two heads: keys and masks interleaved alike.
        BLOCK_N: tl.constexpr = k.shape[0]
        D: tl.constexpr = k.shape[1] // 2
        k = tl.reshape(k, [2 * BLOCK_N, D])
        v = tl.reshape(v, [2 * BLOCK_N, D])
        offs_n = tl.reshape(tl.join(offs_n, offs_n), [2 * BLOCK_N])
        if MASK:
            load_mask = tl.reshape(tl.join(load_mask, load_mask), [2 * BLOCK_N])
        qk = dot(q, tl.trans(k))  # [BLOCK_M, 2 * BLOCK_N]
    else:
        qk = dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        if HAS_QV:
            # The second product accumulates into the first (one accumulator, as FlashAttention 3's two GEMMs).
            if UPCAST:
                qk = _dot_into(qv, tl.trans(v.to(tl.float32)), qk)
            else:
                qk = _dot_into(qv, tl.trans(v), qk)
    # Scores in log2 units are qk * qk_scale; without softcap the scale is applied inside the exponent's FMA
    # (and to the row max, which a positive scale leaves in place) instead of by a separate multiply.
    if HAS_SOFTCAP:
        if FP8 == FP8_KV:
            qk = qk * row_unscale[:, None]
        qk = softcap_scores(qk, softmax_scale, softcap)
        qk_scale = 1.0
    else:
        qk_scale = softmax_scale * LOG2E
        if FP8 == FP8_KV:
            qk_scale = qk_scale * row_unscale  # [BLOCK_M], each row's power of two too (exact)
    visible = True
    if MASK_EDGES_ONLY:
        if (block < masked_head_end) | (block >= unmasked_end):
            qk = tl.where(in_window(load_mask[None, :], offs_n[None, :], row_pos[:, None], offset, left, right,
                                    HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK), qk, float("-inf"))
    elif MASK:
        visible = in_window(load_mask[None, :], offs_n[None, :], row_pos[:, None], offset, left, right, HAS_LEFT,
                            HAS_RIGHT, chunk, HAS_CHUNK)
        qk = tl.where(visible, qk, float("-inf"))
    if KV_PAIR == PAIR_INTERLEAVED:
        own = (tl.arange(0, qk.shape[1]) % 2 == 1)[None, :] == pair_second[:, None]
        qk = tl.where(own, qk, float("-inf"))
    return qk, qk_scale, v, visible


@triton.jit
def _exp_scores(qk, qk_scale, pivot, HAS_SOFTCAP: tl.constexpr, FP8: tl.constexpr):
    """``exp2`` of the scores in log2 units less each row's ``pivot``."""
    if FP8 == FP8_KV and not HAS_SOFTCAP:
        return tl.exp2(qk * qk_scale[:, None] - pivot[:, None])
    else:
        return tl.exp2(qk * qk_scale - pivot[:, None])


@triton.jit
def _mask_columns(qk, first_key, first, last, first_max, last_min):
    """Scores ``qk`` ``[rows, BLOCK]`` of keys ``first_key + [0, BLOCK)``, those outside each row's visible keys
    ``[first, last]`` (``[rows]``) set to -inf. The compares are against the block's column indices (per thread,
    known) with bounds relative to the block; a side's compare is left out when no row of the tile needs it in this
    block: ``first_max`` / ``last_min`` are the largest first and smallest last visible key of the tile's real rows
    (its last and first row: both bounds grow with the row), so ``first_max <= first_key`` means every row sees the
    block from its first key on. Rows past the real ones (padding) may then see more keys; their results are dropped.
    """
    BLOCK: tl.constexpr = qk.shape[1]
    column = tl.arange(0, BLOCK)[None, :]
    lo = (first - first_key)[:, None]
    hi = (last - first_key)[:, None]
    needs_last = last_min < first_key + (BLOCK - 1)
    if first_max > first_key:
        if needs_last:
            qk = tl.where((column >= lo) & (column <= hi), qk, float("-inf"))
        else:
            qk = tl.where(column >= lo, qk, float("-inf"))
    elif needs_last:
        qk = tl.where(column <= hi, qk, float("-inf"))
    return qk


@triton.jit
def _guard_values(v, visible):
    """0 * NaN is NaN: a non-finite value row would reach, through the P @ V product, the rows of its block that
    cannot see its key. Returns ``v`` with such rows zeroed for the product and the rows that see one (to poison
    after it). (Costly: it takes V through registers.)"""
    value_finite = tl.min((tl.abs(v) < float("inf")).to(tl.int32), 1) == 1
    v = tl.where(value_finite[:, None], v, 0.0)
    sees_non_finite = tl.max((visible & ~value_finite[None, :]).to(tl.int32), 1) == 1
    return v, sees_non_finite


@triton.jit
def _all_finite(x):
    """True when every value of the tile is finite (a scalar); False when one is not and, rarely, when finite values
    sum past the largest float: callers then take the guarded path, which gives the same bits on finite values. One
    sum of the tile (a NaN or an infinity makes it non-finite), one add per element: the compare, select and minimum
    per element of an exact test took ~110 more instructions per warp on a 64-row verify tile (sm_90, Triton 3.6)."""
    total = tl.sum(tl.sum(x.to(tl.float32), 1), 0)
    return total - total == 0.0


@triton.jit
def _pv(acc, p, v, UPCAST: tl.constexpr, pair_second=None, KV_PAIR: tl.constexpr = 0, v2=None,
        WIDEN: tl.constexpr = 0):
    if KV_PAIR == PAIR_TWO_PRODUCTS or KV_PAIR == PAIR_TWO_LOADS:
        # v holds two KV heads' rows side by side (or, PAIR_TWO_LOADS, the first's, and v2 the second's e4m3
        # values): each row takes its own head's.
        if KV_PAIR == PAIR_TWO_LOADS:
            v_first, v_second = v, _widen_e4m3(v2, WIDEN, VALUES=True)
        else:
            v_first, v_second = _kv_halves(v)
        p = p.to(v.dtype)
        return acc + tl.where(pair_second[:, None], dot(p, v_second), dot(p, v_first))
    elif UPCAST:
        return acc + dot(p, v.to(tl.float32))
    else:
        return acc + dot(p.to(v.dtype), v)


@triton.jit
def _softmax_step_transposed(acc_t, l_sum, m_i, q_t, k, v, k2, v2, offs_n, load_mask, row_pos, offset, left, right,
                             softmax_scale, softcap, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                             HAS_SOFTCAP: tl.constexpr, MASK: tl.constexpr, chunk, HAS_CHUNK: tl.constexpr,
                             row_unscale, pair_second, WIDEN: tl.constexpr):
    """One block of the two-KV-heads loop (PAIR_TRANSPOSED: ``_softmax_step``'s PAIR_TWO_LOADS step, transposed):
    keys along the rows of every tile. ``q_t`` ``[BLOCK_D, BLOCK_M]`` (the tile's queries transposed, fp16), ``k`` /
    ``v`` (first KV head) and ``k2`` / ``v2`` (second) ``[BLOCK_N, D]`` e4m3, ``acc_t`` ``[BLOCK_D, BLOCK_M]``,
    ``l_sum`` ``[BLOCK_N, BLOCK_M]`` (each row sum's per-key partial terms: summed over keys once, after the loop),
    ``m_i`` ``[BLOCK_M]``, ``pair_second`` ``[BLOCK_M]``.

    Why transposed (Triton 3.6, sm_90): the scores are K q^T, so the loop-invariant fp16 queries are the product's
    B operand, whose kWidth-4 fragments (the e4m3 K sets kWidth 4) are the registers of one 64-bit shared-memory
    load, where as the A operand each fragment was rebuilt into the HMMA's register quad by moves (~56 ``IMAD.MOV``
    per iteration and warp: Triton reloads a loop-invariant operand from shared memory in every iteration); K, the
    A operand now, is widened straight into the quads. And the two heads' query rows are columns: with
    ``pair_second`` a compile-time pattern whose halves are whole 8-column tiles (2 x group = 16 rows), each head's
    products drop the other head's columns (half the ``HMMA``) and the selects fold away. Each row sum's terms
    stay per key (one FFMA per score) instead of a sum across lanes and warps per block (two shuffle levels and a
    shared-memory exchange behind barriers).
    Masked keys (``MASK``: the split's head and tail blocks) as ``_block_scores``; a non-finite key or value of
    one head reaches none of the other head's rows (selects, never a 0 x NaN)."""
    k_first = _widen_e4m3(k, WIDEN)
    k_second = _widen_e4m3(k2, WIDEN)
    second = pair_second[None, :]
    qk = tl.where(second, dot(k_second, q_t), dot(k_first, q_t))  # [BLOCK_N, BLOCK_M]
    if HAS_SOFTCAP:
        qk = softcap_scores(qk * row_unscale[None, :], softmax_scale, softcap)
    if MASK:
        visible = in_window(load_mask[:, None], offs_n[:, None], row_pos[None, :], offset, left, right, HAS_LEFT,
                            HAS_RIGHT, chunk, HAS_CHUNK)
        qk = tl.where(visible, qk, float("-inf"))
    if HAS_SOFTCAP:
        m_new = tl.maximum(m_i, tl.max(qk, 0))
        pivot = safe_pivot(m_new)
        p = tl.exp2(qk - pivot[None, :])
    else:
        # Scores in log2 units are qk * qk_scale (each row's power of two and descale in it; positive, so the max
        # of the scaled scores is the scaled max).
        qk_scale = (softmax_scale * LOG2E) * row_unscale
        m_new = tl.maximum(m_i, tl.max(qk, 0) * qk_scale)
        pivot = safe_pivot(m_new)
        p = tl.exp2(qk * qk_scale[None, :] - pivot[None, :])
    alpha = tl.exp2(m_i - pivot)
    l_sum = l_sum * alpha[None, :] + p
    p16 = p.to(tl.float16)
    if WIDEN == WIDEN_FENCED or WIDEN == WIDEN_FENCED_VALUES:
        # Both tiles through one fence: their shared-memory copies are then written before either is read (two
        # buffers, one barrier; fenced one by one, Triton gave them one buffer in turn, two more barriers).
        v_first, v_second = tl.split(_fence_16bit(tl.join(v.to(tl.float16), v2.to(tl.float16))))
    else:
        v_first = _widen_e4m3(v, WIDEN, VALUES=True)
        v_second = _widen_e4m3(v2, WIDEN, VALUES=True)
    v_first = tl.trans(v_first)
    v_second = tl.trans(v_second)
    acc_t = acc_t * alpha[None, :] + tl.where(second, dot(v_second, p16), dot(v_first, p16))
    return acc_t, l_sum, m_new


@triton.jit
def _softmax_step(acc, l_i, m_i, q, k, v, offs_n, load_mask, row_pos, offset, left, right, softmax_scale, softcap,
                  block, masked_head_end, unmasked_end, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, GUARD_NON_FINITE: tl.constexpr,
                  MASK: tl.constexpr, MASK_EDGES_ONLY: tl.constexpr, chunk, HAS_CHUNK: tl.constexpr,
                  FP8: tl.constexpr, row_unscale, WIDEN: tl.constexpr = 0, pair_second=None,
                  KV_PAIR: tl.constexpr = 0, k2=None, v2=None, RESCALE_THRESHOLD: tl.constexpr = 0.0, qv=None,
                  HAS_QV: tl.constexpr = False):
    """One block of the online softmax (``_attend_blocks``' loop body after the loads): ``k`` / ``v`` hold keys
    ``offs_n`` (``load_mask``). ``GUARD_NON_FINITE`` (with MASK) keeps non-finite values in the rows that see them
    (not with ``KV_PAIR``, whose single-query tiles need no isolation). ``RESCALE_THRESHOLD``: the Gluon kernel's
    lazy rescale (``kept_max``), in the redo pass after it. ``HAS_QV``: ``qv``'s scores too (``_block_scores``)."""
    qk, qk_scale, v, visible = _block_scores(q, k, v, offs_n, load_mask, row_pos, offset, left, right, softmax_scale,
                                             softcap, block, masked_head_end, unmasked_end, HAS_LEFT, HAS_RIGHT,
                                             HAS_SOFTCAP, UPCAST, MASK, MASK_EDGES_ONLY, chunk, HAS_CHUNK, FP8,
                                             row_unscale, WIDEN, pair_second, KV_PAIR, k2, qv, HAS_QV)
    m_new = kept_max(m_i, tl.maximum(m_i, tl.max(qk, 1) * qk_scale), RESCALE_THRESHOLD)
    pivot = safe_pivot(m_new)
    p = _exp_scores(qk, qk_scale, pivot, HAS_SOFTCAP, FP8)
    alpha = tl.exp2(m_i - pivot)
    l_i = l_i * alpha + tl.sum(p, 1)
    if GUARD_NON_FINITE == 2:
        # Behind a branch (GUARD_ONE_PASS_BRANCHED): the guard only for a block holding a non-finite value.
        if _all_finite(v):
            acc = _pv(acc * alpha[:, None], p, v, UPCAST)
        else:
            v, sees_non_finite = _guard_values(v, visible)
            acc = tl.where(sees_non_finite[:, None], float("nan"), _pv(acc * alpha[:, None], p, v, UPCAST))
    elif GUARD_NON_FINITE == 3:
        # Behind a check of the result (GUARD_ONE_PASS_CHECKED): a non-finite value in V makes every row's result
        # non-finite (0 * inf is NaN), so a finite result is the guarded one.
        plain = _pv(acc * alpha[:, None], p, v, UPCAST)
        if _all_finite(plain):
            acc = plain
        else:
            v, sees_non_finite = _guard_values(v, visible)
            acc = tl.where(sees_non_finite[:, None], float("nan"), _pv(acc * alpha[:, None], p, v, UPCAST))
    else:
        if GUARD_NON_FINITE:
            v, sees_non_finite = _guard_values(v, visible)
        acc = _pv(acc * alpha[:, None], p, v, UPCAST, pair_second, KV_PAIR, v2, WIDEN)
        if GUARD_NON_FINITE:
            acc = tl.where(sees_non_finite[:, None], float("nan"), acc)
    return acc, l_i, m_new


@triton.jit
def _softmax_step_two_blocks(acc, l_i, m_i, q, k_head, v_head, offs_h, head_mask, k, v, offs_n, load_mask, row_pos,
                             offset, left, right, softmax_scale, softcap, HAS_LEFT: tl.constexpr,
                             HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                             GUARD_NON_FINITE: tl.constexpr, chunk, HAS_CHUNK: tl.constexpr, FP8: tl.constexpr,
                             row_unscale, WIDEN: tl.constexpr = 0, ROW_BOUNDS: tl.constexpr = False,
                             seqlen_q=0, seqlen_k=0, kv_start=0, kv_end=0, first_pos=0, last_pos=0):
    """``_softmax_step`` over two masked blocks at once (``HEAD_N``): one row max, one rescale, the two products
    summed, so neither block's reductions wait for the other's. ``ROW_BOUNDS`` (``ROW_BOUND_MASK``): the scores
    masked by ``_mask_columns`` (the tile's keys from ``kv_start`` on, its real rows at positions ``first_pos ..
    last_pos``) instead of ``in_window``."""
    qk_h, qk_scale, v_head, visible_h = _block_scores(q, k_head, v_head, offs_h, head_mask, row_pos, offset, left,
                                                      right, softmax_scale, softcap, 0, 0, 0, HAS_LEFT, HAS_RIGHT,
                                                      HAS_SOFTCAP, UPCAST, not ROW_BOUNDS, False, chunk, HAS_CHUNK,
                                                      FP8, row_unscale, WIDEN)
    qk, qk_scale, v, visible = _block_scores(q, k, v, offs_n, load_mask, row_pos, offset, left, right, softmax_scale,
                                             softcap, 0, 0, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, UPCAST,
                                             not ROW_BOUNDS, False, chunk, HAS_CHUNK, FP8, row_unscale, WIDEN)
    if ROW_BOUNDS:
        # Each row's first and last visible key among the loaded ones (keys from kv_start on), and the extremes
        # over the tile's real rows (swattn.window's arithmetic, the _common twins).
        first = tl.maximum(first_visible_key(row_pos, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK), kv_start)
        last = last_visible_key(row_pos, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK)
        first_max = tl.maximum(first_visible_key(last_pos, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK),
                               kv_start)
        last_min = last_visible_key(first_pos, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK)
        HEAD_N: tl.constexpr = offs_h.shape[0]
        BLOCK_N: tl.constexpr = offs_n.shape[0]
        qk_h = _mask_columns(qk_h, kv_end - BLOCK_N - HEAD_N, first, last, first_max, last_min)
        qk = _mask_columns(qk, kv_end - BLOCK_N, first, last, first_max, last_min)
        if GUARD_NON_FINITE == 1 or GUARD_NON_FINITE == 2:
            # The guarded product's mask, both sides (GUARD_ONE_PASS_CHECKED computes it in its redo only).
            visible_h = in_window(head_mask[None, :], offs_h[None, :], row_pos[:, None], offset, left, right, HAS_LEFT,
                                  HAS_RIGHT, chunk, HAS_CHUNK)
            visible = in_window(load_mask[None, :], offs_n[None, :], row_pos[:, None], offset, left, right, HAS_LEFT,
                                HAS_RIGHT, chunk, HAS_CHUNK)
    m_new = tl.maximum(m_i, tl.maximum(tl.max(qk_h, 1), tl.max(qk, 1)) * qk_scale)
    pivot = safe_pivot(m_new)
    p_h = _exp_scores(qk_h, qk_scale, pivot, HAS_SOFTCAP, FP8)
    p = _exp_scores(qk, qk_scale, pivot, HAS_SOFTCAP, FP8)
    alpha = tl.exp2(m_i - pivot)
    l_i = l_i * alpha + (tl.sum(p_h, 1) + tl.sum(p, 1))
    if GUARD_NON_FINITE == 2:
        if _all_finite(v_head) & _all_finite(v):
            acc = _pv(_pv(acc * alpha[:, None], p_h, v_head, UPCAST), p, v, UPCAST)
        else:
            v_head, sees_h = _guard_values(v_head, visible_h)
            v, sees = _guard_values(v, visible)
            acc = tl.where((sees_h | sees)[:, None], float("nan"),
                           _pv(_pv(acc * alpha[:, None], p_h, v_head, UPCAST), p, v, UPCAST))
    elif GUARD_NON_FINITE == 3:
        plain = _pv(_pv(acc * alpha[:, None], p_h, v_head, UPCAST), p, v, UPCAST)
        if _all_finite(plain):
            acc = plain
        else:
            redo_visible_h = visible_h
            redo_visible = visible
            if ROW_BOUNDS:
                # The mask here, from in_window: the scores' row bounds, reused, would be kept in registers through
                # the common path for this rare redo.
                redo_visible_h = in_window(head_mask[None, :], offs_h[None, :], row_pos[:, None], offset, left,
                                           right, HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
                redo_visible = in_window(load_mask[None, :], offs_n[None, :], row_pos[:, None], offset, left, right,
                                         HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
            v_head, sees_h = _guard_values(v_head, redo_visible_h)
            v, sees = _guard_values(v, redo_visible)
            acc = tl.where((sees_h | sees)[:, None], float("nan"),
                           _pv(_pv(acc * alpha[:, None], p_h, v_head, UPCAST), p, v, UPCAST))
    else:
        if GUARD_NON_FINITE:
            v_head, sees_h = _guard_values(v_head, visible_h)
            v, sees = _guard_values(v, visible)
        acc = _pv(_pv(acc * alpha[:, None], p_h, v_head, UPCAST), p, v, UPCAST)
        if GUARD_NON_FINITE:
            acc = tl.where((sees_h | sees)[:, None], float("nan"), acc)
    return acc, l_i, m_new


@triton.jit
def _attend_blocks(acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc, block_begin, block_end, kv_start,
                   kv_end, offs_d, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs, page_size,
                   seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM: tl.constexpr, visited,
                   MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                   HAS_SOFTCAP: tl.constexpr, IS_PAGED: tl.constexpr, MASK_D: tl.constexpr,
                   UPCAST: tl.constexpr, COUNT_BLOCKS: tl.constexpr, BLOCK_N: tl.constexpr,
                   USE_TMA: tl.constexpr, GUARD_NON_FINITE: tl.constexpr = False, masked_head_end=0,
                   unmasked_end=0, MASK_EDGES_ONLY: tl.constexpr = False, key_shift=0,
                   SHIFT_PAGED_KEYS: tl.constexpr = False, chunk=0, HAS_CHUNK: tl.constexpr = False,
                   FP8: tl.constexpr = NO_FP8, row_unscale=1.0, K_NEW=None, V_NEW=None, new_source=0, first_new=0,
                   stride_ns=0, READ_NEW: tl.constexpr = False, HEAD_N: tl.constexpr = 0,
                   WIDEN: tl.constexpr = 0, pair_second=None, KV_PAIR: tl.constexpr = 0, k_partner=0,
                   v_partner=0, chunk_slot=0, PREFETCH_PARTNER: tl.constexpr = 0, ROW_BOUNDS: tl.constexpr = False,
                   first_pos=0, last_pos=0, RESCALE_THRESHOLD: tl.constexpr = 0.0, offs_dv=None,
                   MASK_DV: tl.constexpr = False, HEAD_DIM_V: tl.constexpr = 0, qv=None,
                   HAS_QV: tl.constexpr = False):
    """Online softmax over KV blocks ``[block_begin, block_end)`` of the tile's loop; ``MASK`` for edge blocks,
    ``GUARD_NON_FINITE`` (with MASK) to keep non-finite values in the rows that see them. With ``USE_TMA`` the
    blocks come through ``k_desc`` / ``v_desc``, whose rows end at ``kv_end`` (zero fill beyond it).
    ``MASK_EDGES_ONLY`` (with MASK; ``FwdConfig.mask_edges_only``): one loop over every block, masking only the
    blocks outside ``[masked_head_end, unmasked_end)``, which every row sees whole (a branch per block instead of
    the per-element mask arithmetic that the single loop otherwise runs on every block).
    ``FP8``: K and V tiles arrive in e4m3 and are widened to fp16 in registers right after the load (exact: every
    e4m3 value is an fp16; one conversion per pair on sm_90, where bf16 took three); their descales are not
    applied here but folded into ``softmax_scale`` (K, and q's with FP8_QKV) and into the epilogue's normalization
    (V) by ``_attend_tile``. With FP8_KV q arrives in fp16, each row scaled by a power of two (``_rows_to_fp16``),
    which ``row_unscale`` ([BLOCK_M]) takes back out with the softmax scale.
    ``READ_NEW`` (the fused append, ``APPEND_READS_INPUT``): keys from ``first_new`` on are new tokens, loaded from
    ``K_NEW`` / ``V_NEW`` (token ``j`` at ``new_source + (j - first_new) * stride_ns``) instead of the cache, and
    stored into the cache from the loaded tiles.
    ``HEAD_N`` > 0 (``FwdConfig.head_block``; single masked loop, keys ``[kv_start, kv_end)`` at most ``BLOCK_N +
    HEAD_N``, no descriptors): instead of the loop, one ``BLOCK_N``-key block ending at ``kv_end`` and one
    ``HEAD_N``-key block before it, both loaded before either is used (one dependent memory round trip): a
    speculative verify of k tokens at window (127, 0) sees 127 + k keys, which one 256-key block covered with 125 - k
    keys of masked work. With ``ROW_BOUNDS`` (``ROW_BOUND_MASK``) their scores are masked by per-row key bounds
    (``_mask_columns``; ``first_pos`` / ``last_pos``: the positions of the tile's first and last real rows).
    ``KV_PAIR`` (``FP8_TWO_KV_HEADS``; not with HEAD_N, READ_NEW, TMA): ``offs_d`` spans two KV heads' rows (``2 *
    D``, adjacent in memory), each tile is loaded once for both and ``_block_scores`` / ``_pv`` give each row its
    own head's products (``pair_second``).
    ``PREFETCH_PARTNER`` (``FP8_PREFETCH_PARTNER``; pointer loads of the cache): see ``_load_kv``, with
    ``k_partner`` / ``v_partner`` and ``chunk_slot``; with ``KV_PAIR`` PAIR_TWO_LOADS (``offs_d`` one head's) the
    second KV head's tiles are loaded ``k_partner`` / ``v_partner`` elements on.
    ``HEAD_DIM_V`` > 0 (FlashAttention 3's ``headdim_v``): V's head_dim differs from K's; its tiles span ``offs_dv``
    (``MASK_DV``: masked to HEAD_DIM_V) and ``acc`` is ``[BLOCK_M, BLOCK_DV]`` (not with HEAD_N, READ_NEW,
    KV_PAIR); 0: V's tiles as K's.
    ``HAS_QV`` (with HEAD_DIM_V > 0): FlashAttention 3's ``qv`` (``[BLOCK_M, BLOCK_DV]``, the tile's rows) adds
    ``qv v^T`` to each block's scores, from the V tile loaded for the block's P @ V."""
    offset = seqlen_k - seqlen_q
    tl.static_assert(not HAS_QV or HEAD_DIM_V != 0, "qv takes the value head_dim path")
    tl.static_assert(HEAD_N == 0 or RESCALE_THRESHOLD == 0, "the lazy rescale is the Gluon kernel's: no head block")
    tl.static_assert(HEAD_DIM_V == 0 or (HEAD_N == 0 and not READ_NEW and KV_PAIR == 0),
                     "a value head_dim of its own: no head block, fused append or KV pairs")
    if HEAD_N > 0:
        offs_n = kv_end - BLOCK_N + tl.arange(0, BLOCK_N)
        load_mask = offs_n >= kv_start
        offs_h = kv_end - BLOCK_N - HEAD_N + tl.arange(0, HEAD_N)
        head_mask = offs_h >= kv_start
        k_head, v_head, k, v = _load_two_blocks(
            k_base, v_base, offs_h, head_mask, offs_n, load_mask, offs_d, batch_kv, page_table_row, stride_kb,
            stride_ks, stride_vb, stride_vs, page_size, IS_PAGED, MASK_D, HEAD_DIM, key_shift, SHIFT_PAGED_KEYS, K_NEW,
            V_NEW, new_source, first_new, stride_ns, READ_NEW, FP8 != NO_FP8)
        acc, l_i, m_i = _softmax_step_two_blocks(acc, l_i, m_i, q, k_head, v_head, offs_h, head_mask, k, v, offs_n,
                                                 load_mask, row_pos, offset, left, right, softmax_scale, softcap,
                                                 HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, UPCAST, GUARD_NON_FINITE, chunk,
                                                 HAS_CHUNK, FP8, row_unscale, WIDEN, ROW_BOUNDS, seqlen_q,
                                                 seqlen_k, kv_start, kv_end, first_pos, last_pos)
    else:
        for block in range(block_begin, block_end):
            offs_n = kv_start + block * BLOCK_N + tl.arange(0, BLOCK_N)
            if MASK:
                load_mask = offs_n < kv_end
            else:
                load_mask = offs_n >= 0  # all true: interior blocks lie inside [kv_start, kv_end)
            if USE_TMA:
                k = k_desc.load([kv_start + block * BLOCK_N, 0])
                v = v_desc.load([kv_start + block * BLOCK_N, 0])
            else:
                k, v = _load_block(k_base, v_base, offs_n, offs_d, load_mask, batch_kv, page_table_row, stride_kb,
                                   stride_ks, stride_vb, stride_vs, page_size, IS_PAGED, MASK_D, HEAD_DIM, key_shift,
                                   SHIFT_PAGED_KEYS, K_NEW, V_NEW, new_source, first_new, stride_ns, READ_NEW,
                                   FP8 != NO_FP8, k_partner, v_partner, chunk_slot, PREFETCH_PARTNER, offs_dv,
                                   MASK_DV, HEAD_DIM_V)
            k2 = None
            v2 = None
            if KV_PAIR == PAIR_TWO_LOADS or KV_PAIR == PAIR_TRANSPOSED:
                # The second KV head's tiles, k_partner / v_partner elements on (its rows' twins).
                k2, v2 = _load_block(k_base + k_partner, v_base + v_partner, offs_n, offs_d, load_mask, batch_kv,
                                     page_table_row, stride_kb, stride_ks, stride_vb, stride_vs, page_size, IS_PAGED,
                                     MASK_D, HEAD_DIM, key_shift, SHIFT_PAGED_KEYS, K_NEW, V_NEW, new_source,
                                     first_new, stride_ns, READ_NEW, FP8 != NO_FP8)
            if KV_PAIR == PAIR_TRANSPOSED:
                acc, l_i, m_i = _softmax_step_transposed(acc, l_i, m_i, q, k, v, k2, v2, offs_n, load_mask, row_pos,
                                                         offset, left, right, softmax_scale, softcap, HAS_LEFT,
                                                         HAS_RIGHT, HAS_SOFTCAP, MASK, chunk, HAS_CHUNK,
                                                         row_unscale, pair_second, WIDEN)
            else:
                acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k, v, offs_n, load_mask, row_pos, offset, left,
                                              right, softmax_scale, softcap, block, masked_head_end, unmasked_end,
                                              HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, UPCAST, GUARD_NON_FINITE, MASK,
                                              MASK_EDGES_ONLY, chunk, HAS_CHUNK, FP8, row_unscale, WIDEN,
                                              pair_second, KV_PAIR, k2, v2, RESCALE_THRESHOLD, qv, HAS_QV)
            if COUNT_BLOCKS:
                visited += 1
    return acc, l_i, m_i, visited


@triton.jit
def _write_new_tokens(K_NEW, V_NEW, k_base, v_base, batch64, q_begin, kv_head, first_new, key_begin, key_end,
                      offs_d, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs, stride_nb,
                      stride_ns, stride_nh, page_size, IS_PAGED: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """Copy keys ``[key_begin, key_end)`` of one sequence and KV head, which are new tokens (key ``j`` is new token
    ``j - first_new``, laid out like the queries: ``[B, S, Hk, D]`` or varlen ``[total, Hk, D]`` from ``q_begin``),
    from ``K_NEW``/``V_NEW`` into the cache at ``k_base``/``v_base``."""
    source = batch64 * stride_nb + q_begin.to(tl.int64) * stride_ns + kv_head.to(tl.int64) * stride_nh
    for start in range(key_begin, key_end, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        rows = offs_n < key_end
        mask = rows[:, None] & (offs_d[None, :] < HEAD_DIM)
        new_offsets = source + (offs_n - first_new).to(tl.int64)[:, None] * stride_ns + offs_d[None, :]
        k = tl.load(K_NEW + new_offsets, mask=mask)
        v = tl.load(V_NEW + new_offsets, mask=mask)
        k_offsets = _cache_token_offsets(offs_n, rows, batch_kv, page_table_row, stride_kb, stride_ks, page_size,
                                         IS_PAGED)
        v_offsets = _cache_token_offsets(offs_n, rows, batch_kv, page_table_row, stride_vb, stride_vs, page_size,
                                         IS_PAGED)
        tl.store(k_base + k_offsets[:, None] + offs_d[None, :], k, mask=mask)
        tl.store(v_base + v_offsets[:, None] + offs_d[None, :], v, mask=mask)


@triton.jit
def _tile_rows(
    tile, batch_head, seqlen_q, seqlen_k, num_heads, queries_per_kv_head, left, right,
    CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, IS_VARLEN_Q: tl.constexpr, IS_VARLEN_K: tl.constexpr,
    HAS_SEQLENS_K: tl.constexpr, PACK_GQA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    APPEND_NEW: tl.constexpr = False, SEQUSED_Q=None, HAS_SEQUSED_Q: tl.constexpr = False, LEFTPAD_K=None,
    HAS_LEFTPAD_K: tl.constexpr = False, chunk=0, HAS_CHUNK: tl.constexpr = False,
):
    """The rows of query tile ``tile`` of ``batch_head`` (one head, or one KV head's packed heads) and the keys
    they see: ``(batch, q_begin, seqlen_q, k_begin, seqlen_k, active, row_valid, row_pos, row_head, kv_head,
    kv_start, kv_end, masked_head_end, unmasked_end, num_blocks, first_pos, last_pos)``; ``active`` is false for a
    tile past its sequence's rows (its key range is then meaningless); ``first_pos`` / ``last_pos``: the positions of
    its first and last real rows."""
    if PACK_GQA:
        heads_per_program = num_heads // queries_per_kv_head
    else:
        heads_per_program = num_heads
    batch = batch_head // heads_per_program
    head_or_kv_head = batch_head % heads_per_program

    q_begin, seqlen_q, k_begin, seqlen_k = sequence_bounds(
        batch, seqlen_q, seqlen_k, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
        SEQUSED_Q, HAS_SEQUSED_Q, LEFTPAD_K, HAS_LEFTPAD_K)
    if APPEND_NEW:
        # SEQLENS_K holds the cached lengths; the sequence's new tokens (one per query) follow them.
        seqlen_k = seqlen_k + seqlen_q

    if PACK_GQA:
        rows_per_pos = queries_per_kv_head
    else:
        rows_per_pos = 1
    num_rows = seqlen_q * rows_per_pos
    first_row = tile * BLOCK_M
    active = first_row < num_rows
    offs_m = first_row + tl.arange(0, BLOCK_M)
    row_valid = offs_m < num_rows
    if PACK_GQA:
        row_pos = offs_m // queries_per_kv_head
        row_head = head_or_kv_head * queries_per_kv_head + offs_m % queries_per_kv_head
        kv_head = head_or_kv_head
    else:
        row_pos = offs_m
        row_head = head_or_kv_head + offs_m * 0
        kv_head = head_or_kv_head // queries_per_kv_head
    first_pos = first_row // rows_per_pos
    last_pos = (tl.minimum(first_row + BLOCK_M, num_rows) - 1) // rows_per_pos
    kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = block_ranges(
        first_pos, last_pos, seqlen_q, seqlen_k, left, right, BLOCK_N, HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
    return (batch, q_begin, seqlen_q, k_begin, seqlen_k, active, row_valid, row_pos, row_head, kv_head,
            kv_start, kv_end, masked_head_end, unmasked_end, num_blocks, first_pos, last_pos)


@triton.jit
def _tile_inputs(
    Q, K, V, CACHE_BATCH_IDX, PAGE_TABLE, batch, q_begin, k_begin, row_valid, row_pos, row_head, kv_head,
    stride_qb, stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_page_table,
    HAS_CACHE_BATCH_IDX: tl.constexpr, UPCAST: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    IS_PAGED: tl.constexpr = False, HAS_LEFTPAD_K: tl.constexpr = False,
):
    """The tile's queries (zeros in invalid rows) and where its keys and values start:
    ``(q, q_mask, offs_d, batch64, batch_kv, k_base, v_base, page_table_row)``. A paged cache's page-table row is
    the sequence's cache row (``cache_batch_idx[b]`` or b); with ``cache_leftpad`` its keys start ``k_begin``
    slots into that row (``_load_kv``'s ``key_shift``), a contiguous cache's ``k_begin`` rows into ``k_base``."""
    offs_d = tl.arange(0, BLOCK_D)
    batch64 = batch.to(tl.int64)
    q_ptrs = (Q + batch64 * stride_qb + (q_begin + row_pos).to(tl.int64)[:, None] * stride_qs
              + row_head.to(tl.int64)[:, None] * stride_qh + offs_d[None, :])
    q_mask = row_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if HAS_CACHE_BATCH_IDX:
        batch_kv = tl.load(CACHE_BATCH_IDX + batch).to(tl.int64)
    else:
        batch_kv = batch64
    if IS_PAGED and HAS_LEFTPAD_K:
        k_base = K + kv_head.to(tl.int64) * stride_kh
        v_base = V + kv_head.to(tl.int64) * stride_vh
    else:
        k_base = K + kv_head.to(tl.int64) * stride_kh + k_begin.to(tl.int64) * stride_ks
        v_base = V + kv_head.to(tl.int64) * stride_vh + k_begin.to(tl.int64) * stride_vs
    page_table_row = PAGE_TABLE + batch_kv * stride_page_table
    return q, q_mask, offs_d, batch64, batch_kv, k_base, v_base, page_table_row


@triton.jit
def _tile_sink(SINKS, row_head, row_valid, HAS_SINKS: tl.constexpr, IS_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr):
    """The rows' sinks in log2 units (zeros when unused), loaded before the KV loop: read after it, in the
    epilogue, the load was one more exposed memory round trip at the end of every decode program."""
    if HAS_SINKS and not IS_SPLIT:
        return tl.load(SINKS + row_head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
    else:
        return tl.zeros([BLOCK_M], dtype=tl.float32)


@triton.jit
def _finish_tile(
    acc, l_i, m_i, visited, O, LSE, sink, BLOCK_COUNT, NON_FINITE_FLAGS, ANY_NON_FINITE,
    stride_os, stride_ob, stride_oq, stride_oh, stride_ls, stride_lb, stride_lq, stride_lh,
    split, program_index, batch64, q_begin, row_valid, row_pos, row_head, q_mask, offs_d,
    HAS_SINKS: tl.constexpr, IS_SPLIT: tl.constexpr, STORE_LSE: tl.constexpr, COUNT_BLOCKS: tl.constexpr,
    NON_FINITE_PASS: tl.constexpr, BLOCK_M: tl.constexpr, value_scale=1.0,
):
    """The epilogue of an active tile: non-finite flags, block count, the sink (``_tile_sink``'s, in log2 units),
    normalization (times ``value_scale``, an fp8 V's descale), LSE and O stores."""
    if NON_FINITE_PASS == FLAG_NON_FINITE:
        # A row sum is NaN when the row holds one (an inf alone does not leak: 0 * inf is what makes the NaN).
        # The atomic's lanes are predicated off unless a row holds a NaN, so finite inputs never issue it.
        flag_ptrs = NON_FINITE_FLAGS + program_index.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_sum = tl.sum(acc, 1)
        row_has_nan = row_sum != row_sum
        tl.store(flag_ptrs, row_has_nan.to(tl.int8))
        tl.atomic_max(ANY_NON_FINITE + tl.zeros([BLOCK_M], dtype=tl.int32), tl.full([BLOCK_M], 1, tl.int32),
                      mask=row_has_nan)

    if COUNT_BLOCKS:
        tl.store(BLOCK_COUNT + program_index, visited)

    # One factor per row scales the accumulator, the sink's rescale and the normalization together: a division per
    # row, not a division and a multiply per element (compiled for sm_90: 88 fewer instructions per W(127,0)
    # prefill tile of about 2100, 184 fewer in the large-window kernel).
    row_factor, lse = finish_rows(m_i, l_i, sink, HAS_SINKS and not IS_SPLIT)
    if STORE_LSE:
        lse_ptrs = (LSE + split.to(tl.int64) * stride_ls + batch64 * stride_lb
                    + row_head.to(tl.int64) * stride_lh + (q_begin + row_pos).to(tl.int64) * stride_lq)
        tl.store(lse_ptrs, lse, mask=row_valid)
    out = acc * (row_factor * value_scale)[:, None]
    o_ptrs = (O + split.to(tl.int64) * stride_os + batch64 * stride_ob
              + (q_begin + row_pos).to(tl.int64)[:, None] * stride_oq
              + row_head.to(tl.int64)[:, None] * stride_oh + offs_d[None, :])
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_mask)


@triton.jit
def _preload_tile_l2(Q, K, V, SEQLENS_K, PAGE_TABLE, K_NEW, V_NEW, SINKS, stride_qb, stride_qs, stride_qh,
                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_page_table, stride_nb,
                     stride_ns, stride_nh, seqlen_q, num_heads, queries_per_kv_head, page_size, left, right, tile,
                     batch_head, split, num_splits, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                     HAS_SINKS: tl.constexpr, APPEND_NEW: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                     PRELOAD: tl.constexpr, Q_DESCALE, K_DESCALE, V_DESCALE, stride_qdb, stride_qdh, stride_kdb,
                     stride_kdh, stride_vdb, stride_vdh, FP8: tl.constexpr = NO_FP8, BY_LOADS: tl.constexpr = False):
    """L2 prefetches of what tile ``tile`` of ``batch_head`` (a PackGQA tile of a paged, fixed-length-q call with
    per-sequence lengths) reads first, issued before the wait for the previous kernel (``PRELOAD_L2``): values
    loaded here only choose lines to prefetch. Each tensor's rows are covered in its own dtype's bytes (an e4m3
    cache's D = 64 row is 64 bytes, half a line; its descales are read too). ``BY_LOADS``: plain loads instead of
    prefetches (the interpreter)."""
    batch = batch_head // (num_heads // queries_per_kv_head)
    kv_head = batch_head % (num_heads // queries_per_kv_head)
    batch64 = batch.to(tl.int64)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    num_rows = seqlen_q * queries_per_kv_head
    row_valid = offs_m < num_rows
    row_pos = offs_m // queries_per_kv_head
    row_head = kv_head * queries_per_kv_head + offs_m % queries_per_kv_head
    # The query rows (one line per 128 bytes of a row) and the sinks: independent of anything loaded.
    offs_line = _row_lines(Q, HEAD_DIM)
    q_rows = Q + batch64 * stride_qb + row_pos.to(tl.int64) * stride_qs + row_head.to(tl.int64) * stride_qh
    _prefetch_l2(tl.where(row_valid[:, None], q_rows[:, None] + offs_line[None, :], Q), BY_LOADS)
    if HAS_SINKS:
        _prefetch_l2(SINKS + kv_head * queries_per_kv_head, BY_LOADS)
    if FP8 != NO_FP8:
        # The program's descales (one per sequence and KV head), read right after the wait.
        kv_head64 = kv_head.to(tl.int64)
        _prefetch_l2(K_DESCALE + batch64 * stride_kdb + kv_head64 * stride_kdh, BY_LOADS)
        _prefetch_l2(V_DESCALE + batch64 * stride_vdb + kv_head64 * stride_vdh, BY_LOADS)
        if FP8 == FP8_QKV:
            _prefetch_l2(Q_DESCALE + batch64 * stride_qdb + kv_head64 * stride_qdh, BY_LOADS)
    # The loop's first keys: the length (volatile: never reused after the wait), then the page-table entries.
    seqlen_k = tl.load(SEQLENS_K + batch, volatile=True)
    if APPEND_NEW:
        seqlen_k = seqlen_k + seqlen_q
    first_pos = (tile * BLOCK_M) // queries_per_kv_head
    last_pos = (tl.minimum(tile * BLOCK_M + BLOCK_M, num_rows) - 1) // queries_per_kv_head
    kv_start, kv_end, _, _, num_blocks = block_ranges(first_pos, last_pos, seqlen_q, seqlen_k, left, right, BLOCK_N,
                                                     HAS_LEFT, HAS_RIGHT)
    # This split's first block (with a head block, the tile's at most BLOCK_N + HEAD_N keys: both blocks).
    KEYS: tl.constexpr = BLOCK_N if HEAD_N == 0 else 2 * BLOCK_N
    block_begin, block_end = _split_blocks(num_blocks, num_splits, split)
    first = kv_start + block_begin * BLOCK_N
    last = tl.minimum(kv_start + block_end * BLOCK_N, kv_end)
    keys = first + tl.arange(0, KEYS)
    visible = (keys < last) & (keys >= 0)
    if APPEND_NEW:
        cached = visible & (keys < seqlen_k - seqlen_q)
    else:
        cached = visible
    table_row = PAGE_TABLE + batch64 * stride_page_table
    if PRELOAD == 1:
        _prefetch_l2(tl.where(cached, table_row + keys // page_size, PAGE_TABLE), BY_LOADS)
    else:
        page = tl.load(table_row + keys // page_size, mask=cached, other=0, volatile=True).to(tl.int64)
        slot = (keys % page_size).to(tl.int64)
        k_rows = K + page * stride_kb + slot * stride_ks + kv_head.to(tl.int64) * stride_kh
        v_rows = V + page * stride_vb + slot * stride_vs + kv_head.to(tl.int64) * stride_vh
        offs_kv_line = _row_lines(K, HEAD_DIM)
        _prefetch_l2(tl.where(cached[:, None], k_rows[:, None] + offs_kv_line[None, :], K), BY_LOADS)
        _prefetch_l2(tl.where(cached[:, None], v_rows[:, None] + offs_kv_line[None, :], V), BY_LOADS)
        if APPEND_NEW:
            offs_new_line = _row_lines(K_NEW, HEAD_DIM)
            new_rows = batch64 * stride_nb + row_pos.to(tl.int64) * stride_ns + kv_head.to(tl.int64) * stride_nh
            new_valid = row_valid & (offs_m % queries_per_kv_head == 0)
            _prefetch_l2(tl.where(new_valid[:, None], K_NEW + new_rows[:, None] + offs_new_line[None, :], K_NEW),
                         BY_LOADS)
            _prefetch_l2(tl.where(new_valid[:, None], V_NEW + new_rows[:, None] + offs_new_line[None, :], V_NEW),
                         BY_LOADS)


@triton.jit
def _row_lines(T, HEAD_DIM: tl.constexpr):
    """Element offsets of the 128-byte lines of a ``HEAD_DIM``-element row of ``T``'s dtype: one prefetch each (a
    power-of-two count; an e4m3 D = 64 row is one, half a line)."""
    BITS: tl.constexpr = T.dtype.element_ty.primitive_bitwidth
    LINES: tl.constexpr = (HEAD_DIM * BITS // 8 + 127) // 128
    return tl.arange(0, LINES) * (128 * 8 // BITS)


@triton.jit
def _attend_tile(
    Q, K, V, O, LSE, SINKS, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, CACHE_BATCH_IDX, PAGE_TABLE, BLOCK_COUNT,
    NON_FINITE_FLAGS, ANY_NON_FINITE, K_NEW, V_NEW, SEQUSED_Q, LEFTPAD_K, Q_DESCALE, K_DESCALE, V_DESCALE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_os, stride_ob, stride_oq, stride_oh,
    stride_ls, stride_lb, stride_lq, stride_lh,
    stride_page_table, stride_nb, stride_ns, stride_nh,
    stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
    seqlen_q, seqlen_k, num_heads, queries_per_kv_head, page_size,
    softmax_scale, softcap, left, right, chunk,
    tile, batch_head, split, num_tiles, num_splits,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    IS_VARLEN_Q: tl.constexpr, IS_VARLEN_K: tl.constexpr, HAS_SEQLENS_K: tl.constexpr,
    HAS_CACHE_BATCH_IDX: tl.constexpr, IS_PAGED: tl.constexpr, PACK_GQA: tl.constexpr,
    IS_SPLIT: tl.constexpr, STORE_LSE: tl.constexpr, COUNT_BLOCKS: tl.constexpr, UPCAST: tl.constexpr,
    SINGLE_LOOP: tl.constexpr, NON_FINITE_PASS: tl.constexpr, USE_TMA: tl.constexpr, MASK_EDGES_ONLY: tl.constexpr,
    APPEND_NEW: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr, HAS_LEFTPAD_K: tl.constexpr, HAS_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, FP8: tl.constexpr,
    APPEND_READS_INPUT: tl.constexpr = False, HEAD_N: tl.constexpr = 0,
    WIDEN: tl.constexpr = 0, PREFETCH_PAGES: tl.constexpr = False, KV_PAIR: tl.constexpr = 0,
    PREFETCH_PARTNER: tl.constexpr = 0, ROW_BOUNDS: tl.constexpr = False, RESCALE_THRESHOLD: tl.constexpr = 0.0,
    LATE_DEPENDENTS: tl.constexpr = 0, HEAD_DIM_V: tl.constexpr = 0, BLOCK_DV: tl.constexpr = 0,
    QV: tl.constexpr = False,
):
    """Attention of query tile ``tile`` of ``batch_head`` (one head, or one KV head's packed heads, or with
    ``KV_PAIR`` two KV heads' packed heads), over its share ``split`` of the KV loop; the body of
    ``_swa_fwd_kernel``'s programs (see there)."""
    tl.static_assert(HEAD_DIM_V == 0 or (KV_PAIR == NO_PAIR and HEAD_N == 0 and not APPEND_NEW and FP8 == NO_FP8),
                     "a value head_dim of its own: 16-bit inputs, no KV pairs, head block or fused append")
    if KV_PAIR != NO_PAIR:
        # The query heads of KV heads 2k and 2k + 1 are 2 x group consecutive heads: a PackGQA tile of that group.
        tl.static_assert(PACK_GQA and FP8 == FP8_KV and HEAD_N == 0 and not APPEND_NEW and not USE_TMA)
        rows_group = queries_per_kv_head * 2
    else:
        rows_group = queries_per_kv_head
    (batch, q_begin, seqlen_q, k_begin, seqlen_k, active, row_valid, row_pos, row_head, kv_head,
     kv_start, kv_end, masked_head_end, unmasked_end, num_blocks, first_pos, last_pos) = _tile_rows(
        tile, batch_head, seqlen_q, seqlen_k, num_heads, rows_group, left, right,
        CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, HAS_LEFT, HAS_RIGHT, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
        PACK_GQA, BLOCK_M, BLOCK_N, APPEND_NEW, SEQUSED_Q, HAS_SEQUSED_Q, LEFTPAD_K, HAS_LEFTPAD_K, chunk, HAS_CHUNK)
    program_index = (batch_head * num_tiles + tile) * num_splits + split
    if NON_FINITE_PASS == REDO_FLAGGED:
        if active:
            flag_ptrs = NON_FINITE_FLAGS + program_index.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
            active = tl.max(tl.load(flag_ptrs).to(tl.int32), 0) > 0
    if KV_PAIR != NO_PAIR:
        kv_head = kv_head * 2
    if active:
        block_begin = 0
        block_end = num_blocks
        if IS_SPLIT:
            # Each sequence splits its own loop, so short sequences leave trailing splits empty (LSE -inf).
            block_begin, block_end = _split_blocks(num_blocks, num_splits, split)

        q, q_mask, offs_d, batch64, batch_kv, k_base, v_base, page_table_row = _tile_inputs(
            Q, K, V, CACHE_BATCH_IDX, PAGE_TABLE, batch, q_begin, k_begin, row_valid, row_pos, row_head, kv_head,
            stride_qb, stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_page_table,
            HAS_CACHE_BATCH_IDX, UPCAST, BLOCK_D, HEAD_DIM, IS_PAGED, HAS_LEFTPAD_K)
        # V's (and the output's) head dimension when it differs from K's (HEAD_DIM_V > 0); else V is read as K.
        if HEAD_DIM_V != 0:
            offs_dv = tl.arange(0, BLOCK_DV)
        else:
            offs_dv = None
        qv = None
        if QV:
            # FlashAttention 3's qv ([.., H, Dv], q's layout), loaded once as q: through the fused append's K_NEW
            # and its strides, which qv calls pass it in (they take the value head_dim path, where the fused append
            # is off).
            tl.static_assert(HEAD_DIM_V != 0 and not APPEND_NEW, "qv: the value head_dim path, no fused append")
            qv_ptrs = (K_NEW + batch64 * stride_nb + (q_begin + row_pos).to(tl.int64)[:, None] * stride_ns
                       + row_head.to(tl.int64)[:, None] * stride_nh + offs_dv[None, :])
            qv = tl.load(qv_ptrs, mask=row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
            if UPCAST:
                qv = qv.to(tl.float32)
        pair_second = None
        offs_kv = offs_d
        if KV_PAIR != NO_PAIR:
            # The first of the two KV heads (k_base / v_base point at its rows, which the second's follow); each
            # row's own head is kv_head or kv_head + 1 (pair_second); K/V tiles span both heads' rows.
            if KV_PAIR == PAIR_TRANSPOSED:
                # The same, as a compile-time pattern (a pair's tile, 2 x group <= BLOCK_M rows of one query
                # position, is its program's only one: tile 0, rows from 0): the transposed loop's selects and
                # unused products fold away (_softmax_step_transposed).
                pair_second = tl.arange(0, BLOCK_M) % (2 * queries_per_kv_head) >= queries_per_kv_head
            else:
                pair_second = row_head // queries_per_kv_head != kv_head
            if KV_PAIR == PAIR_TWO_PRODUCTS or KV_PAIR == PAIR_INTERLEAVED:
                offs_kv = tl.arange(0, 2 * BLOCK_D)
        if PREFETCH_PAGES:
            # The page-table entries of the loop's first block, into L2 once the query load is issued: the loop
            # reads them only after the query tile has arrived (and, with FP8_KV, been converted), one dependent
            # memory round trip after the other; prefetched, the second is an L2 hit.
            if IS_PAGED and block_begin < block_end:
                first_key = kv_start + block_begin * BLOCK_N
                if HAS_LEFTPAD_K:
                    first_key += k_begin
                _prefetch_l2(page_table_row + first_key // page_size)
        sink = _tile_sink(SINKS, row_head, row_valid, HAS_SINKS, IS_SPLIT, BLOCK_M)
        value_scale = 1.0
        row_unscale = 1.0
        if FP8 == FP8_KV:
            if q.dtype == tl.bfloat16:
                q, row_unscale = _rows_to_fp16(q)
            elif q.dtype == tl.float8e4nv:
                # All-fp8 decodes on the two-KV-heads loop (configs.FP8_QKV_PAIRS): e4m3 q widened to fp16 at its
                # load (exact: every e4m3 value is an fp16), so the loop is FP8_KV's; q's descale, per row its own
                # KV head's, joins K's in the per-row score scale below (never applied to q before a rounding).
                tl.static_assert(KV_PAIR != NO_PAIR, "e4m3 q on the FP8_KV loop: two KV heads per program only")
                q = q.to(tl.float16)
                row_unscale = tl.load(Q_DESCALE + batch64 * stride_qdb
                                      + (kv_head.to(tl.int64) + pair_second.to(tl.int64)) * stride_qdh)
            else:  # fp16 queries: as they are
                row_unscale = tl.full([BLOCK_M], 1.0, tl.float32)
        elif FP8 == FP8_QKV and WIDEN == WIDEN_FENCED and BLOCK_M < 64:
            # Decode-sized tiles' e4m3 Q K^T runs as fp16 products anyway (mma v2: Triton widens both operands);
            # widened here and fenced, q and K (_block_scores) take 16-bit operand layouts too (exact: e4m3 values
            # are fp16 values). Larger tiles keep the e4m3 warpgroup product.
            q = _fence_16bit(q.to(tl.float16))
        if FP8 != NO_FP8:
            # Descales ``[B, Hk]``: one per sequence and KV head, so one per program (a PackGQA tile holds one KV
            # head). Scores are q.k * q_descale * k_descale * softmax_scale: the product folds into the scale the
            # loop applies anyway; V's descale scales the normalized output (both exact up to one rounding).
            kv_head64 = kv_head.to(tl.int64)
            if KV_PAIR != NO_PAIR:
                # Per row, its own KV head's (with the row's power of two, which FP8_KV applies per row anyway).
                row_kv_head = kv_head64 + pair_second.to(tl.int64)
                row_unscale = row_unscale * tl.load(K_DESCALE + batch64 * stride_kdb + row_kv_head * stride_kdh)
                value_scale = tl.load(V_DESCALE + batch64 * stride_vdb + row_kv_head * stride_vdh)
            else:
                softmax_scale = softmax_scale * tl.load(K_DESCALE + batch64 * stride_kdb + kv_head64 * stride_kdh)
                if FP8 == FP8_QKV:
                    softmax_scale = softmax_scale * tl.load(Q_DESCALE + batch64 * stride_qdb
                                                            + kv_head64 * stride_qdh)
                value_scale = tl.load(V_DESCALE + batch64 * stride_vdb + kv_head64 * stride_vdh)
        new_source = 0
        if APPEND_NEW:
            new_source = batch64 * stride_nb + q_begin.to(tl.int64) * stride_ns + kv_head.to(tl.int64) * stride_nh
        if APPEND_NEW and not APPEND_READS_INPUT:
            # Write the new tokens this program will read (its share of the loop) before reading them: every
            # program that reads a new token writes it (identical bytes, also from the other query heads' programs
            # without PackGQA), so no program waits on another. The barrier makes the CTA's writes visible to its
            # own loads. Each new token is the diagonal key of its own query, so some program writes it.
            # (APPEND_READS_INPUT: the single loop reads them from K_NEW / V_NEW and writes them itself.)
            _write_new_tokens(
                K_NEW, V_NEW, k_base, v_base, batch64, q_begin, kv_head, seqlen_k - seqlen_q,
                tl.maximum(kv_start + block_begin * BLOCK_N, seqlen_k - seqlen_q),
                tl.minimum(kv_start + block_end * BLOCK_N, kv_end), offs_d, batch_kv, page_table_row, stride_kb,
                stride_ks, stride_vb, stride_vs, stride_nb, stride_ns, stride_nh, page_size, IS_PAGED, HEAD_DIM,
                BLOCK_M if BLOCK_M < BLOCK_N else BLOCK_N)
            tl.debug_barrier()
        k_desc = None
        v_desc = None
        if USE_TMA:
            # Rows are this sequence's keys up to the tile's last visible one (at least one row: a descriptor
            # may not be empty; a tile without keys loads nothing).
            visible_rows = tl.maximum(kv_end, 1)
            k_desc = tl.make_tensor_descriptor(k_base + batch_kv * stride_kb, shape=[visible_rows, HEAD_DIM],
                                               strides=[stride_ks, 1], block_shape=[BLOCK_N, BLOCK_D])
            if HEAD_DIM_V != 0:
                v_desc = tl.make_tensor_descriptor(v_base + batch_kv * stride_vb, shape=[visible_rows, HEAD_DIM_V],
                                                   strides=[stride_vs, 1], block_shape=[BLOCK_N, BLOCK_DV])
            else:
                v_desc = tl.make_tensor_descriptor(v_base + batch_kv * stride_vb, shape=[visible_rows, HEAD_DIM],
                                                   strides=[stride_vs, 1], block_shape=[BLOCK_N, BLOCK_D])
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        if KV_PAIR == PAIR_TRANSPOSED:
            # _softmax_step_transposed's state: the output transposed, the row sums' per-key terms; q transposed.
            l_i = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_D, BLOCK_M], dtype=tl.float32)
            q = tl.trans(q)
        elif HEAD_DIM_V != 0:
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        else:
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        visited = 0
        if NON_FINITE_PASS == REDO_FLAGGED:
            acc, l_i, m_i, visited = _attend_blocks(
                acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc, block_begin, block_end,
                kv_start, kv_end, offs_kv, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM, visited,
                True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, IS_PAGED, BLOCK_D != HEAD_DIM, UPCAST, False, BLOCK_N, USE_TMA,
                True, key_shift=k_begin, SHIFT_PAGED_KEYS=IS_PAGED and HAS_LEFTPAD_K, chunk=chunk, HAS_CHUNK=HAS_CHUNK,
                FP8=FP8, row_unscale=row_unscale, HEAD_N=HEAD_N, WIDEN=WIDEN, pair_second=pair_second,
                KV_PAIR=KV_PAIR, ROW_BOUNDS=ROW_BOUNDS, first_pos=first_pos, last_pos=last_pos,
                RESCALE_THRESHOLD=RESCALE_THRESHOLD,
                offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V, qv=qv, HAS_QV=QV)
        elif SINGLE_LOOP:
            # Short loops (small windows): one masked loop pipelines better than three loops of one or two blocks.
            # The one pass guards every block, or (2) only blocks whose values are not all finite, or (3) only blocks
            # whose plain product is not all finite.
            GUARD: tl.constexpr = (1 if NON_FINITE_PASS == GUARD_ONE_PASS else
                                   2 if NON_FINITE_PASS == GUARD_ONE_PASS_BRANCHED else
                                   3 if NON_FINITE_PASS == GUARD_ONE_PASS_CHECKED else 0)
            acc, l_i, m_i, visited = _attend_blocks(
                acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc, block_begin, block_end,
                kv_start, kv_end, offs_kv, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM, visited,
                True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, IS_PAGED, BLOCK_D != HEAD_DIM, UPCAST, COUNT_BLOCKS,
                BLOCK_N, USE_TMA, GUARD, masked_head_end, unmasked_end, MASK_EDGES_ONLY,
                k_begin, IS_PAGED and HAS_LEFTPAD_K, chunk, HAS_CHUNK, FP8=FP8, row_unscale=row_unscale, K_NEW=K_NEW,
                V_NEW=V_NEW, new_source=new_source, first_new=seqlen_k - seqlen_q, stride_ns=stride_ns,
                READ_NEW=APPEND_NEW and APPEND_READS_INPUT, HEAD_N=HEAD_N, WIDEN=WIDEN,
                pair_second=pair_second, KV_PAIR=KV_PAIR, ROW_BOUNDS=ROW_BOUNDS, first_pos=first_pos,
                last_pos=last_pos, offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V, qv=qv,
                HAS_QV=QV)
        else:
            # Masked head blocks, unmasked interior, masked tail: each clipped to this split's share of the loop.
            k_partner = 0
            v_partner = 0
            chunk_slot = 0
            if PREFETCH_PARTNER == PREFETCH_TWIN:
                # The other KV head of this one's 128-byte lines (FP8_PREFETCH_PARTNER): head h ^ 1.
                twin = ((kv_head ^ 1) - kv_head).to(tl.int64)
                k_partner = twin * stride_kh
                v_partner = twin * stride_vh
            elif KV_PAIR == PAIR_TWO_LOADS or KV_PAIR == PAIR_TRANSPOSED:
                # The second KV head of the pair (its tiles are loaded on their own: see _attend_blocks).
                k_partner = stride_kh
                v_partner = stride_vh
            elif PREFETCH_PARTNER == PREFETCH_CHUNK:
                # KV head h asks for the h-th of each page's Hk chunks: from KV head 0's row of slot
                # h * page_size / Hk on.
                k_partner = -kv_head.to(tl.int64) * stride_kh
                v_partner = -kv_head.to(tl.int64) * stride_vh
                chunk_slot = kv_head * (page_size // (num_heads // queries_per_kv_head))
            acc, l_i, m_i, visited = _attend_blocks(
                acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc, block_begin,
                tl.minimum(block_end, masked_head_end),
                kv_start, kv_end, offs_kv, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM, visited,
                True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, IS_PAGED, BLOCK_D != HEAD_DIM, UPCAST, COUNT_BLOCKS,
                BLOCK_N, USE_TMA, key_shift=k_begin, SHIFT_PAGED_KEYS=IS_PAGED and HAS_LEFTPAD_K, chunk=chunk,
                HAS_CHUNK=HAS_CHUNK, FP8=FP8, row_unscale=row_unscale, WIDEN=WIDEN,
                pair_second=pair_second, KV_PAIR=KV_PAIR, k_partner=k_partner, v_partner=v_partner,
                chunk_slot=chunk_slot, PREFETCH_PARTNER=PREFETCH_PARTNER,
                offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V, qv=qv, HAS_QV=QV)
            acc, l_i, m_i, visited = _attend_blocks(
                acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc,
                tl.maximum(block_begin, masked_head_end),
                tl.minimum(block_end, unmasked_end),
                kv_start, kv_end, offs_kv, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM, visited,
                False, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, IS_PAGED, BLOCK_D != HEAD_DIM, UPCAST, COUNT_BLOCKS,
                BLOCK_N, USE_TMA, key_shift=k_begin, SHIFT_PAGED_KEYS=IS_PAGED and HAS_LEFTPAD_K, chunk=chunk,
                HAS_CHUNK=HAS_CHUNK, FP8=FP8, row_unscale=row_unscale, WIDEN=WIDEN,
                pair_second=pair_second, KV_PAIR=KV_PAIR, k_partner=k_partner, v_partner=v_partner,
                chunk_slot=chunk_slot, PREFETCH_PARTNER=PREFETCH_PARTNER,
                offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V, qv=qv, HAS_QV=QV)
            acc, l_i, m_i, visited = _attend_blocks(
                acc, l_i, m_i, q, row_pos, k_base, v_base, k_desc, v_desc,
                tl.maximum(block_begin, unmasked_end), block_end,
                kv_start, kv_end, offs_kv, batch_kv, page_table_row, stride_kb, stride_ks, stride_vb, stride_vs,
                page_size, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, HEAD_DIM, visited,
                True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, IS_PAGED, BLOCK_D != HEAD_DIM, UPCAST, COUNT_BLOCKS,
                BLOCK_N, USE_TMA, key_shift=k_begin, SHIFT_PAGED_KEYS=IS_PAGED and HAS_LEFTPAD_K, chunk=chunk,
                HAS_CHUNK=HAS_CHUNK, FP8=FP8, row_unscale=row_unscale, WIDEN=WIDEN,
                pair_second=pair_second, KV_PAIR=KV_PAIR, k_partner=k_partner, v_partner=v_partner,
                chunk_slot=chunk_slot, PREFETCH_PARTNER=PREFETCH_PARTNER,
                offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V, qv=qv, HAS_QV=QV)
        if KV_PAIR == PAIR_TRANSPOSED:
            acc = tl.trans(acc)
            l_i = tl.sum(l_i, 0)
        if LATE_DEPENDENTS == 2:
            # (Set only with PDL.) The next kernel may launch while this program finishes its rows and stores them.
            let_dependents_launch(True)

        if HEAD_DIM_V != 0:
            # The output's rows span V's head dimension.
            q_mask = row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
            offs_d = offs_dv
        _finish_tile(
            acc, l_i, m_i, visited, O, LSE, sink, BLOCK_COUNT, NON_FINITE_FLAGS, ANY_NON_FINITE,
            stride_os, stride_ob, stride_oq, stride_oh, stride_ls, stride_lb, stride_lq, stride_lh,
            split, program_index, batch64, q_begin, row_valid, row_pos, row_head, q_mask, offs_d,
            HAS_SINKS, IS_SPLIT, STORE_LSE, COUNT_BLOCKS, NON_FINITE_PASS, BLOCK_M, value_scale)


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "chunk", "num_tiles", "num_work"])
def _swa_fwd_kernel(
    Q, K, V, O, LSE, SINKS, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, CACHE_BATCH_IDX, PAGE_TABLE, BLOCK_COUNT,
    NON_FINITE_FLAGS, ANY_NON_FINITE, K_NEW, V_NEW, SEQUSED_Q, LEFTPAD_K, Q_DESCALE, K_DESCALE, V_DESCALE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_os, stride_ob, stride_oq, stride_oh,
    stride_ls, stride_lb, stride_lq, stride_lh,
    stride_page_table, stride_nb, stride_ns, stride_nh,
    stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
    seqlen_q, seqlen_k, num_heads, queries_per_kv_head: tl.constexpr, page_size: tl.constexpr,
    softmax_scale, softcap, left, right,
    # chunk last: between right and num_tiles it moved the scalars after it by 4 bytes, and one 64-bit constant
    # load of two of them became two loads (prefill: one more SASS instruction; scripts/compare_kernel_builds.py).
    num_tiles, num_splits, num_work, chunk,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    IS_VARLEN_Q: tl.constexpr, IS_VARLEN_K: tl.constexpr, HAS_SEQLENS_K: tl.constexpr,
    HAS_CACHE_BATCH_IDX: tl.constexpr, IS_PAGED: tl.constexpr, PACK_GQA: tl.constexpr,
    IS_SPLIT: tl.constexpr, STORE_LSE: tl.constexpr, COUNT_BLOCKS: tl.constexpr, UPCAST: tl.constexpr,
    SINGLE_LOOP: tl.constexpr, NON_FINITE_PASS: tl.constexpr, USE_TMA: tl.constexpr, USE_PDL: tl.constexpr,
    MASK_EDGES_ONLY: tl.constexpr, APPEND_NEW: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr,
    HAS_LEFTPAD_K: tl.constexpr, HAS_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    FP8: tl.constexpr = NO_FP8, APPEND_READS_INPUT: tl.constexpr = False, HEAD_N: tl.constexpr = 0,
    WIDEN: tl.constexpr = 0, PREFETCH_PAGES: tl.constexpr = False, KV_PAIR: tl.constexpr = 0,
    PRELOAD_L2: tl.constexpr = 0, PREFETCH_PARTNER: tl.constexpr = 0, ROW_BOUNDS: tl.constexpr = False,
    RESCALE_THRESHOLD: tl.constexpr = 0.0, STAMPS: tl.constexpr = 0, LATE_DEPENDENTS: tl.constexpr = 0,
    HEADS_ON_X: tl.constexpr = False, HEAD_DIM_V: tl.constexpr = 0, BLOCK_DV: tl.constexpr = 0,
    QV: tl.constexpr = False,
):
    """Grid: (query tiles, batch * heads-per-batch, splits), or with HEADS_ON_X (more (sequence, head) pairs than a
    grid's second dimension takes, 65535) (batch * heads-per-batch, query tiles, splits); the redo pass: a few
    persistent programs.

    Each program computes the attention of one tile of BLOCK_M rows: positions of one head, or with PACK_GQA the
    (position, head) pairs of one KV head. Its KV loop starts at the tile's first visible key and runs over
    ceil(span / BLOCK_N) blocks (a 1/num_splits share of them with IS_SPLIT, whose partial results, without
    sinks, are merged by ``combine``). Switches: window sides, softcap, sinks, varlen q/k, per-sequence key
    lengths (SEQLENS_K), cache_batch_idx, paged KV, PackGQA, split-KV, LSE, block counting (tests), the
    non-finite isolation pass, fp8 (e4m3) K/V or q/K/V with per-(sequence, KV head) descales (FP8), and
    (experimental) masking only the edge blocks of the single loop and appending the new tokens of a KV-cache call
    (APPEND_NEW: each program first writes those it will read). The group size
    (``queries_per_kv_head``) and ``page_size`` are compile-time constants (one compile per model shape): a PackGQA
    row's position and head, and a token's page and slot, are shifts and masks instead of integer divisions
    (compiled W(127,0) prefill: 131 fewer instructions before the KV loop of every tile, 2503 -> 2215 in all).

    Non-finite isolation: 0 * NaN is NaN, so in P @ V a non-finite value row reaches every row of the block,
    also those that cannot see its key. The main pass (NON_FINITE_PASS = FLAG_NON_FINITE) flags each row whose
    accumulator holds a NaN, and raises ANY_NON_FINITE; a second launch of a few persistent programs
    (REDO_FLAGGED) exits unless it is raised, else redoes the flagged tiles with the guarded loop, which keeps
    the NaN or inf in exactly the rows whose window holds it. The guarded loop takes V through registers, so it
    lives in its own launch: inside the main kernel, even unused, it cost 5-20% (docs/notes/performance-log.md).

    STAMPS (a diagnostic, 0 = off: nothing of it compiled): the address of _common's stamp buffer; each main-pass
    program records when it started, passed the PDL wait, had its first K row (paged calls with per-sequence
    lengths: a load of the row its loop reads first, through the same length and page-table entry) and ended.
    LATE_DEPENDENTS (main pass; SPLIT_LATE_DEPENDENTS): the next kernel may launch only once each program has
    stored its results (1) or finished its KV loop (2), not right after its wait.
    HEAD_DIM_V > 0 (FlashAttention 3's ``headdim_v``; 16-bit inputs): V and O have a head_dim of their own,
    HEAD_DIM_V padded to BLOCK_DV (no KV pairs, head block, fused append or L2 preload); 0 (every launch with equal
    head dims): V and O as K, so those launches compile as before.
    QV (FlashAttention 3's ``qv``, MLA's second query term; with HEAD_DIM_V > 0, Dv equal to D or not): scores
    ``(q k^T + qv v^T) * softmax_scale``; qv ``[.., H, HEAD_DIM_V]`` (q's layout) comes in K_NEW with its token
    strides in stride_nb / stride_ns / stride_nh (the fused append, their other user, is off on that path). False
    (every other launch): nothing of it compiled.
    """
    # The grid's axes of query tiles and of (sequence, head) pairs (HEADS_ON_X: swapped, see the docstring).
    TILE_AXIS: tl.constexpr = 1 if HEADS_ON_X else 0
    HEAD_AXIS: tl.constexpr = 0 if HEADS_ON_X else 1
    tl.static_assert(STAMPS == 0 or not HEADS_ON_X, "the stamps diagnostic takes the grid's usual axes")
    tl.static_assert(HEAD_DIM_V == 0 or PRELOAD_L2 == 0, "the L2 preload reads V's rows as K's")
    if STAMPS != 0:
        stamp_start = time_stamp(tl.program_id(1))
    if PRELOAD_L2 != 0:
        # Before the wait: L2 prefetches only (see PRELOAD_L2); the main pass of a paged PackGQA call.
        _preload_tile_l2(Q, K, V, SEQLENS_K, PAGE_TABLE, K_NEW, V_NEW, SINKS, stride_qb, stride_qs, stride_qh,
                         stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_page_table,
                         stride_nb, stride_ns, stride_nh, seqlen_q, num_heads, queries_per_kv_head, page_size, left,
                         right, tl.num_programs(TILE_AXIS) - 1 - tl.program_id(TILE_AXIS), tl.program_id(HEAD_AXIS),
                         tl.program_id(2), num_splits, HAS_LEFT, HAS_RIGHT, HAS_SINKS, APPEND_NEW, BLOCK_M, BLOCK_N,
                         HEAD_N, HEAD_DIM, PRELOAD_L2, Q_DESCALE, K_DESCALE, V_DESCALE, stride_qdb, stride_qdh,
                         stride_kdb, stride_kdh, stride_vdb, stride_vdh, FP8,
                         # Without PDL only under the interpreter (the plan's rule): loads instead of PTX there.
                         BY_LOADS=not USE_PDL)
    if LATE_DEPENDENTS != 0:
        wait_only_for_previous_grid(USE_PDL)
    else:
        wait_for_previous_grid(USE_PDL)
    if STAMPS != 0:
        stamp_waited = time_stamp(tl.program_id(1))
        stamp_first = stamp_waited
        if (STAMPS & 1) != 0 and IS_PAGED and HAS_SEQLENS_K and PACK_GQA and IS_SPLIT:
            stamp_first = _first_key_stamp(K, SEQLENS_K, PAGE_TABLE, stride_kb, stride_ks, stride_kh,
                                           stride_page_table, num_heads, queries_per_kv_head, page_size, num_splits,
                                           BLOCK_N)
    if NON_FINITE_PASS == REDO_FLAGGED or NON_FINITE_PASS == REDO_SCANNED:
        # Nearly always nothing is flagged: one load, and the few programs exit (a full grid of early exits
        # measured +23% on a small-window prefill). Otherwise they walk every tile and redo the flagged ones.
        # REDO_SCANNED (a tile per program): no raised flag; the tile's own flags decide (in _attend_tile).
        raised = True
        if NON_FINITE_PASS == REDO_FLAGGED:
            raised = tl.load(ANY_NON_FINITE) != 0
            # The raised flag and its count of readers (ANY_NON_FINITE[1]) are kept between calls (``_Isolation``):
            # the last program to read the flag zeroes both for the next call, after every program has read it
            # (the atomic is acq_rel: each program's read comes before its arrival, every arrival before the reset).
            arrived = tl.atomic_add(ANY_NON_FINITE + 1, 1)
            if arrived == tl.num_programs(0) - 1:
                tl.store(ANY_NON_FINITE, 0)
                tl.store(ANY_NON_FINITE + 1, 0)
        if raised:
            for work in range(tl.program_id(0), num_work, tl.num_programs(0)):
                split = work % num_splits
                tile = (work // num_splits) % num_tiles
                batch_head = work // (num_splits * num_tiles)
                _attend_tile(
                    Q, K, V, O, LSE, SINKS, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, CACHE_BATCH_IDX, PAGE_TABLE,
                    BLOCK_COUNT, NON_FINITE_FLAGS, ANY_NON_FINITE, K_NEW, V_NEW, SEQUSED_Q, LEFTPAD_K, Q_DESCALE,
                    K_DESCALE, V_DESCALE, stride_qb,
                    stride_qs, stride_qh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_os, stride_ob,
                    stride_oq, stride_oh, stride_ls, stride_lb, stride_lq, stride_lh, stride_page_table, stride_nb,
                    stride_ns, stride_nh, stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
                    seqlen_q, seqlen_k,
                    num_heads, queries_per_kv_head, page_size, softmax_scale, softcap, left, right, chunk,
                    tile, batch_head, split, num_tiles, num_splits,
                    HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, HAS_SINKS, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
                    HAS_CACHE_BATCH_IDX, IS_PAGED, PACK_GQA, IS_SPLIT, STORE_LSE, COUNT_BLOCKS, UPCAST,
                    SINGLE_LOOP, REDO_FLAGGED, USE_TMA, MASK_EDGES_ONLY, APPEND_NEW, HAS_SEQUSED_Q, HAS_LEFTPAD_K,
                    HAS_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, FP8, HEAD_N=HEAD_N, WIDEN=WIDEN,
                    KV_PAIR=KV_PAIR, ROW_BOUNDS=ROW_BOUNDS, RESCALE_THRESHOLD=RESCALE_THRESHOLD,
                    HEAD_DIM_V=HEAD_DIM_V, BLOCK_DV=BLOCK_DV, QV=QV,
                )
    else:
        # Longest tiles first (causal: the last query tiles see the most keys), so the tail of the grid is short.
        _attend_tile(
            Q, K, V, O, LSE, SINKS, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, CACHE_BATCH_IDX, PAGE_TABLE,
            BLOCK_COUNT, NON_FINITE_FLAGS, ANY_NON_FINITE, K_NEW, V_NEW, SEQUSED_Q, LEFTPAD_K, Q_DESCALE, K_DESCALE,
            V_DESCALE, stride_qb, stride_qs,
            stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_os, stride_ob,
            stride_oq, stride_oh, stride_ls, stride_lb, stride_lq, stride_lh, stride_page_table, stride_nb, stride_ns,
            stride_nh, stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh, seqlen_q, seqlen_k,
            num_heads, queries_per_kv_head, page_size, softmax_scale, softcap, left, right, chunk,
            tl.num_programs(TILE_AXIS) - 1 - tl.program_id(TILE_AXIS), tl.program_id(HEAD_AXIS), tl.program_id(2),
            num_tiles, num_splits, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, HAS_SINKS, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
            HAS_CACHE_BATCH_IDX, IS_PAGED, PACK_GQA, IS_SPLIT, STORE_LSE, COUNT_BLOCKS, UPCAST, SINGLE_LOOP,
            NON_FINITE_PASS, USE_TMA, MASK_EDGES_ONLY, APPEND_NEW, HAS_SEQUSED_Q, HAS_LEFTPAD_K, HAS_CHUNK, BLOCK_M,
            BLOCK_N, BLOCK_D, HEAD_DIM, FP8, APPEND_READS_INPUT, HEAD_N, WIDEN, PREFETCH_PAGES, KV_PAIR,
            PREFETCH_PARTNER, ROW_BOUNDS, LATE_DEPENDENTS=LATE_DEPENDENTS, HEAD_DIM_V=HEAD_DIM_V, BLOCK_DV=BLOCK_DV,
            QV=QV,
        )
        if STAMPS != 0:
            program = (tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + tl.program_id(0)
            record_stamps(STAMPS, 0, program, stamp_start, stamp_waited, stamp_first)
        if LATE_DEPENDENTS == 1:
            let_dependents_launch(USE_PDL)


@triton.jit
def _split_blocks(num_blocks, num_splits, split):
    """Blocks ``[begin, end)`` of a loop of ``num_blocks`` that split ``split`` of ``num_splits`` takes:
    ``ceil(num_blocks / num_splits)`` each, so the last splits are short or empty (256 blocks in 24 splits: 23 of
    11 and one of 3)."""
    per_split = tl.cdiv(num_blocks, num_splits)
    begin = tl.minimum(split * per_split, num_blocks)
    end = tl.minimum(begin + per_split, num_blocks)
    return begin, end


@triton.jit
def _first_key_stamp(K, SEQLENS_K, PAGE_TABLE, stride_kb, stride_ks, stride_kh, stride_page_table, num_heads,
                     queries_per_kv_head: tl.constexpr, page_size: tl.constexpr, num_splits, BLOCK_N: tl.constexpr):
    """STAMPS only (a paged PackGQA split decode program: grid (1, batch * KV heads, splits)): the time stamp taken
    once the first K row of this program's share of the loop has arrived, loaded through the same chain as the loop's
    (sequence length, page-table entry, row), issued alongside it."""
    kv_heads = num_heads // queries_per_kv_head
    batch = tl.program_id(1) // kv_heads
    kv_head = tl.program_id(1) % kv_heads
    seqlen = tl.load(SEQLENS_K + batch)
    block_begin, _ = _split_blocks(tl.cdiv(seqlen, BLOCK_N), num_splits, tl.program_id(2))
    first_key = tl.minimum(block_begin * BLOCK_N, tl.maximum(seqlen - 1, 0))
    page = tl.load(PAGE_TABLE + batch.to(tl.int64) * stride_page_table + first_key // page_size)
    row = tl.load(K + page.to(tl.int64) * stride_kb + (first_key % page_size) * stride_ks
                  + kv_head.to(tl.int64) * stride_kh)
    return time_stamp(row.to(tl.float32).to(tl.int32, bitcast=True))


# Tensors that _swa_fwd_kernel takes before its scalars (Q ... V_DESCALE); BLOCK_COUNT's position among them.
_FORWARD_TENSORS = 21
_BLOCK_COUNT_SLOT = 11


def _slots(present: tuple[bool, ...], skip: tuple[int, ...] = ()) -> tuple[int, ...]:
    """``Launch`` slots for a call passing the placeholder, then the ``present`` tensors in order: each kernel
    tensor's argument (0, the placeholder, for the absent ones and those in ``skip``)."""
    slots, passed = [], 0
    for index, here in enumerate(present):
        passed += here
        slots.append(passed if here and index not in skip else 0)
    return tuple(slots)


def _widens_pairs(device: torch.device) -> bool:
    """Whether e4m3 tiles widen through ``cvt.rn.f16x2.e4m3x2`` in inline PTX (``_widen_e4m3``): with
    ``WIDEN_E4M3_PAIRS``, compiled for sm_89 and later (the instruction's minimum), not under the interpreter,
    which runs no PTX."""
    if not WIDEN_E4M3_PAIRS or device.type != "cuda" or _compat.interpreter_enabled():
        return False
    properties = device_properties(device)
    return (properties.major, properties.minor) >= (8, 9)


def _fenced_mode(kv_pair: int = 0) -> int:
    """The fenced widening asked for (``FP8_FENCED_WIDENING``'s values; 0: none): ``FP8_FENCED_WIDENING``, or on the
    two-KV-heads loop (``kv_pair`` PAIR_TWO_LOADS or PAIR_TRANSPOSED)
    ``configs.FP8_PAIR_FENCED_WIDENING``."""
    return FP8_FENCED_WIDENING or (configs.FP8_PAIR_FENCED_WIDENING if kv_pair in _TWO_LOADS else 0)


def _e4m3_widening(device: torch.device, kv_pair: int = 0) -> int:
    """``_widen_e4m3``'s mode for this device: WIDEN_FENCED (WIDEN_FENCED_VALUES) with ``FP8_FENCED_WIDENING`` 1
    (2), or on the two-KV-heads loop (``kv_pair`` PAIR_TWO_LOADS or PAIR_TRANSPOSED) with
    ``configs.FP8_PAIR_FENCED_WIDENING`` 1 (2)
    (compiled only: PTX); WIDEN_IN_PAIRS where ``_widens_pairs``, else WIDEN_TO."""
    fenced = _fenced_mode(kv_pair)
    if fenced and device.type == "cuda" and not _compat.interpreter_enabled():
        return _FENCED_MODES[fenced]
    return WIDEN_IN_PAIRS.value if _widens_pairs(device) else WIDEN_TO.value


def _prefetches_partner(device: torch.device) -> int:
    """The L2 prefetch mode of e4m3 split loops (``FP8_PREFETCH_PARTNER``): PTX, so compiled only, not under the
    interpreter."""
    if not FP8_PREFETCH_PARTNER or device.type != "cuda" or _compat.interpreter_enabled():
        return 0
    return FP8_PREFETCH_PARTNER


def _persistent_programs(device: torch.device) -> int:
    """Programs of the redo pass: one per SM (a few under the interpreter)."""
    if device.type != "cuda":
        return 4
    return device_properties(device).multi_processor_count


def _estimated_triton_us(rows: int, seqlen_q: int, seqlen_k: int, left: int, right: int, head_dim: int) -> float:
    """The Triton kernels' GPU time for ``rows`` (query row, head) pairs, from their visible keys (the mean over 33
    evenly spaced rows, bottom-right aligned) and the rates the H200 measured at 16K (prefill benchmark,
    2026-12-03): ~150 TFLOP/s on windows of at most 256 keys, ~450 on longer ones and causal."""
    small = 0 <= left <= 256 and 0 <= right <= 256
    return 4.0 * head_dim * rows * _mean_visible_keys(seqlen_q, seqlen_k, left, right) / (150e6 if small else 450e6)


@functools.lru_cache(maxsize=4096)
def _mean_visible_keys(seqlen_q: int, seqlen_k: int, left: int, right: int) -> float:
    """The mean of the keys that 33 evenly spaced query rows see (bottom-right aligned): kept per lengths and window,
    since a plan family asks the Gluon decision again for each call (``_PlanFamily.lookup``)."""
    samples = [row * (seqlen_q - 1) // 32 for row in range(33)]
    return sum(visible_span(row, row, seqlen_q, seqlen_k, left, right)[1] for row in samples) / len(samples)


def _use_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows_per_tile: int, left: int, right: int,
               *, seqlen_q: int, seqlen_k: int, **features) -> bool:
    """Whether the Gluon sm_90 kernel serves this call: ``SWATTN_GLUON=0`` never; ``1`` wherever it supports the
    call; by default where it supports it and was measured faster than the Triton kernels (H200, 16K prefill, dense
    and over 16-token pages, docs/notes/2026-12-03-gluon-forward.md): every window above 256 keys and causal at
    head_dim 64 and 128, small windows at head_dim 128, packed small windows at head_dim 64 (four one-warpgroup
    programs per SM: W(127,0) gpt-oss with sinks 191.7 us vs 219.7 on the Triton kernels), and head_dim 256
    (W(4095,0) over pages: 3.6x faster); unpacked small windows at head_dim 64 and decode-sized tiles stay on the
    Triton kernels tuned for them. And only for calls with enough GPU work to hide the Gluon call's host time
    (``gluon_fwd.EAGER_MIN_US``): a smaller call made eagerly would wait on the host."""
    mode = gluon_fwd.GLUON_MODE
    if mode == "0" or not q.is_cuda:
        return False
    if mode != "1":
        small_window = 0 <= left <= 256 and 0 <= right <= 256
        if rows_per_tile < gluon_fwd.MIN_ROWS or (small_window and q.shape[-1] == 64
                                                  and not features.get("pack_gqa")):
            return False
        rows = (q.shape[0] if features.get("varlen_q") else q.shape[0] * q.shape[1]) * q.shape[-2]
        if _estimated_triton_us(rows, seqlen_q, seqlen_k, left, right, q.shape[-1]) < gluon_fwd.EAGER_MIN_US:
            return False
    return gluon_fwd.unsupported_reason(q, k, v, **features) is None


def _guards_in_one_pass(isolate: bool, use_gluon: bool, config, num_work: int, device: torch.device) -> bool:
    """Whether a plan isolates non-finite rows in its main pass (GUARD_ONE_PASS: small grids on the single masked
    loop) instead of flagging them for a redo launch (``_ForwardPlan``; ``rebased`` asks it again)."""
    return (isolate and not use_gluon and config.single_loop and not config.mask_edges_only
            and config.block_m <= (GUARD_ONE_PASS_MAX_ROWS_HEAD_BLOCK if config.head_block else GUARD_ONE_PASS_MAX_ROWS)
            and num_work <= (_persistent_programs(device) if GUARD_ONE_PASS_MAX_WORK is None
                             else GUARD_ONE_PASS_MAX_WORK))


def _scans_flags(isolate: bool, use_gluon: bool, num_work: int, programs: int) -> bool:
    """Whether the redo launch scans every tile's flag (one program per tile) rather than the raised flag's
    persistent programs (``_ForwardPlan``; ``rebased`` asks it again)."""
    return isolate and not use_gluon and num_work <= (programs if SCAN_FLAGS_MAX_WORK is None else SCAN_FLAGS_MAX_WORK)


def _gluon_decision(q, k, v, inputs: tuple) -> bool:
    """``_use_gluon`` for this q, k, v with a plan's ``gluon_inputs`` (a tuple: a plan is kept, and a dict per plan
    cost ~3 us more per plan made and dropped, dev CPU)."""
    (rows_per_tile, left, right, seqlen_q, seqlen_k, varlen_q, varlen_k, paged, indexed, seqlens_k, num_splits, append,
     count_blocks, softcap, pack_gqa) = inputs
    return _use_gluon(q, k, v, rows_per_tile, left, right, seqlen_q=seqlen_q, seqlen_k=seqlen_k, varlen_q=varlen_q,
                      varlen_k=varlen_k, paged=paged, indexed=indexed, seqlens_k=seqlens_k, num_splits=num_splits,
                      append=append, count_blocks=count_blocks, softcap=softcap, pack_gqa=pack_gqa)


class _Families(PlanCache):
    """``_PlanFamily`` objects by their key, counting the plans they hold (``plans``): a family keeps a plan per
    length, so the count, not the families, bounds the memory (~7.5 KB per plan, dev CPU)."""

    # Plans kept in all families together: the oldest families are dropped past it (the plans a cache of 512 plans
    # held before families, times 8).
    MAX_TOTAL_PLANS = 4096

    def __init__(self):
        super().__init__()
        self.plans = 0

    def add(self, key, family):
        if len(self) >= self.max_plans:
            self.plans -= len(self[next(iter(self))].plans)
        return super().add(key, family)

    def make_room(self, keep) -> None:
        """Drop the oldest families but ``keep`` until a plan more fits the total (``keep``'s oldest plans when it is
        the only one left)."""
        while self.plans >= self.MAX_TOTAL_PLANS:
            for key, family in self.items():
                if family is not keep:
                    del self[key]
                    self.plans -= len(family.plans)
                    break
            else:
                del keep.plans[next(iter(keep.plans))]
                self.plans -= 1

    def clear(self):
        super().clear()
        self.plans = 0


# attention_forward's plans, per call signature (up to its lengths).
_PLANS = _Families()
# gluon_fwd.forward as shipped: a plan launches its kept Gluon launch itself only while this is the module's forward
# (a tuning probe that wraps it to pass its settings, or a test that counts calls, gets every call).
_GLUON_FORWARD = gluon_fwd.forward

# The non-finite isolation's buffers (the rows' flags, int8, and the raised flag with its count of redo programs
# that read it, int32 [2]) kept between calls, per (device, stream, thread): allocating them on every call cost an
# allocation and a zeroing kernel launch (``torch.zeros``: 11.8 us of host time on the H200 host, 2026-12-03), a
# fifth of a 4K prefill's host time. Reusing them is sound because
# - the main pass writes the flags of every tile the redo pass reads (the active ones; both passes of a call see the
#   same data), so stale flags of earlier calls are never read;
# - the raised flag is zeroed by the REDO_FLAGGED pass that read it (its last program), so the next call on the same
#   stream finds it zero; a flag left raised (the REDO_SCANNED pass never reads it) only makes one later redo pass
#   walk its tiles' flags, never skips a flagged tile;
# - calls on one stream run in order, and calls on other streams or from other threads (whose main and redo
#   launches could interleave on one stream) get their own buffers. Under CUDA-graph capture a call allocates
#   fresh ones (the graph then owns them, as any allocation made while capturing).
# The Gluon kernel's main pass keeps the same contract: it writes the flags of every 64-row group holding a row of
# a sequence (the redo pass's tiles, block_m = ROWS_PER_CONSUMER) and raises the flag with an atomic max.
_ISOLATION_BUFFERS = PlanCache(64)


def _isolation_buffers(device: torch.device, rows: int, stream=_launch.ASK) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-finite flags (at least ``rows``) and the raised flag for a call on the current stream (see above);
    ``stream`` as ``kept_buffer`` takes it."""
    key = stream_key(device) if stream is _launch.ASK else stream
    if key is None or rows > _launch.KEEP_MAX_BYTES:
        return (torch.empty(rows, device=device, dtype=torch.int8),
                torch.zeros(2, device=device, dtype=torch.int32))
    buffers = _ISOLATION_BUFFERS.get(key)
    if buffers is None or buffers[0].numel() < rows:
        raised = (torch.zeros(2, device=device, dtype=torch.int32) if buffers is None else buffers[1])
        buffers = _ISOLATION_BUFFERS.add(key, (torch.empty(rows, device=device, dtype=torch.int8), raised))
    return buffers


def settings() -> tuple:
    """The module-level settings a forward plan is made with (part of its key): non-finite isolation, its
    scanning-redo and one-pass bounds, PDL, a forced config, the Gluon mode and its all-fp8 switch, the fused
    append's reads, the page-table prefetch, the e4m3 widening in pairs, two KV heads per e4m3 decode program, the
    L2 preload before the wait, the e4m3 split loop's prefetch beyond its own rows, the fenced e4m3 widening, the
    head-block tile's row-bound mask, the Gluon kernel's lazy rescale (which the redo pass after it follows), the
    two-KV-heads default (configs.FP8_KV_PAIRS, its threshold, shape and loop, FP8_QKV_PAIRS), the diagnostic
    stamp buffer, the merge's early dependents and the split launches' late dependents.

    Every eager call builds this tuple (``swattn._replay``'s key), so each tuple display here stays at most 30 items:
    CPython builds a longer one through a list (31 items took this function from 0.24 to 0.41 us, dev CPU, Python
    3.11; tests/test_replay.py checks the bytecode)."""
    fp8_pairs = (configs.FP8_KV_PAIRS, configs.FP8_PAIR_MIN_KEYS_PER_SPLIT, configs.FP8_PAIR_SPLIT_BLOCKS[16],
                 configs.FP8_PAIR_SHAPE_BLOCKS, configs.FP8_PAIR_FENCED_WIDENING, configs.FP8_PAIR_TRANSPOSED,
                 configs.FP8_QKV_PAIRS)
    return (ISOLATE_NON_FINITE, SCAN_FLAGS_MAX_WORK, GUARD_ONE_PASS_MAX_WORK, GUARD_ONE_PASS_MAX_ROWS,
            GUARD_ONE_PASS_MAX_ROWS_HEAD_BLOCK, GUARD_BRANCH, GUARD_CHECKS_OUTPUT, _compat.PDL,
            configs.forced_config_in_use(), gluon_fwd.GLUON_MODE, gluon_fwd.FP8_QK, APPEND_READS_INPUT,
            PREFETCH_PAGE_TABLE, WIDEN_E4M3_PAIRS, FP8_TWO_KV_HEADS, PRELOAD_L2, PRELOAD_L2_SPLITS,
            FP8_PREFETCH_PARTNER, FP8_FENCED_WIDENING, ROW_BOUND_MASK, gluon_fwd.RESCALE_THRESHOLD,
            gluon_fwd.rescale_threshold_for, gluon_fwd.consumers_for, fp8_pairs, _common.STAMPS_ADDRESS,
            combine.EARLY_DEPENDENTS, SPLIT_LATE_DEPENDENTS)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float,
    left: int,
    right: int,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
    seqlens_k: torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    pack_gqa: bool = False,
    num_splits: int = 1,
    return_lse: bool = True,
    count_blocks: bool = False,
    new_k: torch.Tensor | None = None,
    new_v: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    attention_chunk: int = 0,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward kernel on already-checked arguments; returns ``(out, lse, block_counts)``.

    Layouts: q ``[B, Sq, H, D]`` or varlen ``[total_q, H, D]`` (``cu_seqlens_q``); k/v ``[B_k, Sk, Hk, D]``,
    varlen ``[total_k, Hk, D]`` (``cu_seqlens_k``) or paged ``[num_pages, page_size, Hk, D]`` (``page_table``).
    ``seqlens_k [B]`` (int32) overrides the per-sequence key count. lse is ``[B, H, Sq]`` or ``[H, total_q]``,
    fp32. ``block_counts`` (only with ``count_blocks``) holds, per program, the KV blocks its loop visited.
    ``new_k``/``new_v`` (KV cache only; experimental, see ``ops.FUSED_APPEND``): one new token per query, laid out
    like q with ``Hk`` heads and equal strides, written into the cache at ``seqlens_k[b] ...`` by the programs
    that read them; ``seqlens_k`` then holds the lengths before the append.
    ``seqused_q [B]`` (varlen q): queries each sequence uses; rows past it are neither read nor written (out and
    lse keep whatever the allocation held there). ``cache_leftpad [B]`` (KV cache): sequence b's keys are cache
    slots ``[cache_leftpad[b], seqlens_k[b])``. ``attention_chunk`` > 0: a query sees only keys of its own chunk
    (``swattn.window.is_visible``), intersected with the window.
    fp8: k/v in ``torch.float8_e4m3fn`` with q in fp16/bf16, or q too (out is then bf16); ``q_descale`` (fp8 q),
    ``k_descale``, ``v_descale``: float32 ``[B, Hk]`` (any strides; None = 1).
    ``qv`` (FlashAttention 3's, MLA's second query term; 16-bit or float32, not with ``new_k``): laid out like q
    with v's head_dim (unit stride in it); the scores are ``(q k^T + qv v^T) * softmax_scale``.

    What depends only on the call's signature (config, grid, strides, constexprs, compiled kernels) is planned
    once per signature (``_ForwardPlan``); a repeated call allocates its outputs and launches.
    """
    plan = forward_plan(
        q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
        seqlens_k=seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table, pack_gqa=pack_gqa,
        num_splits=num_splits, return_lse=return_lse, count_blocks=count_blocks, new_k=new_k, new_v=new_v,
        seqused_q=seqused_q, cache_leftpad=cache_leftpad, attention_chunk=attention_chunk, q_descale=q_descale,
        k_descale=k_descale, v_descale=v_descale, qv=qv)
    return plan.run(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, cache_batch_idx, page_table, new_k,
                    new_v, seqused_q, cache_leftpad, q_descale, k_descale, v_descale, qv=qv)


def forward_plan(q, k, v, *, softmax_scale, left, right, softcap=0.0, sinks=None, cu_seqlens_q=None,
                 max_seqlen_q=None, cu_seqlens_k=None, max_seqlen_k=None, seqlens_k=None, cache_batch_idx=None,
                 page_table=None, pack_gqa=False, num_splits=1, return_lse=True, count_blocks=False, new_k=None,
                 new_v=None, seqused_q=None, cache_leftpad=None, attention_chunk=0, q_descale=None, k_descale=None,
                 v_descale=None, qv=None) -> _ForwardPlan:
    """The plan of one ``attention_forward`` call signature (made once, then looked up); its ``run`` serves every
    call of the signature. Varlen lengths are not part of the signature: a ``_PlanFamily`` (keyed on everything
    else) holds the plans of each ``(max_seqlen_q, max_seqlen_k)`` and, where the launches do not depend on them,
    serves every total of query and key rows with one plan (``_PlanFamily.lookup``)."""
    varlen_q, varlen_k = cu_seqlens_q is not None, cu_seqlens_k is not None
    # Varlen q's rows (total_q), and those of the tensors laid out like q, only as the classes the plans tell apart
    # (0, 1, more: a plan without rows launches nothing, and one row of any stride is contiguous); varlen k's too.
    q_key, new_k_key, new_v_key, qv_key = (
        _rows_free(q, new_k, new_v, qv) if varlen_q
        else (tensor_signature(q), tensor_signature(new_k), tensor_signature(new_v), tensor_signature(qv)))
    # A dense KV cache (``flash_attn_with_kvcache`` without pages; a transformers DynamicCache grows by a token per
    # decode step), and dense q, k and v without one (``flash_attn_func``: a prefill or a training step of a new
    # length): their lengths and strides only as the family's per-plan key (``_PlanFamily``, ``_ForwardPlan.
    # rebased``).
    dense = (not varlen_q and not varlen_k and page_table is None and new_k is None and qv is None
             and k.dtype != torch.float8_e4m3fn)
    dense = 0 if not dense else _DENSE_KV if seqlens_k is not None else _DENSE_QKV if cache_batch_idx is None else 0
    if dense == _DENSE_QKV:
        q_key = _length_free(q)
    k_key, v_key = (_rows_free(k, v) if varlen_k else (_length_free(k), _length_free(v)) if dense
                    else (tensor_signature(k), tensor_signature(v)))
    key = (q_key, k_key, v_key, tensor_signature(sinks),
           tensor_signature(cu_seqlens_q), tensor_signature(cu_seqlens_k), tensor_signature(seqlens_k),
           tensor_signature(cache_batch_idx), tensor_signature(page_table), new_k_key,
           new_v_key, tensor_signature(seqused_q), tensor_signature(cache_leftpad), attention_chunk,
           q.device, softmax_scale, left, right, softcap,
           pack_gqa, num_splits, return_lse, count_blocks, settings(), tensor_signature(q_descale),
           tensor_signature(k_descale), tensor_signature(v_descale), qv_key)
    family = _PLANS.get(key)
    if family is None:
        family = _PLANS.add(key, _PlanFamily(varlen_q, varlen_q and not return_lse and num_splits == 1, dense))
    plan = family.lookup(q, k, v, max_seqlen_q, max_seqlen_k, rebase=True)
    if plan is None:
        plan = family.add(q, k, max_seqlen_q, max_seqlen_k, _ForwardPlan(
            q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_k=max_seqlen_k, seqlens_k=seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table,
            pack_gqa=pack_gqa, num_splits=num_splits, return_lse=return_lse, count_blocks=count_blocks,
            new_k=new_k, seqused_q=seqused_q, cache_leftpad=cache_leftpad, attention_chunk=attention_chunk,
            q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, qv=qv), v)
    return plan


def _length_free(t) -> tuple:
    """A dense tensor's signature without its length (dim 1) and strides: batch, the rest of its shape, dtype and
    16-byte alignment (the plans of a family are kept per length and strides: ``_PlanFamily``'s ``dense``)."""
    shape = t.shape
    return shape[0], shape[2:], t.dtype, t.data_ptr() % 16 == 0


def _rows_free(first, *others) -> tuple:
    """Packed tensors' signatures without their rows (dim 0): ``first``'s row class (0, 1, more) and for each of
    ``others`` (None when absent) whether it has ``first``'s rows, then the rest of each one's shape, its strides,
    dtype and 16-byte alignment."""
    rows = first.shape[0]
    return ((first.shape[1:], first.stride(), first.dtype, first.data_ptr() % 16 == 0, min(rows, 2)),
            *(None if t is None else (t.shape[0] == rows, t.shape[1:], t.stride(), t.dtype, t.data_ptr() % 16 == 0)
              for t in others))


def plans() -> list[_ForwardPlan]:
    """Every forward plan kept (oldest first): for tests and benchmarks that inspect what was launched."""
    return [plan for family in _PLANS.values() for plan in family.plans.values()]


# _PlanFamily's marker for a max_seqlen_q whose Gluon decision is not known yet (no plan with launches made).
_UNKNOWN = object()


def _dense_kv_key(q, k, v) -> tuple:
    """A dense KV cache's length and strides (k and v): what ``_length_free`` leaves out of the family's key."""
    return k.shape[1], k.stride(), v.shape[1], v.stride()


def _dense_qkv_key(q, k, v) -> tuple:
    """Dense q's, k's and v's lengths and strides: what ``_length_free`` leaves out of the family's key."""
    return q.shape[1], q.stride(), k.shape[1], k.stride(), v.shape[1], v.stride()


# _PlanFamily's ``dense``: which tensors its key holds without their lengths and strides (0: none), each the function
# that gives what it leaves out (the family's plans are kept by it).
_DENSE_KV, _DENSE_QKV = _dense_kv_key, _dense_qkv_key


class _PlanFamily:
    """The forward plans of one call signature up to its varlen lengths (``forward_plan``'s key: every tensor's
    shape, strides, dtype and alignment, those of varlen q and k and of the tensors laid out like them without
    their rows, and every other argument but ``max_seqlen_q`` and ``max_seqlen_k``).

    Per ``(max_seqlen_q, max_seqlen_k)`` (which set the tiles' rows, the keys a tile sees, the config, the grid's
    tile count and the non-finite isolation, all planned by ``_ForwardPlan`` as for any call), the plans by the
    rows of q and k where a plan depends on them: the LSE's layout ``[H, total_q]``, the split-KV scratch, and the
    Gluon kernel (chosen by the call's rows, and whose descriptors hold q's and k's shapes). Without those
    (``token_free``: no LSE, one split, the Triton kernels) a plan's launches do not depend on the totals (its
    strides, config, grid and constexprs come from the family's signature and the two lengths; ``run`` sizes the
    output from q; the Triton kernel's descriptors span one sequence), so one plan serves every total: a serving
    engine's mixed batches, whose q and lengths change on every step, reuse plans. Whether the Gluon kernel serves
    a call is asked again for each call (``_use_gluon`` with the arguments the plan asked it with, which depend only
    on the family and the lengths) and picks the plan. Dense q keeps its whole shape in the key (one plan per
    family and lengths).

    A dense KV cache (``dense`` ``_DENSE_KV``: ``flash_attn_with_kvcache`` without pages, append or qv, 16-bit K/V)
    is in the key without its length and strides, and its plans are kept per length and strides of k and v; dense q,
    k and v without a KV cache's lengths (``_DENSE_QKV``: ``flash_attn_func`` without qv, 16-bit K/V) likewise, its
    plans kept per lengths and strides of q, k and v. A new length's plan is the latest one's with new scalars and
    grids where every choice that the lengths enter comes out the same (``_ForwardPlan.rebased``), else made from
    nothing."""

    __slots__ = ("varlen_q", "token_free", "dense", "template", "plans", "gluon_inputs", "reference",
                 "backward_templates", "__weakref__")

    # Plans kept per family (the oldest dropped past it).
    MAX_PLANS = 4096

    def __init__(self, varlen_q: bool, token_free: bool, dense=0):
        self.varlen_q, self.token_free = varlen_q, token_free
        # dense: the family's key holds dense tensors without their lengths and strides; its plans are kept per
        # ``dense(q, k, v)`` (those lengths and strides), and ``template`` (the latest plan that can be rebased)
        # makes those of new lengths (``_ForwardPlan.rebased``).
        self.dense, self.template = dense, None
        # ((max_seqlen_q, max_seqlen_k), rows key) -> plan; the lengths -> the Gluon decision's arguments (None:
        # not asked)
        self.plans: dict = {}
        self.gluon_inputs: dict = {}
        self.reference = None  # a weak reference to the family, made for its first plan (``_ForwardPlan.family``)
        # The latest backward plan of the family's forward plans by the gradients' key (``swattn.ops``' eager
        # autograd path): a new length's backward plan takes its compiled kernels where Triton compiles alike.
        self.backward_templates: dict = {}

    def _rows_key(self, q, k, use_gluon: bool):
        """The key of a call's plan among its lengths': (q's row class, the Gluon kernel, the rows of q and k where
        the plan depends on them)."""
        tokens = q.shape[0]
        return min(tokens, 2), use_gluon, None if self.token_free and not use_gluon else (tokens, k.shape[0])

    def lookup(self, q, k, v, max_seqlen_q, max_seqlen_k=None, rebase: bool = False) -> _ForwardPlan | None:
        """The plan for a call of this family with these q and k (their rows) and lengths, or None (not made).
        ``rebase``: a dense family's plan of new lengths made from its template where it can be
        (``_ForwardPlan.rebased``) and kept."""
        lengths = max_seqlen_q, max_seqlen_k
        if not self.varlen_q:
            if not self.dense:
                return self.plans.get((lengths, None))
            plan = self.plans.get((lengths, self.dense(q, k, v)))
            if plan is None and rebase and REBASE_PLANS and self.template is not None:
                plan = self.template.rebased(q, k, v)
                if plan is not None:
                    self.add(q, k, max_seqlen_q, max_seqlen_k, plan, v)
            return plan
        if q.shape[0] == 0:  # launches nothing: no Gluon decision
            return self.plans.get((lengths, self._rows_key(q, k, False)))
        gluon_inputs = self.gluon_inputs.get(lengths, _UNKNOWN)
        if gluon_inputs is _UNKNOWN:
            return None  # no plan with launches made for these lengths (or its decision's inputs dropped)
        use_gluon = gluon_inputs is not None and _gluon_decision(q, k, v, gluon_inputs)
        return self.plans.get((lengths, self._rows_key(q, k, use_gluon)))

    def add(self, q, k, max_seqlen_q, max_seqlen_k, plan: _ForwardPlan, v=None) -> _ForwardPlan:
        lengths = max_seqlen_q, max_seqlen_k
        plans = self.plans
        if len(plans) >= self.MAX_PLANS:
            del plans[next(iter(plans))]
            _PLANS.plans -= 1
        _PLANS.make_room(self)
        if plan.launches:
            if len(self.gluon_inputs) >= self.MAX_PLANS:
                self.gluon_inputs.clear()  # lookups of the lengths dropped make their plans again
            self.gluon_inputs[lengths] = plan.gluon_inputs
        key = lengths, (self._rows_key(q, k, plan.use_gluon) if self.varlen_q
                        else self.dense(q, k, v) if self.dense else None)
        if self.dense and plan.rebase is not None and plan.rebase.dense_q == (self.dense is _DENSE_QKV):
            self.template = plan
        _PLANS.plans += key not in plans
        plans[key] = plan
        # A weak reference: the family holds its plans, and a cycle would leave an evicted family (a varlen prefill
        # makes one per call) to the cyclic garbage collector (+9 us per such call, dev CPU).
        if self.reference is None:
            self.reference = weakref.ref(self)
        plan.family = self.reference
        return plan


class _Rebase:
    """What ``_ForwardPlan.rebased`` needs of a plan it may make others from: the choices that depend on the lengths,
    as the plan made them, and where the scalars that follow from the lengths are among the main launch's."""

    __slots__ = ("dense_q", "left_given", "right_given", "left", "right", "seqlen_q", "rows_per_query",
                 "attention_chunk", "num_splits", "config_arguments", "chosen_config", "keys_per_split", "use_tma",
                 "isolate", "out_like_dtype", "programs_per_split", "heads_on_x", "q_strides", "k_strides_at",
                 "lengths_at", "programs")

    def __init__(self, *values):
        for name, value in zip(self.__slots__, values, strict=True):
            setattr(self, name, value)


class _ForwardPlan:
    """The launches of one forward call signature, chosen once: config, grid, strides, constexprs (``Launch``
    objects). ``run`` allocates the outputs (and the split and non-finite buffers) and launches.

    ``backward_plans``: the backward plans of this forward's calls, by the gradients' signature (kept here by
    ``swattn.ops``' eager autograd path: everything else a backward plan depends on is this plan's signature)."""

    def __init__(self, q, k, v, *, softmax_scale, left, right, softcap, sinks, cu_seqlens_q, max_seqlen_q,
                 cu_seqlens_k, max_seqlen_k, seqlens_k, cache_batch_idx, page_table, pack_gqa, num_splits,
                 return_lse, count_blocks, new_k, seqused_q, cache_leftpad, attention_chunk, q_descale=None,
                 k_descale=None, v_descale=None, qv=None):
        self.backward_plans: dict = {}
        varlen_q = cu_seqlens_q is not None
        varlen_k = cu_seqlens_k is not None
        paged = page_table is not None
        num_heads, head_dim = q.shape[-2], q.shape[-1]
        # V's head_dim (FlashAttention 3's headdim_v), which may differ from q / k's: out is [..., head_dim_v].
        head_dim_v = v.shape[-1]
        # FlashAttention 3's qv (MLA's second query term) takes the value head_dim path (HEAD_DIM_V / BLOCK_DV),
        # whatever Dv: its tile spans V's head dimension, and that path keeps the calls off every variant without it
        # (Gluon kernel, head block, fused append, KV pairs, L2 preload).
        has_qv = qv is not None
        own_value_dim = head_dim_v != head_dim or has_qv
        if own_value_dim and (k.dtype == torch.float8_e4m3fn or new_k is not None):
            raise ValueError(f"v: a value head_dim ({head_dim_v}) other than the key's ({head_dim}), or qv, takes "
                             "16-bit K/V without the fused append (the interface routes such calls elsewhere)")
        num_kv_heads = k.shape[-2]
        group = num_heads // num_kv_heads
        if varlen_q:
            batch = cu_seqlens_q.numel() - 1
            seqlen_q = max_seqlen_q
            tokens_per_batch = q.shape[0]
        else:
            batch, seqlen_q = q.shape[0], q.shape[1]
            tokens_per_batch = seqlen_q
        if varlen_k:
            seqlen_k = max_seqlen_k
        elif paged:
            seqlen_k = page_table.shape[1] * k.shape[1]
        else:
            seqlen_k = k.shape[1]

        left_given, right_given = left, right  # (a dense call of another length normalises them again: ``rebased``)
        # A side that covers the whole tensor is unbounded (as FlashAttention 3 normalises it); this also keeps the
        # kernel's int32 window arithmetic far from overflow for huge sides such as 2**31 - 1.
        if left >= seqlen_k:
            left = -1
        if right >= seqlen_q:
            right = -1
        fp8 = NO_FP8.value if k.dtype != torch.float8_e4m3fn else (
            FP8_QKV.value if q.dtype == torch.float8_e4m3fn else FP8_KV.value)
        self.fp8 = fp8 != NO_FP8.value
        if fp8 != FP8_QKV.value:
            q_descale = None  # checked by the interface: given only for e4m3 q
        # FlashAttention 3's rule: fp8 queries give a bf16 output.
        out_dtype = torch.bfloat16 if fp8 == FP8_QKV.value else q.dtype
        self.out_shape, self.dtype, self.device = (*q.shape[:-1], head_dim_v), out_dtype, q.device
        # Allocations cost host time (H200 host, torch 2.11: torch.empty(shape, device=, dtype=) 6.1 us for the
        # decode's out, torch.empty_like 2.9 us): out is empty_like(q) when that has out's layout and dtype.
        self.out_like_q = q.is_contiguous() and out_dtype == q.dtype and not own_value_dim
        self.lse_shape = None
        if return_lse:
            self.lse_shape = (num_heads, q.shape[0]) if varlen_q else (batch, num_heads, seqlen_q)
        self.launches = self.use_gluon = False
        # What _use_gluon was asked with besides q, k and v (``_gluon_decision``'s inputs; None: not asked): they
        # depend only on the plan's family and max_seqlen_q, so _PlanFamily asks it again for each call's q.
        self.gluon_inputs = None
        self.varlen_q = varlen_q
        self.rebase = None  # what ``rebased`` needs (set below for the plans it can serve)
        if batch == 0 or seqlen_q == 0 or q.numel() == 0:
            return
        self.launches = True

        # An e4m3 tl.dot needs a reduction of at least 32 elements.
        block_d = max(32 if fp8 == FP8_QKV.value else 16, next_power_of_2(head_dim))
        block_dv = max(16, next_power_of_2(head_dim_v)) if own_value_dim else block_d
        rows_per_tile = seqlen_q * group if pack_gqa else seqlen_q
        window_span = left + right + 1 if left >= 0 and right >= 0 else None
        if attention_chunk > 0:
            window_span = attention_chunk if window_span is None else min(window_span, attention_chunk)
        visible_keys = visible_span(0, seqlen_q - 1, seqlen_q, seqlen_k, left, right, attention_chunk)[1]
        keys_per_split = -(-visible_keys // num_splits)
        programs = batch * (num_kv_heads if pack_gqa else num_heads) * num_splits  # at least one tile each
        # forward_config's arguments around keys_per_split (``rebased`` asks it again with another key count).
        config_arguments = ((block_d, rows_per_tile, pack_gqa, window_span, q.element_size()),
                            (programs / _persistent_programs(q.device), paged),
                            dict(fp8_kv=fp8 != NO_FP8.value, value_dim_padded=block_dv, qv=has_qv))
        config = forward_config(*config_arguments[0], keys_per_split, *config_arguments[1], **config_arguments[2])
        chosen_config = config
        if fp8 != NO_FP8.value:
            # The fp8 variants load through pointers (the descriptor path was not measured with e4m3 tiles).
            config = replace(config, tma=False)
        # The Gluon kernel has none of seqused_q, cache_leftpad, attention_chunk and a value head_dim of its own:
        # those calls stay on Triton's.
        gluon_features = (seqused_q is None and cache_leftpad is None and attention_chunk == 0
                          and not own_value_dim)
        if gluon_features:
            self.gluon_inputs = (rows_per_tile, left, right, seqlen_q, seqlen_k, varlen_q, varlen_k, paged,
                                 cache_batch_idx is not None, seqlens_k is not None, num_splits, new_k is not None,
                                 count_blocks, softcap > 0, pack_gqa)
            self.use_gluon = _gluon_decision(q, k, v, self.gluon_inputs)
        if self.use_gluon:
            # The Gluon kernel flags non-finite rows per warpgroup (64 rows): the redo pass (a Triton launch) takes
            # tiles of the same rows.
            config = replace(config, block_m=gluon_fwd.ROWS_PER_CONSUMER)
        if config.head_block and own_value_dim:
            config = replace(config, head_block=0)  # the head block loads V as K: the plain loop
        if config.head_block:
            # One block_n-key block and one head_block-key block cover a tile's keys only if it sees at most
            # block_n + head_block of them (forward_config picks it only then; a forced config must fit too).
            fits = not (not config.single_loop or config.mask_edges_only or num_splits > 1 or count_blocks
                        or self.use_gluon or keys_per_split > config.block_n + config.head_block)
            if not fits and configs.forced_config_in_use() is None:
                config = replace(config, head_block=0)  # the plain loop covers any span
            elif not fits:
                raise ValueError(f"config: head_block={config.head_block} needs the single loop of one split over at "
                                 f"most block_n + head_block = {config.block_n + config.head_block} keys, without "
                                 f"block counting (got {config}, {num_splits} splits, {keys_per_split} keys)")
            config = replace(config, tma=False)
        # Two KV heads per program (FP8_TWO_KV_HEADS): single-query PackGQA tiles (no isolation to do) over an e4m3
        # cache whose two heads' rows are adjacent (head stride = head_dim, unpadded), on the split loop.
        # The default's pairs replace a short split's single loop by their own split loop (configs.fp8_pair_config);
        # a forced mode (FP8_TWO_KV_HEADS) takes the split loop as it comes.
        # All-fp8 (e4m3 q) decodes take the default's pairs too with configs.FP8_QKV_PAIRS (configs.fp8_kv_pairs_fit's
        # e4m3_q decides): then launched as FP8_KV, whose kernel widens e4m3 q to fp16 at its load.
        e4m3_q = fp8 == FP8_QKV.value
        pairable = ((fp8 == FP8_KV.value or (e4m3_q and configs.FP8_QKV_PAIRS)) and pack_gqa and seqlen_q == 1
                    and not self.use_gluon
                    and 2 * rows_per_tile <= config.block_m and not own_value_dim
                    and num_kv_heads % 2 == 0 and block_d == head_dim and new_k is None and not count_blocks
                    and all(t.stride(-1) == 1 and t.stride(-2) == head_dim for t in (k, v)))
        split_loop_config = not config.single_loop and not config.head_block
        # (A forced mode with e4m3 q: only the modes that load each head's tiles on their own, as the default's.)
        self.kv_pair = (FP8_TWO_KV_HEADS if pairable and split_loop_config
                        and (not e4m3_q or FP8_TWO_KV_HEADS in _TWO_LOADS) else 0)
        if (pairable and not FP8_TWO_KV_HEADS and configs.forced_config_in_use() is None
                and configs.fp8_kv_pairs_fit(True, pack_gqa, left < 0 and attention_chunk == 0, rows_per_tile,
                                             seqlen_q, num_kv_heads, head_dim, True, paged, False, e4m3_q)
                and configs.fp8_pairs_taken(batch * num_kv_heads, visible_keys, _persistent_programs(q.device),
                                            num_splits, head_dim)):
            # The default (configs.FP8_KV_PAIRS): two KV heads per program where the automatic split count planned
            # them (interface.split_count asks configs.fp8_pair_split_count, which fp8_pairs_taken asks), on their
            # own block shape; its loop transposed with configs.FP8_PAIR_TRANSPOSED.
            self.kv_pair = PAIR_TRANSPOSED.value if configs.FP8_PAIR_TRANSPOSED else PAIR_TWO_LOADS.value
        if e4m3_q and self.kv_pair:
            fp8 = FP8_KV.value  # the pairs' loop; q_descale kept, the output bf16 (out_dtype above)
        if self.kv_pair in _TWO_LOADS and configs.forced_config_in_use() is None:
            # forced or by default: the pairs' block shape
            config = configs.fp8_pair_config(config, batch * num_kv_heads, visible_keys, head_dim)
        num_tiles = ceil_div(rows_per_tile * (2 if self.kv_pair else 1), config.block_m)
        # The split loop's L2 prefetch beyond its own e4m3 rows (FP8_PREFETCH_PARTNER): paged caches whose KV heads'
        # rows are 64 adjacent bytes and whose pages are contiguous, an even number of KV heads (the twin) or a page
        # size that they divide (the chunks); PTX, so not under the interpreter.
        split_loop = self.fp8 and paged and not config.single_loop and not self.kv_pair
        mode = _prefetches_partner(q.device) if split_loop else 0
        fa3_layout = mode and all(t.stride(-1) == 1 and t.stride(-2) * t.element_size() == 64 and head_dim == 64
                                  and t.stride(-3) == num_kv_heads * 64
                                  and t.stride(0) == k.shape[1] * num_kv_heads * 64 for t in (k, v))
        fits = num_kv_heads % 2 == 0 if mode == PREFETCH_TWIN.value else k.shape[1] % num_kv_heads == 0
        self.prefetch_partner = mode if fa3_layout and fits else 0
        programs_per_split = batch * ((num_kv_heads // 2 if self.kv_pair else num_kv_heads) if pack_gqa else num_heads)
        grid = (num_tiles, programs_per_split, num_splits)
        # More (sequence, head) pairs than a grid's second dimension takes (CUDA: 65535; e.g. an unpacked decode of
        # 1024 sequences x 64 heads): they go on the first axis (2**31 - 1), the tiles on the second. (The Gluon
        # kernel's persistent grid is one-dimensional.)
        heads_on_x = not self.use_gluon and programs_per_split > MAX_GRID_YZ
        if heads_on_x:
            if num_tiles > MAX_GRID_YZ:
                raise ValueError(
                    f"q: {num_tiles} query tiles x {programs_per_split} (sequence, head) pairs per launch: the "
                    f"kernel's grid takes at most {MAX_GRID_YZ} of one of them (CUDA's limit on a grid's second "
                    "dimension); split the call")
            grid = (programs_per_split, num_tiles, num_splits)
        if num_splits > 1 and (num_heads > MAX_GRID_YZ or (not varlen_q and batch > MAX_GRID_YZ)):
            # The merge's grid holds the heads and the sequences in its second and third dimensions (``combine``).
            raise ValueError(
                f"num_splits: {num_splits} splits need the merge, whose grid takes at most {MAX_GRID_YZ} heads and "
                f"{MAX_GRID_YZ} sequences (CUDA's limit), got {num_heads} heads, {batch} sequences; use num_splits=1")

        tokens = q.shape[0] if varlen_q else batch * seqlen_q
        # Outputs are allocated contiguous on every call: their strides are those of Layouts of their shapes.
        out = Layout(self.out_shape, q.device)
        lse = None if self.lse_shape is None else Layout(self.lse_shape, q.device)
        self.split_shapes = None
        if num_splits > 1:
            self.split_shapes = ((num_splits, tokens, num_heads, head_dim_v), (num_splits, tokens, num_heads))
            self.split_numel = tuple(math.prod(shape) for shape in self.split_shapes)
            out_target, lse_target = (Layout(shape, q.device) for shape in self.split_shapes)
            split_o, token_o, head_o, _ = out_target.stride()
            split_l, token_l, head_l = lse_target.stride()
            o_strides = (split_o, 0 if varlen_q else seqlen_q * token_o, token_o, head_o)
            l_strides = (split_l, 0 if varlen_q else seqlen_q * token_l, token_l, head_l)
            # The merge writes out as [tokens, H, D] (a view of dense out).
            self.combine = combine_launch(out_target, lse_target,
                                          out if varlen_q else out.view((tokens, num_heads, head_dim_v)),
                                          lse, sinks, tokens_per_batch, seqused_q)
        else:
            o_strides = (0, *token_strides(out, varlen_q))
            l_strides = (0, 0, 0, 0) if lse is None else (0, *lse_strides(lse, varlen_q))
            self.combine = None
        # A tile can mix rows that see a key with rows that do not only when it holds several query positions; a
        # single-query decode tile (PackGQA or not) cannot leak, and skips the flags and the second launch.
        isolate = ISOLATE_NON_FINITE and seqlen_q > 1
        num_work = grid[0] * grid[1] * grid[2]
        # Small grids on the single masked loop may isolate in the main pass itself (GUARD_ONE_PASS); otherwise
        # the main pass flags rows holding a NaN and a redo launch follows (``self.isolate``).
        self.guard_one_pass = _guards_in_one_pass(isolate, self.use_gluon, config, num_work, q.device)
        self.isolate = isolate and not self.guard_one_pass
        self.flag_rows = num_work * config.block_m
        self.block_count_shape = (num_work,) if count_blocks else None

        append_new = new_k is not None
        # Descriptor (async-proxy) loads would not see the programs' own plain stores of new tokens without a proxy
        # fence: appending programs load through pointers.
        self.use_tma = config.tma and not paged and not append_new and tma_compatible(k, v)
        use_pdl = pdl_enabled(q.device)
        # (``rebased`` replaces k's and v's strides and seqlen_k: their positions follow from these tuples.)
        strides = (
            *token_strides(q, varlen_q), *token_strides(k, varlen_k), *token_strides(v, varlen_k), *o_strides,
            *l_strides, page_table.stride(0) if paged else 0,
            # The new tokens' strides, or qv's (the kernel's QV reads it through K_NEW with them).
            *(token_strides(new_k, varlen_q) if append_new else token_strides(qv, varlen_q) if has_qv else (0, 0, 0)),
            *descale_strides(q_descale), *descale_strides(k_descale), *descale_strides(v_descale),
        )
        scalars = (
            *strides, seqlen_q, seqlen_k, num_heads, group, k.shape[1] if paged else 1,
            softmax_scale, softcap if softcap > 0 else 1.0, left, right,
            num_tiles, num_splits, num_work, max(attention_chunk, 1),
        )
        switches = dict(
            HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_SOFTCAP=softcap > 0, HAS_SINKS=sinks is not None,
            IS_VARLEN_Q=varlen_q, IS_VARLEN_K=varlen_k, HAS_SEQLENS_K=seqlens_k is not None,
            HAS_CACHE_BATCH_IDX=cache_batch_idx is not None, IS_PAGED=paged, PACK_GQA=pack_gqa,
            IS_SPLIT=num_splits > 1, STORE_LSE=num_splits > 1 or lse is not None,
            UPCAST=fp8 == NO_FP8.value and needs_upcast(q.dtype),  # fp8 products run in fp16 (and e4m3)
            SINGLE_LOOP=config.single_loop, USE_TMA=self.use_tma, USE_PDL=use_pdl,
            MASK_EDGES_ONLY=config.single_loop and config.mask_edges_only, APPEND_NEW=append_new,
            HAS_SEQUSED_Q=seqused_q is not None, HAS_LEFTPAD_K=cache_leftpad is not None,
            HAS_CHUNK=attention_chunk > 0, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=block_d,
            HEAD_DIM=head_dim, FP8=fp8, HEAD_N=config.head_block, ROW_BOUNDS=ROW_BOUND_MASK and config.head_block > 0,
            WIDEN=_e4m3_widening(q.device, self.kv_pair) if fp8 != NO_FP8.value else WIDEN_TO.value,
            KV_PAIR=self.kv_pair,
            # Launches with equal head dims leave these at their defaults (0: V as K), so they compile as before.
            **({"HEAD_DIM_V": head_dim_v, "BLOCK_DV": block_dv} if own_value_dim else {}),
            **({"QV": True} if has_qv else {}),
        )
        # The fused append reads the new tokens from k / v on the single masked loop (APPEND_READS_INPUT), in grids of
        # at most one program per SM: the row pointers cost registers (window decode (16, 128, 4, 1): 154 -> 206,
        # Triton 3.6), a resident program per SM that a larger grid could miss. The redo launch keeps the
        # write-then-read append (the main launch has written the cache by then).
        self.append_reads_input = (append_new and config.single_loop and APPEND_READS_INPUT
                                   and num_work <= _persistent_programs(q.device))
        # The L2 preload before the wait (PRELOAD_L2): only with PDL (nothing else lets a program start before the
        # previous kernel ends), on the paged PackGQA serving calls it was written for (fixed-length q, per-sequence
        # lengths, fp16 / bf16 or an e4m3 cache, no cache_batch_idx / cache_leftpad / attention_chunk, no TMA or
        # Gluon or KV pairs). (A power-of-two head_dim: the prefetches cover each row in a power-of-two count of
        # 128-byte lines.) Under the interpreter (no PDL, no PTX) the same calls take it with plain loads in place
        # of the prefetches (the kernel's BY_LOADS), so the CPU tests run its code and addresses.
        preloadable = ((use_pdl or _compat.interpreter_enabled()) and paged and pack_gqa and seqlens_k is not None
                       and not varlen_q and not varlen_k and block_d == head_dim and not own_value_dim
                       and cache_batch_idx is None and cache_leftpad is None and attention_chunk == 0
                       and not self.use_gluon and not self.use_tma and not self.kv_pair
                       and not config.mask_edges_only
                       and (PRELOAD_L2_SPLITS or (config.single_loop and num_splits == 1)))
        self.preload_l2 = PRELOAD_L2 if preloadable else 0
        self.config = config  # the main launch's block shape (for inspection)
        options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **pdl_launch_options(use_pdl),
                       **({"maxnreg": config.maxnreg} if config.maxnreg else {}))
        # plans: the Gluon launches gluon_fwd.forward planned for this signature (a dict: tuning probes pass it
        # other settings). gluon_launch: (gluon_fwd.planning_settings(), the launch) of the shipped choice, launched
        # here without gluon_fwd.forward's keyword plumbing while those settings hold and nothing wraps forward
        # (tuning probes wrap it to pass their settings).
        self.gluon_launch = None
        self.gluon_arguments = dict(
            softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
            batch=batch, pack_gqa=pack_gqa, o_strides=o_strides[1:],
            l_strides=l_strides[1:], plans={})
        # Which of the kernel's 21 tensors this signature passes (the others are the placeholder, q): ``run``
        # picks them from all 21 (absent ones None) and each Launch spreads them back (``Launch``'s slots).
        present = (True, True, True, True, self.split_shapes is not None or self.lse_shape is not None,
                   sinks is not None, varlen_q, varlen_k, seqlens_k is not None, cache_batch_idx is not None, paged,
                   count_blocks, self.isolate, self.isolate, append_new or has_qv, append_new, seqused_q is not None,
                   cache_leftpad is not None, self.fp8, self.fp8, self.fp8)
        self.pick = operator.itemgetter(*(i for i, passed in enumerate(present) if passed))
        self.main = Launch(_swa_fwd_kernel, grid, scalars,
                           dict(switches, COUNT_BLOCKS=count_blocks, APPEND_READS_INPUT=self.append_reads_input,
                                NON_FINITE_PASS=((GUARD_ONE_PASS_CHECKED if GUARD_CHECKS_OUTPUT else
                                                  GUARD_ONE_PASS_BRANCHED if GUARD_BRANCH else GUARD_ONE_PASS).value
                                                 if self.guard_one_pass else
                                                 FLAG_NON_FINITE.value if self.isolate else NO_ISOLATION.value),
                                PREFETCH_PAGES=(PREFETCH_PAGE_TABLE and paged and config.single_loop
                                                and q.is_cuda and not _compat.interpreter_enabled()),
                                PRELOAD_L2=self.preload_l2, PREFETCH_PARTNER=self.prefetch_partner,
                                STAMPS=_common.STAMPS_ADDRESS,
                                LATE_DEPENDENTS=(SPLIT_LATE_DEPENDENTS if use_pdl and num_splits > 1 and not varlen_q
                                                 and seqlen_q == 1 and not self.fp8 else 0),
                                **({"HEADS_ON_X": True} if heads_on_x else {})),
                           options, num_tensors=_FORWARD_TENSORS, slots=_slots(present))
        self.redo = None
        programs = _persistent_programs(q.device)
        # The Gluon kernel keeps the raised flag (its tiles' flags are not read per tile here).
        self.scan_flags = _scans_flags(self.isolate, self.use_gluon, num_work, programs)
        if self.isolate:
            redo_pass = REDO_SCANNED if self.scan_flags else REDO_FLAGGED
            # After the Gluon kernel, the redo pass keeps its running maxima as it does (the lazy rescale): a redone
            # row that cannot see the non-finite value gets the Gluon kernel's bits.
            threshold = (gluon_fwd.rescale_threshold_for(gluon_fwd.consumers_for(head_dim, pack_gqa, left, right))
                         if self.use_gluon else 0.0)
            self.redo = Launch(_swa_fwd_kernel, (min(num_work, programs) if not self.scan_flags else num_work,),
                               scalars, dict(switches, COUNT_BLOCKS=False, NON_FINITE_PASS=redo_pass.value,
                                             APPEND_READS_INPUT=False, PREFETCH_PAGES=False,
                                             RESCALE_THRESHOLD=threshold), options,
                               num_tensors=_FORWARD_TENSORS, slots=_slots(present, skip=(_BLOCK_COUNT_SLOT,)))
        # A dense call's plans of other lengths are this one with other scalars and grids (``rebased``) where every
        # other choice above is the same for them: the Triton kernel's plans (no Gluon, whose descriptors hold the
        # shapes), 16-bit K/V (whose pair and prefetch choices read k's strides), no pages, append or qv; with a
        # dense KV cache (``seqlens_k``, q fixed) no redo launch; with dense q (``flash_attn_func``: q, k and v of
        # other lengths) one split (the merge's launch is planned on the rows).
        dense_kv = seqlens_k is not None and self.redo is None
        dense_q = seqlens_k is None and cache_batch_idx is None and self.split_shapes is None
        if ((dense_kv or dense_q) and not varlen_q and not varlen_k and not paged and not append_new and not has_qv
                and not self.fp8 and not self.use_gluon and not self.kv_pair and not self.prefetch_partner
                and not self.preload_l2):
            q_strides = len(token_strides(q, varlen_q))
            self.rebase = _Rebase(
                dense_q, left_given, right_given, left, right, seqlen_q, group if pack_gqa else 1, attention_chunk,
                num_splits, config_arguments, chosen_config, keys_per_split, self.use_tma, isolate,
                out_dtype == q.dtype and not own_value_dim, programs_per_split, heads_on_x, q_strides,
                q_strides, len(strides), programs)

    def rebased(self, q, k, v) -> _ForwardPlan | None:
        """The plan of a call of this plan's family (``_PlanFamily.dense``) whose dense tensors have other lengths
        or strides (a dense KV cache's k and v; or ``flash_attn_func``'s q, k and v), made from this one, or None
        where it would differ from a fresh plan in more than its scalars, grids and the sizes ``run`` allocates:
        each choice that the lengths enter is made again with the functions ``__init__`` makes it with (the window's
        normalisation, the tile's rows, the visible keys and split size, ``forward_config``, the TMA check, the
        Gluon decision, the tile count, the non-finite isolation's pass) and must equal this plan's; then the new
        plan has the new strides (q, k, v, and the outputs planned contiguous), lengths, tile and work counts in its
        scalars and grids, and its launches reuse the compiled kernels only where Triton specializes those scalars as
        before (``Launch.with_scalars``)."""
        rebase = self.rebase
        dense_q = rebase.dense_q
        seqlen_q, seqlen_k = q.shape[1] if dense_q else rebase.seqlen_q, k.shape[1]
        if dense_q and (seqlen_q == 0 or q.numel() == 0):
            return None  # launches nothing: a plan of its own
        left = -1 if rebase.left_given >= seqlen_k else rebase.left_given
        right = -1 if rebase.right_given >= seqlen_q else rebase.right_given
        if left != rebase.left or right != rebase.right:
            return None
        chunk, num_splits = rebase.attention_chunk, rebase.num_splits
        rows_per_tile = seqlen_q * rebase.rows_per_query
        keys_per_split = -(-visible_span(0, seqlen_q - 1, seqlen_q, seqlen_k, left, right, chunk)[1] // num_splits)
        head, tail, options = rebase.config_arguments
        config = forward_config(head[0], rows_per_tile, *head[2:], keys_per_split, *tail, **options)
        # (A head block's fit reads the split's key count: it must be the same.)
        if config != rebase.chosen_config or (config.head_block and keys_per_split != rebase.keys_per_split):
            return None
        if (self.config.tma and tma_compatible(k, v)) != rebase.use_tma:
            return None
        gluon_inputs = self.gluon_inputs
        if gluon_inputs is not None:
            gluon_inputs = (rows_per_tile, *gluon_inputs[1:3], seqlen_q, seqlen_k, *gluon_inputs[5:])
            if _gluon_decision(q, k, v, gluon_inputs):
                return None
        config = self.config
        num_tiles = ceil_div(rows_per_tile, config.block_m)
        if rebase.heads_on_x and num_tiles > MAX_GRID_YZ:
            return None  # a fresh plan raises
        grid = ((rebase.programs_per_split, num_tiles, num_splits) if rebase.heads_on_x
                else (num_tiles, rebase.programs_per_split, num_splits))
        num_work = num_tiles * rebase.programs_per_split * num_splits
        isolate = ISOLATE_NON_FINITE and seqlen_q > 1
        if isolate != rebase.isolate or _guards_in_one_pass(isolate, False, config, num_work,
                                                            q.device) != self.guard_one_pass:
            return None
        scan_flags = _scans_flags(self.isolate, False, num_work, rebase.programs)
        if scan_flags != self.scan_flags:
            return None
        plan = copy.copy(self)
        plan.backward_plans = {}
        plan.gluon_inputs = gluon_inputs
        scalars = list(self.main.scalars)
        at = rebase.k_strides_at
        scalars[at:at + 6] = (*token_strides(k, False), *token_strides(v, False))
        at = rebase.lengths_at
        scalars[at:at + 2] = seqlen_q, seqlen_k
        gluon_arguments = dict(self.gluon_arguments, seqlen_k=seqlen_k, plans={})
        if dense_q:
            batch, _, num_heads, _ = q.shape
            plan.out_like_q = rebase.out_like_dtype and q.is_contiguous()
            plan.out_shape = (*q.shape[:-1], self.out_shape[-1])
            o_strides = (0, *token_strides(Layout(plan.out_shape, q.device), False))
            l_strides = (0, 0, 0, 0)
            if self.lse_shape is not None:
                plan.lse_shape = (batch, num_heads, seqlen_q)
                l_strides = (0, *lse_strides(Layout(plan.lse_shape, q.device), False))
            scalars[:rebase.q_strides] = token_strides(q, False)
            at = rebase.k_strides_at + 6
            scalars[at:at + 8] = (*o_strides, *l_strides)
            at = rebase.lengths_at
            scalars[at + 9] = num_tiles
            scalars[at + 11] = num_work
            plan.flag_rows = num_work * config.block_m
            if self.block_count_shape is not None:
                plan.block_count_shape = (num_work,)
            gluon_arguments.update(seqlen_q=seqlen_q, o_strides=o_strides[1:], l_strides=l_strides[1:])
        plan.gluon_arguments = gluon_arguments
        # Triton specializes the main and the redo launch's scalars alike (the same kernel and scalars): asked once.
        specialized = _launch._same_specialization(self.main, scalars)
        plan.main = self.main.with_scalars(scalars, grid, specialized)
        if self.redo is not None:
            assert self.redo.kernel is self.main.kernel and self.redo.scalars == self.main.scalars
            plan.redo = self.redo.with_scalars(scalars, (num_work if scan_flags else min(num_work, rebase.programs),),
                                               specialized)
        return plan

    def run(self, q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, cache_batch_idx, page_table, new_k, new_v,
            seqused_q=None, cache_leftpad=None, q_descale=None, k_descale=None, v_descale=None, stream=_launch.ASK,
            out=None, qv=None):
        """``stream``: ``stream_key(q.device)`` when the caller has asked it (for the kept scratch, see
        ``kept_buffer``). ``out``: the output's tensor, given by the caller (``ops.run_fwd_into``: the planned
        layout, contiguous, checked by the interface), else allocated here. ``qv``: FlashAttention 3's, for a plan
        made with one (it travels in ``new_k``'s slot)."""
        device = self.device
        if out is None:
            # A varlen plan serves every total of query rows (``_PlanFamily``): the output has this call's.
            out = (torch.empty_like(q) if self.out_like_q
                   else torch.empty((q.shape[0], *self.out_shape[1:]) if self.varlen_q else self.out_shape,
                                    device=device, dtype=self.dtype))
        lse = None if self.lse_shape is None else torch.empty(self.lse_shape, device=device, dtype=torch.float32)
        if not self.launches:
            return out, lse, None
        if stream is _launch.ASK and (self.split_shapes is not None or self.isolate or self.use_tma):
            stream = stream_key(device)  # once for the kept buffers below
        if self.split_shapes is not None:
            # The splits' partial results: scratch the main pass writes and the merge reads in this call, so kept
            # between calls on this stream (``kept_buffer``: two allocations less per split-KV call), flat, with the
            # contiguous strides planned for them.
            out_target = kept_buffer("split_out", device, self.split_numel[0], torch.float32, stream)
            lse_target = kept_buffer("split_lse", device, self.split_numel[1], torch.float32, stream)
        else:
            out_target, lse_target = out, lse
        block_counts = (None if self.block_count_shape is None
                        else torch.zeros(self.block_count_shape, device=device, dtype=torch.int32))
        if self.isolate:
            non_finite_flags, any_non_finite = _isolation_buffers(device, self.flag_rows, stream)
        else:
            non_finite_flags = any_non_finite = None
        if self.use_tma:
            ensure_triton_allocator()
        if self.fp8:
            # Absent descales are 1 (as in FlashAttention 3): one element, read with the zero strides planned for it.
            ones = ones_descale(device)
            q_descale, k_descale, v_descale = (ones if d is None else d for d in (q_descale, k_descale, v_descale))
        if self.use_gluon:
            if self.fp8:
                # All-fp8 (the Gluon kernel takes no other fp8 call): e4m3 Q K^T, P @ V in bf16 on V's bf16 copy (one
                # elementwise launch), the descales applied per tile in the kernel.
                gluon_v, descales = gluon_fwd.fp8_value_copy(v), (q_descale, k_descale, v_descale)
            else:
                gluon_v, descales = v, ()
            kept = self.gluon_launch
            if (kept is not None and gluon_fwd.forward is _GLUON_FORWARD
                    and kept[0] == gluon_fwd.planning_settings()):
                kept[1](q, k, gluon_v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table,
                        non_finite_flags, any_non_finite, *descales)
            else:
                self._gluon_forward(q, k, gluon_v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k,
                                    page_table, non_finite_flags, any_non_finite, *descales)
        if not self.use_gluon or self.redo is not None:
            # The tensors this signature passes, after q (the placeholder for the absent ones): see ``present``.
            tensors = (q, *self.pick((q, k, v, out_target, lse_target, sinks, cu_seqlens_q, cu_seqlens_k,
                                      seqlens_k, cache_batch_idx, page_table, block_counts, non_finite_flags,
                                      any_non_finite, new_k if qv is None else qv, new_v, seqused_q, cache_leftpad,
                                      q_descale, k_descale, v_descale)))
            if self.use_tma:
                # Triton's descriptor scratch: one buffer kept between calls for the main and redo launches (each
                # PDL launch waits for the previous grid before its first write, its descriptors included; see
                # _compat.TRITON_SCRATCH), not an allocation per launch.
                TRITON_SCRATCH.stream = stream
                try:
                    self._launch_passes(tensors)
                finally:
                    TRITON_SCRATCH.stream = None
            else:
                self._launch_passes(tensors)
        if self.combine is not None:
            # The merge writes out as [tokens, H, D] (planned with those strides): the launch takes only out's
            # address and dtype, so out itself serves (no view made per call).
            self.combine(out_target, lse_target, out, lse_target if lse is None else lse,
                         out if sinks is None else sinks, out if seqused_q is None else cu_seqlens_q,
                         out if seqused_q is None else seqused_q)
        return out, lse, block_counts

    def _gluon_forward(self, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table,
                       non_finite_flags, any_non_finite, q_descale=None, k_descale=None, v_descale=None) -> None:
        """The Gluon launch through ``gluon_fwd.forward`` (which plans it at the first call), keeping the planned
        launch for ``run`` to make itself on later calls, unless something wraps ``forward``. All-fp8: ``v`` is
        V's bf16 copy and the three descales are given."""
        gluon_fwd.forward(q, k, v, out, lse, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                          seqlens_k=seqlens_k, page_table=page_table, non_finite_flags=non_finite_flags,
                          any_non_finite=any_non_finite, q_descale=q_descale, k_descale=k_descale,
                          v_descale=v_descale, **self.gluon_arguments)
        if gluon_fwd.forward is _GLUON_FORWARD:  # (the key hashes the Gluon kernel: ~10 us on the H200 host)
            launch = gluon_fwd.planned_launch(self.gluon_arguments["plans"])
            self.gluon_launch = None if launch is None else (gluon_fwd.planning_settings(), launch)

    def _launch_passes(self, tensors: tuple) -> None:
        if not self.use_gluon:
            self.main(*tensors)
        if self.redo is not None:
            self.redo(*tensors)
