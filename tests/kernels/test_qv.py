"""FlashAttention 3's ``qv`` (MLA's second query term: scores ``(q k^T + qv v^T) * softmax_scale``, default scale
``(D + Dv) ** -0.5``; FA3's tests pass it with D 64 and Dv 256 / 512): the reference against FA3's formula, dense,
varlen and KV-cache forwards (paged and contiguous caches, appended and rotated k/v, split-KV, PackGQA, sinks,
windows, softcap, non-finite values) against the float64 reference, the backward's refusal, the argument checks,
the fake implementation and the dispatch that keeps qv calls on the Triton kernels' value head_dim path. Small
shapes: the kernels run through the interpreter."""

from __future__ import annotations

import math

import pytest
import torch

from swattn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, ops
from swattn.interface import split_count
from swattn.kernels import configs, fwd
from swattn.kernels.configs import forced_config
from swattn.reference import (
    append_kv_ref,
    attention_kvcache_ref,
    attention_ref,
    attention_varlen_ref,
    rotate_queries_ref,
)
from swattn.testing import assert_close, tolerance_for

LSE_TOL = 1e-4


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def test_reference_follows_flashattention3s_formula():
    """FA3's test oracle (hopper/test_util.py): scores = q k^T * scale + qv v^T * scale, then softcap, then the
    masks; scale (D + Dv) ** -0.5 by default."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 6, 2, 16, dtype=torch.float64), torch.randn(1, 9, 1, 16, dtype=torch.float64)
    v, qv = torch.randn(1, 9, 1, 48, dtype=torch.float64), torch.randn(1, 6, 2, 48, dtype=torch.float64)
    out, lse = attention_ref(q, k, v, qv=qv, causal=True, softcap=2.5)
    scale = (16 + 48) ** -0.5
    kk, vv = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = (torch.einsum("bqhd,bkhd->bhqk", q * scale, kk) + torch.einsum("bqhd,bkhd->bhqk", qv * scale, vv))
    scores = 2.5 * torch.tanh(scores / 2.5)
    visible = torch.ones(6, 9, dtype=torch.bool).tril(9 - 6)
    scores = scores.masked_fill(~visible, float("-inf"))
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vv)
    assert torch.allclose(out, expected, atol=1e-12) and torch.allclose(lse.double(), scores.logsumexp(-1), atol=1e-6)


@pytest.mark.parametrize("head_dim, head_dim_v, dtype, kwargs", [
    pytest.param(16, 64, torch.float16, dict(causal=True, softcap=3.0, sinks=True), id="D16-Dv64-causal-softcap-fp16"),
    pytest.param(16, 64, torch.float32, dict(window_size=(4, 1), pack_gqa=True, sinks=True, attention_chunk=6),
                 id="D16-Dv64-packed-chunk"),
    pytest.param(32, 32, torch.float32, dict(causal=True, num_splits=2), id="D32-Dv32-equal-dims-2splits"),
    pytest.param(64, 256, torch.float32, dict(causal=True), id="D64-Dv256"),
])
def test_dense_forward_matches_the_reference(head_dim, head_dim_v, dtype, kwargs):
    """Output ``[B, Sq, H, Dv]`` and LSE with the default softmax_scale (D + Dv) ** -0.5."""
    torch.manual_seed(1)
    kwargs = dict(kwargs)
    q = torch.randn(2, 13, 4, head_dim, dtype=dtype)
    k = torch.randn(2, 17, 2, head_dim, dtype=dtype)
    v = torch.randn(2, 17, 2, head_dim_v, dtype=dtype)
    qv = torch.randn(2, 13, 4, head_dim_v, dtype=dtype)
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.randn(4)
    out, lse = flash_attn_func(q, k, v, qv=qv, return_softmax_lse=True, **kwargs)
    assert out.shape == (2, 13, 4, head_dim_v) and out.dtype == dtype
    reference_kwargs = {name: value for name, value in kwargs.items() if name not in ("pack_gqa", "num_splits")}
    expected, expected_lse = attention_ref(q.double(), k.double(), v.double(), qv=qv.double(), **reference_kwargs)
    assert_close("out", out, expected, tolerance_for(dtype))
    assert_close("lse", lse, expected_lse, LSE_TOL)
    given = flash_attn_func(q, k, v, qv=qv, softmax_scale=1 / math.sqrt(head_dim + head_dim_v), **kwargs)
    assert torch.equal(given, out)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter computes with the poison
@pytest.mark.parametrize("scan_flags", [True, False], ids=["redo-scanned", "redo-flagged"])
def test_non_finite_values_reach_only_the_rows_that_see_them(scan_flags, monkeypatch):
    """A non-finite value enters the scores through qv v^T too: the rows whose window holds its key become
    non-finite, the others keep the bits of a clean run (the isolation's redo pass, with qv's product in its loop)."""
    if not scan_flags:
        monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 0)
    torch.manual_seed(2)
    q, k = torch.randn(1, 20, 2, 16), torch.randn(1, 20, 2, 16)
    v, qv = torch.randn(1, 20, 2, 32), torch.randn(1, 20, 2, 32)
    clean, clean_lse = flash_attn_func(q, k, v, qv=qv, window_size=(3, 0), return_softmax_lse=True)
    expected, expected_lse = attention_ref(q.double(), k.double(), v.double(), qv=qv.double(), window_size=(3, 0))
    assert_close("out", clean, expected, tolerance_for(torch.float32))
    assert_close("lse", clean_lse, expected_lse, LSE_TOL)
    v[0, 7, 0, 3] = float("inf")
    out = flash_attn_func(q, k, v, qv=qv, window_size=(3, 0))
    seeing = torch.zeros(20, 2, dtype=torch.bool)
    seeing[7:11, 0] = True  # rows 7 .. 10 of head 0 (KV head 0's) see key 7
    assert not torch.isfinite(out[0][seeing]).all(-1).any()
    assert torch.equal(out[0][~seeing], clean[0][~seeing])


def test_varlen_forward_matches_the_reference():
    torch.manual_seed(3)
    cu_q, cu_k = i32([0, 5, 5, 17]), i32([0, 9, 12, 30])
    q, k, v = torch.randn(17, 4, 16), torch.randn(30, 2, 16), torch.randn(30, 2, 64)
    qv = torch.randn(17, 4, 64)
    out, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 18, causal=True, window_size=(6, -1), qv=qv,
                                      softcap=4.0, return_softmax_lse=True)
    assert out.shape == (17, 4, 64)
    expected, expected_lse = attention_varlen_ref(q.double(), k.double(), v.double(), cu_q, cu_k, qv=qv.double(),
                                                  window_size=(6, 0), softcap=4.0)
    assert_close("out", out, expected, tolerance_for(torch.float32))
    assert_close("lse", lse, expected_lse, LSE_TOL)


@pytest.mark.parametrize("head_dim, head_dim_v, paged, num_splits, pack_gqa, window, rotary", [
    pytest.param(16, 64, True, 3, True, (-1, 0), False, id="D16-Dv64-paged-append-3splits-packed"),
    pytest.param(16, 64, True, 1, False, (6, 0), True, id="D16-Dv64-paged-append-rotary-window"),
    pytest.param(32, 64, False, 2, True, (5, 0), False, id="D32-Dv64-contiguous-append-window-2splits"),
])
def test_kvcache_append_and_attend_match_the_reference(head_dim, head_dim_v, paged, num_splits, pack_gqa, window,
                                                       rotary):
    """New k / v appended (rotated with rotary: q is, qv is not), then attention over the cache with qv, sinks
    and split-KV merged."""
    torch.manual_seed(4)
    batch, heads, kv_heads, dtype = 3, 4, 2, torch.float16
    if paged:
        page_size, pages = 4, 24
        k_cache = torch.randn(pages, page_size, kv_heads, head_dim, dtype=dtype)
        v_cache = torch.randn(pages, page_size, kv_heads, head_dim_v, dtype=dtype)
        page_table = torch.randperm(pages, dtype=torch.int32)[:batch * 6].view(batch, 6)
    else:
        k_cache = torch.randn(batch, 24, kv_heads, head_dim, dtype=dtype)
        v_cache = torch.randn(batch, 24, kv_heads, head_dim_v, dtype=dtype)
        page_table = None
    cache_seqlens = i32([3, 10, 17])
    q = torch.randn(batch, 2, heads, head_dim, dtype=dtype)
    qv = torch.randn(batch, 2, heads, head_dim_v, dtype=dtype)
    k_new = torch.randn(batch, 2, kv_heads, head_dim, dtype=dtype)
    v_new = torch.randn(batch, 2, kv_heads, head_dim_v, dtype=dtype)
    sinks = torch.randn(heads)
    rotary_kwargs = {}
    if rotary:
        angles = torch.rand(32, head_dim // 2) * 6
        rotary_kwargs = dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype))
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, qv=qv, cache_seqlens=cache_seqlens,
                                       page_table=page_table, window_size=window, num_splits=num_splits,
                                       pack_gqa=pack_gqa, sinks=sinks, return_softmax_lse=True, **rotary_kwargs)
    assert out.shape == (batch, 2, heads, head_dim_v)
    lengths = append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, page_table=page_table,
                            **rotary_kwargs)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    q_expected = q
    if rotary:
        q_expected = rotate_queries_ref(q, rotary_kwargs["rotary_cos"], rotary_kwargs["rotary_sin"], cache_seqlens,
                                        True, True)
    expected, expected_lse = attention_kvcache_ref(q_expected.double(), expected_k.double(), expected_v.double(),
                                                   lengths, page_table=page_table, window_size=window,
                                                   sinks=sinks.double(), qv=qv.double())
    assert_close("out", out, expected, tolerance_for(dtype))
    assert_close("lse", lse, expected_lse, LSE_TOL)


def test_kvcache_varlen_decode_with_cache_batch_idx_and_leftpad_matches_the_reference():
    """Varlen queries (qv laid out like them), cache rows through cache_batch_idx, a left pad, one new token per
    query: the call that the fused append would take without qv takes the append launch."""
    torch.manual_seed(5)
    cu_q = i32([0, 1, 3, 4])
    k_cache, v_cache = torch.randn(5, 16, 1, 16), torch.randn(5, 16, 1, 64)
    q, qv = torch.randn(4, 4, 16), torch.randn(4, 4, 64)
    k_new, v_new = torch.randn(4, 1, 16), torch.randn(4, 1, 64)
    cache_batch_idx, cache_seqlens, leftpad = i32([4, 0, 2]), i32([7, 2, 12]), i32([1, 0, 3])
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, qv=qv, cache_seqlens=cache_seqlens,
                                  cache_batch_idx=cache_batch_idx, cache_leftpad=leftpad, cu_seqlens_q=cu_q,
                                  max_seqlen_q=2, causal=True)
    lengths = append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, cache_batch_idx=cache_batch_idx,
                            cu_seqlens_q=cu_q)
    expected, _ = attention_kvcache_ref(q.double(), expected_k.double(), expected_v.double(), lengths,
                                        cache_batch_idx=cache_batch_idx, cu_seqlens_q=cu_q, cache_leftpad=leftpad,
                                        causal=True, qv=qv.double())
    assert torch.equal(v_cache, expected_v)
    assert_close("out", out, expected, tolerance_for(torch.float32))


def test_fused_append_is_kept_off_qv_calls(monkeypatch):
    """One new token per query would take the fused append (forced on here); qv travels in its kernel slot, so a
    qv call takes the append launch."""
    monkeypatch.setattr(ops, "FUSED_APPEND", True)
    q, qv = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    k_cache, v_cache = torch.randn(2, 8, 1, 16), torch.randn(2, 8, 1, 16)
    k_new, v_new = torch.randn(2, 1, 1, 16), torch.randn(2, 1, 1, 16)
    args = (q, k_cache, v_cache, k_new, v_new, i32([3, 5]), None, None, None, 1, None, 0.25, -1, 0, 0.0, True, 1)
    assert ops._KVCachePlan(*args).fused
    assert not ops._KVCachePlan(*args, qv=qv).fused
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, qv=qv, cache_seqlens=i32([3, 5]), causal=True)
    lengths = append_kv_ref(expected_k, expected_v, k_new, v_new, i32([3, 5]))
    expected, _ = attention_kvcache_ref(q.double(), expected_k.double(), expected_v.double(), lengths, causal=True,
                                        qv=qv.double())
    assert_close("out", out, expected, tolerance_for(torch.float32))


def test_repeated_calls_and_out_give_the_same_bits():
    """Three calls of one signature (run, recorded, replayed through the planned op) and ``out=``, dense and KV
    cache: qv reaches every path with the same bits."""
    torch.manual_seed(6)
    q, k, v, qv = torch.randn(1, 6, 2, 16), torch.randn(1, 9, 1, 16), torch.randn(1, 9, 1, 32), torch.randn(1, 6, 2, 32)
    first = flash_attn_func(q, k, v, qv=qv, causal=True)
    for _ in range(2):
        assert torch.equal(flash_attn_func(q, k, v, qv=qv, causal=True), first)
    for _ in range(3):
        out = torch.empty(1, 6, 2, 32)
        assert flash_attn_func(q, k, v, qv=qv, causal=True, out=out) is out and torch.equal(out, first)
    k_cache, v_cache, seqlens = torch.randn(2, 8, 1, 16), torch.randn(2, 8, 1, 32), i32([5, 8])
    q1, qv1 = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 32)
    decode = flash_attn_with_kvcache(q1, k_cache, v_cache, qv=qv1, cache_seqlens=seqlens)
    for _ in range(3):
        out = torch.empty(2, 1, 2, 32)
        assert flash_attn_with_kvcache(q1, k_cache, v_cache, qv=qv1, cache_seqlens=seqlens, out=out) is out
        assert torch.equal(out, decode)
        assert torch.equal(flash_attn_with_kvcache(q1, k_cache, v_cache, qv=qv1, cache_seqlens=seqlens), decode)
    expected, _ = attention_kvcache_ref(q1.double(), k_cache.double(), v_cache.double(), seqlens, qv=qv1.double())
    assert_close("decode", decode, expected, tolerance_for(torch.float32))


def test_backward_through_qv_is_refused_by_name():
    """As FlashAttention 3 (whose backward has no qv): inputs that require grad are accepted by the forward; the
    backward raises, also when only qv requires grad."""
    q, k, v = torch.randn(1, 4, 2, 16, requires_grad=True), torch.randn(1, 5, 1, 16), torch.randn(1, 5, 1, 32)
    qv = torch.randn(1, 4, 2, 32)
    out = flash_attn_func(q, k, v, qv=qv, causal=True)
    with pytest.raises(NotImplementedError, match=r"^qv: a backward through attention with qv"):
        out.sum().backward()
    out = flash_attn_func(q.detach(), k, v, qv=qv.requires_grad_(), causal=True)
    assert out.requires_grad
    with pytest.raises(NotImplementedError, match=r"^qv: a backward through attention with qv"):
        out.sum().backward()


@pytest.mark.parametrize("make_qv, error, match", [
    pytest.param(lambda q: torch.randn(2, 5, 4, 24), ValueError,
                 r"^qv: expected shape \(2, 5, 4, 32\) \(B, Sq, H, Dv\) \(q's, with v's head_dim 32 last\), got "
                 r"\(2, 5, 4, 24\)", id="head-dim"),
    pytest.param(lambda q: torch.randn(2, 5, 2, 32), ValueError, r"^qv: expected shape", id="heads"),
    pytest.param(lambda q: torch.randn(2, 5, 4, 32, dtype=torch.float16), TypeError,
                 r"^qv: expected dtype torch.float32 to match q, got torch.float16", id="dtype"),
    pytest.param(lambda q: torch.randn(2, 5, 4, 32, device="meta"), ValueError, r"^qv: expected device cpu",
                 id="device"),
    pytest.param(lambda q: torch.randn(2, 5, 4, 64)[..., ::2], ValueError,
                 r"^qv: the head dimension must be contiguous \(stride 1\)", id="strided"),
    pytest.param(lambda q: [[0.0]], TypeError, r"^qv: expected a torch.Tensor", id="list"),
])
def test_bad_qv_is_refused_by_name(make_qv, error, match):
    q, k, v = torch.randn(2, 5, 4, 16), torch.randn(2, 7, 2, 16), torch.randn(2, 7, 2, 32)
    with pytest.raises(error, match=match):
        flash_attn_func(q, k, v, qv=make_qv(q))


def test_bad_qv_is_refused_by_name_on_varlen_and_kvcache():
    q, k, v = torch.randn(6, 2, 16), torch.randn(6, 1, 16), torch.randn(6, 1, 32)
    cu = i32([0, 2, 6])
    with pytest.raises(ValueError, match=r"^qv: expected shape \(6, 2, 32\) \(total_q, H, Dv\)"):
        flash_attn_varlen_func(q, k, v, cu, cu, 4, 4, qv=torch.randn(6, 2, 16))
    k_cache, v_cache = torch.randn(2, 8, 1, 16), torch.randn(2, 8, 1, 32)
    with pytest.raises(ValueError, match=r"^qv: expected shape \(2, 1, 2, 32\) \(B, Sq, H, Dv\)"):
        flash_attn_with_kvcache(torch.randn(2, 1, 2, 16), k_cache, v_cache, qv=torch.randn(2, 1, 2, 16),
                                cache_seqlens=3)


def test_fp8_with_qv_is_refused_by_name():
    q = torch.randn(1, 2, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 4, 1, 64).to(torch.float8_e4m3fn)
    qv = torch.randn(1, 2, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match=r"^qv: not supported with float8_e4m3fn inputs"):
        flash_attn_func(q, k, k, qv=qv)
    with pytest.raises(NotImplementedError, match=r"^qv: not supported with float8_e4m3fn inputs"):
        flash_attn_with_kvcache(q, k, k, qv=qv, cache_seqlens=2)


def test_fake_implementation_and_opcheck_take_qv():
    """Under fake tensors (what torch.compile traces) the output has v's head_dim; the op's schema, autograd
    registration and fake implementation pass opcheck with qv."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    q, k, v, qv = torch.randn(2, 5, 4, 16), torch.randn(2, 7, 2, 16), torch.randn(2, 7, 2, 64), torch.randn(2, 5, 4, 64)
    k_cache, v_cache = torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 64)
    fake = [mode.from_tensor(t) for t in (q, k, v, qv, k_cache, v_cache)]
    with mode:
        out = flash_attn_func(*fake[:3], qv=fake[3], causal=True)
        decode = flash_attn_with_kvcache(fake[0], fake[4], fake[5], qv=fake[3],
                                         cache_seqlens=mode.from_tensor(i32([3, 8])), check_inputs=False)
    assert out.shape == (2, 5, 4, 64) and decode.shape == (2, 5, 4, 64)
    args = (q[:1, :3, :2], k[:1, :5, :1], v[:1, :5, :1], None, None, None, None, 3, 5, 0.125, -1, 0, 0.0, True, 1,
            None, 0, None, None, None, True, qv[:1, :3, :2])
    torch.library.opcheck(torch.ops.swattn.fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_qv_calls_take_the_value_head_dim_path_on_triton(monkeypatch):
    """The Gluon kernel, the head block, KV pairs and the L2 preload have no qv: the forward plan keeps qv calls on
    the Triton kernels' value head_dim path (HEAD_DIM_V set even when Dv = D), and calls without qv compile as
    before (no QV constexpr)."""
    monkeypatch.setattr(fwd, "_use_gluon", lambda *args, **kwargs: True)  # as if it served every call it supports
    q, k = torch.randn(1, 8, 2, 32), torch.randn(1, 8, 1, 32)
    plain = fwd.forward_plan(q, k, k, softmax_scale=0.2, left=-1, right=0)
    with_qv = fwd.forward_plan(q, k, k, softmax_scale=0.2, left=-1, right=0, qv=torch.randn(1, 8, 2, 32))
    assert plain.use_gluon and not with_qv.use_gluon
    assert with_qv.main.constexprs["QV"] and with_qv.main.constexprs["HEAD_DIM_V"] == 32
    assert "QV" not in plain.main.constexprs and "HEAD_DIM_V" not in plain.main.constexprs


def test_mla_decode_takes_the_packed_qv_tile_and_its_split_count(monkeypatch):
    """MLA's absorbed decode (qv with Dv 512 over D 64, 128 query heads packed on one KV head, 16-bit) takes
    ``configs.QV_PACKED_TILE`` (64-row warpgroup tiles, one program per SM) and the automatic split count fills one
    program per SM: B=16 4 splits (2 tiles x 16 x 4 = 128 programs), B=64 one. Shorter tiles, fp32, calls without
    qv and V rows of at most 256 keep their choices."""
    monkeypatch.setattr(configs, "interpreter_enabled", lambda: False)  # the GPU's choices
    tile = configs.QV_PACKED_TILE
    assert tile.block_m == 64 and tile.num_warps == 8 and tile.single_loop
    mla = dict(head_dim_padded=64, rows_per_tile=128, pack_gqa=True, window_span=None, element_size=2,
               keys_per_split=2048, programs_per_sm=128 / 132, paged=True, fp8_kv=False, value_dim_padded=512)
    assert configs.forward_config(**mla, qv=True) == tile
    assert configs.forward_config(**dict(mla, rows_per_tile=64), qv=True) == tile
    assert configs.forward_config(**dict(mla, window_span=128), qv=True) == tile
    for other in (dict(mla, rows_per_tile=32), dict(mla, element_size=4), dict(mla, value_dim_padded=256),
                  dict(mla, pack_gqa=False)):
        assert configs.forward_config(**other, qv=True) != tile
    assert configs.forward_config(**mla) != tile  # Dv 512 without qv
    assert split_count(16 * 2, 8192, 132, 128, paged=True, qv_tile=True) == 4
    assert split_count(64 * 2, 8192, 132, 128, paged=True, qv_tile=True) == 1
    assert split_count(16 * 2, 8192, 132, 128, paged=True) == 12  # the 3-per-SM tiles' count, without the tile


@pytest.mark.parametrize("dtype, head_dim_v, num_splits, window", [
    pytest.param(torch.float16, 64, 3, (-1, 0), id="fp16-Dv64-3splits"),
    pytest.param(torch.float32, 64, 1, (-1, 0), id="fp32-Dv64-1split"),
    pytest.param(torch.float16, 32, 2, (9, 0), id="fp16-Dv32-window-2splits"),
])
def test_packed_qv_tile_decode_matches_the_reference(dtype, head_dim_v, num_splits, window):
    """The packed qv tile (``configs.QV_PACKED_TILE``: 64 rows of a KV head's query heads, 32-key blocks, one
    masked loop) over a paged cache of pages in random order, split-KV merged: 64 and 128 query heads on one KV
    head (one and two tiles per sequence), ragged cache lengths, against the float64 reference."""
    torch.manual_seed(6)
    batch, page_size, pages_per_seq, head_dim = 3, 16, 6, 16
    for heads in (64, 128):
        k_cache = torch.randn(batch * pages_per_seq, page_size, 1, head_dim, dtype=dtype)
        v_cache = torch.randn(batch * pages_per_seq, page_size, 1, head_dim_v, dtype=dtype)
        page_table = torch.randperm(batch * pages_per_seq, dtype=torch.int32).view(batch, pages_per_seq)
        cache_seqlens = i32([1, 45, 96])
        q = torch.randn(batch, 1, heads, head_dim, dtype=dtype)
        qv = torch.randn(batch, 1, heads, head_dim_v, dtype=dtype)
        with forced_config(configs.QV_PACKED_TILE):
            out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=cache_seqlens,
                                               page_table=page_table, window_size=window, num_splits=num_splits,
                                               return_softmax_lse=True)
        expected, expected_lse = attention_kvcache_ref(q.double(), k_cache.double(), v_cache.double(), cache_seqlens,
                                                       page_table=page_table, qv=qv.double(), window_size=window)
        assert_close("out", out, expected, tolerance_for(dtype))
        assert_close("lse", lse, expected_lse, LSE_TOL)
