"""Where the e4m3 pairs' full decode spends its fixed time per call (GPU only; issue 22, session 11).

gpt-oss layer (H=64/8, D=64, page 16, sinks), bf16 queries over an e4m3 paged cache, page tables of exactly the
context (as ``swattn.bench``'s), the automatic split count (B=4 16K: 64 splits x 16 two-KV-head programs, one warp
each, and a merge of 256 programs). For each launch setting: us per call of a graph of 20 calls on one input set,
then the same graph with per-program %globaltimer stamps (``_common.STAMPS_ADDRESS``, as issue 21's
``gpu_probe.py fixed_costs``: split programs' start / wait passed / end, the merge's, per call and as means over
the middle calls; ``gpu_probe._stamp_report``). Settings: the default and no PDL. (s11-call2 / s11-call5 / s11-call9
ran it with fwd.FP8_SPLIT_LATE_DEPENDENTS 1 / 2, the late merge trigger on the e4m3 split launches, and with
combine.WIDE_MERGE_SPLITS, the merge on two warps, both since removed: docs/notes/2026-12-03-fp8-kv-cache.md,
session 11.) Session 14: the caller's split counts past MAX_SPLITS (``65 splits``, ``74 splits``, ``86 splits``).

    python scripts/gpu_fp8_fixed_costs.py [--batch 4] [--context 16384] [--go-file PATH] [--variants default,no PDL]
    python scripts/gpu_fp8_fixed_costs.py --variants "default,65 splits,86 splits"

The stamped kernels are compiled for the stamp buffer's address (a constexpr), which differs between processes
(s11-call2), so they are compiled in the measuring process: ``--go-file PATH`` compiles every variant (one call each,
stamped and not), then waits for PATH to exist before timing anything (so that other processes' compiles can run
beside it while the GPU waits). Raw records saved under $OUT (or /tmp) as fp8-stamps-B<batch>.pt.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch
from gpu_fp8_decode import decode_inputs, fp8_sets  # scripts/ is on sys.path when this file runs
from gpu_probe import _stamp_report, _stamped_graph, graph_us, with_settings

import swattn
from swattn import _compat, interface
from swattn.kernels import _common, fwd
from swattn.kernels._launch import clear_plans

# label: ((module, name, value), ...) settings, and the call's own arguments. Session 14: split counts past
# MAX_SPLITS' 64 (interface.MAX_SPLITS raised so that the caller's num_splits is not clamped): 65 (the default's 64
# splits with keys, one empty, and the merge's second 64-split tile), 74 and 86 (no empty split at B=4 16K or 128K).
VARIANTS = {
    "default": ((), {}),
    "no PDL": (((_compat, "PDL", False),), {}),
    **{f"{n} splits": (((interface, "MAX_SPLITS", 128),), dict(num_splits=n)) for n in (65, 74, 86)},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--go-file", help="compile every variant, then wait for this file before timing")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels of VARIANTS")
    args = parser.parse_args()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    # The stamp buffer before anything else is allocated on the device (the same address in every process: see
    # above).
    stamp_buffer = torch.zeros(16 + 2 * (1 << 16) * 16, device="cuda", dtype=torch.int64)
    batch, context = args.batch, args.context
    inputs = fp8_sets([decode_inputs(batch, context)], False)[0]
    inputs["page_table"] = inputs["page_table"][:, :context // 16].contiguous()  # exactly the context
    calls = {label: functools.partial(swattn.flash_attn_with_kvcache, **inputs, causal=True, **VARIANTS[label][1])
             for label in wanted}

    def split_count(label: str) -> tuple[int, torch.Tensor]:
        """The variant's split count (its plan's grid; checked to take two KV heads per program) and its output."""
        def planned():
            reference = calls[label]()[0].clone()
            (plan,) = [plan for plan in fwd.plans() if plan.launches]
            assert plan.kv_pair, f"{label}: expected two KV heads per program (grid {plan.main.grid})"
            return plan.main.grid[2], reference
        return with_settings(VARIANTS[label][0], planned)

    splits, reference = split_count("default") if "default" in calls else split_count(wanted[0])
    kv_bytes = batch * context * 8 * 64 * 2  # e4m3 K and V
    address = stamp_buffer.data_ptr()
    print(f"stamp buffer at {address:#x}; e4m3 full decode B={batch} {context} keys: {splits} splits by default, "
          f"{batch * 4 * splits} split programs (pairs), {batch * 64} merge programs, {kv_bytes / 1e6:.1f} MB",
          flush=True)
    out_dir = os.environ.get("OUT", "/tmp")
    saved, table = {}, []
    if args.go_file:
        for label in wanted:
            def compile_only(call=calls[label]):
                call()
                previous = _common.STAMPS_ADDRESS
                _common.STAMPS_ADDRESS = address
                clear_plans()
                try:
                    call()
                    torch.cuda.synchronize()
                finally:
                    _common.STAMPS_ADDRESS = previous
            with_settings(VARIANTS[label][0], compile_only)
            print(f"  {label}: compiled", flush=True)
        waited = time.monotonic()
        while not os.path.exists(args.go_file) and time.monotonic() - waited < 120:
            time.sleep(0.05)
        print(f"  (waited {time.monotonic() - waited:.1f} s for {args.go_file})", flush=True)
    for label in wanted:
        settings, call = VARIANTS[label][0], calls[label]
        try:
            label_splits = split_count(label)[0]

            def timed():
                out = call()[0]
                same = torch.equal(out, reference)
                diff = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
                return graph_us(call, 20), same, diff
            us, same, diff = with_settings(settings, timed)
            stamped_us, regions = with_settings(settings, lambda: _stamped_graph(call, 20, address, stamp_buffer))
            same_default = "bits = default" if same else f"rel diff from the default {diff:.1e}"
            print(f"\n### {label}: {label_splits} splits, {us:.2f} us per call replayed ({same_default}); "
                  f"stamped {stamped_us:.2f}", flush=True)
            for line in _stamp_report(regions, batch * 4 * label_splits, batch * 64, kv_bytes):
                print(line, flush=True)
            saved[label] = [region[:, :8].clone() for region in regions]
            torch.save(saved, os.path.join(out_dir, f"fp8-stamps-B{batch}.pt"))
            table.append((label, f"{us:.2f}", f"{stamped_us:.2f}"))
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {label}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    if table:
        print(f"\n## e4m3 full decode B={batch} {context}: us per call (20 per graph, one input set)")
        print("| setting | us | stamped us |")
        print("|---|---|---|")
        for row in table:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
