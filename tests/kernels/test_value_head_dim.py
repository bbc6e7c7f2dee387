"""A value head_dim Dv different from the key head_dim D (FlashAttention 3's ``headdim_v``; its tests draw Dv in
{256, 512} for D <= 64 and Dv = 128 for D in (128, 192], DeepSeek's prefill is D 192, Dv 128): dense, varlen and
KV-cache forwards (paged and contiguous caches, appended k/v, split-KV, sinks, windows, softcap, PackGQA) and the
backward against the float64 reference, the argument checks, the fake implementations' shapes, and the dispatch
that keeps such calls off the Gluon kernel. Small shapes: the kernels run through the interpreter."""

from __future__ import annotations

import pytest
import torch

import swattn
from swattn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, get_scheduler_metadata
from swattn.kernels import configs, fwd, gluon_fwd
from swattn.kernels.bwd import attention_backward
from swattn.kernels.configs import BwdConfig, FwdConfig, forced_config
from swattn.kernels.fwd import attention_forward
from swattn.reference import (
    append_kv_ref,
    attention_backward_ref,
    attention_kvcache_ref,
    attention_ref,
    attention_varlen_ref,
)
from swattn.testing import assert_close, tolerance_for

LSE_TOL = 1e-4


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _grads(outputs, inputs, weights):
    loss = sum((o.double() * w.double()).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("head_dim, head_dim_v, dtype, kwargs", [
    pytest.param(64, 128, torch.float32, dict(causal=True, softcap=3.0, sinks=True), id="D64-Dv128-causal-softcap"),
    pytest.param(128, 64, torch.float16, dict(window_size=(5, 2)), id="D128-Dv64-window-fp16"),
    pytest.param(32, 96, torch.float32, dict(window_size=(4, 0), pack_gqa=True, sinks=True), id="D32-Dv96-packed"),
])
def test_dense_forward_and_backward_match_the_reference(head_dim, head_dim_v, dtype, kwargs):
    """Output ``[B, Sq, H, Dv]`` and LSE, then dq (D), dk (D), dv (Dv) and dsinks through the LSE too."""
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    q = torch.randn(2, 19, 4, head_dim, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 23, 2, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 23, 2, head_dim_v, dtype=dtype, requires_grad=True)
    inputs = [q, k, v]
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.randn(4, dtype=torch.float32, requires_grad=True)
        inputs.append(kwargs["sinks"])
    out, lse = flash_attn_func(q, k, v, return_softmax_lse=True, **kwargs)
    assert out.shape == (2, 19, 4, head_dim_v) and out.dtype == dtype
    reference_kwargs = {name: value for name, value in kwargs.items() if name != "pack_gqa"}
    double = [t.detach().double().requires_grad_() for t in inputs]
    if "sinks" in reference_kwargs:
        reference_kwargs["sinks"] = double[3]
    expected, expected_lse = attention_ref(*double[:3], **reference_kwargs)
    assert_close("out", out, expected, tolerance_for(dtype))
    assert_close("lse", lse, expected_lse, LSE_TOL)
    weights = (torch.randn_like(out), torch.randn_like(lse))
    grads = _grads((out, lse), inputs, weights)
    expected_grads = _grads((expected, expected_lse), double, weights)
    for name, grad, expected_grad in zip(("dq", "dk", "dv", "dsinks"), grads, expected_grads):
        assert grad.shape == expected_grad.shape, name
        assert_close(name, grad, expected_grad, 4 * tolerance_for(dtype))


def test_varlen_forward_and_backward_match_the_reference():
    torch.manual_seed(1)
    cu_q, cu_k = i32([0, 5, 5, 17]), i32([0, 9, 12, 30])
    q = torch.randn(17, 4, 64, requires_grad=True)
    k = torch.randn(30, 2, 64, requires_grad=True)
    v = torch.randn(30, 2, 128, requires_grad=True)
    out, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 18, causal=True, window_size=(6, -1),
                                      return_softmax_lse=True)
    assert out.shape == (17, 4, 128)
    double = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected, expected_lse = attention_varlen_ref(*double, cu_q, cu_k, window_size=(6, 0))
    assert_close("out", out, expected, tolerance_for(torch.float32))
    assert_close("lse", lse, expected_lse, LSE_TOL)
    weights = (torch.randn_like(out),)
    for name, grad, expected_grad in zip(("dq", "dk", "dv"), _grads((out,), (q, k, v), weights),
                                         _grads((expected,), double, weights)):
        assert_close(name, grad, expected_grad, 4 * tolerance_for(torch.float32))


@pytest.mark.parametrize("head_dim, head_dim_v, paged, num_splits, pack_gqa, window", [
    pytest.param(64, 128, True, 3, True, (-1, 0), id="D64-Dv128-paged-append-3splits-packed"),
    pytest.param(128, 64, True, 1, False, (6, 0), id="D128-Dv64-paged-append-window"),
    pytest.param(32, 96, False, 2, True, (5, 0), id="D32-Dv96-contiguous-append-window-2splits"),
])
def test_kvcache_append_and_attend_match_the_reference(head_dim, head_dim_v, paged, num_splits, pack_gqa, window):
    """New k / v appended (v_cache's head_dim), then attention over the cache, with sinks and split-KV merged."""
    torch.manual_seed(2)
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
    k_new = torch.randn(batch, 2, kv_heads, head_dim, dtype=dtype)
    v_new = torch.randn(batch, 2, kv_heads, head_dim_v, dtype=dtype)
    sinks = torch.randn(heads)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=cache_seqlens,
                                       page_table=page_table, window_size=window, num_splits=num_splits,
                                       pack_gqa=pack_gqa, sinks=sinks, return_softmax_lse=True)
    assert out.shape == (batch, 2, heads, head_dim_v)
    lengths = append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, page_table=page_table)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    expected, expected_lse = attention_kvcache_ref(q.double(), expected_k.double(), expected_v.double(), lengths,
                                                   page_table=page_table, window_size=window, sinks=sinks.double())
    assert_close("out", out, expected, tolerance_for(dtype))
    assert_close("lse", lse, expected_lse, LSE_TOL)


def test_kvcache_varlen_decode_with_cache_batch_idx_matches_the_reference():
    """Varlen queries, new tokens laid out like them, cache rows through cache_batch_idx, no split."""
    torch.manual_seed(3)
    cu_q = i32([0, 1, 3, 4])
    k_cache = torch.randn(5, 16, 1, 64)
    v_cache = torch.randn(5, 16, 1, 256)
    q, k_new, v_new = torch.randn(4, 4, 64), torch.randn(4, 1, 64), torch.randn(4, 1, 256)
    cache_batch_idx, cache_seqlens = i32([4, 0, 2]), i32([7, 0, 12])
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=cache_seqlens,
                                  cache_batch_idx=cache_batch_idx, cu_seqlens_q=cu_q, max_seqlen_q=2, causal=True)
    lengths = append_kv_ref(expected_k, expected_v, k_new, v_new, cache_seqlens, cache_batch_idx=cache_batch_idx,
                            cu_seqlens_q=cu_q)
    expected, _ = attention_kvcache_ref(q.double(), expected_k.double(), expected_v.double(), lengths,
                                        cache_batch_idx=cache_batch_idx, cu_seqlens_q=cu_q, causal=True)
    assert torch.equal(v_cache, expected_v)
    assert_close("out", out, expected, tolerance_for(torch.float32))


def test_value_head_dim_512_runs_forward_and_refuses_the_backward_by_name():
    """D 64 with Dv 512 (FlashAttention 3's largest): the forward, paged decode with splits too; the backward takes
    Dv up to 256, as FlashAttention 3's."""
    torch.manual_seed(4)
    q = torch.randn(1, 6, 2, 64, requires_grad=True)
    k, v = torch.randn(1, 9, 1, 64), torch.randn(1, 9, 1, 512, requires_grad=True)
    out = flash_attn_func(q, k, v, causal=True)
    expected, _ = attention_ref(q.detach().double(), k.double(), v.detach().double(), causal=True)
    assert_close("out", out, expected, tolerance_for(torch.float32))
    with pytest.raises(NotImplementedError, match=r"^v: the backward takes a value head_dim up to 256, got 512"):
        out.sum().backward()
    k_cache, v_cache = torch.randn(8, 4, 1, 64), torch.randn(8, 4, 1, 512)
    page_table, cache_seqlens = torch.arange(8, dtype=torch.int32).view(2, 4), i32([9, 14])
    q_decode = torch.randn(2, 1, 2, 64)
    out, lse = flash_attn_with_kvcache(q_decode, k_cache, v_cache, cache_seqlens=cache_seqlens, page_table=page_table,
                                       num_splits=2, return_softmax_lse=True)
    expected, expected_lse = attention_kvcache_ref(q_decode.double(), k_cache.double(), v_cache.double(),
                                                   cache_seqlens, page_table=page_table)
    assert_close("decode out", out, expected, tolerance_for(torch.float32))
    assert_close("decode lse", lse, expected_lse, LSE_TOL)


def test_descriptor_loads_take_the_value_head_dim():
    """K/V (forward, dQ) and q/dO (dK/dV) through tensor descriptors, V's and dO's with their own head_dim: forced
    configs, as the GPU's prefill and backward choices take them."""
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 21, 2, 32), torch.randn(1, 21, 2, 32), torch.randn(1, 21, 2, 64)
    with forced_config(FwdConfig(16, 16, 4, 1, tma=True)):
        out, lse, _ = attention_forward(q, k, v, softmax_scale=0.3, left=-1, right=0)
    expected, expected_lse = attention_ref(q.double(), k.double(), v.double(), softmax_scale=0.3, causal=True)
    assert_close("out", out, expected, tolerance_for(torch.float32))
    dout = torch.randn_like(out)
    grads = attention_backward(dout, q, k, v, out, lse, softmax_scale=0.3, left=-1, right=0,
                               config=BwdConfig(16, 16, 16, 16, 4, 1, tma=True))
    expected_grads = attention_backward_ref(dout, q, k, v, out, lse, softmax_scale=0.3, window_size=(-1, 0))
    for name, grad, expected_grad in zip(("dq", "dk", "dv"), grads, expected_grads):
        assert_close(name, grad, expected_grad, 4 * tolerance_for(torch.float32))


@pytest.mark.parametrize("v_shape, error, match", [
    ((2, 7, 3, 32), ValueError, r"^v: expected shape \(2, 7, 2, 'Dv'\) to match k"),  # KV heads
    ((2, 8, 2, 32), ValueError, r"^v: expected shape \(2, 7, 2, 'Dv'\) to match k"),  # lengths
    ((2, 7, 2, 36), ValueError, r"^v: the value head_dim .* multiple of 8 .* got 36 with key head_dim 16"),
    ((2, 7, 2, 520), ValueError, r"^v: the value head_dim .*up to 512 .* got 520"),
])
def test_bad_value_shapes_are_refused_by_name(v_shape, error, match):
    q, k = torch.randn(2, 5, 4, 16), torch.randn(2, 7, 2, 16)
    with pytest.raises(error, match=match):
        flash_attn_func(q, k, torch.randn(v_shape))


def test_value_head_dim_limits_follow_the_key_head_dim():
    """Up to 512 for a key head_dim of at most 64; up to 256 (swattn's head_dim range) above it."""
    with pytest.raises(ValueError, match=r"^v: .* got 264 with key head_dim 128"):
        flash_attn_func(torch.randn(1, 2, 1, 128), torch.randn(1, 2, 1, 128), torch.randn(1, 2, 1, 264))
    with pytest.raises(ValueError, match=r"^v_cache: .* got 12 with key head_dim 64"):
        flash_attn_with_kvcache(torch.randn(1, 1, 1, 64), torch.randn(1, 4, 1, 64), torch.randn(1, 4, 1, 12))


def test_fp8_with_a_value_head_dim_of_its_own_is_refused_by_name():
    q = torch.randn(1, 2, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 4, 1, 64).to(torch.float8_e4m3fn)
    v = torch.randn(1, 4, 1, 128).to(torch.float8_e4m3fn)
    with pytest.raises(NotImplementedError, match=r"^v: a value head_dim \(128\) .* float8_e4m3fn"):
        flash_attn_func(q, k, v)
    with pytest.raises(NotImplementedError, match=r"^v_cache: a value head_dim"):
        flash_attn_with_kvcache(q, k, v, cache_seqlens=2)


def test_new_tokens_must_match_their_caches_head_dims():
    q, k_cache, v_cache = torch.randn(2, 1, 2, 32), torch.randn(2, 8, 1, 32), torch.randn(2, 8, 1, 64)
    k_new = torch.randn(2, 1, 1, 32)
    with pytest.raises(ValueError, match=r"^v: expected shape \(2, 1, 1, 64\) for new tokens \(heads and head_dim of "
                                         r"v_cache\), got \(2, 1, 1, 32\)"):
        flash_attn_with_kvcache(q, k_cache, v_cache, k_new, torch.randn(2, 1, 1, 32), cache_seqlens=3)
    with pytest.raises(ValueError, match=r"^k: expected shape \(2, 1, 1, 32\) for new tokens"):
        flash_attn_with_kvcache(q, k_cache, v_cache, torch.randn(2, 1, 1, 64), torch.randn(2, 1, 1, 64),
                                cache_seqlens=3)


def test_scheduler_metadata_takes_headdim_v():
    seqlens = i32([5, 9])
    planned = get_scheduler_metadata(2, 1, 64, 8, 2, 192, seqlens, headdim_v=128)
    assert planned.tolist() == get_scheduler_metadata(2, 1, 64, 8, 2, 192, seqlens).tolist()
    assert get_scheduler_metadata(2, 1, 64, 8, 2, 64, seqlens, headdim_v=512).shape == (2,)
    with pytest.raises(ValueError, match=r"^headdim_v: .* got 100 with key head_dim 64"):
        get_scheduler_metadata(2, 1, 64, 8, 2, 64, seqlens, headdim_v=100)
    with pytest.raises(NotImplementedError, match=r"^headdim_v: .* float8_e4m3fn"):
        get_scheduler_metadata(2, 1, 64, 8, 2, 64, seqlens, qkv_dtype=torch.float8_e4m3fn, headdim_v=128)


def test_fake_implementations_give_the_value_head_dim():
    """Under fake tensors (what torch.compile traces) both ops' outputs have v's head_dim."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    q, k, v = torch.randn(2, 5, 4, 64), torch.randn(2, 7, 2, 64), torch.randn(2, 7, 2, 128)
    k_cache, v_cache = torch.randn(2, 8, 2, 64), torch.randn(2, 8, 2, 128)
    fake = [mode.from_tensor(t) for t in (q, k, v, k_cache, v_cache)]
    with mode:
        out = flash_attn_func(*fake[:3], causal=True)
        decode, lse = flash_attn_with_kvcache(fake[0], fake[3], fake[4], cache_seqlens=mode.from_tensor(i32([3, 8])),
                                              check_inputs=False, return_softmax_lse=True)
    assert out.shape == (2, 5, 4, 128) and decode.shape == (2, 5, 4, 128) and lse.shape == (2, 4, 5)


def test_fwd_op_passes_opcheck_with_a_value_head_dim_of_its_own():
    q, k, v = torch.randn(1, 3, 2, 16), torch.randn(1, 5, 1, 16), torch.randn(1, 5, 1, 32)
    args = (q, k, v, None, None, None, None, 3, 5, 0.25, -1, 0, 0.0, True, 1)
    torch.library.opcheck(torch.ops.swattn.fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_gluon_dispatch_sends_a_value_head_dim_of_its_own_to_the_triton_kernels(monkeypatch):
    """The Gluon sm_90 forward reads V as K: it names the case as unsupported, and the forward plan keeps such
    calls on the Triton kernels even where the Gluon kernel is asked for everything it supports."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gluon_fwd, "compute_capability_major", lambda device: 9)
    monkeypatch.setattr(gluon_fwd, "GLUON_AVAILABLE", True)
    q, k = torch.empty(1, 256, 4, 128, dtype=torch.bfloat16), torch.empty(1, 256, 2, 128, dtype=torch.bfloat16)
    features = dict(varlen_q=False, varlen_k=False, paged=False, indexed=False, seqlens_k=False, num_splits=1,
                    append=False, count_blocks=False)
    assert gluon_fwd.unsupported_reason(q, k, k, **features) is None
    reason = gluon_fwd.unsupported_reason(q, k, torch.empty(1, 256, 2, 64, dtype=torch.bfloat16), **features)
    assert reason is not None and "value head_dim (64)" in reason
    monkeypatch.undo()
    monkeypatch.setattr(fwd, "_use_gluon", lambda *args, **kwargs: True)  # as if it served every call it supports
    q, k = torch.randn(1, 8, 2, 32), torch.randn(1, 8, 1, 32)
    same = fwd.forward_plan(q, k, k, softmax_scale=0.2, left=-1, right=0)
    own = fwd.forward_plan(q, k, torch.randn(1, 8, 1, 64), softmax_scale=0.2, left=-1, right=0)
    assert same.use_gluon and not own.use_gluon
    assert own.out_shape == (1, 8, 2, 64) and own.main.constexprs["HEAD_DIM_V"] == 64
    assert "HEAD_DIM_V" not in same.main.constexprs  # equal head dims compile as before


def test_public_api_exports_the_value_head_dim_check():
    assert swattn.interface.check_value_head_dim("v", 64, 64, fp8=True) is None


def test_wide_key_prefill_takes_its_128_row_tile(monkeypatch):
    """DeepSeek's prefill (D 192 padded to 256, Dv 128, full or large-window causal, 16-bit) takes
    ``configs.WIDE_KEY_PREFILL_TILE`` (128 rows: a warpgroup's own 64 each); decode-sized tiles, small windows,
    fp32, PackGQA and equal head dims keep their choices."""
    monkeypatch.setattr(configs, "interpreter_enabled", lambda: False)  # the GPU's choices
    tile = configs.WIDE_KEY_PREFILL_TILE
    prefill = dict(head_dim_padded=256, rows_per_tile=8192, pack_gqa=False, window_span=None, element_size=2,
                   value_dim_padded=128)
    assert configs.forward_config(**prefill) == tile
    assert configs.forward_config(**dict(prefill, window_span=4096)) == tile
    for other in (dict(prefill, rows_per_tile=64), dict(prefill, window_span=512), dict(prefill, element_size=4),
                  dict(prefill, pack_gqa=True), dict(prefill, value_dim_padded=256),
                  dict(prefill, head_dim_padded=128)):
        assert configs.forward_config(**other) != tile
    assert configs.forward_config(**prefill, qv=True) != tile
    assert configs.forward_config(**dict(prefill, value_dim_padded=None)) == FwdConfig(64, 64, 8, 2)  # D 256 itself


@pytest.mark.parametrize("dtype, kwargs", [
    pytest.param(torch.float16, dict(causal=True), id="causal-fp16"),
    pytest.param(torch.float32, dict(window_size=(70, 0), softcap=4.0), id="window-softcap-fp32"),
])
def test_wide_key_prefill_tile_matches_the_reference(dtype, kwargs):
    """The 128-row tile (``configs.WIDE_KEY_PREFILL_TILE``) with a key head_dim padded to the next power of two (D
    24 -> 32) and Dv 16, two tiles of query rows (the second partly past the end), against the float64 reference."""
    torch.manual_seed(7)
    q = torch.randn(1, 150, 2, 24, dtype=dtype)
    k = torch.randn(1, 150, 2, 24, dtype=dtype)
    v = torch.randn(1, 150, 2, 16, dtype=dtype)
    with forced_config(configs.WIDE_KEY_PREFILL_TILE):
        out, lse = flash_attn_func(q, k, v, return_softmax_lse=True, **kwargs)
    expected, expected_lse = attention_ref(q.double(), k.double(), v.double(), **kwargs)
    assert_close("out", out, expected, tolerance_for(dtype))
    assert_close("lse", lse, expected_lse, LSE_TOL)
