"""Block shapes and launch settings for the forward kernel family, as data.

Under the interpreter (CPU tests) one small pinned config is used, and tests may force others with
``forced_config``. GPU defaults were picked from measurements recorded in docs/performance.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import triton

from swattn._compat import interpreter_enabled


@dataclass(frozen=True)
class FwdConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    single_loop: bool = False  # one masked KV loop instead of masked head / unmasked interior / masked tail


_forced: FwdConfig | None = None


@contextlib.contextmanager
def forced_config(config: FwdConfig) -> Iterator[None]:
    """Use ``config`` for every forward launch inside the block (tests, benchmark sweeps)."""
    global _forced
    previous, _forced = _forced, config
    try:
        yield
    finally:
        _forced = previous


def forward_config(head_dim_padded: int, rows_per_tile: int, pack_gqa: bool, window_span: int | None) -> FwdConfig:
    """Pick block shapes from shapes only (never from GPU values, so CUDA graphs and torch.compile are safe).

    ``rows_per_tile``: rows of one sequence's tiles (PackGQA: query positions * queries per KV head);
    ``window_span``: ``left + right + 1`` when both sides are bounded, else None. Choices come from the H100
    sweeps recorded in docs/performance.md (scripts/gpu_sweep*.py).
    """
    if _forced is not None:
        return _forced
    if interpreter_enabled():
        return FwdConfig(16, 16, 4, 1)
    small_window = window_span is not None and window_span <= 512
    if pack_gqa and rows_per_tile <= 64:
        # Decode / extend: every query head of a KV head in one tile; 128-key blocks so a 128-key window is one
        # block. Measured: W127 decode 4.35 us with (16, 128, 4, 1); full 128K decode best with (16, 64, 4, 3).
        block_m = max(16, triton.next_power_of_2(rows_per_tile))
        if small_window:
            return FwdConfig(block_m, 128 if head_dim_padded <= 128 else 64, 4, 1, single_loop=True)
        return FwdConfig(block_m, 64, 4, 3)
    if small_window:
        # Short KV loops: one masked loop; W127 D64 16K: 252 us (64, 32, 4, 2, single) vs 262 us three loops.
        if head_dim_padded <= 64:
            return FwdConfig(64, 32, 4, 2, single_loop=True)
        return FwdConfig(64, 64, 4, 2, single_loop=True)
    if head_dim_padded <= 64:
        return FwdConfig(128, 64, 4, 3)
    if head_dim_padded <= 128:
        # causal 16K D128: 4573 us; W4095: 2135 us (both best of the sweep).
        return FwdConfig(128, 128, 8, 3)
    return FwdConfig(64, 64, 8, 2)
