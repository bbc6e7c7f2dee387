"""Tuning probe for the Gluon sm_90 forward (GPU only): the issue's 16K prefill rows (and the D64 large-window
ones), each timed by CUDA-graph replay through the Triton kernels, the Gluon kernel's packing / block-size / stage /
ping-pong variants and FlashAttention 3 (when ``.peer-kernels`` is unpacked), after a correctness check of every
variant against the Triton path. Every variant of a row is replayed in interleaved rounds (median of the rounds'
medians), so clock drift does not favour whichever ran first.

    python scripts/gpu_gluon_probe.py [--rounds 5] [--reps 10] [--rows D128,causal] [--variants shipped,FA3]
        [--paged 16] [--out FILE.md]
    python scripts/gpu_gluon_probe.py --rows causal_D128 --variants shipped,diag,FA3  # HALF_DIAGONAL on and off
    python scripts/gpu_gluon_probe.py --rows causal_D64 --variants shipped,3WG,S3,half_diag,packed_2WG,FA3  # gpt-oss

(``--rows`` / ``--variants``: comma-separated substrings, ``_`` for a space; a label's own comma cannot be given.)
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

# (label, head_dim, heads, kv_heads, left, sinks)
ROWS = [
    ("W(127,0) D64 gpt-oss, sinks", 64, 64, 8, 127, True),
    ("W(127,0) D128", 128, 32, 8, 127, False),
    ("W(4095,0) D128", 128, 32, 8, 4095, False),
    ("causal D128", 128, 32, 8, -1, False),
    ("W(4095,0) D64 gpt-oss", 64, 64, 8, 4095, False),
    ("causal D64 gpt-oss", 64, 64, 8, -1, False),
    ("causal D64 gpt-oss, sinks", 64, 64, 8, -1, True),  # gpt-oss has sinks on every layer
    ("W(4095,0) D256 Gemma 2", 256, 16, 8, 4095, False),
    ("W(1023,0) D256 Gemma 3", 256, 16, 8, 1023, False),
]


def capture(fn):
    """One call captured in a CUDA graph (after two warm-up calls on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


FLUSH = None  # --flush-l2: a 256 MB buffer zeroed before each replay (as triton.testing.do_bench and the bench do)


def replay_us(graph, reps: int) -> float:
    """Median over ``reps`` replays (events around each)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if FLUSH is not None:
            FLUSH.zero_()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def with_mode(mode: str, fn, settings: dict | None = None, **overrides):
    """``fn`` under dispatch ``mode``, ``gluon_fwd.forward``'s tuning ``overrides`` and gluon_fwd's module
    ``settings`` (read when a call is planned, i.e. when the graph is captured)."""
    def run():
        saved_mode, saved_forward = gluon_fwd.GLUON_MODE, gluon_fwd.forward
        saved_settings = {name: getattr(gluon_fwd, name) for name in settings or {}}
        gluon_fwd.GLUON_MODE = mode
        for name, value in (settings or {}).items():
            setattr(gluon_fwd, name, value)
        if overrides:
            gluon_fwd.forward = lambda *a, **k: saved_forward(*a, **k, **overrides)
        try:
            return fn()
        finally:
            gluon_fwd.GLUON_MODE, gluon_fwd.forward = saved_mode, saved_forward
            for name, value in saved_settings.items():
                setattr(gluon_fwd, name, value)
    return run


def matmul_rate(n: int = 8192) -> float:
    """The GPU's measured bf16 matmul rate (n^3, graph-replayed, TFLOP/s): the denominator of "% of matmul"."""
    left, right = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    graph = capture(lambda: left @ right)
    return 2 * n ** 3 / statistics.median(replay_us(graph, 10) for _ in range(3)) / 1e6


def visible_flops(seqlen: int, heads: int, head_dim: int, left: int) -> float:
    pairs = sum(min(i, left) + 1 if left >= 0 else i + 1 for i in range(seqlen))
    return 4.0 * head_dim * heads * pairs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqlen", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=10, help="replays per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over every variant; the median is reported")
    parser.add_argument("--rows", default="",
                        help="comma-separated substrings of the row labels to run (_ for a space)")
    parser.add_argument("--pingpong", action="store_true", help="also the ping-pong schedule (two consumers)")
    parser.add_argument("--paged", type=int, default=0,
                        help="page size: the rows as chunked prefill over a paged KV cache (flash_attn_with_kvcache; "
                             "Triton, the shipped Gluon launch and FA3 only)")
    parser.add_argument("--varlen", type=int, default=0,
                        help="sequences: the tokens as that many equal sequences through flash_attn_varlen_func "
                             "(as an engine batches prefill); FA3 gets the same cu_seqlens")
    parser.add_argument("--variants", default="",
                        help="comma-separated substrings of the variant names to run (Triton, shipped, FA3, ...)")
    parser.add_argument("--peers", default="", help="also these peers on dense rows: fa4, flex (comma-separated; "
                        "FA4 needs its site packages on PYTHONPATH, .peer-kernels/README.txt)")
    parser.add_argument("--flush-l2", action="store_true",
                        help="zero a 256 MB buffer before each replay (L2 cleared, as the benchmark times)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    global FLUSH
    if args.flush_l2:
        FLUSH = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    lines = [f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, seqlen {args.seqlen}, bf16, "
             f"{f'paged KV cache (pages of {args.paged}), ' if args.paged else ''}"
             f"{f'{args.varlen} varlen sequences, ' if args.varlen else ''}"
             f"graph replay{' (L2 cleared before each)' if args.flush_l2 else ''}, median of {args.rounds} "
             f"interleaved rounds of {args.reps}", "",
             "| row | provider | us | TFLOP/s | % of matmul | rel err vs Triton | / FA3 per round: median [min-max] |",
             "|---|---|---|---|---|---|---|"]
    matmul_tflops = matmul_rate()
    lines.insert(1, f"bf16 matmul (8192^3, torch): {matmul_tflops:.0f} TFLOP/s")
    for label, head_dim, heads, kv_heads, left, with_sinks in ROWS:
        if args.rows and not any(word.replace("_", " ") in label for word in args.rows.split(",")):
            continue
        torch.manual_seed(0)
        q = torch.randn(1, args.seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, args.seqlen, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        sinks = torch.randn(heads, device="cuda") if with_sinks else None
        def call(pack_gqa=None):
            return lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0), sinks=sinks,
                                                  pack_gqa=pack_gqa)
        if args.paged:  # the sequence's pages scattered over a pool in random order
            pages = args.seqlen // args.paged
            order = torch.randperm(pages, device="cuda")
            k_pool, v_pool = (torch.empty(pages, args.paged, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
                              for _ in range(2))
            k_pool[order], v_pool[order] = k[0].view(pages, args.paged, -1, head_dim), v[0].view_as(k_pool)
            page_table = order.to(torch.int32).view(1, pages)
            seqlens = torch.full((1,), args.seqlen, device="cuda", dtype=torch.int32)

            def call(pack_gqa=None):  # noqa: F811 - the paged variant of the same call
                return lambda: swattn.flash_attn_with_kvcache(q, k_pool, v_pool, cache_seqlens=seqlens,
                                                              page_table=page_table, causal=True,
                                                              window_size=(left, 0), sinks=sinks, pack_gqa=pack_gqa,
                                                              num_splits=1)
        if args.varlen:  # equal sequences packed as varlen tokens
            length = args.seqlen // args.varlen
            cu_seqlens = torch.arange(0, args.seqlen + 1, length, device="cuda", dtype=torch.int32)

            def call(pack_gqa=None):  # noqa: F811 - the varlen variant of the same call
                return lambda: swattn.flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens, cu_seqlens, length, length,
                                                             causal=True, window_size=(left, 0), sinks=sinks,
                                                             pack_gqa=pack_gqa).unsqueeze(0)
        flops = visible_flops(args.seqlen // max(args.varlen, 1), heads, head_dim, left) * max(args.varlen, 1)
        reference = with_mode("0", call())()
        variants = [("swattn Triton", with_mode("0", call()))]
        gluon = [("gluon shipped", with_mode("1", call()))]
        # The running max kept until it grows by more than the threshold (log2 units; 0: rescale every block),
        # for every tile shape (the shipped choice: ``rescale_threshold_for``).
        for threshold in (0.0, 8.0):
            gluon.append((f"gluon lazy rescale {threshold:g}", with_mode(
                "1", call(), settings=dict(rescale_threshold_for=lambda consumers, t=threshold: t))))
        small = 0 <= left <= 256
        if head_dim == 256:  # one Q slot, 64-key blocks: no room for a second program or more stages
            gluon.append(("gluon TMA store", with_mode("1", call(), tma_store=True)))
            gluon.append(("gluon packed", with_mode("1", call(True))))
        else:
            if small:  # small windows: packed 64-key blocks, one to three consumer warpgroups
                gluon.append(("gluon pack BN64 2 WG", with_mode("1", call(True), block_n=64, consumers=2,
                                                                tma_store=False)))
                gluon.append(("gluon pack BN64 3 WG S3", with_mode("1", call(True), block_n=64, consumers=3,
                                                                     num_stages=3)))
            # One consumer warpgroup (64-row tiles), two programs per SM: one's epilogue and waits overlap the
            # other's products. 64-key blocks at head_dim 128 (two programs' K/V stages must fit in shared memory).
            one_wg = dict(consumers=1, per_sm=2, block_n=64 if (small or head_dim == 128) else 128)
            gluon.append(("gluon 1 WG x 2/SM", with_mode("1", call(True if small else None), **one_wg,
                                                         tma_store=False)))
            gluon.append(("gluon 1 WG x 2/SM, TMA store", with_mode("1", call(True if small else None), **one_wg,
                                                                    tma_store=True)))
            if small and head_dim == 64:  # two 128-key blocks: a shorter chain of dependent steps than three of 64
                gluon.append(("gluon 1 WG x 2/SM BN128, TMA store", with_mode(
                    "1", call(True), consumers=1, per_sm=2, block_n=128, tma_store=True)))
                # More independent tiles per SM (3 or 4 one-warpgroup programs: 136 / 104 registers per consumer
                # thread): 32-key blocks cover an 8-position tile's 135 keys in 5 blocks (160 scores per row instead
                # of 192) and keep 4 programs' stages in shared memory; more K/V stages for the 2-program kernels.
                for per_sm, block_n in ((3, 64), (3, 32), (4, 32), (4, 16)):
                    gluon.append((f"gluon 1 WG x {per_sm}/SM BN{block_n}, TMA store", with_mode(
                        "1", call(True), consumers=1, per_sm=per_sm, block_n=block_n, tma_store=True, wg_rows=64)))
                gluon.append(("gluon 1 WG x 4/SM BN32 S3, TMA store", with_mode(
                    "1", call(True), consumers=1, per_sm=4, block_n=32, num_stages=3, tma_store=True, wg_rows=64)))
                # 128 rows per warpgroup (two m64 products per block), two programs per SM: the per-tile code and
                # the per-block waits and index arithmetic paid once per 128 rows.
                for block_n, stages in ((32, 2), (32, 3), (64, 2)):
                    gluon.append((f"gluon 128-row WG x 2/SM BN{block_n} S{stages}, TMA store", with_mode(
                        "1", call(True), consumers=1, per_sm=2, block_n=block_n, num_stages=stages, tma_store=True,
                        wg_rows=128)))
            if small and head_dim == 128:  # 5 blocks of 32 keys (160 scores per row) instead of 3 of 64 (192)
                gluon.append(("gluon 1 WG x 2/SM BN32, TMA store", with_mode(
                    "1", call(True), consumers=1, per_sm=2, block_n=32, tma_store=True)))
                gluon.append(("gluon 1 WG x 2/SM S4, TMA store", with_mode(
                    "1", call(True), consumers=1, per_sm=2, block_n=64, num_stages=4, tma_store=True)))
                gluon.append(("gluon pack BN64 2 WG S4", with_mode("1", call(True), block_n=64, consumers=2,
                                                                    num_stages=4)))
            gluon.append(("gluon TMA store", with_mode("1", call(), tma_store=True)))
            if head_dim == 64 and not small:
                gluon.append(("gluon 1 WG x 2/SM BN64", with_mode("1", call(), consumers=1, per_sm=2, block_n=64)))
                gluon.append(("gluon S3", with_mode("1", call(), num_stages=3)))  # 3 K/V stages fit at D64
                # FlashAttention 3's head_dim 64 tile: 192 rows (three consumer warpgroups, 160 registers per
                # consumer thread) over 128-key blocks; with each warpgroup's last block halved where its rows end
                # in the block's first half, or skipped where they end before it (``HALF_DIAGONAL``, which three
                # warpgroups take too). Session 15, helper s15-d64.
                diag = dict(SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS | gluon_fwd.HALF_DIAGONAL)
                three = dict(consumers=3, block_n=128)
                gluon.append(("gluon 3WG BN128", with_mode("1", call(), **three)))
                gluon.append(("gluon 3WG BN128 half diagonal", with_mode("1", call(), settings=diag, **three)))
            if head_dim == 64 and left < 0:  # gpt-oss's causal layers: 3 K/V stages (172 KiB of shared memory),
                # 64-key blocks (run 4's three-warpgroup shape), HALF_DIAGONAL with 3 stages, PackGQA
                gluon.append(("gluon 3WG BN128 S3", with_mode("1", call(), num_stages=3, **three)))
                gluon.append(("gluon 3WG BN64", with_mode("1", call(), consumers=3, block_n=64)))
                gluon.append(("gluon S3 half diagonal", with_mode("1", call(), num_stages=3, settings=diag)))
                # PackGQA: a KV head's 8 query heads in each 128-row tile (16 positions x 8 heads).
                gluon.append(("gluon packed 2WG", with_mode("1", call(True))))
        if args.pingpong:
            gluon.append(("gluon ping-pong", with_mode("1", call(), pingpong=True)))
        # The accumulator's rescale after the block's P V completes (before FlashAttention 3's order, the shipped
        # ``RESCALE_EARLY``), alone and with ping-pong (FA3's warp-scheduler barriers at head_dim 128).
        # K and V stages released by one arrival per consumer thread (no warpgroup barrier in front of each
        # release: ``THREAD_RELEASE``), alone and with ping-pong.
        thread_release = dict(SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS | gluon_fwd.THREAD_RELEASE)
        gluon.append(("gluon thread release", with_mode("1", call(), settings=thread_release)))
        if args.pingpong:
            gluon.append(("gluon thread release ping-pong", with_mode("1", call(), settings=thread_release,
                                                                      pingpong=True)))
        # With the per-thread releases: the next tile's first scores product under this tile's epilogue
        # (``OVERLAP_TILES``, two-warpgroup tiles), the P V wait after the exponentials (``PV_WAIT_LATE``), the
        # ring's stage and phase carried from block to block (``CARRIED_RING``), each and all.
        every = gluon_fwd.OVERLAP_TILES | gluon_fwd.PV_WAIT_LATE | gluon_fwd.CARRIED_RING
        for label, bits in (("overlap tiles", gluon_fwd.OVERLAP_TILES), ("late P V wait", gluon_fwd.PV_WAIT_LATE),
                            ("carried ring", gluon_fwd.CARRIED_RING), ("all", every)):
            trims = dict(SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS | gluon_fwd.THREAD_RELEASE | bits)
            gluon.append((f"gluon thread release + {label}", with_mode("1", call(), settings=trims)))
        if args.pingpong:  # with FlashAttention 3's warp-scheduler barriers too: its structure
            trims = dict(SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS | gluon_fwd.THREAD_RELEASE | gluon_fwd.PV_WAIT_LATE)
            gluon.append(("gluon thread release + late P V wait + ping-pong", with_mode(
                "1", call(), settings=trims, pingpong=True)))
        late = dict(SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS & ~gluon_fwd.RESCALE_EARLY)
        gluon.append(("gluon late rescale", with_mode("1", call(), settings=late)))
        if args.pingpong:
            gluon.append(("gluon late rescale ping-pong", with_mode("1", call(), settings=late, pingpong=True)))
        # The shipped call with fewer of _softmax_block's trims (bits: 1 one-sided edge masks, 2 per-thread row
        # sums, 4 the row max skipped by warp vote).
        # (head_dim 256 keeps none by default: 38 is the two-warpgroup set, row sums, vote and early rescale.)
        for trims in ((0, 2, 3) if small else (0, 2, 38) if head_dim == 256 else (0, 2)):
            gluon.append((f"gluon trims {trims}", with_mode(
                "1", call(), settings=dict(softmax_trims_for=lambda consumers, head_dim, t=trims: t))))
        # The first warpgroup's last block over its first 64 keys where its rows see no later key
        # (``HALF_DIAGONAL``; two-warpgroup tiles of 128-key blocks: causal tiles on the diagonal, W(4095,0)'s).
        half = ("gluon half diagonal", with_mode("1", call(), settings=dict(
            SOFTMAX_TRIMS=gluon_fwd.SOFTMAX_TRIMS | gluon_fwd.HALF_DIAGONAL)))
        gluon.append(half)
        if args.paged or args.varlen:
            gluon = gluon[:2] + [half]
        variants += gluon
        try:
            if args.paged:
                fa3 = peers.fa3(q, k_pool, v_pool, left, sinks=sinks, page_table=page_table, seqused_k=seqlens)
            elif args.varlen:  # FA3's entry is varlen: [B, L, H, D] becomes the same cu_seqlens
                shape = (args.varlen, args.seqlen // args.varlen)
                run = peers.fa3(q.view(*shape, heads, head_dim), k.view(*shape, kv_heads, head_dim),
                                v.view(*shape, kv_heads, head_dim), left, sinks=sinks)
                fa3 = lambda run=run: run().reshape(q.shape)  # noqa: E731
            else:
                fa3 = peers.fa3(q, k, v, left, sinks=sinks)
            variants.append(("FA3" + (" (sinks)" if with_sinks else ""), fa3))
        except Exception as exc:  # noqa: BLE001 - a missing peer is a note
            lines.append(f"| {label} | FA3 | skipped: {str(exc)[:80]} | | | |")
        if args.peers and not (args.paged or args.varlen):  # FA4 (sinks as given) and Flex (no sinks) on dense rows
            if "fa4" in args.peers:
                try:
                    variants.append(("FA4" + (" (sinks)" if with_sinks else ""), peers.fa4(q, k, v, left, sinks=sinks)))
                except Exception as exc:  # noqa: BLE001 - a missing peer is a note
                    lines.append(f"| {label} | FA4 | skipped: {str(exc)[:80]} | | | |")
            if "flex" in args.peers:
                try:
                    run, _note = peers.flex_prefill(q, k, v, left)
                    variants.append(("Flex (no sinks)" if with_sinks else "Flex", run))
                except Exception as exc:  # noqa: BLE001
                    lines.append(f"| {label} | Flex | skipped: {str(exc)[:80]} | | | |")
        if args.variants:
            variants = [(name, fn) for name, fn in variants
                        if any(word.replace("_", " ") in name for word in args.variants.split(","))]
        graphs, errors = {}, {}
        for name, fn in variants:
            try:
                out = fn()
                torch.cuda.synchronize()
                errors[name] = relative_error(out.float(), reference.float())
                graphs[name] = capture(fn)
            except Exception as exc:  # noqa: BLE001 - report and go on
                lines.append(f"| {label} | {name} | error: {type(exc).__name__}: {str(exc)[:160]} | | | |")
                print(lines[-1], flush=True)
        # Rounds over all variants, so clock and power drift spreads over every variant alike.
        times = {name: [] for name in graphs}
        for _ in range(args.rounds):
            for name, graph in graphs.items():
                times[name].append(replay_us(graph, args.reps))
        # Each round's time over FA3's time in that round (the two replayed back to back): the spread of the ratio
        # says whether a difference of a percent or two is the kernels' or the run's.
        fa3_name = next((name for name in graphs if name.startswith("FA3")), None)
        for name in graphs:
            us = statistics.median(times[name])
            tflops = flops / us / 1e6
            ratio = ""
            if fa3_name is not None and name != fa3_name:
                ratios = sorted(t / f for t, f in zip(times[name], times[fa3_name]))
                ratio = f"{statistics.median(ratios):.3f} [{ratios[0]:.3f}-{ratios[-1]:.3f}]"
            lines.append(f"| {label} | {name} | {us:.1f} | {tflops:.0f} | {100 * tflops / matmul_tflops:.0f}% | "
                         f"{errors[name]:.1e} | {ratio} |")
            print(lines[-1], flush=True)
        del graphs
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
