"""Experiment (issue 22, session 8; not used by swattn): a full-attention decode over a paged e4m3 cache whose program
reads ALL the KV heads of a sequence's key block, one warp per KV head, through batched (3D) products.

Why (docs/notes/2026-12-03-fp8-kv-cache.md, sessions 5-8): swattn's e4m3 split loop gives each program one KV head
(or two: the default since session 8) and reads its 64-byte rows at a 512-byte stride; the read-only stream of that
pattern reached 63-69% of copy (one head), 74% / 90% (two heads, 64 / 128 keys), and the attention loop sits near
its stream. Here a key block is read as whole 512-byte token rows (a page of 16 tokens is one contiguous 8 KB), and
each KV head's scores, softmax and P @ V stay inside one warp (``tl.dot`` over ``[Hk, rows, ...]`` tiles: Triton
lays the batch dimension over the warps), so no cross-warp max / sum or P exchange per block (the 4-warp tile's 8-12
barriers per block).

``heads_decode(...)`` returns the output; the kernel writes each split's partial output and log-sum-exp, and
``swattn.flash_attn_combine`` merges them (the sinks enter split 0 as a key with value 0). Queries: fp16 / bf16 (bf16
rows scaled by a power of two into fp16, as ``fwd._rows_to_fp16``), q_descale not supported (fp8-kv only).
Timed by ``scripts/gpu_fp8_decode.py``'s ``heads=`` option; tested against the reference in tests/kernels/test_fp8.py
(interpreter) and tests/gpu/test_fp8_real_sizes.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import swattn

LOG2E = 1.4426950408889634


@triton.jit
def _heads_decode_kernel(
    Q, K, V, PAGE_TABLE, SEQLENS, K_DESCALE, V_DESCALE, SINKS, O_PART, LSE_PART,
    stride_qb, stride_qh, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh, stride_table,
    stride_kdb, stride_vdb, stride_os, stride_ob, stride_oh, stride_ls, stride_lb,
    num_splits, scale_log2,
    PAGE_SIZE: tl.constexpr, HK: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    split = tl.program_id(0)
    batch = tl.program_id(1)
    seqlen = tl.load(SEQLENS + batch)
    num_blocks = tl.cdiv(seqlen, BLOCK_N)
    per_split = tl.cdiv(num_blocks, num_splits)
    block_begin = tl.minimum(split * per_split, num_blocks)
    block_end = tl.minimum(block_begin + per_split, num_blocks)

    offs_h = tl.arange(0, HK)
    offs_r = tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    head3 = offs_h[:, None, None]
    row3 = offs_r[None, :, None]
    d3 = offs_d[None, None, :]
    row_valid = (offs_r < GROUP)[None, :]  # [1, ROWS]
    q_head = offs_h[:, None] * GROUP + offs_r[None, :]  # [HK, ROWS]: query head of each row
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + (head3 * GROUP + row3) * stride_qh + d3,
                mask=(row3 < GROUP), other=0.0).to(tl.float32)
    # Each row into fp16 by a power of two (its largest magnitude into [2^14, 2^15)); the scores are unscaled with
    # the softmax scale and the KV head's k_descale.
    amax = tl.max(tl.abs(q), 2)
    exponent = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    shift = tl.minimum(tl.maximum(14 - exponent, -112), 40)
    up = ((shift + 127) << 23).to(tl.float32, bitcast=True)
    down = ((127 - shift) << 23).to(tl.float32, bitcast=True)
    q16 = (q * up[:, :, None]).to(tl.float16)
    k_descale = tl.load(K_DESCALE + batch.to(tl.int64) * stride_kdb + offs_h)
    v_descale = tl.load(V_DESCALE + batch.to(tl.int64) * stride_vdb + offs_h)
    row_scale = down * k_descale[:, None] * scale_log2  # [HK, ROWS]: log2 units

    m_i = tl.full([HK, ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([HK, ROWS], tl.float32)
    if HAS_SINKS:
        if split == 0:  # the sink: a key of logit sinks[head] and value 0, counted once (split 0)
            m_i = tl.load(SINKS + q_head, mask=row_valid, other=0.0).to(tl.float32) * 1.4426950408889634
            l_i = tl.full([HK, ROWS], 1.0, tl.float32)
    acc = tl.zeros([HK, ROWS, D], tl.float32)
    table_row = PAGE_TABLE + batch.to(tl.int64) * stride_table
    for block in range(block_begin, block_end):
        first = block * BLOCK_N
        offs_n = first + tl.arange(0, BLOCK_N)
        key_valid = offs_n < seqlen
        # Blocks and pages are powers of two, one a multiple of the other: the page of each key and its slot come
        # from the block's first key and constants (no division per key).
        if BLOCK_N >= PAGE_SIZE:
            page_index = first // PAGE_SIZE + tl.arange(0, BLOCK_N) // PAGE_SIZE
            slot = (tl.arange(0, BLOCK_N) % PAGE_SIZE).to(tl.int64)
        else:
            page_index = first // PAGE_SIZE + tl.zeros([BLOCK_N], tl.int32)
            slot = (first % PAGE_SIZE + tl.arange(0, BLOCK_N)).to(tl.int64)
        page = tl.load(table_row + page_index, mask=key_valid, other=0).to(tl.int64)
        k_rows = (page * stride_kp + slot * stride_ks)[None, :, None]
        v_rows = (page * stride_vp + slot * stride_vs)[None, :, None]
        load_mask = key_valid[None, :, None]
        k = tl.load(K + k_rows + head3 * stride_kh + d3, mask=load_mask, other=0.0).to(tl.float16)
        s = tl.dot(q16, tl.permute(k, (0, 2, 1))) * row_scale[:, :, None]  # [HK, ROWS, BLOCK_N]
        s = tl.where(key_valid[None, None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 2))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, :, None])
        l_i = l_i * alpha + tl.sum(p, 2)
        v = tl.load(V + v_rows + head3 * stride_vh + d3, mask=load_mask, other=0.0).to(tl.float16)
        acc = acc * alpha[:, :, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, :, None] * v_descale[:, None, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)
    o_ptrs = (O_PART + split.to(tl.int64) * stride_os + batch.to(tl.int64) * stride_ob
              + (head3 * GROUP + row3) * stride_oh + d3)
    tl.store(o_ptrs, out, mask=row3 < GROUP)
    tl.store(LSE_PART + split.to(tl.int64) * stride_ls + batch.to(tl.int64) * stride_lb + q_head, lse,
             mask=row_valid)


def heads_decode_launch(q, k_cache, v_cache, page_table, cache_seqlens, k_descale, v_descale, sinks=None,
                        num_splits=1, block_n=32, num_warps=None, num_stages=2, maxnreg=None):
    """The decode ``q [B, 1, H, D]`` over the paged e4m3 ``k_cache`` / ``v_cache`` ``[pages, page, Hk, D]``
    (``page_table [B, pages]`` int32, ``cache_seqlens [B]`` int32, descales ``[B, Hk]`` float32, ``sinks [H]`` or
    None), causal full attention, as a closure that runs the kernel and the merge of its ``num_splits`` splits (one
    warp per KV head unless ``num_warps``). Buffers are allocated here, so the closure can be graph-captured."""
    batch, seqlen_q, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    if seqlen_q != 1 or heads % kv_heads or group > 16 or head_dim != triton.next_power_of_2(head_dim):
        raise ValueError(f"heads_decode: one query per sequence, <= 16 query heads per KV head and a power-of-two "
                         f"head_dim (got q {tuple(q.shape)}, Hk {kv_heads})")
    page_size = k_cache.shape[1]
    if page_size != triton.next_power_of_2(page_size) or block_n != triton.next_power_of_2(block_n):
        raise ValueError(f"heads_decode: a power-of-two page size and block_n (got {page_size}, {block_n})")
    if kv_heads != triton.next_power_of_2(kv_heads):
        raise ValueError(f"heads_decode: a power-of-two KV head count (got {kv_heads})")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: unit stride in head_dim needed")
    kd, vd = k_descale.float().contiguous(), v_descale.float().contiguous()
    if kd.stride(1) != 1 or vd.stride(1) != 1:
        kd, vd = kd.clone(), vd.clone()
    q3 = q.view(batch, heads, head_dim)
    o_part = torch.empty(num_splits, batch, 1, heads, head_dim, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(num_splits, batch, 1, heads, device=q.device, dtype=torch.float32)
    out = torch.empty(batch, 1, heads, head_dim, device=q.device, dtype=q.dtype)
    scale_log2 = head_dim ** -0.5 * LOG2E
    options = dict(num_warps=num_warps or kv_heads, num_stages=num_stages)
    if maxnreg:
        options["maxnreg"] = maxnreg
    grid = (num_splits, batch)
    sinks_arg = sinks if sinks is not None else kd

    def run():
        _heads_decode_kernel[grid](
            q3, k_cache, v_cache, page_table, cache_seqlens, kd, vd, sinks_arg, o_part, lse_part,
            q3.stride(0), q3.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0),
            kd.stride(0), vd.stride(0), o_part.stride(0), o_part.stride(1), o_part.stride(3),
            lse_part.stride(0), lse_part.stride(1), num_splits, scale_log2, PAGE_SIZE=k_cache.shape[1],
            HK=kv_heads, GROUP=group, ROWS=max(16, triton.next_power_of_2(group)), D=head_dim, BLOCK_N=block_n,
            HAS_SINKS=sinks is not None, **options)
        swattn.flash_attn_combine(o_part, lse_part, out=out)
        return out
    return run


def heads_decode(*args, **kwargs) -> torch.Tensor:
    """``heads_decode_launch(...)()``: the output ``[B, 1, H, D]`` in q's dtype."""
    return heads_decode_launch(*args, **kwargs)()


def wave_splits(batch: int, sms: int, programs_per_sm: int = 2) -> int:
    """Splits of one wave of programs (``programs_per_sm`` per SM), at most 64."""
    return max(1, min(64, sms * programs_per_sm // batch))


__all__ = ["heads_decode", "heads_decode_launch", "wave_splits"]
