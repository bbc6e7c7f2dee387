"""swattn/_replay.py: a public function's checks run once per call signature, and never where they must not be
skipped (data checks, tensors the function makes, aliased arguments, values that only compare equal)."""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn import interface
from swattn.reference import attention_ref
from swattn.testing import assert_close, stub_kernels, tolerance_for


def _decode_inputs(batch: int = 2):
    heads, kv_heads, head_dim, page_size, pages = 4, 2, 16, 4, 5
    k_cache = torch.randn(batch * pages, page_size, kv_heads, head_dim, dtype=torch.float16)
    return dict(q=torch.randn(batch, 1, heads, head_dim, dtype=torch.float16), k_cache=k_cache,
                v_cache=torch.randn_like(k_cache), cache_seqlens=torch.full((batch,), 7, dtype=torch.int32),
                page_table=torch.arange(batch * pages, dtype=torch.int32).view(batch, pages),
                k=torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.float16),
                v=torch.randn(batch, 1, kv_heads, head_dim, dtype=torch.float16))


@pytest.fixture
def counted_checks(monkeypatch):
    calls = []
    check = interface._check_qkv
    monkeypatch.setattr(interface, "_check_qkv", lambda *args: calls.append(args) or check(*args))
    return calls


@pytest.mark.parametrize("check_inputs, cache_seqlens_int, checks", [
    (False, False, 2),  # replayed: the checks ran on the first call (which notes the signature) and the second
    (None, False, 4),  # CPU tensors: the data checks run by default, so the function runs on every call
    (True, False, 4),
    (False, True, 4),  # an int cache_seqlens becomes a tensor the function makes: not replayable
])
def test_checks_run_once_per_signature_unless_data_is_read(counted_checks, check_inputs, cache_seqlens_int, checks):
    inputs = _decode_inputs()
    if cache_seqlens_int:
        inputs["cache_seqlens"] = 7
    with stub_kernels() as stubs:
        for _ in range(4):
            out, lse = swattn.flash_attn_with_kvcache(**inputs, causal=True, window_size=(3, 0),
                                                      check_inputs=check_inputs, return_softmax_lse=True)
            assert out.shape == inputs["q"].shape and lse.shape == (2, 4, 1)
        assert len(counted_checks) == checks
        assert stubs["_swa_fwd_kernel"].plain_launches + stubs["_swa_fwd_kernel"].direct_launches == 4


def test_a_replayed_signature_still_checks_data_when_asked():
    inputs = _decode_inputs()
    with stub_kernels():
        for _ in range(3):
            swattn.flash_attn_with_kvcache(**inputs, causal=True, check_inputs=False)
        inputs["page_table"][1, 1] = 10**6  # a page the cache does not have, same signature
        swattn.flash_attn_with_kvcache(**inputs, causal=True, check_inputs=False)  # the caller's contract
        with pytest.raises(ValueError, match="page_table"):
            swattn.flash_attn_with_kvcache(**inputs, causal=True, check_inputs=True)


def test_values_that_only_compare_equal_are_checked_again():
    q, k = torch.randn(1, 5, 2, 16), torch.randn(1, 5, 2, 16)
    with stub_kernels():
        for _ in range(2):
            swattn.flash_attn_func(q, k, k, num_splits=1)
        with pytest.raises(ValueError, match="num_splits"):
            swattn.flash_attn_func(q, k, k, num_splits=True)
        with pytest.raises(ValueError, match="head_dim"):  # errors are raised on every call, never cached
            swattn.flash_attn_func(q[..., :12], k[..., :12], k[..., :12])
        with pytest.raises(ValueError, match="head_dim"):
            swattn.flash_attn_func(q[..., :12], k[..., :12], k[..., :12])


def test_an_argument_passed_twice_is_not_replayed_for_distinct_ones():
    # Recorded with k passed as v too (replayed for calls that do the same, as a varlen self-attention passes one
    # cu_seqlens twice); a later call of the same shapes with its own v must attend to that v.
    q, k, v = (torch.randn(1, 6, 2, 16) for _ in range(3))
    for _ in range(3):  # noted, recorded, replayed
        out = swattn.flash_attn_func(q, k, k, window_size=(2, 0))
        assert_close("out", out, attention_ref(q, k, k, window_size=(2, 0))[0].to(out.dtype), tolerance_for(q.dtype))
    assert any(replay.data_checks for replay in swattn.flash_attn_func.plans.values() if hasattr(replay, "pick"))
    out = swattn.flash_attn_func(q, k, v, window_size=(2, 0))
    assert_close("out", out, attention_ref(q, k, v, window_size=(2, 0))[0].to(out.dtype), tolerance_for(q.dtype))


def test_return_layouts_are_replayed():
    q, k, v = (torch.randn(1, 6, 2, 16) for _ in range(3))
    with stub_kernels():
        for _ in range(3):
            assert isinstance(swattn.flash_attn_func(q, k, v), torch.Tensor)
            out, lse = swattn.flash_attn_func(q, k, v, return_softmax_lse=True)
            assert out.shape == q.shape and lse.shape == (1, 2, 6)


def test_data_checks_skipped_while_tracing_run_again_afterwards(monkeypatch):
    # Recorded while no host read is possible (as during CUDA-graph capture): the replay asks again, and the checks
    # run (and raise) once they can.
    inputs = _decode_inputs()
    with stub_kernels():
        monkeypatch.setattr(interface, "_is_tracing", lambda t: True)
        for _ in range(2):  # noted, then recorded
            swattn.flash_attn_with_kvcache(**inputs, causal=True)
        monkeypatch.undo()
        inputs["page_table"][1, 1] = 10**6
        with pytest.raises(ValueError, match="page_table"):
            swattn.flash_attn_with_kvcache(**inputs, causal=True)


def test_a_replayed_kvcache_call_launches_from_its_plan(monkeypatch):
    """From a signature's third call the KV-cache op's launches come from ``ops.planned_op``'s plan: no kernel plan
    is looked up (no per-call key below the interface's); a changed fused-append setting and a misaligned q are
    not served by it; the outputs are those of the unplanned path (real kernels, interpreter)."""
    from swattn import ops
    from swattn.kernels import _launch

    _launch.clear_plans()
    inputs = _decode_inputs()
    kwargs = dict(causal=True, window_size=(3, 0), check_inputs=False, return_softmax_lse=True)
    cache = (inputs["k_cache"].clone(), inputs["v_cache"].clone())
    expected = swattn.flash_attn_with_kvcache(**inputs, **kwargs)  # noted
    looked_up = []
    for name in ("forward_plan", "append_plan"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, real=real, name=name, **k: looked_up.append(name) or real(*a, **k))
    inputs["k_cache"].copy_(cache[0])
    inputs["v_cache"].copy_(cache[1])
    swattn.flash_attn_with_kvcache(**inputs, **kwargs)  # recorded and planned
    assert looked_up == ["append_plan", "forward_plan", "append_plan"]  # the op's call, then the plan's append
    looked_up.clear()
    version = inputs["k_cache"]._version
    for _ in range(2):
        inputs["k_cache"].copy_(cache[0])
        inputs["v_cache"].copy_(cache[1])
        out, lse = swattn.flash_attn_with_kvcache(**inputs, **kwargs)
        assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1])
    # The plan's attention is looked up at its first run (it keys on the new lengths the append makes), then kept.
    assert looked_up == ["forward_plan"] and inputs["k_cache"]._version >= version + 4  # appends count as writes
    looked_up.clear()
    monkeypatch.setattr(ops, "FUSED_APPEND", True)  # not the plan's case: the op plans the fused call
    swattn.flash_attn_with_kvcache(**inputs, **kwargs)
    assert looked_up == ["forward_plan"]  # no append launch
    monkeypatch.setattr(ops, "FUSED_APPEND", False)
    looked_up.clear()
    storage = torch.empty(inputs["q"].numel() + 1, dtype=inputs["q"].dtype)
    inputs["q"] = storage[1:].view(inputs["q"].shape).copy_(inputs["q"])  # another alignment: another signature
    swattn.flash_attn_with_kvcache(**inputs, **kwargs)
    assert looked_up == ["append_plan", "forward_plan"]


def test_an_lse_not_asked_for_is_neither_computed_nor_allocated():
    """Without return_softmax_lse the forward plans of decode (kvcache) and prefill (no gradient) store no LSE; a
    gradient or return_softmax_lse=True brings it back (the values: the tests of the outputs)."""
    from swattn.kernels import fwd

    inputs = _decode_inputs()
    q, k, v = (torch.randn(1, 6, 2, 16) for _ in range(3))
    with stub_kernels():
        for _ in range(3):
            swattn.flash_attn_with_kvcache(**inputs, causal=True, check_inputs=False)
            swattn.flash_attn_func(q, k, v)
        assert {plan.lse_shape for plan in fwd.plans()} == {None}
        assert swattn.flash_attn_func(q, k, v, return_softmax_lse=True)[1].shape == (1, 2, 6)
        plans = len(fwd.plans())
        swattn.flash_attn_func(q.requires_grad_(), k, v)  # the backward reads the LSE: the LSE-storing plan
        assert len(fwd.plans()) == plans and sorted(plan.lse_shape is None for plan in fwd.plans()) == [
            False, True, True]


def test_the_eager_backward_keeps_its_plans_with_the_forward_plan():
    """A training step's backward looks up its plan by the gradients' signature in the forward plan's
    ``backward_plans`` (two tensors' signatures instead of twelve), not in the backward's own cache."""
    from swattn.kernels import bwd, fwd

    q, k, v = (torch.randn(1, 6, 2, 16, requires_grad=True) for _ in range(3))
    sinks = torch.zeros(2, requires_grad=True)
    with stub_kernels() as stubs:
        for _ in range(3):
            out = swattn.flash_attn_func(q, k, v, causal=True, sinks=sinks)
            torch.autograd.grad(out, (q, k, v, sinks), torch.ones_like(out))
        (plan,) = [plan for plan in fwd.plans() if plan.backward_plans]
        assert len(plan.backward_plans) == 1 and len(bwd._PLANS) == 0
        assert stubs["_swa_bwd_dq_kernel"].direct_launches + stubs["_swa_bwd_dq_kernel"].plain_launches == 3
        out = swattn.flash_attn_func(q, k, v, causal=True, sinks=sinks.detach())
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))  # sinks' gradient not wanted: another plan
        assert len(plan.backward_plans) == 2


def test_the_settings_in_every_calls_key_are_built_on_the_stack():
    """The module settings every eager call reads for its replay key (``ops.plan_settings``, ``fwd.settings``) and a
    kept Gluon launch's (``gluon_fwd.planning_settings``) are tuple displays of at most 30 items: CPython builds a
    longer one through a list (BUILD_LIST, LIST_APPEND, then a conversion), which took ``fwd.settings`` from 0.24 to
    0.41 us per call when it reached 31 items (dev CPU, Python 3.11)."""
    import dis

    from swattn import ops
    from swattn.kernels import fwd, gluon_fwd

    for function in (ops.plan_settings, fwd.settings, gluon_fwd.planning_settings):
        built_through_a_list = [i.opname for i in dis.get_instructions(function) if i.opname == "BUILD_LIST"]
        assert not built_through_a_list, f"{function.__module__}.{function.__qualname__}: a tuple of over 30 items"


def _calls_with_out():
    """(name, call(q, out=None), whether it gives a gradient) for the three entry points that take ``out=``, over
    fixed k / v (fp16, CPU); ``flash_attn_with_kvcache`` is inference-only, as FlashAttention 3's."""
    k, v = torch.randn(1, 6, 2, 16, dtype=torch.float16), torch.randn(1, 6, 2, 16, dtype=torch.float16)
    cu_seqlens = torch.tensor([0, 6], dtype=torch.int32)
    inputs = _decode_inputs(batch=1)
    return [
        ("flash_attn_func", lambda q, out=None: swattn.flash_attn_func(q, k, v, causal=True, out=out), True),
        ("flash_attn_varlen_func", lambda q, out=None: swattn.flash_attn_varlen_func(
            q[0], k[0], v[0], cu_seqlens, cu_seqlens, 6, 6, causal=True, check_inputs=False,
            out=None if out is None else out[0]), True),
        ("flash_attn_with_kvcache", lambda q, out=None: swattn.flash_attn_with_kvcache(
            q[:, :1], inputs["k_cache"], inputs["v_cache"], cache_seqlens=inputs["cache_seqlens"],
            page_table=inputs["page_table"], causal=True, check_inputs=False, out=None if out is None else out[:, :1]),
         False),
    ]


@pytest.mark.parametrize("index", range(3), ids=lambda i: _calls_with_out()[i][0])
def test_a_signature_recorded_without_a_gradient_does_not_serve_one_that_needs_it(index):
    # The function refuses out= for a call that needs a gradient; a replay recorded without one (same shapes) must
    # not skip that check, nor return an output without its graph when out= is not given.
    _, call, differentiable = _calls_with_out()[index]
    q = torch.randn(1, 6, 4, 16, dtype=torch.float16)
    out = torch.empty_like(q)
    with stub_kernels():
        for _ in range(3):  # noted, recorded, replayed
            call(q, out)
            assert call(q).grad_fn is None
        graded = q.clone().requires_grad_()
        for _ in range(3):
            with pytest.raises(ValueError, match="out: not supported for a call that needs a gradient"):
                call(graded, out)
            assert (call(graded).grad_fn is not None) == differentiable
        with torch.no_grad():  # no gradient needed: out= is fine, and no graph
            for _ in range(3):
                call(graded, out)
                assert call(graded).grad_fn is None
        # and the no-grad recording does not serve a call under grad mode
        assert (call(graded).grad_fn is not None) == differentiable
