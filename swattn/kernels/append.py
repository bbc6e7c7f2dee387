"""Append new k/v tokens to a contiguous or paged KV cache, and compute the key lengths, in one launch.

``flash_attn_with_kvcache(..., k=, v=)`` writes the new tokens at ``cache_seqlens[b] ...`` before attending. Done
with torch indexing this took about ten small launches (and, for varlen, a search that padding rows past
``cu_seqlens_q[-1]`` sent out of bounds); here it is one launch with no host synchronisation, so a decode step
stays two launches inside a CUDA graph. Padding rows are skipped. With rotary embedding (``rotary_cos`` /
``rotary_sin``) the same launch rotates the new keys before writing them and writes a rotated copy of the queries,
which the attention kernel then reads, so rotary costs no launch and no switch in the attention kernel. Into an
fp8 (e4m3) cache, fp16/bf16 tokens are quantized with the call's ``k_descale`` / ``v_descale`` in the same launch.
"""

from __future__ import annotations

import operator

import torch
import triton
import triton.language as tl

from swattn import _compat
from swattn._compat import next_power_of_2, pdl_enabled, pdl_launch_options
from swattn.kernels._common import (
    descale_strides,
    ones_descale,
    token_strides,
    wait_for_previous_grid,
)
from swattn.kernels._launch import ASK, Launch, PlanCache, kept_buffer, tensor_signature

E4M3_MAX = tl.constexpr(448.0)


@triton.jit
def quantize_e4m3(x, descale):
    """``x / descale`` (fp32) saturated to e4m3's range +-448 and rounded to the nearest e4m3 value (ties to even,
    subnormals and -0.0 kept, NaN stays NaN), bit for bit as ``(x / descale).clamp(-448, 448).to(float8_e4m3fn)``.

    The rounding is done here in fp32, so the final cast only meets representable values and no conversion's
    rounding mode matters: Triton's interpreter converts fp32 to e4m3 rounding ties away from zero, truncating
    subnormals and mishandling a carry into the exponent (Triton 3.9), while the GPU rounds to nearest even.
    Every step is exact on the GPU too, which is why it avoids three things that compile to inexact or
    sign-losing code for sm_90: Triton's fp32 ``/`` (the approximate ``div.full.f32``: the division is
    ``div_rn``, the scaling a product by a power of two), unary minus (Triton 3.6 lowers ``-x`` to ``0 - x``,
    which turns -0.0 into +0.0: the sign is put back as a bit) and a NaN-dropping clamp (``max.f32`` returns
    the non-NaN operand, which made NaN -448)."""
    quotient = tl.math.div_rn(x, descale)
    is_nan = quotient != quotient
    y = tl.where(is_nan, 0.0, tl.minimum(tl.maximum(quotient, -E4M3_MAX), E4M3_MAX))
    # e4m3 keeps 3 mantissa bits, and from 2^-6 down a fixed step of 2^-9 (its subnormals): the step is a power
    # of two, so scaling by it and back is exact, and only the rounding to an integer is not.
    bits = y.to(tl.int32, bitcast=True)
    exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
    step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(exponent - 3)
    inverse_step = ((3 - exponent + 127) << 23).to(tl.float32, bitcast=True)  # 2^(3 - exponent)
    units = tl.abs(y) * inverse_step  # < 16
    whole = tl.floor(units)
    fraction = units - whole
    round_up = (fraction > 0.5) | ((fraction == 0.5) & ((whole.to(tl.int32) & 1) == 1))
    rounded = tl.where(round_up, whole + 1.0, whole) * step
    sign = quotient.to(tl.int32, bitcast=True) & -2147483648
    byte = (rounded.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True).to(tl.float8e4nv).to(
        tl.int8, bitcast=True)
    # NaN: e4m3's NaN with the quotient's sign (0x7F / 0xFF, as torch converts it); no conversion is asked to.
    byte = tl.where(is_nan, (sign >> 24) | 0x7F, byte)
    return byte.to(tl.int8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def _rotate(base, offs_h, offs_d, mask, stride_h, COS, SIN, position, stride_cos, stride_sin, rotary_dim,
            INTERLEAVED: tl.constexpr):
    """The rows ``base + offs_h * stride_h`` ([BLOCK_H, BLOCK_D]) rotated at ``position`` by ``COS``/``SIN``
    ``[seqlen_ro, rotary_dim / 2]``, in fp32. Interleaved rotates pairs (2i, 2i + 1) by angle i; otherwise (GPT-NeoX)
    (i, i + rotary_dim / 2); dimensions from ``rotary_dim`` on are returned unchanged."""
    half = rotary_dim // 2
    rotated = offs_d < rotary_dim
    if INTERLEAVED:
        partner = offs_d ^ 1
        angle = offs_d // 2
        sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
    else:
        first_half = offs_d < half
        partner = tl.where(first_half, offs_d + half, offs_d - half)
        angle = tl.where(first_half, offs_d, offs_d - half)
        sign = tl.where(first_half, -1.0, 1.0)
    rows = base + offs_h[:, None] * stride_h
    x = tl.load(rows + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(rows + partner[None, :], mask=mask & rotated[None, :], other=0.0).to(tl.float32)
    position64 = position.to(tl.int64)
    cos = tl.load(COS + position64 * stride_cos + angle, mask=rotated, other=1.0).to(tl.float32)
    sin = tl.load(SIN + position64 * stride_sin + angle, mask=rotated, other=0.0).to(tl.float32)
    return x * cos[None, :] + x_partner * (sign * sin)[None, :]


@triton.jit
def _token_sequence(token, CU_SEQLENS, batch, BLOCK_B: tl.constexpr):
    """``(sequence, index in it, valid)`` of packed token ``token``: the sequence is the number of sequences that
    end at or before it; tokens past ``CU_SEQLENS[batch]`` are padding (not valid)."""
    offs_b = tl.arange(0, BLOCK_B)
    ends = tl.load(CU_SEQLENS + 1 + offs_b, mask=offs_b < batch, other=2147483647)
    seq = tl.sum((ends <= token).to(tl.int32), 0)
    valid = seq < batch
    seq = tl.minimum(seq, batch - 1)
    return seq, token - tl.load(CU_SEQLENS + seq), valid


@triton.jit
def _append_kv_kernel(
    K_NEW, V_NEW, K_CACHE, V_CACHE, CACHE_SEQLENS, SEQLENS_K, CU_SEQLENS_NEW, CACHE_BATCH_IDX, PAGE_TABLE,
    Q, Q_ROT, CU_SEQLENS_Q, COS, SIN, ROTARY_SEQLENS, K_DESCALE, V_DESCALE,
    stride_knb, stride_kns, stride_knh, stride_vnb, stride_vns, stride_vnh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    stride_qb, stride_qs, stride_qh, stride_rb, stride_rs, stride_rh, stride_cos, stride_sin,
    stride_page_table, batch, num_tokens, seqlen_new, page_size, num_kv_heads,
    num_q_tokens, seqlen_q, num_heads, rotary_dim, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
    IS_VARLEN: tl.constexpr, IS_PAGED: tl.constexpr, HAS_CACHE_BATCH_IDX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    USE_PDL: tl.constexpr, HAS_ROTARY: tl.constexpr = False, INTERLEAVED: tl.constexpr = True,
    SEQUENTIAL_Q: tl.constexpr = True, IS_VARLEN_Q: tl.constexpr = False, HAS_ROTARY_SEQLENS: tl.constexpr = False,
    BLOCK_HQ: tl.constexpr = 1, QUANTIZE: tl.constexpr = False, HEAD_DIM_V: tl.constexpr = 0,
    BLOCK_DV: tl.constexpr = 0,
):
    """Grid: (max(num_tokens, batch[, num_q_tokens with rotary]),). Program p writes ``SEQLENS_K[p]`` (p < batch)
    and copies new token p (p < num_tokens, skipped when it is varlen padding) into its cache slot, all heads at
    once: slot ``CACHE_SEQLENS[b] + i`` of the sequence's cache row (``CACHE_BATCH_IDX[b]`` or b), through the
    page-table row of that cache row when paged. New tokens are dense ``[B, seqlen_new, Hk, D]`` or packed with
    ``CU_SEQLENS_NEW`` (IS_VARLEN).

    ``HAS_ROTARY``: new token i of sequence b is rotated at position ``ROTARY_SEQLENS[b] + i`` (default
    ``CACHE_SEQLENS[b] + i``) before it is written, and program p < num_q_tokens writes query token p rotated into
    ``Q_ROT`` (query i of sequence b at that offset + i with ``SEQUENTIAL_Q``, causal / local attention, else all
    at the offset, as FlashAttention 3 does).

    ``QUANTIZE`` (fp16/bf16 tokens into an e4m3 cache): each head's token is divided by its descale
    ``K_DESCALE[b, h]`` / ``V_DESCALE[b, h]``, saturated to +-448 and rounded to nearest even (after rotary, which
    rounds to the new tokens' dtype first, as without fp8).

    ``HEAD_DIM_V`` > 0: values have a head_dim of their own (FlashAttention 3's ``headdim_v``), padded to
    ``BLOCK_DV``; 0 (equal head dims): values as keys.
    """
    wait_for_previous_grid(USE_PDL)
    program = tl.program_id(0)
    if program < batch:
        if IS_VARLEN:
            new_tokens = tl.load(CU_SEQLENS_NEW + program + 1) - tl.load(CU_SEQLENS_NEW + program)
        else:
            new_tokens = seqlen_new
        tl.store(SEQLENS_K + program, (tl.load(CACHE_SEQLENS + program) + new_tokens).to(tl.int32))
    offs_d = tl.arange(0, BLOCK_D)
    if program < num_tokens:
        if IS_VARLEN:
            seq, index_in_seq, valid = _token_sequence(program, CU_SEQLENS_NEW, batch, BLOCK_B)
            k_src = K_NEW + program.to(tl.int64) * stride_kns
            v_src = V_NEW + program.to(tl.int64) * stride_vns
        else:
            seq = program // seqlen_new
            valid = seq < batch
            index_in_seq = program % seqlen_new
            k_src = K_NEW + seq.to(tl.int64) * stride_knb + index_in_seq.to(tl.int64) * stride_kns
            v_src = V_NEW + seq.to(tl.int64) * stride_vnb + index_in_seq.to(tl.int64) * stride_vns
        if valid:
            position = tl.load(CACHE_SEQLENS + seq).to(tl.int64) + index_in_seq
            if HAS_CACHE_BATCH_IDX:
                cache_row = tl.load(CACHE_BATCH_IDX + seq).to(tl.int64)
            else:
                cache_row = seq.to(tl.int64)
            if IS_PAGED:
                row = tl.load(PAGE_TABLE + cache_row * stride_page_table + position // page_size).to(tl.int64)
                slot = position % page_size
            else:
                row = cache_row
                slot = position
            offs_h = tl.arange(0, BLOCK_H)
            mask = (offs_h[:, None] < num_kv_heads) & (offs_d[None, :] < HEAD_DIM)
            if HAS_ROTARY:
                if HAS_ROTARY_SEQLENS:
                    rotary_position = tl.load(ROTARY_SEQLENS + seq) + index_in_seq
                else:
                    rotary_position = position
                k = _rotate(k_src, offs_h, offs_d, mask, stride_knh, COS, SIN, rotary_position, stride_cos,
                            stride_sin, rotary_dim, INTERLEAVED)
                if K_NEW.dtype.element_ty == tl.float8e4nv:
                    k = quantize_e4m3(k, 1.0)  # e4m3 tokens rotated: back to e4m3, saturated, ties to even
                k = k.to(K_NEW.dtype.element_ty)
            else:
                k = tl.load(k_src + offs_h[:, None] * stride_knh + offs_d[None, :], mask=mask)
            if HEAD_DIM_V != 0:
                offs_dv = tl.arange(0, BLOCK_DV)
                v_mask = (offs_h[:, None] < num_kv_heads) & (offs_dv[None, :] < HEAD_DIM_V)
                v = tl.load(v_src + offs_h[:, None] * stride_vnh + offs_dv[None, :], mask=v_mask)
            else:
                offs_dv = offs_d
                v_mask = mask
                v = tl.load(v_src + offs_h[:, None] * stride_vnh + offs_d[None, :], mask=mask)
            if QUANTIZE:
                head_mask = offs_h < num_kv_heads
                seq64 = seq.to(tl.int64)
                k_descale = tl.load(K_DESCALE + seq64 * stride_kdb + offs_h * stride_kdh, mask=head_mask, other=1.0)
                v_descale = tl.load(V_DESCALE + seq64 * stride_vdb + offs_h * stride_vdh, mask=head_mask, other=1.0)
                k = quantize_e4m3(k.to(tl.float32), k_descale[:, None])
                v = quantize_e4m3(v.to(tl.float32), v_descale[:, None])
            k_dst = K_CACHE + row * stride_kcb + slot * stride_kcs
            v_dst = V_CACHE + row * stride_vcb + slot * stride_vcs
            tl.store(k_dst + offs_h[:, None] * stride_kch + offs_d[None, :], k, mask=mask)
            tl.store(v_dst + offs_h[:, None] * stride_vch + offs_dv[None, :], v, mask=v_mask)
    if HAS_ROTARY:
        if program < num_q_tokens:
            if IS_VARLEN_Q:
                seq_q, index_q, valid_q = _token_sequence(program, CU_SEQLENS_Q, batch, BLOCK_B)
                q_src = Q + program.to(tl.int64) * stride_qs
                q_dst = Q_ROT + program.to(tl.int64) * stride_rs
            else:
                seq_q = program // seqlen_q
                index_q = program % seqlen_q
                valid_q = seq_q < batch
                q_src = Q + seq_q.to(tl.int64) * stride_qb + index_q.to(tl.int64) * stride_qs
                q_dst = Q_ROT + seq_q.to(tl.int64) * stride_rb + index_q.to(tl.int64) * stride_rs
            if valid_q:
                if HAS_ROTARY_SEQLENS:
                    q_position = tl.load(ROTARY_SEQLENS + seq_q)
                else:
                    q_position = tl.load(CACHE_SEQLENS + seq_q)
                if SEQUENTIAL_Q:
                    q_position = q_position + index_q
                offs_hq = tl.arange(0, BLOCK_HQ)
                q_mask = (offs_hq[:, None] < num_heads) & (offs_d[None, :] < HEAD_DIM)
                q_rot = _rotate(q_src, offs_hq, offs_d, q_mask, stride_qh, COS, SIN, q_position, stride_cos,
                                stride_sin, rotary_dim, INTERLEAVED)
                if Q_ROT.dtype.element_ty == tl.float8e4nv:
                    # e4m3 queries (their descale applies to the rotated values alike: the rotation is linear)
                    # go back to e4m3 for the e4m3 Q K^T, as FlashAttention 3 rotates them.
                    q_rot = quantize_e4m3(q_rot, 1.0)
                tl.store(q_dst + offs_hq[:, None] * stride_rh + offs_d[None, :], q_rot.to(Q_ROT.dtype.element_ty),
                         mask=q_mask)


# append_kv's launches, per call signature.
_PLANS = PlanCache()


def append_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    cache_batch_idx: torch.Tensor | None,
    page_table: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    q: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_seqlens: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    rotary_sequential_q: bool = True,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write ``k_new``/``v_new`` into the caches at ``cache_seqlens[b] ...`` in place; returns the key lengths
    after the append (int32 ``[B]``) and, with rotary, the rotated queries (else None).

    New tokens are ``[B, S_new, Hk, D]`` or varlen ``[total, Hk, D]`` with ``cu_seqlens_k_new``, or (swattn's
    shorthand, when ``cu_seqlens_q`` is given and k_new is 3-D) laid out like the queries. Rows past the last
    cumulative length are padding and are not written. Caches ``[B_cache, S_cache, Hk, D]`` (with
    ``cache_batch_idx``) or paged ``[num_pages, page_size, Hk, D]`` with ``page_table [B_cache, pages]`` (its row
    ``cache_batch_idx[b]`` or b). With ``rotary_cos``/``rotary_sin`` (``[seqlen_ro, rotary_dim / 2]``) the keys are
    rotated before they are written and ``q`` (``[B, Sq, H, D]`` or varlen with ``cu_seqlens_q``) is returned
    rotated (``rotary_sequential_q``: query i at offset + i, else all at the offset). Arguments are already
    checked; the head dimension must have unit stride. The launch is planned once per call signature.
    An e4m3 cache takes fp16/bf16 tokens quantized with ``k_descale`` / ``v_descale`` (float32 ``[B, Hk]``, any
    strides; None = 1), or e4m3 tokens as they are.
    """
    return append_plan(k_cache, v_cache, k_new, v_new, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
                       cu_seqlens_k_new, q, rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved,
                       rotary_sequential_q, k_descale, v_descale).run(
        k_cache, v_cache, k_new, v_new, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q, cu_seqlens_k_new, q,
        rotary_cos, rotary_sin, rotary_seqlens, k_descale, v_descale)


def append_plan(k_cache, v_cache, k_new, v_new, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
                cu_seqlens_k_new=None, q=None, rotary_cos=None, rotary_sin=None, rotary_seqlens=None,
                rotary_interleaved=True, rotary_sequential_q=True, k_descale=None, v_descale=None) -> _AppendPlan:
    """The plan of one ``append_kv`` call signature (made once, then looked up); its ``run`` serves every call of
    the signature."""
    rotary = rotary_cos is not None
    key = (tensor_signature(k_cache), tensor_signature(v_cache), tensor_signature(k_new), tensor_signature(v_new),
           tensor_signature(cache_seqlens), tensor_signature(cache_batch_idx), tensor_signature(page_table),
           tensor_signature(cu_seqlens_q), tensor_signature(cu_seqlens_k_new),
           tensor_signature(q) if rotary else None, tensor_signature(rotary_cos), tensor_signature(rotary_sin),
           tensor_signature(rotary_seqlens), rotary_interleaved, rotary_sequential_q, k_new.device, _compat.PDL,
           tensor_signature(k_descale), tensor_signature(v_descale))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS.add(key, _AppendPlan(k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table,
                                           cu_seqlens_q, cu_seqlens_k_new, q, rotary_cos, rotary_sin,
                                           rotary_seqlens, rotary_interleaved, rotary_sequential_q, k_descale,
                                           v_descale))
    return plan


class _AppendPlan:
    """The launch of one append_kv signature; ``run`` allocates the new lengths (and the rotated q) and launches."""

    def __init__(self, k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table, cu_seqlens_q, cu_seqlens_k_new,
                 q, rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, rotary_sequential_q, k_descale=None,
                 v_descale=None):
        self.batch, self.launch, self.pick = _plan_append(
            k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table, cu_seqlens_q, cu_seqlens_k_new, q,
            rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, rotary_sequential_q, k_descale, v_descale)
        # fp16/bf16 tokens into an e4m3 cache are quantized with the descales (absent ones are 1).
        self.quantize = k_cache.dtype == torch.float8_e4m3fn and k_new.dtype != k_cache.dtype
        self.rotary = rotary_cos is not None
        self.device = k_new.device
        # The new tokens' cumulative lengths: cu_seqlens_k_new, or cu_seqlens_q for 3-D new tokens laid out like q.
        self.cu_new = "k_new" if cu_seqlens_k_new is not None else "q" if k_new.dim() == 3 else None

    def run(self, k_cache, v_cache, k_new, v_new, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
            cu_seqlens_k_new=None, q=None, rotary_cos=None, rotary_sin=None, rotary_seqlens=None, k_descale=None,
            v_descale=None, scratch_lengths=False, stream=ASK):
        """-> (the key lengths after the append, q rotated or None). ``scratch_lengths``: the caller reads the
        lengths only in launches it makes next on this stream (the attention of the same call), so they go into a
        buffer kept between calls (``kept_buffer``, an allocation less; ``stream`` as it takes it); otherwise a new
        tensor."""
        if scratch_lengths:
            seqlens_k = kept_buffer("new_lengths", self.device, self.batch, torch.int32, stream)
        else:
            # Like cache_seqlens (int32 [B] by the interface's checks): new_empty skips torch.empty's argument parsing.
            seqlens_k = (cache_seqlens.new_empty(self.batch) if cache_seqlens.dtype == torch.int32
                         else torch.empty(self.batch, device=self.device, dtype=torch.int32))
        rotary = self.rotary
        q_rot = torch.empty_like(q) if rotary else None
        if self.launch is not None:
            descales = ((None, None) if not self.quantize
                        else tuple(ones_descale(self.device) if d is None else d for d in (k_descale, v_descale)))
            cu_new = cu_seqlens_k_new if self.cu_new == "k_new" else cu_seqlens_q if self.cu_new == "q" else None
            # The placeholder (cache_seqlens) for the tensors this signature does not pass, then those it passes
            # (``_plan_append``'s slots).
            self.launch(cache_seqlens, *self.pick((k_new, v_new, k_cache, v_cache, cache_seqlens, seqlens_k, cu_new,
                                                   cache_batch_idx, page_table, q, q_rot, cu_seqlens_q, rotary_cos,
                                                   rotary_sin, rotary_seqlens, *descales)))
        return seqlens_k, q_rot


def _plan_append(k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table, cu_seqlens_q, cu_seqlens_k_new, q,
                 rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, rotary_sequential_q, k_descale=None,
                 v_descale=None) -> tuple[int, Launch | None]:
    """``(batch, launch)`` of one append_kv signature (launch None when there is nothing to write)."""
    cu_new = cu_seqlens_k_new if cu_seqlens_k_new is not None else (cu_seqlens_q if k_new.dim() == 3 else None)
    varlen = cu_new is not None
    varlen_q = cu_seqlens_q is not None
    rotary = rotary_cos is not None
    batch = cu_new.numel() - 1 if varlen else k_new.shape[0]
    num_tokens = k_new.shape[0] if varlen else k_new.shape[0] * k_new.shape[1]
    num_q_tokens = (q.shape[0] if varlen_q else q.shape[0] * q.shape[1]) if rotary else 0
    programs = max(num_tokens, batch, num_q_tokens)
    if programs == 0:
        return batch, None, None
    num_kv_heads, head_dim = k_new.shape[-2], k_new.shape[-1]
    use_pdl = pdl_enabled(k_new.device)
    if rotary:
        # The rotated copy of q is allocated like q (torch.empty_like keeps a dense q's strides).
        q_strides = token_strides(q, varlen_q)
        rot_strides = token_strides(torch.empty_like(q, device="meta"), varlen_q)
        cos_stride, sin_stride = rotary_cos.stride(0), rotary_sin.stride(0)
    else:
        q_strides = rot_strides = (0, 0, 0)
        cos_stride = sin_stride = 0
    scalars = (
        *token_strides(k_new, varlen), *token_strides(v_new, varlen),
        *token_strides(k_cache, False), *token_strides(v_cache, False),
        *q_strides, *rot_strides, cos_stride, sin_stride,
        page_table.stride(0) if page_table is not None else 0,
        batch, num_tokens, 1 if varlen else k_new.shape[1], k_cache.shape[1] if page_table is not None else 1,
        num_kv_heads, num_q_tokens, 1 if varlen_q or not rotary else q.shape[1], q.shape[-2] if rotary else 1,
        2 * rotary_cos.shape[1] if rotary else 0,
        *descale_strides(k_descale), *descale_strides(v_descale),
    )
    constexprs = dict(
        IS_VARLEN=varlen, IS_PAGED=page_table is not None, HAS_CACHE_BATCH_IDX=cache_batch_idx is not None,
        BLOCK_B=next_power_of_2(max(batch, 1)), BLOCK_H=next_power_of_2(num_kv_heads),
        BLOCK_D=next_power_of_2(head_dim), HEAD_DIM=head_dim, USE_PDL=use_pdl, HAS_ROTARY=rotary,
        INTERLEAVED=rotary_interleaved, SEQUENTIAL_Q=rotary_sequential_q, IS_VARLEN_Q=varlen_q and rotary,
        HAS_ROTARY_SEQLENS=rotary_seqlens is not None, BLOCK_HQ=next_power_of_2(q.shape[-2]) if rotary else 1,
        QUANTIZE=k_cache.dtype == torch.float8_e4m3fn and k_new.dtype != k_cache.dtype,
        # Values with a head_dim of their own (equal head dims leave the defaults: the kernel compiles as before).
        **({"HEAD_DIM_V": v_new.shape[-1], "BLOCK_DV": next_power_of_2(v_new.shape[-1])}
           if v_new.shape[-1] != head_dim else {}),
    )
    # The kernel's 17 tensors this signature passes (``_AppendPlan.run`` picks them; the others are the placeholder).
    present = (True, True, True, True, True, True, varlen, cache_batch_idx is not None, page_table is not None,
               rotary, rotary, rotary and varlen_q, rotary, rotary, rotary_seqlens is not None,
               constexprs["QUANTIZE"], constexprs["QUANTIZE"])
    slots, passed = [], 0
    for here in present:
        passed += here
        slots.append(passed if here else 0)
    pick = operator.itemgetter(*(i for i, here in enumerate(present) if here))
    return batch, Launch(_append_kv_kernel, (programs,), scalars, constexprs,
                         dict(num_warps=4, **pdl_launch_options(use_pdl)), num_tensors=17, slots=slots), pick
