"""Context-parallel attention (swattn.distributed): the plans on their own, then one gloo world of 4 CPU processes
that runs every case on subgroups of 2, 3 and 4 ranks against a single-process call on the whole sequence (out, LSE,
gradients of q, k, v and sinks), and checks the bytes sent against ``bytes_sent``.

The processes use the CPU reference path (``TRITON_INTERPRET=0``) but for one case: the distributed logic is the
same as on GPUs, and the interpreter would make the cases a minute instead of seconds; the case run through the
kernels (interpreted) covers what the reference path cannot (the backward kernels on merged out/lse). One process
group for all cases keeps the cost of starting processes paid once.
"""

from __future__ import annotations

import datetime
import itertools
import os
import tempfile
import time
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swattn import reference
from swattn._compat import interpreter_enabled
from swattn.distributed import (
    all_gather_sequence,
    bytes_sent,
    gather_sequence,
    record_traffic,
    shard_lengths_for,
    sliding_window_attention,
    split_sequence,
)
from swattn.distributed.plan import Part, band_part, halo_plan, layout_segments, ring_plan, tokens_sent
from swattn.testing import assert_close
from swattn.window import is_visible

WORLD = 4


def _visible_pairs(seqlen: int, left: int, right: int) -> set[tuple[int, int]]:
    return {(i, j) for i in range(seqlen) for j in range(seqlen) if is_visible(i, j, seqlen, seqlen, left, right)}


def _part_pairs(part) -> set[tuple[int, int]]:
    """The (query, key) pairs a part's call computes, through the kernels' bottom-right rule."""
    (a, b), (c, e) = part.rows, part.keys
    return {(a + i, c + j) for i in range(b - a) for j in range(e - c)
            if is_visible(i, j, b - a, e - c, *part.window)}


@pytest.mark.parametrize("layout,lengths", [("contiguous", (4, 1, 6)), ("contiguous", (0, 5, 3)),
                                            ("zigzag", (4, 4, 4))])
@pytest.mark.parametrize("window", [(0, 0), (2, 0), (5, 3), (-1, 0), (-1, -1), (3, -1)])
def test_plans_cover_every_visible_pair_once(layout, lengths, window):
    """Halo and ring: the parts of every rank together compute each visible pair exactly once, through the
    kernels' bottom-right rule with the part's window, which never needs a negative side; the halo's diagonal
    parts cover every row once."""
    left, right = window
    seqlen = sum(lengths)
    expected = _visible_pairs(seqlen, left, right)
    halo = halo_plan(layout, lengths, left, right)
    ring = ring_plan(layout, lengths, left, right)
    halo_pairs, ring_pairs = [], []
    for rank in range(len(lengths)):
        for part in halo.parts[rank]:
            assert all(side >= -1 for side in part.window)
            halo_pairs += sorted(_part_pairs(part))
        for part in itertools.chain.from_iterable(ring.parts[rank]):
            assert all(side >= -1 for side in part.window)
            ring_pairs += sorted(_part_pairs(part))
    assert sorted(halo_pairs) == sorted(expected)
    assert sorted(ring_pairs) == sorted(expected)
    rows = sorted(r for rank in range(len(lengths)) for p in halo.parts[rank][:halo.diagonal_parts(rank)]
                  for r in range(*p.rows))
    assert rows == list(range(seqlen))


@pytest.mark.parametrize("window", [(2, 0), (5, 3), (-1, 0), (-1, -1)])
def test_plans_with_packed_sequences(window):
    """Packed sequences (boundaries inside shards, on a shard's edge, an empty one): each visible pair of the same
    sequence is computed once, and a diagonal part runs its sequences as one varlen call."""
    left, right = window
    lengths, boundaries = (4, 1, 6, 5), (0, 3, 3, 5, 11, 16)
    sequence = {i: b for b, (first, end) in enumerate(zip(boundaries[:-1], boundaries[1:])) for i in range(first, end)}
    expected = {(i, j) for i, j in _visible_pairs(16, left, right) if sequence[i] == sequence[j]}

    def pairs(part):
        if not part.sequences:
            return _part_pairs(part)
        cu = [part.rows[0] + b for b in part.sequences]  # a varlen call: each sequence on its own, same window
        return {p for first, end in zip(cu[:-1], cu[1:]) if first < end
                for p in _part_pairs(Part((first, end), (first, end), part.window))}

    for plan in (halo_plan("contiguous", lengths, left, right, boundaries),
                 ring_plan("contiguous", lengths, left, right, False, boundaries)):
        found = []
        for rank in range(len(lengths)):
            parts = plan.parts[rank] if isinstance(plan.parts[rank][0], Part) else itertools.chain(*plan.parts[rank])
            found += [p for part in parts for p in sorted(pairs(part))]
        assert sorted(found) == sorted(expected)
    assert halo_plan("contiguous", lengths, left, right, boundaries).parts[0][0].sequences == (0, 3, 4)


def test_band_part_trims_to_the_band():
    assert band_part((10, 20), (0, 5), 3, 0) is None  # keys long before the window
    part = band_part((10, 20), (5, 12), 3, 0)
    assert part.rows == (10, 15) and part.keys == (7, 12) and part.window == (0, 3)


def test_halo_sends_the_window_and_the_ring_the_shards():
    """Window shorter than a shard: each rank but the last sends ``left`` keys (and the first ``right`` of its
    shard backwards); causal ring over contiguous shards: rank r passes on r + 1 shards, rank P-1 none."""
    lengths = (8, 8, 8, 8)
    assert tokens_sent("contiguous", lengths, 3, 0, "halo") == [3, 3, 3, 0]
    assert tokens_sent("contiguous", lengths, 3, 2, "halo") == [3, 5, 5, 2]
    assert tokens_sent("contiguous", lengths, 3, 2, "halo", backward=True) == [2, 5, 5, 3]  # what it received
    assert tokens_sent("contiguous", lengths, -1, 0, "ring") == [8, 16, 24, 0]
    assert tokens_sent("contiguous", lengths, 3, 0, "ring") == [8, 8, 8, 0]  # a finite window: one hop each
    assert tokens_sent("contiguous", lengths, 3, 0, "ring", every_hop=True) == [24, 24, 24, 24]  # ring attention
    assert tokens_sent("contiguous", lengths, -1, -1, "ring") == [24, 24, 24, 24]  # (P-1)/P of everything
    assert bytes_sent(list(lengths), (3, 0), batch=2, num_kv_heads=4, head_dim=64, element_size=2) == \
        [3 * 2 * 2 * 4 * 64 * 2] * 3 + [0]
    assert layout_segments("zigzag", (4, 4, 4))[0][1].start == 10  # rank 0: chunks 0 and 5 of 2 tokens


def test_reference_backward_on_own_stats_is_autograd():
    """``attention_backward_ref`` on a call's own out/lse equals autograd of ``attention_ref`` (dlse and sinks)."""
    q, k, v = (torch.randn(2, 7, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k2, v2 = (t.detach()[:, :, :2].clone().requires_grad_() for t in (k, v))
    sinks = torch.randn(4, dtype=torch.float64, requires_grad=True)
    kwargs = dict(softmax_scale=0.3, window_size=(2, 1), softcap=2.0, sinks=sinks)
    out, lse = reference.attention_ref(q, k2, v2, **kwargs)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    expected = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), (q, k2, v2, sinks))
    actual = reference.attention_backward_ref(dout, q.detach(), k2.detach(), v2.detach(), out.detach(), lse.detach(),
                                              dlse=dlse, **{**kwargs, "sinks": sinks.detach()})
    for name, a, e in zip(("dq", "dk", "dv", "dsinks"), actual, expected):
        assert_close(name, a, e, 1e-6)  # attention_ref returns an fp32 lse


def test_errors_name_the_argument():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens: packed q"):
        sliding_window_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k: expected 4 tokens"):
        sliding_window_attention(q[0], q[0, :3], q[0, :3], cu_seqlens=[0, 4])
    with pytest.raises(ValueError, match="k: expected batch and length"):
        sliding_window_attention(q, q[:, :3], q[:, :3])
    with pytest.raises(ValueError, match="layout"):
        sliding_window_attention(q, q, q, layout="striped")
    with pytest.raises(ValueError, match="method"):
        sliding_window_attention(q, q, q, method="all-to-all")
    with pytest.raises(NotImplementedError, match=r"^v: a value head_dim \(16\) other than q / k's \(8\)"):
        sliding_window_attention(q, q, torch.randn(1, 4, 2, 16))
    with pytest.raises(RuntimeError, match="init_process_group"):
        sliding_window_attention(q, q, q, window_size=(3, 0))


@dataclass(frozen=True)
class Case:
    ranks: int
    seqlen: int
    window: tuple[int, int]
    causal: bool = False
    layout: str = "contiguous"
    lengths: tuple[int, ...] | None = None  # uneven contiguous shards
    method: str = "auto"
    sinks: bool = False
    softcap: float = 0.0
    batch: int = 1
    heads: tuple[int, int] = (2, 1)
    interpret: bool = False  # the Triton kernels through the interpreter instead of the CPU reference path
    sequences: tuple[int, ...] | None = None  # packed (varlen): cu_seqlens of the whole stream (batch 1)


CASES = [
    Case(2, 16, (3, 0), sinks=True, softcap=3.0),  # window shorter than a shard
    Case(2, 16, (7, 2), lengths=(5, 11)),  # uneven shards, right > 0, window longer than shard 0
    Case(2, 16, (-1, 0), causal=True, lengths=(7, 9), sinks=True),  # ring
    Case(3, 16, (10, 5), lengths=(3, 9, 4), batch=2),  # halos spanning two ranks, both sides
    Case(3, 12, (-1, -1), heads=(4, 2)),  # full attention: ring over all
    Case(3, 18, (-1, 0), causal=True, layout="zigzag", sinks=True),
    Case(3, 12, (-1, 0), causal=True, method="halo"),  # the halo of an unbounded window: everything before
    Case(4, 12, (5, 0), sinks=True, batch=2),  # window longer than a shard (3)
    Case(4, 16, (4, 1), layout="zigzag"),
    Case(4, 16, (4, 0), method="ring"),  # the benchmark's baseline: a ring with a finite window
    Case(4, 12, (-1, 0), causal=True, lengths=(4, 0, 5, 3)),  # an empty shard relays the ring
    # Packed sequences: boundaries inside shards and on a shard's edge, an empty sequence; halo and ring.
    Case(3, 30, (4, 2), lengths=(7, 13, 10), sequences=(0, 5, 9, 9, 20, 21, 30), sinks=True),
    Case(2, 24, (-1, 0), causal=True, sequences=(0, 3, 15, 24), heads=(4, 2)),
    Case(4, 24, (9, 0), sequences=(0, 20, 24)),
    # The GPU path: kernel forwards with shifted windows, backward kernels on merged out/lse, sinks' gradient.
    Case(2, 24, (5, 3), sinks=True, softcap=3.0, heads=(4, 2), interpret=True),
]


def _run_case(case: Case, rank: int, group) -> list[str]:
    """One case on this rank; returns failures instead of raising, so that every rank keeps the same sends."""
    generator = torch.Generator().manual_seed(CASES.index(case))
    heads, kv_heads = case.heads
    q = torch.randn(case.batch, case.seqlen, heads, 8, generator=generator)
    k, v = (torch.randn(case.batch, case.seqlen, kv_heads, 8, generator=generator) for _ in range(2))
    sinks = torch.randn(heads, generator=generator) if case.sinks else None
    dout = torch.randn(q.shape, generator=generator)
    dlse = torch.randn(case.batch, heads, case.seqlen, generator=generator)
    kwargs = dict(causal=case.causal, window_size=case.window, softcap=case.softcap)

    # The oracle on the whole sequence: what flash_attn_func's CPU path computes, differentiated by autograd.
    full = [t.double().requires_grad_() for t in (q, k, v)] + ([sinks.double().requires_grad_()] if case.sinks else [])
    if case.sequences:
        cu_seqlens = torch.tensor(case.sequences, dtype=torch.int32)
        out, lse = reference.attention_varlen_ref(*(t[0] for t in full[:3]), cu_seqlens, cu_seqlens,
                                                  sinks=full[3] if case.sinks else None, **kwargs)
        out, lse = out[None], lse[None]
    else:
        out, lse = reference.attention_ref(*full[:3], sinks=full[3] if case.sinks else None, **kwargs)
    expected = [out, lse.transpose(1, 2)] + list(torch.autograd.grad(
        (out * dout).sum() + (lse * dlse).sum(), full))

    lengths = list(case.lengths or shard_lengths_for(case.seqlen, case.ranks, case.layout))
    shard = _shard_fn(case, lengths, rank)
    mine = [shard(t).clone().requires_grad_() for t in (q, k, v)]
    mine_sinks = sinks.clone().requires_grad_() if case.sinks else None
    with record_traffic() as forward:
        inputs = [t[0] for t in mine] if case.sequences else mine  # packed: [T_rank, H, D]
        out, lse = sliding_window_attention(*inputs, group, sinks=mine_sinks, return_softmax_lse=True,
                                            layout=case.layout, method=case.method, cu_seqlens=case.sequences,
                                            shard_lengths=lengths if case.lengths else None, **kwargs)
        if case.sequences:
            out, lse = out[None], lse[None]
    with record_traffic() as backward:
        loss = (out * shard(dout)).sum() + (lse.transpose(1, 2) * shard(dlse.transpose(1, 2))).sum()
        grads = torch.autograd.grad(loss, mine + ([mine_sinks] if case.sinks else []))
    failures = []
    names = ("out", "lse", "dq", "dk", "dv")
    for name, a, e in zip(names, [out, lse.transpose(1, 2)] + list(grads[:3]), expected):
        try:
            assert_close(f"{case} rank {rank} {name}", a, shard(e), 1e-5)
        except AssertionError as error:
            failures.append(str(error))
    if case.sinks:
        # dsinks sums over all rows: each rank holds its rows' share
        total = grads[3].clone()
        dist.all_reduce(total, group=group)
        try:
            assert_close(f"{case} rank {rank} dsinks", total, expected[5], 1e-5)
        except AssertionError as error:
            failures.append(str(error))
    stated = [bytes_sent(lengths, case.window, case.causal, batch=case.batch, num_kv_heads=kv_heads, head_dim=8,
                         element_size=4, layout=case.layout, method=case.method, backward=backward_pass,
                         cu_seqlens=case.sequences)[rank]
              for backward_pass in (False, True)]
    if [forward.bytes_sent, backward.bytes_sent] != stated:
        failures.append(f"{case} rank {rank}: sent {forward.bytes_sent} / {backward.bytes_sent} bytes forward / "
                        f"backward, bytes_sent says {stated}")
    gathered = all_gather_sequence(out.detach(), group, case.layout)
    if not torch.equal(gathered, gather_sequence([_shard_fn(case, lengths, r)(gathered) for r in range(case.ranks)],
                                                 case.layout)):
        failures.append(f"{case}: all_gather_sequence and gather_sequence disagree")
    return failures


def _shard_fn(case: Case, lengths: list[int], rank: int):
    if case.lengths is None:
        return lambda t: split_sequence(t, case.ranks, rank, case.layout)
    start = sum(lengths[:rank])
    return lambda t: t[:, start:start + lengths[rank]]


def _worker(rank: int, store_path: str, result_dir: str, interpreter: bool) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.set_default_device("cpu")  # gloo; the suite may run with SWATTN_TEST_DEVICE=cuda
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    groups = {n: dist.new_group(list(range(n))) for n in (2, 3, 4)}
    failures = []
    for case in CASES:
        # The CPU reference path (see the module docstring), or the kernels if triton was imported interpreting.
        os.environ["TRITON_INTERPRET"] = "1" if case.interpret and interpreter else "0"
        if rank < case.ranks and (interpreter or not case.interpret):
            try:
                failures += _run_case(case, rank, groups[case.ranks])
            except Exception as error:  # mp.spawn stops the other ranks and shows this
                raise RuntimeError(f"{case} rank {rank}") from error
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(failures))


def test_context_parallel_matches_single_process():
    """Forked, not spawned: a spawned process imports torch again (20 s for four on CI's two cores, 0.7 s forked).
    The workers use one thread each and make no collective before the fork, so forking is safe here."""
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_worker, args=(os.path.join(tmp, "store"), tmp, interpreter_enabled()),
                                     nprocs=WORLD, join=False, start_method="fork")
        deadline = time.monotonic() + 180
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the context-parallel workers did not finish within 180 s")
        failures = [line for rank in range(WORLD)
                    for line in open(os.path.join(tmp, f"rank{rank}.txt")).read().split("\n") if line]
    assert not failures, "\n".join(failures)


def test_kernel_backward_gives_a_parts_share_on_final_stats():
    """The contract the ring's backward relies on, through the kernels (the interpreter here): the backward of a
    part of the keys, run on the whole softmax's out and LSE, gives that part's share of the gradients."""
    from swattn.distributed.attention import Setup, _attend_backward
    from swattn.distributed.plan import band_part

    q, k, v = (torch.randn(1, 12, 2, 16) for _ in range(3))
    out, lse = reference.attention_ref(q, k, v, window_size=(-1, 0))
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    expected = reference.attention_backward_ref(dout, q, k, v, out, lse, softmax_scale=0.25, window_size=(-1, 0),
                                                dlse=dlse)
    setup = Setup(None, 0, None, 0.25, 0.0)
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for keys in ((0, 5), (5, 12)):
        part = band_part((0, 12), keys, -1, 0)
        rows, cols = slice(*part.rows), slice(*part.keys)
        part_dq, part_dk, part_dv, _ = _attend_backward(setup, part, dout[:, rows], q[:, rows], k[:, cols],
                                                        v[:, cols], out[:, rows], lse[:, :, rows],
                                                        dlse[:, :, rows], None)
        dq[:, rows] += part_dq
        dk[:, cols] += part_dk
        dv[:, cols] += part_dv
    for name, a, e in zip(("dq", "dk", "dv"), (dq, dk, dv), expected):
        assert_close(name, a, e, 1e-4)


def test_benchmark_asks_for_torchrun(monkeypatch):
    from swattn.bench.__main__ import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="torchrun"):
        main(["context-parallel", "--quick"])
