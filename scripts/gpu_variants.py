"""On the GPU: what the non-finite isolation pass and the appending decode cost (swattn only, bf16).

Prefill targets by ``triton.testing.do_bench`` (median, L2 cleared), isolation on and off (the module flag is read
per call); a gpt-oss decode layer (B=16, H=64/8, D=64, window (127, 0), sinks, page 16, 1K context) and a 4-token
verify by CUDA-graph replay of 20 calls over 8 rotating page tables, with and without appending new k/v.
Every variant is checked against the reference first. Run: ``python scripts/gpu_variants.py``.
"""

from __future__ import annotations

import torch
import triton

import swattn
from swattn.kernels import fwd
from swattn.reference import attention_kvcache_ref, attention_ref
from swattn.testing import relative_error

DEVICE, DTYPE = "cuda", torch.bfloat16


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    error = relative_error(out.float(), ref.float())
    assert error < 2e-2, f"{name}: rel err {error:.2e}"


def prefill(isolate: bool) -> list[str]:
    fwd.ISOLATE_NON_FINITE = isolate
    rows = []
    for seqlen, head_dim, heads, window in [(16384, 64, 64, (127, 0)), (16384, 128, 32, (4095, 0)),
                                            (16384, 128, 32, (-1, 0))]:
        q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=DTYPE)
        k, v = (torch.randn(1, seqlen, 8, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(2))
        out = swattn.flash_attn_func(q, k, v, window_size=window, causal=True)
        # The dense reference of all 16K queries is too large: check the last 512 (bottom-right aligned).
        tail = 512
        ref = attention_ref(q[:, -tail:], k, v, window_size=window, causal=True, compute_dtype=torch.float32)[0]
        check("prefill tail", out[:, -tail:], ref)
        us = triton.testing.do_bench(lambda: swattn.flash_attn_func(q, k, v, window_size=window, causal=True),
                                     warmup=50, rep=300) * 1e3
        rows.append(f"| prefill S={seqlen} D={head_dim} W={window} | isolate={int(isolate)} | {us:.1f} |")
    return rows


def decode(isolate: bool, seqlen_q: int, append: bool) -> str:
    fwd.ISOLATE_NON_FINITE = isolate
    batch, heads, kv_heads, head_dim, page_size, context = 16, 64, 8, 64, 16, 1024
    pages = (context + 64) // page_size
    k_cache = torch.randn(batch * pages * 8, page_size, kv_heads, head_dim, device=DEVICE, dtype=DTYPE)
    v_cache = torch.randn_like(k_cache)
    tables = [torch.randperm(k_cache.shape[0], device=DEVICE, dtype=torch.int32)[:batch * pages].view(batch, -1)
              for _ in range(8)]
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE, dtype=DTYPE)
    k_new, v_new = (torch.randn(batch, seqlen_q, kv_heads, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(2))
    sinks = torch.randn(heads, device=DEVICE)
    seqlens = torch.full((batch,), context - seqlen_q, device=DEVICE, dtype=torch.int32)
    new = dict(k=k_new, v=v_new) if append else {}
    after = seqlens + (seqlen_q if append else 0)

    def call(table):
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=table,
                                             causal=True, window_size=(127, 0), sinks=sinks, **new)

    out = call(tables[0])
    ref = attention_kvcache_ref(q, k_cache, v_cache, after, page_table=tables[0], causal=True, window_size=(127, 0),
                                sinks=sinks, compute_dtype=torch.float32)[0]
    check("decode", out, ref)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for table in tables:
            call(table)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    calls = 20
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(tables[i % len(tables)])
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    times.sort()
    return (f"| decode Sq={seqlen_q} append={int(append)} B=16 ctx=1K page 16 W(127,0) | isolate={int(isolate)} | "
            f"{times[len(times) // 2]:.2f} |")


def main() -> None:
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print("| workload | variant | us (median) |\n|---|---|---|")
    for isolate in (False, True):
        for row in prefill(isolate):
            print(row, flush=True)
    for seqlen_q, append in [(1, False), (1, True), (4, False), (4, True)]:
        for isolate in (False, True):
            print(decode(isolate, seqlen_q, append), flush=True)


if __name__ == "__main__":
    main()
