"""Non-finite inputs stay where they are: a NaN or inf in one sequence's q, k or v never changes other sequences
or heads, and the output rows whose window holds it become non-finite.

The rows that must not change are compared bit for bit with a run on the clean inputs. q and k poison stays in
exactly the rows that see it. A non-finite value row is the hard case: it meets the rows of its tile that cannot
see its key through the P @ V product, where 0 * NaN is NaN. By default (``fwd.ISOLATE_NON_FINITE``) the kernel
flags such tiles and a second launch redoes them with a guarded loop, so the isolation is exact for v too; with
``SWATTN_ISOLATE_NON_FINITE=0`` the value may reach the rows of its tile (same sequence, same KV head). The CPU
fallback (``swattn.reference``, CPU tensors without the interpreter) isolates exactly too: every test runs there.
"""

from __future__ import annotations

import os

import pytest
import torch

import swattn
from swattn import window
from swattn.kernels import fwd

H, HK, D = 4, 2, 16
GROUP = H // HK
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter computes with the poison
POISONS = ["v-nan", "v-inf", "k-nan", "k-inf", "q-nan"]


def poison_value(kind: str) -> float:
    return float("nan") if kind.endswith("nan") else float("inf")


@pytest.fixture(params=["isolate", "no-isolation", "fallback"])
def isolate(request, monkeypatch):
    """Whether the isolation is exact, on three paths: the kernels with the isolation pass (the default; here its
    redo pass behind the raised flag), the kernels without it, and the CPU fallback (no interpreter:
    swattn.reference), which keeps the kernels' contract exactly."""
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", request.param != "no-isolation")
    monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 0)
    if request.param != "fallback":
        yield request.param != "no-isolation"
        return
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors then take the reference (read per call)
    with torch.device("cpu"):  # also under SWATTN_TEST_DEVICE=cuda
        yield True


def test_isolation_is_on_by_default():
    # The module reads SWATTN_ISOLATE_NON_FINITE at import; the test run does not set it.
    assert os.environ.get("SWATTN_ISOLATE_NON_FINITE") is None
    assert fwd.ISOLATE_NON_FINITE is True


def expect_isolated(out, clean, seeing, kind, exact, group_rows):
    """``seeing`` [..., Sq, H] marks the rows whose window holds the poison: the others are bitwise unchanged (for
    a value poison without exact isolation: the rows outside ``group_rows``, its sequence and KV head); the seeing
    ones are non-finite, except for an infinite key, whose score may be -inf and then drops out."""
    assert out.shape[:-1] == seeing.shape
    untouched = ~seeing if exact or not kind.startswith("v") else ~group_rows
    assert torch.equal(out[untouched], clean[untouched]), f"{kind}: a row that cannot see the poison changed"
    assert seeing.any(), f"{kind}: the case must poison some visible key"
    if kind != "k-inf":
        assert not torch.isfinite(out[seeing]).all(-1).any(), f"{kind}: a row that sees the poison stayed finite"


def group_mask(shape, batch_or_rows, kv_head):
    """[..., Sq, H] bool: the rows of one sequence (a batch index, or a slice of varlen rows) and KV head."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[batch_or_rows, ..., kv_head * GROUP:(kv_head + 1) * GROUP] = True
    return mask


def seeing_rows(kind, seqlen_q, seqlen_k, left, right, key, kv_head, row=None, head=None):
    """[Sq, H] bool: rows of the poisoned sequence that see the poisoned key (q poison: only that row and head)."""
    seeing = torch.zeros(seqlen_q, H, dtype=torch.bool)
    if kind.startswith("q"):
        seeing[row, head] = True
        return seeing
    rows = torch.arange(seqlen_q)
    sees_key = window.is_visible(rows, torch.tensor(key), seqlen_q, seqlen_k, left, right)
    seeing[:, kv_head * GROUP:(kv_head + 1) * GROUP] = torch.as_tensor(sees_key)[:, None]
    return seeing


@pytest.mark.parametrize("dtype,kinds", [(torch.float16, POISONS), (torch.float32, ["v-nan"])], ids=["fp16", "fp32"])
@pytest.mark.parametrize("window_size,key", [((5, 0), 20), ((-1, 0), 9), ((3, 2), 33)])
def test_dense(dtype, kinds, window_size, key, isolate):
    """Each kind of poison in turn, against one clean run (fp32: the value NaN, the case the isolation pass is for)."""
    batch, seqlen, poisoned_batch, kv_head, row, head = 3, 37, 1, 1, 21, 2
    q, k, v = (torch.randn(batch, seqlen, heads, D, dtype=dtype) for heads in (H, HK, HK))
    clean = swattn.flash_attn_func(q, k, v, window_size=window_size)
    for kind in kinds:
        inputs = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
        if kind.startswith("q"):
            inputs["q"][poisoned_batch, row, head, 5] = poison_value(kind)
        else:
            inputs[kind[0]][poisoned_batch, key, kv_head, 5] = poison_value(kind)
        out = swattn.flash_attn_func(**inputs, window_size=window_size)
        seeing = torch.zeros(batch, seqlen, H, dtype=torch.bool)
        seeing[poisoned_batch] = seeing_rows(kind, seqlen, seqlen, *window_size, key, kv_head, row, head)
        expect_isolated(out, clean, seeing, kind, isolate, group_mask(seeing.shape, poisoned_batch, kv_head))


@pytest.mark.parametrize("kind", ["v-nan", "k-inf", "q-nan"])
def test_varlen_sequences_do_not_leak(kind, isolate):
    """Sequences packed next to each other: a poison at the last key of one or the first of the next stays."""
    lengths = [13, 19, 0, 11]
    cu = torch.tensor([0, 13, 32, 32, 43], dtype=torch.int32)
    total = int(cu[-1])
    q, k, v = (torch.randn(total, heads, D, dtype=torch.float16) for heads in (H, HK, HK))
    kwargs = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lengths), max_seqlen_k=max(lengths),
                  causal=True)
    clean = swattn.flash_attn_varlen_func(q, k, v, **kwargs)
    for token in (12, 13):  # sequence 0's last token, sequence 1's first
        qp, kp, vp = q.clone(), k.clone(), v.clone()
        target = {"q": qp, "k": kp, "v": vp}[kind[0]]
        target[token, 0 if kind.startswith("q") else 1, 3] = poison_value(kind)
        out = swattn.flash_attn_varlen_func(qp, kp, vp, **kwargs)
        sequence = 0 if token < 13 else 1
        start = int(cu[sequence])
        local = seeing_rows(kind, lengths[sequence], lengths[sequence], -1, 0, token - start, 1, token - start, 0)
        seeing = torch.zeros(total, H, dtype=torch.bool)
        seeing[start:start + lengths[sequence]] = local
        group = group_mask(seeing.shape, slice(start, start + lengths[sequence]), 1)
        expect_isolated(out, clean, seeing, kind, isolate, group)


def test_isolation_buffers_are_kept_and_the_raised_flag_is_reset(monkeypatch):
    """The flags and the raised flag are kept between calls (``fwd._isolation_buffers``): a poisoned call raises
    the flag, its redo pass zeroes it (and its count) for the next call, and clean, poisoned and clean calls in a
    row each come out as a call on fresh buffers would."""
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", True)
    monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 0)  # the redo pass behind the raised flag
    batch, seqlen, key, kv_head = 2, 37, 20, 1
    q, k, v = (torch.randn(batch, seqlen, heads, D, dtype=torch.float16) for heads in (H, HK, HK))
    poisoned = v.clone()
    poisoned[1, key, kv_head, 5] = float("nan")
    clean = swattn.flash_attn_func(q, k, v, window_size=(5, 0))
    flags, raised = fwd._isolation_buffers(q.device, 1)
    seeing = torch.zeros(batch, seqlen, H, dtype=torch.bool)
    seeing[1] = seeing_rows("v-nan", seqlen, seqlen, 5, 0, key, kv_head)
    for values in (poisoned, v, poisoned):
        out = swattn.flash_attn_func(q, k, values, window_size=(5, 0))
        kept = fwd._isolation_buffers(q.device, 1)
        assert kept[0] is flags and kept[1] is raised  # the same tensors on every call
        assert raised.tolist() == [0, 0]
        if values is v:
            assert torch.equal(out, clean)
        else:
            expect_isolated(out, clean, seeing, "v-nan", True, None)


@pytest.fixture(params=["scanning-redo", "guard-one-pass", "guard-branched", "guard-checks-output"])
def small_grid_isolation(request, monkeypatch):
    """The two ways small grids (a verify step's) may isolate, forced on every grid: the redo pass that reads each
    tile's flags (``fwd.REDO_SCANNED``), and the guarded loop in the main pass with no redo launch
    (``fwd.GUARD_ONE_PASS``, single-loop tiles; others keep the redo), also with the guard behind a branch on V's
    values (``fwd.GUARD_BRANCH``) or on the plain product's result (``fwd.GUARD_CHECKS_OUTPUT``)."""
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", True)
    monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 1 << 30)
    monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", 0 if request.param == "scanning-redo" else 1 << 30)
    monkeypatch.setattr(fwd, "GUARD_BRANCH", request.param == "guard-branched")
    monkeypatch.setattr(fwd, "GUARD_CHECKS_OUTPUT", request.param == "guard-checks-output")
    return True


@pytest.mark.parametrize("num_splits,left", [(1, 7), (3, -1)])
@pytest.mark.parametrize("pack_gqa", [True, False])
def test_paged_cache(num_splits, left, pack_gqa, isolate):
    """Decode and a 3-token extend on a paged cache with split-KV: the poisoned token's sequence and KV head, for a
    value NaN, a value inf and a key NaN in turn against one clean run."""
    paged_cache_case(num_splits, left, pack_gqa, isolate)


def test_paged_cache_small_grid_isolation(small_grid_isolation):
    """The window case with the small-grid isolation modes (PackGQA, as a verify step): exact isolation either way
    (test_paged_cache already runs the split-KV case's redo behind the raised flag)."""
    paged_cache_case(1, 7, True, small_grid_isolation)


def test_guard_one_pass_launches_once_and_keeps_finite_bits(monkeypatch):
    """A single-loop tile grid under GUARD_ONE_PASS: one launch (no redo), the same bits as the flag + redo path on
    finite inputs, and a value NaN stays in the rows that see it."""
    from swattn.kernels.configs import FwdConfig, forced_config

    batch, page_size, pages_per_seq, seqlen_q = 2, 4, 6, 3
    seqlens = torch.tensor([21, 17], dtype=torch.int32)
    k_cache = torch.randn(batch * pages_per_seq, page_size, HK, D, dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * pages_per_seq, dtype=torch.int32).view(batch, pages_per_seq)
    q = torch.randn(batch, seqlen_q, H, D, dtype=torch.float16)
    kwargs = dict(cache_seqlens=seqlens, page_table=table, causal=True, window_size=(7, 0), pack_gqa=True)
    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", True)
    single = FwdConfig(16, 16, 4, 1, single_loop=True)
    outs = {}
    for one_pass in (False, True):
        monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", 1 << 30 if one_pass else 0)
        fwd._PLANS.clear()
        with forced_config(single):
            outs[one_pass] = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
        (plan,) = fwd.plans()
        assert plan.guard_one_pass == one_pass and (plan.redo is None) == one_pass
    assert torch.equal(outs[False], outs[True])
    monkeypatch.setattr(fwd, "GUARD_ONE_PASS_MAX_WORK", 1 << 30)
    poisoned = v_cache.clone()
    page = int(table[1, 14 // page_size])
    poisoned[page, 14 % page_size, 0, 2] = float("nan")
    with forced_config(single):
        out = swattn.flash_attn_with_kvcache(q, k_cache, poisoned, **kwargs)
    seeing = torch.zeros(batch, seqlen_q, H, dtype=torch.bool)
    seeing[1] = seeing_rows("v-nan", seqlen_q, 17, 7, 0, 14, 0)
    expect_isolated(out, outs[True], seeing, "v-nan", True, group_mask(seeing.shape, 1, 0))


def paged_cache_case(num_splits, left, pack_gqa, isolate):
    batch, page_size, pages_per_seq, seqlen_q = 3, 4, 6, 3
    seqlens = torch.tensor([21, 17, 24], dtype=torch.int32)
    k_cache = torch.randn(batch * pages_per_seq, page_size, HK, D, dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.randperm(batch * pages_per_seq, dtype=torch.int32).view(batch, pages_per_seq)
    q = torch.randn(batch, seqlen_q, H, D, dtype=torch.float16)
    kwargs = dict(cache_seqlens=seqlens, page_table=page_table, causal=True, window_size=(left, 0),
                  num_splits=num_splits, pack_gqa=pack_gqa)
    clean = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
    poisoned_batch, kv_head, key = 1, 0, 14  # inside sequence 1's window (keys 7..16 for its 3 queries)
    page = int(page_table[poisoned_batch, key // page_size])
    for kind in ("v-nan", "v-inf", "k-nan"):
        caches = {"k": k_cache.clone(), "v": v_cache.clone()}
        caches[kind[0]][page, key % page_size, kv_head, 2] = poison_value(kind)
        out = swattn.flash_attn_with_kvcache(q, caches["k"], caches["v"], **kwargs)
        seeing = torch.zeros(batch, seqlen_q, H, dtype=torch.bool)
        seeing[poisoned_batch] = seeing_rows(kind, seqlen_q, int(seqlens[poisoned_batch]), left, 0, key, kv_head)
        expect_isolated(out, clean, seeing, kind, isolate, group_mask(seeing.shape, poisoned_batch, kv_head))


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
def test_keys_past_a_tile_span_are_not_read(tma, monkeypatch):
    """Without the isolation pass a value NaN reaches every row of the tiles that load it; so rows whose tile's
    span ends before the poisoned key stay bitwise clean: the last block of a tile (which runs past the span's end
    for span % BLOCK_N != 0) loads only up to the tile's last visible key, through pointers or descriptors."""
    from swattn.kernels.configs import FwdConfig, forced_config

    monkeypatch.setattr(fwd, "ISOLATE_NON_FINITE", False)
    seqlen, left, poisoned_key = 64, 3, 40
    q, k, v = (torch.randn(1, seqlen, heads, D, dtype=torch.float16) for heads in (H, HK, HK))
    with forced_config(FwdConfig(16, 16, 4, 1, tma=tma)):
        clean = swattn.flash_attn_func(q, k, v, window_size=(left, 0), pack_gqa=False)
        v[0, poisoned_key] = float("nan")
        out = swattn.flash_attn_func(q, k, v, window_size=(left, 0), pack_gqa=False)
    # Tile 1 (rows 16..31) spans keys 13..31 in two 16-key blocks, the second of which would reach key 44.
    assert torch.equal(out[0, :32], clean[0, :32])
    assert torch.isnan(out[0, poisoned_key:poisoned_key + left + 1]).all()
