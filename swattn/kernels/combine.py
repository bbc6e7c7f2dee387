"""Merge the partial results of split-KV programs (flash-decoding) using their log-sum-exps."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swattn._compat import next_power_of_2, pdl_enabled, pdl_launch_options
from swattn.kernels._common import LN2, LOG2E, lse_strides, wait_for_previous_grid
from swattn.kernels._launch import Launch


@triton.jit
def _swa_combine_kernel(
    O_PARTIAL, LSE_PARTIAL, O, LSE, SINKS, CU_SEQLENS_Q, SEQUSED_Q,
    stride_ps, stride_pt, stride_ph,
    stride_lps, stride_lpt,
    stride_ot, stride_oh,
    stride_lb, stride_lq, stride_lh,
    tokens_per_batch, num_splits, head_dim, batch,
    HAS_SINKS: tl.constexpr, STORE_LSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr = False, BLOCK_B: tl.constexpr = 1,
):
    """Grid: (tokens, heads). One program merges the ``num_splits`` partial rows of one (token, head).

    ``lse = log(sum_s exp(lse_s) + exp(sink))``, ``out = sum_s exp(lse_s - lse) * out_s``. The sink is added here,
    once, never inside a split. Rows whose splits all saw nothing (and no sink) give out = 0, lse = -inf.
    ``HAS_SEQUSED_Q`` (varlen): a token past its sequence's ``seqused_q`` (or past ``cu_seqlens_q[-1]``) had no
    partial results written and is left untouched.
    """
    wait_for_previous_grid(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    if HAS_SEQUSED_Q:
        # The token's sequence is the number of sequences that end at or before it (as the append kernel finds it).
        offs_b = tl.arange(0, BLOCK_B)
        ends = tl.load(CU_SEQLENS_Q + 1 + offs_b, mask=offs_b < batch, other=2147483647)
        seq = tl.sum((ends <= token).to(tl.int32), 0)
        safe_seq = tl.minimum(seq, batch - 1)
        used = tl.load(SEQUSED_Q + safe_seq)
        if (seq >= batch) | (token - tl.load(CU_SEQLENS_Q + safe_seq) >= used):
            return
    offs_d = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    split_mask = offs_s < num_splits
    lse_s = tl.load(LSE_PARTIAL + offs_s * stride_lps + token * stride_lpt + head, mask=split_mask,
                    other=float("-inf")) * LOG2E  # [BLOCK_S]
    m = tl.max(lse_s, 0)
    if HAS_SINKS:
        sink = tl.load(SINKS + head).to(tl.float32) * LOG2E
        m = tl.maximum(m, sink)
    pivot = tl.where(m == float("-inf"), 0.0, m)
    weight = tl.exp2(lse_s - pivot)  # [BLOCK_S]
    part = tl.load(O_PARTIAL + offs_s[:, None] * stride_ps + token * stride_pt + head * stride_ph + offs_d[None, :],
                   mask=split_mask[:, None] & (offs_d[None, :] < head_dim), other=0.0)  # [BLOCK_S, BLOCK_D]
    acc = tl.sum(weight[:, None] * part, 0)
    total = tl.sum(weight, 0)
    if HAS_SINKS:
        total += tl.exp2(sink - pivot)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    tl.store(O + token * stride_ot + head * stride_oh + offs_d, out.to(O.dtype.element_ty), mask=offs_d < head_dim)
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), (pivot + tl.log2(tl.where(empty, 1.0, total))) * LN2)
        batch = token // tokens_per_batch
        pos = token % tokens_per_batch
        tl.store(LSE + batch * stride_lb + pos * stride_lq + head * stride_lh, lse)


def combine_launch(
    out_partial: torch.Tensor,
    lse_partial: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    sinks: torch.Tensor | None,
    tokens_per_batch: int,
    seqused_q: torch.Tensor | None = None,
) -> Launch | None:
    """The merge of ``out_partial [S, T, H, D]`` (fp32) and ``lse_partial [S, T, H]`` into ``out [T, H, D]``,
    prepared from the tensors' shapes and strides (meta tensors will do); call it with ``(out_partial,
    lse_partial, out, lse or lse_partial, sinks or out, cu_seqlens_q or out, seqused_q or out)``. None when there
    is nothing to merge.

    ``lse`` is the caller's [B, H, Sq] (``tokens_per_batch = Sq``) or [H, total_q] (``tokens_per_batch = total_q``)
    tensor, or None. With ``seqused_q`` (varlen; the call passes it and ``cu_seqlens_q``) tokens past a sequence's
    used queries are not written.
    """
    num_splits, tokens, heads, head_dim = out_partial.shape
    if tokens == 0:
        return None
    lse_address = (0, 0, 0) if lse is None else lse_strides(lse, varlen=lse.dim() == 2)
    use_pdl = pdl_enabled(out.device)
    scalars = (
        out_partial.stride(0), out_partial.stride(1), out_partial.stride(2),
        lse_partial.stride(0), lse_partial.stride(1),
        out.stride(0), out.stride(1),
        *lse_address,
        tokens_per_batch, num_splits, head_dim, 0 if seqused_q is None else seqused_q.shape[0],
    )
    constexprs = dict(HAS_SINKS=sinks is not None, STORE_LSE=lse is not None,
                      BLOCK_S=max(2, next_power_of_2(num_splits)), BLOCK_D=next_power_of_2(head_dim), USE_PDL=use_pdl,
                      HAS_SEQUSED_Q=seqused_q is not None,
                      BLOCK_B=1 if seqused_q is None else next_power_of_2(max(seqused_q.shape[0], 1)))
    return Launch(_swa_combine_kernel, (tokens, heads), scalars, constexprs,
                  dict(num_warps=1, **pdl_launch_options(use_pdl)), num_tensors=7)

