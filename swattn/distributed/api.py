"""Public face of context parallelism: ``sliding_window_attention`` over a sequence split across the ranks of a
torch.distributed group, the helpers that split and gather sequences, and ``bytes_sent``.

Layouts (``layout=``):

- ``"contiguous"`` (default): rank r holds tokens ``[sum(shard_lengths[:r]), sum(shard_lengths[:r+1]))``; shards
  may differ in length (``split_sequence`` makes them as even as possible).
- ``"zigzag"``: the sequence is cut into ``2P`` chunks and rank r holds chunks ``r`` and ``2P-1-r``, in that order.
  With causal attention every rank then has the same work (rank r's early chunk sees few keys, its late chunk
  many), where the contiguous layout gives rank P-1 2P-1 times the work of rank 0. A sliding window balances
  itself: every row sees at most ``left + right + 1`` keys whatever its rank, so the contiguous layout is right
  there (and sends less: one halo per rank instead of two).

Methods (``method=``): ``"halo"`` (the default for a finite window, both sides >= 0): each rank receives once,
from the ranks before (and, for ``right > 0``, after) it, exactly the keys its rows can see, overlapping that
message with the attention of its rows over its own keys, and merges the halo's part into the rows that see it by
their LSE; per rank ``(left + right) x B x Hk x D x 2`` elements (keys and values) for a window shorter than the
shards, whatever P. ``"ring"`` (the default when a side is unbounded: causal or full attention): whole shards
travel around the ring with an LSE merge, and a shard stops travelling once no rank further on needs it.
``bytes_sent`` states both; a ring with a finite window is the baseline the benchmark (``torchrun ... -m
swattn.bench context-parallel``) measures the halo against.

Backward: the gradients of keys a rank received go back to their owners; every rank must call backward (as with
any collective). Packed sequences (varlen): ``cu_seqlens`` of the whole stream, with boundaries anywhere.
With NCCL, initialise the process group with ``device_id=`` (eager communicators): the sends and receives are
``batch_isend_irecv`` calls in which not every rank takes part.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from swattn.distributed.attention import Setup, _HaloAttention, _RingAttention
from swattn.distributed.plan import (
    _check_layout,
    halo_plan,
    layout_segments,
    resolve_method,
    ring_plan,
    shard_lengths_for,
    tokens_sent,
)
from swattn.interface import _check_qkv, _check_scalars, _check_sinks
from swattn.window import normalize_window


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
    layout: str = "contiguous",
    shard_lengths: list[int] | None = None,
    method: str = "auto",
    cu_seqlens: list[int] | torch.Tensor | None = None,
):
    """Self-attention of a sequence split across the ranks of ``group`` (default: the world).

    Each rank passes its shard: q ``[B, S_rank, H, D]``, k/v ``[B, S_rank, Hk, D]`` (the same tokens), in the order
    of ``layout``. Window semantics are ``flash_attn_func``'s for the whole sequence (``window_size=(left,
    right)``, -1 unbounded, ``causal`` sets right = 0; softcap, sinks ``[H]`` as there). Returns this rank's out
    ``[B, S_rank, H, D]`` and, with ``return_softmax_lse``, its lse ``[B, H, S_rank]`` (fp32), equal to those rows of
    a single-process call on the whole sequence; differentiable in q, k, v and sinks.

    ``shard_lengths``: every rank's ``S_rank`` in group order; without it they are all-gathered on each call (one
    small collective and a host sync). The sends and receives of the ranks pair up only if every rank of the group
    calls with the same window, layout, method and shard lengths.

    Packed sequences (varlen): q ``[T_rank, H, D]``, k/v ``[T_rank, Hk, D]`` (this rank's share of the packed
    stream) and ``cu_seqlens``, the cumulative sequence lengths of the *whole* stream (the same on every rank; a
    list, or a tensor read once to the host), whose boundaries may fall anywhere, inside shards or on their
    edges; no query sees another sequence's keys. Then out is ``[T_rank, H, D]`` and lse ``[H, T_rank]``.
    """
    varlen = cu_seqlens is not None
    if varlen:
        _check_qkv(q, k, v, "(T_rank, H, D)", "(T_rank, Hk, D)", 3)
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"k: expected {q.shape[0]} tokens to match q (self-attention: a rank's queries and keys "
                             f"are the same tokens), got {k.shape[0]}")
        q, k, v = q[None], k[None], v[None]  # one packed row; views, so autograd returns the gradients' shapes
    else:
        if isinstance(q, torch.Tensor) and q.dim() == 3:
            raise ValueError("cu_seqlens: packed q [T_rank, H, D] needs the cu_seqlens of the whole stream")
        _check_qkv(q, k, v, "(B, S_rank, H, D)", "(B, S_rank, Hk, D)", 4)
        if k.shape[:2] != q.shape[:2]:
            raise ValueError(f"k: expected batch and length {tuple(q.shape[:2])} to match q (self-attention: a "
                             f"rank's queries and keys are the same tokens), got {tuple(k.shape[:2])}")
    if v.shape[-1] != q.shape[-1]:
        # The halo and ring exchanges send k and v in one buffer of k's shape.
        raise NotImplementedError(f"v: a value head_dim ({v.shape[-1]}) other than q / k's ({q.shape[-1]}) is not "
                                  "supported by context-parallel attention (swattn.flash_attn_func takes it on one "
                                  "rank)")
    softmax_scale = _check_scalars(q, softmax_scale, softcap)
    left, right = normalize_window(causal, window_size)
    sinks = _check_sinks(sinks, q.shape[2], q.device)
    _check_layout(layout)
    method = resolve_method(method, left, right)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group: torch.distributed is not initialized; call torch.distributed.init_process_group")
    group = group if group is not None else dist.group.WORLD
    rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the group")
    shard_lengths = _shard_lengths(shard_lengths, q, group, rank, num_ranks)
    boundaries = _check_cu_seqlens(cu_seqlens, sum(shard_lengths)) if varlen else None
    if method == "halo":
        plan = halo_plan(layout, shard_lengths, left, right, boundaries)
    else:
        plan = ring_plan(layout, shard_lengths, left, right, False, boundaries)
    setup = Setup(group, rank, plan, softmax_scale, float(softcap))
    function = _HaloAttention if method == "halo" else _RingAttention
    out, lse = function.apply(q, k, v, sinks, setup)
    if varlen:
        out, lse = out[0], lse[0]
    return (out, lse) if return_softmax_lse else out


def _check_cu_seqlens(cu_seqlens, total: int) -> tuple[int, ...]:
    values = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    if (len(values) < 2 or values[0] != 0 or values[-1] != total or any(isinstance(b, bool) or not isinstance(b, int)
                                                                         for b in values)
            or any(b > c for b, c in zip(values[:-1], values[1:]))):
        raise ValueError(f"cu_seqlens: expected non-decreasing ints from 0 to the stream's {total} tokens (the sum of "
                         f"shard_lengths), got {values if len(values) <= 12 else values[:12] + ['...']}")
    return tuple(values)


def _shard_lengths(shard_lengths, q: torch.Tensor, group, rank: int, num_ranks: int) -> tuple[int, ...]:
    if shard_lengths is None:
        device = q.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
        mine = torch.tensor([q.shape[1]], device=device, dtype=torch.int64)
        gathered = [torch.empty_like(mine) for _ in range(num_ranks)]
        dist.all_gather(gathered, mine, group=group)
        return tuple(int(t.item()) for t in gathered)
    lengths = tuple(shard_lengths)
    if len(lengths) != num_ranks or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lengths):
        raise ValueError(f"shard_lengths: expected {num_ranks} ints >= 0 (one per rank of the group), got "
                         f"{list(shard_lengths)!r}")
    if lengths[rank] != q.shape[1]:
        raise ValueError(f"shard_lengths: entry {rank} (this rank) is {lengths[rank]} but q holds {q.shape[1]} tokens")
    return lengths


def split_sequence(x: torch.Tensor, num_ranks: int, rank: int, layout: str = "contiguous",
                   dim: int = 1) -> torch.Tensor:
    """Rank ``rank``'s shard of the whole-sequence tensor ``x`` (sequence along ``dim``): a view for the
    contiguous layout, a copy (two chunks) for zig-zag."""
    lengths = shard_lengths_for(x.shape[dim], num_ranks, layout)
    segments = layout_segments(layout, tuple(lengths))[rank]
    pieces = [x.narrow(dim, seg.start, seg.end - seg.start) for seg in segments]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def gather_sequence(shards: list[torch.Tensor], layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """The whole sequence from every rank's shard (in rank order), the inverse of ``split_sequence``."""
    lengths = tuple(s.shape[dim] for s in shards)
    segments = layout_segments(layout, lengths)
    pieces = sorted(((seg.start, shard.narrow(dim, seg.offset, seg.end - seg.start))
                     for shard, owned in zip(shards, segments) for seg in owned), key=lambda p: p[0])
    return torch.cat([piece for _, piece in pieces], dim=dim)


def all_gather_sequence(x: torch.Tensor, group: dist.ProcessGroup | None = None, layout: str = "contiguous",
                        dim: int = 1) -> torch.Tensor:
    """Collective: the whole sequence on every rank from each rank's shard ``x`` (shards may differ in length;
    not differentiable)."""
    group = group if group is not None else dist.group.WORLD
    num_ranks = dist.get_world_size(group)
    lengths = _shard_lengths(None, x.movedim(dim, 1), group, dist.get_rank(group), num_ranks)
    longest = max(lengths)
    padded = x.movedim(dim, 0).contiguous()
    if padded.shape[0] < longest:
        padded = torch.cat([padded, padded.new_zeros((longest - padded.shape[0],) + padded.shape[1:])])
    gathered = [torch.empty_like(padded) for _ in range(num_ranks)]
    dist.all_gather(gathered, padded, group=group)
    shards = [g[:n].movedim(0, dim) for g, n in zip(gathered, lengths)]
    return gather_sequence(shards, layout, dim)


def bytes_sent(
    shard_lengths: list[int],
    window_size: tuple[int, int] = (-1, -1),
    causal: bool = False,
    *,
    batch: int,
    num_kv_heads: int,
    head_dim: int,
    element_size: int,
    layout: str = "contiguous",
    method: str = "auto",
    backward: bool = False,
    cu_seqlens: list[int] | None = None,
) -> list[int]:
    """Bytes each rank sends in the forward of ``sliding_window_attention`` (keys and values), or with
    ``backward=True`` in its backward (the gradients of the keys and values it received, in their dtype).
    Halo: the keys other ranks' windows reach, ``(left + right) x B x Hk x D x 2 x element_size`` per rank when
    the window is shorter than the shards (less at the ends of the sequence); ring: the shards it passes on,
    ``(P-1)/P`` of all keys and values for full attention. ``cu_seqlens``: packed sequences, as for
    ``sliding_window_attention`` (only sequences that cross a shard edge send anything)."""
    left, right = normalize_window(causal, window_size)
    method = resolve_method(method, left, right)
    per_token = 2 * batch * num_kv_heads * head_dim * element_size
    boundaries = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, sum(shard_lengths))
    return [n * per_token for n in tokens_sent(layout, tuple(shard_lengths), left, right, method, backward,
                                               boundaries=boundaries)]
