"""A value head_dim Dv other than the key head_dim D (FlashAttention 3's ``headdim_v``) in bf16 at real sizes on a
GPU (skipped without one), against the reference computed in float32 on the GPU: DeepSeek-style prefill (D 192,
Dv 128: causal and a window, forward and backward), FlashAttention 3's D 64 / Dv 256 draw (forward and backward)
and its largest, Dv 512 over D 64, in a paged decode that appends a token and splits the KV loop. The CPU twin is
tests/kernels/test_value_head_dim.py (small shapes, the interpreter). Run with
``python -m pytest -q tests/gpu/test_value_head_dim_bf16.py`` (/work/gpu_queue/dv-tests.sh)."""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.reference import append_kv_ref, attention_kvcache_ref, attention_ref
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
OUT_TOL = tolerance_for(BF16)
GRAD_TOL = 3e-2
LSE_ATOL = 2e-3
REF = dict(compute_dtype=torch.float32)


def randn(*shape, dtype=BF16):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def check_lse(name, lse, ref_lse):
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), f"{name}: -inf at different rows"
    torch.testing.assert_close(lse[finite], ref_lse[finite].float(), atol=LSE_ATOL, rtol=1e-3)


@pytest.mark.parametrize("head_dim, head_dim_v, seqlen, heads, kv_heads, window, backward", [
    pytest.param(192, 128, 4096, 16, 16, (-1, 0), False, id="D192-Dv128-causal-4K"),
    pytest.param(192, 128, 4096, 16, 16, (1023, 0), False, id="D192-Dv128-W1023-4K"),
    # The same forward kernel as the 4K causal case (one compile), with its backward.
    pytest.param(192, 128, 1024, 16, 16, (-1, 0), True, id="D192-Dv128-causal-1K-backward"),
    pytest.param(64, 256, 1024, 16, 2, (255, 0), True, id="D64-Dv256-W255-1K-GQA8-backward"),
])
def test_prefill(head_dim, head_dim_v, seqlen, heads, kv_heads, window, backward):
    torch.manual_seed(0)
    q = randn(1, seqlen, heads, head_dim).requires_grad_(backward)
    k = randn(1, seqlen, kv_heads, head_dim).requires_grad_(backward)
    v = randn(1, seqlen, kv_heads, head_dim_v).requires_grad_(backward)
    out, lse = swattn.flash_attn_func(q, k, v, window_size=window, return_softmax_lse=True)
    assert out.shape == (1, seqlen, heads, head_dim_v) and out.dtype == BF16
    inputs = [t.detach().float().requires_grad_(backward) for t in (q, k, v)]
    ref, ref_lse = attention_ref(*inputs, window_size=window, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)
    if backward:
        dout = randn(*out.shape)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        ref_grads = torch.autograd.grad(ref, inputs, dout.float())
        for name, grad, ref_grad, shape in zip(("dq", "dk", "dv"), grads, ref_grads, (q.shape, k.shape, v.shape)):
            assert grad.shape == shape, name
            assert_close(name, grad, ref_grad, GRAD_TOL)


def test_paged_decode_dv512_with_append():
    """MLA-like decode shapes: 16 query heads over one KV head, D 64 keys, Dv 512 values in 16-token pages; one new
    token appended per sequence, then attention over up to 4K keys (automatic split-KV: 8 programs on the H200's
    132 SMs take several splits, and their merge)."""
    torch.manual_seed(1)
    batch, heads, page_size, pages_per_seq = 8, 16, 16, 256
    k_cache = randn(batch * pages_per_seq, page_size, 1, 64)
    v_cache = randn(batch * pages_per_seq, page_size, 1, 512)
    page_table = torch.randperm(batch * pages_per_seq, device=DEVICE, dtype=torch.int32).view(batch, -1)
    cache_seqlens = torch.randint(1, pages_per_seq * page_size - 1, (batch,), device=DEVICE, dtype=torch.int32)
    q, k_new, v_new = randn(batch, 1, heads, 64), randn(batch, 1, 1, 64), randn(batch, 1, 1, 512)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=cache_seqlens,
                                              page_table=page_table, causal=True, num_splits=0,
                                              return_softmax_lse=True)
    lengths = append_kv_ref(ref_k, ref_v, k_new, v_new, cache_seqlens, page_table=page_table)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    ref, ref_lse = attention_kvcache_ref(q.float(), ref_k.float(), ref_v.float(), lengths, page_table=page_table,
                                         causal=True, **REF)
    assert out.shape == (batch, 1, heads, 512)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)
