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


def forward_config(head_dim_padded: int, rows_per_tile: int, pack_gqa: bool, windowed: bool) -> FwdConfig:
    """Pick block shapes from shapes only (never from GPU values, so CUDA graphs and torch.compile are safe).

    ``rows_per_tile``: with PackGQA, query positions * queries per KV head of one sequence (decode: G * Sq).
    """
    if _forced is not None:
        return _forced
    if interpreter_enabled():
        return FwdConfig(16, 16, 4, 1)
    if pack_gqa:
        # Decode / extend: one tile holds every query head of a KV head; 128 keys per block so a 128-key window is
        # one block.
        block_m = min(64, max(16, triton.next_power_of_2(rows_per_tile)))
        return FwdConfig(block_m, 128 if head_dim_padded <= 128 else 64, 4, 2)
    if head_dim_padded <= 64:
        return FwdConfig(128, 64 if windowed else 128, 4, 3)
    if head_dim_padded <= 128:
        return FwdConfig(128, 64 if windowed else 128, 8, 3)
    return FwdConfig(64, 64, 8, 2)
