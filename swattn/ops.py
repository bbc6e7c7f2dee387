"""torch.library custom ops: the one place where swattn meets the dispatcher (torch.compile, CUDA graphs, opcheck).

``swattn::fwd`` (dense and varlen prefill; differentiable, its autograd formula calls ``swattn::bwd``) and
``swattn::fwd_kvcache`` (mutates the caches when new k/v are appended). CUDA tensors run the Triton kernels; CPU
tensors run them under ``TRITON_INTERPRET=1`` and the float64 reference otherwise (the backward then differentiates
the reference with torch.autograd). The fake implementations derive shapes from ``output_shapes``, which the real
path uses too. Arguments arrive already checked by ``swattn.interface``.
"""

from __future__ import annotations

import torch

from swattn import reference
from swattn._compat import uses_triton
from swattn.kernels.append import append_kv
from swattn.kernels.bwd import attention_backward
from swattn.kernels.fwd import attention_forward


def lse_shape(q: torch.Tensor, varlen_q: bool) -> tuple[int, ...]:
    """LSE is ``[B, H, Sq]`` for dense q ``[B, Sq, H, D]`` and ``[H, total_q]`` for varlen q ``[total_q, H, D]``."""
    if varlen_q:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


def _like_fake(q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's results in the layouts the fake implementations promise (``empty_like(q)`` and a contiguous
    LSE): compiled graphs assert them, and the reference builds its output as a transposed view."""
    return torch.empty_like(q).copy_(out), lse.contiguous()


def _reference_kwargs(softmax_scale: float, left: int, right: int, softcap: float, sinks):
    return dict(softmax_scale=softmax_scale, window_size=(left, right), softcap=softcap, sinks=sinks)


@torch.library.custom_op("swattn::fwd", mutates_args=(), device_types=None)
def fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    seqused_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    left: int,
    right: int,
    softcap: float,
    pack_gqa: bool,
    num_splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (q ``[B, Sq, H, D]``) or varlen (q ``[total_q, H, D]`` with cu_seqlens) forward -> (out, lse)."""
    varlen = cu_seqlens_q is not None
    if not uses_triton(q):
        kwargs = _reference_kwargs(softmax_scale, left, right, softcap, sinks)
        if varlen:
            result = reference.attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k=seqused_k,
                                                    **kwargs)
        elif seqused_k is not None:
            result = reference.attention_kvcache_ref(q, k, v, seqused_k, **kwargs)
        else:
            result = reference.attention_ref(q, k, v, **kwargs)
        return _like_fake(q, *result)
    out, lse, _ = attention_forward(
        q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
        seqlens_k=seqused_k, pack_gqa=pack_gqa, num_splits=num_splits, return_lse=True)
    return out, lse


@fwd.register_fake
def _fwd_fake(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
              left, right, softcap, pack_gqa, num_splits):
    return torch.empty_like(q), q.new_empty(lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)


def _reference_backward(dout, q, k, v, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, softmax_scale, left, right,
                        softcap):
    """The backward of the float64 reference (CPU without the interpreter).

    ``torch.func.vjp``, not ``torch.autograd.grad``: a custom op's implementation runs below the autograd dispatch
    keys, where tensors do not record a graph; a function transform differentiates there all the same.
    """
    def forward(q64, k64, v64, *sinks64):
        kwargs = _reference_kwargs(softmax_scale, left, right, softcap, sinks64[0] if sinks64 else None)
        if cu_seqlens_q is not None:
            return reference.attention_varlen_ref(q64, k64, v64, cu_seqlens_q, cu_seqlens_k, seqused_k=seqused_k,
                                                  **kwargs)
        if seqused_k is not None:
            return reference.attention_kvcache_ref(q64, k64, v64, seqused_k, **kwargs)
        return reference.attention_ref(q64, k64, v64, **kwargs)

    inputs = [t.to(torch.float64) for t in (q, k, v)]
    if sinks is not None:
        inputs.append(sinks.to(torch.float64))
    (out, lse), vjp = torch.func.vjp(forward, *inputs)
    grad_lse = torch.zeros_like(lse) if dlse is None else dlse.to(lse.dtype)
    grads = vjp((dout.to(out.dtype), grad_lse))
    dq, dk, dv = (g.to(t.dtype) for g, t in zip(grads[:3], (q, k, v)))
    dsinks = grads[3].to(torch.float32) if sinks is not None else q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, dsinks


@torch.library.custom_op("swattn::bwd", mutates_args=(), device_types=None)
def bwd(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    sinks: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    seqused_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    left: int,
    right: int,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``swattn::fwd`` -> (dq, dk, dv, dsinks); dsinks is fp32 ``[H]``, or empty without sinks."""
    if not uses_triton(q):
        return _reference_backward(dout, q, k, v, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, softmax_scale,
                                   left, right, softcap)
    dq, dk, dv, dsinks = attention_backward(
        dout, q, k, v, out, lse, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
        seqused_k=seqused_k, dlse=dlse)
    return dq, dk, dv, dsinks if dsinks is not None else q.new_empty(0, dtype=torch.float32)


@bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
              max_seqlen_k, softmax_scale, left, right, softcap):
    dsinks = q.new_empty(0 if sinks is None else sinks.shape[0], dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks


def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale, left, right,
     softcap, pack_gqa, num_splits) = inputs
    out, lse = output
    # Unused outputs (usually the LSE) then arrive as None instead of a tensor of zeros to read.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k)
    ctx.scalars = dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, softmax_scale=softmax_scale, left=left,
                       right=right, softcap=softcap)


def _fwd_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dsinks = bwd(grad_out, q, k, v, out, lse, grad_lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k,
                             **ctx.scalars)
    dsinks = dsinks.to(sinks.dtype) if sinks is not None and ctx.needs_input_grad[3] else None
    # One gradient per input of swattn::fwd: q, k, v, sinks, then 11 non-differentiable arguments.
    return (dq, dk, dv, dsinks) + (None,) * 11


torch.library.register_autograd("swattn::fwd", _fwd_backward, setup_context=_fwd_setup_context)


@torch.library.custom_op("swattn::fwd_kvcache", mutates_args=("k_cache", "v_cache"), device_types=None)
def fwd_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    cache_seqlens: torch.Tensor,
    cache_batch_idx: torch.Tensor | None,
    page_table: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    max_seqlen_q: int,
    sinks: torch.Tensor | None,
    softmax_scale: float,
    left: int,
    right: int,
    softcap: float,
    pack_gqa: bool,
    num_splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cache forward: append ``k``/``v`` (if given) at ``cache_seqlens``, then attend -> (out, lse)."""
    if k is None:
        seqlens_k = cache_seqlens.to(torch.int32)
    elif uses_triton(q):
        seqlens_k = append_kv(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q)
    else:
        seqlens_k = reference.append_kv_ref(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx=cache_batch_idx,
                                            page_table=page_table, cu_seqlens_q=cu_seqlens_q)
    if not uses_triton(q):
        return _like_fake(q, *reference.attention_kvcache_ref(
            q, k_cache, v_cache, seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table,
            cu_seqlens_q=cu_seqlens_q, **_reference_kwargs(softmax_scale, left, right, softcap, sinks)))
    out, lse, _ = attention_forward(
        q, k_cache, v_cache, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, seqlens_k=seqlens_k, cache_batch_idx=cache_batch_idx,
        page_table=page_table, pack_gqa=pack_gqa, num_splits=num_splits, return_lse=True)
    return out, lse


@fwd_kvcache.register_fake
def _fwd_kvcache_fake(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
                      max_seqlen_q, sinks, softmax_scale, left, right, softcap, pack_gqa, num_splits):
    return torch.empty_like(q), q.new_empty(lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
