"""Argument checks of swattn.interface: each raises the documented exception type, naming the argument.

Also: the public signatures contain FlashAttention 3's parameters, same names, same order, same defaults
(semantics.md §3.1), so that swattn is a drop-in replacement called positionally or by keyword.
"""

import inspect

import pytest
import torch

import swattn

B, SQ, SK, H, HK, D = 2, 5, 7, 4, 2, 16


def dense(**overrides):
    """Valid flash_attn_func arguments, with overrides."""
    args = dict(
        q=torch.randn(B, SQ, H, D, dtype=torch.float16),
        k=torch.randn(B, SK, HK, D, dtype=torch.float16),
        v=torch.randn(B, SK, HK, D, dtype=torch.float16),
    )
    args.update(overrides)
    return args


def varlen(**overrides):
    """Valid flash_attn_varlen_func arguments (sequences of 2+3 queries and 3+4 keys), with overrides."""
    args = dict(
        q=torch.randn(5, H, D, dtype=torch.float16),
        k=torch.randn(7, HK, D, dtype=torch.float16),
        v=torch.randn(7, HK, D, dtype=torch.float16),
        cu_seqlens_q=torch.tensor([0, 2, 5], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 3, 7], dtype=torch.int32),
        max_seqlen_q=3,
        max_seqlen_k=4,
    )
    args.update(overrides)
    return args


def _expect(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(**kwargs)


def test_valid_arguments_pass():
    out, lse = swattn.flash_attn_func(**dense(window_size=(2, 0), return_softmax_lse=True))
    assert out.shape == (B, SQ, H, D) and lse.shape == (B, H, SQ)
    out, lse = swattn.flash_attn_varlen_func(**varlen(causal=True, return_softmax_lse=True))
    assert out.shape == (5, H, D) and lse.shape == (H, 5)
    # return_attn_probs (FA3's name) also returns (out, lse); without either, only out.
    assert isinstance(swattn.flash_attn_func(**dense(return_attn_probs=True)), tuple)
    assert isinstance(swattn.flash_attn_func(**dense()), torch.Tensor)


# Both entry points share these; `make` builds valid arguments with one override.
COMMON_CHECKS = [
    # id, override builder (make, ...) -> kwargs, exception, match
    ("q-not-tensor", lambda make, rank: make(q=[[1.0]]), TypeError, r"^q: expected a torch\.Tensor"),
    ("k-not-tensor", lambda make, rank: make(k=None), TypeError, r"^k: expected a torch\.Tensor"),
    ("v-not-tensor", lambda make, rank: make(v=3), TypeError, r"^v: expected a torch\.Tensor"),
    ("q-wrong-rank", lambda make, rank: make(q=torch.randn([2] * (rank + 1)).half()), ValueError,
     r"^q: expected shape"),
    ("k-wrong-rank", lambda make, rank: make(k=make()["k"][0]), ValueError, r"^k: expected shape"),
    ("v-wrong-rank", lambda make, rank: make(v=make()["v"][..., None]), ValueError, r"^v: expected shape"),
    ("q-int-dtype", lambda make, rank: _all(make, torch.int32), TypeError, r"^q: expected dtype"),
    ("q-float64", lambda make, rank: _all(make, torch.float64), TypeError, r"^q: expected dtype"),
    ("k-dtype-mismatch", lambda make, rank: make(k=make()["k"].float()), TypeError,
     r"^k: expected dtype torch\.float16"),
    ("v-dtype-mismatch", lambda make, rank: make(v=make()["v"].bfloat16()), TypeError, r"^v: expected dtype"),
    ("k-device-mismatch", lambda make, rank: make(k=make()["k"].to("meta")), ValueError, r"^k: expected device"),
    ("v-device-mismatch", lambda make, rank: make(v=make()["v"].to("meta")), ValueError, r"^v: expected device"),
    ("kv-shape-mismatch", lambda make, rank: make(v=make()["v"][:1] if rank == 4 else make()["v"][:3]), ValueError,
     r"^v: expected shape .* to match k"),
    # A value head_dim of its own is FlashAttention 3's headdim_v (tests/kernels/test_value_head_dim.py); one that is
    # not a multiple of 8 is refused.
    ("v-head-dim-not-multiple-of-8", lambda make, rank: make(v=torch.cat([make()["v"], make()["v"][..., :4]], -1)),
     ValueError, r"^v: the value head_dim \(last dimension\) must be a multiple of 8"),
    ("head-dim-not-multiple-of-8", lambda make, rank: _head_dim(make, 12), ValueError, r"^q: head_dim must be"),
    ("head-dim-4", lambda make, rank: _head_dim(make, 4), ValueError, r"^q: head_dim must be"),
    ("head-dim-264", lambda make, rank: _head_dim(make, 264), ValueError, r"^q: head_dim must be"),
    ("k-head-dim-mismatch", lambda make, rank: make(k=torch.cat([make()["k"]] * 2, -1),
                                                     v=torch.cat([make()["v"]] * 2, -1)),
     ValueError, r"^k: expected head_dim 16 to match q"),
    ("heads-not-multiple", lambda make, rank: make(k=make()["k"].narrow(-2, 0, 1).expand(
        *make()["k"].shape[:-2], 3, D).contiguous(), v=make()["v"].narrow(-2, 0, 1).expand(
        *make()["v"].shape[:-2], 3, D).contiguous()), ValueError, r"^q/k: the number of query heads \(4\)"),
    ("zero-kv-heads", lambda make, rank: make(k=make()["k"][..., :0, :], v=make()["v"][..., :0, :]), ValueError,
     r"^q/k: the number of query heads"),
    ("window-below-minus-one-left", lambda make, rank: make(window_size=(-2, 0)), ValueError, r"^window_size: left"),
    ("window-below-minus-one-right", lambda make, rank: make(window_size=(3, -7)), ValueError,
     r"^window_size: right"),
    ("window-not-pair", lambda make, rank: make(window_size=(3,)), ValueError, r"^window_size: expected a pair"),
    ("window-int", lambda make, rank: make(window_size=3), ValueError, r"^window_size: expected a pair"),
    ("window-triple", lambda make, rank: make(window_size=(1, 2, 3)), ValueError, r"^window_size: expected a pair"),
    ("window-float", lambda make, rank: make(window_size=(3.0, 0)), ValueError, r"^window_size: left must be an int"),
    ("window-bool", lambda make, rank: make(window_size=(3, True)), ValueError, r"^window_size: right must be an int"),
    ("window-below-minus-one-causal", lambda make, rank: make(window_size=(-3, -1), causal=True), ValueError,
     r"^window_size: left"),
    ("softcap-negative", lambda make, rank: make(softcap=-1.0), ValueError, r"^softcap: expected"),
    ("softcap-inf", lambda make, rank: make(softcap=float("inf")), ValueError, r"^softcap: expected"),
    ("softcap-str", lambda make, rank: make(softcap="1"), ValueError, r"^softcap: expected"),
    ("softmax-scale-zero", lambda make, rank: make(softmax_scale=0.0), ValueError, r"^softmax_scale: expected"),
    ("softmax-scale-negative", lambda make, rank: make(softmax_scale=-0.1), ValueError, r"^softmax_scale: expected"),
    ("softmax-scale-nan", lambda make, rank: make(softmax_scale=float("nan")), ValueError,
     r"^softmax_scale: expected"),
    ("softmax-scale-bool", lambda make, rank: make(softmax_scale=True), ValueError, r"^softmax_scale: expected"),
    ("sinks-not-tensor", lambda make, rank: make(sinks=[0.0] * H), TypeError, r"^sinks: expected a tensor"),
    ("sinks-wrong-shape", lambda make, rank: make(sinks=torch.zeros(HK)), ValueError, r"^sinks: expected shape \(4,\)"),
    ("sinks-2d", lambda make, rank: make(sinks=torch.zeros(1, H)), ValueError, r"^sinks: expected shape \(4,\)"),
    ("sinks-int-dtype", lambda make, rank: make(sinks=torch.zeros(H, dtype=torch.int32)), TypeError,
     r"^sinks: expected a floating dtype"),
    ("sinks-device-mismatch", lambda make, rank: make(sinks=torch.zeros(H, device="meta")), ValueError,
     r"^sinks: expected device"),
    ("num-splits-negative", lambda make, rank: make(num_splits=-1), ValueError, r"^num_splits: expected an int >= 0"),
    ("num-splits-float", lambda make, rank: make(num_splits=2.0), ValueError, r"^num_splits: expected an int"),
    ("qv-dtype-mismatch", lambda make, rank: make(qv=make()["q"].float()), TypeError,
     r"^qv: expected dtype torch\.float16 to match q"),
    ("qv-wrong-head-dim", lambda make, rank: make(qv=make()["q"][..., :8]), ValueError, r"^qv: expected shape"),
    # Descales apply to float8_e4m3fn inputs only (tests/kernels/test_fp8.py has the fp8 checks).
    ("q-descale-not-fp8", lambda make, rank: make(q_descale=torch.ones(B, HK)), ValueError,
     r"^q_descale: given, but q is torch.float16"),
    ("k-descale-not-fp8", lambda make, rank: make(k_descale=torch.ones(B, HK)), ValueError,
     r"^k_descale: given, but k is torch.float16"),
    ("v-descale-not-fp8", lambda make, rank: make(v_descale=torch.ones(B, HK)), ValueError,
     r"^v_descale: given, but k is torch.float16"),
    ("q-descale-zero-tensor-not-fp8", lambda make, rank: make(q_descale=torch.zeros(1)), ValueError,
     r"^q_descale: given, but q is"),
    ("q-descale-one-tensor-not-fp8", lambda make, rank: make(q_descale=torch.ones(1)), ValueError,
     r"^q_descale: given, but q is"),
    ("attention-chunk-negative", lambda make, rank: make(attention_chunk=-1), ValueError,
     r"^attention_chunk: expected an int >= 0"),
    ("attention-chunk-float", lambda make, rank: make(attention_chunk=64.0), ValueError,
     r"^attention_chunk: expected an int >= 0"),
    ("sm-margin-negative", lambda make, rank: make(sm_margin=-1), ValueError, r"^sm_margin: expected an int >= 0"),
]


def _all(make, dtype):
    args = make()
    return make(**{name: args[name].to(dtype) for name in ("q", "k", "v")})


def _head_dim(make, dim):
    args = make()
    return make(**{name: torch.randn(*args[name].shape[:-1], dim).half() for name in ("q", "k", "v")})


# Tensor-valued arguments that do not apply (qv, descales of non-fp8 inputs, a one-element zero tensor) are regression
# tests for a fixed bug: interface._unsupported tested `value != 0`, which raised "Boolean value of Tensor ... is
# ambiguous" for a tensor of several elements and silently ignored q_descale=torch.zeros(1).
def _common_params():
    return [pytest.param(b, e, m, id=i) for i, b, e, m in COMMON_CHECKS]


@pytest.mark.parametrize("build,exc,match", _common_params())
def test_flash_attn_func_argument_checks(build, exc, match):
    _expect(swattn.flash_attn_func, build(dense, 4), exc, match)


@pytest.mark.parametrize("build,exc,match", _common_params())
def test_flash_attn_varlen_func_argument_checks(build, exc, match):
    _expect(swattn.flash_attn_varlen_func, build(varlen, 3), exc, match)


@pytest.mark.parametrize("window_size", [(0, 0), (-1, -1), (-1, 0), [5, 1], (10**6, 10**6)],
                         ids=lambda w: f"W{w[0]}_{w[1]}")
def test_window_edge_values_are_accepted(window_size):
    out = swattn.flash_attn_func(**dense(window_size=window_size))
    assert torch.isfinite(out).all()


def test_flash_attn_func_batch_mismatch():
    _expect(swattn.flash_attn_func, dense(k=torch.randn(1, SK, HK, D).half(), v=torch.randn(1, SK, HK, D).half()),
            ValueError, r"^k: expected batch 2 to match q, got 1")


def test_flash_attn_func_rejects_varlen_layout():
    _expect(swattn.flash_attn_func, dense(q=torch.randn(SQ, H, D).half()), ValueError, r"^q: expected shape \(B, Sq")


def _cu(values):
    return torch.tensor(values, dtype=torch.int32)


VARLEN_CHECKS = [
    pytest.param(dict(seqused_q=_cu([2, 9])), ValueError, r"^seqused_q: each entry must lie in \[0, its cu_seqlens_q",
                 id="seqused-q-past-its-sequence"),
    pytest.param(dict(seqused_q=_cu([2])[:1]), ValueError, r"^seqused_q: expected shape \(2,\)",
                 id="seqused-q-one-element"),
    pytest.param(dict(seqused_q=_cu([2, 3]).long()), TypeError, r"^seqused_q: expected dtype torch\.int32",
                 id="seqused-q-int64"),
    pytest.param(dict(cu_seqlens_q=[0, 2, 5]), TypeError, r"^cu_seqlens_q: expected an int32 tensor",
                 id="cu-seqlens-q-list"),
    pytest.param(dict(cu_seqlens_q=_cu([0, 2, 5]).long()), TypeError, r"^cu_seqlens_q: expected dtype torch\.int32",
                 id="cu-seqlens-q-int64"),
    pytest.param(dict(cu_seqlens_k=_cu([0, 3, 7]).float()), TypeError, r"^cu_seqlens_k: expected dtype torch\.int32",
                 id="cu-seqlens-k-float"),
    pytest.param(dict(cu_seqlens_q=_cu([[0, 2, 5]])), ValueError, r"^cu_seqlens_q: expected shape", id="cu-2d"),
    pytest.param(dict(cu_seqlens_q=_cu([])), ValueError, r"^cu_seqlens_q: expected at least one entry",
                 id="cu-seqlens-q-empty"),
    pytest.param(dict(cu_seqlens_k=_cu([0, 3, 7]).to("meta")), ValueError, r"^cu_seqlens_k: expected device",
                 id="cu-seqlens-k-device"),
    pytest.param(dict(cu_seqlens_q=_cu([1, 2, 5])), ValueError, r"^cu_seqlens_q: must start at 0, got 1",
                 id="cu-seqlens-q-not-from-0"),
    pytest.param(dict(cu_seqlens_k=_cu([2, 3, 7])), ValueError, r"^cu_seqlens_k: must start at 0, got 2",
                 id="cu-seqlens-k-not-from-0"),
    pytest.param(dict(cu_seqlens_q=_cu([0, 4, 3])), ValueError, r"^cu_seqlens_q: must be non-decreasing",
                 id="cu-seqlens-q-decreasing"),
    pytest.param(dict(cu_seqlens_k=_cu([0, 5, 4])), ValueError, r"^cu_seqlens_k: must be non-decreasing",
                 id="cu-seqlens-k-decreasing"),
    pytest.param(dict(cu_seqlens_q=_cu([0, 2, 6])), ValueError, r"^cu_seqlens_q: last entry 6 exceeds the 5 rows",
                 id="cu-seqlens-q-beyond-total"),
    pytest.param(dict(cu_seqlens_k=_cu([0, 3, 8])), ValueError, r"^cu_seqlens_k: last entry 8 exceeds the 7 rows",
                 id="cu-seqlens-k-beyond-total"),
    pytest.param(dict(max_seqlen_q=2), ValueError, r"^cu_seqlens_q: a sequence has length 3 > max_seqlen = 2",
                 id="cu-seqlens-q-longer-than-max"),
    pytest.param(dict(max_seqlen_k=3), ValueError, r"^cu_seqlens_k: a sequence has length 4 > max_seqlen = 3",
                 id="cu-seqlens-k-longer-than-max"),
    pytest.param(dict(cu_seqlens_k=_cu([0, 7]), max_seqlen_k=7), ValueError,
                 r"^cu_seqlens_k: expected shape \(3,\) to match",
                 id="cu-seqlens-batch-mismatch"),
    pytest.param(dict(max_seqlen_q=-1), ValueError, r"^max_seqlen_q: expected an int >= 0", id="max-seqlen-q-neg"),
    pytest.param(dict(max_seqlen_k=4.0), ValueError, r"^max_seqlen_k: expected an int", id="max-seqlen-k-float"),
    pytest.param(dict(max_seqlen_q=None), ValueError, r"^max_seqlen_q: expected an int", id="max-seqlen-q-none"),
    pytest.param(dict(seqused_k=_cu([3, 4]).long()), TypeError, r"^seqused_k: expected dtype torch\.int32",
                 id="seqused-k-int64"),
    pytest.param(dict(seqused_k=_cu([3, 4, 0])), ValueError, r"^seqused_k: expected shape \(2,\)",
                 id="seqused-k-wrong-length"),
    pytest.param(dict(seqused_k=_cu([3, 5])), ValueError, r"^seqused_k: each entry must lie in \[0",
                 id="seqused-k-beyond-length"),
    pytest.param(dict(seqused_k=_cu([-1, 2])), ValueError, r"^seqused_k: each entry must lie in \[0",
                 id="seqused-k-negative"),
    pytest.param(dict(q=torch.randn(1, 5, H, D).half()), ValueError, r"^q: expected shape \(total_q, H, D\)",
                 id="q-dense-layout"),
]


@pytest.mark.parametrize("overrides,exc,match", VARLEN_CHECKS)
def test_flash_attn_varlen_func_cu_seqlens_checks(overrides, exc, match):
    _expect(swattn.flash_attn_varlen_func, varlen(**overrides), exc, match)


def test_varlen_data_checks_follow_check_inputs():
    # cu_seqlens_q = [1, 2, 5] does not start at 0 but stays inside q, so running it unchecked is memory-safe.
    bad = _cu([1, 2, 5])
    _expect(swattn.flash_attn_varlen_func, varlen(cu_seqlens_q=bad), ValueError, "^cu_seqlens_q: must start at 0")
    _expect(swattn.flash_attn_varlen_func, varlen(cu_seqlens_q=bad, check_inputs=True), ValueError,
            "^cu_seqlens_q: must start at 0")
    # check_inputs=False skips the checks that read tensor data (they synchronise on GPU) ...
    swattn.flash_attn_varlen_func(**varlen(cu_seqlens_q=bad, check_inputs=False))
    # ... but not the metadata checks.
    _expect(swattn.flash_attn_varlen_func, varlen(cu_seqlens_q=bad.long(), check_inputs=False), TypeError,
            r"^cu_seqlens_q: expected dtype torch\.int32")


def test_varlen_zero_max_seqlen_with_empty_sequences_is_valid():
    out, lse = swattn.flash_attn_varlen_func(**varlen(
        q=torch.randn(0, H, D).half(), cu_seqlens_q=_cu([0, 0, 0]), max_seqlen_q=0, return_softmax_lse=True))
    assert out.shape == (0, H, D) and lse.shape == (H, 0)


# ---------------------------------------------------------------------------------------------------------------
# Signatures: FA3's parameters (semantics.md §3.1), in FA3's order, with FA3's defaults.

FA3_PARAMETERS = {
    "flash_attn_func": [
        ("q", inspect.Parameter.empty), ("k", inspect.Parameter.empty), ("v", inspect.Parameter.empty),
        ("softmax_scale", None), ("causal", False), ("qv", None), ("q_descale", None), ("k_descale", None),
        ("v_descale", None), ("window_size", (-1, -1)), ("attention_chunk", 0), ("softcap", 0.0), ("num_splits", 1),
        ("pack_gqa", None), ("deterministic", False), ("sm_margin", 0), ("return_attn_probs", False),
    ],
    "flash_attn_varlen_func": [
        ("q", inspect.Parameter.empty), ("k", inspect.Parameter.empty), ("v", inspect.Parameter.empty),
        ("cu_seqlens_q", inspect.Parameter.empty), ("cu_seqlens_k", inspect.Parameter.empty),
        ("max_seqlen_q", inspect.Parameter.empty), ("max_seqlen_k", inspect.Parameter.empty),
        ("seqused_q", None), ("seqused_k", None), ("softmax_scale", None), ("causal", False), ("qv", None),
        ("q_descale", None), ("k_descale", None), ("v_descale", None), ("window_size", (-1, -1)),
        ("attention_chunk", 0), ("softcap", 0.0), ("num_splits", 1), ("pack_gqa", None), ("deterministic", False),
        ("sm_margin", 0), ("return_attn_probs", False),
    ],
    "flash_attn_with_kvcache": [
        ("q", inspect.Parameter.empty), ("k_cache", inspect.Parameter.empty), ("v_cache", inspect.Parameter.empty),
        ("k", None), ("v", None), ("qv", None), ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None),
        ("cache_batch_idx", None), ("cache_leftpad", None), ("page_table", None), ("cu_seqlens_q", None),
        ("cu_seqlens_k_new", None), ("max_seqlen_q", None), ("rotary_seqlens", None), ("q_descale", None),
        ("k_descale", None), ("v_descale", None), ("softmax_scale", None), ("causal", False),
        ("window_size", (-1, -1)), ("attention_chunk", 0), ("softcap", 0.0), ("rotary_interleaved", True),
        ("scheduler_metadata", None), ("num_splits", 0), ("pack_gqa", None), ("sm_margin", 0),
        ("return_softmax_lse", False),
    ],
    "flash_attn_qkvpacked_func": [
        ("qkv", inspect.Parameter.empty), ("softmax_scale", None), ("causal", False), ("q_descale", None),
        ("k_descale", None), ("v_descale", None), ("window_size", (-1, -1)), ("attention_chunk", 0),
        ("softcap", 0.0), ("deterministic", False), ("num_heads_q", None), ("sm_margin", 0),
        ("return_attn_probs", False),
    ],
    "flash_attn_combine": [
        ("out_partial", inspect.Parameter.empty), ("lse_partial", inspect.Parameter.empty), ("out", None),
        ("out_dtype", None),
    ],
    "get_scheduler_metadata": [
        ("batch_size", inspect.Parameter.empty), ("max_seqlen_q", inspect.Parameter.empty),
        ("max_seqlen_k", inspect.Parameter.empty), ("num_heads_q", inspect.Parameter.empty),
        ("num_heads_kv", inspect.Parameter.empty), ("headdim", inspect.Parameter.empty),
        ("cache_seqlens", inspect.Parameter.empty), ("qkv_dtype", torch.bfloat16), ("headdim_v", None),
        ("cu_seqlens_q", None), ("cu_seqlens_k_new", None), ("cache_leftpad", None), ("page_size", None),
        ("max_seqlen_k_new", 0), ("causal", False), ("window_size", (-1, -1)), ("attention_chunk", 0),
        ("has_softcap", False), ("num_splits", 0), ("pack_gqa", None), ("sm_margin", 0),
    ],
}


@pytest.mark.parametrize("name", list(FA3_PARAMETERS))
def test_signature_is_fa3_superset_in_order(name):
    fa3 = FA3_PARAMETERS[name]
    params = list(inspect.signature(getattr(swattn, name)).parameters.values())
    names = [p.name for p in params]
    fa3_names = [n for n, _ in fa3]
    # Superset, same relative order ...
    positions = [names.index(n) for n in fa3_names if n in names]
    assert [n for n in fa3_names if n not in names] == [], "FA3 parameters missing"
    assert positions == sorted(positions), f"FA3 parameters out of order: {names}"
    # ... and, stronger, FA3's list is a prefix, so FA3 positional calls bind to the same parameters.
    assert names[:len(fa3_names)] == fa3_names
    for p, (_, default) in zip(params, fa3):
        assert p.default == default, f"{p.name}: default {p.default!r}, FA3 has {default!r}"
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    # Extra parameters come after FA3's and are optional.
    assert all(p.default is not inspect.Parameter.empty for p in params[len(fa3_names):])


def test_fa3_positional_call_binds_like_fa3():
    q, k, v = dense()["q"], dense()["k"], dense()["v"]
    # FA3 order: q, k, v, softmax_scale, causal, qv, q_descale, k_descale, v_descale, window_size, ...
    by_position = swattn.flash_attn_func(q, k, v, 0.3, False, None, None, None, None, (2, 1))
    by_keyword = swattn.flash_attn_func(q, k, v, softmax_scale=0.3, window_size=(2, 1))
    assert torch.equal(by_position, by_keyword)


@pytest.mark.parametrize("packed_heads", [False, True])
def test_qkvpacked_is_flash_attn_func_on_views(packed_heads):
    """flash_attn_qkvpacked_func: [B, S, 3, H, D], or [B, S, H + 2 Hk, D] with num_heads_q (GQA): the same bits as
    flash_attn_func on the three views, and the gradient lands in qkv (the views' gradients, stacked)."""
    torch.manual_seed(0)
    shape = (B, SQ, H + 2 * HK, D) if packed_heads else (B, SQ, 3, H, D)
    qkv = torch.randn(shape, dtype=torch.float32, requires_grad=True)
    extra = dict(num_heads_q=H) if packed_heads else {}
    out, lse = swattn.flash_attn_qkvpacked_func(qkv, causal=True, window_size=(2, 0), softcap=3.0,
                                                return_softmax_lse=True, **extra)
    views = qkv.detach().split([H, HK, HK], dim=2) if packed_heads else qkv.detach().unbind(dim=2)
    q, k, v = (t.clone().requires_grad_() for t in views)
    out_ref, lse_ref = swattn.flash_attn_func(q, k, v, causal=True, window_size=(2, 0), softcap=3.0,
                                              return_softmax_lse=True)
    assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    expected = torch.cat([q.grad, k.grad, v.grad], dim=2) if packed_heads else torch.stack(
        [q.grad, k.grad, v.grad], dim=2)
    torch.testing.assert_close(qkv.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("qkv, num_heads_q, exc, match", [
    ("not a tensor", None, TypeError, "qkv: expected a torch.Tensor"),
    (torch.zeros(B, SQ, D), None, ValueError, "qkv: expected shape"),
    (torch.zeros(B, SQ, 2, H, D), None, ValueError, r"qkv: a 5-dim qkv is \(B, S, 3, H, D\)"),
    (torch.zeros(B, SQ, 3, H, D), H + 1, ValueError, "num_heads_q: a 5-dim qkv holds"),
    (torch.zeros(B, SQ, 8, D), None, ValueError, "num_heads_q: required with a 4-dim qkv"),
    (torch.zeros(B, SQ, 8, D), 3, ValueError, "num_heads_q: qkv's 8 heads"),
    (torch.zeros(B, SQ, 8, D), 8, ValueError, "num_heads_q: qkv's 8 heads"),
    (torch.zeros(B, SQ, 8, D), 0, ValueError, "num_heads_q: expected an int >= 1"),
])
def test_qkvpacked_argument_checks(qkv, num_heads_q, exc, match):
    _expect(swattn.flash_attn_qkvpacked_func, dict(qkv=qkv, num_heads_q=num_heads_q), exc, match)


@pytest.mark.parametrize("entry", ["dense", "varlen", "kvcache"])
def test_more_programs_than_a_grid_axis_takes(entry):
    """The forward kernel's grid holds every (sequence, head) pair in its second dimension, which CUDA limits to
    65535 (the launch failed in the driver with "invalid argument"; found by the s12 fuzz's review, the interpreter
    has no such limit): 4097 sequences x 16 heads = 65552 pairs go on the first axis instead (``HEADS_ON_X``), the
    tiles on the second. With PackGQA the pairs are (sequence, KV head): 4097 x 1 keeps the usual grid."""
    from swattn._compat import uses_triton
    from swattn.testing import stub_kernels

    if not uses_triton(torch.empty(0)):
        pytest.skip("the float64 reference path (TRITON_INTERPRET=0 on the CPU) has no grid")
    batch, heads = 4097, 16

    def call(kv_heads, **kwargs):
        q = torch.randn(batch, 1, heads, 8, dtype=torch.float16)
        k = torch.randn(batch, 1, kv_heads, 8, dtype=torch.float16)
        if entry == "dense":
            return swattn.flash_attn_func(q, k, k, **kwargs)
        if entry == "kvcache":
            return swattn.flash_attn_with_kvcache(q, k, k, cache_seqlens=1, **kwargs)
        cu = torch.arange(batch + 1, dtype=torch.int32)
        return swattn.flash_attn_varlen_func(q[:, 0], k[:, 0], k[:, 0], cu, cu, 1, 1, **kwargs)

    with stub_kernels() as stubs:
        call(heads)
        grid = stubs["_swa_fwd_kernel"].last_launch[0]
        assert grid[0] == batch * heads and grid[1] == 1
        call(1, pack_gqa=True)
        grid = stubs["_swa_fwd_kernel"].last_launch[0]
        assert grid[1] == batch


def _out_cases():
    """(name, call(**extra) -> result, output shape, dtype) for the out= test: fresh inputs on every call."""
    paged = dict(k_cache=torch.randn(6, 4, HK, D, dtype=torch.float16),
                 v_cache=torch.randn(6, 4, HK, D + 8, dtype=torch.float16),
                 page_table=torch.tensor([[3, 1, 5], [0, 4, 2]], dtype=torch.int32))

    def equal_lengths(**extra):
        return swattn.flash_attn_func(**dense(), window_size=(3, 0), sinks=torch.ones(H), return_softmax_lse=True,
                                      **extra)

    def packed(**extra):
        return swattn.flash_attn_varlen_func(**varlen(), causal=True, return_softmax_lse=True, check_inputs=False,
                                             **extra)

    def decode_append(**extra):
        caches = {name: t.clone() for name, t in paged.items()}
        q = torch.randn(B, 1, H, D, dtype=torch.float16)
        k_new = torch.randn(B, 1, HK, D, dtype=torch.float16)
        v_new = torch.randn(B, 1, HK, D + 8, dtype=torch.float16)
        lengths = torch.tensor([5, 9], dtype=torch.int32)
        return swattn.flash_attn_with_kvcache(q, k=k_new, v=v_new, cache_seqlens=lengths, causal=True,
                                              window_size=(6, 0), check_inputs=False, **caches, **extra)

    def split(**extra):
        q = torch.randn(B, 2, H, D, dtype=torch.float16)
        return swattn.flash_attn_with_kvcache(q, cache_seqlens=torch.tensor([7, 12], dtype=torch.int32), num_splits=3,
                                              return_softmax_lse=True, check_inputs=False, **paged, **extra)

    return [("dense", equal_lengths, (B, SQ, H, D)), ("varlen", packed, (5, H, D)),
            ("decode with append, Dv != D", decode_append, (B, 1, H, D + 8)),
            ("split-KV over pages, Dv != D", split, (B, 2, H, D + 8))]


@pytest.mark.parametrize("case", range(4), ids=[name for name, *_ in _out_cases()])
def test_out_is_written_in_place(case, monkeypatch):
    """``out=`` (swattn's extension): the output lands in the given tensor, which is returned, with the bits of a
    call without it; over three calls of one signature (run, recorded, replayed from the plan: the kernels' plans
    write out themselves on the interpreter's Triton path), each with new data and a NaN-poisoned out."""
    from swattn import ops
    from swattn._compat import uses_triton
    from swattn.kernels._launch import clear_plans

    name, call, shape = _out_cases()[case]
    replayed = []

    def counting(make):
        def planned(args):
            run = make(args)
            return lambda *call_args: replayed.append(1) or run(*call_args)
        return planned
    for planner in ("_planned_fwd_into", "_planned_fwd_kvcache_into"):
        monkeypatch.setattr(ops, planner, counting(getattr(ops, planner)))
    clear_plans()
    for seed in range(3):
        torch.manual_seed(seed)
        expected = call()
        torch.manual_seed(seed)
        out = torch.full(shape, float("nan"), dtype=torch.float16)
        result = call(out=out)
        got, expected_out = (result[0], expected[0]) if isinstance(result, tuple) else (result, expected)
        assert got is out, name
        assert torch.equal(out, expected_out), name
        if isinstance(result, tuple):
            assert torch.equal(result[1], expected[1]), name
    assert len(replayed) == (1 if uses_triton(torch.empty(0)) else 0), name


@pytest.mark.parametrize("out, match", [
    ("not a tensor", "out: expected a tensor or None"),
    (torch.empty(B, SQ, H, D + 8, dtype=torch.float16), r"out: expected shape \(2, 5, 4, 16\)"),
    (torch.empty(B, SQ, H, D, dtype=torch.float32), "dtype torch.float16"),
    (torch.empty(B, SQ, D, H, dtype=torch.float16).transpose(2, 3), "contiguous"),
    (torch.empty(B * SQ * H * D + 1, dtype=torch.float16)[1:].view(B, SQ, H, D), "16-byte boundary"),
])
def test_out_argument_checks(out, match):
    with pytest.raises(TypeError if isinstance(out, str) else ValueError, match=match):
        swattn.flash_attn_func(**dense(), out=out)


def test_out_refused_when_a_gradient_is_needed():
    args = dense()
    args["q"].requires_grad_()
    with pytest.raises(ValueError, match="out: not supported for a call that needs a gradient"):
        swattn.flash_attn_func(**args, out=torch.empty(B, SQ, H, D, dtype=torch.float16))
    with torch.no_grad():
        out = torch.empty(B, SQ, H, D, dtype=torch.float16)
        assert swattn.flash_attn_func(**args, out=out) is out


def test_out_under_torch_compile():
    """Traced, the op's result is copied into out (a graph input the compiled function mutates)."""
    args = dense()
    expected = swattn.flash_attn_func(**args, causal=True)
    compiled = torch.compile(lambda q, k, v, out: swattn.flash_attn_func(q, k, v, causal=True, out=out),
                             backend="eager", fullgraph=True)
    out = torch.full_like(expected, float("nan"))
    compiled(args["q"], args["k"], args["v"], out)
    assert torch.equal(out, expected)
