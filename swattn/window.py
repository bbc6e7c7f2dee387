"""Sliding-window semantics and the n_offset tiling arithmetic, in one place.

A query row ``i`` (0-based) of a sequence with ``seqlen_q`` queries and ``seqlen_k`` keys sees key ``j`` iff::

    0 <= j < seqlen_k
    j >= i + (seqlen_k - seqlen_q) - left      (only when left  >= 0)
    j <= i + (seqlen_k - seqlen_q) + right     (only when right >= 0)

Alignment is bottom-right: the diagonal passes through ``(seqlen_q - 1, seqlen_k - 1)``. ``-1`` means unbounded
and ``causal=True`` means ``right = 0``. A model's ``sliding_window = W`` (W keys, the current one included, the
Hugging Face / vLLM / SGLang convention) is ``window_size = (W - 1, 0)``::

    >>> window_size_from_sliding_window(128)   # gpt-oss
    (127, 0)

Where swattn departs from FlashAttention 3/4 and FLA: for each tile of query rows the KV loop starts at the tile's
*exact* first visible key (the "n_offset"), not at that key floored to a multiple of ``BLOCK_N``. A tile therefore
visits ``ceil(span / BLOCK_N)`` blocks, where ``span`` is the number of keys the tile can see: a decode step with a
128-key window and ``BLOCK_N >= 128`` touches one block whatever the context length. What follows in the kernels:
block starts are unaligned (no ``tl.multiple_of`` hint on them), and only the first and last blocks of a tile need
masks; the blocks in between are visible to every row of the tile.

``attention_chunk = C`` > 0 (FlashAttention 3's chunked local attention, Llama 4) adds a second rule: the key and
the row's diagonal position ``i + seqlen_k - seqlen_q`` lie in the same chunk ``[c * C, (c + 1) * C)`` (floor
division, chunks counted from the sequence's first key). Each row still sees one interval of keys, whose ends never
move left as the row grows, so the same tiling applies: a tile's loop starts at ``max(window start, chunk start)``.

The pure-Python functions here serve the host code and the tests; ``swattn.kernels._common`` holds their
``@triton.jit`` twins with the same names, and ``tests/test_window.py`` checks one against the other.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

UNBOUNDED = -1
# The largest side ``normalize_window`` returns: a window side beyond any sequence length is the same window (every
# key on that side), so larger sides are returned as this one, which keeps the position arithmetic of the helpers
# below (Python ints, int64 tensors: ``i + seqlen_k - seqlen_q +- side``) inside int64. FlashAttention 3 takes any
# int here; a side of 2**63 made the float64 reference (swattn's CPU path) mask every key.
MAX_SIDE = 2 ** 62


def window_size_from_sliding_window(sliding_window: int | None) -> tuple[int, int]:
    """Map a model config's ``sliding_window = W`` (W keys including the current one) to ``window_size``.

    ``None`` (no window) maps to ``(-1, -1)``; combine it with ``causal=True`` for a causal model.
    """
    if sliding_window is None:
        return (UNBOUNDED, UNBOUNDED)
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(
            f"sliding_window: expected None or an int >= 1 (keys seen, current included), got {sliding_window!r}")
    return (sliding_window - 1, 0)


def _integer(value) -> int | None:
    """``value`` as a Python int if it is an integer (an int, or a one-element integer tensor such as FlashAttention
    3's own tests pass for ``window_size``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if (isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.numel() == 1
            and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool):
        return int(value.item())  # a CPU tensor only: reading a GPU one would synchronise
    return None


def normalize_window(causal: bool, window_size: tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return the canonical ``(left, right)``: ``-1`` = unbounded, ``causal`` forces ``right = 0``.

    ``window_size`` is a pair of ints (a two-element integer tensor is read as one, as FlashAttention 3 accepts it).
    Raises ValueError for anything that is not two integers >= -1 (FlashAttention 2/3 silently treat other negative
    values as unbounded, Dao-AILab/flash-attention#1116; swattn refuses them). A side larger than ``MAX_SIDE`` (2**62,
    longer than any sequence: the same window) is returned as ``MAX_SIDE``.
    """
    if isinstance(window_size, torch.Tensor) and window_size.dim() == 1:
        window_size = tuple(window_size)
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size: expected a pair (left, right) of ints >= -1, got {window_size!r}")
    sides = []
    for name, value in zip(("left", "right"), window_size):
        side = _integer(value)
        if side is None:
            raise ValueError(f"window_size: {name} must be an int >= -1 (-1 = unbounded), got {value!r}")
        if side < -1:
            raise ValueError(
                f"window_size: {name} = {side} is not allowed; use -1 for an unbounded side or a value >= 0"
            )
        sides.append(min(side, MAX_SIDE))
    left, right = sides
    if causal:
        right = 0
    return (left, right)


def check_attention_chunk(attention_chunk) -> int:
    """Validate ``attention_chunk`` (0 = off, else the chunk length in keys, Llama 4's chunked local attention)."""
    if isinstance(attention_chunk, bool) or not isinstance(attention_chunk, int) or attention_chunk < 0:
        raise ValueError(f"attention_chunk: expected an int >= 0 (0 = off, else keys per chunk), "
                         f"got {attention_chunk!r}")
    return int(attention_chunk)


def chunk_start(pos, chunk: int):
    """First key of the attention chunk holding key-space position ``pos``: ``(pos // chunk) * chunk``."""
    return (pos // chunk) * chunk


def is_visible(i, j, seqlen_q, seqlen_k, left: int, right: int, chunk: int = 0):
    """Whether query row ``i`` sees key ``j``. Works elementwise on ints or broadcastable tensors.

    ``chunk`` > 0 (``attention_chunk``) also requires ``j`` to lie in the chunk of the row's key-space position
    ``i + seqlen_k - seqlen_q``: chunks are ``[c * chunk, (c + 1) * chunk)``, counted from the sequence's first key.
    """
    offset = seqlen_k - seqlen_q
    visible = (j >= 0) & (j < seqlen_k)
    if left >= 0:
        visible = visible & (j >= i + offset - left)
    if right >= 0:
        visible = visible & (j <= i + offset + right)
    if chunk > 0:
        start = chunk_start(i + offset, chunk)
        visible = visible & (j >= start) & (j < start + chunk)
    return visible


def _clamp(value, low, high):
    """``min(max(value, low), high)`` on ints, or elementwise when ``value`` is a tensor (``high`` an int or a
    tensor of its shape)."""
    if isinstance(value, torch.Tensor):
        return torch.minimum(value.clamp(min=low), torch.as_tensor(high, dtype=value.dtype, device=value.device))
    return min(max(value, low), high)


def first_visible_key(row: int, seqlen_q: int, seqlen_k: int, left: int, chunk: int = 0) -> int:
    """The first key that query row ``row`` sees (the n_offset of a tile whose first row is ``row``): the window's
    first key or, with ``chunk``, the chunk's, whichever is later.

    Clamped to ``[0, seqlen_k]``; a value of ``seqlen_k`` means the row sees nothing. Elementwise when the lengths
    are integer tensors (one value per sequence).
    """
    position = row + seqlen_k - seqlen_q
    first = position * 0
    if left >= 0:
        first = position - left
    if chunk > 0:
        start = chunk_start(position, chunk)
        first = torch.maximum(first, start) if isinstance(first, torch.Tensor) else max(first, start)
    return _clamp(first, 0, seqlen_k)


def last_visible_key(row: int, seqlen_q: int, seqlen_k: int, right: int, chunk: int = 0) -> int:
    """The last key that query row ``row`` sees, clamped to ``[-1, seqlen_k - 1]`` (-1: sees nothing)."""
    last = seqlen_k - 1
    if right >= 0:
        last = min(last, row + seqlen_k - seqlen_q + right)
    if chunk > 0:
        last = min(last, chunk_start(row + seqlen_k - seqlen_q, chunk) + chunk - 1)
    return max(last, -1)


def visible_span(
    first_row: int, last_row: int, seqlen_q: int, seqlen_k: int, left: int, right: int, chunk: int = 0
) -> tuple[int, int]:
    """``(first_visible_key, span)`` for the query rows ``first_row..last_row`` (inclusive) taken together.

    ``span`` is the number of keys from the first row's first visible key to the last row's last visible key.
    """
    start = first_visible_key(first_row, seqlen_q, seqlen_k, left, chunk)
    end = last_visible_key(last_row, seqlen_q, seqlen_k, right, chunk) + 1
    return start, max(0, end - start)


def first_readable_page(cache_seqlens, window_size: tuple[int, int], page_size: int, new_tokens=1,
                        causal: bool = False, attention_chunk: int = 0, cache_leftpad=None):
    """Per sequence, the index (in its page-table row) of the first page that this layer's next step, or any later
    one, can still read: pages before it may be freed or reused by the engine.

    ``cache_seqlens``: tokens in the cache before the next step, an int or an integer tensor ``[B]`` (as given to
    ``flash_attn_with_kvcache``); ``new_tokens``: tokens the next step appends and queries, an int or a tensor
    ``[B]`` (1 = decode, k = speculative verify, n = extend). Later steps only move forward: their queries sit at
    positions >= ``cache_seqlens`` (rejected draft tokens rolled back included), and the window of a later
    position never starts earlier. The answer is the next step's first query's first visible key (bottom-right
    alignment, ``first_visible_key``, the later of the window's and the ``attention_chunk``'s first key) divided by
    ``page_size``; ``left = -1`` without chunks (no left bound) gives 0: nothing can be freed. Returns an int for
    int input, else an int32 tensor ``[B]`` on the input's device (no host sync). ``cache_leftpad`` (as given to
    ``flash_attn_with_kvcache``: an int or a ``[B]`` tensor; keys, positions and chunks count from it) shifts the
    answer the same way.
    """
    left, _ = normalize_window(causal, window_size)
    chunk = check_attention_chunk(attention_chunk)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size: expected an int >= 1 (tokens per page), got {page_size!r}")
    if cache_leftpad is None:
        cache_leftpad = 0
    for name, value in (("cache_seqlens", cache_seqlens), ("new_tokens", new_tokens), ("cache_leftpad", cache_leftpad)):
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
                raise TypeError(f"{name}: expected an integer tensor (int32, one entry per sequence), "
                                f"got {value.dtype}")
            if value.dim() != 1:
                raise ValueError(f"{name}: expected shape (B,), got {tuple(value.shape)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0 or an integer tensor of shape (B,), got {value!r}")
    tensors = [t for t in (cache_seqlens, new_tokens, cache_leftpad) if isinstance(t, torch.Tensor)]
    if tensors:
        # In int64: ``position - left`` in int32 wrapped around for a left side of 2**32 or more (pages still read
        # were reported free); the answer, a page index, is returned in int32.
        as_tensor = lambda t: (t if isinstance(t, torch.Tensor) else torch.full_like(tensors[0], t)).to(
            device=tensors[0].device, dtype=torch.int64)
        cache_seqlens, new_tokens, cache_leftpad = map(as_tensor, (cache_seqlens, new_tokens, cache_leftpad))
    # The next step's queries are its new tokens, the last rows of a sequence of cache_seqlens + new_tokens keys
    # (counted from cache_leftpad); its row 0 (slot cache_seqlens) sees the earliest key of this step and of every
    # later one.
    first_key = cache_leftpad + first_visible_key(0, new_tokens, cache_seqlens + new_tokens - cache_leftpad, left,
                                                  chunk)
    if isinstance(first_key, torch.Tensor):
        return (first_key // page_size).to(torch.int32)
    return first_key // page_size


def first_query_seeing(key: int, seqlen_q: int, seqlen_k: int, right: int, chunk: int = 0) -> int:
    """The first query row whose window contains key ``key``: where the backward's dK/dV loop starts.

    The mirror of ``first_visible_key`` (only the right bound and the chunk limit it from below), clamped to
    ``[0, seqlen_q]``. For ``0 <= key < seqlen_k`` the rows seeing ``key`` are exactly ``first_query_seeing ..
    last_query_seeing``.
    """
    first = None
    if right >= 0:
        first = key - right
    if chunk > 0:
        first = chunk_start(key, chunk) if first is None else max(first, chunk_start(key, chunk))
    if first is None:
        return 0
    return min(max(0, first + seqlen_q - seqlen_k), seqlen_q)


def last_query_seeing(key: int, seqlen_q: int, seqlen_k: int, left: int, chunk: int = 0) -> int:
    """The last query row whose window contains key ``key``, clamped to ``[-1, seqlen_q - 1]`` (-1: none)."""
    last = None
    if left >= 0:
        last = key + left
    if chunk > 0:
        end = chunk_start(key, chunk) + chunk - 1
        last = end if last is None else min(last, end)
    if last is None:
        return seqlen_q - 1
    return max(min(seqlen_q - 1, last + seqlen_q - seqlen_k), -1)


def query_span(
    first_key: int, last_key: int, seqlen_q: int, seqlen_k: int, left: int, right: int, chunk: int = 0
) -> tuple[int, int]:
    """``(first_query_seeing, span)`` for the keys ``first_key..last_key`` (inclusive, inside ``[0, seqlen_k)``):
    the query rows the backward's dK/dV loop visits for that block of keys."""
    start = first_query_seeing(first_key, seqlen_q, seqlen_k, right, chunk)
    end = last_query_seeing(last_key, seqlen_q, seqlen_k, left, chunk) + 1
    return start, max(0, end - start)


def num_kv_blocks(span: int, block_n: int) -> int:
    """KV blocks a tile visits: ``ceil(span / block_n)``."""
    return -(-span // block_n)


@dataclass(frozen=True)
class TilePlan:
    """One query tile: rows ``[first_row, last_row]``, its KV loop start and length."""

    first_row: int
    last_row: int
    first_visible_key: int
    span: int
    num_kv_blocks: int

    def __repr__(self) -> str:
        return (
            f"rows {self.first_row}..{self.last_row}: keys [{self.first_visible_key}, "
            f"{self.first_visible_key + self.span}) span {self.span} -> {self.num_kv_blocks} block(s)"
        )


def tile_plan(
    seqlen_q: int,
    seqlen_k: int,
    window_size: tuple[int, int],
    block_m: int,
    block_n: int,
    causal: bool = False,
    rows_per_position: int = 1,
    attention_chunk: int = 0,
) -> list[TilePlan]:
    """Per query tile, where its KV loop starts and how many blocks it runs.

    ``rows_per_position`` > 1 describes PackGQA: a tile of ``block_m`` rows holds ``block_m // rows_per_position``
    query positions (the query heads of one KV head packed together).
    """
    left, right = normalize_window(causal, window_size)
    positions_per_tile = max(1, block_m // rows_per_position)
    plans = []
    for first_row in range(0, seqlen_q, positions_per_tile):
        last_row = min(first_row + positions_per_tile, seqlen_q) - 1
        start, span = visible_span(first_row, last_row, seqlen_q, seqlen_k, left, right, attention_chunk)
        plans.append(TilePlan(first_row, last_row, start, span, num_kv_blocks(span, block_n)))
    return plans
