"""The Gluon forward's repeated eager call (issue 18), checked without a GPU: through ``swattn.flash_attn_func`` with
the Gluon kernel forced (``fwd._use_gluon``), every kernel stubbed (``swattn.testing.stub_kernels``) and each compiled
launcher Triton 3.6's ``CudaLauncher`` (tests/kernels/_triton36_launcher.py) around a stand-in C function.

A repeated call of one signature makes two launches through Triton's C launcher (the Gluon pass and the Triton redo
pass) and nothing else: no ``gluon_fwd.forward`` call (its keyword plumbing and plan key), no planning, no config
choice. A wrapped ``gluon_fwd.forward`` (tuning probes pass their overrides that way) still sees every call, and a
switched planning setting replans. tests/gpu/test_gluon_fwd.py counts Gluon launches with ``gluon_fwd.launch_count``.
"""

from __future__ import annotations

import _triton36_launcher
import pytest
import torch

import swattn
from swattn.kernels import _launch, fwd, gluon_fwd
from swattn.kernels._launch import bound_argument_order
from swattn.testing import StubKernel, stub_kernels

pytestmark = pytest.mark.skipif(not gluon_fwd.GLUON_AVAILABLE, reason="this triton has no Gluon")


class CFunction:
    """The C launcher stand-in (a callable without ``__code__``, as a builtin): counts its launches."""

    def __init__(self):
        self.launches = 0

    def __call__(self, *args):
        self.launches += 1


@pytest.fixture
def stubbed(monkeypatch):
    """Every kernel stubbed, the Gluon one too; each stub's compiled launcher a Triton 3.6 ``CudaLauncher`` around
    its own ``CFunction``. Yields ``{"gluon": CFunction, "redo": CFunction}``."""
    monkeypatch.setattr(_launch, "_triton_version", lambda: (3, 6))
    monkeypatch.setattr(_triton36_launcher, "make_tensordesc_arg",
                        lambda descriptor, meta: [object(), *descriptor.shape, *descriptor.strides])
    monkeypatch.setattr(fwd, "_use_gluon", lambda *args, **kwargs: True)
    with stub_kernels() as stubs, torch.no_grad():
        gluon = StubKernel(gluon_fwd._swa_fwd_sm90_kernel)
        monkeypatch.setattr(gluon_fwd, "_swa_fwd_sm90_kernel", gluon)
        functions = {}
        for name, stub, descriptors in (("gluon", gluon, 4), ("redo", stubs["_swa_fwd_kernel"], 0)):
            names = [parameter for parameter, _ in bound_argument_order(stub)]
            signature = {parameter: "tensordesc<bf16[64, 64]>" if index < descriptors else "i32"
                         for index, parameter in enumerate(names)}
            functions[name] = CFunction()
            stub.compiled.run = _triton36_launcher.CudaLauncher(functions[name], signature,
                                                                [{}] * descriptors or None)
        functions["gluon_stub"], functions["redo_stub"] = gluon, stubs["_swa_fwd_kernel"]
        yield functions


def _prefill():
    q = torch.randn(1, 128, 8, 64, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 128, 2, 64, dtype=torch.bfloat16) for _ in range(2))
    sinks = torch.randn(8, dtype=torch.bfloat16)

    def call():
        return swattn.flash_attn_func(q, k, v, causal=True, window_size=(31, 0), sinks=sinks)

    return call


def test_a_repeated_gluon_call_is_two_c_launches(stubbed, monkeypatch):
    plans, forwards, chosen = [], [], []
    plan, forward, choose = gluon_fwd._plan, gluon_fwd.forward, gluon_fwd.consumers_for
    monkeypatch.setattr(gluon_fwd, "_plan", lambda *args, **kwargs: plans.append(1) or plan(*args, **kwargs))
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: chosen.append(args) or choose(*args))

    def counting_forward(*args, **kwargs):
        forwards.append(1)
        return forward(*args, **kwargs)

    # Counted as the shipped forward (the plan launches its kept launch itself only while forward is that one).
    monkeypatch.setattr(gluon_fwd, "forward", counting_forward)
    monkeypatch.setattr(fwd, "_GLUON_FORWARD", counting_forward)
    call = _prefill()
    count = gluon_fwd.launch_count()
    repeats = 5
    for _ in range(2 + repeats):
        call()
    gluon, redo = stubbed["gluon"], stubbed["redo"]
    # Planned once (the first call; the interface records its op call at the second), launched 7 times: the plain
    # launch, then the C launcher's. The consumer count is chosen twice while planning: for the Gluon launch and for
    # the redo launch's lazy-rescale threshold (fwd.Plan), never again.
    assert (len(plans), len(chosen), len(forwards)) == (1, 2, 1)
    assert (stubbed["gluon_stub"].plain_launches, gluon.launches) == (1, 1 + repeats)
    assert (stubbed["redo_stub"].plain_launches, redo.launches) == (1, 1 + repeats)
    assert gluon_fwd.launch_count() - count == 2 + repeats
    # The repeated calls: two C launches each, nothing planned or chosen again.
    before = gluon.launches, redo.launches, len(plans), len(chosen), len(forwards)
    call()
    assert (gluon.launches, redo.launches, len(plans), len(chosen), len(forwards)) == (
        before[0] + 1, before[1] + 1, *before[2:])


def test_a_wrapped_forward_sees_every_call(stubbed, monkeypatch):
    """Tuning probes wrap ``gluon_fwd.forward`` to pass their overrides: each call goes through the wrapper, and the
    override makes the launch."""
    forward, calls = gluon_fwd.forward, []

    def probe_forward(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs, block_n=64, num_stages=3)

    call = _prefill()
    for _ in range(2):
        call()  # planned with the shipped choice, then kept by the plan
    monkeypatch.setattr(gluon_fwd, "forward", probe_forward)
    for _ in range(3):
        call()
    assert len(calls) == 3
    plans = [plan for plan in fwd.plans() if plan.use_gluon]
    assert len(plans) == 1 and len(plans[0].gluon_arguments["plans"]) == 2  # shipped, and the probe's
    assert stubbed["gluon_stub"].last_launch[2]["NUM_STAGES"] == 3  # the probe's plain launch
    probe_launch = next(launch for key, (launch, _) in plans[0].gluon_arguments["plans"].items()
                        if key[0] != gluon_fwd.NO_OVERRIDES)
    assert (probe_launch.constexprs["BLOCK_N"], probe_launch.constexprs["NUM_STAGES"]) == (64, 3)
    assert probe_launch.direct_launches == 2  # its plain launch, then two through the C launcher


def test_a_switched_planning_setting_replans(stubbed, monkeypatch):
    """Tests switch gluon_fwd's module settings between calls of one signature: the kept launch must not serve."""
    call = _prefill()
    for _ in range(3):
        call()
    assert stubbed["gluon_stub"].plain_launches == 1
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: 2)
    call()
    assert stubbed["gluon_stub"].plain_launches == 2
    assert stubbed["gluon_stub"].last_launch[2]["NUM_CONSUMERS"] == 2
    call()  # the new plan kept in turn
    assert stubbed["gluon_stub"].plain_launches == 2
