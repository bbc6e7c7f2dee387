"""The Hopper (sm_90) forward in Gluon: warp-specialized, TMA-fed, asynchronous wgmma, n_offset tiling.

A persistent grid (one program per SM; two or four for one-warpgroup programs, ``per_sm_for``) walks the work items,
longest first, each round of the grid in the opposite direction to the last (``_snake``); an item is a tile of 64
query rows per consumer warpgroup (one to three; or one warpgroup of 128 rows, ``wg_rows_for``) of one head, or with
PackGQA of one KV head's packed (position, head) rows. One program holds:

- a loader partition (one warp, few registers) brings each tile's Q through TMA into one of two Q slots (the next
  tile's Q arrives while the consumers finish this one; one slot at head_dim 256) and streams the tile's K and V
  blocks through TMA into a ring of ``NUM_STAGES`` shared-memory stages. The stream starts at the tile's first
  visible key (n_offset: the TMA coordinate is that key, not a multiple of BLOCK_N) and runs over
  ``ceil(span / BLOCK_N)`` blocks. Over a paged cache a block is one TMA box per page part (at most a page and
  ``PAGE_BOX_MAX`` keys, its row looked up in the page table), and the start is rounded down to a box: pages wholly
  outside the window are never read. K and V have their own ready/empty barriers, so a K stage is refilled as soon
  as its scores are computed, before the P @ V product of the same block has run;
- one to three consumer warpgroups (the default partition and workers, most of the registers), 64 rows each (or one
  of 128), read every block. Each step issues block j's scores (``S_j = Q K_j^T``), rescales the accumulator by
  block j - 1's factors under it and issues ``P_{j-1} V_{j-1}`` (async wgmma; FlashAttention 3's order,
  ``RESCALE_EARLY``), waits for S_j, runs block j's softmax, then waits for the P V product. ptxas places that last
  wait above the softmax (sm_90 SASS, Triton 3.6; deferring it to the next step was measured slower, and with two
  warpgroups does not fit the registers: docs/notes/2026-12-03-gluon-forward.md, session 7), so a warpgroup's softmax
  overlaps the other warpgroup's or the other resident programs' products rather than its own. Between two
  warpgroups either
  the warp schedulers interleave one's softmax with the other's products, or (``PINGPONG``) the warpgroups take
  turns issuing their products through a pair of hardware named barriers, as FlashAttention 3's warp-scheduler
  barriers order them.
- the epilogue (sink, normalization, LSE, O) runs in each consumer; rows holding a NaN are flagged exactly as the
  Triton kernel's main pass flags them, and ``fwd.attention_forward`` runs the same redo pass afterwards, so
  non-finite isolation is identical on both paths.

Masking: only the edge blocks (``block_ranges``: those some row of the tile cannot see whole) pay the window
mask; interior blocks run the bare softmax. The window arithmetic is the Triton helpers' (``_common``), called
from Gluon, so the host, both kernel families and the tests share one definition.

All-fp8 calls (q, k, v in e4m3, FlashAttention 3's fp8 prefill; ``FP8_QK``): Q and K come through TMA as e4m3 and
``S = Q K^T`` is an e4m3 warpgroup product (both operands K-major in shared memory, as for bf16); an e4m3 product
takes its B operand K-major only, which for ``P @ V`` would be V^T, so V is read from its exact bf16 copy
(``fp8_value_copy``, one elementwise launch before the kernel) and ``P @ V`` runs in bf16. The descales (``[B,
Hk]``) are one per tile: ``q_descale * k_descale`` scales the scores, ``v_descale`` the normalized output; O is bf16.

Scope (everything else takes the Triton kernels, see ``unsupported_reason``): sm_90, bf16/fp16 or all-fp8 (not over
pages), head_dim 64, 128 or 256; dense or varlen q over dense, varlen, contiguous-cache (cache lengths) or paged K/V
(pages of 8 keys or more, a power of two) whose (token, head, dim) rows are contiguous and TMA-aligned; PackGQA with a
group that divides 64; no cache_batch_idx, split-KV or in-kernel append.
"""

from __future__ import annotations

import functools
import os
import struct
import weakref

import torch

from swattn._compat import ceil_div, compute_capability_major, device_properties
from swattn.kernels._common import (
    LOG2E,
    block_ranges,
    descale_strides,
    finish_rows,
    kept_max,
    last_visible_key,
    safe_pivot,
    sequence_bounds,
    softcap_scores,
)
from swattn.kernels._launch import Descriptor, Launch, _triton_version

try:  # Gluon ships inside the triton wheel (3.4+); the names used here exist in 3.6 and 3.9.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # TMA load into shared memory: ``async_copy_global_to_shared`` in Triton 3.6, ``async_load`` in 3.9.
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    # TMA store from shared memory: ``async_copy_shared_to_global`` in Triton 3.6, ``async_store`` in 3.9.
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    # A partition's barrier: ``thread_barrier`` in Triton 3.6, ``barrier`` in 3.9.
    _partition_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    GLUON_AVAILABLE = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the installed triton
    GLUON_AVAILABLE = False

# SWATTN_GLUON: "auto" (default) uses the Gluon kernel on sm_90 where it supports the call and was measured faster
# (``fwd._use_gluon``); "0" never; "1" wherever it supports the call (A/B runs, tests). Read once, at import.
GLUON_MODE = os.environ.get("SWATTN_GLUON", "auto").strip().lower() or "auto"

ROWS_PER_CONSUMER = 64  # a consumer warpgroup's rows: also the row groups of the non-finite flags (redo pass)
MIN_ROWS = 128  # auto dispatch: calls with fewer query rows per (batch, head) stay on the Triton kernels
# Auto dispatch: calls whose estimated GPU time on the Triton kernels is below this stay on them: a Gluon call costs
# this much host time, so a smaller call made eagerly would wait on the host. H200 host, Triton 3.6, the planned
# direct launch (``forward(..., plans=)``; scripts/host_profile.py, 2026-12-03 22:31 UTC): the 4K W(127,0) D64 gpt-oss
# prefill on the Gluon kernel 51.8 us host per call, eager 52.2 for 49.6 us of GPU time (the Triton kernels: eager
# 58.3 for 59.0, 19:33 UTC). Through JITFunction.run with four descriptors built per call it was 190 us (216 host,
# 181 eager at 22:31), the value this had before. Since the forward plan launches its kept Gluon launch itself
# (2026-12-04, s7-call5, one run): 4K host 48.3 us on the Gluon kernel against 47.8 on the Triton kernels (bench
# host; host_profile: 70.3 against 61.8), eager 50.6 against 58.8, graph 49.0 against 59.0. Below this bound both
# calls are now host-bound within ~0-9 us of each other, so it decides mainly graph-replayed small calls, where the
# Gluon kernel's GPU time is not measured (host_profile.py gluon_2k, prefill_2k_triton): kept until that is read.
EAGER_MIN_US = 52.0
HEAD_DIMS = (64, 128, 256)
KV_DENSE, KV_VARLEN, KV_PAGED = 0, 1, 2  # where K/V rows come from (the kernel's KV_SOURCE)
PAGE_BOX_MAX = 64  # keys per TMA box of a paged cache: at most a page, so a box never straddles two
NUM_STAGES = 2
LOADER_REGS = 24  # the loader warp's registers after reallocation; the consumer warpgroups share the rest
# The consumer warpgroups take turns issuing their products (FlashAttention 3's ping-pong), through hardware named
# barriers ``_TURN_BARRIER`` and the next (``bar.sync`` / ``bar.arrive`` over the two warpgroups' 256 threads; Triton's
# partitions use ids 0-2). Off: neutral on the H200 (s11-call6: causal D128 3387.7 against 3389.7 us, W(4095,0) D128
# 1551.0 against 1553.8); through mbarriers (polling waits, a partition barrier in front of each arrive) it was 2-4%
# slower (sessions 3, 10 and 11; docs/notes/2026-12-03-gluon-forward.md). Kept as a tested switch.
PINGPONG = False
_TURN_BARRIER = 8
# Dense calls write O through the tile's Q slot and a TMA store instead of per-thread stores (``tma_store_for``).
TMA_STORE = False
# Rows per consumer warpgroup for packed small windows at head_dim 64 (``wg_rows_for``): 64 or 128. H200, W(127,0)
# D64 gpt-oss with sinks, 16K (session 6, call 3): 64 rows x 4 programs per SM 185.2 us, 128 rows x 2 188.8: 64.
WG_ROWS_SMALL_D64 = 64
# Lazy rescale (log2 units; 0: off): the running row max moves only when a block's max exceeds it by more than this,
# so after a tile's first blocks alpha is exactly 1 and a warp whose rows all kept their max skips the
# accumulator's rescale (a branch on a warp vote, ``_rescale_acc``). Scores stay <= 2^threshold times the kept max:
# P's bf16/fp16 rounding is relative, so precision does not change; the LSE and the normalization use the kept max.
# Where it applies: ``rescale_threshold_for``. The Triton redo pass after the Gluon kernel keeps its maxima the same
# way (``_common.kept_max``): a row whose masked block loads a non-finite value is flagged and redone, and redone
# with eager rescaling it changed in its last bits (session 7's isolation failure; fixed in session 8). H200, 16K
# (s8-call2): W(127,0) D64 gpt-oss sinks 185.8 vs 188.7 us, W(127,0) D128 150.9 vs 150.7.
RESCALE_THRESHOLD = 8.0
# _softmax_block's trims (bits): one comparison per score on edge blocks that need one bound, row sums per thread.
ONE_SIDED_EDGES, THREAD_ROW_SUMS, VOTED_ROW_MAX = 1, 2, 4
# FlashAttention 3's order in the block loop: S_j issued first, the accumulator's rescale by block j - 1's alpha
# under it (side-effecting asm, so LLVM keeps it between the two issues), then P_{j-1} V_{j-1}: the rescale's
# multiplications leave the path from a block's softmax to the next block's products.
RESCALE_EARLY = 32
# The consumers release K and V stages by one arrival per thread (``cp.async.mbarrier.arrive.noinc``, no copies
# pending: it fires at once) instead of Gluon's ``mbarrier.arrive``, which puts a barrier over the warpgroup in front
# of its single thread's arrival (and the next wait on a barrier then takes another one).
THREAD_RELEASE = 64
# The next tile's first scores product issued behind this tile's last P V, before this tile's epilogue, so the
# tensor cores run it while both warpgroups normalize and store O (two Q slots, no ping-pong, no TMA store).
OVERLAP_TILES = 128
# The block's P V wait after its exponentials (FlashAttention 3's place): ptxas hoists a ``wgmma.wait_group`` to the
# top of its basic block, which in PTX starts after the vote's branch, above the exponentials; a branch fed by the
# exponentials' row sums ends that basic block after them (its body runs only on a sum equal to the largest float
# and adds +0, so no bit changes). Needs the row sums per thread.
PV_WAIT_LATE = 256
# The block loop's ring stage and phase carried from block to block (a wrap test and two selects) instead of
# recomputed from the ring position (a signed division and remainder each for K's stage and V's): 8 fewer uniform
# instructions per block at head_dim 64 (Triton 3.6).
CARRIED_RING = 512
# The first consumer warpgroup's last block over its first 64 keys where none of its rows sees a later key of the
# block: a causal 128-row tile on the diagonal (its rows 0-63 end at the diagonal block's key 63, rows 64-127 at key
# 127), and wherever else the window's right edge or the keys' end leaves the block's second half masked for rows
# 0-63. That block's scores product is m64n64 instead of m64n128, its softmax covers 64 columns and its P V product
# reads the V stage's first 64 rows (K = 64); the second warpgroup keeps the whole block. Two consumer warpgroups of
# 64 rows, 128-key blocks, head_dim up to 128, not PackGQA, not with ping-pong or ``OVERLAP_TILES``
# (``_consume_item``). With three consumer warpgroups (192-row tiles, 128-key blocks: FlashAttention 3's head_dim 64
# tile) every warpgroup carries the halved step and the runtime test picks the ones whose rows end in the last
# block's first half; a warpgroup whose rows end before the last block skips it (its stages waited for and
# released, no product). Off: a switch for the H200's probe (session 15, docs/notes/2026-12-03-gluon-forward.md).
HALF_DIAGONAL = 1024
SOFTMAX_TRIMS = int(os.environ.get("SWATTN_GLUON_SOFTMAX_TRIMS", "39"))  # A/B runs: 0 for none


def divisor_magic(divisor: int) -> tuple[int, int]:
    """``(magic, shift)`` such that ``n // divisor == umulhi(n, magic) >> shift`` for every ``0 <= n < 2**31``
    (``magic`` 0 for divisor 1: the kernel's ``_divmod`` takes ``n`` itself). Granlund and Montgomery's
    round-up multiplier for 31-bit dividends: with ``l = ceil(log2(divisor))``, ``magic = ceil(2**(31 + l) /
    divisor) < 2**32`` and the quotient is ``(n * magic) >> (31 + l)``, i.e. the high word shifted by ``l - 1``.
    The persistent kernel splits every work item into (tile, batch, head) on the device: two of these in place of
    two integer divisions (~30 SASS instructions each, in the loader and every consumer, per tile)."""
    if not 1 <= divisor < 2**31:
        raise ValueError(f"divisor must be in [1, 2**31), got {divisor}")
    if divisor == 1:
        return 0, 0
    log2 = (divisor - 1).bit_length()
    return -(-(1 << (31 + log2)) // divisor), log2 - 1


def _signed_magic(divisor: int) -> tuple[int, int]:
    """``divisor_magic`` with the multiplier's 32 bits as a signed int32 (the kernel reads them back as uint32): a
    multiplier of 2**31 or more would otherwise reach the kernel as an int64, another specialization."""
    magic, shift = divisor_magic(divisor)
    return magic - (1 << 32) if magic >= 1 << 31 else magic, shift


def registers_for(consumers: int, per_sm: int = 1) -> tuple[int, int]:
    """(registers per thread at launch, per consumer thread after reallocation) for ``consumers`` warpgroups plus
    the loader's warpgroup (register files are split by warpgroup: 4 + 4 + 1 warps run as 12) and ``per_sm``
    resident programs per SM. Reallocation moves registers within a program: the loader's warpgroup gives up
    ``at_launch - LOADER_REGS`` per thread, which the consumers share. 168/240 for two consumers, 128/160 for
    three; one consumer: 128/232 at two programs per SM, 80/136 at three, 64/104 at four."""
    warps = 4 * (consumers + 1)
    at_launch = 65536 // (per_sm * warps * 32) // 8 * 8
    consumer = (at_launch + (at_launch - LOADER_REGS) // consumers) // 8 * 8
    return at_launch, min(consumer, 240)


def consumers_for(head_dim: int, pack_gqa: bool, left: int, right: int) -> int:
    """Consumer warpgroups (64 rows each) per work item. One (64-row tiles, several programs per SM:
    ``per_sm_for``) for packed small windows at head_dim 64 and 128, whose tiles are short chains of dependent steps:
    the other programs' products run in one program's waits and epilogue (H200, 16K: W(127,0) D128 163.6 us with the
    TMA store vs 175.4 for two, run 6; W(127,0) D64 gpt-oss with sinks 196.2 us at four programs per SM vs 260.0 for
    two warpgroups, run 9, docs/notes/2026-12-03-gluon-forward.md). Two (128-row tiles sharing each K/V block)
    elsewhere: one warpgroup per program lost 5-30% on long windows, and three (192 rows, 160 registers each) lost on
    every row that compiles without spills (run 4)."""
    if pack_gqa and head_dim <= 128 and 0 <= left <= 256 and 0 <= right <= 256:
        return 1
    return 2


def wg_rows_for(head_dim: int, pack_gqa: bool, left: int, right: int) -> int:
    """Query rows per consumer warpgroup: 64, or ``WG_ROWS_SMALL_D64`` for packed small windows at head_dim 64,
    whose consumers are issue-bound with half their instructions outside the block loop (H200 Nsight Compute,
    session 6, docs/notes/2026-12-03-gluon-forward.md). A 128-row warpgroup (two m64 products per block) pays the
    tile's geometry, Q wait, first product's setup and the per-block waits, arrivals and index arithmetic once per
    128 rows, but needs two programs per SM's registers (232 per consumer thread) instead of four: measured 2%
    slower, so 64 stays the default and 128 a tested switch."""
    return WG_ROWS_SMALL_D64 if (pack_gqa and head_dim <= 64 and 0 <= left <= 256 and 0 <= right <= 256) else 64


def rescale_threshold_for(consumers: int) -> float:
    """The lazy rescale's threshold (``RESCALE_THRESHOLD``) for one-warpgroup programs (packed small windows), 0
    (rescale every block) elsewhere. H200, 16K, same calls (session 7, docs/notes/2026-12-03-gluon-forward.md):
    W(127,0) D64 gpt-oss sinks 190.6 vs 192.9 us and 183.6 vs 186.5; W(127,0) D128 154.1 vs 157.6 and 150.8 vs
    152.5; but W(4095,0) D128 1467.6 vs 1449.9 and causal D128 3227.2 vs 3164.5 (two warpgroups): slower (again in
    session 8, s8-call2: 1473.7 vs 1435.6 and 3405.1 vs 3216.8)."""
    return RESCALE_THRESHOLD if consumers == 1 else 0.0


def softmax_trims_for(consumers: int, head_dim: int) -> int:
    """``_softmax_block``'s ``SOFTMAX_TRIMS`` bits. One-sided edge masks for one-warpgroup tiles (packed small
    windows), where most blocks are edge blocks: two-warpgroup tiles are long, and their code doubles in size
    with it. Per-thread row sums (no shuffles per block) and the row max skipped by warp vote up to head_dim 128.
    H200, 16K, same calls (docs/notes/2026-12-03-gluon-forward.md): s9-call7, W(127,0) D64 gpt-oss sinks 173.6 us
    with the masks and the row sums, 179.3 with the row sums only, 183.1 with neither; W(127,0) D128 142.2 / 147.7 /
    149.2; causal D128 3148.5 / 3523.6 (row sums / neither); W(4095,0) D128 1425.0 / 1436.1. s10-call1, without /
    with the vote: W(127,0) D64 sinks 169.2 / 164.4, W(127,0) D128 138.9 / 137.0, W(4095,0) D128 1588.4 / 1560.1,
    causal D128 3577.2 / 3439.0. FlashAttention 3's loop order (``RESCALE_EARLY``), s11-call3 / s11-call4 without /
    with it: W(4095,0) D128 1562.2 / 1540.7 and 1573.1 / 1552.9, causal D128 3442.3 / 3430.2 and 3468.8 / 3438.4,
    W(127,0) D128 138.8 / 138.8 and 139.6 / 137.9, W(127,0) D64 sinks 171.6 / 170.7 (s11-call4)."""
    if head_dim > 128:
        # Head_dim 256 (two warpgroups of 64 x 256 accumulators): the two-warpgroup set on Triton 3.6 (48 B of stack
        # against 40 without; s11-call10, 16K: W(4095,0) Gemma 2 1406.8 against 1459.3 us, W(1023,0) Gemma 3 525.5
        # against 541.6; FA3 1439.3 / 488.0). Triton 3.9 spills 152 B with them (80 without), not measured on a
        # GPU: none there.
        if _triton_version() >= (3, 7):
            return 0
        # (Not OVERLAP_TILES: one Q slot. Not PV_WAIT_LATE: not compiled or timed at head_dim 256.)
        return SOFTMAX_TRIMS & (THREAD_ROW_SUMS | VOTED_ROW_MAX | RESCALE_EARLY | THREAD_RELEASE)
    kept = ONE_SIDED_EDGES | THREAD_ROW_SUMS | VOTED_ROW_MAX if consumers == 1 else THREAD_ROW_SUMS | VOTED_ROW_MAX
    if consumers > 1:
        kept |= OVERLAP_TILES
    if consumers in (2, 3):
        kept |= HALF_DIAGONAL  # (off unless SOFTMAX_TRIMS has it; the kernel applies it to 128-key blocks only)
    # None of the four synchronization switches is on by default. H200, 16K (session 14): two-warpgroup tiles lose
    # with each (s14-call1: THREAD_RELEASE causal D128 +3.2%, W(4095,0) D128 +3.5%; the others on top of it more);
    # one-warpgroup rows with THREAD_RELEASE | CARRIED_RING won in s14-call2 (W(127,0) D64 sinks 172.0 -> 168.7 us)
    # and lost in s14-call3 (164.5 -> 166.6; identical kernels 0.9% apart in that run): inside the runs' spread.
    return SOFTMAX_TRIMS & (kept | RESCALE_EARLY | THREAD_RELEASE | PV_WAIT_LATE | CARRIED_RING)


def tma_store_for(consumers: int) -> bool:
    """O through the tile's Q slot and a TMA store (dense calls) where it was measured faster: with one consumer
    warpgroup (178.0 -> 163.6 us on W(127,0) D128, run 6). With two, runs 5 and 6 disagree (causal D128 -3.5% and
    +8.5%), so they keep the per-thread stores."""
    return TMA_STORE or consumers == 1


def per_sm_for(consumers: int, head_dim: int = 128, block_n: int = 64, wg_rows: int = 64) -> int:
    """Resident programs per SM: one-consumer programs run several per SM so that one's epilogue and waits overlap
    the others' products: four with 32-key blocks at head_dim 64 (64 registers at launch, 104 per consumer thread
    after reallocation; four programs' stages fit in shared memory), two otherwise (128 / 232). One for two or
    three consumers."""
    if consumers != 1:
        return 1
    return 4 if head_dim <= 64 and block_n <= 32 and wg_rows == 64 else 2


def block_n_for(head_dim: int, pack_gqa: bool, left: int, right: int) -> int:
    """Keys per block. 128 by default (a 64 x 128 fp32 score tile is 64 registers per thread of a warpgroup).
    Packed small windows: a one-warpgroup tile (8 positions x 8 heads) sees ``left + 8`` keys. At head_dim 128,
    64-key blocks (W(127,0): 3 blocks, 192 scores per row, instead of 2 x 128); at head_dim 64, 32-key blocks (5
    blocks, 160 scores per row: the exponentials and the mask bound that kernel, and four programs' stages fit in
    shared memory). 64 at head_dim 256: the 64 x 256 accumulator takes 128 registers per thread, and two stages of
    64-key K/V blocks (128 KiB) leave room for one Q slot."""
    if pack_gqa and 0 <= left <= 256 and 0 <= right <= 256 and head_dim <= 128:
        return 32 if head_dim <= 64 else 64
    if head_dim > 128:
        return 64
    return 128



def _lazy_rescale_asm(pack: int) -> str:
    """PTX for ``_rescale_acc``: ``pack`` accumulator elements (outputs 0..pack-1, tied to inputs pack..2*pack-1)
    times their rows' alphas (inputs 2*pack..3*pack-1), skipped by the whole warp when every thread's two rows kept
    their max (alpha exactly 1). In a warpgroup MMA accumulator (NVMMA v3) a thread's elements come in fours per 8
    columns: two of row r, then two of row r + 8, so elements 0 and 2 carry the thread's two alphas."""
    alpha = 2 * pack
    lines = ["{", ".reg .pred %rescale_row, %rescale_other;",
             f"setp.neu.f32 %rescale_row, ${alpha}, 0f3F800000;",
             f"setp.neu.f32 %rescale_other, ${alpha + 2}, 0f3F800000;",
             "or.pred %rescale_row, %rescale_row, %rescale_other;",
             "vote.sync.any.pred %rescale_row, %rescale_row, 0xffffffff;",
             "@!%rescale_row bra.uni swattn_kept_max_${:uid};"]
    lines += [f"mul.f32 ${i}, ${pack + i}, ${alpha + i};" for i in range(pack)]
    lines += ["swattn_kept_max_${:uid}:", "}"]
    return "\n".join(lines)


def _voted_row_max_asm(threshold: float) -> str:
    """PTX for ``_softmax_block``'s ``VOTED_ROW_MAX``: the running row max of two rows of a thread (outputs 0, 1)
    from the thread's own maxima over its columns, the kept maxima and the scores' scale (two inputs each, after
    the outputs), with the lazy rescale's rule (``kept_max``: a new max only above ``kept + threshold``). A score
    can raise a row's max only if it exceeds that bound in its own thread, so when no thread of the warp holds one
    (a vote) the whole warp keeps its maxima and skips the shuffles across each row's four threads, which sit on
    the chain between a block's scores and its exponentials. Otherwise the quad's maxima are exchanged as ``gl.max``
    would (``max.f32``: the same bits, NaN ignored alike)."""
    own, kept, scale = 2, 4, 6
    threshold_bits = struct.unpack("<I", struct.pack("<f", threshold))[0]
    lines = ["{", ".reg .pred %raise0, %raise1, %any;",
             ".reg .f32 %top0, %top1, %kept0, %kept1, %bound0, %bound1, %other;"]
    # Every input is read before any output is written: LLVM may give an output the register of an input (the
    # kept max and the new one share the loop-carried register).
    for row in range(2):
        lines += [f"mul.f32 %top{row}, ${own + row}, ${scale + row};", f"mov.f32 %kept{row}, ${kept + row};"]
        if threshold:
            lines.append(f"add.f32 %bound{row}, %kept{row}, 0f{threshold_bits:08X};")
        else:
            lines.append(f"mov.f32 %bound{row}, %kept{row};")
        lines.append(f"setp.gt.f32 %raise{row}, %top{row}, %bound{row};")
    for row in range(2):
        lines.append(f"mov.f32 ${row}, %kept{row};")
    lines += ["or.pred %any, %raise0, %raise1;", "vote.sync.any.pred %any, %any, 0xffffffff;",
              "@!%any bra.uni swattn_voted_max_${:uid};"]
    for row in range(2):
        for lane_mask in (1, 2):
            lines += [f"shfl.sync.bfly.b32 %other, %top{row}, {lane_mask}, 0x1f, 0xffffffff;",
                      f"max.f32 %top{row}, %top{row}, %other;"]
        lines += [f"setp.gt.f32 %raise{row}, %top{row}, %bound{row};", f"@%raise{row} mov.f32 ${row}, %top{row};"]
    lines += ["swattn_voted_max_${:uid}:", "}"]
    return "\n".join(lines)


_RESCALE_PACK = 32  # accumulator elements per thread at head_dim 64 (64 x 64 / 128): larger tiles take several
_RESCALE_ASM = _lazy_rescale_asm(_RESCALE_PACK)
_RESCALE_CONSTRAINTS = ",".join(["=f"] * _RESCALE_PACK + [str(i) for i in range(_RESCALE_PACK)]
                                + ["f"] * _RESCALE_PACK)

if GLUON_AVAILABLE:
    _KV_VARLEN = gl.constexpr(KV_VARLEN)
    _KV_PAGED = gl.constexpr(KV_PAGED)
    _RESCALE_ASM_C = gl.constexpr(_RESCALE_ASM)
    _RESCALE_CONSTRAINTS_C = gl.constexpr(_RESCALE_CONSTRAINTS)
    _RESCALE_PACK_C = gl.constexpr(_RESCALE_PACK)
    _ONE_SIDED_EDGES_C = gl.constexpr(ONE_SIDED_EDGES)
    _THREAD_ROW_SUMS_C = gl.constexpr(THREAD_ROW_SUMS)
    _VOTED_ROW_MAX_C = gl.constexpr(VOTED_ROW_MAX)
    _VOTED_MAX_ASM_LAZY_C = gl.constexpr(_voted_row_max_asm(RESCALE_THRESHOLD))
    _VOTED_MAX_ASM_EXACT_C = gl.constexpr(_voted_row_max_asm(0.0))
    _RESCALE_EARLY_C = gl.constexpr(RESCALE_EARLY)
    _THREAD_RELEASE_C = gl.constexpr(THREAD_RELEASE)
    _OVERLAP_TILES_C = gl.constexpr(OVERLAP_TILES)
    _PV_WAIT_LATE_C = gl.constexpr(PV_WAIT_LATE)
    _CARRIED_RING_C = gl.constexpr(CARRIED_RING)
    _HALF_DIAGONAL_C = gl.constexpr(HALF_DIAGONAL)
    # ``_block_end``'s asm: four sums in, the same four out; the branch skips 16 additions of +0 (a body that short
    # ptxas turns into predicated instructions and the basic block does not end: 4 additions did not).
    _BLOCK_END_ASM_C = gl.constexpr(
        "{\n.reg .pred %big;\n" + "".join(f"mov.b32 ${i}, ${i + 4};\n" for i in range(4))
        + "setp.eq.f32 %big, $4, 0f7F7FFFFF;\n@!%big bra.uni swattn_block_end_${:uid};\n"
        + "".join(f"add.f32 ${i % 4}, ${i % 4}, 0f00000000;\n" for i in range(16))
        + "swattn_block_end_${:uid}:\n}")

    @gluon.jit
    def _block_end(partial_sums):
        """``partial_sums`` (the block's row sums per thread, four per thread) unchanged, through a branch that ends
        ptxas's basic block (``PV_WAIT_LATE``): the branch is taken unless a sum equals the largest float, and its
        body adds +0, which changes no bit of such a sum either."""
        return gl.inline_asm_elementwise(_BLOCK_END_ASM_C, "=f,=f,=f,=f,f,f,f,f", [partial_sums], dtype=gl.float32,
                                         is_pure=False, pack=4)

    @gluon.jit
    def _release(stage_barrier, SOFTMAX_TRIMS: gl.constexpr):
        """The consumer warpgroup is done with a K or V stage (its products that read it have completed): one
        arrival per thread (``THREAD_RELEASE``; the barrier counts 128 per consumer) or one per warpgroup."""
        if (SOFTMAX_TRIMS & _THREAD_RELEASE_C) != 0:
            async_copy.mbarrier_arrive(stage_barrier, increment_count=False)
        else:
            mbarrier.arrive(stage_barrier, count=1)

    _TURN_BARRIER_C = gl.constexpr(_TURN_BARRIER)

    @gluon.jit
    def _first(a, b):
        return a

    @gluon.jit
    def _window_visible(keys, row_pos, offset, kv_end, left, right, HAS_LEFT: gl.constexpr,
                        HAS_RIGHT: gl.constexpr):
        """[rows, keys] mask of an edge block: the key lies in the row's window (bottom-right aligned by ``offset =
        seqlen_k - seqlen_q``) and exists (``< kv_end``, the tile's last visible key + 1). The key bound is folded
        into each row's last key, so a score costs at most two comparisons."""
        last = kv_end - 1 + row_pos * 0
        if HAS_RIGHT:
            last = gl.minimum(row_pos + offset + right, last)
        visible = gl.expand_dims(keys, 0) <= gl.expand_dims(last, 1)
        if HAS_LEFT:
            visible = visible & (gl.expand_dims(keys, 0) >= gl.expand_dims(row_pos + offset - left, 1))
        return visible

    @gluon.jit
    def _partial_sums(x, BLOCK_N: gl.constexpr):
        """``[rows, 8]`` sums of ``x [rows, BLOCK_N]`` over its 8-column groups: in a warpgroup MMA's layout each
        thread holds the same columns of every group, so these sums need no shuffle; ``gl.sum(., 1)`` of them is
        the row sum."""
        return gl.sum(gl.reshape(x, [x.shape[0], BLOCK_N // 8, 8]), 1)

    @gluon.jit
    def _softmax_block(s, m_i, l_i, block, kv_start, kv_end, row_pos, offset, masked_head_end, unmasked_end,
                       left, right, softmax_scale, softcap, col_layout: gl.constexpr, HAS_LEFT: gl.constexpr,
                       HAS_RIGHT: gl.constexpr, HAS_SOFTCAP: gl.constexpr, BLOCK_N: gl.constexpr,
                       RESCALE_THRESHOLD: gl.constexpr, SOFTMAX_TRIMS: gl.constexpr = 0):
        """Online-softmax step on one block's scores: ``(p, m_new, l_new, alpha)`` in log2 units. ``SOFTMAX_TRIMS``
        (bits): ``ONE_SIDED_EDGES``, edge blocks that need only one of the window's bounds compare each score once
        (three code paths: worth it on short tiles, where most blocks are edge blocks); ``THREAD_ROW_SUMS``, ``l_i``
        holds each thread's partial row sums (``_partial_sums``), summed across the row's threads in the
        epilogue."""
        if HAS_SOFTCAP:
            s = softcap_scores(s, softmax_scale, softcap)
            qk_scale = 1.0
        else:
            qk_scale = softmax_scale * LOG2E
        if (block < masked_head_end) | (block >= unmasked_end):
            if HAS_LEFT and (SOFTMAX_TRIMS & _ONE_SIDED_EDGES_C) != 0:
                # One comparison per score where one bound suffices: a head block before the tile's unmasked
                # blocks ends before every row's last key, a tail block starts after every row's first key. The
                # block's column indices are compared with each row's bound relative to the block's first key,
                # and each path masks the scores itself (a mask yielded from the branches would be kept as
                # predicates packed in registers).
                block_key = kv_start + block * BLOCK_N
                cols = gl.expand_dims(gl.arange(0, BLOCK_N, layout=col_layout), 0)
                if (block < masked_head_end) & (unmasked_end > masked_head_end):
                    s = gl.where(cols >= gl.expand_dims(row_pos + (offset - left - block_key), 1), s, float("-inf"))
                elif block >= masked_head_end:
                    last = kv_end - 1 - block_key + row_pos * 0
                    if HAS_RIGHT:
                        last = gl.minimum(row_pos + (offset + right - block_key), last)
                    s = gl.where(cols <= gl.expand_dims(last, 1), s, float("-inf"))
                else:
                    keys = block_key + gl.arange(0, BLOCK_N, layout=col_layout)
                    s = gl.where(_window_visible(keys, row_pos, offset, kv_end, left, right, HAS_LEFT, HAS_RIGHT),
                                 s, float("-inf"))
            else:
                keys = kv_start + block * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
                visible = _window_visible(keys, row_pos, offset, kv_end, left, right, HAS_LEFT, HAS_RIGHT)
                s = gl.where(visible, s, float("-inf"))
        if (SOFTMAX_TRIMS & _VOTED_ROW_MAX_C) != 0:
            # Each thread's maxima over its own columns (a row's scores sit in four threads, two columns per 8),
            # then the vote and, only where a row's max may rise, the shuffles (``_voted_row_max_asm``).
            own = gl.max(gl.max(gl.reshape(s, [s.shape[0], BLOCK_N // 8, 4, 2]), 3), 1)
            quad_rows: gl.constexpr = gl.SliceLayout(1, own.type.layout)
            kept = gl.expand_dims(gl.convert_layout(m_i, quad_rows), 1)
            asm: gl.constexpr = _VOTED_MAX_ASM_LAZY_C if RESCALE_THRESHOLD > 0 else _VOTED_MAX_ASM_EXACT_C
            quad = gl.inline_asm_elementwise(asm, "=f,=f,f,f,f,f,f,f", [own, kept, gl.zeros_like(own) + qk_scale],
                                             dtype=gl.float32, is_pure=True, pack=2)
            # The quad's four copies of a row's max are equal: take the first (no shuffles: ``_first`` ignores the
            # other operand, so the exchange's results are never used).
            m_new = gl.convert_layout(gl.reduce(quad, 1, _first), m_i.type.layout)
        else:
            m_new = kept_max(m_i, gl.maximum(m_i, gl.max(s, 1) * qk_scale), RESCALE_THRESHOLD)
        pivot = safe_pivot(m_new)
        p = gl.exp2(s * qk_scale - gl.expand_dims(pivot, 1))
        alpha = gl.exp2(m_i - pivot)
        if (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
            # Row sums kept per thread (``_partial_sums``): the sum across a row's threads waits for the epilogue.
            part = _partial_sums(p, BLOCK_N)
            l_new = l_i * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, part.type.layout)), 1) + part
        else:
            l_new = l_i * alpha + gl.sum(p, 1)
        return p, m_new, l_new, alpha

    @gluon.jit
    def _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD: gl.constexpr, IN_ORDER: gl.constexpr = False):
        """``acc * alpha`` per row. With the lazy rescale (``RESCALE_THRESHOLD`` > 0) alpha is exactly 1 on every
        row that kept its max, and a warp whose 16 rows all did branches over the multiplications: at head_dim 64
        the rescale (32 multiplications per thread per block) outweighs the block's 16 exponentials.
        ``IN_ORDER``: as side-effecting asm, so LLVM keeps it where the source puts it among the products' issues."""
        if RESCALE_THRESHOLD > 0:
            acc = gl.inline_asm_elementwise(_RESCALE_ASM_C, _RESCALE_CONSTRAINTS_C, [acc, gl.expand_dims(alpha_o, 1)],
                                            dtype=gl.float32, is_pure=not IN_ORDER, pack=_RESCALE_PACK_C)
        elif IN_ORDER:
            acc = gl.inline_asm_elementwise("mul.f32 $0, $1, $2;", "=f,f,f", [acc, gl.expand_dims(alpha_o, 1)],
                                            dtype=gl.float32, is_pure=False, pack=1)
        else:
            acc = acc * gl.expand_dims(alpha_o, 1)
        return acc

    @gluon.jit
    def _named_barrier(OP: gl.constexpr, BARRIER: gl.constexpr):
        """``bar.sync`` / ``bar.arrive`` on hardware barrier ``BARRIER`` over 256 threads (two warpgroups), by every
        thread of the calling warpgroup (side-effecting asm on a one-element tensor that each thread holds)."""
        one = gl.full([1], 0, gl.int32, layout=gl.BlockedLayout([1], [32], [4], [0]))
        gl.inline_asm_elementwise(f"bar.{OP} {BARRIER}, 256;\nmov.u32 $0, $1;", "=r,r", [one], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def _turn_begin(WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: wait until the other warpgroup has issued its products of the previous turn (warpgroup 0 goes
        first: warpgroup 1 arrives once before its first turn, ``_consumer``), so the two issue alternately and
        one's softmax runs under the other's products."""
        if PINGPONG:
            _named_barrier("sync", _TURN_BARRIER_C + WG)

    @gluon.jit
    def _turn_end(WG: gl.constexpr, PINGPONG: gl.constexpr):
        """This warpgroup's products of the turn are issued: the other warpgroup's turn."""
        if PINGPONG:
            _named_barrier("arrive", _TURN_BARRIER_C + 1 - WG)

    @gluon.jit
    def _snake(work, reverse, total_work):
        """The work item a program serves in a round of the persistent grid: program ``p`` serves items ``p, p +
        grid, ...``, and in every other round (``reverse``) the round runs backwards, so the program that took one
        round's longest item takes the next round's shortest. With plain rounds the first program's total exceeds
        the mean by 3.1% on causal 16K D128 (H=32, 128 tiles per head), with the snake by 0.15% (H200 run 10:
        causal D128 3682.3 -> 3555.2 us, W(4095,0) D128 1455.6 -> 1441.0)."""
        if reverse:
            programs = gl.num_programs(0)
            first = work - gl.program_id(0)  # the round's first item
            work = first + gl.minimum(programs, total_work - first) - 1 - gl.program_id(0)
        return work

    @gluon.jit
    def _divmod(n, divisor, magic, shift):
        """``(n // divisor, n % divisor)`` for ``0 <= n < 2**31`` by the host's ``divisor_magic``: one high
        multiplication and a shift (magic 0: divisor 1)."""
        quotient = gl.where(magic == 0, n, (gl.umulhi(n.to(gl.uint32), magic.to(gl.uint32)) >> shift).to(gl.int32))
        return quotient, n - quotient * divisor

    @gluon.jit
    def _tile(work, geometry, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, PACK_GQA: gl.constexpr,
              GROUP: gl.constexpr, IS_VARLEN_Q: gl.constexpr, KV_SOURCE: gl.constexpr, HAS_SEQLENS_K: gl.constexpr,
              ALIGN: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr):
        """Work item ``work`` -> its tile's rows and key range. Items run longest first: the reversed tile index is
        the slow coordinate, so causal's long last tiles of every head start before any short one (``_snake``)."""
        (num_tiles, num_batch_heads, seqlen_q, seqlen_k, kv_rows_per_batch, num_heads, left, right, CU_SEQLENS_Q,
         CU_SEQLENS_K, num_row_groups, SEQLENS_K) = geometry[:12]
        # (work // num_batch_heads, work % ...) and (batch_head // heads per program, ...) by multiplication.
        batch_heads_magic, batch_heads_shift, heads_magic, heads_shift = geometry[15:19]
        reversed_tile, batch_head = _divmod(work, num_batch_heads, batch_heads_magic, batch_heads_shift)
        tile = num_tiles - 1 - reversed_tile
        if PACK_GQA:
            heads_per_program = num_heads // GROUP
            rows_per_pos: gl.constexpr = GROUP
        else:
            heads_per_program = num_heads
            rows_per_pos: gl.constexpr = 1
        batch, head_or_kv_head = _divmod(batch_head, heads_per_program, heads_magic, heads_shift)
        if PACK_GQA:
            kv_head = head_or_kv_head
        else:
            kv_head = head_or_kv_head // GROUP
        q_begin, seqlen_q, k_begin, seqlen_k = sequence_bounds(
            batch, seqlen_q, seqlen_k, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, IS_VARLEN_Q, KV_SOURCE == _KV_VARLEN,
            HAS_SEQLENS_K)
        num_rows = seqlen_q * rows_per_pos
        first_row = tile * BLOCK_M
        first_pos = first_row // rows_per_pos
        last_pos = (gl.minimum(first_row + BLOCK_M, num_rows) - 1) // rows_per_pos
        kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = block_ranges(
            first_pos, last_pos, seqlen_q, seqlen_k, left, right, BLOCK_N, HAS_LEFT, HAS_RIGHT, ALIGN=ALIGN)
        num_blocks = gl.where(first_row < num_rows, num_blocks, 0)  # a tile past a short sequence's rows
        # K/V rows are (token, head * dim) rows of the 2D view: dense batches follow each other. (Pages: the
        # loader looks each box's row up in the page table.)
        kv_row0 = batch * kv_rows_per_batch + k_begin + kv_start
        kv_col = kv_head * HEAD_DIM
        # Non-finite flags are kept per 64-row group (a warpgroup's rows), the tiles of the Triton redo pass.
        flag_group = batch_head * num_row_groups + tile * (BLOCK_M // 64)
        return (kv_row0, kv_col, num_blocks, kv_start, kv_end, masked_head_end, unmasked_end, first_row, num_rows,
                head_or_kv_head, batch, q_begin, seqlen_q, seqlen_k, flag_group)

    @gluon.jit
    def _load_q(q_desc, q_smem, q_ready, tile, q_slot, IS_VARLEN_Q: gl.constexpr, ROWS_PER_POS: gl.constexpr,
                NUM_CONSUMERS: gl.constexpr):
        """The tile's Q ([1, positions, heads, dim] boxes of the [batch, seqlen, heads, dim] view) into Q slot
        ``q_slot``, one 64-row box per consumer warpgroup (TMA boxes and buffers have power-of-two sides)."""
        mbarrier.expect(q_ready.index(q_slot), NUM_CONSUMERS * q_desc.block_type.nbytes)
        if IS_VARLEN_Q:
            q_batch = 0
        else:
            q_batch = tile[10]
        for consumer in gl.static_range(NUM_CONSUMERS):
            first_pos = (tile[7] + consumer * (q_desc.block_type.shape[1] * ROWS_PER_POS)) // ROWS_PER_POS
            _tma_load(q_desc, [q_batch, tile[11] + first_pos, tile[9] * ROWS_PER_POS, 0],
                      q_ready.index(q_slot), q_smem.index(q_slot * NUM_CONSUMERS + consumer))

    @gluon.jit
    def _load_blocks(k_desc, v_desc, buffers, geometry, tile, position, BLOCK_N: gl.constexpr,
                     HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, KV_SOURCE: gl.constexpr):
        """The tile's K and V blocks into the stage ring, from its first visible key; returns the ring's position
        after them."""
        k_smem, v_smem, k_ready, v_ready, k_empty, v_empty = buffers[1:7]
        PAGE_TABLE, stride_page_table, page_size = geometry[12], geometry[13], geometry[14]
        BOX: gl.constexpr = k_desc.block_type.shape[0]  # keys per TMA box: BLOCK_N, or a page's part when paged
        kv_row0, kv_col, num_blocks, kv_start, kv_end = tile[0], tile[1], tile[2], tile[3], tile[4]
        page_row = tile[10].to(gl.int64) * stride_page_table
        last_box_key = (kv_end - 1) - (kv_end - 1) % BOX
        for block in range(num_blocks):
            stage = position % NUM_STAGES
            phase = (position // NUM_STAGES) & 1
            # A fresh barrier counts as having completed the phase before phase 0: the first waits pass.
            if KV_SOURCE == _KV_PAGED:
                # BLOCK_N // BOX boxes, each inside one page (the tile's start is aligned to BOX, BOX divides
                # the page size), their cache rows looked up in the page table. A box past the sequence's last
                # key reloads the last box (its keys are masked): every page read holds a visible key, and the
                # barrier's byte count stays a constant.
                mbarrier.wait(k_empty.index(stage), phase ^ 1)
                mbarrier.expect(k_ready.index(stage), BLOCK_N * HEAD_DIM * k_desc.dtype.primitive_bitwidth // 8)
                for box in gl.static_range(BLOCK_N // BOX):
                    key = gl.minimum(kv_start + block * BLOCK_N + box * BOX, last_box_key)
                    page = gl.load(PAGE_TABLE + page_row + key // page_size)
                    _tma_load(k_desc, [page * page_size + key % page_size, kv_col], k_ready.index(stage),
                              k_smem.index(stage).slice(box * BOX, BOX))
                mbarrier.wait(v_empty.index(stage), phase ^ 1)
                mbarrier.expect(v_ready.index(stage), BLOCK_N * HEAD_DIM * v_desc.dtype.primitive_bitwidth // 8)
                for box in gl.static_range(BLOCK_N // BOX):
                    key = gl.minimum(kv_start + block * BLOCK_N + box * BOX, last_box_key)
                    page = gl.load(PAGE_TABLE + page_row + key // page_size)
                    _tma_load(v_desc, [page * page_size + key % page_size, kv_col], v_ready.index(stage),
                              v_smem.index(stage).slice(box * BOX, BOX))
            else:
                row = kv_row0 + block * BLOCK_N
                mbarrier.wait(k_empty.index(stage), phase ^ 1)
                mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
                _tma_load(k_desc, [row, kv_col], k_ready.index(stage), k_smem.index(stage))
                mbarrier.wait(v_empty.index(stage), phase ^ 1)
                mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
                _tma_load(v_desc, [row, kv_col], v_ready.index(stage), v_smem.index(stage))
            position += 1
        return position

    @gluon.jit
    def _loader(geometry, pointers, strides, scalars, buffers, WG: gl.constexpr, HAS_LEFT: gl.constexpr,
                HAS_RIGHT: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr,
                PACK_GQA: gl.constexpr, GROUP: gl.constexpr, STORE_LSE: gl.constexpr, FLAG_NAN: gl.constexpr,
                BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
                IS_VARLEN_Q: gl.constexpr, KV_SOURCE: gl.constexpr, HAS_SEQLENS_K: gl.constexpr,
                ROWS_PER_POS: gl.constexpr, PINGPONG: gl.constexpr, NUM_CONSUMERS: gl.constexpr,
                TMA_STORE: gl.constexpr, RESCALE_THRESHOLD: gl.constexpr,
                SOFTMAX_TRIMS: gl.constexpr):
        """One warp: each work item's Q (one box per consumer warpgroup, into the item's Q slot) and K/V blocks
        (into the stage ring, from the tile's first visible key; over pages, one box per page part) through TMA.
        Both rings' positions run on across items, so the next tile's Q and first blocks load during this one's last
        blocks and epilogue."""
        k_desc, v_desc, q_desc = pointers[0], pointers[1], pointers[2]
        q_smem, q_ready, q_empty = buffers[0], buffers[7], buffers[8]
        Q_SLOTS: gl.constexpr = 2 if HEAD_DIM <= 128 else 1  # as the kernel allocates them
        BOX: gl.constexpr = k_desc.block_type.shape[0]
        ALIGN: gl.constexpr = BOX if KV_SOURCE == _KV_PAGED else 1
        BLOCK_M: gl.constexpr = NUM_CONSUMERS * q_desc.block_type.shape[1] * ROWS_PER_POS
        total_work = geometry[0] * geometry[1]
        position = 0
        item = 0  # work items with keys so far: the Q ring's position
        reverse = False
        for work in range(gl.program_id(0), total_work, gl.num_programs(0)):
            tile = _tile(_snake(work, reverse, total_work), geometry, HAS_LEFT, HAS_RIGHT, PACK_GQA, GROUP,
                         IS_VARLEN_Q, KV_SOURCE, HAS_SEQLENS_K, ALIGN, BLOCK_N, HEAD_DIM, BLOCK_M)
            if tile[2] > 0:
                # Loaded while the consumers still work on the previous item: its latency leaves the
                # critical path.
                q_slot = item % Q_SLOTS
                mbarrier.wait(q_empty.index(q_slot), ((item // Q_SLOTS) & 1) ^ 1)
                _load_q(q_desc, q_smem, q_ready, tile, q_slot, IS_VARLEN_Q, ROWS_PER_POS, NUM_CONSUMERS)
                item += 1
            position = _load_blocks(k_desc, v_desc, buffers, geometry, tile, position, BLOCK_N, HEAD_DIM,
                                    NUM_STAGES, KV_SOURCE)
            reverse = not reverse

    @gluon.jit
    def _store_o(O, out, layout: gl.constexpr, first_row, num_rows, head_or_kv_head, batch64, q_begin, stride_ob,
                 stride_os, stride_oh, PACK_GQA: gl.constexpr, GROUP: gl.constexpr, ROWS_PER_POS: gl.constexpr,
                 M: gl.constexpr, HEAD_DIM: gl.constexpr):
        """Per-thread stores of a warpgroup's ``M`` rows of O (in ``layout``), rows past the sequence masked."""
        rows = first_row + gl.arange(0, M, layout=gl.SliceLayout(1, layout))
        positions = rows // ROWS_PER_POS
        if PACK_GQA:
            heads = head_or_kv_head * GROUP + rows % GROUP
        else:
            heads = head_or_kv_head + rows * 0
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
        mask = gl.expand_dims(rows < num_rows, 1) & gl.expand_dims(offs_d < HEAD_DIM, 0)
        pointers = (O + batch64 * stride_ob + gl.expand_dims((q_begin + positions).to(gl.int64) * stride_os
                                                             + heads.to(gl.int64) * stride_oh, 1)
                    + gl.expand_dims(offs_d, 0))
        gl.store(pointers, out, mask=mask)

    @gluon.jit
    def _consume_item(work, position, item, stored, stored_slot, seen_nan, prefetched, s_pending, next_work,
                      geometry, pointers, strides, scalars,
                      buffers,
                      WG: gl.constexpr, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, HAS_SOFTCAP: gl.constexpr,
                      HAS_SINKS: gl.constexpr, PACK_GQA: gl.constexpr, GROUP: gl.constexpr, STORE_LSE: gl.constexpr,
                      FLAG_NAN: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
                      IS_VARLEN_Q: gl.constexpr, KV_SOURCE: gl.constexpr, HAS_SEQLENS_K: gl.constexpr,
                      ROWS_PER_POS: gl.constexpr, PINGPONG: gl.constexpr, NUM_CONSUMERS: gl.constexpr,
                      TMA_STORE: gl.constexpr, RESCALE_THRESHOLD: gl.constexpr,
                SOFTMAX_TRIMS: gl.constexpr):
        """One warpgroup's rows ``[WG * M, WG * M + M)`` (M: 64 or 128) of work item ``work``'s tile, from Q to O;
        returns the consumer's running state ``(position, item, stored, stored_slot, seen_nan, prefetched,
        s_pending)`` after it (``seen_nan``: per row position of the warpgroup, 1 once a row there held a NaN in any
        tile so far; ``prefetched``: 1 when ``s_pending`` holds the first block's scores of ``next_work`` (the
        next item, or -1), computed under this item's epilogue: ``OVERLAP_TILES``)."""
        O, LSE, SINKS, FLAGS, ANY_NAN, o_desc = pointers[3:9]
        stride_ob, stride_os, stride_oh, stride_lb, stride_lq, stride_lh = strides
        softmax_scale, softcap, left, right = scalars[:4]
        q_smem, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, q_ready, q_empty = buffers
        dtype: gl.constexpr = v_smem.dtype  # P's and O's: V's (bf16 with e4m3 Q and K, see ``FP8_QK``)
        FP8_QK: gl.constexpr = q_smem.dtype.primitive_bitwidth == 8
        M: gl.constexpr = q_smem.shape[2] * ROWS_PER_POS  # the warpgroup's rows: its Q box's (64 or 128)
        Q_SLOTS: gl.constexpr = 2 if HEAD_DIM <= 128 else 1  # as the kernel allocates them
        BOX: gl.constexpr = pointers[0].block_type.shape[0]  # as the loader's
        ALIGN: gl.constexpr = BOX if KV_SOURCE == _KV_PAGED else 1

        # The scores' instruction reduces 32 bytes: 16 bf16/fp16 or 32 e4m3 elements.
        S_INSTR_K: gl.constexpr = 256 // q_smem.dtype.primitive_bitwidth
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, S_INSTR_K])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        # 16-byte vectors along the head dimension for the O store.
        io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [4, 1], [1, 0])

        (kv_row0, kv_col, num_blocks, kv_start, kv_end, masked_head_end, unmasked_end, first_row, num_rows,
         head_or_kv_head, batch, q_begin, seqlen_q, seqlen_k, flag_group) = _tile(
            work, geometry, HAS_LEFT, HAS_RIGHT, PACK_GQA, GROUP, IS_VARLEN_Q,
            KV_SOURCE, HAS_SEQLENS_K, ALIGN, BLOCK_N, HEAD_DIM, NUM_CONSUMERS * M)
        offset = seqlen_k - seqlen_q
        batch64 = batch.to(gl.int64)
        if FP8_QK:
            # All-fp8 (``FP8_QK``): descales [B, Hk], one per sequence and KV head, so one per tile (a PackGQA tile
            # holds one KV head), as the Triton kernel applies them: q_descale * k_descale folds into the scores'
            # scale, v_descale (V's bf16 copy holds the raw e4m3 values) scales the normalized output.
            Q_DESCALE, K_DESCALE, V_DESCALE, stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh = (
                scalars[4:])
            if PACK_GQA:
                kv_head64 = head_or_kv_head.to(gl.int64)
            else:
                kv_head64 = (head_or_kv_head // GROUP).to(gl.int64)
            softmax_scale = (softmax_scale * gl.load(Q_DESCALE + batch64 * stride_qdb + kv_head64 * stride_qdh)
                             * gl.load(K_DESCALE + batch64 * stride_kdb + kv_head64 * stride_kdh))
            value_scale = gl.load(V_DESCALE + batch64 * stride_vdb + kv_head64 * stride_vdh)
        # The epilogue's rows and sinks: the sinks' load is issued here, before the tile's products, so its latency
        # stays out of the epilogue (a small window's tile is a few blocks long).
        o_m = first_row + WG * M + gl.arange(0, M, layout=o_rows)
        o_valid = o_m < num_rows
        if PACK_GQA:
            o_pos = o_m // GROUP
            o_head = head_or_kv_head * GROUP + o_m % GROUP
        else:
            o_pos = o_m
            o_head = head_or_kv_head + o_m * 0
        if HAS_SINKS:
            sink = gl.load(SINKS + o_head, mask=o_valid, other=0.0).to(gl.float32) * LOG2E

        s_m = first_row + WG * M + gl.arange(0, M, layout=s_rows)
        row_pos = s_m // ROWS_PER_POS

        m_i = gl.full([M], float("-inf"), gl.float32, layout=s_rows)
        if (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
            l_i = _partial_sums(gl.zeros([M, BLOCK_N], gl.float32, layout=s_layout), BLOCK_N)
        else:
            l_i = gl.zeros([M], gl.float32, layout=s_rows)
        acc = gl.zeros([M, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([M, BLOCK_N], gl.float32, layout=s_layout)

        q_slot = item % Q_SLOTS
        OVERLAP: gl.constexpr = ((SOFTMAX_TRIMS & _OVERLAP_TILES_C) != 0 and Q_SLOTS == 2 and not TMA_STORE
                                 and not PINGPONG)
        # ``HALF_DIAGONAL``: in the first of two 64-row warpgroups, the tile's last block over its first HALF_N keys
        # where that is exact (``halved``, below). Off: the code is the shipped code (compile-time conditions).
        HALF_N: gl.constexpr = BLOCK_N // 2
        # Three warpgroups (192-row tiles over 128-key blocks): any of them may end inside the last block's first
        # half (the runtime test ``halved`` decides per warpgroup), so all three carry the halved step.
        HALF: gl.constexpr = ((SOFTMAX_TRIMS & _HALF_DIAGONAL_C) != 0
                              and ((WG == 0 and NUM_CONSUMERS == 2) or NUM_CONSUMERS == 3)
                              and M == 64 and BLOCK_N == 128 and HEAD_DIM <= 128 and not PACK_GQA and not PINGPONG
                              and not OVERLAP)
        if num_blocks > 0:
            # Block 0: its scores, then its softmax; its P @ V is issued in the next step (or after the loop).
            if OVERLAP:
                fresh = prefetched == 0
                prefetched = 0
            else:
                fresh: gl.constexpr = True  # a compile-time condition: the shipped code has no branch here
            if fresh:
                # This warpgroup's M rows of the tile's Q, which the loader brought in by TMA.
                mbarrier.wait(q_ready.index(q_slot), (item // Q_SLOTS) & 1)
                q_tile = q_smem.index(q_slot * NUM_CONSUMERS + WG).reshape([M, HEAD_DIM])
                first_stage = position % NUM_STAGES
                mbarrier.wait(k_ready.index(first_stage), (position // NUM_STAGES) & 1)
                _turn_begin(WG, PINGPONG)
                s_token = warpgroup_mma(q_tile, k_smem.index(first_stage).permute((1, 0)), s_zero, use_acc=False,
                                        is_async=True)
                _turn_end(WG, PINGPONG)
                if TMA_STORE and stored > 0:
                    # The previous tile's O left through its Q slot (TMA store): once that store has read it,
                    # the slot goes back to the loader, a whole tile before the loader needs it.
                    tma.store_wait(0)
                    mbarrier.arrive(q_empty.index(stored_slot), count=1)
                    stored = 0
                s = warpgroup_mma_wait(0, deps=[s_token])
            else:
                # Computed during the previous item's epilogue, behind its last P V (``OVERLAP_TILES``).
                s = s_pending
                q_tile = q_smem.index(q_slot * NUM_CONSUMERS + WG).reshape([M, HEAD_DIM])
                first_stage = position % NUM_STAGES
            _release(k_empty.index(first_stage), SOFTMAX_TRIMS)
            p, m_i, l_i, alpha = _softmax_block(
                s, m_i, l_i, 0, kv_start, kv_end, row_pos, offset, masked_head_end, unmasked_end, left, right,
                softmax_scale, softcap, s_cols, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_N, RESCALE_THRESHOLD,
                SOFTMAX_TRIMS & ~_VOTED_ROW_MAX_C)  # no vote: every row's max is still -inf, every row rises
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            alpha_o = gl.convert_layout(alpha, o_rows)
            if (SOFTMAX_TRIMS & _CARRIED_RING_C) != 0:
                stage = first_stage
                phase = (position // NUM_STAGES) & 1
            loop_end = num_blocks
            if HALF:
                # The invariant ``halved`` rests on: no row of this warpgroup sees a key at or past ``half_end``, its
                # last row's last visible key + 1 (the window's right edge, bottom-right aligned by ``offset``; at
                # most the tile's ``kv_end``, past which every row's keys are masked: rows past the sequence, which
                # are never stored, only see further). Keys are visible to a row up to its last key, so a row's
                # visible keys are a prefix of the keys up to that edge: if ``half_end`` is at most the last block's
                # first key + HALF_N, the block's keys HALF_N..BLOCK_N-1 score -inf in every row here, exp2 makes them
                # exactly 0, and they change no row max, no row sum (adding +0) and no P V term (P = 0), so the block
                # may be computed over its first HALF_N keys alone (masked as an edge block: the last block is one
                # whenever this holds, since the tile's first row is this warpgroup's first). Block 0 is never
                # halved (a tile of one block takes the shipped path). Causal 128-row tiles on the diagonal: rows
                # 0-63 end at the last block's key 63, so every tile of two or more blocks is halved.
                half_end = gl.minimum(last_visible_key(first_row + WG * M + M - 1, seqlen_q, seqlen_k, right,
                                                       HAS_RIGHT) + 1, kv_end)
                halved = (num_blocks > 1) & (half_end <= kv_start + (num_blocks - 1) * BLOCK_N + HALF_N)
                loop_end = num_blocks - halved.to(gl.int32)
                if NUM_CONSUMERS == 3:
                    # A 192-row tile starts on a block boundary or 64 keys into a block, so the first warpgroups'
                    # rows may end before the last block (causal, even tiles: warpgroups 0 and 1; odd: 0): such a
                    # warpgroup (``skipped``: ``half_end`` at most the block's first key, none of it visible) ends
                    # on P_{L-1} V_{L-1} and computes nothing of block L.
                    skipped = halved & (half_end <= kv_start + (num_blocks - 1) * BLOCK_N)
                    half_step = halved & (half_end > kv_start + (num_blocks - 1) * BLOCK_N)
                else:
                    half_step = halved
            for block in range(1, loop_end):
                if (SOFTMAX_TRIMS & _CARRIED_RING_C) != 0:
                    previous_stage = stage
                    previous_phase = phase
                    wrapped = stage == NUM_STAGES - 1
                    stage = gl.where(wrapped, 0, stage + 1)
                    phase = gl.where(wrapped, phase ^ 1, phase)
                else:
                    stage = (position + block) % NUM_STAGES
                    phase = ((position + block) // NUM_STAGES) & 1
                    previous = position + block - 1
                    previous_stage = previous % NUM_STAGES
                    previous_phase = (previous // NUM_STAGES) & 1
                # S_j = Q K_j^T, then P_{j-1} V_{j-1}: both in flight while this warpgroup waits for S_j.
                mbarrier.wait(k_ready.index(stage), phase)
                if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) != 0:
                    _turn_begin(WG, PINGPONG)
                    s_token = warpgroup_mma(q_tile, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False,
                                            is_async=True)
                    acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD, True)
                    mbarrier.wait(v_ready.index(previous_stage), previous_phase)
                else:
                    mbarrier.wait(v_ready.index(previous_stage), previous_phase)
                    _turn_begin(WG, PINGPONG)
                    s_token = warpgroup_mma(q_tile, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False,
                                            is_async=True)
                acc_token = warpgroup_mma(p_op, v_smem.index(previous_stage), acc, is_async=True)
                _turn_end(WG, PINGPONG)
                s = warpgroup_mma_wait(1, deps=[s_token])
                _release(k_empty.index(stage), SOFTMAX_TRIMS)
                p, m_i, l_i, alpha = _softmax_block(
                    s, m_i, l_i, block, kv_start, kv_end, row_pos, offset, masked_head_end, unmasked_end, left,
                    right, softmax_scale, softcap, s_cols, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_N,
                    RESCALE_THRESHOLD, SOFTMAX_TRIMS)
                if (SOFTMAX_TRIMS & _PV_WAIT_LATE_C) != 0 and (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
                    l_i = _block_end(l_i)
                acc = warpgroup_mma_wait(0, deps=[acc_token])
                _release(v_empty.index(previous_stage), SOFTMAX_TRIMS)
                alpha_o = gl.convert_layout(alpha, o_rows)
                if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) == 0:
                    acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
            if not TMA_STORE and not HALF:
                # Every score product of the tile has completed: its Q slot may take the loader's next tile.
                mbarrier.arrive(q_empty.index(q_slot), count=1)
            item += 1
            last = position + num_blocks - 1
            last_stage = last % NUM_STAGES
            if HALF:
                if half_step:
                    # The loop's step for the last block (L = num_blocks - 1) with a HALF_N-key scores product:
                    # S_L = Q K_L[:HALF_N]^T and P_{L-1} V_{L-1} in flight, the softmax of S_L (an edge block:
                    # masked; ``_softmax_block``'s keys are ``kv_start + block * HALF_N + column``, so its start is
                    # moved by L * HALF_N to give the block's real keys), then P_L V_L[:HALF_N] (K = HALF_N).
                    half_layout: gl.constexpr = gl.NVMMADistributedLayout(
                        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF_N, S_INSTR_K])
                    half_rows: gl.constexpr = gl.SliceLayout(1, half_layout)
                    half_zero = gl.zeros([M, HALF_N], gl.float32, layout=half_layout)
                    before_last = last - 1
                    before_last_stage = before_last % NUM_STAGES
                    mbarrier.wait(k_ready.index(last_stage), (last // NUM_STAGES) & 1)
                    k_half = k_smem.index(last_stage).slice(0, HALF_N).permute((1, 0))
                    if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) != 0:
                        half_token = warpgroup_mma(q_tile, k_half, half_zero, use_acc=False, is_async=True)
                        acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD, True)
                        mbarrier.wait(v_ready.index(before_last_stage), (before_last // NUM_STAGES) & 1)
                    else:
                        mbarrier.wait(v_ready.index(before_last_stage), (before_last // NUM_STAGES) & 1)
                        half_token = warpgroup_mma(q_tile, k_half, half_zero, use_acc=False, is_async=True)
                    before_token = warpgroup_mma(p_op, v_smem.index(before_last_stage), acc, is_async=True)
                    half_s = warpgroup_mma_wait(1, deps=[half_token])
                    _release(k_empty.index(last_stage), SOFTMAX_TRIMS)
                    # The running max and sums in the HALF_N-column layouts (the same registers: each thread holds
                    # the same rows, and the same columns of every 8-column group, at any N).
                    l_layout: gl.constexpr = l_i.type.layout
                    if (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
                        half_l = gl.convert_layout(l_i, _partial_sums(half_zero, HALF_N).type.layout)
                    else:
                        half_l = gl.convert_layout(l_i, half_rows)
                    half_row_pos = (first_row + WG * M + gl.arange(0, M, layout=half_rows)) // ROWS_PER_POS
                    half_p, half_m, half_l, half_alpha = _softmax_block(
                        half_s, gl.convert_layout(m_i, half_rows), half_l, num_blocks - 1,
                        kv_start + (num_blocks - 1) * HALF_N, kv_end, half_row_pos, offset, masked_head_end,
                        unmasked_end, left, right, softmax_scale, softcap, gl.SliceLayout(0, half_layout), HAS_LEFT,
                        HAS_RIGHT, HAS_SOFTCAP, HALF_N, RESCALE_THRESHOLD, SOFTMAX_TRIMS)
                    if (SOFTMAX_TRIMS & _PV_WAIT_LATE_C) != 0 and (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
                        half_l = _block_end(half_l)
                    acc = warpgroup_mma_wait(0, deps=[before_token])
                    _release(v_empty.index(before_last_stage), SOFTMAX_TRIMS)
                    half_alpha_o = gl.convert_layout(half_alpha, o_rows)
                    m_i = gl.convert_layout(half_m, s_rows)
                    l_i = gl.convert_layout(half_l, l_layout)
                    # The tile's last P V, over the V stage's first HALF_N rows (the keys P covers).
                    acc = _rescale_acc(acc, half_alpha_o, RESCALE_THRESHOLD)
                    half_p_op = gl.convert_layout(half_p.to(dtype), p_layout)
                    mbarrier.wait(v_ready.index(last_stage), (last // NUM_STAGES) & 1)
                    half_pv = warpgroup_mma(half_p_op, v_smem.index(last_stage).slice(0, HALF_N), acc,
                                            is_async=True)
                    acc = warpgroup_mma_wait(0, deps=[half_pv])
                elif NUM_CONSUMERS == 3:
                    # The shipped last P V, or for a ``skipped`` warpgroup P_{L-1} V_{L-1} (the loop stopped before
                    # block L); block L's stages are then released after waiting for them to fill: a warpgroup that
                    # skipped a ready wait could meet the stage's next use with the barrier one phase behind, and
                    # its parity wait would pass at once on the stale phase.
                    tail = last - skipped.to(gl.int32)
                    tail_stage = tail % NUM_STAGES
                    if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) != 0:
                        acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD)
                    mbarrier.wait(v_ready.index(tail_stage), (tail // NUM_STAGES) & 1)
                    tail_token = warpgroup_mma(p_op, v_smem.index(tail_stage), acc, is_async=True)
                    acc = warpgroup_mma_wait(0, deps=[tail_token])
                    if skipped:
                        _release(v_empty.index(tail_stage), SOFTMAX_TRIMS)
                        mbarrier.wait(k_ready.index(last_stage), (last // NUM_STAGES) & 1)
                        _release(k_empty.index(last_stage), SOFTMAX_TRIMS)
                        mbarrier.wait(v_ready.index(last_stage), (last // NUM_STAGES) & 1)
                else:
                    # The shipped last P V (below), without ping-pong's turns or ``OVERLAP_TILES``.
                    if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) != 0:
                        acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD)
                    mbarrier.wait(v_ready.index(last_stage), (last // NUM_STAGES) & 1)
                    full_token = warpgroup_mma(p_op, v_smem.index(last_stage), acc, is_async=True)
                    acc = warpgroup_mma_wait(0, deps=[full_token])
                _release(v_empty.index(last_stage), SOFTMAX_TRIMS)
                if not TMA_STORE:
                    # Every score product of the tile has completed (the halved one included).
                    mbarrier.arrive(q_empty.index(q_slot), count=1)
            else:
                if (SOFTMAX_TRIMS & _RESCALE_EARLY_C) != 0:
                    acc = _rescale_acc(acc, alpha_o, RESCALE_THRESHOLD)
                mbarrier.wait(v_ready.index(last_stage), (last // NUM_STAGES) & 1)
                _turn_begin(WG, PINGPONG)
                acc_token = warpgroup_mma(p_op, v_smem.index(last_stage), acc, is_async=True)
                _turn_end(WG, PINGPONG)
                if OVERLAP:
                    # The next item's first scores product behind this last P V: the tensor cores run it during this
                    # tile's epilogue. Its Q is in the other slot and its first K block is the ring's next stage, so
                    # the loader's order is unchanged. It is issued on every path (without a next item with keys, on
                    # whatever the next slot and stage hold, its result dropped): ptxas serializes every product of
                    # the kernel when some path defines a product's accumulator otherwise (C7515).
                    next_blocks = 0
                    if next_work >= 0:
                        next_blocks = _tile(next_work, geometry, HAS_LEFT, HAS_RIGHT, PACK_GQA, GROUP, IS_VARLEN_Q,
                                            KV_SOURCE, HAS_SEQLENS_K, ALIGN, BLOCK_N, HEAD_DIM, NUM_CONSUMERS * M)[2]
                    has_next = next_blocks > 0
                    next_slot = item % Q_SLOTS
                    next_stage = (position + num_blocks) % NUM_STAGES
                    mbarrier.wait(q_ready.index(next_slot), (item // Q_SLOTS) & 1, pred=has_next)
                    mbarrier.wait(k_ready.index(next_stage), ((position + num_blocks) // NUM_STAGES) & 1, pred=has_next)
                    next_scores = warpgroup_mma(q_smem.index(next_slot * NUM_CONSUMERS + WG).reshape([M, HEAD_DIM]),
                                                k_smem.index(next_stage).permute((1, 0)), s_zero, use_acc=False,
                                                is_async=True)
                    acc = warpgroup_mma_wait(1, deps=[acc_token])
                    prefetched = has_next.to(gl.int32)
                else:
                    acc = warpgroup_mma_wait(0, deps=[acc_token])
                _release(v_empty.index(last_stage), SOFTMAX_TRIMS)
        elif OVERLAP:
            # A tile without keys: the pipeline's shape as on the other path, a product whose result is dropped.
            next_scores = warpgroup_mma(q_smem.index(WG).reshape([M, HEAD_DIM]), k_smem.index(0).permute((1, 0)),
                                        s_zero, use_acc=False, is_async=True)
            prefetched = 0

        # Epilogue, as the Triton kernel's _finish_tile: NaN flags, then the sink, LSE and one factor per row
        # (``finish_rows``, shared with it), O.
        m_o = gl.convert_layout(m_i, o_rows)
        if (SOFTMAX_TRIMS & _THREAD_ROW_SUMS_C) != 0:
            l_i = gl.sum(l_i, 1)
        l_o = gl.convert_layout(l_i, o_rows)
        if FLAG_NAN:
            row_sum = gl.sum(acc, 1)
            row_has_nan = (row_sum != row_sum) & o_valid  # rows past the sequence hold another's Q (TMA)
            flag_index = flag_group.to(gl.int64) * 64 + WG * M + gl.arange(0, M, layout=o_rows)
            # Every row of a 64-row group that holds a row of the sequence: the redo pass reads whole groups.
            gl.store(FLAGS + flag_index, row_has_nan.to(gl.int8), mask=o_m // 64 * 64 < num_rows)
            # The raised flag is set once per program, after its last tile (``_consumer``): an atomic per tile cost
            # ~35 instructions of a 64-row tile's ~700 of per-tile code (H200 Nsight Compute, W(127,0) D64).
            seen_nan = seen_nan | row_has_nan.to(gl.int32)
        if not HAS_SINKS:
            sink = m_o
        row_factor, lse = finish_rows(m_o, l_o, sink, HAS_SINKS, FAST_LOG2=True)
        if FP8_QK:
            row_factor = row_factor * value_scale
        if STORE_LSE:
            lse_ptrs = (LSE + batch64 * stride_lb + o_head.to(gl.int64) * stride_lh
                        + (q_begin + o_pos).to(gl.int64) * stride_lq)
            gl.store(lse_ptrs, lse, mask=o_valid)
        out = acc * gl.expand_dims(row_factor, 1)
        if TMA_STORE and num_blocks > 0:
            # O through this warpgroup's box of the tile's Q slot (its products are done) and one TMA store;
            # positions past a dense sequence are clipped by the descriptor.
            o_box = q_smem.index(q_slot * NUM_CONSUMERS + WG)
            o_box.reshape([M, HEAD_DIM]).store(out.to(dtype))
            fence_async_shared()
            _partition_barrier()
            if IS_VARLEN_Q:
                o_batch = 0
            else:
                o_batch = batch
            _tma_store(o_desc, [o_batch, q_begin + (first_row + WG * M) // ROWS_PER_POS,
                                head_or_kv_head * ROWS_PER_POS, 0], o_box)
            stored = 1
            stored_slot = q_slot
        elif HEAD_DIM > 128 or TMA_STORE:
            # Converting a 64 x D tile to the vectorized layout takes 64 * D * 2 bytes of scratch shared memory: at
            # head_dim 256 the K/V stages and the Q slot leave no room for it, and with the TMA store only a tile
            # without keys (its rows all zero) comes here, which should not cost every program 8-16 KiB of shared
            # memory (a fifth of a 4-programs-per-SM budget): store from the accumulator's layout.
            _store_o(O, out.to(dtype), o_layout, first_row + WG * M, num_rows, head_or_kv_head, batch64, q_begin,
                     stride_ob, stride_os, stride_oh, PACK_GQA, GROUP, ROWS_PER_POS, M, HEAD_DIM)
        else:
            _store_o(O, gl.convert_layout(out.to(dtype), io_layout), io_layout, first_row + WG * M, num_rows,
                     head_or_kv_head, batch64, q_begin, stride_ob, stride_os, stride_oh, PACK_GQA, GROUP,
                     ROWS_PER_POS, M, HEAD_DIM)
        if OVERLAP:
            s_pending = warpgroup_mma_wait(0, deps=[next_scores])
        position += num_blocks
        return position, item, stored, stored_slot, seen_nan, prefetched, s_pending

    @gluon.jit
    def _consumer(geometry, pointers, strides, scalars, buffers, WG: gl.constexpr, HAS_LEFT: gl.constexpr,
                  HAS_RIGHT: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr,
                  PACK_GQA: gl.constexpr, GROUP: gl.constexpr, STORE_LSE: gl.constexpr, FLAG_NAN: gl.constexpr,
                  BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
                  IS_VARLEN_Q: gl.constexpr, KV_SOURCE: gl.constexpr, HAS_SEQLENS_K: gl.constexpr,
                  ROWS_PER_POS: gl.constexpr, PINGPONG: gl.constexpr, NUM_CONSUMERS: gl.constexpr,
                  TMA_STORE: gl.constexpr, RESCALE_THRESHOLD: gl.constexpr,
                SOFTMAX_TRIMS: gl.constexpr):
        """One warpgroup: rows ``[WG * M, WG * M + M)`` of each work item's tile, from Q load to O store, over the
        persistent grid's rounds (``_snake``)."""
        total_work = geometry[0] * geometry[1]
        position = 0  # blocks consumed so far: the stage ring's position, shared with the loader's count
        item = 0  # work items with keys so far: the Q ring's position, shared with the loader's count
        stored = 0  # 1 while a TMA store of O from Q slot ``stored_slot`` may still be reading it
        stored_slot = 0
        o_rows: gl.constexpr = gl.SliceLayout(1, gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                                             instr_shape=[16, HEAD_DIM, 16]))
        M: gl.constexpr = buffers[0].shape[2] * ROWS_PER_POS  # as _consume_item's rows
        seen_nan = gl.zeros([M], gl.int32, layout=o_rows)
        if PINGPONG and WG == 1:
            _named_barrier("arrive", _TURN_BARRIER_C)  # warpgroup 0 takes the first turn
        reverse = False
        # ``OVERLAP_TILES``: the next item's first scores product, issued by the item before it.
        prefetched = 0
        s_instr_k: gl.constexpr = 256 // buffers[0].dtype.primitive_bitwidth  # as _consume_item's scores
        s_pending = gl.zeros([M, BLOCK_N], gl.float32, layout=gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, s_instr_k]))
        for work in range(gl.program_id(0), total_work, gl.num_programs(0)):
            next_work = work + gl.num_programs(0)
            next_work = gl.where(next_work < total_work, _snake(next_work, not reverse, total_work), -1)
            position, item, stored, stored_slot, seen_nan, prefetched, s_pending = _consume_item(
                _snake(work, reverse, total_work), position, item, stored, stored_slot, seen_nan, prefetched,
                s_pending, next_work, geometry,
                pointers, strides, scalars, buffers, WG, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, HAS_SINKS, PACK_GQA, GROUP,
                STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q, KV_SOURCE, HAS_SEQLENS_K,
                ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)
            reverse = not reverse
        if TMA_STORE:
            tma.store_wait(0)  # the last tile's O is written before the program ends
        if FLAG_NAN:
            # The redo pass (the next launch) reads the raised flag: one atomic per program that saw a NaN row.
            ANY_NAN = pointers[7]
            gl.atomic_max(ANY_NAN + seen_nan * 0, gl.full([M], 1, gl.int32, layout=o_rows), mask=seen_nan != 0)

    @gluon.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right"])
    def _swa_fwd_sm90_kernel(
        q_desc, k_desc, v_desc, o_desc, O, LSE, SINKS, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, PAGE_TABLE, FLAGS,
        ANY_NAN, Q_DESCALE, K_DESCALE, V_DESCALE, stride_ob, stride_os, stride_oh, stride_lb, stride_lq, stride_lh,
        stride_page_table, seqlen_q, seqlen_k, kv_rows_per_batch, num_heads, softmax_scale, softcap, left, right,
        num_tiles, num_batch_heads, num_row_groups, page_size, stride_qdb, stride_qdh, stride_kdb, stride_kdh,
        stride_vdb, stride_vdh, batch_heads_magic, batch_heads_shift, heads_magic, heads_shift,
        HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr,
        IS_VARLEN_Q: gl.constexpr, KV_SOURCE: gl.constexpr, HAS_SEQLENS_K: gl.constexpr, PACK_GQA: gl.constexpr,
        GROUP: gl.constexpr,
        STORE_LSE: gl.constexpr, FLAG_NAN: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
        NUM_STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr, LOADER_REGS: gl.constexpr,
        ROWS_PER_POS: gl.constexpr, PINGPONG: gl.constexpr, NUM_CONSUMERS: gl.constexpr,
        TMA_STORE: gl.constexpr, RESCALE_THRESHOLD: gl.constexpr, SOFTMAX_TRIMS: gl.constexpr,
    ):
        """Persistent grid: program p serves work items p, p + grid, ... of the ``num_tiles * num_batch_heads``
        (tile, batch-and-head) items, longest tiles first (``_tile``). See the module docstring."""
        geometry = (num_tiles, num_batch_heads, seqlen_q, seqlen_k, kv_rows_per_batch, num_heads, left, right,
                    CU_SEQLENS_Q, CU_SEQLENS_K, num_row_groups, SEQLENS_K, PAGE_TABLE, stride_page_table, page_size,
                    batch_heads_magic, batch_heads_shift, heads_magic, heads_shift)

        # Two Q tiles (the one in use and the loader's next), each a [1, positions, heads, dim] TMA box of 64 rows
        # per consumer warpgroup.
        # Q slots: two (the next tile's Q arrives during this one) up to head_dim 128; one at 256, where two would
        # not fit beside the K/V stages (2 x 64 KiB of Q + 128 KiB of K/V in 64-key blocks).
        Q_SLOTS: gl.constexpr = 2 if HEAD_DIM <= 128 else 1
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [Q_SLOTS * NUM_CONSUMERS] + q_desc.block_type.shape,
                                           q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        # One arrival per consumer warpgroup, or per consumer thread (``_release``).
        releases: gl.constexpr = NUM_CONSUMERS * 128 if (SOFTMAX_TRIMS & _THREAD_RELEASE_C) != 0 else NUM_CONSUMERS
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=releases)
            mbarrier.init(v_empty.index(i), count=releases)
        for i in gl.static_range(2):
            mbarrier.init(q_ready.index(i), count=1)
            mbarrier.init(q_empty.index(i), count=NUM_CONSUMERS)

        pointers = (k_desc, v_desc, q_desc, O, LSE, SINKS, FLAGS, ANY_NAN, o_desc)
        strides = (stride_ob, stride_os, stride_oh, stride_lb, stride_lq, stride_lh)
        if q_desc.dtype.primitive_bitwidth == 8:
            # All-fp8 (e4m3 Q and K, V as its bf16 copy): the descales ride with the scalars (``_consume_item``).
            scalars = (softmax_scale, softcap, left, right, Q_DESCALE, K_DESCALE, V_DESCALE, stride_qdb, stride_qdh,
                       stride_kdb, stride_kdh, stride_vdb, stride_vdh)
        else:
            scalars = (softmax_scale, softcap, left, right)
        buffers = (q_smem, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, q_ready, q_empty)
        # (Gluon's partitions take their arguments spelled out: no starred tuples.)
        if NUM_CONSUMERS == 3:
            gl.warp_specialize([
                (_consumer, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_consumer, (geometry, pointers, strides, scalars, buffers, 1, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_consumer, (geometry, pointers, strides, scalars, buffers, 2, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_loader, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
            ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, LOADER_REGS])
        elif NUM_CONSUMERS == 1:
            gl.warp_specialize([
                (_consumer, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_loader, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
            ], [1], [LOADER_REGS])
        else:
            gl.warp_specialize([
                (_consumer, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_consumer, (geometry, pointers, strides, scalars, buffers, 1, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
                (_loader, (geometry, pointers, strides, scalars, buffers, 0, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP,
                     HAS_SINKS, PACK_GQA, GROUP, STORE_LSE, FLAG_NAN, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_VARLEN_Q,
                     KV_SOURCE, HAS_SEQLENS_K, ROWS_PER_POS, PINGPONG, NUM_CONSUMERS, TMA_STORE, RESCALE_THRESHOLD,
                     SOFTMAX_TRIMS)),
            ], [4, 1], [CONSUMER_REGS, LOADER_REGS])


_DTYPES = (torch.float16, torch.bfloat16)
_FP8 = torch.float8_e4m3fn
# All-fp8 calls (q, k, v in e4m3: ``FP8_QK``) take the Gluon kernel (e4m3 Q K^T on the tensor cores; V as a bf16
# copy, ``fp8_value_copy``) where it supports them; SWATTN_GLUON_FP8=0 keeps them on the Triton kernels.
FP8_QK = os.environ.get("SWATTN_GLUON_FP8", "1").strip() != "0"
_GL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", _FP8: "float8e4nv"}


@functools.lru_cache(maxsize=64)
def _shared_layout(block: tuple, dtype: torch.dtype):
    """The swizzled shared-memory layout of a TMA box (computed once per box shape: ~10 us of host time each)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), getattr(gl, _GL_DTYPES[dtype]))


def fp8_value_copy(v: torch.Tensor) -> torch.Tensor:
    """An all-fp8 call's V for the Gluon kernel: e4m3 V as bf16, contiguous (one elementwise launch). Exact: every
    e4m3 value is a bf16. An e4m3 wgmma takes its B operand K-major only, which would be V^T; so P @ V runs in bf16
    on this copy, and v_descale scales the normalized output in the kernel (as the Triton kernels apply it), which
    also serves varlen calls, whose tokens' sequences the copy does not know."""
    return v.to(torch.bfloat16, memory_format=torch.contiguous_format)


def _sm_count(device: torch.device) -> int:
    return device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _rows_view(t: torch.Tensor, varlen: bool) -> torch.Tensor | None:
    """K or V as the 2D ``[tokens, heads * dim]`` view TMA reads, or None when its layout has no such view."""
    if varlen:
        if t.stride(2) != 1 or t.stride(1) != t.shape[2] or t.stride(0) != t.shape[1] * t.shape[2]:
            return None
        return t.view(t.shape[0], t.shape[1] * t.shape[2])
    if (t.stride(3) != 1 or t.stride(2) != t.shape[3] or t.stride(1) != t.shape[2] * t.shape[3]
            or (t.shape[0] > 1 and t.stride(0) != t.shape[1] * t.stride(1))):
        return None
    return t.view(t.shape[0] * t.shape[1], t.shape[2] * t.shape[3])


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, varlen_q: bool, varlen_k: bool,
                       paged: bool, indexed: bool, seqlens_k: bool, num_splits: int, append: bool,
                       count_blocks: bool, softcap: bool = False, pack_gqa: bool = False) -> str | None:
    """Why the Gluon kernel cannot serve this call (None when it can)."""
    if not GLUON_AVAILABLE:
        return "this triton has no Gluon with Hopper support"
    if not q.is_cuda:
        return "not a CUDA tensor"
    if compute_capability_major(q.device) != 9:
        return "not an sm_90 GPU"
    fp8 = q.dtype == _FP8
    if fp8 and (k.dtype != _FP8 or v.dtype != _FP8):
        return f"e4m3 q over {k.dtype} k and {v.dtype} v (all three e4m3 only)"
    if fp8 and not FP8_QK:
        return "all-fp8 calls switched off (SWATTN_GLUON_FP8=0)"
    if not fp8 and (q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype):
        return f"dtype {q.dtype}, k {k.dtype}, v {v.dtype} (fp16/bf16, or all three e4m3, only)"
    if fp8 and q.shape[-1] > 128:
        return f"an all-fp8 call at head_dim {q.shape[-1]} (64 and 128 only: 256 was never compiled or run)"
    if fp8 and paged:
        # V's bf16 copy would convert the whole page pool on every call.
        return "an all-fp8 call over a paged cache"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head_dim {q.shape[-1]} (64, 128 or 256 only)"
    if v.shape[-1] != q.shape[-1]:
        return f"a value head_dim ({v.shape[-1]}) other than q / k's ({q.shape[-1]})"
    if indexed or append:
        return "cache_batch_idx or an in-kernel append"
    if num_splits > 1:
        return "split-KV"
    if count_blocks:
        return "block counting (a Triton-kernel test hook)"
    if pack_gqa and ROWS_PER_CONSUMER % (q.shape[-2] // k.shape[-2]):
        # A tile's Q is one TMA box of whole positions (every head of the group), a whole number per warpgroup.
        return (f"PackGQA with {q.shape[-2] // k.shape[-2]} query heads per KV head "
                f"(a divisor of {ROWS_PER_CONSUMER} only)")
    if paged and varlen_k:
        return "a paged cache with cu_seqlens_k"
    if paged:
        page_size = k.shape[1]
        # A page holds whole TMA boxes of 8 or more rows (the shared-memory swizzle repeats every 8 rows).
        if page_size < 8 or page_size & (page_size - 1):
            return f"page size {page_size} (a power of two from 8 up)"
    # An all-fp8 call's V is read from its contiguous bf16 copy (``fp8_value_copy``).
    for name, t in (("k", k),) if fp8 else (("k", k), ("v", v)):
        view = _rows_view(t, varlen_k)
        if view is None or view.data_ptr() % 16 or (view.stride(0) * t.element_size()) % 16:
            return f"{name} rows not contiguous and 16-byte aligned"
    if q.stride(-1) != 1 or q.data_ptr() % 16 or any(stride * q.element_size() % 16 for stride in q.stride()[:-1]):
        return "q's rows not contiguous and 16-byte aligned"
    return None


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor | None,
            *, softmax_scale: float, left: int, right: int, softcap: float, sinks: torch.Tensor | None,
            cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None, seqlen_q: int, seqlen_k: int,
            batch: int, pack_gqa: bool, o_strides: tuple, l_strides: tuple,
            non_finite_flags: torch.Tensor | None, any_non_finite: torch.Tensor | None,
            seqlens_k: torch.Tensor | None = None, page_table: torch.Tensor | None = None,
            block_n: int | None = None, num_stages: int | None = None, maxnreg: int | None = None,
            consumer_regs: int | None = None, programs: int | None = None, pingpong: bool | None = None,
            consumers: int | None = None, tma_store: bool | None = None,
            per_sm: int | None = None, wg_rows: int | None = None,
            plans: dict | None = None, q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
            v_descale: torch.Tensor | None = None) -> int:
    """Launch the Gluon forward on checked arguments (``unsupported_reason`` returned None); returns the number
    of query tiles per (batch, head-or-KV-head). Non-finite flags are written per group of ``ROWS_PER_CONSUMER``
    rows (the Triton redo pass's tiles). K/V: dense ``[B, Sk, Hk, D]``, varlen ``[total_k, Hk, D]``
    (``cu_seqlens_k``) or pages ``[num_pages, page_size, Hk, D]`` (``page_table [B, pages]`` int32); ``seqlens_k
    [B]`` (int32) overrides each sequence's key count. All-fp8 (e4m3 q and k; v: ``fp8_value_copy`` of the e4m3 V,
    out bf16): ``q_descale``, ``k_descale``, ``v_descale`` float32 ``[B, Hk]`` (any strides) or one element each
    (``_common.ones_descale``), all three given.
    ``block_n`` / ``num_stages`` / ``maxnreg`` (per thread at launch) / ``consumer_regs`` (per consumer thread after
    the partitions' reallocation) / ``programs`` (the persistent grid; default one per SM) / ``pingpong`` (the
    consumers take turns on the tensor cores; two consumers only) / ``consumers`` (warpgroups of 64 rows per tile: 1
    to 3) / ``per_sm`` (resident programs per SM: sets the register budgets) / ``tma_store`` (O through shared
    memory and a TMA store; dense calls up to head_dim 128) override the shipped choice (tuning probes).
    ``plans``: a dict the caller keeps for one call signature (every tensor's shape, strides, dtype, 16-byte
    alignment and device, which tensors are given, the scalars: ``fwd``'s plan key). The launch is planned at its
    first call and later calls only launch (``_launch.Launch``: Triton's compiled launcher called directly, the
    tensor descriptors copied with the call's tensors). Without it every call plans and goes through
    ``kernel[grid](...)`` (~185 us of host time per call on the H200 host, Triton 3.6)."""
    overrides = (block_n, num_stages, maxnreg, consumer_regs, programs, pingpong, consumers, tma_store, per_sm,
                 wg_rows)
    key = (overrides, planning_settings()) if plans is not None else None
    planned = plans.get(key) if plans is not None else None
    if planned is None:
        planned = _plan(q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table,
                        non_finite_flags, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap,
                        seqlen_q=seqlen_q, seqlen_k=seqlen_k, batch=batch, pack_gqa=pack_gqa, o_strides=o_strides,
                        l_strides=l_strides, overrides=overrides, descales=(q_descale, k_descale, v_descale))
        if plans is not None:
            plans[key] = planned
    launch, num_tiles = planned
    launch(q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table, non_finite_flags,
           any_non_finite, q_descale, k_descale, v_descale)
    return num_tiles


# forward's tuning arguments all left out: the shipped choice (``planned_launch``).
NO_OVERRIDES = (None,) * 10
# Every launch ``_plan`` made that is still held (by a caller's ``plans``): ``launch_count`` sums their launches.
_LAUNCHES: weakref.WeakSet = weakref.WeakSet()


def planned_launch(plans: dict) -> Launch | None:
    """The launch ``forward(..., plans=plans)`` keeps for the shipped choice (no tuning arguments) under the current
    ``planning_settings()``, or None: a caller may launch it itself with ``forward``'s tensors in order (``q, k, v,
    out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table, non_finite_flags, any_non_finite``, then
    for an all-fp8 call ``q_descale, k_descale, v_descale``) for later calls of the signature, as long as
    ``planning_settings()`` is unchanged."""
    planned = plans.get((NO_OVERRIDES, planning_settings()))
    return None if planned is None else planned[0]


def launch_count() -> int:
    """Launches of the Gluon kernel so far, through plans still held (tests: whether a call took the Gluon kernel,
    however it was launched)."""
    return sum(launch.plain_launches + launch.direct_launches for launch in list(_LAUNCHES))


def planning_settings() -> tuple:
    """The module-level values ``_plan`` reads, part of a kept plan's key: tests and tuning probes switch them
    (``monkeypatch.setattr(gluon_fwd, ...)``), and a plan made under other values must not serve the call."""
    return (_swa_fwd_sm90_kernel, consumers_for, block_n_for, tma_store_for, per_sm_for, registers_for, _sm_count,
            wg_rows_for, WG_ROWS_SMALL_D64, PINGPONG, TMA_STORE, RESCALE_THRESHOLD, rescale_threshold_for,
            SOFTMAX_TRIMS, softmax_trims_for, NUM_STAGES,
            LOADER_REGS, PAGE_BOX_MAX, ROWS_PER_CONSUMER, TensorDescriptor)


# The call's tensors, as ``forward`` passes them to a plan's launch: the kernel's tensor parameters take them by these
# indices (``Launch``'s slots); an absent one is OUT, the placeholder.
(_Q, _K, _V, _OUT, _LSE, _SINKS, _CU_SEQLENS_Q, _CU_SEQLENS_K, _SEQLENS_K, _PAGE_TABLE, _FLAGS, _ANY_NAN, _Q_DESCALE,
 _K_DESCALE, _V_DESCALE) = range(15)


def _plan(q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, page_table, non_finite_flags, *,
          softmax_scale, left, right, softcap, seqlen_q, seqlen_k, batch, pack_gqa, o_strides, l_strides,
          overrides, descales=(None, None, None)) -> tuple[Launch, int]:
    """The launch of ``forward``'s call (its tensors' layouts, scalars and ``overrides``), its tiles per (batch,
    head-or-KV-head)."""
    block_n, num_stages, maxnreg, consumer_regs, programs, pingpong, consumers, tma_store, per_sm, wg_rows = overrides
    varlen = cu_seqlens_q is not None
    varlen_k = cu_seqlens_k is not None
    paged = page_table is not None
    num_heads, head_dim = q.shape[-2], q.shape[-1]
    num_kv_heads = k.shape[-2]
    group = num_heads // num_kv_heads
    rows_per_pos = group if pack_gqa else 1
    consumers = consumers or consumers_for(head_dim, pack_gqa, left, right)
    wg_rows = wg_rows or (wg_rows_for(head_dim, pack_gqa, left, right) if consumers == 1 else ROWS_PER_CONSUMER)
    block_m = wg_rows * consumers
    pingpong = PINGPONG if pingpong is None else pingpong
    if consumers not in (1, 2, 3) or (pingpong and consumers != 2) or (head_dim > 128 and consumers != 2):
        raise ValueError(f"consumers={consumers}, pingpong={pingpong}, head_dim={head_dim}: 1 to 3 consumers, "
                         "ping-pong with 2 only, 2 at head_dim 256 (the registers and shared memory of one program "
                         "per SM)")
    if wg_rows not in (64, 128) or (wg_rows == 128 and (consumers != 1 or head_dim > 128)):
        raise ValueError(f"wg_rows={wg_rows} with consumers={consumers}, head_dim={head_dim}: 64 rows per "
                         "warpgroup, or 128 with one consumer up to head_dim 128 (its accumulator's registers)")
    fp8 = q.dtype == _FP8
    if fp8 and (k.dtype != _FP8 or v.dtype != torch.bfloat16 or any(d is None for d in descales)):
        raise ValueError(f"all-fp8: e4m3 q and k, v as its bf16 copy (fp8_value_copy) and three descales, got k "
                         f"{k.dtype}, v {v.dtype}, descales given {[d is not None for d in descales]}")
    block_n = block_n or block_n_for(head_dim, pack_gqa, left, right)
    num_stages = num_stages or NUM_STAGES
    k_rows, v_rows = _rows_view(k, varlen_k), _rows_view(v, varlen_k)
    # Paged: boxes of at most a page (and PAGE_BOX_MAX keys, to waste little before the first visible key: the
    # tile's start is rounded down to a box), in the [BLOCK_N, D] buffers' layout.
    box = min(block_n, PAGE_BOX_MAX, k.shape[1]) if paged else block_n
    k_desc = Descriptor(TensorDescriptor, k_rows.shape, k_rows.stride(), [box, head_dim],
                        _shared_layout((block_n, head_dim), k.dtype))
    v_desc = Descriptor(TensorDescriptor, v_rows.shape, v_rows.stride(), [box, head_dim],
                        _shared_layout((block_n, head_dim), v.dtype))
    # Q as [batch, seqlen, heads, dim] (varlen: [1, tokens, heads, dim]); a warpgroup's box is wg_rows // rows_per_pos
    # positions of rows_per_pos heads (one head, or a KV head's packed group). Positions past a dense sequence
    # come back as zeros; past a varlen sequence they are the next sequence's rows, never stored.
    q_box = [1, wg_rows // rows_per_pos, rows_per_pos, head_dim]
    q_box_layout = _shared_layout(tuple(q_box), q.dtype)
    q_view = q.unsqueeze(0) if varlen else q
    q_desc = Descriptor(TensorDescriptor, q_view.shape, q_view.stride(), q_box, q_box_layout)
    # O leaves by TMA through the Q slots (same boxes) where no row of a box can belong to another sequence: dense.
    # Not at head_dim 256: its single Q slot would go back to the loader only after the store, which waits for the
    # next tile's Q (a deadlock). Not all-fp8: an e4m3 Q slot is half a bf16 O box.
    tma_store = ((tma_store_for(consumers) if tma_store is None else tma_store) and not varlen and head_dim <= 128
                 and not fp8)
    o_desc = Descriptor(TensorDescriptor, out.shape, out.stride(), q_box, q_box_layout) if tma_store else q_desc
    num_tiles = ceil_div(seqlen_q * rows_per_pos, block_m)
    num_batch_heads = batch * (num_kv_heads if pack_gqa else num_heads)
    work = num_tiles * num_batch_heads
    default_maxnreg, default_consumer_regs = registers_for(
        consumers, per_sm or per_sm_for(consumers, head_dim, block_n, wg_rows))
    maxnreg = maxnreg or default_maxnreg
    # Resident programs per SM: 4 * (consumers + 1) warps (allocated by warpgroup) of maxnreg registers per thread.
    per_sm = max(1, 65536 // (4 * (consumers + 1) * 32 * maxnreg))
    grid = (min(work, programs or per_sm * _sm_count(q.device)),)
    flag = non_finite_flags is not None
    # The kernel's 16 tensor parameters (4 descriptors, then pointers) from the call's tensors; absent: out.
    slots = (_Q, _K, _V, _OUT if tma_store else _Q, _OUT, _LSE if lse is not None else _OUT,
             _SINKS if sinks is not None else _OUT, _CU_SEQLENS_Q if varlen else _OUT,
             _CU_SEQLENS_K if varlen_k else _OUT, _SEQLENS_K if seqlens_k is not None else _OUT,
             _PAGE_TABLE if paged else _OUT, _FLAGS if flag else _OUT, _ANY_NAN if flag else _OUT,
             *((_Q_DESCALE, _K_DESCALE, _V_DESCALE) if fp8 else (_OUT,) * 3))
    scalars = (
        *o_strides, *l_strides, page_table.stride(0) if paged else 0,
        seqlen_q, seqlen_k, 0 if varlen_k or paged else k.shape[1], num_heads, softmax_scale,
        softcap if softcap > 0 else 1.0, left, right, num_tiles, num_batch_heads,
        ceil_div(seqlen_q * rows_per_pos, ROWS_PER_CONSUMER), k.shape[1] if paged else 1,
        *(stride for d in descales for stride in descale_strides(d)),
        *_signed_magic(num_batch_heads), *_signed_magic(num_kv_heads if pack_gqa else num_heads),
    )
    constexprs = dict(
        HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_SOFTCAP=softcap > 0, HAS_SINKS=sinks is not None,
        IS_VARLEN_Q=varlen, KV_SOURCE=KV_PAGED if paged else KV_VARLEN if varlen_k else KV_DENSE,
        HAS_SEQLENS_K=seqlens_k is not None, PACK_GQA=pack_gqa, GROUP=group, STORE_LSE=lse is not None,
        FLAG_NAN=flag, BLOCK_N=block_n, HEAD_DIM=head_dim, NUM_STAGES=num_stages,
        CONSUMER_REGS=consumer_regs or default_consumer_regs, LOADER_REGS=LOADER_REGS,
        ROWS_PER_POS=rows_per_pos, PINGPONG=bool(pingpong), NUM_CONSUMERS=consumers,
        TMA_STORE=tma_store, RESCALE_THRESHOLD=rescale_threshold_for(consumers),
        SOFTMAX_TRIMS=softmax_trims_for(consumers, head_dim),
    )
    launch = Launch(_swa_fwd_sm90_kernel, grid, scalars, constexprs, dict(num_warps=4, maxnreg=maxnreg),
                    num_tensors=len(slots), slots=slots, descriptors=(q_desc, k_desc, v_desc, o_desc))
    _LAUNCHES.add(launch)
    return launch, num_tiles


__all__ = ["MIN_ROWS", "ROWS_PER_CONSUMER", "GLUON_AVAILABLE", "GLUON_MODE", "FP8_QK", "forward", "fp8_value_copy",
           "launch_count", "planned_launch", "unsupported_reason"]
