"""On the GPU: Triton's warp specialization (``FwdConfig.warp_specialize``) on the forward's KV loop, against the
shipped default, on the prefill targets (batch 1, S=16384, bf16).

Each config runs in its own process, since a Triton compiler assertion aborts the process rather than raising:
a check of the first and last 512 query rows against the float32 reference, then ``triton.testing.do_bench``
(median, L2 cleared). Run: ``python scripts/gpu_ws.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from swattn.kernels.configs import FwdConfig

SHAPES = {
    # name: (head_dim, heads, kv_heads, window, pack_gqa, configs; the first is the shipped default)
    "W(4095,0) D128 H32/8": (128, 32, 8, (4095, 0), False, [
        FwdConfig(128, 128, 8, 3, tma=True),
        FwdConfig(128, 128, 4, 2, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 4, 3, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 8, 2, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 8, 3, tma=True, warp_specialize=True),
        FwdConfig(128, 64, 4, 3, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 4, 2, single_loop=True, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 8, 2, single_loop=True, tma=True, warp_specialize=True)]),
    "causal D128 H32/8": (128, 32, 8, (-1, 0), False, [
        FwdConfig(128, 128, 8, 3, tma=True),
        FwdConfig(128, 128, 4, 2, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 8, 2, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 4, 2, single_loop=True, tma=True, warp_specialize=True)]),
    "W(4095,0) D64 H64/8": (64, 64, 8, (4095, 0), False, [
        FwdConfig(128, 64, 4, 3, tma=True),
        FwdConfig(128, 64, 4, 3, tma=True, warp_specialize=True),
        FwdConfig(128, 128, 4, 2, tma=True, warp_specialize=True)]),
    "W(127,0) D64 H64/8": (64, 64, 8, (127, 0), True, [
        FwdConfig(64, 32, 4, 2, single_loop=True),
        FwdConfig(64, 32, 4, 2, single_loop=True, tma=True, warp_specialize=True),
        FwdConfig(128, 64, 4, 2, single_loop=True, tma=True, warp_specialize=True)]),
}


def run_one(name: str, index: int) -> dict:
    import torch
    import triton

    import swattn
    from swattn.kernels.configs import forced_config
    from swattn.reference import attention_ref
    from swattn.testing import relative_error

    head_dim, heads, kv_heads, window, pack, configs = SHAPES[name]
    seqlen, tail = 16384, 512
    torch.manual_seed(0)
    q = torch.randn(1, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = attention_ref(q[:, -tail:], k, v, window_size=window, compute_dtype=torch.float32)[0]
    with forced_config(configs[index]):
        fn = lambda: swattn.flash_attn_func(q, k, v, window_size=window, pack_gqa=pack)  # noqa: E731
        out = fn()
        error = relative_error(out[:, -tail:].float(), ref.float())
        # The first rows too (their tiles start at key 0): with as many keys as queries the alignment holds.
        head_ref = attention_ref(q[:, :tail], k[:, :tail], v[:, :tail], window_size=window,
                                 compute_dtype=torch.float32)[0]
        error = max(error, relative_error(out[:, :tail].float(), head_ref.float()))
        us = triton.testing.do_bench(fn, warmup=25, rep=200) * 1e3
    return {"us": us, "error": error}


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print("RESULT " + json.dumps(run_one(sys.argv[2], int(sys.argv[3]))), flush=True)
        return
    print("| shape | config (block_m, block_n, warps, stages) | us | / default | rel err | note |")
    print("|---|---|---|---|---|---|")
    for name, (*_, configs) in SHAPES.items():
        default_us = None
        for index, config in enumerate(configs):
            label = (f"({config.block_m}, {config.block_n}, {config.num_warps}, {config.num_stages})"
                     + (" single loop" if config.single_loop else "") + (" tma" if config.tma else "")
                     + (" ws" if config.warp_specialize else ""))
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(index)], capture_output=True,
                                  text=True, timeout=300)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160].replace("|", "/")
                print(f"| {name} | {label} | - | - | - | failed (rc {proc.returncode}): {reason} |", flush=True)
                continue
            result = json.loads(lines[0][len("RESULT "):])
            default_us = default_us or result["us"]
            ok = "" if result["error"] < 2e-2 else "WRONG"
            print(f"| {name} | {label} | {result['us']:.1f} | {result['us'] / default_us:.3f} | "
                  f"{result['error']:.1e} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
