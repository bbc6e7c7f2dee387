"""bf16 at real sizes on a GPU (skipped without one): the serving step of tests/test_serving.py at gpt-oss layer
shapes. Speculative verify (k = 2, 4, 8 drafts per sequence, dense and varlen, appended in the call, sinks) and
decode against the float32 reference, with every page before ``first_readable_page`` poisoned (NaN data, table
entries just past either end of a NaN-guarded pool): outputs bit-identical to the unpoisoned run. Verify takes the
PackGQA path automatically (bitwise equal to ``pack_gqa=True``). A verify step's non-finite isolation modes give
the same bits.

Run with ``python -m pytest -q tests/gpu/test_serving_bf16.py``.
"""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.reference import append_kv_ref, attention_kvcache_ref
from swattn.testing import assert_close, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
BATCH, HEADS, KV_HEADS, HEAD_DIM = 16, 64, 8, 64
LONGEST = 5000  # cached tokens per sequence, at most
LSE_ATOL = 2e-3


def guarded(pool: torch.Tensor) -> torch.Tensor:
    """A copy of ``pool`` inside a buffer with one NaN page before and one after (see tests/test_serving.py)."""
    buffer = torch.full((pool.shape[0] + 2, *pool.shape[1:]), float("nan"), dtype=pool.dtype, device=pool.device)
    buffer[1:-1] = pool
    return buffer[1:-1]


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("window_size", [(127, 0), (-1, 0)], ids=["W127_0", "full"])
@pytest.mark.parametrize("tokens", [1, 2, 4, 8, "varlen"])
def test_verify_and_decode_never_read_pages_before_first_readable_page(page_size, window_size, tokens):
    generator = torch.Generator(device="cpu").manual_seed(page_size * 100 + (tokens if tokens != "varlen" else 9))
    # A CPU generator draws CPU tensors: the suite runs with cuda as torch's default device.
    cache_seqlens = torch.randint(0, LONGEST, (BATCH,), generator=generator, dtype=torch.int32, device="cpu")
    cache_seqlens[:3] = torch.tensor([0, 126, 128], device="cpu")  # nothing to free; window start either side of edges
    varlen = tokens == "varlen"
    new = (torch.randint(2, 9, (BATCH,), generator=generator, device="cpu") if varlen
           else torch.full((BATCH,), tokens, device="cpu"))
    cache_seqlens, new = cache_seqlens.to(DEVICE), new.to(DEVICE, torch.int32)
    totals = cache_seqlens + new
    max_pages = -(-(LONGEST + 8) // page_size)
    num_pages = BATCH * max_pages + 2
    k_cache = guarded(torch.randn(num_pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16))
    v_cache = guarded(torch.randn(num_pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16))
    table = torch.randperm(num_pages, device=DEVICE)[:BATCH * max_pages].view(BATCH, max_pages).to(torch.int32)
    total_q = int(new.sum())
    if varlen:
        cu = torch.nn.functional.pad(new.cumsum(0), (1, 0)).to(torch.int32)
        q = torch.randn(total_q, HEADS, HEAD_DIM, device=DEVICE).to(BF16)
        k_new, v_new = (torch.randn(total_q, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2))
        shape_kwargs = dict(cu_seqlens_q=cu, max_seqlen_q=int(new.max()))
    else:
        cu = None
        q = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device=DEVICE).to(BF16)
        k_new, v_new = (torch.randn(BATCH, tokens, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2))
        shape_kwargs = {}
    sinks = torch.randn(HEADS, device=DEVICE)

    first = swattn.first_readable_page(cache_seqlens, window_size, page_size, new_tokens=new)
    assert first.device == cache_seqlens.device and first.dtype == torch.int32
    if window_size[0] >= 0:
        assert int(first.max()) > 0
    # The poisoned copy: pages before the answer and past the last page are NaN, their entries out of the pool.
    k_bad, v_bad, table_bad = guarded(k_cache), guarded(v_cache), table.clone()
    pages = torch.arange(max_pages, device=DEVICE)[None, :]
    dead = (pages < first[:, None].long()) | (pages >= (-(-totals // page_size))[:, None].long())
    k_bad[table[dead].long()] = float("nan")
    v_bad[table[dead].long()] = float("nan")
    table_bad[dead] = torch.where(pages.expand_as(dead)[dead] % 2 == 0, num_pages, -1).to(torch.int32)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, page_table=table, cu_seqlens_q=cu)

    kwargs = dict(k=k_new, v=v_new, cache_seqlens=cache_seqlens, causal=True, window_size=window_size, sinks=sinks,
                  return_softmax_lse=True, **shape_kwargs)
    out_clean, lse_clean = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, page_table=table, **kwargs)
    out, lse = swattn.flash_attn_with_kvcache(q, k_bad, v_bad, page_table=table_bad, check_inputs=False, **kwargs)
    assert torch.equal(out, out_clean) and torch.equal(lse, lse_clean)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v), "append wrote the wrong slots"
    packed, _ = swattn.flash_attn_with_kvcache(q, k_bad, v_bad, page_table=table_bad, check_inputs=False,
                                               pack_gqa=True, **kwargs)
    assert torch.equal(packed, out), "verify must take the PackGQA path automatically"
    ref, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, totals, page_table=table, cu_seqlens_q=cu,
                                         causal=True, window_size=window_size, sinks=sinks,
                                         compute_dtype=torch.float32)
    assert_close("out", out, ref, tolerance_for(BF16))
    assert not torch.isnan(lse).any()
    torch.testing.assert_close(lse, ref_lse, atol=LSE_ATOL, rtol=1e-3)


@pytest.mark.parametrize("tokens", [2, 4, 8])
def test_verify_isolation_modes_give_the_same_bits(monkeypatch, tokens):
    """A B=16 verify step with a NaN in the value row of the first key of row 0's window (seen by no other row of
    the tile): the redo behind the zeroed raised flag, the scanning redo and the guarded one pass (fwd.GUARD_ONE_PASS,
    the default at B=16; also behind a check of the product's result, fwd.GUARD_CHECKS_OUTPUT) give the same bits,
    NaN exactly in the rows that see the key; on clean data the guarded one pass gives the redo's bits."""
    from swattn.kernels import fwd

    context, page_size = 1000, 16
    pages = -(-context // page_size)
    k_cache = torch.randn(BATCH * pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(BATCH * pages, device=DEVICE).view(BATCH, pages).to(torch.int32)
    seqlens = torch.full((BATCH,), context, device=DEVICE, dtype=torch.int32)
    q = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    sinks = torch.randn(HEADS, device=DEVICE)
    key = context - tokens - 127  # row 0 sees keys [key, context - tokens]; rows 1.. start later
    poisoned = v_cache.clone()
    poisoned[table[3, key // page_size].long(), key % page_size, 5, 7] = float("nan")
    kwargs = dict(cache_seqlens=seqlens, page_table=table, causal=True, window_size=(127, 0), sinks=sinks)
    modes = {"zeroed flag": (0, 0, False), "scanning redo": (None, 0, False), "guard one pass": (None, 1 << 30, False),
             "guard checks output": (None, 1 << 30, True)}
    outs = {}
    for name, (scan, guard, checks_output) in modes.items():
        monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", scan)
        monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", guard)
        monkeypatch.setattr(fwd, "GUARD_CHECKS_OUTPUT", checks_output)
        outs[name] = (swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs),
                      swattn.flash_attn_with_kvcache(q, k_cache, poisoned, **kwargs))
    clean, dirty = outs["zeroed flag"]
    for name, (clean_mode, dirty_mode) in outs.items():
        assert torch.equal(clean_mode, clean), f"{name}: clean data, other bits"
        torch.testing.assert_close(dirty_mode, dirty, rtol=0, atol=0, equal_nan=True, msg=f"{name}: other bits")
    seeing = torch.zeros(BATCH, tokens, HEADS, dtype=torch.bool, device=DEVICE)
    seeing[3, 0, 5 * (HEADS // KV_HEADS):6 * (HEADS // KV_HEADS)] = True
    assert torch.isnan(dirty[seeing]).any(-1).all() and not torch.isnan(dirty[~seeing]).any()
    assert torch.equal(dirty[~seeing], clean[~seeing])


@pytest.mark.parametrize("tokens, warps", [(2, 8), (4, 8), (4, 4), (8, 8)])
def test_head_block_verify_matches_the_reference_and_isolates(monkeypatch, tokens, warps):
    """FwdConfig.head_block (a 128-key block ending at the tile's last key and a 16-key block before it) on a B=16
    W(127,0) verify step with the fused append: the reference's output and LSE, the cache written right, and with a
    NaN in the value row of the key only position 0 sees (the guarded one pass at up to 64 rows): NaN exactly in
    the rows that see it, the other rows' bits unchanged."""
    from swattn import ops
    from swattn.kernels import fwd
    from swattn.kernels.configs import FwdConfig, forced_config

    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_ROWS", 64)
    context, page_size = 1000, 16
    pages = -(-(context + tokens) // page_size)
    k_cache = torch.randn(BATCH * pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(BATCH * pages, device=DEVICE).view(BATCH, pages).to(torch.int32)
    seqlens = torch.full((BATCH,), context, device=DEVICE, dtype=torch.int32)
    q = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    k_new, v_new = (torch.randn(BATCH, tokens, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2))
    sinks = torch.randn(HEADS, device=DEVICE)
    config = FwdConfig(max(16, 8 * tokens), 128, warps, 1, single_loop=True, head_block=16)
    kwargs = dict(k=k_new, v=v_new, cache_seqlens=seqlens, page_table=table, causal=True, window_size=(127, 0),
                  sinks=sinks, return_softmax_lse=True)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    append_kv_ref(expected_k, expected_v, k_new, v_new, seqlens, page_table=table)
    key = context - 127  # position 0 sees keys [key, context]; the other positions start later
    poisoned = v_cache.clone()
    poisoned[table[3, key // page_size].long(), key % page_size, 5, 7] = float("nan")
    with forced_config(config):
        out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
        dirty, _ = swattn.flash_attn_with_kvcache(q, k_cache.clone(), poisoned, **kwargs)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v), "append wrote the wrong slots"
    ref, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, seqlens + tokens, page_table=table, causal=True,
                                         window_size=(127, 0), sinks=sinks, compute_dtype=torch.float32)
    assert_close("out", out, ref, tolerance_for(BF16))
    torch.testing.assert_close(lse, ref_lse, atol=LSE_ATOL, rtol=1e-3)
    seeing = torch.zeros(BATCH, tokens, HEADS, dtype=torch.bool, device=DEVICE)
    seeing[3, 0, 5 * (HEADS // KV_HEADS):6 * (HEADS // KV_HEADS)] = True
    assert torch.isnan(dirty[seeing]).any(-1).all() and not torch.isnan(dirty[~seeing]).any()
    assert torch.equal(dirty[~seeing], out[~seeing])


@pytest.mark.parametrize("tokens", [1, 4], ids=["full-decode", "full-verify4"])
def test_split_launch_preload_and_early_merge_dependents_give_the_same_bits(monkeypatch, tokens):
    """The split-launch experiments of scripts/gpu_probe.py fixed_costs change no bit, eagerly and in a replayed
    CUDA graph: fwd.PRELOAD_L2 = 1 / 2 on split launches (PRELOAD_L2_SPLITS), the merge letting the next kernel
    launch before its own wait (combine.EARLY_DEPENDENTS), the split launch letting the merge launch only at its
    programs' ends or their loops' ends (fwd.SPLIT_LATE_DEPENDENTS 1 / 2), alone and together; and they match the
    reference. Full attention, B = 4, 6000 cached tokens, page 16, sinks, the automatic split count; two
    consecutive steps appending into the same cache (the second reads the token the first wrote, launched right
    behind the first's merge)."""
    from swattn import ops
    from swattn.kernels import combine, fwd
    from swattn.kernels._launch import clear_plans

    monkeypatch.setattr(ops, "FUSED_APPEND", False)  # the append launch, then the split launch and its merge
    batch, context, page_size = 4, 6000, 16
    pages = -(-(context + 2 * tokens) // page_size)
    k_cache = torch.randn(batch * pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * pages, device=DEVICE).view(batch, pages).to(torch.int32)
    seqlens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    qs = [torch.randn(batch, tokens, HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2)]
    news = [[torch.randn(batch, tokens, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2)]
            for _ in range(2)]
    sinks = torch.randn(HEADS, device=DEVICE)

    def steps(k_run, v_run):
        return [swattn.flash_attn_with_kvcache(q, k_run, v_run, k=k_new, v=v_new, cache_seqlens=seqlens + step * tokens,
                                               page_table=table, causal=True, sinks=sinks)
                for step, (q, (k_new, v_new)) in enumerate(zip(qs, news))]

    results = {}
    # (preload, the merge's early dependents, the split launch's late dependents)
    for preload, early, late in ((0, False, False), (0, True, False), (1, True, False), (2, True, False),
                                 (2, False, False), (0, False, True), (1, True, True), (0, False, 2)):
        monkeypatch.setattr(fwd, "PRELOAD_L2_SPLITS", preload > 0)
        monkeypatch.setattr(fwd, "PRELOAD_L2", preload)
        monkeypatch.setattr(combine, "EARLY_DEPENDENTS", early)
        monkeypatch.setattr(fwd, "SPLIT_LATE_DEPENDENTS", int(late))
        clear_plans()
        k_run, v_run = k_cache.clone(), v_cache.clone()
        eager = steps(k_run, v_run)
        # The same two steps captured and replayed (from the cache as it was): PDL edges between graph nodes.
        k_graph, v_graph = k_cache.clone(), v_cache.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            steps(k_graph.clone(), v_graph.clone())  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = steps(k_graph, v_graph)
        graph.replay()
        torch.cuda.synchronize()
        results[preload, early, late] = (eager, k_run, v_run, [out.clone() for out in captured], k_graph, v_graph)
    clear_plans()
    base = results[0, False, False]
    ref, _ = attention_kvcache_ref(qs[1], base[1], base[2], seqlens + 2 * tokens, page_table=table, causal=True,
                                   sinks=sinks, compute_dtype=torch.float32)
    for key, (eager, k_run, v_run, replayed, k_graph, v_graph) in results.items():
        assert all(torch.equal(a, b) for a, b in zip(base[0], eager)), f"{key}: other bits"
        assert all(torch.equal(a, b) for a, b in zip(base[0], replayed)), f"{key}: other bits replayed"
        assert torch.equal(k_run, base[1]) and torch.equal(v_run, base[2]), f"{key}: other cache"
        assert torch.equal(k_graph, base[1]) and torch.equal(v_graph, base[2]), f"{key}: other cache replayed"
        assert_close("out", eager[1], ref, tolerance_for(BF16))


@pytest.mark.parametrize("window_size, tokens, padded", [((127, 0), 1, False), ((127, 0), 4, False),
                                                         ((127, 0), 4, True), ((-1, 0), 1, False)],
                         ids=["W127_0-decode", "W127_0-verify4", "W127_0-verify4-64-rows", "full-decode"])
def test_l2_preload_and_padded_verify_tiles_give_the_same_bits(monkeypatch, request, window_size, tokens,
                                                                padded):
    """fwd.PRELOAD_L2 (L2 prefetches before the wait for the previous kernel) changes no bit: two consecutive
    steps appending into the same cache (the second reads the token the first wrote, launched right behind it) under
    PRELOAD_L2 = 1 and 2 against 0, outputs and caches; configs.VERIFY_PADDED_ROWS (k = 4 in a 64-row tile) matches
    the reference."""
    from swattn import ops
    from swattn.kernels import configs, fwd
    from swattn.kernels._launch import clear_plans

    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    if padded:  # not part of a plan's key: plans made before (or with it) must not be reused
        monkeypatch.setattr(configs, "VERIFY_PADDED_ROWS", {32: 64})
        clear_plans()
        request.addfinalizer(clear_plans)
    context, page_size = 3000, 16
    pages = -(-(context + 2 * tokens) // page_size)
    k_cache = torch.randn(BATCH * pages, page_size, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(BATCH * pages, device=DEVICE).view(BATCH, pages).to(torch.int32)
    seqlens = torch.full((BATCH,), context, device=DEVICE, dtype=torch.int32)
    qs = [torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2)]
    news = [[torch.randn(BATCH, tokens, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16) for _ in range(2)]
            for _ in range(2)]
    sinks = torch.randn(HEADS, device=DEVICE)
    results = {}
    for preload in (0, 1, 2):
        monkeypatch.setattr(fwd, "PRELOAD_L2", preload)
        k_run, v_run = k_cache.clone(), v_cache.clone()
        outs = [swattn.flash_attn_with_kvcache(q, k_run, v_run, k=k_new, v=v_new, cache_seqlens=seqlens + step * tokens,
                                               page_table=table, causal=True, window_size=window_size, sinks=sinks)
                for step, (q, (k_new, v_new)) in enumerate(zip(qs, news))]
        results[preload] = (outs, k_run, v_run)
    outs, k_run, v_run = results[0]
    for preload in (1, 2):
        other, k_other, v_other = results[preload]
        assert all(torch.equal(a, b) for a, b in zip(outs, other)), f"PRELOAD_L2={preload}: other bits"
        assert torch.equal(k_other, k_run) and torch.equal(v_other, v_run), f"PRELOAD_L2={preload}: other cache"
    ref, _ = attention_kvcache_ref(qs[1], k_run, v_run, seqlens + 2 * tokens, page_table=table, causal=True,
                                   window_size=window_size, sinks=sinks, compute_dtype=torch.float32)
    assert_close("out", outs[1], ref, tolerance_for(BF16))
