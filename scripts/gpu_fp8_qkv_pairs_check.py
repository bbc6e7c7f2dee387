"""Correctness of the all-fp8 full decode on two KV heads per program (``configs.FP8_QKV_PAIRS``) on a GPU: the
gpt-oss layer (H=64/8, D=64, sinks, pages of 16 in random order), q, K and V e4m3 with descales per (sequence, KV
head) (and one per tensor at B=16 16K), B=16 16K / B=4 16K / B=16 ~128K; the switch off (one KV head per program
on the all-fp8 loop) and on, each against ``swattn.reference`` on the dequantized inputs (float64 on the GPU), and
which loop the plan launched (KV_PAIR, FP8 mode, splits). Prints markdown; exits 1 if a case is off the bf16
tolerance or the switch on did not take the pairs (each shape here is one that configs.fp8_pair_split_count takes).

    python scripts/gpu_fp8_qkv_pairs_check.py
"""

from __future__ import annotations

import sys

import torch

import swattn
from swattn.kernels import configs, fwd
from swattn.reference import attention_kvcache_ref
from swattn.testing import tolerance_for

FP8 = torch.float8_e4m3fn
SHAPES = ((16, 16384), (4, 16384), (16, 131040))  # (batch, context)


def inputs(batch: int, context: int, per_tensor: bool) -> dict:
    """One all-fp8 decode call of the gpt-oss layer over exactly ``context`` keys per sequence."""
    heads, kv_heads, head_dim, page_size = 64, 8, 64, 16
    pages = context // page_size
    k_cache = (torch.randn(batch * pages, page_size, kv_heads, head_dim, device="cuda") * 4).to(FP8)
    v_cache = (torch.randn_like(k_cache, dtype=torch.float32) * 4).to(FP8)
    if per_tensor:
        qd, kd, vd = (torch.tensor(value, device="cuda").expand(batch, kv_heads) for value in (0.05, 0.04, 0.3))
    else:
        qd, kd, vd = ((torch.rand(batch, kv_heads, device="cuda") + 0.5) * scale for scale in (0.05, 0.04, 0.3))
    return dict(q=(torch.randn(batch, 1, heads, head_dim, device="cuda") * 8).to(FP8), k_cache=k_cache,
                v_cache=v_cache,
                page_table=torch.randperm(batch * pages, device="cuda", dtype=torch.int32).view(batch, pages),
                cache_seqlens=torch.full((batch,), context, device="cuda", dtype=torch.int32),
                sinks=torch.randn(heads, device="cuda"), q_descale=qd, k_descale=kd, v_descale=vd, causal=True)


def main() -> int:
    tolerance = tolerance_for(torch.bfloat16)
    print(f"all-fp8 full decode, pairs (configs.FP8_QKV_PAIRS) vs one KV head; ||out - ref|| / ||ref||, tolerance "
          f"{tolerance:.1e}\n")
    print("| B | context | descales | FP8_QKV_PAIRS | KV_PAIR | FP8 | splits | rel err |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    saved = configs.FP8_QKV_PAIRS
    try:
        for batch, context in SHAPES:
            for per_tensor in (False, True) if (batch, context) == SHAPES[0] else (False,):
                call = inputs(batch, context, per_tensor)
                ref, _ = attention_kvcache_ref(call["q"], call["k_cache"], call["v_cache"], call["cache_seqlens"],
                                               page_table=call["page_table"], sinks=call["sinks"], causal=True,
                                               q_descale=call["q_descale"], k_descale=call["k_descale"],
                                               v_descale=call["v_descale"])
                for on in (False, True):
                    configs.FP8_QKV_PAIRS = on
                    fwd._PLANS.clear()
                    out = swattn.flash_attn_with_kvcache(**call)
                    torch.cuda.synchronize()
                    (plan,) = [p for p in fwd.plans() if p.launches]
                    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
                    constexprs = plan.main.constexprs
                    bad = not err <= tolerance or out.dtype != torch.bfloat16 or (on and not plan.kv_pair)
                    failed += bad
                    print(f"| {batch} | {context} | {'per tensor' if per_tensor else 'per (B, Hk)'} | {int(on)} | "
                          f"{constexprs['KV_PAIR']} | {constexprs['FP8']} | {plan.main.grid[2]} | {err:.2e}"
                          f"{' FAIL' if bad else ''} |", flush=True)
                del call, ref
                torch.cuda.empty_cache()
    finally:
        configs.FP8_QKV_PAIRS = saved
        fwd._PLANS.clear()
    print(f"\n{'FAILED: ' + str(failed) if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
