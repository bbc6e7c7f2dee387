"""FlashAttention 3's ``qv`` (MLA's second query term) in bf16 at real sizes on a GPU (skipped without one), against
the reference computed in float32 on the GPU: DeepSeek's absorbed MLA decode (128 query heads over one latent KV
head, D 64 of rotary keys, Dv 512 of latent values, a paged cache of 64-token pages, one new token appended,
automatic split-KV) and a 2K causal prefill of FA3's other qv shape (D 64, Dv 256), whose backward is refused by
name. The CPU twin is tests/kernels/test_qv.py (small shapes, the interpreter). Run with
``python -m pytest -q tests/gpu/test_qv_bf16.py`` (/work/gpu_queue/qv-tests.sh)."""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.reference import append_kv_ref, attention_kvcache_ref, attention_ref
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
OUT_TOL = tolerance_for(BF16)
LSE_ATOL = 2e-3
REF = dict(compute_dtype=torch.float32)


def randn(*shape, dtype=BF16):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def check_lse(name, lse, ref_lse):
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), f"{name}: -inf at different rows"
    torch.testing.assert_close(lse[finite], ref_lse[finite].float(), atol=LSE_ATOL, rtol=1e-3)


def test_mla_decode_paged_dv512_with_append():
    """8 sequences of up to 4K cached tokens in 64-token pages, 128 query heads on one KV head (PackGQA), the
    default softmax scale (D + Dv) ** -0.5, automatic splits and their merge."""
    torch.manual_seed(0)
    batch, heads, page_size, pages_per_seq = 8, 128, 64, 64
    k_cache = randn(batch * pages_per_seq, page_size, 1, 64)
    v_cache = randn(batch * pages_per_seq, page_size, 1, 512)
    page_table = torch.randperm(batch * pages_per_seq, device=DEVICE, dtype=torch.int32).view(batch, -1)
    cache_seqlens = torch.randint(1, pages_per_seq * page_size - 1, (batch,), device=DEVICE, dtype=torch.int32)
    q, qv = randn(batch, 1, heads, 64), randn(batch, 1, heads, 512)
    k_new, v_new = randn(batch, 1, 1, 64), randn(batch, 1, 1, 512)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, qv=qv, cache_seqlens=cache_seqlens,
                                              page_table=page_table, causal=True, num_splits=0,
                                              return_softmax_lse=True)
    lengths = append_kv_ref(ref_k, ref_v, k_new, v_new, cache_seqlens, page_table=page_table)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    ref, ref_lse = attention_kvcache_ref(q.float(), ref_k.float(), ref_v.float(), lengths, page_table=page_table,
                                         causal=True, qv=qv.float(), **REF)
    assert out.shape == (batch, 1, heads, 512) and out.dtype == BF16
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)


def test_prefill_2k_dv256_and_the_backward_refusal():
    """Causal 2K prefill, 16 query heads over 4 KV heads, D 64 / Dv 256 with qv; inputs that require grad are
    accepted, the backward raises naming qv (FlashAttention 3 has no qv backward)."""
    torch.manual_seed(1)
    seqlen, heads, kv_heads = 2048, 16, 4
    q, k = randn(1, seqlen, heads, 64).requires_grad_(), randn(1, seqlen, kv_heads, 64)
    v, qv = randn(1, seqlen, kv_heads, 256), randn(1, seqlen, heads, 256)
    out, lse = swattn.flash_attn_func(q, k, v, qv=qv, causal=True, return_softmax_lse=True)
    assert out.shape == (1, seqlen, heads, 256) and out.dtype == BF16
    ref, ref_lse = attention_ref(q.detach().float(), k.float(), v.float(), qv=qv.float(), causal=True, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)
    with pytest.raises(NotImplementedError, match=r"^qv: a backward through attention with qv"):
        out.float().sum().backward()
