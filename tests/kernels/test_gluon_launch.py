"""The Gluon forward's planned launch (swattn/kernels/gluon_fwd.py ``forward(..., plans=)`` on
swattn/kernels/_launch.py's ``Launch`` with ``Descriptor`` arguments), checked without a GPU: the kernel is a
``StubKernel`` (its plain launch returns a stub compiled kernel, whose launcher records what it is handed).

A signature's first call plans and goes through ``kernel[grid](...)`` with tensor descriptors built by their
constructor; later calls hand the compiled launcher copies of those descriptors with the call's tensors as bases and
the other tensors as device pointers, and run no config choice. tests/gpu/test_gluon_launch_bf16.py checks on an
H100/H200 that both launches give the same bits.
"""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn.kernels import _launch, fwd, gluon_fwd
from swattn.kernels._launch import Descriptor, Launch
from swattn.testing import StubKernel, stub_kernels

pytestmark = pytest.mark.skipif(not gluon_fwd.GLUON_AVAILABLE, reason="this triton has no Gluon")

DESCRIPTORS = 4  # the kernel's first tensor parameters: the Q, K, V and O descriptors


@pytest.fixture
def gluon_stub(monkeypatch):
    """The Gluon kernel replaced by a ``StubKernel``, Triton's device and stream by constants (no hooks)."""

    class NoHooks:
        launch_enter_hook = launch_exit_hook = None

    stub = StubKernel(gluon_fwd._swa_fwd_sm90_kernel)
    monkeypatch.setattr(gluon_fwd, "_swa_fwd_sm90_kernel", stub)
    monkeypatch.setattr(_launch._Runtime, "knobs", NoHooks)
    monkeypatch.setattr(_launch._Runtime, "get_device", lambda: 0)
    monkeypatch.setattr(_launch._Runtime, "get_stream", lambda device: 0)
    return stub


def _arguments(varlen: bool = False, pack_gqa: bool = True, sinks: bool = True):
    """``forward``'s arguments for a CPU call (dense or varlen q and k/v), tensors fresh on every call."""
    batch, seqlen, heads, kv_heads, head_dim = 2, 96, 8, 2, 64
    if varlen:
        q = torch.randn(batch * seqlen, heads, head_dim, dtype=torch.bfloat16)
        k, v = (torch.randn(batch * seqlen, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
        cu_seqlens = torch.tensor([0, seqlen, 2 * seqlen], dtype=torch.int32)
        lse = torch.empty(heads, batch * seqlen)
        l_strides = (0, lse.stride(1), lse.stride(0))
        o_strides = (0, heads * head_dim, head_dim)
    else:
        q = torch.randn(batch, seqlen, heads, head_dim, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, seqlen, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2))
        cu_seqlens = None
        lse = torch.empty(batch, heads, seqlen)
        l_strides = (lse.stride(0), lse.stride(2), lse.stride(1))
        o_strides = q.stride()[:3]
    out = torch.empty_like(q)
    tensors = (q, k, v, out, lse)
    kwargs = dict(softmax_scale=head_dim ** -0.5, left=31, right=0, softcap=0.0,
                  sinks=torch.randn(heads) if sinks else None, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                  seqlen_q=seqlen, seqlen_k=seqlen, batch=batch, pack_gqa=pack_gqa, o_strides=o_strides,
                  l_strides=l_strides, non_finite_flags=torch.empty(4096, dtype=torch.int8),
                  any_non_finite=torch.zeros(2, dtype=torch.int32))
    return tensors, kwargs


def _check_direct_launch(first_plain, direct, tensors, kwargs) -> None:
    """The direct launch's arguments are the plain launch's, bound as ``JITFunction.run`` binds them, with this
    call's tensors: descriptors of the same class and fields around this call's tensors, pointers as integers."""
    from swattn.kernels._launch import bound_argument_order

    grid, args, plain_kwargs = first_plain
    direct_grid, arguments = direct
    assert direct_grid == tuple(grid)
    names = [name for name, _ in bound_argument_order(gluon_fwd._swa_fwd_sm90_kernel)]
    values = dict(zip(names, args)) | plain_kwargs
    expected = [values.get(name, default) for name, default in bound_argument_order(gluon_fwd._swa_fwd_sm90_kernel)]
    assert len(arguments) == len(expected)
    q, k, v, out, lse = tensors
    bases = {"q_desc": q, "k_desc": k, "v_desc": v, "o_desc": out if plain_kwargs["TMA_STORE"] else q}
    pointers = {"O": out, "LSE": lse, "SINKS": kwargs["sinks"], "FLAGS": kwargs["non_finite_flags"],
                "ANY_NAN": kwargs["any_non_finite"]}
    for name, got, want in zip(names, arguments, expected):
        if name.endswith("_desc"):
            assert type(got) is type(want), name
            assert got.base is bases[name], name
            assert {**vars(got), "base": None} == {**vars(want), "base": None}, name
        elif isinstance(want, torch.Tensor):
            assert type(got) is int, name
            if name in pointers and pointers[name] is not None:
                assert got == pointers[name].data_ptr(), name
        else:
            assert type(got) is type(want) and got == want, name


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_repeated_forward_launches_directly(gluon_stub, monkeypatch, varlen):
    chosen = []
    choose = gluon_fwd.consumers_for
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: chosen.append(args) or choose(*args))
    plans = {}
    tensors, kwargs = _arguments(varlen=varlen)
    gluon_fwd.forward(*tensors, **kwargs, plans=plans)
    first_plain = gluon_stub.last_launch
    for _ in range(3):
        tensors, kwargs = _arguments(varlen=varlen)  # new tensors (new addresses), same signature
        gluon_fwd.forward(*tensors, **kwargs, plans=plans)
        _check_direct_launch(first_plain, gluon_stub.last_launch, tensors, kwargs)
    # JITFunction.run (bind, specialize, compile or look up) once; the config chosen once.
    assert (gluon_stub.plain_launches, gluon_stub.direct_launches) == (1, 3)
    assert len(chosen) == 1 and len(plans) == 1
    # The plain launch's descriptors are what TensorDescriptor.from_tensor makes of the views the kernel reads.
    q, k, v, out, lse = tensors
    _, args, _ = first_plain
    k_view = gluon_fwd._rows_view(k, varlen)
    assert (args[1].shape, args[1].strides) == (list(k_view.shape), list(k_view.stride()))
    q_view = q.unsqueeze(0) if varlen else q
    assert (args[0].shape, args[0].strides) == (list(q_view.shape), list(q_view.stride()))


def test_a_switched_setting_or_override_makes_a_new_plan(gluon_stub, monkeypatch):
    """Tests and tuning probes switch module settings (``PINGPONG``, ``consumers_for``, ...) or pass overrides: a
    plan made before must not serve the call."""
    plans = {}
    tensors, kwargs = _arguments(pack_gqa=False)
    gluon_fwd.forward(*tensors, **kwargs, plans=plans)
    gluon_fwd.forward(*tensors, **kwargs, plans=plans)
    assert (gluon_stub.plain_launches, gluon_stub.direct_launches) == (1, 1)
    monkeypatch.setattr(gluon_fwd, "consumers_for", lambda *args: 1)
    gluon_fwd.forward(*tensors, **kwargs, plans=plans)
    assert gluon_stub.last_launch[2]["NUM_CONSUMERS"] == 1
    monkeypatch.setattr(gluon_fwd, "PINGPONG", True)
    gluon_fwd.forward(*tensors, **kwargs, plans=plans, consumers=2, block_n=64)
    assert gluon_stub.last_launch[2]["PINGPONG"] and gluon_stub.last_launch[2]["BLOCK_N"] == 64
    assert (gluon_stub.plain_launches, len(plans)) == (3, 3)
    # Without a plans dict every call plans and launches through kernel[grid](...).
    monkeypatch.setattr(gluon_fwd, "PINGPONG", False)
    for _ in range(2):
        gluon_fwd.forward(*tensors, **kwargs)
    assert (gluon_stub.plain_launches, gluon_stub.direct_launches) == (5, 1)


def test_attention_forward_keeps_the_gluon_plan(gluon_stub, monkeypatch):
    """Through the public API (the dispatch forced onto the Gluon kernel for CPU tensors): the forward plan keeps
    the Gluon launch; a repeated call plans nothing, and its redo pass (a Triton launch) is direct as well."""
    monkeypatch.setattr(fwd, "_use_gluon", lambda *args, **kwargs: True)
    chosen = []
    choose = gluon_fwd.block_n_for
    monkeypatch.setattr(gluon_fwd, "block_n_for", lambda *args: chosen.append(args) or choose(*args))
    q = torch.randn(1, 200, 8, 64, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 200, 2, 64, dtype=torch.bfloat16) for _ in range(2))
    sinks = torch.randn(8)
    with stub_kernels() as stubs:
        for _ in range(4):
            swattn.flash_attn_func(q, k, v, causal=True, window_size=(63, 0), sinks=sinks, pack_gqa=True)
        assert (gluon_stub.plain_launches, gluon_stub.direct_launches) == (1, 3)
        assert len(chosen) == 1
        redo = stubs["_swa_fwd_kernel"]
        assert (redo.plain_launches, redo.direct_launches) == (1, 3)


class _SlottedDescriptor:
    """A descriptor class without ``__dict__`` (a Triton version could make it a slotted dataclass)."""

    __slots__ = ("base", "shape", "strides", "block_shape", "layout")

    def __init__(self, base, shape, strides, block_shape, layout):
        self.base, self.shape, self.strides, self.block_shape, self.layout = base, shape, strides, block_shape, layout


class _Compiled:
    def __init__(self):
        self.function = self.packed_metadata = None
        self.launched = []

    def run(self, *args):
        self.launched.append(args)


class _Kernel:
    """A jit kernel ``(X_desc, Y, n, BLOCK: constexpr)`` whose plain launch records its arguments."""

    def __init__(self, compiled):
        def kernel(X_desc, Y, n, BLOCK):
            pass

        self.fn, self.compiled, self.plain = kernel, compiled, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.plain.append(args)
            return self.compiled

        return run


@pytest.mark.parametrize("make", [gluon_fwd.TensorDescriptor, _SlottedDescriptor], ids=["triton", "slotted"])
def test_descriptor_copies_or_the_plain_path(monkeypatch, make):
    """A descriptor class whose instances have a ``__dict__`` is copied for direct launches; one without keeps
    the launch on the plain path for good (the first direct try fails before launching anything)."""
    monkeypatch.setattr(_launch._Runtime, "knobs", type("NoHooks", (), dict(launch_enter_hook=None,
                                                                            launch_exit_hook=None)))
    monkeypatch.setattr(_launch._Runtime, "get_device", lambda: 0)
    monkeypatch.setattr(_launch._Runtime, "get_stream", lambda device: 0)
    compiled = _Compiled()
    kernel = _Kernel(compiled)
    layout = gluon_fwd._shared_layout((64, 64), torch.bfloat16)
    descriptor = Descriptor(make, (128, 64), (64, 1), (64, 64), layout)
    launch = Launch(kernel, (3,), (7,), dict(BLOCK=16), num_tensors=2, descriptors=(descriptor,))
    calls = [(torch.randn(128, 64, dtype=torch.bfloat16), torch.zeros(4)) for _ in range(3)]
    for x, y in calls:
        launch(x, y)
    if make is _SlottedDescriptor:
        assert (len(kernel.plain), len(compiled.launched), launch.direct_launches) == (3, 0, 0)
        return
    assert (len(kernel.plain), launch.direct_launches) == (1, 2)
    for (x, y), args in zip(calls[1:], compiled.launched):
        grid, (got, pointer, n, block) = args[:3], args[9:]
        assert grid == (3, 1, 1) and (pointer, n, block) == (y.data_ptr(), 7, 16)
        assert type(got) is make and got.base is x
        assert (got.shape, got.strides, got.block_shape, got.layout) == ([128, 64], [64, 1], [64, 64], layout)
    # The plan holds no call's tensor (its template keeps every field but the base).
    assert "base" not in descriptor._fields


def test_tritons_expansion_of_a_copied_descriptor():
    """What Triton's launcher makes of a host descriptor without TMA metadata (``make_tensordesc_arg``: base,
    shape, strides, padding...) is the same for the copy as for the descriptor the constructor built."""
    from triton.backends.nvidia import driver

    layout = gluon_fwd._shared_layout((64, 64), torch.bfloat16)
    descriptor = Descriptor(gluon_fwd.TensorDescriptor, (128, 64), (64, 1), (64, 64), layout)
    x = torch.randn(128, 64, dtype=torch.bfloat16)
    built, copied = descriptor.build(x), descriptor.copy(x)
    try:
        expand = lambda d: driver.make_tensordesc_arg(d, None, None)  # noqa: E731 (Triton 3.7+)
        expanded = expand(built)
    except TypeError:
        expand = lambda d: driver.make_tensordesc_arg(d, None)  # noqa: E731 (Triton 3.6)
        expanded = expand(built)
    assert expanded[0] is x
    assert expand(copied)[0] is x and expand(copied)[1:] == expanded[1:]



@pytest.mark.parametrize("descales", ["per-kv-head", "per-tensor", "none"])
def test_all_fp8_call_hands_the_kernel_e4m3_q_k_bf16_v_and_the_descales(gluon_stub, monkeypatch, descales):
    """An all-fp8 call through the public API (the dispatch forced onto the Gluon kernel for CPU tensors): the
    kernel reads e4m3 Q and K through their descriptors, V's exact bf16 copy, the three descales with their
    strides (zeros for one value per tensor or none), writes bf16 O per thread (no TMA store through an e4m3 Q
    slot); the redo pass (a Triton launch) takes the e4m3 tensors themselves."""
    from swattn.kernels._launch import bound_argument_order

    monkeypatch.setattr(fwd, "_use_gluon", lambda *args, **kwargs: True)
    fp8 = torch.float8_e4m3fn
    q = torch.randn(2, 200, 8, 64).to(fp8)
    k, v = (torch.randn(2, 200, 2, 64).to(fp8) for _ in range(2))
    if descales == "per-kv-head":
        given = [torch.rand(2, 2) + 0.5 for _ in range(3)]
    elif descales == "per-tensor":
        given = [torch.tensor([[scale]]).expand(2, 2) for scale in (0.5, 0.25, 2.0)]
    else:
        given = [None] * 3
    with stub_kernels() as stubs:
        out = swattn.flash_attn_func(q, k, v, q_descale=given[0], k_descale=given[1], v_descale=given[2],
                                     causal=True, window_size=(63, 0), pack_gqa=True)
        redo = stubs["_swa_fwd_kernel"]
        assert redo.plain_launches == 1 and redo.last_launch[1][0] is q
    assert out.dtype == torch.bfloat16
    _, args, constexprs = gluon_stub.last_launch
    values = dict(zip((name for name, _ in bound_argument_order(gluon_fwd._swa_fwd_sm90_kernel)), args))
    assert values["q_desc"].base is q and values["k_desc"].base is k
    assert values["v_desc"].base.dtype == torch.bfloat16 and torch.equal(values["v_desc"].base.float(), v.float())
    assert values["o_desc"].base is q and not constexprs["TMA_STORE"]  # one consumer: TMA store off for e4m3 Q
    assert values["O"].data_ptr() == out.data_ptr()
    for name, descale in zip("qkv", given):
        tensor, strides = values[f"{name.upper()}_DESCALE"], (values[f"stride_{name}db"], values[f"stride_{name}dh"])
        if descale is None:
            assert torch.equal(tensor, torch.ones(1)) and strides == (0, 0)
        else:
            assert tensor is descale and strides == descale.stride()
