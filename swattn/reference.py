"""The oracle: plain PyTorch attention in float64 (or float32) for every feature the kernels implement.

Built on ``swattn.window``; tests, benchmarks, the demo and the CPU path of the public API use it. It keeps the
kernels' contract, so the CPU path without the interpreter keeps it too:

- it reads only the keys inside the windows of the rows it computes (query rows are taken in blocks of
  ``QUERY_BLOCK``, each against its visible span of keys), and of a paged cache only the page-table entries from
  the window of a sequence's first query on: entries before it may point anywhere, as for the kernels;
- a non-finite value reaches only the rows whose window holds its key, as in the kernels (not every row of the
  product through ``0 * NaN``);
- rows that see no key give 0 and LSE -inf (the sink with sinks);
- fp8 (e4m3) inputs are dequantized exactly (value times its ``[B, Hk]`` descale, in float64) before attending,
  and fp8 queries give a bf16 output, as in FlashAttention 3.
"""

from __future__ import annotations

import math

import torch

from swattn.window import first_visible_key, is_visible, normalize_window, visible_span

# Query rows per block: bounds the score matrix (and so the memory) of one step to QUERY_BLOCK x window keys.
QUERY_BLOCK = 256
# Keys with a non-finite value handled per step of the isolation (see ``_weighted_values``).
_NON_FINITE_KEYS_PER_STEP = 64
FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def dequantize(x: torch.Tensor, descale: torch.Tensor | None, heads_per_descale: int = 1) -> torch.Tensor:
    """fp8 ``x [B, S, heads, D]`` as float64 times ``descale [B, heads / heads_per_descale]`` (None = 1); other
    dtypes (no descale) as float64 unchanged. ``heads_per_descale``: query heads per KV head for q's descale."""
    if descale is None:
        return x.to(torch.float64)
    scale = descale.to(torch.float64).repeat_interleave(heads_per_descale, dim=1)  # [B, heads]
    return x.to(torch.float64) * scale[:, None, :, None]


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """An e4m3 tensor as its bytes (uint8), for indexing: gathers and scatters then work on any device whatever
    its kernels' fp8 coverage; other dtypes unchanged."""
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _from_bytes(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.view(dtype) if dtype == FP8 else t


def quantize(x: torch.Tensor, descale: torch.Tensor | None) -> torch.Tensor:
    """``x [n, Hk, D]`` into e4m3 with per-head ``descale [Hk]`` (None = 1): ``x / descale`` in float32, saturated
    to +-448, rounded to nearest even (what the append kernel does)."""
    scale = torch.ones(x.shape[-2], dtype=torch.float32, device=x.device) if descale is None else descale.float()
    return (x.float() / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def _weighted_values(probs: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``probs [B, H, Sq, Sk] @ v [B, Sk, H, D] -> [B, Sq, H, D]``, where ``probs`` is 0 at the keys a row cannot
    see: a non-finite value reaches only the rows whose window (``visible [Sq, Sk]``) holds its key. The finite
    values go through one product; the non-finite ones (rare: usually no key at all) are added key by key to the
    rows that see them, as the kernels add ``p * v`` over the keys of a row's window."""
    finite = torch.isfinite(v)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, torch.where(finite, v, 0.0))
    bad_keys = (~finite).flatten(2).any(-1).any(0).nonzero().flatten()
    for keys in bad_keys.split(_NON_FINITE_KEYS_PER_STEP):
        p = probs[..., keys].permute(0, 2, 1, 3).unsqueeze(-1)  # [B, Sq, H, n, 1]
        values = torch.where(finite[:, keys], 0.0, v[:, keys]).permute(0, 2, 1, 3).unsqueeze(1)  # [B, 1, H, n, D]
        seen = visible[:, keys].view(1, visible.shape[0], 1, keys.numel(), 1)
        out = out + torch.where(seen, p * values, 0.0).sum(3)
    return out


def _attend(q, k, v, key_start: int, seqlen_k: int, *, left: int, right: int, scale: float, softcap: float,
            sinks: torch.Tensor | None, compute_dtype: torch.dtype,
            chunk: int = 0, qv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, Sq, H, D]`` against keys ``key_start .. key_start + k.shape[1] - 1`` of a sequence of ``seqlen_k``
    keys (they must include every key a row sees) -> (out ``[B, Sq, H, Dv]`` in ``compute_dtype``,
    lse ``[B, H, Sq]``). ``qv [B, Sq, H, Dv]``: FlashAttention 3's second score term, ``qv v^T`` added to ``q k^T``
    before the scale (and so before softcap and the masks)."""
    batch, seqlen_q, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    outs, lses = [], []
    for row in range(0, max(seqlen_q, 1), QUERY_BLOCK):
        rows_end = min(row + QUERY_BLOCK, seqlen_q)
        first, span = visible_span(row, rows_end - 1, seqlen_q, seqlen_k, left, right, chunk)
        first = max(first, key_start)  # rows that see nothing may give a span outside the keys held
        end = max(first, min(first + span, key_start + k.shape[1]))
        qf = q[:, row:rows_end].to(compute_dtype)
        kf = k[:, first - key_start:end - key_start].to(compute_dtype).repeat_interleave(group, dim=2)
        vf = v[:, first - key_start:end - key_start].to(compute_dtype).repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf)
        if qv is not None:
            scores = scores + torch.einsum("bqhd,bkhd->bhqk", qv[:, row:rows_end].to(compute_dtype), vf)
        scores = scores * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        rows = torch.arange(row, rows_end, device=q.device)[:, None]
        cols = torch.arange(first, end, device=q.device)[None, :]
        visible = is_visible(rows, cols, seqlen_q, seqlen_k, left, right, chunk)  # [rows, keys]
        scores = scores.masked_fill(~visible, float("-inf"))
        if sinks is not None:
            sink_col = sinks.to(compute_dtype).view(1, num_heads, 1, 1).expand(batch, num_heads, rows_end - row, 1)
            scores = torch.cat([scores, sink_col], dim=-1)
        lse = torch.logsumexp(scores, dim=-1)  # -inf for rows with nothing to see
        probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
        if sinks is not None:
            probs = probs[..., :end - first]
        outs.append(_weighted_values(probs, vf, visible))
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=2)


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
    attention_chunk: int = 0,
    key_start: int = 0,
    seqlen_k: int | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one batch: q ``[B, Sq, H, D]``, k ``[B, Sk, Hk, D]``, v ``[B, Sk, Hk, Dv]`` (Dv may differ from
    D) -> (out ``[B, Sq, H, Dv]`` in q's dtype,
    bf16 for fp8 q, lse ``[B, H, Sq]`` fp32). ``q_descale``/``k_descale``/``v_descale`` ``[B, Hk]``: fp8 inputs'
    descales (``dequantize``), None = 1. ``qv [B, Sq, H, Dv]`` (FlashAttention 3's ``qv``, MLA's second query
    term; 16-bit or float32): scores ``(q k^T + qv v^T) * softmax_scale``, the default scale then ``(D + Dv) **
    -0.5``.

    GQA/MQA by repeating KV heads; bottom-right window; ``softcap * tanh(s / softcap)``; ``sinks [H]`` join the
    denominator as one extra logit per query head (no value); ``attention_chunk`` > 0 keeps only keys in the query's
    chunk (``window.is_visible``). Rows that see nothing give 0 and LSE -inf (= sink with sinks). ``key_start`` /
    ``seqlen_k``: k/v hold only the keys ``key_start ..`` of a sequence of ``seqlen_k`` keys (default: all of
    them), which must include every key a row sees.
    """
    left, right = normalize_window(causal, window_size)
    default_dims = q.shape[-1] + (0 if qv is None else qv.shape[-1])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(default_dims)
    seqlen_k = k.shape[1] if seqlen_k is None else seqlen_k
    out_dtype = torch.bfloat16 if q.dtype == FP8 else q.dtype
    if FP8 in (q.dtype, k.dtype):
        q = dequantize(q, q_descale if q.dtype == FP8 else None, q.shape[2] // k.shape[2])
        k, v = dequantize(k, k_descale), dequantize(v, v_descale)
    out, lse = _attend(q, k, v, key_start, seqlen_k, left=left, right=right, scale=scale, softcap=softcap,
                       sinks=sinks, compute_dtype=compute_dtype, chunk=attention_chunk, qv=qv)
    return out.to(out_dtype), lse.to(torch.float32)


def attention_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    seqused_k: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen attention: q ``[total_q, H, D]``, k ``[total_k, Hk, D]``, v ``[total_k, Hk, Dv]`` -> (out
    ``[total_q, H, Dv]``, lse ``[H, total_q]``), one sequence at a time through ``attention_ref`` (``qv``
    ``[total_q, H, Dv]`` cut like q). ``seqused_q`` / ``seqused_k`` limit
    the rows / keys each sequence uses; unused rows are left 0 (lse -inf) here, unwritten by the kernels."""
    out = _zeros_out(q, v.shape[-1])
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        k_len = ck[b + 1] - ck[b] if seqused_k is None else int(seqused_k[b])
        q_end = cq[b + 1] if seqused_q is None else cq[b] + int(seqused_q[b])
        o_b, l_b = attention_ref(q[cq[b]:q_end][None], k[ck[b]:ck[b] + k_len][None],
                                 v[ck[b]:ck[b] + k_len][None], qv=None if qv is None else qv[cq[b]:q_end][None],
                                 **_descales_of(kwargs, b))
        out[cq[b]:q_end] = o_b[0]
        lse[:, cq[b]:q_end] = l_b[0]
    return out, lse


def _zeros_out(q: torch.Tensor, head_dim_v: int) -> torch.Tensor:
    """A zero output for varlen q ``[total_q, H, D]``: ``[total_q, H, Dv]`` in q's dtype (bf16 for fp8 q)."""
    return q.new_zeros((*q.shape[:-1], head_dim_v), dtype=torch.bfloat16 if q.dtype == FP8 else q.dtype)


def _descales_of(kwargs: dict, b: int) -> dict:
    """``kwargs`` with its ``[B, Hk]`` descales cut to sequence b's row ``[1, Hk]``."""
    return {name: value[b:b + 1] if name.endswith("_descale") and value is not None else value
            for name, value in kwargs.items()}


def gather_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seqlens_k: torch.Tensor,
    *,
    cache_batch_idx: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    first_keys: list[int] | None = None,
    cache_leftpad: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values of each sequence in a contiguous or paged cache, as ``[(k_b [Sk_b, Hk, D], v_b)]``:
    slots ``cache_leftpad[b] + first_keys[b] .. seqlens_k[b] - 1`` (defaults 0) of cache row ``cache_batch_idx[b]``
    (or b), which with a page table is the row of ``page_table`` that lists the sequence's pages. Page-table entries
    before the first slot's page are not read."""
    result = []
    for b, length in enumerate(seqlens_k.tolist()):
        start = 0 if cache_leftpad is None else int(cache_leftpad[b])
        first = min(start + (first_keys[b] if first_keys is not None else 0), length)
        positions = torch.arange(first, max(first, length), device=k_cache.device)
        row = b if cache_batch_idx is None else int(cache_batch_idx[b])
        if page_table is not None:
            page_size = k_cache.shape[1]
            pages = page_table[row, positions // page_size].long()
            index = (pages, positions % page_size)
        else:
            index = (row, positions)
        result.append((_from_bytes(_as_bytes(k_cache)[index], k_cache.dtype),
                       _from_bytes(_as_bytes(v_cache)[index], v_cache.dtype)))
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
    cache_leftpad: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over a KV cache whose sequence ``b`` holds ``seqlens_k[b]`` tokens (new ones already written),
    from slot ``cache_leftpad[b]`` on (key positions count from there).

    q ``[B, Sq, H, D]`` (lse ``[B, H, Sq]``) or varlen ``[total_q, H, D]`` with ``cu_seqlens_q`` (lse
    ``[H, total_q]``); ``qv`` (FlashAttention 3's second score term, see ``attention_ref``) laid out like q with
    v_cache's head_dim.
    """
    if cu_seqlens_q is None:
        queries = [q.shape[1]] * len(seqlens_k)
    else:
        bounds = cu_seqlens_q.tolist()
        queries = [end - begin for begin, end in zip(bounds[:-1], bounds[1:])]
    # Each sequence from the first key its first query sees: earlier pages may be freed (their entries hold anything).
    left, _ = normalize_window(kwargs.get("causal", False), kwargs.get("window_size", (-1, -1)))
    chunk = kwargs.get("attention_chunk", 0)
    starts = [0] * len(seqlens_k) if cache_leftpad is None else cache_leftpad.tolist()
    lengths = [length - start for length, start in zip(seqlens_k.tolist(), starts)]  # keys from the left pad on
    first_keys = [first_visible_key(0, n_q, length, left, chunk) if n_q else length
                  for n_q, length in zip(queries, lengths)]
    kv = gather_kv_cache(k_cache, v_cache, seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table,
                         first_keys=first_keys, cache_leftpad=cache_leftpad)

    def one(q_b, b, qv_b=None):
        k_b, v_b = kv[b]
        return attention_ref(q_b[None], k_b[None], v_b[None], key_start=first_keys[b], seqlen_k=lengths[b],
                             qv=None if qv_b is None else qv_b[None], **_descales_of(kwargs, b))

    if cu_seqlens_q is None:
        outs, lses = zip(*(one(q[b], b, None if qv is None else qv[b]) for b in range(len(kv))))
        return torch.cat(outs), torch.cat(lses)
    out = _zeros_out(q, v_cache.shape[-1])
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    for b in range(len(kv)):
        o_b, l_b = one(q[bounds[b]:bounds[b + 1]], b, None if qv is None else qv[bounds[b]:bounds[b + 1]])
        out[bounds[b]:bounds[b + 1]] = o_b[0]
        lse[:, bounds[b]:bounds[b + 1]] = l_b[0]
    return out, lse


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                     interleaved: bool) -> torch.Tensor:
    """Rotary embedding of ``x [n, H, D]`` at ``positions [n]`` with ``cos``/``sin [seqlen_ro, rotary_dim / 2]``,
    computed in float64 and returned in x's dtype (e4m3: saturated to +-448, as ``quantize``). Interleaved pairs
    dimensions (0, 1), (2, 3), ...; otherwise (GPT-NeoX) i and i + rotary_dim / 2. Dimensions from rotary_dim on are
    unchanged."""
    half = cos.shape[1]
    positions = positions.to(device=cos.device, dtype=torch.long)
    c = cos.double()[positions][:, None, :]  # [n, 1, rotary_dim / 2]
    s_ = sin.double()[positions][:, None, :]
    xf = x.double()
    rotated = xf.clone()
    if interleaved:
        even, odd = xf[..., 0:2 * half:2], xf[..., 1:2 * half:2]
        rotated[..., 0:2 * half:2] = even * c - odd * s_
        rotated[..., 1:2 * half:2] = even * s_ + odd * c
    else:
        first, second = xf[..., :half], xf[..., half:2 * half]
        rotated[..., :half] = first * c - second * s_
        rotated[..., half:2 * half] = second * c + first * s_
    return quantize(rotated, None) if x.dtype == FP8 else rotated.to(x.dtype)


def rotate_queries_ref(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offsets: torch.Tensor,
                       sequential: bool, interleaved: bool, cu_seqlens_q: torch.Tensor | None = None) -> torch.Tensor:
    """The queries rotated as ``flash_attn_with_kvcache`` rotates them: query i of sequence b at position
    ``offsets[b] + i`` when ``sequential`` (causal / local attention), else every query at ``offsets[b]``. q is
    ``[B, Sq, H, D]`` or varlen ``[total_q, H, D]`` with ``cu_seqlens_q`` (padding rows past its end copied)."""
    out = q.clone()
    if cu_seqlens_q is None:
        spans = [(b, None) for b in range(q.shape[0])]
    else:
        bounds = cu_seqlens_q.tolist()
        spans = list(enumerate(zip(bounds[:-1], bounds[1:])))
    for b, span in spans:
        rows = q[b] if span is None else q[span[0]:span[1]]
        positions = torch.full((rows.shape[0],), int(offsets[b]), dtype=torch.int64, device=q.device)
        if sequential:
            positions = positions + torch.arange(rows.shape[0], device=q.device)
        rotated = apply_rotary_ref(rows, cos, sin, positions, interleaved)
        if span is None:
            out[b] = rotated
        else:
            out[span[0]:span[1]] = rotated
    return out


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
    cu_seqlens_k_new: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_seqlens: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write new tokens at positions ``cache_seqlens[b] ...`` of each sequence, in place, token by token; returns
    the key lengths after the append (int32 ``[B]``).

    New tokens are ``[B, S_new, Hk, D]`` or varlen ``[total, Hk, D]`` with ``cu_seqlens_k_new`` (or, swattn's
    shorthand, laid out like the queries with ``cu_seqlens_q``); rows past the last cumulative length are padding
    and are not written. With ``rotary_cos``/``rotary_sin`` new key i of sequence b is rotated at position
    ``rotary_seqlens[b] + i`` (default ``cache_seqlens[b] + i``) before it is written. Into an e4m3 cache, fp16/bf16
    tokens are quantized (``quantize``) with ``k_descale[b]`` / ``v_descale[b]`` (``[B, Hk]``, None = 1).
    """
    quantizing = k_cache.dtype == FP8 and k_new.dtype != FP8
    cu_new = cu_seqlens_k_new if cu_seqlens_k_new is not None else (cu_seqlens_q if k_new.dim() == 3 else None)
    if cu_new is None:
        spans = [(b * k_new.shape[1], (b + 1) * k_new.shape[1]) for b in range(k_new.shape[0])]
        k_rows, v_rows = k_new.flatten(0, 1), v_new.flatten(0, 1)
    else:
        bounds = cu_new.tolist()
        spans = list(zip(bounds[:-1], bounds[1:]))
        k_rows, v_rows = k_new, v_new
    seqlens = cache_seqlens.tolist()
    rotary_offsets = seqlens if rotary_seqlens is None else rotary_seqlens.tolist()
    for b, (begin, end) in enumerate(spans):
        keys = k_rows[begin:end]
        values = v_rows[begin:end]
        if rotary_cos is not None:
            positions = torch.arange(end - begin, device=keys.device) + rotary_offsets[b]
            keys = apply_rotary_ref(keys, rotary_cos, rotary_sin, positions, rotary_interleaved)
        if quantizing:
            keys = quantize(keys, None if k_descale is None else k_descale[b])
            values = quantize(values, None if v_descale is None else v_descale[b])
        for i in range(end - begin):
            position = seqlens[b] + i
            cache_row = b if cache_batch_idx is None else int(cache_batch_idx[b])
            if page_table is not None:
                page_size = k_cache.shape[1]
                row, slot = int(page_table[cache_row, position // page_size]), position % page_size
            else:
                row, slot = cache_row, position
            _as_bytes(k_cache)[row, slot] = _as_bytes(keys[i].to(k_cache.dtype))
            _as_bytes(v_cache)[row, slot] = _as_bytes(values[i].to(v_cache.dtype))
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
    seqlen_q, num_heads = q.shape[1], q.shape[2]
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
    dk = dk.view(batch, seqlen_k, num_kv_heads, group, k.shape[-1]).sum(3)
    dv = dv.view(batch, seqlen_k, num_kv_heads, group, v.shape[-1]).sum(3)
    dsinks = None
    if sinks is not None:
        sink_probs = torch.where(finite[..., 0], torch.exp(sinks.to(f64).view(1, -1, 1) - lsef), 0.0)
        dsinks = -(sink_probs * delta).sum((0, 2)).to(torch.float32)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dsinks


def combine_ref(out_partial: torch.Tensor, lse_partial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention 3's ``flash_attn_combine`` in float64: partial results over disjoint key sets, ``out_partial
    [S, ..., D]`` and their natural-log LSEs ``lse_partial [S, ...]``, merged into ``out [..., D]`` and ``lse [...]``
    (float64). ``lse = logsumexp_s(lse_s)``, ``out = sum_s exp(lse_s - lse) * out_s``; a split with lse -inf adds
    nothing, and a row whose splits are all -inf (or that has no split) gives out 0 and lse -inf."""
    lse_partial, out_partial = lse_partial.to(torch.float64), out_partial.to(torch.float64)
    lse = torch.logsumexp(lse_partial, dim=0) if lse_partial.shape[0] else lse_partial.new_full(
        lse_partial.shape[1:], -math.inf)
    # Rows with lse -inf take the pivot 0: exp(-inf - 0) = 0 for each of their splits, never NaN.
    weight = torch.exp(lse_partial - torch.where(torch.isneginf(lse), 0.0, lse))
    out = (weight.unsqueeze(-1) * out_partial).sum(0)
    return out, lse
