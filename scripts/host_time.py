"""Host (Python) time of one eager swattn call, with every kernel launch replaced by a no-op: what swattn's own
argument checks, heuristics and launch preparation cost per call, on any machine (Triton's launcher is not
included; on the GPU machine it adds its own share). Times are the best of 15 batches of 200 calls.

    python scripts/host_time.py                # gpt-oss decode with append (paged) and a W(127,0) prefill
    python scripts/host_time.py --profile      # also cProfile each, sorted by own time
    PYTHONPATH=/path/to/other/checkout python scripts/host_time.py   # compare with another version
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path (whose launches are stubbed below)

import torch  # noqa: E402

import swattn  # noqa: E402
from swattn.kernels import append, combine, fwd  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    fwd._swa_fwd_kernel = append._append_kv_kernel = combine._swa_combine_kernel = _NoLaunch()
    batch, heads, kv_heads, head_dim, page_size, capacity = 16, 64, 8, 64, 16, 4096
    k_cache = torch.randn(batch * capacity // page_size, page_size, kv_heads, head_dim, dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.arange(batch * capacity // page_size, dtype=torch.int32).view(batch, -1)
    seqlens = torch.full((batch,), 1000, dtype=torch.int32)
    q = torch.randn(batch, 1, heads, head_dim, dtype=torch.float16)
    k_new, v_new = (torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.float16) for _ in range(2))
    sinks = torch.randn(heads, dtype=torch.bfloat16)
    q_prefill = torch.randn(1, 2048, heads, head_dim, dtype=torch.float16)
    k_prefill, v_prefill = (torch.randn(1, 2048, kv_heads, head_dim, dtype=torch.float16) for _ in range(2))

    def decode():
        # check_inputs=False: as on GPU tensors, where the data checks are off by default (they synchronise).
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                              page_table=page_table, causal=True, window_size=(127, 0), sinks=sinks,
                                              check_inputs=False)

    def prefill():
        return swattn.flash_attn_func(q_prefill, k_prefill, v_prefill, causal=True, window_size=(127, 0),
                                      sinks=sinks)

    for name, fn in (("decode with append, paged", decode), ("prefill W(127,0)", prefill)):
        for _ in range(50):
            fn()
        best = float("inf")
        for _ in range(15):
            start = time.perf_counter()
            for _ in range(200):
                fn()
            best = min(best, (time.perf_counter() - start) / 200 * 1e6)
        print(f"{name}: {best:.1f} us per call (launches stubbed)", flush=True)
        if "--profile" in sys.argv:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(2000):
                fn()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
