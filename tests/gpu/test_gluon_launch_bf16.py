"""The Gluon sm_90 forward's direct launch (swattn/kernels/gluon_fwd.py ``forward(..., plans=)``, _launch.py's
``Launch`` with ``Descriptor`` arguments) on an H100/H200 (skipped elsewhere).

Per case, the Gluon kernel forced (``SWATTN_GLUON=1``'s setting): the plain launch (``_launch.DIRECT_LAUNCH`` off:
``kernel[grid](...)`` with descriptors built by their constructor on every call) and the direct one (a first call on
other tensors, then calls whose descriptors are copies with the call's tensors as bases, handed to Triton's compiled
launcher) give the same output and LSE bits on the same inputs, and the direct calls compile nothing. The second
call's tensors live at other addresses than the first's, so a launch that kept a pointer would read the wrong data;
the direct calls alternate two tensor sets, whose filled descriptors the launch keeps by address (Triton 3.6 and
3.9: its C launcher called directly, ``_launch.CLauncher``).
"""

from __future__ import annotations

import functools

import pytest
import torch

import swattn
from swattn.kernels import _launch, fwd, gluon_fwd

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
pytestmark = pytest.mark.skipif(not (HOPPER and gluon_fwd.GLUON_AVAILABLE), reason="the Gluon kernel needs sm_90")

DEVICE = "cuda"


def _dense(batch, seqlen, heads, kv_heads, head_dim, window_size, with_sinks):
    def make():
        q = torch.randn(batch, seqlen, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, seqlen, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                for _ in range(2))
        sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
        return q, k, v, sinks

    def call(q, k, v, sinks):
        return swattn.flash_attn_func(q, k, v, window_size=window_size, sinks=sinks, return_softmax_lse=True)

    return make, call


def _varlen(lengths, heads, kv_heads, head_dim, window_size):
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE, dtype=torch.int32)

    def make():
        q = torch.randn(sum(lengths), heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(sum(lengths), kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        return q, k, v, torch.randn(heads, device=DEVICE)

    def call(q, k, v, sinks):
        return swattn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths),
                                             window_size=window_size, sinks=sinks, return_softmax_lse=True)

    return make, call


def _paged(batch, seqlen_q, context, page_size, heads, kv_heads, head_dim, window_size):
    pages = -(-context // page_size)
    page_table = torch.randperm(batch * pages, device=DEVICE, dtype=torch.int32).view(batch, pages)
    cache_seqlens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)

    def make():
        q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(batch * pages, page_size, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                for _ in range(2))
        return q, k, v, torch.randn(heads, device=DEVICE)

    def call(q, k, v, sinks):
        return swattn.flash_attn_with_kvcache(q, k, v, cache_seqlens=cache_seqlens, page_table=page_table,
                                              causal=True, window_size=window_size, sinks=sinks,
                                              return_softmax_lse=True)

    return make, call


# (make inputs, call) per case, made in the test (index tensors on the GPU).
CASES = {
    # gpt-oss sliding layer (PackGQA, one consumer warpgroup, O through a TMA store)
    "gpt-oss-W127-D64-sinks": functools.partial(_dense, 1, 4096, 64, 8, 64, (127, 0), True),
    # two consumer warpgroups, O by per-thread stores
    "causal-D128": functools.partial(_dense, 1, 4096, 32, 8, 128, (-1, 0), False),
    "varlen-W255-D128-sinks": functools.partial(_varlen, [1000, 37, 2000], 16, 4, 128, (255, 0)),
    "paged16-W127-D64": functools.partial(_paged, 2, 512, 1500, 16, 64, 8, 64, (127, 0)),
}


def _gluon_launches() -> list:
    """The Gluon launches the forward plans hold."""
    return [launch for plan in fwd.plans() if plan.launches and plan.use_gluon
            for launch, *_ in plan.gluon_arguments["plans"].values()]


@pytest.mark.parametrize("case", list(CASES))
def test_direct_launch_gives_the_plain_launchs_bits(case, monkeypatch):
    make, call = CASES[case]()
    torch.manual_seed(0)
    first, second = make(), make()  # both held: the second's tensors live at other addresses
    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", "1")
    compiled = gluon_fwd._swa_fwd_sm90_kernel.device_caches[torch.cuda.current_device()][0]

    monkeypatch.setattr(_launch, "DIRECT_LAUNCH", False)
    _launch.clear_plans()
    plain = [call(*second) for _ in range(2)]
    plain_first = call(*first)
    torch.cuda.synchronize()
    (launch,) = _gluon_launches()
    assert (launch.plain_launches, launch.direct_launches) == (3, 0)
    kernels = len(compiled)

    monkeypatch.setattr(_launch, "DIRECT_LAUNCH", True)
    _launch.clear_plans()
    call(*first)  # plans, launches through kernel[grid](...), keeps the compiled launcher
    # The two tensor sets alternating through one plan: each set's descriptors filled once, then kept (Triton's C
    # launcher called directly, _launch.CLauncher), each call reading its own tensors.
    order = [second, first, second, first, second]
    direct = [call(*inputs) for inputs in order]
    torch.cuda.synchronize()
    (launch,) = _gluon_launches()
    assert (launch.plain_launches, launch.direct_launches) == (1, len(order))
    assert len(compiled) == kernels, "the direct launches compiled another kernel"
    for out, lse in [*plain[1:], *(result for inputs, result in zip(order, direct) if inputs is second)]:
        assert torch.equal(out, plain[0][0]), f"{case}: output bits differ"
        assert torch.equal(lse, plain[0][1]), f"{case}: LSE bits differ"
    for out, lse in (result for inputs, result in zip(order, direct) if inputs is first):
        assert torch.equal(out, plain_first[0]) and torch.equal(lse, plain_first[1]), f"{case}: first set differs"
    assert torch.isfinite(plain[0][0]).all()
    if _launch._triton_version() in _launch._CALL_PARAMETERS:  # Triton 3.6 and 3.9: the C launcher served
        device = torch.cuda.current_device()
        c = launch._compiled[device][3]
        assert c is not None and c.launches == len(order), "Triton's C launcher was not called directly"
        # Q, K and V filled once per tensor set; O (a TMA store's base: out, new on every call here, as every call's
        # result is held) once per call, or Q's again without a TMA store.
        assert [len(kept) for kept in c.maps[:3]] == [2, 2, 2], "one filled descriptor per tensor set"
        tma_store = launch.descriptors[3] is not launch.descriptors[0]
        assert len(c.maps[3]) == (len(order) if tma_store else 2)
        # The redo pass (a Triton kernel) through its C launcher too, unless it needs scratch memory (descriptors
        # built on the device: run allocates it per launch).
        redo = [plan.redo for plan in fwd.plans() if plan.launches and plan.use_gluon and plan.redo]
        for r in redo:
            run, _, _, redo_c = r._compiled[device]
            assert (redo_c is not None) == (not run.global_scratch_size), "redo pass: not through the C launcher"


def test_direct_launch_in_a_cuda_graph(monkeypatch):
    """Captured direct launches replay with the captured tensors' data (the descriptors are filled at capture)."""
    make, call = CASES["gpt-oss-W127-D64-sinks"]()
    torch.manual_seed(1)
    inputs = make()
    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", "1")
    _launch.clear_plans()
    expected = [call(*inputs) for _ in range(3)][-1]  # planned, then direct
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call(*inputs)
    for source, target in zip(make(), inputs):
        if target is not None:
            target.copy_(source)
    graph.replay()
    fresh = [call(*inputs) for _ in range(2)][-1]
    torch.cuda.synchronize()
    (launch,) = _gluon_launches()
    assert launch.direct_launches >= 4
    assert not torch.equal(fresh[0], expected[0])  # new data
    assert torch.equal(captured[0], fresh[0]) and torch.equal(captured[1], fresh[1])
