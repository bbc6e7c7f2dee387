"""Host-side helpers of swattn._compat that stand in for Triton's (slower) constexpr functions."""

from __future__ import annotations

import triton

from swattn._compat import ceil_div, next_power_of_2


def test_next_power_of_2_matches_triton():
    for n in range(1, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    assert next_power_of_2(2**31 - 1) == 2**31


def test_ceil_div_matches_triton():
    for a in range(0, 600):
        for b in (1, 2, 3, 16, 64, 127, 128):
            assert ceil_div(a, b) == triton.cdiv(a, b), (a, b)
