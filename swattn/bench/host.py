"""Host cost of eager calls: what a call costs when it is not replayed from a CUDA graph (vLLM's piecewise graphs
leave attention outside, prefill and training loops are eager).

Per provider and shape, after the correctness gate: ``host us`` is the CPU time per call of back-to-back calls
without a synchronisation (Python, dispatch and launch; the GPU runs behind), ``eager us`` the time per call of the
same back-to-back calls between CUDA events (the larger of host and GPU time, as an eager loop sees it), ``graph
us`` the same calls replayed from a CUDA graph (the GPU time alone), and ``eager/graph`` their ratio (1.0: the host
is hidden). gpt-oss-120b layer shapes (H=64, Hk=8, D=64, sinks), bf16. Rows:

- decode, paged (page 16), B=16, 1K context: window (127, 0) and full (split-KV with its combine); swattn with and
  without appending the new token (the append launch or, ``+fused append``, the attention kernel writing it), FA3
  and FA4 without;
- the torch.library op path (``op``): the window decode with append and the 4K window prefill, each as the plain
  eager call, the op called through the dispatcher, and a ``torch.compile``d function around
  ``flash_attn_with_kvcache`` / ``flash_attn_func`` (its compiled overhead), also under ``--quick`` (tiny shapes);
- prefill, window (127, 0), 4K and 16K tokens: swattn, FA3, FA4, FlexAttention (no sinks);
- backward of the window prefill at 4K (swattn), also with autograd's device threads off, beside the autograd
  engine alone (a Function whose backward hands back gradients computed beforehand): the engine's own share.

``--rows decode,op,prefill,backward`` picks groups of them (``op``: the op-path rows, with their plain eager rows
unless the decode or prefill group runs too).
Under ``--quick`` (CPU, interpreter) shapes are tiny and only the format and the checks mean anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import swattn
from swattn import ops
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Row,
    Runner,
    Section,
    Timing,
    check_cell,
    compare_outputs,
    drop_unavailable,
    markdown_table,
    measure,
    time_eager,
    time_graph,
)
from swattn.kernels import fwd, gluon_fwd
from swattn.reference import append_kv_ref, attention_kvcache_ref, attention_ref


@dataclass(frozen=True)
class Dims:
    heads: int = 64
    kv_heads: int = 8
    head_dim: int = 64


def time_host(fn: Callable[[], object], env: Env, calls: int = 100, reps: int = 10) -> Timing:
    """CPU time per call of ``calls`` back-to-back calls, no synchronisation inside (the GPU queue absorbs them)."""
    if env.quick:
        calls, reps = 2, 2
    for _ in range(1 if env.quick else 3):
        fn()
    samples = []
    for _ in range(reps):
        if env.cuda:
            torch.cuda.synchronize(env.device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) * 1e6 / calls)
    if env.cuda:
        torch.cuda.synchronize(env.device)
    return Timing.from_samples(samples, "host")


class _Timings:
    """The timer ``measure`` calls: host and graph timings go to ``extra``, the eager one is the row's."""

    def __init__(self, env: Env):
        self.env, self.extra = env, {}

    def timer(self, key: tuple[str, str], graphs: bool = True):
        def run(fn):
            host = time_host(fn, self.env)
            # Eager before the graph: the graph's timing (do_bench: ~225 ms of replays with L2 flushes) left some
            # eager rows after it slower than their host time (H200, 19:33 and 22:32: the full decode 44.7 us eager,
            # p20 30.5, against 29.4 us host), which eager right after host did not show (scripts/eager_gap.py).
            eager = time_eager(fn, self.env, calls=100 if not self.env.quick else 2)
            graph = None
            if graphs and self.env.graphs:
                try:
                    graph = time_graph(fn, self.env)
                except RuntimeError as exc:  # not capturable: the row says so
                    graph = f"not capturable ({type(exc).__name__})"
                    torch.cuda.synchronize(self.env.device)
            self.extra[key] = (host, graph)
            return eager
        return run


def _decode_inputs(env: Env, dims: Dims, batch: int, context: int, page_size: int) -> tuple:
    """A decode step's tensors over a paged cache in shuffled pages: ``(k_pool, v_pool, page_table, q, k_new, v_new,
    cache_seqlens before the append, lengths after it)``; the pools already hold the appended token (the reference's
    append), so a call that appends it again writes the same values."""
    device, dtype = env.device, env.dtype
    pages = -(-context // page_size)
    k_pool = torch.randn(batch * pages, page_size, dims.kv_heads, dims.head_dim, device=device, dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    table = torch.randperm(batch * pages, device=device).view(batch, pages).to(torch.int32)
    q = torch.randn(batch, 1, dims.heads, dims.head_dim, device=device, dtype=dtype)
    k_new, v_new = (torch.randn(batch, 1, dims.kv_heads, dims.head_dim, device=device, dtype=dtype)
                    for _ in range(2))
    before = torch.full((batch,), context - 1, device=device, dtype=torch.int32)  # the append makes it `context`
    lengths = append_kv_ref(k_pool, v_pool, k_new, v_new, before, page_table=table)
    return k_pool, v_pool, table, q, k_new, v_new, before, lengths


def _decode_rows(env: Env, dims: Dims, timings: _Timings) -> list[Row]:
    batch, context, page_size = (16, 1024, 16) if not env.quick else (2, 40, 8)
    if env.quick:
        dims = Dims(8, 2, 32)
    device = env.device
    sinks = torch.randn(dims.heads, device=device).to(torch.bfloat16).float()
    k_pool, v_pool, table, q, k_new, v_new, before, lengths = _decode_inputs(env, dims, batch, context, page_size)
    rows = []
    for left in (127 if not env.quick else 15, -1):
        shape = f"decode B={batch} ctx={context} page={page_size} W" + (f"({left},0)" if left >= 0 else "full")
        reference, _ = attention_kvcache_ref(q.to(env.reference_dtype), k_pool, v_pool, lengths, page_table=table,
                                             causal=True, window_size=(left, 0), sinks=sinks,
                                             compute_dtype=env.reference_dtype)
        compare = lambda out, reference=reference: compare_outputs(out, reference, env.dtype)
        kwargs = dict(page_table=table, causal=True, window_size=(left, 0), sinks=sinks)

        def plain(kwargs=kwargs):
            return lambda: swattn.flash_attn_with_kvcache(q, k_pool, v_pool, cache_seqlens=lengths, **kwargs)

        def appending(kwargs=kwargs):
            # Writes the same token into the same slot on every call: the cache the reference saw stays.
            return lambda: swattn.flash_attn_with_kvcache(q, k_pool, v_pool, k=k_new, v=v_new, cache_seqlens=before,
                                                          **kwargs)

        # "+fused append": ops.FUSED_APPEND on for the row (one launch: the attention programs write the new
        # tokens); "+append" takes the default (ops.FUSED_APPEND_DEFAULTS).
        providers = [("swattn", plain), ("swattn +append", appending), ("swattn +fused append", appending)]
        providers += [("FA3", lambda left=left: peers.fa3(q, k_pool, v_pool, left, sinks, page_table=table,
                                                          seqused_k=lengths)),
                      ("FA4", lambda left=left: peers.fa4(q, k_pool, v_pool, left, sinks, page_table=table,
                                                          seqused_k=lengths))]
        for name, build in providers:
            if env.wants(name):
                fused = ops.FUSED_APPEND
                ops.FUSED_APPEND = True if "fused" in name else fused
                try:
                    rows.append(measure(env, shape, name, build, compare, timings.timer((shape, name))))
                finally:
                    ops.FUSED_APPEND = fused
    return rows


def _op_arguments(function, *args, **kwargs) -> tuple:
    """The ``swattn.ops`` op and its arguments that a call of the public ``function`` ends in (its unreplayed body
    runs once, its ``ops.run_*`` call recorded): what a compiled graph hands the dispatcher."""
    recorded = []
    originals = {name: getattr(ops, name) for name in ("run_fwd", "run_fwd_kvcache")}

    def recorder(name):
        return lambda *op_args: recorded.append((name, op_args)) or originals[name](*op_args)

    try:
        for name in originals:
            setattr(ops, name, recorder(name))
        function.__wrapped__(*args, **kwargs)  # past swattn._replay: the function's body, its op call
    finally:
        for name, original in originals.items():
            setattr(ops, name, original)
    (name, op_args), = recorded
    return {"run_fwd": torch.ops.swattn.fwd, "run_fwd_kvcache": torch.ops.swattn.fwd_kvcache}[name], op_args


def _op_rows(env: Env, dims: Dims, timings: _Timings, baselines: tuple[bool, bool]) -> list[Row]:
    """The torch.library op path, beside the plain eager call: the window decode with the append (B=16, paged 1K)
    and the 4K window prefill, each called eagerly (``swattn._replay``, no dispatcher), as the op through the
    dispatcher (``torch.ops.swattn.*`` with the arguments the public function passes), and as a ``torch.compile``d
    function around the public call (dynamo traces it to the op; inductor's graph calls it through the dispatcher).
    ``baselines``: whether the decode and prefill groups' plain rows are wanted here (not when those groups run).
    Under ``--quick`` the shapes are tiny (the interpreter runs each kernel; inductor compiles each function)."""
    if env.quick:
        dims, batch, context, page_size, seqlen, left = Dims(2, 1, 16), 1, 12, 8, 16, 7
    else:
        batch, context, page_size, seqlen, left = 16, 1024, 16, 4096, 127
    device, dtype = env.device, env.dtype
    sinks = torch.randn(dims.heads, device=device).to(torch.bfloat16).float()
    k_pool, v_pool, table, q, k_new, v_new, before, lengths = _decode_inputs(env, dims, batch, context, page_size)
    decode_reference, _ = attention_kvcache_ref(q.to(env.reference_dtype), k_pool, v_pool, lengths, page_table=table,
                                                causal=True, window_size=(left, 0), sinks=sinks,
                                                compute_dtype=env.reference_dtype)
    decode_kwargs = dict(k=k_new, v=v_new, cache_seqlens=before, page_table=table, causal=True,
                         window_size=(left, 0), sinks=sinks)
    q_prefill = torch.randn(1, seqlen, dims.heads, dims.head_dim, device=device, dtype=dtype)
    k_prefill, v_prefill = (torch.randn(1, seqlen, dims.kv_heads, dims.head_dim, device=device, dtype=dtype)
                            for _ in range(2))
    prefill_kwargs = dict(causal=True, window_size=(left, 0), sinks=sinks)
    prefill_reference = attention_ref(q_prefill.to(env.reference_dtype), k_prefill, v_prefill, **prefill_kwargs)[0]

    def decode():
        # Writes the same token into the same slot on every call: the cache the reference saw stays.
        return swattn.flash_attn_with_kvcache(q, k_pool, v_pool, **decode_kwargs)

    def prefill():
        return swattn.flash_attn_func(q_prefill, k_prefill, v_prefill, **prefill_kwargs)

    def dispatched(function, *args, **kwargs):
        op, op_args = _op_arguments(function, *args, **kwargs)
        return lambda: op(*op_args)[0]

    cases = [
        (f"decode B={batch} ctx={context} page={page_size} W({left},0)", decode_reference, baselines[0], [
            ("swattn +append", lambda: decode),
            ("swattn +append, op via dispatcher", lambda: dispatched(swattn.flash_attn_with_kvcache, q, k_pool,
                                                                     v_pool, **decode_kwargs)),
            ("swattn +append, torch.compile", lambda: _compiled(decode))]),
        (f"prefill S={seqlen} W({left},0)", prefill_reference, baselines[1], [
            ("swattn", lambda: prefill),
            ("swattn (op via dispatcher)", lambda: dispatched(swattn.flash_attn_func, q_prefill, k_prefill, v_prefill,
                                                             **prefill_kwargs)),
            ("swattn (torch.compile)", lambda: _compiled(prefill))]),
    ]
    rows = []
    for shape, reference, baseline, providers in cases:
        compare = lambda out, reference=reference: compare_outputs(out, reference, env.dtype)
        for name, build in providers[0 if baseline else 1:]:
            if env.wants(name):
                rows.append(measure(env, shape, name, build, compare, timings.timer((shape, name))))
    return rows


def _with_note(result) -> Runner:
    """A peer builder's ``(run, note)`` (Flex, SDPA) as the Runner ``measure`` takes."""
    run, note = result
    return Runner(run, note=note)


def _compiled(fn):
    compiled = torch.compile(fn, fullgraph=True)
    return Runner(compiled, note="fullgraph")


def _single_threaded(fn, note: str = ""):
    if isinstance(fn, Runner):
        fn, note = fn.check, f"{fn.note}; " if fn.note else ""

    def run():
        with torch.autograd.set_multithreading_enabled(False):
            return fn()
    return Runner(run, note=note + "set_multithreading_enabled(False) entered per call")


class _GivenGradients(torch.autograd.Function):
    """q, k, v -> (out, lse) as swattn's eager Function (same saved tensors), whose backward hands back gradients
    computed beforehand: what the autograd engine costs for this graph without any attention work."""

    @staticmethod
    def forward(q, k, v, out, lse, gradients):
        return out.clone(), lse.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, out, lse, gradients = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, *output)
        ctx.gradients = gradients

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        _ = ctx.saved_tensors  # unpacked, as swattn's backward does
        return (*ctx.gradients, None, None, None)


def _engine_floor(inputs, grad, sinks, kwargs):
    q, k, v = inputs
    out, lse = swattn.flash_attn_func(q, k, v, sinks=sinks, return_softmax_lse=True, **kwargs)
    gradients = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    with torch.no_grad():
        out, lse = out.detach(), lse.detach()
    given = _GivenGradients.apply(q, k, v, out, lse, gradients)[0]
    return Runner(lambda: torch.autograd.grad(given, inputs, grad, retain_graph=True),
                  note="engine floor: gradients computed beforehand")


def _prefill_rows(env: Env, dims: Dims, timings: _Timings, backward: bool) -> list[Row]:
    lengths, left = ((4096, 16384), 127) if not env.quick else ((48,), 15)
    if env.quick:
        dims = Dims(8, 2, 32)
    rows = []
    for seqlen in lengths[:1] if backward else lengths:
        device, dtype = env.device, env.dtype
        q = torch.randn(1, seqlen, dims.heads, dims.head_dim, device=device, dtype=dtype)
        k, v = (torch.randn(1, seqlen, dims.kv_heads, dims.head_dim, device=device, dtype=dtype) for _ in range(2))
        sinks = torch.randn(dims.heads, device=device).to(torch.bfloat16).float()
        shape = f"{'backward' if backward else 'prefill'} S={seqlen} W({left},0)"
        kwargs = dict(causal=True, window_size=(left, 0))
        if backward:
            inputs = [t.detach().requires_grad_() for t in (q, k, v)]
            grad = torch.randn_like(q)
            expected = torch.autograd.grad(attention_ref(*(t.to(env.reference_dtype) for t in inputs), sinks=sinks,
                                                         **kwargs)[0], inputs, grad.to(env.reference_dtype))
            out = swattn.flash_attn_func(*inputs, sinks=sinks, **kwargs)
            build = lambda out=out, inputs=inputs, grad=grad: (
                lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True))
            compare = lambda got: compare_outputs(got, expected, env.dtype)
            rows.append(measure(env, shape, "swattn", build, compare, timings.timer((shape, "swattn"), graphs=False)))
            # Where the backward's host time goes: the same call with autograd's device threads off (the engine
            # then runs the backward on the calling thread, no hand-over to the CUDA device's worker thread and
            # back), and the engine alone: a Function with swattn's inputs and outputs whose backward returns
            # gradients computed beforehand (swattn's, so the row's check holds), i.e. torch.autograd.grad's own
            # floor for this graph.
            name = "swattn, autograd multithreading off"
            rows.append(measure(env, shape, name, lambda build=build: _single_threaded(build()), compare,
                                timings.timer((shape, name), graphs=False)))
            name = "autograd engine alone (no-op Function)"
            rows.append(measure(env, shape, name, lambda inputs=inputs, grad=grad: _engine_floor(inputs, grad, sinks,
                                                                                                  kwargs),
                                compare, timings.timer((shape, name), graphs=False)))
            # The engine alone on the calling thread: with the row above, what the device thread's hand-overs cost;
            # with "multithreading off", swattn's own share of its backward.
            name = "autograd engine alone, multithreading off"
            rows.append(measure(env, shape, name, lambda inputs=inputs, grad=grad: _single_threaded(
                _engine_floor(inputs, grad, sinks, kwargs)), compare, timings.timer((shape, name), graphs=False)))
            if env.wants("FA3"):
                # FA3's own backward (no sinks: FlashAttention 3's flash_attn_func has none), checked against the
                # reference without them; the same engine and hand-overs as swattn's row.
                def fa3_compare(got, inputs=inputs, grad=grad):
                    plain = torch.autograd.grad(attention_ref(*(t.to(env.reference_dtype) for t in inputs),
                                                              **kwargs)[0], inputs, grad.to(env.reference_dtype))
                    return compare_outputs(got, plain, env.dtype)
                rows.append(measure(env, shape, "FA3", lambda q=q, k=k, v=v, grad=grad: peers.fa3_backward(
                    q, k, v, left, grad), fa3_compare, timings.timer((shape, "FA3"), graphs=False), note="no sinks"))
            continue
        reference = {with_sinks: attention_ref(q.to(env.reference_dtype), k, v, sinks=sinks if with_sinks else None,
                                               **kwargs)[0] for with_sinks in (False, True)}
        providers = [
            ("swattn", lambda: (lambda: swattn.flash_attn_func(q, k, v, sinks=sinks, **kwargs)), True),
            # The Triton kernel where the default dispatch takes the Gluon kernel (SWATTN_GLUON=0 for the row): its
            # GPU and host costs differ (the Gluon launch fills four TMA descriptors per call).
            ("swattn (Triton kernel)", lambda: (lambda: swattn.flash_attn_func(q, k, v, sinks=sinks, **kwargs)), True),
            ("FA3", lambda: peers.fa3(q, k, v, left, sinks), True),
            ("FA4", lambda: peers.fa4(q, k, v, left, sinks), True),
            ("Flex", lambda: _with_note(peers.flex_prefill(q, k, v, left, sinks)), False),
        ]
        for name, build, with_sinks in providers:
            if env.wants(name):
                compare = lambda out, ref=reference[with_sinks]: compare_outputs(out, ref, env.dtype)
                mode = gluon_fwd.GLUON_MODE
                gluon_fwd.GLUON_MODE = "0" if "Triton kernel" in name else mode
                try:
                    row = measure(env, shape, name, build, compare, timings.timer((shape, name)))
                    if name.startswith("swattn"):
                        row.note = "; ".join(filter(None, [row.note, _kernel_used(q)]))
                finally:
                    gluon_fwd.GLUON_MODE = mode
                rows.append(row)
    return rows


def _kernel_used(q: torch.Tensor) -> str:
    """Which forward kernel the latest plan for q's shape launched (the Gluon kernel or Triton's)."""
    plans = [plan for plan in fwd.plans() if plan.out_shape == tuple(q.shape) and plan.launches]
    if not plans:
        return ""
    return "Gluon kernel" if plans[-1].use_gluon else "Triton kernel"


# Row groups (``--rows``): the decode rows, the op path's (dispatcher and torch.compile, with the decode rows), the
# prefill and the backward rows.
ROW_GROUPS = ("decode", "op", "prefill", "backward")


def run(env: Env, rows: list[str] | None = None) -> Section:
    """``rows``: the groups of ``ROW_GROUPS`` to time (None: all)."""
    groups = set(ROW_GROUPS if rows is None else rows)
    unknown = groups - set(ROW_GROUPS)
    if unknown:
        raise ValueError(f"rows: unknown group(s) {sorted(unknown)}; expected some of {', '.join(ROW_GROUPS)}")
    timings = _Timings(env)
    dims = Dims()
    rows = ((_decode_rows(env, dims, timings) if "decode" in groups else [])
            + (_op_rows(env, dims, timings, ("decode" not in groups, "prefill" not in groups))
               if "op" in groups else [])
            + (_prefill_rows(env, dims, timings, backward=False) if "prefill" in groups else [])
            + (_prefill_rows(env, dims, timings, backward=True) if "backward" in groups else []))
    rows, unavailable = drop_unavailable(rows)
    headers = ["shape", "provider", "host us/call", "eager us/call", "graph us/call", "eager/graph", "check", "note"]
    cells = []
    for r in rows:
        host, graph = timings.extra.get((r.shape, r.provider), (None, None))
        graph_text = str(graph) if graph is not None else "-"
        ratio = (f"{r.timing.median_us / graph.median_us:.2f}" if r.timing and isinstance(graph, Timing) else "")
        cells.append([r.shape, r.provider, str(host) if host else "-", str(r.timing) if r.timing else "-",
                      graph_text, ratio, check_cell(r), r.note])
    notes = ["host: CPU time per call of 100 back-to-back calls without a sync; eager: the same calls between CUDA "
             "events; graph: replayed from a CUDA graph; median (p20/p80)", *unavailable]
    return Section("Host cost of eager calls", markdown_table(headers, cells), notes, rows)
