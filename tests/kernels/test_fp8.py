"""fp8 (e4m3) inputs with FlashAttention 3's API: fp16/bf16 queries over an e4m3 KV cache (``k_descale`` /
``v_descale`` ``[B, Hk]``), new bf16 tokens quantized into it in the same call, and q/k/v all in e4m3
(``q_descale`` too; the output is bf16). Every case against ``swattn.reference`` on the same e4m3 values
(dequantized exactly, then float64), so the tolerance is the compute dtype's (P and the output are rounded to
bf16/fp16 as without fp8), not fp8's: docs/performance.md ("fp8 KV cache") says why.

The Triton interpreter runs these kernels (it loads and widens e4m3 exactly; its fp32 -> e4m3 conversion does not
round to nearest even, which is why the kernels round in fp32 first: ``test_quantize_e4m3_rounds_like_torch``).
Shapes are small: H = 8 query heads over Hk = 2 KV heads, D = 32.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import swattn
from swattn.kernels.append import quantize_e4m3
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.reference import (
    append_kv_ref,
    attention_kvcache_ref,
    attention_ref,
    attention_varlen_ref,
    dequantize,
    rotate_queries_ref,
)
from swattn.testing import assert_close, tolerance_for

H, HK, D = 8, 2, 32
FP8 = torch.float8_e4m3fn
LSE_TOL = 1e-4


def i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def e4m3(*shape, scale: float = 2.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(FP8)


def descale(batch: int) -> torch.Tensor:
    return torch.rand(batch, HK) + 0.25


SMALL_CACHE_PAGES, SMALL_CACHE_PAGE_SIZE = 40, 16
SMALL_CACHE_KEYS = SMALL_CACHE_PAGES * SMALL_CACHE_PAGE_SIZE


def small_paged_e4m3_cache(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(k_cache, v_cache, page_table, cache_seqlens, q): 40 e4m3 pages of 16 keys in random order holding one
    sequence of 601 keys, and its one query of ``dtype`` (the pair tests' interpreter-sized decode)."""
    k_cache = e4m3(SMALL_CACHE_PAGES, SMALL_CACHE_PAGE_SIZE, HK, D)
    v_cache = e4m3(SMALL_CACHE_PAGES, SMALL_CACHE_PAGE_SIZE, HK, D)
    table = torch.randperm(SMALL_CACHE_PAGES).view(1, SMALL_CACHE_PAGES).to(torch.int32)
    return k_cache, v_cache, table, i32(601), torch.randn(1, 1, H, D, dtype=dtype)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@triton.jit
def _quantize_kernel(X, OUT, DESCALE, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(OUT + offs, quantize_e4m3(tl.load(X + offs), tl.load(DESCALE)))


def test_quantize_e4m3_rounds_like_torch():
    """The append kernel's quantization is bit-exact with ``(x / descale).clamp(-448, 448).to(float8_e4m3fn)``:
    every e4m3 value, every midpoint between neighbours (ties to even), -0.0 and negatives that round to it,
    subnormals, saturation, infinities and NaN (either sign)."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    values = values[torch.isfinite(values)].sort().values
    midpoints = (values[1:] + values[:-1]) / 2
    x = torch.cat([values, midpoints, -midpoints, torch.tensor([1000.0, -600.0, 449.0, 1e-9, -1e-9, -0.0, -1e-3]),
                   torch.tensor([float("inf"), -float("inf"), 1e-40, -1e-40]),
                   torch.randn(500) * torch.exp(torch.randn(500) * 4)])
    n = 1 << x.numel().bit_length()
    x = torch.cat([x, torch.full((n - x.numel() - 2,), -0.0), torch.tensor([float("nan"), -float("nan")])])
    for scale in (1.0, 0.37, 3.0):
        out = torch.empty(n, dtype=FP8)
        _quantize_kernel[(1,)](x, out, torch.tensor([scale]), n)
        expected = (x / scale).clamp(-448, 448).to(FP8)
        differ = out.view(torch.uint8) != expected.view(torch.uint8)
        assert not differ.any(), (scale, [(x[i].item(), out[i].view(torch.uint8).item(),
                                           expected[i].view(torch.uint8).item()) for i in differ.nonzero()[:8, 0]])


def test_reference_dequantizes_exactly():
    """The reference's fp8 path is the float64 attention of value * descale (per sequence and KV head; q's descale
    per KV head of its query head), with a bf16 output for fp8 q."""
    q, k, v = e4m3(2, 5, H, D), e4m3(2, 9, HK, D), e4m3(2, 9, HK, D)
    qd, kd, vd = descale(2), descale(2), descale(2)
    out, lse = attention_ref(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, causal=True)
    q64 = q.double() * qd.double().repeat_interleave(H // HK, 1)[:, None, :, None]
    out64, lse64 = attention_ref(q64, k.double() * kd.double()[:, None, :, None],
                                 v.double() * vd.double()[:, None, :, None], causal=True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, out64.to(torch.bfloat16)) and torch.equal(lse, lse64)
    assert torch.equal(dequantize(k, None), k.double())


# ----------------------------------------------------------------------------------------------------------------
# bf16 / fp16 queries over an e4m3 cache


@pytest.mark.parametrize("num_splits,window,pack_gqa", [
    pytest.param(1, (127, 0), True, id="W127_0-packed"),
    pytest.param(3, (-1, -1), True, id="full-3splits-packed"),
    pytest.param(1, (20, 0), False, id="W20_0-unpacked"),
])
def test_decode_paged_fp8_kv_appends_quantized(num_splits, window, pack_gqa):
    """Paged decode / verify (2 new tokens per sequence, bf16) with sinks: the new tokens land in the e4m3 cache
    quantized with the sequence's descales (bit-exact with the reference's quantization) and the attention over
    the cache matches the reference; lengths straddle pages, one sequence holds only its new tokens."""
    batch, page_size, pages = 3, 16, 6
    k_cache, v_cache = e4m3(batch * pages + 2, page_size, HK, D), e4m3(batch * pages + 2, page_size, HK, D)
    table = torch.randperm(batch * pages + 2)[:batch * pages].view(batch, pages).to(torch.int32)
    lens = i32(40, 77, 0)
    q = torch.randn(batch, 2, H, D, dtype=torch.bfloat16)
    k_new = torch.randn(batch, 2, HK, D, dtype=torch.bfloat16) * 3
    v_new = torch.randn(batch, 2, HK, D, dtype=torch.bfloat16) * 3
    kd, vd, sinks = descale(batch), descale(batch), torch.randn(H)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens, page_table=table, k_descale=kd, v_descale=vd,
        causal=True, window_size=window, sinks=sinks, num_splits=num_splits, pack_gqa=pack_gqa,
        return_softmax_lse=True)
    seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens, page_table=table, k_descale=kd, v_descale=vd)
    assert same_bytes(k_cache, expected_k) and same_bytes(v_cache, expected_v)
    ref_out, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, seqlens, page_table=table, k_descale=kd,
                                             v_descale=vd, causal=True, window_size=window, sinks=sinks)
    assert out.dtype == torch.bfloat16
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


@pytest.mark.parametrize("fp8,tokens", [("kv", 1), ("kv", 3), ("qkv", 1)],
                         ids=["fp8-kv-decode", "fp8-kv-verify3", "all-fp8-decode"])
def test_window_decode_over_fp8_takes_the_l2_preload(monkeypatch, fp8, tokens):
    """``fwd.PRELOAD_L2`` (L2 prefetches of a tile's first reads before the PDL wait: query rows, length,
    page-table entries, first K/V rows, here in their e4m3 bytes, and the descales) is taken by the paged PackGQA
    window decode / verify over an e4m3 cache as over bf16 (one split, single loop); on a GPU as prefetches, under
    the interpreter as plain loads of the same addresses. The output is bit-identical with and without it and
    matches the reference."""
    from swattn.kernels import fwd
    batch, page_size, head_dim = 3, 16, 64
    pages = 10
    k_cache = e4m3(batch * pages, page_size, HK, head_dim)
    v_cache = e4m3(batch * pages, page_size, HK, head_dim)
    table = torch.randperm(batch * pages).view(batch, pages).to(torch.int32)
    lens = i32(40, 150, 1)  # the second sequence's window starts past its first page
    q = torch.randn(batch, tokens, H, head_dim, dtype=torch.bfloat16)
    descales = dict(k_descale=descale(batch), v_descale=descale(batch))
    if fp8 == "qkv":
        q = q.to(FP8)
        descales["q_descale"] = descale(batch)
    sinks = torch.randn(H)
    outs = []
    for preload in (0, 2):
        monkeypatch.setattr(fwd, "PRELOAD_L2", preload)
        fwd._PLANS.clear()
        # The window decode's single loop (the interpreter's default config is the three-loop one), in 64-key blocks.
        with forced_config(FwdConfig(16, 64, 4, 1, single_loop=True)):
            outs.append(swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, page_table=table,
                                                       causal=True, window_size=(127, 0), sinks=sinks,
                                                       pack_gqa=True, **descales))
        taken = [plan.preload_l2 for plan in fwd.plans() if plan.fp8]
        # On a GPU the preload needs PDL (Hopper; SWATTN_PDL=0 turns both off).
        with_pdl = not q.is_cuda or fwd.pdl_enabled(q.device)
        assert taken == [preload if with_pdl else 0], taken
    assert torch.equal(outs[0], outs[1])
    ref, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, page_table=table, causal=True, window_size=(127, 0),
                                   sinks=sinks, **descales)
    assert_close("out", outs[1], ref, tolerance_for(torch.bfloat16))


@pytest.mark.parametrize("mode,fp8,window,num_splits,config", [
    (1, "kv", (-1, -1), 3, FwdConfig(16, 64, 4, 2)),
    (2, "kv", (-1, -1), 3, FwdConfig(16, 64, 4, 2)),
    (1, "kv", (127, 0), 1, FwdConfig(16, 64, 4, 2, single_loop=True)),
    (1, "qkv", (-1, -1), 3, FwdConfig(16, 64, 4, 2)),
], ids=["fp8-kv-full-3splits", "values-only-fp8-kv-full-3splits", "fp8-kv-W127_0", "all-fp8-full-3splits"])
def test_fenced_widening(monkeypatch, mode, fp8, window, num_splits, config):
    """``fwd.FP8_FENCED_WIDENING`` (the widened e4m3 tiles, K and V or V only, through an identity with a side
    effect, so the products take 16-bit operand layouts): the plan takes it on a GPU (inline PTX), not under the
    interpreter (a plain ``.to``); split loop and single loop, e4m3 cache and all-e4m3, against the reference."""
    from swattn.kernels import fwd
    monkeypatch.setattr(fwd, "FP8_FENCED_WIDENING", mode)
    batch, page_size, pages, head_dim = 3, 16, 12, 64
    k_cache = e4m3(batch * pages, page_size, HK, head_dim)
    v_cache = e4m3(batch * pages, page_size, HK, head_dim)
    table = torch.randperm(batch * pages).view(batch, pages).to(torch.int32)
    lens = i32(150, 7, 191)
    q = torch.randn(batch, 1, H, head_dim, dtype=torch.bfloat16)
    descales = dict(k_descale=descale(batch), v_descale=descale(batch))
    if fp8 == "qkv":
        q = q.to(FP8)
        descales["q_descale"] = descale(batch)
    sinks = torch.randn(H)
    fwd._PLANS.clear()
    with forced_config(config):
        out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, page_table=table,
                                                  causal=True, window_size=window, sinks=sinks, pack_gqa=True,
                                                  num_splits=num_splits, return_softmax_lse=True, **descales)
    widen = [plan.main.constexprs["WIDEN"] for plan in fwd.plans() if plan.fp8]
    assert widen == [fwd._FENCED_MODES[mode] if q.is_cuda else fwd.WIDEN_TO.value], widen
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, page_table=table, causal=True,
                                             window_size=window, sinks=sinks, **descales)
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def test_extend_contiguous_fp8_kv_varlen_fp16():
    """fp16 queries, varlen extend (cu_seqlens_q) over a contiguous e4m3 cache addressed through cache_batch_idx,
    window (5, 2) with softcap, no new tokens; descales given as one value per tensor (a stride-0 expand)."""
    k_cache, v_cache = e4m3(5, 48, HK, D), e4m3(5, 48, HK, D)
    cu = i32(0, 3, 4, 9)
    q = torch.randn(9, H, D, dtype=torch.float16)
    lens, rows = i32(30, 7, 48), i32(4, 0, 2)
    kd, vd = torch.tensor(0.7).expand(3, HK), torch.tensor(1.3).expand(3, HK)
    out, lse = swattn.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=lens, cache_batch_idx=rows, cu_seqlens_q=cu, max_seqlen_q=5,
        k_descale=kd, v_descale=vd, window_size=(5, 2), softcap=4.0, return_softmax_lse=True)
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, cache_batch_idx=rows, cu_seqlens_q=cu,
                                             k_descale=kd, v_descale=vd, window_size=(5, 2), softcap=4.0)
    assert out.dtype == torch.float16
    assert_close("out", out, ref_out, tolerance_for(torch.float16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def test_bf16_queries_of_any_magnitude_over_fp8_kv():
    """bf16 queries run in fp16 over the widened e4m3 cache, each row scaled by its own power of two: rows far
    outside fp16's range (1e-30, 1e6; fp16 ends at 65504) give the reference's attention, with softcap too, and an
    infinite query element makes NaN of its own row only, as in the reference (PackGQA: one tile holds every query
    head of a KV head)."""
    k_cache, v_cache = e4m3(2, 32, HK, D), e4m3(2, 32, HK, D)
    magnitudes = torch.tensor([1e-30, 1e-4, 1.0, 3.0, 300.0, 7e4, 1e6, 1e-8])
    q = (torch.randn(2, 1, H, D) * magnitudes[None, None, :, None]).to(torch.bfloat16)
    q[1, 0, 3, 5] = float("inf")
    lens, kd, vd = i32(20, 32), descale(2), descale(2)
    for softcap in (0.0, 30.0):
        out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, k_descale=kd,
                                                  v_descale=vd, softcap=softcap, pack_gqa=True,
                                                  return_softmax_lse=True)
        ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd,
                                                 softcap=softcap)
        assert torch.equal(out.isnan(), ref_out.isnan())  # the infinite query's row only (softcap: none)
        assert out.isnan().sum() == (0 if softcap else D)
        assert_close("out", out.nan_to_num(), ref_out.nan_to_num(), tolerance_for(torch.bfloat16))
        finite = torch.isfinite(ref_lse)
        assert_close("lse", lse[finite], ref_lse[finite], LSE_TOL)


@pytest.mark.parametrize("mode,dtype,paged,num_splits", [
    pytest.param(1, torch.bfloat16, True, 3, id="products-bf16-paged-3splits"),
    pytest.param(1, torch.float16, False, 1, id="products-fp16-contiguous"),
    pytest.param(2, torch.bfloat16, True, 3, id="interleaved-bf16-paged-3splits"),
    pytest.param(3, torch.bfloat16, True, 3, id="two-loads-bf16-paged-3splits"),
    pytest.param(4, torch.bfloat16, True, 3, id="transposed-bf16-paged-3splits"),
    pytest.param(4, torch.float16, False, 1, id="transposed-fp16-contiguous"),
])
def test_two_kv_heads_per_program(monkeypatch, mode, dtype, paged, num_splits):
    """``fwd.FP8_TWO_KV_HEADS``: a decode program reads two KV heads' adjacent rows at once and gives each query
    head its own KV head's attention and descales (distinct per head), with sinks and softcap; on the GPU a NaN key
    or (modes 1, 3 and 4: one product per head) value of one KV head makes NaN of that head's rows only, as in
    the reference (the other head's rows share the loaded tile but not its products; mode 2's interleaved P @ V lets
    a NaN value reach both heads' rows, 0 x NaN, so it gets only the NaN key). Mode 4 (PAIR_TRANSPOSED) runs mode
    3's loads through the transposed loop."""
    from swattn.kernels import fwd
    monkeypatch.setattr(fwd, "FP8_TWO_KV_HEADS", mode)
    batch, page_size = 3, 8
    if paged:
        k_cache, v_cache = e4m3(batch * 5, page_size, HK, D), e4m3(batch * 5, page_size, HK, D)
        table = torch.randperm(batch * 5).view(batch, 5).to(torch.int32)
        cache = dict(page_table=table)
    else:
        k_cache, v_cache = e4m3(batch, 40, HK, D), e4m3(batch, 40, HK, D)
        table, cache = None, dict(cache_batch_idx=i32(2, 0, 1))
    lens = i32(33, 7, 40)
    q = torch.randn(batch, 1, H, D, dtype=dtype)
    kd, vd, sinks = descale(batch), descale(batch), torch.randn(H)
    # e4m3's NaN (its one non-finite value) on the GPU only: the interpreter widens it to a finite value.
    non_finite = k_cache.is_cuda
    if non_finite:
        first = table[1, 0] if paged else 0
        k_cache[first, 2, 0, 3] = float("nan")  # sequence 1, key 2, KV head 0: its query heads' rows are NaN
        if mode in (1, 3, 4):
            v_cache[first, 4, 1, 0] = float("nan")  # sequence 1, key 4, KV head 1: NaN in its heads' first column
    fwd._PLANS.clear()
    # The split loop (the pairs' loop): on a GPU these few keys would take the single loop of short splits.
    with forced_config(FwdConfig(16, 16, 2, 2)):
        out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, k_descale=kd,
                                                  v_descale=vd, causal=True, sinks=sinks, softcap=20.0,
                                                  num_splits=num_splits, pack_gqa=True, return_softmax_lse=True,
                                                  **cache)
    assert any(plan.kv_pair == mode for plan in fwd.plans())
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                             sinks=sinks, softcap=20.0, **cache)
    assert torch.equal(out.isnan(), ref_out.isnan())
    assert out[1, 0, :H // HK].isnan().all() == non_finite and not out[[0, 2]].isnan().any()
    assert out[1, 0, H // HK:].isnan().any() == (non_finite and mode in (1, 3, 4))
    assert_close("out", out.nan_to_num(), ref_out.nan_to_num(), tolerance_for(dtype))
    finite = torch.isfinite(ref_lse)
    assert torch.equal(lse.isfinite(), finite)
    assert_close("lse", lse[finite], ref_lse[finite], LSE_TOL)


def test_transposed_pairs_with_three_query_heads_per_kv_head(monkeypatch):
    """PAIR_TRANSPOSED (``fwd.FP8_TWO_KV_HEADS`` 4) with 3 query heads per KV head: the two heads'
    6 rows fill 6 of the tile's 16 (each row's head is a compile-time pattern of its index; here not whole 8-column
    tiles), 4 KV heads (two pairs), descales per KV head, lengths that leave a split's last block part-empty,
    against the reference."""
    from swattn.kernels import fwd
    mode = fwd.PAIR_TRANSPOSED.value
    monkeypatch.setattr(fwd, "FP8_TWO_KV_HEADS", mode)
    heads, kv_heads, batch, page_size = 12, 4, 2, 8
    k_cache, v_cache = e4m3(batch * 4, page_size, kv_heads, D), e4m3(batch * 4, page_size, kv_heads, D)
    table = torch.randperm(batch * 4).view(batch, 4).to(torch.int32)
    lens = i32(29, 11)
    q = torch.randn(batch, 1, heads, D, dtype=torch.bfloat16)
    kd, vd = torch.rand(batch, kv_heads) + 0.25, torch.rand(batch, kv_heads) + 0.25
    fwd._PLANS.clear()
    with forced_config(FwdConfig(16, 16, 2, 2)):
        out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, k_descale=kd, v_descale=vd,
                                             causal=True, num_splits=2, pack_gqa=True, page_table=table)
    assert any(plan.kv_pair == mode for plan in fwd.plans())
    ref_out, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                       page_table=table)
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))


@pytest.mark.parametrize("mode", [1, 2], ids=["twin", "chunk"])
def test_prefetch_partner_changes_no_bits(monkeypatch, mode):
    """``fwd.FP8_PREFETCH_PARTNER`` (the split loop's L2 prefetch beyond its own e4m3 rows: each row's twin, the
    other KV head's 64 bytes of its 128-byte line; or a chunk of each page of the block): a hint, so the output is
    bit-identical with and without it; on a GPU the plan takes it (paged, 64-byte rows, KV heads dividing the page),
    under the interpreter (no PTX) it leaves it off."""
    from swattn.kernels import fwd
    batch, page_size, head_dim = 2, 16, 64
    k_cache, v_cache = e4m3(batch * 6, page_size, HK, head_dim), e4m3(batch * 6, page_size, HK, head_dim)
    table = torch.randperm(batch * 6).view(batch, 6).to(torch.int32)
    lens = i32(90, 57)
    q = torch.randn(batch, 1, H, head_dim, dtype=torch.bfloat16)
    kd, vd = descale(batch), descale(batch)
    outs = []
    for on in (0, mode):
        monkeypatch.setattr(fwd, "FP8_PREFETCH_PARTNER", on)
        fwd._PLANS.clear()
        with forced_config(FwdConfig(16, 16, 2, 2)):  # the split loop (a GPU would give these keys the single loop)
            outs.append(swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, page_table=table,
                                                       k_descale=kd, v_descale=vd, causal=True, num_splits=2,
                                                       pack_gqa=True))
        assert [plan.prefetch_partner for plan in fwd.plans()] == [on if q.is_cuda else 0]
    assert torch.equal(outs[0], outs[1])
    ref, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                   page_table=table)
    assert_close("out", outs[1], ref, tolerance_for(torch.bfloat16))


def test_prefill_varlen_fp8_kv_bf16():
    """flash_attn_varlen_func: bf16 queries over e4m3 k/v, causal, descales per sequence and KV head."""
    cu_q, cu_k = i32(0, 7, 20), i32(0, 11, 24)
    q = torch.randn(20, H, D, dtype=torch.bfloat16)
    k, v = e4m3(24, HK, D), e4m3(24, HK, D)
    kd, vd = descale(2), descale(2)
    out, lse = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 13, 13, k_descale=kd, v_descale=vd, causal=True,
                                             return_softmax_lse=True)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, k_descale=kd, v_descale=vd, window_size=(-1, 0))
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


# ----------------------------------------------------------------------------------------------------------------
# q, k, v all e4m3


@pytest.mark.parametrize("window", [(-1, 0), (7, 0)], ids=["causal", "W7_0"])
def test_prefill_all_fp8(window):
    """flash_attn_func with q/k/v in e4m3 and all three descales: bf16 output, GQA, sinks, Sq < Sk."""
    q, k, v = e4m3(2, 33, H, D), e4m3(2, 40, HK, D), e4m3(2, 40, HK, D)
    qd, kd, vd, sinks = descale(2), descale(2), descale(2), torch.randn(H)
    out, lse = swattn.flash_attn_func(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window,
                                      sinks=sinks, return_softmax_lse=True)
    ref_out, ref_lse = attention_ref(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window,
                                     sinks=sinks)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def test_kvcache_all_fp8_without_descales():
    """e4m3 q over an e4m3 cache appending e4m3 tokens (copied as they are), no descales (= 1, as in FA3)."""
    k_cache, v_cache = e4m3(2, 32, HK, D), e4m3(2, 32, HK, D)
    q, k_new, v_new = e4m3(2, 1, H, D), e4m3(2, 1, HK, D), e4m3(2, 1, HK, D)
    lens = i32(9, 30)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                              causal=True, return_softmax_lse=True)
    seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens)
    assert same_bytes(k_cache, expected_k) and same_bytes(v_cache, expected_v)
    ref_out, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, seqlens, causal=True)
    assert out.dtype == torch.bfloat16
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_of_e4m3_queries_and_keys(interleaved):
    """All-fp8 with rotary (FA3's test_flash_attn_kvcache draws it): the e4m3 queries and new keys are rotated in
    fp32 and go back to e4m3 (saturated, ties to even), as FlashAttention 3 rotates them before its e4m3 products;
    the cache bytes are those of the reference's append, and the output that of attention over its rotated q."""
    torch.manual_seed(3 + interleaved)
    k_cache, v_cache = e4m3(6, 8, HK, D), e4m3(6, 8, HK, D)
    table = i32([5, 0, 1], [2, 4, 3])
    q, k_new, v_new = e4m3(2, 2, H, D, scale=200.0), e4m3(2, 2, HK, D, scale=200.0), e4m3(2, 2, HK, D)
    angles = torch.rand(24, D // 4) * 3  # rotary_dim = D / 2: the last half of each head is copied
    cos, sin = angles.cos(), angles.sin()
    lens = i32(3, 17)
    descales = dict(q_descale=descale(2), k_descale=descale(2), v_descale=descale(2))
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                              page_table=table, rotary_cos=cos, rotary_sin=sin,
                                              rotary_interleaved=interleaved, causal=True, window_size=(6, 0),
                                              return_softmax_lse=True, **descales)
    seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens, page_table=table, rotary_cos=cos,
                            rotary_sin=sin, rotary_interleaved=interleaved)
    assert same_bytes(k_cache, expected_k) and same_bytes(v_cache, expected_v)
    q_rot = rotate_queries_ref(q, cos, sin, lens, True, interleaved)
    assert q_rot.dtype == FP8 and q_rot.float().abs().max() <= 448  # scale 200: some rotated values saturate
    ref_out, ref_lse = attention_kvcache_ref(q_rot, expected_k, expected_v, seqlens, page_table=table, causal=True,
                                             window_size=(6, 0), **descales)
    assert out.dtype == torch.bfloat16
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def test_fallback_fp8_matches_the_kernels(monkeypatch):
    """The CPU path without the interpreter (the reference) gives the kernels' results, cache bytes included; new
    fp16 keys are rotated (rotary), rounded to fp16, then quantized into the e4m3 cache on both paths."""
    k_cache, v_cache = e4m3(6, 8, HK, D), e4m3(6, 8, HK, D)
    table = i32([5, 0, 1], [2, 4, 3])
    angles = torch.rand(24, D // 4) * 3
    kwargs = dict(q=torch.randn(2, 2, H, D, dtype=torch.float16), k=torch.randn(2, 2, HK, D, dtype=torch.float16),
                  v=torch.randn(2, 2, HK, D, dtype=torch.float16), cache_seqlens=i32(3, 17), page_table=table,
                  k_descale=descale(2), v_descale=descale(2), causal=True, window_size=(6, 0),
                  rotary_cos=angles.cos(), rotary_sin=angles.sin(), return_softmax_lse=True)
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    out_k, lse_k = swattn.flash_attn_with_kvcache(k_cache=caches[0][0], v_cache=caches[0][1], **kwargs)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = {name: t.cpu() if isinstance(t, torch.Tensor) else t for name, t in kwargs.items()}
    # The CPU caches the fallback appends to (on a GPU run ``.cpu()`` is a copy: compare that copy, not the source).
    k_cpu, v_cpu = caches[1][0].cpu(), caches[1][1].cpu()
    out_f, lse_f = swattn.flash_attn_with_kvcache(k_cache=k_cpu, v_cache=v_cpu, **cpu)
    assert_close("out", out_f, out_k.cpu(), tolerance_for(torch.float16))
    assert_close("lse", lse_f, lse_k.cpu(), LSE_TOL)
    assert not same_bytes(k_cpu, k_cache.cpu())  # the append happened
    assert same_bytes(caches[0][0].cpu(), k_cpu) and same_bytes(caches[0][1].cpu(), v_cpu)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks


def test_fp8_argument_errors():
    q = torch.randn(2, 1, H, D, dtype=torch.bfloat16)
    k_cache, v_cache = e4m3(2, 16, HK, D), e4m3(2, 16, HK, D)
    call = lambda **kw: swattn.flash_attn_with_kvcache(**{**dict(q=q, k_cache=k_cache, v_cache=v_cache,
                                                                 cache_seqlens=4), **kw})
    with pytest.raises(ValueError, match=r"k_descale: expected shape \(2, 2\) \(B, Hk"):
        call(k_descale=torch.ones(2))
    with pytest.raises(TypeError, match="v_descale: expected dtype torch.float32"):
        call(v_descale=torch.ones(2, HK, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="q_descale: given, but q is torch.bfloat16"):
        call(q_descale=torch.ones(2, HK))
    with pytest.raises(ValueError, match="k_descale: given, but k_cache is torch.bfloat16"):
        call(k_cache=k_cache.to(torch.bfloat16), v_cache=v_cache.to(torch.bfloat16), k_descale=torch.ones(2, HK))
    with pytest.raises(TypeError, match="k_cache: fp8 .* q needs fp8 keys and values too"):
        call(q=q.to(FP8), k_cache=k_cache.to(torch.bfloat16), v_cache=v_cache.to(torch.bfloat16))
    with pytest.raises(TypeError, match="q: an fp8 .* needs float16, bfloat16 or float8_e4m3fn queries"):
        call(q=q.float())
    with pytest.raises(TypeError, match="v_cache: expected dtype torch.float8_e4m3fn to match k_cache"):
        call(v_cache=v_cache.to(torch.bfloat16))
    with pytest.raises(TypeError, match="the only fp8 format supported is torch.float8_e4m3fn"):
        call(k_cache=k_cache.to(torch.float8_e5m2), v_cache=v_cache.to(torch.float8_e5m2))
    with pytest.raises(TypeError, match=r"k: expected dtype .* or torch.bfloat16 like q \(quantized"):
        call(k=torch.randn(2, 1, HK, D, dtype=torch.float16), v=torch.randn(2, 1, HK, D, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"q_descale: expected shape \(2, 2\)"):
        swattn.flash_attn_func(q.to(FP8), k_cache, v_cache, q_descale=torch.ones(2, H))


def test_repeated_calls_replay_with_their_own_descales():
    """A call signature made three times goes through swattn._replay's planned op from the third call on: each call
    must use its own descales and quantize its own new tokens (prefill all-fp8 and paged decode over e4m3)."""
    for step in range(3):
        q, k, v = e4m3(1, 9, H, D), e4m3(1, 12, HK, D), e4m3(1, 12, HK, D)
        qd, kd, vd = descale(1), descale(1), descale(1)
        out = swattn.flash_attn_func(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, causal=True)
        ref_out, _ = attention_ref(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, causal=True)
        assert_close(f"prefill call {step}", out, ref_out, tolerance_for(torch.bfloat16))
    k_cache, v_cache = e4m3(4, 8, HK, D), e4m3(4, 8, HK, D)
    table, lens = i32([3, 1], [0, 2]), i32(5, 9)
    for step in range(3):
        q = torch.randn(2, 1, H, D, dtype=torch.bfloat16)
        k_new, v_new = torch.randn(2, 1, HK, D, dtype=torch.bfloat16), torch.randn(2, 1, HK, D, dtype=torch.bfloat16)
        kd, vd = descale(2), descale(2)
        expected_k, expected_v = k_cache.clone(), v_cache.clone()
        out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                             page_table=table, k_descale=kd, v_descale=vd, causal=True)
        seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens, page_table=table, k_descale=kd,
                                v_descale=vd)
        assert same_bytes(k_cache, expected_k) and same_bytes(v_cache, expected_v), step
        ref_out, _ = attention_kvcache_ref(q, expected_k, expected_v, seqlens, page_table=table, k_descale=kd,
                                           v_descale=vd, causal=True)
        assert_close(f"decode call {step}", out, ref_out, tolerance_for(torch.bfloat16))


def test_fp8_inputs_that_require_grad_fail_only_at_the_backward():
    """As in FlashAttention 3 (whose tests make fp8 inputs require grad and skip only the backward): the forward
    runs and gives what it gives without gradients; a backward raises, naming the first input that wants one. The
    KV-cache call is not differentiable, fp8 or not: its output does not require grad."""
    q, k, v = e4m3(1, 6, H, D), e4m3(1, 9, HK, D), e4m3(1, 9, HK, D)
    kd = descale(1)
    with torch.no_grad():
        expected = swattn.flash_attn_func(q, k, v, k_descale=kd, causal=True)
    for wants, name in (((q,), "q"), ((k, v), "k"), ((v,), "v")):
        leaves = {id(t): t.clone().requires_grad_() for t in wants}
        args = [leaves.get(id(t), t) for t in (q, k, v)]
        out = swattn.flash_attn_func(*args, k_descale=kd, causal=True)
        assert out.requires_grad and torch.equal(out.detach(), expected)
        with pytest.raises(NotImplementedError, match=rf"^{name}: a backward through fp8 \(float8_e4m3fn\)"):
            out.float().sum().backward()
    cu = i32(0, 6)
    out = swattn.flash_attn_varlen_func(q[0], k[0], v[0].clone().requires_grad_(), cu, i32(0, 9), 6, 9, causal=True,
                                        sinks=torch.zeros(H, requires_grad=True))
    with pytest.raises(NotImplementedError, match="^v: a backward through fp8"):
        out.float().sum().backward()
    k_cache, v_cache = e4m3(1, 16, HK, D), e4m3(1, 16, HK, D)
    out = swattn.flash_attn_with_kvcache(torch.randn(1, 1, H, D, dtype=torch.bfloat16, requires_grad=True), k_cache,
                                         v_cache, cache_seqlens=9, k_descale=kd, v_descale=kd)
    assert not out.requires_grad


@pytest.mark.parametrize("transposed", [0, 1], ids=["loop", "transposed-loop"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_kv_heads_per_program_by_default(monkeypatch, dtype, transposed):
    """``configs.FP8_KV_PAIRS`` (the default): a full-attention decode over a paged e4m3 cache with fp16/bf16
    queries takes two KV heads per program (PAIR_TWO_LOADS, ``FP8_PAIR_SPLIT_BLOCKS``' block shape) where
    ``configs.fp8_pair_split_count`` says so (its threshold lowered here so that a small cache qualifies on the
    interpreter's 4 "SMs"), with sinks and softcap; the output agrees with one KV head per program (the switch off)
    and with the reference; a window decode of the same cache keeps one KV head per program. With
    ``configs.FP8_PAIR_TRANSPOSED`` 1 the same pairs run the transposed loop (PAIR_TRANSPOSED)."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 16)
    monkeypatch.setattr(configs, "FP8_PAIR_TRANSPOSED", transposed)
    pair_mode = (fwd.PAIR_TWO_LOADS.value, fwd.PAIR_TRANSPOSED.value)[transposed]
    k_cache, v_cache, table, lens, q = small_paged_e4m3_cache(dtype)
    if q.is_cuda:  # 132 SMs: 64 splits of these few keys would take the single loop (no pairs there)
        pytest.skip("small-cache version of tests/gpu/test_fp8_real_sizes.py's "
                    "test_full_decode_takes_two_kv_heads_per_program")
    kd, vd, sinks = descale(1), descale(1), torch.randn(H)
    splits = configs.fp8_pair_split_count(HK, SMALL_CACHE_KEYS, fwd._persistent_programs(q.device))
    assert splits > 1
    call = dict(cache_seqlens=lens, page_table=table, k_descale=kd, v_descale=vd, sinks=sinks, softcap=20.0,
                num_splits=splits, return_softmax_lse=True)
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(configs, "FP8_KV_PAIRS", on)
        fwd._PLANS.clear()
        outs[on] = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, causal=True, **call)
        (plan,) = [p for p in fwd.plans() if p.launches]
        assert plan.kv_pair == (pair_mode if on else 0)
        if on:
            assert plan.config == configs.fp8_pair_config(plan.config, HK, SMALL_CACHE_KEYS)  # their shape
        fwd._PLANS.clear()
        swattn.flash_attn_with_kvcache(q, k_cache, v_cache, window_size=(300, 0), **call)
        assert [p.kv_pair for p in fwd.plans() if p.launches] == [0]
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                             sinks=sinks, softcap=20.0, page_table=table)
    for out, lse in outs.values():
        assert_close("out", out, ref_out, tolerance_for(dtype))
        assert_close("lse", lse, ref_lse, LSE_TOL)
    assert_close("pairs vs one KV head", outs[True][0], outs[False][0], tolerance_for(dtype))


def test_pairs_replace_a_short_splits_single_loop(monkeypatch):
    """Where the default takes two KV heads per program (``configs.fp8_pairs_taken``) for splits short enough that
    ``forward_config`` gives them the one-stage single loop (on a GPU: at most ``SHORT_SPLIT_KEYS`` keys; the
    interpreter's own config is never single-loop, so the GPU's choice is handed in here), the pairs' split loop
    replaces it (``configs.fp8_pair_config``: their block shape, single_loop off), against the reference; a forced
    pair mode (``fwd.FP8_TWO_KV_HEADS``) leaves a single loop alone."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 16)
    monkeypatch.setattr(fwd, "forward_config", lambda *args, **kwargs: FwdConfig(16, 128, 4, 2, single_loop=True))
    k_cache, v_cache, table, lens, q = small_paged_e4m3_cache(torch.bfloat16)
    if q.is_cuda:  # 132 SMs: no pair split count for this small cache
        pytest.skip("small-cache version of tests/gpu/test_fp8_real_sizes.py's "
                    "test_pairs_replace_the_single_loop_of_256_key_splits")
    kd, vd = descale(1), descale(1)
    splits = configs.fp8_pair_split_count(HK, SMALL_CACHE_KEYS, fwd._persistent_programs(q.device))
    assert splits > 1
    call = dict(cache_seqlens=lens, page_table=table, k_descale=kd, v_descale=vd, causal=True, num_splits=splits)
    fwd._PLANS.clear()
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
    (plan,) = [p for p in fwd.plans() if p.launches]
    assert plan.kv_pair in fwd._TWO_LOADS and not plan.config.single_loop
    assert plan.config == configs.fp8_pair_config(FwdConfig(16, 128, 4, 2, single_loop=True), HK, SMALL_CACHE_KEYS)
    ref_out, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                       page_table=table)
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
    monkeypatch.setattr(fwd, "FP8_TWO_KV_HEADS", 4)
    fwd._PLANS.clear()
    swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
    assert [p.kv_pair for p in fwd.plans() if p.launches] == [0]


def test_pair_block_shape_by_shape(monkeypatch):
    """``configs.FP8_PAIR_SHAPE_BLOCKS``: the first entry whose head_dim, program and key bounds a decode meets sets
    the pairs' block shape (``fp8_pair_config``) and the programs per SM of their split count and fill rule; other
    shapes keep ``FP8_PAIR_SPLIT_BLOCKS``'. A plan takes the entry's block shape (one warp on 16 keys here), against
    the reference. Shipped: head_dim 128 on (32, 2, 2) capped at 168 registers, 6 per SM; head_dim 64 on one-warp
    programs at B <= 4 from 16K keys and B <= 16 (not B=8) from 96K."""
    from swattn.kernels import configs, fwd
    assert configs.fp8_pair_blocks(128, 16384, 128) == (32, 2, 168, 6)  # shipped: head_dim 128
    assert configs.fp8_pair_blocks(128, 16384, 64) == configs.FP8_PAIR_SPLIT_BLOCKS[16]
    assert configs.fp8_pair_split_count(128, 16384, 132, 128) == 12  # B=16 16K, D=128: 6 x 132 / 64
    assert configs.fp8_pair_split_count(32, 131072, 132, 128) == 49  # B=4 128K: 6 x 132 / 16
    # head_dim 64: B <= 4 from 16K keys one warp on 32-key blocks, B=8 the default's shape, B <= 16 from 96K one
    # warp on 16-key blocks.
    assert configs.fp8_pair_blocks(32, 16384) == configs.fp8_pair_blocks(32, 131088) == (32, 1, 168, 8)
    assert configs.fp8_pair_blocks(32, 8208) == configs.FP8_PAIR_SPLIT_BLOCKS[16]
    assert configs.fp8_pair_blocks(64, 131088) == configs.FP8_PAIR_SPLIT_BLOCKS[16]
    assert configs.fp8_pair_blocks(128, 131088) == configs.fp8_pair_blocks(128, 98304) == (16, 1, 128, 16)
    assert configs.fp8_pair_blocks(128, 65552) == configs.FP8_PAIR_SPLIT_BLOCKS[16]
    assert configs.fp8_pair_blocks(128, 16400) == configs.FP8_PAIR_SPLIT_BLOCKS[16]
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 16)
    one_warp = (16, 1, None, 8)
    monkeypatch.setattr(configs, "FP8_PAIR_SHAPE_BLOCKS", ((D, HK, 512, one_warp), (64, 32, 1 << 20, (64, 2, 168, 6))))
    assert configs.fp8_pair_blocks(HK, 640, D) == one_warp
    assert configs.fp8_pair_blocks(HK, 640, 2 * D) == configs.FP8_PAIR_SPLIT_BLOCKS[16]  # another head_dim
    assert configs.fp8_pair_blocks(HK, 500, D) == configs.FP8_PAIR_SPLIT_BLOCKS[16]  # too few keys
    assert configs.fp8_pair_blocks(2 * HK, 640, D) == configs.FP8_PAIR_SPLIT_BLOCKS[16]  # too many programs
    assert configs.fp8_pair_blocks(32, 1 << 20, 64) == (64, 2, 168, 6)
    assert configs.fp8_pair_split_count(128, 1 << 20, 132) == 16  # B=16: FP8_PAIR_SPLIT_BLOCKS' 8 per SM
    assert configs.fp8_pair_split_count(32, 1 << 20, 132) == 49  # B=4 at 6 per SM: 6 x 132 / 16
    k_cache, v_cache, table, lens, q = small_paged_e4m3_cache(torch.float16)
    if q.is_cuda:  # 132 SMs: no pair split count for this small cache
        pytest.skip("interpreter-sized cache")
    kd, vd = descale(1), descale(1)
    splits = configs.fp8_pair_split_count(HK, SMALL_CACHE_KEYS, fwd._persistent_programs(q.device), D)
    assert splits > 1
    fwd._PLANS.clear()
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, page_table=table, k_descale=kd,
                                         v_descale=vd, causal=True, num_splits=splits)
    (plan,) = [p for p in fwd.plans() if p.launches]
    assert plan.kv_pair in fwd._TWO_LOADS
    assert (plan.config.block_n, plan.config.num_warps, plan.config.maxnreg) == one_warp[:3]
    ref_out, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True,
                                       page_table=table)
    assert_close("out", out, ref_out, tolerance_for(torch.float16))


def test_split_count_plans_two_kv_heads_per_program():
    """The automatic split count of the e4m3 full decode (gpt-oss layer, H200's 132 SMs, page tables a page longer
    than the context) plans a wave of two-KV-head programs (8 per SM; 16 for B=16's one-warp programs from 96K keys,
    ``FP8_PAIR_SHAPE_BLOCKS``) where ``configs.fp8_pair_split_count`` takes them (B=16 16K-64K: 16 splits, 128K: 33;
    B=4 8K-128K: 64; B=8 16K: 33; with page tables of exactly the context too:
    B=4 16K, B=16 4K, B=8 8K, splits of 128 keys or more) and one KV head's elsewhere (B=4 4K: 64 pair splits would be
    65 keys, under ``FP8_PAIR_MIN_KEYS_PER_SPLIT``; B=2: 512 pair programs, under three quarters of a wave); off with
    ``FP8_KV_PAIRS``."""
    from swattn.interface import split_count
    from swattn.kernels import configs
    for batch, context, splits, paired in ((16, 16384, 16, True), (16, 131072, 33, True), (4, 131072, 64, True),
                                           (4, 65536, 64, True), (4, 16384, 64, True), (4, 32768, 64, True),
                                           (8, 16384, 33, True), (4, 8192, 64, True), (2, 65536, 33, False)):
        keys = context + 16
        assert split_count(8 * batch, keys, 132, 8, True, True, kv_pairs=True) == splits, (batch, context)
        assert configs.fp8_pair_split_count(8 * batch, keys, 132) == (splits if paired else 0)
        assert split_count(8 * batch, keys, 132, 8, True, True) == 4 * 132 // (8 * batch)
    for batch, keys, splits in ((4, 16384, 64), (16, 4096, 16), (8, 8192, 33), (4, 8192, 64)):  # exact tables
        assert configs.fp8_pair_split_count(8 * batch, keys, 132) == splits, (batch, keys)
        assert split_count(8 * batch, keys, 132, 8, True, True, kv_pairs=True) == splits, (batch, keys)
    assert configs.fp8_pair_split_count(32, 4112, 132) == 0  # B=4 4K: 65 keys per split
    # head_dim 128 (FP8_PAIR_SHAPE_BLOCKS: 6 per SM): B=16 16K 12 splits, B=4 128K 49.
    assert split_count(128, 16400, 132, 4, True, True, kv_pairs=True, head_dim=128) == 12
    assert split_count(32, 131088, 132, 4, True, True, kv_pairs=True, head_dim=128) == 49
    assert not configs.fp8_kv_pairs_fit(True, True, True, 4, 1, 8, 256, True, True, False)  # head_dim 256
    assert configs.fp8_pair_split_count(8 * 64, 131072, 132) == 0  # no split regime: one KV head per program
    assert configs.fp8_pair_split_count(8, 131072, 132) == 0  # B=1: 64 splits of pairs would fill half a wave
    # The kernel takes the pairs with the planned count or more, not with a caller's count far below it (B=16 16K
    # with 8 splits: 512 pair programs would leave half the slots empty at 8 per SM).
    assert configs.fp8_pairs_taken(128, 16400, 132, 16) and configs.fp8_pairs_taken(128, 16400, 132, 32)
    assert not configs.fp8_pairs_taken(128, 16400, 132, 8)
    assert not configs.fp8_pairs_taken(32, 4112, 132, 64)  # B=4 4K: one head whatever the count
    assert not configs.fp8_kv_pairs_fit(True, True, True, 8, 1, 7, 64, True, True, False)  # odd Hk
    assert configs.fp8_kv_pairs_fit(True, True, True, 8, 1, 8, 64, True, True, False)
    assert not configs.fp8_kv_pairs_fit(False, True, True, 8, 1, 8, 64, True, True, False)  # all-fp8
    assert not configs.fp8_kv_pairs_fit(True, True, False, 8, 1, 8, 64, True, True, False)  # window


@pytest.mark.parametrize("dtype,num_splits,block_n", [(torch.float16, 3, 16), (torch.bfloat16, 1, 32)])
def test_heads_decode_experiment(dtype, num_splits, block_n):
    """scripts/fp8_heads_decode.py (an experiment of issue 22, not swattn's path): one program reads all KV heads of
    a key block through batched products, one warp per KV head; its splits merge through flash_attn_combine and the
    sinks enter split 0. Against the reference: per-sequence lengths (one not a multiple of the block or page),
    descales per sequence and KV head, sinks; an empty trailing split."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from fp8_heads_decode import heads_decode
    batch, page_size, pages = 2, 8, 6
    k_cache, v_cache = e4m3(batch * pages, page_size, HK, D), e4m3(batch * pages, page_size, HK, D)
    table = torch.randperm(batch * pages).view(batch, pages).to(torch.int32)
    lens = i32(45, 17)
    q = torch.randn(batch, 1, H, D, dtype=dtype)
    kd, vd, sinks = descale(batch), descale(batch), torch.randn(H)
    out = heads_decode(q, k_cache, v_cache, table, lens, kd, vd, sinks, num_splits=num_splits, block_n=block_n)
    ref, _ = attention_kvcache_ref(q, k_cache, v_cache, lens, k_descale=kd, v_descale=vd, causal=True, sinks=sinks,
                                   page_table=table)
    assert out.dtype == dtype
    assert_close("out", out, ref, tolerance_for(dtype))


def test_pair_fenced_widening_setting(monkeypatch):
    """``configs.FP8_PAIR_FENCED_WIDENING`` asks for the fenced widening on the two-KV-heads loop only (compiled
    launches; under the interpreter, which runs no PTX, every launch widens with a plain ``.to``);
    ``fwd.FP8_FENCED_WIDENING`` applies to every e4m3 launch and wins."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_FENCED_WIDENING", 2)
    assert fwd._fenced_mode(fwd.PAIR_TWO_LOADS.value) == 2 and fwd._fenced_mode(0) == 0
    monkeypatch.setattr(fwd, "FP8_FENCED_WIDENING", 1)
    assert fwd._fenced_mode(fwd.PAIR_TWO_LOADS.value) == 1 and fwd._fenced_mode(0) == 1
    assert fwd._e4m3_widening(torch.device("cpu"), fwd.PAIR_TWO_LOADS.value) in (fwd.WIDEN_TO.value,
                                                                                  fwd.WIDEN_IN_PAIRS.value)



def automatic_splits_on_four_sms(monkeypatch) -> int:
    """The interface's automatic split count as on a GPU of the interpreter's 4 "SMs" (``fwd._persistent_programs``
    on the CPU, which ``fwd`` asks when it takes the pairs): the CPU's own rule is one split."""
    import types

    from swattn import interface
    from swattn.kernels import fwd
    sms = fwd._persistent_programs(torch.device("cpu"))
    original = interface._auto_num_splits
    monkeypatch.setattr(interface, "device_properties", lambda device: types.SimpleNamespace(multi_processor_count=sms))
    monkeypatch.setattr(interface, "_auto_num_splits",
                        lambda num_splits, device, *args, **kwargs: original(num_splits, torch.device("cuda"), *args,
                                                                             **kwargs))
    return sms


@pytest.mark.parametrize("transposed", [0, 1], ids=["loop", "transposed-loop"])
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-sequence-kv-head", "per-tensor"])
def test_all_fp8_decode_takes_two_kv_heads_per_program(monkeypatch, per_tensor, transposed):
    """``configs.FP8_QKV_PAIRS``: an all-fp8 full decode (e4m3 q over a paged e4m3 cache, q/k/v descales) takes
    the fp8-kv default's two KV heads per program where ``configs.fp8_kv_pairs_fit`` (with ``e4m3_q``) and
    ``fp8_pair_split_count`` say so: the automatic split count plans the pairs' splits (interface, here as on a GPU
    of 4 SMs) and the launch takes them (fwd), launched as FP8_KV (q widened to fp16 in the kernel, q_descale in each
    row's score scale); bf16 output against the reference on the dequantized inputs and against the switch off (one
    KV head per program on the all-fp8 loop). Descales per (sequence, KV head) or one per tensor (a stride-0
    expand)."""
    from swattn.kernels import configs, fwd
    sms = automatic_splits_on_four_sms(monkeypatch)
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 16)
    monkeypatch.setattr(configs, "FP8_PAIR_TRANSPOSED", transposed)
    pair_mode = (fwd.PAIR_TWO_LOADS.value, fwd.PAIR_TRANSPOSED.value)[transposed]
    pages, keys = 70, 1050  # at least 8 blocks of 128 keys: the split regime of interface.split_count
    k_cache = e4m3(pages, SMALL_CACHE_PAGE_SIZE, HK, D)
    v_cache = e4m3(pages, SMALL_CACHE_PAGE_SIZE, HK, D)
    table = torch.randperm(pages).view(1, pages).to(torch.int32)
    lens, q = i32(keys), e4m3(1, 1, H, D)
    if per_tensor:
        qd, kd, vd = (torch.tensor(value).expand(1, HK) for value in (0.75, 1.5, 0.625))
    else:
        qd, kd, vd = descale(1), descale(1), descale(1)
    sinks = torch.randn(H)
    splits = configs.fp8_pair_split_count(HK, pages * SMALL_CACHE_PAGE_SIZE, sms, D)
    assert splits > 1
    call = dict(cache_seqlens=lens, page_table=table, q_descale=qd, k_descale=kd, v_descale=vd, sinks=sinks,
                softcap=20.0, causal=True, return_softmax_lse=True)
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(configs, "FP8_QKV_PAIRS", on)
        fwd._PLANS.clear()
        outs[on] = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
        (plan,) = [p for p in fwd.plans() if p.launches]
        assert plan.kv_pair == (pair_mode if on else 0)
        assert plan.main.constexprs["FP8"] == (fwd.FP8_KV.value if on else fwd.FP8_QKV.value)
        assert plan.main.constexprs["KV_PAIR"] == plan.kv_pair
        if on:  # the interface planned the pairs' split count, which the launch took
            assert plan.main.grid == (1, 1, splits)
            assert plan.config == configs.fp8_pair_config(plan.config, HK, pages * SMALL_CACHE_PAGE_SIZE, D)
        else:
            assert plan.main.grid[:2] == (1, HK) and plan.main.grid[2] != splits
        assert outs[on][0].dtype == torch.bfloat16 and torch.isfinite(outs[on][0]).all()
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, q_descale=qd, k_descale=kd, v_descale=vd,
                                             causal=True, sinks=sinks, softcap=20.0, page_table=table)
    for out, lse in outs.values():
        assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))
        assert_close("lse", lse, ref_lse, LSE_TOL)
    assert_close("pairs vs one KV head", outs[True][0], outs[False][0], tolerance_for(torch.bfloat16))


@pytest.mark.parametrize("case", ["odd-kv-heads", "window", "append", "head-dim-16"])
def test_all_fp8_decodes_outside_the_pairs_keep_one_kv_head(monkeypatch, case):
    """With ``configs.FP8_QKV_PAIRS`` on, all-fp8 decodes that ``configs.fp8_kv_pairs_fit`` refuses (an odd KV
    head count, a window, a fused append, a head_dim under all-fp8's padded 32) keep one KV head per program on the
    all-fp8 (FP8_QKV) loop, against the reference."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 16)
    monkeypatch.setattr(configs, "FP8_QKV_PAIRS", True)
    kv_heads, heads, head_dim = (3, 12, D) if case == "odd-kv-heads" else (HK, H, 16 if case == "head-dim-16" else D)
    k_cache = e4m3(SMALL_CACHE_PAGES, SMALL_CACHE_PAGE_SIZE, kv_heads, head_dim)
    v_cache = e4m3(SMALL_CACHE_PAGES, SMALL_CACHE_PAGE_SIZE, kv_heads, head_dim)
    table = torch.randperm(SMALL_CACHE_PAGES).view(1, SMALL_CACHE_PAGES).to(torch.int32)
    lens = i32(601)
    q = e4m3(1, 1, heads, head_dim)
    qd, kd, vd = (torch.rand(1, kv_heads) + 0.25 for _ in range(3))
    call = dict(cache_seqlens=lens, page_table=table, q_descale=qd, k_descale=kd, v_descale=vd, causal=True)
    if case == "window":
        call["window_size"] = (300, 0)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    if case == "append":
        k_new, v_new = e4m3(1, 1, kv_heads, head_dim), e4m3(1, 1, kv_heads, head_dim)
        call.update(k=k_new, v=v_new, k_descale=torch.ones(1, kv_heads), v_descale=torch.ones(1, kv_heads))
        append_kv_ref(expected_k, expected_v, k_new, v_new, lens.clone(), page_table=table)
    fwd._PLANS.clear()
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
    launched = [p for p in fwd.plans() if p.launches]
    assert launched and all(p.kv_pair == 0 and p.main.constexprs["FP8"] == fwd.FP8_QKV.value for p in launched)
    seqlens = lens + (1 if case == "append" else 0)
    ref_out, _ = attention_kvcache_ref(q, expected_k, expected_v, seqlens, q_descale=qd, k_descale=call["k_descale"],
                                       v_descale=call["v_descale"], causal=True, page_table=table,
                                       window_size=call.get("window_size", (-1, -1)))
    assert out.dtype == torch.bfloat16
    assert_close("out", out, ref_out, tolerance_for(torch.bfloat16))


def test_all_fp8_pairs_fit():
    """``configs.fp8_kv_pairs_fit``'s ``e4m3_q``: all-fp8 decodes fit only with ``FP8_QKV_PAIRS`` and a head_dim
    of at least 32; the fp8-kv decision is unchanged by the switch."""
    from swattn.kernels import configs
    shape = (True, True, True, 8, 1, 8, 64, True, True, False)
    assert configs.FP8_QKV_PAIRS is False  # off until timed on the GPU
    assert not configs.fp8_kv_pairs_fit(*shape, e4m3_q=True)
    assert configs.fp8_kv_pairs_fit(*shape)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configs, "FP8_QKV_PAIRS", True)
        assert configs.fp8_kv_pairs_fit(*shape, e4m3_q=True) and configs.fp8_kv_pairs_fit(*shape)
        assert not configs.fp8_kv_pairs_fit(True, True, True, 8, 1, 8, 16, True, True, False, e4m3_q=True)
        assert configs.fp8_kv_pairs_fit(True, True, True, 8, 1, 8, 16, True, True, False)
        assert not configs.fp8_kv_pairs_fit(True, True, True, 8, 1, 7, 64, True, True, False, e4m3_q=True)
        assert not configs.fp8_kv_pairs_fit(True, True, False, 8, 1, 8, 64, True, True, False, e4m3_q=True)
