"""The Gluon sm_90 forward (swattn/kernels/gluon_fwd.py) at real sizes on an H100/H200 (skipped elsewhere).

Each case runs the same call twice, through the Gluon kernel and through the Triton kernels (SWATTN_GLUON's two
settings), and checks both against the float32 reference: output and LSE, fresh random data, outputs poisoned
before each run. A counter asserts that the Gluon launch really served the call (dispatch could silently fall
back). Covered: windows that start mid-block, causal, bidirectional, no window, more keys than queries and fewer
(rows that see nothing), PackGQA on and off, sinks, softcap, head_dim 64 and 128, bf16 and fp16, varlen with empty
and short sequences, and non-finite isolation.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import swattn
from swattn.kernels import gluon_fwd
from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref
from swattn.testing import assert_close, tolerance_for

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
pytestmark = pytest.mark.skipif(not (HOPPER and gluon_fwd.GLUON_AVAILABLE), reason="the Gluon kernel needs sm_90")

DEVICE = "cuda"
LSE_ATOL = 2e-3
REF = dict(compute_dtype=torch.float32)


class GluonLaunches:
    """Gluon launches since the block began (``gluon_fwd.launch_count``: counted on the launches themselves, so a
    repeated call's kept launch, which skips ``gluon_fwd.forward``, counts too); true when there were any."""

    def __init__(self):
        self.start = gluon_fwd.launch_count()

    def __len__(self):
        return max(0, gluon_fwd.launch_count() - self.start)  # a plan dropped meanwhile takes its count along


@contextlib.contextmanager
def gluon_mode(mode: str):
    """Force the dispatch ("1": Gluon wherever supported, "0": Triton) and count Gluon launches."""
    saved_mode = gluon_fwd.GLUON_MODE
    gluon_fwd.GLUON_MODE = mode
    try:
        yield GluonLaunches()
    finally:
        gluon_fwd.GLUON_MODE = saved_mode


def randn(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def check_lse(name, lse, ref_lse):
    assert not torch.isnan(lse).any(), f"{name}: NaN in LSE"
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), f"{name}: -inf at different rows"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=1e-3)


def both_paths(fn):
    """``fn()`` through Gluon (asserting it served the call) and through Triton: ``(gluon, triton)`` results."""
    with gluon_mode("1") as calls:
        gluon_result = fn()
        torch.cuda.synchronize()
    assert calls, "the Gluon kernel did not serve this call"
    with gluon_mode("0") as calls:
        triton_result = fn()
        torch.cuda.synchronize()
    assert not calls
    return gluon_result, triton_result


DENSE = [
    # batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, sinks, pack_gqa
    (1, 4096, 4096, 64, 8, 64, (127, 0), 0.0, True, True),  # gpt-oss sliding layer, packed
    (1, 4096, 4096, 64, 8, 64, (127, 0), 0.0, True, False),
    (1, 4096, 4096, 64, 8, 64, (-1, 0), 0.0, True, False),  # gpt-oss full layer
    (2, 2048, 2048, 32, 8, 128, (4095, 0), 0.0, False, False),  # window >= Sk: equals causal
    (1, 3000, 3000, 32, 8, 128, (1023, 0), 0.0, False, False),  # lengths off every block
    (1, 1000, 2500, 16, 1, 64, (200, 3), 0.0, True, True),  # MQA, more keys than queries, right side
    (1, 2500, 1000, 32, 2, 128, (-1, 0), 0.0, False, False),  # Sk < Sq: the top rows see nothing
    (2, 777, 777, 8, 8, 64, (0, 0), 0.0, True, False),  # window 0: the diagonal only
    (1, 1234, 1234, 16, 16, 64, (63, 64), 30.0, True, False),  # bidirectional window, softcap
    (3, 513, 513, 64, 4, 128, (128, 0), 0.0, False, True),  # GQA 16 packed; window edge one past a block
    (1, 700, 700, 8, 2, 128, (-1, -1), 0.0, False, False),  # no window at all
    (2, 100, 100, 8, 2, 64, (31, 0), 0.0, True, False),  # shorter than a tile
    (2, 1500, 1500, 32, 8, 128, (511, 0), 30.0, True, True),  # softcap at D128, packed, sinks
]
# head_dim 256 (one Q slot, 64-key blocks, two consumer warpgroups only): the dense test and the KV-cache test.
DENSE_D256 = [
    (1, 3000, 3000, 16, 8, 256, (1023, 0), 0.0, False, False),  # Gemma 3 shape
    (2, 1100, 1100, 16, 8, 256, (4095, 0), 50.0, True, True),  # Gemma 2: softcap 50, packed, sinks
    (1, 700, 900, 8, 8, 256, (-1, -1), 0.0, False, False),  # no window, more keys than queries
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", DENSE + DENSE_D256,
                         ids=lambda c: f"B{c[0]}-Sq{c[1]}-Sk{c[2]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}"
                         f"{'-cap' if c[7] else ''}{'-sinks' if c[8] else ''}{'-pack' if c[9] else ''}")
def test_dense_against_reference_and_triton(case, dtype):
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, with_sinks, pack_gqa = case
    scale = 2.0 if softcap else 1.0
    q = randn(batch, seqlen_q, heads, head_dim, dtype=dtype, scale=scale)
    k = randn(batch, seqlen_k, kv_heads, head_dim, dtype=dtype, scale=scale)
    v = randn(batch, seqlen_k, kv_heads, head_dim, dtype=dtype)
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None

    def call():
        return swattn.flash_attn_func(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks,
                                      pack_gqa=pack_gqa, return_softmax_lse=True)

    (out, lse), (triton_out, triton_lse) = both_paths(call)
    ref, ref_lse = attention_ref(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks, **REF)
    tol = tolerance_for(dtype)
    assert_close("gluon out", out, ref, tol)
    check_lse("gluon lse", lse, ref_lse)
    assert_close("triton out", triton_out, ref, tol)
    # The two paths differ only in summation order: they agree much more closely than either with rounding.
    assert_close("gluon vs triton", out, triton_out, tol)


@pytest.mark.parametrize("case", [DENSE[0], DENSE[1], DENSE[5], DENSE[7], DENSE[9], DENSE[-2]],
                         ids=lambda c: f"B{c[0]}-Sq{c[1]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-pack' if c[9] else ''}")
@pytest.mark.parametrize("consumers", [1, 3])
def test_other_consumer_counts(case, consumers, monkeypatch):
    """64-row tiles (one consumer warpgroup, two programs per SM) and 192-row tiles (three consumer warpgroups),
    64-key blocks (what fits their register and shared-memory budgets at head_dim 128) against the reference, LSE
    included."""
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: consumers)
    monkeypatch.setattr(gluon_fwd, "block_n_for", lambda *args: 64)
    test_dense_against_reference_and_triton(case, torch.bfloat16)


@pytest.mark.parametrize("wg_rows", [64, 128])
@pytest.mark.parametrize("case", [DENSE[0], DENSE[5], (2, 100, 100, 8, 2, 64, (31, 0), 0.0, True, True),
                                  (1, 333, 333, 64, 8, 64, (127, 0), 0.0, True, True)],
                         ids=lambda c: f"B{c[0]}-Sq{c[1]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-pack' if c[9] else ''}")
def test_64_and_128_row_warpgroups(case, wg_rows, monkeypatch):
    """Packed small windows at head_dim 64 with one consumer warpgroup of 64 rows (four programs per SM) or of 128
    (two m64 products per block, two programs per SM): a tile's rows past the sequence (mid-tile ends), its
    non-finite flags per 64-row group and the TMA store of both halves, against the reference."""
    monkeypatch.setattr(gluon_fwd, "WG_ROWS_SMALL_D64", wg_rows)
    assert gluon_fwd.wg_rows_for(case[5], case[9], *case[6]) == wg_rows
    test_dense_against_reference_and_triton(case, torch.bfloat16)


@pytest.mark.parametrize("consumers", [1, 2, 3])
@pytest.mark.parametrize("case", [DENSE[0], DENSE[4], DENSE[6], DENSE[9], DENSE[-2]],
                         ids=lambda c: f"B{c[0]}-Sq{c[1]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-pack' if c[9] else ''}")
def test_output_through_a_tma_store(case, consumers, monkeypatch):
    """O leaves through the Q slot and a TMA store: boxes past a dense sequence's end (3000, 100 rows: mid-tile,
    batch 2) are clipped, tiles whose rows see nothing (Sk < Sq) take the per-thread stores."""
    monkeypatch.setattr(gluon_fwd, "TMA_STORE", True)
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: consumers)
    if consumers != 2:
        monkeypatch.setattr(gluon_fwd, "block_n_for", lambda *args: 64)
    test_dense_against_reference_and_triton(case, torch.bfloat16)


def same_bits_under_switch(case, monkeypatch, switch: str, values: tuple = (False, True)) -> None:
    """The Gluon call of ``case`` with the module switch ``switch`` at each of ``values`` (off and on): the same
    output and LSE bits."""
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, with_sinks, pack_gqa = case
    q = randn(batch, seqlen_q, heads, head_dim, dtype=torch.bfloat16)
    k = randn(batch, seqlen_k, kv_heads, head_dim, dtype=torch.bfloat16)
    v = randn(batch, seqlen_k, kv_heads, head_dim, dtype=torch.bfloat16)
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
    results = []
    for flag in values:
        monkeypatch.setattr(gluon_fwd, switch, flag)
        with gluon_mode("1") as calls:
            results.append(swattn.flash_attn_func(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks,
                                                  pack_gqa=pack_gqa, return_softmax_lse=True))
            torch.cuda.synchronize()
        assert calls
    (out, lse), (switched_out, switched_lse) = results
    assert torch.equal(out, switched_out) and torch.equal(lse, switched_lse)


@pytest.mark.parametrize("case", [DENSE[0], DENSE[3], DENSE[5], DENSE[6], DENSE[9], DENSE[-1]],
                         ids=lambda c: f"H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-pack' if c[9] else ''}")
def test_pingpong_matches_the_default_schedule(case, monkeypatch):
    """The consumers taking turns on the tensor cores changes only the order of issue: the same bits."""
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: 2)  # ping-pong is between two warpgroups
    monkeypatch.setattr(gluon_fwd, "tma_store_for", lambda consumers: False)
    same_bits_under_switch(case, monkeypatch, "PINGPONG")


SYNC_TRIMS = ["THREAD_RELEASE", "OVERLAP_TILES", "PV_WAIT_LATE", "CARRIED_RING",
              "THREAD_RELEASE|OVERLAP_TILES|PV_WAIT_LATE|CARRIED_RING"]


def with_trims(names: str) -> int:
    """The shipped ``SOFTMAX_TRIMS`` with the bits ``names`` ("A|B") set."""
    return gluon_fwd.SOFTMAX_TRIMS | sum(getattr(gluon_fwd, name) for name in names.split("|"))


@pytest.mark.parametrize("trims", SYNC_TRIMS)
@pytest.mark.parametrize("case", [DENSE[0], DENSE[3], DENSE[5], DENSE[6], DENSE[9], DENSE[-1]],
                         ids=lambda c: f"H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-pack' if c[9] else ''}")
def test_stage_releases_and_overlapped_tiles_keep_the_bits(case, trims, monkeypatch):
    """K/V stages released by one arrival per consumer thread (``THREAD_RELEASE``), the next tile's first scores
    product issued under this tile's epilogue (``OVERLAP_TILES``, two-warpgroup tiles), the P V wait after the
    exponentials (``PV_WAIT_LATE``) and the ring's stage and phase carried from block to block (``CARRIED_RING``)
    change only when and how things are issued: the same bits as the shipped schedule."""
    same_bits_under_switch(case, monkeypatch, "SOFTMAX_TRIMS", (gluon_fwd.SOFTMAX_TRIMS, with_trims(trims)))


HALF_CASES = [
    # batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, sinks, pack_gqa
    (2, 2048, 2048, 32, 8, 128, (-1, 0), 0.0, False, False),  # causal, Sq == Sk: every tile of 2+ blocks halved
    (1, 1000, 2500, 32, 8, 128, (-1, 0), 0.0, True, False),  # Sk > Sq, diagonal off the blocks (offset 1500), sinks
    (1, 1024, 1088, 32, 8, 128, (-1, 0), 0.0, False, False),  # offset 64: rows 0-63 see none of the last block
    (1, 3000, 3000, 32, 8, 128, (1023, 0), 0.0, False, False),  # lengths off every block, window start mid-block
    (1, 5000, 5000, 32, 8, 128, (4095, 0), 0.0, True, False),  # the window, sinks
    (1, 2500, 1000, 32, 2, 128, (-1, 0), 0.0, False, False),  # Sk < Sq: the top rows see nothing
    (1, 700, 700, 8, 2, 128, (-1, -1), 0.0, False, False),  # no window: every tile's last block holds 60 keys
    (1, 1234, 1234, 16, 16, 64, (63, 64), 30.0, True, False),  # right side 64, softcap, D64
    (1, 4096, 4096, 64, 8, 64, (-1, 0), 0.0, True, False),  # gpt-oss full layer (D64), sinks
    (2, 100, 100, 8, 2, 128, (-1, 0), 0.0, False, False),  # one block per tile: never halved
]
HALF_IDS = {"ids": lambda c: f"B{c[0]}-Sq{c[1]}-Sk{c[2]}-H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-cap' if c[7] else ''}"
            f"{'-sinks' if c[8] else ''}"}


def half_diagonal_on(monkeypatch, head_dim: int) -> None:
    """``HALF_DIAGONAL`` on (with the shipped trims) for the calls that follow, and taken by two-warpgroup tiles."""
    monkeypatch.setattr(gluon_fwd, "SOFTMAX_TRIMS", with_trims("HALF_DIAGONAL"))
    assert gluon_fwd.softmax_trims_for(2, head_dim) & gluon_fwd.HALF_DIAGONAL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", HALF_CASES, **HALF_IDS)
def test_half_diagonal_against_reference_and_triton(case, dtype, monkeypatch):
    """``HALF_DIAGONAL``: the first warpgroup's last block over its first 64 keys where its rows see no later key
    (causal tiles on the diagonal, bottom-right alignment with more or fewer keys than queries, windows starting
    mid-block, the keys' end mid-block, a right window side): output and LSE against the reference and the Triton
    path."""
    half_diagonal_on(monkeypatch, case[5])
    test_dense_against_reference_and_triton(case, dtype)


@pytest.mark.parametrize("case", HALF_CASES, **HALF_IDS)
def test_half_diagonal_keeps_the_bits(case, monkeypatch):
    """The keys ``HALF_DIAGONAL`` leaves out score -inf in every row of the warpgroup: exp2 gives exactly 0, which
    adds +0 to the row sums and a zero term to P V, and the max and the kept keys' scores are computed as before, so
    the output and LSE bits are the shipped kernel's (a difference here with the reference tests passing would be
    the tensor cores' summation over K = 64 against K = 128 with zero terms, not a masking error)."""
    same_bits_under_switch(case, monkeypatch, "SOFTMAX_TRIMS", (gluon_fwd.SOFTMAX_TRIMS, with_trims("HALF_DIAGONAL")))



# Three consumer warpgroups over 128-key blocks (192-row tiles: FlashAttention 3's head_dim 64 tile), the candidate
# for gpt-oss's causal layers (session 15, docs/notes/2026-12-03-gluon-forward.md). A 192-row tile starts on a
# 128-key block boundary or 64 keys into one, so the warpgroups' rows end in either half of the last block.
THREE_WG_CASES = [
    # batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, sinks, pack_gqa
    (2, 2048, 2048, 16, 4, 64, (-1, 0), 0.0, False, False),  # causal, Sq == Sk, a partial last tile
    (1, 4096, 4096, 64, 8, 64, (-1, 0), 0.0, True, False),  # gpt-oss full layer, sinks
    (1, 1000, 2500, 16, 4, 64, (-1, 0), 0.0, True, False),  # Sk > Sq, diagonal off the blocks (offset 1500)
    (1, 1024, 1088, 16, 4, 64, (-1, 0), 0.0, False, False),  # offset 64
    (1, 1024, 1152, 16, 4, 64, (-1, 0), 0.0, False, False),  # offset 128
    (1, 3000, 3000, 16, 4, 64, (1023, 0), 0.0, False, False),  # lengths off every block, window start mid-block
    (1, 5000, 5000, 16, 4, 64, (4095, 0), 0.0, True, False),  # gpt-oss's other window, sinks
    (1, 2500, 1000, 16, 4, 64, (-1, 0), 0.0, False, False),  # Sk < Sq: the top rows see nothing
    (1, 700, 700, 8, 2, 64, (-1, -1), 0.0, False, False),  # no window: every tile's last block holds 60 keys
    (1, 1234, 1234, 16, 16, 64, (63, 64), 30.0, True, False),  # right side 64, softcap
    (2, 100, 100, 8, 2, 64, (-1, 0), 0.0, False, False),  # one block per tile: never halved
]


def three_warpgroups_of_128_key_blocks(monkeypatch, half_diagonal: bool) -> None:
    """Three consumer warpgroups and 128-key blocks for the calls that follow, ``HALF_DIAGONAL`` on or off."""
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: 3)
    monkeypatch.setattr(gluon_fwd, "block_n_for", lambda *args: 128)
    if half_diagonal:
        monkeypatch.setattr(gluon_fwd, "SOFTMAX_TRIMS", with_trims("HALF_DIAGONAL"))
        assert gluon_fwd.softmax_trims_for(3, 64) & gluon_fwd.HALF_DIAGONAL


@pytest.mark.parametrize("half_diagonal", [False, True], ids=["full", "half-diagonal"])
@pytest.mark.parametrize("case", THREE_WG_CASES, **HALF_IDS)
def test_three_warpgroups_of_128_key_blocks(case, half_diagonal, monkeypatch):
    """192-row tiles over 128-key blocks at head_dim 64 (160 registers per consumer thread), with and without
    ``HALF_DIAGONAL`` (each warpgroup's last block over its first 64 keys where its rows see no later key): output
    and LSE against the reference and the Triton path."""
    three_warpgroups_of_128_key_blocks(monkeypatch, half_diagonal)
    test_dense_against_reference_and_triton(case, torch.bfloat16)


@pytest.mark.parametrize("case", THREE_WG_CASES, **HALF_IDS)
def test_three_warpgroups_half_diagonal_keeps_the_bits(case, monkeypatch):
    """With three warpgroups the keys ``HALF_DIAGONAL`` leaves out score -inf in every row of the warpgroup that
    drops them: the shipped kernel's bits (see ``test_half_diagonal_keeps_the_bits``)."""
    three_warpgroups_of_128_key_blocks(monkeypatch, False)
    same_bits_under_switch(case, monkeypatch, "SOFTMAX_TRIMS", (gluon_fwd.SOFTMAX_TRIMS, with_trims("HALF_DIAGONAL")))


@pytest.mark.parametrize("window_size", [(127, 0), (-1, 0)])
def test_three_warpgroups_half_diagonal_varlen(window_size, monkeypatch):
    """Three warpgroups of 128-key blocks with ``HALF_DIAGONAL`` over varlen sequences (empty, short, more keys than
    queries: each sequence's own diagonal)."""
    three_warpgroups_of_128_key_blocks(monkeypatch, False)
    test_varlen_with_empty_and_short_sequences(window_size, 64, "HALF_DIAGONAL", monkeypatch)


def test_three_warpgroups_half_diagonal_non_finite_isolation(monkeypatch):
    """Non-finite isolation with three warpgroups of 128-key blocks and ``HALF_DIAGONAL`` (a window of 100)."""
    three_warpgroups_of_128_key_blocks(monkeypatch, True)
    test_non_finite_isolation(False, 3, monkeypatch)

@pytest.mark.parametrize("pack_gqa", [False, True])
def test_q_as_a_view_of_a_fused_projection(pack_gqa):
    """Q is read through a 4D TMA descriptor with the caller's strides: a slice of a fused QKV tensor."""
    heads, kv_heads, head_dim = 32, 8, 128
    qkv = randn(2, 1100, heads + 2 * kv_heads, head_dim, dtype=torch.bfloat16)
    q = qkv[:, :, :heads]
    k, v = qkv[:, :, heads:heads + kv_heads].contiguous(), qkv[:, :, heads + kv_heads:].contiguous()

    def call():
        return swattn.flash_attn_func(q, k, v, window_size=(300, 0), pack_gqa=pack_gqa, return_softmax_lse=True)

    (out, lse), (triton_out, _) = both_paths(call)
    ref, ref_lse = attention_ref(q, k, v, window_size=(300, 0), **REF)
    assert_close("out", out, ref, tolerance_for(torch.bfloat16))
    check_lse("lse", lse, ref_lse)
    assert_close("gluon vs triton", out, triton_out, tolerance_for(torch.bfloat16))


@pytest.mark.parametrize("trims", ["shipped"] + SYNC_TRIMS[-1:] + ["HALF_DIAGONAL"])
@pytest.mark.parametrize("window_size", [(127, 0), (-1, 0), (31, 31)])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_varlen_with_empty_and_short_sequences(window_size, head_dim, trims, monkeypatch):
    """Tiles past a short sequence's rows and empty sequences (tiles without keys: with ``OVERLAP_TILES`` the item
    before one issues a product whose result is dropped) between long ones; with ``HALF_DIAGONAL``, each sequence's
    own diagonal (lengths off every block, more keys than queries)."""
    if trims != "shipped":
        monkeypatch.setattr(gluon_fwd, "SOFTMAX_TRIMS", with_trims(trims))
    lengths_q = [1000, 0, 1, 2047, 0, 300, 129]
    lengths_k = [1000, 5, 1, 2047, 0, 900, 129]  # sequence 5 has more keys than queries
    cu_q = torch.tensor([0] + lengths_q, device=DEVICE).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k, device=DEVICE).cumsum(0).to(torch.int32)
    q = randn(int(cu_q[-1]), 32, head_dim, dtype=torch.bfloat16)
    k = randn(int(cu_k[-1]), 4, head_dim, dtype=torch.bfloat16)
    v = randn(int(cu_k[-1]), 4, head_dim, dtype=torch.bfloat16)
    sinks = torch.randn(32, device=DEVICE)

    def call():
        return swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                             window_size=window_size, sinks=sinks, return_softmax_lse=True)

    (out, lse), _ = both_paths(call)
    ref, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, window_size=window_size, sinks=sinks, **REF)
    assert_close("out", out, ref, tolerance_for(torch.bfloat16))
    check_lse("lse", lse, ref_lse)


KVCACHE = [
    # page_size (0: a contiguous cache), window_size, head_dim, heads, kv_heads, new queries, pack_gqa
    (16, (127, 0), 64, 64, 8, 512, True),  # gpt-oss sliding layer, chunked prefill over vLLM's 16-token pages
    (16, (-1, 0), 64, 64, 8, 512, False),  # gpt-oss full layer
    (64, (1000, 0), 128, 32, 8, 700, False),  # the window starts mid-page and mid-box
    (256, (4095, 0), 128, 32, 8, 1000, False),  # pages of 4 boxes
    (8, (300, 0), 128, 32, 4, 333, True),  # the smallest page, PackGQA of 8
    (0, (511, 0), 128, 32, 8, 640, False),  # a contiguous cache with cache_seqlens
    (32, (-1, 0), 256, 16, 8, 300, False),  # D256
]


@pytest.mark.parametrize("case", KVCACHE, ids=lambda c: f"page{c[0]}-W{c[1]}-D{c[2]}-H{c[3]}/{c[4]}-Sq{c[5]}"
                         f"{'-pack' if c[6] else ''}")
def test_kvcache_extend(case):
    """Chunked prefill / extend over a KV cache holding each sequence's keys (the new queries' included): paged
    (TMA boxes inside one page, looked up in the page table) or contiguous with cache_seqlens. Pages wholly before
    a sequence's window and every slot past its length hold NaN: the first must never be read, the second only
    masked (the non-finite redo pass keeps their rows exact)."""
    page_size, window_size, head_dim, heads, kv_heads, seqlen_q, pack_gqa = case
    seqlens = torch.tensor([seqlen_q + 1300, seqlen_q, seqlen_q + 3001], device=DEVICE, dtype=torch.int32)
    batch, capacity = len(seqlens), int(seqlens.max()) + 100
    left = window_size[0]
    first_keys = [max(int(n) - seqlen_q - left, 0) if left >= 0 else 0 for n in seqlens]
    if page_size:
        pages_per_seq = -(-capacity // page_size)
        k_cache = randn(batch * pages_per_seq + 1, page_size, kv_heads, head_dim, dtype=torch.bfloat16)
        v_cache = randn(batch * pages_per_seq + 1, page_size, kv_heads, head_dim, dtype=torch.bfloat16)
        poisoned = batch * pages_per_seq  # the last page
        page_table = torch.randperm(batch * pages_per_seq, device=DEVICE, dtype=torch.int32).view(batch, -1)
        for b in range(batch):
            page_table[b, :first_keys[b] // page_size] = poisoned
            page_table[b, -(-int(seqlens[b]) // page_size):] = poisoned
            last = page_table[b, (int(seqlens[b]) - 1) // page_size]
            k_cache[last, int(seqlens[b]) % page_size or page_size:] = float("nan")
            v_cache[last, int(seqlens[b]) % page_size or page_size:] = float("nan")
        k_cache[poisoned] = float("nan")
        v_cache[poisoned] = float("nan")
    else:
        page_table = None
        k_cache = randn(batch, capacity, kv_heads, head_dim, dtype=torch.bfloat16)
        v_cache = randn(batch, capacity, kv_heads, head_dim, dtype=torch.bfloat16)
        for b in range(batch):
            k_cache[b, int(seqlens[b]):] = float("nan")
            v_cache[b, int(seqlens[b]):] = float("nan")
    q = randn(batch, seqlen_q, heads, head_dim, dtype=torch.bfloat16)

    def call():
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=page_table,
                                              causal=True, window_size=window_size, pack_gqa=pack_gqa, num_splits=1,
                                              return_softmax_lse=True)

    (out, lse), (triton_out, _) = both_paths(call)
    ref, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, seqlens, page_table=page_table, causal=True,
                                         window_size=window_size, **REF)
    tol = tolerance_for(torch.bfloat16)
    assert_close("gluon out", out, ref, tol)
    check_lse("gluon lse", lse, ref_lse)
    assert_close("gluon vs triton", out, triton_out, tol)


@pytest.mark.parametrize("case", [KVCACHE[1], KVCACHE[2], KVCACHE[3], KVCACHE[5]],
                         ids=lambda c: f"page{c[0]}-W{c[1]}-D{c[2]}-Sq{c[5]}")
def test_kvcache_extend_half_diagonal(case, monkeypatch):
    """``HALF_DIAGONAL`` over a KV cache: the tile's first key rounded down to a TMA box (pages), keys past each
    sequence's length holding NaN (masked; warpgroup 0's halved block does not read its second half's V rows)."""
    half_diagonal_on(monkeypatch, case[2])
    test_kvcache_extend(case)


@pytest.mark.parametrize("consumers", [1, 2, 3])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_non_finite_isolation(pack_gqa, consumers, monkeypatch):
    """A NaN in one value row and an inf in one key reach exactly the rows whose window holds them (per row, as
    the kernels promise: a row that sees a non-finite value row, or a key whose score is +inf, is not finite; every
    other row is finite and right). The reference gives +-inf where the kernels give NaN (an infinite probability
    normalized by an infinite sum), so rows are compared as finite or not."""
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: consumers)
    seqlen, heads, kv_heads, head_dim, window = 1000, 16, 2, 64, (100, 0)
    q = randn(1, seqlen, heads, head_dim, dtype=torch.bfloat16)
    k = randn(1, seqlen, kv_heads, head_dim, dtype=torch.bfloat16)
    v = randn(1, seqlen, kv_heads, head_dim, dtype=torch.bfloat16)
    v[0, 300, 1, 5] = float("nan")
    k[0, 700, 0, 3] = float("inf")

    def call():
        return swattn.flash_attn_func(q, k, v, window_size=window, pack_gqa=pack_gqa)

    out, triton_out = both_paths(call)
    ref, _ = attention_ref(q, k, v, window_size=window, **REF)

    def bad_rows(x):
        return ~torch.isfinite(x).all(-1)

    def where(mask):  # (position, head) of the first few rows in mask, for the failure message
        return [tuple(i) for i in mask[0].nonzero()[:6].tolist()]

    ref_rows, out_rows, triton_rows = bad_rows(ref), bad_rows(out), bad_rows(triton_out)
    assert ref_rows.any() and not ref_rows.all()
    assert torch.equal(out_rows, ref_rows), (
        f"non-finite values reached rows outside their windows: only in Gluon's {where(out_rows & ~ref_rows)}, "
        f"only in the reference's {where(ref_rows & ~out_rows)}")
    assert torch.equal(triton_rows, out_rows)
    finite = ~ref_rows
    torch.testing.assert_close(out[finite].float(), ref[finite].float(), atol=2e-2, rtol=2e-2)


def test_non_finite_isolation_half_diagonal(monkeypatch):
    """Non-finite isolation with ``HALF_DIAGONAL`` (two warpgroups, a window of 100: every tile's last block is
    halved for rows 0-63)."""
    half_diagonal_on(monkeypatch, 64)
    test_non_finite_isolation(False, 2, monkeypatch)


def test_auto_dispatch_takes_gluon_for_large_prefill_only():
    """Auto dispatch: the Gluon kernel for a prefill whose GPU work hides its launch's host time (a causal 16K
    prefill), the Triton kernels for a 512-token one (an eager call would wait on the host) and for a decode-sized
    tile."""
    q = randn(1, 16384, 8, 64, dtype=torch.bfloat16)
    k, v = randn(1, 16384, 2, 64, dtype=torch.bfloat16), randn(1, 16384, 2, 64, dtype=torch.bfloat16)
    with gluon_mode("auto") as calls:
        swattn.flash_attn_func(q, k, v, causal=True)
    assert calls, "auto dispatch should use the Gluon kernel for a causal 16K prefill on sm_90"
    with gluon_mode("auto") as calls:
        swattn.flash_attn_func(q[:, :512], k[:, :512], v[:, :512], causal=True)
    assert not calls, "a 512-token prefill is host-bound on the Gluon launch"
    with gluon_mode("auto") as calls:
        swattn.flash_attn_func(q[:, :1], k, v, causal=True)  # one query row per head: a decode-sized tile
    assert not calls



@pytest.mark.parametrize("threshold", [8.0, 0.5])
@pytest.mark.parametrize("case", [DENSE[0], DENSE[3], DENSE[5], DENSE[6], DENSE[8], DENSE[-1], DENSE_D256[1]],
                         ids=lambda c: f"H{c[3]}/{c[4]}-D{c[5]}-W{c[6]}{'-cap' if c[7] else ''}"
                         f"{'-pack' if c[9] else ''}")
def test_lazy_rescale(case, threshold, monkeypatch):
    """The running max kept until a block's exceeds it by more than ``RESCALE_THRESHOLD`` (warps whose rows all kept
    it skip the accumulator's rescale): against the reference on the dense cases, and on scores that grow along the
    keys by far more than the threshold in some heads only (q scaled per head, k by its position), so that within a
    warpgroup some warps rescale and others skip, block after block (threshold 0.5: almost every block rescales)."""
    monkeypatch.setattr(gluon_fwd, "rescale_threshold_for", lambda consumers: threshold)  # every tile shape
    test_dense_against_reference_and_triton(case, torch.bfloat16)
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, with_sinks, pack_gqa = case
    head_scale = torch.where(torch.arange(heads, device=DEVICE) % 3 == 0, 4.0, 0.25)
    q = (torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE) * head_scale[:, None]).to(torch.bfloat16)
    ramp = 1.0 + 3.0 * torch.arange(seqlen_k, device=DEVICE) / seqlen_k
    k = (torch.randn(batch, seqlen_k, kv_heads, head_dim, device=DEVICE) * ramp[:, None, None]).to(torch.bfloat16)
    v = randn(batch, seqlen_k, kv_heads, head_dim, dtype=torch.bfloat16)
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
    with gluon_mode("1") as calls:
        out, lse = swattn.flash_attn_func(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks,
                                          pack_gqa=pack_gqa, return_softmax_lse=True)
        torch.cuda.synchronize()
    assert calls
    ref, ref_lse = attention_ref(q, k, v, window_size=window_size, softcap=softcap, sinks=sinks, **REF)
    assert_close("gluon out, growing scores", out, ref, tolerance_for(torch.bfloat16))
    check_lse("gluon lse, growing scores", lse, ref_lse)


FP8 = torch.float8_e4m3fn
FP8_CASES = [
    # batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, sinks, pack_gqa
    (1, 4096, 4096, 32, 8, 128, (4095, 0), 0.0, False, False),  # the W(4095,0) D128 (at 4K)
    (1, 4096, 4096, 32, 8, 128, (-1, 0), 0.0, False, False),  # causal D128
    (2, 1500, 1500, 32, 8, 128, (511, 0), 0.0, True, True),  # packed, sinks
    (1, 2000, 2000, 64, 8, 128, (127, 0), 0.0, True, True),  # packed small window: one warpgroup, per-thread O
    (1, 3000, 3000, 32, 8, 128, (1023, 0), 0.0, False, False),  # lengths off every block
    (2, 1000, 2500, 16, 4, 64, (200, 3), 0.0, True, False),  # D64, more keys than queries, right side
    (1, 1234, 1234, 16, 16, 128, (63, 64), 30.0, True, False),  # bidirectional window, softcap
    (1, 700, 700, 8, 2, 128, (-1, -1), 0.0, False, False),  # no window
]


@pytest.mark.parametrize("case, descales", [(case, "per-kv-head") for case in FP8_CASES]
                         + [(FP8_CASES[0], "per-tensor"), (FP8_CASES[3], "none")],
                         ids=lambda c: c if isinstance(c, str) else f"B{c[0]}-Sq{c[1]}-Sk{c[2]}-H{c[3]}/{c[4]}-D{c[5]}"
                         f"-W{c[6]}{'-cap' if c[7] else ''}{'-sinks' if c[8] else ''}{'-pack' if c[9] else ''}")
def test_all_fp8_against_reference(case, descales):
    """q, k, v in e4m3 (FlashAttention 3's fp8 prefill): the Gluon kernel's e4m3 Q K^T with q_descale * k_descale
    per tile, P @ V in bf16 on V's bf16 copy, v_descale on the output; bf16 out. Against the reference on the
    dequantized values (bf16's tolerance: P and O are rounded as without fp8) and the Triton kernels' fp8 path."""
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size, softcap, with_sinks, pack_gqa = case
    q = randn(batch, seqlen_q, heads, head_dim, dtype=FP8, scale=2.0)
    k = randn(batch, seqlen_k, kv_heads, head_dim, dtype=FP8, scale=2.0)
    v = randn(batch, seqlen_k, kv_heads, head_dim, dtype=FP8, scale=2.0)
    sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
    if descales == "per-kv-head":
        qd, kd, vd = (torch.rand(batch, kv_heads, device=DEVICE) * 0.2 + 0.01 for _ in range(3))
    elif descales == "per-tensor":  # one value each, expanded (stride 0) as FlashAttention 3's callers pass it
        qd, kd, vd = (torch.tensor([[s]], device=DEVICE).expand(batch, kv_heads) for s in (0.15, 0.11, 0.3))
    else:
        qd = kd = vd = None

    def call():
        return swattn.flash_attn_func(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window_size,
                                      softcap=softcap, sinks=sinks, pack_gqa=pack_gqa, return_softmax_lse=True)

    (out, lse), (triton_out, triton_lse) = both_paths(call)
    ref, ref_lse = attention_ref(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd, window_size=window_size,
                                 softcap=softcap, sinks=sinks, **REF)
    assert out.dtype == torch.bfloat16
    tol = tolerance_for(torch.bfloat16)
    assert_close("gluon out", out, ref, tol)
    check_lse("gluon lse", lse, ref_lse)
    assert_close("gluon vs triton", out, triton_out, tol)


@pytest.mark.parametrize("case", [FP8_CASES[0], FP8_CASES[1], FP8_CASES[4], FP8_CASES[5]],
                         ids=lambda c: f"B{c[0]}-Sq{c[1]}-Sk{c[2]}-D{c[5]}-W{c[6]}")
def test_all_fp8_half_diagonal(case, monkeypatch):
    """``HALF_DIAGONAL`` with the e4m3 scores product (a 64-key e4m3 product, P V in bf16)."""
    half_diagonal_on(monkeypatch, case[5])
    test_all_fp8_against_reference(case, "per-kv-head")


def test_auto_dispatch_takes_gluon_for_the_all_fp8_prefill():
    """Auto dispatch sends the all-fp8 16K-class prefill (W(4095,0) and causal, D128) to the Gluon kernel, and
    bf16 queries over an e4m3 K/V (not all-fp8) to the Triton kernels."""
    q = randn(1, 8192, 32, 128, dtype=FP8)
    k, v = randn(1, 8192, 8, 128, dtype=FP8), randn(1, 8192, 8, 128, dtype=FP8)
    for window in ((4095, 0), (-1, 0)):
        with gluon_mode("auto") as calls:
            swattn.flash_attn_func(q, k, v, window_size=window)
        assert calls, f"auto dispatch should use the Gluon kernel for the all-fp8 W{window} D128 prefill"
    with gluon_mode("auto") as calls:
        swattn.flash_attn_func(q.to(torch.bfloat16), k, v, window_size=(4095, 0))
    assert not calls


def test_all_fp8_non_finite_isolation():
    """A NaN in one key's e4m3 row: the rows that see it are NaN, every other row finite, as the reference."""
    q = randn(1, 2048, 32, 128, dtype=FP8)
    k, v = randn(1, 2048, 8, 128, dtype=FP8), randn(1, 2048, 8, 128, dtype=torch.float32)
    v[0, 1000, 3, 5] = float("nan")
    v = v.to(FP8)  # e4m3 NaN
    with gluon_mode("1") as calls:
        out = swattn.flash_attn_func(q, k, v, window_size=(511, 0))
    assert calls
    ref = attention_ref(q, k, v, window_size=(511, 0), **REF)[0]
    ref_rows, out_rows = torch.isnan(ref).any(-1), torch.isnan(out).any(-1)
    assert torch.equal(ref_rows, out_rows)
    finite = ~ref_rows
    torch.testing.assert_close(out[finite].float(), ref[finite].float(), atol=2e-2, rtol=2e-2)
