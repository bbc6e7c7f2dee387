"""Version and interpreter workarounds, each in one place."""

from __future__ import annotations

import functools
import os
import threading

import torch


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), on the host. ``triton.next_power_of_2`` and
    ``triton.cdiv`` are constexpr functions since Triton 3.6: about 2.3 us per host call through their wrapper,
    which added up to a fifth of an eager decode call's own Python time (CPU, launches stubbed)."""
    return 1 << max(0, n - 1).bit_length()


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, on the host (see ``next_power_of_2``)."""
    return -(-a // b)


@functools.cache
def _device_properties(device_index: int):
    return torch.cuda.get_device_properties(device_index)


def device_properties(device: torch.device):
    """The CUDA device's properties (compute capability, SM count), queried once per device: launches read them on
    every call."""
    return _device_properties(device.index if device.index is not None else torch.cuda.current_device())


def compute_capability_major(device: torch.device) -> int:
    return device_properties(device).major


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def uses_triton(t: torch.Tensor) -> bool:
    """CUDA tensors always run the Triton kernels; CPU tensors only under the interpreter (else the reference)."""
    return t.is_cuda or (t.device.type == "cpu" and interpreter_enabled())


def needs_upcast(dtype: torch.dtype) -> bool:
    """Triton 3.6-3.9's interpreter returns garbage from ``tl.dot`` on bfloat16 operands, so kernels upcast.

    TODO: drop once the interpreter's bf16 dot is fixed upstream (seen with triton 3.6 and 3.9).
    """
    return dtype == torch.bfloat16 and interpreter_enabled()


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether tensors ``[..., rows, D]`` (last dim contiguous) can be read through Triton tensor descriptors:
    Hopper or newer (or the interpreter), 16-byte aligned base, row strides and row length (TMA's rules)."""
    for t in tensors:
        if t.is_cuda:
            if compute_capability_major(t.device) < 9:
                return False
        elif not interpreter_enabled():
            return False
        size = t.element_size()
        if (t.stride(-1) != 1 or t.data_ptr() % 16 or (t.shape[-1] * size) % 16
                or any((stride * size) % 16 for stride in t.stride()[:-1])):
            return False
    return True


# Triton's scratch for tensor descriptors built on the device (a launch's programs write theirs there, then read
# them): a caller whose launches never overlap the previous grid's (stream order without programmatic dependent
# launch, or a PDL kernel that waits for the previous grid before its first write, as swattn's do) sets ``stream``
# to its ``_launch.stream_key`` around them, and they share one buffer kept between calls (the backward's dQ and
# dK/dV launches, the forward's main and redo launches: an allocation less per launch); otherwise (None) each
# launch gets a new one, as Triton's default does.
TRITON_SCRATCH = threading.local()


def _scratch_allocator(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"
    kept = getattr(TRITON_SCRATCH, "stream", None)
    if kept is not None:
        from swattn.kernels._launch import kept_buffer

        return kept_buffer("triton_scratch", torch.device(device), size, torch.int8, kept)
    return torch.empty(size, device=device, dtype=torch.int8)


_allocation = None  # triton.runtime._allocation, imported at the first call (per-call imports cost host time)


def ensure_triton_allocator() -> None:
    """Kernels that build tensor descriptors on the device need Triton's scratch allocator; set one (torch's
    caching allocator, CUDA-graph safe) unless the caller already has (asked on every call: Triton keeps it in a
    context variable)."""
    global _allocation
    if _allocation is None:
        from triton.runtime import _allocation
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        import triton

        triton.set_allocator(_scratch_allocator)


# The data checks' default for GPU tensors (``check_inputs=None``): SWATTN_CHECK_INPUTS=1 at import turns them on
# (read once: a replayed call's key holds it, and no call pays an environment read).
CHECK_INPUTS = os.environ.get("SWATTN_CHECK_INPUTS", "0") not in ("", "0")

# Programmatic dependent launch (see pdl_enabled); SWATTN_PDL=0 at import turns it off.
PDL = os.environ.get("SWATTN_PDL", "1") != "0"


def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch (on by default on Hopper or newer; ``SWATTN_PDL=0`` at import, or ``PDL =
    False`` here, turns it off; read when a call signature is first planned, not per call): kernels are
    launched with ``launch_pdl`` and wait on the previous grid (``gdc_wait``) before their first read or write, so
    their launch overlaps the previous kernel's tail. H200, graph-replayed gpt-oss decode: W(127, 0) 4.13 -> 3.94
    us per call, with the k/v append 6.22 -> 5.27 us (docs/notes/performance-log.md). Never under the interpreter
    (it has no grid dependencies)."""
    if device.type != "cuda" or not PDL or interpreter_enabled():
        return False
    return compute_capability_major(device) >= 9


def pdl_launch_options(use_pdl: bool) -> dict[str, bool]:
    """Launch keyword for a kernel that calls ``wait_for_previous_grid(USE_PDL)``: none unless PDL is on."""
    return {"launch_pdl": True} if use_pdl else {}
