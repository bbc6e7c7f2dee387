"""Direct launches through Triton's C launcher (swattn/kernels/_launch.py ``CLauncher``), checked without a GPU.

The compiled kernel's ``run`` is a ``CudaLauncher`` of Triton 3.9 (the installed class, its wrapper built by the
installed ``wrap_handle_tensordesc_impl``) or of Triton 3.6 (tests/kernels/_triton36_launcher.py, its code copied),
around a stand-in for the C function that records what it is handed, and a stand-in for the descriptor fill
(``make_tensordesc_arg``) that counts its calls. A direct launch must hand the C function exactly what ``run`` would,
and fill a descriptor only for bases at addresses the launch has not seen: calls alternating two tensor sets through
one plan fill twice, and each call's maps carry its own bases. tests/gpu/test_gluon_launch_bf16.py checks the real
launcher on an H100/H200 (bits equal to the plain launch's).
"""

from __future__ import annotations

import _triton36_launcher
import pytest
import torch

from swattn.kernels import _launch, gluon_fwd
from swattn.kernels._launch import Descriptor, Launch, bound_argument_order
from swattn.testing import StubKernel

STREAM = 7  # the stream the stand-in runtime reports (passed through to the C function)


class FakeMap:
    """A filled CUtensorMap as the stand-in fill makes it: the base's address and what the plan fixed."""

    def __init__(self, address, shape, strides, meta):
        self.fields = (address, tuple(shape), tuple(strides), meta)

    def __eq__(self, other):
        return type(other) is FakeMap and other.fields == self.fields

    def __repr__(self):
        return f"FakeMap{self.fields}"


class Recorder:
    """The C launcher and the fill stand-ins: every launch's arguments, every fill's base address."""

    def __init__(self):
        self.launches, self.fills = [], []

    def __call__(self, *args):  # the C function: a callable without __code__, as a builtin
        self.launches.append(args)

    def fill(self, descriptor, meta, *rest):
        self.fills.append(descriptor.base.data_ptr())
        return [FakeMap(descriptor.base.data_ptr(), descriptor.shape, descriptor.strides, meta), *descriptor.shape,
                *descriptor.strides]


def _launcher(version, recorder: Recorder, signature: dict, metas, monkeypatch):
    """A compiled kernel's ``run`` of Triton ``version`` around the recorder's stand-ins."""
    monkeypatch.setattr(_launch, "_triton_version", lambda: version)
    if version == (3, 6):
        monkeypatch.setattr(_triton36_launcher, "make_tensordesc_arg", recorder.fill)
        return _triton36_launcher.CudaLauncher(recorder, signature, metas)
    import triton
    from triton.backends.driver import wrap_handle_tensordesc_impl
    from triton.backends.nvidia import driver as nvidia

    if not triton.__version__.startswith("3.9."):
        pytest.skip(f"the installed Triton is {triton.__version__}, not 3.9")
    run = object.__new__(nvidia.CudaLauncher)  # as CudaLauncher.__init__ makes it, without a driver
    run.launch = wrap_handle_tensordesc_impl(recorder, signature, metas, recorder.fill)
    run.gsan_enabled, run.num_ctas, run.launch_cooperative_grid, run.launch_pdl = False, 1, False, True
    run.global_scratch_size = run.profile_scratch_size = 0
    run.global_scratch_align = run.profile_scratch_align = 1
    run.arg_annotations, run.kernel_signature = object(), object()
    monkeypatch.setattr(triton.runtime.driver, "_active", object())  # __call__ asks for it (unused here)
    return run


class _Compiled:
    def __init__(self, run):
        self.run, self.function, self.packed_metadata = run, object(), (4, 1, 0)


class _Kernel:
    """A jit kernel ``(X_desc, Y, n, BLOCK: constexpr)`` (or ``X`` a pointer) whose plain launch returns
    ``compiled``."""

    def __init__(self, compiled):
        def kernel(X_desc, Y, n, BLOCK):
            pass

        self.fn, self.compiled, self.plain = kernel, compiled, 0

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.plain += 1
            return self.compiled

        return run


@pytest.fixture
def runtime(monkeypatch):
    monkeypatch.setattr(_launch._Runtime, "knobs", type("NoHooks", (), dict(launch_enter_hook=None,
                                                                            launch_exit_hook=None)))
    monkeypatch.setattr(_launch._Runtime, "get_device", lambda: 0)
    monkeypatch.setattr(_launch._Runtime, "get_stream", lambda device: STREAM)


VERSIONS = [pytest.param((3, 6), id="triton3.6"), pytest.param((3, 9), id="triton3.9")]


@pytest.mark.parametrize("descriptor", [True, False], ids=["descriptor", "pointers"])
@pytest.mark.parametrize("version", VERSIONS)
def test_c_launch_hands_what_run_would(runtime, monkeypatch, version, descriptor):
    recorder = Recorder()
    signature = {"X_desc": "tensordesc<bf16[64, 64]>" if descriptor else "*bf16", "Y": "*fp32", "n": "i32",
                 "BLOCK": "constexpr"}
    metas = [{"swizzle": 128}] if descriptor else None
    run = _launcher(version, recorder, signature, metas, monkeypatch)
    compiled = _Compiled(run)
    kernel = _Kernel(compiled)
    layout = gluon_fwd._shared_layout((64, 64), torch.bfloat16)
    descriptors = (Descriptor(gluon_fwd.TensorDescriptor, (128, 64), (64, 1), (64, 64), layout),) if descriptor else ()
    launch = Launch(kernel, (3,), (5,), dict(BLOCK=16), num_tensors=2, descriptors=descriptors)
    sets = [(torch.randn(128, 64, dtype=torch.bfloat16), torch.zeros(4)) for _ in range(2)]
    launch(*sets[0])  # plain: compiles
    calls = [sets[0], sets[1], sets[0], sets[1], sets[0]]
    for x, y in calls:
        launch(x, y)
    c = launch._compiled[0][3]
    assert c is not None and c.launches == len(calls) and launch.direct_launches == len(calls)
    assert kernel.plain == 1
    # One fill per distinct base address, not per call.
    assert len(recorder.fills) == (2 if descriptor else 0)
    direct = recorder.launches[:]
    recorder.launches.clear()
    tail = (5, 16)
    for (x, y), got in zip(calls, direct):
        first = Descriptor.copy(descriptors[0], x) if descriptor else x.data_ptr()
        run(3, 1, 1, STREAM, compiled.function, compiled.packed_metadata, None, None, None, first, y.data_ptr(),
            *tail)
        assert got == recorder.launches[-1]
        if descriptor:  # the map carries this call's base
            kernel_args = got[-1] if version == (3, 9) else got[13:]
            assert kernel_args[0] == FakeMap(x.data_ptr(), (128, 64), (64, 1), {"swizzle": 128})
            assert kernel_args[5] == y.data_ptr()


@pytest.mark.parametrize("tma_store", [False, True], ids=["o-stores", "o-tma"])
@pytest.mark.parametrize("version", VERSIONS)
def test_gluon_plan_alternating_tensor_sets_fills_once_per_set(runtime, monkeypatch, version, tma_store):
    """Through ``gluon_fwd.forward(..., plans=)`` (the Gluon kernel stubbed, its compiled launcher a CudaLauncher):
    two tensor sets alternating through one plan fill each set's Q, K, V maps once; every call's maps carry that
    call's bases, its pointers that call's tensors. An output new on every call (a TMA store's O) fills its map
    alone."""
    stub = StubKernel(gluon_fwd._swa_fwd_sm90_kernel)
    monkeypatch.setattr(gluon_fwd, "_swa_fwd_sm90_kernel", stub)
    recorder = Recorder()
    names = [name for name, _ in bound_argument_order(stub)]
    signature = {name: "tensordesc<bf16[64, 64]>" if index < 4 else "i32" for index, name in enumerate(names)}
    stub.compiled.run = _launcher(version, recorder, signature, [{"index": i} for i in range(4)], monkeypatch)
    stub.compiled.packed_metadata = (4, 1, 0)

    def arguments():
        batch, seqlen, heads, kv_heads, head_dim = 1, 96, 8, 2, 64
        q = torch.randn(batch, seqlen, heads, head_dim, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, seqlen, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
        out, lse = torch.empty_like(q), torch.empty(batch, heads, seqlen)
        kwargs = dict(softmax_scale=0.125, left=31, right=0, softcap=0.0, sinks=torch.randn(heads),
                      cu_seqlens_q=None, cu_seqlens_k=None, seqlen_q=seqlen, seqlen_k=seqlen, batch=batch,
                      pack_gqa=True, o_strides=q.stride()[:3], l_strides=(lse.stride(0), lse.stride(2), lse.stride(1)),
                      non_finite_flags=torch.empty(64, dtype=torch.int8),
                      any_non_finite=torch.zeros(2, dtype=torch.int32), tma_store=tma_store)
        return (q, k, v, out, lse), kwargs

    sets = [arguments(), arguments()]
    plans = {}
    gluon_fwd.forward(*sets[0][0], **sets[0][1], plans=plans)  # plans, launches through kernel[grid]
    order = [0, 1, 0, 1, 1, 0]
    for index in order:
        tensors, kwargs = sets[index]
        gluon_fwd.forward(*tensors, **kwargs, plans=plans)
        (q, k, v, out, lse), got = tensors, recorder.launches[-1]
        kernel_args = got[-1] if version == (3, 9) else got[13:]
        # Each descriptor expands to [map, 4 sizes, 4 strides] (Q, K and V have 4, 2 and 2 dims: the K/V rows view).
        maps = [value for value in kernel_args if type(value) is FakeMap]
        (launch, _), = plans.values()
        o_base = q if launch.descriptors[3] is launch.descriptors[0] else out  # O through TMA: out's map
        assert [m.fields[0] for m in maps] == [q.data_ptr(), k.data_ptr(), v.data_ptr(), o_base.data_ptr()]
        assert [m.fields[3] for m in maps] == [{"index": i} for i in range(4)]
        assert out.data_ptr() in kernel_args and lse.data_ptr() in kernel_args
        assert kwargs["sinks"].data_ptr() in kernel_args
    assert (stub.plain_launches, len(recorder.launches), len(plans)) == (1, len(order), 1)
    # The first direct call of each set fills its four maps; the repeats fill none.
    assert len(recorder.fills) == 2 * 4
    # A new output on every call (held, so at a new address): only O's map is filled again, with a TMA store.
    (q, k, v, _, lse), kwargs = sets[0]
    outs = [torch.empty_like(q) for _ in range(3)]
    for out in outs:
        gluon_fwd.forward(q, k, v, out, lse, **kwargs, plans=plans)
        maps = [value for value in recorder.launches[-1][-1 if version == (3, 9) else slice(13, None)]
                if type(value) is FakeMap]
        assert maps[3].fields[0] == (out if tma_store else q).data_ptr()
    assert len(recorder.fills) == 2 * 4 + (len(outs) if tma_store else 0)


def test_an_unknown_launcher_structure_keeps_run(runtime, monkeypatch):
    """Another Triton version, scratch memory, or a C function that rejects the arguments at its first launch:
    launches go through ``run`` (the previous direct path), with the same arguments."""
    recorder = Recorder()
    signature = {"X_desc": "*bf16", "Y": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    run = _launcher((3, 6), recorder, signature, None, monkeypatch)
    assert _launch.c_launcher(run, object(), (4, 1, 0), 0) is not None
    monkeypatch.setattr(_launch, "_triton_version", lambda: (3, 7))
    assert _launch.c_launcher(run, object(), (4, 1, 0), 0) is None
    monkeypatch.setattr(_launch, "_triton_version", lambda: (3, 6))
    run.global_scratch_size = 128
    assert _launch.c_launcher(run, object(), (4, 1, 0), 0) is None
    run.global_scratch_size = 0
    assert _launch.c_launcher(run, object(), (4, 1, 0), 1) is None  # no descriptor in its signature

    rejected = []

    def rejecting(*args):
        if not rejected:
            rejected.append(args)
            raise TypeError("function takes exactly 17 arguments")
        recorder(*args)

    run.launch = rejecting  # a builtin in Triton; here a function with no closure but a __code__
    compiled = _Compiled(run)
    launch = Launch(_Kernel(compiled), (3,), (5,), dict(BLOCK=16), num_tensors=2)
    monkeypatch.setattr(_launch, "c_launcher", lambda *args: _launch.CLauncher(rejecting, (args[1],), True))
    x, y = torch.zeros(4), torch.zeros(4)
    for _ in range(3):
        launch(x, y)
    assert launch._compiled[0][3] is None and launch.direct_launches == 2 and len(rejected) == 1
    assert len(recorder.launches) == 2  # both through run, which calls its launch


def test_kept_expansions_are_bounded(runtime, monkeypatch):
    """Past ``MAX_EXPANSIONS`` tensor sets the kept maps are dropped (and filled again as calls come): the maps a
    call gets are always its own bases'."""
    monkeypatch.setattr(_launch, "MAX_EXPANSIONS", 2)
    recorder = Recorder()
    signature = {"X_desc": "tensordesc<bf16[64, 64]>", "Y": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    run = _launcher((3, 6), recorder, signature, [{"swizzle": 128}], monkeypatch)
    layout = gluon_fwd._shared_layout((64, 64), torch.bfloat16)
    descriptor = Descriptor(gluon_fwd.TensorDescriptor, (128, 64), (64, 1), (64, 64), layout)
    launch = Launch(_Kernel(_Compiled(run)), (3,), (5,), dict(BLOCK=16), num_tensors=2, descriptors=(descriptor,))
    sets = [(torch.randn(128, 64, dtype=torch.bfloat16), torch.zeros(4)) for _ in range(3)]
    launch(*sets[0])
    for index in [0, 1, 2, 0, 2]:
        x, y = sets[index]
        launch(x, y)
        assert recorder.launches[-1][13] == FakeMap(x.data_ptr(), (128, 64), (64, 1), {"swizzle": 128})
        assert len(launch._compiled[0][3].expansions) <= 2
    assert len(recorder.fills) == 4  # sets 0, 1, then 2 (0 and 1 dropped), 0 again; 2 still kept
