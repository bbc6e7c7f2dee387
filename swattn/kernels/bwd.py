"""The backward kernel family: dQ, dK, dV (and dsinks) of sliding-window attention, with n_offset on both loops.

Two launches (three with sinks), none with atomics, so the result is deterministic:

1. ``_swa_bwd_dq_kernel``: one program per tile of BLOCK_M query rows of one head. It first writes
   ``delta = rowsum(dO * O)`` (minus the LSE's incoming gradient, if any) of its rows, then computes their dQ over
   the forward's KV loop (``block_ranges``).
2. ``_swa_bwd_dkdv_kernel``: one program per block of BLOCK_N keys of one KV head. Its query loop starts at the
   exact first query row whose window contains one of its keys (``first_query_seeing``, the mirror of the forward's
   n_offset) and ends at the last such row, and it runs once per query head of the GQA group, so dK/dV are summed
   over the group in registers.
3. With sinks, ``_swa_bwd_dsinks_kernel`` (after the dQ kernel, whose delta it reads): one program per head sums
   its rows' ``exp(sink - lse) * delta`` (one launch where torch ops took about ten, each with its host cost).

Only the first and last blocks of each loop are masked. Legend: ``pos`` = query position inside its sequence;
``lse2`` = LSE in log2 units; ``s2`` = scores in log2 units (``softcap_scores`` or ``qk * scale * log2 e``);
``p`` = probabilities ``exp2(s2 - lse2)``; ``dp = dO V^T``; ``ds = p * (dp - delta)`` = gradient of the
natural-unit scores; the ``T`` suffix marks the transposed [BLOCK_N, BLOCK_M] tiles of the dK/dV kernel.

Gradients: ``dV = P^T dO``; ``dS = P * (dP - delta)``, times ``1 - tanh^2`` under softcap (d/ds of
``c * tanh(s / c)``); ``dQ = scale * dS K``; ``dK = scale * dS^T Q``; with sinks, ``dsink_h = -sum over the rows of
head h of exp(sink_h - lse) * delta`` (the sink has no value vector, so its ``dp`` is 0).
"""

from __future__ import annotations

import copy

import torch
import triton
import triton.language as tl

from swattn._compat import (
    TRITON_SCRATCH,
    ceil_div,
    ensure_triton_allocator,
    needs_upcast,
    next_power_of_2,
    tma_compatible,
)
from swattn.kernels._common import (
    LOG2E,
    block_ranges,
    dot,
    in_window,
    lse_strides,
    query_block_ranges,
    sequence_bounds,
    softcap_scores,
    token_strides,
)
from swattn.kernels._launch import MAX_GRID_YZ, Launch, PlanCache, kept_buffer, stream_key, tensor_signature
from swattn.kernels.configs import BwdConfig, backward_config, value_dim_backward_config


@triton.jit
def _load_rows(base, row_offsets, offs_d, row_mask, MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    """Load the rows at element offsets ``row_offsets`` (int64) from ``base`` as a [*, BLOCK_D] tile; fp32 when
    UPCAST."""
    ptrs = base + row_offsets[:, None] + offs_d[None, :]
    if MASK_ROWS and MASK_D:
        tile = tl.load(ptrs, mask=row_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif MASK_ROWS:
        tile = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    elif MASK_D:
        tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        tile = tl.load(ptrs)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _load_tile(base, offs, offs_d, row_mask, stride_s, MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    """Load rows ``offs`` (token indices from ``base``) of a [*, BLOCK_D] tile; fp32 when UPCAST."""
    return _load_rows(base, offs.to(tl.int64) * stride_s, offs_d, row_mask, MASK_ROWS, MASK_D, HEAD_DIM, UPCAST)


@triton.jit
def _scores(qk, softmax_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """``(s2, dscore)``: scores in log2 units and d(score)/d(qk * scale) (``1 - tanh^2`` under softcap, else 1)."""
    if HAS_SOFTCAP:
        s2 = softcap_scores(qk, softmax_scale, softcap)
        tanh = s2 / (softcap * LOG2E)
        return s2, 1.0 - tanh * tanh
    else:
        return qk * (softmax_scale * LOG2E), 1.0


@triton.jit
def _dkdv_blocks(dk, dv, k, v, offs_n, q_base, do_base, q_desc, do_desc, lse_base, delta_base, block_begin, block_end,
                 q_start, q_end, offs_d, row_pos, q_head_offsets, do_head_offsets, lse_head_offsets, stride_qs,
                 stride_dos, stride_lq, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, MASK: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MASK_D: tl.constexpr,
                 HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_POS: tl.constexpr, USE_TMA: tl.constexpr,
                 chunk=0, HAS_CHUNK: tl.constexpr = False, offs_dv=None, MASK_DV: tl.constexpr = False,
                 HEAD_DIM_V: tl.constexpr = 0):
    """Accumulate dK/dV of the program's keys over query blocks ``[block_begin, block_end)`` of BLOCK_POS
    positions; MASK for edge blocks. Row r of a block is position ``row_pos[r]`` of the block, in the head at
    ``*_head_offsets[r]`` from the bases (PackGQA: several heads per position). With ``USE_TMA`` (one head per
    block) q and dO come through descriptors whose rows end at ``q_end``. ``HEAD_DIM_V`` > 0: dO's (V's) head_dim
    differs from q's, its rows span ``offs_dv`` (``MASK_DV``: masked to HEAD_DIM_V); 0: dO as q."""
    offset = seqlen_k - seqlen_q
    for block in range(block_begin, block_end):
        offs_m = q_start + block * BLOCK_POS + row_pos
        row_mask = offs_m < q_end
        offs_m64 = offs_m.to(tl.int64)
        if USE_TMA:
            q = q_desc.load([q_start + block * BLOCK_POS, 0])
            do = do_desc.load([q_start + block * BLOCK_POS, 0])
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
        else:
            q = _load_rows(q_base, offs_m64 * stride_qs + q_head_offsets, offs_d, row_mask, MASK, MASK_D, HEAD_DIM,
                           UPCAST)
            if HEAD_DIM_V == 0:
                do = _load_rows(do_base, offs_m64 * stride_dos + do_head_offsets, offs_d, row_mask, MASK, MASK_D,
                                HEAD_DIM, UPCAST)
            else:
                do = _load_rows(do_base, offs_m64 * stride_dos + do_head_offsets, offs_dv, row_mask, MASK, MASK_DV,
                                HEAD_DIM_V, UPCAST)
        lse_ptrs = lse_base + offs_m64 * stride_lq + lse_head_offsets
        delta_ptrs = delta_base + offs_m64 * stride_lq + lse_head_offsets
        if MASK:
            lse = tl.load(lse_ptrs, mask=row_mask, other=float("-inf"))
            delta = tl.load(delta_ptrs, mask=row_mask, other=0.0)
            # Padding rows (and rows with no visible key, LSE -inf): pivot +inf so p = exp2(-inf) = 0, never NaN.
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
        else:
            lse2 = tl.load(lse_ptrs) * LOG2E
            delta = tl.load(delta_ptrs)
        qkT = dot(k, tl.trans(q))  # [BLOCK_N, BLOCK_M]
        s2T, dscoreT = _scores(qkT, softmax_scale, softcap, HAS_SOFTCAP)
        if MASK:
            visible = in_window(row_mask[None, :], offs_n[:, None], offs_m[None, :], offset, left, right, HAS_LEFT,
                                HAS_RIGHT, chunk, HAS_CHUNK)
            s2T = tl.where(visible, s2T, float("-inf"))
        pT = tl.exp2(s2T - lse2[None, :])  # [BLOCK_N, BLOCK_M]
        dv += dot(pT.to(do.dtype), do)
        dpT = dot(v, tl.trans(do))  # [BLOCK_N, BLOCK_M]
        dsT = pT * (dpT - delta[None, :])
        if HAS_SOFTCAP:
            dsT = dsT * dscoreT
        dk += dot(dsT.to(q.dtype), q)
    return dk, dv


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "chunk"])
def _swa_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, SEQUSED_Q, LOOP_RECORD,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_lb, stride_lq, stride_lh,
    seqlen_q, seqlen_k, queries_per_kv_head, softmax_scale, softcap, left, right, chunk,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    IS_VARLEN_Q: tl.constexpr, IS_VARLEN_K: tl.constexpr, HAS_SEQLENS_K: tl.constexpr,
    HAS_SEQUSED_Q: tl.constexpr, HAS_CHUNK: tl.constexpr, RECORD_LOOP: tl.constexpr, UPCAST: tl.constexpr,
    ROWS_PER_POS: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr = 0, BLOCK_DV: tl.constexpr = 0,
):
    """Grid: (key blocks, batch, KV heads).

    Each program computes dK and dV of BLOCK_N keys of one KV head: it walks the query positions
    ``first_query_seeing(first key) .. last_query_seeing(last key)`` (exact; only edge blocks masked) of every
    query head of the group and accumulates in registers. Without PackGQA (``ROWS_PER_POS`` = 1) it walks them once
    per head, BLOCK_M positions at a time; with PackGQA (``ROWS_PER_POS`` = the group size) once, BLOCK_M rows =
    BLOCK_M / group positions x the group's heads at a time (fewer, larger steps for small windows). Switches:
    window sides, softcap, varlen q/k, per-sequence key lengths (SEQLENS_K), loop recording (tests: q_start,
    q_end, blocks run). ``HEAD_DIM_V`` > 0: V, dO and dV have a head_dim of their own (FlashAttention 3's
    ``headdim_v``), padded to ``BLOCK_DV``; 0 (equal head dims, as compiled before): as K's.
    """
    key_block = tl.program_id(0)
    batch = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_begin, seqlen_q, k_begin, seqlen_k = sequence_bounds(
        batch, seqlen_q, seqlen_k, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
        SEQUSED_Q, HAS_SEQUSED_Q)
    first_key = key_block * BLOCK_N
    if first_key >= seqlen_k:
        return
    last_key = tl.minimum(first_key + BLOCK_N, seqlen_k) - 1
    offs_n = first_key + tl.arange(0, BLOCK_N)
    key_valid = offs_n < seqlen_k
    offs_d = tl.arange(0, BLOCK_D)
    batch64 = batch.to(tl.int64)
    kv_head64 = kv_head.to(tl.int64)
    k = _load_tile(K + batch64 * stride_kb + kv_head64 * stride_kh, k_begin + offs_n, offs_d, key_valid,
                   stride_ks, True, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST)  # [BLOCK_N, BLOCK_D]
    if HEAD_DIM_V != 0:
        offs_dv = tl.arange(0, BLOCK_DV)
        v = _load_tile(V + batch64 * stride_vb + kv_head64 * stride_vh, k_begin + offs_n, offs_dv, key_valid,
                       stride_vs, True, BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V, UPCAST)  # [BLOCK_N, BLOCK_DV]
    else:
        offs_dv = None
        v = _load_tile(V + batch64 * stride_vb + kv_head64 * stride_vh, k_begin + offs_n, offs_d, key_valid,
                       stride_vs, True, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST)

    BLOCK_POS = BLOCK_M // ROWS_PER_POS
    q_start, q_end, masked_head_end, unmasked_end, num_blocks = query_block_ranges(
        first_key, last_key, seqlen_q, seqlen_k, left, right, BLOCK_POS, HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
    if RECORD_LOOP:
        record = LOOP_RECORD + ((batch * tl.num_programs(2) + kv_head) * tl.num_programs(0) + key_block) * 3
        tl.store(record, q_start)
        tl.store(record + 1, q_end)
        tl.store(record + 2, num_blocks)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if HEAD_DIM_V != 0:
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    else:
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    rows = tl.arange(0, BLOCK_M)
    row_pos = rows // ROWS_PER_POS
    row_head = (rows % ROWS_PER_POS).to(tl.int64)  # 0 without PackGQA
    q_head_offsets = row_head * stride_qh
    do_head_offsets = row_head * stride_doh
    lse_head_offsets = row_head * stride_lh
    for group_index in range(0, queries_per_kv_head // ROWS_PER_POS):
        head64 = kv_head64 * queries_per_kv_head + group_index * ROWS_PER_POS  # the pass's first head
        q_base = Q + batch64 * stride_qb + head64 * stride_qh + q_begin.to(tl.int64) * stride_qs
        do_base = DO + batch64 * stride_dob + head64 * stride_doh + q_begin.to(tl.int64) * stride_dos
        lse_offset = batch64 * stride_lb + head64 * stride_lh + q_begin.to(tl.int64) * stride_lq
        q_desc = None
        do_desc = None
        if USE_TMA:  # one head per block (no PackGQA): rows end at the last query that sees a key (zero fill)
            visible_rows = tl.maximum(q_end, 1)
            q_desc = tl.make_tensor_descriptor(q_base, shape=[visible_rows, HEAD_DIM], strides=[stride_qs, 1],
                                               block_shape=[BLOCK_M, BLOCK_D])
            if HEAD_DIM_V != 0:
                do_desc = tl.make_tensor_descriptor(do_base, shape=[visible_rows, HEAD_DIM_V],
                                                    strides=[stride_dos, 1], block_shape=[BLOCK_M, BLOCK_DV])
            else:
                do_desc = tl.make_tensor_descriptor(do_base, shape=[visible_rows, HEAD_DIM], strides=[stride_dos, 1],
                                                    block_shape=[BLOCK_M, BLOCK_D])
        # Masked head blocks, unmasked interior, masked tail.
        dk, dv = _dkdv_blocks(
            dk, dv, k, v, offs_n, q_base, do_base, q_desc, do_desc, LSE + lse_offset, DELTA + lse_offset, 0,
            masked_head_end,
            q_start, q_end, offs_d, row_pos, q_head_offsets, do_head_offsets, lse_head_offsets, stride_qs,
            stride_dos, stride_lq, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, True, HAS_LEFT,
            HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST, BLOCK_POS, USE_TMA, chunk,
            HAS_CHUNK, offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)
        dk, dv = _dkdv_blocks(
            dk, dv, k, v, offs_n, q_base, do_base, q_desc, do_desc, LSE + lse_offset, DELTA + lse_offset,
            masked_head_end, unmasked_end, q_start, q_end, offs_d, row_pos, q_head_offsets, do_head_offsets,
            lse_head_offsets, stride_qs, stride_dos, stride_lq, seqlen_q, seqlen_k, left, right, softmax_scale,
            softcap, False, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST, BLOCK_POS,
            USE_TMA, chunk, HAS_CHUNK, offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)
        dk, dv = _dkdv_blocks(
            dk, dv, k, v, offs_n, q_base, do_base, q_desc, do_desc, LSE + lse_offset, DELTA + lse_offset,
            unmasked_end, num_blocks,
            q_start, q_end, offs_d, row_pos, q_head_offsets, do_head_offsets, lse_head_offsets, stride_qs,
            stride_dos, stride_lq, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, True, HAS_LEFT,
            HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST, BLOCK_POS, USE_TMA, chunk,
            HAS_CHUNK, offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)

    store_mask = key_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    offs_key = (k_begin + offs_n).to(tl.int64)[:, None]
    tl.store(DK + batch64 * stride_dkb + kv_head64 * stride_dkh + offs_key * stride_dks + offs_d[None, :],
             (dk * softmax_scale).to(DK.dtype.element_ty), mask=store_mask)
    if HEAD_DIM_V != 0:
        store_mask = key_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
        offs_d = offs_dv
    tl.store(DV + batch64 * stride_dvb + kv_head64 * stride_dvh + offs_key * stride_dvs + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=store_mask)


@triton.jit
def _dq_blocks(dq, q, do, lse2, delta, pos, k_base, v_base, k_desc, v_desc, block_begin, block_end, kv_start, kv_end,
               offs_d,
               stride_ks, stride_vs, seqlen_q, seqlen_k, left, right, softmax_scale, softcap, MASK: tl.constexpr,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MASK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
               chunk=0, HAS_CHUNK: tl.constexpr = False, offs_dv=None, MASK_DV: tl.constexpr = False,
               HEAD_DIM_V: tl.constexpr = 0):
    """Accumulate dQ of the tile over KV blocks ``[block_begin, block_end)`` of its loop; MASK for edge blocks.
    With ``USE_TMA`` K/V come through descriptors whose rows end at ``kv_end``. ``HEAD_DIM_V`` > 0: V's rows span
    ``offs_dv`` (``MASK_DV``: masked to HEAD_DIM_V); 0: as K's."""
    offset = seqlen_k - seqlen_q
    for block in range(block_begin, block_end):
        offs_n = kv_start + block * BLOCK_N + tl.arange(0, BLOCK_N)
        key_mask = offs_n < kv_end
        if USE_TMA:
            k = k_desc.load([kv_start + block * BLOCK_N, 0])
            v = v_desc.load([kv_start + block * BLOCK_N, 0])
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
        else:
            k = _load_tile(k_base, offs_n, offs_d, key_mask, stride_ks, MASK, MASK_D, HEAD_DIM, UPCAST)
            if HEAD_DIM_V == 0:
                v = _load_tile(v_base, offs_n, offs_d, key_mask, stride_vs, MASK, MASK_D, HEAD_DIM, UPCAST)
            else:
                v = _load_tile(v_base, offs_n, offs_dv, key_mask, stride_vs, MASK, MASK_DV, HEAD_DIM_V, UPCAST)
        qk = dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        s2, dscore = _scores(qk, softmax_scale, softcap, HAS_SOFTCAP)
        if MASK:
            visible = in_window(key_mask[None, :], offs_n[None, :], pos[:, None], offset, left, right, HAS_LEFT,
                                HAS_RIGHT, chunk, HAS_CHUNK)
            s2 = tl.where(visible, s2, float("-inf"))
        p = tl.exp2(s2 - lse2[:, None])  # [BLOCK_M, BLOCK_N]
        dp = dot(do, tl.trans(v))  # [BLOCK_M, BLOCK_N]
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * dscore
        dq += dot(ds.to(k.dtype), k)
    return dq


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "chunk"])
def _swa_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DLSE, DELTA, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, SEQUSED_Q,
    stride_qb, stride_qs, stride_qh,
    stride_ob, stride_os, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_lb, stride_lq, stride_lh,
    seqlen_q, seqlen_k, queries_per_kv_head, softmax_scale, softcap, left, right, chunk,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    IS_VARLEN_Q: tl.constexpr, IS_VARLEN_K: tl.constexpr, HAS_SEQLENS_K: tl.constexpr,
    HAS_SEQUSED_Q: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_DLSE: tl.constexpr,
    UPCAST: tl.constexpr, ROWS_PER_POS: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr = 0,
    BLOCK_DV: tl.constexpr = 0,
):
    """Grid: (query tiles, batch, heads), or (query tiles, batch, KV heads) with PackGQA.

    Each program first writes ``delta = rowsum(dO * O) - dLSE`` (fp32, LSE's layout) of its BLOCK_M rows, for the
    dK/dV kernel that runs next; then computes their dQ. Rows are BLOCK_M positions of one query head, or with
    PackGQA (``ROWS_PER_POS`` = the group size) BLOCK_M / group positions x the heads of one KV head, so a small
    window's keys are loaded once per KV head and the tile's span is shorter. Its KV loop is the forward's: from
    the tile's first visible key over ceil(span / BLOCK_N) blocks, edge blocks masked. Switches: window sides,
    softcap, varlen q/k, per-sequence key lengths (SEQLENS_K), incoming LSE gradient. ``HEAD_DIM_V`` > 0: V, O and
    dO have a head_dim of their own, padded to ``BLOCK_DV``; 0 (equal head dims, as compiled before): as q's.
    """
    tile = tl.program_id(0)
    batch = tl.program_id(1)
    q_begin, seqlen_q, k_begin, seqlen_k = sequence_bounds(
        batch, seqlen_q, seqlen_k, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, IS_VARLEN_Q, IS_VARLEN_K, HAS_SEQLENS_K,
        SEQUSED_Q, HAS_SEQUSED_Q)
    BLOCK_POS = BLOCK_M // ROWS_PER_POS
    first_pos = tile * BLOCK_POS
    if first_pos >= seqlen_q:
        return
    last_pos = tl.minimum(first_pos + BLOCK_POS, seqlen_q) - 1
    rows = tl.arange(0, BLOCK_M)
    pos = first_pos + rows // ROWS_PER_POS
    if ROWS_PER_POS > 1:
        kv_head = tl.program_id(2)
        head = kv_head * ROWS_PER_POS + rows % ROWS_PER_POS  # [BLOCK_M]
    else:
        head = tl.program_id(2) + rows * 0
        kv_head = tl.program_id(2) // queries_per_kv_head
    row_valid = pos < seqlen_q
    offs_d = tl.arange(0, BLOCK_D)
    batch64 = batch.to(tl.int64)
    head64 = head.to(tl.int64)
    kv_head64 = kv_head.to(tl.int64)
    token64 = (q_begin + pos).to(tl.int64)

    q = _load_rows(Q + batch64 * stride_qb, token64 * stride_qs + head64 * stride_qh, offs_d, row_valid,
                   True, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST)  # [BLOCK_M, BLOCK_D]
    if HEAD_DIM_V != 0:
        offs_dv = tl.arange(0, BLOCK_DV)
        do = _load_rows(DO + batch64 * stride_dob, token64 * stride_dos + head64 * stride_doh, offs_dv, row_valid,
                        True, BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V, UPCAST)  # [BLOCK_M, BLOCK_DV]
        o = _load_rows(O + batch64 * stride_ob, token64 * stride_os + head64 * stride_oh, offs_dv, row_valid,
                       True, BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V, UPCAST)
    else:
        offs_dv = None
        do = _load_rows(DO + batch64 * stride_dob, token64 * stride_dos + head64 * stride_doh, offs_d, row_valid,
                        True, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST)
        # delta here rather than in a launch of its own: this program reads dO anyway (saves a pass over dO).
        o = _load_rows(O + batch64 * stride_ob, token64 * stride_os + head64 * stride_oh, offs_d, row_valid,
                       True, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK_M]
    lse_offs = batch64 * stride_lb + head64 * stride_lh + token64 * stride_lq
    if HAS_DLSE:
        delta -= tl.load(DLSE + lse_offs, mask=row_valid, other=0.0)
    tl.store(DELTA + lse_offs, delta, mask=row_valid)
    lse = tl.load(LSE + lse_offs, mask=row_valid, other=float("-inf"))
    # Rows with no visible key (LSE -inf) and padding rows: pivot +inf so p = 0 even in unmasked blocks, never NaN.
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)

    kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = block_ranges(
        first_pos, last_pos, seqlen_q, seqlen_k, left, right, BLOCK_N, HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
    k_base = K + batch64 * stride_kb + kv_head64 * stride_kh + k_begin.to(tl.int64) * stride_ks
    v_base = V + batch64 * stride_vb + kv_head64 * stride_vh + k_begin.to(tl.int64) * stride_vs
    k_desc = None
    v_desc = None
    if USE_TMA:
        visible_rows = tl.maximum(kv_end, 1)
        k_desc = tl.make_tensor_descriptor(k_base, shape=[visible_rows, HEAD_DIM], strides=[stride_ks, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        if HEAD_DIM_V != 0:
            v_desc = tl.make_tensor_descriptor(v_base, shape=[visible_rows, HEAD_DIM_V], strides=[stride_vs, 1],
                                               block_shape=[BLOCK_N, BLOCK_DV])
        else:
            v_desc = tl.make_tensor_descriptor(v_base, shape=[visible_rows, HEAD_DIM], strides=[stride_vs, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Masked head blocks, unmasked interior, masked tail.
    dq = _dq_blocks(dq, q, do, lse2, delta, pos, k_base, v_base, k_desc, v_desc, 0, masked_head_end, kv_start,
                    kv_end, offs_d, stride_ks, stride_vs, seqlen_q, seqlen_k, left, right, softmax_scale, softcap,
                    True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST, BLOCK_N, USE_TMA,
                    chunk, HAS_CHUNK, offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)
    dq = _dq_blocks(dq, q, do, lse2, delta, pos, k_base, v_base, k_desc, v_desc, masked_head_end, unmasked_end,
                    kv_start, kv_end, offs_d, stride_ks, stride_vs, seqlen_q, seqlen_k, left, right, softmax_scale,
                    softcap, False, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST,
                    BLOCK_N, USE_TMA, chunk, HAS_CHUNK,
                    offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)
    dq = _dq_blocks(dq, q, do, lse2, delta, pos, k_base, v_base, k_desc, v_desc, unmasked_end, num_blocks,
                    kv_start, kv_end, offs_d, stride_ks, stride_vs, seqlen_q, seqlen_k, left, right, softmax_scale,
                    softcap, True, HAS_LEFT, HAS_RIGHT, HAS_SOFTCAP, BLOCK_D != HEAD_DIM, HEAD_DIM, UPCAST,
                    BLOCK_N, USE_TMA, chunk, HAS_CHUNK,
                    offs_dv=offs_dv, MASK_DV=BLOCK_DV != HEAD_DIM_V, HEAD_DIM_V=HEAD_DIM_V)
    tl.store(DQ + batch64 * stride_dqb + (token64 * stride_dqs + head64 * stride_dqh)[:, None] + offs_d[None, :],
             (dq * softmax_scale).to(DQ.dtype.element_ty), mask=row_valid[:, None] & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _swa_bwd_dsinks_kernel(
    SINKS, LSE, DELTA, DSINKS, CU_SEQLENS_Q, SEQUSED_Q,
    batch, seqlen_q, stride_lb, stride_ls, stride_lh,
    IS_VARLEN_Q: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr, BLOCK: tl.constexpr,
):
    """``dsink_h = -sum over the rows of head h of exp(sink_h - lse) * delta``. Grid ``(H,)``: one program per
    head sums its rows of every sequence in order (deterministic, no atomics). Varlen padding past a sequence's
    rows and rows past ``seqused_q`` are left out (their lse/delta were never written); rows with lse -inf (no key
    and no sink, which sinks rule out) add nothing."""
    head = tl.program_id(0)
    sink = tl.load(SINKS + head).to(tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    sequence_base = head.to(tl.int64) * stride_lh  # of sequence b's rows (dense: advanced by stride_lb)
    for b in range(batch):
        if IS_VARLEN_Q:
            begin = tl.load(CU_SEQLENS_Q + b)
            rows = tl.load(CU_SEQLENS_Q + b + 1) - begin
            if HAS_SEQUSED_Q:
                rows = tl.minimum(rows, tl.load(SEQUSED_Q + b))
            base = sequence_base + begin.to(tl.int64) * stride_ls
        else:
            rows = seqlen_q
            base = sequence_base
            sequence_base += stride_lb
        for start in range(0, rows, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < rows
            lse = tl.load(LSE + base + offs * stride_ls, mask=mask, other=float("-inf"))
            delta = tl.load(DELTA + base + offs * stride_ls, mask=mask, other=0.0)
            used = mask & (lse != float("-inf"))
            acc += tl.where(used, tl.exp(sink - tl.where(used, lse, 0.0)) * delta, 0.0)
    tl.store(DSINKS + head, -tl.sum(acc, 0))


# attention_backward's plans, per call signature.
_PLANS = PlanCache()


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    softmax_scale: float,
    left: int,
    right: int,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    seqused_k: torch.Tensor | None = None,
    dlse: torch.Tensor | None = None,
    config: BwdConfig | None = None,
    record_loop: bool = False,
    seqused_q: torch.Tensor | None = None,
    attention_chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward on the forward's ``out`` and ``lse``; returns ``(dq, dk, dv, dsinks)``.

    Layouts as ``attention_forward``: q/out/dout ``[B, Sq, H, D]`` or varlen ``[total_q, H, D]``; k/v
    ``[B, Sk, Hk, D]`` or ``[total_k, Hk, D]``; lse (and ``dlse``, the gradient flowing into the LSE output, if
    any) ``[B, H, Sq]`` or ``[H, total_q]``. dq/dk/dv have the dtype of q/k/v; dsinks is fp32 ``[H]`` or None.
    Keys outside every window (and varlen padding) get zero gradients; so do query rows past ``seqused_q``.
    ``attention_chunk`` > 0: chunked local attention, as in ``attention_forward``. ``record_loop`` (tests)
    additionally returns the dK/dV programs' ``(q_start, q_end, num_blocks)`` as a fifth value, shaped
    ``[B, Hk, key blocks, 3]``.
    Config, grids and launches are planned once per call signature (``_BackwardPlan``).
    """
    # Kernels take strides; only a strided head dimension is copied (e.g. the expanded ones of out.sum()).
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    lse = lse.contiguous()
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    key = (tensor_signature(dout), tensor_signature(q), tensor_signature(k), tensor_signature(v),
           tensor_signature(out), tensor_signature(lse), tensor_signature(sinks), tensor_signature(cu_seqlens_q),
           tensor_signature(cu_seqlens_k), tensor_signature(seqused_k), tensor_signature(dlse),
           tensor_signature(seqused_q), q.device, softmax_scale, left, right, softcap, max_seqlen_q, max_seqlen_k,
           config, record_loop, attention_chunk)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS.add(key, backward_plan(
            dout, q, k, v, out, lse, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, dlse=dlse, config=config, record_loop=record_loop,
            seqused_q=seqused_q, attention_chunk=attention_chunk))
    return plan.run(dout, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, dlse, seqused_q)


def backward_plan(dout, q, k, v, out, lse, *, softmax_scale, left, right, softcap=0.0, sinks=None,
                  cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, seqused_k=None,
                  dlse=None, config=None, record_loop=False, seqused_q=None,
                  attention_chunk=0) -> _BackwardPlan:
    """The plan of one backward call signature, not looked up: for callers that key it themselves (the eager
    autograd path keeps it with the forward's plan, see ``swattn.ops``). ``dout`` with unit stride in D, ``lse``
    contiguous and ``dlse`` float32 contiguous, as ``attention_backward`` passes them."""
    return _BackwardPlan(dout, q, k, v, out, lse, softmax_scale=softmax_scale, left=left, right=right,
                         softcap=softcap, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, dlse=dlse,
                         config=config, record_loop=record_loop, seqused_q=seqused_q,
                         attention_chunk=attention_chunk)


class _BackwardPlan:
    """The dQ and dK/dV launches of one backward call signature, chosen once; ``run`` allocates the gradients and
    launches."""

    def __init__(self, dout, q, k, v, out, lse, *, softmax_scale, left, right, softcap, sinks, cu_seqlens_q,
                 cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, dlse, config, record_loop, seqused_q,
                 attention_chunk):
        varlen_q = cu_seqlens_q is not None
        varlen_k = cu_seqlens_k is not None
        num_heads, head_dim = q.shape[-2], q.shape[-1]
        num_kv_heads = k.shape[-2]
        group = num_heads // num_kv_heads
        if varlen_q:
            batch, seqlen_q = cu_seqlens_q.numel() - 1, max_seqlen_q
        else:
            batch, seqlen_q = q.shape[0], q.shape[1]
        seqlen_k = max_seqlen_k if varlen_k else k.shape[1]
        self.rebase = None  # what ``rebased`` needs (set below for the plans it can serve)
        left_given, right_given = left, right
        if batch > MAX_GRID_YZ or num_heads > MAX_GRID_YZ:
            # The dQ and dK/dV grids hold the sequences and the heads in their second and third dimensions.
            raise ValueError(f"q: the backward takes at most {MAX_GRID_YZ} sequences and {MAX_GRID_YZ} heads per call "
                             f"(CUDA's limit on a grid's second and third dimensions), got {batch} sequences, "
                             f"{num_heads} heads")
        # As the forward: a side that covers the whole sequence is unbounded (same kernels and config as -1).
        if left >= seqlen_k:
            left = -1
        if right >= seqlen_q:
            right = -1

        # Varlen padding, keys past seqused_k and keys no window reaches are never written by a kernel: start at 0.
        partial = varlen_q or varlen_k or seqused_k is not None
        self.zero_dq, self.zero_dkdv = varlen_q, partial
        self.num_heads, self.device = num_heads, q.device
        block_d = max(16, next_power_of_2(head_dim))
        # V's head_dim (FlashAttention 3's headdim_v; dO and dV have it too) when it differs from q / k's: the
        # config of the larger of the two (its registers and shared memory cover both tiles; not timed on a GPU).
        head_dim_v = v.shape[-1]
        own_value_dim = head_dim_v != head_dim
        block_dv = max(16, next_power_of_2(head_dim_v))
        if config is None:
            config = (value_dim_backward_config(block_d, block_dv, left, q.element_size()) if own_value_dim
                      else backward_config(block_d, left, q.element_size()))
        key_blocks = ceil_div(seqlen_k, config.dkdv_block_n)
        self.record_shape = (batch, num_kv_heads, key_blocks, 3) if record_loop else None
        no_queries = batch == 0 or q.numel() == 0 or seqlen_q == 0
        no_keys = k.numel() == 0 or seqlen_k == 0
        self.no_queries, self.no_keys = no_queries, no_keys
        # delta (rowsum(dO * O), lse's layout: the kernels index it with lse's strides) is scratch the dQ kernel
        # writes and the dK/dV and dsinks kernels read in the same call: a buffer kept between calls
        # (``kept_buffer``) spanning lse's elements, instead of an allocation per call.
        self.delta_span = 1 + sum((n - 1) * st for n, st in zip(lse.shape, lse.stride())) if lse.numel() else 0
        self.delta_dtype = lse.dtype
        self.dq_launch = self.dkdv_launch = self.dsinks_launch = None
        if no_queries or (no_keys and sinks is None):
            return
        if sinks is not None:
            batch_stride, position_stride, head_stride = lse_strides(lse, varlen_q)
            self.dsinks_launch = Launch(
                _swa_bwd_dsinks_kernel, (num_heads,),
                (batch, seqlen_q, batch_stride, position_stride, head_stride),
                dict(IS_VARLEN_Q=varlen_q, HAS_SEQUSED_Q=seqused_q is not None, BLOCK=1024 if varlen_q else
                     min(1024, max(16, next_power_of_2(seqlen_q)))),
                dict(num_warps=4), num_tensors=6)

        upcast = needs_upcast(q.dtype)
        lse_address = lse_strides(lse, varlen_q)
        common = dict(
            HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_SOFTCAP=softcap > 0, IS_VARLEN_Q=varlen_q,
            IS_VARLEN_K=varlen_k, HAS_SEQLENS_K=seqused_k is not None, HAS_SEQUSED_Q=seqused_q is not None,
            HAS_CHUNK=attention_chunk > 0, UPCAST=upcast, BLOCK_D=block_d, HEAD_DIM=head_dim,
            # Launches with equal head dims leave these at their defaults (V as K), so they compile as before.
            **({"HEAD_DIM_V": head_dim_v, "BLOCK_DV": block_dv} if own_value_dim else {}),
        )
        scalars = (seqlen_q, seqlen_k, group, softmax_scale, softcap if softcap > 0 else 1.0, left, right,
                   max(attention_chunk, 1))
        # dq/dk/dv are allocated like q/k/v (empty_like keeps a dense layout's strides): meta tensors give them.
        dq, dk, dv = (torch.empty_like(t, device="meta") for t in (q, k, v))
        # PackGQA needs the group to tile both kernels' BLOCK_M rows evenly.
        packed = (config.pack_gqa and group > 1 and group & (group - 1) == 0
                  and config.dq_block_m % group == 0 and config.dkdv_block_m % group == 0)
        rows_per_pos = group if packed else 1
        # Descriptors for the streamed tiles (K/V in dQ; q/dO in dK/dV, one head per block only).
        dq_tma = config.tma and not no_keys and tma_compatible(k, v)
        dkdv_tma = config.tma and not packed and tma_compatible(q, dout)
        self.use_tma = dq_tma or dkdv_tma
        self.dq_launch = Launch(
            _swa_bwd_dq_kernel,
            (ceil_div(seqlen_q, config.dq_block_m // rows_per_pos), batch, num_kv_heads if packed else num_heads),
            (*token_strides(q, varlen_q), *token_strides(out, varlen_q), *token_strides(k, varlen_k),
             *token_strides(v, varlen_k), *token_strides(dout, varlen_q), *token_strides(dq, varlen_q), *lse_address,
             *scalars),
            dict(HAS_DLSE=dlse is not None, ROWS_PER_POS=rows_per_pos, USE_TMA=dq_tma, BLOCK_M=config.dq_block_m,
                 BLOCK_N=config.dq_block_n, **common),
            dict(num_warps=config.num_warps, num_stages=config.num_stages), num_tensors=13)
        if no_keys:
            return
        self.dkdv_launch = Launch(
            _swa_bwd_dkdv_kernel, (key_blocks, batch, num_kv_heads),
            (*token_strides(q, varlen_q), *token_strides(k, varlen_k), *token_strides(v, varlen_k),
             *token_strides(dout, varlen_q), *token_strides(dk, varlen_k), *token_strides(dv, varlen_k),
             *lse_address, *scalars),
            dict(RECORD_LOOP=record_loop, ROWS_PER_POS=rows_per_pos, USE_TMA=dkdv_tma, BLOCK_M=config.dkdv_block_m,
                 BLOCK_N=config.dkdv_block_n, **common),
            dict(num_warps=config.num_warps,
                 num_stages=config.num_stages if config.dkdv_num_stages is None else config.dkdv_num_stages),
            num_tensors=13)
        # Dense q, k and v (a training step of another length): the plans of other lengths are this one with other
        # strides, lengths and grids (``rebased``) where the choices above come out the same for them.
        if not (varlen_q or varlen_k or seqused_k is not None or seqused_q is not None or record_loop):
            self.rebase = (left_given, right_given, left, right, config, rows_per_pos, packed, dq_tma, dkdv_tma,
                           num_kv_heads if packed else num_heads)

    def rebased(self, dout, q, k, v, out, lse) -> _BackwardPlan | None:
        """The plan of a backward call of dense q, k and v of other lengths (or strides) than this plan's, with the
        same everything else (the gradients' dtypes and alignment, dLSE's presence, the sinks' gradient, the
        forward's window, scale, softcap and chunk), made from this one; None where it would differ from a fresh
        plan in more than its scalars, grids and scratch size (and the sinks' block, a constexpr of its launch): the
        window's normalisation and the descriptors' use are asked again with the functions ``__init__`` uses and must
        be this plan's. The launches reuse the compiled kernels where Triton specializes their scalars as before
        (``Launch.with_scalars``)."""
        (left_given, right_given, left, right, config, rows_per_pos, packed, dq_tma, dkdv_tma,
         dq_heads) = self.rebase
        batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
        if batch == 0 or q.numel() == 0 or seqlen_q == 0 or k.numel() == 0 or seqlen_k == 0:
            return None  # launches nothing (or only delta and the sinks' gradient): a plan of its own
        if ((-1 if left_given >= seqlen_k else left_given) != left
                or (-1 if right_given >= seqlen_q else right_given) != right):
            return None
        if ((config.tma and tma_compatible(k, v)) != dq_tma
                or (config.tma and not packed and tma_compatible(q, dout)) != dkdv_tma):
            return None
        plan = copy.copy(self)
        plan.delta_span = 1 + sum((n - 1) * st for n, st in zip(lse.shape, lse.stride())) if lse.numel() else 0
        lse_address = lse_strides(lse, False)
        # The common scalars' tail (group, scale, softcap, left, right, chunk) is this plan's.
        scalars = (seqlen_q, seqlen_k, *self.dq_launch.scalars[-6:])
        dq, dk, dv = (torch.empty_like(t, device="meta") for t in (q, k, v))
        plan.dq_launch = self.dq_launch.with_scalars(
            (*token_strides(q, False), *token_strides(out, False), *token_strides(k, False),
             *token_strides(v, False), *token_strides(dout, False), *token_strides(dq, False), *lse_address,
             *scalars),
            (ceil_div(seqlen_q, config.dq_block_m // rows_per_pos), batch, dq_heads))
        plan.dkdv_launch = self.dkdv_launch.with_scalars(
            (*token_strides(q, False), *token_strides(k, False), *token_strides(v, False),
             *token_strides(dout, False), *token_strides(dk, False), *token_strides(dv, False), *lse_address,
             *scalars),
            (ceil_div(seqlen_k, config.dkdv_block_n), batch, k.shape[-2]))
        sinks = self.dsinks_launch
        if sinks is not None:
            # (Its block spans the query positions up to 1024: a launch of its own where that differs, as __init__
            # makes it.)
            block = min(1024, max(16, next_power_of_2(seqlen_q)))
            sink_scalars = (batch, seqlen_q, *lse_address)
            plan.dsinks_launch = (sinks.with_scalars(sink_scalars) if sinks.constexprs["BLOCK"] == block
                                  else Launch(sinks.kernel, sinks.grid, sink_scalars,
                                              dict(sinks.constexprs, BLOCK=block), sinks.options, num_tensors=6))
        return plan

    def take_compiled(self, other: _BackwardPlan) -> None:
        """Take the compiled kernels of ``other`` (a backward plan of the same signature up to lengths: another length
        of one forward plan family, whose key holds the tensors' dtypes and alignment) for each launch that Triton
        would compile alike (``Launch.take_compiled``): its first call then launches directly instead of through
        ``kernel[grid](...)``. What is launched (grid, scalars, constexprs) stays this plan's own."""
        for name in ("dq_launch", "dkdv_launch", "dsinks_launch"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine.take_compiled(theirs)

    def run(self, dout, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, dlse, seqused_q):
        dq = torch.zeros_like(q) if self.zero_dq else torch.empty_like(q)
        dk = torch.zeros_like(k) if self.zero_dkdv else torch.empty_like(k)
        dv = torch.zeros_like(v) if self.zero_dkdv else torch.empty_like(v)
        # dsinks: written by its kernel, or zero (no queries)
        dsinks = None if sinks is None else torch.empty(self.num_heads, device=self.device, dtype=torch.float32)
        loop_record = (None if self.record_shape is None
                       else torch.full(self.record_shape, -1, device=self.device, dtype=torch.int32))
        result = (dq, dk, dv, dsinks, loop_record) if loop_record is not None else (dq, dk, dv, dsinks)
        if self.no_queries or self.no_keys:
            dq.zero_()
            dk.zero_()
            dv.zero_()
        if self.dq_launch is None:
            if dsinks is not None:
                dsinks.zero_()
            return result
        stream = stream_key(self.device)
        delta = kept_buffer("delta", self.device, self.delta_span, self.delta_dtype, stream)
        if self.use_tma:
            ensure_triton_allocator()
            # The launches below run in stream order (no PDL): their descriptors share one kept scratch buffer.
            TRITON_SCRATCH.stream = stream
            try:
                return self._launch(dout, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, dlse,
                                    seqused_q, result, delta)
            finally:
                TRITON_SCRATCH.stream = None
        return self._launch(dout, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, dlse, seqused_q,
                            result, delta)

    def _launch(self, dout, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, dlse, seqused_q, result,
                delta):
        dq, dk, dv, dsinks = result[:4]
        loop_record = result[4] if len(result) > 4 else None
        placeholder = q
        sequence_args = (placeholder if cu_seqlens_q is None else cu_seqlens_q,
                         placeholder if cu_seqlens_k is None else cu_seqlens_k,
                         placeholder if seqused_k is None else seqused_k,
                         placeholder if seqused_q is None else seqused_q)
        # dQ first: it also writes delta, which the dK/dV kernel and the sinks' gradient read. Without keys its loop
        # is empty (dQ = 0) and it only computes delta.
        self.dq_launch(q, placeholder if self.no_keys else k, placeholder if self.no_keys else v, out, dout, dq, lse,
                       placeholder if dlse is None else dlse, delta, *sequence_args)
        if sinks is not None:
            # Without keys every row's softmax is the sink alone (out 0, lse = sink), so the sink still receives
            # the gradient that flows into the LSE output.
            self.dsinks_launch(sinks, lse, delta, dsinks, sequence_args[0], sequence_args[3])
        if self.dkdv_launch is not None:
            self.dkdv_launch(q, k, v, dout, dk, dv, lse, delta, *sequence_args,
                             placeholder if loop_record is None else loop_record)
        return result
