"""A small demo: gpt-oss-shaped sliding-window attention, prefill then a decode step from a paged cache.

Runs on a GPU in bfloat16, or on the CPU in float32 (through the Triton interpreter when TRITON_INTERPRET=1, else
through the reference). Prints what it computed and how it checked it against the float64 reference.
"""

from __future__ import annotations

import argparse
import time

import torch

import swattn
from swattn._compat import interpreter_enabled
from swattn.reference import attention_kvcache_ref, attention_ref
from swattn.testing import relative_error, tolerance_for
from swattn.window import tile_plan, window_size_from_sliding_window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seqlen", type=int, default=None, help="prompt length (default 1024 on GPU, 96 on CPU)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    seqlen = args.seqlen or (1024 if device == "cuda" else 96)
    sliding_window = 128 if device == "cuda" else 16
    heads, kv_heads, head_dim, batch = (64, 8, 64, 2) if device == "cuda" else (8, 2, 64, 2)
    window = window_size_from_sliding_window(sliding_window)
    triton_path = device == "cuda" or interpreter_enabled()
    path = "Triton kernels" if triton_path else "PyTorch reference (TRITON_INTERPRET unset)"
    print(f"swattn {swattn.__version__} on {device} ({path}), {dtype}")
    print(f"sliding_window={sliding_window} -> window_size={window}; B={batch} H={heads} Hk={kv_heads} D={head_dim}")

    torch.manual_seed(0)
    q = torch.randn(batch, seqlen, heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, seqlen, kv_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    sinks = torch.randn(heads, device=device)
    start = time.perf_counter()
    out, lse = swattn.flash_attn_func(q, k, v, causal=True, window_size=window, sinks=sinks, return_softmax_lse=True)
    elapsed = time.perf_counter() - start
    ref_out, ref_lse = attention_ref(q, k, v, causal=True, window_size=window, sinks=sinks)
    ok = True
    for name, got, expected in (("out", out, ref_out), ("lse", lse, ref_lse)):
        error = relative_error(got, expected)
        ok &= error <= tolerance_for(dtype)
        print(f"prefill {name}: {tuple(got.shape)}, ||got - ref|| / ||ref|| = {error:.2e} "
              f"(float64 reference, tolerance {tolerance_for(dtype):.0e})")
    print(f"prefill took {elapsed * 1e3:.1f} ms (first call includes compilation)")
    plan = tile_plan(seqlen, seqlen, window, block_m=64, block_n=64)
    print(f"n_offset tiling, last tile of 64 queries: {plan[-1]!r}")

    # One decode step from a paged cache (16-token pages in shuffled order), appending the new token's k/v.
    page_size, context = 16, seqlen
    pages_per_seq = (context + 1 + page_size - 1) // page_size
    num_pages = batch * pages_per_seq
    k_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.randperm(num_pages, device=device).view(batch, pages_per_seq).to(torch.int32)
    cache_seqlens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q1 = torch.randn(batch, 1, heads, head_dim, device=device, dtype=dtype)
    k1 = torch.randn(batch, 1, kv_heads, head_dim, device=device, dtype=dtype)
    v1 = torch.randn_like(k1)
    out1 = swattn.flash_attn_with_kvcache(q1, k_cache, v_cache, k=k1, v=v1, cache_seqlens=cache_seqlens,
                                          page_table=page_table, causal=True, window_size=window, sinks=sinks)
    ref1, _ = attention_kvcache_ref(q1, k_cache, v_cache, cache_seqlens + 1, page_table=page_table, causal=True,
                                    window_size=window, sinks=sinks)
    error = relative_error(out1, ref1)
    ok &= error <= tolerance_for(dtype)
    print(f"decode step (paged, page_size {page_size}, context {context} + 1 appended): "
          f"||got - ref|| / ||ref|| = {error:.2e}; reads {sliding_window} keys per sequence, not {context + 1}")
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
