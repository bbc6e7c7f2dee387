"""Third sweep: windowed prefill (W127, D64) with one masked loop vs three loops."""

import itertools

import torch
import triton

import swattn
from swattn.kernels.configs import FwdConfig, forced_config

dev, dt = "cuda", torch.bfloat16


def t(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median") * 1e3


S, D, H, Hk, win = 16384, 64, 64, 8, (127, 0)
q = torch.randn(1, S, H, D, device=dev, dtype=dt)
k = torch.randn(1, S, Hk, D, device=dev, dtype=dt)
v = torch.randn_like(k)
rows = []
for single, pack, bm, bn, w, st in itertools.product([True, False], [False, True], [64, 128], [32, 64, 128],
                                                     [4, 8], [1, 2, 3]):
    if bm * bn > 128 * 128:
        continue
    with forced_config(FwdConfig(bm, bn, w, st, single)):
        fn = lambda: swattn.flash_attn_func(q, k, v, window_size=win, pack_gqa=pack)  # noqa: E731
        fn()
        rows.append((t(fn), single, pack, bm, bn, w, st))
rows.sort()
print("W127 S16K D64 H64/8: best (us, single_loop, pack, block_m, block_n, warps, stages)")
for r in rows[:10]:
    print("  ", r)
