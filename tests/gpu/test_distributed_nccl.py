"""Context parallelism on several GPUs with NCCL, bf16 at real sizes: every rank's out, LSE and gradients (q, k, v,
sinks) against one GPU's ``flash_attn_func`` on the whole sequence (fp32 on the same bf16-rounded inputs).

Run under torchrun, one process per GPU (skipped otherwise)::

    torchrun --nproc-per-node=4 -m pytest -q tests/gpu/test_distributed_nccl.py

Every rank runs every case and the verdict is all-reduced, so the ranks pass or fail together and never wait on a
rank that stopped.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from swattn import flash_attn_func, flash_attn_varlen_func
from swattn.distributed import bytes_sent, record_traffic, shard_lengths_for, sliding_window_attention, split_sequence
from swattn.testing import relative_error, tolerance_for

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2,
    reason="run under torchrun on 2+ GPUs: torchrun --nproc-per-node=N -m pytest tests/gpu/test_distributed_nccl.py")

BF16 = torch.bfloat16
OUT_TOL, GRAD_TOL, LSE_TOL = tolerance_for(BF16), 3e-2, 1e-3

CASES = [
    # seqlen, heads, kv_heads, head_dim, window, causal, layout, method, sinks
    (16384, 16, 4, 128, (4095, 0), False, "contiguous", "auto", False),  # Mistral-like window
    (16384, 16, 4, 128, (4095, 0), False, "contiguous", "ring", False),  # the benchmark's ring baseline
    (16384, 64, 8, 64, (127, 0), False, "contiguous", "auto", True),  # gpt-oss sliding layer
    (16384, 64, 8, 64, (-1, 0), True, "contiguous", "auto", True),  # gpt-oss full layer: ring
    (16384, 16, 4, 128, (-1, 0), True, "zigzag", "auto", False),
    (12345, 16, 4, 128, (2047, 300), False, "contiguous", "auto", False),  # right > 0, uneven shards
    (6000, 16, 4, 128, (4095, 0), False, "zigzag", "auto", False),  # window longer than the shards
]
PACKED = [  # packed sequences (varlen): cu_seqlens of the whole stream, boundaries inside and across shards
    (16384, 16, 4, 128, (4095, 0), False, "contiguous", "auto", True, (0, 3000, 3001, 9000, 16384)),
    (16384, 16, 4, 128, (-1, 0), True, "zigzag", "auto", False, (0, 5000, 5000, 12000, 16384)),
]


@pytest.fixture(scope="module")
def group():
    if not dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    yield dist.group.WORLD


def _case_id(c) -> str:
    return f"S{c[0]}-H{c[1]}/{c[2]}-D{c[3]}-W{c[4]}-{c[6]}-{c[7]}" + ("-packed" if len(c) > 9 else "")


@pytest.mark.parametrize("case", CASES + PACKED, ids=_case_id)
def test_matches_one_gpu(group, case):
    seqlen, heads, kv_heads, head_dim, window, causal, layout, method, with_sinks = case[:9]
    sequences = case[9] if len(case) > 9 else None
    rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
    generator = torch.Generator(device="cuda").manual_seed(seqlen)
    q = torch.randn(1, seqlen, heads, head_dim, device="cuda", generator=generator).to(BF16)
    k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device="cuda", generator=generator).to(BF16) for _ in range(2))
    sinks = torch.randn(heads, device="cuda", generator=generator) if with_sinks else None
    dout = torch.randn(q.shape, device="cuda", generator=generator).to(BF16)
    dlse = torch.randn(1, heads, seqlen, device="cuda", generator=generator)
    kwargs = dict(causal=causal, window_size=window)

    full = [t.float().requires_grad_() for t in (q, k, v)] + ([sinks.clone().requires_grad_()] if with_sinks else [])
    if sequences:
        cu_seqlens = torch.tensor(sequences, dtype=torch.int32, device="cuda")
        longest = max(b - a for a, b in zip(sequences[:-1], sequences[1:]))
        out, lse = flash_attn_varlen_func(*(t[0] for t in full[:3]), cu_seqlens, cu_seqlens, longest, longest,
                                          sinks=full[3] if with_sinks else None, return_softmax_lse=True, **kwargs)
        out, lse = out[None], lse[None]
    else:
        out, lse = flash_attn_func(*full[:3], sinks=full[3] if with_sinks else None, return_softmax_lse=True,
                                   **kwargs)
    expected = [out, lse] + list(torch.autograd.grad((out * dout.float()).sum() + (lse * dlse).sum(), full))

    lengths = shard_lengths_for(seqlen, num_ranks, layout)
    shard = lambda t, dim=1: split_sequence(t, num_ranks, rank, layout, dim=dim)  # noqa: E731
    mine = [shard(t).contiguous().requires_grad_() for t in (q, k, v)]
    mine_sinks = sinks.clone().requires_grad_() if with_sinks else None
    with record_traffic() as traffic:
        inputs = [t[0] for t in mine] if sequences else mine  # packed: [T_rank, H, D]
        out, lse = sliding_window_attention(*inputs, group, sinks=mine_sinks, return_softmax_lse=True, layout=layout,
                                            method=method, shard_lengths=lengths, cu_seqlens=sequences, **kwargs)
        if sequences:
            out, lse = out[None], lse[None]
    grads = torch.autograd.grad((out * shard(dout)).sum() + (lse * shard(dlse, 2)).sum(),
                                mine + ([mine_sinks] if with_sinks else []))
    errors = {"out": (relative_error(out, shard(expected[0])), OUT_TOL),
              "lse": (relative_error(lse, shard(expected[1], 2)), LSE_TOL)}
    for name, grad, want in zip(("dq", "dk", "dv"), grads, expected[2:5]):
        errors[name] = (relative_error(grad, shard(want)), GRAD_TOL)
    if with_sinks:
        dsinks = grads[3].clone()
        dist.all_reduce(dsinks, group=group)
        errors["dsinks"] = (relative_error(dsinks, expected[5]), GRAD_TOL)
    stated = bytes_sent(lengths, window, causal, batch=1, num_kv_heads=kv_heads, head_dim=head_dim, element_size=2,
                        layout=layout, method=method, cu_seqlens=sequences)[rank]
    errors["bytes"] = (0.0 if traffic.bytes_sent == stated else float("inf"), 0.0)
    worst = torch.tensor([e / t if t else e for e, t in errors.values()], device="cuda")
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    report = ", ".join(f"{name} {error:.2e}" for name, (error, _) in errors.items())
    assert (worst <= 1).all(), f"rank {rank}: {report}; worst over ranks / tolerance: {worst.tolist()}"
