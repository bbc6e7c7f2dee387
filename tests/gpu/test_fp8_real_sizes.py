"""fp8 (e4m3) at real sizes on a GPU (skipped without one): bf16 queries over an e4m3 paged cache (gpt-oss decode and
verify, full and window, automatic split-KV and PackGQA, sinks), new bf16 tokens quantized into the cache in the
call, bf16 prefill over e4m3 k/v, and q/k/v all e4m3 (prefill, D=64 and 128). Each against the reference on the
same e4m3 values (dequantized, float32 on the GPU): the tolerance is bf16's, since P and the output are rounded as
without fp8. The CPU suite (tests/kernels/test_fp8.py) runs the same paths small, through the interpreter, which
upcasts bf16 products to fp32; here the bf16 and e4m3 tensor-core products run compiled.

``SWATTN_TEST_DEVICE=cuda python -m pytest -q tests/gpu/test_fp8_real_sizes.py``
"""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.reference import append_kv_ref, attention_kvcache_ref, attention_ref
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp8 at real sizes needs a GPU")

DEVICE, BF16, FP8 = "cuda", torch.bfloat16, torch.float8_e4m3fn
OUT_TOL = tolerance_for(BF16)
LSE_ATOL = 2e-3
REF = dict(compute_dtype=torch.float32)


def e4m3(*shape, scale=2.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(FP8)


def descale(batch, kv_heads):
    return torch.rand(batch, kv_heads, device=DEVICE) * 0.2 + 0.01


def check_bytes(name, cache, expected, new, descale):
    """The cache bytes the append wrote equal the reference's; else the first differing bytes, and how many."""
    differ = cache.view(torch.uint8) != expected.view(torch.uint8)
    got, want = cache.view(torch.uint8), expected.view(torch.uint8)
    samples = [(*i, int(got[tuple(i)]), int(want[tuple(i)])) for i in differ.nonzero()[:6].tolist()]
    assert not samples, (f"quantized {name} differ at {int(differ.sum())} bytes; (page, slot, head, dim, got, "
                         f"expected): {samples}; |new| in [{new.abs().min().item()}, {new.abs().max().item()}], "
                         f"descale in [{descale.min().item()}, {descale.max().item()}]")


def check_lse(lse, ref_lse):
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=1e-3)


@pytest.mark.parametrize("batch,context,left,new", [
    (16, 16384, 127, 1),  # gpt-oss sliding decode
    (16, 16384, -1, 1),  # gpt-oss full decode (split-KV)
    (4, 65536, -1, 1),  # few sequences, long context: many splits
    (16, 4096, 127, 4),  # speculative verify of 4 tokens
], ids=lambda v: str(v))
def test_decode_paged_fp8_kv(batch, context, left, new):
    heads, kv_heads, head_dim, page_size = 64, 8, 64, 16
    pages = -(-context // page_size)
    k_cache, v_cache = e4m3(batch * pages + 7, page_size, kv_heads, head_dim), e4m3(batch * pages + 7, page_size,
                                                                                     kv_heads, head_dim)
    table = torch.randperm(batch * pages + 7, device=DEVICE)[:batch * pages].view(batch, pages).to(torch.int32)
    lens = torch.randint(context // 2, context - new + 1, (batch,), device=DEVICE, dtype=torch.int32)
    q = torch.randn(batch, new, heads, head_dim, device=DEVICE, dtype=BF16)
    k_new = torch.randn(batch, new, kv_heads, head_dim, device=DEVICE, dtype=BF16) * 4
    v_new = torch.randn(batch, new, kv_heads, head_dim, device=DEVICE, dtype=BF16) * 4
    kd, vd = descale(batch, kv_heads), descale(batch, kv_heads)
    sinks = torch.randn(heads, device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                              page_table=table, k_descale=kd, v_descale=vd, causal=True,
                                              window_size=(left, 0), sinks=sinks, return_softmax_lse=True)
    seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens, page_table=table, k_descale=kd, v_descale=vd)
    check_bytes("keys", k_cache, expected_k, k_new, kd)
    check_bytes("values", v_cache, expected_v, v_new, vd)
    ref_out, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, seqlens, page_table=table, k_descale=kd,
                                             v_descale=vd, causal=True, window_size=(left, 0), sinks=sinks, **REF)
    assert out.dtype == BF16
    assert_close("out", out, ref_out, OUT_TOL)
    check_lse(lse, ref_lse)


def paged_e4m3_decode(batch, context, heads=64, head_dim=64, exact=False):
    """A single-query decode over a paged e4m3 cache (8 KV heads, page 16, sinks, per-(sequence, KV head)
    descales): ``(q, k_cache, v_cache, call)``, ``call`` the rest of flash_attn_with_kvcache's arguments (causal,
    the LSE returned). Lengths from context / 2 to context (the first = context) over page tables a page longer;
    ``exact``: every length = context over page tables of exactly the context (as swattn.bench's)."""
    kv_heads, page_size = 8, 16
    pages = context // page_size + (0 if exact else 1)
    k_cache, v_cache = (e4m3(batch * pages, page_size, kv_heads, head_dim) for _ in range(2))
    table = torch.randperm(batch * pages, device=DEVICE).view(batch, pages).to(torch.int32)
    if exact:
        lens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    else:
        lens = torch.randint(context // 2, context + 1, (batch,), device=DEVICE, dtype=torch.int32)
        lens[0] = context
    q = torch.randn(batch, 1, heads, head_dim, device=DEVICE, dtype=BF16)
    call = dict(cache_seqlens=lens, page_table=table, k_descale=descale(batch, kv_heads),
                v_descale=descale(batch, kv_heads), causal=True, sinks=torch.randn(heads, device=DEVICE),
                return_softmax_lse=True)
    return q, k_cache, v_cache, call


def decode_reference(q, k_cache, v_cache, call):
    """The reference (float32 on the GPU) of ``paged_e4m3_decode``'s call: ``(out, lse)``."""
    return attention_kvcache_ref(q, k_cache, v_cache, call["cache_seqlens"], page_table=call["page_table"],
                                 k_descale=call["k_descale"], v_descale=call["v_descale"], causal=True,
                                 sinks=call["sinks"], **REF)


def check_pairs_against_one_kv_head(monkeypatch, q, k_cache, v_cache, call, pair_mode, blocks):
    """The default decode with two KV heads per program (configs.FP8_KV_PAIRS on: the plan's ``kv_pair`` is
    ``pair_mode``, its (block_n, num_warps, register cap) ``blocks``) and with one (off): both against the
    reference, and within bf16's tolerance of each other. Returns the pairs' plan."""
    from swattn.kernels import configs, fwd
    outs = {}
    pair_plan = None
    for on in (True, False):
        monkeypatch.setattr(configs, "FP8_KV_PAIRS", on)
        fwd._PLANS.clear()
        outs[on] = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
        (plan,) = [plan for plan in fwd.plans() if plan.launches]
        assert plan.kv_pair == (pair_mode if on else 0)
        if on:
            assert (plan.config.block_n, plan.config.num_warps, plan.config.maxnreg) == tuple(blocks)
            pair_plan = plan
    ref_out, ref_lse = decode_reference(q, k_cache, v_cache, call)
    for out, lse in outs.values():
        assert_close("out", out, ref_out, OUT_TOL)
        check_lse(lse, ref_lse)
    assert_close("pairs vs one KV head", outs[True][0], outs[False][0], OUT_TOL)
    return pair_plan


@pytest.mark.parametrize("transposed", [0, 1], ids=["loop", "transposed-loop"])
@pytest.mark.parametrize("batch,context", [(16, 16384), (4, 65536), (16, 65536)], ids=str)
def test_full_decode_takes_two_kv_heads_per_program(monkeypatch, batch, context, transposed):
    """The default full-attention decode over an e4m3 paged cache (gpt-oss layer, automatic split count) takes two
    KV heads per program (configs.FP8_KV_PAIRS: B=16 16K 16 splits on FP8_PAIR_SPLIT_BLOCKS' (32, 2, 2); B=4 64K 64
    on FP8_PAIR_SHAPE_BLOCKS' one-warp (32, 1, 2) capped at 168; B=16 64K 16, its one-warp (16, 1, 2) from 96K; V
    widened through the fence, configs.FP8_PAIR_FENCED_WIDENING), against the reference and within bf16's
    tolerance of one KV head per program (the switch off: 4 / 16 splits); with configs.FP8_PAIR_TRANSPOSED 1 its loop
    transposed (PAIR_TRANSPOSED)."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_TRANSPOSED", transposed)
    pair_mode = (fwd.PAIR_TWO_LOADS.value, fwd.PAIR_TRANSPOSED.value)[transposed]
    inputs = paged_e4m3_decode(batch, context)
    kv_heads, head_dim, page_size = 8, 64, 16
    blocks = configs.fp8_pair_blocks(batch * kv_heads, (context // page_size + 1) * page_size, head_dim)
    plan = check_pairs_against_one_kv_head(monkeypatch, *inputs, pair_mode, blocks[:3])
    assert plan.main.constexprs["WIDEN"] == fwd._FENCED_MODES[configs.FP8_PAIR_FENCED_WIDENING]


def test_head_dim_128_pairs_take_their_block_shape(monkeypatch):
    """head_dim 128 (H=32 / Hk=8, B=16 16K, page 16, sinks): the default takes two KV heads per program on
    configs.FP8_PAIR_SHAPE_BLOCKS' head_dim-128 block shape ((32, 2, 2) capped at 168 registers, 6 per SM: 12
    splits), against the reference and within bf16's tolerance of one KV head per program (the switch off)."""
    from swattn.kernels import fwd
    inputs = paged_e4m3_decode(16, 16384, heads=32, head_dim=128)
    check_pairs_against_one_kv_head(monkeypatch, *inputs, fwd.PAIR_TRANSPOSED.value, (32, 2, 168))


def test_pairs_replace_the_single_loop_of_256_key_splits(monkeypatch):
    """B=4 16K with a page table of exactly the context (as swattn.bench's): the pairs' split count gives 64 splits
    of 256 keys, which forward_config puts on the single loop; with the pairs' threshold at 256
    (configs.FP8_PAIR_MIN_KEYS_PER_SPLIT) their split loop replaces it (configs.fp8_pair_config), against the
    reference."""
    from swattn.kernels import configs, fwd
    monkeypatch.setattr(configs, "FP8_PAIR_MIN_KEYS_PER_SPLIT", 256)
    q, k_cache, v_cache, call = paged_e4m3_decode(4, 16384, exact=True)
    fwd._PLANS.clear()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
    (plan,) = [plan for plan in fwd.plans() if plan.launches]
    assert plan.kv_pair in fwd._TWO_LOADS and not plan.config.single_loop
    ref_out, ref_lse = decode_reference(q, k_cache, v_cache, call)
    assert_close("out", out, ref_out, OUT_TOL)
    check_lse(lse, ref_lse)


@pytest.mark.parametrize("head_dim,window", [(64, (127, 0)), (128, (4095, 0)), (128, (-1, 0))], ids=str)
def test_prefill_all_fp8(head_dim, window):
    batch, seqlen, heads, kv_heads = 1, 4096, 64 if head_dim == 64 else 32, 8
    q, k, v = e4m3(batch, seqlen, heads, head_dim), e4m3(batch, seqlen, kv_heads, head_dim), e4m3(
        batch, seqlen, kv_heads, head_dim)
    qd, kd, vd = descale(batch, kv_heads), descale(batch, kv_heads), descale(batch, kv_heads)
    out, lse = swattn.flash_attn_func(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window,
                                      return_softmax_lse=True)
    ref_out, ref_lse = attention_ref(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window, **REF)
    assert out.dtype == BF16
    assert_close("out", out, ref_out, OUT_TOL)
    check_lse(lse, ref_lse)


def test_prefill_bf16_over_fp8_kv():
    batch, seqlen, heads, kv_heads, head_dim = 2, 2048, 64, 8, 64
    q = torch.randn(batch, seqlen, heads, head_dim, device=DEVICE, dtype=BF16)
    k, v = e4m3(batch, seqlen, kv_heads, head_dim), e4m3(batch, seqlen, kv_heads, head_dim)
    kd, vd = descale(batch, kv_heads), descale(batch, kv_heads)
    sinks = torch.randn(heads, device=DEVICE)
    out, lse = swattn.flash_attn_func(q, k, v, k_descale=kd, v_descale=vd, causal=True, window_size=(127, 0),
                                      sinks=sinks, return_softmax_lse=True)
    ref_out, ref_lse = attention_ref(q, k, v, k_descale=kd, v_descale=vd, window_size=(127, 0), sinks=sinks, **REF)
    assert_close("out", out, ref_out, OUT_TOL)
    check_lse(lse, ref_lse)


@pytest.mark.parametrize("dtype", ["bf16", "fp8-kv"])
def test_decode_over_a_pool_past_2_gib(dtype):
    """A paged pool larger than 2 GiB (engines keep tens of GB), whose sequences' pages sit at its end: every byte
    offset of those pages exceeds 2**31. Full decode (split-KV) and window decode against the reference on the pages
    gathered. (H200 s5-call4: scripts/gpu_fp8_decode.py's B=16 128K bf16 decode over a pool 16 pages past 2 GiB
    raised an illegal memory access where the benchmark's pool of exactly 2 GiB ran.)"""
    heads, kv_heads, head_dim, page_size, batch, context = 64, 8, 64, 16, 2, 2048
    element = 1 if dtype == "fp8-kv" else 2
    page_bytes = page_size * kv_heads * head_dim * element
    pool_pages = (1 << 31) // page_bytes + 512
    make = (lambda: e4m3(pool_pages, page_size, kv_heads, head_dim)) if dtype == "fp8-kv" else (
        lambda: torch.randn(pool_pages, page_size, kv_heads, head_dim, device=DEVICE, dtype=BF16))
    k_pool, v_pool = make(), make()
    pages = context // page_size
    table = (pool_pages - 1 - torch.randperm(batch * pages, device=DEVICE)).to(torch.int32).view(batch, pages)
    lens = torch.tensor([context, context - 5], device=DEVICE, dtype=torch.int32)
    q = torch.randn(batch, 1, heads, head_dim, device=DEVICE, dtype=BF16)
    sinks = torch.randn(heads, device=DEVICE)
    fp8 = dict(k_descale=descale(batch, kv_heads), v_descale=descale(batch, kv_heads)) if dtype == "fp8-kv" else {}
    k_pages, v_pages = k_pool[table.long()].flatten(1, 2), v_pool[table.long()].flatten(1, 2)
    for window in ((-1, -1), (127, 0)):
        out, lse = swattn.flash_attn_with_kvcache(q, k_pool, v_pool, cache_seqlens=lens, page_table=table,
                                                  causal=True, window_size=window, sinks=sinks,
                                                  return_softmax_lse=True, **fp8)
        torch.cuda.synchronize()
        ref_out, ref_lse = attention_kvcache_ref(q, k_pages, v_pages, lens, causal=True, window_size=window,
                                                 sinks=sinks, **fp8, **REF)
        assert_close(f"out {window}", out, ref_out, OUT_TOL)
        check_lse(lse, ref_lse)


@pytest.mark.parametrize("tokens", [1, 4], ids=["decode", "verify4"])
def test_l2_preload_over_fp8_kv_gives_the_same_bits(monkeypatch, tokens):
    """fwd.PRELOAD_L2 over an e4m3 cache (L2 prefetches of the query rows, length, page-table entries, first
    e4m3 K/V rows and descales before the PDL wait) changes no bit: two consecutive W(127,0) steps, each appending
    its tokens (the quantizing append launch) right before the attention that reads them, under PRELOAD_L2 = 1 and
    2 against 0; the plans take it (PDL on Hopper); the second step matches the reference."""
    from swattn.kernels import fwd
    heads, kv_heads, head_dim, page_size, batch, context = 64, 8, 64, 16, 16, 3000
    pages = -(-(context + 2 * tokens) // page_size)
    k_cache, v_cache = e4m3(batch * pages, page_size, kv_heads, head_dim), e4m3(batch * pages, page_size, kv_heads,
                                                                               head_dim)
    table = torch.randperm(batch * pages, device=DEVICE).view(batch, pages).to(torch.int32)
    seqlens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    qs = [torch.randn(batch, tokens, heads, head_dim, device=DEVICE, dtype=BF16) for _ in range(2)]
    news = [[torch.randn(batch, tokens, kv_heads, head_dim, device=DEVICE, dtype=BF16) * 4 for _ in range(2)]
            for _ in range(2)]
    kd, vd, sinks = descale(batch, kv_heads), descale(batch, kv_heads), torch.randn(heads, device=DEVICE)
    results = {}
    for preload in (0, 1, 2):
        monkeypatch.setattr(fwd, "PRELOAD_L2", preload)
        k_run, v_run = k_cache.clone(), v_cache.clone()
        outs = [swattn.flash_attn_with_kvcache(q, k_run, v_run, k=k_new, v=v_new, cache_seqlens=seqlens + step * tokens,
                                               page_table=table, k_descale=kd, v_descale=vd, causal=True,
                                               window_size=(127, 0), sinks=sinks)
                for step, (q, (k_new, v_new)) in enumerate(zip(qs, news))]
        results[preload] = (outs, k_run, v_run)
        if fwd.pdl_enabled(qs[0].device):
            assert any(plan.fp8 and plan.preload_l2 == preload for plan in fwd.plans())
    outs, k_run, v_run = results[0]
    for preload in (1, 2):
        other, k_other, v_other = results[preload]
        assert all(torch.equal(a, b) for a, b in zip(outs, other)), f"PRELOAD_L2={preload}: other bits"
        assert torch.equal(k_other.view(torch.uint8), k_run.view(torch.uint8)), f"PRELOAD_L2={preload}: other keys"
        assert torch.equal(v_other.view(torch.uint8), v_run.view(torch.uint8)), f"PRELOAD_L2={preload}: other values"
    ref, _ = attention_kvcache_ref(qs[1], k_run, v_run, seqlens + 2 * tokens, page_table=table, k_descale=kd,
                                   v_descale=vd, causal=True, window_size=(127, 0), sinks=sinks, **REF)
    assert_close("out", outs[1], ref, OUT_TOL)


@pytest.mark.parametrize("batch,context,left,new,quantize_q", [
    (16, 16384, -1, 1, False),  # gpt-oss full decode (split-KV)
    (4, 65536, -1, 1, False),  # many splits
    (16, 16384, 127, 1, False),  # window decode
    (16, 4096, 127, 4, False),  # verify of 4 tokens
    (16, 16384, -1, 1, True),  # all-e4m3
], ids=lambda v: str(v))
@pytest.mark.parametrize("mode", [1, 2], ids=["fenced", "values-fenced"])
def test_fenced_widening_at_real_sizes(monkeypatch, mode, batch, context, left, new, quantize_q):
    """fwd.FP8_FENCED_WIDENING (the products over 16-bit operand layouts: e4m3 K and V, or V only, widened, then
    through an identity with a side effect) against the reference: the shipped configs, automatic splits, sinks."""
    from swattn.kernels import fwd
    monkeypatch.setattr(fwd, "FP8_FENCED_WIDENING", mode)
    heads, kv_heads, head_dim, page_size = 64, 8, 64, 16
    pages = -(-context // page_size)
    k_cache, v_cache = e4m3(batch * pages, page_size, kv_heads, head_dim), e4m3(batch * pages, page_size, kv_heads,
                                                                               head_dim)
    table = torch.randperm(batch * pages, device=DEVICE).view(batch, pages).to(torch.int32)
    lens = torch.randint(context // 2, context - new + 1, (batch,), device=DEVICE, dtype=torch.int32)
    q = torch.randn(batch, new, heads, head_dim, device=DEVICE, dtype=BF16)
    descales = dict(k_descale=descale(batch, kv_heads), v_descale=descale(batch, kv_heads))
    if quantize_q:
        q = (q * 8).to(FP8)
        descales["q_descale"] = descale(batch, kv_heads)
    sinks = torch.randn(heads, device=DEVICE)
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, page_table=table,
                                              causal=True, window_size=(left, 0), sinks=sinks,
                                              return_softmax_lse=True, **descales)
    assert any(plan.fp8 and plan.main.constexprs["WIDEN"] == fwd._FENCED_MODES[mode] for plan in fwd.plans())
    if left < 0 and not quantize_q:  # the full fp8-kv decodes take two KV heads per program (configs.FP8_KV_PAIRS)
        assert any(plan.fp8 and plan.kv_pair in fwd._TWO_LOADS for plan in fwd.plans())
    ref_out, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, lens, page_table=table, causal=True,
                                             window_size=(left, 0), sinks=sinks, **descales, **REF)
    assert out.dtype == BF16
    assert_close("out", out, ref_out, OUT_TOL)
    check_lse(lse, ref_lse)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_of_e4m3_queries_and_keys(interleaved):
    """All-fp8 extend with rotary over a paged cache (FA3's test_flash_attn_kvcache draws it): e4m3 q and new k
    rotated in fp32 and rounded back to e4m3 (saturated, ties to even): the cache bytes those of the reference's
    append (but for rounding midpoints), the output the reference's attention over its rotated q."""
    from swattn.reference import rotate_queries_ref

    torch.manual_seed(21 + interleaved)
    batch, heads, kv_heads, head_dim, page_size, new = 8, 64, 8, 128, 16, 5
    pages_per_seq = 64
    k_cache, v_cache = e4m3(batch * pages_per_seq, page_size, kv_heads, head_dim), e4m3(
        batch * pages_per_seq, page_size, kv_heads, head_dim)
    table = torch.randperm(batch * pages_per_seq, device=DEVICE).view(batch, pages_per_seq).to(torch.int32)
    lens = torch.randint(0, pages_per_seq * page_size - new, (batch,), device=DEVICE, dtype=torch.int32)
    q = e4m3(batch, new, heads, head_dim, scale=100.0)
    k_new, v_new = e4m3(batch, new, kv_heads, head_dim, scale=100.0), e4m3(batch, new, kv_heads, head_dim)
    angles = torch.rand(pages_per_seq * page_size, head_dim // 2, device=DEVICE) * 3
    cos, sin = angles.cos(), angles.sin()
    descales = dict(q_descale=descale(batch, kv_heads), k_descale=descale(batch, kv_heads),
                    v_descale=descale(batch, kv_heads))
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                              page_table=table, rotary_cos=cos, rotary_sin=sin,
                                              rotary_interleaved=interleaved, causal=True, return_softmax_lse=True,
                                              **descales)
    seqlens = append_kv_ref(expected_k, expected_v, k_new, v_new, lens, page_table=table, rotary_cos=cos,
                            rotary_sin=sin, rotary_interleaved=interleaved)
    # The kernel rotates in fp32 (FMAs), the reference in float64: a value within an fp32 ulp of an e4m3 rounding
    # midpoint may round the other way (~2^-20 per element), one e4m3 step apart; nothing else may differ.
    differ = k_cache.view(torch.uint8) != expected_k.view(torch.uint8)
    assert int(differ.sum()) <= 4, f"{int(differ.sum())} rotated key bytes differ"
    step = expected_k.float().abs().clamp_min(2.0 ** -6) / 8
    assert bool(((k_cache.float() - expected_k.float()).abs() <= step)[differ].all())
    assert torch.equal(v_cache.view(torch.uint8), expected_v.view(torch.uint8))
    q_rot = rotate_queries_ref(q, cos, sin, lens, True, interleaved)
    ref_out, ref_lse = attention_kvcache_ref(q_rot, expected_k, expected_v, seqlens, page_table=table, causal=True,
                                             **descales, **REF)
    assert_close("out", out, ref_out, OUT_TOL)
    # A rotated query element at a rounding midpoint may also round the other way (the kernel's fp32 products and
    # FMAs against the reference's float64; s13-call1 saw 5 of 2,558 rows): such a row's scores move by one e4m3 step
    # of that element, so its LSE by a few hundredths at these magnitudes. The other rows as check_lse.
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    off = ~torch.isclose(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=1e-3)
    assert int(off.sum()) <= max(8, finite.sum().item() // 100), f"{int(off.sum())} LSE rows off"
    assert (lse[finite] - ref_lse[finite]).abs().max().item() < 0.5
