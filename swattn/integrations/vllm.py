"""vLLM's FlashAttention entry points (``vllm.vllm_flash_attn``), served by swattn.

vLLM's FlashAttention backend calls its own fork's ``flash_attn_varlen_func``, whose signature differs from
FlashAttention 3's: the paged cache comes as ``k``/``v`` with ``block_table`` and ``seqused_k`` (the keys of each
sequence, the step's new tokens already written by ``reshape_and_cache_flash``), the result goes into ``out``, the
sinks are ``s_aux`` and ``fa_version`` picks a build. These functions take that signature and run swattn, so a
backend switches by rebinding two names::

    import vllm.v1.attention.backends.flash_attn as backend
    import swattn.integrations.vllm as swattn_vllm
    swattn_vllm.patch(backend)  # backend.flash_attn_varlen_func / get_scheduler_metadata now call swattn

Mapping: ``block_table`` (or ``seqused_k`` over a ``[B, S, Hk, D]`` cache) is ``swattn.flash_attn_with_kvcache``
with ``cu_seqlens_q``, ``cache_seqlens=seqused_k`` and no new tokens (each sequence's queries are its last
``seqused_k`` keys' positions: bottom-right alignment, as in FlashAttention); ``cu_seqlens_k`` (prefill over packed
keys) is ``swattn.flash_attn_varlen_func``. ``window_size`` may be a list or None (no window). ``q_v`` (vLLM's MLA
backend: D 64 rope dims, Dv 512) is swattn's ``qv``. Errors name vLLM's arguments. Refused with
``NotImplementedError`` naming the argument: ``dropout_p`` other than 0, ``alibi_slopes``, decode context
parallelism (``cp_world_size`` > 1) and FlashAttention 4's ``output_scale``, ``mask_mod``,
``aux_tensors``, ``dynamic_causal``. ``return_attn_probs`` and ``deterministic`` are accepted and change nothing (as
in vLLM's FA3 branch). ``out`` is swattn's ``out=``: the kernels write into it (contiguous, 16-byte aligned, the
output's shape and dtype, as vLLM's output buffer slices are). This module does not import vLLM.
"""

from __future__ import annotations

import torch

import swattn

__all__ = ["flash_attn_varlen_func", "get_scheduler_metadata", "patch"]

# swattn's argument names in its error messages, as vLLM's caller knows them.
_VLLM_NAMES = {"sinks": "s_aux", "page_table": "block_table", "cache_seqlens": "seqused_k", "k_cache": "k",
               "v_cache": "v", "qv": "q_v"}
_FA_VERSIONS = (2, 3, 4)


def _in_vllm_names(error: Exception) -> Exception:
    """The same exception, its leading ``name:`` translated to vLLM's argument name."""
    message = str(error)
    name, colon, rest = message.partition(":")
    if not colon or name not in _VLLM_NAMES:
        return error
    return type(error)(f"{_VLLM_NAMES[name]}:{rest}")


def _window(window_size) -> tuple[int, int]:
    if window_size is None:
        return (-1, -1)
    if not isinstance(window_size, (list, tuple)) or len(window_size) != 2:
        raise ValueError(f"window_size: expected None or a pair [left, right], got {window_size!r}")
    return (window_size[0], window_size[1])


def _refuse(**named) -> None:
    for name, value in named.items():
        if value is not None:
            raise NotImplementedError(f"{name}: not supported by swattn's vLLM adapter; leave it at None")


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    max_seqlen_q: int,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_k: int,
    cu_seqlens_k: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    q_v: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: list[int] | None = None,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
    out: torch.Tensor | None = None,
    scheduler_metadata: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    num_splits: int = 0,
    output_scale: torch.Tensor | None = None,
    fa_version: int = 3,
    s_aux: torch.Tensor | None = None,
    cp_world_size: int = 1,
    cp_rank: int = 0,
    cp_tot_seqused_k: torch.Tensor | None = None,
    mask_mod=None,
    aux_tensors=None,
    dynamic_causal: torch.Tensor | None = None,
):
    """vLLM's ``vllm.vllm_flash_attn.flash_attn_varlen_func``, computed by swattn.

    q: ``[total_q, H, D]`` with ``cu_seqlens_q [B + 1]`` (int32). Keys: a paged cache ``k``, ``v`` ``[num_blocks,
    block_size, Hk, D]`` with ``block_table [B, max_blocks]`` and ``seqused_k [B]`` (int32, keys per sequence, the
    queries' own included); or a ``[B, S, Hk, D]`` cache with ``seqused_k``; or packed ``[total_k, Hk, D]`` with
    ``cu_seqlens_k``; v's head_dim Dv may differ from D. ``s_aux``: ``[H]`` sinks; ``q_v``: ``[total_q, H, Dv]``
    (MLA). Returns ``out`` ``[total_q, H, Dv]`` (written into ``out`` when given), and ``softmax_lse [H, total_q]``
    (float32) with ``return_softmax_lse``.
    """
    _refuse(alibi_slopes=alibi_slopes, output_scale=output_scale, mask_mod=mask_mod, aux_tensors=aux_tensors,
            dynamic_causal=dynamic_causal, cp_tot_seqused_k=cp_tot_seqused_k)
    if dropout_p != 0:
        raise NotImplementedError(f"dropout_p: swattn has no dropout (inference kernels); got {dropout_p!r}")
    if isinstance(fa_version, bool) or fa_version not in _FA_VERSIONS:
        raise ValueError(f"fa_version: expected one of {_FA_VERSIONS} (any selects swattn), got {fa_version!r}")
    if cp_world_size != 1 or cp_rank != 0:
        raise NotImplementedError(f"cp_world_size: decode context parallelism is not supported by swattn's vLLM "
                                  f"adapter (got cp_world_size={cp_world_size!r}, cp_rank={cp_rank!r}); "
                                  "swattn.distributed splits a sequence across ranks instead")
    if (cu_seqlens_k is None) == (seqused_k is None):
        raise ValueError("cu_seqlens_k: exactly one of cu_seqlens_k (packed keys) and seqused_k (a cache) is "
                         f"expected, got {'both' if seqused_k is not None else 'neither'}")
    if block_table is not None and seqused_k is None:
        raise ValueError("seqused_k: required with block_table (the keys of each sequence in its pages)")
    # Only the arguments the caller set: swattn's replay keys on which were passed, and each costs host time.
    optional = {name: value for name, value in (
        ("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale),
        ("softmax_scale", softmax_scale), ("sinks", s_aux), ("qv", q_v)) if value is not None}
    if softcap:
        optional["softcap"] = softcap
    if return_softmax_lse:
        optional["return_softmax_lse"] = True
    if out is not None:
        optional["out"] = out
    window = _window(window_size)
    try:
        if cu_seqlens_k is not None:
            result = swattn.flash_attn_varlen_func(
                q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, window_size=window,
                num_splits=num_splits, **optional)
        else:
            if scheduler_metadata is not None:
                optional["scheduler_metadata"] = scheduler_metadata
            result = swattn.flash_attn_with_kvcache(
                q, k, v, cache_seqlens=seqused_k, page_table=block_table, cu_seqlens_q=cu_seqlens_q,
                max_seqlen_q=max_seqlen_q, causal=causal, window_size=window, num_splits=num_splits, **optional)
    except (TypeError, ValueError, NotImplementedError) as error:
        renamed = _in_vllm_names(error)
        if renamed is error:
            raise
        raise renamed from error
    return result


def get_scheduler_metadata(
    batch_size: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_heads_q: int,
    num_heads_kv: int,
    headdim: int,
    cache_seqlens: torch.Tensor,
    qkv_dtype: torch.dtype = torch.bfloat16,
    headdim_v: int | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    page_size: int | None = None,
    max_seqlen_k_new: int = 0,
    causal: bool = False,
    window_size=(-1, -1),
    has_softcap: bool = False,
    num_splits: int = 0,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
) -> torch.Tensor:
    """vLLM's ``get_scheduler_metadata`` (FlashAttention 3's without ``attention_chunk``): swattn's plan, which
    ``flash_attn_varlen_func`` accepts and does not need (swattn plans from shapes on the host)."""
    return swattn.get_scheduler_metadata(
        batch_size, max_seqlen_q, max_seqlen_k, num_heads_q, num_heads_kv, headdim, cache_seqlens,
        qkv_dtype=qkv_dtype, headdim_v=headdim_v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k_new=cu_seqlens_k_new,
        cache_leftpad=cache_leftpad, page_size=page_size, max_seqlen_k_new=max_seqlen_k_new, causal=causal,
        window_size=_window(window_size), has_softcap=has_softcap, num_splits=num_splits, pack_gqa=pack_gqa,
        sm_margin=sm_margin)


def patch(module) -> dict:
    """Rebind ``flash_attn_varlen_func`` and ``get_scheduler_metadata`` in ``module`` (e.g.
    ``vllm.v1.attention.backends.flash_attn``, which imported them from ``vllm.vllm_flash_attn``) to swattn's.
    Returns the replaced objects by name, to undo with ``setattr``; raises AttributeError naming a missing one."""
    replaced = {}
    for name in _PATCHED:
        if not hasattr(module, name):
            raise AttributeError(f"module: {getattr(module, '__name__', module)!r} has no {name} to replace")
        replaced[name] = getattr(module, name)
    for name, function in _PATCHED.items():
        setattr(module, name, function)
    return replaced


_PATCHED = {"flash_attn_varlen_func": flash_attn_varlen_func, "get_scheduler_metadata": get_scheduler_metadata}
