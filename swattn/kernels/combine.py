"""Merge the partial results of split-KV programs (flash-decoding) using their log-sum-exps: inside the forward
(``combine_launch``) and as FlashAttention 3's public ``flash_attn_combine`` (``combine_splits``)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from swattn._compat import next_power_of_2, pdl_enabled, pdl_launch_options
from swattn.kernels import _common
from swattn.kernels._common import (
    LN2,
    LOG2E,
    let_dependents_launch_then_wait,
    lse_strides,
    record_stamps,
    time_stamp,
    wait_for_previous_grid,
)
from swattn.kernels._launch import Launch, PlanCache, tensor_signature


@triton.jit
def _merge_splits(m, total, acc, partial_row, lse_row, start, num_splits, head_dim, stride_ps, stride_lps,
                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Splits ``start .. start + BLOCK_S - 1`` merged into the running maximum ``m`` (log2 domain), weight sum
    ``total`` and weighted sum ``acc [BLOCK_D]``; returns the three updated."""
    split = start + tl.arange(0, BLOCK_S)
    split_mask = split < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    # Both loads before either is used (a warp issues in order: the partial rows' load placed after the first use of
    # the LSEs waited for them, two round trips; compiled for sm_90 (Triton 3.6, 24 splits, head_dim 64) 14 of the
    # 16 partial loads per lane came after that wait, now 1).
    lse_s = tl.load(lse_row + split * stride_lps, mask=split_mask, other=float("-inf"))  # [BLOCK_S]
    part = tl.load(partial_row + split[:, None] * stride_ps + offs_d[None, :],
                   mask=split_mask[:, None] & (offs_d[None, :] < head_dim), other=0.0)  # [BLOCK_S, BLOCK_D]
    lse_s = lse_s * LOG2E
    m_new = tl.maximum(m, tl.max(lse_s, 0))
    # A finite pivot while nothing was seen (m_new = -inf): the weights are then all 0, never NaN.
    pivot = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.where(m == float("-inf"), 0.0, tl.exp2(m - pivot))
    weight = tl.exp2(lse_s - pivot)  # [BLOCK_S]
    acc = acc * rescale + tl.sum(weight[:, None] * part.to(tl.float32), 0)
    total = total * rescale + tl.sum(weight, 0)
    return m_new, total, acc


@triton.jit
def _swa_combine_kernel(
    O_PARTIAL, LSE_PARTIAL, O, LSE, SINKS, CU_SEQLENS_Q, SEQUSED_Q,
    stride_ps, stride_pb, stride_pt, stride_ph,
    stride_lps, stride_lpb, stride_lpt, stride_lph,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lq, stride_lh,
    num_splits, head_dim, num_sequences,
    HAS_SINKS: tl.constexpr, STORE_LSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr = False, BLOCK_B: tl.constexpr = 1,
    SPLIT_LOOP: tl.constexpr = False, STAMPS: tl.constexpr = 0, EARLY_DEPENDENTS: tl.constexpr = False,
):
    """Grid: (positions, heads, batch). One program merges the ``num_splits`` partial rows of one (position, head,
    batch entry), ``BLOCK_S`` splits at a time.

    ``lse = log(sum_s exp(lse_s) + exp(sink))``, ``out = sum_s exp(lse_s - lse) * out_s``, accumulated over the
    chunks of splits against a running maximum (as the attention loop does over key blocks). The sink is added here,
    once, never inside a split. Splits with lse = -inf (empty) add nothing; rows whose splits all saw nothing (and no
    sink) give out = 0, lse = -inf. ``HAS_SEQUSED_Q`` (varlen: batch 1, positions = packed tokens): a token past its
    sequence's ``seqused_q`` (or past ``cu_seqlens_q[-1]``) had no partial results written and is left untouched.
    ``STAMPS`` (diagnostic, 0 = off): each program's time stamps into _common's stamp buffer (region 1).
    ``EARLY_DEPENDENTS`` (the forward's merge, ``EARLY_DEPENDENTS`` below): the next kernel may launch before this
    one's wait (``let_dependents_launch_then_wait``).
    """
    if STAMPS != 0:
        stamp_start = time_stamp(tl.program_id(0))
    pos = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    # The sink before the wait for the split kernel: it is the call's input, which that kernel does not write, and
    # every kernel before that one has completed by the time this grid starts (each split program waits for its
    # predecessor before it lets this grid launch). Loaded after the wait, its round trip sat in the merge's tail.
    sink = 0.0
    if HAS_SINKS:
        sink = tl.load(SINKS + head).to(tl.float32)
    if EARLY_DEPENDENTS:
        let_dependents_launch_then_wait(USE_PDL)
    else:
        wait_for_previous_grid(USE_PDL)
    if STAMPS != 0:
        stamp_waited = time_stamp(tl.program_id(0))
    if HAS_SEQUSED_Q:
        # The token's sequence is the number of sequences that end at or before it (as the append kernel finds it).
        offs_b = tl.arange(0, BLOCK_B)
        ends = tl.load(CU_SEQLENS_Q + 1 + offs_b, mask=offs_b < num_sequences, other=2147483647)
        seq = tl.sum((ends <= pos).to(tl.int32), 0)
        safe_seq = tl.minimum(seq, num_sequences - 1)
        used = tl.load(SEQUSED_Q + safe_seq)
        if (seq >= num_sequences) | (pos - tl.load(CU_SEQLENS_Q + safe_seq) >= used):
            return
    offs_d = tl.arange(0, BLOCK_D)
    partial_row = O_PARTIAL + batch * stride_pb + pos * stride_pt + head * stride_ph
    lse_row = LSE_PARTIAL + batch * stride_lpb + pos * stride_lpt + head * stride_lph
    # Running maximum (log2 domain), its weight sum and the weighted sum of partial rows; the sink starts them.
    m = tl.full((), float("-inf"), tl.float32)
    if HAS_SINKS:
        m = sink * LOG2E
    total = tl.where(m == float("-inf"), 0.0, 1.0)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    if SPLIT_LOOP:
        for start in range(0, num_splits, BLOCK_S):
            m, total, acc = _merge_splits(m, total, acc, partial_row, lse_row, start, num_splits, head_dim,
                                          stride_ps, stride_lps, BLOCK_S, BLOCK_D)
    else:  # every split in one tile (the forward's split counts): no loop
        m, total, acc = _merge_splits(m, total, acc, partial_row, lse_row, 0, num_splits, head_dim, stride_ps,
                                      stride_lps, BLOCK_S, BLOCK_D)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    tl.store(O + batch * stride_ob + pos * stride_ot + head * stride_oh + offs_d, out.to(O.dtype.element_ty),
             mask=offs_d < head_dim)
    if STORE_LSE:
        pivot = tl.where(m == float("-inf"), 0.0, m)
        lse = tl.where(empty, float("-inf"), (pivot + tl.log2(tl.where(empty, 1.0, total))) * LN2)
        tl.store(LSE + batch * stride_lb + pos * stride_lq + head * stride_lh, lse)
    if STAMPS != 0:
        program = (batch * tl.num_programs(1) + head) * tl.num_programs(0) + pos
        record_stamps(STAMPS, 1, program.to(tl.int32), stamp_start, stamp_waited, stamp_waited)


# Experimental (off until timed on the GPU: scripts/gpu_probe.py fixed_costs): the forward's merge lets the next
# kernel launch before its own PDL wait instead of after it. Its programs all start while the split launch drains
# (each as a split program's registers free up), so the next call's split programs can become resident during that
# drain rather than once the split launch has completed, and with fwd.PRELOAD_L2_SPLITS warm L2 with their first
# block while bandwidth is left idle. Results are the same: the next kernel's own wait still waits for this grid.
# SWATTN_MERGE_EARLY_DEPENDENTS=1: on. Part of the forward plans' key (fwd.settings).
EARLY_DEPENDENTS = os.environ.get("SWATTN_MERGE_EARLY_DEPENDENTS", "0") not in ("", "0")

# Splits merged per loop iteration: at most this many partial elements (BLOCK_S * BLOCK_D) in one program's tile.
# 4096 keeps every split count the forward makes (<= 64) for head_dim 64, and up to 32 for head_dim 128, in one
# iteration; larger products loop (a single [64, 256] fp32 tile spilled 2.5 KB per thread on sm_90).
MAX_TILE = 4096


def _launch(num_splits: int, grid: tuple[int, int, int], head_dim: int, partial: tuple, lse_partial: tuple,
            out: tuple, lse: tuple | None, has_sinks: bool, device, num_sequences: int = 0,
            early_dependents: bool = False) -> Launch:
    """The merge over ``grid = (positions, heads, batch)``. Strides: ``partial`` (split, batch, position, head),
    ``lse_partial`` likewise, ``out`` (batch, position, head), ``lse`` (batch, position, head) or None (not
    stored); ``num_sequences`` > 0: varlen with seqused_q over that many sequences; ``early_dependents``: the
    kernel's EARLY_DEPENDENTS."""
    use_pdl = pdl_enabled(device)
    block_d = next_power_of_2(head_dim)
    block_s = max(2, min(next_power_of_2(num_splits), MAX_TILE // block_d))
    scalars = (*partial, *lse_partial, *out, *(lse or (0, 0, 0)), num_splits, head_dim, num_sequences)
    constexprs = dict(HAS_SINKS=has_sinks, STORE_LSE=lse is not None, BLOCK_S=block_s, BLOCK_D=block_d,
                      USE_PDL=use_pdl, HAS_SEQUSED_Q=num_sequences > 0,
                      BLOCK_B=next_power_of_2(max(num_sequences, 1)), SPLIT_LOOP=num_splits > block_s,
                      STAMPS=_common.STAMPS_ADDRESS, EARLY_DEPENDENTS=early_dependents and use_pdl)
    # One warp: the forward's 64-split merge (e4m3 pairs at B=4) on 2 / 4 warps measured +2.2 / +0.0 us at B=4 16K
    # (H200 s11-call9: the two-warp merge's programs shifted where the next call's split programs landed, 9 on some
    # SMs; docs/notes/2026-12-03-fp8-kv-cache.md, session 11).
    return Launch(_swa_combine_kernel, grid, scalars, constexprs, dict(num_warps=1, **pdl_launch_options(use_pdl)),
                  num_tensors=7)


def combine_launch(
    out_partial: torch.Tensor,
    lse_partial: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    sinks: torch.Tensor | None,
    tokens_per_batch: int,
    seqused_q: torch.Tensor | None = None,
) -> Launch | None:
    """The forward's merge of ``out_partial [S, T, H, D]`` (fp32) and ``lse_partial [S, T, H]`` into ``out [T, H,
    D]``, prepared from the tensors' shapes and strides (meta tensors will do); call it with ``(out_partial,
    lse_partial, out, lse or lse_partial, sinks or out, cu_seqlens_q or out, seqused_q or out)``. None when there
    is nothing to merge.

    The T tokens are ``T / tokens_per_batch`` sequences of ``tokens_per_batch`` positions. ``lse`` is the caller's
    [B, H, Sq] (``tokens_per_batch = Sq``) or [H, total_q] (``tokens_per_batch = total_q``) tensor, or None. With
    ``seqused_q`` (varlen; the call passes it and ``cu_seqlens_q``) tokens past a sequence's used queries are not
    written.
    """
    num_splits, tokens, heads, head_dim = out_partial.shape
    if tokens == 0:
        return None
    split_p, token_p, head_p, _ = out_partial.stride()
    split_l, token_l, head_l = lse_partial.stride()
    token_o, head_o, _ = out.stride()
    lse_address = None if lse is None else lse_strides(lse, varlen=lse.dim() == 2)
    return _launch(num_splits, (tokens_per_batch, heads, tokens // tokens_per_batch), head_dim,
                   (split_p, tokens_per_batch * token_p, token_p, head_p),
                   (split_l, tokens_per_batch * token_l, token_l, head_l),
                   (tokens_per_batch * token_o, token_o, head_o), lse_address, sinks is not None, out.device,
                   0 if seqused_q is None else seqused_q.shape[0], EARLY_DEPENDENTS)


_PLANS = PlanCache()


def _address(t: torch.Tensor, varlen: bool, batch_dim: int) -> tuple[int, ...]:
    """The strides the kernel takes, (split,) batch, position, head: ``t``'s own, or for FlashAttention's varlen
    layout (no batch dimension: one batch entry of all tokens) with a 0 batch stride inserted at ``batch_dim``."""
    strides = t.stride()
    if varlen:
        strides = strides[:batch_dim] + (0,) + strides[batch_dim:]
    return strides[:batch_dim + 3]


def combine_splits(out_partial: torch.Tensor, lse_partial: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """FlashAttention 3's merge, launched: ``out_partial [S, B, L, H, D]`` and ``lse_partial [S, B, L, H]`` into
    ``out [B, L, H, D]`` and ``lse [B, L, H]`` (float32), any strides with a unit last stride for the partial rows
    and out; or the varlen layout, one rank less without B. Arguments are checked by ``swattn.interface``."""
    if lse.numel() == 0:
        return
    key = (tensor_signature(out_partial), tensor_signature(lse_partial), tensor_signature(out),
           tensor_signature(lse), out.device)
    launch = _PLANS.get(key)
    if launch is None:
        varlen = out_partial.dim() == 4
        num_splits, heads, head_dim = out_partial.shape[0], out_partial.shape[-2], out_partial.shape[-1]
        batch, positions = (1, out_partial.shape[1]) if varlen else tuple(out_partial.shape[1:3])
        launch = _PLANS.add(key, _launch(
            num_splits, (positions, heads, batch), head_dim, _address(out_partial, varlen, 1),
            _address(lse_partial, varlen, 1), _address(out, varlen, 0), _address(lse, varlen, 0), False, out.device))
    launch(out_partial, lse_partial, out, lse, out, out, out)
