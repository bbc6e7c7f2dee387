"""Full-attention decode split-KV sweep on the GPU (bf16, gpt-oss layer: H=64/8, D=64, sinks, page 16).

Every (batch, context) of issue 3's bandwidth target under each split count and a few block configs, all rows
printed (the probe's ``splits`` section printed only the best twelve), graph-replayed, with the automatic choice
and the copy bandwidth of the same GPU. Each input set is its own cache, rotated through, so K/V come from HBM as
in the benchmark. Run: ``python scripts/gpu_splits.py [B,context ...] [--configs bn,warps,stages/...]
[--splits 4,8,...] [--fp8]``; a config's optional fourth field 1 asks for the single masked loop (the window
decode's). ``--fp8``: the caches in e4m3 (one descale per KV head, bf16 queries), bytes counted at 1 per element.
"""

from __future__ import annotations

import sys

import torch
import triton
from gpu_probe import full_decode_inputs, graph_calls_us  # scripts/ is on sys.path when this file runs

import swattn
from swattn.kernels.configs import FwdConfig, forced_config

DEVICE = "cuda"
KV_HEADS, HEAD_DIM = 8, 64


def inputs(batch: int, context: int, fp8: bool = False) -> dict:
    """gpt-oss full-attention decode layer (H=64/8, D=64, sinks, page 16), causal; ``fp8``: e4m3 caches with
    ``k_descale``/``v_descale`` (amax / 448 per KV head, the same for every sequence)."""
    result = dict(full_decode_inputs(batch, context), causal=True)
    if fp8:
        for name in ("k", "v"):
            cache = result.pop(f"{name}_cache")
            descale = cache.float().abs().amax(dim=(0, 1, 3)) / 448
            result[f"{name}_cache"] = (cache.float() / descale[:, None]).to(torch.float8_e4m3fn)
            result[f"{name}_descale"] = descale[None].expand(batch, -1)
    return result


def main() -> None:
    args = sys.argv[1:]
    option = {name: args[args.index(name) + 1] for name in ("--configs", "--splits") if name in args}
    fp8 = "--fp8" in args
    positional = [a for a in args if a not in option and a not in option.values() and a != "--fp8"]
    shapes = [tuple(int(x) for x in a.split(",")) for a in positional] or [
        (4, 16384), (16, 16384), (4, 65536), (16, 65536)]
    configs = [tuple(int(x) for x in c.split(",")) for c in option.get("--configs", "64,2,3/64,2,4/64,4,3").split("/")]
    split_counts = [int(x) for x in option.get("--splits", "2,4,6,8,12,16,24,32").split(",")]
    nbytes = 1 << 30
    src, dst = (torch.empty(nbytes, device=DEVICE, dtype=torch.uint8) for _ in range(2))
    copy_us = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e3
    copy_gbs = 2 * nbytes / copy_us / 1e3
    src = dst = None
    print(f"split sweep on {torch.cuda.get_device_name()}; triton {triton.__version__}; copy {copy_gbs:.0f} GB/s"
          f"{'; e4m3 caches' if fp8 else ''}")
    for batch, context in shapes:
        kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * (1 if fp8 else 2)
        sets = [inputs(batch, context, fp8) for _ in range(max(2, min(8, (3 << 30) // kv_bytes)))]
        ref = swattn.flash_attn_with_kvcache(**sets[0], num_splits=1).float()

        def calls(**kw):
            return [lambda s=s: swattn.flash_attn_with_kvcache(**s, **kw) for s in sets]

        auto = graph_calls_us(calls())
        rows = []
        for bn, warps, stages, *single in configs:
            with forced_config(FwdConfig(16, bn, warps, stages, single_loop=bool(single and single[0]))):
                for splits in split_counts:
                    err = ((swattn.flash_attn_with_kvcache(**sets[0], num_splits=splits).float() - ref).norm()
                           / ref.norm()).item()
                    rows.append((graph_calls_us(calls(num_splits=splits)), splits, bn, warps,
                                 f"{stages}{' single' if single and single[0] else ''}", err))
        print(f"\n## full decode B={batch} ctx={context}: {kv_bytes / 1e6:.0f} MB of K/V, {len(sets)} input sets; "
              f"auto {auto:.1f} us ({kv_bytes / auto / 1e3 / copy_gbs:.0%} of copy); "
              "(us, % copy, splits, block_n, warps, stages, rel diff vs 1 split)", flush=True)
        for us, splits, bn, warps, stages, err in sorted(rows):
            print(f"  {us:8.1f} {kv_bytes / us / 1e3 / copy_gbs:5.0%} {splits:3d} {bn} {warps} {stages} {err:.1e}",
                  flush=True)
        sets.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
