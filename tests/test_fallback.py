"""The CPU path without the interpreter (CPU tensors, no ``TRITON_INTERPRET``: ``swattn.reference``) against the
kernels, call for call through the public API: the same outputs, the same LSE, the same empty rows (0 and LSE -inf,
or the sink with sinks), the same layouts. The kernels run under the interpreter on the CPU and compiled in the GPU
test mode. What neither path may read (non-finite values outside a row's window, page-table entries before it) is
tested on both in tests/kernels/test_nonfinite.py and test_kvcache.py (their ``fallback`` cases).
"""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.testing import assert_close

H, HK, D = 4, 2, 16


def i32(*values):
    return torch.tensor(values, dtype=torch.int32)


def dense(sinks):
    # Sq 6 > Sk 3, causal: the top three rows see nothing.
    q, k, v = torch.randn(2, 6, H, D), torch.randn(2, 3, HK, D), torch.randn(2, 3, HK, D)
    return swattn.flash_attn_func, dict(q=q, k=k, v=v, causal=True, sinks=sinks)


def dense_window(sinks):
    # Window (0, 1) with Sq 9 > Sk 4: rows 0..3 see nothing; softcap.
    q, k, v = torch.randn(1, 9, H, D), torch.randn(1, 4, HK, D), torch.randn(1, 4, HK, D)
    return swattn.flash_attn_func, dict(q=q, k=k, v=v, window_size=(0, 1), softcap=3.0, sinks=sinks)


def varlen(sinks):
    # Sequence 0: 3 queries and no key; sequence 1: no query; sequence 2: 4 queries, 4 of its 6 keys used.
    q, k, v = torch.randn(7, H, D), torch.randn(11, HK, D), torch.randn(11, HK, D)
    return swattn.flash_attn_varlen_func, dict(q=q, k=k, v=v, cu_seqlens_q=i32(0, 3, 3, 7),
                                               cu_seqlens_k=i32(0, 0, 5, 11), max_seqlen_q=4, max_seqlen_k=6,
                                               seqused_k=i32(0, 5, 4), window_size=(2, 0), sinks=sinks)


def paged(sinks):
    # An empty sequence (its rows see nothing) and one of 9 tokens (pages of 4); window (3, 0).
    k_cache, v_cache = torch.randn(6, 4, HK, D), torch.randn(6, 4, HK, D)
    return swattn.flash_attn_with_kvcache, dict(
        q=torch.randn(2, 2, H, D), k_cache=k_cache, v_cache=v_cache, cache_seqlens=i32(0, 9),
        page_table=i32([5, 0, 1], [2, 4, 3]), causal=True, window_size=(3, 0), sinks=sinks)


def paged_append(sinks):
    # The same, each sequence appending 2 tokens (so every row sees a key).
    fn, kwargs = paged(sinks)
    return fn, dict(kwargs, k=torch.randn(2, 2, HK, D), v=torch.randn(2, 2, HK, D))


def run(fn, kwargs, device):
    moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in kwargs.items()}
    out, lse = fn(**moved, return_softmax_lse=True)
    caches = [moved[name].cpu() for name in ("k_cache", "v_cache") if name in moved]
    return out.cpu(), lse.cpu(), caches


@pytest.mark.parametrize("with_sinks", [False, True], ids=["nosink", "sink"])
@pytest.mark.parametrize("case", [dense, dense_window, varlen, paged, paged_append])
def test_fallback_matches_the_kernels(monkeypatch, case, with_sinks):
    fn, kwargs = case(torch.randn(H, device="cpu") * 2 if with_sinks else None)
    kernel_device = torch.get_default_device()  # CPU (interpreter) or CUDA (tests/conftest.py)
    kernels = run(fn, {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in kwargs.items()}, kernel_device)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors now take the reference (read per call)
    fallback = run(fn, kwargs, "cpu")
    (out_k, lse_k, caches_k), (out_f, lse_f, caches_f) = kernels, fallback
    assert out_f.shape == out_k.shape and lse_f.shape == lse_k.shape and out_f.dtype == out_k.dtype
    assert out_f.is_contiguous() and lse_f.is_contiguous()
    assert_close("out", out_f, out_k, 1e-4)
    assert_close("lse", lse_f, lse_k, 1e-4)  # -inf (rows that see nothing) exactly where the kernels have it
    if not with_sinks:
        empty = torch.isinf(lse_k)  # [B, H, Sq] or [H, total]
        assert empty.any() or case is paged_append, "the case must hold rows that see nothing"
        rows = out_f.movedim(-2, 0) if out_f.dim() == 3 else out_f.permute(0, 2, 1, 3)  # the LSE's layout + D
        assert (rows[empty] == 0).all(), "rows that see nothing must give 0"
    for cache_f, cache_k in zip(caches_f, caches_k):
        assert torch.equal(cache_f, cache_k), "the appended cache differs"


def paged_append_fp8_rotary():
    # fp16 tokens rotated and quantized into an e4m3 cache; queries rotated too (the reference's index tensors).
    k_cache = (torch.randn(6, 4, HK, D) * 2).to(torch.float8_e4m3fn)
    v_cache = (torch.randn(6, 4, HK, D) * 2).to(torch.float8_e4m3fn)
    angles = torch.rand(16, D // 2)
    return swattn.flash_attn_with_kvcache, dict(
        q=torch.randn(2, 2, H, D, dtype=torch.float16), k_cache=k_cache, v_cache=v_cache, cache_seqlens=i32(1, 9),
        k=torch.randn(2, 2, HK, D, dtype=torch.float16), v=torch.randn(2, 2, HK, D, dtype=torch.float16),
        page_table=i32([5, 0, 1], [2, 4, 3]), k_descale=torch.rand(2, HK) + 0.5, v_descale=torch.rand(2, HK) + 0.5,
        rotary_cos=angles.cos(), rotary_sin=angles.sin(), causal=True, window_size=(3, 0))


def varlen_append_rotary():
    # Varlen queries and new tokens (cu_seqlens_q), non-interleaved rotary, a contiguous cache.
    return swattn.flash_attn_with_kvcache, dict(
        q=torch.randn(5, H, D), k_cache=torch.randn(2, 12, HK, D), v_cache=torch.randn(2, 12, HK, D),
        k=torch.randn(5, HK, D), v=torch.randn(5, HK, D), cache_seqlens=i32(3, 6), cu_seqlens_q=i32(0, 2, 5),
        max_seqlen_q=3, rotary_cos=torch.rand(12, D // 2), rotary_sin=torch.rand(12, D // 2),
        rotary_interleaved=False, causal=True)


@pytest.mark.parametrize("case", [paged_append_fp8_rotary, varlen_append_rotary, varlen])
def test_fallback_ignores_the_default_device(monkeypatch, case):
    """The reference builds every tensor on its inputs' device: with another default device active (the GPU suite
    sets ``torch.set_default_device("cuda")``; here "meta", which fails any mix) the CPU path gives the same."""
    fn, kwargs = case() if case is not varlen else case(None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    expected = run(fn, {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in kwargs.items()}, "cpu")
    default = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        got = run(fn, kwargs, "cpu")
    finally:
        torch.set_default_device(default)
    for a, b in zip(got[:2] + tuple(got[2]), expected[:2] + tuple(expected[2])):
        assert a.device.type == "cpu" and torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                                                      b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
