"""``python -m swattn.selfcheck`` under the interpreter: a clean run passes, a broken kernel is caught with a
reproducer, and a (seed, case) pair always draws the same case."""

from __future__ import annotations

import torch

from swattn import selfcheck
from swattn.kernels import _launch, fwd


def test_quick_run_covers_every_entry_point(capsys):
    assert selfcheck.main(["--configs", "16", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for name in selfcheck.ENTRY_POINTS:
        assert f"| {name} | 2 |" in out and "| 0 | not checked" not in out, out
    assert "16 cases, 0 mismatches, seed 3" in out and "NOT CHECKED" not in out


def test_a_path_drawn_only_empty_is_reported_not_checked(capsys, monkeypatch):
    """Cases whose rows all see nothing (no cached keys) test only the empty-row convention: counted apart, and
    the path is reported as not checked rather than with an error of 0."""
    real = selfcheck.draw_case

    def empty_kvcache(seed, index, quick):
        case = real(seed, index, quick)
        if case.entry_point == "kvcache":
            case.lengths_k = [0] * case.batch
        return case

    monkeypatch.setattr(selfcheck, "draw_case", empty_kvcache)
    assert selfcheck.main(["--configs", "2", "--seed", "3", "--entry-points", "dense,kvcache"]) == 0
    out = capsys.readouterr().out
    assert "| kvcache | 1 | 0 | 0 | not checked | not checked |" in out, out
    assert "| dense | 1 | 1 | 0 |" in out, out
    assert "NOT CHECKED: kvcache:" in out


def test_broken_kernel_is_reported_with_a_reproducer(capsys, monkeypatch):
    real = fwd.attention_forward

    def off_by_a_bit(*args, **kwargs):
        out, lse, counts = real(*args, **kwargs)
        return out + 0.05 * torch.randn_like(out), lse, counts

    monkeypatch.setattr(fwd, "attention_forward", off_by_a_bit)
    monkeypatch.setattr("swattn.ops.attention_forward", off_by_a_bit, raising=False)
    _launch.clear_plans()  # no planned op (swattn._replay) may skip the patched function
    assert selfcheck.main(["--configs", "8", "--seed", "5", "--entry-points", "dense,kvcache"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH python -m swattn.selfcheck --seed 5 --case " in out


def test_cases_are_reproducible_and_cover_the_feature_space():
    assert selfcheck.draw_case(7, 11, quick=False) == selfcheck.draw_case(7, 11, quick=False)
    cases = [selfcheck.draw_case(0, i, quick=False) for i in range(800)]
    assert {c.entry_point for c in cases} == set(selfcheck.ENTRY_POINTS)
    assert {1, 256} <= {c.page_size for c in cases}
    assert {1, 16} <= {c.heads // c.kv_heads for c in cases}
    assert {64, 128, 256} <= {c.head_dim for c in cases}
    assert {0, 64, 128, 256, 512} <= {c.head_dim_v for c in cases}
    assert all(c.head_dim_v <= 256 for c in cases if c.entry_point == "backward" or c.head_dim > 64)
    assert any(c.qv for c in cases) and any(c.out for c in cases)
    assert not any(c.qv or c.out for c in cases if c.entry_point == "backward")
    assert {"float16", "bfloat16"} == {c.dtype for c in cases}
    assert any(c.sinks and c.softcap for c in cases) and any(c.num_splits > 1 for c in cases)
