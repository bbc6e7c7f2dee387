"""swattn.window (pure Python) against brute force, and its @triton.jit twins in swattn.kernels._common."""

import itertools
import math

import pytest
import torch
import triton
import triton.language as tl

from swattn import window
from swattn.kernels import _common

# ---------------------------------------------------------------------------------------------------------------
# normalize_window / window_size_from_sliding_window


@pytest.mark.parametrize("window_size", [(-1, -1), (0, 0), (127, 0), (3, 5), [7, -1], (-1, 4)],
                         ids=lambda w: f"W{w[0]}_{w[1]}")
def test_normalize_window_keeps_valid_pairs(window_size):
    assert window.normalize_window(False, window_size) == tuple(window_size)
    assert type(window.normalize_window(False, window_size)) is tuple


@pytest.mark.parametrize("window_size", [(-1, -1), (127, -1), (127, 5), (0, 0)], ids=lambda w: f"W{w[0]}_{w[1]}")
def test_normalize_window_causal_sets_right_to_zero(window_size):
    assert window.normalize_window(True, window_size) == (window_size[0], 0)


@pytest.mark.parametrize("window_size", [(-2, 0), (0, -2), (-100, -1), (-1, -5)], ids=str)
def test_normalize_window_rejects_values_below_minus_one(window_size):
    with pytest.raises(ValueError, match="window_size"):
        window.normalize_window(False, window_size)
    with pytest.raises(ValueError, match="window_size"):
        window.normalize_window(True, window_size)


@pytest.mark.parametrize("window_size", [(1.0, 0), (0, 2.5), ("3", 0), (None, 0), (True, 0), (0, False),
                                         (torch.tensor(3.0), 0), (torch.tensor(True), 0)], ids=repr)
def test_normalize_window_rejects_non_ints(window_size):
    with pytest.raises(ValueError, match="window_size"):
        window.normalize_window(False, window_size)


def test_normalize_window_caps_sides_longer_than_any_sequence():
    """Regression (s12 fuzz): sides of 2**63 and more overflowed the int64 arithmetic of ``is_visible`` (every key
    masked, or OverflowError); they are the same window as ``MAX_SIDE``, which is what is returned."""
    assert window.normalize_window(False, (2**63, 2**64)) == (window.MAX_SIDE, window.MAX_SIDE)
    assert window.normalize_window(True, (2**200, 5)) == (window.MAX_SIDE, 0)
    assert window.normalize_window(False, (2**31 - 1, 2**62)) == (2**31 - 1, 2**62)
    rows, cols = torch.arange(4)[:, None], torch.arange(6)[None, :]
    assert bool(window.is_visible(rows, cols, 4, 6, *window.normalize_window(False, (2**63, 2**64))).all())


@pytest.mark.parametrize("window_size", [3, (1,), (1, 2, 3), None, "ab", {0: 1, 1: 2}], ids=repr)
def test_normalize_window_rejects_non_pairs(window_size):
    with pytest.raises(ValueError, match="window_size"):
        window.normalize_window(False, window_size)


def test_window_size_from_sliding_window():
    assert window.window_size_from_sliding_window(128) == (127, 0)  # gpt-oss: 128 keys incl. the current one
    assert window.window_size_from_sliding_window(1) == (0, 0)
    assert window.window_size_from_sliding_window(4096) == (4095, 0)
    assert window.window_size_from_sliding_window(None) == (-1, -1)
    for bad in (0, -1, 1.5, True, "128"):
        with pytest.raises(ValueError, match="sliding_window"):
            window.window_size_from_sliding_window(bad)


def test_sliding_window_mapping_sees_exactly_w_keys_including_current():
    # HF convention: keep kv_idx > q_idx - W (and kv_idx <= q_idx) -> W keys, the current one included.
    w = 128
    left, right = window.window_size_from_sliding_window(w)
    sq = sk = 400
    for i in (0, 5, 127, 128, 200, 399):
        seen = [j for j in range(sk) if window.is_visible(i, j, sq, sk, left, right)]
        assert seen == [j for j in range(sk) if i - w < j <= i]


# ---------------------------------------------------------------------------------------------------------------
# is_visible and the per-row / per-tile helpers against brute force


def _brute_visible(i, j, sq, sk, left, right):
    """The rule of semantics.md §1.1, written independently."""
    if not 0 <= j < sk:
        return False
    diagonal = i + sk - sq
    if left != -1 and j < diagonal - left:
        return False
    if right != -1 and j > diagonal + right:
        return False
    return True


WINDOWS = [pytest.param(left, right, id=f"W{left}_{right}") for left, right in
           [(-1, -1), (-1, 0), (0, 0), (1, 0), (0, 1), (3, 2), (7, 0), (-1, 3), (5, -1), (20, 20), (0, 40)]]
LENGTHS = [pytest.param(sq, sk, id=f"Sq{sq}-Sk{sk}") for sq, sk in
           [(1, 1), (1, 9), (9, 1), (5, 5), (4, 13), (13, 4), (17, 17), (0, 5), (5, 0)]]


@pytest.mark.parametrize("sq,sk", LENGTHS)
@pytest.mark.parametrize("left,right", WINDOWS)
def test_is_visible_matches_brute_force_ints_and_tensors(sq, sk, left, right):
    rows = torch.arange(-2, sq + 2)[:, None]
    cols = torch.arange(-3, sk + 3)[None, :]
    # With an unbounded window the row index drops out, so the result may only broadcast to [rows, cols].
    as_tensor = torch.broadcast_to(window.is_visible(rows, cols, sq, sk, left, right), (rows.shape[0], cols.shape[1]))
    for a, i in enumerate(rows[:, 0].tolist()):
        for b, j in enumerate(cols[0].tolist()):
            expected = _brute_visible(i, j, sq, sk, left, right)
            assert bool(window.is_visible(i, j, sq, sk, left, right)) == expected, (i, j)
            assert bool(as_tensor[a, b]) == expected, (i, j)


@pytest.mark.parametrize("sq,sk", LENGTHS)
@pytest.mark.parametrize("left,right", WINDOWS)
def test_first_last_visible_key_and_span_match_brute_force(sq, sk, left, right):
    for i in range(sq):
        seen = [j for j in range(sk) if _brute_visible(i, j, sq, sk, left, right)]
        first = window.first_visible_key(i, sq, sk, left)
        last = window.last_visible_key(i, sq, sk, right)
        assert 0 <= first <= sk and -1 <= last <= sk - 1
        if seen:
            assert (first, last) == (seen[0], seen[-1])
        else:
            assert first > last  # empty interval
    for first_row in range(sq):
        for last_row in range(first_row, sq):
            seen = sorted({j for i in range(first_row, last_row + 1) for j in range(sk)
                           if _brute_visible(i, j, sq, sk, left, right)})
            start, span = window.visible_span(first_row, last_row, sq, sk, left, right)
            assert span >= 0
            if seen:
                # A window band is contiguous, so the union of the tile's rows is one interval.
                assert (start, span) == (seen[0], seen[-1] - seen[0] + 1)
            else:
                assert span == 0


@pytest.mark.parametrize("span,block_n,expected", [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2), (128, 128, 1),
                                                   (129, 128, 2), (300, 64, 5)])
def test_num_kv_blocks(span, block_n, expected):
    assert window.num_kv_blocks(span, block_n) == expected


def test_tile_plan_repr_and_counts():
    plans = window.tile_plan(40, 100, (7, 0), block_m=16, block_n=16)
    assert [(p.first_row, p.last_row) for p in plans] == [(0, 15), (16, 31), (32, 39)]
    # Row 0 sees keys 60-7=53..60; row 15 sees ..75: span 23 -> 2 blocks.
    assert (plans[0].first_visible_key, plans[0].span, plans[0].num_kv_blocks) == (53, 23, 2)
    assert repr(plans[0]) == "rows 0..15: keys [53, 76) span 23 -> 2 block(s)"
    assert repr(plans[2]) == "rows 32..39: keys [85, 100) span 15 -> 1 block(s)"
    # causal=True with an unbounded right is the same plan.
    assert window.tile_plan(40, 100, (7, -1), 16, 16, causal=True) == plans


def test_tile_plan_packgqa_positions_per_tile():
    # G = 8 rows per position, 16-row tiles -> 2 positions per tile.
    plans = window.tile_plan(5, 50, (3, 0), block_m=16, block_n=16, rows_per_position=8)
    assert [(p.first_row, p.last_row) for p in plans] == [(0, 1), (2, 3), (4, 4)]
    assert plans[0].first_visible_key == 50 - 5 - 3 and plans[0].span == 5


@pytest.mark.parametrize("sq,sk", [pytest.param(sq, sk, id=f"Sq{sq}-Sk{sk}")
                                   for sq, sk in [(3, 50), (20, 20), (7, 3), (33, 65), (1, 300)]])
@pytest.mark.parametrize("left,right", WINDOWS[:8])
@pytest.mark.parametrize("block_m,block_n,group", [
    pytest.param(m, n, g, id=f"M{m}-N{n}-G{g}") for m, n, g in [(16, 16, 1), (16, 32, 2), (64, 16, 8), (32, 128, 1)]])
def test_tile_plan_matches_brute_force(sq, sk, left, right, block_m, block_n, group):
    plans = window.tile_plan(sq, sk, (left, right), block_m, block_n, rows_per_position=group)
    positions = block_m // group
    assert len(plans) == -(-sq // positions)
    for t, plan in enumerate(plans):
        assert plan.first_row == t * positions and plan.last_row == min(sq, (t + 1) * positions) - 1
        seen = [j for j in range(sk) if any(_brute_visible(i, j, sq, sk, left, right)
                                            for i in range(plan.first_row, plan.last_row + 1))]
        assert plan.span == (seen[-1] - seen[0] + 1 if seen else 0)
        if seen:
            assert plan.first_visible_key == seen[0]
        assert plan.num_kv_blocks == -(-plan.span // block_n)


def test_decode_gpt_oss_one_block_for_every_context_length():
    # Sq = 1, window (127, 0), BLOCK_N = 128: the n_offset start makes the 128-key window one block, always.
    for sk in range(1, 601):
        for causal, window_size in ((False, (127, 0)), (True, (127, -1))):
            plans = window.tile_plan(1, sk, window_size, block_m=16, block_n=128, causal=causal, rows_per_position=8)
            assert len(plans) == 1
            assert plans[0].num_kv_blocks == 1, (sk, plans)
            assert plans[0].span == min(sk, 128)
            assert plans[0].first_visible_key == max(0, sk - 128)


# ---------------------------------------------------------------------------------------------------------------
# The @triton.jit twins, run under the interpreter on a grid of inputs


@triton.jit
def _twins_kernel(FIRST_ROW, LAST_ROW, SEQLEN_Q, SEQLEN_K, LEFT, RIGHT, OUT, n,
                  HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr,
                  chunk=1, HAS_CHUNK: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    first_row = tl.load(FIRST_ROW + offs, mask=mask, other=0)
    last_row = tl.load(LAST_ROW + offs, mask=mask, other=0)
    seqlen_q = tl.load(SEQLEN_Q + offs, mask=mask, other=1)
    seqlen_k = tl.load(SEQLEN_K + offs, mask=mask, other=1)
    left = tl.load(LEFT + offs, mask=mask, other=0)
    right = tl.load(RIGHT + offs, mask=mask, other=0)
    first = _common.first_visible_key(first_row, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK)
    last = _common.last_visible_key(first_row, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK)
    kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = _common.block_ranges(
        first_row, last_row, seqlen_q, seqlen_k, left, right, BLOCK_N, HAS_LEFT, HAS_RIGHT, chunk, HAS_CHUNK)
    tl.store(OUT + 0 * n + offs, first, mask=mask)
    tl.store(OUT + 1 * n + offs, last, mask=mask)
    tl.store(OUT + 2 * n + offs, kv_start, mask=mask)
    tl.store(OUT + 3 * n + offs, kv_end, mask=mask)
    tl.store(OUT + 4 * n + offs, masked_head_end, mask=mask)
    tl.store(OUT + 5 * n + offs, unmasked_end, mask=mask)
    tl.store(OUT + 6 * n + offs, num_blocks, mask=mask)


def _run_twins(cases, has_left, has_right, block_n, chunk=0):
    cols = [torch.tensor(c, dtype=torch.int32) for c in zip(*cases)]
    n = len(cases)
    out = torch.full((7, n), -12345, dtype=torch.int32)
    block = 1024
    _twins_kernel[(triton.cdiv(n, block),)](*cols, out, n, HAS_LEFT=has_left, HAS_RIGHT=has_right,
                                            BLOCK_N=block_n, BLOCK=block, chunk=max(chunk, 1), HAS_CHUNK=chunk > 0)
    return out.tolist()


def _twin_cases(has_left, has_right):
    lefts = [0, 1, 2, 5, 16, 17, 40] if has_left else [-1]
    rights = [0, 1, 3, 16, 33] if has_right else [-1]
    cases = []
    for sq, sk in [(1, 1), (1, 17), (1, 60), (5, 5), (9, 40), (17, 16), (30, 3), (33, 33), (40, 70), (2, 0)]:
        for left, right in itertools.product(lefts, rights):
            for first_row in sorted({0, 1, sq // 2, sq - 1}):
                for last_row in sorted({first_row, min(sq - 1, first_row + 1), min(sq - 1, first_row + 7), sq - 1}):
                    if first_row <= last_row < sq:
                        cases.append((first_row, last_row, sq, sk, left, right))
    return cases


@pytest.mark.parametrize("block_n", [1, 4, 16], ids=lambda b: f"N{b}")
@pytest.mark.parametrize("has_left,has_right", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["unbounded", "left", "right", "left_right"])
def test_jit_twins_match_python_and_interior_blocks_are_fully_visible(has_left, has_right, block_n):
    cases = _twin_cases(has_left, has_right)
    assert cases
    out = _run_twins(cases, has_left, has_right, block_n)
    for c, (first_row, last_row, sq, sk, left, right) in enumerate(cases):
        first, last, kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = (out[r][c] for r in range(7))
        where = dict(first_row=first_row, last_row=last_row, sq=sq, sk=sk, left=left, right=right, block_n=block_n)
        assert first == window.first_visible_key(first_row, sq, sk, left), where
        assert last == window.last_visible_key(first_row, sq, sk, right), where
        start, span = window.visible_span(first_row, last_row, sq, sk, left, right)
        assert kv_start == start, where
        assert max(0, kv_end - kv_start) == span, where
        assert num_blocks == window.num_kv_blocks(span, block_n), where
        assert 0 <= masked_head_end <= unmasked_end <= num_blocks, where
        # Brute force: every key of every unmasked block is visible to every row of the tile ...
        rows = range(first_row, last_row + 1)
        for b in range(masked_head_end, unmasked_end):
            for j in range(kv_start + b * block_n, kv_start + (b + 1) * block_n):
                assert j < kv_end, where
                assert all(_brute_visible(i, j, sq, sk, left, right) for i in rows), (where, b, j)
        # ... and the loop covers every key some row sees.
        for i in rows:
            for j in range(sk):
                if _brute_visible(i, j, sq, sk, left, right):
                    assert kv_start <= j < min(kv_end, kv_start + num_blocks * block_n), (where, i, j)


def test_jit_twins_interior_blocks_are_maximal_for_a_wide_tile():
    # A tile of 33 rows with a wide window has a large fully-visible core: the unmasked range must not be empty.
    cases = [(0, 32, 33, 300, 200, 0)]
    out = _run_twins(cases, True, True, 16)
    kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = (out[r][0] for r in range(2, 7))
    # Rows 0..32 of Sq=33, Sk=300: row 0 sees [67, 267], row 32 sees [99, 299]; every row sees [99, 267].
    assert (kv_start, kv_end, num_blocks) == (67, 300, 15)
    assert masked_head_end == 2  # blocks [67, 99): masked; [99, 259): 10 unmasked blocks; then masked
    assert unmasked_end == 12


# ---------------------------------------------------------------------------------------------------------------
# first_readable_page: which pages an engine may free


def _pages_read(cache: int, new: int, left: int, right: int, page_size: int, chunk: int = 0) -> set[int]:
    """Brute force: the pages holding a key that some query of a step appending ``new`` tokens to ``cache`` sees."""
    seqlen_k = cache + new
    return {j // page_size for i in range(new) for j in range(seqlen_k)
            if window.is_visible(i, j, new, seqlen_k, left, right, chunk)}


@pytest.mark.parametrize("window_size, chunk", [((127, 0), 0), ((0, 0), 0), ((-1, 0), 0), ((5, 3), 0), ((20, -1), 0),
                                                ((-1, 0), 48), ((127, 0), 100)],
                         ids=lambda w: f"W{w[0]}_{w[1]}" if isinstance(w, tuple) else f"chunk{w}")
@pytest.mark.parametrize("page_size", [1, 3, 16, 64])
def test_first_readable_page_matches_brute_force(window_size, chunk, page_size):
    """The answer is the first page the next step reads (so nothing later could be freed), and no later step
    (any number of new tokens, positions only moving forward) reads a page before it."""
    left, right = window_size
    for cache in [0, 1, 5, 47, 48, 63, 64, 127, 128, 129, 200, 300]:
        for new in [1, 2, 8]:
            answer = window.first_readable_page(cache, window_size, page_size, new_tokens=new, attention_chunk=chunk)
            assert answer == min(_pages_read(cache, new, left, right, page_size, chunk))
            for later, later_new in [(cache + 1, 1), (cache + 3, 4), (cache + new, 8)]:
                assert min(_pages_read(later, later_new, left, right, page_size, chunk)) >= answer
            if left < 0 and chunk == 0:
                assert answer == 0


def test_first_readable_page_tensors_match_ints_without_leaving_the_device():
    cache = torch.tensor([0, 1, 126, 127, 128, 129, 1000, 4095], dtype=torch.int32)
    new = torch.tensor([1, 2, 8, 3, 1, 5, 4, 1], dtype=torch.int32)
    for window_size, page_size in [((127, 0), 16), ((127, 0), 1), ((0, 0), 64), ((-1, 0), 16), ((3, 0), 16)]:
        pages = window.first_readable_page(cache, window_size, page_size, new_tokens=new)
        assert pages.dtype == torch.int32 and pages.shape == cache.shape and pages.device == cache.device
        expected = [window.first_readable_page(c, window_size, page_size, new_tokens=n)
                    for c, n in zip(cache.tolist(), new.tolist())]
        assert pages.tolist() == expected
        same = window.first_readable_page(cache.long(), window_size, page_size, new_tokens=1)
        assert same.dtype == torch.int32 and same.tolist() == window.first_readable_page(
            cache, window_size, page_size).tolist()
    # A window shorter than a page: the page of the current token's window start.
    assert window.first_readable_page(100, (3, 0), 16) == 97 // 16
    assert window.first_readable_page(100, window.window_size_from_sliding_window(128), 16) == 0
    assert window.first_readable_page(1000, (127, 0), 16) == (1000 - 127) // 16


def test_first_readable_page_tensors_do_not_wrap_for_huge_left_sides():
    """Regression (s12 fuzz): with int32 tensors, ``position - left`` wrapped around in int32 for a left side of
    2**32 or more and reported pages that the next step still reads as free; a left side longer than the
    sequence frees nothing, whatever its size."""
    cache = torch.tensor([100, 200], dtype=torch.int32)
    for left in (2**31 - 1, 2**32, 2**32 + 50, 2**33, 2**63, 2**70):
        pages = window.first_readable_page(cache, (left, 0), 16)
        assert pages.dtype == torch.int32 and pages.tolist() == [0, 0], left
        assert window.first_readable_page(100, (left, 0), 16) == 0


@pytest.mark.parametrize("chunk", [0, 32])
def test_first_readable_page_with_cache_leftpad(chunk):
    """With cache_leftpad the sequence's keys, positions and chunks count from the pad: the answer is the page of
    the pad plus the unpadded sequence's first visible key (brute force), for ints and tensors alike."""
    for pad, cache, new, page_size in itertools.product([0, 5, 40], [40, 100, 300], [1, 4], [1, 16]):
        pages = {(pad + j) // page_size for i in range(new) for j in range(cache + new - pad)
                 if window.is_visible(i, j, new, cache + new - pad, 30, 0, chunk)}
        answer = window.first_readable_page(cache, (30, 0), page_size, new_tokens=new, attention_chunk=chunk,
                                            cache_leftpad=pad)
        assert answer == min(pages)
        tensor = window.first_readable_page(torch.tensor([cache], dtype=torch.int32), (30, 0), page_size,
                                            new_tokens=new, attention_chunk=chunk, cache_leftpad=pad)
        assert tensor.tolist() == [answer]


@pytest.mark.parametrize("kwargs, name", [
    (dict(cache_seqlens=-1), "cache_seqlens"), (dict(cache_seqlens=3.0), "cache_seqlens"),
    (dict(cache_seqlens=torch.tensor([1.0])), "cache_seqlens"), (dict(cache_seqlens=torch.tensor(3)), "cache_seqlens"),
    (dict(page_size=0), "page_size"), (dict(page_size=16.0), "page_size"), (dict(new_tokens=-1), "new_tokens"),
    (dict(window_size=(-2, 0)), "window_size"), (dict(attention_chunk=-1), "attention_chunk"),
    (dict(cache_leftpad=-1), "cache_leftpad"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_first_readable_page_rejects_bad_arguments(kwargs, name):
    arguments = dict(cache_seqlens=10, window_size=(127, 0), page_size=16) | kwargs
    with pytest.raises((ValueError, TypeError), match=name):
        window.first_readable_page(**arguments)


# ---------------------------------------------------------------------------------------------------------------
# attention_chunk: Python and @triton.jit twins against brute force


def _brute_visible_chunked(i, j, sq, sk, left, right, chunk):
    """semantics.md §1.1 plus FlashAttention 3's attention_chunk, written independently: the key and the row's
    diagonal position lie in the same chunk (floor division, so a negative position sees nothing)."""
    diagonal = i + sk - sq
    return _brute_visible(i, j, sq, sk, left, right) and math.floor(j / chunk) == math.floor(diagonal / chunk)


CHUNKED = [pytest.param(left, right, chunk, id=f"W{left}_{right}-C{chunk}") for left, right, chunk in
           [(-1, -1, 1), (-1, 0, 4), (2, 0, 4), (-1, -1, 5), (3, 2, 3), (7, 0, 16), (0, 3, 2), (-1, 1, 64)]]


@pytest.mark.parametrize("left,right,chunk", CHUNKED)
def test_chunked_window_python_helpers_match_brute_force(left, right, chunk):
    for sq, sk in [(1, 9), (9, 1), (5, 5), (4, 13), (13, 4), (17, 17)]:
        rows = torch.arange(sq)[:, None]
        cols = torch.arange(sk)[None, :]
        as_tensor = torch.broadcast_to(window.is_visible(rows, cols, sq, sk, left, right, chunk), (sq, sk))
        for i in range(sq):
            seen = [j for j in range(sk) if _brute_visible_chunked(i, j, sq, sk, left, right, chunk)]
            assert [j for j in range(sk) if as_tensor[i, j]] == seen, (sq, sk, i)
            first = window.first_visible_key(i, sq, sk, left, chunk)
            last = window.last_visible_key(i, sq, sk, right, chunk)
            assert (first, last) == (seen[0], seen[-1]) if seen else first > last, (sq, sk, i)
        for j in range(sk):
            rows_seeing = [i for i in range(sq) if _brute_visible_chunked(i, j, sq, sk, left, right, chunk)]
            first = window.first_query_seeing(j, sq, sk, right, chunk)
            last = window.last_query_seeing(j, sq, sk, left, chunk)
            assert rows_seeing == list(range(first, last + 1)), (sq, sk, j)


@pytest.mark.parametrize("block_n", [1, 4], ids=lambda b: f"N{b}")
def test_chunked_jit_twins_match_python_and_interior_blocks_are_fully_visible(block_n):
    for left, right, chunk in [(-1, 0, 4), (5, 0, 8), (-1, -1, 3), (2, 3, 5)]:  # pairs _twin_cases draws
        cases = [case for case in _twin_cases(left >= 0, right >= 0) if case[4:] == (left, right)]
        assert cases
        out = _run_twins(cases, left >= 0, right >= 0, block_n, chunk)
        for c, (first_row, last_row, sq, sk, lft, rgt) in enumerate(cases):
            first, last, kv_start, kv_end, masked_head_end, unmasked_end, num_blocks = (out[r][c] for r in range(7))
            where = dict(first_row=first_row, last_row=last_row, sq=sq, sk=sk, left=lft, right=rgt, chunk=chunk)
            assert first == window.first_visible_key(first_row, sq, sk, lft, chunk), where
            assert last == window.last_visible_key(first_row, sq, sk, rgt, chunk), where
            start, span = window.visible_span(first_row, last_row, sq, sk, lft, rgt, chunk)
            assert kv_start == start and max(0, kv_end - kv_start) == span, where
            assert num_blocks == window.num_kv_blocks(span, block_n), where
            rows = range(first_row, last_row + 1)
            for b in range(masked_head_end, unmasked_end):
                for j in range(kv_start + b * block_n, kv_start + (b + 1) * block_n):
                    assert all(_brute_visible_chunked(i, j, sq, sk, lft, rgt, chunk) for i in rows), (where, b, j)
            for i in rows:
                for j in range(sk):
                    if _brute_visible_chunked(i, j, sq, sk, lft, rgt, chunk):
                        assert kv_start <= j < min(kv_end, kv_start + num_blocks * block_n), (where, i, j)


def test_normalize_window_reads_integer_tensors_as_fa3_does():
    """FlashAttention 3's own tests pass ``window_size=torch.randint(0, seqlen_k, (2,))``."""
    assert window.normalize_window(False, torch.tensor([5, 3])) == (5, 3)
    assert window.normalize_window(True, (torch.tensor(7), -1)) == (7, 0)
    with pytest.raises(ValueError, match="window_size: left must be an int"):
        window.normalize_window(False, torch.tensor([1.5, 2.0]))
    with pytest.raises(ValueError, match="window_size: expected a pair"):
        window.normalize_window(False, torch.tensor([1, 2, 3]))
