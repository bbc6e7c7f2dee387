"""Context-parallel attention: the autograd functions that run a ``plan`` (halo or ring) with torch.distributed
point-to-point messages (``batch_isend_irecv``: NCCL on GPUs, gloo on CPUs) and swattn's attention calls.

Every attention call is an ordinary swattn forward (``flash_attn_func`` with the part's window); the backward of a
part is swattn's backward kernel on the final out and LSE of its rows (``kernels.bwd.attention_backward``; on a CPU
without the interpreter ``reference.attention_backward_ref``, the same formula), which for a ring part is that
part's share of the gradient. The gradients of keys a rank received go back to their owners in the backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from swattn import reference
from swattn._compat import uses_triton
from swattn.distributed.plan import HaloPlan, Part, RingPlan, Segment, key_pieces
from swattn.interface import flash_attn_func, flash_attn_varlen_func


@dataclass
class Traffic:
    """What this process sent through ``swattn.distributed`` while recording: bytes and messages."""

    bytes_sent: int = 0
    messages: int = 0


_recorders: list[Traffic] = []


@contextlib.contextmanager
def record_traffic():
    """``with record_traffic() as traffic: ...`` counts the bytes this process sends (forward and backward)."""
    traffic = Traffic()
    _recorders.append(traffic)
    try:
        yield traffic
    finally:
        _recorders.remove(traffic)


def _post(group, sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]]) -> list:
    """Start the sends and receives (peers are ranks of ``group``); returns the works to wait on."""
    for traffic in _recorders:
        traffic.bytes_sent += sum(t.numel() * t.element_size() for _, t in sends)
        traffic.messages += len(sends)
    ops = [dist.P2POp(dist.isend, t, dist.get_global_rank(group, peer), group) for peer, t in sends]
    ops += [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, peer), group) for peer, t in recvs]
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(works: list) -> None:
    for work in works:
        work.wait()


@dataclass(frozen=True)
class Setup:
    """Everything a rank's call needs besides the tensors."""

    group: object
    rank: int
    plan: HaloPlan | RingPlan
    softmax_scale: float
    softcap: float

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.plan.segments[self.rank]

    def local_rows(self, rows: tuple[int, int]) -> slice:
        for seg in self.segments:
            if seg.start <= rows[0] and rows[1] <= seg.end:
                return seg.local(*rows)
        raise AssertionError(f"rows {rows} are not in one segment of rank {self.rank}")


def _attend(setup: Setup, part: Part, q, k, v, sinks):
    """One part's forward -> (out ``[B, n, H, D]``, lse ``[B, H, n]``); a varlen part (B = 1) runs as one varlen
    call over its packed sequences."""
    kwargs = dict(softmax_scale=setup.softmax_scale, window_size=part.window, softcap=setup.softcap, sinks=sinks,
                  return_softmax_lse=True)
    if not part.sequences:
        return flash_attn_func(q, k, v, **kwargs)
    cu_seqlens, longest = _cu_seqlens(part, q.device)
    out, lse = flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens, cu_seqlens, longest, longest, **kwargs)
    return out[None], lse[None]


def _cu_seqlens(part: Part, device) -> tuple[torch.Tensor, int]:
    cumulative = part.sequences
    longest = max(b - a for a, b in zip(cumulative[:-1], cumulative[1:]))
    return torch.tensor(cumulative, dtype=torch.int32, device=device), longest


def _attend_backward(setup: Setup, part: Part, dout, q, k, v, out, lse, dlse, sinks):
    """(dq, dk, dv, dsinks) of one part, on the final out/lse of its rows."""
    left, right = part.window
    if uses_triton(q):
        from swattn.kernels.bwd import attention_backward
        kwargs = dict(softmax_scale=setup.softmax_scale, left=left, right=right, softcap=setup.softcap, sinks=sinks)
        if not part.sequences:
            return attention_backward(dout, q, k, v, out, lse, dlse=dlse, **kwargs)
        cu_seqlens, longest = _cu_seqlens(part, q.device)
        dq, dk, dv, dsinks = attention_backward(
            dout[0], q[0], k[0], v[0], out[0], lse[0], dlse=None if dlse is None else dlse[0], cu_seqlens_q=cu_seqlens,
            cu_seqlens_k=cu_seqlens, max_seqlen_q=longest, max_seqlen_k=longest, **kwargs)
        return dq[None], dk[None], dv[None], dsinks
    kwargs = dict(softmax_scale=setup.softmax_scale, window_size=(left, right), softcap=setup.softcap, sinks=sinks)
    if not part.sequences:
        return reference.attention_backward_ref(dout, q, k, v, out, lse, dlse=dlse, **kwargs)
    bounds = part.sequences
    results = [reference.attention_backward_ref(
        dout[:, a:b], q[:, a:b], k[:, a:b], v[:, a:b], out[:, a:b], lse[:, :, a:b],
        dlse=None if dlse is None else dlse[:, :, a:b], **kwargs) for a, b in zip(bounds[:-1], bounds[1:])]
    dq, dk, dv = (torch.cat([r[i] for r in results], dim=1) for i in range(3))
    dsinks = None if sinks is None else sum(r[3] for r in results)
    return dq, dk, dv, dsinks


def _pack(k: torch.Tensor, v: torch.Tensor, setup: Setup, ranges) -> torch.Tensor:
    """This rank's keys and values at the absolute ``ranges``, as one message ``[2, B, n, Hk, D]``."""
    slices = [setup.local_rows(r) for r in ranges]
    return torch.stack([torch.cat([t[:, s] for s in slices], dim=1) for t in (k, v)])


def _offsets(ranges) -> list[tuple[int, int, int]]:
    """``(first, end, position in the message)`` of each range of a message."""
    result, position = [], 0
    for first, end in ranges:
        result.append((first, end, position))
        position += end - first
    return result


class _HaloAttention(torch.autograd.Function):
    """Finite windows: the diagonal parts (a segment's rows over its own keys) run while the halo is in flight;
    then each halo part (the rows that see keys of other ranks, over those keys) is merged by LSE into its rows of
    the diagonal part's out and lse, in place. Sinks join in the diagonal parts, once per row."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, setup: Setup):
        plan, rank, group = setup.plan, setup.rank, setup.group
        batch, seqlen, num_kv_heads, head_dim = k.shape
        sends = [(dest, _pack(k, v, setup, ranges)) for dest, ranges in plan.sends(rank)]
        received = {owner: (k.new_empty(2, batch, sum(e - f for f, e in ranges), num_kv_heads, head_dim),
                            _offsets(ranges)) for owner, ranges in plan.receives[rank]}
        works = _post(group, sends, [(owner, buf) for owner, (buf, _) in received.items()])
        parts, diagonal = plan.parts[rank], plan.diagonal_parts(rank)
        out = lse = None
        for index, part in enumerate(parts):
            if works and not plan.is_local(rank, part):
                _wait(works)
                works = []
            keys, values = _part_keys(setup, part, k, v, received)
            rows = setup.local_rows(part.rows)
            part_out, part_lse = _attend(setup, part, q[:, rows], keys, values, sinks if index < diagonal else None)
            if out is None and rows == slice(0, seqlen):  # one segment: its diagonal part's out is the result
                out, lse = part_out, part_lse
                continue
            if out is None:
                out = torch.empty_like(q)
                lse = q.new_empty(q.shape[0], q.shape[2], seqlen, dtype=torch.float32)
            if index < diagonal:
                out[:, rows] = part_out
                lse[:, :, rows] = part_lse
            else:
                _merge_rows(out[:, rows], lse[:, :, rows], part_out, part_lse)
        _wait(works)  # the sends of a rank whose parts all read local keys
        if out is None:  # an empty shard
            out, lse = torch.empty_like(q), q.new_empty(q.shape[0], q.shape[2], 0, dtype=torch.float32)
        ctx.setup = setup
        ctx.owners = list(received)
        ctx.offsets = [received[o][1] for o in ctx.owners]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, out, lse, sinks, *(received[o][0] for o in ctx.owners))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        setup = ctx.setup
        plan, rank = setup.plan, setup.rank
        q, k, v, out, lse, sinks, *buffers = ctx.saved_tensors
        received = {owner: (buf, offsets) for owner, buf, offsets in zip(ctx.owners, buffers, ctx.offsets)}
        dout = torch.zeros_like(out) if dout is None else dout
        grads = {owner: torch.zeros_like(buf, dtype=torch.float32) for owner, (buf, _) in received.items()}
        dsinks = None if sinks is None else torch.zeros(sinks.shape, device=q.device, dtype=torch.float32)
        query_grads: list[tuple[slice, torch.Tensor]] = []  # (local rows, dq)
        key_grads: list[tuple[slice, torch.Tensor, torch.Tensor]] = []  # (local key rows, dk, dv)
        # Every part's backward runs on the final out and lse of its rows, which gives that part's share. The halo
        # parts first, so that the halo's gradients travel while the diagonal parts run.
        parts, diagonal = plan.parts[rank], plan.diagonal_parts(rank)
        order = list(range(diagonal, len(parts))) + list(range(diagonal))
        works = returned = None
        for index in order:
            if index == 0:
                works, returned, outgoing = _return_halo_grads(setup, grads, k)
            part = parts[index]
            keys, values = _part_keys(setup, part, k, v, received)
            rows = setup.local_rows(part.rows)
            part_dq, part_dk, part_dv, part_dsinks = _attend_backward(
                setup, part, dout[:, rows], q[:, rows], keys, values, out[:, rows], lse[:, :, rows],
                None if dlse is None else dlse[:, :, rows], sinks if index < diagonal else None)
            query_grads.append((rows, part_dq))
            key_grads += _scatter_key_grads(setup, part, part_dk, part_dv, grads)
            if part_dsinks is not None:
                dsinks += part_dsinks
        if works is None:  # an empty shard, which may still have sent keys
            works, returned, outgoing = _return_halo_grads(setup, grads, k)
        (dq,) = _sum_row_grads(query_grads, q)
        _wait(works)
        for (_, ranges), message in zip(plan.sends(rank), returned):
            for first, end, position in _offsets(ranges):
                piece = slice(position, position + end - first)
                key_grads.append((setup.local_rows((first, end)), message[0, :, piece], message[1, :, piece]))
        dk, dv = _sum_row_grads(key_grads, k, v)
        dsinks = None if dsinks is None else dsinks.to(sinks.dtype)
        return dq, dk, dv, dsinks, None


def _merge_rows(out: torch.Tensor, lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
    """Fold a part (out ``[B, n, H, D]``, lse ``[B, H, n]``) into views of the result's rows, in place, in fp32
    (the merged rows are rounded to out's dtype a second time). Both LSEs are finite: every row sees its own key
    and the part's rows a key."""
    total = torch.logaddexp(lse, part_lse)
    merged = out * torch.exp(lse - total).transpose(1, 2).unsqueeze(-1)
    merged.addcmul_(part_out, torch.exp(part_lse - total).transpose(1, 2).unsqueeze(-1))
    out.copy_(merged)
    lse.copy_(total)


def _sum_row_grads(contributions, *likes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sum ``(rows, grad, ...)`` contributions into gradients shaped like ``likes``: one that covers every row (the
    diagonal part's, for one segment) becomes the result without a copy and the others are added to it in place,
    in its dtype (each addition rounds once, as an fp32 accumulator cast at the end would for two terms)."""
    whole = next((i for i, (rows, *_) in enumerate(contributions) if rows == slice(0, likes[0].shape[1])), None)
    if whole is None:
        result = tuple(torch.zeros_like(t) for t in likes)
    else:
        result = tuple(contributions.pop(whole)[1:])
    for rows, *grads in contributions:
        for total, grad in zip(result, grads):
            total[:, rows] += grad
    return result


def _part_keys(setup: Setup, part: Part, k, v, received):
    """The keys and values of a part: views when they come from one place, else concatenated pieces."""
    keys, values = [], []
    for first, end, owner in key_pieces(part.keys, setup.plan.segments):
        if owner == setup.rank:
            rows = setup.local_rows((first, end))
            keys.append(k[:, rows])
            values.append(v[:, rows])
            continue
        buf, offsets = received[owner]
        for range_first, range_end, position in offsets:
            if range_first <= first and end <= range_end:
                start = position + first - range_first
                keys.append(buf[0, :, start:start + end - first])
                values.append(buf[1, :, start:start + end - first])
                break
    if len(keys) == 1:
        return keys[0], values[0]
    return torch.cat(keys, dim=1), torch.cat(values, dim=1)


def _scatter_key_grads(setup: Setup, part: Part, dk, dv, grads) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Add a part's key/value gradients of other ranks' keys to the messages back to their owners; returns those of
    local keys as ``(local rows, dk, dv)``."""
    local = []
    for first, end, owner in key_pieces(part.keys, setup.plan.segments):
        piece = slice(first - part.keys[0], end - part.keys[0])
        if owner == setup.rank:
            local.append((setup.local_rows((first, end)), dk[:, piece], dv[:, piece]))
            continue
        for range_first, range_end, position in _offsets(dict(setup.plan.receives[setup.rank])[owner]):
            if range_first <= first and end <= range_end:
                start = position + first - range_first
                grads[owner][0][:, start:start + end - first] += dk[:, piece]
                grads[owner][1][:, start:start + end - first] += dv[:, piece]
                break
    return local


def _return_halo_grads(setup: Setup, grads, k):
    """Send the halo's gradients to their owners and receive those of the keys this rank sent."""
    sends = [(owner, grad.to(k.dtype)) for owner, grad in grads.items()]
    returned = [k.new_empty(2, k.shape[0], sum(e - f for f, e in ranges), k.shape[2], k.shape[3])
                for _, ranges in setup.plan.sends(setup.rank)]
    recvs = [(dest, buf) for (dest, _), buf in zip(setup.plan.sends(setup.rank), returned)]
    return _post(setup.group, sends, recvs), returned, sends


class _RingAttention(torch.autograd.Function):
    """A side unbounded (causal, full): blocks travel around the ring while each step's parts run; parts are merged
    by their LSE (fp32 accumulators); sinks join once, at the end. The backward runs the steps in reverse on the
    blocks kept from the forward, the key gradients of a block travelling back along the path it came."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, setup: Setup):
        plan, rank, group = setup.plan, setup.rank, setup.group
        num_ranks = len(plan.segments)
        acc_out = acc_lse = None
        blocks: list[torch.Tensor | None] = [None] * num_ranks
        for step in range(num_ranks):
            sends, recvs = [], []
            if plan.sends(rank, step + 1):
                if step == 0:
                    blocks[0] = torch.stack([k, v])
                sends.append(((rank + 1) % num_ranks, blocks[step]))
            if plan.receives(rank, step + 1):
                length = sum(s.end - s.start for s in plan.segments[plan.owner(rank, step + 1)])
                blocks[step + 1] = k.new_empty(2, k.shape[0], length, k.shape[2], k.shape[3])
                recvs.append(((rank - 1) % num_ranks, blocks[step + 1]))
            works = _post(group, sends, recvs)
            for part in plan.parts[rank][step]:
                keys, values = _block_keys(setup, part, step, k, v, blocks)
                rows = setup.local_rows(part.rows)
                part_out, part_lse = _attend(setup, part, q[:, rows], keys, values, None)
                if acc_out is None and rows == slice(0, q.shape[1]):  # the usual first part: the diagonal block
                    acc_out, acc_lse = part_out.float(), part_lse.clone()
                    continue
                if acc_out is None:
                    acc_out = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
                    acc_lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), device=q.device,
                                         dtype=torch.float32)
                _merge(acc_out[:, rows], acc_lse[:, :, rows], part_out, part_lse)
            _wait(works)
        if acc_out is None:  # an empty shard
            acc_out = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
            acc_lse = q.new_empty(q.shape[0], q.shape[2], 0, dtype=torch.float32)
        if sinks is not None:
            total = torch.logaddexp(acc_lse, sinks.float().view(1, -1, 1))
            acc_out *= torch.exp(acc_lse - total).transpose(1, 2).unsqueeze(-1)
            acc_lse = total
        out = acc_out.to(q.dtype)
        ctx.setup = setup
        ctx.kept = [step for step in range(1, num_ranks) if blocks[step] is not None]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, out, acc_lse, sinks, *(blocks[step] for step in ctx.kept))
        return out, acc_lse

    @staticmethod
    def backward(ctx, dout, dlse):
        setup = ctx.setup
        plan, rank, group = setup.plan, setup.rank, setup.group
        num_ranks = len(plan.segments)
        q, k, v, out, lse, sinks, *kept = ctx.saved_tensors
        blocks: list[torch.Tensor | None] = [None] * num_ranks
        for step, block in zip(ctx.kept, kept):
            blocks[step] = block
        dout = torch.zeros_like(out) if dout is None else dout
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        own = torch.zeros((2,) + tuple(k.shape), device=k.device, dtype=torch.float32)
        works, incoming, outgoing = [], None, []
        for step in reversed(range(num_ranks)):
            grad = own if step == 0 else (None if blocks[step] is None else
                                          torch.zeros_like(blocks[step], dtype=torch.float32))
            for part in plan.parts[rank][step]:
                keys, values = _block_keys(setup, part, step, k, v, blocks)
                rows = setup.local_rows(part.rows)
                part_dq, part_dk, part_dv, _ = _attend_backward(
                    setup, part, dout[:, rows], q[:, rows], keys, values, out[:, rows], lse[:, :, rows],
                    None if dlse is None else dlse[:, :, rows], None)
                dq[:, rows] += part_dq
                block_rows = _block_rows(setup, part, step)
                grad[0][:, block_rows] += part_dk
                grad[1][:, block_rows] += part_dv
            _wait(works)
            if incoming is not None:  # the gradient of this block from the ranks it travelled on to
                grad += incoming
            outgoing, recvs, incoming = [], [], None  # outgoing: kept alive until its send is waited on
            if plan.receives(rank, step):
                outgoing.append(((rank - 1) % num_ranks, grad.to(k.dtype)))
            if plan.sends(rank, step):
                length = sum(s.end - s.start for s in plan.segments[plan.owner(rank, step - 1)])
                incoming = k.new_empty(2, k.shape[0], length, k.shape[2], k.shape[3])
                recvs.append(((rank + 1) % num_ranks, incoming))
            works = _post(group, outgoing, recvs)
        dsinks = None
        if sinks is not None and ctx.needs_input_grad[3]:
            delta = (dout.float() * out.float()).sum(-1).transpose(1, 2)  # [B, H, S]
            if dlse is not None:
                delta = delta - dlse
            dsinks = -(torch.exp(sinks.float().view(1, -1, 1) - lse) * delta).sum((0, 2)).to(sinks.dtype)
        return dq.to(q.dtype), own[0].to(k.dtype), own[1].to(v.dtype), dsinks, None


def _block_rows(setup: Setup, part: Part, step: int) -> slice:
    """Where a part's keys sit in the block of the rank it came from (held at ``step``)."""
    owner = setup.plan.owner(setup.rank, step)
    for seg in setup.plan.segments[owner]:
        if seg.start <= part.keys[0] and part.keys[1] <= seg.end:
            return seg.local(*part.keys)
    raise AssertionError(f"keys {part.keys} are not in one segment of rank {owner}")


def _block_keys(setup: Setup, part: Part, step: int, k, v, blocks):
    rows = _block_rows(setup, part, step)
    if step == 0:
        return k[:, rows], v[:, rows]
    return blocks[step][0][:, rows], blocks[step][1][:, rows]


def _merge(acc_out: torch.Tensor, acc_lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
    """Fold one part (out ``[B, n, H, D]``, lse ``[B, H, n]``) into views of the fp32 accumulators, in place.

    Every row of a part sees at least one key, so ``part_lse`` and the merged LSE are finite."""
    total = torch.logaddexp(acc_lse, part_lse)
    acc_out.mul_(torch.exp(acc_lse - total).transpose(1, 2).unsqueeze(-1))
    acc_out.addcmul_(part_out, torch.exp(part_lse - total).transpose(1, 2).unsqueeze(-1))
    acc_lse.copy_(total)
