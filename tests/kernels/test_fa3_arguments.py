"""FlashAttention 3's arguments beyond the basics, against the float64 reference: ``seqused_q`` (varlen, forward
and backward), ``attention_chunk`` (forward, backward, KV cache, n_offset), ``cache_batch_idx`` together with
``page_table``, ``cu_seqlens_k_new``, ``cache_leftpad``, rotary embedding, ``sm_margin`` and
``scheduler_metadata``.

Each feature runs through the Triton interpreter and, where it has a path of its own there, through the CPU
fallback without the interpreter (the float64 reference behind the same ops). Rows, keys, slots and pages that must
not be read hold NaN; table entries that must not be followed hold garbage indices; memory that must not be written
is compared bit for bit afterwards. Shapes are small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import math

import pytest
import torch

import swattn
from swattn import window
from swattn.kernels import fwd as fwd_module
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.kernels.fwd import attention_forward
from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref
from swattn.testing import assert_close, tolerance_for

H, HK, D = 4, 2, 16
LSE_TOL = 1e-4


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def cumulative(lengths) -> torch.Tensor:
    return i32([0] + torch.tensor(lengths).cumsum(0).tolist())


INTERPRETER, FALLBACK = "interpreter", "cpu-fallback"


@pytest.fixture
def path(request, monkeypatch):
    """Run the public API through the Triton interpreter, or through the CPU fallback without it (the reference
    behind the same ops); tests pick the paths with ``indirect`` parametrization (the fallback for one case each,
    to keep CI short)."""
    if request.param == FALLBACK:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    return request.param


class _PoisonedTorch:
    """``torch`` as swattn.kernels.fwd sees it, except that ``empty`` and ``empty_like`` return NaN-filled memory:
    an output element the kernels leave alone stays NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        t = torch.empty(*args, **kwargs)
        return t.fill_(float("nan") if t.dtype.is_floating_point else -7)

    @staticmethod
    def empty_like(*args, **kwargs):
        t = torch.empty_like(*args, **kwargs)
        return t.fill_(float("nan") if t.dtype.is_floating_point else -7)


# ----------------------------------------------------------------------------------------------------------------
# seqused_q


def _used_rows(cu_q, seqused_q) -> torch.Tensor:
    used = torch.zeros(int(cu_q[-1]) + 2, dtype=torch.bool)  # two padding rows past cu_seqlens_q[-1]
    for b in range(len(seqused_q)):
        used[int(cu_q[b]):int(cu_q[b]) + int(seqused_q[b])] = True
    return used


@pytest.mark.parametrize("dtype, num_splits, pack_gqa", [
    pytest.param(torch.float32, 1, False, id="fp32"),
    pytest.param(torch.float16, 3, True, id="fp16-splits3-pack"),
])
def test_seqused_q_rows_past_it_are_neither_read_nor_written(monkeypatch, dtype, num_splits, pack_gqa):
    monkeypatch.setattr(fwd_module, "torch", _PoisonedTorch())
    q_lens, k_lens, seqused = [5, 7, 0, 6], [9, 4, 3, 11], [3, 7, 0, 2]
    cu_q, cu_k, seqused_q = cumulative(q_lens), cumulative(k_lens), i32(seqused)
    used = _used_rows(cu_q, seqused)
    q = torch.randn(used.numel(), H, D).to(dtype)
    q[~used] = float("nan")  # unused rows: reading one would poison its sequence's outputs
    k, v = (torch.randn(int(cu_k[-1]), HK, D).to(dtype) for _ in range(2))
    sinks = torch.randn(H)
    kwargs = dict(causal=True, window_size=(3, 0), sinks=sinks, attention_chunk=4)
    out, lse = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 7, 11, seqused_q=seqused_q, num_splits=num_splits,
                                             pack_gqa=pack_gqa, return_softmax_lse=True, **kwargs)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_q=seqused_q, **kwargs)
    assert_close("out", out[used], ref_out[used], tolerance_for(dtype))
    assert_close("lse", lse[:, used], ref_lse[:, used], LSE_TOL)
    assert torch.isnan(out[~used]).all() and torch.isnan(lse[:, ~used]).all(), "an unused row was written"


@pytest.mark.parametrize("path", [FALLBACK], indirect=True)
def test_seqused_q_cpu_fallback(path):
    cu_q, cu_k, seqused_q = cumulative([4, 3]), cumulative([5, 6]), i32([2, 3])
    q, k, v = torch.randn(7, H, D), torch.randn(11, HK, D), torch.randn(11, HK, D)
    out = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 6, seqused_q=seqused_q, causal=True)
    ref = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_q=seqused_q, causal=True)[0]
    used = _used_rows(cu_q, [2, 3])[:7]
    assert_close("out", out[used], ref[used], tolerance_for(torch.float32))


def _grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves, dout)


@pytest.mark.parametrize("path, chunk", [(INTERPRETER, 0), (INTERPRETER, 4), (FALLBACK, 4)], indirect=["path"],
                         ids=["no-chunk", "chunk4", "chunk4-fallback"])
def test_seqused_q_backward(path, chunk):
    q_lens, k_lens, seqused = [4, 5, 2], [7, 5, 6], [3, 5, 0]
    cu_q, cu_k, seqused_q = cumulative(q_lens), cumulative(k_lens), i32(seqused)
    used = _used_rows(cu_q, seqused)[:sum(q_lens)]
    q, k, v = torch.randn(sum(q_lens), H, D), torch.randn(sum(k_lens), HK, D), torch.randn(sum(k_lens), HK, D)
    sinks, dout = torch.randn(H), torch.randn(sum(q_lens), H, D)
    kwargs = dict(causal=True, window_size=(4, 0), attention_chunk=chunk)
    grads = _grads(lambda q, k, v, s: swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 9, seqused_q=seqused_q,
                                                                    sinks=s, **kwargs), (q, k, v, sinks), dout)
    # Unused rows are outside the function: their output gradient never reaches anything.
    expected = _grads(lambda q, k, v, s: attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_q=seqused_q, sinks=s,
                                                              **kwargs)[0],
                      (q, k, v, sinks), dout * used[:, None, None])
    for name, got, want in zip(("dq", "dk", "dv", "dsinks"), grads, expected):
        assert_close(name, got, want, 1e-5)
    assert (grads[0][~used] == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# attention_chunk


CHUNK_CASES = [  # (Sq, Sk, window, causal, chunk)
    pytest.param(13, 13, (-1, -1), True, 4, id="causal-C4"),
    pytest.param(9, 21, (5, 0), True, 8, id="Sq9-Sk21-W5_0-C8"),
    pytest.param(11, 7, (-1, -1), False, 3, id="Sq11-Sk7-noncausal-C3"),
    pytest.param(10, 14, (3, 2), False, 5, id="Sq10-Sk14-W3_2-C5"),
]


@pytest.mark.parametrize("sq, sk, window_size, causal, chunk, dtype", [
    pytest.param(*case.values, dtype, id=f"{case.id}-{name}") for case, (dtype, name) in
    zip(CHUNK_CASES, [(torch.float32, "fp32"), (torch.float16, "fp16")] * 2)])
def test_attention_chunk_forward(sq, sk, window_size, causal, chunk, dtype):
    q = torch.randn(2, sq, H, D).to(dtype)
    k, v = torch.randn(2, sk, HK, D).to(dtype), torch.randn(2, sk, HK, D).to(dtype)
    sinks = torch.randn(H)
    kwargs = dict(causal=causal, window_size=window_size, attention_chunk=chunk, sinks=sinks)
    out, lse = swattn.flash_attn_func(q, k, v, return_softmax_lse=True, **kwargs)
    ref_out, ref_lse = attention_ref(q, k, v, **kwargs)
    assert_close("out", out, ref_out, tolerance_for(dtype))
    assert_close("lse", lse, ref_lse, LSE_TOL)


@pytest.mark.parametrize("path, sq, sk, window_size, causal, chunk", [
    pytest.param(INTERPRETER, *CHUNK_CASES[1].values, id=CHUNK_CASES[1].id),
    pytest.param(INTERPRETER, *CHUNK_CASES[2].values, id=CHUNK_CASES[2].id),
    pytest.param(FALLBACK, *CHUNK_CASES[3].values, id=f"{CHUNK_CASES[3].id}-fallback"),
], indirect=["path"])
def test_attention_chunk_backward(path, sq, sk, window_size, causal, chunk):
    q, k, v, dout = torch.randn(2, sq, H, D), torch.randn(2, sk, HK, D), torch.randn(2, sk, HK, D), torch.randn(
        2, sq, H, D)
    sinks = torch.randn(H)
    kwargs = dict(causal=causal, window_size=window_size, attention_chunk=chunk)
    grads = _grads(lambda q, k, v, s: swattn.flash_attn_func(q, k, v, sinks=s, **kwargs), (q, k, v, sinks), dout)
    expected = _grads(lambda q, k, v, s: attention_ref(q, k, v, sinks=s, **kwargs)[0], (q, k, v, sinks), dout)
    for name, got, want in zip(("dq", "dk", "dv", "dsinks"), grads, expected):
        assert_close(name, got, want, 1e-5)


@pytest.mark.parametrize("sq, sk, left, chunk, block_n", [
    pytest.param(1, 300, -1, 64, 16, id="decode-C64-N16"),
    pytest.param(1, 300, 20, 64, 16, id="decode-W20-C64"),
    pytest.param(3, 131, -1, 8, 4, id="verify3-C8-N4-straddles"),
    pytest.param(16, 50, 6, 16, 16, id="prefill16-W6-C16"),
])
def test_attention_chunk_loop_starts_at_the_chunk(sq, sk, left, chunk, block_n):
    """n_offset with chunks: each tile's loop starts at max(window start, chunk start) and visits
    ceil(span / BLOCK_N) blocks (``window.tile_plan``); keys outside every row's chunk are NaN and never read."""
    q = torch.randn(1, sq, H, D)
    k, v = torch.randn(1, sk, HK, D), torch.randn(1, sk, HK, D)
    seen = torch.zeros(sk, dtype=torch.bool)
    for i in range(sq):
        seen |= window.is_visible(i, torch.arange(sk), sq, sk, left, 0, chunk)
    k_poisoned, v_poisoned = k.clone(), v.clone()
    k_poisoned[:, ~seen], v_poisoned[:, ~seen] = float("nan"), float("nan")
    config = FwdConfig(16, block_n, 4, 1)
    with forced_config(config):
        out, lse, counts = attention_forward(q, k_poisoned, v_poisoned, softmax_scale=D ** -0.5, left=left,
                                             right=0, attention_chunk=chunk, count_blocks=True)
    ref_out, ref_lse = attention_ref(q, k, v, window_size=(left, 0), attention_chunk=chunk)
    assert_close("out", out, ref_out, tolerance_for(torch.float32))
    plans = window.tile_plan(sq, sk, (left, 0), config.block_m, block_n, attention_chunk=chunk)
    assert counts.view(H, len(plans)).flip(1).tolist() == [[p.num_kv_blocks for p in plans]] * H
    position = plans[-1].first_row + sk - sq  # the last tile's first row, in key positions
    assert plans[-1].first_visible_key == max(position - left if left >= 0 else 0, position // chunk * chunk)


# ----------------------------------------------------------------------------------------------------------------
# KV cache: cache_batch_idx with page_table, cu_seqlens_k_new, cache_leftpad, chunk


PAGE_SIZE, PAGES_PER_ROW, TABLE_ROWS = 4, 6, 5
GARBAGE_PAGE = 10**6


def paged_cache(dtype=torch.float32):
    """A page pool of 32 pages (a spare page is never listed) and a table of 5 rows of 6 pages, randomly assigned;
    ``cache_batch_idx`` will pick 3 rows, so the other 2 rows may hold anything."""
    pool = TABLE_ROWS * PAGES_PER_ROW + 2
    k = torch.randn(pool, PAGE_SIZE, HK, D).to(dtype)
    v = torch.randn(pool, PAGE_SIZE, HK, D).to(dtype)
    table = torch.randperm(pool)[:TABLE_ROWS * PAGES_PER_ROW].view(TABLE_ROWS, PAGES_PER_ROW).to(torch.int32)
    return k, v, table


def gathered(k_cache, v_cache, table, row, length):
    """Slots [0, length) of cache row ``row`` of a paged cache, gathered independently of the reference."""
    slots = torch.arange(length)
    pages = table[row, slots // PAGE_SIZE].long()
    return k_cache[pages, slots % PAGE_SIZE], v_cache[pages, slots % PAGE_SIZE]


def new_tokens_of(k_new, b, cu_new):
    return k_new[b] if cu_new is None else k_new[int(cu_new[b]):int(cu_new[b + 1])]


@pytest.mark.parametrize("path, q_layout, new_layout", [
    pytest.param(INTERPRETER, "dense", "dense", id="dense-q-dense-new"),
    pytest.param(INTERPRETER, "varlen", "cu_seqlens_k_new", id="varlen-q-varlen-new"),
    pytest.param(INTERPRETER, "dense", "cu_seqlens_k_new", id="dense-q-varlen-new"),
    pytest.param(INTERPRETER, "varlen", "dense", id="varlen-q-dense-new"),
    pytest.param(FALLBACK, "varlen", "cu_seqlens_k_new", id="varlen-q-varlen-new-fallback"),
], indirect=["path"])
def test_paged_cache_batch_idx_and_new_tokens(path, q_layout, new_layout):
    """FA3's layout: page_table has one row per cache entry and cache_batch_idx[b] picks sequence b's row. The
    rows not picked hold garbage page indices (never followed); pages the call does not write keep their bits."""
    k_cache, v_cache, table = paged_cache()
    batch_idx = i32([3, 0, 4])
    table[1] = GARBAGE_PAGE
    table[2] = -1
    seqlens = i32([5, 13, 0])
    q_lens, new_lens = [2, 3, 1], [3, 1, 2]
    if q_layout == "dense":
        q_lens = [2, 2, 2]
    q = torch.randn(3, 2, H, D) if q_layout == "dense" else torch.randn(sum(q_lens), H, D)
    cu_q = None if q_layout == "dense" else cumulative(q_lens)
    if new_layout == "dense":
        new_lens = [2, 2, 2]
        k_new, v_new = torch.randn(3, 2, HK, D), torch.randn(3, 2, HK, D)
        cu_new = None
    else:
        k_new, v_new = torch.randn(sum(new_lens), HK, D), torch.randn(sum(new_lens), HK, D)
        cu_new = cumulative(new_lens)
    before = (k_cache.clone(), v_cache.clone())
    sinks = torch.randn(H)
    kwargs = dict(causal=True, window_size=(6, 0), sinks=sinks, attention_chunk=8)
    out, lse = swattn.flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens, cache_batch_idx=batch_idx, page_table=table,
        cu_seqlens_q=cu_q, max_seqlen_q=None if cu_q is None else 3, cu_seqlens_k_new=cu_new, return_softmax_lse=True,
        **kwargs)
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    for b in range(3):
        row, start = int(batch_idx[b]), int(seqlens[b])
        new_k, new_v = new_tokens_of(k_new, b, cu_new), new_tokens_of(v_new, b, cu_new)
        total = start + new_k.shape[0]
        keys, values = gathered(k_cache, v_cache, table, row, total)
        assert torch.equal(keys[start:], new_k) and torch.equal(values[start:], new_v), f"sequence {b}: append"
        for slot in range(start, total):
            written[table[row, slot // PAGE_SIZE], slot % PAGE_SIZE] = True
        old_keys, old_values = gathered(*before, table, row, start)
        assert torch.equal(keys[:start], old_keys) and torch.equal(values[:start], old_values)
        q_b = q[b:b + 1] if cu_q is None else q[int(cu_q[b]):int(cu_q[b + 1])][None]
        ref_out, ref_lse = attention_ref(q_b, keys[None], values[None], **kwargs)
        got_out = out[b:b + 1] if cu_q is None else out[int(cu_q[b]):int(cu_q[b + 1])][None]
        got_lse = lse[b:b + 1] if cu_q is None else lse[:, int(cu_q[b]):int(cu_q[b + 1])][None]
        assert_close(f"out {b}", got_out, ref_out, tolerance_for(torch.float32))
        assert_close(f"lse {b}", got_lse, ref_lse, LSE_TOL)
    assert torch.equal(k_cache[~written], before[0][~written]) and torch.equal(v_cache[~written], before[1][~written])


@pytest.mark.parametrize("path, layout, seqlen_q, new", [
    pytest.param(INTERPRETER, "contig", 1, True, id="contig-decode-append"),
    pytest.param(INTERPRETER, "paged", 1, True, id="paged-decode-append"),
    pytest.param(INTERPRETER, "paged", 3, False, id="paged-extend3"),
    pytest.param(FALLBACK, "contig", 3, False, id="contig-extend3-fallback"),
], indirect=["path"])
def test_cache_leftpad_keys_before_it_are_never_read(path, layout, seqlen_q, new):
    """cache_leftpad[b]: sequence b's keys are slots [leftpad, cache_seqlens + new); positions, the bottom-right
    alignment and the window count from leftpad. The slots before it hold NaN."""
    seqlens, leftpad = i32([9, 14, 6]), i32([4, 0, 6])
    if layout == "paged":
        k_cache, v_cache, table = paged_cache()
        table = table[:3].contiguous()
    else:
        k_cache, v_cache, table = torch.randn(3, 24, HK, D), torch.randn(3, 24, HK, D), None
    clean = (k_cache.clone(), v_cache.clone())
    for b in range(3):
        for slot in range(int(leftpad[b])):
            if table is None:
                k_cache[b, slot], v_cache[b, slot] = float("nan"), float("nan")
            else:
                page = table[b, slot // PAGE_SIZE]
                k_cache[page, slot % PAGE_SIZE], v_cache[page, slot % PAGE_SIZE] = float("nan"), float("nan")
    q = torch.randn(3, seqlen_q, H, D)
    k_new = torch.randn(3, seqlen_q, HK, D) if new else None
    v_new = torch.randn(3, seqlen_q, HK, D) if new else None
    kwargs = dict(causal=True, window_size=(5, 0))
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                         cache_leftpad=leftpad, page_table=table, **kwargs)
    lengths = seqlens + (seqlen_q if new else 0)
    if new:  # the clean copy gets the same append, so the reference sees the same keys
        swattn.reference.append_kv_ref(*clean, k_new, v_new, seqlens, page_table=table)
    for b in range(3):
        if table is None:
            keys, values = clean[0][b, :int(lengths[b])], clean[1][b, :int(lengths[b])]
        else:
            keys, values = gathered(*clean, table, b, int(lengths[b]))
        start = int(leftpad[b])
        ref = attention_ref(q[b:b + 1], keys[None, start:], values[None, start:], **kwargs)[0]
        assert_close(f"out {b}", out[b:b + 1], ref, tolerance_for(torch.float32))
    assert torch.isfinite(out).all()


def test_kvcache_chunked_decode_reads_only_its_chunk():
    """A decode step with attention_chunk reads only its chunk's keys: every page before the chunk holds NaN and
    every earlier table entry is garbage."""
    k_cache, v_cache, table = paged_cache()
    table = table[:2].contiguous()
    seqlens, chunk = i32([21, 9]), 8  # the new token's chunks start at 16 and 8
    reference_cache = (k_cache.clone(), v_cache.clone())
    for b, chunk_start in ((0, 16), (1, 8)):
        for page in range(chunk_start // PAGE_SIZE):
            k_cache[table[b, page]], v_cache[table[b, page]] = float("nan"), float("nan")
            table[b, page] = GARBAGE_PAGE if b == 0 else -1
    q, k_new, v_new = torch.randn(2, 1, H, D), torch.randn(2, 1, HK, D), torch.randn(2, 1, HK, D)
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                              page_table=table, causal=True, attention_chunk=chunk,
                                              return_softmax_lse=True)
    ref_table = paged_cache_table_for_reference(table, reference_cache)
    lengths = swattn.reference.append_kv_ref(*reference_cache, k_new, v_new, seqlens, page_table=ref_table)
    ref_out, ref_lse = attention_kvcache_ref(q, *reference_cache, lengths, page_table=ref_table, causal=True,
                                             attention_chunk=chunk)
    assert_close("out", out, ref_out, tolerance_for(torch.float32))
    assert_close("lse", lse, ref_lse, LSE_TOL)


def paged_cache_table_for_reference(table, cache):
    """The reference gathers every slot up to the length, so garbage entries are pointed at page 0 (its keys lie
    outside the chunk, so they do not change the result)."""
    fixed = table.clone()
    fixed[(fixed < 0) | (fixed >= cache[0].shape[0])] = 0
    return fixed


# ----------------------------------------------------------------------------------------------------------------
# Rotary embedding


def rotate_in_pytorch(x, cos, sin, positions, interleaved):
    """Rotary embedding as complex multiplication, written independently of swattn.reference: pairs (2i, 2i + 1)
    (interleaved) or (i, i + rotary_dim / 2) (GPT-NeoX) are the real and imaginary parts, rotated by angle i."""
    half = cos.shape[1]
    x = x.double()
    if interleaved:
        pairs = torch.complex(x[..., 0:2 * half:2], x[..., 1:2 * half:2])
    else:
        pairs = torch.complex(x[..., :half], x[..., half:2 * half])
    turn = torch.complex(cos.double()[positions], sin.double()[positions])[:, None, :]  # [n, 1, half]
    rotated = pairs * turn
    out = x.clone()
    if interleaved:
        out[..., 0:2 * half:2], out[..., 1:2 * half:2] = rotated.real, rotated.imag
    else:
        out[..., :half], out[..., half:2 * half] = rotated.real, rotated.imag
    return out


@pytest.mark.parametrize("path, interleaved, q_layout, causal, rotary_dim", [
    pytest.param(INTERPRETER, True, "dense", True, 16, id="interleaved-dense-causal-full-rotary"),
    pytest.param(INTERPRETER, False, "dense", False, 8, id="neox-dense-noncausal-half-rotary"),
    pytest.param(INTERPRETER, False, "varlen", True, 8, id="neox-varlen-causal-rotary_seqlens"),
    pytest.param(INTERPRETER, True, "varlen", False, 16, id="interleaved-varlen-noncausal"),
    pytest.param(FALLBACK, True, "varlen", True, 8, id="interleaved-varlen-causal-fallback"),
], indirect=["path"])
def test_rotary_equals_rotating_in_pytorch_first(path, interleaved, q_layout, causal, rotary_dim):
    """FA3's rule: new key i of sequence b at position rotary_seqlens[b] + i (default cache_seqlens[b] + i); query i
    at the same position when causal or local, else every query at rotary_seqlens[b]."""
    k_cache, v_cache, table = paged_cache()
    table = table[:3].contiguous()
    seqlens = i32([5, 0, 11])
    rotary_seqlens = i32([2, 7, 11]) if q_layout == "varlen" else None
    offsets = seqlens if rotary_seqlens is None else rotary_seqlens
    lengths = [2, 2, 2] if q_layout == "dense" else [1, 3, 2]
    cos_sin_angle = torch.rand(24, rotary_dim // 2) * 2 * math.pi
    cos, sin = torch.cos(cos_sin_angle), torch.sin(cos_sin_angle)
    if q_layout == "dense":
        q, k_new, v_new = torch.randn(3, 2, H, D), torch.randn(3, 2, HK, D), torch.randn(3, 2, HK, D)
        cu_q = None
    else:
        q, k_new, v_new = torch.randn(6, H, D), torch.randn(6, HK, D), torch.randn(6, HK, D)
        cu_q = cumulative(lengths)
    # Rotate in PyTorch first, then call without rotary on a copy of the cache: both must agree.
    q_rot, k_rot = q.double().clone(), k_new.double().clone()
    for b in range(3):
        rows = slice(b, b + 1) if cu_q is None else slice(int(cu_q[b]), int(cu_q[b + 1]))
        new_positions = torch.arange(lengths[b]) + int(offsets[b])
        query_positions = new_positions if causal else torch.full((lengths[b],), int(offsets[b]))
        if cu_q is None:
            q_rot[b] = rotate_in_pytorch(q[b], cos, sin, query_positions, interleaved)
            k_rot[b] = rotate_in_pytorch(k_new[b], cos, sin, new_positions, interleaved)
        else:
            q_rot[rows] = rotate_in_pytorch(q[rows], cos, sin, query_positions, interleaved)
            k_rot[rows] = rotate_in_pytorch(k_new[rows], cos, sin, new_positions, interleaved)
    plain_cache = (k_cache.clone(), v_cache.clone())
    common = dict(cache_seqlens=seqlens, page_table=table, cu_seqlens_q=cu_q, max_seqlen_q=None if cu_q is None else 3,
                  causal=causal, window_size=(6, 0) if causal else (-1, -1), return_softmax_lse=True)
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin,
                                              rotary_seqlens=rotary_seqlens, rotary_interleaved=interleaved, **common)
    ref_out, ref_lse = swattn.flash_attn_with_kvcache(q_rot.float(), *plain_cache, k=k_rot.float(), v=v_new, **common)
    assert_close("out", out, ref_out, 1e-5)
    assert_close("lse", lse, ref_lse, LSE_TOL)
    assert_close("k_cache", k_cache, plain_cache[0], 1e-6)
    assert torch.equal(v_cache, plain_cache[1])


def test_rotary_fp16_matches_reference():
    k_cache, v_cache = torch.randn(2, 16, HK, D).half(), torch.randn(2, 16, HK, D).half()
    q, k_new, v_new = torch.randn(2, 3, H, D).half(), torch.randn(2, 3, HK, D).half(), torch.randn(2, 3, HK, D).half()
    angle = torch.rand(16, D // 2) * 2 * math.pi
    cos, sin = torch.cos(angle).half(), torch.sin(angle).half()
    seqlens = i32([4, 9])
    kwargs = dict(cache_seqlens=seqlens, causal=True, window_size=(5, 0), return_softmax_lse=True)
    cache_copy = (k_cache.clone(), v_cache.clone())
    out, lse = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, rotary_cos=cos,
                                              rotary_sin=sin, rotary_interleaved=False, **kwargs)
    lengths = swattn.reference.append_kv_ref(*cache_copy, k_new, v_new, seqlens, rotary_cos=cos, rotary_sin=sin,
                                             rotary_interleaved=False)
    q_rot = swattn.reference.rotate_queries_ref(q, cos, sin, seqlens, True, False)
    ref_out, ref_lse = attention_kvcache_ref(q_rot, *cache_copy, lengths, causal=True, window_size=(5, 0))
    assert_close("out", out, ref_out, tolerance_for(torch.float16))
    assert_close("lse", lse, ref_lse, 1e-3)
    assert_close("k_cache", k_cache, cache_copy[0], tolerance_for(torch.float16))


def test_rotary_seqlens_without_rotary_is_ignored():
    """FA3 ignores rotary_seqlens without rotary_cos / rotary_sin (its own kvcache test passes it either way)."""
    k_cache, v_cache = torch.randn(2, 16, HK, D), torch.randn(2, 16, HK, D)
    q, k_new, v_new = torch.randn(2, 2, H, D), torch.randn(2, 2, HK, D), torch.randn(2, 2, HK, D)
    kwargs = dict(k=k_new, v=v_new, cache_seqlens=i32([4, 9]), causal=True, window_size=(5, 0))
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    out = swattn.flash_attn_with_kvcache(q, *caches[0], rotary_seqlens=i32([0, 3]), **kwargs)
    expected = swattn.flash_attn_with_kvcache(q, *caches[1], **kwargs)
    assert torch.equal(out, expected)
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])


def test_rotary_table_needs_no_row_per_query_without_causal():
    """Without causal / local attention every query is rotated at rotary_seqlens[b] alone, so cos/sin need rows up
    to offset + new tokens only, not offset + Sq (FA3's kvcache test draws such tables: 64 queries, 256 rows)."""
    k_cache, v_cache = torch.randn(2, 16, HK, D), torch.randn(2, 16, HK, D)
    q, k_new, v_new = torch.randn(2, 6, H, D), torch.randn(2, 2, HK, D), torch.randn(2, 2, HK, D)
    angle = torch.rand(12, D // 2) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    kwargs = dict(k=k_new, v=v_new, cache_seqlens=i32([4, 9]), rotary_seqlens=i32([3, 10]), return_softmax_lse=True)
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    # Rows read: offset + 2 new keys <= 12; sequential queries would need offset + 6 = 16.
    out, lse = swattn.flash_attn_with_kvcache(q, *caches[0], rotary_cos=cos, rotary_sin=sin, **kwargs)
    longer = (torch.cat([cos, torch.ones(4, D // 2)]), torch.cat([sin, torch.zeros(4, D // 2)]))
    ref_out, ref_lse = swattn.flash_attn_with_kvcache(q, *caches[1], rotary_cos=longer[0], rotary_sin=longer[1],
                                                      **kwargs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert torch.equal(caches[0][0], caches[1][0])
    with pytest.raises(ValueError, match=r"rotary_cos: has 12 positions, but rotary reads positions up to 15"):
        swattn.flash_attn_with_kvcache(q, *caches[0], rotary_cos=cos, rotary_sin=sin, causal=True, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# sm_margin, scheduler_metadata


def test_sm_margin_and_scheduler_metadata_are_accepted():
    q, k_cache, v_cache = torch.randn(2, 1, H, D), torch.randn(2, 16, HK, D), torch.randn(2, 16, HK, D)
    base = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=9, causal=True)
    metadata = swattn.get_scheduler_metadata(2, 1, 16, H, HK, D, i32([9, 9]), qkv_dtype=torch.float32, causal=True)
    out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=9, causal=True, sm_margin=8,
                                         scheduler_metadata=metadata)
    assert torch.equal(out, base)
    dense = swattn.flash_attn_func(q, k_cache, v_cache, causal=True, sm_margin=4)
    assert torch.equal(dense, swattn.flash_attn_func(q, k_cache, v_cache, causal=True))


def test_window_given_as_a_tensor_is_read_on_every_call():
    """FlashAttention 3's tests pass ``window_size=torch.randint(...)``: a second call with another window of the
    same shape must not reuse the first call's sides (swattn._replay replays a signature's derived values)."""
    q, k, v = torch.randn(1, 6, H, D), torch.randn(1, 6, HK, D), torch.randn(1, 6, HK, D)
    for left in (1, 3):
        out = swattn.flash_attn_func(q, k, v, window_size=torch.tensor([left, 0]))
        assert_close(f"left {left}", out, attention_ref(q, k, v, window_size=(left, 0))[0], 1e-5)
