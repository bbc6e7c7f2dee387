"""Append new k/v tokens to a contiguous or paged KV cache, and compute the key lengths, in one launch.

``flash_attn_with_kvcache(..., k=, v=)`` writes the new tokens at ``cache_seqlens[b] ...`` before attending. Done
with torch indexing this took about ten small launches (and, for varlen, a search that padding rows past
``cu_seqlens_q[-1]`` sent out of bounds); here it is one launch with no host synchronisation, so a decode step
stays two launches inside a CUDA graph. Padding rows are skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swattn import _compat
from swattn._compat import next_power_of_2, pdl_enabled, pdl_launch_options
from swattn.kernels._common import token_strides, wait_for_previous_grid
from swattn.kernels._launch import Launch, PlanCache, tensor_signature


@triton.jit
def _append_kv_kernel(
    K_NEW, V_NEW, K_CACHE, V_CACHE, CACHE_SEQLENS, SEQLENS_K, CU_SEQLENS_Q, CACHE_BATCH_IDX, PAGE_TABLE,
    stride_knb, stride_kns, stride_knh, stride_vnb, stride_vns, stride_vnh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    stride_page_table, batch, num_tokens, seqlen_new, page_size, num_kv_heads,
    IS_VARLEN: tl.constexpr, IS_PAGED: tl.constexpr, HAS_CACHE_BATCH_IDX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Grid: (max(num_tokens, batch),). Program p writes ``SEQLENS_K[p]`` (p < batch) and copies new token p
    (p < num_tokens, skipped when it is varlen padding) into its cache slot, all heads at once."""
    wait_for_previous_grid(USE_PDL)
    program = tl.program_id(0)
    if program < batch:
        if IS_VARLEN:
            new_tokens = tl.load(CU_SEQLENS_Q + program + 1) - tl.load(CU_SEQLENS_Q + program)
        else:
            new_tokens = seqlen_new
        tl.store(SEQLENS_K + program, (tl.load(CACHE_SEQLENS + program) + new_tokens).to(tl.int32))
    if program < num_tokens:
        if IS_VARLEN:
            # The token's sequence is the number of sequences that end at or before it.
            offs_b = tl.arange(0, BLOCK_B)
            ends = tl.load(CU_SEQLENS_Q + 1 + offs_b, mask=offs_b < batch, other=2147483647)
            seq = tl.sum((ends <= program).to(tl.int32), 0)
            valid = seq < batch  # rows past cu_seqlens_q[-1] are padding
            seq = tl.minimum(seq, batch - 1)
            index_in_seq = program - tl.load(CU_SEQLENS_Q + seq)
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
            if IS_PAGED:
                row = tl.load(PAGE_TABLE + seq.to(tl.int64) * stride_page_table + position // page_size).to(tl.int64)
                slot = position % page_size
            else:
                if HAS_CACHE_BATCH_IDX:
                    row = tl.load(CACHE_BATCH_IDX + seq).to(tl.int64)
                else:
                    row = seq.to(tl.int64)
                slot = position
            offs_h = tl.arange(0, BLOCK_H)
            offs_d = tl.arange(0, BLOCK_D)
            mask = (offs_h[:, None] < num_kv_heads) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_src + offs_h[:, None] * stride_knh + offs_d[None, :], mask=mask)
            v = tl.load(v_src + offs_h[:, None] * stride_vnh + offs_d[None, :], mask=mask)
            k_dst = K_CACHE + row * stride_kcb + slot * stride_kcs
            v_dst = V_CACHE + row * stride_vcb + slot * stride_vcs
            tl.store(k_dst + offs_h[:, None] * stride_kch + offs_d[None, :], k, mask=mask)
            tl.store(v_dst + offs_h[:, None] * stride_vch + offs_d[None, :], v, mask=mask)


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
) -> torch.Tensor:
    """Write ``k_new``/``v_new`` into the caches at ``cache_seqlens[b] ...`` in place; returns the key lengths
    after the append (int32 ``[B]``).

    New tokens are ``[B, S_new, Hk, D]`` or, with ``cu_seqlens_q``, ``[total, Hk, D]`` laid out like the queries
    (rows past ``cu_seqlens_q[-1]`` are padding and are not written). Caches ``[B_cache, S_cache, Hk, D]`` (with
    ``cache_batch_idx``) or paged ``[num_pages, page_size, Hk, D]`` with ``page_table [B, pages]``. Arguments are
    already checked; the head dimension must have unit stride. The launch is planned once per call signature.
    """
    key = (tensor_signature(k_cache), tensor_signature(v_cache), tensor_signature(k_new), tensor_signature(v_new),
           tensor_signature(cache_seqlens), tensor_signature(cache_batch_idx), tensor_signature(page_table),
           tensor_signature(cu_seqlens_q), k_new.device, _compat.PDL)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS.add(key, _plan_append(k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table,
                                            cu_seqlens_q))
    batch, launch = plan
    seqlens_k = torch.empty(batch, device=k_new.device, dtype=torch.int32)
    if launch is not None:
        placeholder = cache_seqlens
        launch(k_new, v_new, k_cache, v_cache, cache_seqlens, seqlens_k,
               placeholder if cu_seqlens_q is None else cu_seqlens_q,
               placeholder if cache_batch_idx is None else cache_batch_idx,
               placeholder if page_table is None else page_table)
    return seqlens_k


def _plan_append(k_cache, v_cache, k_new, v_new, cache_batch_idx, page_table, cu_seqlens_q
                 ) -> tuple[int, Launch | None]:
    """``(batch, launch)`` of one append_kv signature (launch None when there is nothing to write)."""
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.numel() - 1 if varlen else k_new.shape[0]
    num_tokens = k_new.shape[0] if varlen else k_new.shape[0] * k_new.shape[1]
    if max(num_tokens, batch) == 0:
        return batch, None
    num_kv_heads, head_dim = k_new.shape[-2], k_new.shape[-1]
    use_pdl = pdl_enabled(k_new.device)
    scalars = (
        *token_strides(k_new, varlen), *token_strides(v_new, varlen),
        *token_strides(k_cache, False), *token_strides(v_cache, False),
        page_table.stride(0) if page_table is not None else 0,
        batch, num_tokens, 1 if varlen else k_new.shape[1], k_cache.shape[1] if page_table is not None else 1,
        num_kv_heads,
    )
    constexprs = dict(
        IS_VARLEN=varlen, IS_PAGED=page_table is not None, HAS_CACHE_BATCH_IDX=cache_batch_idx is not None,
        BLOCK_B=next_power_of_2(max(batch, 1)), BLOCK_H=next_power_of_2(num_kv_heads),
        BLOCK_D=next_power_of_2(head_dim), HEAD_DIM=head_dim, USE_PDL=use_pdl,
    )
    return batch, Launch(_append_kv_kernel, (max(num_tokens, batch),), scalars, constexprs,
                         dict(num_warps=4, **pdl_launch_options(use_pdl)), num_tensors=9)
