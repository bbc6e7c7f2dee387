"""The serving step through ``flash_attn_with_kvcache``: decode, speculative verify (2-8 drafts per sequence, dense
``[B, k, H, D]`` and varlen ``cu_seqlens_q``) and extend, each appending its tokens, against the float64 reference;
and ``first_readable_page``'s promise to an engine: every page before its answer may be freed (NaN data, page-table
entry pointing outside the pool) or handed to another sequence without changing any output bit.

Triton kernels through the interpreter (``tests/conftest.py``): H = 8 query heads over Hk = 2 (GQA 4), D = 16.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from swattn import first_readable_page, flash_attn_with_kvcache
from swattn.interface import _auto_pack_gqa
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.reference import append_kv_ref, attention_kvcache_ref, attention_ref
from swattn.testing import assert_close, tolerance_for

H, HK, D = 8, 2, 16
LSE_TOL = 1e-4
# 64-key blocks: a third of the interpreter's time with its pinned 16 x 16 config, and a window's first block
# straddles its start (masked in the load), as on the GPU.
BLOCK64 = FwdConfig(64, 64, 4, 1)


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def draw(generator: torch.Generator, low: int, high: int, count: int) -> torch.Tensor:
    """``count`` int32 draws in ``[low, high)`` from a CPU ``generator``, on torch's default device (cuda when the
    suite runs with ``SWATTN_TEST_DEVICE=cuda``: a CPU generator must draw on the CPU)."""
    return torch.randint(low, high, (count,), generator=generator, dtype=torch.int32, device="cpu").to(
        torch.get_default_device())


def guarded(pool: torch.Tensor) -> torch.Tensor:
    """A copy of ``pool`` ``[num_pages, page_size, Hk, D]`` that is a view into a buffer with one NaN page before
    and one after: a kernel that follows a table entry of -1 or ``num_pages`` (``bad_entries``) reads NaN and the
    comparisons fail, instead of reading outside the allocation."""
    buffer = torch.full((pool.shape[0] + 2, *pool.shape[1:]), float("nan"), dtype=pool.dtype)
    buffer[1:-1] = pool
    return buffer[1:-1]


def bad_entries(pool: torch.Tensor) -> tuple[int, int]:
    """Page-table entries that point just past either end of the pool (at the NaN guard pages)."""
    return (pool.shape[0], -1)


def paged_cache(batch: int, capacity: int, page_size: int, dtype):
    """A pool with spare pages, each sequence's pages in random order."""
    max_pages = -(-capacity // page_size)
    num_pages = batch * max_pages + 2
    k, v = (guarded(torch.randn(num_pages, page_size, HK, D, dtype=dtype)) for _ in range(2))
    table = torch.randperm(num_pages)[:batch * max_pages].view(batch, max_pages).to(torch.int32)
    return k, v, table


def poison(k, v, table, first_pages, totals):
    """Copies where every page before ``first_pages[b]`` holds NaN and its table entry points outside the pool, as
    do the entries past the sequence's last page (after the step's append, ``totals[b]`` tokens)."""
    bad = bad_entries(k)
    k, v, table = guarded(k), guarded(v), table.clone()
    page_size, max_pages = k.shape[1], table.shape[1]
    for b, (first, total) in enumerate(zip(first_pages.tolist(), totals)):
        used = -(-total // page_size)
        for i, p in enumerate([*range(first), *range(used, max_pages)]):
            k[table[b, p]] = float("nan")
            v[table[b, p]] = float("nan")
            table[b, p] = bad[i % 2]
    return k, v, table


STEPS = ["decode", "verify-dense", "verify-varlen", "extend"]
WINDOWS = [(127, 0), (0, 0), (-1, 0)]
# Every (step, window) pair once; page sizes and dtypes rotate so that each window meets pages of 1, 16 and 64, and
# half the poisoned runs also pass the data checks of check_inputs (an engine running with SWATTN_CHECK_INPUTS=1).
CASES = [pytest.param(step, window, (1, 16, 64)[(s + w) % 3], (torch.float32, torch.float16)[(s + w) % 2], s % 2 == 1,
                      id=f"{step}-W{window[0]}_{window[1]}-page{(1, 16, 64)[(s + w) % 3]}-"
                         f"{('fp32', 'fp16')[(s + w) % 2]}")
         for s, step in enumerate(STEPS) for w, window in enumerate(WINDOWS)]
# Chunked attention (attention_chunk, Llama 4): pages before the query's chunk are freed too, windowed or not.
CASES += [pytest.param("verify-varlen", (-1, 0), 16, torch.float32, False, 64, id="verify-varlen-chunk64-page16"),
          pytest.param("decode", (127, 0), 1, torch.float16, True, 100, id="decode-W127_0-chunk100-page1"),
          pytest.param("verify-dense", (20, 0), 16, torch.float32, True, 32, id="verify-dense-W20_0-chunk32-leftpad")]
# The verify tile of 16 + 16 keys (FwdConfig.head_block, as the GPU's 128 + 16) with its row-bound mask
# (fwd.ROW_BOUND_MASK, the default): at most 20 + 8 keys per tile.
HEAD_BLOCK = FwdConfig(32, 16, 4, 1, single_loop=True, head_block=16)
CASES += [pytest.param("verify-dense", (20, 0), 16, torch.float16, False, 0, HEAD_BLOCK,
                       id="verify-dense-W20_0-page16-head-block")]


def _case_values(case) -> tuple:
    """A CASES entry as (step, window, page_size, dtype, check_inputs, chunk, config)."""
    values = tuple(case.values)
    return values + (0, BLOCK64)[len(values) - 5:]


@pytest.mark.parametrize("step, window, page_size, dtype, check_inputs, chunk, config", [
    pytest.param(*_case_values(case), id=case.id) for case in CASES])
def test_pages_before_first_readable_page_are_never_read(step, window, page_size, dtype, check_inputs, chunk,
                                                         config):
    """Poison every page (data and table entry) before ``first_readable_page``: outputs and LSE are bit-identical
    to the unpoisoned run and match the float64 reference; the appended tokens land in the cache. With
    ``check_inputs`` the argument checks accept the poisoned table (they skip the entries before the window)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{step}{window}{page_size}".encode()))
    batch = 3
    # Long enough that a 127-key window frees pages of 64; full attention reads everything, so shorter there.
    longest = 300 if window[0] >= 0 else 150
    cache_seqlens = draw(generator, 0, longest, batch)
    cache_seqlens[0] = draw(generator, 0, 20, 1)  # shorter than the window: nothing freed
    if step == "decode":
        new = [1] * batch
    elif step == "extend":
        new = [9] * batch
    else:
        new = draw(generator, 2, 9, batch).tolist()
        if step == "verify-dense":
            new = [new[0]] * batch
    varlen = step == "verify-varlen"
    totals = (cache_seqlens + i32(new)).tolist()
    k_cache, v_cache, table = paged_cache(batch, max(totals) + 3, page_size, dtype)
    if varlen:
        cu = i32([0, *torch.tensor(new).cumsum(0).tolist()])
        q = torch.randn(sum(new), H, D, dtype=dtype)
        k_new, v_new = (torch.randn(sum(new), HK, D, dtype=dtype) for _ in range(2))
        kwargs = dict(cu_seqlens_q=cu, max_seqlen_q=max(new))
    else:
        cu = None
        q = torch.randn(batch, new[0], H, D, dtype=dtype)
        k_new, v_new = (torch.randn(batch, new[0], HK, D, dtype=dtype) for _ in range(2))
        kwargs = {}
    sinks = torch.randn(H) if step.startswith("verify") else None
    # cache_leftpad (keys, positions and chunks count from it): in the one case whose id says so.
    leftpad = torch.minimum(cache_seqlens, i32([3, 20, 37])) if window == (20, 0) else None
    kwargs.update(k=k_new, v=v_new, cache_seqlens=cache_seqlens, causal=True, window_size=window, sinks=sinks,
                  attention_chunk=chunk, cache_leftpad=leftpad, return_softmax_lse=True)

    first = first_readable_page(cache_seqlens, window, page_size, new_tokens=i32(new), attention_chunk=chunk,
                                cache_leftpad=leftpad)
    if window[0] >= 0 or chunk:
        assert first.sum() > 0, "the case must free something"
    else:
        assert first.tolist() == [0] * batch
    k_bad, v_bad, table_bad = poison(k_cache, v_cache, table, first, totals)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, page_table=table, cu_seqlens_q=cu)

    with forced_config(config):
        out_clean, lse_clean = flash_attn_with_kvcache(q, k_cache, v_cache, page_table=table, **kwargs)
        out, lse = flash_attn_with_kvcache(q, k_bad, v_bad, page_table=table_bad, check_inputs=check_inputs,
                                           **kwargs)
    assert torch.equal(out, out_clean) and torch.equal(lse, lse_clean)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    ref_out, ref_lse = attention_kvcache_ref(q, expected_k, expected_v, i32(totals), page_table=table,
                                             cu_seqlens_q=cu, causal=True, window_size=window, sinks=sinks,
                                             attention_chunk=chunk, cache_leftpad=leftpad)
    assert_close("out", out, ref_out, tolerance_for(dtype))
    assert_close("lse", lse, ref_lse, LSE_TOL)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v), "the append must match"
    for b, total in enumerate(totals):  # the poisoned run wrote the new tokens where the clean table says
        positions = torch.arange(int(cache_seqlens[b]), total)
        pages, slots = table[b, positions // page_size].long(), positions % page_size
        assert torch.equal(k_bad[pages, slots], expected_k[pages, slots])
        assert torch.equal(v_bad[pages, slots], expected_v[pages, slots])


def test_engine_loop_frees_and_reuses_pages():
    """An engine's loop over one sliding-window layer: each step (decode, or a verify of 2-8 drafts of which a
    random number is accepted and the rest rolled back) first frees every page before ``first_readable_page`` (NaN
    data, table entry out of the pool) into a free list, from which new pages are then taken, so sequences reuse
    each other's freed pages. Every step's output matches the reference over each sequence's token history."""
    generator = torch.Generator().manual_seed(7)
    page_size, window, batch, dtype = 4, (11, 0), 2, torch.float32
    num_pages = 16
    k_pool, v_pool = (guarded(torch.randn(num_pages, page_size, HK, D, dtype=dtype)) for _ in range(2))
    bad = bad_entries(k_pool)
    free = list(range(num_pages))
    max_pages = 40
    unallocated = bad[0]
    table = torch.full((batch, max_pages), unallocated, dtype=torch.int32)
    freed = [0] * batch  # pages of each sequence already handed back
    history_k = [torch.empty(0, HK, D, dtype=dtype) for _ in range(batch)]
    history_v = [torch.empty(0, HK, D, dtype=dtype) for _ in range(batch)]
    seqlens = [0] * batch
    sinks = torch.randn(H)
    for step in range(10):
        new = [1] * batch if step % 3 == 0 else draw(generator, 2, 9, batch).tolist()
        cache_seqlens = i32(seqlens)
        first = first_readable_page(cache_seqlens, window, page_size, new_tokens=i32(new)).tolist()
        for b in range(batch):
            assert first[b] >= freed[b], "the answer never moves back"
            for p in range(freed[b], first[b]):
                page = int(table[b, p])
                k_pool[page], v_pool[page] = float("nan"), float("nan")
                free.append(page)
                table[b, p] = bad[p % 2]
            freed[b] = first[b]
            for p in range(-(-seqlens[b] // page_size), -(-(seqlens[b] + new[b]) // page_size)):
                if int(table[b, p]) == unallocated:  # not yet allocated (rolled-back pages stay allocated)
                    table[b, p] = free.pop(0)
        cu = i32([0, *torch.tensor(new).cumsum(0).tolist()])
        q = torch.randn(sum(new), H, D, dtype=dtype)
        k_new, v_new = torch.randn(sum(new), HK, D, dtype=dtype), torch.randn(sum(new), HK, D, dtype=dtype)
        with forced_config(BLOCK64):
            out, lse = flash_attn_with_kvcache(q, k_pool, v_pool, k=k_new, v=v_new, cache_seqlens=cache_seqlens,
                                               page_table=table, cu_seqlens_q=cu, max_seqlen_q=max(new),
                                               causal=True, window_size=window, sinks=sinks,
                                               return_softmax_lse=True, check_inputs=False)
        for b in range(batch):
            rows = slice(int(cu[b]), int(cu[b + 1]))
            k_seq = torch.cat([history_k[b], k_new[rows]])
            v_seq = torch.cat([history_v[b], v_new[rows]])
            ref_out, ref_lse = attention_ref(q[rows][None], k_seq[None], v_seq[None], causal=True,
                                             window_size=window, sinks=sinks)
            assert_close(f"step {step} seq {b} out", out[rows], ref_out[0], tolerance_for(dtype))
            assert_close(f"step {step} seq {b} lse", lse[:, rows], ref_lse[0], LSE_TOL)
            # Verify: accept a random number of drafts (the first new token is always kept), roll back the rest.
            kept = new[b] if new[b] == 1 else int(draw(generator, 1, new[b] + 1, 1))
            history_k[b], history_v[b] = k_seq[:seqlens[b] + kept], v_seq[:seqlens[b] + kept]
            seqlens[b] += kept
    assert min(freed) > 0 and len(free) < num_pages


@pytest.mark.parametrize("group", [2, 4, 8, 16])
@pytest.mark.parametrize("window", [(127, 0), (-1, 0)])
def test_verify_packs_gqa_automatically(group, window):
    """Decode and a verify of 2-8 tokens pack the k tokens x G heads of a KV head into one tile (GQA up to 16),
    so a verify step loads each KV block once per KV head, as a decode step does."""
    for seqlen_q in range(1, 9):
        assert _auto_pack_gqa(None, seqlen_q, group, *window)
    assert not _auto_pack_gqa(None, 4, 1, *window)  # MHA: nothing to pack


def test_fused_append_follows_the_per_case_table(monkeypatch):
    """With ``ops.FUSED_APPEND`` unset (None), ``ops.FUSED_APPEND_DEFAULTS`` decides per (step, layer, page size)
    up to a batch size: the fused append (no append launch) where the table says so, the append launch elsewhere
    (a larger batch, a verify step, a full layer, another page size); both give the reference's cache."""
    from swattn import ops
    monkeypatch.setattr(ops, "FUSED_APPEND", None)
    monkeypatch.setattr(ops, "FUSED_APPEND_DEFAULTS", {("decode", "window", 16): 2})
    launches = []
    real_append = ops.append_plan
    monkeypatch.setattr(ops, "append_plan", lambda *args, **kwargs: launches.append(1) or real_append(*args, **kwargs))
    for batch, new, window, page_size, fused in [(2, 1, (127, 0), 16, True), (3, 1, (127, 0), 16, False),
                                                 (2, 2, (127, 0), 16, False), (2, 1, (-1, 0), 16, False),
                                                 (2, 1, (127, 0), 1, False)]:
        k_cache, v_cache, table = paged_cache(batch, 40, page_size, torch.float32)
        cache_seqlens = i32([5 * b + 3 for b in range(batch)])
        q = torch.randn(batch, new, H, D)
        k_new, v_new = torch.randn(batch, new, HK, D), torch.randn(batch, new, HK, D)
        expected_k, expected_v = k_cache.clone(), v_cache.clone()
        append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, page_table=table)
        launches.clear()
        with forced_config(BLOCK64):
            flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=cache_seqlens,
                                    page_table=table, causal=True, window_size=window)
        assert len(launches) == (0 if fused else 1), (batch, new, window, page_size)
        assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
