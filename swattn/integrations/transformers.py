"""Hugging Face transformers backend: ``attn_implementation="swattn"``.

    import swattn.integrations.transformers  # registers "swattn" (or call register())
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="swattn")

One attention function, registered with transformers' ``AttentionInterface``, plus the mask preparation of the
flash-attention backends (``AttentionMaskInterface``): the model hands over a 2D padding mask ``[B, Skv]`` or None,
never a dense 4D mask. Each call maps HF's conventions onto the public API:

- ``sliding_window = W`` (W keys including the current one) -> ``window_size = (W - 1, 0)``
  (``swattn.window.window_size_from_sliding_window``), causal, bottom-right aligned: the keys a model passes already
  end with the new tokens (DynamicCache, its sliding-window layers, StaticCache), so prefill and decode are the same
  call;
- ``scaling`` -> ``softmax_scale``, ``softcap`` (Gemma-2 ``attn_logit_softcapping``) -> ``softcap``,
  ``s_aux`` (gpt-oss sinks, one logit per query head) -> ``sinks``;
- a padding mask -> ``flash_attn_varlen_func`` on the unpadded tokens (transformers' own flash-attention unpadding
  helpers; they synchronise with the host once per layer, as for ``flash_attention_2``); sequences packed along one
  row (``position_ids`` restarting, or ``cu_seq_lens_q/k`` + ``max_length_q/k`` kwargs) -> varlen as well;
- no padding mask but more keys than queries (a cache) -> ``flash_attn_with_kvcache`` over the keys filled up to the
  last query's position: a StaticCache hands over its whole preallocated buffer, whose tail is not yet written.

A layout the kernels cannot serve exactly takes an exact fallback for that call (``_masked_attention``, what the
eager backend computes): padding that is not one contiguous run per row where the window cuts (HF's window counts
pad positions, swattn's counts tokens; right-padded prompts that generate have such holes; decode over a
sliding-window cache layer is never cut). Raises NotImplementedError, rather than computing something else, for:
dropout > 0, ``output_attentions``, 4D or block masks, mask overlays (``or_mask_function``/``and_mask_function``,
e.g. bidirectional image tokens), a sliding window on a non-causal layer. Packed-sequence detection from
``position_ids`` and the padding check read data, so they are skipped under ``torch.compile``; pass
``cu_seq_lens_q/k`` there, and left padding only.

Chunked attention (Llama 4: ``config.layer_types[layer_idx] == "chunked_attention"``, ``attention_chunk_size``):
transformers counts a row's chunks from its first token, on absolute positions, and a chunked layer's cache hands
over only its last keys; the mask function (which alone gets the offsets) hands such a layer a positions tensor (see
``_CHUNK_KERNEL``). Exact through the kernels: a prefill from position 0 without padding (``attention_chunk``); with
padding (left or right) or over the cache (decode, extend, a static cache's sliding buffer),
``flash_attn_with_kvcache`` with ``cache_leftpad`` = the first query's chunk start (swattn counts chunks from there)
and ``cache_seqlens`` = the last query's slot + 1; with a gradient (that call has no backward) a padded prefill is
unpadded (varlen counts chunks from each sequence's first token, as transformers does). The exact fallback (what
eager computes): padding inside a chunk a query sees (right-padded prompts that generate), a cache keeping fewer
than chunk - 1 keys, a backward over a cache. Refused: a padded chunked mask made under ``torch.compile`` (checking
it reads the mask; make masks outside, as generate() does for a static cache), a chunked layer given a mask swattn's
mask function did not make. A full-attention layer of such a model over a cache without padding gets the positions
tensor too: Llama 4's decoder layer keeps ``position_ids`` from the attention, so they cannot say how much of a
static buffer is filled.

Under ``torch.compile`` (transformers compiles the decode step of a static cache on a GPU) a padding mask is not
unpadded (that reads it on the host: a graph break per layer, as for ``flash_attention_2``): without a gradient,
the call is ``flash_attn_with_kvcache`` with ``cache_leftpad`` = each row's first valid slot, so a padded batch's
decode step compiles into one graph.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input, _upad_input

from swattn.interface import check_value_head_dim, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from swattn.window import window_size_from_sliding_window

NAME = "swattn"


def _is_tracing(t: torch.Tensor) -> bool:
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def swattn_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask of the flash-attention backends: None, or the 2D padding mask sliced to the keys' length.

    transformers sets ``use_vmap`` exactly when a model adds a mask overlay (``or_mask_function`` /
    ``and_mask_function``), which a padding mask cannot carry.
    """
    if kwargs.get("use_vmap", False):
        raise NotImplementedError(
            "swattn: this model adds a custom mask overlay (or_mask_function/and_mask_function, e.g. bidirectional "
            "attention over image tokens), which swattn cannot express; use attn_implementation='sdpa' or 'eager'")
    config, local_size = kwargs.get("config"), kwargs.get("local_size")
    chunk = _chunk_of_mask(config, local_size)
    # A full-attention layer of a chunked model over a cache, without padding: Llama 4's decoder layer keeps
    # position_ids from the attention function, so how much of a static cache's buffer is filled comes from here.
    unfilled_tail = (attention_mask is None and local_size is None and kv_length > q_length
                     and getattr(config, "attention_chunk_size", None) is not None)
    if chunk is not None or unfilled_tail:
        device = kwargs.get("device", attention_mask.device if attention_mask is not None else None)
        return _key_positions(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask, chunk, device)
    return flash_attention_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask,
                                **kwargs)


def _window_size(sliding_window: int | None, is_causal: bool) -> tuple[int, int]:
    if sliding_window is not None and not is_causal:
        raise NotImplementedError(
            f"swattn: sliding_window={sliding_window} on a non-causal (bidirectional) layer is not supported; "
            "transformers' backends disagree on its width")
    return window_size_from_sliding_window(sliding_window)


def _contiguous_padding(mask: torch.Tensor) -> bool:
    """Whether each row's valid keys are one run (swattn's window counts tokens, HF's counts positions: they agree
    exactly then)."""
    length = mask.shape[-1]
    positions = torch.arange(length, device=mask.device)
    count = mask.sum(-1)
    first = torch.where(mask, positions, length).amin(-1)
    last = torch.where(mask, positions, -1).amax(-1)
    return bool(((count == 0) | (last - first + 1 == count)).all())


def _masked_attention(q, k, v, mask: torch.Tensor, sliding_window: int | None, is_causal: bool, scaling: float,
                      softcap: float, sinks: torch.Tensor | None) -> torch.Tensor:
    """The fallback for a layout the kernels cannot serve exactly (padding inside a sequence where the window cuts):
    attention as transformers' eager backend computes it, from the padding mask ``[B, L]`` whose last position is
    the last query's. HF's window counts positions, pad ones included; rows that see nothing give 0.
    q ``[B, Sq, H, D]``, k/v ``[B, Skv, H, D]`` (keys past ``L`` are unfilled cache slots) -> ``[B, Sq, H, D]``."""
    batch, seqlen_q = q.shape[:2]
    length = mask.shape[-1]
    keys = torch.arange(k.shape[1], device=q.device)
    query_positions = torch.arange(length - seqlen_q, length, device=q.device)[:, None]  # [Sq, 1]
    allowed = (keys < length)[None, :].expand(seqlen_q, -1)
    if is_causal:
        allowed = allowed & (keys[None, :] <= query_positions)
    if sliding_window is not None:
        allowed = allowed & (query_positions - keys[None, :] < sliding_window)
    padding = torch.zeros(batch, k.shape[1], dtype=torch.bool, device=q.device)
    padding[:, :length] = mask
    return _attend(q, k, v, allowed[None] & padding[:, None, :], scaling, softcap, sinks)


def _attend(q, k, v, allowed: torch.Tensor, scaling: float, softcap: float, sinks: torch.Tensor | None) -> torch.Tensor:
    """Dense attention (float32) over the keys ``allowed [B, Sq, Skv]`` lets each query see; rows that see nothing
    give 0 (or attend to the sink only). q ``[B, Sq, H, D]``, k/v ``[B, Skv, Hk, D]`` -> ``[B, Sq, H, D]``."""
    batch, seqlen_q, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    kf = k.transpose(1, 2).repeat_interleave(group, dim=1).float()
    vf = v.transpose(1, 2).repeat_interleave(group, dim=1).float()
    scores = torch.matmul(q.transpose(1, 2).float(), kf.transpose(-1, -2)) * scaling  # [B, H, Sq, Skv]
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.float().view(1, -1, 1, 1).expand(batch, -1, seqlen_q, 1)], dim=-1)
    peak = scores.amax(-1, keepdim=True)
    probs = torch.exp(scores - torch.where(torch.isinf(peak), 0.0, peak))
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    out = torch.matmul(probs[..., :k.shape[1]], vf)
    return out.transpose(1, 2).to(q.dtype)


# Chunked attention (Llama 4: config.attention_chunk_size, config.layer_types[i] == "chunked_attention").
#
# transformers' chunked mask puts query (absolute index i) and key (j) in one chunk iff
# (j - left_pad) // chunk == (i - left_pad) // chunk, with left_pad a row's leading pad tokens: chunks count from each
# row's first token, on absolute indices (holes inside a row count). A chunked layer's cache
# (Dynamic/StaticSlidingWindowLayer, window = chunk) hands over only its last keys, so the attention function needs
# the absolute positions, which transformers gives the mask function (q_offset, kv_offset, the whole 2D mask) and not
# the attention function (Llama 4's decoder layer keeps position_ids). ``swattn_mask`` therefore hands a chunked layer
# an integer tensor ``[B, Skv + 1]`` instead of a padding mask: key slot s's chunk coordinate (absolute index - left
# pad; -1 for padding and unfilled slots), then the slot after the last query's (the keys are written at the queries'
# slots, which end there). Its dtype says how to compute the call: int32 = the kernels serve it exactly, int64 = the
# exact fallback (decided where the mask is made, which reads the 2D mask there, not in the traced decode step).
_CHUNK_KERNEL = torch.int32
_CHUNK_FALLBACK = torch.int64


def _layer_chunk(module: torch.nn.Module) -> int | None:
    """``config.attention_chunk_size`` for a layer whose ``config.layer_types[layer_idx]`` is "chunked_attention",
    else None."""
    config = getattr(module, "config", None)
    chunk = getattr(config, "attention_chunk_size", None)
    if chunk is None:
        return None
    layer_types, layer_idx = getattr(config, "layer_types", None), getattr(module, "layer_idx", None)
    if layer_types is None or layer_idx is None:
        raise NotImplementedError(
            f"swattn: config.attention_chunk_size = {chunk} but which layers are chunked is unknown (needs "
            "config.layer_types and the attention module's layer_idx)")
    return chunk if layer_types[layer_idx] == "chunked_attention" else None


def _chunk_of_mask(config, local_size) -> int | None:
    """The chunk size when transformers asks for a chunked layer's mask (``create_chunked_causal_mask`` passes
    ``local_size = attention_chunk_size``; sliding-window masks pass their window as ``local_size``), else None."""
    chunk = getattr(config, "attention_chunk_size", None)
    layer_types = getattr(config, "layer_types", None) or ()
    if local_size is None or chunk is None or local_size != chunk or "chunked_attention" not in layer_types:
        return None
    if "sliding_attention" in layer_types and getattr(config, "sliding_window", None) == chunk:
        raise NotImplementedError(
            f"swattn: sliding_window and attention_chunk_size are both {chunk}: the mask function cannot tell a "
            "sliding-window layer's mask from a chunked layer's")
    return chunk


def _chunk_bounds(key_positions: torch.Tensor, seqlen: torch.Tensor, seqlen_q: int, chunk: int | None):
    """For the positions tensor's keys ``[B, Skv]`` and query end ``seqlen [B]``: each row's first key slot that a
    valid query sees (the chunk start of its first valid query; ``seqlen`` for a row without one; 0 without chunks),
    each query's slot and chunk coordinate ``[B, Sq]`` (-1 for a pad query). No host reads."""
    query_slots = seqlen[:, None] - seqlen_q + torch.arange(seqlen_q, device=seqlen.device)
    query_positions = key_positions.gather(1, query_slots)
    if not chunk:
        return torch.zeros_like(seqlen), query_slots, query_positions
    starts = torch.where(query_positions >= 0, query_slots - query_positions % chunk, seqlen[:, None])
    return starts.amin(-1), query_slots, query_positions


def _key_positions(batch: int, q_length: int, kv_length: int, q_offset, kv_offset, attention_mask,
                   chunk: int | None, device) -> torch.Tensor | None:
    """``swattn_mask`` for a chunked layer (or, ``chunk`` None, a full layer over a cache without padding): None when
    the keys are the queries from absolute position 0 without padding (the call is then ``attention_chunk = chunk``
    as it is), else the positions tensor described above."""
    if chunk is not None and (not isinstance(q_offset, int) or not isinstance(kv_offset, int)):
        raise NotImplementedError(
            f"swattn: chunked attention needs the cache's offsets as ints (got q_offset={q_offset!r}, "
            f"kv_offset={kv_offset!r}); transformers' sliding-window cache layers give them so")
    total = q_offset + q_length  # tokens so far, these queries included (a 0-dim tensor for a static cache)
    if attention_mask is not None and _is_tracing(attention_mask):
        raise NotImplementedError(
            "swattn: a chunked layer's mask with padding made under torch.compile (checking that the padding leaves "
            "each chunk whole reads the mask); make the masks outside the compiled region, as generate() does for a "
            "static cache")
    if attention_mask is not None and attention_mask.shape[-1] != total:
        raise NotImplementedError(
            f"swattn: a chunked layer's 2D attention_mask covers {attention_mask.shape[-1]} positions, expected the "
            f"{total} tokens seen so far (the cache's q_offset={q_offset} + {q_length} queries): without the cache "
            "that holds them, the mask does not say which tokens the keys are (a forward given the whole history's "
            "mask but no cache: transformers 5.17 takes the cache as past_key_values= and ignores cache=, which "
            "5.24 takes)")
    unpadded = attention_mask is None or bool(attention_mask.all())
    if unpadded and isinstance(q_offset, int) and q_offset == 0 and kv_offset == 0 and kv_length == q_length:
        return None
    absolute = torch.arange(kv_length, device=device) + kv_offset
    if attention_mask is None:
        valid = (absolute < total)[None, :].expand(batch, -1)
        left_pad = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        mask = attention_mask.to(device=device, dtype=torch.bool)
        left_pad = (mask.cumsum(-1) == 0).sum(-1)  # transformers' left_padding_tokens
        valid = (absolute < total)[None, :] & mask[:, absolute.clamp(max=total - 1)]
    key_positions = torch.where(valid, absolute[None, :] - left_pad[:, None], -1)
    seqlen = torch.as_tensor(total - kv_offset, device=device).to(torch.long).expand(batch, 1)
    # Fewer than chunk - 1 keys before the first query (a cache dropping keys of the current chunk): swattn's chunks
    # would count from slot 0, off the true boundaries. transformers' chunked cache layers always keep chunk - 1.
    exact = chunk is None or kv_offset == 0 or q_offset - kv_offset >= chunk - 1
    if exact and not unpadded:
        # The kernels see every key slot from a row's first query's chunk start to its query: exact when none of
        # those up to the last valid query is padding (left or right padding; not holes a chunk spans).
        first, query_slots, query_positions = _chunk_bounds(key_positions, seqlen[:, 0], q_length, chunk)
        last = torch.where(query_positions >= 0, query_slots, -1).amax(-1)
        slots = absolute - kv_offset
        holes = (key_positions < 0) & (slots[None, :] >= first[:, None]) & (slots[None, :] <= last[:, None])
        exact = not bool(holes.any())
    return torch.cat([key_positions, seqlen], dim=-1).to(_CHUNK_KERNEL if exact else _CHUNK_FALLBACK)


def _chunked_masked_attention(q, k, v, key_positions: torch.Tensor, seqlen: torch.Tensor, chunk: int | None,
                              sliding_window: int | None, scaling: float, softcap: float,
                              sinks: torch.Tensor | None) -> torch.Tensor:
    """The exact fallback of a chunked layer, as transformers' eager computes it: query i (slot ``seqlen - Sq + i``)
    sees the valid keys up to its slot whose chunk coordinate (absolute position - left padding) lies in its chunk."""
    first, query_slots, query_positions = _chunk_bounds(key_positions, seqlen, q.shape[1], chunk)
    slots = torch.arange(k.shape[1], device=q.device)
    keys, queries = key_positions[:, None, :], query_positions[:, :, None]
    allowed = (keys >= 0) & (queries >= 0) & (slots <= query_slots[:, :, None])
    if chunk:
        allowed = allowed & (keys // chunk == queries // chunk)
    if sliding_window is not None:
        allowed = allowed & (query_slots[:, :, None] - slots < sliding_window)
    return _attend(q, k, v, allowed, scaling, softcap, sinks)


def _packed_sequences(position_ids: torch.Tensor | None, batch: int, seqlen: int):
    """``(cu_seqlens, max_seqlen)`` when ``position_ids`` restart inside a row (packed sequences), else None."""
    if position_ids is None or position_ids.dim() != 2 or seqlen <= 1 or _is_tracing(position_ids):
        return None
    positions = position_ids.expand(batch, seqlen)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    if not bool(starts[:, 1:].any()):
        return None
    begin = starts.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([begin, begin.new_tensor([batch * seqlen])]).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _filled_keys(position_ids: torch.Tensor | None, batch: int, num_keys: int) -> torch.Tensor | None:
    """Per row, how many of the ``num_keys`` keys a layer hands over hold tokens when there is no padding mask:
    the last query's position + 1, at most ``num_keys`` (int32 ``[B]``), or None without 2D ``position_ids``.
    Key slot = position in a static cache's full-attention layer (whose unfilled tail must not be read) and while a
    sliding-window layer is not yet full; once full, or in a dynamic cache, every key handed over is filled."""
    if position_ids is None or position_ids.dim() != 2:
        return None
    last = position_ids[:, -1].expand(batch) + 1
    return last.clamp(max=num_keys).to(torch.int32)


def swattn_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: q ``[B, H, Sq, D]``, k/v ``[B, Hk, Skv, D]`` -> (``[B, Sq, H, D]``, None)."""
    if dropout > 0:
        raise NotImplementedError(f"swattn: attention dropout is not supported (got dropout={dropout}); "
                                  "call model.eval() or set attention_dropout=0")
    if kwargs.get("output_attentions", False):
        raise NotImplementedError("swattn: output_attentions=True is not supported (no attention matrix is formed)")
    chunk = _layer_chunk(module)
    # swattn_mask's positions tensor (see above): only in a chunked model, one column more than the keys (a padding
    # mask has at most as many), integer.
    integer_2d = (getattr(getattr(module, "config", None), "attention_chunk_size", None) is not None
                  and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2
                  and attention_mask.dtype in (_CHUNK_KERNEL, _CHUNK_FALLBACK))
    positions = integer_2d and attention_mask.shape[-1] == key.shape[2] + 1
    if chunk is not None and attention_mask is not None and not positions:
        if integer_2d:
            raise NotImplementedError(
                f"swattn: a chunked-attention layer got {key.shape[2]} keys but a positions tensor made for "
                f"{attention_mask.shape[-1] - 1} (a cache layer handing over more keys than its get_mask_sizes "
                "announced: transformers 5.17's DynamicSlidingWindowLayer does so while it records the past without "
                "a crop in between, as an assistant model's cache in assisted generation; 5.24's hands over the keys "
                "the mask describes)")
        raise NotImplementedError(
            "swattn: a chunked-attention layer needs the positions tensor swattn's mask function makes (the 2D "
            "padding mask alone does not say where the chunks start); got a mask made otherwise")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        kind = type(attention_mask).__name__ if not isinstance(attention_mask, torch.Tensor) else "4D mask"
        raise NotImplementedError(
            f"swattn: got a {kind}; only padding masks [B, Skv] (prepared by transformers for 'swattn') are "
            "supported, not custom dense or block masks")
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    window_size = _window_size(sliding_window, is_causal)
    sinks = s_aux if s_aux is not None else getattr(module, "sinks", None)
    options = dict(softmax_scale=scaling, causal=is_causal, window_size=window_size, softcap=softcap or 0.0,
                   sinks=sinks if isinstance(sinks, torch.Tensor) else None)
    if chunk is not None:
        if not is_causal:
            raise NotImplementedError("swattn: chunked attention on a non-causal layer")
        options["attention_chunk"] = chunk

    batch, seqlen_q = query.shape[0], query.shape[2]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S, H, D]
    head_dim, v_head_dim = q.shape[-1], v.shape[-1]
    if v_head_dim != head_dim and not _takes_value_head_dim(head_dim, v_head_dim, v.dtype):
        if v_head_dim > head_dim:
            raise NotImplementedError(f"swattn: value head_dim {v_head_dim} with query head_dim {head_dim}")
        # Zero columns of V give zero output columns, cropped below (as flash_attention_2 does).
        v = torch.nn.functional.pad(v, [0, head_dim - v_head_dim])

    if positions:
        key_positions, seqlen = attention_mask[:, :-1], attention_mask[:, -1].long()
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        # flash_attn_with_kvcache has no backward. A padded prefill (the keys are these queries; each row's tokens one
        # run from position 0, as int32 says) unpads instead: varlen counts chunks from each sequence's first token,
        # as transformers does. Otherwise (over a cache, or padding inside a chunk) the exact fallback.
        unpad = (needs_grad and attention_mask.dtype == _CHUNK_KERNEL and k.shape[1] == seqlen_q
                 and sliding_window is None and not _is_tracing(attention_mask))
        if unpad:
            attention_mask = key_positions >= 0
        elif attention_mask.dtype == _CHUNK_FALLBACK or needs_grad:
            out = _chunked_masked_attention(q, k, v, key_positions.long(), seqlen, chunk, sliding_window,
                                            options["softmax_scale"] or head_dim ** -0.5, options["softcap"],
                                            options["sinks"])
            return out[..., :v_head_dim], None
        else:
            # Each row's keys from its first valid query's chunk start (a chunk boundary: swattn counts chunks from
            # cache_leftpad) up to the last query's slot; the queries end there (bottom-right).
            first, _, _ = _chunk_bounds(key_positions.long(), seqlen, seqlen_q, chunk)
            out = flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlen.to(torch.int32),
                                          cache_leftpad=first.to(torch.int32) if chunk else None, **options)
            return out[..., :v_head_dim], None
    if chunk is not None and k.shape[1] != seqlen_q and kwargs.get("cu_seq_lens_q") is None:
        raise NotImplementedError(
            "swattn: a chunked layer over cached keys without swattn's positions tensor (attention_mask is None): "
            "where its chunks start is unknown")
    if attention_mask is not None:
        mask = attention_mask.bool()
        if mask.shape[-1] > k.shape[1]:
            raise ValueError(f"attention_mask: covers {mask.shape[-1]} keys but only {k.shape[1]} were given")
        # Up to left + 1 keys, the window cuts nothing (decode over a sliding-window cache layer), so padding anywhere
        # gives HF's answer. Padding inside a sequence where the window cuts (right-padded prompts that generate):
        # HF's window counts the pad positions, swattn's would not, so that call takes the exact fallback.
        if 0 <= window_size[0] < mask.shape[-1] - 1 and not _is_tracing(mask) and not _contiguous_padding(mask):
            out = _masked_attention(q, k, v, mask, sliding_window, is_causal, options["softmax_scale"] or
                                    head_dim ** -0.5, options["softcap"], options["sinks"])
            return out[..., :v_head_dim], None
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if _is_tracing(mask) and is_causal and not needs_grad:
            # Traced (transformers compiles a static cache's decode step): unpadding reads the mask on the host, a
            # graph break per layer. Each row's tokens are one run (left padding, as documented under compile):
            # the keys from its first valid slot up to the mask's end, the queries bottom-right aligned to them.
            # Keys past a run's end (right padding) are seen only by the pad queries after it.
            out = flash_attn_with_kvcache(
                q, k, v, cache_seqlens=torch.full((batch,), mask.shape[-1], dtype=torch.int32, device=q.device),
                cache_leftpad=mask.to(torch.int32).argmax(-1).to(torch.int32), **options)
            return out[..., :v_head_dim], None
        q, k, v, indices_q, (cu_q, cu_k), (max_q, max_k) = _upad_input(q, k, v, mask, seqlen_q, _unpad_input)
        out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, int(max_q), int(max_k), **options)
        out = _pad_input(out, indices_q, batch, seqlen_q)
    else:
        cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
        max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
        if cu_q is None and k.shape[1] == seqlen_q:
            packed = _packed_sequences(kwargs.get("position_ids"), batch, seqlen_q)
            if packed is not None:
                cu_q, max_q = cu_k, max_k = packed
        if cu_q is not None:
            if cu_k is None or max_q is None or max_k is None:
                raise ValueError("cu_seq_lens_q: give cu_seq_lens_q, cu_seq_lens_k, max_length_q and max_length_k "
                                 "together")
            out = flash_attn_varlen_func(
                q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:]),
                cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k), **options)
            out = out.view(batch, seqlen_q, *out.shape[1:])
        else:
            # A cache without a padding mask: a static cache hands over its whole buffer, of which the keys up to the
            # last query's position are filled (dynamic and sliding-window layers: all of them).
            filled = _filled_keys(kwargs.get("position_ids"), batch, k.shape[1]) if k.shape[1] > seqlen_q else None
            if filled is not None:
                out = flash_attn_with_kvcache(q, k, v, cache_seqlens=filled, **options)
            else:
                out = flash_attn_func(q, k, v, **options)
    return out[..., :v_head_dim], None


def _takes_value_head_dim(head_dim: int, v_head_dim: int, dtype: torch.dtype) -> bool:
    """Whether swattn's kernels take this value head_dim with this key head_dim as it is (DeepSeek's 192 / 128):
    V then needs no zero columns, so no padded copy of it and no wasted columns in P V."""
    try:
        check_value_head_dim("v", head_dim, v_head_dim, dtype == torch.float8_e4m3fn)
    except (ValueError, NotImplementedError):
        return False
    return True


def register(name: str = NAME) -> None:
    """Register ``name`` (default ``"swattn"``) with transformers' attention and mask interfaces. Idempotent."""
    AttentionInterface.register(name, swattn_attention_forward)
    AttentionMaskInterface.register(name, swattn_mask)


register()
