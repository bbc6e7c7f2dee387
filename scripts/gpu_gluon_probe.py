"""Tuning probe for the Gluon sm_90 forward (GPU only): the issue's four 16K prefill rows, each timed by CUDA-graph
replay through the Triton kernels, the Gluon kernel's block-size / stage variants and FlashAttention 3 (when
``.peer-kernels`` is unpacked), after a correctness check of every Gluon variant against the Triton path.

    python scripts/gpu_gluon_probe.py [--reps 30] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import swattn  # noqa: E402
from swattn.bench import peers  # noqa: E402
from swattn.kernels import gluon_fwd  # noqa: E402
from swattn.testing import relative_error  # noqa: E402

# (label, head_dim, heads, kv_heads, left, sinks, pack_gqa as the interface picks it)
ROWS = [
    ("W(127,0) D64 gpt-oss, sinks", 64, 64, 8, 127, True),
    ("W(127,0) D128", 128, 32, 8, 127, False),
    ("W(4095,0) D128", 128, 32, 8, 4095, False),
    ("causal D128", 128, 32, 8, -1, False),
]


def graph_time_us(fn, reps: int) -> float:
    """Median over ``reps`` replays of one call captured in a CUDA graph (events around each replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def with_mode(mode: str, fn, **overrides):
    def run():
        saved_mode, saved_forward = gluon_fwd.GLUON_MODE, gluon_fwd.forward
        gluon_fwd.GLUON_MODE = mode
        if overrides:
            gluon_fwd.forward = lambda *a, **k: saved_forward(*a, **k, **overrides)
        try:
            return fn()
        finally:
            gluon_fwd.GLUON_MODE, gluon_fwd.forward = saved_mode, saved_forward
    return run


def visible_flops(seqlen: int, heads: int, head_dim: int, left: int) -> float:
    pairs = sum(min(i, left) + 1 if left >= 0 else i + 1 for i in range(seqlen))
    return 4.0 * head_dim * heads * pairs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqlen", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = [f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, seqlen {args.seqlen}, bf16, "
             f"graph replay median of {args.reps}", "",
             "| row | provider | us | TFLOP/s | rel err vs Triton |", "|---|---|---|---|---|"]
    for label, head_dim, heads, kv_heads, left, with_sinks in ROWS:
        torch.manual_seed(0)
        q = torch.randn(1, args.seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, args.seqlen, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        sinks = torch.randn(heads, device="cuda") if with_sinks else None
        def call(pack_gqa=None):
            return lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0), sinks=sinks,
                                                  pack_gqa=pack_gqa)
        flops = visible_flops(args.seqlen, heads, head_dim, left)
        reference = with_mode("0", call())()
        variants = [("swattn Triton", with_mode("0", call()))]
        if 0 <= left <= 256:  # small windows: packing, block size, and 2 programs per SM at fewer registers
            for pack in (True, False):
                for block_n in (64, 128):
                    variants.append((f"gluon pack={pack} BN{block_n}",
                                     with_mode("1", call(pack), block_n=block_n)))
                if head_dim == 64:
                    variants.append((f"gluon pack={pack} BN64 regs 80/104",
                                     with_mode("1", call(pack), block_n=64, maxnreg=80, consumer_regs=104)))
        else:
            for block_n, stages in ((128, 2), (64, 2), (64, 3)):
                variants.append((f"gluon BN{block_n} S{stages}", with_mode("1", call(), block_n=block_n,
                                                                           num_stages=stages)))
        variants.append(("gluon shipped", with_mode("1", call())))
        variants.append(("gluon shipped, a program per tile", with_mode("1", call(), programs=1 << 30)))
        try:
            fa3 = peers.fa3(q, k, v, left, sinks=sinks)
            variants.append(("FA3" + (" (sinks)" if with_sinks else ""), fa3))
        except Exception as exc:  # noqa: BLE001 - a missing peer is a note
            lines.append(f"| {label} | FA3 | skipped: {str(exc)[:80]} | | |")
        for name, fn in variants:
            try:
                out = fn()
                torch.cuda.synchronize()
                error = relative_error(out.float(), reference.float())
                us = graph_time_us(fn, args.reps)
                lines.append(f"| {label} | {name} | {us:.1f} | {flops / us / 1e6:.0f} | {error:.1e} |")
            except Exception as exc:  # noqa: BLE001 - report and go on
                lines.append(f"| {label} | {name} | error: {type(exc).__name__}: {str(exc)[:120]} | | |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
