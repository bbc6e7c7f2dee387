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

Triton's compiled launcher (``CompiledKernel.run``, the nvidia driver's ``CudaLauncher``) is itself Python around a C
function: per call it defines two closures and asks for scratch memory, and for a kernel with descriptors a wrapper
expands each descriptor (Triton 3.6: a Python loop over every argument; ``make_tensordesc_arg`` fills a
``CUtensorMap`` through a driver call each time). ``CLauncher`` calls that C function itself, for launchers of a
structure checked here (Triton 3.6 and 3.9, no scratch memory, no sanitizer), with each descriptor expanded once per
base address: a plan fixes everything else a ``CUtensorMap`` holds (shape, strides, block shape, swizzle, element
type), so a call whose Q, K and V are at addresses seen before (a serving engine's or a training loop's buffers,
reused across steps) reuses the filled maps. Any other launcher structure keeps ``run``.
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
# Direct launches through Triton's C launcher (``CLauncher``) where its structure is known; off: through
# ``CompiledKernel.run`` (A/B runs, tests). Read when a Launch compiles.
C_LAUNCHER = True
# Expanded descriptor arguments kept per Launch and device, by the descriptors' base addresses (all dropped when
# full: a model's layers each pass their own buffers, 36 for gpt-oss-120b).
MAX_EXPANSIONS = 64

# CUDA's limit on a grid's second and third dimensions (the first takes 2**31 - 1). A launch beyond it fails in the
# driver with "invalid argument", so the plans refuse such grids with a message naming the argument.
MAX_GRID_YZ = 65535

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


@functools.cache
def _triton_version() -> tuple[int, int]:
    import triton

    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


# Triton 3.6's CudaLauncher.__call__ (gridX, gridY, gridZ, stream, function, *args) hands its C launcher (format
# "iiiKKppOOOOOO" + the kernel's): the grid, stream, function, cooperative-grid and PDL flags, global and profile
# scratch, packed metadata, launch metadata, enter and exit hooks, then the kernel's arguments with each descriptor
# expanded in place. Triton 3.9's (..., function, kernel_metadata, launch_metadata, launch_enter_hook,
# launch_exit_hook, *args) hands it the grid, stream, function, the two flags, packed metadata, launch metadata, the
# hooks, the two scratch pointers, the argument annotations and kernel signature, then one tuple of the kernel's
# arguments with the descriptors expanded.
_CALL_PARAMETERS = {
    (3, 6): ("self", "gridX", "gridY", "gridZ", "stream", "function", "args"),
    (3, 9): ("self", "gridX", "gridY", "gridZ", "stream", "function", "kernel_metadata", "launch_metadata",
             "launch_enter_hook", "launch_exit_hook", "args"),
}
# The free variables of the wrapper Triton puts around the C launcher for a kernel with descriptors
# (``wrap_handle_tensordesc``'s ``inner``).
_WRAPPER_CELLS = {
    (3, 6): {"launcher", "tensordesc_indices", "tensordesc_meta"},
    (3, 9): {"launcher", "signature", "relevant_paths", "tensordesc_meta", "make_tensordesc_arg"},
}


class CLauncher:
    """The C function behind a compiled kernel's ``run`` (see the module docstring), with what ``run`` would pass
    it around the kernel's arguments: ``launch(grid_x, grid_y, grid_z, stream, *before, *arguments)`` (Triton 3.6,
    ``flat``) or ``launch(grid_x, grid_y, grid_z, stream, *before, arguments)`` (3.9). ``maps``: per descriptor, its
    expanded arguments by its base's address; ``expansions``: all descriptors' together by their bases' addresses
    (one lookup for a call whose bases were all seen together before)."""

    __slots__ = ("launch", "before", "flat", "make", "metas", "maps", "expansions", "launches", "present",
                 "spread_pointers")

    def __init__(self, launch, before: tuple, flat: bool, make=None, metas=()):
        self.launch, self.before, self.flat = launch, before, flat
        self.make, self.metas = make, tuple(metas)
        self.maps: tuple[dict[int, tuple], ...] = tuple({} for _ in self.metas)
        self.expansions: dict[tuple, tuple] = {}
        self.launches = 0
        self.present = self.spread_pointers = tuple

    def prepare(self, slots: Sequence[int] | None) -> None:
        """Pick the call's tensors a launch passes (``present``: each distinct one once, so that each is asked its
        device pointer once) and spread their pointers over the kernel's tensor parameters (``spread_pointers``),
        for a ``Launch`` with these ``slots`` (None: the call's tensors in order, all passed)."""
        if slots is None:
            self.present = self.spread_pointers = tuple
            return
        distinct = sorted(set(slots))
        self.present = _getter(distinct)
        self.spread_pointers = _getter([distinct.index(slot) for slot in slots])

    def expand(self, descriptors: Sequence[Descriptor], bases: Sequence[torch.Tensor], addresses: tuple) -> tuple:
        """The descriptors' arguments as Triton's wrapper expands them (a filled ``CUtensorMap``, the shape, the
        strides) around these bases: each descriptor's kept expansion for its base's address, or a new one (kept
        unless it holds a tensor: a descriptor without TMA metadata passes its base, and a plan must not keep a
        call's tensor). A call whose output is new every call (a TMA store's O) fills only that map."""
        expanded, keep = [], True
        for descriptor, base, address, meta, kept in zip(descriptors, bases, addresses, self.metas, self.maps):
            found = kept.get(address)
            if found is None:
                found = tuple(self.make(descriptor.copy(base), meta))
                if any(isinstance(value, torch.Tensor) for value in found):
                    keep = False
                else:
                    if len(kept) >= MAX_EXPANSIONS:
                        kept.clear()  # all at once: one C call, safe against another thread's lookups
                    kept[address] = found
            expanded.extend(found)
        expanded = tuple(expanded)
        if keep:
            if len(self.expansions) >= MAX_EXPANSIONS:
                self.expansions.clear()
            self.expansions[addresses] = expanded
        return expanded


def _getter(positions: Sequence[int]):
    """``values -> tuple(values[i] for i in positions)`` in one C call (``itemgetter`` returns a lone item bare)."""
    if len(positions) == 1:
        index = positions[0]
        return lambda values: (values[index],)
    return operator.itemgetter(*positions)


def c_launcher(run, function, packed_metadata, num_descriptors: int) -> CLauncher | None:
    """A ``CLauncher`` for ``run`` (a ``CompiledKernel.run``) whose first ``num_descriptors`` kernel arguments are
    host-side descriptors, or None where ``run`` is not a launcher of a structure checked here: Triton 3.6 or 3.9's
    nvidia ``CudaLauncher``, its ``__call__`` with the parameters above, no global or profile scratch (which
    ``run`` allocates per launch), no sanitizer, and the descriptors (if any) exactly the first arguments."""
    try:
        version = _triton_version()
        cls = type(run)
        if cls.__name__ != "CudaLauncher" or version not in _CALL_PARAMETERS:
            return None
        call = cls.__call__
        if tuple(inspect.signature(call).parameters) != _CALL_PARAMETERS[version]:
            return None
        if run.global_scratch_size or run.profile_scratch_size or getattr(run, "gsan_enabled", False):
            return None
        wrapped = run.launch
        code, closure = getattr(wrapped, "__code__", None), getattr(wrapped, "__closure__", None)
        if num_descriptors == 0:
            if code is not None:  # a Python wrapper: the kernel has descriptors after all
                return None
            launcher, make, metas = wrapped, None, ()
        else:
            if code is None or closure is None:
                return None
            cells = dict(zip(code.co_freevars, (cell.cell_contents for cell in closure)))
            if set(cells) != _WRAPPER_CELLS[version]:
                return None
            metas = list(cells["tensordesc_meta"] or [None] * num_descriptors)
            if len(metas) != num_descriptors:
                return None
            launcher = cells["launcher"]
            if version == (3, 6):
                if cells["tensordesc_indices"] != set(range(num_descriptors)):
                    return None
                make = call.__globals__["make_tensordesc_arg"]
            else:
                if cells["relevant_paths"] != {index: {} for index in range(num_descriptors)}:
                    return None
                fill = cells["make_tensordesc_arg"]

                def make(descriptor, meta, fill=fill):
                    return fill(descriptor, meta, None)
        flags = (run.launch_cooperative_grid, run.launch_pdl)
        if version == (3, 6):
            if call.__globals__.get("_BASE_ARGS_FORMAT") != "iiiKKppOOOOOO":
                return None
            before = (function, *flags, None, None, packed_metadata, None, None, None)
            return CLauncher(launcher, before, True, make, metas)
        before = (function, *flags, packed_metadata, None, None, None, None, None, run.arg_annotations,
                  run.kernel_signature)
        return CLauncher(launcher, before, False, make, metas)
    except Exception:  # an attribute missing or shaped otherwise: another structure, keep run
        return None


class Launch:
    """One kernel with its grid, scalar arguments, constexprs and launch options fixed; called with the tensors.

    The kernel's parameters must start with the ``num_tensors`` tensors passed per call, followed by the
    ``scalars`` (passed positionally); ``constexprs`` names the remaining ones (parameters with a default may be
    left out). ``options`` are launch options (``num_warps``, ``num_stages``, ``launch_pdl``, ...). ``descriptors``:
    the first of those tensor parameters are host-side tensor descriptors (``Descriptor``), and the call passes
    their base tensors.
    """

    __slots__ = ("kernel", "grid", "scalars", "constexprs", "options", "num_tensors", "_tail", "_compiled",
                 "_direct_ok", "plain_launches", "direct_launches", "_spread", "slots", "descriptors",
                 "__weakref__")

    def __init__(self, kernel, grid: Sequence[int], scalars: Sequence[Any], constexprs: dict[str, Any],
                 options: dict[str, Any] | None = None, num_tensors: int | None = None,
                 slots: Sequence[int] | None = None, descriptors: Sequence[Descriptor] = ()):
        # slots: the call passes fewer tensors than the kernel takes (absent ones are one placeholder, passed
        # many times): the kernel's tensor parameter i is the call's argument slots[i]. The spreading is one
        # C-level itemgetter, and the direct launch asks each distinct tensor once for its device pointer.
        self.slots = None if slots is None else tuple(slots)
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

    def with_scalars(self, scalars: Sequence[Any], grid: Sequence[int] | None = None,
                     specialized: bool | None = None) -> Launch:
        """This launch with other scalar arguments and, when given, another ``grid`` (same kernel, constexprs,
        options and tensors): a plan of another length. It reuses this one's compiled kernels only when Triton would
        pick them for its arguments: every scalar that differs is specialized as the old one is
        (``_same_specialization``: type, == 1, divisibility by 16; as ``JITFunction.run``'s binder asks, with each
        parameter's ``do_not_specialize``), so its first call may launch directly; otherwise its first call goes
        through ``kernel[grid](...)``. ``specialized``: ``_same_specialization(self, scalars)`` when the caller has
        asked it (a plan's main and redo launches share their kernel and scalars)."""
        # (The grid is no part of what Triton compiles: a compiled kernel serves any grid.)
        launch = Launch(self.kernel, self.grid if grid is None else grid, scalars, self.constexprs, self.options,
                        self.num_tensors, self.slots, self.descriptors)
        if self._compiled and self._direct_ok and (_same_specialization(self, launch.scalars) if specialized is None
                                                   else specialized):
            launch._compiled = dict(self._compiled)
            if self._tail is not None:  # the constexprs after the scalars are this one's
                launch._tail = launch.scalars + self._tail[len(self.scalars):]
        return launch

    def take_compiled(self, other: Launch) -> bool:
        """Take ``other``'s compiled kernels (so this launch's first call may launch directly) when Triton would pick
        them for this launch's arguments: the same kernel, constexprs, options, tensor slots and no descriptors, and
        every scalar that differs specialized alike (``_same_specialization``); the tensors' dtypes and 16-byte
        alignment are the caller's to keep equal (a plan family's key). Returns whether it did."""
        if (self._compiled or not other._compiled or not (self._direct_ok and other._direct_ok)
                or other.kernel is not self.kernel or other.constexprs != self.constexprs
                or other.options != self.options or other.num_tensors != self.num_tensors or other.slots != self.slots
                or self.descriptors or other.descriptors or not _same_specialization(other, self.scalars)):
            return False
        self._compiled = dict(other._compiled)
        if other._tail is not None:  # the constexprs after the scalars are the same as other's
            self._tail = self.scalars + other._tail[len(other.scalars):]
        return True

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
        if self._direct_ok and self._compiled and _hooks_inactive(_Runtime.knobs):
            device = _Runtime.get_device()
            compiled = self._compiled.get(device)
            if compiled is not None:
                c = compiled[3]
                if c is not None and c.launches:
                    # The C launcher has served this Launch: no fallback to prepare (an error is the call's own).
                    self._c_launch(c, tensors, _Runtime.get_stream(device))
                    self.direct_launches += 1
                    return
                if self._direct_launch(device, compiled, tensors):
                    return
        self._plain_launch(tensors)

    def _direct_launch(self, device, compiled: tuple, tensors: tuple) -> bool:
        """A direct launch whose path is not proven yet (the first ones, or through ``run``): True when made; False
        when the compiled launcher rejected it (the plain path from now on)."""
        if self._tail is None:  # not before a second call: a signature seen once never needs it
            self._tail = self._bound_tail()
        run, function, packed_metadata, c = compiled
        spread = self._spread
        try:
            if c is not None:
                self._c_launch(c, tensors, _Runtime.get_stream(device))
                self.direct_launches += 1
                return True
        except Exception:
            # The C launcher rejected the arguments at its first launch (a structure not read right): launch
            # through run from now on. Once it has launched, an error is the call's own.
            if c.launches:
                raise
            self._compiled[device] = (run, function, packed_metadata, None)
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
            # A launcher whose calling convention differs (another Triton version) rejects the arguments: keep the
            # plain path from now on. Once direct launches have worked, an error is the call's own.
            if self.direct_launches:
                raise
            self._direct_ok = False
            return False
        self.direct_launches += 1
        return True

    def _plain_launch(self, tensors: tuple) -> None:
        """``kernel[grid](...)`` (compiles at a first call), keeping the compiled kernel's launcher for the direct
        launches."""
        if self._spread is not None:
            tensors = self._spread(tensors)
        if self.descriptors:
            tensors = (*map(Descriptor.build, self.descriptors, tensors), *tensors[len(self.descriptors):])
        compiled = self.kernel[self.grid](*tensors, *self.scalars, **self.constexprs, **self.options)
        self.plain_launches += 1
        if self._direct_ok and all(hasattr(compiled, name) for name in _LAUNCHER_ATTRIBUTES):
            _Runtime.load()
            run, function, packed_metadata = (getattr(compiled, name) for name in _LAUNCHER_ATTRIBUTES)
            c = c_launcher(run, function, packed_metadata, len(self.descriptors)) if C_LAUNCHER else None
            if c is not None:
                c.prepare(self.slots)
            self._compiled[_Runtime.get_device()] = (run, function, packed_metadata, c)

    def _c_launch(self, c: CLauncher, tensors: tuple, stream) -> None:
        """A direct launch through Triton's C launcher: the descriptors' expansions kept by their bases' addresses
        (expanded at the first call with new ones), the other tensors as device pointers (each distinct tensor of
        the call asked once: ``CLauncher.prepare``)."""
        if self._tail is None:
            self._tail = self._bound_tail()
        pointers = c.spread_pointers(tuple(map(_data_ptr, c.present(tensors))))
        if self.descriptors:
            count = len(self.descriptors)
            addresses = pointers[:count]
            expanded = c.expansions.get(addresses)
            if expanded is None:
                spread = self._spread
                expanded = c.expand(self.descriptors, tensors if spread is None else spread(tensors), addresses)
            if c.flat:
                c.launch(*self.grid, stream, *c.before, *expanded, *pointers[count:], *self._tail)
            else:
                # A list, as Triton 3.9's wrapper hands its C function the expanded arguments.
                c.launch(*self.grid, stream, *c.before, [*expanded, *pointers[count:], *self._tail])
        elif c.flat:
            c.launch(*self.grid, stream, *c.before, *pointers, *self._tail)
        else:
            c.launch(*self.grid, stream, *c.before, (*pointers, *self._tail))
        c.launches += 1


@functools.cache
def _specializer():
    """``(value, is_const, specialize, align) -> (type, key)``: Triton's ``native_specialize_impl``, as the binder
    calls it."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return functools.partial(native_specialize_impl, BaseBackend)


def _same_specialization(launch: Launch, scalars: tuple) -> bool:
    """Whether Triton specializes ``scalars`` as it did ``launch.scalars`` (the parameters after the launch's
    tensors): for each value that differs, ``native_specialize_impl`` (the function ``JITFunction.run``'s binder
    calls; Triton 3.6 to 3.9) gives the same type and key for both, with the parameter's ``do_not_specialize`` and
    ``do_not_specialize_on_alignment``. False where that cannot be asked (another Triton: no sharing)."""
    old = launch.scalars
    if len(old) != len(scalars):
        return False
    try:
        specialized = _specializer()
        parameters = launch.kernel.params[launch.num_tensors:launch.num_tensors + len(old)]
        for parameter, before, after in zip(parameters, old, scalars, strict=True):
            if before == after and type(before) is type(after):
                continue
            if parameter.is_constexpr:
                return False
            specialize, align = not parameter.do_not_specialize, not parameter.do_not_specialize_on_alignment
            if (specialized(before, parameter.is_const, specialize, align)
                    != specialized(after, parameter.is_const, specialize, align)):
                return False
        return True
    except Exception:  # another Triton's internals (or a stub without params): launch through kernel[grid] first
        return False


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
