"""Second sweep: PackGQA for windowed prefill, causal with reversed tile order, FlexAttention beside them."""

import itertools

import torch
import triton
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import swattn
from swattn.kernels.configs import FwdConfig, forced_config

dev, dt = "cuda", torch.bfloat16
flex = torch.compile(flex_attention)


def t(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median") * 1e3


for name, S, D, H, Hk, win, packs in [("W127 S16K D64", 16384, 64, 64, 8, (127, 0), (True, False)),
                                       ("W4095 S16K D128", 16384, 128, 32, 8, (4095, 0), (False, True)),
                                       ("causal S16K D128", 16384, 128, 32, 8, (-1, 0), (False,))]:
    q = torch.randn(1, S, H, D, device=dev, dtype=dt)
    k = torch.randn(1, S, Hk, D, device=dev, dtype=dt)
    v = torch.randn_like(k)
    rows = []
    for pack in packs:
        for bm, bn, w, st in itertools.product([64, 128, 256], [32, 64, 128], [4, 8], [2, 3]):
            if bm * bn > 128 * 128 or (bm == 256 and w == 4) or (not pack and bm == 256):
                continue
            if D == 128 and (bn == 32 or (bm, bn, w) in ((64, 64, 4),)):
                continue
            try:
                with forced_config(FwdConfig(bm, bn, w, st)):
                    fn = lambda: swattn.flash_attn_func(q, k, v, window_size=win, pack_gqa=pack)  # noqa: E731
                    fn()
                    rows.append((t(fn), pack, bm, bn, w, st))
            except Exception as e:  # noqa: BLE001
                print(name, pack, bm, bn, w, st, "failed", str(e)[:80])
    rows.sort()
    print(f"\n{name}: best (us, pack, block_m, block_n, warps, stages)")
    for r in rows[:8]:
        print("  ", r)
    left = win[0]

    def mask_mod(b, h, qi, kj):
        m = kj <= qi
        return m & (kj >= qi - left) if left >= 0 else m

    bm_ = create_block_mask(mask_mod, 1, 1, S, S, device=dev)
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    ff = lambda: flex(qt, kt, vt, block_mask=bm_, enable_gqa=True)  # noqa: E731
    ff()
    print("   flex us", t(ff))
    sd = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)  # noqa
    print("   sdpa causal (full) us", t(sd))
