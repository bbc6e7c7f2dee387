"""The reduced set of kernel launches that scripts/sanitize.sh runs under compute-sanitizer (memcheck, racecheck).

Every launch is one the library makes for a caller: dense, varlen and KV-cache forwards, split-KV with its
combine, appends, and the backward. The inputs are the ones where an out-of-bounds access would hide: page-table
entries before the window that hold indices far outside the pool (a read of one is an invalid global read),
windows that start on and one off page and block boundaries, empty sequences and caches, and sequences that fill
their cache to the last slot. Sizes are small (the sanitizer runs kernels 10-100x slower) but above the real block
shapes, so every code path (masked head, interior, tail blocks) runs. Each result is also checked against the
reference, so the run proves the launches did their work.

Run as ``python scripts/sanitize_cases.py`` (prints one line per case and exits non-zero on a mismatch).
"""

from __future__ import annotations

import sys

import torch

import swattn
from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref
from swattn.testing import relative_error, tolerance_for
from swattn.window import first_visible_key

DEVICE, DTYPE = "cuda", torch.bfloat16
GARBAGE_PAGE = 2**30  # far outside any pool: following it is an invalid global read
failures: list[str] = []


def report(name: str, out: torch.Tensor, ref: torch.Tensor, tolerance: float | None = None) -> None:
    error = relative_error(out.float(), ref.float())
    ok = error <= (tolerance or tolerance_for(DTYPE))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {error:.2e}", flush=True)
    if not ok:
        failures.append(name)


def randn(*shape, dtype=DTYPE):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def dense_cases() -> None:
    for seqlen_q, seqlen_k, heads, kv_heads, head_dim, window_size in [
        (300, 300, 8, 2, 64, (127, 0)), (130, 200, 4, 4, 128, (-1, 0)), (200, 130, 4, 1, 256, (63, 5)),
        (257, 257, 16, 2, 96, (0, 0)), (1, 1, 8, 8, 64, (-1, -1)),
    ]:
        q, k, v = randn(2, seqlen_q, heads, head_dim), randn(2, seqlen_k, kv_heads, head_dim), randn(
            2, seqlen_k, kv_heads, head_dim)
        sinks = torch.randn(heads, device=DEVICE)
        out = swattn.flash_attn_func(q, k, v, window_size=window_size, sinks=sinks, softcap=30.0)
        ref, _ = attention_ref(q, k, v, window_size=window_size, sinks=sinks, softcap=30.0,
                               compute_dtype=torch.float32)
        report(f"dense Sq={seqlen_q} Sk={seqlen_k} H={heads}/{kv_heads} D={head_dim} W={window_size}", out, ref)


def varlen_cases() -> None:
    lengths = [0, 129, 1, 0, 300]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    q, k, v = randn(int(cu[-1]), 8, 64), randn(int(cu[-1]), 2, 64), randn(int(cu[-1]), 2, 64)
    for window_size in [(127, 0), (-1, 0)]:
        out = swattn.flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), window_size=window_size)
        ref, _ = attention_varlen_ref(q, k, v, cu, cu, window_size=window_size, compute_dtype=torch.float32)
        report(f"varlen with empty sequences W={window_size}", out, ref)


def paged_cases() -> None:
    heads, kv_heads, head_dim, left = 16, 2, 64, 127
    for page_size in [1, 16, 64]:
        pages_per_seq = -(-1024 // page_size)
        # Sequence lengths: empty, window start on a page/block boundary, one off, the whole cache.
        seqlens = torch.tensor([0, 256, 257, 1024 - 2], device=DEVICE, dtype=torch.int32)
        batch = seqlens.numel()
        k_cache = randn(batch * pages_per_seq, page_size, kv_heads, head_dim)
        v_cache = randn(batch * pages_per_seq, page_size, kv_heads, head_dim)
        page_table = torch.randperm(batch * pages_per_seq, device=DEVICE, dtype=torch.int32).view(batch, -1)
        q = randn(batch, 2, heads, head_dim)
        k_new, v_new = randn(batch, 2, kv_heads, head_dim), randn(batch, 2, kv_heads, head_dim)
        sinks = torch.randn(heads, device=DEVICE)
        for num_splits in [1, 3]:
            k_run, v_run, table = k_cache.clone(), v_cache.clone(), page_table.clone()
            # Pages wholly before each sequence's window (after the append) point far outside the pool.
            for b, length in enumerate((seqlens + 2).tolist()):
                table[b, :first_visible_key(0, 2, length, left) // page_size] = GARBAGE_PAGE
            out = swattn.flash_attn_with_kvcache(q, k_run, v_run, k=k_new, v=v_new, cache_seqlens=seqlens,
                                                 page_table=table, causal=True, window_size=(left, 0), sinks=sinks,
                                                 num_splits=num_splits)
            # The reference reads the cache through the intact table (appended rows included).
            ref, _ = attention_kvcache_ref(q, k_run, v_run, seqlens + 2, page_table=page_table, causal=True,
                                           window_size=(left, 0), sinks=sinks, compute_dtype=torch.float32)
            report(f"paged page={page_size} splits={num_splits} garbage pages before the window", out, ref)
        out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=page_table,
                                             causal=True, num_splits=4)
        ref, _ = attention_kvcache_ref(q, k_cache, v_cache, seqlens, page_table=page_table, causal=True,
                                       compute_dtype=torch.float32)
        report(f"paged page={page_size} full attention split-KV", out, ref)


def contiguous_cases() -> None:
    k_cache, v_cache = randn(3, 500, 2, 128), randn(3, 500, 2, 128)
    seqlens = torch.tensor([500, 0, 137], device=DEVICE, dtype=torch.int32)
    cache_batch_idx = torch.tensor([2, 0, 1], device=DEVICE, dtype=torch.int32)
    q = randn(3, 1, 16, 128)
    for window_size in [(63, 0), (-1, 0)]:
        out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                             cache_batch_idx=cache_batch_idx, causal=True, window_size=window_size)
        ref, _ = attention_kvcache_ref(q, k_cache, v_cache, seqlens, cache_batch_idx=cache_batch_idx, causal=True,
                                       window_size=window_size, compute_dtype=torch.float32)
        report(f"contiguous cache, full and empty rows W={window_size}", out, ref)


def varlen_append_cases() -> None:
    # Varlen extend with new k/v and 7 padding rows past cu_seqlens_q[-1] (a captured graph's fixed size), into a
    # paged cache of page size 16 and into a contiguous one addressed through cache_batch_idx.
    heads, kv_heads, head_dim, padding = 16, 2, 64, 7
    lengths = [3, 0, 5, 1]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    total = int(cu[-1])
    seqlens = torch.tensor([100, 7, 0, 1023 - 1], device=DEVICE, dtype=torch.int32)
    q = randn(total + padding, heads, head_dim)
    k_new, v_new = randn(total + padding, kv_heads, head_dim), randn(total + padding, kv_heads, head_dim)
    pages = 1024 // 16
    paged = dict(page_table=torch.randperm(4 * pages, device=DEVICE, dtype=torch.int32).view(4, pages))
    contiguous = dict(cache_batch_idx=torch.tensor([3, 1, 0, 2], device=DEVICE, dtype=torch.int32))
    for name, layout, shape in [("paged", paged, (4 * pages, 16)), ("contiguous", contiguous, (4, 1024))]:
        k_cache, v_cache = randn(*shape, kv_heads, head_dim), randn(*shape, kv_heads, head_dim)
        out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                             cu_seqlens_q=cu, max_seqlen_q=max(lengths), causal=True,
                                             window_size=(127, 0), **layout)
        ref, _ = attention_kvcache_ref(q[:total], k_cache, v_cache, seqlens + cu.diff(), cu_seqlens_q=cu,
                                       causal=True, window_size=(127, 0), compute_dtype=torch.float32, **layout)
        report(f"varlen append {name} with {padding} padding rows", out[:total], ref)


def non_finite_cases() -> None:
    # A NaN value row makes the main pass flag its tile and the second launch redo it (guarded loop): the rows
    # that see it (150..213 of KV head 1's query heads 4..7) hold NaN, every other row is bitwise the clean run.
    q, k, v = randn(1, 300, 8, 64), randn(1, 300, 2, 64), randn(1, 300, 2, 64)
    clean = swattn.flash_attn_func(q, k, v, window_size=(63, 0))
    v[0, 150, 1, 3] = float("nan")
    out = swattn.flash_attn_func(q, k, v, window_size=(63, 0))
    seeing = torch.zeros(300, 8, dtype=torch.bool, device=DEVICE)
    seeing[150:214, 4:] = True
    exact = torch.equal(torch.isnan(out[0]).any(-1), seeing) and torch.equal(out[0][~seeing], clean[0][~seeing])
    print(f"{'ok  ' if exact else 'FAIL'} NaN value row: exactly the rows that see it", flush=True)
    if not exact:
        failures.append("NaN value row")


def backward_cases() -> None:
    for seqlen, head_dim, window_size in [(300, 64, (127, 0)), (200, 128, (-1, 0)), (150, 256, (31, 31))]:
        tensors = [randn(1, seqlen, h, head_dim) for h in (8, 2, 2)]
        sinks = torch.randn(8, device=DEVICE)
        leaves = [t.detach().requires_grad_() for t in tensors] + [sinks.clone().requires_grad_()]
        out = swattn.flash_attn_func(*leaves[:3], window_size=window_size, sinks=leaves[3])
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)
        ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
        ref_out, _ = attention_ref(*ref_leaves[:3], window_size=window_size, sinks=ref_leaves[3],
                                   compute_dtype=torch.float32)
        ref_grads = torch.autograd.grad(ref_out, ref_leaves, dout.float())
        for name, grad, ref_grad in zip(("dq", "dk", "dv", "dsinks"), grads, ref_grads):
            report(f"backward S={seqlen} D={head_dim} W={window_size} {name}", grad, ref_grad, 3e-2)
    lengths = [0, 200, 1]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    tensors = [randn(int(cu[-1]), h, 64) for h in (4, 2, 2)]
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = swattn.flash_attn_varlen_func(*leaves, cu, cu, max(lengths), max(lengths), causal=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().float().requires_grad_() for t in tensors]
    ref_out, _ = attention_varlen_ref(*ref_leaves, cu, cu, causal=True, compute_dtype=torch.float32)
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref_out, ref_leaves, dout.float())):
        report(f"backward varlen with empty sequences {name}", grad, ref_grad, 3e-2)


def main() -> int:
    torch.manual_seed(0)
    for group in (dense_cases, varlen_cases, paged_cases, varlen_append_cases, contiguous_cases,
                  non_finite_cases, backward_cases):
        group()
    torch.cuda.synchronize()
    print(f"{len(failures)} mismatches" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
