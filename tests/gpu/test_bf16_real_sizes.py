"""bf16 at real sizes on a GPU (skipped without one): every entry point and the named edge cases of the CPU suite,
against the reference computed in float32 on the GPU, plus bitwise determinism and the n_offset block count at
the real block shapes. Run on the H100 with ``python -m pytest -q tests/gpu`` (see docs/reliability.md).

The CPU suite covers the same features with small shapes through the interpreter, where bf16 ``tl.dot`` cannot
run; this module is its bf16, compiled, real-size twin.
"""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn import _compat, window
from swattn.kernels.fwd import attention_forward
from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
OUT_TOL = tolerance_for(BF16)
GRAD_TOL = 3e-2
LSE_ATOL = 2e-3
REF = dict(compute_dtype=torch.float32)


def randn(*shape, dtype=BF16, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def check_lse(name, lse, ref_lse):
    assert not torch.isnan(lse).any(), f"{name}: NaN in LSE"
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), f"{name}: -inf at different rows"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Dense and varlen prefill


DENSE = [
    # batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, sinks
    (1, 4096, 4096, 64, 8, 64, (127, 0), 0.0, True),  # gpt-oss sliding layer
    (1, 4096, 4096, 64, 8, 64, (-1, 0), 0.0, True),  # gpt-oss full layer
    (2, 2048, 2048, 32, 8, 128, (4095, 0), 0.0, False),  # window >= Sk: equals causal
    (1, 3000, 3000, 32, 8, 128, (1023, 0), 0.0, False),
    (2, 1500, 1500, 16, 8, 256, (511, 0), 50.0, False),  # Gemma-2: softcap + window, head_dim 256
    (1, 1000, 2500, 16, 1, 64, (200, 3), 0.0, True),  # MQA, more keys than queries, right side
    (1, 2500, 1000, 32, 2, 128, (-1, 0), 0.0, False),  # Sk < Sq: the top rows see nothing
    (2, 777, 777, 8, 8, 96, (0, 0), 0.0, True),  # window 0: the diagonal only; padded head_dim
    (1, 1234, 1234, 16, 16, 64, (63, 64), 30.0, True),  # bidirectional window, lengths off every block
    (3, 513, 513, 64, 4, 64, (128, 0), 0.0, False),  # GQA 16; window edge one past a block boundary
]


@pytest.mark.parametrize("case", DENSE, ids=lambda c: f"B{c[0]}-Sq{c[1]}-Sk{c[2]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}")
def test_dense(case):
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, with_sinks = case
    q = randn(batch, seqlen_q, heads, head_dim, scale=2.0 if softcap else 1.0)
    k = randn(batch, seqlen_k, kv_heads, head_dim, scale=2.0 if softcap else 1.0)
    v = randn(batch, seqlen_k, kv_heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
    out, lse = swattn.flash_attn_func(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks,
                                      return_softmax_lse=True)
    ref, ref_lse = attention_ref(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)


@pytest.mark.parametrize("window_size", [(127, 0), (-1, 0), (31, 31)])
def test_varlen_with_empty_sequences(window_size):
    lengths_q = [1000, 0, 1, 2047, 0, 300]
    lengths_k = [1000, 5, 1, 2047, 0, 900]  # sequence 5 has more keys than queries
    cu_q = torch.tensor([0] + lengths_q, device=DEVICE).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k, device=DEVICE).cumsum(0).to(torch.int32)
    q = randn(int(cu_q[-1]), 32, 128)
    k, v = randn(int(cu_k[-1]), 4, 128), randn(int(cu_k[-1]), 4, 128)
    sinks = torch.randn(32, device=DEVICE)
    out, lse = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                             window_size=window_size, sinks=sinks, return_softmax_lse=True)
    ref, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, window_size=window_size, sinks=sinks, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)


# ----------------------------------------------------------------------------------------------------------------
# KV cache


def paged_cache(batch, capacity, page_size, kv_heads, head_dim):
    pages_per_seq = -(-capacity // page_size)
    k_cache = randn(batch * pages_per_seq, page_size, kv_heads, head_dim)
    v_cache = randn(batch * pages_per_seq, page_size, kv_heads, head_dim)
    page_table = torch.randperm(batch * pages_per_seq, device=DEVICE, dtype=torch.int32).view(batch, -1)
    return k_cache, v_cache, page_table


@pytest.mark.parametrize("page_size", [1, 16, 64, 256])
@pytest.mark.parametrize("window_size", [(127, 0), (-1, 0)])
@pytest.mark.parametrize("seqlen_q,num_splits", [(1, 0), (1, 3), (4, 0)])
def test_paged_decode_and_extend_with_append(page_size, window_size, seqlen_q, num_splits):
    """gpt-oss layer shapes, 16 sequences of 1..6000 tokens, new k/v appended in the same call."""
    batch, heads, kv_heads, head_dim = 16, 64, 8, 64
    seqlens = torch.randint(0, 6000, (batch,), device=DEVICE, dtype=torch.int32)
    seqlens[:3] = torch.tensor([0, 127, 128], device=DEVICE)  # empty cache; window start on and off block edges
    k_cache, v_cache, page_table = paged_cache(batch, 6000 + seqlen_q, page_size, kv_heads, head_dim)
    q = randn(batch, seqlen_q, heads, head_dim)
    k_new, v_new = randn(batch, seqlen_q, kv_heads, head_dim), randn(batch, seqlen_q, kv_heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    for b in range(batch):
        positions = int(seqlens[b]) + torch.arange(seqlen_q, device=DEVICE)
        pages = page_table[b, positions // page_size].long()
        expected_k[pages, positions % page_size] = k_new[b]
        expected_v[pages, positions % page_size] = v_new[b]
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                              page_table=page_table, causal=True, window_size=window_size,
                                              sinks=sinks, num_splits=num_splits, return_softmax_lse=True)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v), "append wrote the wrong slots"
    ref, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, seqlens + seqlen_q, page_table=page_table,
                                         causal=True, window_size=window_size, sinks=sinks, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("batch, capacity", [(4, 1024), (16, 1024), (4, 4096)])
def test_short_context_full_decode_takes_short_splits(page_size, batch, capacity):
    """Full-attention decode at short contexts: the automatic split count gives one or two 128-key blocks per
    split (the one-stage loop), checked against the reference, with sequences of 0..capacity tokens."""
    from swattn.interface import split_count
    heads, kv_heads, head_dim = 64, 8, 64
    splits = split_count(batch * kv_heads, capacity, torch.cuda.get_device_properties(DEVICE).multi_processor_count)
    assert splits > 1 and -(-capacity // splits) <= 256, splits  # the short-split path on this GPU
    seqlens = torch.randint(1, capacity + 1, (batch,), device=DEVICE, dtype=torch.int32)
    seqlens[:2] = torch.tensor([0, capacity], device=DEVICE)
    k_cache, v_cache, page_table = paged_cache(batch, capacity, page_size, kv_heads, head_dim)
    q = randn(batch, 1, heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=page_table,
                                              causal=True, sinks=sinks, num_splits=0, return_softmax_lse=True)
    ref, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, seqlens, page_table=page_table, causal=True,
                                         sinks=sinks, **REF)
    assert_close("out", out, ref, OUT_TOL)
    check_lse("lse", lse, ref_lse)


@pytest.mark.parametrize("pack_gqa", [None, False])
def test_contiguous_cache_varlen_extend_with_batch_idx(pack_gqa):
    cache_rows, capacity, heads, kv_heads, head_dim = 8, 4000, 32, 8, 128
    k_cache, v_cache = randn(cache_rows, capacity, kv_heads, head_dim), randn(cache_rows, capacity, kv_heads, head_dim)
    cache_batch_idx = torch.tensor([6, 0, 3, 7, 2], device=DEVICE, dtype=torch.int32)
    lengths = [1, 7, 0, 3, 16]
    cu_q = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    seqlens = torch.tensor([3999, 1000, 17, 2500, 64], device=DEVICE, dtype=torch.int32)
    q = randn(int(cu_q[-1]), heads, head_dim)
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, cache_batch_idx=cache_batch_idx,
                                         cu_seqlens_q=cu_q, max_seqlen_q=max(lengths), causal=True,
                                         window_size=(255, 0), softcap=30.0, pack_gqa=pack_gqa)
    ref, _ = attention_kvcache_ref(q, k_cache, v_cache, seqlens, cache_batch_idx=cache_batch_idx, cu_seqlens_q=cu_q,
                                   causal=True, window_size=(255, 0), softcap=30.0, **REF)
    assert_close("out", out, ref, OUT_TOL)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("context", [128, 129, 4097, 131072])
def test_gpt_oss_decode_reads_one_block_and_no_page_before_the_window(page_size, context):
    """At the real decode config (BLOCK_N = 128) a window-128 step visits one block; pages before the window hold
    NaN and garbage indices and the output is unchanged."""
    batch, heads, kv_heads, head_dim, left = 4, 64, 8, 64, 127
    k_cache, v_cache, page_table = paged_cache(batch, context, page_size, kv_heads, head_dim)
    seqlens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    q = randn(batch, 1, heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    ref, _ = attention_kvcache_ref(q, k_cache, v_cache, seqlens, page_table=page_table, causal=True,
                                   window_size=(left, 0), sinks=sinks, **REF)
    first_page = window.first_visible_key(0, 1, context, left) // page_size
    k_cache[page_table[:, :first_page].flatten().long()] = float("nan")
    v_cache[page_table[:, :first_page].flatten().long()] = float("nan")
    page_table[:, :first_page] = 10**8
    scale = head_dim ** -0.5
    out, _, counts = attention_forward(q, k_cache, v_cache, softmax_scale=scale, left=left, right=0, sinks=sinks,
                                       seqlens_k=seqlens, page_table=page_table, pack_gqa=True, count_blocks=True)
    assert_close("out", out, ref, OUT_TOL)
    assert counts.tolist() == [1] * counts.numel(), counts.tolist()
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=page_table,
                                         causal=True, window_size=(left, 0), sinks=sinks)
    assert_close("out (public API)", out, ref, OUT_TOL)


# ----------------------------------------------------------------------------------------------------------------
# Backward


BACKWARD = [
    # batch, seqlen, heads, kv_heads, head_dim, window_size, softcap, sinks
    (1, 2048, 64, 8, 64, (127, 0), 0.0, True),
    (1, 2048, 32, 8, 128, (-1, 0), 0.0, False),
    (2, 1500, 32, 8, 128, (511, 0), 0.0, True),
    (1, 1000, 16, 16, 256, (255, 0), 30.0, False),
    (1, 999, 16, 2, 64, (64, 64), 0.0, True),
]


@pytest.mark.parametrize("case", BACKWARD, ids=lambda c: f"B{c[0]}-S{c[1]}-H{c[2]}/{c[3]}-D{c[4]}-W{c[5]}")
def test_backward(case):
    batch, seqlen, heads, kv_heads, head_dim, window_size, softcap, with_sinks = case
    tensors = [randn(batch, seqlen, h, head_dim) for h in (heads, kv_heads, kv_heads)]
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
    dout = randn(batch, seqlen, heads, head_dim)
    leaves = [t.detach().requires_grad_() for t in tensors] + ([sinks.clone().requires_grad_()] if with_sinks else [])
    out = swattn.flash_attn_func(*leaves[:3], window_size=window_size, softcap=softcap,
                                 sinks=leaves[3] if with_sinks else None)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref_out, _ = attention_ref(*ref_leaves[:3], window_size=window_size, softcap=softcap,
                               sinks=ref_leaves[3] if with_sinks else None, **REF)
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, dout.float())
    for name, grad, ref_grad in zip(("dq", "dk", "dv", "dsinks"), grads, ref_grads):
        assert_close(name, grad, ref_grad, GRAD_TOL)


def test_backward_varlen_with_empty_sequences():
    lengths = [700, 0, 1, 1300]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    tensors = [randn(int(cu[-1]), h, 64) for h in (16, 4, 4)]
    dout = randn(int(cu[-1]), 16, 64)
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = swattn.flash_attn_varlen_func(*leaves, cu, cu, max(lengths), max(lengths), window_size=(127, 0))
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().float().requires_grad_() for t in tensors]
    ref_out, _ = attention_varlen_ref(*ref_leaves, cu, cu, window_size=(127, 0), **REF)
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref_out, ref_leaves, dout.float())):
        assert_close(name, grad, ref_grad, GRAD_TOL)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_float32_fits_shared_memory(head_dim):
    """fp32 tiles are twice bf16's: the configs shrink to fit, forward and backward run and match."""
    tensors = [randn(1, 700, h, head_dim, dtype=torch.float32) for h in (8, 2, 2)]
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = swattn.flash_attn_func(*leaves, causal=True)
    ref = attention_ref(*tensors, causal=True, **REF)[0]
    assert_close("out", out, ref, 3e-3)  # TF32 tensor cores round fp32 operands
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().requires_grad_() for t in tensors]
    ref_grads = torch.autograd.grad(attention_ref(*ref_leaves, causal=True, **REF)[0], ref_leaves, dout)
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, grad, ref_grad, 1e-2)


# ----------------------------------------------------------------------------------------------------------------
# Determinism: repeated runs on the same inputs are bitwise identical (no atomics anywhere, fixed split merge order)


def _repeat_equal(fn, runs=5):
    first = fn()
    for _ in range(runs - 1):
        again = fn()
        for a, b in zip(first, again):
            assert torch.equal(a, b), "results differ between runs"


def test_forward_is_deterministic():
    q, k, v = randn(2, 3000, 64, 64), randn(2, 3000, 8, 64), randn(2, 3000, 8, 64)
    sinks = torch.randn(64, device=DEVICE)
    _repeat_equal(lambda: swattn.flash_attn_func(q, k, v, window_size=(127, 0), sinks=sinks,
                                                 return_softmax_lse=True))
    _repeat_equal(lambda: swattn.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True))


def test_split_kv_decode_is_deterministic():
    k_cache, v_cache, page_table = paged_cache(4, 65536, 16, 8, 64)
    seqlens = torch.tensor([65536, 1, 30000, 777], device=DEVICE, dtype=torch.int32)
    q = randn(4, 1, 64, 64)
    _repeat_equal(lambda: swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                                         page_table=page_table, causal=True, num_splits=0,
                                                         return_softmax_lse=True))


def test_backward_is_deterministic():
    tensors = [randn(1, 4096, h, 128) for h in (32, 8, 8)]
    dout = randn(1, 4096, 32, 128)
    sinks = torch.randn(32, device=DEVICE)

    def grads():
        leaves = [t.detach().requires_grad_() for t in tensors] + [sinks.clone().requires_grad_()]
        out = swattn.flash_attn_func(*leaves[:3], window_size=(1023, 0), sinks=leaves[3])
        return torch.autograd.grad(out, leaves, dout)

    _repeat_equal(grads)


def eager_and_replayed(step, k_cache, v_cache) -> tuple[list, list]:
    """``step(k_cache, v_cache)`` (a list of results that also appends to the caches) run eagerly on one copy of
    the caches and replayed from a CUDA graph on another (compiled first, outside the capture): the eager and the
    replayed results, each followed by its two caches."""
    caches = (k_cache.clone(), v_cache.clone())
    eager = list(step(*caches)) + list(caches)
    step(k_cache.clone(), v_cache.clone())  # compile outside the capture
    graph_caches = (k_cache.clone(), v_cache.clone())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = list(step(*graph_caches))
    graph.replay()
    torch.cuda.synchronize()
    return eager, replayed + list(graph_caches)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_programmatic_dependent_launch_gives_the_same_bits(monkeypatch, num_splits):
    """Programmatic dependent launch (the default on Hopper; SWATTN_PDL=0 at import turns it off): append,
    attention and split-KV combine launched with PDL, back to back and captured in a CUDA graph, give exactly the
    results and cache contents of ordinary launches."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs Hopper or newer")
    batch, heads, kv_heads, head_dim, page_size = 16, 64, 8, 64, 16
    seqlens = torch.randint(200, 5000, (batch,), device=DEVICE, dtype=torch.int32)
    q = randn(batch, 1, heads, head_dim)
    k_new, v_new = randn(batch, 1, kv_heads, head_dim), randn(batch, 1, kv_heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    k_cache, v_cache, page_table = paged_cache(batch, 5001, page_size, kv_heads, head_dim)

    def step(k_cache, v_cache):
        results = []
        for window_size in [(127, 0), (-1, 0)]:  # a sliding and a full layer, back to back
            results += swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                                      page_table=page_table, causal=True, window_size=window_size,
                                                      sinks=sinks, num_splits=num_splits, return_softmax_lse=True)
        return results

    caches = {}
    for pdl in (False, True):
        monkeypatch.setattr(_compat, "PDL", pdl)
        eager, replayed = eager_and_replayed(step, k_cache, v_cache)
        for a, b in zip(eager, replayed):
            assert torch.equal(a, b), f"PDL={pdl}: graph replay differs from the eager call"
        caches[pdl] = eager
    for a, b in zip(caches[False], caches[True]):
        assert torch.equal(a, b), "PDL launches changed a result or the cache"


@pytest.mark.parametrize("page_size", [1, 16, None], ids=["page1", "page16", "contiguous-batch-idx"])
@pytest.mark.parametrize("seqlen_q, num_splits, pack_gqa", [(1, 0, None), (1, 3, None), (4, 0, None), (3, 2, False)])
def test_fused_append_gives_the_same_bits(monkeypatch, page_size, seqlen_q, num_splits, pack_gqa):
    """swattn.ops.FUSED_APPEND (experimental: the attention programs write the new tokens they read, no append
    launch) against the append launch: the same output and LSE bits and the same cache, a sliding and a full
    layer back to back, eager and replayed from a CUDA graph."""
    batch, heads, kv_heads, head_dim = 16, 64, 8, 64
    seqlens = torch.randint(0, 5000, (batch,), device=DEVICE, dtype=torch.int32)
    seqlens[:3] = torch.tensor([0, 127, 128], device=DEVICE)
    q = randn(batch, seqlen_q, heads, head_dim)
    k_new, v_new = randn(batch, seqlen_q, kv_heads, head_dim), randn(batch, seqlen_q, kv_heads, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    if page_size is None:
        k_cache, v_cache = randn(batch + 2, 5000 + seqlen_q, kv_heads, head_dim), randn(
            batch + 2, 5000 + seqlen_q, kv_heads, head_dim)
        layout = dict(cache_batch_idx=torch.randperm(batch + 2, device=DEVICE)[:batch].to(torch.int32))
    else:
        k_cache, v_cache, page_table = paged_cache(batch, 5000 + seqlen_q, page_size, kv_heads, head_dim)
        layout = dict(page_table=page_table)

    def step(k_cache, v_cache):
        results = []
        for window_size in [(127, 0), (-1, 0)]:
            results += swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                                      causal=True, window_size=window_size, sinks=sinks,
                                                      num_splits=num_splits, pack_gqa=pack_gqa,
                                                      return_softmax_lse=True, **layout)
        return results

    results = {}
    for fused in (False, True):
        monkeypatch.setattr(swattn.ops, "FUSED_APPEND", fused)
        eager, replayed = eager_and_replayed(step, k_cache, v_cache)
        for a, b in zip(eager, replayed):
            assert torch.equal(a, b), f"fused={fused}: graph replay differs from the eager call"
        results[fused] = eager
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a, b), "the fused append changed a result or the cache"


@pytest.mark.parametrize("head_dim, heads", [(64, 64), (128, 32)])
def test_edge_only_masking_gives_the_same_bits(head_dim, heads):
    """FwdConfig.mask_edges_only (shipped for D64 small windows, with a register cap) against the single loop that
    masks every block, compiled, bf16, window (127, 0) prefill with PackGQA and sinks, and a window (40, 3) without
    packing."""
    from dataclasses import replace

    from swattn.kernels.configs import forced_config, forward_config
    q, k, v = randn(2, 3000, heads, head_dim), randn(2, 3000, 8, head_dim), randn(2, 3000, 8, head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    for window_size, pack_gqa in [((127, 0), True), ((40, 3), False)]:
        rows = 3000 * heads // 8 if pack_gqa else 3000
        config = replace(forward_config(head_dim, rows, pack_gqa, sum(window_size) + 1), single_loop=True,
                         mask_edges_only=False, maxnreg=None)
        results = []
        for variant in (config, replace(config, mask_edges_only=True), replace(config, mask_edges_only=True,
                                                                                 maxnreg=96)):
            with forced_config(variant):
                results.append(swattn.flash_attn_func(q, k, v, window_size=window_size, sinks=sinks,
                                                      pack_gqa=pack_gqa, return_softmax_lse=True))
        for other in results[1:]:
            assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1]), window_size


def test_direct_launches_give_the_same_bits(monkeypatch):
    """Repeated eager calls launch the compiled kernels directly (swattn/kernels/_launch.py), skipping Triton's
    per-call specialization: decode with append (window and split-KV with its combine), a prefill with its
    non-finite redo pass, and the backward give exactly the plain launches' results, also inside a CUDA graph; a
    misaligned q (another specialization) gets its own plan and the same result."""
    from swattn.kernels import _launch, fwd, gluon_fwd

    # The Triton kernels' direct launch is under test (the Gluon kernel's is tests/gpu/test_gluon_launch_bf16.py's): its
    # prefill, aligned or not, stays on them.
    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", "0")
    batch, heads, kv_heads, head_dim, page_size = 16, 64, 8, 64, 16
    seqlens = torch.randint(200, 3000, (batch,), device=DEVICE, dtype=torch.int32)
    q, k_new, v_new = randn(batch, 1, heads, head_dim), randn(batch, 1, kv_heads, head_dim), randn(batch, 1, kv_heads,
                                                                                                      head_dim)
    sinks = torch.randn(heads, device=DEVICE)
    k_cache, v_cache, page_table = paged_cache(batch, 3001, page_size, kv_heads, head_dim)
    qp, kp, vp = randn(2, 1000, heads, head_dim), randn(2, 1000, kv_heads, head_dim), randn(2, 1000, kv_heads, head_dim)
    storage = torch.empty(qp.numel() + 1, device=DEVICE, dtype=BF16)
    qp_misaligned = storage[1:].view(qp.shape)
    qp_misaligned.copy_(qp)
    dout = randn(*qp.shape)

    def step(k_cache, v_cache):
        results = []
        for _ in range(3):  # the first call plans and launches through Triton, the next ones directly
            for window_size, num_splits in [((127, 0), 0), ((-1, 0), 4)]:
                results += swattn.flash_attn_with_kvcache(
                    q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens, page_table=page_table,
                    causal=True, window_size=window_size, sinks=sinks, num_splits=num_splits, return_softmax_lse=True)
            for query in (qp, qp_misaligned):
                results.append(swattn.flash_attn_func(query, kp, vp, causal=True, window_size=(127, 0), sinks=sinks))
        return results

    def gradients():
        leaves = [t.detach().requires_grad_() for t in (qp, kp, vp)]
        results = []
        for _ in range(3):
            out = swattn.flash_attn_func(*leaves, window_size=(127, 0), sinks=sinks)
            results += torch.autograd.grad(out, leaves, dout)
        return results

    outcomes = {}
    for direct in (False, True):
        monkeypatch.setattr(_launch, "DIRECT_LAUNCH", direct)
        _launch.clear_plans()
        eager, replayed = eager_and_replayed(step, k_cache, v_cache)
        outcomes[direct] = eager + replayed + gradients()
        # The Gluon kernel's launches (the prefill's main pass where it serves it) go through Triton's JIT.
        launches = [plan.main for plan in fwd.plans() if plan.launches and not plan.use_gluon]
        assert all(launch.direct_launches > 0 for launch in launches) == direct
    for a, b in zip(outcomes[False], outcomes[True], strict=True):
        assert torch.equal(a, b), "a direct launch changed a result or the cache"
    assert torch.equal(outcomes[True][4], outcomes[True][5])  # results 4 and 5: q aligned and misaligned


@pytest.mark.parametrize("gluon, lazy_rescale", [("0", 0.0), ("1", 0.0), ("1", 8.0)],
                         ids=["triton", "gluon", "gluon-lazy-rescale"])
def test_kept_isolation_buffers_isolate_every_call(monkeypatch, gluon, lazy_rescale):
    """The non-finite isolation's flags and raised flag are kept between calls (``fwd._isolation_buffers``): a 4K
    window prefill (redo pass behind the raised flag; main pass Triton's or the Gluon kernel's) with a value NaN
    and without, alternating, back to back on the current stream and on a side stream, then replayed from a CUDA
    graph (fresh buffers): every poisoned call keeps the NaN in exactly the rows whose window holds it, every
    clean call gives the clean bits, and the raised flag is zero again after each call (the redo pass resets it).
    With the Gluon kernel's lazy rescale the redo pass keeps the running maxima as it does (session 7 found rows
    whose masked block loads the NaN's key flagged, redone with eager rescaling, and so changed in their last bits)."""
    from swattn.kernels import _launch, fwd, gluon_fwd

    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", gluon)
    monkeypatch.setattr(gluon_fwd, "RESCALE_THRESHOLD", lazy_rescale)
    _launch.clear_plans()
    heads, kv_heads, head_dim, seqlen, key, left = 64, 8, 64, 4096, 2000, 127
    q, k, v = randn(1, seqlen, heads, head_dim), randn(1, seqlen, kv_heads, head_dim), randn(1, seqlen, kv_heads,
                                                                                            head_dim)
    poisoned = v.clone()
    poisoned[0, key, 3] = float("nan")
    clean = swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
    plan = next(p for p in fwd.plans() if p.out_shape == tuple(q.shape) and p.launches)
    assert plan.isolate and not plan.scan_flags, "the case must take the raised-flag redo"
    if gluon == "1" and not plan.use_gluon:
        pytest.skip("the Gluon kernel does not serve this case here (needs sm_90)")
    seeing = torch.zeros(seqlen, heads, dtype=torch.bool, device=DEVICE)
    seeing[key:key + left + 1, 3 * (heads // kv_heads):4 * (heads // kv_heads)] = True

    def check(out, values):
        if values is v:
            assert torch.equal(out, clean)
        else:
            assert torch.equal(out[0][~seeing], clean[0][~seeing]), "a row that cannot see the NaN changed"
            assert torch.isnan(out[0][seeing]).any(-1).all(), "a row that sees the NaN stayed finite"

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # a non-blocking stream: after the inputs are written
    for stream in (torch.cuda.current_stream(), side):
        with torch.cuda.stream(stream):
            outs = [(swattn.flash_attn_func(q, k, values, causal=True, window_size=(left, 0)), values)
                    for values in (poisoned, v, poisoned, poisoned, v)]
            raised = fwd._isolation_buffers(q.device, plan.flag_rows)[1]
        stream.synchronize()
        for out, values in outs:
            check(out, values)
        assert raised.tolist() == [0, 0]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = [(swattn.flash_attn_func(q, k, values, causal=True, window_size=(left, 0)), values)
                    for values in (poisoned, v)]
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for out, values in captured:
            check(out, values)


class _ScratchNotKept:
    """Stands in for ``_compat.TRITON_SCRATCH`` where a module sets it: the setting is dropped, so every descriptor
    launch gets its own scratch from the allocator (Triton's default)."""

    stream = None

    def __setattr__(self, name, value):
        pass


def test_kept_triton_scratch_gives_the_same_bits(monkeypatch):
    """Descriptor (TMA) launches take Triton's scratch from one buffer kept between calls (``_compat.TRITON_SCRATCH``:
    the backward's dQ and dK/dV launches, the forward's main and redo launches): D=128 causal and W(127, 0) forwards
    and backwards at two sizes, alternating (the buffer grows and is reused), back to back on the current stream,
    give the bits of launches that each allocate their own."""
    from swattn.kernels import bwd, fwd

    shapes = [(1, 2048, 32, 8, 128), (2, 1024, 32, 8, 128)]
    inputs = [(randn(b, s, h, d), randn(b, s, hk, d), randn(b, s, hk, d), randn(b, s, h, d))
              for b, s, h, hk, d in shapes]

    def run():
        results = []
        for _ in range(2):
            for q, k, v, dout in inputs:
                for window_size in ((-1, 0), (127, 0)):
                    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                    out = swattn.flash_attn_func(*leaves, window_size=window_size)
                    results += [out.detach(), *torch.autograd.grad(out, leaves, dout)]
        return results

    kept = run()
    assert any(plan.use_tma for plan in fwd.plans())
    assert any(backward.use_tma for plan in fwd.plans() for backward in plan.backward_plans.values())
    monkeypatch.setattr(bwd, "TRITON_SCRATCH", _ScratchNotKept())
    monkeypatch.setattr(fwd, "TRITON_SCRATCH", _ScratchNotKept())
    fresh = run()
    for a, b in zip(kept, fresh, strict=True):
        assert torch.equal(a, b), "a kept Triton scratch changed a result"


@pytest.mark.parametrize("entry", ["gluon prefill", "split decode with append", "graph-captured decode"])
def test_out_argument_gets_the_same_bits(entry):
    """``out=`` at real sizes: the kernels (the Gluon prefill where it serves, the split decode and its merge, a
    captured graph's replays) write the given tensor with the bits of a call without it."""
    torch.manual_seed(11)
    if entry == "gluon prefill":
        q, k, v = randn(1, 4096, 64, 64), randn(1, 4096, 8, 64), randn(1, 4096, 8, 64)
        sinks = torch.randn(64, device=DEVICE)
        call = lambda **extra: swattn.flash_attn_func(q, k, v, causal=True, window_size=(127, 0), sinks=sinks,  # noqa: E731
                                                     **extra)
        shape = q.shape
    else:
        pages, page = 4096, 16
        k_cache, v_cache = randn(pages, page, 8, 64), randn(pages, page, 8, 64)
        table = torch.randperm(pages, device=DEVICE)[:16 * 256].view(16, 256).to(torch.int32)
        lens = torch.randint(1000, 4000, (16,), device=DEVICE, dtype=torch.int32)
        q, k_new, v_new = randn(16, 1, 64, 64), randn(16, 1, 8, 64), randn(16, 1, 8, 64)

        def call(**extra):  # the same cache state each time: the append writes the same tokens at the same slots
            return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=lens,
                                                  page_table=table, causal=True, **extra)
        shape = q.shape
    expected = call()
    for _ in range(3):  # run, recorded, replayed from the plan
        out = torch.full(shape, float("nan"), device=DEVICE, dtype=BF16)
        assert call(out=out) is out
        assert torch.equal(out, expected), entry
    if entry == "graph-captured decode":
        out = torch.full(shape, float("nan"), device=DEVICE, dtype=BF16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call(out=out)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call(out=out)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
