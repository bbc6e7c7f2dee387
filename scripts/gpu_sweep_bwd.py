"""Backward block-config sweep on the GPU (bf16): PackGQA against the unpacked kernels, backward alone.

For each shape, the forward runs once; each config's backward is timed with ``triton.testing.do_bench`` (median,
L2 cleared) and its dq/dk/dv compared with the first config's. Run: ``python scripts/gpu_sweep_bwd.py``, or with
``--tma``: the shipped default, the default with one dK/dV stage (``BwdConfig.dkdv_num_stages``), then
descriptor-load (``BwdConfig.tma``) and pointer-load variants (``--d64-large``: only D=64, window (4095, 0)).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
import triton

from swattn.kernels.bwd import attention_backward
from swattn.kernels.configs import BwdConfig, backward_config
from swattn.kernels.fwd import attention_forward

DEVICE, DTYPE = "cuda", torch.bfloat16
SHAPES = [(32768, 64, 64, 8, 127), (32768, 128, 32, 8, 127), (32768, 128, 32, 8, 4095), (32768, 64, 64, 8, 4095)]


def candidates(head_dim: int, left: int) -> list[BwdConfig]:
    stages = [3] if head_dim <= 64 else [2]
    base = ([BwdConfig(32, 64, 64, 32, 4, stages[0])] if left < 1024 else [BwdConfig(64, 64, 64, 64, 4, stages[0])])
    packed = []
    for dkdv_m, dkdv_n, dq_m, dq_n in [(64, 64, 64, 32), (64, 32, 64, 32), (128, 64, 64, 32), (64, 64, 128, 32),
                                       (64, 64, 64, 64), (128, 64, 128, 64), (32, 64, 64, 32), (64, 128, 128, 64)]:
        for warps in (4, 8):
            for st in stages:
                packed.append(BwdConfig(dkdv_m, dkdv_n, dq_m, dq_n, warps, st, pack_gqa=True))
    return base + packed


def tma_candidates(head_dim: int, left: int) -> list[BwdConfig]:
    """The default first, then the default with the other dK/dV stage choices (one stage or the dQ loop's count,
    and two), then descriptor-load variants (dK/dV takes them only when not packed)."""
    default = backward_config(head_dim, left)
    other_stages = replace(default, dkdv_num_stages=None if default.dkdv_num_stages == 1 else 1)
    # Two dK/dV stages: compiled (Triton 3.6), W(127,0) D64 spills 64 B at two stages against 448 B at three.
    stage_variants = [other_stages] + ([replace(default, dkdv_num_stages=2)]
                                       if 2 not in (default.dkdv_num_stages or default.num_stages,
                                                    other_stages.dkdv_num_stages or other_stages.num_stages) else [])
    return [default] + stage_variants + [
        c for c in _tma_candidates(head_dim, left) if c not in [default] + stage_variants]


def _tma_candidates(head_dim: int, left: int) -> list[BwdConfig]:
    if left < 1024 and head_dim <= 64:
        return [BwdConfig(32, 64, 64, 32, 4, 3, True), BwdConfig(32, 64, 64, 32, 4, 3, True, tma=True),
                BwdConfig(32, 64, 64, 32, 4, 3), BwdConfig(32, 64, 64, 32, 4, 3, tma=True),
                BwdConfig(64, 64, 64, 32, 4, 3, tma=True)]
    if head_dim <= 64:
        return [BwdConfig(64, 64, 64, 64, 4, 3), BwdConfig(64, 64, 64, 64, 4, 3, tma=True),
                BwdConfig(64, 64, 64, 64, 4, 2, tma=True), BwdConfig(64, 64, 64, 64, 4, 2)]
    if left < 1024:
        return [BwdConfig(32, 64, 64, 32, 4, 2), BwdConfig(32, 64, 64, 32, 4, 2, tma=True),
                BwdConfig(64, 64, 64, 64, 4, 2, tma=True), BwdConfig(32, 64, 64, 32, 4, 3, tma=True)]
    return [BwdConfig(64, 64, 64, 64, 4, 2), BwdConfig(64, 64, 64, 64, 4, 2, tma=True),
            BwdConfig(64, 64, 64, 64, 4, 3, tma=True), BwdConfig(64, 128, 128, 64, 8, 2, tma=True),
            BwdConfig(64, 64, 128, 64, 8, 2, tma=True), BwdConfig(32, 128, 128, 32, 8, 2, tma=True),
            BwdConfig(64, 128, 64, 64, 8, 2, tma=True)]


def main() -> None:
    pick = tma_candidates if "--tma" in sys.argv else candidates
    shapes = [s for s in SHAPES if s[1] == 64 and s[4] > 1024] if "--d64-large" in sys.argv else SHAPES
    print(f"backward sweep on {torch.cuda.get_device_name()}; triton {triton.__version__}")
    for seqlen, head_dim, heads, kv_heads, left in shapes:
        q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=DTYPE)
        k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(2))
        dout = torch.randn_like(q)
        scale = head_dim ** -0.5
        out, lse, _ = attention_forward(q, k, v, softmax_scale=scale, left=left, right=0)
        rows, first = [], None
        for config in pick(head_dim, left):
            def run(config=config):
                return attention_backward(dout, q, k, v, out, lse, softmax_scale=scale, left=left, right=0,
                                          config=config)
            try:
                grads = run()[:3]
                if first is None:
                    first = grads
                err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads, first))
                us = triton.testing.do_bench(run, warmup=10, rep=100, return_mode="median") * 1e3
            except Exception as e:  # noqa: BLE001
                print(f"  {config} failed: {str(e)[:100]}", flush=True)
                continue
            rows.append((us, config, err))
        rows.sort(key=lambda r: r[0])
        print(f"\n## backward alone S={seqlen} D={head_dim} H={heads}/{kv_heads} W=({left},0): "
              f"first config {[r for r in rows if r[1] == pick(head_dim, left)[0]][0][0]:.1f} us", flush=True)
        for us, c, err in rows[:10]:
            print(f"  {us:8.1f}  dkdv {c.dkdv_block_m}x{c.dkdv_block_n} dq {c.dq_block_m}x{c.dq_block_n} "
                  f"w{c.num_warps} s{c.num_stages} dkdv_s{c.dkdv_num_stages or c.num_stages} pack={c.pack_gqa} "
                  f"tma={c.tma}  diff {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
