"""The illegal memory access of scripts/gpu_fp8_decode.py (H200 s5-call4 and s6-call4), made on purpose, and the
fix (GPU only).

The suspect: ``gpu_probe.graph_calls_us`` warmed its calls up on a fresh ``torch.cuda.Stream()`` right after the
section's inputs were made on the current stream, without waiting for it. torch's pool streams are non-blocking,
so the warm-up kernels could run while the current stream was still filling those inputs (2 x 4 GiB of caches at
B=16 131040 take milliseconds): page tables and lengths read as whatever their memory held before, page indices far
outside the pool, an illegal address; never under ``CUDA_LAUNCH_BLOCKING=1``, which serializes the two streams'
work. Fixed either way (``gpu_probe.warm_up_on_side_stream`` waits; tests/test_side_streams.py checks every side
stream in the repository). Whether it is what faulted is open: this script's first version (H200 s7-call3, 08:50
UTC) did not race, its side stream (the process's first) giving the in-order call's bits: something ordered its
kernel after the inputs (creating torch's stream pool, or the stream's first ``cudaMalloc``). The modes below tell
those apart.

Modes (the race modes each run in a process of their own: a fault leaves the CUDA context unusable). Each makes
the current stream busy (``torch.cuda._sleep``) while the inputs of a B=16 131040 full decode are queued on it over
memory that held large integers (freed, cached blocks), then runs the call at once on a side stream:
  racy-fresh  a stream from torch's pool that has run nothing: its first call allocates through ``cudaMalloc``,
            which the CUDA documentation lists among the operations that keep two streams' commands from
            overlapping (graph_calls_us's case: a new pool stream per call, 32 in the pool);
  racy-warm   the stream that ran the compile calls before: its freed blocks are cached, nothing is allocated
            from the driver, so nothing orders its kernel after the inputs;
  waited    the warm stream after ``side.wait_stream(current)``: no fault, and the in-order call's bits;
  sequence  the probe's failing order, each call in order on one stream (for compute-sanitizer memcheck, with
            ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``): full decode bf16 and fp8-kv at B=4 131072, then at B=16 131040,
            each also warmed up on a waiting side stream; fp8-kv checked against bf16, the side stream's output
            against the in-order call's;
  all       the race modes, each in a child process.
Run: ``python scripts/gpu_side_stream_race.py MODE`` (``--help``: this text).
"""

from __future__ import annotations

import subprocess
import sys

POISON = 0x7FFFFF00  # a page index / length far outside anything real
SLEEP_CYCLES = 200_000_000  # ~0.1 s of the current stream spinning before the inputs are written
CHILD_TIMEOUT_S = 13
RACE_MODES = ("racy-fresh", "racy-warm", "waited")


def _modules():
    import torch
    from gpu_fp8_decode import fp8_sets  # scripts/ is on sys.path when this file runs
    from gpu_probe import full_decode_inputs, warm_up_on_side_stream

    import swattn
    return torch, swattn, full_decode_inputs, fp8_sets, warm_up_on_side_stream


def race(mode: str) -> int:
    """One of RACE_MODES (see the module docstring); prints what the side stream's call gave."""
    torch, swattn, full_decode_inputs, _, _ = _modules()
    batch, context = 16, 131040
    # Compile and plan first (a first call spends seconds on the host, by which time the inputs are written), on a
    # side stream, so torch's stream pool exists before the race (creating it could synchronize).
    inputs = full_decode_inputs(batch, context)
    first = torch.cuda.Stream()
    first.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(first):
        for _ in range(3):
            swattn.flash_attn_with_kvcache(**inputs, causal=True)
    del inputs
    torch.cuda.synchronize()
    # Freed blocks of the caching allocator's small pool (<= 1 MiB: the page table, the lengths, q) holding POISON.
    poison = [torch.full((1 << 17,), POISON, device="cuda", dtype=torch.int32) for _ in range(64)]
    torch.cuda.synchronize()
    del poison
    # racy-fresh: a stream from the pool that has run nothing (its first call allocates through cudaMalloc);
    # racy-warm and waited: the stream that ran the calls above (its freed blocks are cached: no cudaMalloc).
    side = torch.cuda.Stream() if mode == "racy-fresh" else first
    torch.cuda._sleep(SLEEP_CYCLES)  # the current stream stays busy: the inputs below are written after it
    inputs = full_decode_inputs(batch, context)
    if mode == "waited":
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = swattn.flash_attn_with_kvcache(**inputs, causal=True)
    try:
        torch.cuda.synchronize()
        ordered = swattn.flash_attn_with_kvcache(**inputs, causal=True)
        torch.cuda.synchronize()
    except RuntimeError as exc:  # torch.AcceleratorError (an illegal memory access) is a RuntimeError
        print(f"{mode}: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
        return 1
    same = torch.equal(out, ordered)
    print(f"{mode}: no fault; the side stream's output {'equals' if same else 'DIFFERS from'} the in-order call's"
          f"{'' if same else f' (max abs diff {(out.float() - ordered.float()).abs().max().item():.3g})'}",
          flush=True)
    return 0 if same else 1


def sequence() -> int:
    torch, swattn, full_decode_inputs, fp8_sets, warm_up_on_side_stream = _modules()
    failures = 0
    for batch, context in ((4, 131072), (16, 131040)):
        inputs = dict(full_decode_inputs(batch, context), causal=True)
        quantized = fp8_sets([inputs], quantize_q=False)[0]
        outs = {}
        for label, call in (("bf16", inputs), ("fp8-kv", quantized)):
            ordered = swattn.flash_attn_with_kvcache(**call)
            side = []
            warm_up_on_side_stream([lambda call=call: side.append(swattn.flash_attn_with_kvcache(**call))])
            same = torch.equal(side[0], ordered)
            outs[label] = ordered.float()
            print(f"B={batch} ctx={context} {label}: side stream {'equals' if same else 'DIFFERS from'} in order",
                  flush=True)
            failures += not same
        error = ((outs["fp8-kv"] - outs["bf16"]).norm() / outs["bf16"].norm()).item()
        ok = error < 0.1  # e4m3's own rounding: ~4e-2 (scripts/gpu_fp8_decode.py); a broken kernel ~1
        print(f"B={batch} ctx={context}: fp8-kv vs bf16 rel err {error:.1e} {'ok' if ok else 'FAIL'}", flush=True)
        failures += not ok
        del inputs, quantized, outs
        torch.cuda.synchronize()
    return 1 if failures else 0


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--help"
    if mode in RACE_MODES:
        return race(mode)
    if mode == "sequence":
        return sequence()
    if mode == "all":
        status = 0
        for child in RACE_MODES:
            try:  # a racy kernel that reads garbage lengths but in-range pages could loop for long: cut it
                result = subprocess.run([sys.executable, __file__, child], capture_output=True, text=True,
                                        timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"{child}: still running after {CHILD_TIMEOUT_S} s (killed)", flush=True)
                status |= child == "waited"
                continue
            printed = result.stdout.strip()
            print(printed or f"{child}: exit {result.returncode}: {result.stderr.strip()[-500:]}", flush=True)
            # racy is expected to fault or differ (exit 1); waited must not
            status |= child == "waited" and result.returncode != 0
        return status
    print(__doc__)
    return 0 if mode in ("--help", "-h") else 2


if __name__ == "__main__":
    sys.exit(main())
