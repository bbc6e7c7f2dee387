"""The Triton backward (dQ, dK, dV, dsinks) against torch.autograd through the float64 reference.

Runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes are small. Covers: the
dK/dV loop's query range (first_query_seeing / last_query_seeing, Python and @triton.jit twins, and what the kernel
actually visits), random configurations (hypothesis), named edge cases, the public API's autograd (including
torch.compile and the CPU reference path) and opcheck of ``swattn::bwd``. Every ``torch.empty`` of the launcher is
filled with NaN first, so a gradient element the kernels forget to write shows up.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import swattn
from swattn import window
from swattn.kernels import _common
from swattn.kernels import bwd as bwd_module
from swattn.kernels.bwd import attention_backward
from swattn.kernels.configs import BwdConfig
from swattn.kernels.fwd import attention_forward
from swattn.reference import attention_ref, attention_varlen_ref
from swattn.testing import assert_close

PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GRAD_TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
CONFIGS = [BwdConfig(16, 16, 16, 16, 4, 1), BwdConfig(16, 32, 32, 16, 4, 1),
           BwdConfig(16, 16, 16, 16, 4, 1, pack_gqa=True), BwdConfig(32, 32, 32, 16, 4, 1, pack_gqa=True),
           BwdConfig(16, 32, 32, 16, 4, 1, tma=True), BwdConfig(16, 32, 32, 16, 4, 2, dkdv_num_stages=1)]


class _PoisonedTorch:
    """``torch`` as seen by swattn.kernels.bwd, except that ``empty``/``empty_like`` return NaN-filled memory."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    @staticmethod
    def empty_like(*args, **kwargs):
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


@pytest.fixture(autouse=True)
def _poison_launcher_allocations(monkeypatch):
    monkeypatch.setattr(bwd_module, "torch", _PoisonedTorch())


def _brute_visible(i, j, sq, sk, left, right):
    """The rule of semantics.md §1.1, written independently."""
    diagonal = i + sk - sq
    return (0 <= j < sk and (left == -1 or j >= diagonal - left) and (right == -1 or j <= diagonal + right))


# ---------------------------------------------------------------------------------------------------------------
# The dK/dV loop's query range: Python twins, @triton.jit twins, and what the kernel visits

WINDOWS = [pytest.param(left, right, id=f"W{left}_{right}") for left, right in
           [(-1, -1), (-1, 0), (0, 0), (1, 0), (0, 1), (3, 2), (7, 0), (-1, 3), (5, -1), (20, 20), (0, 40)]]
LENGTHS = [pytest.param(sq, sk, id=f"Sq{sq}-Sk{sk}") for sq, sk in
           [(1, 1), (1, 9), (9, 1), (5, 5), (4, 13), (13, 4), (17, 17), (0, 5), (5, 0)]]


@pytest.mark.parametrize("sq,sk", LENGTHS)
@pytest.mark.parametrize("left,right", WINDOWS)
def test_first_last_query_seeing_match_brute_force(sq, sk, left, right):
    for j in range(sk):
        rows = [i for i in range(sq) if _brute_visible(i, j, sq, sk, left, right)]
        first = window.first_query_seeing(j, sq, sk, right)
        last = window.last_query_seeing(j, sq, sk, left)
        assert 0 <= first <= sq and -1 <= last <= sq - 1
        # The rows seeing a key form one interval, and it is exactly [first, last].
        assert rows == list(range(first, last + 1)), (j, rows, first, last)
    for first_key in range(sk):
        for last_key in range(first_key, sk):
            rows = [i for i in range(sq) if any(_brute_visible(i, j, sq, sk, left, right)
                                                for j in range(first_key, last_key + 1))]
            start, span = window.query_span(first_key, last_key, sq, sk, left, right)
            assert span == len(rows)
            if rows:
                assert rows == list(range(start, start + span))


@triton.jit
def _query_twins_kernel(FIRST_KEY, LAST_KEY, SEQLEN_Q, SEQLEN_K, LEFT, RIGHT, OUT, n,
                        HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    first_key = tl.load(FIRST_KEY + offs, mask=mask, other=0)
    last_key = tl.load(LAST_KEY + offs, mask=mask, other=0)
    seqlen_q = tl.load(SEQLEN_Q + offs, mask=mask, other=1)
    seqlen_k = tl.load(SEQLEN_K + offs, mask=mask, other=1)
    left = tl.load(LEFT + offs, mask=mask, other=0)
    right = tl.load(RIGHT + offs, mask=mask, other=0)
    first = _common.first_query_seeing(first_key, seqlen_q, seqlen_k, right, HAS_RIGHT)
    last = _common.last_query_seeing(first_key, seqlen_q, seqlen_k, left, HAS_LEFT)
    ranges = _common.query_block_ranges(first_key, last_key, seqlen_q, seqlen_k, left, right, BLOCK_M, HAS_LEFT,
                                        HAS_RIGHT)
    tl.store(OUT + 0 * n + offs, first, mask=mask)
    tl.store(OUT + 1 * n + offs, last, mask=mask)
    for r in tl.static_range(5):
        tl.store(OUT + (2 + r) * n + offs, ranges[r], mask=mask)


@pytest.mark.parametrize("block_m", [1, 4, 16], ids=lambda b: f"M{b}")
@pytest.mark.parametrize("has_left,has_right", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["unbounded", "left", "right", "left_right"])
def test_query_seeing_jit_twins_match_python_and_interior_blocks_see_every_key(has_left, has_right, block_m):
    lefts = [0, 1, 5, 16, 40] if has_left else [-1]
    rights = [0, 1, 3, 16, 33] if has_right else [-1]
    cases = []
    for sq, sk in [(1, 1), (1, 17), (60, 1), (5, 5), (40, 9), (16, 17), (3, 30), (33, 33), (70, 40)]:
        for left, right in itertools.product(lefts, rights):
            for first_key in sorted({0, 1, sk // 2, sk - 1}):
                for last_key in sorted({first_key, min(sk - 1, first_key + 1), min(sk - 1, first_key + 15), sk - 1}):
                    if first_key <= last_key < sk:
                        cases.append((first_key, last_key, sq, sk, left, right))
    cols = [torch.tensor(c, dtype=torch.int32) for c in zip(*cases)]
    n = len(cases)
    out = torch.full((7, n), -12345, dtype=torch.int32)
    _query_twins_kernel[(triton.cdiv(n, 1024),)](*cols, out, n, HAS_LEFT=has_left, HAS_RIGHT=has_right,
                                                 BLOCK_M=block_m, BLOCK=1024)
    out = out.tolist()
    for c, (first_key, last_key, sq, sk, left, right) in enumerate(cases):
        first, last, q_start, q_end, masked_head_end, unmasked_end, num_blocks = (out[r][c] for r in range(7))
        where = dict(first_key=first_key, last_key=last_key, sq=sq, sk=sk, left=left, right=right, block_m=block_m)
        assert first == window.first_query_seeing(first_key, sq, sk, right), where
        assert last == window.last_query_seeing(first_key, sq, sk, left), where
        start, span = window.query_span(first_key, last_key, sq, sk, left, right)
        assert q_start == start and max(0, q_end - q_start) == span, where
        assert num_blocks == -(-span // block_m), where
        assert 0 <= masked_head_end <= unmasked_end <= num_blocks, where
        keys = range(first_key, last_key + 1)
        for b in range(masked_head_end, unmasked_end):  # unmasked blocks: every row sees every key
            for i in range(q_start + b * block_m, q_start + (b + 1) * block_m):
                assert i < q_end and all(_brute_visible(i, j, sq, sk, left, right) for j in keys), (where, b, i)
        for i in range(sq):  # the loop covers every row that sees a key of the block
            if any(_brute_visible(i, j, sq, sk, left, right) for j in keys):
                assert q_start <= i < min(q_end, q_start + num_blocks * block_m), (where, i)


@pytest.mark.parametrize("sq,sk,left,right", [
    pytest.param(40, 40, 7, 0, id="Sq40-Sk40-W7_0"),
    pytest.param(23, 61, 5, 3, id="Sq23-Sk61-W5_3"),
    pytest.param(50, 19, -1, 0, id="Sq50-Sk19-causal"),
    pytest.param(37, 37, -1, -1, id="Sq37-Sk37-full"),
    pytest.param(30, 45, 0, -1, id="Sq30-Sk45-W0_-1"),
])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: (
    f"M{c.dkdv_block_m}-N{c.dkdv_block_n}{'-packed' if c.pack_gqa else ''}{'-tma' if c.tma else ''}"
    f"-s{c.num_stages}{f'-dkdv_s{c.dkdv_num_stages}' if c.dkdv_num_stages else ''}"))
def test_dkdv_loop_query_range_is_exact(sq, sk, left, right, config):
    q, k, v = (torch.randn(1, s, h, 16) for s, h in ((sq, 2), (sk, 1), (sk, 1)))
    out, lse, _ = attention_forward(q, k, v, softmax_scale=0.25, left=left, right=right)
    *_, record = attention_backward(torch.randn_like(out), q, k, v, out, lse, softmax_scale=0.25, left=left,
                                    right=right, config=config, record_loop=True)
    block_n = config.dkdv_block_n
    # Positions per step: with PackGQA a block's rows are positions x the group's 2 heads.
    block_m = config.dkdv_block_m // 2 if config.pack_gqa else config.dkdv_block_m
    for key_block, (q_start, q_end, num_blocks) in enumerate(record[0, 0].tolist()):
        first_key, last_key = key_block * block_n, min(sk, (key_block + 1) * block_n) - 1
        rows = [i for i in range(sq) if any(_brute_visible(i, j, sq, sk, left, right)
                                            for j in range(first_key, last_key + 1))]
        assert q_start == window.first_query_seeing(first_key, sq, sk, right)
        assert q_end - 1 == window.last_query_seeing(last_key, sq, sk, left)
        assert list(range(q_start, q_end)) == rows, (key_block, q_start, q_end, rows)
        assert num_blocks == -(-len(rows) // block_m)  # the loop starts exactly at the first row, not floored


def test_dkdv_loop_query_range_varlen():
    cu_q = torch.tensor([0, 20, 20, 33], dtype=torch.int32)
    cu_k = torch.tensor([0, 40, 47, 47], dtype=torch.int32)
    left, right = 6, 1
    q, k, v = torch.randn(33, 2, 16), torch.randn(47, 2, 16), torch.randn(47, 2, 16)
    out, lse, _ = attention_forward(q, k, v, softmax_scale=0.25, left=left, right=right, cu_seqlens_q=cu_q,
                                    max_seqlen_q=20, cu_seqlens_k=cu_k, max_seqlen_k=40)
    *_, record = attention_backward(torch.randn_like(out), q, k, v, out, lse, softmax_scale=0.25, left=left,
                                    right=right, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=20,
                                    max_seqlen_k=40, config=CONFIGS[0], record_loop=True)
    for b in range(3):
        sq, sk = int(cu_q[b + 1] - cu_q[b]), int(cu_k[b + 1] - cu_k[b])
        for key_block in range(record.shape[2]):
            first_key = key_block * 16
            if first_key >= sk:
                assert record[b, :, key_block].eq(-1).all()  # the program returned before its loop
                continue
            last_key = min(sk, first_key + 16) - 1
            start, span = window.query_span(first_key, last_key, sq, sk, left, right)
            expected = [start, window.last_query_seeing(last_key, sq, sk, left) + 1, -(-span // 16)]
            for kv_head in range(2):
                assert record[b, kv_head, key_block].tolist() == expected


# ---------------------------------------------------------------------------------------------------------------
# Helpers: kernel gradients, reference gradients


def reference_grads(q, k, v, dout, *, left, right, softcap=0.0, sinks=None, softmax_scale, cu_seqlens_q=None,
                    cu_seqlens_k=None, seqused_k=None, dlse=None):
    """(dq, dk, dv, dsinks) of the float64 reference by torch.autograd."""
    inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    sinks64 = None if sinks is None else sinks.detach().double().requires_grad_()
    kwargs = dict(softmax_scale=softmax_scale, window_size=(left, right), softcap=softcap, sinks=sinks64)
    if cu_seqlens_q is None:
        out, lse = attention_ref(*inputs, **kwargs)
    else:
        out, lse = attention_varlen_ref(*inputs, cu_seqlens_q, cu_seqlens_k, seqused_k=seqused_k, **kwargs)
    outputs, grads = [out], [dout.double()]
    if dlse is not None:
        outputs.append(lse)
        grads.append(dlse)
    wrt = inputs + ([sinks64] if sinks is not None else [])
    result = torch.autograd.grad(outputs, wrt, grads, allow_unused=True)
    result = [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, result)]
    return tuple(result[:3]) + ((result[3],) if sinks is not None else (None,))


def kernel_grads(q, k, v, dout, *, left, right, softcap=0.0, sinks=None, softmax_scale, cu_seqlens_q=None,
                 cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, seqused_k=None, dlse=None, config=None):
    out, lse, _ = attention_forward(q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap,
                                    sinks=sinks, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
                                    cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k, seqlens_k=seqused_k)
    return attention_backward(dout, q, k, v, out, lse, softmax_scale=softmax_scale, left=left, right=right,
                              softcap=softcap, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                              max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, dlse=dlse,
                              config=config)


def check_grads(name, actual, expected, tolerance):
    for grad_name, a, e in zip(("dq", "dk", "dv", "dsinks"), actual, expected):
        if e is None:
            assert a is None, f"{name}: {grad_name} should be None"
            continue
        assert a.shape == e.shape, (name, grad_name, a.shape, e.shape)
        assert not torch.isnan(a).any(), f"{name}: NaN in {grad_name}"
        assert_close(f"{name}: {grad_name}", a, e, tolerance)


def make_qkv(shape_q, shape_kv, dtype, scale=1.0):
    q = (torch.randn(shape_q) * scale).to(dtype)
    k = (torch.randn(shape_kv) * scale).to(dtype)
    v = torch.randn(shape_kv).to(dtype)
    return q, k, v


def run_dense_case(batch, sq, sk, heads, kv_heads, head_dim, left, right, *, softcap=0.0, with_sinks=False,
                   dtype=torch.float32, config=None, tolerance=None, name=""):
    q, k, v = make_qkv((batch, sq, heads, head_dim), (batch, sk, kv_heads, head_dim), dtype,
                       scale=1.5 if softcap else 1.0)
    sinks = torch.randn(heads) if with_sinks else None
    dout = torch.randn(batch, sq, heads, head_dim).to(dtype)
    scale = head_dim ** -0.5
    actual = kernel_grads(q, k, v, dout, left=left, right=right, softcap=softcap, sinks=sinks, softmax_scale=scale,
                          config=config)
    expected = reference_grads(q, k, v, dout, left=left, right=right, softcap=softcap, sinks=sinks,
                               softmax_scale=scale)
    check_grads(name, actual, expected, tolerance or GRAD_TOLERANCE[dtype])
    return actual


# ---------------------------------------------------------------------------------------------------------------
# Property tests (hypothesis)

window_sides = st.one_of(st.sampled_from([-1, 0, 1, 7]), st.integers(0, 60))


@st.composite
def dense_cases(draw):
    group = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([1, 2]))
    causal = draw(st.booleans())
    left, right = window.normalize_window(causal, (draw(window_sides), draw(window_sides)))
    return dict(batch=draw(st.sampled_from([1, 2])), sq=draw(st.integers(1, 48)), sk=draw(st.integers(1, 48)),
                heads=group * kv_heads, kv_heads=kv_heads, head_dim=draw(st.sampled_from([16, 32, 40, 64])),
                left=left, right=right, softcap=draw(st.sampled_from([0.0, 2.0])), with_sinks=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float16])), config=draw(st.sampled_from(CONFIGS)))


@settings(max_examples=20, **PROPERTY_SETTINGS)
@given(case=dense_cases(), seed=st.integers(0, 2**16))
def test_bwd_dense_matches_reference_property(case, seed):
    torch.manual_seed(seed)
    run_dense_case(**case, name=str(case))


@st.composite
def varlen_cases(draw):
    batch = draw(st.integers(1, 3))
    lengths_q = [draw(st.integers(0, 30)) for _ in range(batch)]
    lengths_k = [draw(st.integers(0, 30)) for _ in range(batch)]
    used_k = [draw(st.integers(0, n)) for n in lengths_k] if draw(st.booleans()) else None
    group = draw(st.sampled_from([1, 2, 3]))
    causal = draw(st.booleans())
    left, right = window.normalize_window(causal, (draw(window_sides), draw(window_sides)))
    return dict(lengths_q=lengths_q, lengths_k=lengths_k, used_k=used_k, heads=2 * group, kv_heads=2,
                head_dim=draw(st.sampled_from([16, 24])), left=left, right=right,
                softcap=draw(st.sampled_from([0.0, 2.0])), with_sinks=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float16])),
                padding=draw(st.integers(0, 3)), config=draw(st.sampled_from(CONFIGS)))


def run_varlen_case(lengths_q, lengths_k, used_k, heads, kv_heads, head_dim, left, right, softcap, with_sinks, dtype,
                    padding, config, name=""):
    cu_q = torch.tensor([0] + list(itertools.accumulate(lengths_q)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lengths_k)), dtype=torch.int32)
    # Padding rows past cu_seqlens[-1] belong to no sequence: their gradients must be 0.
    q, k, v = make_qkv((int(cu_q[-1]) + padding, heads, head_dim), (int(cu_k[-1]) + padding, kv_heads, head_dim),
                       dtype, scale=1.5 if softcap else 1.0)
    seqused_k = None if used_k is None else torch.tensor(used_k, dtype=torch.int32)
    sinks = torch.randn(heads) if with_sinks else None
    dout = torch.randn(q.shape).to(dtype)
    scale = head_dim ** -0.5
    kwargs = dict(left=left, right=right, softcap=softcap, sinks=sinks, softmax_scale=scale, cu_seqlens_q=cu_q,
                  cu_seqlens_k=cu_k, seqused_k=seqused_k)
    actual = kernel_grads(q, k, v, dout, max_seqlen_q=max(lengths_q), max_seqlen_k=max(lengths_k), config=config,
                          **kwargs)
    expected = reference_grads(q, k, v, dout, **kwargs)
    check_grads(name, actual, expected, GRAD_TOLERANCE[dtype])
    return actual


@settings(max_examples=20, **PROPERTY_SETTINGS)
@given(case=varlen_cases(), seed=st.integers(0, 2**16))
def test_bwd_varlen_matches_reference_property(case, seed):
    torch.manual_seed(seed)
    run_varlen_case(**case, name=str(case))


# ---------------------------------------------------------------------------------------------------------------
# Named cases


@pytest.mark.parametrize("left,right,with_sinks", [
    pytest.param(-1, 0, False, id="causal"),
    pytest.param(-1, 0, True, id="causal-sinks"),
    pytest.param(0, 0, False, id="W0_0"),
    pytest.param(2, 1, True, id="W2_1-sinks"),
])
def test_bwd_rows_that_see_no_key(left, right, with_sinks):
    # Sq = 30 > Sk = 9: the top rows see nothing (LSE -inf, or the sink); their dq is 0 and nothing is NaN.
    dq, dk, dv, dsinks = run_dense_case(1, 30, 9, 4, 2, 16, left, right, with_sinks=with_sinks, name="empty rows")
    empty = [i for i in range(30) if not any(_brute_visible(i, j, 30, 9, left, right) for j in range(9))]
    assert len(empty) >= 20
    assert dq[:, empty].eq(0).all()
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()
    if with_sinks:
        assert torch.isfinite(dsinks).all()


def test_bwd_window_wider_than_seqlen_k_equals_unbounded():
    torch.manual_seed(1)
    wide = run_dense_case(1, 20, 25, 2, 1, 16, 100, 100, name="wide window")
    torch.manual_seed(1)
    full = run_dense_case(1, 20, 25, 2, 1, 16, -1, -1, name="full")
    for a, b in zip(wide[:3], full[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("left,right", [(-1, 0), (3, 0), (4, 4), (-1, -1)], ids=lambda w: str(w))
def test_bwd_seqlen_k_shorter_than_q(left, right):
    run_dense_case(2, 41, 13, 4, 1, 32, left, right, softcap=2.0, with_sinks=True, name="Sk < Sq")


@pytest.mark.parametrize("head_dim", [64, 72, 128, 256], ids=lambda d: f"D{d}")
def test_bwd_head_dims(head_dim):
    run_dense_case(1, 19, 23, 2, 1, head_dim, 5, 2, with_sinks=True, name=f"D{head_dim}")


def test_bwd_bfloat16():
    run_dense_case(1, 33, 40, 4, 2, 64, 9, 0, softcap=2.0, with_sinks=True, dtype=torch.bfloat16, name="bf16")


def test_bwd_varlen_with_empty_sequences():
    # Empty q sequence, empty k sequence (its queries see nothing), seqused_k shorter than the sequence, padding.
    dq, dk, dv, _ = run_varlen_case([5, 0, 7, 11], [9, 6, 0, 14], [9, 6, 0, 10], 4, 2, 16, 3, 0, 0.0, True,
                                    torch.float32, 2, CONFIGS[1], name="varlen empty")
    assert dq[5:12].eq(0).all()  # sequence 2 has no key
    assert dk[25:29].eq(0).all() and dv[25:29].eq(0).all()  # keys past seqused_k of sequence 3
    assert dq[-2:].eq(0).all() and dk[-2:].eq(0).all()  # padding


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_bwd_gradcheck_float64_reference(varlen):
    # Kernel in fp32 against torch.autograd in float64, tight tolerance; every feature at once.
    torch.manual_seed(3)
    if varlen:
        run_varlen_case([13, 1, 20], [17, 4, 20], None, 6, 2, 24, 5, 2, 3.0, True, torch.float32, 1, CONFIGS[0])
    else:
        grads = run_dense_case(2, 21, 26, 6, 2, 24, 6, 1, softcap=3.0, with_sinks=True, tolerance=2e-6)
        assert all(g.dtype == torch.float32 for g in grads)


def test_reference_gradient_matches_finite_differences():
    # The oracle's autograd itself, against finite differences (window, softcap, sinks, GQA, an empty row).
    q = torch.randn(1, 6, 2, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 4, 1, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 4, 1, 8, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, sinks):
        return attention_ref(q, k, v, window_size=(1, 0), softcap=2.0, sinks=sinks)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, sinks))


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_bwd_no_keys_at_all_sink_gets_the_lse_gradient(varlen):
    # Sk = 0 in the whole call: out is 0 and lse is the sink, so dsink = sum of dlse over the head's rows.
    torch.manual_seed(5)
    sinks = torch.randn(2)
    kwargs = dict(left=-1, right=-1, sinks=sinks, softmax_scale=0.25)
    if varlen:
        q, k, v = make_qkv((9, 2, 16), (0, 1, 16), torch.float32)
        dout, dlse = torch.randn(q.shape), torch.randn(2, 9)
        cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
        cu_k = torch.zeros(3, dtype=torch.int32)
        seq = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        actual = kernel_grads(q, k, v, dout, dlse=dlse, max_seqlen_q=5, max_seqlen_k=0, **seq, **kwargs)
    else:
        q, k, v = make_qkv((2, 5, 2, 16), (2, 0, 1, 16), torch.float32)
        dout, dlse = torch.randn(q.shape), torch.randn(2, 2, 5)
        seq = {}
        actual = kernel_grads(q, k, v, dout, dlse=dlse, **kwargs)
    expected = reference_grads(q, k, v, dout, dlse=dlse.double(), **seq, **kwargs)
    check_grads("no keys", actual, expected, 1e-6)
    head_dims = (1,) if varlen else (0, 2)
    torch.testing.assert_close(actual[3], dlse.sum(head_dims), rtol=1e-6, atol=1e-6)
    assert actual[0].eq(0).all()


def test_bwd_lse_gradient():
    torch.manual_seed(4)
    q, k, v = make_qkv((1, 17, 2, 16), (1, 21, 1, 16), torch.float32)
    sinks = torch.randn(2)
    dout, dlse = torch.randn(q.shape), torch.randn(1, 2, 17)
    kwargs = dict(left=4, right=0, sinks=sinks, softmax_scale=0.25)
    check_grads("dlse", kernel_grads(q, k, v, dout, dlse=dlse, **kwargs),
                reference_grads(q, k, v, dout, dlse=dlse.double(), **kwargs), 1e-5)


def test_bwd_is_deterministic():
    torch.manual_seed(5)
    q, k, v = make_qkv((1, 40, 8, 16), (1, 40, 2, 16), torch.float32)
    dout = torch.randn(q.shape)
    first = kernel_grads(q, k, v, dout, left=9, right=0, softmax_scale=0.25)
    second = kernel_grads(q, k, v, dout, left=9, right=0, softmax_scale=0.25)
    for a, b in zip(first[:3], second[:3]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Public API: autograd end to end, torch.compile, the CPU reference path, opcheck


def _api_grads(fn, tensors, **kwargs):
    leaves = [t.detach().requires_grad_() for t in tensors]
    out, lse = fn(*leaves, return_softmax_lse=True, **kwargs)
    (out.sum() + 0.5 * lse.sum()).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("reference_path", [False, True], ids=["interpreter", "cpu-reference"])
def test_flash_attn_func_backward(reference_path, monkeypatch):
    if reference_path:
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors then run the float64 reference, autograd included
    torch.manual_seed(6)
    q, k, v = make_qkv((2, 11, 4, 16), (2, 14, 2, 16), torch.float32)
    sinks = torch.randn(4)
    kwargs = dict(causal=True, window_size=(5, -1), softcap=2.0)
    grads = _api_grads(lambda q, k, v, s, **kw: swattn.flash_attn_func(q, k, v, sinks=s, **kw), (q, k, v, sinks),
                       **kwargs)
    dout = torch.ones(q.shape)
    expected = reference_grads(q, k, v, dout, left=5, right=0, softcap=2.0, sinks=sinks, softmax_scale=0.25,
                               dlse=torch.full((2, 4, 11), 0.5, dtype=torch.float64))
    check_grads("flash_attn_func", grads, expected, 1e-5)


def test_flash_attn_varlen_func_backward():
    torch.manual_seed(7)
    cu_q = torch.tensor([0, 6, 6, 15], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 12, 20], dtype=torch.int32)
    q, k, v = make_qkv((15, 4, 16), (20, 2, 16), torch.float32)
    sinks = torch.randn(4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    out = swattn.flash_attn_varlen_func(*leaves[:3], cu_q, cu_k, 9, 9, window_size=(3, 1), sinks=leaves[3])
    out.sum().backward()
    expected = reference_grads(q, k, v, torch.ones(q.shape), left=3, right=1, sinks=sinks, softmax_scale=0.25,
                               cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    check_grads("flash_attn_varlen_func", [t.grad for t in leaves], expected, 1e-5)


def test_flash_attn_func_backward_compiles_without_graph_breaks():
    torch.manual_seed(8)
    q, k, v = make_qkv((1, 9, 4, 16), (1, 13, 2, 16), torch.float32)
    sinks = torch.randn(4)

    def loss(q, k, v, s):
        return swattn.flash_attn_func(q, k, v, window_size=(3, 0), sinks=s).square().sum()

    compiled = _api_grads(lambda *t, **kw: (torch.compile(loss, backend="aot_eager", fullgraph=True)(*t),
                                            torch.zeros(())), (q, k, v, sinks))
    eager = _api_grads(lambda *t, **kw: (loss(*t), torch.zeros(())), (q, k, v, sinks))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("sinks", [False, True], ids=["nosink", "sink"])
def test_bwd_opcheck(sinks):
    torch.manual_seed(9)
    q, k, v = make_qkv((1, 7, 4, 16), (1, 10, 2, 16), torch.float32)
    sink = torch.randn(4) if sinks else None
    fwd_args = (q, k, v, sink, None, None, None, 7, 10, 0.25, 3, 0, 2.0, False, 1)
    out, lse = torch.ops.swattn.fwd(*fwd_args)
    torch.library.opcheck(torch.ops.swattn.bwd.default,
                          (torch.randn(q.shape), q, k, v, out, lse, None, sink, None, None, None, 7, 10, 0.25, 3, 0,
                           2.0), test_utils=OPCHECK_TESTS)
    # The forward op with inputs that require grad: its registered autograd formula.
    grad_args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in fwd_args)
    torch.library.opcheck(torch.ops.swattn.fwd.default, grad_args, test_utils=OPCHECK_TESTS)


def test_bench_backward_quick():
    # `python -m swattn.bench backward --quick`: tiny CPU shapes, swattn's gradients pass the check and are timed.
    import argparse

    from swattn.bench import backward

    section = backward.main(argparse.Namespace(scenario="backward", quick=True, providers=None, no_peers=False,
                                               seqlens=[20]))
    rows = [r for r in section.rows if r.provider == "swattn"]
    assert len(rows) == 6
    for row in rows:
        assert row.status == "ok" and row.timing is not None and row.error <= row.tolerance, section.table


@pytest.mark.parametrize("group", [2, 8])
@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_bwd_packed_gqa_equals_unpacked_and_reference(group, varlen):
    # PackGQA changes only how rows are grouped into steps: its gradients match the reference and the unpacked
    # kernels' (small windows on and off block boundaries, sinks and softcap, a row block straddling sequences).
    packed = BwdConfig(16, 16, 16, 16, 4, 1, pack_gqa=True)
    unpacked = BwdConfig(16, 16, 16, 16, 4, 1)
    kwargs = dict(heads=2 * group, kv_heads=2, head_dim=16, left=9, right=2, softcap=2.0, with_sinks=True,
                  dtype=torch.float32)
    if varlen:
        run = functools.partial(run_varlen_case, lengths_q=[13, 0, 21], lengths_k=[20, 5, 21], used_k=None,
                                padding=2, **kwargs)
    else:
        run = functools.partial(run_dense_case, batch=2, sq=21, sk=29, **kwargs)
    torch.manual_seed(group)
    grads_packed = run(config=packed, name="packed")
    torch.manual_seed(group)  # the same inputs
    grads_unpacked = run(config=unpacked, name="unpacked")
    for name, a, b in zip(("dq", "dk", "dv", "dsinks"), grads_packed, grads_unpacked):
        assert_close(f"packed vs unpacked {name}", a, b, 1e-5)


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_bwd_tma_loads_equal_pointer_loads(varlen):
    # Descriptors (rows ending at the loop's last key / query, zero fill) read the same values as masked pointer
    # loads, so the gradients are bitwise those of the pointer kernels (and match the reference).
    pointers = BwdConfig(16, 32, 32, 16, 4, 1)
    descriptors = BwdConfig(16, 32, 32, 16, 4, 1, tma=True)
    kwargs = dict(heads=4, kv_heads=2, head_dim=16, left=9, right=2, softcap=2.0, with_sinks=True,
                  dtype=torch.float32)
    if varlen:
        run = functools.partial(run_varlen_case, lengths_q=[13, 0, 21], lengths_k=[20, 5, 21], used_k=[18, 5, 21],
                                padding=2, **kwargs)
    else:
        run = functools.partial(run_dense_case, batch=2, sq=21, sk=45, **kwargs)
    torch.manual_seed(3)
    grads_tma = run(config=descriptors, name="tma")
    torch.manual_seed(3)
    grads_pointers = run(config=pointers, name="pointers")
    for name, a, b in zip(("dq", "dk", "dv", "dsinks"), grads_tma, grads_pointers):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("sink_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_sinks_parameter_keeps_its_dtype_and_gets_its_gradient(sink_dtype):
    # A model's sinks parameter (gpt-oss: bf16) goes to the kernels uncast; its gradient comes back in its dtype.
    torch.manual_seed(5)
    q, k, v = (t.requires_grad_() for t in make_qkv((2, 19, 4, 16), (2, 19, 2, 16), torch.float16))
    sinks = torch.randn(4).to(sink_dtype).requires_grad_()
    out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(6, 0), sinks=sinks)
    dout = torch.randn_like(out)
    actual = torch.autograd.grad(out, (q, k, v, sinks), dout)
    assert actual[3].dtype == sink_dtype
    expected = reference_grads(q, k, v, dout, left=6, right=0, sinks=sinks, softmax_scale=16 ** -0.5)
    check_grads(f"sinks {sink_dtype}", [g.float() for g in actual], [e.float() for e in expected], 2e-2)


def test_sinks_without_a_gradient_skip_the_dsinks_kernel(monkeypatch):
    """Sinks that need no gradient (frozen, or a plain tensor) reach dQ, dK and dV only through the saved LSE: the
    backward skips their gradient's kernel and gives the gradients of the sinks-with-gradient call, bit for bit."""
    from swattn.kernels import bwd as bwd_module

    torch.manual_seed(6)
    q, k, v = (t.requires_grad_() for t in make_qkv((1, 9, 2, 16), (1, 9, 1, 16), torch.float16))
    sinks = torch.randn(2)
    launched = []

    def grads(sinks):
        out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(3, 0), sinks=sinks)
        return torch.autograd.grad(out, (q, k, v) + ((sinks,) if sinks.requires_grad else ()), torch.ones_like(out))

    real_launch = bwd_module.Launch.__call__
    monkeypatch.setattr(bwd_module.Launch, "__call__", lambda self, *t: launched.append(self.kernel.fn.__name__)
                        or real_launch(self, *t))
    without = grads(sinks)
    assert "_swa_bwd_dsinks_kernel" not in launched
    with_gradient = grads(sinks.clone().requires_grad_())
    assert "_swa_bwd_dsinks_kernel" in launched
    for a, b in zip(without, with_gradient[:3]):
        assert torch.equal(a, b)


def test_backward_refuses_more_sequences_than_the_grid_takes():
    """Regression (s12 fuzz, found by review): the dQ and dK/dV grids hold the sequences in their second dimension
    (CUDA: at most 65535); beyond it a ValueError naming q, not the driver's "invalid argument". (The Triton
    forward refuses such calls first; a forward on the Gluon kernel's one-dimensional grid does not.)"""
    batch = 65536
    q = torch.randn(batch, 1, 1, 8, dtype=torch.float16)
    lse = torch.zeros(batch, 1, 1)
    with pytest.raises(ValueError, match=r"^q: the backward takes at most 65535 sequences .* got 65536 sequences"):
        attention_backward(q, q, q, q, q, lse, softmax_scale=1.0, left=-1, right=-1)
