"""The planned launch path (swattn/kernels/_launch.py): one plan per call signature, Triton's ``kernel[grid](...)``
once per plan, then the compiled kernel's launcher directly; and the fallbacks to the plain launch.

The GPU path runs here with ``swattn.testing.stub_kernels`` (kernels that count their launches and return a stub
compiled kernel, as ``JITFunction.run`` returns a ``CompiledKernel`` on a GPU); the interpreter path with the real
kernels. tests/gpu/test_bf16_real_sizes.py checks the direct launches' results on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from triton.runtime.jit import JITFunction

import swattn
from swattn import ops
from swattn._compat import interpreter_enabled
from swattn.kernels import _launch, append, bwd, combine, fwd
from swattn.kernels._launch import Launch, bound_argument_order
from swattn.testing import StubKernel, stub_kernels

KERNELS = [fwd._swa_fwd_kernel, append._append_kv_kernel, combine._swa_combine_kernel, bwd._swa_bwd_dq_kernel,
           bwd._swa_bwd_dkdv_kernel]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda kernel: kernel.fn.__name__)
def test_bound_argument_order_is_tritons(kernel):
    # JITFunction.run hands the compiled launcher every bound argument in the order of its arg_names.
    assert [name for name, _ in bound_argument_order(kernel)] == JITFunction(kernel.fn).arg_names


def _decode_call(batch: int = 3, num_splits: int = 1):
    heads, kv_heads, head_dim, page_size, pages = 4, 2, 16, 4, 6
    k_cache = torch.randn(batch * pages, page_size, kv_heads, head_dim, dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    page_table = torch.arange(batch * pages, dtype=torch.int32).view(batch, pages)
    seqlens = torch.full((batch,), 9, dtype=torch.int32)
    sinks = torch.randn(heads)

    def call():
        q = torch.randn(batch, 1, heads, head_dim, dtype=torch.float16)
        k_new, v_new = (torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.float16) for _ in range(2))
        return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                              page_table=page_table, causal=True, window_size=(7, 0), sinks=sinks,
                                              num_splits=num_splits, check_inputs=False)

    return call


def _bound_arguments(stub: StubKernel, args: tuple, kwargs: dict) -> list:
    """What JITFunction.run would hand the compiled launcher for ``kernel[grid](*args, **kwargs)``."""
    names = [name for name, _ in bound_argument_order(stub)]
    values = dict(zip(names, args)) | kwargs
    return [values.get(name, default) for name, default in bound_argument_order(stub)]


@pytest.mark.parametrize("num_splits", [1, 3], ids=["append+attention", "append+attention+combine"])
def test_repeated_call_launches_the_compiled_kernels_directly(monkeypatch, num_splits):
    configs_chosen = []
    choose = fwd.forward_config
    monkeypatch.setattr(fwd, "forward_config",
                        lambda *args, **kwargs: configs_chosen.append(args) or choose(*args, **kwargs))
    # The kept scratch's stream and capture query (a driver call on a GPU): once per call, for the append's new
    # lengths and the splits' partial results alike.
    stream_keys = []
    stream_key = _launch.stream_key
    for module in (_launch, fwd, ops):
        monkeypatch.setattr(module, "stream_key", lambda device: stream_keys.append(device) or stream_key(device))
    with stub_kernels() as stubs:
        call = _decode_call(num_splits=num_splits)
        call()
        used = {name: stub for name, stub in stubs.items() if stub.plain_launches}
        expected = {"_append_kv_kernel", "_swa_fwd_kernel"} | ({"_swa_combine_kernel"} if num_splits > 1 else set())
        assert set(used) == expected  # one launch each: no second pass for a single-query tile
        first = {name: stub.last_launch for name, stub in used.items()}
        kernel_plans = (fwd._PLANS, append._PLANS)
        misses = [cache.misses for cache in kernel_plans]
        stream_keys.clear()
        for _ in range(3):
            call()
        assert len(stream_keys) == 3
        # Triton's JITFunction.run (bind, specialize, look up or compile) once per plan; the config chosen once;
        # no plan made again.
        assert all(stub.plain_launches == 1 and stub.direct_launches == 3 for stub in used.values())
        assert len(configs_chosen) == 1
        assert [cache.misses for cache in kernel_plans] == misses
        for name, stub in used.items():
            grid, args, kwargs = first[name]
            direct_grid, arguments = stub.last_launch
            assert direct_grid == tuple(grid) + (1,) * (3 - len(grid))
            # The same arguments as the plain launch, tensors aside (each call brings its own, passed as its
            # device pointer).
            expected_args = _bound_arguments(stub, args, kwargs)
            assert len(arguments) == len(expected_args)
            for got, want in zip(arguments, expected_args):
                if isinstance(want, torch.Tensor):
                    assert type(got) is int and got != 0
                else:
                    assert type(got) is type(want) and got == want
        # Another signature (batch 2) is planned and looked up once.
        _decode_call(batch=2, num_splits=num_splits)()
        assert all(stub.plain_launches == 2 for stub in used.values())
        assert len(configs_chosen) == 2


def test_backward_is_planned_once():
    q, k, v = (torch.randn(1, 12, 2, 16, dtype=torch.float16, requires_grad=True) for _ in range(3))
    with stub_kernels() as stubs:
        for _ in range(3):
            out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(3, 0))
            out.backward(torch.randn_like(out))
        for name in ("_swa_bwd_dq_kernel", "_swa_bwd_dkdv_kernel"):
            assert (stubs[name].plain_launches, stubs[name].direct_launches) == (1, 2)


class _Compiled:
    def __init__(self, fail: bool = False):
        self.function = self.packed_metadata = None
        self.fail, self.calls = fail, 0

    def run(self, *args):
        self.calls += 1
        if self.fail:
            raise TypeError("launcher of another calling convention")


class _Kernel:
    """A jit kernel ``(X, n, BLOCK: constexpr, FLAG: constexpr = False)`` whose plain launch returns ``compiled``."""

    def __init__(self, compiled):
        def kernel(X, n, BLOCK, FLAG=False):
            pass

        self.fn, self.compiled, self.plain = kernel, compiled, 0

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.plain += 1
            return self.compiled

        return run


@pytest.fixture
def runtime(monkeypatch):
    class Knobs:
        launch_enter_hook = launch_exit_hook = None

    monkeypatch.setattr(_launch._Runtime, "knobs", Knobs)
    monkeypatch.setattr(_launch._Runtime, "get_device", lambda: 0)
    monkeypatch.setattr(_launch._Runtime, "get_stream", lambda device: 0)
    return Knobs


@pytest.mark.parametrize("case", ["direct", "no-launcher", "launcher-rejects", "hooks", "switched-off"])
def test_launch_falls_back_to_the_plain_launch(monkeypatch, runtime, case):
    compiled = object() if case == "no-launcher" else _Compiled(fail=case == "launcher-rejects")
    kernel = _Kernel(compiled)
    if case == "switched-off":
        monkeypatch.setattr(_launch, "DIRECT_LAUNCH", False)
    launch = Launch(kernel, (2,), (5,), dict(BLOCK=16), dict(num_warps=1), num_tensors=1)
    if case == "hooks":
        class Chain:
            calls = [print]

        runtime.launch_enter_hook = Chain()
    x = torch.zeros(1)
    for _ in range(3):
        launch(x)
    direct = 2 if case == "direct" else 0
    assert (kernel.plain, launch.direct_launches) == (3 - direct, direct)
    if case == "launcher-rejects":
        assert compiled.calls == 1  # tried once, then the plain path for good


@pytest.mark.skipif(not interpreter_enabled(), reason="the interpreter's path (a GPU compiles and launches directly)")
def test_interpreter_takes_the_plain_path():
    _launch.clear_plans()
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    for _ in range(2):
        swattn.flash_attn_func(q, k, v, window_size=(2, 0))
    (plan,) = fwd.plans()
    assert (plan.main.plain_launches, plan.main.direct_launches) == (2, 0)


def test_an_error_after_direct_launches_worked_is_raised(runtime):
    compiled = _Compiled()
    launch = Launch(_Kernel(compiled), (1,), (5,), dict(BLOCK=16), num_tensors=1)
    x = torch.zeros(1)
    launch(x)
    launch(x)
    compiled.fail = True
    with pytest.raises(TypeError, match="launcher"):
        launch(x)


def test_kept_buffers_are_shared_per_stream_and_thread():
    """``kept_buffer``: one scratch tensor per (device, stream, thread) and name, grown when a call needs more;
    another thread gets its own (its launches could interleave with this one's)."""
    import threading

    _launch.clear_plans()
    first = _launch.kept_buffer("test", torch.device("cpu"), 10, torch.float32)
    assert _launch.kept_buffer("test", torch.device("cpu"), 6, torch.float32) is first
    assert _launch.kept_buffer("other", torch.device("cpu"), 6, torch.float32) is not first
    grown = _launch.kept_buffer("test", torch.device("cpu"), 11, torch.float32)
    assert grown.numel() >= 11 and _launch.kept_buffer("test", torch.device("cpu"), 10, torch.float32) is grown
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(
        _launch.kept_buffer("test", torch.device("cpu"), 10, torch.float32)))
    thread.start()
    thread.join()
    assert elsewhere[0] is not grown
    # Larger than KEEP_MAX_BYTES: a new tensor per call, none held.
    big = _launch.KEEP_MAX_BYTES // 4 + 1
    assert _launch.kept_buffer("big", torch.device("cpu"), big, torch.float32) is not _launch.kept_buffer(
        "big", torch.device("cpu"), big, torch.float32)


def test_split_decode_reuses_its_scratch_and_stays_exact():
    """A split-KV decode's partial results live in kept buffers (no allocation per call): repeated calls with new
    queries each match a call on fresh buffers."""
    _launch.clear_plans()
    k_cache, v_cache = (torch.randn(3, 40, 2, 16) for _ in range(2))
    lengths = torch.tensor([40, 17, 29], dtype=torch.int32)
    queries = [torch.randn(3, 1, 4, 16) for _ in range(2)]
    outs = [swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lengths, num_splits=3, causal=True)
            for q in queries]
    scratch = _launch._KEPT[(_launch.stream_key(k_cache.device), "split_out")]
    for q, out in zip(queries, outs):
        _launch.clear_plans()  # fresh buffers
        assert torch.equal(swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lengths, num_splits=3,
                                                          causal=True), out)
    assert scratch.numel() >= 3 * 3 * 4 * 16


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_descriptor_launches_share_a_kept_triton_scratch(direction):
    """With descriptor loads, Triton's launcher asks the allocator for each launch's descriptor scratch: the
    forward's main and redo launches (each waits for the previous grid before its first write) and the backward's
    dQ and dK/dV launches (stream order, no PDL) take one buffer kept between calls (``_compat.TRITON_SCRATCH``,
    set only around them), not an allocation each; other launches get a new one."""
    from swattn import _compat
    from swattn.kernels.configs import BwdConfig, FwdConfig, forced_config

    _launch.clear_plans()
    q, k, v = (torch.randn(1, 12, 2, 16) for _ in range(3))
    out, dout, lse = torch.randn_like(q), torch.randn_like(q), torch.randn(1, 2, 12)
    scratch = []  # the allocator's buffer as each launch sees it (Triton's launcher asks it there)
    names = ("_swa_fwd_kernel",) if direction == "forward" else ("_swa_bwd_dq_kernel", "_swa_bwd_dkdv_kernel")
    with stub_kernels() as stubs, forced_config(FwdConfig(16, 16, 4, 1, tma=True)):
        for name in names:
            compiled = stubs[name].compiled
            compiled.run = lambda *args, run=compiled.run: scratch.append(
                _compat._scratch_allocator(256, 128, 0)) or run(*args)
        for _ in range(3):
            if direction == "forward":
                fwd.attention_forward(q, k, v, softmax_scale=0.25, left=3, right=0)
            else:
                bwd.attention_backward(dout, q, k, v, out, lse, softmax_scale=0.25, left=3, right=0,
                                       config=BwdConfig(16, 32, 32, 16, 4, 1, tma=True))
        direct = sum(stubs[name].direct_launches for name in names)
        assert direct >= 2 and len(scratch) == direct  # the direct launches asked it
        if direction == "forward":
            assert all(plan.use_tma for plan in fwd.plans())
    assert all(buffer is scratch[0] for buffer in scratch)
    assert getattr(_compat.TRITON_SCRATCH, "stream", None) is None
    assert _compat._scratch_allocator(256, 128, 0) is not _compat._scratch_allocator(256, 128, 0)
