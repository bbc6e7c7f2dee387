"""``flash_attn_with_kvcache`` against the float64 reference: contiguous and paged caches, appending new k/v,
decode / speculative verify / varlen extend, GQA packing, split-KV with sinks, windows on page and block
boundaries, out-of-window pages that hold NaN and garbage page indices, the argument checks, and the n_offset
claim (a gpt-oss decode step visits one KV block whatever the context length).

Every case compares both the output and the LSE with ``swattn.reference`` on fresh random data. The Triton
kernels run through the interpreter (``tests/conftest.py``), so shapes are small: H = 16 query heads over
Hk = 2 KV heads (GQA 8), D = 32 unless a case says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch

from swattn import _compat, flash_attn_with_kvcache, ops
from swattn.kernels.append import append_kv
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.kernels.fwd import attention_forward
from swattn.reference import append_kv_ref, attention_kvcache_ref
from swattn.testing import assert_close, tolerance_for
from swattn.window import first_visible_key, is_visible

H, HK, D = 16, 2, 32
LSE_TOL = 1e-4  # LSE is fp32 from fp32 accumulators whatever the input dtype
BLOCK16 = FwdConfig(16, 16, 4, 1)  # block_n = 16: boundaries at small, known offsets
BAD_PAGES = (10**6, -1)  # page-table garbage for entries that must never be read


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


# ----------------------------------------------------------------------------------------------------------------
# Caches


@dataclass
class Cache:
    """A KV cache as the caller holds it: contiguous ``[B_cache, S_cache, Hk, D]`` (optionally addressed through
    ``cache_batch_idx``) or paged ``[num_pages, page_size, Hk, D]`` with ``page_table [B, max_pages]``."""

    k: torch.Tensor
    v: torch.Tensor
    page_table: torch.Tensor | None = None
    cache_batch_idx: torch.Tensor | None = None

    @property
    def paged(self) -> bool:
        return self.page_table is not None

    @property
    def page_size(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.page_table.shape[1] * self.page_size if self.paged else self.k.shape[1]

    def kwargs(self) -> dict:
        return dict(page_table=self.page_table, cache_batch_idx=self.cache_batch_idx)

    def clone(self) -> Cache:
        clone = lambda t: None if t is None else t.clone()
        return Cache(self.k.clone(), self.v.clone(), clone(self.page_table), clone(self.cache_batch_idx))

    def location(self, b: int, pos: int) -> tuple[int, int]:
        """(first index, second index) of token ``pos`` of sequence ``b`` in k/v."""
        if self.paged:
            return int(self.page_table[b, pos // self.page_size]), pos % self.page_size
        return (b if self.cache_batch_idx is None else int(self.cache_batch_idx[b])), pos


def make_cache(layout: str, batch: int, capacity: int, dtype=torch.float32, head_dim: int = D,
               kv_heads: int = HK) -> Cache:
    """``layout``: "contig", "contig-batch-idx" (permuted rows, B_cache > B) or "paged-<page_size>" (pages
    randomly permuted over a pool with spare pages)."""
    if layout.startswith("paged-"):
        page_size = int(layout.split("-")[1])
        max_pages = -(-capacity // page_size)
        num_pages = batch * max_pages + 3
        k = torch.randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype)
        v = torch.randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype)
        table = torch.randperm(num_pages)[:batch * max_pages].view(batch, max_pages).to(torch.int32)
        return Cache(k, v, page_table=table)
    rows = batch + 3 if layout == "contig-batch-idx" else batch
    k = torch.randn(rows, capacity, kv_heads, head_dim, dtype=dtype)
    v = torch.randn(rows, capacity, kv_heads, head_dim, dtype=dtype)
    if layout == "contig-batch-idx":
        idx = torch.randperm(rows)[:batch].to(torch.int32)
        assert not torch.equal(idx.long(), torch.arange(batch))
        return Cache(k, v, cache_batch_idx=idx)
    assert layout == "contig", layout
    return Cache(k, v)


def cache_after_append(cache: Cache, k_new, v_new, seqlens, q_lengths=None) -> Cache:
    """The cache as it must look after appending: new token t of sequence b at position seqlens[b] + t (written
    here token by token, independently of ``swattn.ops.append_to_cache``)."""
    expected = cache.clone()
    for b, start in enumerate(seqlens.tolist()):
        if q_lengths is None:
            rows_k, rows_v = k_new[b], v_new[b]
        else:
            begin = sum(q_lengths[:b])
            rows_k, rows_v = k_new[begin:begin + q_lengths[b]], v_new[begin:begin + q_lengths[b]]
        for t in range(rows_k.shape[0]):
            first, second = expected.location(b, start + t)
            expected.k[first, second] = rows_k[t]
            expected.v[first, second] = rows_v[t]
    return expected


# ----------------------------------------------------------------------------------------------------------------
# Running and checking


def run(q, cache: Cache, **kwargs):
    return flash_attn_with_kvcache(q, cache.k, cache.v, **cache.kwargs(), return_softmax_lse=True, **kwargs)


def reference(q, cache: Cache, seqlens_k, cu_seqlens_q=None, **kwargs):
    return attention_kvcache_ref(q, cache.k, cache.v, seqlens_k.to(torch.int32), cu_seqlens_q=cu_seqlens_q,
                                 **cache.kwargs(), **kwargs)


def check(out, lse, expected, q) -> None:
    ref_out, ref_lse = expected
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert_close("out", out, ref_out, tolerance_for(q.dtype))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def seqlens_tensor(seqlens, batch: int) -> torch.Tensor:
    return torch.full((batch,), seqlens, dtype=torch.int32) if isinstance(seqlens, int) else i32(seqlens)


def as_arg(seqlens):
    """cache_seqlens as the caller passes it: a Python int or an int32 tensor."""
    return seqlens if isinstance(seqlens, int) else i32(seqlens)


def window_kwargs(window, causal):
    return dict(window_size=window, causal=causal)


def random_q(batch, seqlen_q, dtype=torch.float32, head_dim=D, heads=H):
    return torch.randn(batch, seqlen_q, heads, head_dim, dtype=dtype)


def cu_seqlens(lengths) -> torch.Tensor:
    return i32([0] + torch.tensor(lengths).cumsum(0).tolist())


# ----------------------------------------------------------------------------------------------------------------
# Contiguous and paged caches, no append

# (Sq, cache_seqlens, window, causal, pack_gqa)
CONTIG_CASES = [
    pytest.param(1, [40, 3, 64, 0], (7, 0), False, None, id="decode-w7,0-tensor-seqlens-short-full-empty"),
    pytest.param(1, 40, (20, 0), False, None, id="decode-w20,0-int-seqlens"),
    pytest.param(4, [40, 9, 64, 4], (20, 0), False, False, id="extend4-w20,0-nopack"),
    pytest.param(8, [33, 64, 8, 17], (5, 3), False, True, id="verify8-w5,3-pack"),
    pytest.param(3, [50, 2, 64, 20], (-1, -1), True, None, id="sq3-causal-full-rows-without-keys"),
    pytest.param(2, 37, (-1, -1), False, False, id="sq2-noncausal-full-int-seqlens"),
    pytest.param(5, [30, 64, 1, 12], (7, -1), True, None, id="sq5-causal-w7,-1"),
]


@pytest.mark.parametrize("layout", ["contig", "contig-batch-idx"])
@pytest.mark.parametrize("seqlen_q, seqlens, window, causal, pack_gqa", CONTIG_CASES)
def test_contiguous_cache(layout, seqlen_q, seqlens, window, causal, pack_gqa):
    batch, capacity = 4, 64
    cache = make_cache(layout, batch, capacity)
    q = random_q(batch, seqlen_q)
    before = cache.clone()
    out, lse = run(q, cache, cache_seqlens=as_arg(seqlens), pack_gqa=pack_gqa, **window_kwargs(window, causal))
    check(out, lse, reference(q, cache, seqlens_tensor(seqlens, batch), **window_kwargs(window, causal)), q)
    assert torch.equal(cache.k, before.k) and torch.equal(cache.v, before.v), "no k/v given: cache must not change"


# (Sq, cache_seqlens, window, causal, pack_gqa)
PAGED_CASES = [
    pytest.param(1, [40, 1, 70, 16], (7, 0), False, None, id="decode-w7,0-tensor-seqlens"),
    pytest.param(5, 45, (20, 0), False, None, id="extend5-w20,0-int-seqlens"),
    pytest.param(2, [70, 2, 33, 5], (-1, -1), True, True, id="sq2-causal-full"),
    pytest.param(3, [3, 70, 24, 50], (5, 3), False, False, id="sq3-w5,3-nopack"),
]


@pytest.mark.parametrize("page_size", [1, 3, 16, 64])
@pytest.mark.parametrize("seqlen_q, seqlens, window, causal, pack_gqa", PAGED_CASES)
def test_paged_cache(page_size, seqlen_q, seqlens, window, causal, pack_gqa):
    batch, capacity = 4, 70
    cache = make_cache(f"paged-{page_size}", batch, capacity)
    q = random_q(batch, seqlen_q)
    out, lse = run(q, cache, cache_seqlens=as_arg(seqlens), pack_gqa=pack_gqa, **window_kwargs(window, causal))
    check(out, lse, reference(q, cache, seqlens_tensor(seqlens, batch), **window_kwargs(window, causal)), q)


@pytest.mark.parametrize("dtype, head_dim", [
    pytest.param(torch.bfloat16, 64, id="bf16-d64"),
    pytest.param(torch.float16, 40, id="fp16-d40-padded-head-dim"),
    pytest.param(torch.float32, 40, id="fp32-d40-padded-head-dim"),
])
def test_paged_cache_dtypes_and_head_dims(dtype, head_dim):
    batch = 3
    cache = make_cache("paged-16", batch, 80, dtype=dtype, head_dim=head_dim)
    q = random_q(batch, 2, dtype=dtype, head_dim=head_dim)
    seqlens = i32([77, 20, 2])
    out, lse = run(q, cache, cache_seqlens=seqlens, window_size=(20, 0), num_splits=2)
    check(out, lse, reference(q, cache, seqlens, window_size=(20, 0)), q)


@pytest.mark.parametrize("heads, kv_heads, softcap, pack_gqa", [
    pytest.param(2, 2, 0.0, None, id="mha-h2-hk2"),
    pytest.param(8, 1, 0.0, True, id="mqa-h8-hk1-pack"),
    pytest.param(6, 2, 5.0, True, id="gqa3-h6-hk2-pack-softcap5"),
    pytest.param(6, 2, 5.0, False, id="gqa3-h6-hk2-nopack-softcap5"),
])
def test_head_layouts_and_softcap(heads, kv_heads, softcap, pack_gqa):
    """MHA, MQA and a group of 3 (packed rows that do not divide the tile), with softcap and sinks."""
    batch = 2
    cache = make_cache("paged-3", batch, 40, kv_heads=kv_heads)
    q = random_q(batch, 3, heads=heads)
    seqlens, sinks = i32([40, 4]), torch.randn(heads)
    out, lse = run(q, cache, cache_seqlens=seqlens, window_size=(5, 0), softcap=softcap, sinks=sinks,
                   pack_gqa=pack_gqa)
    check(out, lse, reference(q, cache, seqlens, window_size=(5, 0), softcap=softcap, sinks=sinks), q)


def test_cache_seqlens_default_is_whole_cache():
    cache = make_cache("contig", 2, 24)
    q = random_q(2, 1)
    out, lse = run(q, cache, window_size=(7, 0))
    check(out, lse, reference(q, cache, i32([24, 24]), window_size=(7, 0)), q)


def test_strided_cache_views():
    """Caches that are views into a bigger allocation ([num_pages, 2, page_size, Hk, D] holding K and V, KV heads
    sliced): every stride but the head dimension's is arbitrary, also for the in-place append."""
    batch, page_size, max_pages = 2, 4, 6
    num_pages = batch * max_pages + 1
    pool = torch.randn(num_pages, 2, page_size, HK + 1, D)
    k_cache, v_cache = pool[:, 0, :, 1:], pool[:, 1, :, 1:]
    table = torch.randperm(num_pages)[:batch * max_pages].view(batch, max_pages).to(torch.int32)
    cache = Cache(k_cache, v_cache, page_table=table)
    q = random_q(batch, 2)
    k_new, v_new = torch.randn(batch, 2, HK, D), torch.randn(batch, 2, HK, D)
    seqlens = i32([13, 20])
    expected = cache_after_append(cache, k_new, v_new, seqlens)
    outside = pool[:, :, :, :1].clone()
    out, lse = run(q, cache, k=k_new, v=v_new, cache_seqlens=seqlens, window_size=(5, 0))
    assert torch.equal(cache.k, expected.k) and torch.equal(cache.v, expected.v)
    assert torch.equal(pool[:, :, :, :1], outside), "the append wrote outside the cache views"
    check(out, lse, reference(q, expected, seqlens + 2, window_size=(5, 0)), q)


# ----------------------------------------------------------------------------------------------------------------
# Window starts on / next to page and block boundaries (block_n = 16)


@pytest.mark.parametrize("layout", ["paged-16", "paged-3", "contig"])
@pytest.mark.parametrize("left", [14, 15, 16], ids=lambda left: f"span{left + 1}")
@pytest.mark.parametrize("seqlen_q, pack_gqa", [
    pytest.param(1, True, id="decode-pack"),
    pytest.param(3, False, id="extend3-nopack"),
])
def test_window_start_on_page_and_block_boundaries(layout, left, seqlen_q, pack_gqa):
    """The first query's window starts at key 31, 32 or 33 in the three sequences: on a 16-page and a 16-block
    boundary and one key to either side (for page_size 3: 33 on, 32 and 31 off); the span is 15, 16 or 17 keys per
    row, one block exactly or one key over/under."""
    starts = [31, 32, 33]
    seqlens = i32([start + left + seqlen_q for start in starts])
    cache = make_cache(layout, 3, 80)
    q = random_q(3, seqlen_q)
    for b, start in enumerate(starts):
        assert first_visible_key(0, seqlen_q, int(seqlens[b]), left) == start
    with forced_config(BLOCK16):
        out, lse = run(q, cache, cache_seqlens=seqlens, window_size=(left, 0), pack_gqa=pack_gqa)
    check(out, lse, reference(q, cache, seqlens, window_size=(left, 0)), q)


# ----------------------------------------------------------------------------------------------------------------
# Appending new k/v


@pytest.fixture(params=[False, True], ids=["append-launch", "fused-append"])
def fused_append(request, monkeypatch):
    """Both ways of appending: the separate append launch, and (``ops.FUSED_APPEND``, experimental) the attention
    kernel's programs writing the new tokens they read (taken when there is one new token per query)."""
    monkeypatch.setattr(ops, "FUSED_APPEND", request.param)
    return request.param


@pytest.fixture(params=["append-launch", "fused-append", "fallback"])
def kv_path(request, monkeypatch):
    """The kernels with both ways of appending (see ``fused_append``), and the CPU fallback (no interpreter:
    swattn.reference), which must keep the kernels' contract on what it reads."""
    monkeypatch.setattr(ops, "FUSED_APPEND", request.param == "fused-append")
    if request.param != "fallback":
        yield request.param
        return
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors then take the reference (read per call)
    with torch.device("cpu"):  # also under SWATTN_TEST_DEVICE=cuda
        yield request.param


# (S_new, Sq, cache_seqlens before the append, window, causal, pack_gqa, num_splits, KV heads); the unpacked
# full-attention case runs its 8 query heads per KV head (one program each) over one KV head.
APPEND_CASES = [
    pytest.param(1, 1, [10, 0, 63], (7, 0), False, None, 1, HK, id="decode-append1-w7,0-incl-empty-and-to-capacity"),
    pytest.param(4, 4, 20, (5, 3), False, None, 1, HK, id="extend-append4-w5,3-int-seqlens"),
    pytest.param(3, 1, [5, 30, 61], (20, 0), False, None, 1, HK, id="append3-query1-w20,0"),
    pytest.param(2, 2, [7, 40, 1], (-1, -1), True, False, 2, 1, id="append2-causal-full-nopack-split2"),
    pytest.param(1, 3, [12, 2, 40], (6, 0), False, None, 1, HK, id="append1-query3-w6,0"),
]


# Each case through the append launch, and through the fused append where it applies (one new token per query;
# elsewhere the switch changes nothing and the case would run twice).
APPEND_PATH_CASES = [
    pytest.param(fused, *case.values, id=f"{'fused-append' if fused else 'append-launch'}-{case.id}")
    for case in APPEND_CASES for fused in (False, True) if not fused or case.values[0] == case.values[1]
]


@pytest.mark.parametrize("layout", ["contig", "contig-batch-idx", "paged-1", "paged-3", "paged-16"])
@pytest.mark.parametrize("fused, seqlen_new, seqlen_q, seqlens, window, causal, pack_gqa, num_splits, kv_heads",
                         APPEND_PATH_CASES)
def test_append(monkeypatch, fused, layout, seqlen_new, seqlen_q, seqlens, window, causal, pack_gqa, num_splits,
                kv_heads):
    monkeypatch.setattr(ops, "FUSED_APPEND", fused)
    batch, capacity = 3, 64
    cache = make_cache(layout, batch, capacity, kv_heads=kv_heads)
    q = random_q(batch, seqlen_q, heads=kv_heads * (H // HK))
    k_new, v_new = (torch.randn(batch, seqlen_new, kv_heads, D) for _ in range(2))
    before = seqlens_tensor(seqlens, batch)
    expected_cache = cache_after_append(cache, k_new, v_new, before)
    seqlens_arg = as_arg(seqlens)
    out, lse = run(q, cache, k=k_new, v=v_new, cache_seqlens=seqlens_arg, pack_gqa=pack_gqa,
                   num_splits=num_splits, **window_kwargs(window, causal))
    # New rows equal k/v, every other row (and every other page / cache row) unchanged.
    assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)
    if isinstance(seqlens_arg, torch.Tensor):
        assert torch.equal(seqlens_arg, before), "cache_seqlens must not be updated in place (FA3 leaves it)"
    check(out, lse, reference(q, expected_cache, before + seqlen_new, **window_kwargs(window, causal)), q)


@pytest.mark.parametrize("layout, window", [
    pytest.param("contig", (12, 0), id="contig-w12,0"),
    pytest.param("paged-1", (0, 0), id="paged1-w0,0"),
    pytest.param("paged-16", (3, 2), id="paged16-w3,2"),
    pytest.param("paged-16", (-1, -1), id="paged16-full"),
])
# kv_heads: extend20 runs on one KV head of the same 8 query heads (GQA 8, so pack_gqa=None decides as with H, HK:
# packed under the windows, two unpacked tiles per head for the full one) at half the interpreter's programs.
@pytest.mark.parametrize("config, seqlen_q, pack_gqa, num_splits, kv_heads", [
    pytest.param(FwdConfig(16, 16, 4, 1), 1, True, 3, HK, id="decode-packed-split3"),
    pytest.param(FwdConfig(16, 16, 4, 2, single_loop=True), 5, False, 1, HK, id="extend5-unpacked-single-loop"),
    pytest.param(FwdConfig(16, 32, 4, 1), 20, None, 2, 1, id="extend20-two-tiles-split2"),
])
def test_fused_append_is_one_launch(monkeypatch, layout, config, seqlen_q, pack_gqa, num_splits, kv_heads, window):
    """With ``ops.FUSED_APPEND`` and one new token per query, no append launch runs: the attention programs write
    the new tokens (each program those of its own share of the keys; without PackGQA every query head's program
    of a KV head writes the same bytes), across tiles, splits, loop shapes and windows (the diagonal only, keys
    ahead of the query, none); cache and output as the reference has them."""
    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    monkeypatch.setattr(ops, "append_plan", lambda *args: pytest.fail("the fused path planned the append kernel"))
    batch, capacity, seqlens = 3, 80, i32([9, 0, 50])
    cache = make_cache(layout, batch, capacity, kv_heads=kv_heads)
    q = random_q(batch, seqlen_q, heads=kv_heads * (H // HK))
    k_new, v_new = (torch.randn(batch, seqlen_q, kv_heads, D) for _ in range(2))
    expected_cache = cache_after_append(cache, k_new, v_new, seqlens)
    with forced_config(config):
        out, lse = run(q, cache, k=k_new, v=v_new[:, :, :, :].transpose(0, 1).contiguous().transpose(0, 1),
                       cache_seqlens=seqlens, window_size=window, pack_gqa=pack_gqa, num_splits=num_splits)
    assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)
    check(out, lse, reference(q, expected_cache, seqlens + seqlen_q, window_size=window), q)


@pytest.mark.parametrize("layout, window, config, seqlen_q, pack_gqa, num_splits", [
    pytest.param("paged-16", (7, 0), FwdConfig(16, 16, 4, 1, single_loop=True), 1, True, 1, id="decode-paged16"),
    pytest.param("paged-3", (9, 0), FwdConfig(32, 32, 4, 1, single_loop=True), 4, True, 1, id="verify4-paged3"),
    pytest.param("contig", (-1, -1), FwdConfig(16, 16, 4, 1, single_loop=True), 3, False, 2,
                 id="extend3-contig-unpacked-split2"),
])
def test_fused_append_reading_the_new_tokens_gives_the_same_bits(monkeypatch, layout, window, config, seqlen_q,
                                                                 pack_gqa, num_splits):
    """``fwd.APPEND_READS_INPUT``: on the single masked loop the fused append loads the new tokens from k / v and
    writes them into the cache from those registers (no read back): the same output, LSE and cache bits as the
    write-then-read fused append, also when the new tokens' slots hold NaN before the call."""
    from swattn.kernels import fwd
    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    # It applies to grids of at most one program per SM (the interpreter counts 4 "SMs").
    monkeypatch.setattr(fwd, "_persistent_programs", lambda device: 1024)
    taken = []
    plan_init = fwd._ForwardPlan.__init__

    def record(self, *args, **kwargs):
        plan_init(self, *args, **kwargs)
        taken.append(self.append_reads_input)
    monkeypatch.setattr(fwd._ForwardPlan, "__init__", record)
    batch, capacity, seqlens = 3, 64, i32([9, 0, 40])
    q = random_q(batch, seqlen_q)
    k_new, v_new = torch.randn(batch, seqlen_q, HK, D), torch.randn(batch, seqlen_q, HK, D)
    results = []
    for reads_input in (False, True):
        monkeypatch.setattr(fwd, "APPEND_READS_INPUT", reads_input)
        torch.manual_seed(5)
        cache = make_cache(layout, batch, capacity)
        expected_cache = cache_after_append(cache, k_new, v_new, seqlens)
        poisoned = cache_after_append(cache, torch.full_like(k_new, float("nan")),
                                      torch.full_like(v_new, float("nan")), seqlens)
        cache.k.copy_(poisoned.k)
        cache.v.copy_(poisoned.v)
        with forced_config(config):
            out, lse = run(q, cache, k=k_new, v=v_new, cache_seqlens=seqlens, window_size=window,
                           pack_gqa=pack_gqa, num_splits=num_splits)
        assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)
        check(out, lse, reference(q, expected_cache, seqlens + seqlen_q, window_size=window), q)
        results.append((out, lse))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert taken == [False, True]


@pytest.mark.parametrize("layout, seqlen_q, append, one_pass", [
    pytest.param("paged-3", 4, True, True, id="verify4-paged3-append-one-pass"),
    pytest.param("paged-3", 4, True, "branched", id="verify4-paged3-append-one-pass-branched"),
    pytest.param("paged-3", 4, True, "checks-output", id="verify4-paged3-append-one-pass-checks-output"),
    pytest.param("contig", 3, False, False, id="verify3-contig-redo"),
])
def test_head_block_covers_a_verify_tile_in_two_blocks(monkeypatch, layout, seqlen_q, append, one_pass):
    """``FwdConfig.head_block``: a verify tile's ``left + k`` keys as one block ending at its last key and a small
    block before it (a window-(127, 0) verify's 127 + k keys as 128 + 16): the reference's output and LSE, the cache
    written right by the fused append (reading k / v), and exact non-finite isolation (the guarded one pass, or the
    flags and the redo launch, which takes the same two blocks): a NaN value of the key only position 0 sees reaches
    only position 0's rows, the other rows keep their bits. A forced config whose blocks cannot cover the keys is
    refused."""
    from swattn.kernels import fwd
    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    monkeypatch.setattr(fwd, "APPEND_READS_INPUT", True)
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", True)
    monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 0)
    monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", 1 << 30 if one_pass else 0)
    monkeypatch.setattr(fwd, "GUARD_BRANCH", one_pass == "branched")
    monkeypatch.setattr(fwd, "GUARD_CHECKS_OUTPUT", one_pass == "checks-output")
    batch, capacity, seqlens = 3, 64, i32([9, 0, 40])
    window = (28 - seqlen_q, 0)  # 28 keys per tile: 16 + 16 cover them
    config = FwdConfig(32, 16, 4, 1, single_loop=True, head_block=16)
    q = random_q(batch, seqlen_q)
    k_new, v_new = torch.randn(batch, seqlen_q, HK, D), torch.randn(batch, seqlen_q, HK, D)
    cache = make_cache(layout, batch, capacity)
    full = cache_after_append(cache, k_new, v_new, seqlens)
    lengths = seqlens + seqlen_q
    if not append:
        cache, seqlens = full.clone(), lengths
    kwargs = dict(k=k_new, v=v_new) if append else {}
    clean_cache = cache.clone()
    with forced_config(config):
        out, lse = run(q, cache, cache_seqlens=seqlens, window_size=window, pack_gqa=True, **kwargs)
    assert torch.equal(cache.k, full.k) and torch.equal(cache.v, full.v)
    check(out, lse, reference(q, full, lengths, window_size=window), q)
    # The key only position 0 of sequence 2 sees: its first visible key (window left side).
    key = int(lengths[2]) - seqlen_q - window[0]
    poisoned = clean_cache.clone()
    page, slot = poisoned.location(2, key)
    poisoned.v[page, slot, 1, 3] = float("nan")
    with forced_config(config):
        dirty, _ = run(q, poisoned, cache_seqlens=seqlens, window_size=window, pack_gqa=True, **kwargs)
    seeing = torch.zeros(batch, seqlen_q, H, dtype=torch.bool)
    seeing[2, 0, H // HK:] = True  # KV head 1's query heads at position 0
    assert torch.isnan(dirty[seeing]).any(-1).all() and not torch.isnan(dirty[~seeing]).any()
    assert torch.equal(dirty[~seeing], out[~seeing])
    with forced_config(replace(config, block_n=8)), pytest.raises(ValueError, match="head_block"):
        run(q, clean_cache.clone(), cache_seqlens=seqlens, window_size=window, pack_gqa=True, **kwargs)


# (k, window, attention_chunk, one pass): which of _mask_columns' branches each block of the 16 + 16 keys takes.
ROW_BOUND_CASES = [
    # The verify step's shape: the 16-key head block masked by the window's start only, the main block by the causal
    # bound only; the always-guarded one pass, whose product needs the mask too.
    pytest.param(4, (27, 0), 0, "always", id="verify4-w27,0-head-start-only-main-causal-only-always-guarded"),
    # A right side: no row needs a mask in the main block; the guard behind a branch on V.
    pytest.param(4, (20, 3), 0, "branched", id="verify4-w20,3-main-unmasked-branched"),
    # A short window: the main block needs both bounds (and the head block holds no visible key).
    pytest.param(4, (8, 0), 0, "checks-output", id="verify4-w8,0-main-both-bounds"),
    # Chunks end rows' keys inside a block; 24 real rows of 32 (padding rows); the flags and the redo launch.
    pytest.param(3, (25, 0), 20, "redo", id="verify3-w25,0-chunk20-padding-rows-redo-launch"),
]


@pytest.mark.parametrize("k_tokens, window, chunk, one_pass", ROW_BOUND_CASES)
def test_head_block_row_bound_mask(monkeypatch, k_tokens, window, chunk, one_pass):
    """``fwd.ROW_BOUND_MASK``: the head-block tile's scores masked by per-row key bounds with only the compares some
    row needs per block (``_mask_columns``) give the bits of ``in_window``'s mask, the reference's output and LSE,
    the appended cache, and exact non-finite isolation: a NaN value of the key only position 0 sees reaches only
    position 0's rows. Sequences shorter than the window (the main block starts before key 0) and an empty cache
    included."""
    from swattn.kernels import fwd
    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", True)
    monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 0)
    monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", 0 if one_pass == "redo" else 1 << 30)
    monkeypatch.setattr(fwd, "GUARD_BRANCH", one_pass == "branched")
    monkeypatch.setattr(fwd, "GUARD_CHECKS_OUTPUT", one_pass == "checks-output")
    batch, capacity, seqlens = 3, 64, i32([9, 0, 39])
    config = FwdConfig(32, 16, 4, 1, single_loop=True, head_block=16)
    q = random_q(batch, k_tokens)
    k_new, v_new = torch.randn(batch, k_tokens, HK, D), torch.randn(batch, k_tokens, HK, D)
    clean = make_cache("paged-3", batch, capacity)
    full = cache_after_append(clean, k_new, v_new, seqlens)
    lengths = seqlens + k_tokens
    # Position 0's first visible key in sequence 2 (before the chunk boundary at 40, which positions 1 and 2 are
    # past), poisoned in V: it reaches only the rows of the positions that see it, KV head 1's query heads.
    key = first_visible_key(0, k_tokens, int(lengths[2]), window[0], chunk)
    assert key < int(seqlens[2])
    poisoned = clean.clone()
    page, slot = poisoned.location(2, key)
    poisoned.v[page, slot, 1, 3] = float("nan")
    seeing = torch.zeros(batch, k_tokens, H, dtype=torch.bool)
    for position in range(k_tokens):
        seeing[2, position, H // HK:] = bool(is_visible(position, key, k_tokens, int(lengths[2]), *window, chunk))
    assert seeing[2, 0].any() and not seeing[2, -1].any()
    results = {}
    for row_bounds in (False, True):
        monkeypatch.setattr(fwd, "ROW_BOUND_MASK", row_bounds)
        for name, start in (("clean", clean), ("poisoned", poisoned)):
            cache = start.clone()
            with forced_config(config):
                results[row_bounds, name] = run(q, cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                                window_size=window, attention_chunk=chunk)
            expected = cache_after_append(start, k_new, v_new, seqlens)
            assert torch.equal(cache.k, expected.k)
            assert torch.equal(cache.v.nan_to_num(7.0), expected.v.nan_to_num(7.0))
    out, lse = results[True, "clean"]
    check(out, lse, reference(q, full, lengths, window_size=window, attention_chunk=chunk), q)
    for name in ("clean", "poisoned"):
        assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
                   for a, b in zip(results[True, name], results[False, name])), name
    dirty, _ = results[True, "poisoned"]
    assert torch.isnan(dirty[seeing]).any(-1).all() and not torch.isnan(dirty[~seeing]).any()
    assert torch.equal(dirty[~seeing], out[~seeing])


@pytest.mark.parametrize("layout", ["contig", "contig-batch-idx", "paged-3", "paged-16"])
@pytest.mark.parametrize("window, causal, sinks, num_splits, padding", [
    pytest.param((7, 0), False, False, 1, 0, id="w7,0"),
    pytest.param((4, 2), False, True, 3, 0, id="w4,2-sinks-split3"),
    pytest.param((7, 0), False, True, 1, 5, id="w7,0-sinks-5-padding-rows"),
])
def test_append_varlen(fused_append, layout, window, causal, sinks, num_splits, padding):
    """Varlen q (cu_seqlens_q + max_seqlen_q) with new k/v laid out like q ``[total_q, Hk, D]``; one sequence has
    no new token. ``padding`` rows past ``cu_seqlens_q[-1]`` (as a captured CUDA graph of fixed size leaves them)
    must be neither written to the cache nor attended."""
    lengths, seqlens = [3, 0, 5, 1], i32([10, 7, 0, 58])
    batch, total, capacity = len(lengths), sum(lengths), 64
    cache = make_cache(layout, batch, capacity)
    q = torch.randn(total + padding, H, D)
    k_new, v_new = torch.randn(total + padding, HK, D), torch.randn(total + padding, HK, D)
    sink_logits = torch.randn(H) if sinks else None
    cu = cu_seqlens(lengths)
    expected_cache = cache_after_append(cache, k_new, v_new, seqlens, q_lengths=lengths)
    out, lse = run(q, cache, k=k_new, v=v_new, cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=max(lengths),
                   sinks=sink_logits, num_splits=num_splits, **window_kwargs(window, causal))
    assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)
    assert lse.shape == (H, total + padding)
    ref_out, ref_lse = reference(q[:total], expected_cache, seqlens + i32(lengths), cu_seqlens_q=cu,
                                 sinks=sink_logits, **window_kwargs(window, causal))
    check(out[:total], lse[:, :total], (ref_out, ref_lse), q[:total])


@pytest.mark.parametrize("layout", ["contig", "contig-batch-idx", "paged-1", "paged-3"])
@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen-padded"])
def test_append_kernel_matches_reference_append(layout, varlen):
    # The one-launch Triton append and the reference's token-by-token append write the same caches and lengths.
    batch, capacity, seqlens = 3, 40, i32([4, 0, 31])
    cache = make_cache(layout, batch, capacity)
    if varlen:
        lengths = [2, 0, 5]
        cu = cu_seqlens(lengths)
        k_new, v_new = torch.randn(sum(lengths) + 3, HK, D), torch.randn(sum(lengths) + 3, HK, D)
        expected_lengths = seqlens + i32(lengths)
    else:
        cu = None
        k_new, v_new = torch.randn(batch, 4, HK, D), torch.randn(batch, 4, HK, D)
        expected_lengths = seqlens + 4
    kernel_cache, ref_cache = cache.clone(), cache.clone()
    got, rotated_q = append_kv(kernel_cache.k, kernel_cache.v, k_new, v_new, seqlens, cache.cache_batch_idx,
                               cache.page_table, cu)
    assert rotated_q is None
    want = append_kv_ref(ref_cache.k, ref_cache.v, k_new, v_new, seqlens, cache_batch_idx=cache.cache_batch_idx,
                         page_table=cache.page_table, cu_seqlens_q=cu)
    assert got.dtype == want.dtype == torch.int32
    assert torch.equal(got, expected_lengths) and torch.equal(want, expected_lengths)
    assert torch.equal(kernel_cache.k, ref_cache.k) and torch.equal(kernel_cache.v, ref_cache.v)
    assert not torch.equal(kernel_cache.k, cache.k)


# ----------------------------------------------------------------------------------------------------------------
# Varlen extend / speculative verify without append


@pytest.mark.parametrize("layout, lengths, seqlens, window, causal, pack_gqa", [
    pytest.param("paged-16", [3, 0, 8, 1], [20, 5, 8, 1], (7, 0), False, None, id="paged16-w7,0"),
    pytest.param("paged-1", [2, 7, 0, 4], [30, 3, 9, 4], (-1, -1), True, None,
                 id="paged1-causal-full-rows-without-keys"),
    pytest.param("contig", [0, 6, 1, 2], [4, 40, 64, 10], (5, 3), False, False, id="contig-w5,3-nopack"),
    pytest.param("contig-batch-idx", [5, 5, 0, 3], [64, 12, 0, 5], (20, 0), False, True, id="batch-idx-w20,0-pack"),
])
def test_varlen_extend(layout, lengths, seqlens, window, causal, pack_gqa):
    batch = len(lengths)
    cache = make_cache(layout, batch, 64)
    q = torch.randn(sum(lengths), H, D)
    cu = cu_seqlens(lengths)
    out, lse = run(q, cache, cache_seqlens=i32(seqlens), cu_seqlens_q=cu, max_seqlen_q=max(lengths),
                   pack_gqa=pack_gqa, **window_kwargs(window, causal))
    check(out, lse, reference(q, cache, i32(seqlens), cu_seqlens_q=cu, **window_kwargs(window, causal)), q)


@pytest.mark.parametrize("seqlen_q", range(1, 9), ids=lambda s: f"sq{s}")
def test_decode_and_speculative_verify_lengths(seqlen_q):
    """Sq = 1..8 against a paged cache (page_size 3), window (7, 0), some sequences shorter than the window and one
    shorter than Sq (its top rows see no key)."""
    batch = 3
    cache = make_cache("paged-3", batch, 48)
    q = random_q(batch, seqlen_q)
    seqlens = i32([45, 6, 2])
    out, lse = run(q, cache, cache_seqlens=seqlens, window_size=(7, 0))
    check(out, lse, reference(q, cache, seqlens, window_size=(7, 0)), q)


# ----------------------------------------------------------------------------------------------------------------
# GQA packing and split-KV


@pytest.mark.parametrize("pack_gqa", [True, False, None], ids=lambda p: f"pack{p}")
@pytest.mark.parametrize("scenario", ["decode-paged16-w20,0", "verify-varlen-paged3-w7,0"])
def test_pack_gqa(pack_gqa, scenario):
    batch = 3
    if scenario.startswith("decode"):
        cache = make_cache("paged-16", batch, 64)
        q = random_q(batch, 1)
        seqlens = i32([64, 21, 1])
        out, lse = run(q, cache, cache_seqlens=seqlens, window_size=(20, 0), pack_gqa=pack_gqa)
        expected = reference(q, cache, seqlens, window_size=(20, 0))
    else:
        cache = make_cache("paged-3", batch, 40)
        lengths, seqlens = [4, 1, 6], i32([40, 11, 6])
        cu = cu_seqlens(lengths)
        q = torch.randn(sum(lengths), H, D)
        out, lse = run(q, cache, cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=6, window_size=(7, 0),
                       pack_gqa=pack_gqa)
        expected = reference(q, cache, seqlens, cu_seqlens_q=cu, window_size=(7, 0))
    check(out, lse, expected, q)


@pytest.mark.parametrize("loop", ["pipelined", "single"])
@pytest.mark.parametrize("sinks, num_splits", [
    pytest.param(None, 1, id="nosink-splits1"), pytest.param(None, 5, id="nosink-splits5"),
    pytest.param(torch.float32, 1, id="sink-fp32-splits1"), pytest.param(torch.float32, 2, id="sink-fp32-splits2"),
    pytest.param(torch.float32, 5, id="sink-fp32-splits5"), pytest.param(torch.bfloat16, 5, id="sink-bf16-splits5"),
])  # a bf16 sink with the most splits (empty ones included), where a sink counted twice or lost would show
@pytest.mark.parametrize("scenario", ["rows-without-keys", "long-causal-paged16"])
def test_split_kv(num_splits, sinks, scenario, loop):
    """Split-KV with more splits than blocks (empty splits), sequences and rows that see no key; the sink joins
    the denominator exactly once (an output scaled by a double-counted or missing sink fails). ``single``: the
    one masked loop, which short full-attention decode splits take on the GPU."""
    # Unpacked, each query head is its own program: 4 of them (GQA 2) show a lost or doubled sink as well as 16.
    heads = H if scenario == "rows-without-keys" else 2 * HK
    sink_logits = None if sinks is None else (torch.randn(heads) * 2).to(sinks)
    if scenario == "rows-without-keys":
        # seq 0: no key at all; seq 1: rows 0-1 above the diagonal; seq 2: window (20, 0) in a 37-key cache.
        cache, seqlens, q = make_cache("contig", 3, 40), i32([0, 2, 37]), random_q(3, 4)
        kwargs = dict(window_size=(20, 0), causal=True, pack_gqa=None)
    else:
        # 90 keys = 6 blocks of 16 (5 splits: 2, 2, 2, 0, 0 blocks); 5 keys = 1 block (4 empty splits).
        cache, seqlens, q = make_cache("paged-16", 2, 96), i32([90, 5]), random_q(2, 1, heads=heads)
        kwargs = dict(causal=True, pack_gqa=False)
    with forced_config(BLOCK16 if loop == "pipelined" else replace(BLOCK16, single_loop=True)):
        out, lse = run(q, cache, cache_seqlens=seqlens, sinks=sink_logits, num_splits=num_splits, **kwargs)
    check(out, lse, reference(q, cache, seqlens, sinks=sink_logits, window_size=kwargs.get("window_size", (-1, -1)),
                              causal=True), q)
    if scenario == "rows-without-keys":
        assert torch.equal(out[0], torch.zeros_like(out[0])), "rows that see no key must give 0"
        expected_lse = torch.full((H, 4), float("-inf")) if sinks is None else sink_logits.float()[:, None].expand(H, 4)
        torch.testing.assert_close(lse[0], expected_lse, rtol=1e-6, atol=1e-6,
                                   msg="empty rows: LSE must be -inf, or the sink with sinks")


def test_split_decode_preload_and_early_merge_dependents(monkeypatch):
    """The full-decode experiments of scripts/gpu_probe.py fixed_costs change no bit: ``fwd.PRELOAD_L2`` 1 and 2 on
    split launches (``PRELOAD_L2_SPLITS``; under the interpreter the prefetches
    are plain loads of the same addresses, so a wrong address would fail here) and the merge letting the next
    kernel launch before its wait (``combine.EARLY_DEPENDENTS``: a GPU-only scheduling change, PDL being off here;
    its plan is rebuilt). Paged 16, PackGQA, sinks, 3 splits of 16-key blocks over 100 / 37 / 1 keys (a split that
    ends inside its first block, one that is empty)."""
    from swattn.kernels import combine, fwd
    cache, seqlens = make_cache("paged-16", 3, 112), i32([100, 37, 1])
    q = random_q(3, 1)
    sinks = torch.randn(H)
    monkeypatch.setattr(fwd, "PRELOAD_L2_SPLITS", True)
    results = []
    for preload, early in ((0, False), (1, False), (2, False), (2, True)):
        monkeypatch.setattr(fwd, "PRELOAD_L2", preload)
        monkeypatch.setattr(combine, "EARLY_DEPENDENTS", early)
        fwd._PLANS.clear()  # only this call's plan below (other tests' plans may be cached in this process)
        with forced_config(BLOCK16):
            results.append(run(q, cache, cache_seqlens=seqlens, sinks=sinks, causal=True, pack_gqa=True,
                               num_splits=3))
        assert [plan.preload_l2 for plan in fwd.plans()] == [preload]
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])
    check(*results[0], reference(q, cache, seqlens, sinks=sinks, causal=True), q)


def test_late_merge_dependents_only_on_16_bit_decode_splits(monkeypatch):
    """``fwd.SPLIT_LATE_DEPENDENTS`` (default 2: a split program lets its merge launch once its KV loop is done)
    reaches the main launch of split launches of one query per sequence over a 16-bit cache, and only those (H200
    s10-call6: e4m3 decode and verify measured slower with it), and only with PDL. The launches are captured as on
    an H200 (PDL on; the interpreter has none), not run."""
    from swattn.kernels import fwd
    from swattn.kernels._launch import clear_plans
    launches = []

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(fwd, "_swa_fwd_kernel", Capture())
    monkeypatch.setattr(fwd, "combine_launch", lambda *args, **kwargs: None)
    monkeypatch.setattr(fwd, "pdl_enabled", lambda device: True)
    assert fwd.SPLIT_LATE_DEPENDENTS == 2
    cache, seqlens = make_cache("paged-16", 2, 96, dtype=torch.float16), i32([90, 40])

    def late(tokens, num_splits, k=cache.k, v=cache.v, **kwargs):
        launches.clear()
        clear_plans()
        q = random_q(2, tokens, dtype=torch.float16)
        with forced_config(BLOCK16):
            fwd.attention_forward(q, k, v, softmax_scale=0.2, left=-1, right=0, page_table=cache.page_table,
                                  seqlens_k=seqlens, pack_gqa=True, num_splits=num_splits, **kwargs)
        return launches[0]["LATE_DEPENDENTS"]

    assert late(1, 3) == 2
    assert late(1, 1) == 0  # one split: no merge launch
    assert late(3, 3) == 0  # verify
    descale = torch.ones(2, HK)
    assert late(1, 3, k=cache.k.to(torch.float8_e4m3fn), v=cache.v.to(torch.float8_e4m3fn), k_descale=descale,
                v_descale=descale) == 0
    monkeypatch.setattr(fwd, "pdl_enabled", lambda device: False)
    assert late(1, 3) == 0
    clear_plans()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("config", [
    pytest.param(FwdConfig(32, 16, 2, 5), id="32rows-2warps-5stages"),
    pytest.param(FwdConfig(32, 16, 2, 3), id="32rows-2warps-3stages"),
    pytest.param(FwdConfig(32, 32, 4, 3), id="32rows-4warps-32keys"),
    pytest.param(FwdConfig(64, 16, 4, 5), id="padded-64rows-4warps"),
])
def test_full_verify_split_tiles(dtype, config):
    """A full-attention speculative verify of k = 4 tokens (PackGQA: 4 x 8 = 32 rows, one tile per KV head) on the
    split loop's tile shapes ``configs.PAGED_SPLIT_TILES`` and the serving probe choose from, 3 splits over pages of
    16, the tokens appended in the call, sinks: output, LSE and cache against the reference."""
    batch, k_tokens = 3, 4
    cache = make_cache("paged-16", batch, 96, dtype=dtype)
    q = random_q(batch, k_tokens, dtype=dtype)
    k_new, v_new = (torch.randn(batch, k_tokens, HK, D, dtype=dtype) for _ in range(2))
    before = i32([85, 40, 3])
    sink_logits = torch.randn(H)
    expected_cache = cache_after_append(cache, k_new, v_new, before)
    with forced_config(config):
        out, lse = run(q, cache, k=k_new, v=v_new, cache_seqlens=before, sinks=sink_logits, causal=True,
                       num_splits=3)
    assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)
    check(out, lse, reference(q, expected_cache, before + k_tokens, sinks=sink_logits, causal=True), q)


# ----------------------------------------------------------------------------------------------------------------
# Out-of-window pages may be freed: NaN data and garbage page indices are never read


def poison_paged(cache: Cache, totals, queries, left: int) -> Cache:
    """A copy of ``cache`` where every page wholly before the first query's window holds NaN and its page-table
    entry is out of range (10**6 / -1), entries past the sequence's last page too, and the unused tail of the last
    page is NaN."""
    poisoned = cache.clone()
    page_size, max_pages = poisoned.page_size, poisoned.page_table.shape[1]
    for b, (total, n_q) in enumerate(zip(totals, queries)):
        first = first_visible_key(0, n_q, total, left)
        used = -(-total // page_size)
        dead = list(range(first // page_size)) + list(range(used, max_pages))
        for i, p in enumerate(dead):
            page = int(poisoned.page_table[b, p])
            poisoned.k[page] = float("nan")
            poisoned.v[page] = float("nan")
            poisoned.page_table[b, p] = BAD_PAGES[i % 2]
        if total % page_size:
            page = int(poisoned.page_table[b, used - 1])
            poisoned.k[page, total % page_size:] = float("nan")
            poisoned.v[page, total % page_size:] = float("nan")
        assert len(dead) > 0 or total == 0
    return poisoned


# (page_size, seqlens before append, Sq (or varlen lengths), window left, S_new, pack_gqa, num_splits, sinks)
NAN_PAGED_CASES = [
    # window starts 47 (one before a page boundary), 16 (on one), 49 (one after one)
    pytest.param(16, [68, 37, 70], 1, 20, 0, None, 1, False, id="decode-paged16-w20,0"),
    pytest.param(3, [50, 13, 9], 4, 7, 0, None, 3, True, id="extend4-paged3-w7,0-split3-sinks"),
    pytest.param(16, [98, 40, 20], 2, 20, 2, False, 1, False, id="append2-paged16-w20,0-nopack"),
    pytest.param(1, [30, 10, 12], [2, 0, 3], 5, 0, None, 2, False, id="varlen-paged1-w5,0-split2"),
]


@pytest.mark.parametrize("page_size, seqlens, seqlen_q, left, seqlen_new, pack_gqa, num_splits, sinks",
                         NAN_PAGED_CASES)
def test_nan_poisoned_out_of_window_pages(monkeypatch, kv_path, page_size, seqlens, seqlen_q, left, seqlen_new,
                                          pack_gqa, num_splits, sinks):
    """The poisoned cache with ``check_inputs=False`` and with the default (which checks CPU inputs) against one
    clean run: the same output, and the new tokens written."""
    monkeypatch.setattr(_compat, "CHECK_INPUTS", False)  # SWATTN_CHECK_INPUTS unset (read at import)
    batch = len(seqlens)
    varlen = isinstance(seqlen_q, list)
    queries = seqlen_q if varlen else [seqlen_q] * batch
    totals = [s + (n if seqlen_new else 0) for s, n in zip(seqlens, queries)]
    clean = make_cache(f"paged-{page_size}", batch, max(totals) + 5)
    poisoned = poison_paged(clean, totals, queries, left)
    q = torch.randn(sum(queries), H, D) if varlen else random_q(batch, seqlen_q)
    kwargs = dict(cache_seqlens=i32(seqlens), window_size=(left, 0), pack_gqa=pack_gqa, num_splits=num_splits,
                  sinks=torch.randn(H) if sinks else None)
    if varlen:
        kwargs.update(cu_seqlens_q=cu_seqlens(queries), max_seqlen_q=max(queries))
    if seqlen_new:
        kwargs.update(k=torch.randn(batch, seqlen_new, HK, D), v=torch.randn(batch, seqlen_new, HK, D))
        expected_cache = cache_after_append(clean, kwargs["k"], kwargs["v"], i32(seqlens))
    else:
        expected_cache = clean.clone()
    out_clean, lse_clean = run(q, clean, **kwargs)
    check(out_clean, lse_clean, reference(q, expected_cache, i32(totals), cu_seqlens_q=kwargs.get("cu_seqlens_q"),
                                          window_size=(left, 0), sinks=kwargs["sinks"]), q)
    for check_inputs in (False, None):
        cache = poisoned.clone()
        out, lse = run(q, cache, check_inputs=check_inputs, **kwargs)
        assert torch.equal(out, out_clean) and torch.equal(lse, lse_clean), f"check_inputs={check_inputs}"
        if seqlen_new:
            for b, start in enumerate(seqlens):
                for t in range(seqlen_new):
                    page, slot = cache.location(b, start + t)
                    assert torch.equal(cache.k[page, slot], kwargs["k"][b, t])
                    assert torch.equal(cache.v[page, slot], kwargs["v"][b, t])


@pytest.mark.parametrize("check_inputs", [False, None], ids=["check_inputs=False", "check_inputs=default"])
@pytest.mark.parametrize("layout, seqlen_new", [
    pytest.param("contig", 0, id="contig"),
    pytest.param("contig-batch-idx", 2, id="batch-idx-append2"),
])
def test_nan_poisoned_contiguous_cache(monkeypatch, kv_path, check_inputs, layout, seqlen_new):
    """NaN in every cache position before the first query's window, beyond cache_seqlens (+ new tokens) and in
    cache rows no sequence uses: the output equals the clean one."""
    monkeypatch.setattr(_compat, "CHECK_INPUTS", False)  # SWATTN_CHECK_INPUTS unset (read at import)
    batch, seqlen_q, left = 3, 2, 7
    seqlens = i32([50, 25, 12])
    totals = (seqlens + seqlen_new).tolist()
    clean = make_cache(layout, batch, 64)
    poisoned = clean.clone()
    used_rows = set()
    for b, total in enumerate(totals):
        row, _ = poisoned.location(b, 0)
        used_rows.add(row)
        first = first_visible_key(0, seqlen_q, total, left)
        assert first > 0
        for t in (poisoned.k, poisoned.v):
            t[row, :first] = float("nan")
            t[row, total:] = float("nan")
    for row in set(range(poisoned.k.shape[0])) - used_rows:
        poisoned.k[row] = float("nan")
        poisoned.v[row] = float("nan")
    q = random_q(batch, seqlen_q)
    kwargs = dict(cache_seqlens=seqlens, window_size=(left, 0))
    if seqlen_new:
        kwargs.update(k=torch.randn(batch, seqlen_new, HK, D), v=torch.randn(batch, seqlen_new, HK, D))
        expected_cache = cache_after_append(clean, kwargs["k"], kwargs["v"], seqlens)
    else:
        expected_cache = clean.clone()
    out_clean, lse_clean = run(q, clean, **kwargs)
    out, lse = run(q, poisoned, check_inputs=check_inputs, **kwargs)
    assert torch.equal(out, out_clean) and torch.equal(lse, lse_clean)
    check(out, lse, reference(q, expected_cache, i32(totals), window_size=(left, 0)), q)


# ----------------------------------------------------------------------------------------------------------------
# Indices the kernels would follow out of their tensors: rejected when check_inputs (default on CPU)


def _reject_case(name: str):
    """Returns (cache, q, kwargs, argument named in the error) for one bad-index scenario."""
    batch, seqlen_q = 2, 1
    q = random_q(batch, seqlen_q)
    kwargs = dict(window_size=(7, 0))
    if name.startswith("page"):
        cache = make_cache("paged-4", batch, 40)
        seqlens = [20, 38]
        kwargs["cache_seqlens"] = i32(seqlens)
        num_pages = cache.k.shape[0]
        if name == "page-last-key-1e6":
            cache.page_table[1, 37 // 4] = 10**6
        elif name == "page-window-start-neg1":
            cache.page_table[0, (20 - 1 - 7) // 4] = -1  # the page holding the window's first key
        elif name == "page-one-past-pool":
            cache.page_table[1, (38 - 1 - 7) // 4] = num_pages
        elif name == "page-of-appended-token-neg1":
            q = random_q(batch, 2)
            kwargs.update(k=torch.randn(batch, 2, HK, D), v=torch.randn(batch, 2, HK, D))
            cache.page_table[0, 21 // 4] = -1  # new token 1 of sequence 0 lands at position 21
        else:
            raise AssertionError(name)
        return cache, q, kwargs, "page_table"
    if name.startswith("seqlens"):
        layout = "paged-4" if "paged" in name else "contig"
        cache = make_cache(layout, batch, 40)
        cap = cache.capacity
        if name in ("seqlens-over-capacity", "seqlens-over-capacity-paged"):
            kwargs["cache_seqlens"] = i32([3, cap + 1])
        elif name == "seqlens-negative":
            kwargs["cache_seqlens"] = i32([-1, 3])
        elif name in ("seqlens-plus-append-over-capacity", "seqlens-plus-append-over-capacity-int"):
            q = random_q(batch, 2)
            kwargs.update(k=torch.randn(batch, 2, HK, D), v=torch.randn(batch, 2, HK, D))
            kwargs["cache_seqlens"] = cap - 1 if name.endswith("int") else i32([0, cap - 1])
        elif name == "seqlens-plus-varlen-append-over-capacity":
            lengths = [0, 3]
            q = torch.randn(3, H, D)
            kwargs.update(k=torch.randn(3, HK, D), v=torch.randn(3, HK, D), cu_seqlens_q=cu_seqlens(lengths),
                          max_seqlen_q=3, cache_seqlens=i32([cap, cap - 2]))
        else:
            raise AssertionError(name)
        return cache, q, kwargs, "cache_seqlens"
    cache = make_cache("contig-batch-idx", batch, 40)
    rows = cache.k.shape[0]
    kwargs["cache_seqlens"] = i32([10, 12])
    cache.cache_batch_idx = i32([0, rows]) if name == "batch-idx-one-past" else i32([-1, 0])
    return cache, q, kwargs, "cache_batch_idx"


REJECT_CASES = [
    "page-last-key-1e6", "page-window-start-neg1", "page-one-past-pool", "page-of-appended-token-neg1",
    "seqlens-over-capacity", "seqlens-over-capacity-paged", "seqlens-negative", "seqlens-plus-append-over-capacity",
    "seqlens-plus-append-over-capacity-int", "seqlens-plus-varlen-append-over-capacity",
    "batch-idx-one-past", "batch-idx-negative",
]


@pytest.mark.parametrize("check_inputs", [True, None], ids=["check_inputs=True", "check_inputs=default"])
@pytest.mark.parametrize("name", REJECT_CASES)
def test_out_of_range_indices_rejected(monkeypatch, check_inputs, name):
    if check_inputs is None and torch.get_default_device().type == "cuda":
        pytest.skip("GPU tensors are not data-checked by default: in-range indices are the caller's contract")
    monkeypatch.setattr(_compat, "CHECK_INPUTS", False)  # SWATTN_CHECK_INPUTS unset (read at import)
    cache, q, kwargs, argument = _reject_case(name)
    before = cache.clone()
    with pytest.raises(ValueError, match=f"^{argument}:"):
        run(q, cache, check_inputs=check_inputs, **kwargs)
    assert torch.equal(cache.k, before.k) and torch.equal(cache.v, before.v), "a rejected call wrote the cache"


def test_int_cache_seqlens_beyond_capacity_rejected_without_data_checks():
    cache = make_cache("paged-4", 2, 40)
    with pytest.raises(ValueError, match="^cache_seqlens:"):
        run(random_q(2, 1), cache, cache_seqlens=41, check_inputs=False)
    with pytest.raises(ValueError, match="^cache_seqlens:"):
        run(random_q(2, 1), cache, cache_seqlens=-1, check_inputs=False)


# ----------------------------------------------------------------------------------------------------------------
# Other argument checks


def _bad_call(name: str):
    """(exception type, message pattern, thunk) for one malformed call."""
    batch, cap = 2, 16
    q = random_q(batch, 1)
    kc, vc = torch.randn(batch, cap, HK, D), torch.randn(batch, cap, HK, D)
    seqlens = i32([8, 8])
    new = lambda s=1, hk=HK, d=D, b=batch: torch.randn(b, s, hk, d)

    def call(**kw):
        args = dict(q=q, k_cache=kc, v_cache=vc, cache_seqlens=seqlens)
        args.update(kw)
        return lambda: flash_attn_with_kvcache(**args)

    paged_k, paged_v = torch.randn(5, 4, HK, D), torch.randn(5, 4, HK, D)
    table = i32([[0, 1], [2, 3]])
    paged = lambda **kw: call(k_cache=paged_k, v_cache=paged_v, **kw)
    strided_kc = torch.randn(batch, cap, HK, 2 * D)[..., ::2]  # head dimension with stride 2
    strided_vc = torch.randn(batch, cap, HK, D, 2)[..., 0]
    return {
        "k-without-v": (ValueError, "^k, v:", call(k=new())),
        "v-without-k": (ValueError, "^k, v:", call(v=new())),
        "v-new-length-differs": (ValueError, "^v:", call(k=new(2), v=new(3))),
        "k-new-heads-differ-from-cache": (ValueError, "^k:", call(k=new(1, HK + 1), v=new(1, HK + 1))),
        "k-new-batch-differs": (ValueError, "^k:", call(k=new(b=3), v=new(b=3))),
        "k-new-3d-without-cu_seqlens": (ValueError, "^k:", call(k=torch.randn(2, HK, D), v=torch.randn(2, HK, D))),
        "k-new-not-laid-out-like-varlen-q": (
            ValueError, "^k:", call(q=torch.randn(3, H, D), cu_seqlens_q=i32([0, 1, 3]), max_seqlen_q=2,
                                    k=torch.randn(4, HK, D), v=torch.randn(4, HK, D))),
        "k-new-dtype-differs-from-cache": (TypeError, "^k:", call(k=new().half(), v=new().half())),
        "k_cache-non-unit-last-stride": (ValueError, "^k_cache:", call(k_cache=strided_kc)),
        "v_cache-non-unit-last-stride": (ValueError, "^v_cache:", call(v_cache=strided_vc)),
        "page_table-int64": (TypeError, "^page_table:", paged(page_table=table.long())),
        "page_table-wrong-rows": (ValueError, "^page_table:", paged(page_table=table[:1])),
        "page_table-1d": (ValueError, "^page_table:", paged(page_table=table[0])),
        "cache_batch_idx-beyond-page_table-rows": (
            ValueError, "^cache_batch_idx:", paged(page_table=table, cache_batch_idx=i32([0, table.shape[0]]))),
        "cache_batch_idx-int64": (TypeError, "^cache_batch_idx:", call(cache_batch_idx=torch.tensor([1, 0]))),
        "cache_batch_idx-wrong-length": (ValueError, "^cache_batch_idx:", call(cache_batch_idx=i32([0]))),
        "cache_seqlens-int64": (TypeError, "^cache_seqlens:", call(cache_seqlens=torch.tensor([8, 8]))),
        "cache_seqlens-wrong-length": (ValueError, "^cache_seqlens:", call(cache_seqlens=i32([8, 8, 8]))),
        "k_cache-fewer-rows-than-batch": (ValueError, "^k_cache:", call(q=random_q(3, 1), cache_seqlens=8)),
        "cu_seqlens_q-without-max_seqlen_q": (
            ValueError, "^max_seqlen_q:", call(q=torch.randn(2, H, D), cu_seqlens_q=i32([0, 1, 2]))),
        "q-3d-without-cu_seqlens_q": (ValueError, "^q:", call(q=torch.randn(2, H, D))),
        "cache-5d": (ValueError, "^k_cache:", call(k_cache=kc[None], v_cache=vc[None])),
        "heads-not-multiple": (ValueError, "^q/k_cache:", call(q=random_q(batch, 1, heads=H + 1))),
        "window-below-minus-one": (ValueError, "^window_size:", call(window_size=(-2, 0))),
    }[name]


BAD_CALLS = [
    "k-without-v", "v-without-k", "v-new-length-differs", "k-new-heads-differ-from-cache", "k-new-batch-differs",
    "k-new-3d-without-cu_seqlens", "k-new-not-laid-out-like-varlen-q", "k-new-dtype-differs-from-cache",
    "k_cache-non-unit-last-stride", "v_cache-non-unit-last-stride", "page_table-int64", "page_table-wrong-rows",
    "page_table-1d", "cache_batch_idx-beyond-page_table-rows", "cache_batch_idx-int64", "cache_batch_idx-wrong-length",
    "cache_seqlens-int64", "cache_seqlens-wrong-length", "k_cache-fewer-rows-than-batch",
    "cu_seqlens_q-without-max_seqlen_q", "q-3d-without-cu_seqlens_q", "cache-5d", "heads-not-multiple",
    "window-below-minus-one",
]


@pytest.mark.parametrize("name", BAD_CALLS)
def test_argument_checks(name):
    error, pattern, thunk = _bad_call(name)
    with pytest.raises(error, match=pattern):
        thunk()


UNSUPPORTED = [
    pytest.param("qv", lambda: torch.randn(2, 1, H, D + 8), ValueError, id="qv-wrong-head-dim"),
    # Descales apply to float8_e4m3fn inputs only (tests/kernels/test_fp8.py).
    pytest.param("q_descale", lambda: torch.ones(2, HK), ValueError, id="q_descale"),
    pytest.param("k_descale", lambda: torch.ones(2, HK), ValueError, id="k_descale"),
    pytest.param("v_descale", lambda: torch.ones(2, HK), ValueError, id="v_descale"),
    pytest.param("q_descale", lambda: torch.ones(1), ValueError, id="q_descale-one-element"),
]


@pytest.mark.parametrize("name, make_value, error", UNSUPPORTED)
def test_unsupported_fa3_arguments(name, make_value, error):
    q, kc, vc = random_q(2, 1), torch.randn(2, 16, HK, D), torch.randn(2, 16, HK, D)
    with pytest.raises(error, match=f"^{name}:"):
        flash_attn_with_kvcache(q, kc, vc, cache_seqlens=8, **{name: make_value()})


# ----------------------------------------------------------------------------------------------------------------
# The n_offset claim: the KV loop starts at the window's first key, so the block count does not grow with context


@pytest.mark.parametrize("heads, kv_heads, context", [
    *(pytest.param(16, 2, context, id=f"h16-hk2-ctx{context}") for context in (128, 129, 1000, 5000)),
    *(pytest.param(64, 8, context, id=f"h64-hk8-ctx{context}") for context in (129, 5000)),
])
def test_gpt_oss_decode_visits_one_block(heads, kv_heads, context):
    """gpt-oss decode (window (127, 0), Sq = 1, D = 64, GQA 8, PackGQA) from a 16-token paged cache with
    BLOCK_N = 128: the 128 visible keys start anywhere inside a page, yet every program visits exactly one block
    (FA3's block-aligned loop visits two unless (context - 128) % 128 == 0)."""
    head_dim, page_size, batch = 64, 16, 2
    seqlens = i32([context, context - 37])
    cache = make_cache("paged-16", batch, context, head_dim=head_dim, kv_heads=kv_heads)
    q = random_q(batch, 1, head_dim=head_dim, heads=heads)
    scale = 1 / math.sqrt(head_dim)
    with forced_config(FwdConfig(16, 128, 4, 1)):
        out, lse, counts = attention_forward(q, cache.k, cache.v, softmax_scale=scale, left=127, right=0,
                                             seqlens_k=seqlens, page_table=cache.page_table, pack_gqa=True,
                                             count_blocks=True)
    assert counts.numel() == batch * kv_heads, "one program per (sequence, KV head)"
    assert counts.tolist() == [1] * counts.numel()
    assert page_size == cache.page_size
    check(out, lse, reference(q, cache, seqlens, window_size=(127, 0)), q)


@pytest.mark.parametrize("left, blocks", [(15, 1), (16, 2), (31, 2), (32, 3)], ids=lambda x: str(x))
def test_block_count_is_ceil_span_over_block_n(left, blocks):
    """Decode with block_n = 16: a span of left + 1 keys takes ceil((left + 1) / 16) blocks wherever it starts."""
    cache = make_cache("paged-3", 3, 120)
    seqlens = i32([left + 1, 100, 117])  # window starts at 0, and unaligned to pages and to blocks
    q = random_q(3, 1)
    with forced_config(BLOCK16):
        out, lse, counts = attention_forward(q, cache.k, cache.v, softmax_scale=D ** -0.5, left=left, right=0,
                                             seqlens_k=seqlens, page_table=cache.page_table, pack_gqa=True,
                                             count_blocks=True)
    assert counts.tolist() == [blocks] * (3 * HK)
    check(out, lse, reference(q, cache, seqlens, window_size=(left, 0)), q)


# ----------------------------------------------------------------------------------------------------------------
# Regression tests for bugs found while writing this module (index views, check_inputs coverage)

@pytest.mark.parametrize("which", ["page_table", "cache_seqlens", "cache_batch_idx", "cu_seqlens_q"])
def test_noncontiguous_index_tensors(which):
    # The views are built so that the misread values are still in range (a wrong answer, not a crash).
    batch = 2
    q = random_q(batch, 1)
    kwargs = dict(window_size=(7, 0))
    if which == "page_table":
        cache = make_cache("paged-4", batch, 32)
        wide = torch.full((batch, 16), cache.k.shape[0] - 1, dtype=torch.int32)  # a spare page
        wide[:, ::2] = cache.page_table
        cache.page_table = wide[:, ::2]
        seqlens = i32([20, 30])
        kwargs["cache_seqlens"] = seqlens
    elif which == "cache_seqlens":
        cache = make_cache("paged-4", batch, 32)
        seqlens = i32([20, 5, 30, 6])[::2]
        kwargs["cache_seqlens"] = seqlens
    elif which == "cache_batch_idx":
        cache = make_cache("contig", 4, 32)
        cache.cache_batch_idx = i32([3, 0, 1, 2])[::2]
        seqlens = i32([20, 30])
        kwargs["cache_seqlens"] = seqlens
    else:
        cache = make_cache("paged-4", batch, 32)
        q = torch.randn(8, H, D)
        cu = i32([0, 1, 3, 5, 8])[::2]  # [0, 3, 8]; read with unit stride it is [0, 1, 3]
        seqlens = i32([20, 30])
        kwargs.update(cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=5)
    out, lse = run(q, cache, **kwargs)
    check(out, lse, reference(q, cache, seqlens.contiguous(), cu_seqlens_q=kwargs.get("cu_seqlens_q"),
                              window_size=(7, 0)), q)


def test_check_inputs_covers_pages_written_by_append():
    cache = make_cache("paged-4", 2, 32)
    q = random_q(2, 1)
    k_new, v_new = torch.randn(2, 8, HK, D), torch.randn(2, 8, HK, D)
    # Tokens 10..17 are appended; the query (position 17) sees keys 16, 17: page 4. Pages 2-3 are written only.
    cache.page_table[:, 2] = -1
    before = cache.clone()
    with pytest.raises(ValueError, match="^page_table:"):
        run(q, cache, k=k_new, v=v_new, cache_seqlens=i32([10, 10]), window_size=(1, 0), check_inputs=True)
    assert torch.equal(cache.k, before.k)


def test_check_inputs_ignores_sequences_without_queries():
    cache = make_cache("paged-4", 2, 32)
    cache.page_table[1] = -1  # sequence 1 has no query: none of its pages is read
    q = torch.randn(2, H, D)
    cu = cu_seqlens([2, 0])
    seqlens = i32([20, 24])
    out, lse = run(q, cache, cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=2, window_size=(5, 0),
                   check_inputs=True)
    clean = cache.clone()
    clean.page_table[1] = clean.page_table[0]
    check(out, lse, reference(q, clean, seqlens, cu_seqlens_q=cu, window_size=(5, 0)), q)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("seqlen_q", [1, 3])
def test_masking_only_edge_blocks_gives_the_same_bits_on_a_paged_cache(page_size, seqlen_q):
    """FwdConfig.mask_edges_only on the window decode / extend path (paged, PackGQA, single loop)."""
    batch, capacity = 4, 120
    cache = make_cache(f"paged-{page_size}", batch, capacity)
    q = random_q(batch, seqlen_q)
    seqlens = [117, 2, 64, 90]
    results = {}
    for edges_only in (False, True):
        with forced_config(FwdConfig(16, 16, 4, 1, single_loop=True, mask_edges_only=edges_only)):
            results[edges_only] = run(q, cache, cache_seqlens=as_arg(seqlens), window_size=(40, 0), causal=True)
    check(*results[True], reference(q, cache, seqlens_tensor(seqlens, batch), window_size=(40, 0), causal=True), q)
    assert all(torch.equal(a, b) for a, b in zip(results[False], results[True]))
