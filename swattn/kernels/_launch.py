"""Kernel launches prepared once per call signature: the one module that knows Triton's launch internals.

``kernel[grid](*args, **kwargs)`` runs Triton's ``JITFunction.run`` on every call: it binds the arguments,
specializes each one (type, divisibility by 16, alignment) and hashes them to find the compiled kernel, about 10 us
of host time for a one-argument kernel and 21 us for 30 arguments (H200 host, Triton 3.6), which a decode call
paid once per launch. ``Launch`` does that once: its first call goes through ``kernel[grid](...)``, which compiles
if needed and returns the ``CompiledKernel``, and later calls hand the same arguments to the compiled kernel's
launcher directly, as ``JITFunction.run`` itself does after its cache lookup (Triton 3.6 to 3.9:
``compiled.run(grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook,
exit_hook, *every_bound_argument)``), with the tensors' device pointers as integers, which the launcher takes
as they are (a tensor costs it a ``cuPointerGetAttribute`` driver call per argument).

This is sound because a ``Launch`` belongs to one call signature: its scalar arguments and constexprs are fixed
and the caller keys it on everything Triton specializes a tensor on (dtype and 16-byte alignment), so Triton's
binder would pick the same compiled kernel on every call. The plain launch is kept where the direct one does not
apply: under the interpreter (nothing is compiled), when launch hooks are registered (profilers such as Proton
need the launch metadata), on a device the first call did not compile for, and for good when the compiled kernel
lacks the launcher attributes or its first direct launch fails (a Triton version whose internals differ; every
swattn kernel is idempotent, so a launch that failed after starting its kernel and is made again through the plain
path gives the same result).

Host-side TMA tensor descriptors (the Gluon forward's Q, K, V and O) are launch arguments too: Triton's launcher
expands each one itself on every launch (``make_tensordesc_arg`` in Triton 3.6 to 3.9's nvidia driver: it reads
``base.data_ptr()``, ``shape``, ``strides``, ``padding`` and, from 3.7 on, ``round_f32_to_tf32``, and fills a
``CUtensorMap``). Within one call signature only the base tensor changes between calls, so a ``Descriptor`` builds
the descriptor through its validating constructor at the plain launches and, for direct ones, copies that one's
fields with the call's base (no validation, no view, no shape or stride read per call).
"""

from __future__ import annotations

import functools
import inspect
import operator
import os
import threading
from collections.abc import Sequence
from typing import Any

import torch

# The direct path on or off for every Launch (tests compare the two; SWATTN has no user setting for it).
DIRECT_LAUNCH = True

_LAUNCHER_ATTRIBUTES = ("run", "function", "packed_metadata")

_data_ptr = torch.Tensor.data_ptr


def _hooks_inactive(runtime_knobs) -> bool:
    """No launch hook registered: Triton 3.6-3.9 keep them in ``HookChain`` objects (empty: ``calls == []``),
    older versions in plain attributes (None when unset)."""
    for hook in (runtime_knobs.launch_enter_hook, runtime_knobs.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


class _Runtime:
    """Triton's runtime knobs and the driver's current-device and current-stream functions, looked up once (at
    the first compiled launch: importing them earlier would start the driver on machines without a GPU)."""

    knobs = None
    get_device = None
    get_stream = None

    @classmethod
    def load(cls) -> None:
        if cls.knobs is None:
            from triton import knobs
            from triton.runtime import driver

            # torch.cuda.current_device() without its lazy-init check: the direct path runs only after a plain launch
            # on this device, so CUDA is initialized (the same C function answers).
            cls.get_device = getattr(torch._C, "_cuda_getDevice", None) or driver.active.get_current_device
            cls.get_stream = driver.active.get_current_stream
            cls.knobs = knobs.runtime


def bound_argument_order(kernel) -> tuple[tuple[str, Any], ...]:
    """``(name, default)`` of every parameter of a ``@triton.jit`` kernel, in signature order (constexprs
    included): the order in which ``JITFunction.run`` hands the bound arguments to the compiled launcher."""
    return _parameters(kernel.fn)


@functools.cache
def _parameters(fn) -> tuple[tuple[str, Any], ...]:
    # Cached: a signature seen once (a varlen batch's new lengths) plans, and inspect.signature costs ~20 us.
    return tuple((name, parameter.default) for name, parameter in inspect.signature(fn).parameters.items())


class Descriptor:
    """A host-side tensor descriptor launch argument whose shape, strides, block shape and layout a plan fixes; each
    call gives its base tensor. ``make(base, shape, strides, block_shape, layout)`` builds the real descriptor
    (Gluon's ``TensorDescriptor``). Only the base's device pointer may differ between calls of one plan: the caller
    keys the plan on the base's shape, strides, dtype and 16-byte alignment (what the descriptor was validated on)."""

    __slots__ = ("make", "shape", "strides", "block_shape", "layout", "_type", "_fields")

    def __init__(self, make, shape: Sequence[int], strides: Sequence[int], block_shape: Sequence[int], layout):
        self.make = make
        self.shape, self.strides, self.block_shape = list(shape), list(strides), list(block_shape)
        self.layout = layout
        self._type = self._fields = None

    def build(self, base):
        """The descriptor through its constructor (which validates it), for a plain launch; its fields, base aside
        (a plan must not hold a call's tensor), become the template of the direct launches' copies."""
        descriptor = self.make(base, self.shape, self.strides, self.block_shape, self.layout)
        fields = getattr(descriptor, "__dict__", None)
        if fields is not None and self._fields is None:
            self._type, self._fields = type(descriptor), {name: value for name, value in fields.items()
                                                          if name != "base"}
        return descriptor

    def copy(self, base):
        """The built descriptor's fields with ``base``, without the constructor's checks (TypeError before a build,
        or for a descriptor class without ``__dict__``: the launch then keeps the plain path)."""
        descriptor = object.__new__(self._type)
        descriptor.__dict__.update(self._fields, base=base)
        return descriptor


class Launch:
    """One kernel with its grid, scalar arguments, constexprs and launch options fixed; called with the tensors.

    The kernel's parameters must start with the ``num_tensors`` tensors passed per call, followed by the
    ``scalars`` (passed positionally); ``constexprs`` names the remaining ones (parameters with a default may be
    left out). ``options`` are launch options (``num_warps``, ``num_stages``, ``launch_pdl``, ...). ``descriptors``:
    the first of those tensor parameters are host-side tensor descriptors (``Descriptor``), and the call passes
    their base tensors.
    """

    __slots__ = ("kernel", "grid", "scalars", "constexprs", "options", "num_tensors", "_tail", "_compiled",
                 "_direct_ok", "plain_launches", "direct_launches", "_spread", "descriptors")

    def __init__(self, kernel, grid: Sequence[int], scalars: Sequence[Any], constexprs: dict[str, Any],
                 options: dict[str, Any] | None = None, num_tensors: int | None = None,
                 slots: Sequence[int] | None = None, descriptors: Sequence[Descriptor] = ()):
        # slots: the call passes fewer tensors than the kernel takes (absent ones are one placeholder, passed
        # many times): the kernel's tensor parameter i is the call's argument slots[i]. The spreading is one
        # C-level itemgetter, and the direct launch asks each distinct tensor once for its device pointer.
        self._spread = None if slots is None else operator.itemgetter(*slots)
        self.descriptors = tuple(descriptors)
        if slots is not None and len(slots) != num_tensors:
            raise ValueError(f"slots: {len(slots)} for {num_tensors} tensors")
        self.kernel = kernel
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.scalars = tuple(scalars)
        self.constexprs = constexprs
        self.options = options or {}
        self.num_tensors = num_tensors
        self._tail = None  # scalars and constexprs in signature order, made at the first direct launch
        self._compiled: dict[int, Any] = {}
        self._direct_ok = DIRECT_LAUNCH and num_tensors is not None and hasattr(kernel, "fn")
        self.plain_launches = 0
        self.direct_launches = 0

    def _bound_tail(self) -> tuple:
        """The arguments after the tensors, as ``JITFunction.run`` binds them: the scalars, then every remaining
        parameter in signature order (constexprs given, or their defaults)."""
        named = bound_argument_order(self.kernel)[self.num_tensors + len(self.scalars):]
        missing = [name for name, default in named
                   if name not in self.constexprs and default is inspect.Parameter.empty]
        unknown = set(self.constexprs) - {name for name, _ in named}
        if missing or unknown:
            raise TypeError(f"{self.kernel.fn.__name__}: constexprs missing {missing}, unknown {sorted(unknown)}")
        return self.scalars + tuple(self.constexprs.get(name, default) for name, default in named)

    def __call__(self, *tensors) -> None:
        spread = self._spread
        if self._direct_ok and self._compiled and _hooks_inactive(_Runtime.knobs):
            device = _Runtime.get_device()
            compiled = self._compiled.get(device)
            if compiled is not None:
                if self._tail is None:  # not before a second call: a signature seen once never needs it
                    self._tail = self._bound_tail()
                run, function, packed_metadata = compiled
                try:
                    if self.descriptors:
                        # The descriptors first (copies with this call's bases), then the pointers.
                        spread_tensors = tensors if spread is None else spread(tensors)
                        count = len(self.descriptors)
                        arguments = (*map(Descriptor.copy, self.descriptors, spread_tensors),
                                     *map(_data_ptr, spread_tensors[count:]))
                    else:
                        # Pointers as integers: given a tensor, Triton's launcher calls its data_ptr() and then
                        # cuPointerGetAttribute on it, a driver call per pointer argument (the forward has 18).
                        pointers = tuple(map(_data_ptr, tensors))
                        arguments = pointers if spread is None else spread(pointers)
                    run(*self.grid, _Runtime.get_stream(device), function, packed_metadata, None, None, None,
                        *arguments, *self._tail)
                except Exception:
                    # A launcher whose calling convention differs (another Triton version) rejects the arguments:
                    # keep the plain path from now on. Once direct launches have worked, an error is the call's own.
                    if self.direct_launches:
                        raise
                    self._direct_ok = False
                else:
                    self.direct_launches += 1
                    return
        if spread is not None:
            tensors = spread(tensors)
        if self.descriptors:
            tensors = (*map(Descriptor.build, self.descriptors, tensors), *tensors[len(self.descriptors):])
        compiled = self.kernel[self.grid](*tensors, *self.scalars, **self.constexprs, **self.options)
        self.plain_launches += 1
        if self._direct_ok and all(hasattr(compiled, name) for name in _LAUNCHER_ATTRIBUTES):
            _Runtime.load()
            self._compiled[_Runtime.get_device()] = tuple(getattr(compiled, name) for name in _LAUNCHER_ATTRIBUTES)


def tensor_signature(t) -> tuple | None:
    """What a plan may depend on in a tensor, and everything Triton specializes a pointer on: shape, strides,
    dtype and 16-byte alignment (None for an absent tensor). The device is the caller's to add (one for all)."""
    if t is None:
        return None
    return t.shape, t.stride(), t.dtype, t.data_ptr() % 16 == 0


class PlanCache(dict):
    """Plans per call signature, the oldest dropped past ``max_plans`` (shapes that change on every call, as a
    varlen batch's lengths, must not grow it without bound)."""

    _all: list[PlanCache] = []

    def __init__(self, max_plans: int = 512):
        super().__init__()
        self.max_plans = max_plans
        self.misses = 0
        PlanCache._all.append(self)

    def add(self, key, plan):
        self.misses += 1
        if len(self) >= self.max_plans:
            del self[next(iter(self))]
        self[key] = plan
        return plan


# Scratch kept between calls on or off (``kept_buffer``, the forward's isolation buffers): off (SWATTN_KEEP_SCRATCH=0
# at import, or tests setting it), every call allocates its own, as before: for A/B runs and diagnosis.
KEEP_SCRATCH = os.environ.get("SWATTN_KEEP_SCRATCH", "1") != "0"


def stream_key(device: torch.device) -> tuple | None:
    """Who may use a buffer kept between calls (``kept_buffer``): the device, its current stream and the calling
    thread, or None during CUDA-graph capture (a captured call allocates its own: the graph then owns them) and
    with ``KEEP_SCRATCH`` off."""
    if not KEEP_SCRATCH:
        return None
    if device.type == "cuda":
        if torch._C._cuda_isCurrentStreamCapturing():
            return None
        return device.index, torch._C._cuda_getCurrentRawStream(device.index), threading.get_ident()
    return device, 0, threading.get_ident()


# Scratch buffers kept between calls (kept_buffer), by (stream_key, name). Buffers larger than KEEP_MAX_BYTES are
# allocated per call (a forced split count on a long prefill: calls whose work dwarfs an allocation, and whose
# scratch would otherwise stay held).
_KEPT = PlanCache(256)
KEEP_MAX_BYTES = 64 << 20


# kept_buffer's stream argument when the caller has not asked stream_key itself.
ASK = object()


def kept_buffer(name: str, device: torch.device, numel: int, dtype: torch.dtype, stream=ASK) -> torch.Tensor:
    """A flat scratch tensor of at least ``numel`` elements that calls on one stream from one thread share (an
    allocation less per call, 3-6 us of host time each on the H200 host): for buffers a call writes before it reads
    them and no later call reads, in launches on the current stream, which run in order. Calls on other streams or
    threads (whose launches could interleave) get their own; during CUDA-graph capture every call gets a new one.
    ``stream``: ``stream_key(device)`` when the caller has it (a call with several buffers asks once: the capture
    query is a driver call, ~2 us of host time each on the H200 host)."""
    key = stream_key(device) if stream is ASK else stream
    if key is None or numel * dtype.itemsize > KEEP_MAX_BYTES:
        return torch.empty(numel, device=device, dtype=dtype)
    key = (key, name)
    buffer = _KEPT.get(key)
    if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
        buffer = _KEPT.add(key, torch.empty(numel, device=device, dtype=dtype))
    return buffer


def clear_plans() -> None:
    """Forget every plan (tests and scripts that replace a kernel or a setting the plans were built with)."""
    for cache in PlanCache._all:
        cache.clear()


class Layout:
    """A contiguous tensor's shape, strides and device, for planning launches on tensors allocated per call
    (cheaper than a meta tensor: a varlen batch's new lengths plan on every call)."""

    __slots__ = ("shape", "device", "_strides")

    def __init__(self, shape: Sequence[int], device):
        self.shape, self.device = tuple(shape), device
        strides, step = [], 1
        for size in reversed(self.shape):
            strides.append(step)
            step *= max(size, 1)
        self._strides = tuple(reversed(strides))

    def stride(self, dim: int | None = None):
        return self._strides if dim is None else self._strides[dim]

    def dim(self) -> int:
        return len(self.shape)

    def view(self, *shape) -> Layout:
        return Layout(shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape, self.device)
