"""Comparison helpers shared by the tests, the benchmark's correctness gate and the self-check."""

from __future__ import annotations

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


def tolerance_for(dtype: torch.dtype) -> float:
    """Relative-error bound for outputs computed from inputs of ``dtype`` (fp32 accumulation)."""
    return {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
