"""fp8 (e4m3) KV-cache decode beside bf16 decode (``python -m swattn.bench decode-fp8``): gpt-oss-120b layer shapes
(H=64, Hk=8, D=64, sinks), one new query per sequence, paged cache (pages of 16 in random order).

Shapes: full causal at B=16 and B=4, window (127, 0) at B=16, contexts 16K and 128K (``--contexts``). Providers, all
timed by CUDA-graph replay on the same shape:

- ``swattn bf16``: the bf16 cache (the baseline every ``vs bf16`` cell divides);
- ``swattn fp8-kv``: bf16 queries over the e4m3 cache with ``k_descale``/``v_descale`` (what engines run);
- ``swattn fp8``: q, K and V in e4m3 with all three descales (FlashAttention 3's fp8 API);
- ``FA3 bf16`` and ``FA3 fp8`` (q, K, V e4m3 with descales; the vLLM build, ``swattn.bench.peers``).

The e4m3 cache is the bf16 one quantized with one descale per KV head (amax / 448, the same for every sequence,
as engines with per-tensor scales pass it: a ``[B, Hk]`` view with batch stride 0). Every provider is checked
against ``swattn.reference`` on its own inputs (the e4m3 values dequantized, then float32 on the GPU); FA3's fp8
path rounds P to e4m3, so its rows are checked at 5e-2 instead of bf16's 1.6e-2 (the note says so). Bytes counted:
the K and V rows the query sees at the cache's element size (1 byte for e4m3), so ``% copy BW`` compares like
with like.
"""

from __future__ import annotations

import functools

import torch

import swattn
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Row,
    Runner,
    Section,
    Skip,
    drop_unavailable,
    markdown_table,
    measure,
    rate,
    rotating,
    time_graph,
)
from swattn.bench.decode import DecodeShape, setup_decode
from swattn.reference import attention_kvcache_ref
from swattn.testing import relative_error, tolerance_for

CONTEXTS = [16384, 131072]
FP8 = torch.float8_e4m3fn
# FA3's fp8 path rounds P to e4m3 (a relative step of 2^-4) before P @ V: its error is that of the rounding.
FA3_FP8_TOLERANCE = 5e-2


def shapes(env: Env, contexts: list[int] | None = None) -> list[DecodeShape]:
    if env.quick:
        return [DecodeShape(b, ctx, 16, left, heads=8, kv_heads=2, head_dim=32)
                for ctx in contexts or [48, 200] for b, left in [(2, -1), (2, 15)]]
    return [DecodeShape(b, ctx, 16, left) for ctx in contexts or CONTEXTS for b, left in [(16, -1), (4, -1), (16, 127)]]


def quantize_per_head(x: torch.Tensor, head_dim_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in e4m3 with one descale per index of dimension ``head_dim_index`` (amax / 448) -> (e4m3 tensor,
    descale [x.shape[head_dim_index]])."""
    amax = x.abs().amax(dim=tuple(i for i in range(x.dim()) if i != head_dim_index)).float()
    descale = (amax / 448.0).clamp(min=1e-12)
    shape = [1] * x.dim()
    shape[head_dim_index] = -1
    return (x.float() / descale.view(shape)).clamp(-448, 448).to(FP8), descale


class Fp8Case:
    """One shape's bf16 case (``setup_decode``) and its e4m3 copies: the pools, and q per input set."""

    def __init__(self, shape: DecodeShape, env: Env):
        self.bf16 = setup_decode(shape, env)
        c = self.bf16
        self.k_pool, k_descale = quantize_per_head(c.k_pool, 2)
        self.v_pool, v_descale = quantize_per_head(c.v_pool, 2)
        batch = shape.batch
        self.k_descale = k_descale[None].expand(batch, -1)
        self.v_descale = v_descale[None].expand(batch, -1)
        # q [B, 1, H, D] as [B, 1, Hk, G, D]: one descale per KV head's group of query heads.
        quantized = [quantize_per_head(q.unflatten(2, (shape.kv_heads, -1)), 2) for q in c.q]
        self.q = [q.flatten(2, 3) for q, _ in quantized]
        self.q_descale = [d[None].expand(batch, -1) for _, d in quantized]
        self.q_bf16 = [q.to(torch.bfloat16) for q in c.q]  # fp8-kv's queries (the bf16 case's are fp32 on a CPU)
        self._references: dict[str, torch.Tensor] = {}

    def reference(self, env: Env, which: str) -> torch.Tensor:
        if which not in self._references:
            c, s = self.bf16, self.bf16.shape
            common = dict(page_table=c.tables[0], causal=True, window_size=(s.left, 0), sinks=c.sinks,
                          compute_dtype=env.reference_dtype)
            if which == "bf16":
                out, _ = attention_kvcache_ref(c.q[0], c.k_pool, c.v_pool, c.cache_seqlens, **common)
            elif which == "fp8-kv":
                out, _ = attention_kvcache_ref(self.q_bf16[0], self.k_pool, self.v_pool, c.cache_seqlens,
                                               k_descale=self.k_descale, v_descale=self.v_descale, **common)
            else:
                out, _ = attention_kvcache_ref(self.q[0], self.k_pool, self.v_pool, c.cache_seqlens,
                                               q_descale=self.q_descale[0], k_descale=self.k_descale,
                                               v_descale=self.v_descale, **common)
            self._references[which] = out
        return self._references[which]

    def compare(self, env: Env, which: str, tolerance: float | None = None):
        def check(out):
            return relative_error(out.float(), self.reference(env, which).float()), tolerance or tolerance_for(
                torch.bfloat16)
        return check


def _rotating(fns) -> Runner:
    return Runner(fns[0], rotating(fns), note=f"{len(fns)} input sets" if len(fns) > 1 else "")


def _fa3_fp8(case: Fp8Case, r: int):
    """FA3's fp8 path: q, K, V e4m3 with float32 descales ``[B, Hk]`` (the vLLM build's positional entry)."""
    c, s = case.bf16, case.bf16.shape
    forward = peers._fa3_forward()
    batch, seqlen_q, heads, head_dim = case.q[r].shape
    cu_q = torch.arange(0, batch + 1, device=c.q[r].device, dtype=torch.int32) * seqlen_q
    q3 = case.q[r].reshape(batch * seqlen_q, heads, head_dim)
    sinks = c.sinks.to(torch.bfloat16)
    # FA3 reads descales with their strides; a contiguous copy (made here, outside the timed call) is the safe form.
    q_descale, k_descale, v_descale = (d.contiguous() for d in (case.q_descale[r], case.k_descale, case.v_descale))
    max_k = c.tables[r].shape[1] * s.page_size

    def run():
        out = forward(q3, case.k_pool, case.v_pool, None, None, None, None, cu_q, None, None, None, c.cache_seqlens,
                      seqlen_q, max_k, c.tables[r], None, None, None, None, None, q_descale, k_descale, v_descale,
                      head_dim ** -0.5, True, s.left, 0, 0.0, True, None, 0, None, 0, sinks, 1, 0, None)[0]
        if out.dtype != torch.bfloat16:
            raise Skip(f"FA3 fp8 returned {out.dtype}")
        return out.view(batch, seqlen_q, heads, head_dim)
    return run


def providers(case: Fp8Case):
    """(name, builder, reference, tolerance) tuples."""
    c, s = case.bf16, case.bf16.shape
    sets = range(len(c.q))
    call = functools.partial(swattn.flash_attn_with_kvcache, cache_seqlens=c.cache_seqlens, causal=True,
                             window_size=(s.left, 0), sinks=c.sinks)
    bf16 = lambda r: functools.partial(call, c.q[r], c.k_pool, c.v_pool, page_table=c.tables[r])
    fp8_kv = lambda r: functools.partial(call, case.q_bf16[r], case.k_pool, case.v_pool, page_table=c.tables[r],
                                         k_descale=case.k_descale, v_descale=case.v_descale)
    fp8 = lambda r: functools.partial(call, case.q[r], case.k_pool, case.v_pool, page_table=c.tables[r],
                                      q_descale=case.q_descale[r], k_descale=case.k_descale,
                                      v_descale=case.v_descale)
    fa3_bf16 = lambda r: peers.fa3(c.q[r], c.k_pool, c.v_pool, s.left, c.sinks, page_table=c.tables[r],
                                   seqused_k=c.cache_seqlens)
    return [
        ("swattn bf16", lambda: _rotating([bf16(r) for r in sets]), "bf16", None),
        ("swattn fp8-kv", lambda: _rotating([fp8_kv(r) for r in sets]), "fp8-kv", None),
        ("swattn fp8", lambda: _rotating([fp8(r) for r in sets]), "fp8", None),
        ("FA3 bf16", lambda: _rotating([fa3_bf16(r) for r in sets]), "bf16", None),
        ("FA3 fp8", lambda: _rotating([_fa3_fp8(case, r) for r in sets]), "fp8", FA3_FP8_TOLERANCE),
    ]


def table(rows: list[Row], env: Env, windows: dict[str, str]) -> str:
    headers = ["shape", "window", "provider", "us/call (p20/p80)", "GB/s", "% copy BW", "floor us",
               "vs swattn bf16", "check (rel err)", "note"]
    base = {r.shape: r.timing.median_us for r in rows if r.provider == "swattn bf16" and r.timing}
    cells = []
    for r in rows:
        t = r.timing
        gbps = r.nbytes / (t.median_us * 1e3) if t else None
        speedup = f"{base[r.shape] / t.median_us:.2f}x" if t and r.shape in base else ""
        check = (f"{r.error:.1e} <= {r.tolerance:.0e}" if r.error is not None and r.status == "ok"
                 else r.status)
        cells.append([r.shape.split(" W")[0], windows[r.shape], r.provider, str(t) if t else "-",
                      rate(gbps) if t else "", f"{100 * gbps / env.copy_gbps:.0f}%" if t else "",
                      f"{env.floor_us(r.nbytes):.2f}", speedup, check, r.note])
    return markdown_table(headers, cells)


def run(env: Env, contexts: list[int] | None = None) -> Section:
    rows: list[Row] = []
    windows: dict[str, str] = {}
    for shape in shapes(env, contexts):
        key = f"{shape.label} W{shape.window}"
        windows[key] = shape.window
        case = Fp8Case(shape, env)
        warmup_calls = len(case.q) + 2
        graph = lambda fn, calls=warmup_calls: time_graph(fn, env, warmup_calls=calls)
        for name, build, which, tolerance in providers(case):
            if not env.wants(name):
                continue
            itemsize = 2 if which == "bf16" else 1
            note = "P rounded to e4m3 by FA3: checked at 5e-2" if tolerance else ""
            rows.append(measure(env, key, name, build, case.compare(env, which, tolerance), graph, note=note,
                                nbytes=shape.kv_bytes(itemsize)))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    notes = [
        "bytes = K and V rows the new query sees, at the cache's element size (bf16: 2, e4m3: 1); floor us = bytes / "
        "measured copy bandwidth; vs swattn bf16 = swattn bf16's time / this row's (> 1: faster).",
        "e4m3 cache: the bf16 cache quantized with one descale per KV head (k_descale/v_descale [B, Hk], batch "
        "stride 0); swattn fp8 and FA3 fp8 also quantize q (one descale per KV head's query group).",
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    title = "fp8 (e4m3) KV-cache decode beside bf16, gpt-oss-120b layer (H=64, Hk=8, D=64, sinks), pages of 16"
    if env.quick:
        title = "fp8 KV-cache decode (quick: tiny shapes), paged, sinks"
    return Section(title, table(rows, env, windows), notes, rows)
