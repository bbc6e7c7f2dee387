"""W(127,0) serving calls (gpt-oss layer: B=16, H=64/8, D=64, sinks, 1K context, pages of 16 in random order) bracketed
by cudaProfilerStart/Stop after a warm-up call, for Nsight Compute on the H200 (GPU only): where a cold decode step's
~5 us and a verify step's extra go (stall reasons per SASS instruction; Nsight Compute flushes the caches before
each profiled kernel by default, so each call is cold):

    ncu --clock-control none --profile-from-start off --set full --import-source no -o REPORT \\
        python scripts/gpu_ncu_serving.py [CASE ...]
    ncu -i REPORT.ncu-rep --page details
    ncu -i REPORT.ncu-rep --page source --csv --print-source sass   # stall samples per instruction

CASE: ``decode`` (one new token appended: the fused append reading k / v, the default), ``decode_no_append``,
``verify4``, ``verify8`` (k tokens appended); all four by default, profiled in that order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_ncu import profile_once  # noqa: E402

import swattn  # noqa: E402

BATCH, HEADS, KV_HEADS, HEAD_DIM, CONTEXT, PAGE = 16, 64, 8, 64, 1024, 16


def case(name: str):
    tokens = {"decode": 1, "decode_no_append": 1, "verify4": 4, "verify8": 8}[name]
    pages = CONTEXT // PAGE + 1
    k_cache = torch.randn(BATCH * pages, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(BATCH * pages, device="cuda", dtype=torch.int32).view(BATCH, pages)
    q = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    sinks = torch.randn(HEADS, device="cuda")
    append = name != "decode_no_append"
    k_new, v_new = (torch.randn(BATCH, tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                    if append else None for _ in range(2))
    seqlens = torch.full((BATCH,), CONTEXT - (tokens if append else 0), device="cuda", dtype=torch.int32)
    return lambda: swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                                  page_table=table, causal=True, window_size=(127, 0), sinks=sinks)


def main() -> None:
    names = sys.argv[1:] or ["decode", "decode_no_append", "verify4", "verify8"]
    profile_once([case(name) for name in names])
    print(f"profiled one call each: {', '.join(names)}")


if __name__ == "__main__":
    main()
