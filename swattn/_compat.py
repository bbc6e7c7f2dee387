"""Version and interpreter workarounds, each in one place."""

from __future__ import annotations

import os

import torch


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
