"""Where an eager call's host time goes, on a GPU (issue 18).

Per scenario (gpt-oss layer shapes, bf16, sinks: window-(127, 0) decode B=16 over a paged 1K context with and
without the append, the fused append, full decode with split-KV, 4K window prefill, its backward): host us per call
of back-to-back calls without a sync, eager us per call between CUDA events, GPU kernels and allocations per call,
direct and plain launches, and cProfile's top functions by own time. Then the parts alone: allocations, Triton's
compiled launcher called with tensors or with integer pointers, Triton's ``JITFunction.run``, an empty kernel.
The Gluon forward (not in the default list; ``--only gluon_4k,gluon_4k_plain,...``): prefills forced onto the Gluon
kernel, 4K and 16K W(127,0) gpt-oss and 16K causal D128, each with the direct launch and the plain one
(``*_plain``), and ``gluon_parts``, its launch taken apart; ``gluon_4k_run`` / ``gluon_16k_run``: the direct launch
through ``CompiledKernel.run`` (``_launch.C_LAUNCHER`` off), session 5's path; ``gluon_4k_forward``: every call
through ``gluon_fwd.forward`` (session 6's path) instead of the forward plan's kept launch; ``gluon_4k_triton``:
``gluon_4k``'s call on the Triton kernels; ``gluon_2k`` / ``prefill_2k_triton``: the 2K prefill, below
``gluon_fwd.EAGER_MIN_US``, on either kernel.

    PYTHONPATH=. python scripts/host_profile.py [--out FILE] [--calls 2000] [--only decode,backward]

On a CPU (``TRITON_INTERPRET=1``) it runs tiny shapes as a smoke test of the script; only the GPU numbers mean
anything. Lines go to stdout as they are measured (a run cut short keeps what it had); ``--out`` also gets the
cProfile tables.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import re
import statistics
import sys
import time
from collections import Counter

import torch

import swattn
from swattn import ops
from swattn.kernels import _launch, fwd, gluon_fwd

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


class Report:
    def __init__(self, path: str | None):
        self.file = open(path, "w") if path else None  # noqa: SIM115 (closed at exit)

    def line(self, text: str = "", summary: bool = True) -> None:
        if summary:
            print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def host_us(fn, calls: int, reps: int = 5) -> tuple[float, float]:
    """Median and best host microseconds per call over ``reps`` batches of back-to-back calls (no sync inside)."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) * 1e6 / calls)
    sync()
    return statistics.median(samples), min(samples)


def eager_us(fn, calls: int = 200) -> float:
    if not CUDA:
        return float("nan")
    sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    sync()
    return start.elapsed_time(end) * 1e3 / calls


def graph_us(fn, calls: int = 20) -> float:
    """GPU time per call replayed from a CUDA graph (what the eager call's host work is set against)."""
    if not CUDA:
        return float("nan")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        graph.replay()
    end.record()
    sync()
    return start.elapsed_time(end) * 1e3 / (20 * calls)


def gpu_work_per_call(fn, calls: int = 20) -> tuple[float, Counter]:
    """GPU kernels (and memsets/copies) per call, by name, from torch.profiler."""
    if not CUDA:
        return float("nan"), Counter()
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        sync()
    names = Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            names[event.name[:60]] += 1
    total = sum(names.values()) / calls
    return total, Counter({name: count / calls for name, count in names.items()})


def allocations_per_call(fn, calls: int = 100) -> float:
    if not CUDA:
        return float("nan")
    fn()
    sync()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for _ in range(calls):
        fn()
    sync()
    return (torch.cuda.memory_stats()["allocation.all.allocated"] - before) / calls


def launches() -> list:
    return [obj for obj in gc.get_objects() if isinstance(obj, _launch.Launch)]


def launch_counts() -> tuple[int, int]:
    found = launches()
    return sum(launch.plain_launches for launch in found), sum(launch.direct_launches for launch in found)


def c_launches() -> int:
    """Direct launches made through Triton's C launcher (``_launch.CLauncher``), all plans."""
    return sum(entry[3].launches for launch in launches() for entry in launch._compiled.values()
               if entry[3] is not None)


def profile_table(fn, calls: int, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    sync()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(lines)
    text = stream.getvalue()
    text = text[text.find("   ncalls"):] if "   ncalls" in text else text
    return re.sub(r"/\S*/(site-packages|swattn)/", r"\1/", text)  # short paths: site-packages/torch/..., swattn/...


def scenarios(quick: bool) -> dict:
    heads, kv_heads, head_dim = (64, 8, 64) if not quick else (8, 2, 32)
    batch, context, page_size = (16, 1024, 16) if not quick else (2, 40, 8)
    seqlen = 4096 if not quick else 48
    left = 127 if not quick else 15
    dtype = torch.bfloat16 if CUDA else torch.float16
    pages = -(-context // page_size)
    k_pool = torch.randn(batch * pages, page_size, kv_heads, head_dim, device=DEVICE, dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    table = torch.randperm(batch * pages, device=DEVICE).view(batch, pages).to(torch.int32)
    q = torch.randn(batch, 1, heads, head_dim, device=DEVICE, dtype=dtype)
    k_new, v_new = (torch.randn(batch, 1, kv_heads, head_dim, device=DEVICE, dtype=dtype) for _ in range(2))
    sinks = torch.randn(heads, device=DEVICE)
    before = torch.full((batch,), context - 1, device=DEVICE, dtype=torch.int32)
    lengths = before + 1
    kvcache = dict(page_table=table, causal=True, sinks=sinks)

    def decode():
        return swattn.flash_attn_with_kvcache(q, k_pool, v_pool, cache_seqlens=lengths, window_size=(left, 0),
                                             **kvcache)

    def decode_append():
        return swattn.flash_attn_with_kvcache(q, k_pool, v_pool, k=k_new, v=v_new, cache_seqlens=before,
                                             window_size=(left, 0), **kvcache)

    def decode_full():
        return swattn.flash_attn_with_kvcache(q, k_pool, v_pool, cache_seqlens=lengths, window_size=(-1, 0),
                                             **kvcache)

    def decode_full_append():
        return swattn.flash_attn_with_kvcache(q, k_pool, v_pool, k=k_new, v=v_new, cache_seqlens=before,
                                             window_size=(-1, 0), **kvcache)

    qp = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=dtype, requires_grad=True)
    kp, vp = (torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=dtype, requires_grad=True)
              for _ in range(2))

    def prefill():
        with torch.no_grad():
            return swattn.flash_attn_func(qp, kp, vp, causal=True, window_size=(left, 0), sinks=sinks)

    out = swattn.flash_attn_func(qp, kp, vp, causal=True, window_size=(left, 0), sinks=sinks)
    grad = torch.randn_like(out)

    def backward():
        return torch.autograd.grad(out, (qp, kp, vp), grad, retain_graph=True)

    def gluon_prefill(seqlen: int, heads: int, kv_heads: int, head_dim: int, left: int, with_sinks: bool):
        """A prefill for the Gluon scenarios (forced onto the Gluon kernel by their variant)."""
        seqlen = seqlen if not quick else 48
        q, k, v = (torch.randn(1, seqlen, h, head_dim, device=DEVICE, dtype=dtype) for h in (heads, kv_heads, kv_heads))
        gluon_sinks = torch.randn(heads, device=DEVICE) if with_sinks else None

        def call():
            return swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0), sinks=gluon_sinks)

        return call

    gluon_2k = gluon_prefill(2048, heads, kv_heads, head_dim, left, True)
    gluon_4k = gluon_prefill(4096, heads, kv_heads, head_dim, left, True)
    gluon_16k = gluon_prefill(16384, heads, kv_heads, head_dim, left, True)
    gluon_causal = gluon_prefill(16384, 32, 8, 128, -1, False)

    return {
        "decode": ("decode W(127,0) B=16 ctx 1K page 16", decode, None),
        "decode_append": ("decode W(127,0) +append", decode_append, None),
        "decode_append_fused": ("decode W(127,0) +append, SWATTN_FUSED_APPEND", decode_append, "fused"),
        "decode_full": ("decode full (split-KV + combine)", decode_full, None),
        "decode_full_append": ("decode full +append (split-KV + combine)", decode_full_append, None),
        "decode_full_append_fused": ("decode full +append, SWATTN_FUSED_APPEND", decode_full_append, "fused"),
        "prefill": ("prefill S=4096 W(127,0) (no grad)", prefill, None),
        "prefill_triton": ("prefill S=4096 W(127,0) (no grad), Triton kernel (SWATTN_GLUON=0)", prefill, "triton"),
        "backward": ("backward S=4096 W(127,0), sinks (torch.autograd.grad)", backward, None),
        # The Gluon kernel forced (SWATTN_GLUON=1's setting), its direct launch and the plain one (kernel[grid] with
        # tensor descriptors built on every call, _launch.DIRECT_LAUNCH off).
        "gluon_4k": ("prefill 4K W(127,0) D64 gpt-oss, Gluon kernel, direct launch", gluon_4k, "gluon"),
        "gluon_4k_plain": ("prefill 4K W(127,0) D64 gpt-oss, Gluon kernel, plain launch", gluon_4k, "gluon plain"),
        # The direct launch through CompiledKernel.run (_launch.C_LAUNCHER off: Triton's Python launcher fills the
        # four TMA descriptors on every call), as before session 6.
        "gluon_4k_run": ("prefill 4K W(127,0) D64 gpt-oss, Gluon kernel, direct launch through "
                         "CompiledKernel.run", gluon_4k, "gluon run"),
        # Every call through gluon_fwd.forward (a pass-through wrapper around it: its keyword call and plan key per
        # call, session 6's path) instead of the forward plan's kept Gluon launch.
        "gluon_4k_forward": ("prefill 4K W(127,0) D64 gpt-oss, Gluon kernel, direct launch, every call through "
                             "gluon_fwd.forward", gluon_4k, "gluon forward"),
        # The same call as gluon_4k on the Triton kernels (the prefill scenarios wrap each call in torch.no_grad()).
        "gluon_4k_triton": ("prefill 4K W(127,0) D64 gpt-oss, Triton kernels", gluon_4k, "triton"),
        # Below gluon_fwd.EAGER_MIN_US (the Triton kernels' estimate at 2K: 27 us): both kernels side by side.
        "gluon_2k": ("prefill 2K W(127,0) D64 gpt-oss, Gluon kernel, direct launch", gluon_2k, "gluon"),
        "prefill_2k_triton": ("prefill 2K W(127,0) D64 gpt-oss, Triton kernels", gluon_2k, "triton"),
        "gluon_16k": ("prefill 16K W(127,0) D64 gpt-oss, Gluon kernel, direct launch", gluon_16k, "gluon"),
        "gluon_16k_run": ("prefill 16K W(127,0) D64 gpt-oss, Gluon kernel, direct launch through "
                          "CompiledKernel.run", gluon_16k, "gluon run"),
        "gluon_16k_plain": ("prefill 16K W(127,0) D64 gpt-oss, Gluon kernel, plain launch", gluon_16k,
                            "gluon plain"),
        "gluon_causal": ("prefill 16K causal D128 H32/8, Gluon kernel, direct launch", gluon_causal, "gluon"),
        "gluon_causal_plain": ("prefill 16K causal D128 H32/8, Gluon kernel, plain launch", gluon_causal,
                               "gluon plain"),
    }, dict(q=q, k_pool=k_pool, sinks=sinks, out=out, seqlen=seqlen, gluon_4k=gluon_4k)


def measure_scenario(report: Report, name: str, title: str, fn, calls: int) -> None:
    started = time.perf_counter()
    fn()  # compile, plan
    fn()  # the interface records its op call at a signature's second call
    sync()
    compile_s = time.perf_counter() - started
    plain0, direct0 = launch_counts()
    c0 = c_launches()
    median, best = host_us(fn, max(calls // 5, 2))
    plain1, direct1 = launch_counts()
    c1 = c_launches()
    host_calls = 5 + 5 * max(calls // 5, 2)
    eager = eager_us(fn)
    kernels, names = gpu_work_per_call(fn)
    allocations = allocations_per_call(fn)
    graph = graph_us(fn) if name != "backward" else float("nan")
    kernel = ("Gluon" if any(plan.launches and plan.use_gluon for plan in fwd.plans()) else "Triton"
              if fwd._PLANS else "-")
    report.line(f"\n## {title}  [{name}; first calls {compile_s:.1f} s; forward kernel: {kernel}]")
    report.line(f"host {median:.1f} us/call (best {best:.1f}); eager {eager:.1f} us/call; graph {graph:.2f} us/call; "
                f"GPU kernels {kernels:.2f}/call; allocations {allocations:.2f}/call; launches per call: "
                f"direct {(direct1 - direct0) / host_calls:.2f} (through Triton's C launcher "
                f"{(c1 - c0) / host_calls:.2f}), plain {(plain1 - plain0) / host_calls:.2f}")
    report.line("kernels per call: " + ", ".join(f"{n} x{c:.2f}" for n, c in names.most_common(8)))
    table = profile_table(fn, calls, 30)
    report.line("cProfile (own time, top 10):")
    for row in table.splitlines()[:11]:
        report.line("  " + row)
    report.line(f"cProfile {name}, {calls} calls, top 30 by own time:\n{table}", summary=False)


def record_launches(fn) -> dict:
    """The tensors each Launch got in one call of ``fn``: {kernel name: (launch, tensors)}."""
    recorded = {}
    original = _launch.Launch.__call__

    def recording(self, *tensors):
        recorded[self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else str(self.kernel)] = (self, tensors)
        return original(self, *tensors)

    _launch.Launch.__call__ = recording
    try:
        fn()
    finally:
        _launch.Launch.__call__ = original
    sync()
    return recorded


def parts(report: Report, decode_append, context: dict, calls: int) -> None:
    report.line("\n## parts alone (host us per call, median of 5 batches)")

    def part(label, fn, n=calls):
        median, best = host_us(fn, max(n // 5, 2))
        report.line(f"{label}: {median:.2f} (best {best:.2f})")

    q, k_pool = context["q"], context["k_pool"]
    part("torch.empty like decode out [16,1,64,64]", lambda: torch.empty(q.shape, device=q.device, dtype=q.dtype))
    part("torch.empty int32 [16]", lambda: torch.empty(16, device=q.device, dtype=torch.int32))
    part("torch.zeros int32 [1]", lambda: torch.zeros(1, device=q.device, dtype=torch.int32))
    part("torch.empty_like(prefill q 4K)", lambda: torch.empty_like(context["out"]))
    part("increment_version(cache)", lambda: torch.autograd.graph.increment_version(k_pool))
    part("torch.cuda.current_device()" if CUDA else "noop", (lambda: torch.cuda.current_device()) if CUDA
         else (lambda: None))
    if CUDA:
        part("torch.cuda.current_stream()", lambda: torch.cuda.current_stream())
    if CUDA:
        _launch._Runtime.load()
        part("triton driver get_current_device()", lambda: _launch._Runtime.get_device())
        part("triton driver get_current_stream(0)", lambda: _launch._Runtime.get_stream(0))

    recorded = record_launches(decode_append)
    for kernel_name, (launch, arguments) in recorded.items():
        # The call's arguments (a Launch with slots takes the placeholder and the tensors passed) and the kernel's
        # tensor parameters, spread from them.
        tensors = launch._spread(arguments) if launch._spread is not None else arguments
        report.line(f"\n{kernel_name}: grid {launch.grid}, {len(tensors)} tensors, {len(launch.scalars)} scalars, "
                    f"{len(launch.constexprs)} constexprs; direct {launch.direct_launches}, plain "
                    f"{launch.plain_launches}")
        part("  Launch.__call__ (swattn's launch path as called)", lambda launch=launch, t=arguments: launch(*t))
        part("  kernel[grid](...) (Triton's JITFunction.run)",
             lambda launch=launch, t=tensors: launch.kernel[launch.grid](*t, *launch.scalars, **launch.constexprs,
                                                                      **launch.options))
        if not CUDA or not launch._compiled:
            continue
        run, function, packed, _ = launch._compiled[_launch._Runtime.get_device()]
        tail = launch._tail if launch._tail is not None else launch._bound_tail()
        stream = _launch._Runtime.get_stream(_launch._Runtime.get_device())
        grid = launch.grid
        pointers = tuple(t.data_ptr() for t in tensors)
        data_ptr = torch.Tensor.data_ptr
        part("  compiled launcher, tensors", lambda: run(*grid, stream, function, packed, None, None, None,
                                                          *tensors, *tail))
        part("  compiled launcher, int pointers made per call",
             lambda: run(*grid, stream, function, packed, None, None, None, *map(data_ptr, tensors), *tail))
        part("  compiled launcher, int pointers made before", lambda: run(*grid, stream, function, packed, None, None,
                                                                          None, *pointers, *tail))
        part("  map(data_ptr) over the tensors alone", lambda: tuple(map(data_ptr, tensors)))
    if CUDA:
        import triton
        import triton.language as tl

        @triton.jit
        def _empty_kernel(X, N):
            if N < 0:
                tl.store(X, N)

        x = torch.zeros(1, device=q.device, dtype=torch.int32)
        compiled = _empty_kernel[(1,)](x, 1)
        sync()
        stream = _launch._Runtime.get_stream(_launch._Runtime.get_device())
        part("\nempty kernel, kernel[(1,)](x, 1)", lambda: _empty_kernel[(1,)](x, 1))
        part("empty kernel, compiled launcher, tensor", lambda: compiled.run(1, 1, 1, stream, compiled.function,
                                                                             compiled.packed_metadata, None, None,
                                                                             None, x, 1))
        pointer = x.data_ptr()
        part("empty kernel, compiled launcher, int pointer", lambda: compiled.run(1, 1, 1, stream, compiled.function,
                                                                                  compiled.packed_metadata, None,
                                                                                  None, None, pointer, 1))


def gluon_parts(report: Report, prefill, calls: int) -> None:
    """The Gluon forward's launch taken apart (the 4K gpt-oss prefill, Gluon kernel forced): the whole call, the
    ``gluon_fwd.forward`` call its plan makes, ``Launch.__call__``, the descriptors' copies, Triton's compiled
    launcher (which fills a CUtensorMap per descriptor) and ``kernel[grid](...)``."""
    report.line("\n## Gluon launch parts (prefill 4K W(127,0) D64 gpt-oss; host us per call, median of 5 batches)")

    def part(label, fn):
        median, best = host_us(fn, max(calls // 5, 2))
        report.line(f"{label}: {median:.2f} (best {best:.2f})")

    mode = gluon_fwd.GLUON_MODE
    gluon_fwd.GLUON_MODE = "1"
    _launch.clear_plans()
    try:
        for _ in range(3):
            prefill()
        sync()
        recorded = record_launches(prefill)
        if "_swa_fwd_sm90_kernel" not in recorded:
            report.line(f"the Gluon kernel did not serve the call (launches: {sorted(recorded)})")
            return
        launch, tensors = recorded["_swa_fwd_sm90_kernel"]
        report.line(f"grid {launch.grid}, {launch.num_tensors} tensor parameters ({len(launch.descriptors)} "
                    f"descriptors), {len(launch.scalars)} scalars, {len(launch.constexprs)} constexprs; direct "
                    f"{launch.direct_launches}, plain {launch.plain_launches}")
        part("whole call (flash_attn_func)", prefill)
        part("Launch.__call__ (direct)", lambda: launch(*tensors))
        device = _launch._Runtime.get_device() if CUDA else 0
        entry = launch._compiled.get(device)
        c = entry[3] if entry is not None else None
        report.line(f"Triton's C launcher called directly: {c is not None} (C_LAUNCHER={_launch.C_LAUNCHER})")
        if c is not None:
            def refill():  # every call fills its maps again, as for bases at new addresses
                c.expansions.clear()
                for kept in c.maps:
                    kept.clear()
                launch(*tensors)

            part("Launch.__call__ (direct, C launcher), maps filled per call", refill)
            # The same plan with Q, K, V alternating between two sets of buffers: both sets' maps kept.
            others = tuple(t.clone() if isinstance(t, torch.Tensor) and index < 3 else t
                           for index, t in enumerate(tensors))
            sets = [tensors, others]
            turn = iter(range(10**9))
            part("Launch.__call__ (direct, C launcher), two tensor sets alternating",
                 lambda: launch(*sets[next(turn) % 2]))
            launch._compiled[device] = (*entry[:3], None)
            try:
                part("Launch.__call__ (direct through CompiledKernel.run, C_LAUNCHER off)", lambda: launch(*tensors))
            finally:
                launch._compiled[device] = entry
            spread_all = launch._spread(tensors)
            count = len(launch.descriptors)
            pointers = tuple(t.data_ptr() for t in spread_all)
            expanded = c.expansions.get(pointers[:count]) or c.expand(launch.descriptors, spread_all,
                                                                      pointers[:count])
            arguments = [*expanded, *pointers[count:], *launch._tail]
            stream = _launch._Runtime.get_stream(device)
            if c.flat:
                part("C launcher alone, arguments made before",
                     lambda: c.launch(*launch.grid, stream, *c.before, *arguments))
            else:
                part("C launcher alone, arguments made before",
                     lambda: c.launch(*launch.grid, stream, *c.before, arguments))
        spread = launch._spread(tensors)
        part("the 4 descriptors' copies alone", lambda: tuple(map(_launch.Descriptor.copy, launch.descriptors,
                                                                   spread)))
        part("the 4 descriptors built by TensorDescriptor(...)",
             lambda: tuple(map(_launch.Descriptor.build, launch.descriptors, spread)))
        if CUDA and launch._compiled:
            run, function, packed, _ = launch._compiled[_launch._Runtime.get_device()]
            tail = launch._tail if launch._tail is not None else launch._bound_tail()
            stream = _launch._Runtime.get_stream(_launch._Runtime.get_device())
            count = len(launch.descriptors)
            arguments = (*map(_launch.Descriptor.copy, launch.descriptors, spread),
                         *(t.data_ptr() for t in spread[count:]))
            part("compiled launcher, arguments made before (4 CUtensorMaps filled per call)",
                 lambda: run(*launch.grid, stream, function, packed, None, None, None, *arguments, *tail))
        built = (*map(_launch.Descriptor.build, launch.descriptors, spread), *spread[len(launch.descriptors):])
        part("kernel[grid](...) (Triton's JITFunction.run, descriptors made before)",
             lambda: launch.kernel[launch.grid](*built, *launch.scalars, **launch.constexprs, **launch.options))
    finally:
        gluon_fwd.GLUON_MODE = mode
        _launch.clear_plans()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write everything (with the cProfile tables) to this file")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--only", help="comma-separated scenario names (default: all, the parts after the decodes)")
    args = parser.parse_args()
    quick = not CUDA
    calls = args.calls if CUDA else 10
    report = Report(args.out)
    import triton

    device = torch.cuda.get_device_name() if CUDA else "CPU (interpreter: a smoke test, not a timing)"
    report.line(f"# host profile: {device}; torch {torch.__version__}, triton {triton.__version__}; "
                f"DIRECT_LAUNCH={_launch.DIRECT_LAUNCH}, FUSED_APPEND={ops.FUSED_APPEND}")
    found, context = scenarios(quick)
    default = ["decode", "decode_append", "parts", "decode_append_fused", "decode_full_append", "prefill", "backward"]
    wanted = args.only.split(",") if args.only else default
    for name in wanted:
        if name in ("parts", "gluon_parts"):
            try:
                if name == "parts":
                    parts(report, found["decode_append"][1], context, calls)
                else:
                    gluon_parts(report, context["gluon_4k"], calls)
            except Exception as exc:
                report.line(f"\n## {name}: FAILED {type(exc).__name__}: {exc}")
                sync()
            continue
        title, fn, variant = found[name]
        fused, mode, direct, c_launcher = ops.FUSED_APPEND, gluon_fwd.GLUON_MODE, _launch.DIRECT_LAUNCH, \
            _launch.C_LAUNCHER
        forward = gluon_fwd.forward
        flags = (variant or "").split()
        try:
            if "forward" in flags:
                gluon_fwd.forward = lambda *args, **kwargs: forward(*args, **kwargs)
            ops.FUSED_APPEND = "fused" in flags or (fused and variant is None)
            gluon_fwd.GLUON_MODE = "1" if "gluon" in flags else "0" if "triton" in flags else mode
            _launch.DIRECT_LAUNCH = direct and "plain" not in flags
            _launch.C_LAUNCHER = c_launcher and "run" not in flags
            _launch.clear_plans()  # plans keep the launch path and kernel they were made with
            measure_scenario(report, name, title, fn, calls)
        except Exception as exc:  # report and go on: one failing scenario must not hide the others
            report.line(f"\n## {title}: FAILED {type(exc).__name__}: {exc}")
            sync()
        finally:
            ops.FUSED_APPEND, gluon_fwd.GLUON_MODE, _launch.DIRECT_LAUNCH = fused, mode, direct
            _launch.C_LAUNCHER, gluon_fwd.forward = c_launcher, forward
            _launch.clear_plans()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
