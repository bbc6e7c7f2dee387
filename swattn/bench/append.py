"""Append: the fused append against the separate append launch, per case (``python -m swattn.bench append``).

``flash_attn_with_kvcache(..., k=, v=)`` with one new token per query writes the new k/v into the paged cache either
in a separate append launch before the attention launch, or inside the attention kernel (each program writes the
new tokens it reads: one launch). ``swattn.ops.fused_append_default`` picks one per case from the table
``swattn.ops.FUSED_APPEND_DEFAULTS``; this scenario times both, forced, on the same inputs, so that the table can
follow the measurement. gpt-oss-120b layer shapes (H=64, Hk=8, D=64, sinks), graph-replayed, cold caches (input
sets rotated as in ``decode``), rows per shape:

- ``swattn`` (no append): the attention alone, the same work as FA3's row;
- ``swattn +append launch``: the append launch, then the attention (``ops.FUSED_APPEND = False`` during the call);
- ``swattn +fused append``: one launch (``ops.FUSED_APPEND = True``);
- ``FA3``: attention alone (vLLM's FA3; vLLM writes its cache in a separate kernel, not timed here);
- ``FA3+append`` (only when asked for: ``--providers swattn,fa3,fa3+append``): FA3's own append in the attention
  kernel (``k_new``/``v_new``), when the build has it.

The tokens appended are the ones already in the cache at those slots, so every repeat computes the same output and
every row is checked against the same reference. Default shapes (a representative subset that runs in about a
minute on an H200): window (127, 0) decode at 1K for pages of 1, 16, 64 and B = 1, 16, 64, and at 128K (B=16, page
16); full-attention decode at B=16 1K (pages 1, 16, 64), B=1 128K, B=4 and B=16 16K, B=64 4K (page 16); verify with
k = 4 tokens (B=16, 1K, page 16) for both layers. ``--contexts``, ``--page-sizes``, ``--batches`` and
``--verify-tokens`` replace the subset with their product (both layers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

import swattn
from swattn import ops
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Row,
    Section,
    check_cell,
    drop_unavailable,
    markdown_table,
    measure,
    ratio_cell,
    time_graph,
)
from swattn.bench.decode import DecodeShape, _appended_tokens, _paged, setup_decode

WINDOW = 127
LAUNCH, FUSED = "swattn +append launch", "swattn +fused append"


def _decode_subset() -> list[tuple[int, int, int, int, int]]:
    """(batch, context, page_size, left, new tokens) of the default run, the headline case first."""
    cases = [(16, 1024, 16, WINDOW, 1)]
    cases += [(b, 1024, p, WINDOW, 1) for p in (1, 16, 64) for b in (1, 16, 64) if (b, p) != (16, 16)]
    cases += [(16, 131072, 16, WINDOW, 1)]
    cases += [(16, 1024, p, -1, 1) for p in (16, 1, 64)]
    cases += [(1, 131072, 16, -1, 1), (4, 16384, 16, -1, 1), (16, 16384, 16, -1, 1), (64, 4096, 16, -1, 1)]
    cases += [(16, 1024, 16, WINDOW, 4), (16, 1024, 16, -1, 4)]
    return cases


def append_shapes(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
                  batches: list[int] | None = None, tokens: list[int] | None = None) -> list[DecodeShape]:
    if env.quick:
        heads = dict(heads=8, kv_heads=2, head_dim=32)
        cases = [(b, ctx, p, left, k) for b in batches or [2] for ctx in contexts or [200]
                 for p in page_sizes or [16] for left in (15, -1) for k in tokens or [1]]
    elif contexts or page_sizes or batches or tokens:
        heads = {}
        cases = [(b, ctx, p, left, k) for left in (WINDOW, -1) for k in tokens or [1] for p in page_sizes or [16]
                 for b in batches or [16] for ctx in contexts or [1024]]
    else:
        heads, cases = {}, _decode_subset()
    return [DecodeShape(b, ctx, p, left, seqlen_q=k, **heads) for b, ctx, p, left, k in cases]


def _forcing(fused: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``ops.FUSED_APPEND`` forced to ``fused`` (read at every call, so also while a graph
    captures the call)."""
    def call():
        previous, ops.FUSED_APPEND = ops.FUSED_APPEND, fused
        try:
            return fn()
        finally:
            ops.FUSED_APPEND = previous
    return call


def providers(case, env: Env):
    """(name, builder) pairs; every builder's output is checked against the decode reference with sinks."""
    s = case.shape
    before = case.cache_seqlens - s.seqlen_q
    attend = lambda q, table: functools.partial(
        swattn.flash_attn_with_kvcache, q, case.k_pool, case.v_pool, cache_seqlens=case.cache_seqlens,
        page_table=table, causal=True, window_size=(s.left, 0), sinks=case.sinks)
    append = lambda fused: lambda q, table: _forcing(fused, functools.partial(
        swattn.flash_attn_with_kvcache, q, case.k_pool, case.v_pool, *_appended_tokens(case, table),
        cache_seqlens=before, page_table=table, causal=True, window_size=(s.left, 0), sinks=case.sinks))
    fa3 = lambda q, table: peers.fa3(q, case.k_pool, case.v_pool, s.left, case.sinks, page_table=table,
                                     seqused_k=case.cache_seqlens)
    fa3_append = lambda q, table: peers.fa3(q, case.k_pool, case.v_pool, s.left, case.sinks, page_table=table,
                                            seqused_k=before, **dict(zip(("k_new", "v_new"),
                                                                         _appended_tokens(case, table))))
    return [
        ("swattn", lambda: _paged(case, attend)),
        (LAUNCH, lambda: _paged(case, append(False))),
        (FUSED, lambda: _paged(case, append(True))),
        ("FA3", lambda: _paged(case, fa3)),
        ("FA3+append", lambda: _paged(case, fa3_append)),
    ]


def _wanted(env: Env, name: str) -> bool:
    if name == "FA3+append":  # opt-in: a build without the append path, or a fault, must not cost the run
        return env.peers and env.providers is not None and "fa3+append" in env.providers
    return env.wants(name)


def _key(shape: DecodeShape) -> tuple[str, str, int]:
    """The ``ops.FUSED_APPEND_DEFAULTS`` key of a shape: (step, layer, page size)."""
    return ("decode" if shape.seqlen_q == 1 else "verify", "window" if shape.left >= 0 else "full", shape.page_size)


def suggested_defaults(rows: list[Row], shapes: dict[str, DecodeShape]) -> dict[tuple[str, str, int], int]:
    """Per ``ops.FUSED_APPEND_DEFAULTS`` key, the largest measured batch up to which the fused append was faster
    than the append launch on every measured shape of that key with that batch or a smaller one (absent: the
    launch won at the smallest batch, or nothing was measured)."""
    times = {(r.shape, r.provider): r.timing.median_us for r in rows if r.timing}
    wins: dict[tuple[str, str, int], dict[int, bool]] = {}
    for label, shape in shapes.items():
        launch, fused = times.get((label, LAUNCH)), times.get((label, FUSED))
        if launch is None or fused is None:
            continue
        by_batch = wins.setdefault(_key(shape), {})
        by_batch[shape.batch] = by_batch.get(shape.batch, True) and fused < launch
    table = {}
    for key, by_batch in wins.items():
        largest = 0
        for batch in sorted(by_batch):
            if not by_batch[batch]:
                break
            largest = batch
        if largest:
            table[key] = largest
    return table


def append_table(rows: list[Row], shapes: dict[str, DecodeShape]) -> str:
    headers = ["shape", "window", "provider", "us/call (p20/p80)", "append cost us", "fused/launch", "time/swattn",
               "timed by", "check (rel err)", "note"]
    times = {(r.shape, r.provider): r.timing.median_us for r in rows if r.timing}
    cells = []
    for r in rows:
        t = r.timing
        alone = times.get((r.shape, "swattn" if r.provider.startswith("swattn") else "FA3"))
        cost = f"{t.median_us - alone:+.2f}" if t and alone and "append" in r.provider else ""
        launch = times.get((r.shape, LAUNCH))
        ratio = f"{t.median_us / launch:.3f}" if t and launch and r.provider == FUSED else ""
        cells.append([r.shape.split(" W")[0], shapes[r.shape].window, r.provider, str(t) if t else "-", cost, ratio,
                      ratio_cell(r, rows), t.method if t else "", check_cell(r), r.note])
    return markdown_table(headers, cells)


def run(env: Env, contexts: list[int] | None = None, page_sizes: list[int] | None = None,
        batches: list[int] | None = None, tokens: list[int] | None = None) -> Section:
    rows: list[Row] = []
    shapes: dict[str, DecodeShape] = {}
    itemsize = torch.finfo(env.dtype).bits // 8
    saved = env.rep_ms, env.warmup_ms
    if env.cuda and not env.quick:
        env.rep_ms, env.warmup_ms = 60, 10  # graph replays of ~100 calls: hundreds of samples in 60 ms
    for shape in append_shapes(env, contexts, page_sizes, batches, tokens):
        key = f"{shape.label} W{shape.window}"
        shapes[key] = shape
        case = setup_decode(shape, env)
        graph = functools.partial(time_graph, env=env, warmup_calls=len(case.q) + 2)
        for name, build in providers(case, env):
            if _wanted(env, name):
                rows.append(measure(env, key, name, build, case.compare(env, True), graph,
                                    nbytes=shape.kv_bytes(itemsize)))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    env.rep_ms, env.warmup_ms = saved
    rows, unavailable = drop_unavailable(rows)
    suggestion = suggested_defaults(rows, shapes)
    timed = {r.shape for r in rows if r.timing and r.provider == LAUNCH}
    launch_wins = sorted({_key(s) for label, s in shapes.items() if _key(s) not in suggestion and label in timed})
    notes = [
        "append cost = this row's time minus the same provider's time without the append (swattn, FA3); "
        "fused/launch < 1: the fused append is faster on that shape.",
        f"swattn.ops.FUSED_APPEND_DEFAULTS now: {ops.FUSED_APPEND_DEFAULTS!r}; the measurement suggests "
        f"{suggestion!r} (key (step, layer, page size) -> the largest batch up to which the fused append won on "
        "every measured shape)" + (f"; the append launch won at the smallest batch of {launch_wins}"
                                   if launch_wins else ""),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    times = {(r.shape, r.provider): r.timing.median_us for r in rows if r.timing}
    ratios = [times[label, FUSED] / times[label, LAUNCH] for label in shapes
              if (label, FUSED) in times and (label, LAUNCH) in times]
    if ratios:
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        notes.insert(1, f"fused/launch, geometric mean over {len(ratios)} shape(s): {mean:.3f} (best "
                        f"{min(ratios):.3f}, worst {max(ratios):.3f})")
    title = ("Append in the call: fused append against the append launch, gpt-oss-120b layer (H=64, Hk=8, D=64, "
             "sinks), paged KV cache")
    if env.quick:
        title = "Append in the call (quick: tiny shapes): fused append against the append launch"
    return Section(title, append_table(rows, shapes), notes, rows)
