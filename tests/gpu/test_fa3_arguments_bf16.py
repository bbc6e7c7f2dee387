"""bf16 at real sizes on a GPU (skipped without one): FlashAttention 3's arguments added for issue 19 —
``seqused_q``, ``attention_chunk`` (forward, backward, KV cache), ``cache_batch_idx`` with ``page_table``,
``cu_seqlens_k_new``, ``cache_leftpad``, rotary — against the float32 reference on the GPU, with NaN in what must not
be read; and ``flash_attn_combine``. The CPU twins are tests/kernels/test_fa3_arguments.py and test_combine.py.
Run with ``python -m pytest -q tests/gpu``.
"""

from __future__ import annotations

import math

import pytest
import torch

import swattn
from swattn.reference import (
    append_kv_ref,
    attention_kvcache_ref,
    attention_ref,
    attention_varlen_ref,
    combine_ref,
    rotate_queries_ref,
)
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
OUT_TOL = tolerance_for(BF16)
GRAD_TOL = 3e-2
REF = dict(compute_dtype=torch.float32)


def randn(*shape, dtype=BF16):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def cumulative(lengths):
    return i32([0] + torch.tensor(lengths).cumsum(0).tolist())


def used_rows(cu_q, seqused):
    used = torch.zeros(int(cu_q[-1]), dtype=torch.bool, device=DEVICE)
    for b, n in enumerate(seqused):
        used[int(cu_q[b]):int(cu_q[b]) + n] = True
    return used


@pytest.mark.parametrize("num_splits", [1, 3])
def test_seqused_q_prefill(num_splits):
    q_lens, k_lens, seqused = [2048, 1000, 0, 3000], [2048, 1500, 7, 3000], [1500, 1000, 0, 17]
    cu_q, cu_k = cumulative(q_lens), cumulative(k_lens)
    used = used_rows(cu_q, seqused)
    q = randn(sum(q_lens), 64, 64)
    q[~used] = float("nan")
    k, v = randn(sum(k_lens), 8, 64), randn(sum(k_lens), 8, 64)
    sinks = torch.randn(64, device=DEVICE)
    kwargs = dict(causal=True, window_size=(127, 0), sinks=sinks)
    out = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), seqused_q=i32(seqused),
                                        num_splits=num_splits, **kwargs)
    ref = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_q=i32(seqused), **kwargs, **REF)[0]
    assert_close("out", out[used], ref[used], OUT_TOL)


@pytest.mark.parametrize("window_size, chunk", [((-1, 0), 1024), ((127, 0), 8192), ((-1, 0), 8192), ((255, 0), 200)])
def test_attention_chunk_prefill(window_size, chunk):
    """Llama 4's chunked local attention (chunk 8192, 40/8 heads in the model; 16/8 here to keep the reference's
    score matrix small) with Sq = 9000: a chunk boundary inside the sequence."""
    q, k, v = randn(1, 9000, 16, 128), randn(1, 9000, 8, 128), randn(1, 9000, 8, 128)
    out = swattn.flash_attn_func(q, k, v, causal=True, window_size=window_size, attention_chunk=chunk)
    ref = attention_ref(q, k, v, causal=True, window_size=window_size, attention_chunk=chunk, **REF)[0]
    assert_close("out", out, ref, OUT_TOL)


@pytest.mark.parametrize("chunk", [512, 1000])
def test_attention_chunk_backward(chunk):
    q, k, v = (randn(1, 3000, 16, 128).requires_grad_() for _ in range(3))
    dout = randn(1, 3000, 16, 128)
    out = swattn.flash_attn_func(q, k, v, causal=True, attention_chunk=chunk)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = attention_ref(q32, k32, v32, causal=True, attention_chunk=chunk, compute_dtype=torch.float32)[0]
    expected = torch.autograd.grad(ref, (q32, k32, v32), dout.float())
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected):
        assert_close(name, got, want, GRAD_TOL)


def paged_pool(rows, pages_per_row, page_size, kv_heads=8, head_dim=64):
    pool = rows * pages_per_row + 8
    k, v = randn(pool, page_size, kv_heads, head_dim), randn(pool, page_size, kv_heads, head_dim)
    table = torch.randperm(pool, device=DEVICE)[:rows * pages_per_row].view(rows, pages_per_row).to(torch.int32)
    return k, v, table


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("chunk", [0, 1024])
def test_paged_batch_idx_varlen_new_tokens_chunk(page_size, chunk):
    """FA3's combination: varlen queries (spec decode / extend) against a paged cache whose page table has one row
    per cache entry, cache_batch_idx picking the rows, new k/v in their own varlen layout, sinks, window."""
    batch, capacity = 16, 4096
    k_cache, v_cache, table = paged_pool(2 * batch, capacity // page_size, page_size)
    batch_idx = torch.randperm(2 * batch, device=DEVICE)[:batch].to(torch.int32)
    seqlens = torch.randint(0, capacity - 8, (batch,), device=DEVICE, dtype=torch.int32)
    q_lens = torch.randint(1, 5, (batch,)).tolist()
    new_lens = torch.randint(1, 5, (batch,)).tolist()
    cu_q, cu_new = cumulative(q_lens), cumulative(new_lens)
    q = randn(sum(q_lens), 64, 64)
    k_new, v_new = randn(sum(new_lens), 8, 64), randn(sum(new_lens), 8, 64)
    sinks = torch.randn(64, device=DEVICE)
    reference_cache = (k_cache.clone(), v_cache.clone())
    kwargs = dict(causal=True, window_size=(127, 0), sinks=sinks, attention_chunk=chunk)
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                         cache_batch_idx=batch_idx, page_table=table, cu_seqlens_q=cu_q,
                                         max_seqlen_q=max(q_lens), cu_seqlens_k_new=cu_new, **kwargs)
    lengths = append_kv_ref(*reference_cache, k_new, v_new, seqlens, cache_batch_idx=batch_idx, page_table=table,
                            cu_seqlens_k_new=cu_new)
    assert torch.equal(k_cache, reference_cache[0]) and torch.equal(v_cache, reference_cache[1])
    ref = attention_kvcache_ref(q, *reference_cache, lengths, cache_batch_idx=batch_idx, page_table=table,
                                cu_seqlens_q=cu_q, **kwargs, **REF)[0]
    assert_close("out", out, ref, OUT_TOL)


@pytest.mark.parametrize("page_size", [None, 16])
def test_cache_leftpad_decode(page_size):
    batch, capacity = 8, 2048
    if page_size is None:
        k_cache, v_cache, table = randn(batch, capacity, 8, 64), randn(batch, capacity, 8, 64), None
    else:
        k_cache, v_cache, table = paged_pool(batch, capacity // page_size, page_size)
    seqlens = torch.randint(200, capacity - 1, (batch,), device=DEVICE, dtype=torch.int32)
    leftpad = (seqlens.float() * torch.rand(batch, device=DEVICE)).to(torch.int32)
    q, k_new, v_new = randn(batch, 1, 64, 64), randn(batch, 1, 8, 64), randn(batch, 1, 8, 64)
    reference_cache = (k_cache.clone(), v_cache.clone())
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                         cache_leftpad=leftpad, page_table=table, causal=True, window_size=(127, 0))
    lengths = append_kv_ref(*reference_cache, k_new, v_new, seqlens, page_table=table)
    ref = attention_kvcache_ref(q, *reference_cache, lengths, page_table=table, cache_leftpad=leftpad,
                                causal=True, window_size=(127, 0), **REF)[0]
    assert_close("out", out, ref, OUT_TOL)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("seqlen_q", [1, 4])
def test_rotary_decode(interleaved, seqlen_q):
    batch, capacity, page_size = 16, 4096, 16
    k_cache, v_cache, table = paged_pool(batch, capacity // page_size, page_size, head_dim=128)
    seqlens = torch.randint(0, capacity - seqlen_q, (batch,), device=DEVICE, dtype=torch.int32)
    angle = torch.rand(capacity, 64, device=DEVICE) * 2 * math.pi
    cos, sin = torch.cos(angle).to(BF16), torch.sin(angle).to(BF16)
    q = randn(batch, seqlen_q, 32, 128)
    k_new, v_new = randn(batch, seqlen_q, 8, 128), randn(batch, seqlen_q, 8, 128)
    reference_cache = (k_cache.clone(), v_cache.clone())
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                         page_table=table, rotary_cos=cos, rotary_sin=sin,
                                         rotary_interleaved=interleaved, causal=True, window_size=(1023, 0))
    lengths = append_kv_ref(*reference_cache, k_new, v_new, seqlens, page_table=table, rotary_cos=cos,
                            rotary_sin=sin, rotary_interleaved=interleaved)
    assert_close("k_cache", k_cache, reference_cache[0], OUT_TOL)
    q_rot = rotate_queries_ref(q, cos, sin, seqlens, True, interleaved)
    ref = attention_kvcache_ref(q_rot, *reference_cache, lengths, page_table=table, causal=True,
                                window_size=(1023, 0), **REF)[0]
    assert_close("out", out, ref, OUT_TOL)


@pytest.mark.parametrize("num_splits, seqlen, head_dim, out_dtype", [
    (133, 113, 512, BF16), (97, 1024, 64, torch.float32), (3, 640, 192, torch.float16), (1, 3, 128, BF16),
])
def test_combine_fa3_sizes(num_splits, seqlen, head_dim, out_dtype):
    """``flash_attn_combine`` at FlashAttention 3's test sizes (B=5, H=16, its largest split count and head_dim, not
    both with its longest seqlen: the float64 reference needs 9 GB there; its strided partials; splits from
    num_splits // 2 on empty for the first batch entries) against the float64 reference, with FA3's criteria: LSE
    within 1e-5, out within twice the error of the reference rounded to out's dtype (or 1e-5)."""
    batch, heads = 5, 16
    out_partial = torch.randn(num_splits * 2, batch, heads, seqlen, head_dim, device=DEVICE).transpose(2, 3)
    out_partial = out_partial[:num_splits]
    lse_partial = torch.randn(num_splits, batch, heads * 2, seqlen, device=DEVICE).transpose(-1, -2)[..., :heads]
    lse_partial[num_splits // 2:, :batch // 3] = -math.inf
    out, lse = swattn.flash_attn_combine(out_partial, lse_partial, out_dtype=out_dtype)
    expected_out, expected_lse = combine_ref(out_partial, lse_partial)
    assert torch.allclose(lse.double(), expected_lse, atol=1e-5, rtol=1e-5)
    rounding = (expected_out.to(out_dtype).double() - expected_out).abs().max().item()
    assert (out.double() - expected_out).abs().max().item() <= max(2 * rounding, 1e-5)
