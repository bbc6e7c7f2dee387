"""Model step: the attention of one decode step through all 36 gpt-oss-120b layers, captured as one CUDA graph.

Layers alternate sliding window (127, 0) and full causal, the window first (18 + 18), each with its own paged cache
(16-token pages in random order) and its own sinks; 16 sequences at one context (default 8192), H=64, Hk=8, D=64.
What a serving engine's graph replays per step, minus everything that is not attention. swattn against
FlexAttention (contiguous caches, no sinks), FA3 and FA4 (paged, sinks) when present; ``swattn (eager)`` runs the
36 calls without a graph (host dispatch included). ``swattn +append`` also writes each layer's new k/v into its
cache in the call, as a serving step does (the default path, ``swattn.ops.fused_append_default``), and ``swattn
+fused append`` with the fused append forced on; the tokens written are the ones already there, so every repeat
computes the same output. ``--verify-tokens 1,4`` also times the speculative-verify step: k new queries per
sequence in every layer, causal among themselves (``flash_attn_with_kvcache`` with seqlen_q = k, FA3 and FA4
likewise).
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
    check_cell,
    compare_outputs,
    drop_unavailable,
    markdown_table,
    measure,
    rate,
    ratio_cell,
    speedup_summary,
    time_eager,
    time_graph,
)
from swattn.reference import attention_kvcache_ref
from swattn.window import visible_span

LAYERS = 36
PAGE_SIZE = 16


@dataclass
class StepCase:
    batch: int
    context: int
    lefts: list[int]  # per layer: window_size = (left, 0), -1 = full
    q: list[torch.Tensor]  # per layer [B, k, H, D] (k = 1: decode; k > 1: speculative verify)
    k_pools: list[torch.Tensor]  # per layer [num_pages, PAGE_SIZE, Hk, D]
    v_pools: list[torch.Tensor]
    tables: list[torch.Tensor]  # per layer [B, pages_per_seq] int32
    cache_seqlens: torch.Tensor
    sinks: list[torch.Tensor]  # per layer [H] float32 (bf16-representable)
    _references: dict = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        return self.q[0].shape[1]

    @property
    def label(self) -> str:
        windowed = sum(left >= 0 for left in self.lefts)
        verify = f", verify k={self.tokens}" if self.tokens > 1 else ""
        return (f"B={self.batch} ctx={self.context}{verify}, {len(self.lefts)} layers ({windowed} window + "
                f"{len(self.lefts) - windowed} full), page={PAGE_SIZE}")

    def kv_bytes(self) -> float:
        _, _, hk, d = self.k_pools[0].shape
        k = self.tokens
        keys = sum(visible_span(0, k - 1, k, self.context, left, 0)[1] for left in self.lefts)
        return float(self.batch * keys * hk * d * 2 * self.k_pools[0].element_size())

    def reference(self, env: Env, with_sinks: bool) -> list[torch.Tensor]:
        if with_sinks not in self._references:
            self._references[with_sinks] = [
                attention_kvcache_ref(q.to(env.reference_dtype), kp, vp, self.cache_seqlens, page_table=table,
                                      causal=True, window_size=(left, 0), sinks=sinks if with_sinks else None,
                                      compute_dtype=env.reference_dtype)[0]
                for q, kp, vp, table, left, sinks in zip(self.q, self.k_pools, self.v_pools, self.tables,
                                                         self.lefts, self.sinks)]
        return self._references[with_sinks]

    def compare(self, env: Env, with_sinks: bool):
        return lambda outs: compare_outputs(outs, self.reference(env, with_sinks), env.dtype)


def setup_step(env: Env, context: int, layers: int, seed: int = 0, tokens: int = 1) -> StepCase:
    torch.manual_seed(seed)
    batch, heads, kv_heads, head_dim, window = (2, 8, 2, 32, 15) if env.quick else (16, 64, 8, 64, 127)
    dev, dt = env.device, env.dtype
    pages_per_seq = -(-context // PAGE_SIZE)
    lefts = [window if i % 2 == 0 else -1 for i in range(layers)]
    make_pool = lambda: torch.randn(batch * pages_per_seq, PAGE_SIZE, kv_heads, head_dim, device=dev, dtype=dt)
    return StepCase(
        batch, context, lefts,
        q=[torch.randn(batch, tokens, heads, head_dim, device=dev, dtype=dt) for _ in lefts],
        k_pools=[make_pool() for _ in lefts], v_pools=[make_pool() for _ in lefts],
        tables=[torch.randperm(batch * pages_per_seq, device=dev).view(batch, pages_per_seq).to(torch.int32)
                for _ in lefts],
        cache_seqlens=torch.full((batch,), context, device=dev, dtype=torch.int32),
        sinks=[torch.randn(heads, device=dev).to(torch.bfloat16).float() for _ in lefts])


def _paged_step(case: StepCase, call) -> Runner:
    layers = [call(q, kp, vp, left, sinks, table)
              for q, kp, vp, left, sinks, table in zip(case.q, case.k_pools, case.v_pools, case.lefts, case.sinks,
                                                       case.tables)]
    return Runner(lambda: [layer() for layer in layers])


def _swattn_layer(case: StepCase):
    return lambda q, kp, vp, left, sinks, table: functools.partial(
        swattn.flash_attn_with_kvcache, q, kp, vp, cache_seqlens=case.cache_seqlens, page_table=table, causal=True,
        window_size=(left, 0), sinks=sinks)


def _swattn_append_layer(case: StepCase, fused: bool | None):
    """Each layer appends its last k tokens (already in its cache, so the output never changes) in the call;
    ``fused`` forces ``ops.FUSED_APPEND`` (None: the default path)."""
    from swattn.bench.append import _forcing

    before = case.cache_seqlens - case.tokens
    positions = torch.arange(case.context - case.tokens, case.context, device=before.device)

    def layer(q, kp, vp, left, sinks, table):
        pages, slots = table[:, positions // PAGE_SIZE].long(), positions % PAGE_SIZE
        call = functools.partial(swattn.flash_attn_with_kvcache, q, kp, vp, kp[pages, slots], vp[pages, slots],
                                 cache_seqlens=before, page_table=table, causal=True, window_size=(left, 0),
                                 sinks=sinks)
        return call if fused is None else _forcing(fused, call)
    return layer


def _peer_layer(case: StepCase, peer):
    return lambda q, kp, vp, left, sinks, table: peer(q, kp, vp, left, sinks, page_table=table,
                                                      seqused_k=case.cache_seqlens)


def _flex_step(case: StepCase, env: Env) -> Runner:
    if not env.cuda:
        raise peers.Skip("FlexAttention (compiled) needs a CUDA tensor")
    masks = {left: peers.flex_block_mask(case.tokens, case.context, left, env.device)
             if left >= 0 or case.tokens > 1 else None for left in set(case.lefts)}
    layers = []
    for q, kp, vp, table, left in zip(case.q, case.k_pools, case.v_pools, case.tables, case.lefts):
        k, v = ((pool[table.long()].flatten(1, 2)[:, :case.context].transpose(1, 2).contiguous())
                for pool in (kp, vp))  # [B, Hk, S, D], the same tokens as the paged cache
        layers.append(peers.flex(q.transpose(1, 2).contiguous(), k, v, masks[left]))
    return Runner(lambda: [layer() for layer in layers],
                  note="no sinks (unsupported): checked and timed without them; contiguous caches")


def providers(case: StepCase, env: Env):
    """(name, builder, checked with sinks, timer)."""
    graph = lambda fn: time_graph(fn, env, calls=1)
    result = [("swattn", lambda: _paged_step(case, _swattn_layer(case)), True, graph),
              ("swattn +append", lambda: _paged_step(case, _swattn_append_layer(case, None)), True, graph),
              ("swattn +fused append", lambda: _paged_step(case, _swattn_append_layer(case, True)), True, graph)]
    if env.graphs:
        result.append(("swattn (eager)", lambda: _paged_step(case, _swattn_layer(case)), True,
                       lambda fn: time_eager(fn, env, calls=3, reps=10)))
    return result + [
        ("FA3", lambda: _paged_step(case, _peer_layer(case, peers.fa3)), True, graph),
        ("FA4", lambda: _paged_step(case, _peer_layer(case, peers.fa4)), True, graph),
        ("Flex", lambda: _flex_step(case, env), False, graph),
    ]


def run(env: Env, context: int | None = None, layers: int | None = None, tokens: list[int] | None = None) -> Section:
    context = context or (64 if env.quick else 8192)
    layers = layers or (4 if env.quick else LAYERS)
    rows: list[Row] = []
    nbytes_of: dict[str, float] = {}
    for k in tokens or [1]:
        case = setup_step(env, context, layers, tokens=k)
        nbytes_of[case.label] = nbytes = case.kv_bytes()
        for name, build, with_sinks, timer in providers(case, env):
            if env.wants(name):
                rows.append(measure(env, case.label, name, build, case.compare(env, with_sinks), timer,
                                    nbytes=nbytes))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    headers = ["setup", "provider", "us/step (p20/p80)", "us/layer", "GB/s", "% copy BW", "floor us", "time/swattn",
               "timed by", "check (max rel err)", "note"]
    cells = []
    for r in rows:
        t, nbytes = r.timing, nbytes_of[r.shape]
        gbps = nbytes / (t.median_us * 1e3) if t else None
        cells.append([r.shape, r.provider, str(t) if t else "-", f"{t.median_us / layers:.2f}" if t else "",
                      rate(gbps) if t else "", f"{100 * gbps / env.copy_gbps:.0f}%" if t else "",
                      f"{env.floor_us(nbytes):.1f}", ratio_cell(r, rows), t.method if t else "", check_cell(r),
                      r.note])
    notes = [
        "bytes = K and V rows each layer's new queries see, summed over layers; every layer's output is checked.",
        "time/swattn: against swattn without the append (the same work as FA3/FA4, which append nothing).",
        speedup_summary([r for r in rows if r.provider in ("swattn", "FA3", "FA4", "Flex")]),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    return Section("Model step: one decode step's attention, all gpt-oss-120b layers" +
                   (" (quick: tiny shapes)" if env.quick else ""), markdown_table(headers, cells), notes, rows)
