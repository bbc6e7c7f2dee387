"""Who computes what and who sends what, for a sequence split over the ranks of a group: pure Python on shard
lengths and the window, identical on every rank, so that the sends and receives of the ranks pair up.

Positions are absolute (0 .. S-1 over the whole sequence); query and key ``i`` are the same token (self-attention),
so query ``i`` sees key ``j`` iff ``i - left <= j <= i + right`` (a side of -1 unbounded; bottom-right alignment
with ``Sq = Sk`` is this diagonal). A rank holds one or more *segments* of the sequence (one for the contiguous
layout, two for zig-zag) laid end to end in its tensors.

A *part* is one attention call: query positions ``rows``, key positions ``keys`` (both ranges) and the window that
call needs. The kernels align windows bottom-right (query ``i`` of ``Sq`` against key ``j`` of ``Sk``: ``j >= i +
Sk - Sq - left'``); with ``rows = [a, b)`` and ``keys = [c, e)`` the absolute rule becomes ``left' = left + (e -
b)``, ``right' = right - (e - b)`` (``band_part``), which stays >= 0 once rows and keys are trimmed to the band.

Halo (finite windows): per segment, the diagonal part (its rows over its own keys) and the halo parts (its rows
over the ``left`` keys before it and the ``right`` after it, trimmed to the rows that see them: the first
``left`` and last ``right`` rows; from several ranks when the window is longer than a shard), merged by LSE into
the diagonal part's rows. Each rank receives from every owner, in one message, exactly the keys its halo parts
read.

Ring (a side unbounded: causal or full attention): the ranks pass whole shards around the ring, ``P - 1`` hops; at
step ``t`` rank ``r`` holds the block of rank ``(r - t) mod P`` and computes the parts of its rows against it,
merged by LSE. A hop happens only if the receiver or a rank after it still needs the block: with the contiguous
layout and causal attention rank 0 sends its block to 1, 2, ... P-1 and nothing wraps around.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

LAYOUTS = ("contiguous", "zigzag")
METHODS = ("auto", "halo", "ring")


@dataclass(frozen=True)
class Segment:
    """Absolute positions ``[start, end)`` of the sequence, held from ``offset`` on in the rank's tensors."""

    start: int
    end: int
    offset: int

    def local(self, first: int, end: int) -> slice:
        """The rank-local slice of the absolute positions ``[first, end)`` (inside this segment)."""
        return slice(self.offset + first - self.start, self.offset + end - self.start)


@dataclass(frozen=True)
class Part:
    """One attention call: query positions ``rows``, key positions ``keys`` (absolute ranges), and its window.

    ``sequences``: for packed sequences (varlen), the cumulative lengths of the sequences in a diagonal part
    (``rows == keys``) when it holds more than one, relative to its first row; the call is then a varlen one."""

    rows: tuple[int, int]
    keys: tuple[int, int]
    window: tuple[int, int]
    sequences: tuple[int, ...] = ()


def zigzag_chunks(seqlen: int, num_ranks: int) -> list[int]:
    """Lengths of the ``2 * num_ranks`` chunks of the zig-zag layout (the first ``seqlen % (2P)`` one longer)."""
    count = 2 * num_ranks
    return [seqlen // count + (i < seqlen % count) for i in range(count)]


def shard_lengths_for(seqlen: int, num_ranks: int, layout: str = "contiguous") -> list[int]:
    """Tokens each rank holds when ``split_sequence`` splits ``seqlen`` tokens (contiguous: as even as possible)."""
    _check_layout(layout)
    if layout == "zigzag":
        chunks = zigzag_chunks(seqlen, num_ranks)
        return [chunks[r] + chunks[2 * num_ranks - 1 - r] for r in range(num_ranks)]
    return [seqlen // num_ranks + (r < seqlen % num_ranks) for r in range(num_ranks)]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


@functools.lru_cache(maxsize=64)
def layout_segments(layout: str, shard_lengths: tuple[int, ...]) -> tuple[tuple[Segment, ...], ...]:
    """The segments every rank holds, in the order they sit in its tensors."""
    _check_layout(layout)
    num_ranks = len(shard_lengths)
    if layout == "contiguous":
        starts = [sum(shard_lengths[:r]) for r in range(num_ranks + 1)]
        return tuple((Segment(starts[r], starts[r + 1], 0),) for r in range(num_ranks))
    seqlen = sum(shard_lengths)
    expected = shard_lengths_for(seqlen, num_ranks, "zigzag")
    if list(shard_lengths) != expected:
        raise ValueError(f"shard_lengths: a zig-zag layout of {seqlen} tokens over {num_ranks} ranks holds {expected} "
                         f"tokens per rank (chunks r and 2P-1-r, see split_sequence), got {list(shard_lengths)}")
    chunks = zigzag_chunks(seqlen, num_ranks)
    starts = [sum(chunks[:i]) for i in range(2 * num_ranks + 1)]
    segments = []
    for r in range(num_ranks):
        first, second = r, 2 * num_ranks - 1 - r
        segments.append((Segment(starts[first], starts[first + 1], 0),
                         Segment(starts[second], starts[second + 1], chunks[first])))
    return tuple(segments)


def band_part(rows: tuple[int, int], keys: tuple[int, int], left: int, right: int) -> Part | None:
    """The part for query positions ``rows`` against key positions ``keys``, both trimmed to what the window
    connects, or None when no row sees any key. The window is the one a bottom-right-aligned call over exactly
    the trimmed rows and keys needs to reproduce the absolute one."""
    (a, b), (c, e) = rows, keys
    if left >= 0:
        b = min(b, e + left)  # rows after e - 1 + left see none of the keys
    if right >= 0:
        a = max(a, c - right)
    if a >= b:
        return None
    if left >= 0:
        c = max(c, a - left)
    if right >= 0:
        e = min(e, b + right)
    if c >= e:
        return None
    shift = e - b
    return Part((a, b), (c, e), (left + shift if left >= 0 else -1, right - shift if right >= 0 else -1))


def sequence_parts(rows: tuple[int, int], keys: tuple[int, int], left: int, right: int,
                   boundaries: tuple[int, ...] | None) -> list[Part]:
    """The parts for ``rows`` against ``keys`` when the sequence is packed with ``boundaries`` (cu_seqlens over
    the whole stream; None: one sequence): no query sees a key of another sequence. A diagonal block keeps one
    varlen part; other blocks are disjoint ranges, which at most one sequence (the one spanning the gap) joins."""
    if boundaries is None:
        part = band_part(rows, keys, left, right)
        return [] if part is None else [part]
    if rows == keys:
        inner = sorted({rows[0], rows[1], *(b for b in boundaries if rows[0] < b < rows[1])})
        if len(inner) == 2:
            return sequence_parts(rows, keys, left, right, None)
        return [Part(rows, keys, (left, right), tuple(b - rows[0] for b in inner))]
    parts = []
    for first, end in zip(boundaries[:-1], boundaries[1:]):
        seq_rows = (max(rows[0], first), min(rows[1], end))
        seq_keys = (max(keys[0], first), min(keys[1], end))
        if seq_rows[0] < seq_rows[1] and seq_keys[0] < seq_keys[1]:
            parts += sequence_parts(seq_rows, seq_keys, left, right, None)
    return parts


def key_pieces(keys: tuple[int, int], segments: tuple[tuple[Segment, ...], ...]) -> list[tuple[int, int, int]]:
    """``(first, end, owner rank)`` pieces of the key positions ``keys``, in order."""
    pieces = []
    for owner, owned in enumerate(segments):
        for seg in owned:
            first, end = max(keys[0], seg.start), min(keys[1], seg.end)
            if first < end:
                pieces.append((first, end, owner))
    return sorted(pieces)


def _merge_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for first, end in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([first, end])
    return tuple((first, end) for first, end in merged)


@dataclass(frozen=True)
class HaloPlan:
    """Per rank: its parts, first the diagonal ones (each segment's rows over its own keys, one per segment), then
    the halo parts (a segment's rows over the keys before it, and after it when right > 0: the rows that see
    them, merged into the diagonal part's rows by LSE); and the key ranges it receives from each owner
    (``receives[r]``: ``((owner, ((first, end), ...)), ...)``, ranges merged and in order)."""

    segments: tuple[tuple[Segment, ...], ...]
    parts: tuple[tuple[Part, ...], ...]
    receives: tuple[tuple[tuple[int, tuple[tuple[int, int], ...]], ...], ...]

    def sends(self, rank: int) -> tuple[tuple[int, tuple[tuple[int, int], ...]], ...]:
        """``((destination, ranges), ...)``: what ``rank`` sends, the mirror of ``receives``."""
        return tuple((dest, ranges) for dest, received in enumerate(self.receives) for owner, ranges in received
                     if owner == rank)

    def diagonal_parts(self, rank: int) -> int:
        return sum(1 for seg in self.segments[rank] if seg.start < seg.end)

    def is_local(self, rank: int, part: Part) -> bool:
        """Whether the part reads only keys of ``rank`` (it needs no message)."""
        return all(owner == rank for _, _, owner in key_pieces(part.keys, self.segments))


@functools.lru_cache(maxsize=64)
def halo_plan(layout: str, shard_lengths: tuple[int, ...], left: int, right: int,
              boundaries: tuple[int, ...] | None = None) -> HaloPlan:
    segments = layout_segments(layout, shard_lengths)
    seqlen = sum(shard_lengths)
    all_parts, all_receives = [], []
    for rank, owned in enumerate(segments):
        owned = [seg for seg in owned if seg.start < seg.end]
        # The diagonal parts (a segment's rows over its own keys: every row sees its own key) come first.
        parts = [p for seg in owned for p in sequence_parts((seg.start, seg.end), (seg.start, seg.end), left, right,
                                                             boundaries)]
        for seg in owned:
            before = (max(0, seg.start - left) if left >= 0 else 0, seg.start)
            after = (seg.end, min(seqlen, seg.end + right) if right >= 0 else seqlen)
            for keys in (before, after):
                if keys[0] < keys[1]:
                    parts += sequence_parts((seg.start, seg.end), keys, left, right, boundaries)
        needed: dict[int, list[tuple[int, int]]] = {}
        for part in parts[len(owned):]:
            for first, end, owner in key_pieces(part.keys, segments):
                if owner != rank:
                    needed.setdefault(owner, []).append((first, end))
        all_parts.append(tuple(parts))
        # Merged, then cut at the owner's segment boundaries (two zig-zag chunks of one rank may touch).
        all_receives.append(tuple((owner, tuple(
            (max(first, seg.start), min(end, seg.end)) for first, end in _merge_ranges(needed[owner])
            for seg in segments[owner] if max(first, seg.start) < min(end, seg.end))) for owner in sorted(needed)))
    return HaloPlan(segments, tuple(all_parts), tuple(all_receives))


@dataclass(frozen=True)
class RingPlan:
    """``parts[r][t]``: rank r's parts against the block it holds at step t, that of rank ``(r - t) mod P``;
    ``hops[t][r]``: whether rank r receives that block at step t (from rank r - 1; ``hops[0]`` is all False)."""

    segments: tuple[tuple[Segment, ...], ...]
    parts: tuple[tuple[tuple[Part, ...], ...], ...]
    hops: tuple[tuple[bool, ...], ...]

    def owner(self, rank: int, step: int) -> int:
        return (rank - step) % len(self.segments)

    def receives(self, rank: int, step: int) -> bool:
        return 0 < step < len(self.segments) and self.hops[step][rank]

    def sends(self, rank: int, step: int) -> bool:
        return self.receives((rank + 1) % len(self.segments), step)


@functools.lru_cache(maxsize=64)
def ring_plan(layout: str, shard_lengths: tuple[int, ...], left: int, right: int, every_hop: bool = False,
              boundaries: tuple[int, ...] | None = None) -> RingPlan:
    """``every_hop``: pass every shard around the whole ring (P - 1 hops each), as ring attention does whatever the
    window; the benchmark's baseline. Without it a hop happens only if the receiver or a later rank needs the block."""
    segments = layout_segments(layout, shard_lengths)
    num_ranks = len(segments)

    def parts_between(rank: int, owner: int) -> tuple[Part, ...]:
        return tuple(p for g in segments[rank] for h in segments[owner] if g.start < g.end and h.start < h.end
                     for p in sequence_parts((g.start, g.end), (h.start, h.end), left, right, boundaries))

    needs = [[bool(parts_between(rank, owner)) for owner in range(num_ranks)] for rank in range(num_ranks)]
    hops = [[False] * num_ranks]
    for step in range(1, num_ranks):
        # Rank r holds the block of owner o = r - step at this step; the block travels on while a rank from r
        # onwards (the holders of the later steps) still needs it.
        hops.append([every_hop or any(needs[(rank + later - step) % num_ranks][(rank - step) % num_ranks]
                                      for later in range(step, num_ranks)) for rank in range(num_ranks)])
    parts = tuple(tuple(parts_between(rank, (rank - step) % num_ranks) if step == 0 or hops[step][rank] else ()
                        for step in range(num_ranks)) for rank in range(num_ranks))
    return RingPlan(segments, parts, tuple(tuple(h) for h in hops))


def resolve_method(method: str, left: int, right: int) -> str:
    """``auto``: the halo for a finite window (both sides >= 0), the ring when a side is unbounded."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method == "auto":
        return "halo" if left >= 0 and right >= 0 else "ring"
    return method


def tokens_sent(layout: str, shard_lengths: tuple[int, ...], left: int, right: int, method: str,
                backward: bool = False, every_hop: bool = False,
                boundaries: tuple[int, ...] | None = None) -> list[int]:
    """Key tokens (each with its value) every rank sends in the forward; in the backward a rank sends back the
    gradients of the tokens it received (``backward=True``)."""
    num_ranks = len(shard_lengths)
    if method == "halo":
        plan = halo_plan(layout, shard_lengths, left, right, boundaries)
        messages = [plan.receives[rank] if backward else plan.sends(rank) for rank in range(num_ranks)]
        return [sum(end - first for _, ranges in m for first, end in ranges) for m in messages]
    plan = ring_plan(layout, shard_lengths, left, right, every_hop, boundaries)
    if backward:
        return [sum(shard_lengths[plan.owner(rank, step)] for step in range(1, num_ranks) if plan.receives(rank, step))
                for rank in range(num_ranks)]
    # At step t rank r sends the block it held at step t - 1: that of rank r - t + 1.
    return [sum(shard_lengths[plan.owner(rank, step - 1)] for step in range(1, num_ranks) if plan.sends(rank, step))
            for rank in range(num_ranks)]
