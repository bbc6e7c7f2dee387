"""Host (Python) time of one eager swattn call with every kernel replaced by ``swattn.testing.StubKernel``: swattn's
own argument checks, planning and launch path as a GPU call runs them (repeated calls take the direct launch of the
compiled kernel), on any machine. Triton's C launcher and the GPU are not included; ``python -m swattn.bench host``
measures whole calls on a GPU. Times are the best of 15 batches of 200 calls, in thread CPU time (steady on a
shared machine).

    python scripts/host_time.py                # gpt-oss decode (paged, with and without append), prefill, varlen
                                               # prefill and vLLM mixed steps of new lengths, backward
    python scripts/host_time.py --profile      # also cProfile each, sorted by own time
    python scripts/host_time.py --only bench   # only the scenarios whose name contains "bench"
    python scripts/host_time.py --c-launcher   # the scenarios and the 4K gpt-oss prefill on the Gluon kernel
                                               # (forced), compiled launchers a copy of Triton 3.6's around a no-op
                                               # C function: through CompiledKernel.run and through the C launcher
    python scripts/host_time.py --gluon        # the 4K gpt-oss Gluon prefill alone, as --c-launcher times it
    python scripts/host_time.py --op           # the torch.library op path: the window decode with append and the
                                               # 4K prefill eagerly, as the op through the dispatcher, and as a
                                               # torch.compile'd function around the public call
    PYTHONPATH=/path/to/other/checkout python scripts/host_time.py   # compare with another version
"""

from __future__ import annotations

import cProfile
import itertools
import os
import pstats
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path (whose kernels are stubbed below)

# glibc serves a CPU tensor of 32 MB (the 4K prefill's output) by mmap and munmap on every call or from its heap,
# depending on the process's allocation history: ~11 us per call or ~1 (dev machine, glibc 2.36), so the 4K Gluon
# prefill measured 18 us in some runs and 29-35 us in others of the same code. With the mmap threshold pinned above
# every tensor here, all of them come from the heap, as a GPU call's come from the caching allocator. (glibc reads
# its tunables at process start: the script runs itself again with them.)
_PINNED_MALLOC = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647"
if __name__ == "__main__" and sys.platform.startswith("linux") and "mmap_threshold" not in os.environ.get(
        "GLIBC_TUNABLES", ""):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), _PINNED_MALLOC)))
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

import swattn  # noqa: E402


def scenarios() -> dict:
    batch, heads, kv_heads, head_dim, page_size, capacity = 16, 64, 8, 64, 16, 4096
    k_cache = torch.randn(batch * capacity // page_size, page_size, kv_heads, head_dim, dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.arange(batch * capacity // page_size, dtype=torch.int32).view(batch, -1)
    seqlens = torch.full((batch,), 1000, dtype=torch.int32)
    q = torch.randn(batch, 1, heads, head_dim, dtype=torch.float16)
    k_new, v_new = (torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.float16) for _ in range(2))
    sinks = torch.randn(heads, dtype=torch.bfloat16)
    q_prefill = torch.randn(1, 2048, heads, head_dim, dtype=torch.float16, requires_grad=True)
    k_prefill, v_prefill = (torch.randn(1, 2048, kv_heads, head_dim, dtype=torch.float16, requires_grad=True)
                            for _ in range(2))
    kvcache = dict(cache_seqlens=seqlens, page_table=page_table, causal=True, sinks=sinks, check_inputs=False)
    # check_inputs=False: as on GPU tensors, where the data checks are off by default (they synchronise).

    def decode_append():
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, window_size=(127, 0), **kvcache)

    def decode():
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, window_size=(127, 0), **kvcache)

    def decode_full_splits():
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, num_splits=4, **kvcache)

    def prefill():
        with torch.no_grad():
            return swattn.flash_attn_func(q_prefill, k_prefill, v_prefill, causal=True, window_size=(127, 0),
                                          sinks=sinks)

    # A serving engine's varlen prefill: the batch's lengths change on every call, so every call is a new
    # signature (more of them than the plan caches keep).
    q_packed, k_packed, v_packed = (t.detach().view(-1, *t.shape[2:]) for t in (q_prefill, k_prefill, v_prefill))
    batches = []
    for total in range(1024, 1024 + 600):
        cu = torch.tensor([0, total // 3, total], dtype=torch.int32)
        batches.append((q_packed[:total], k_packed[:total], v_packed[:total], cu, total - total // 3))
    step = iter(range(10**9))

    def varlen_new_shapes():
        q, k, v, cu, longest = batches[next(step) % len(batches)]
        with torch.no_grad():
            return swattn.flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True, window_size=(127, 0),
                                                 sinks=sinks, check_inputs=False)

    # The rows of `python -m swattn.bench host` (B=16, 1K context, page 16, bf16, float32 sinks): the full decode at
    # the H200's automatic split count (4; on the CPU the automatic count is 1, so it is given), and the window decode
    # with the append, fused by default at this shape (ops.FUSED_APPEND_DEFAULTS: B <= 16 on 16-token pages).
    bench_pages = 1024 // page_size
    bench_k, bench_v = (torch.randn(batch * bench_pages, page_size, kv_heads, head_dim, dtype=torch.bfloat16)
                        for _ in range(2))
    bench_table = torch.randperm(batch * bench_pages).view(batch, bench_pages).to(torch.int32)
    bench_q = torch.randn(batch, 1, heads, head_dim, dtype=torch.bfloat16)
    bench_k_new, bench_v_new = (torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
    bench_sinks = sinks.float()
    bench_kwargs = dict(page_table=bench_table, causal=True, sinks=bench_sinks, check_inputs=False)
    bench_before = torch.full((batch,), 1023, dtype=torch.int32)  # the append makes it 1024, the full call's length
    bench_lengths = bench_before + 1

    def bench_decode_full():
        return swattn.flash_attn_with_kvcache(bench_q, bench_k, bench_v, cache_seqlens=bench_lengths, num_splits=4,
                                              window_size=(-1, 0), **bench_kwargs)

    def bench_decode_fused_append():
        return swattn.flash_attn_with_kvcache(bench_q, bench_k, bench_v, k=bench_k_new, v=bench_v_new,
                                              cache_seqlens=bench_before, window_size=(127, 0), **bench_kwargs)

    out = swattn.flash_attn_func(q_prefill, k_prefill, v_prefill, causal=True, window_size=(127, 0))
    grad = torch.randn_like(out)

    def backward():
        torch.autograd.grad(out, (q_prefill, k_prefill, v_prefill), grad, retain_graph=True)

    # A serving engine's mixed step through the vLLM adapter: 15 decode rows and one prefill chunk of 1..600
    # tokens, so q's rows, cu_seqlens_q and max_seqlen_q change on every call; paged W(127,0) over 16-token pages,
    # sinks, out= (vLLM's output buffer). The adapter passes no check_inputs: as on GPU tensors, the data checks are
    # off (on CPU tensors they default to on, and a call that reads data is never replayed).
    from swattn import interface
    from swattn.integrations import vllm as swattn_vllm

    interface._wants_data_checks = lambda t, check_inputs: (
        interface._compat.CHECK_INPUTS if check_inputs is None else bool(check_inputs))
    mixed_pages = 4096 // page_size
    mixed_k, mixed_v = (torch.randn(batch * mixed_pages, page_size, kv_heads, head_dim, dtype=torch.bfloat16)
                        for _ in range(2))
    mixed_table = torch.arange(batch * mixed_pages, dtype=torch.int32).view(batch, -1)
    mixed_q = torch.randn(15 + 4000, heads, head_dim, dtype=torch.bfloat16)
    mixed_out = torch.empty_like(mixed_q)
    mixed_steps = []
    for chunk in range(1, 4001):
        lengths = torch.tensor([1] * 15 + [chunk], dtype=torch.int32)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        used = torch.full((batch,), 90 + chunk, dtype=torch.int32)
        mixed_steps.append((mixed_q[:15 + chunk], cu, chunk, used, mixed_out[:15 + chunk]))
    mixed_step = iter(range(10**9))

    new_size = itertools.cycle(range(600, 4000))  # (repeats only past 3400 calls: --profile's)

    def vllm_mixed_step(step=None):
        q, cu, longest, used, out = mixed_steps[next(mixed_step) % 600 if step is None else step]
        return swattn_vllm.flash_attn_varlen_func(q, mixed_k, mixed_v, longest, cu, 4096, seqused_k=used, causal=True,
                                                  window_size=[127, 0], block_table=mixed_table,
                                                  s_aux=sinks, out=out)

    # The same with chunks of 601..4000 tokens, each once: a measurement's 3050 calls never see a chunk size twice
    # (nor one of the row above), so every call makes the forward plan of its length (the replay serves them).
    def vllm_mixed_step_new_sizes():
        return vllm_mixed_step(next(new_size))

    # A transformers decode step with a DynamicCache (through swattn's adapter, a dense KV cache): k / v are
    # [1, Hk, S, D] buffers one token longer on every step, passed transposed ([1, S, Hk, D], head stride S * D), so
    # every call is a length (and strides) seen for the first time; gpt-oss heads, bf16, bf16 sinks.
    dense_storage = torch.randn(2, kv_heads * 5000 * head_dim, dtype=torch.bfloat16)
    dense_q = torch.randn(1, 1, heads, head_dim, dtype=torch.bfloat16)
    dense_steps = [(*(dense_storage[i].as_strided((1, length, kv_heads, head_dim),
                                                  (kv_heads * length * head_dim, head_dim, length * head_dim, 1))
                      for i in range(2)), torch.tensor([length], dtype=torch.int32))
                   for length in range(1000, 5000)]
    dense_step = itertools.cycle(range(len(dense_steps)))

    def dense_decode_new_lengths(window=(127, 0)):
        k, v, lengths = dense_steps[next(dense_step)]
        return swattn.flash_attn_with_kvcache(dense_q, k, v, cache_seqlens=lengths, causal=True, window_size=window,
                                              sinks=sinks, check_inputs=False)

    # A prefill of a new prompt length every call (flash_attn_func without padding: transformers' prefill, or
    # training on sequences of varying length): q [1, S, 64, 64], k / v [1, S, 8, 64] views of preallocated buffers
    # (contiguous), S = 1000..4999 cycling, gpt-oss heads, bf16, W(127,0), bf16 sinks.
    dense_q_storage = torch.randn(5000 * heads * head_dim, dtype=torch.bfloat16)
    dense_kv_storage = torch.randn(2, 5000 * kv_heads * head_dim, dtype=torch.bfloat16)
    prefills = [(dense_q_storage[:length * heads * head_dim].view(1, length, heads, head_dim),
                 *(dense_kv_storage[i, :length * kv_heads * head_dim].view(1, length, kv_heads, head_dim)
                   for i in range(2)))
                for length in range(1000, 5000)]
    prefill_step = itertools.cycle(range(len(prefills)))

    def prefill_new_lengths():
        q, k, v = prefills[next(prefill_step)]
        with torch.no_grad():
            return swattn.flash_attn_func(q, k, v, causal=True, window_size=(127, 0), sinks=sinks)

    # The same as a training step: forward and backward (q, k, v require grad), S new every call.
    training_step = itertools.cycle(range(len(prefills)))

    def training_new_lengths():
        q, k, v = (t.detach().requires_grad_() for t in prefills[next(training_step)])
        out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(127, 0), sinks=sinks)
        return torch.autograd.grad(out, (q, k, v), out)

    return {"decode W(127,0) with append, paged": decode_append, "decode W(127,0), paged": decode,
            "decode full, 4 splits + combine": decode_full_splits,
            "bench: decode full B=16 1K page 16, 4 splits + merge": bench_decode_full,
            "bench: decode W(127,0) B=16 1K page 16, fused append": bench_decode_fused_append,
            "prefill W(127,0) 2K": prefill,
            "varlen prefill, new lengths every call": varlen_new_shapes,
            "vLLM mixed step (15 decode rows + a 1..600-token chunk), new lengths every call": vllm_mixed_step,
            "vLLM mixed step, a chunk size never seen before (601..4000)": vllm_mixed_step_new_sizes,
            "dense KV cache decode W(127,0), one token longer every call (DynamicCache)": dense_decode_new_lengths,
            "dense KV cache decode full, one token longer every call": lambda: dense_decode_new_lengths((-1, 0)),
            "dense prefill W(127,0) (flash_attn_func), a new length every call (1000..4999)": prefill_new_lengths,
            "dense training step W(127,0) (forward + backward), a new length every call": training_new_lengths,
            "backward W(127,0) 2K": backward}


def time_per_call(fn) -> float:
    for _ in range(50):
        fn()
    best = float("inf")
    for _ in range(15):
        start = time.thread_time()
        for _ in range(200):
            fn()
        best = min(best, (time.thread_time() - start) / 200 * 1e6)
    return best


def c_launcher(gluon_only: bool = False) -> None:
    """Every scenario above and the 4K gpt-oss prefill on the Gluon kernel (dispatch forced), with every kernel
    stubbed and its compiled launcher Triton 3.6's ``CudaLauncher`` (tests/kernels/_triton36_launcher.py) around a
    no-op C function and a no-op descriptor fill: timed through ``CompiledKernel.run`` (``_launch.C_LAUNCHER`` off,
    session 5's direct launch) and through the C launcher (on). Python function calls per call from cProfile; us per
    call the best of three alternations."""
    import cProfile as profile_module

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "kernels"))
    import _triton36_launcher as triton36

    from swattn.kernels import _launch, fwd, gluon_fwd
    from swattn.testing import StubKernel, stub_kernels

    q = torch.randn(1, 4096, 64, 64, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4096, 8, 64, dtype=torch.bfloat16) for _ in range(2))
    sinks = torch.randn(64, dtype=torch.bfloat16)

    class NoLaunch:  # the C function: a callable without __code__, as a builtin
        def __call__(self, *args):
            pass

    triton36.make_tensordesc_arg = lambda descriptor, meta: [object(), *descriptor.shape, *descriptor.strides]
    use_gluon, version, kernel = fwd._use_gluon, _launch._triton_version, gluon_fwd._swa_fwd_sm90_kernel
    _launch._triton_version = lambda: (3, 6)

    def gluon_prefill():
        with torch.no_grad():
            return swattn.flash_attn_func(q, k, v, causal=True, window_size=(127, 0), sinks=sinks)

    calls = {"prefill W(127,0) 4K gpt-oss, Gluon kernel": gluon_prefill}
    if not gluon_only:
        with stub_kernels():  # scenarios() runs a 2K prefill for the backward's inputs: minutes in the interpreter
            calls = {**scenarios(), **calls}
        calls.pop("varlen prefill, new lengths every call")  # plans every call: no direct launch to compare
        calls.pop("vLLM mixed step, a chunk size never seen before (601..4000)")  # the same
        for name in [name for name in calls if "a new length every call" in name]:
            calls.pop(name)  # the same
        # The backward's plans live in the autograd graph made with the scenarios (outside stub_kernels' plan
        # clearing), so its launches would keep the first measurement's launcher: not compared here.
        calls.pop("backward W(127,0) 2K")

    def measure(call, gluon: bool, c_launcher: bool) -> tuple[float, float]:
        _launch.C_LAUNCHER = c_launcher
        fwd._use_gluon = (lambda *args, **kwargs: True) if gluon else use_gluon
        with stub_kernels() as stubs:
            stubs["gluon"] = gluon_fwd._swa_fwd_sm90_kernel = StubKernel(kernel)
            for stub in stubs.values():
                names = [name for name, _ in _launch.bound_argument_order(stub)]
                descriptors = 4 if stub is stubs["gluon"] else 0
                signature = {name: "tensordesc<bf16[64, 64]>" if index < descriptors else "i32"
                             for index, name in enumerate(names)}
                stub.compiled.run = triton36.CudaLauncher(NoLaunch(), signature, [{}] * descriptors or None)
            try:
                us = time_per_call(call)
                profiler = profile_module.Profile()
                profiler.enable()
                for _ in range(500):
                    call()
                profiler.disable()
                return us, pstats.Stats(profiler).total_calls / 500
            finally:
                gluon_fwd._swa_fwd_sm90_kernel = kernel

    try:
        for name, call in calls.items():
            best = {}
            for _ in range(3):
                for on in (False, True):
                    us, count = measure(call, "Gluon" in name, on)
                    best[on] = (min(us, best.get(on, (us,))[0]), count)
            (run_us, run_calls), (c_us, c_calls) = best[False], best[True]
            print(f"{name}: through CompiledKernel.run {run_us:.1f} us, {run_calls:.0f} Python calls; through the "
                  f"C launcher {c_us:.1f} us, {c_calls:.0f} Python calls per call (Triton 3.6's launcher, kernels "
                  "stubbed)", flush=True)
    finally:
        fwd._use_gluon, _launch._triton_version, _launch.C_LAUNCHER = use_gluon, version, True


def op_path() -> None:
    """The torch.library op path with the kernels stubbed: swattn's eager call (replayed), the op its public function
    ends in called through the dispatcher (``torch.ops.swattn.*``), the op's implementation called directly, and a
    ``torch.compile``d function around the public call (the default inductor backend)."""
    from swattn.bench.host import _op_arguments
    from swattn.testing import stub_kernels

    batch, heads, kv_heads, head_dim, page_size, capacity = 16, 64, 8, 64, 16, 1024
    k_cache = torch.randn(batch * capacity // page_size, page_size, kv_heads, head_dim, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.arange(batch * capacity // page_size, dtype=torch.int32).view(batch, -1)
    q = torch.randn(batch, 1, heads, head_dim, dtype=torch.bfloat16)
    k_new, v_new = (torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
    sinks = torch.randn(heads)
    decode_args = (q, k_cache, v_cache)
    decode_kwargs = dict(k=k_new, v=v_new, cache_seqlens=torch.full((batch,), capacity - 1, dtype=torch.int32),
                         page_table=page_table, causal=True, window_size=(127, 0), sinks=sinks, check_inputs=False)
    prefill_args = (torch.randn(1, 4096, heads, head_dim, dtype=torch.bfloat16),
                    *(torch.randn(1, 4096, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2)))
    prefill_kwargs = dict(causal=True, window_size=(127, 0), sinks=sinks)
    from swattn import ops

    implementations = {torch.ops.swattn.fwd: ops._fwd_impl, torch.ops.swattn.fwd_kvcache: ops._fwd_kvcache_impl}
    with stub_kernels(), torch.no_grad():
        for label, function, args, kwargs in (
                ("decode W(127,0) B=16 with append, paged", swattn.flash_attn_with_kvcache, decode_args,
                 decode_kwargs),
                ("prefill W(127,0) 4K", swattn.flash_attn_func, prefill_args, prefill_kwargs)):
            op, op_args = _op_arguments(function, *args, **kwargs)
            implementation = implementations[op]
            compiled = torch.compile(lambda function=function, args=args, kwargs=kwargs: function(*args, **kwargs),
                                     fullgraph=True)
            for name, fn in (("eager (swattn._replay)", lambda: function(*args, **kwargs)),
                             ("op via dispatcher", lambda: op(*op_args)),
                             ("op implementation called directly", lambda: implementation(*op_args)),
                             ("torch.compile (inductor)", compiled)):
                print(f"{label}, {name}: {time_per_call(fn):.1f} us per call (kernels stubbed)", flush=True)


def main() -> None:
    if "--c-launcher" in sys.argv or "--gluon" in sys.argv:
        c_launcher(gluon_only="--gluon" in sys.argv)
        return
    if "--op" in sys.argv:
        op_path()
        return
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    try:
        from swattn.testing import stub_kernels
    except ImportError:  # a checkout from before the planned launches: stub the kernels' launches directly
        stub_kernels = _stub_launches
    with stub_kernels():
        for name, fn in scenarios().items():
            if only and only not in name:
                continue
            print(f"{name}: {time_per_call(fn):.1f} us per call (kernels stubbed)", flush=True)
            if "--profile" in sys.argv:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(2000):
                    fn()
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def _stub_launches():
    import contextlib

    from swattn.kernels import append, bwd, combine, fwd

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    fwd._swa_fwd_kernel = append._append_kv_kernel = combine._swa_combine_kernel = NoLaunch()
    bwd._swa_bwd_dq_kernel = bwd._swa_bwd_dkdv_kernel = NoLaunch()
    return contextlib.nullcontext()


if __name__ == "__main__":
    main()
