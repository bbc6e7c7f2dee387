"""fp8 (e4m3) KV-cache decode under block configs, beside the bf16 decode of the same shape (GPU only).

gpt-oss layer (H=64/8, D=64, sinks, page 16): full-attention decode B=16 at 16K, B=4 at 128K and at 16K (split-KV,
the automatic split count), and window (127, 0) decode B=16 at 2K (48 input sets, so the windows come from HBM).
For each shape: swattn bf16 (shipped config), then ``fp8-kv`` (bf16 queries over the e4m3 cache) and ``fp8`` (q, K,
V e4m3) under the shipped config and the candidates of the shape's list, graph-replayed over several input sets
(cold caches, as ``python -m swattn.bench decode-fp8``), each checked against the bf16 cache's output (e4m3's own
rounding gives about 4% relative there; a broken kernel ~100%). Lines are printed as they are measured, most
important first, so a timeout keeps what ran; each gives us per call, the speed-up over bf16 and the share of the
copy bandwidth on the e4m3 bytes read (``--copy GBPS``, default the H200's 4,221 GB/s of s4-call1).

The questions (docs/notes/2026-12-03-fp8-kv-cache.md, session 4): the paged split loop at 3 stages holds one K/V
buffer, so nothing is in flight while a block computes; 5 stages hold two, 7 three (Triton 3.6, sm_90); and the
e4m3 tiles widened in pairs before their layout change (``fwd._widen_e4m3``) against a plain ``.to``.

Run: ``python scripts/gpu_fp8_decode.py [full|long|b4|window ...]`` (all four by default).
"""

from __future__ import annotations

import sys

import torch
from gpu_probe import full_decode_inputs, graph_calls_us  # scripts/ is on sys.path when this file runs

import swattn
from swattn.kernels import fwd
from swattn.kernels._launch import clear_plans
from swattn.kernels.configs import FwdConfig, forced_config

FP8 = torch.float8_e4m3fn
# (quantize q, config[, options]): config None = what configs.py ships for fp8, else (block_n, warps, stages, single
# loop); options: widen=False (the e4m3 tiles widened by a plain ``.to(tl.float16)`` instead of fwd._widen_e4m3's
# pairs), splits=N (num_splits instead of the automatic count, which plans 6 programs per SM: (128, 2, 5) fits 4),
# prefetch=True (fwd.PREFETCH_PAGE_TABLE: the single loop's first page-table entries into L2 before the query
# tile is converted). quantize q None: the bf16 cache (bf16 itself under the option).
# A config tuple may go on with (tma, maxnreg) as FwdConfig's fields: the shipped fp8 split loop is (64, 2, 7) capped
# at 168 registers (151 used, 6 programs per SM; shared memory allows 6 at 7 stages); (64, 2, 5) capped at 144 fits
# 7 per SM (139 registers), which 7 splits fill at B=16 (896 programs) and 28 at B=4.
PLAIN = dict(widen=False)
FULL = [(False, None), (False, (64, 2, 5, False, False, 144), dict(splits=7)), (False, None, PLAIN),
        (False, (64, 2, 3, False, False, 168)), (True, None), (False, (64, 2, 5, False, False, 168)),
        (False, (64, 2, 7, False))]
LONG = [(False, None), (False, (64, 2, 5, False, False, 144), dict(splits=28)),
        (False, (64, 2, 5, False, False, 168)), (False, (64, 2, 3, False), PLAIN), (True, None)]
PREFETCH = dict(prefetch=True)
WINDOW = [(False, None), (True, None), (False, None, PREFETCH), (None, None, PREFETCH), (False, None, PLAIN),
          (False, (128, 4, 1, True)), (True, (128, 4, 1, True)), (False, (128, 4, 1, True), PLAIN)]
SHAPES = {"full": (16, 16384, None, FULL), "long": (4, 131072, None, LONG), "b4": (4, 16384, None, LONG[:3]),
          "window": (16, 2048, 127, WINDOW)}
COPY_GBPS = 4221.0


def fp8_sets(sets: list[dict], quantize_q: bool) -> list[dict]:
    """The caches in e4m3, one descale per KV head (amax / 448, every sequence the same); q too if asked."""
    out = []
    for s in sets:
        s = dict(s)
        for name in ("k", "v"):
            cache = s.pop(f"{name}_cache")
            descale = cache.float().abs().amax(dim=(0, 1, 3)) / 448
            s[f"{name}_cache"] = (cache.float() / descale[:, None]).to(FP8)
            s[f"{name}_descale"] = descale[None].expand(s["q"].shape[0], -1)
        if quantize_q:
            q = s["q"].float()
            descale = q.abs().amax() / 448
            s["q"], s["q_descale"] = (q / descale).to(FP8), descale.expand(q.shape[0], 8)
        out.append(s)
    return out


def main() -> None:
    args = sys.argv[1:]
    copy = COPY_GBPS
    if "--copy" in args:
        at = args.index("--copy")
        copy = float(args[at + 1])
        del args[at:at + 2]
    names = args or list(SHAPES)
    print(f"fp8 decode configs on {torch.cuda.get_device_name()}; us per call, vs bf16 = bf16 us / this, % of "
          f"copy ({copy:.0f} GB/s) on the bytes read, rel diff vs the bf16 cache's output", flush=True)
    for name in names:
        batch, context, left, candidates = SHAPES[name]
        window = dict(window_size=(left, 0)) if left is not None else {}
        kv_bytes = batch * (context if left is None else left + 1) * 8 * 64 * 2 * 2
        count = max(2, min(48, (3 << 30) // (batch * context * 8 * 64 * 4)))
        sets = [dict(full_decode_inputs(batch, context), causal=True, **window) for _ in range(count)]
        ref = swattn.flash_attn_with_kvcache(**sets[0]).float()
        bf16_us = graph_calls_us([lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in sets])
        print(f"\n## {name}: B={batch} ctx={context} window={left}: {count} input sets; bf16 {bf16_us:.2f} us "
              f"({kv_bytes / 1e6:.1f} MB bf16 K/V read, {kv_bytes / bf16_us / 1e3 / copy:.0%} of copy)", flush=True)
        variants = {}
        for quantize_q, config, *more in candidates:
            options = more[0] if more else {}
            label = "bf16" if quantize_q is None else "fp8" if quantize_q else "fp8-kv"
            if quantize_q not in variants:
                variants[quantize_q] = sets if quantize_q is None else fp8_sets(sets, quantize_q)
            shown = "shipped" if config is None else "({},{},{}{}{})".format(
                *config[:3], ",single" if config[3] else "", f",maxnreg {config[5]}" if len(config) > 5 else "")
            shown += " .to" if not options.get("widen", True) else ""
            shown += f" {options['splits']} splits" if "splits" in options else ""
            shown += " prefetch" if options.get("prefetch") else ""
            calls = variants[quantize_q]
            if "splits" in options:
                calls = [dict(c, num_splits=options["splits"]) for c in calls]
            forced = forced_config(FwdConfig(16, *config)) if config is not None else None
            widens_pairs = fwd._widens_pairs
            if not options.get("widen", True):
                fwd._widens_pairs = lambda device: False
                clear_plans()  # plans hold the switch
            prefetch = fwd.PREFETCH_PAGE_TABLE
            if "prefetch" in options:
                fwd.PREFETCH_PAGE_TABLE = options["prefetch"]  # part of the plans' key (fwd.settings)
            try:
                if forced is not None:
                    forced.__enter__()
                out = swattn.flash_attn_with_kvcache(**calls[0]).float()
                err = ((out - ref).norm() / ref.norm()).item()
                us = graph_calls_us([lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in calls])
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  {label:6s} {shown:36s}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            finally:
                if forced is not None:
                    forced.__exit__(None, None, None)
                if fwd._widens_pairs is not widens_pairs:
                    fwd._widens_pairs = widens_pairs
                    clear_plans()
                fwd.PREFETCH_PAGE_TABLE = prefetch
            print(f"  {label:6s} {shown:36s}: {us:8.2f} us {bf16_us / us:5.2f}x {kv_bytes / 2 / us / 1e3 / copy:5.0%} "
                  f"of copy  err {err:.1e}", flush=True)
        variants.clear()
        sets.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
