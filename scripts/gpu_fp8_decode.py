"""fp8 (e4m3) KV-cache decode under block configs, beside the bf16 decode of the same shape (GPU only).

gpt-oss layer (H=64/8, D=64, sinks, page 16): full-attention decode B=16 at 16K and B=4 at 128K (split-KV, the
automatic split count), and window (127, 0) decode B=16 at 2K (48 input sets, so the windows come from HBM). For
each shape: swattn bf16 (shipped config), then ``fp8-kv`` (bf16 queries over the e4m3 cache) and ``fp8`` (q, K,
V e4m3) under each config of the shape's list, graph-replayed over several input sets (cold caches, as ``python
-m swattn.bench decode-fp8``), each checked against the bf16 cache's output (e4m3's own rounding gives about 4%
relative there; a broken kernel ~100%). One line per measurement as it goes, so a timeout keeps what ran.

Run: ``python scripts/gpu_fp8_decode.py [full|long|window ...]`` (all three by default).
"""

from __future__ import annotations

import sys

import torch
from gpu_probe import full_decode_inputs, graph_calls_us  # scripts/ is on sys.path when this file runs

import swattn
from swattn.kernels.configs import FwdConfig, forced_config

FP8 = torch.float8_e4m3fn
# (block_n, warps, stages, single loop); the first of each list is what configs.py ships for that decode.
FULL_CONFIGS = [(64, 2, 3, False), (128, 4, 3, False), (128, 4, 2, False), (64, 4, 3, False)]
WINDOW_CONFIGS = [(128, 4, 1, True), (128, 8, 1, True), (128, 4, 2, True)]
SHAPES = {"full": (16, 16384, None, FULL_CONFIGS), "long": (4, 131072, None, FULL_CONFIGS[:2]),
          "window": (16, 2048, 127, WINDOW_CONFIGS)}


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
    names = sys.argv[1:] or list(SHAPES)
    print(f"fp8 decode configs on {torch.cuda.get_device_name()}; (us, vs bf16 = bf16 us / this, rel diff vs the "
          "bf16 cache's output)", flush=True)
    for name in names:
        batch, context, left, configs = SHAPES[name]
        window = dict(window_size=(left, 0)) if left is not None else {}
        kv_bytes = batch * (context if left is None else left + 1) * 8 * 64 * 2 * 2
        count = max(2, min(48, (3 << 30) // (batch * context * 8 * 64 * 4)))
        sets = [dict(full_decode_inputs(batch, context), causal=True, **window) for _ in range(count)]
        ref = swattn.flash_attn_with_kvcache(**sets[0]).float()
        bf16_us = graph_calls_us([lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in sets])
        print(f"\n## {name}: B={batch} ctx={context} window={left}: {count} input sets; bf16 {bf16_us:.2f} us "
              f"({kv_bytes / 1e6:.1f} MB bf16 K/V read)", flush=True)
        for label, quantize_q in (("fp8-kv", False), ("fp8", True)):
            variants = fp8_sets(sets, quantize_q)
            for bn, warps, stages, single in configs:
                with forced_config(FwdConfig(16, bn, warps, stages, single_loop=single)):
                    try:
                        out = swattn.flash_attn_with_kvcache(**variants[0]).float()
                        err = ((out - ref).norm() / ref.norm()).item()
                        us = graph_calls_us([lambda s=s: swattn.flash_attn_with_kvcache(**s) for s in variants])
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"  {label:6s} ({bn},{warps},{stages}{',single' if single else ''}): "
                              f"{type(exc).__name__}: {str(exc)[:120]}", flush=True)
                        continue
                print(f"  {label:6s} ({bn},{warps},{stages}{',single' if single else ''}): {us:8.2f} us "
                      f"{bf16_us / us:5.2f}x  err {err:.1e}", flush=True)
            variants.clear()
        sets.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
