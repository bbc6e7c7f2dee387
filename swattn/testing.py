"""Comparison helpers shared by the tests, the benchmark's correctness gate and the self-check; ``stub_kernels``
for the host-time measurements and the launch-path tests; ``skip_where_library_fails`` for a third-party reference
run that a library version breaks."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64; NaN/inf mismatches count as infinite error."""
    a, e = actual.double(), expected.double()
    if not torch.equal(torch.isnan(a), torch.isnan(e)):
        return float("inf")
    finite = torch.isfinite(e)
    if not torch.equal(finite, torch.isfinite(a)) or not torch.equal(a[~finite & ~torch.isnan(e)],
                                                                     e[~finite & ~torch.isnan(e)]):
        return float("inf")
    diff = (a[finite] - e[finite]).norm().item()
    scale = e[finite].norm().item()
    return diff / scale if scale > 0 else diff


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """Relative-error check that reports the worst elements on failure."""
    error = relative_error(actual, expected)
    if not error <= tolerance:
        diff = (actual.double() - expected.double()).abs().nan_to_num(float("inf"))
        worst = torch.topk(diff.flatten(), min(5, diff.numel())).indices
        where = [tuple(int(i) for i in torch.unravel_index(w, diff.shape)) for w in worst]
        raise AssertionError(f"{name}: relative error {error:.3e} > {tolerance:.1e}; worst at {where}: "
                             f"got {actual.flatten()[worst].tolist()}, expected {expected.flatten()[worst].tolist()}")


@contextlib.contextmanager
def skip_where_library_fails(library) -> Iterator[None]:
    """Around a reference run of a third-party ``library`` (a module: transformers' eager ``generate``): a TypeError
    raised by the library's own code (an internal call that does not match its callee, a bug of that version, e.g.
    transformers 5.17's ``create_masks_for_generate`` passing ``block_sequence_ids`` to a chunked mask function that
    does not take it) skips the test, naming the library's version and the error, as there is no reference to
    compare with. A TypeError raised outside the library (the test's own call) and every other error propagate."""
    try:
        yield
    except TypeError as error:
        root = os.path.dirname(os.path.abspath(library.__file__)) + os.sep
        frames = traceback.extract_tb(error.__traceback__)
        if not frames or not os.path.abspath(frames[-1].filename).startswith(root):
            raise
        import pytest

        where = f"{os.path.relpath(frames[-1].filename, os.path.dirname(root[:-1]))}:{frames[-1].lineno}"
        pytest.skip(f"{library.__name__} {getattr(library, '__version__', '?')}'s own reference run fails inside it "
                    f"({where}, in {frames[-1].name}): TypeError: {error}")


def tolerance_for(dtype: torch.dtype) -> float:
    """Relative-error bound for outputs computed from inputs of ``dtype`` (fp32 accumulation)."""
    return {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


class StubCompiledKernel:
    """What ``kernel[grid](...)`` returns on a GPU (a ``CompiledKernel``), reduced to the launcher attributes the
    direct launch uses; its launches do nothing but count."""

    def __init__(self, stub: StubKernel):
        self.stub = stub
        self.function, self.packed_metadata = object(), object()

    def run(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
            *arguments):
        assert function is self.function and packed_metadata is self.packed_metadata
        self.stub.direct_launches += 1
        self.stub.last_launch = ((grid_x, grid_y, grid_z), arguments)


class StubKernel:
    """A ``@triton.jit`` kernel as its GPU launch path sees it, without a GPU: ``kernel[grid](...)`` (Triton's
    ``JITFunction.run``: bind, specialize, compile or look up) is counted and returns a ``StubCompiledKernel``
    whose launches are counted too (``last_launch``: the grid and arguments of the latest). Nothing runs."""

    def __init__(self, kernel):
        self.fn = kernel.fn
        # Triton's parameters (``_launch.Launch.with_scalars`` reads their specialization), as the compiled kernel
        # has them (an interpreted kernel keeps only its decorator's arguments)
        self.params = getattr(kernel, "params", None)
        if self.params is None:
            from triton.runtime.jit import JITFunction

            self.params = JITFunction(kernel.fn, **getattr(kernel, "kwargs", {})).params
        self.plain_launches = self.direct_launches = 0
        self.last_launch = None
        self.compiled = StubCompiledKernel(self)

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.plain_launches += 1
            self.last_launch = (grid, args, kwargs)
            return self.compiled

        return run


@contextlib.contextmanager
def stub_kernels() -> Iterator[dict[str, StubKernel]]:
    """Replace every swattn kernel by a ``StubKernel`` (and Triton's current device and stream by constants) for
    the block: swattn's whole GPU launch path runs, on any machine, except Triton's C launcher and the GPU. Yields
    the stubs by kernel name. Plans made inside are dropped on both sides of the block."""
    from swattn.kernels import _launch, append, bwd, combine, fwd

    modules = {"_swa_fwd_kernel": fwd, "_append_kv_kernel": append, "_swa_combine_kernel": combine,
               "_swa_bwd_dq_kernel": bwd, "_swa_bwd_dkdv_kernel": bwd}
    kernels = {name: getattr(module, name) for name, module in modules.items()}
    runtime = {name: getattr(_launch._Runtime, name) for name in ("knobs", "get_device", "get_stream")}

    class NoHooks:
        launch_enter_hook = launch_exit_hook = None

    stubs = {name: StubKernel(kernel) for name, kernel in kernels.items()}
    _launch.clear_plans()
    try:
        for name, module in modules.items():
            setattr(module, name, stubs[name])
        _launch._Runtime.knobs, _launch._Runtime.get_device, _launch._Runtime.get_stream = (
            NoHooks, lambda: 0, lambda device: 0)
        yield stubs
    finally:
        for name, module in modules.items():
            setattr(module, name, kernels[name])
        for name, value in runtime.items():
            setattr(_launch._Runtime, name, value)
        _launch.clear_plans()
