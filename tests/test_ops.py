"""The torch.library ops: opcheck, torch.compile without graph breaks, CUDA-graph capture and replay of a decode step.

On the CPU the ops run the Triton kernels under the interpreter (the conftest sets TRITON_INTERPRET=1); the CUDA-graph
test needs a GPU and is skipped without one.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import swattn
from swattn import ops
from swattn.reference import attention_kvcache_ref
from swattn.testing import assert_close, tolerance_for

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _qkv(batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, device=None, dtype=torch.float32):
    device = device or torch.get_default_device()  # CUDA in the GPU test mode (tests/conftest.py)
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, seqlen_k, kv_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, seqlen_k, kv_heads, head_dim, device=device, dtype=dtype)
    return q, k, v


def _assert_equal(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize(
    "window, softcap, sinks, dtype",  # bf16 once per op: the fake implementations' dtypes are the real ones'
    [
        pytest.param((3, 0), 0.0, False, torch.float32, id="W3_0-nosink"),
        pytest.param((3, 0), 0.0, True, torch.float32, id="W3_0-sink"),
        pytest.param((-1, -1), 5.0, False, torch.float32, id="full-softcap5-nosink"),
        pytest.param((-1, -1), 5.0, True, torch.bfloat16, id="full-softcap5-sink-bf16"),
    ],
)
def test_fwd_opcheck(window, softcap, sinks, dtype):
    batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim = 2, 5, 9, 4, 2, 16
    q, k, v = _qkv(batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, dtype=dtype)
    sink = torch.randn(heads, dtype=dtype) if sinks else None
    args = (q, k, v, sink, None, None, None, seqlen_q, seqlen_k, head_dim**-0.5, *window, softcap, False, 1)
    torch.library.opcheck(torch.ops.swattn.fwd.default, args, test_utils=OPCHECK_TESTS)


def test_fwd_opcheck_varlen():
    heads, kv_heads, head_dim = 4, 2, 16
    cu_q = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 9, 19], dtype=torch.int32)
    q = torch.randn(10, heads, head_dim)
    k, v = torch.randn(19, kv_heads, head_dim), torch.randn(19, kv_heads, head_dim)
    args = (q, k, v, torch.randn(heads), cu_q, cu_k, None, 7, 10, head_dim**-0.5, 4, 0, 0.0, True, 1)
    torch.library.opcheck(torch.ops.swattn.fwd.default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize(
    "append, paged, dtype",
    [
        pytest.param(False, False, torch.float32, id="noappend-contiguous"),
        pytest.param(True, False, torch.float32, id="append-contiguous"),
        pytest.param(False, True, torch.float32, id="noappend-paged"),
        pytest.param(True, True, torch.bfloat16, id="append-paged-bf16"),
    ],
)
def test_fwd_kvcache_opcheck(append, paged, dtype):
    batch, heads, kv_heads, head_dim, capacity = 2, 4, 2, 16, 24
    q = torch.randn(batch, 1, heads, head_dim, dtype=dtype)
    if paged:
        page_size = 4
        k_cache = torch.randn(batch * capacity // page_size, page_size, kv_heads, head_dim, dtype=dtype)
        page_table = torch.randperm(k_cache.shape[0], dtype=torch.int32).view(batch, -1)
    else:
        k_cache = torch.randn(batch, capacity, kv_heads, head_dim, dtype=dtype)
        page_table = None
    v_cache = torch.randn_like(k_cache)
    k_new = torch.randn(batch, 1, kv_heads, head_dim, dtype=dtype) if append else None
    v_new = torch.randn(batch, 1, kv_heads, head_dim, dtype=dtype) if append else None
    cache_seqlens = torch.tensor([5, 17], dtype=torch.int32)
    args = (q, k_cache, v_cache, k_new, v_new, cache_seqlens, None, page_table, None, 1,
            torch.randn(heads, dtype=dtype), head_dim**-0.5, 7, 0, 0.0, True, 1)
    torch.library.opcheck(torch.ops.swattn.fwd_kvcache.default, args, test_utils=OPCHECK_TESTS)


class _PrefillAndDecode(torch.nn.Module):
    """A sliding-window prefill with sinks, then a decode step that appends to a KV cache and attends."""

    def __init__(self, window_size: tuple[int, int]):
        super().__init__()
        self.window_size = window_size

    def forward(self, q, k, v, sinks, q_decode, k_cache, v_cache, k_new, v_new, cache_seqlens):
        prefill = swattn.flash_attn_func(q, k, v, causal=True, window_size=self.window_size, sinks=sinks)
        decode, lse = swattn.flash_attn_with_kvcache(
            q_decode, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=cache_seqlens, causal=True,
            window_size=self.window_size, sinks=sinks, softcap=30.0, return_softmax_lse=True)
        return prefill, decode, lse


class _Varlen(torch.nn.Module):
    def forward(self, q, k, v, cu_seqlens_q, cu_seqlens_k):
        return swattn.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, 6, 6, causal=True,
                                             window_size=(2, 0))


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compile_fullgraph(backend, device):
    """On CUDA this also traces the automatic num_splits / pack_gqa choices (device properties, cached)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batch, heads, kv_heads, head_dim, capacity = 2, 4, 2, 16, 16
    q, k, v = _qkv(batch, 11, 11, heads, kv_heads, head_dim, device, dtype)
    sinks = torch.randn(heads, device=device)
    q_decode = torch.randn(batch, 1, heads, head_dim, device=device, dtype=dtype)
    k_cache = torch.randn(batch, capacity, kv_heads, head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    k_new, v_new = torch.randn(2, batch, 1, kv_heads, head_dim, device=device, dtype=dtype).unbind(0)
    cache_seqlens = torch.tensor([3, 12], dtype=torch.int32, device=device)
    module = _PrefillAndDecode(window_size=(4, 0))

    k_cache_eager, v_cache_eager = k_cache.clone(), v_cache.clone()
    expected = module(q, k, v, sinks, q_decode, k_cache_eager, v_cache_eager, k_new, v_new, cache_seqlens)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    actual = compiled(q, k, v, sinks, q_decode, k_cache, v_cache, k_new, v_new, cache_seqlens)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    for name, a, e in zip(("prefill", "decode", "lse"), actual, expected):
        _assert_equal(name, a, e)
    _assert_equal("k_cache after append", k_cache, k_cache_eager)
    _assert_equal("v_cache after append", v_cache, v_cache_eager)


def test_compile_fullgraph_varlen():
    heads, kv_heads, head_dim = 4, 2, 16
    cu_q = torch.tensor([0, 2, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 11], dtype=torch.int32)
    q = torch.randn(8, heads, head_dim)
    k, v = torch.randn(11, kv_heads, head_dim), torch.randn(11, kv_heads, head_dim)
    expected = _Varlen()(q, k, v, cu_q, cu_k)
    torch._dynamo.reset()
    counter = CompileCounter()
    actual = torch.compile(_Varlen(), fullgraph=True, backend=counter)(q, k, v, cu_q, cu_k)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    _assert_equal("varlen", actual, expected)


@_CUDA
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_fwd_kvcache_cuda_graph(paged):
    """Capture one decode step (append + attend), then replay it with new inputs copied into the static buffers."""
    device, dtype = "cuda", torch.bfloat16
    batch, heads, kv_heads, head_dim, capacity, sliding_window = 4, 16, 2, 64, 512, 128
    window_size = swattn.window_size_from_sliding_window(sliding_window)
    if paged:
        page_size = 16
        k_cache = torch.randn(batch * capacity // page_size, page_size, kv_heads, head_dim, device=device, dtype=dtype)
        page_table = torch.randperm(k_cache.shape[0], device=device, dtype=torch.int32).view(batch, -1)
    else:
        k_cache = torch.randn(batch, capacity, kv_heads, head_dim, device=device, dtype=dtype)
        page_table = None
    v_cache = torch.randn_like(k_cache)
    sinks = torch.randn(heads, device=device)
    q = torch.randn(batch, 1, heads, head_dim, device=device, dtype=dtype)
    k_new = torch.randn(batch, 1, kv_heads, head_dim, device=device, dtype=dtype)
    v_new = torch.randn_like(k_new)
    cache_seqlens = torch.tensor([0, 1, 200, 300], device=device, dtype=torch.int32)

    def step(k_cache, v_cache):
        return swattn.flash_attn_with_kvcache(
            q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=cache_seqlens, page_table=page_table, causal=True,
            window_size=window_size, sinks=sinks, num_splits=0)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(k_cache, v_cache)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(k_cache, v_cache)

    for seqlens in ([0, 5, 127, 128], [1, 129, 300, 510], [7, 256, 383, 64]):
        q.copy_(torch.randn_like(q))
        k_new.copy_(torch.randn_like(k_new))
        v_new.copy_(torch.randn_like(v_new))
        cache_seqlens.copy_(torch.tensor(seqlens, dtype=torch.int32))
        k_cache_eager, v_cache_eager = k_cache.clone(), v_cache.clone()
        graph.replay()
        expected = step(k_cache_eager, v_cache_eager)
        torch.cuda.synchronize()
        _assert_equal(f"out, cache_seqlens={seqlens}", out, expected)
        _assert_equal(f"k_cache, cache_seqlens={seqlens}", k_cache, k_cache_eager)
        _assert_equal(f"v_cache, cache_seqlens={seqlens}", v_cache, v_cache_eager)
        ref, _ = attention_kvcache_ref(q, k_cache, v_cache, cache_seqlens + 1, page_table=page_table,
                                       window_size=window_size, sinks=sinks)
        assert_close(f"out vs reference, cache_seqlens={seqlens}", out, ref, tolerance_for(dtype))


@pytest.mark.parametrize("interpret", [
    pytest.param("0", id="reference"),
    # Triton picks its interpreter once, at import: this case needs the suite's default TRITON_INTERPRET=1.
    pytest.param("1", id="interpreter", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                                reason="Triton was imported without its interpreter")),
])
def test_real_outputs_have_the_fake_layouts(monkeypatch, interpret):
    # Compiled graphs assert the fake implementations' strides on the real outputs (inductor's
    # assert_size_stride): the CPU reference path once returned a transposed view and failed there.
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    q = torch.randn(2, 5, 4, 16)
    k, v = torch.randn(2, 7, 2, 16), torch.randn(2, 7, 2, 16)
    out, lse = torch.ops.swattn.fwd(q, k, v, None, None, None, None, 5, 7, 0.25, 3, 0, 0.0, False, 1)
    fake_out, fake_lse = torch.empty_like(q), q.new_empty((2, 4, 5), dtype=torch.float32)
    assert out.stride() == fake_out.stride() and lse.stride() == fake_lse.stride()
    cache = torch.randn(2, 9, 2, 16)
    seqlens = torch.tensor([3, 9], dtype=torch.int32)
    out, lse = torch.ops.swattn.fwd_kvcache(q, cache, cache.clone(), None, None, seqlens, None, None, None, 5, None,
                                            0.25, 3, 0, 0.0, False, 1)
    assert out.stride() == fake_out.stride() and lse.stride() == fake_lse.stride()


def _refuse(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"eager call went through the dispatcher ({name})")
    return refuse


def test_eager_calls_skip_the_dispatcher(monkeypatch):
    # Eager inference calls run the implementation directly (about 75 us less host time per call); results,
    # cache contents and the caches' version counters are what the custom op gives.
    torch.manual_seed(0)
    # All on the default device: the interpreter on the CPU, CUDA under SWATTN_TEST_DEVICE=cuda.
    q, k, v = _qkv(2, 7, 9, 4, 2, 16)
    k_cache, v_cache = torch.randn(2, 16, 2, 16), torch.randn(2, 16, 2, 16)
    k_new, v_new = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    seqlens = torch.tensor([3, 9], dtype=torch.int32)
    expected = torch.ops.swattn.fwd(q, k, v, None, None, None, None, 7, 9, 0.25, 3, 0, 0.0, False, 1)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    expected_kv = torch.ops.swattn.fwd_kvcache(q[:, :1], k_expected, v_expected, k_new, v_new, seqlens, None, None,
                                               None, 1, None, 0.25, 3, 0, 0.0, False, 1)
    monkeypatch.setattr(ops, "fwd", _refuse("fwd"))
    monkeypatch.setattr(ops, "fwd_kvcache", _refuse("fwd_kvcache"))
    same = dict(softmax_scale=0.25, window_size=(3, 0), return_softmax_lse=True, pack_gqa=False, num_splits=1)
    out, lse = swattn.flash_attn_func(q, k, v, **same)
    _assert_equal("out", out, expected[0])
    _assert_equal("lse", lse, expected[1])
    version = k_cache._version
    out, lse = swattn.flash_attn_with_kvcache(q[:, :1], k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                              **same)
    _assert_equal("decode out", out, expected_kv[0])
    _assert_equal("decode lse", lse, expected_kv[1])
    _assert_equal("k_cache", k_cache, k_expected)
    _assert_equal("v_cache", v_cache, v_expected)
    assert k_cache._version > version, "the in-place append must bump the cache's version counter"
    with torch.inference_mode():
        swattn.flash_attn_with_kvcache(q[:, :1], k_cache.clone(), v_cache.clone(), k=k_new, v=v_new,
                                       cache_seqlens=seqlens)


def test_gradients_and_tracing_go_through_the_custom_op(monkeypatch):
    calls = []
    real_fwd = ops.fwd

    def recording_fwd(*args):
        calls.append("fwd")
        return real_fwd(*args)

    # All on the default device (sinks too): CUDA under SWATTN_TEST_DEVICE=cuda, where CPU q/k/v mixed devices.
    q, k, v = _qkv(1, 5, 5, 2, 1, 16)
    sinks = torch.randn(2)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    out, lse = torch.ops.swattn.fwd(*inputs, None, None, None, 5, 5, 0.25, 2, 0, 0.0, False, 1)
    (out.sum() + lse.sum()).backward()
    expected = [t.grad for t in inputs]

    monkeypatch.setattr(ops, "fwd", recording_fwd)
    # Eager training calls take _EagerAttention: the same forward and backward without the dispatcher.
    inputs = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    out, lse = swattn.flash_attn_func(*inputs[:3], sinks=inputs[3], softmax_scale=0.25, window_size=(2, 0),
                                      return_softmax_lse=True, pack_gqa=False)
    (out.sum() + lse.sum()).backward()
    assert calls == [], "an eager call with gradients should skip the dispatcher"
    for name, t, grad in zip("qkv", inputs, expected):
        _assert_equal(f"d{name}", t.grad, grad)
    _assert_equal("dsinks", inputs[3].grad, expected[3])
    with torch.no_grad():
        swattn.flash_attn_func(q, k, v, causal=True)
    assert calls == [], "a call without gradients should skip the dispatcher"
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake = [mode.from_tensor(t.detach()) for t in (q, k, v)]
    with mode:
        out = swattn.flash_attn_func(*fake, causal=True)
    assert calls == ["fwd"] and out.shape == q.shape


def test_fp8_opcheck():
    """Both ops with e4m3 inputs and descales (the fake implementations give bf16 for e4m3 q); the KV-cache op
    appends bf16 tokens into an e4m3 cache. Without ``test_schema``: torch's schema check compares a mutated
    argument before and after with ``torch.allclose``, which has no float8 kernel on the CPU."""
    fp8, heads, kv_heads, head_dim = torch.float8_e4m3fn, 4, 2, 16
    descale = torch.rand(2, kv_heads) + 0.5
    q = torch.randn(2, 1, heads, head_dim, dtype=torch.bfloat16)
    k_cache, v_cache = (torch.randn(12, 4, kv_heads, head_dim).to(fp8) for _ in range(2))
    k_new, v_new = (torch.randn(2, 1, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
    table = torch.randperm(12, dtype=torch.int32).view(2, -1)
    args = (q, k_cache, v_cache, k_new, v_new, torch.tensor([5, 11], dtype=torch.int32), None, table, None, 1,
            torch.randn(heads), head_dim**-0.5, 7, 0, 0.0, True, 1, None, None, None, None, None, True, True, 0,
            None, descale, descale)
    torch.library.opcheck(torch.ops.swattn.fwd_kvcache.default, args, test_utils=OPCHECK_TESTS[1:])
    q8, k8, v8 = (torch.randn(1, 9, h, head_dim).to(fp8) for h in (heads, kv_heads, kv_heads))
    args = (q8, k8, v8, None, None, None, None, 9, 9, 0.25, -1, 0, 0.0, False, 1, None, 0, descale[:1], descale[:1],
            descale[:1])
    torch.library.opcheck(torch.ops.swattn.fwd.default, args, test_utils=OPCHECK_TESTS[1:])


def _dispatched_decode_arguments(requires_grad: bool = False):
    """``swattn::fwd_kvcache``'s arguments for a decode step appending one token to contiguous caches."""
    q = torch.randn(2, 1, 4, 16)
    k_cache, v_cache = torch.randn(2, 16, 2, 16), torch.randn(2, 16, 2, 16)
    k_new, v_new = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    seqlens = torch.tensor([3, 9], dtype=torch.int32)
    return (q, k_cache, v_cache, k_new, v_new, seqlens, None, None, None, 1, None, 0.25, 3, 0, 0.0, False, 1)


def test_dispatched_mutating_ops_bump_versions_once():
    """Through the dispatcher, the mutating ops' kernels bump their mutated arguments' version counters
    (``ops._bump_versions_in_kernel``: torch's C++ ADInplaceOrView kernel in place of custom_op's Python one, whose
    torch 2.13 version costs ~220 us per decode call), once per call, and leave the others alone."""
    assert set(ops.KERNEL_VERSION_BUMPS) == {"fwd_kvcache", "combine"}, "this torch should take the cheap kernel"
    args = _dispatched_decode_arguments()
    q, k_cache, v_cache = args[:3]
    before = [t._version for t in args[:6]]
    torch.ops.swattn.fwd_kvcache(*args)
    torch.ops.swattn.fwd_kvcache.default(*args)
    ops.fwd_kvcache(*args)  # the CustomOpDef: the same dispatcher path
    assert [t._version - b for t, b in zip(args[:6], before)] == [0, 3, 3, 0, 0, 0]
    # combine mutates out and lse.
    out_partial, lse_partial = torch.randn(2, 1, 3, 2, 8), torch.randn(2, 1, 3, 2)
    out, lse = torch.empty(1, 3, 2, 8), torch.empty(1, 3, 2)  # [B, L, H, D] and [B, L, H]
    before = [t._version for t in (out_partial, lse_partial, out, lse)]
    torch.ops.swattn.combine(out_partial, lse_partial, out, lse)
    assert [t._version - b for t, b in zip((out_partial, lse_partial, out, lse), before)] == [0, 0, 1, 1]
    # Inference tensors have no version counter: the kernel skips them.
    with torch.inference_mode():
        inference_args = _dispatched_decode_arguments()
        torch.ops.swattn.fwd_kvcache(*inference_args)
    torch.ops.swattn.fwd_kvcache(*_dispatched_decode_arguments())


def test_dispatched_append_into_a_saved_tensor_fails_the_backward():
    """Autograd's check of tensors saved for a backward still sees the dispatched op's in-place append."""
    args = _dispatched_decode_arguments()
    weight = torch.randn(args[1].shape, requires_grad=True)
    loss = (weight * args[1]).sum()  # saves k_cache for weight's gradient
    torch.ops.swattn.fwd_kvcache(*args)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_dispatched_append_compiles_fullgraph():
    """The op with the cheap ADInplaceOrView kernel under torch.compile (inductor, one graph): the caches are
    written as eagerly, and the compiled call bumps their version counters."""
    args = _dispatched_decode_arguments()
    eager_args = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in args)
    expected = torch.ops.swattn.fwd_kvcache(*eager_args)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda *a: torch.ops.swattn.fwd_kvcache(*a), fullgraph=True, backend=counter)
    version = args[1]._version
    actual = compiled(*args)
    assert counter.frame_count == 1
    _assert_equal("out", actual[0], expected[0])
    _assert_equal("k_cache", args[1], eager_args[1])
    _assert_equal("v_cache", args[2], eager_args[2])
    assert args[1]._version > version
