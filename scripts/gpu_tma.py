"""On the GPU: forward K/V loads through tensor descriptors (TMA) against pointer loads, on the prefill targets.

For each shape (batch 1, S=16384, bf16) and block config, with and without ``FwdConfig.tma``: a check of the last
512 query rows against the float32 reference, then ``triton.testing.do_bench`` (median, L2 cleared). Configs that
do not compile or run are reported, not fatal. Run: ``python scripts/gpu_tma.py [--quick]``.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
import triton

import swattn
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.reference import attention_ref
from swattn.testing import relative_error

DEVICE, DTYPE = "cuda", torch.bfloat16

SHAPES = {
    # name: (head_dim, heads, kv_heads, window, pack_gqa, configs (pointer loads; each also runs with tma=True))
    "W(127,0) D64 H64/8": (64, 64, 8, (127, 0), True, [
        FwdConfig(64, 32, 4, 2, single_loop=True), FwdConfig(64, 64, 4, 2, single_loop=True),
        FwdConfig(128, 32, 4, 2, single_loop=True), FwdConfig(64, 32, 4, 3, single_loop=True),
        FwdConfig(128, 64, 8, 2, single_loop=True), FwdConfig(128, 128, 8, 2, single_loop=True)]),
    "W(4095,0) D128 H32/8": (128, 32, 8, (4095, 0), False, [
        FwdConfig(128, 128, 8, 3), FwdConfig(128, 128, 8, 2), FwdConfig(128, 64, 8, 3), FwdConfig(128, 64, 4, 3),
        FwdConfig(64, 128, 4, 3)]),
    "causal D128 H32/8": (128, 32, 8, (-1, 0), False, [
        FwdConfig(128, 128, 8, 3), FwdConfig(128, 128, 8, 2), FwdConfig(128, 64, 8, 3)]),
    "W(4095,0) D64 H64/8": (64, 64, 8, (4095, 0), False, [FwdConfig(128, 64, 4, 3), FwdConfig(128, 128, 8, 3)]),
}


def main() -> None:
    quick = "--quick" in sys.argv
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print("| shape | config (block_m, block_n, warps, stages) | pointer loads us | TMA us | TMA / pointer |")
    print("|---|---|---|---|---|")
    seqlen, tail = 16384, 512
    for name, (head_dim, heads, kv_heads, window, pack, configs) in SHAPES.items():
        torch.manual_seed(0)
        q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=DTYPE)
        k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(2))
        ref = attention_ref(q[:, -tail:], k, v, window_size=window, compute_dtype=torch.float32)[0]
        for config in configs[:2] if quick else configs:
            times = []
            for tma in (False, True):
                variant = replace(config, tma=tma)
                try:
                    with forced_config(variant):
                        fn = lambda: swattn.flash_attn_func(q, k, v, window_size=window, pack_gqa=pack)  # noqa: E731
                        error = relative_error(fn()[:, -tail:].float(), ref.float())
                        assert error < 2e-2, f"rel err {error:.2e}"
                        times.append(triton.testing.do_bench(fn, warmup=25, rep=200) * 1e3)
                except Exception as exc:  # noqa: BLE001 - a sweep reports failures and goes on
                    print(f"<!-- {name} {variant}: {type(exc).__name__}: {str(exc)[:200]} -->", flush=True)
                    times.append(float("nan"))
            label = (f"({config.block_m}, {config.block_n}, {config.num_warps}, {config.num_stages})"
                     + (" single loop" if config.single_loop else ""))
            print(f"| {name} | {label} | {times[0]:.1f} | {times[1]:.1f} | {times[1] / times[0]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
