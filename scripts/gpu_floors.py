"""Floors of the two decode targets that issue 3 still misses, measured with kernels that do only the data movement.

- ``chain``: a window-(127, 0) gpt-oss decode step (B=16, Hk=8, D=64, page 16 or 1) with the attention math taken
  out: per (sequence, KV head) program, read the sequence length, the 128 page-table entries of its window, the
  128 x 64 K and V tiles through them and the 8 query heads, and write 8 rows. Graph-replayed over 60 input sets
  exactly as ``python -m swattn.bench decode`` times swattn. An empty kernel (same grid) is timed too: what a
  graph-replayed launch costs here before any memory is touched.
- ``stream``: full-attention decode of B=4 at 16K (134 MB of K/V, page 16): the same split-KV grid as swattn's
  (24 splits of 683 keys), each program streaming its keys' K and V through a pipelined loop and writing one
  partial row per query head, without the math; with and without a second (combine-like) launch. This is what one
  Triton launch over these bytes reaches, against the copy bandwidth.
- ``stream8``: the same read-only stream for the e4m3 cache of issue 22 (full decode B=16 16K, 6 splits): bf16 and
  e4m3 in FA3's [pages, page, Hk, D] layout (an e4m3 row of one KV head is 64 B, half an L2 line, at a 512-B
  stride), e4m3 over head-major memory (a KV head's page 1 KB contiguous), and e4m3 read two KV heads per program
  (128 contiguous bytes per token row). Whether the layout, not the attention kernel, holds e4m3 back.
- ``stream8w``: ``stream8`` through 32-bit words (the caches viewed as int32: four e4m3 or two bf16 values per
  word), so both dtypes cost the kernel the same instructions per byte: ``stream8``'s e4m3 rows widened every byte to
  fp32 (two conversions per value where bf16 takes a shift), which may have bound that stream by instructions, not
  memory. Whether FA3's layout (64-B e4m3 rows at a 512-B stride) or the kernel's instructions hold e4m3 back.
Run: ``python scripts/gpu_floors.py [chain] [stream] [stream8] [stream8w]``.
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl
from gpu_probe import graph_calls_us as graph_us  # scripts/ is on sys.path when this file runs

import swattn

DEVICE, DTYPE = "cuda", torch.bfloat16
KV_HEADS, GROUP, HEAD_DIM = 8, 8, 64


@triton.jit
def _empty_kernel(X):
    pass


@triton.jit
def _window_chain_kernel(Q, K, V, O, SEQLENS, TABLE, stride_table, stride_kp, stride_ks, stride_kh,
                         PAGE: tl.constexpr, WINDOW: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr):
    """The loads and the store of one W(WINDOW-1, 0) decode program, no softmax: out = q + colsum(K) + colsum(V)."""
    batch = tl.program_id(0)
    kv_head = tl.program_id(1)
    seqlen = tl.load(SEQLENS + batch)
    keys = seqlen - WINDOW + tl.arange(0, WINDOW)
    visible = keys >= 0
    page = tl.load(TABLE + batch * stride_table + keys // PAGE, mask=visible, other=0).to(tl.int64)
    rows = page * stride_kp + (keys % PAGE) * stride_ks + kv_head * stride_kh
    offs_d = tl.arange(0, D)
    v = tl.load(V + rows[:, None] + offs_d[None, :], mask=visible[:, None], other=0.0)
    k = tl.load(K + rows[:, None] + offs_d[None, :], mask=visible[:, None], other=0.0)
    heads = kv_head * GROUP + tl.arange(0, GROUP)
    q = tl.load(Q + (batch * GROUP * tl.num_programs(1) + heads)[:, None] * D + offs_d[None, :])
    out = q.to(tl.float32) + tl.sum(k.to(tl.float32), 0)[None, :] + tl.sum(v.to(tl.float32), 0)[None, :]
    tl.store(O + (batch * GROUP * tl.num_programs(1) + heads)[:, None] * D + offs_d[None, :],
             out.to(O.dtype.element_ty))


@triton.jit
def _stream_kernel(K, V, PARTIAL, SEQLENS, TABLE, stride_table, stride_kp, stride_ks, stride_kh, keys_per_split,
                   PAGE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One split of one (sequence, KV head): stream its keys' K and V through a pipelined loop, write a partial."""
    batch = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seqlen = tl.load(SEQLENS + batch)
    begin = split * keys_per_split
    end = tl.minimum(begin + keys_per_split, seqlen)
    offs_d = tl.arange(0, D)
    acc = tl.zeros([D], dtype=tl.float32)
    for start in range(begin, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        inside = keys < end
        page = tl.load(TABLE + batch * stride_table + keys // PAGE, mask=inside, other=0).to(tl.int64)
        rows = page * stride_kp + (keys % PAGE) * stride_ks + kv_head * stride_kh
        v = tl.load(V + rows[:, None] + offs_d[None, :], mask=inside[:, None], other=0.0)
        k = tl.load(K + rows[:, None] + offs_d[None, :], mask=inside[:, None], other=0.0)
        acc += tl.sum(k.to(tl.float32) + v.to(tl.float32), 0)
    part = (batch * tl.num_programs(1) + kv_head) * tl.num_programs(2) + split
    tl.store(PARTIAL + part * D + offs_d, acc)


@triton.jit
def _stream_pairs_kernel(K, V, PARTIAL, SEQLENS, TABLE, stride_table, stride_kp, stride_ks, stride_kh,
                         keys_per_split, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """``_stream_kernel`` for KV heads 2p and 2p + 1 together: each token row is 2 * D contiguous elements."""
    batch = tl.program_id(0)
    pair = tl.program_id(1)
    split = tl.program_id(2)
    seqlen = tl.load(SEQLENS + batch)
    begin = split * keys_per_split
    end = tl.minimum(begin + keys_per_split, seqlen)
    offs_d = tl.arange(0, 2 * D)
    acc = tl.zeros([2 * D], dtype=tl.float32)
    for start in range(begin, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        inside = keys < end
        page = tl.load(TABLE + batch * stride_table + keys // PAGE, mask=inside, other=0).to(tl.int64)
        rows = page * stride_kp + (keys % PAGE) * stride_ks + 2 * pair * stride_kh
        v = tl.load(V + rows[:, None] + offs_d[None, :], mask=inside[:, None], other=0.0)
        k = tl.load(K + rows[:, None] + offs_d[None, :], mask=inside[:, None], other=0.0)
        acc += tl.sum(k.to(tl.float32) + v.to(tl.float32), 0)
    part = (batch * tl.num_programs(1) + pair) * tl.num_programs(2) + split
    tl.store(PARTIAL + part * 2 * D + offs_d, acc)


@triton.jit
def _stream_words_kernel(K, V, PARTIAL, SEQLENS, TABLE, stride_table, stride_kp, stride_ks, stride_kh,
                         keys_per_split, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, WORDS: tl.constexpr,
                         HEADS: tl.constexpr):
    """``_stream_kernel`` over 32-bit words: ``HEADS`` (1 or 2) adjacent KV heads' rows of ``WORDS`` words each."""
    batch = tl.program_id(0)
    group = tl.program_id(1)
    split = tl.program_id(2)
    seqlen = tl.load(SEQLENS + batch)
    begin = split * keys_per_split
    end = tl.minimum(begin + keys_per_split, seqlen)
    offs_w = tl.arange(0, HEADS * WORDS)
    acc = tl.zeros([HEADS * WORDS], dtype=tl.int32)
    for start in range(begin, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        inside = keys < end
        page = tl.load(TABLE + batch * stride_table + keys // PAGE, mask=inside, other=0).to(tl.int64)
        rows = page * stride_kp + (keys % PAGE) * stride_ks + HEADS * group * stride_kh
        v = tl.load(V + rows[:, None] + offs_w[None, :], mask=inside[:, None], other=0)
        k = tl.load(K + rows[:, None] + offs_w[None, :], mask=inside[:, None], other=0)
        acc ^= tl.xor_sum(k ^ v, 0)
    part = (batch * tl.num_programs(1) + group) * tl.num_programs(2) + split
    tl.store(PARTIAL + part * HEADS * WORDS + offs_w, acc)


@triton.jit
def _merge_kernel(PARTIAL, OUT, splits, BLOCK_S: tl.constexpr, D: tl.constexpr):
    row = tl.program_id(0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    part = tl.load(PARTIAL + (row * splits + offs_s)[:, None] * D + offs_d[None, :], mask=(offs_s < splits)[:, None],
                   other=0.0)
    tl.store(OUT + row * D + offs_d, tl.sum(part, 0))


def paged_cache(batch: int, context: int, page: int, sets: int):
    """``sets`` page tables over one pool (random page order), as the benchmark rotates its input sets."""
    pages_per_seq = -(-context // page)
    pool_pages = batch * pages_per_seq * sets
    k_pool = torch.randn(pool_pages, page, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    v_pool = torch.randn_like(k_pool)
    order = torch.randperm(pool_pages, device=DEVICE, dtype=torch.int32).view(sets, batch, pages_per_seq)
    seqlens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    return k_pool, v_pool, list(order.unbind(0)), seqlens


def chain() -> None:
    batch, context, sets = 16, 1024, 60
    heads = KV_HEADS * GROUP
    for page in (16, 1):
        k_pool, v_pool, tables, seqlens = paged_cache(batch, context, page, sets)
        qs = [torch.randn(batch, 1, heads, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(sets)]
        out = torch.empty(batch, 1, heads, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        sinks = torch.randn(heads, device=DEVICE)

        def data_only(r):
            return lambda: _window_chain_kernel[(batch, KV_HEADS)](
                qs[r], k_pool, v_pool, out, seqlens, tables[r], tables[r].stride(0), *k_pool.stride()[:3],
                PAGE=page, WINDOW=128, GROUP=GROUP, D=HEAD_DIM, num_warps=4)

        def attention(r):
            return lambda: swattn.flash_attn_with_kvcache(qs[r], k_pool, v_pool, cache_seqlens=seqlens,
                                                          page_table=tables[r], window_size=(127, 0), sinks=sinks)

        empty = graph_us([lambda: _empty_kernel[(batch, KV_HEADS)](out)], repeat=60)
        loads = graph_us([data_only(r) for r in range(sets)])
        full = graph_us([attention(r) for r in range(sets)])
        print(f"W(127,0) decode B={batch} page {page}, graph over {sets} input sets: empty kernel {empty:.2f} us, "
              f"loads + store only {loads:.2f} us, swattn {full:.2f} us", flush=True)
        k_pool = v_pool = tables = None
        torch.cuda.empty_cache()


def stream() -> None:
    batch, context, page = 4, 16384, 16
    nbytes = 1 << 30
    src, dst = (torch.empty(nbytes, device=DEVICE, dtype=torch.uint8) for _ in range(2))
    copy_gbs = 2 * nbytes / (triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e3) / 1e3
    src = dst = None
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * 2
    sets = 8
    k_pool, v_pool, tables, seqlens = paged_cache(batch, context, page, sets)
    heads = KV_HEADS * GROUP
    qs = [torch.randn(batch, 1, heads, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(sets)]
    sinks = torch.randn(heads, device=DEVICE)
    print(f"full decode B={batch} {context // 1024}K page {page}: {kv_bytes / 1e6:.0f} MB of K/V; copy "
          f"{copy_gbs:.0f} GB/s; floor {kv_bytes / copy_gbs / 1e3:.1f} us; (us, % of copy)", flush=True)

    def report(label: str, us: float) -> None:
        print(f"  {label:58s} {us:8.1f} {kv_bytes / us / 1e3 / copy_gbs:6.0%}", flush=True)

    report("swattn (automatic splits)", graph_us([
        (lambda r=r: swattn.flash_attn_with_kvcache(qs[r], k_pool, v_pool, cache_seqlens=seqlens,
                                                    page_table=tables[r], causal=True, sinks=sinks))
        for r in range(sets)]))
    for splits, block_n, warps, stages in [(24, 64, 2, 3), (24, 64, 4, 4), (24, 128, 4, 3), (48, 64, 2, 3),
                                           (12, 64, 2, 4), (32, 64, 2, 3)]:
        keys_per_split = -(-context // splits)
        partial = torch.empty(batch * KV_HEADS * splits, HEAD_DIM, device=DEVICE, dtype=torch.float32)
        merged = torch.empty(batch * KV_HEADS, HEAD_DIM, device=DEVICE, dtype=torch.float32)

        def read(r, splits=splits, block_n=block_n, warps=warps, stages=stages, kps=keys_per_split, partial=partial):
            return lambda: _stream_kernel[(batch, KV_HEADS, splits)](
                k_pool, v_pool, partial, seqlens, tables[r], tables[r].stride(0), *k_pool.stride()[:3], kps,
                PAGE=page, BLOCK_N=block_n, D=HEAD_DIM, num_warps=warps, num_stages=stages)

        def merge(splits=splits, partial=partial, merged=merged):
            return lambda: _merge_kernel[(batch * KV_HEADS,)](partial, merged, splits,
                                                               BLOCK_S=triton.next_power_of_2(splits), D=HEAD_DIM)

        label = f"read only: {splits} splits, {block_n} keys, {warps} warps, {stages} stages"
        report(label, graph_us([read(r) for r in range(sets)]))
        calls = []
        for r in range(sets):
            calls += [read(r), merge()]
        report(label + " + merge launch", graph_us(calls) * 2)


def stream8() -> None:
    batch, context, page, splits, sets = 16, 16384, 16, 6, 4
    nbytes = 1 << 30
    src, dst = (torch.empty(nbytes, device=DEVICE, dtype=torch.uint8) for _ in range(2))
    copy_gbs = 2 * nbytes / (triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e3) / 1e3
    src = dst = None
    k_pool, v_pool, tables, seqlens = paged_cache(batch, context, page, sets)
    e4m3 = [(pool / 8).to(torch.float8_e4m3fn) for pool in (k_pool, v_pool)]
    head_major = [pool.transpose(1, 2).contiguous().transpose(1, 2) for pool in e4m3]
    print(f"read-only stream, full decode B={batch} {context // 1024}K page {page}, {splits} splits; copy "
          f"{copy_gbs:.0f} GB/s; (us, GB/s, % of copy on the bytes read)", flush=True)

    def run(label, kernel, pools, heads_per_program, block_n, warps, stages, splits=splits):
        keys_per_split = -(-context // splits)
        kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * pools[0].element_size()
        programs = KV_HEADS // heads_per_program
        partial = torch.empty(batch * programs * splits, heads_per_program * HEAD_DIM, device=DEVICE,
                              dtype=torch.float32)

        def read(r):
            return lambda: kernel[(batch, programs, splits)](
                pools[0], pools[1], partial, seqlens, tables[r], tables[r].stride(0), *pools[0].stride()[:3],
                keys_per_split, PAGE=page, BLOCK_N=block_n, D=HEAD_DIM, num_warps=warps, num_stages=stages)

        try:
            us = graph_us([read(r) for r in range(sets)])
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {label:60s} {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            return
        print(f"  {label:60s} {us:8.1f} {kv_bytes / us / 1e3:7.0f} {kv_bytes / us / 1e3 / copy_gbs:6.0%}", flush=True)

    run("bf16, FA3 layout (64 keys, 2 warps, 3 stages)", _stream_kernel, (k_pool, v_pool), 1, 64, 2, 3)
    run("e4m3, FA3 layout (64, 2, 3)", _stream_kernel, e4m3, 1, 64, 2, 3)
    run("e4m3, head-major memory (64, 2, 3)", _stream_kernel, head_major, 1, 64, 2, 3)
    run("e4m3, two KV heads per program (64, 2, 3), 12 splits", _stream_pairs_kernel, e4m3, 2, 64, 2, 3, 12)
    run("e4m3, FA3 layout (128, 4, 3)", _stream_kernel, e4m3, 1, 128, 4, 3)
    run("e4m3, FA3 layout (64, 2, 5)", _stream_kernel, e4m3, 1, 64, 2, 5)


def stream8w() -> None:
    batch, context, page, splits, sets = 16, 16384, 16, 6, 4
    nbytes = 1 << 30
    src, dst = (torch.empty(nbytes, device=DEVICE, dtype=torch.uint8) for _ in range(2))
    copy_gbs = 2 * nbytes / (triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e3) / 1e3
    src = dst = None
    k_pool, v_pool, tables, seqlens = paged_cache(batch, context, page, sets)
    e4m3 = [(pool / 8).to(torch.float8_e4m3fn) for pool in (k_pool, v_pool)]
    head_major = [pool.transpose(1, 2).contiguous().transpose(1, 2) for pool in e4m3]
    print(f"read-only stream in 32-bit words, full decode B={batch} {context // 1024}K page {page}; copy "
          f"{copy_gbs:.0f} GB/s; (us, GB/s, % of copy on the bytes read)", flush=True)

    def words(pool):  # [pages, page, Hk, D] of any strides -> the same memory as int32 words along D
        return pool.view(torch.int32) if pool.is_contiguous() else (
            pool.transpose(1, 2).view(torch.int32).transpose(1, 2))

    def run(label, pools, heads, block_n, warps, stages, splits):
        pools = [words(p) for p in pools]
        kv_bytes = batch * context * KV_HEADS * 2 * pools[0].shape[-1] * 4
        wpr = pools[0].shape[-1]
        keys_per_split = -(-context // splits)
        programs = KV_HEADS // heads
        partial = torch.empty(batch * programs * splits, heads * wpr, device=DEVICE, dtype=torch.int32)

        def read(r):
            return lambda: _stream_words_kernel[(batch, programs, splits)](
                pools[0], pools[1], partial, seqlens, tables[r], tables[r].stride(0), *pools[0].stride()[:3],
                keys_per_split, PAGE=page, BLOCK_N=block_n, WORDS=wpr, HEADS=heads, num_warps=warps,
                num_stages=stages)

        try:
            us = graph_us([read(r) for r in range(sets)])
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {label:60s} {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            return
        print(f"  {label:60s} {us:8.1f} {kv_bytes / us / 1e3:7.0f} {kv_bytes / us / 1e3 / copy_gbs:6.0%}", flush=True)

    run("bf16, FA3 layout (64 keys, 2 warps), 6 splits", (k_pool, v_pool), 1, 64, 2, 3, splits)
    run("e4m3, FA3 layout (64, 2), 6 splits", e4m3, 1, 64, 2, 3, splits)
    run("e4m3, two KV heads per program (64, 2), 12 splits", e4m3, 2, 64, 2, 3, 2 * splits)
    run("e4m3, head-major memory (64, 2), 6 splits", head_major, 1, 64, 2, 3, splits)
    run("e4m3, FA3 layout (128, 4), 6 splits", e4m3, 1, 128, 4, 3, splits)
    run("e4m3, two KV heads per program (128, 4), 12 splits", e4m3, 2, 128, 4, 3, 2 * splits)
    run("e4m3, FA3 layout (128, 2), 6 splits", e4m3, 1, 128, 2, 3, splits)


if __name__ == "__main__":
    for section in sys.argv[1:] or ["chain", "stream"]:
        {"chain": chain, "stream": stream, "stream8": stream8, "stream8w": stream8w}[section]()
