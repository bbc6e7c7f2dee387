"""Decode: one new query per sequence against a paged KV cache, gpt-oss-120b layer shapes (H=64, Hk=8, D=64, sinks).

Shapes: B=16, contexts 1K, 4K, 16K, 64K, 128K (tokens in the cache, the new one included), window (127, 0) and full
causal, full also at B=4; pages of 16 and of 1 token in random order. Every call is timed by CUDA-graph replay (many
calls per graph); the ``swattn (eager)`` row times back-to-back launches without a graph, which shows what the host's
dispatch costs. Bytes counted: the K and V rows the window (or the whole context) holds, B * keys * Hk * D * 2 *
itemsize; GB/s over that, its share of the measured copy bandwidth and the floor in us.

Cold memory, as in a model step where 35 other layers run between two calls of one layer: the paged providers
(swattn, FA3, FA4) rotate through several page tables, each a random map into a pool of at least 4x L2, and the
contiguous-cache peers (FlexAttention, SDPA) through shifted views of one buffer where memory allows (rows that
stay L2-warm say so). FlexAttention and SDPA have no sinks and read a contiguous ``[B, Hk, S, D]`` cache; their
rows are measured once per (B, context, window) and repeated under the other page size.

Speculative verify (``python -m swattn.bench verify``): k = 1 (decode), 2, 4, 8 new queries per sequence, causal
among themselves, B=16, window (127,0) and full, the same cache and sinks. FA3 and FA4 verify as engines call them,
``flash_attn_with_kvcache``'s varlen entry with seqlen_q = k over a cache that already holds the k tokens; swattn
does the same (``swattn``) and, in ``swattn +append``, also writes the k tokens into the cache in the call (the
serving step; the tokens written are the ones already there, so every repeat computes the same output). The
``verify/decode`` column is each row's time over the same provider's k = 1 time on that shape.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

import swattn
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Row,
    Runner,
    Section,
    check_cell,
    compare_outputs,
    drop_unavailable,
    markdown_table,
    measure,
    pool_page_count,
    rate,
    ratio_cell,
    rotating,
    rotation_sets,
    speedup_summary,
    time_eager,
    time_graph,
)
from swattn.reference import attention_kvcache_ref
from swattn.window import visible_span

CONTEXTS = [1024, 4096, 16384, 65536, 131072]
PAGE_SIZES = [16, 1]
VERIFY_TOKENS = [1, 2, 4, 8]
VERIFY_CONTEXTS = [1024, 16384, 131072]


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    context: int
    page_size: int
    left: int  # window_size = (left, 0); -1 = full causal
    heads: int = 64
    kv_heads: int = 8
    head_dim: int = 64
    seqlen_q: int = 1  # new queries per sequence: 1 = decode, k = speculative verify of k tokens

    @property
    def label(self) -> str:
        verify = f" k={self.seqlen_q}" if self.seqlen_q > 1 else ""
        return f"B={self.batch} ctx={self.context} page={self.page_size}{verify}"

    @property
    def window(self) -> str:
        return f"({self.left},0)" if self.left >= 0 else "full"

    @property
    def keys(self) -> int:
        """Keys the new queries see together: the window's (and the other new tokens'), or the whole context."""
        return visible_span(0, self.seqlen_q - 1, self.seqlen_q, self.context, self.left, 0)[1]

    def kv_bytes(self, itemsize: int) -> float:
        return float(self.batch * self.keys * self.kv_heads * self.head_dim * 2 * itemsize)


def shapes(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None) -> list[DecodeShape]:
    if env.quick:
        heads = dict(heads=8, kv_heads=2, head_dim=32)
        layouts = [(2, 15), (2, -1), (1, -1)]
        contexts, page_sizes = contexts or [48, 200], page_sizes or PAGE_SIZES
    else:
        heads, layouts = {}, [(16, 127), (16, -1), (4, -1)]
        contexts, page_sizes = contexts or CONTEXTS, page_sizes or PAGE_SIZES
    return [DecodeShape(b, ctx, ps, left, **heads) for ps in page_sizes for ctx in contexts for b, left in layouts]


@dataclass
class DecodeCase:
    shape: DecodeShape
    q: list[torch.Tensor]  # per input set, [B, seqlen_q, H, D]
    k_pool: torch.Tensor  # [num_pages, page_size, Hk, D]
    v_pool: torch.Tensor
    tables: list[torch.Tensor]  # per input set, [B, pages_per_seq] int32
    cache_seqlens: torch.Tensor  # [B] int32, = context (the new tokens included)
    sinks: torch.Tensor  # [H] float32, bf16-representable (FA3 takes bf16)
    _references: dict = field(default_factory=dict, repr=False)
    _contiguous: tuple | None = field(default=None, repr=False)

    def reference(self, env: Env, with_sinks: bool) -> torch.Tensor:
        if with_sinks not in self._references:
            out, _ = attention_kvcache_ref(
                self.q[0].to(env.reference_dtype), self.k_pool, self.v_pool, self.cache_seqlens,
                page_table=self.tables[0], causal=True, window_size=(self.shape.left, 0),
                sinks=self.sinks if with_sinks else None, compute_dtype=env.reference_dtype)
            self._references[with_sinks] = out
        return self._references[with_sinks]

    def compare(self, env: Env, with_sinks: bool):
        return lambda out: compare_outputs(out, self.reference(env, with_sinks), env.dtype)

    def contiguous(self, env: Env) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], bool]:
        """Per input set: q ``[B, H, 1, D]`` and (k, v) ``[B, Hk, S, D]`` views of one buffer, each shifted past
        the keys the previous set reads; set 0 holds the same tokens as the paged cache under ``tables[0]``.
        Returns (qs, kvs, warm) with ``warm`` when the sets' bytes stay under 2x L2."""
        if self._contiguous is None:
            s, itemsize = self.shape, self.k_pool.element_size()
            shift = min(s.context, -(-(s.keys + 128) // 128) * 128)  # Flex reads whole 128-key blocks
            per_token = s.batch * s.kv_heads * s.head_dim * 2 * itemsize
            budget = max(8e9, per_token * s.context)
            sets = max(1, min(len(self.q), 1 + int((budget - per_token * s.context) // (per_token * shift))))
            length = s.context + (sets - 1) * shift
            buffers = []
            for pool in (self.k_pool, self.v_pool):
                buffer = torch.randn(s.batch, s.kv_heads, length, s.head_dim, device=pool.device, dtype=pool.dtype)
                pages = pool[self.tables[0].long()]  # [B, pages, page_size, Hk, D]
                tokens = pages.reshape(s.batch, -1, s.kv_heads, s.head_dim)[:, :s.context]
                buffer[:, :, :s.context].copy_(tokens.permute(0, 2, 1, 3))
                buffers.append(buffer)
                del pages, tokens
            kvs = [tuple(b[:, :, r * shift:r * shift + s.context] for b in buffers) for r in range(sets)]
            qs = [self.q[r].transpose(1, 2).contiguous() for r in range(sets)]
            warm = self.q[0].is_cuda and sets * s.kv_bytes(itemsize) < 2 * env.l2_bytes
            self._contiguous = (qs, kvs, warm)
        return self._contiguous


def setup_decode(shape: DecodeShape, env: Env, seed: int = 0) -> DecodeCase:
    """Random inputs, a random page order, and the input sets that keep repeated calls out of L2."""
    torch.manual_seed(seed)
    s, dev, dt = shape, env.device, env.dtype
    itemsize = torch.finfo(dt).bits // 8
    pages_per_seq = -(-s.context // s.page_size)
    logical = s.batch * pages_per_seq
    sets = rotation_sets(s.kv_bytes(itemsize), env)
    page_bytes = s.page_size * s.kv_heads * s.head_dim * 2 * itemsize
    pool_pages = pool_page_count(logical, page_bytes, sets, env)
    k_pool = torch.randn(pool_pages, s.page_size, s.kv_heads, s.head_dim, device=dev, dtype=dt)
    v_pool = torch.randn_like(k_pool)
    tables = [torch.randperm(pool_pages, device=dev)[:logical].view(s.batch, pages_per_seq).to(torch.int32)
              for _ in range(sets)]
    q = [torch.randn(s.batch, s.seqlen_q, s.heads, s.head_dim, device=dev, dtype=dt) for _ in range(sets)]
    cache_seqlens = torch.full((s.batch,), s.context, device=dev, dtype=torch.int32)
    sinks = torch.randn(s.heads, device=dev).to(torch.bfloat16).float()
    return DecodeCase(shape, q, k_pool, v_pool, tables, cache_seqlens, sinks)


def _paged(case: DecodeCase, make) -> Runner:
    fns = [make(case.q[r], case.tables[r]) for r in range(len(case.q))]
    return Runner(fns[0], rotating(fns), note=f"{len(fns)} input sets" if len(fns) > 1 else "")


def _flex(case: DecodeCase, env: Env) -> Runner:
    qs, kvs, warm = case.contiguous(env)
    left, context = case.shape.left, case.shape.context
    block_mask = peers.flex_block_mask(1, context, left, env.device) if left >= 0 else None
    fns = [peers.flex(q, k, v, block_mask) for q, (k, v) in zip(qs, kvs)]
    note = "no sinks (unsupported): checked and timed without them; contiguous cache"
    return Runner(fns[0], rotating(fns), note=note + ("; L2-warm inputs" if warm else ""))


def _sdpa(case: DecodeCase, env: Env) -> Runner:
    qs, kvs, warm = case.contiguous(env)
    runs = [peers.sdpa(q, k, v, None, False) for q, (k, v) in zip(qs, kvs)]
    note = f"{runs[0][1]}; no sinks; contiguous cache" + ("; L2-warm inputs" if warm else "")
    return Runner(runs[0][0], rotating([r[0] for r in runs]), note=note)


def _appended_tokens(case: DecodeCase, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The k and v of each sequence's last ``seqlen_q`` tokens as they lie in the cache, ``[B, seqlen_q, Hk, D]``:
    appending them rewrites the same values, so the ``+append`` call computes the plain call's output every time."""
    s = case.shape
    positions = torch.arange(s.context - s.seqlen_q, s.context, device=table.device)
    pages, slots = table[:, positions // s.page_size].long(), positions % s.page_size
    return case.k_pool[pages, slots], case.v_pool[pages, slots]


def providers(case: DecodeCase, env: Env, verify: bool = False):
    """(name, builder, checked with sinks, timer, measured once per page size) tuples. ``verify``: the verify
    scenario's providers (swattn with and without the append, FA3, FA4)."""
    s = case.shape
    swattn_call = lambda q, table: functools.partial(
        swattn.flash_attn_with_kvcache, q, case.k_pool, case.v_pool, cache_seqlens=case.cache_seqlens,
        page_table=table, causal=True, window_size=(s.left, 0), sinks=case.sinks)
    before = case.cache_seqlens - s.seqlen_q
    swattn_append = lambda q, table: functools.partial(
        swattn.flash_attn_with_kvcache, q, case.k_pool, case.v_pool, *_appended_tokens(case, table),
        cache_seqlens=before, page_table=table, causal=True, window_size=(s.left, 0), sinks=case.sinks)
    graph = lambda fn: time_graph(fn, env, warmup_calls=len(case.q) + 2)
    result = [("swattn", lambda: _paged(case, swattn_call), True, graph, False)]
    if verify:
        result.append(("swattn +append", lambda: _paged(case, swattn_append), True, graph, False))
    if env.graphs:
        result.append(("swattn (eager)", lambda: _paged(case, swattn_call), True, lambda fn: time_eager(fn, env),
                       False))
    paged_peer = lambda fn: lambda q, table: fn(q, case.k_pool, case.v_pool, s.left, case.sinks, page_table=table,
                                                 seqused_k=case.cache_seqlens)
    result += [
        ("FA3", lambda: _paged(case, paged_peer(peers.fa3)), True, graph, False),
        ("FA4", lambda: _paged(case, paged_peer(peers.fa4)), True, graph, False),
    ]
    if verify:
        return result
    result.append(("Flex", lambda: _flex(case, env), False, graph, True))
    if s.left < 0:  # SDPA has no sliding-window path short of a dense mask over the whole context
        result.append(("SDPA", lambda: _sdpa(case, env), False, graph, True))
    return result


def table(rows: list[Row], env: Env, windows: dict[str, str]) -> str:
    headers = ["shape", "window", "provider", "us/call (p20/p80)", "GB/s", "% copy BW", "floor us", "time/swattn",
               "timed by", "check (rel err)", "note"]
    cells = []
    for r in rows:
        t = r.timing
        gbps = r.nbytes / (t.median_us * 1e3) if t else None
        cells.append([r.shape.split(" W")[0], windows[r.shape], r.provider, str(t) if t else "-",
                      rate(gbps) if t else "", f"{100 * gbps / env.copy_gbps:.0f}%" if t else "",
                      f"{env.floor_us(r.nbytes):.2f}", ratio_cell(r, rows), t.method if t else "", check_cell(r),
                      r.note])
    return markdown_table(headers, cells)


def run(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None) -> Section:
    rows: list[Row] = []
    windows: dict[str, str] = {}
    once: dict[tuple, Row] = {}
    itemsize = torch.finfo(env.dtype).bits // 8
    for shape in shapes(env, contexts, page_sizes):
        key = f"{shape.label} W{shape.window}"
        windows[key] = shape.window
        case = setup_decode(shape, env)
        for name, build, with_sinks, timer, contiguous in providers(case, env):
            if not env.wants(name):
                continue
            memo = (shape.batch, shape.context, shape.left, name)
            if contiguous and memo in once:
                rows.append(dataclasses.replace(once[memo], shape=key))
                continue
            row = measure(env, key, name, build, case.compare(env, with_sinks), timer,
                          nbytes=shape.kv_bytes(itemsize))
            rows.append(row)
            if contiguous:
                once[memo] = row
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    notes = [
        "bytes = K and V rows the new query sees (window or whole context); floor us = bytes / measured copy "
        "bandwidth; time/swattn > 1 means swattn is faster.",
        "swattn, FA3 and FA4 read the paged cache with sinks; Flex and SDPA read a contiguous cache without sinks.",
        speedup_summary([r for r in rows if r.provider != "swattn (eager)"]),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    title = "Decode, gpt-oss-120b layer (H=64, Hk=8, D=64, sinks), paged KV cache, one new token per sequence"
    if env.quick:
        title = "Decode (quick: tiny shapes), paged KV cache, sinks, one new token per sequence"
    return Section(title, table(rows, env, windows), notes, rows)


def verify_shapes(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
                  tokens: list[int] | None = None) -> list[DecodeShape]:
    if env.quick:
        heads, batch, lefts = dict(heads=8, kv_heads=2, head_dim=32), 2, [15]
        contexts, page_sizes = contexts or [48, 200], page_sizes or [16]
    else:
        heads, batch, lefts = {}, 16, [127, -1]
        contexts, page_sizes = contexts or VERIFY_CONTEXTS, page_sizes or [16]
    return [DecodeShape(batch, ctx, ps, left, seqlen_q=k, **heads) for ps in page_sizes for ctx in contexts
            for left in lefts for k in tokens or VERIFY_TOKENS]


def verify_table(rows: list[Row], env: Env, windows: dict[str, str]) -> str:
    headers = ["shape", "window", "provider", "us/call (p20/p80)", "verify/decode", "time/swattn", "timed by",
               "check (rel err)", "note"]
    decode_shape = lambda r: (r.shape.split(" W")[0].split(" k=")[0], windows[r.shape], r.provider)
    decode_time = {decode_shape(r): r.timing.median_us for r in rows if r.timing and " k=" not in r.shape}
    cells = []
    for r in rows:
        t = r.timing
        base = decode_time.get(decode_shape(r))
        cells.append([r.shape.split(" W")[0], windows[r.shape], r.provider, str(t) if t else "-",
                      f"{t.median_us / base:.2f}" if t and base else "", ratio_cell(r, rows),
                      t.method if t else "", check_cell(r), r.note])
    return markdown_table(headers, cells)


def run_verify(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
               tokens: list[int] | None = None) -> Section:
    """Speculative verify: k new queries per sequence against the paged cache, beside decode (k = 1)."""
    rows: list[Row] = []
    windows: dict[str, str] = {}
    itemsize = torch.finfo(env.dtype).bits // 8
    for shape in verify_shapes(env, contexts, page_sizes, tokens):
        key = f"{shape.label} W{shape.window}"
        windows[key] = shape.window
        case = setup_decode(shape, env)
        for name, build, with_sinks, timer, _ in providers(case, env, verify=True):
            if env.wants(name):
                rows.append(measure(env, key, name, build, case.compare(env, with_sinks), timer,
                                    nbytes=shape.kv_bytes(itemsize)))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    notes = [
        "verify/decode = this row's time over the same provider's k = 1 (decode) time on the same shape; "
        "time/swattn > 1 means swattn (no append, the same work as FA3/FA4) is faster.",
        "swattn +append also writes the k new tokens into the paged cache in the call (the serving step).",
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    title = ("Speculative verify, gpt-oss-120b layer (H=64, Hk=8, D=64, sinks), paged KV cache, k new tokens per "
             "sequence (k = 1: decode)")
    if env.quick:
        title = "Speculative verify (quick: tiny shapes), paged KV cache, sinks, k new tokens per sequence"
    return Section(title, verify_table(rows, env, windows), notes, rows)
