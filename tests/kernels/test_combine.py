"""``flash_attn_combine`` (FlashAttention 3's public merge of split-KV partial results) against the float64
reference ``combine_ref``: FA3's layouts (its test's strided partials, the varlen layout), split counts past one tile
(the kernel loops over chunks of splits), head dims up to 512, empty (-inf) splits and rows, ``out`` written in
place, the CPU fallback, and the argument checks. The forward's own use of the kernel (split-KV) is tested with the
forward (test_fwd.py, test_kvcache.py)."""

from __future__ import annotations

import re

import pytest
import torch

import swattn
from swattn.kernels import combine as combine_module
from swattn.reference import combine_ref

INF = float("inf")


def fa3_partials(num_splits: int, batch: int, seqlen: int, heads: int, head_dim: int):
    """The partial results as FlashAttention 3's test_flash_attn_combine builds them: strided views (the partial
    rows position-major inside head-major storage, the LSEs with unit stride in the position and every other head),
    and the splits from num_splits // 2 on empty (-inf) for the first batch entries: with one split, whole rows."""
    out_partial = torch.randn(num_splits * 2, batch, heads, seqlen, head_dim).transpose(2, 3)[:num_splits]
    lse_partial = torch.randn(num_splits, batch, heads * 2, seqlen).transpose(-1, -2)[:, :, :, :heads]
    lse_partial[num_splits // 2:, :batch // 3 + 1] = -INF
    return out_partial, lse_partial


def check(out, lse, out_partial, lse_partial):
    expected_out, expected_lse = combine_ref(out_partial, lse_partial)
    assert lse.dtype == torch.float32 and lse.shape == expected_lse.shape
    assert torch.equal(torch.isneginf(lse), torch.isneginf(expected_lse))
    finite = torch.isfinite(expected_lse)
    assert torch.allclose(lse[finite].double(), expected_lse[finite], atol=1e-5, rtol=1e-5)
    # Within one step of the output dtype (the interpreter truncates where a GPU rounds to nearest) and fp32
    # accumulation error (FA3's fp32 check: 1e-5).
    bound = torch.finfo(out.dtype).eps * expected_out.abs() + 1e-5
    assert torch.all((out.double() - expected_out).abs() <= bound)
    assert torch.all(out[~finite] == 0)


@pytest.mark.parametrize("num_splits, head_dim, out_dtype", [
    (1, 64, torch.float32),     # every split of the first batch entry empty: out 0, lse -inf
    (3, 40, torch.bfloat16),    # head_dim not a power of two
    (133, 64, torch.float16),   # FA3's largest count: three chunks of 64 splits
    (17, 512, None),            # FA3's largest head_dim: chunks of 8 splits
])
def test_combine_matches_reference(num_splits, head_dim, out_dtype):
    torch.manual_seed(num_splits)
    out_partial, lse_partial = fa3_partials(num_splits, 2, 3, 2, head_dim)
    out, lse = swattn.flash_attn_combine(out_partial, lse_partial, out_dtype=out_dtype)
    assert out.shape == (2, 3, 2, head_dim) and out.dtype == (out_dtype or torch.float32)
    # FA3's LSE: [B, Sq, H], a transposed view of a contiguous [B, H, Sq].
    assert lse.shape == (2, 3, 2) and lse.transpose(1, 2).is_contiguous()
    check(out, lse, out_partial, lse_partial)


def test_combine_varlen_layout_and_out_in_place():
    torch.manual_seed(0)
    out_partial, lse_partial = torch.randn(5, 7, 3, 32), torch.randn(5, 7, 3)
    lse_partial[:, 2] = -INF  # a token whose splits are all empty
    lse_partial[1:4, 4] = -INF
    storage = torch.full((7, 4, 32), float("nan"), dtype=torch.bfloat16)
    out = storage[:, 1:]  # strided out (unit stride in D): written in place, the rest untouched
    result, lse = swattn.flash_attn_combine(out_partial, lse_partial, out=out)
    assert result is out and lse.shape == (7, 3) and lse.t().is_contiguous()
    assert storage[:, 0].isnan().all()
    check(out, lse, out_partial, lse_partial)


def test_combine_plans_once_per_signature():
    out_partial, lse_partial = torch.randn(2, 1, 2, 2, 16), torch.randn(2, 1, 2, 2)
    combine_module._PLANS.clear()
    misses = combine_module._PLANS.misses
    for _ in range(3):
        swattn.flash_attn_combine(out_partial, lse_partial)
    assert combine_module._PLANS.misses == misses + 1


def test_combine_cpu_fallback(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the float64 reference behind the same op
    torch.manual_seed(1)
    out_partial, lse_partial = fa3_partials(3, 2, 2, 2, 16)
    out, lse = swattn.flash_attn_combine(out_partial, lse_partial, out_dtype=torch.float16)
    check(out, lse, out_partial, lse_partial)


def test_combine_no_splits_and_empty_batch():
    out, lse = swattn.flash_attn_combine(torch.randn(0, 2, 1, 2, 8), torch.randn(0, 2, 1, 2))
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    out, lse = swattn.flash_attn_combine(torch.randn(3, 0, 4, 2, 8), torch.randn(3, 0, 4, 2))
    assert out.shape == (0, 4, 2, 8) and lse.shape == (0, 4, 2)


def test_combine_op_is_registered():
    out_partial, lse_partial = torch.randn(3, 1, 2, 2, 8), torch.randn(3, 1, 2, 2)
    out = torch.empty(1, 2, 2, 8)
    lse = torch.empty(1, 2, 2).transpose(1, 2)
    torch.library.opcheck(torch.ops.swattn.combine.default, (out_partial, lse_partial, out, lse),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("arguments, error, message", [
    (dict(out_partial=torch.randn(2, 3, 4)), ValueError, "out_partial: expected shape"),
    (dict(out_partial=torch.randn(2, 1, 3, 2, 8, dtype=torch.float64)), TypeError, "out_partial: expected dtype"),
    (dict(lse_partial=torch.randn(2, 1, 3, 3)), ValueError, "lse_partial: expected shape (2, 1, 3, 2)"),
    (dict(lse_partial=torch.randn(2, 1, 3, 2, dtype=torch.float16)), TypeError, "lse_partial: expected dtype"),
    (dict(out=torch.empty(1, 3, 2, 4)), ValueError, "out: expected shape (1, 3, 2, 8)"),
    (dict(out=torch.empty(1, 3, 2, 8, dtype=torch.float16), out_dtype=torch.bfloat16), TypeError,
     "out: expected dtype torch.bfloat16"),
    (dict(out=torch.empty(1, 3, 2, 16)[..., ::2]), ValueError, "out: written in place"),
    (dict(out_dtype=torch.int32), TypeError, "out_dtype: expected"),
    (dict(out_partial=torch.randn(2, 1, 3, 2, 1032), lse_partial=torch.randn(2, 1, 3, 2)), ValueError,
     "out_partial: head_dim must lie in [1, 1024]"),
])
def test_combine_bad_arguments_name_the_argument(arguments, error, message):
    call = dict(out_partial=torch.randn(2, 1, 3, 2, 8), lse_partial=torch.randn(2, 1, 3, 2))
    call.update(arguments)
    with pytest.raises(error, match=re.escape(message)):
        swattn.flash_attn_combine(**call)
