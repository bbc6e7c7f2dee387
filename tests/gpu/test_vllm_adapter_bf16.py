"""bf16 on a GPU (skipped without one): ``swattn.integrations.vllm.flash_attn_varlen_func`` called as vLLM's
FlashAttention backend calls it (a mixed batch of prefill chunks and decode rows over a paged cache, gpt-oss layer
shapes, sinks, window (127, 0) and full causal, ``out=``), against the float32 reference and, where the vLLM build
of FlashAttention 3 is loadable (.peer-kernels/vllm_fa3.tar.xz unpacked into /tmp/site), against FA3 on the same
arguments.

Run with ``python -m pytest -q tests/gpu/test_vllm_adapter_bf16.py``.
"""

from __future__ import annotations

import pytest
import torch

import swattn.integrations.vllm as swattn_vllm
from swattn.reference import attention_kvcache_ref
from swattn.testing import assert_close, relative_error, tolerance_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at real sizes needs a GPU")

DEVICE, BF16 = "cuda", torch.bfloat16
HEADS, KV_HEADS, HEAD_DIM, PAGE = 64, 8, 64, 16
LSE_ATOL = 2e-3


def _fa3_or_skip():
    from swattn.bench.peers import Skip, _fa3_forward
    try:
        return _fa3_forward()
    except Skip as reason:
        pytest.skip(str(reason))


def _step(seed: int):
    """Sequences of 1 (decode), 37 and 300 (prefill chunks) new tokens over 1-3000 cached ones, page tables of
    shuffled pages."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q_lens = [1] * 12 + [37, 300, 1, 5]
    cached = torch.randint(0, 3000, (len(q_lens),), generator=generator, device="cpu").tolist()
    cached[:2] = [0, 127]
    k_lens = [c + n for c, n in zip(cached, q_lens)]
    max_pages = -(-max(k_lens) // PAGE)
    num_pages = len(q_lens) * max_pages
    k_cache = torch.randn(num_pages, PAGE, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    v_cache = torch.randn(num_pages, PAGE, KV_HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    table = torch.randperm(num_pages, device=DEVICE).view(len(q_lens), max_pages).to(torch.int32)
    cu_q = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
    q = torch.randn(sum(q_lens), HEADS, HEAD_DIM, device=DEVICE).to(BF16)
    sinks = torch.randn(HEADS, device=DEVICE).to(BF16)
    return dict(q=q, k=k_cache, v=v_cache, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                seqused_k=torch.tensor(k_lens, device=DEVICE, dtype=torch.int32), max_seqlen_k=max(k_lens),
                block_table=table), sinks


@pytest.mark.parametrize("window_size", [[127, 0], None], ids=["W127_0", "full"])
def test_vllm_backend_call_matches_reference_and_fa3(window_size):
    args, sinks = _step(seed=7 if window_size else 8)
    scale = HEAD_DIM ** -0.5
    out = torch.full_like(args["q"], float("nan"))
    result, lse = swattn_vllm.flash_attn_varlen_func(
        **args, softmax_scale=scale, causal=True, window_size=window_size, out=out, s_aux=sinks, fa_version=3,
        num_splits=0, return_softmax_lse=True)
    assert result is out
    window = (-1, -1) if window_size is None else tuple(window_size)
    expected, expected_lse = attention_kvcache_ref(
        args["q"].float(), args["k"].float(), args["v"].float(), args["seqused_k"], page_table=args["block_table"],
        cu_seqlens_q=args["cu_seqlens_q"], softmax_scale=scale, causal=True, window_size=window, sinks=sinks.float())
    assert_close("out", out, expected, tolerance_for(BF16))
    torch.testing.assert_close(lse, expected_lse, atol=LSE_ATOL, rtol=0)

    forward = _fa3_or_skip()
    # vLLM's FA3 branch, argument for argument (vllm_flash_attn_interface_reference.py in the tarball).
    fa3_out = forward(args["q"], args["k"], args["v"], None, None, None, None, args["cu_seqlens_q"], None, None, None,
                      args["seqused_k"], args["max_seqlen_q"], args["max_seqlen_k"], args["block_table"], None, None,
                      None, None, None, None, None, None, scale, True, window[0], window[1], 0.0, True, None, 0,
                      None, 0, sinks, 1, 0, None)[0]
    # Both are bf16 roundings of the same attention: each within the bf16 tolerance of the reference, and of
    # each other.
    assert_close("FA3 out", fa3_out, expected, tolerance_for(BF16))
    assert relative_error(out, fa3_out) <= tolerance_for(BF16)
