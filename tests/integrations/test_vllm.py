"""``swattn.integrations.vllm``: vLLM's ``flash_attn_varlen_func`` signature served by swattn, against the float64
reference (a mixed batch of prefill chunks and decode rows over a paged cache, as vLLM's backend calls it; packed
keys with ``cu_seqlens_k``; a ``[B, S, Hk, D]`` cache with ``seqused_k``), ``out=`` written in place, errors named
as vLLM names its arguments, and ``patch`` on a stand-in for vLLM's backend module.

Triton kernels through the interpreter (``tests/conftest.py``): H = 4 query heads over Hk = 2, D = 16.
"""

from __future__ import annotations

import types

import pytest
import torch

import swattn
import swattn.integrations.vllm as swattn_vllm
from swattn.reference import attention_kvcache_ref, attention_varlen_ref
from swattn.testing import assert_close, tolerance_for

H, HK, D, PAGE = 4, 2, 16, 8
LSE_TOL = 1e-4


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def paged_batch(dtype=torch.float16, seed=0):
    """vLLM's mixed step: sequences of 5, 1, 3 new queries over 13, 20, 3 keys (their own included) in 8-token
    pages, page tables of shuffled pages."""
    torch.manual_seed(seed)
    q_lens, k_lens = [5, 1, 3], [13, 20, 3]
    pool = 12
    k_cache = torch.randn(pool, PAGE, HK, D, dtype=dtype)
    v_cache = torch.randn(pool, PAGE, HK, D, dtype=dtype)
    order = torch.randperm(pool).to(torch.int32)
    block_table = order[:9].reshape(3, 3).contiguous()
    q = torch.randn(sum(q_lens), H, D, dtype=dtype)
    cu_seqlens_q = i32([0, 5, 6, 9])
    return dict(q=q, k=k_cache, v=v_cache, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max(q_lens),
                seqused_k=i32(k_lens), max_seqlen_k=max(k_lens), block_table=block_table)


@pytest.mark.parametrize("window, softcap, sinks", [(None, 0.0, False), ([6, 0], 2.5, True)])
def test_paged_mixed_batch_matches_the_reference(window, softcap, sinks):
    args = paged_batch()
    s_aux = torch.randn(H, dtype=torch.float32) if sinks else None
    out = torch.full_like(args["q"], float("nan"))  # poisoned: every row must be written
    result, lse = swattn_vllm.flash_attn_varlen_func(
        **args, softmax_scale=0.3, causal=True, window_size=window, softcap=softcap, s_aux=s_aux, out=out,
        return_softmax_lse=True, fa_version=3, scheduler_metadata=None, num_splits=0)
    assert result is out
    expected, expected_lse = attention_kvcache_ref(
        args["q"], args["k"], args["v"], args["seqused_k"], page_table=args["block_table"],
        cu_seqlens_q=args["cu_seqlens_q"], softmax_scale=0.3, causal=True,
        window_size=(-1, -1) if window is None else tuple(window), softcap=softcap, sinks=s_aux)
    assert_close("out", out, expected, tolerance_for(torch.float16))
    assert_close("lse", lse, expected_lse, LSE_TOL)
    # The same call through swattn's own API: the adapter adds nothing to the arithmetic.
    direct = swattn.flash_attn_with_kvcache(
        args["q"], args["k"], args["v"], cache_seqlens=args["seqused_k"], page_table=args["block_table"],
        cu_seqlens_q=args["cu_seqlens_q"], max_seqlen_q=args["max_seqlen_q"], softmax_scale=0.3, causal=True,
        window_size=(-1, -1) if window is None else tuple(window), softcap=softcap, sinks=s_aux)
    assert torch.equal(out, direct)


def test_packed_keys_and_a_batched_cache():
    torch.manual_seed(1)
    q = torch.randn(7, H, D, dtype=torch.float16)
    k = torch.randn(11, HK, D, dtype=torch.float16)
    v = torch.randn(11, HK, D, dtype=torch.float16)
    cu_q, cu_k = i32([0, 3, 7]), i32([0, 5, 11])
    out = swattn_vllm.flash_attn_varlen_func(q, k, v, 4, cu_q, 6, cu_seqlens_k=cu_k, causal=True,
                                             window_size=[2, 0])
    expected, _ = attention_varlen_ref(q, k, v, cu_q, cu_k, causal=True, window_size=(2, 0))
    assert_close("packed keys", out, expected, tolerance_for(torch.float16))

    # seqused_k over a [B, S, Hk, D] cache without a block table.
    k_cache = torch.randn(2, 9, HK, D, dtype=torch.float16)
    v_cache = torch.randn(2, 9, HK, D, dtype=torch.float16)
    seqused_k = i32([6, 9])
    out, lse = swattn_vllm.flash_attn_varlen_func(q, k_cache, v_cache, 4, cu_q, 9, seqused_k=seqused_k,
                                                  causal=True, return_softmax_lse=True)
    expected, expected_lse = attention_kvcache_ref(q, k_cache, v_cache, seqused_k, cu_seqlens_q=cu_q, causal=True)
    assert_close("batched cache", out, expected, tolerance_for(torch.float16))
    assert_close("batched cache lse", lse, expected_lse, LSE_TOL)


def _with(**overrides):
    args = paged_batch()
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, exc, match", [
    (dict(dropout_p=0.1), NotImplementedError, "dropout_p"),
    (dict(alibi_slopes=torch.zeros(H)), NotImplementedError, "alibi_slopes"),
    (dict(q_v=torch.zeros(9, H, D + 8, dtype=torch.float16)), ValueError, "^q_v: "),
    (dict(output_scale=torch.ones(1)), NotImplementedError, "output_scale"),
    (dict(cp_world_size=2), NotImplementedError, "cp_world_size"),
    (dict(fa_version=5), ValueError, "fa_version"),
    (dict(cu_seqlens_k=i32([0, 13, 33, 36])), ValueError, "cu_seqlens_k: exactly one"),
    (dict(seqused_k=None), ValueError, "cu_seqlens_k: exactly one"),
    (dict(window_size=[3]), ValueError, "window_size"),
    (dict(out=torch.zeros(9, H, D + 8, dtype=torch.float16)), ValueError, "out: expected shape"),
    (dict(out="out"), TypeError, "out: expected a tensor"),
    # swattn's own checks, in vLLM's names.
    (dict(s_aux=torch.zeros(H + 1)), ValueError, "^s_aux: expected shape"),
    (dict(block_table=torch.zeros(3, 3, dtype=torch.int64)), TypeError, "^block_table:"),
    (dict(seqused_k=torch.zeros(3, dtype=torch.int64)), TypeError, "^seqused_k:"),
])
def test_errors_name_vllms_arguments(overrides, exc, match):
    with pytest.raises(exc, match=match) as raised:
        swattn_vllm.flash_attn_varlen_func(**_with(**overrides), causal=True)
    assert raised.value.__cause__ is not raised.value


def test_mla_decode_with_q_v():
    """vLLM's FlashAttention MLA backend: q (the rope part, D) and q_v (Dv) over one KV head whose values are the
    latent cache (Dv); q_v is swattn's qv (scores q k^T + q_v v^T), default scale (D + Dv) ** -0.5."""
    torch.manual_seed(4)
    heads, latent, rope = 8, 64, 16
    k_cache = torch.randn(6, PAGE, 1, rope, dtype=torch.float16)
    v_cache = torch.randn(6, PAGE, 1, latent, dtype=torch.float16)
    block_table = torch.randperm(6).to(torch.int32).view(2, 3)
    q, q_v = torch.randn(3, heads, rope, dtype=torch.float16), torch.randn(3, heads, latent, dtype=torch.float16)
    cu_q, seqused_k = i32([0, 1, 3]), i32([9, 20])
    out, lse = swattn_vllm.flash_attn_varlen_func(q, k_cache, v_cache, 2, cu_q, 20, seqused_k=seqused_k, q_v=q_v,
                                                  causal=True, block_table=block_table, return_softmax_lse=True)
    expected, expected_lse = attention_kvcache_ref(q, k_cache, v_cache, seqused_k, page_table=block_table,
                                                   cu_seqlens_q=cu_q, qv=q_v, causal=True)
    assert out.shape == (3, heads, latent)
    assert_close("out", out, expected, tolerance_for(torch.float16))
    assert_close("lse", lse, expected_lse, LSE_TOL)


def test_block_table_needs_seqused_k():
    args = paged_batch()
    args.pop("seqused_k")
    with pytest.raises(ValueError, match="seqused_k: required with block_table"):
        swattn_vllm.flash_attn_varlen_func(**args, cu_seqlens_k=i32([0, 13, 33, 36]))


def test_patch_rebinds_a_backend_modules_functions():
    backend = types.ModuleType("backend")
    backend.flash_attn_varlen_func = original_attention = object()
    backend.get_scheduler_metadata = original_metadata = object()
    replaced = swattn_vllm.patch(backend)
    assert replaced == {"flash_attn_varlen_func": original_attention, "get_scheduler_metadata": original_metadata}
    assert backend.flash_attn_varlen_func is swattn_vllm.flash_attn_varlen_func
    assert backend.get_scheduler_metadata is swattn_vllm.get_scheduler_metadata
    with pytest.raises(AttributeError, match="no get_scheduler_metadata"):
        swattn_vllm.patch(types.SimpleNamespace(flash_attn_varlen_func=None))
    # vLLM's backend asks for the metadata with FlashAttention 3's arguments less attention_chunk.
    metadata = backend.get_scheduler_metadata(3, 5, 20, H, HK, D, i32([13, 20, 3]), qkv_dtype=torch.float16,
                                              cu_seqlens_q=i32([0, 5, 6, 9]), page_size=PAGE, causal=True,
                                              window_size=[6, 0])
    assert isinstance(metadata, torch.Tensor)
