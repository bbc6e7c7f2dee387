"""The oracle: plain PyTorch attention in float64 (or float32) for every feature the kernels implement.

Built on ``swattn.window.is_visible``; tests, benchmarks, the demo and the CPU path of the public API use it.
"""

from __future__ import annotations

import math

import torch

from swattn.window import is_visible, normalize_window


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one batch: q ``[B, Sq, H, D]``, k/v ``[B, Sk, Hk, D]`` -> (out ``[B, Sq, H, D]`` in q's dtype,
    lse ``[B, H, Sq]`` fp32).

    GQA/MQA by repeating KV heads; bottom-right window; ``softcap * tanh(s / softcap)``; ``sinks [H]`` join the
    denominator as one extra logit per query head (no value). Rows that see nothing give 0 and LSE -inf (= sink
    with sinks).
    """
    left, right = normalize_window(causal, window_size)
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_kv_heads = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    group = num_heads // num_kv_heads
    qf = q.to(compute_dtype)
    kf = k.to(compute_dtype).repeat_interleave(group, dim=2)
    vf = v.to(compute_dtype).repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    rows = torch.arange(seqlen_q, device=q.device)[:, None]
    cols = torch.arange(seqlen_k, device=q.device)[None, :]
    visible = is_visible(rows, cols, seqlen_q, seqlen_k, left, right)  # [Sq, Sk]
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        sink_col = sinks.to(compute_dtype).view(1, num_heads, 1, 1).expand(batch, num_heads, seqlen_q, 1)
        scores = torch.cat([scores, sink_col], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)  # -inf for rows with nothing to see
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
    if sinks is not None:
        probs = probs[..., :seqlen_k]
    out = torch.einsum("bhqk,bkhd->bqhd", probs, vf)
    return out.to(q.dtype), lse.to(torch.float32)


def attention_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    seqused_k: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen attention: q ``[total_q, H, D]``, k/v ``[total_k, Hk, D]`` -> (out ``[total_q, H, D]``,
    lse ``[H, total_q]``), one sequence at a time through ``attention_ref``."""
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        k_len = ck[b + 1] - ck[b] if seqused_k is None else int(seqused_k[b])
        o_b, l_b = attention_ref(q[cq[b]:cq[b + 1]][None], k[ck[b]:ck[b] + k_len][None],
                                 v[ck[b]:ck[b] + k_len][None], **kwargs)
        out[cq[b]:cq[b + 1]] = o_b[0]
        lse[:, cq[b]:cq[b + 1]] = l_b[0]
    return out, lse


def gather_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seqlens_k: torch.Tensor,
    *,
    cache_batch_idx: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values each sequence sees in a contiguous or paged cache, as ``[(k_b [Sk_b, Hk, D], v_b)]``."""
    result = []
    for b, length in enumerate(seqlens_k.tolist()):
        positions = torch.arange(length, device=k_cache.device)
        if page_table is not None:
            page_size = k_cache.shape[1]
            pages = page_table[b, positions // page_size].long()
            result.append((k_cache[pages, positions % page_size], v_cache[pages, positions % page_size]))
        else:
            row = b if cache_batch_idx is None else int(cache_batch_idx[b])
            result.append((k_cache[row, :length], v_cache[row, :length]))
    return result


def attention_kvcache_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seqlens_k: torch.Tensor,
    *,
    cache_batch_idx: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over a KV cache whose sequence ``b`` holds ``seqlens_k[b]`` tokens (new ones already written).

    q ``[B, Sq, H, D]`` (lse ``[B, H, Sq]``) or varlen ``[total_q, H, D]`` with ``cu_seqlens_q`` (lse
    ``[H, total_q]``).
    """
    kv = gather_kv_cache(k_cache, v_cache, seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table)
    if cu_seqlens_q is None:
        outs, lses = zip(*(attention_ref(q[b:b + 1], k_b[None], v_b[None], **kwargs)
                           for b, (k_b, v_b) in enumerate(kv)))
        return torch.cat(outs), torch.cat(lses)
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    cq = cu_seqlens_q.tolist()
    for b, (k_b, v_b) in enumerate(kv):
        o_b, l_b = attention_ref(q[cq[b]:cq[b + 1]][None], k_b[None], v_b[None], **kwargs)
        out[cq[b]:cq[b + 1]] = o_b[0]
        lse[:, cq[b]:cq[b + 1]] = l_b[0]
    return out, lse


def append_kv_ref(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    cache_batch_idx: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write new tokens at positions ``cache_seqlens[b] ...`` of each sequence, in place, token by token; returns
    the key lengths after the append (int32 ``[B]``).

    New tokens are ``[B, S_new, Hk, D]`` or, with ``cu_seqlens_q``, ``[total, Hk, D]`` laid out like the queries;
    rows past ``cu_seqlens_q[-1]`` are padding and are not written.
    """
    if cu_seqlens_q is None:
        spans = [(b * k_new.shape[1], (b + 1) * k_new.shape[1]) for b in range(k_new.shape[0])]
        k_rows, v_rows = k_new.flatten(0, 1), v_new.flatten(0, 1)
    else:
        bounds = cu_seqlens_q.tolist()
        spans = list(zip(bounds[:-1], bounds[1:]))
        k_rows, v_rows = k_new, v_new
    seqlens = cache_seqlens.tolist()
    for b, (begin, end) in enumerate(spans):
        for i, token in enumerate(range(begin, end)):
            position = seqlens[b] + i
            if page_table is not None:
                page_size = k_cache.shape[1]
                row, slot = int(page_table[b, position // page_size]), position % page_size
            else:
                row, slot = (b if cache_batch_idx is None else int(cache_batch_idx[b])), position
            k_cache[row, slot] = k_rows[token]
            v_cache[row, slot] = v_rows[token]
    lengths = torch.tensor([end - begin for begin, end in spans], dtype=torch.int32, device=cache_seqlens.device)
    return (cache_seqlens.to(torch.int32) + lengths).to(torch.int32)


def attention_backward_ref(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    softmax_scale: float,
    window_size: tuple[int, int],
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The backward formula the kernels implement, in float64, on the caller's ``out`` and ``lse``.

    ``p = exp(s - lse)``, ``delta = rowsum(dout * out) - dlse``, ``ds = p * (dout @ v^T - delta)``; dsinks
    ``= -sum_rows exp(sink - lse) * delta``. With the forward's own out/lse this is the gradient of
    ``attention_ref``; with the out/lse of a larger softmax of which these keys are one part (context
    parallelism's ring) it is that part's share of the gradient. Shapes as ``attention_ref``; returns
    ``(dq, dk, dv, dsinks)`` in the inputs' dtypes, dsinks fp32 ``[H]`` or None.
    """
    left, right = normalize_window(False, window_size)
    seqlen_q, num_heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    seqlen_k, num_kv_heads = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    f64 = torch.float64
    qf, dof, of = q.to(f64), dout.to(f64), out.to(f64)
    kf = k.to(f64).repeat_interleave(group, dim=2)
    vf = v.to(f64).repeat_interleave(group, dim=2)
    lsef = lse.to(f64)  # [B, H, Sq]
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * softmax_scale
    if softcap > 0:
        capped = torch.tanh(scores / softcap)
        scores = softcap * capped
    rows = torch.arange(seqlen_q, device=q.device)[:, None]
    cols = torch.arange(seqlen_k, device=q.device)[None, :]
    visible = is_visible(rows, cols, seqlen_q, seqlen_k, left, right)
    finite = torch.isfinite(lsef)[..., None]
    probs = torch.where(visible & finite, torch.exp(scores - torch.where(finite, lsef[..., None], 0.0)), 0.0)
    delta = torch.einsum("bqhd,bqhd->bhq", dof, of)
    if dlse is not None:
        delta = delta - dlse.to(f64)
    dprobs = torch.einsum("bqhd,bkhd->bhqk", dof, vf)
    dscores = probs * (dprobs - delta[..., None])
    if softcap > 0:
        dscores = dscores * (1 - capped * capped)
    dq = torch.einsum("bhqk,bkhd->bqhd", dscores, kf) * softmax_scale
    dk = torch.einsum("bhqk,bqhd->bkhd", dscores, qf) * softmax_scale
    dv = torch.einsum("bhqk,bqhd->bkhd", probs, dof)
    batch = q.shape[0]
    dk = dk.view(batch, seqlen_k, num_kv_heads, group, head_dim).sum(3)
    dv = dv.view(batch, seqlen_k, num_kv_heads, group, head_dim).sum(3)
    dsinks = None
    if sinks is not None:
        sink_probs = torch.where(finite[..., 0], torch.exp(sinks.to(f64).view(1, -1, 1) - lsef), 0.0)
        dsinks = -(sink_probs * delta).sum((0, 2)).to(torch.float32)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dsinks
