"""Context parallelism on several GPUs (NCCL): the halo against a ring over the same shards, and against one GPU.

    torchrun --nproc-per-node=4 -m swattn.bench context-parallel [--seqlens 131072,524288] [--lefts 4095,127,-1]
    torchrun --nproc-per-node=2 -m swattn.bench context-parallel --quick     # CPU, gloo, tiny shapes

One sequence (batch 1), D=128, H=32, Hk=8 (``--head-dims`` changes D), bf16, window ``(left, 0)`` or causal
(``left = -1``), split contiguously over the ranks (and zig-zag for causal). Providers: ``1 GPU`` (rank 0 alone,
``flash_attn_func`` on the whole sequence), ``halo`` (finite windows), ``ring`` (whole shards around the ring, the
same kernels and LSE merge) in two forms: ``ring all hops`` passes every shard around the whole ring (P - 1 hops,
what ring attention does whatever the window: the baseline of ``x ring``), ``ring`` is swattn's, which leaves out
the hops no rank needs (for a window shorter than a shard: one hop, of the whole shard); ``ring zigzag`` (causal,
load-balanced). Each is checked
first: its output and LSE on every rank against the one-GPU call on the same inputs (relative error), and the bytes
a forward sends against ``bytes_sent``. Times are the slowest rank's (all-reduced max), CUDA events around a loop
of calls after a warm-up: the forward, and the forward + ``autograd.grad`` of q, k, v. ``exchange`` is the
forward's messages alone (the same sends and receives, no attention), its share the fraction of the forward it
would take if nothing overlapped it. ``x 1 GPU`` = one GPU's forward + backward time over this one's (ideal: the
GPU count); ``x ring`` = the ring's over this one's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch
import torch.distributed as dist

from swattn import flash_attn_func
from swattn.bench.common import git_commit, markdown_table
from swattn.distributed import record_traffic, shard_lengths_for, sliding_window_attention, split_sequence
from swattn.distributed.attention import Setup, _pack, _post, _RingAttention, _wait
from swattn.distributed.plan import halo_plan, ring_plan, tokens_sent
from swattn.testing import relative_error, tolerance_for

SEQLENS = [131072, 524288]
LEFTS = [4095, 127, -1]
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
QUICK = dict(seqlens=[512], heads=4, kv_heads=2, head_dim=32)
TARGET_SECONDS = 0.3  # time each measurement loop runs, about


def _init() -> tuple[torch.device, bool]:
    if "WORLD_SIZE" not in os.environ:
        raise SystemExit("context-parallel: launch with torchrun, e.g. "
                         "torchrun --nproc-per-node=4 -m swattn.bench context-parallel")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device, cuda


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _elapsed_ms(fn, reps: int, device: torch.device) -> float:
    """This rank's time per call of ``fn``, over ``reps`` back-to-back calls."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps
    begin = datetime.datetime.now()
    for _ in range(reps):
        fn()
    return (datetime.datetime.now() - begin).total_seconds() * 1e3 / reps


def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def time_collective(fn, device: torch.device) -> float:
    """The slowest rank's ms per call: one warm-up call, one to size the loop, then the loop (all ranks alike)."""
    fn()
    dist.barrier()
    estimate = _max_over_ranks(_elapsed_ms(fn, 1, device), device)
    reps = max(2, min(50, int(TARGET_SECONDS * 1e3 / max(estimate, 1e-3))))
    dist.barrier()
    return _max_over_ranks(_elapsed_ms(fn, reps, device), device)


def time_alone(fn, device: torch.device) -> float:
    """Rank 0's ms per call of ``fn`` run by rank 0 only (the one-GPU baseline), shared with every rank."""
    value = 0.0
    if dist.get_rank() == 0:
        fn()
        estimate = _elapsed_ms(fn, 1, device)
        value = _elapsed_ms(fn, max(2, min(50, int(TARGET_SECONDS * 1e3 / max(estimate, 1e-3)))), device)
    dist.barrier()
    return _max_over_ranks(value, device)


def _exchange_alone(method: str, setup: Setup, k: torch.Tensor, v: torch.Tensor):
    """The forward's messages without the attention: halo in one round, ring in P - 1 dependent rounds."""
    plan, rank, group = setup.plan, setup.rank, setup.group
    shape = lambda n: (2, k.shape[0], n, k.shape[2], k.shape[3])  # noqa: E731
    if method == "halo":
        sends = [(dest, _pack(k, v, setup, ranges)) for dest, ranges in plan.sends(rank)]
        recvs = [(owner, k.new_empty(shape(sum(e - f for f, e in ranges)))) for owner, ranges in plan.receives[rank]]
        return lambda: _wait(_post(group, sends, recvs))
    num_ranks = len(plan.segments)
    block = torch.stack([k, v])
    buffers = {step: k.new_empty(shape(sum(s.end - s.start for s in plan.segments[plan.owner(rank, step)])))
               for step in range(1, num_ranks)}

    def rounds():
        for step in range(1, num_ranks):
            held = block if step == 1 else buffers[step - 1]
            sends = [((rank + 1) % num_ranks, held)] if plan.sends(rank, step) else []
            recvs = [((rank - 1) % num_ranks, buffers[step])] if plan.receives(rank, step) else []
            _wait(_post(group, sends, recvs))
    return rounds


def _every_hop_ring(setup: Setup):
    """The ring with every hop, which ``sliding_window_attention`` does not offer (its ring leaves out the hops no
    rank needs); same arguments as it (all but the tensors fixed by ``setup`` already)."""
    def attend(q, k, v, return_softmax_lse=False, **_):
        out, lse = _RingAttention.apply(q, k, v, None, setup)
        return (out, lse) if return_softmax_lse else out
    return attend


def run_shape(seqlen: int, left: int, heads: int, kv_heads: int, head_dim: int, device: torch.device,
              dtype: torch.dtype) -> list[list[str]]:
    rank, num_ranks = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator(device=device).manual_seed(seqlen + left)
    q = torch.randn(1, seqlen, heads, head_dim, device=device, dtype=dtype, generator=generator)
    k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device=device, dtype=dtype, generator=generator)
            for _ in range(2))
    window = (left, 0)
    causal = left < 0
    kwargs = dict(causal=causal, window_size=window)
    reference_out, reference_lse = flash_attn_func(q, k, v, return_softmax_lse=True, **kwargs)

    def one_gpu_step():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        out = flash_attn_func(*inputs, **kwargs)
        torch.autograd.grad(out, inputs, out)

    one_fwd = time_alone(lambda: flash_attn_func(q, k, v, **kwargs), device)
    one_step = time_alone(one_gpu_step, device)
    rows = [[f"S={seqlen}", f"({left}, 0)" if left >= 0 else "causal", "1 GPU", "ok", f"{one_fwd:.2f}",
             f"{one_step:.2f}", "", "", "", f"{seqlen / one_step / 1e3:.2f}", "1.00", ""]]
    # (name, method, layout, every hop)
    providers = [("halo", "halo", "contiguous", False)] if left >= 0 else []
    providers += [("ring", "ring", "contiguous", False), ("ring all hops", "ring", "contiguous", True)]
    providers += [("ring zigzag", "ring", "zigzag", False)] if causal else []
    results = {}
    for name, method, layout, every_hop in providers:
        lengths = shard_lengths_for(seqlen, num_ranks, layout)
        shard = [split_sequence(t, num_ranks, rank, layout).contiguous() for t in (q, k, v)]
        expected = [split_sequence(t, num_ranks, rank, layout, dim=d) for t, d in
                    ((reference_out, 1), (reference_lse, 2))]
        call = dict(kwargs, layout=layout, method=method, shard_lengths=lengths)
        plan = (halo_plan(layout, tuple(lengths), left, 0) if method == "halo"
                else ring_plan(layout, tuple(lengths), left, 0, every_hop))
        setup = Setup(dist.group.WORLD, rank, plan, head_dim ** -0.5, 0.0)
        attend = _every_hop_ring(setup) if every_hop else sliding_window_attention
        with record_traffic() as traffic:
            out, lse = attend(*shard, return_softmax_lse=True, **call)
        error = max(relative_error(out, expected[0]), relative_error(lse, expected[1]))
        per_token = 2 * kv_heads * head_dim * k.element_size()
        stated = [n * per_token for n in tokens_sent(layout, tuple(lengths), left, 0, method, every_hop=every_hop)]
        error = _max_over_ranks(error if traffic.bytes_sent == stated[rank] else float("inf"), device)
        tolerance = tolerance_for(dtype)
        if not error <= tolerance:
            rows.append([f"S={seqlen}", rows[0][1], name, f"**FAIL** {error:.1e} (or bytes), not timed"] + [""] * 8)
            continue

        def step():
            inputs = [t.detach().requires_grad_() for t in shard]
            out = attend(*inputs, **call)
            torch.autograd.grad(out, inputs, out)

        fwd = time_collective(lambda: attend(*shard, **call), device)
        full = time_collective(step, device)
        exchange = time_collective(_exchange_alone(method, setup, shard[1], shard[2]), device)
        results[name] = full
        rows.append([f"S={seqlen}", rows[0][1], name, f"ok {error:.1e}", f"{fwd:.2f}", f"{full:.2f}",
                     f"{exchange:.3f}", f"{100 * exchange / fwd:.1f}%", f"{max(stated) / 2**20:.1f}",
                     f"{seqlen / full / 1e3:.2f}", f"{one_step / full:.2f}", ""])
    ring = results.get("ring all hops")
    for row in rows[1:]:
        if ring and row[3].startswith("ok") and row[2] != "ring all hops":
            row[11] = f"{ring / float(row[5]):.2f}"
    return rows


def main(args: argparse.Namespace) -> int:
    device, cuda = _init()
    rank, num_ranks = dist.get_rank(), dist.get_world_size()
    quick = args.quick or not cuda
    seqlens = args.seqlens or (QUICK["seqlens"] if quick else SEQLENS)
    lefts = args.lefts or LEFTS
    heads, kv_heads = (QUICK["heads"], QUICK["kv_heads"]) if quick else (HEADS, KV_HEADS)
    head_dims = args.head_dims or [QUICK["head_dim"] if quick else HEAD_DIM]
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for head_dim in head_dims:
        for seqlen in seqlens:
            for left in lefts:
                rows += run_shape(seqlen, left, heads, kv_heads, head_dim, device, dtype)
                if rank == 0:
                    print(f"done S={seqlen} left={left} D={head_dim}", flush=True)
    status = 1 if any("FAIL" in row[3] for row in rows) else 0
    if rank == 0:
        gpu = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
        backend = "NCCL" if cuda else "gloo"
        header = (f"# Context parallelism: {num_ranks} x {gpu}, {backend}, commit {git_commit()}, "
                  f"{datetime.date.today()}, torch {torch.__version__}\n\nB=1, H={heads}, Hk={kv_heads}, "
                  f"D={','.join(map(str, head_dims))}, {str(dtype)[6:]}; ms per call, slowest rank.\n")
        table = markdown_table(["seqlen", "window", "provider", "check", "fwd ms", "fwd+bwd ms", "exchange ms",
                                "exchange / fwd", "MiB sent / rank", "Mtok/s fwd+bwd", "x 1 GPU", "x ring"], rows)
        text = header + "\n" + table + "\n"
        print(text, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
    dist.destroy_process_group()
    return status
