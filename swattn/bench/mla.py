"""DeepSeek-shaped rows: a value head dim of its own in prefill, and MLA decode with ``qv``, swattn beside
FlashAttention 3 (the vLLM build) in the same run. Not part of ``all``.

``python -m swattn.bench prefill-dv``: one causal prompt (batch 1), q and k with D=192, v with Dv=128 (DeepSeek
V3's prefill: 128 nope + 64 rope query/key dims, 128 value dims), H = Hk = 128, 8K and 16K tokens (``--seqlens``;
``--lefts`` adds windows). swattn's ``flash_attn_func`` and FA3's forward with v of its own head dim. Timed as the
prefill scenario is (one call captured in a CUDA graph, replayed); checked on the same query rows against the
float32 reference. Work: 2 * (D + Dv) * H FLOPs per visible (query, key) pair; bytes floor = q, k, v, o once.

``python -m swattn.bench decode-mla``: MLA's absorbed decode, one new query per sequence, 128 query heads on one KV
head, q with the D=64 rope dims and ``qv`` with the Dv=512 latent dims (scores ``(q k^T + qv v^T) * scale``,
scale ``(D + Dv) ** -0.5``, FA3's default, passed to both), full causal over an 8K context (``--contexts``), B=16
and 64 (``--batches``), pages of 64 tokens in random order (``--page-sizes``). The cache is vLLM's MLA layout: one
pool ``[num_pages, page_size, 1, 576]`` whose first 512 dims are v (the latent) and last 64 k (the rope part),
both passed as strided views, so K and V are one read of 576 dims per token. swattn's ``flash_attn_with_kvcache``
with ``qv`` and FA3's forward with ``qv``, both by CUDA-graph replay over input sets (page tables into a pool of at
least 4x L2) as the decode rows are. Checked against ``attention_kvcache_ref`` with ``qv``.
"""

from __future__ import annotations

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
    Skip,
    check_cell,
    compare_outputs,
    drop_unavailable,
    markdown_table,
    measure,
    measure_windowed_shapes,
    pool_page_count,
    rate,
    ratio_cell,
    rotating,
    rotation_sets,
    speedup_summary,
    time_graph,
    time_single_graph,
    windowed_table,
)
from swattn.bench.prefill import PrefillCase, PrefillShape, check_blocks, visible_pairs
from swattn.reference import attention_kvcache_ref

PREFILL_SEQLENS = [8192, 16384]
PREFILL_HEADS = (192, 128, 128, 128)  # (head_dim, head_dim_v, heads, kv_heads): DeepSeek V3 prefill
QUICK_PREFILL_HEADS = (48, 32, 2, 2)  # the same 3:2 ratio, tiny
MLA_CONTEXTS = [8192]
MLA_BATCHES = [16, 64]
MLA_PAGE_SIZES = [64]


def _fa3_refusal(run):
    """FA3's call, with a refusal of the shape by the build (a RuntimeError from its checks, raised before any
    launch) turned into a Skip that quotes it: a build without these head-dim pairs costs a row's note."""
    def checked():
        try:
            return run()
        except RuntimeError as exc:
            text = str(exc).strip().splitlines()
            message = text[0][:200] if text else type(exc).__name__
            if any(word in message.lower() for word in ("support", "headdim", "head_size", "hdim")):
                raise Skip(f"FA3 (vLLM build) refuses it: {message}") from exc
            raise
    return checked


# --- prefill with Dv != D -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DvPrefillShape(PrefillShape):
    head_dim_v: int = 128

    @property
    def label(self) -> str:
        return f"S={self.seqlen} D={self.head_dim} Dv={self.head_dim_v} H={self.heads}/{self.kv_heads}"


def prefill_shapes(env: Env, seqlens: list[int] | None = None, lefts: list[int] | None = None
                   ) -> list[DvPrefillShape]:
    d, dv, h, hk = QUICK_PREFILL_HEADS if env.quick else PREFILL_HEADS
    seqlens = seqlens or ([40] if env.quick else PREFILL_SEQLENS)
    return [DvPrefillShape(s, d, h, hk, left, head_dim_v=dv) for s in seqlens for left in lefts or [-1]]


def prefill_work(shape: DvPrefillShape, itemsize: int) -> tuple[float, float]:
    """(window-only FLOPs: 2 * D per pair for q k^T, 2 * Dv for p v; bytes floor: q, k, v read, o written)."""
    s, h, hk, d, dv = shape.seqlen, shape.heads, shape.kv_heads, shape.head_dim, shape.head_dim_v
    flops = 2.0 * (d + dv) * h * shape.batch * visible_pairs(s, s, shape.left, 0)
    nbytes = float(itemsize * shape.batch * s * (h * d + hk * d + hk * dv + h * dv))
    return flops, nbytes


def setup_prefill_dv(shape: DvPrefillShape, env: Env, seed: int = 0) -> PrefillCase:
    """Random q, k ``[1, S, H(k), D]`` and v ``[1, S, Hk, Dv]``, and the rows to check (``prefill.check_blocks``)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    make = lambda h, d: torch.randn(shape.batch, shape.seqlen, h, d, device=env.device, dtype=env.dtype)
    q, k = make(shape.heads, shape.head_dim), make(shape.kv_heads, shape.head_dim)
    v = make(shape.kv_heads, shape.head_dim_v)
    blocks = check_blocks(shape.seqlen, generator)
    rows = torch.cat([torch.arange(a, b) for a, b in blocks]).to(env.device)
    return PrefillCase(shape, q, k, v, blocks, rows)


def prefill_providers(case: PrefillCase):
    q, k, v, left = case.q, case.k, case.v, case.shape.left
    return [
        ("swattn", lambda: lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))),
        ("FA3", lambda: _fa3_refusal(peers.fa3(q, k, v, left))),
    ]


def run_prefill(env: Env, seqlens: list[int] | None = None, lefts: list[int] | None = None) -> Section:
    shapes = prefill_shapes(env, seqlens, lefts)
    rows, windows, unavailable = measure_windowed_shapes(env, shapes, setup_prefill_dv, prefill_providers,
                                                         prefill_work, timer=time_single_graph)
    notes = [
        "timed by replaying one call captured in a CUDA graph (L2 cleared before each replay)" if env.graphs else "",
        "TFLOP/s counts only visible (query, key) pairs: 2 * (D + Dv) * H * pairs / time; floor us = (q + k + v + o "
        "bytes) / measured copy bandwidth; time/swattn > 1 means swattn is faster.",
        "swattn: a call with Dv != D runs the Triton kernels (never the Gluon one).",
        speedup_summary(rows),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    d, dv, h, hk = QUICK_PREFILL_HEADS if env.quick else PREFILL_HEADS
    title = f"Prefill with a value head dim of its own (D={d}, Dv={dv}, H={h}/{hk}), batch 1, {env.dtype}, no sinks"
    if env.quick:
        title = f"Prefill with Dv != D (quick: tiny shapes, D={d}, Dv={dv}), batch 1, no sinks"
    return Section(title, windowed_table(rows, env, windows, "us median (p20/p80)"), notes, rows)


# --- MLA decode with qv -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlaDecodeShape:
    batch: int
    context: int
    page_size: int
    heads: int = 128
    head_dim: int = 64  # q / k: the rope dims
    head_dim_v: int = 512  # qv / v: the latent dims

    @property
    def label(self) -> str:
        return f"B={self.batch} ctx={self.context} page={self.page_size}"

    @property
    def latent_dim(self) -> int:
        return self.head_dim + self.head_dim_v

    def kv_bytes(self, itemsize: int) -> float:
        """The cache's rows the queries read: every token of the context, 576 dims of the one KV head."""
        return float(self.batch * self.context * self.latent_dim * itemsize)


def decode_shapes(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
                  batches: list[int] | None = None) -> list[MlaDecodeShape]:
    if env.quick:
        heads = dict(heads=4, head_dim=16, head_dim_v=64)
        contexts, page_sizes, batches = contexts or [48], page_sizes or [16], batches or [2]
    else:
        heads = {}
        contexts, page_sizes = contexts or MLA_CONTEXTS, page_sizes or MLA_PAGE_SIZES
        batches = batches or MLA_BATCHES
    return [MlaDecodeShape(b, ctx, ps, **heads) for ps in page_sizes for ctx in contexts for b in batches]


@dataclass
class MlaDecodeCase:
    shape: MlaDecodeShape
    q: list[torch.Tensor]  # per input set, [B, 1, H, D]
    qv: list[torch.Tensor]  # per input set, [B, 1, H, Dv]
    k_pool: torch.Tensor  # [num_pages, page_size, 1, D]: a strided view of the latent pool's last D dims
    v_pool: torch.Tensor  # [num_pages, page_size, 1, Dv]: its first Dv dims
    tables: list[torch.Tensor]  # per input set, [B, pages_per_seq] int32
    cache_seqlens: torch.Tensor  # [B] int32, = context (the new token included)
    scale: float
    _reference: torch.Tensor | None = field(default=None, repr=False)

    def reference(self, env: Env) -> torch.Tensor:
        if self._reference is None:
            out, _ = attention_kvcache_ref(
                self.q[0].to(env.reference_dtype), self.k_pool, self.v_pool, self.cache_seqlens,
                page_table=self.tables[0], qv=self.qv[0].to(env.reference_dtype), causal=True,
                softmax_scale=self.scale, compute_dtype=env.reference_dtype)
            self._reference = out
        return self._reference

    def compare(self, env: Env):
        return lambda out: compare_outputs(out, self.reference(env), env.dtype)


def setup_decode_mla(shape: MlaDecodeShape, env: Env, seed: int = 0) -> MlaDecodeCase:
    """Random inputs in vLLM's MLA cache layout, a random page order, and the input sets that keep repeated calls
    out of L2 (``common.rotation_sets``; the pool then holds at least 4x L2)."""
    torch.manual_seed(seed)
    s, dev, dt = shape, env.device, env.dtype
    itemsize = torch.finfo(dt).bits // 8
    pages_per_seq = -(-s.context // s.page_size)
    logical = s.batch * pages_per_seq
    sets = rotation_sets(s.kv_bytes(itemsize), env)
    page_bytes = s.page_size * s.latent_dim * itemsize
    pool_pages = pool_page_count(logical, page_bytes, sets, env)
    pool = torch.randn(pool_pages, s.page_size, 1, s.latent_dim, device=dev, dtype=dt)
    v_pool, k_pool = pool[..., :s.head_dim_v], pool[..., s.head_dim_v:]
    tables = [torch.randperm(pool_pages, device=dev)[:logical].view(s.batch, pages_per_seq).to(torch.int32)
              for _ in range(sets)]
    q = [torch.randn(s.batch, 1, s.heads, s.head_dim, device=dev, dtype=dt) for _ in range(sets)]
    qv = [torch.randn(s.batch, 1, s.heads, s.head_dim_v, device=dev, dtype=dt) for _ in range(sets)]
    cache_seqlens = torch.full((s.batch,), s.context, device=dev, dtype=torch.int32)
    return MlaDecodeCase(shape, q, qv, k_pool, v_pool, tables, cache_seqlens, s.latent_dim ** -0.5)


def decode_providers(case: MlaDecodeCase):
    """(name, builder) pairs; each builder makes one call per input set and rotates through them."""
    sets = range(len(case.q))

    def rotated(make) -> Runner:
        fns = [make(r) for r in sets]
        return Runner(fns[0], rotating(fns), note=f"{len(fns)} input sets" if len(fns) > 1 else "")

    swattn_call = lambda r: functools.partial(
        swattn.flash_attn_with_kvcache, case.q[r], case.k_pool, case.v_pool, qv=case.qv[r],
        cache_seqlens=case.cache_seqlens, page_table=case.tables[r], causal=True, softmax_scale=case.scale)
    fa3_call = lambda r: _fa3_refusal(peers.fa3(case.q[r], case.k_pool, case.v_pool, -1, page_table=case.tables[r],
                                                seqused_k=case.cache_seqlens, qv=case.qv[r],
                                                softmax_scale=case.scale))
    return [("swattn", lambda: rotated(swattn_call)), ("FA3", lambda: rotated(fa3_call))]


def decode_table(rows: list[Row], env: Env) -> str:
    headers = ["shape", "provider", "us/call (p20/p80)", "GB/s", "% copy BW", "floor us", "time/swattn", "timed by",
               "check (rel err)", "note"]
    cells = []
    for r in rows:
        t = r.timing
        gbps = r.nbytes / (t.median_us * 1e3) if t else None
        cells.append([r.shape, r.provider, str(t) if t else "-", rate(gbps) if t else "",
                      f"{100 * gbps / env.copy_gbps:.0f}%" if t else "", f"{env.floor_us(r.nbytes):.2f}",
                      ratio_cell(r, rows), t.method if t else "", check_cell(r), r.note])
    return markdown_table(headers, cells)


def run_decode(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
               batches: list[int] | None = None) -> Section:
    rows: list[Row] = []
    itemsize = torch.finfo(env.dtype).bits // 8
    shapes = decode_shapes(env, contexts, page_sizes, batches)
    for shape in shapes:
        case = setup_decode_mla(shape, env)
        warmup_calls = len(case.q) + 2
        graph = lambda fn, calls=warmup_calls: time_graph(fn, env, warmup_calls=calls)
        for name, build in decode_providers(case):
            if env.wants(name):
                rows.append(measure(env, shape.label, name, build, case.compare(env), graph,
                                    nbytes=shape.kv_bytes(itemsize)))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    s = shapes[0] if shapes else MlaDecodeShape(0, 0, 0)
    notes = [
        f"bytes = the context's cache rows, {s.latent_dim} dims of the one KV head per token (k: the last "
        f"{s.head_dim}, v: the first {s.head_dim_v}, one pool); floor us = bytes / measured copy bandwidth; "
        "time/swattn > 1 means swattn is faster.",
        "swattn: split-KV chosen by swattn (num_splits=0); FA3: num_splits=0 (its heuristic).",
        speedup_summary(rows),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    title = (f"MLA decode with qv (D={s.head_dim} rope, Dv={s.head_dim_v} latent, H={s.heads} on 1 KV head), "
             f"{env.dtype}, paged KV cache, full causal, one new token per sequence")
    if env.quick:
        title = f"MLA decode with qv (quick: tiny shapes, D={s.head_dim}, Dv={s.head_dim_v}, H={s.heads}/1), paged"
    return Section(title, decode_table(rows, env), notes, rows)
