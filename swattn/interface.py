"""Public API, FlashAttention 3's signatures: ``flash_attn_func``, ``flash_attn_qkvpacked_func``,
``flash_attn_varlen_func``, ``flash_attn_with_kvcache``, ``flash_attn_combine``, ``get_scheduler_metadata``. Every
argument is checked here, with a message naming it; the work is done by the custom ops in ``swattn.ops``.

Window semantics (``swattn.window``): query row i of a sequence sees key j iff ``0 <= j < Sk`` and
``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (a side of -1 is unbounded, ``causal`` sets right = 0). For
Sq = 5, Sk = 8, causal (1 = visible; bottom-right aligned)::

    1 1 1 1 0 0 0 0
    1 1 1 1 1 0 0 0
    1 1 1 1 1 1 0 0
    1 1 1 1 1 1 1 0
    1 1 1 1 1 1 1 1

A model's ``sliding_window = W`` (W keys including the current one) is ``window_size=(W - 1, 0)``. Rows that see
no key give 0 and LSE -inf (LSE = sink with ``sinks``).

Checks that read tensor data (cu_seqlens monotone, lengths within the tensors, page indices in range) run on CPU
tensors always and on GPU tensors only with ``check_inputs=True`` or ``SWATTN_CHECK_INPUTS=1`` (read at import),
since they synchronise with the host; without them, in-range indices are the caller's contract, as in
FlashAttention. They are skipped under ``torch.compile`` and during CUDA-graph capture, where no host read is possible.
"""

from __future__ import annotations

import functools
import math

import torch

from swattn import _compat
from swattn._compat import device_properties, next_power_of_2
from swattn._replay import note_data_checks, note_length_choices, replayed
from swattn._replay import recording_ops as ops  # swattn.ops; a signature's first call records its op call
from swattn.kernels import configs
from swattn.kernels._launch import MAX_GRID_YZ
from swattn.kernels.configs import (
    MAX_SPLITS,
    QV_PACKED_TILE,
    SHORT_SPLIT_KEYS,
    fp8_kv_pairs_fit,
    fp8_pair_split_count,
    qv_packed_tile,
    split_programs_per_sm,
)
from swattn.window import check_attention_chunk, first_visible_key, normalize_window, visible_span

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FP8 = torch.float8_e4m3fn
_OTHER_FP8 = tuple(getattr(torch, name) for name in ("float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                   if hasattr(torch, name))
_MAX_HEAD_DIM = 256


def _check_tensor(name: str, t, rank: int | tuple[int, ...], layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(t).__name__}")
    ranks = (rank,) if isinstance(rank, int) else rank
    if t.dim() not in ranks:
        raise ValueError(f"{name}: expected shape {layout} ({' or '.join(map(str, ranks))} dims), "
                         f"got {t.dim()} dims {tuple(t.shape)}")


def _check_qkv(q, k, v, layout_q: str, layout_kv: str, rank: int, rank_kv: int | None = None, k_name: str = "k",
               v_name: str = "v") -> None:
    """q, k, v (or q, k_cache, v_cache: ``k_name``/``v_name`` name them in the messages) agree in dtype, device,
    shape, head_dim and heads."""
    _check_tensor("q", q, rank, layout_q)
    _check_tensor(k_name, k, rank if rank_kv is None else rank_kv, layout_kv)
    _check_tensor(v_name, v, rank if rank_kv is None else rank_kv, layout_kv)
    for name, t in (("q", q), (k_name, k), (v_name, v)):
        if t.dtype in _OTHER_FP8:
            raise TypeError(f"{name}: the only fp8 format supported is torch.float8_e4m3fn (FlashAttention 3's), "
                            f"got {t.dtype}")
    if q.dtype not in _DTYPES + (_FP8,):
        raise TypeError(f"q: expected dtype float16, bfloat16, float32 or float8_e4m3fn, got {q.dtype}")
    if q.dtype == _FP8 and k.dtype != _FP8:
        raise TypeError(f"{k_name}: fp8 (float8_e4m3fn) q needs fp8 keys and values too, got {k.dtype}; with "
                        f"{k.dtype} k/v pass q in {k.dtype}")
    if k.dtype == _FP8 and q.dtype not in (torch.float16, torch.bfloat16, _FP8):
        raise TypeError(f"q: an fp8 (float8_e4m3fn) {k_name} needs float16, bfloat16 or float8_e4m3fn queries, "
                        f"got {q.dtype}")
    for name, t in ((k_name, k), (v_name, v)):
        if t.dtype != q.dtype and t.dtype != _FP8:
            raise TypeError(f"{name}: expected dtype {q.dtype} to match q, got {t.dtype}")
        if t.dtype != k.dtype:
            raise TypeError(f"{name}: expected dtype {k.dtype} to match {k_name}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} to match q, got {t.device}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{v_name}: expected shape {tuple(k.shape[:-1]) + ('Dv',)} to match {k_name} in every "
                         f"dimension but the last (the value head_dim), got {tuple(v.shape)}")
    head_dim = q.shape[-1]
    if head_dim % 8 != 0 or not 8 <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"q: head_dim must be a multiple of 8 in [8, {_MAX_HEAD_DIM}], got {head_dim}")
    if k.shape[-1] != head_dim:
        raise ValueError(f"{k_name}: expected head_dim {head_dim} to match q, got {k.shape[-1]}")
    check_value_head_dim(v_name, head_dim, v.shape[-1], k.dtype == _FP8 or q.dtype == _FP8)
    num_heads, num_kv_heads = q.shape[-2], k.shape[-2]
    if num_kv_heads == 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"q/{k_name}: the number of query heads ({num_heads}) must be a multiple of the number of KV "
                         f"heads ({num_kv_heads})")


# A value head_dim (Dv, FlashAttention 3's ``headdim_v``) other than the key's: any multiple of 8 up to
# _MAX_HEAD_DIM, and up to _MAX_HEAD_DIM_V_SMALL_K when the key head_dim is at most _SMALL_K_HEAD_DIM (FlashAttention
# 3's large-Dv case, d <= 64 with dv <= 512; its other one, d in (128, 192] with dv in (96, 128], lies inside the
# first). fp16 / bf16 / float32 only: FlashAttention 3 compiles fp8 with Dv != D for no shape its tests run.
_MAX_HEAD_DIM_V_SMALL_K = 512
_SMALL_K_HEAD_DIM = 64
# The backward takes Dv up to 256 (ops.MAX_BACKWARD_HEAD_DIM_V; FlashAttention 3's backward: max(D, Dv) <= 256).


def check_value_head_dim(name: str, head_dim: int, head_dim_v: int, fp8: bool) -> None:
    """The value head_dim ``head_dim_v`` (of tensor ``name``: v, v_cache, or ``headdim_v``) goes with key head_dim
    ``head_dim``; raises naming ``name`` and what is expected otherwise."""
    if head_dim_v == head_dim:
        return
    largest = _MAX_HEAD_DIM_V_SMALL_K if head_dim <= _SMALL_K_HEAD_DIM else _MAX_HEAD_DIM
    if head_dim_v % 8 != 0 or not 8 <= head_dim_v <= largest:
        raise ValueError(f"{name}: the value head_dim (last dimension) must be a multiple of 8 in [8, {_MAX_HEAD_DIM}]"
                         f" (up to {_MAX_HEAD_DIM_V_SMALL_K} when the key head_dim is at most {_SMALL_K_HEAD_DIM}), "
                         f"got {head_dim_v} with key head_dim {head_dim}")
    if fp8:
        raise NotImplementedError(f"{name}: a value head_dim ({head_dim_v}) different from the key head_dim "
                                  f"({head_dim}) is not supported with float8_e4m3fn inputs (FlashAttention 3 tests "
                                  "fp8 with equal head dims only); use fp16 / bf16, or equal head dims")


def _check_descales(q: torch.Tensor, k: torch.Tensor, batch: int, q_descale, k_descale, v_descale,
                    k_name: str = "k") -> None:
    """FlashAttention 3's fp8 descales: float32 ``[B, Hk]`` (any strides; a stride-0 expand gives one per tensor),
    each only for an fp8 input."""
    num_kv_heads = k.shape[-2]
    for name, descale, of in (("q_descale", q_descale, q), ("k_descale", k_descale, k), ("v_descale", v_descale, k)):
        if descale is None:
            continue
        if not isinstance(descale, torch.Tensor):
            raise TypeError(f"{name}: expected a float32 tensor of shape ({batch}, {num_kv_heads}) (B, Hk) or None, "
                            f"got {type(descale).__name__}")
        if of.dtype != _FP8:
            what = "q" if name == "q_descale" else k_name
            raise ValueError(f"{name}: given, but {what} is {of.dtype}; descales apply to float8_e4m3fn inputs "
                             "only (leave it None)")
        if tuple(descale.shape) != (batch, num_kv_heads):
            raise ValueError(f"{name}: expected shape ({batch}, {num_kv_heads}) (B, Hk: one per sequence and KV "
                             f"head; expand a single value for one per tensor), got {tuple(descale.shape)}")
        if descale.dtype != torch.float32:
            raise TypeError(f"{name}: expected dtype torch.float32, got {descale.dtype}")
        if descale.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} to match q, got {descale.device}")


def _check_scalars(q: torch.Tensor, softmax_scale, softcap, qv: torch.Tensor | None = None) -> float:
    if softmax_scale is None:
        # FlashAttention 3's default: 1 / sqrt(D), with qv 1 / sqrt(D + Dv) (both terms of the scores).
        softmax_scale = 1.0 / math.sqrt(q.shape[-1] + (0 if qv is None else qv.shape[-1]))
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not math.isfinite(
            softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale: expected a finite float > 0 or None, got {softmax_scale!r}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap: expected a finite float >= 0 (0 = off), got {softcap!r}")
    return float(softmax_scale)


def _check_qv(qv, q: torch.Tensor, k: torch.Tensor, head_dim_v: int, layout: str) -> None:
    """FlashAttention 3's ``qv`` (MLA's second query term; None: absent): q's shape with the value head_dim
    ``head_dim_v`` as its last dimension (``layout`` names it), q's dtype (16-bit or float32; not with fp8 q or
    k/v) and device, unit stride in the head dimension."""
    if qv is None:
        return
    if not isinstance(qv, torch.Tensor):
        raise TypeError(f"qv: expected a torch.Tensor of shape {layout} or None, got {type(qv).__name__}")
    if _FP8 in (q.dtype, k.dtype):
        raise NotImplementedError("qv: not supported with float8_e4m3fn inputs (FlashAttention 3 takes qv with "
                                  "fp16 / bf16 only); pass q, k, v and qv in fp16 / bf16")
    expected = (*q.shape[:-1], head_dim_v)
    if tuple(qv.shape) != expected:
        raise ValueError(f"qv: expected shape {expected} {layout} (q's, with v's head_dim {head_dim_v} last), got "
                         f"{tuple(qv.shape)}")
    if qv.dtype != q.dtype:
        raise TypeError(f"qv: expected dtype {q.dtype} to match q, got {qv.dtype}")
    if qv.device != q.device:
        raise ValueError(f"qv: expected device {q.device} to match q, got {qv.device}")
    if qv.stride(-1) != 1:
        raise ValueError(f"qv: the head dimension must be contiguous (stride 1), got strides {qv.stride()} (as "
                         "FlashAttention 3 requires); pass qv.contiguous()")


def _check_sinks(sinks, num_heads: int, device: torch.device) -> torch.Tensor | None:
    if sinks is None:
        return None
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"sinks: expected a tensor of shape ({num_heads},) or None, got {type(sinks).__name__}")
    if tuple(sinks.shape) != (num_heads,):
        raise ValueError(f"sinks: expected shape ({num_heads},) (one logit per query head), got {tuple(sinks.shape)}")
    if not sinks.dtype.is_floating_point:
        raise TypeError(f"sinks: expected a floating dtype, got {sinks.dtype}")
    if sinks.device != device:
        raise ValueError(f"sinks: expected device {device} to match q, got {sinks.device}")
    # Kept in its own dtype: the kernels load a sink and convert it (a bf16 model parameter, as gpt-oss's, no
    # longer costs a cast kernel per call, in eager mode and inside captured graphs alike).
    return sinks.contiguous()


def _check_int32_vector(name: str, t, length: int | None, device: torch.device, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected an int32 tensor {what}, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {t.dtype}")
    if t.dim() != 1 or (length is not None and t.numel() != length):
        raise ValueError(f"{name}: expected shape ({'n' if length is None else length},) {what}, "
                         f"got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device} to match q, got {t.device}")


def _is_tracing(t: torch.Tensor) -> bool:
    """Under torch.compile or CUDA-graph capture no host read may happen, so the data checks are skipped there."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _checks_read_data(t: torch.Tensor, check_inputs: bool | None) -> bool:
    """Whether this call's checks read tensor data. Calls that do not want them (``check_inputs=False``, or None
    on a GPU tensor without ``SWATTN_CHECK_INPUTS=1``) never do, whatever the tracing state: the call's signature
    (argument values, devices) and the import-time setting (``_compat.CHECK_INPUTS``, in the replay's key)
    decide. Wanted ones are skipped while tracing, so that decision is asked again on every replayed call
    (``swattn._replay``)."""
    if not _wants_data_checks(t, check_inputs):
        return False
    return note_data_checks(_decide_data_checks, t, check_inputs)


def _wants_data_checks(t: torch.Tensor, check_inputs: bool | None) -> bool:
    return (_compat.CHECK_INPUTS or t.is_cpu) if check_inputs is None else bool(check_inputs)


def _decide_data_checks(t: torch.Tensor, check_inputs: bool | None) -> bool:
    return _wants_data_checks(t, check_inputs) and not _is_tracing(t)


def _check_cu_seqlens(name: str, cu, total: int, max_seqlen: int, device, read_data: bool) -> None:
    _check_int32_vector(name, cu, None, device, "(batch + 1,) of cumulative sequence lengths")
    if cu.numel() < 1:
        raise ValueError(f"{name}: expected at least one entry (batch + 1,), got none")
    if not read_data:
        return
    values = cu.cpu()
    if int(values[0]) != 0:
        raise ValueError(f"{name}: must start at 0, got {int(values[0])}")
    lengths = values[1:] - values[:-1]
    if (lengths < 0).any():
        raise ValueError(f"{name}: must be non-decreasing, got {values.tolist()}")
    if int(values[-1]) > total:
        raise ValueError(f"{name}: last entry {int(values[-1])} exceeds the {total} rows of the packed tensor")
    if lengths.numel() and int(lengths.max()) > max_seqlen:
        raise ValueError(f"{name}: a sequence has length {int(lengths.max())} > max_seqlen = {max_seqlen}")


def _check_int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    # Index vectors are read with unit stride by the kernels; they are tiny, so copying a strided view is free.
    return None if t is None else t.contiguous()


def _contiguous_last(t: torch.Tensor) -> torch.Tensor:
    # Kernels take strides; copy only when the head dimension itself is strided.
    return t if t.stride(-1) == 1 else t.contiguous()


def _auto_pack_gqa(pack_gqa, seqlen_q: int, group: int, left: int = -1, right: int = -1) -> bool:
    if pack_gqa is not None:
        return bool(pack_gqa) and group > 1
    # Decode / extend / speculative verify: packing the G heads of a KV head fills the tile's rows and loads
    # each KV block once per KV head instead of once per query head. Small-window prefill gains too (H100,
    # W127 D64 H64/8 16K: 252 us packed vs 268 us, docs/notes/performance-log.md).
    small_window = 0 <= left <= 256 and 0 <= right <= 256
    return group > 1 and (seqlen_q * group <= 128 or small_window)


# _kvcache_length_choices' argument that holds the cache's capacity.
_KVCACHE_CAPACITY_ARGUMENT = 7


def _kvcache_length_choices(pack_gqa, num_splits: int, device: torch.device, num_heads: int, num_kv_heads: int,
                            head_dim: int, batch: int, capacity: int, left: int, right: int, attention_chunk: int,
                            sm_margin: int, paged: bool, pairs_possible: bool, fp8_cache: bool, pairs_layout: bool,
                            appends: bool, has_qv: bool, element_size: int, head_dim_v: int, e4m3_q: bool,
                            max_seqlen_q: int) -> tuple[bool, int]:
    """``flash_attn_with_kvcache``'s choices that depend on ``max_seqlen_q`` (the rest of its arguments are the
    call's signature): PackGQA and the split count -> ``(packed, num_splits)``. ``pairs_possible``: an automatic
    split count over an e4m3 cache with 16-bit queries, or e4m3 ones (``e4m3_q``) with ``configs.FP8_QKV_PAIRS``
    (only then are two KV heads per program asked about; ``pairs_layout``: the caches' rows allow them); ``has_qv``,
    ``element_size`` (q's), ``head_dim_v``: as ``_qv_tile`` takes them."""
    group = num_heads // num_kv_heads
    packed = _auto_pack_gqa(pack_gqa, max_seqlen_q, group, left, right)
    rows = max_seqlen_q * (group if packed else 1)
    programs = batch * (num_kv_heads if packed else num_heads) * max(1, -(-rows // 64))
    kv_pairs = (num_splits == 0 and pairs_possible
                and fp8_kv_pairs_fit(True, packed, left < 0 and attention_chunk == 0, rows, max_seqlen_q, num_kv_heads,
                                     head_dim, pairs_layout, paged, appends, e4m3_q))
    return packed, _auto_num_splits(num_splits, device, programs, capacity, left, right, max_seqlen_q, attention_chunk,
                                    sm_margin, rows, paged, fp8_cache, kv_pairs, head_dim,
                                    _qv_tile(has_qv, element_size, rows, packed, head_dim_v))


def _dense_length_choices(pack_gqa, num_splits: int, device: torch.device, num_heads: int, num_kv_heads: int,
                          batch: int, left: int, right: int, attention_chunk: int, sm_margin: int, has_qv: bool,
                          element_size: int, head_dim_v: int, seqlen_q: int, seqlen_k: int) -> tuple[bool, int]:
    """``flash_attn_func``'s choices that depend on its lengths (q's and k's dim 1; the rest of its arguments are the
    call's signature): PackGQA and the split count -> ``(packed, num_splits)``; ``has_qv``, ``element_size`` (q's),
    ``head_dim_v``: as ``_qv_tile`` takes them."""
    group = num_heads // num_kv_heads
    packed = _auto_pack_gqa(pack_gqa, seqlen_q, group, left, right)
    programs = batch * (num_kv_heads if packed else num_heads)
    rows = seqlen_q * (group if packed else 1)
    qv_tile = _qv_tile(has_qv, element_size, rows, packed, head_dim_v)
    if qv_tile:
        programs *= -(-rows // QV_PACKED_TILE.block_m)  # the tile's programs per (sequence, KV head)
    return packed, _auto_num_splits(num_splits, device, programs, seqlen_k, left, right, seqlen_q, attention_chunk,
                                    sm_margin, rows, qv_tile=qv_tile)


def _dense_cache_choices(choices: functools.partial, max_seqlen_q: int, capacity: int) -> tuple[bool, int]:
    """``flash_attn_with_kvcache``'s ``choices`` (a partial of ``_kvcache_length_choices``) for a dense cache of
    ``capacity`` positions instead of the one it was made with."""
    arguments = list(choices.args)
    arguments[_KVCACHE_CAPACITY_ARGUMENT] = capacity
    return _kvcache_length_choices(*arguments, max_seqlen_q)


def _varlen_length_choices(pack_gqa, num_splits: int, device: torch.device, num_heads: int, num_kv_heads: int,
                           batch: int, left: int, right: int, attention_chunk: int, sm_margin: int, has_qv: bool,
                           element_size: int, head_dim_v: int, max_seqlen_q: int,
                           max_seqlen_k: int) -> tuple[bool, int]:
    """``flash_attn_varlen_func``'s choices that depend on its lengths (the rest of its arguments are the call's
    signature): PackGQA and the split count -> ``(packed, num_splits)``; ``has_qv``, ``element_size`` (q's),
    ``head_dim_v``: as ``_qv_tile`` takes them."""
    group = num_heads // num_kv_heads
    packed = _auto_pack_gqa(pack_gqa, max_seqlen_q, group, left, right)
    rows = max_seqlen_q * (group if packed else 1)
    qv_tile = _qv_tile(has_qv, element_size, rows, packed, head_dim_v)
    programs = batch * (num_kv_heads if packed else num_heads) * max(1, -(-max_seqlen_q // 128))
    if qv_tile:
        programs = batch * num_kv_heads * -(-rows // QV_PACKED_TILE.block_m)  # the tile's 64-row programs
    return packed, _auto_num_splits(num_splits, device, programs, max_seqlen_k, left, right, max_seqlen_q,
                                    attention_chunk, sm_margin, rows, qv_tile=qv_tile)


def _auto_num_splits(num_splits: int, device: torch.device, programs: int, keys_bound: int, left: int, right: int,
                     seqlen_q: int, attention_chunk: int = 0, sm_margin: int = 0, rows_per_tile: int = 8,
                     paged: bool = False, fp8: bool = False, kv_pairs: bool = False, head_dim: int = 64,
                     qv_tile: bool = False) -> int:
    """Split-KV count from shapes only (no GPU values) for a call on ``device``: the window's span, not the cache
    length, sets the work; ``rows_per_tile``, ``paged``, ``fp8``, ``kv_pairs``, ``head_dim``, ``qv_tile``: as
    ``split_count`` takes them."""
    if num_splits > 0:
        return min(num_splits, MAX_SPLITS)
    if device.type != "cuda":
        return 1
    keys = visible_span(0, seqlen_q - 1, seqlen_q, keys_bound, left, right)[1] if seqlen_q > 0 else 0
    if attention_chunk > 0:
        keys = min(keys, attention_chunk)
    sms = max(1, device_properties(device).multi_processor_count - sm_margin)
    return split_count(programs, keys, sms, rows_per_tile, paged, fp8, kv_pairs, head_dim, qv_tile)


def _qv_tile(has_qv: bool, element_size: int, rows_per_tile: int, packed: bool, head_dim_v: int) -> bool:
    """Whether the forward takes MLA's packed qv tile (``configs.qv_packed_tile``: one 8-warp program per SM, 64
    rows each), which the automatic split count plans for: a call with qv (``has_qv``) of ``element_size``-byte
    elements."""
    return has_qv and qv_packed_tile(rows_per_tile, packed, max(16, next_power_of_2(head_dim_v)), True, element_size)


def split_count(programs: int, keys: int, sms: int, rows_per_tile: int = 8, paged: bool = False,
                fp8: bool = False, kv_pairs: bool = False, head_dim: int = 64, qv_tile: bool = False) -> int:
    """Automatic split-KV count for ``programs`` programs per split whose sequences see at most ``keys`` keys, on
    ``sms`` SMs; ``rows_per_tile``: rows of one tile (PackGQA: query positions x heads per KV head) and ``paged``
    (a paged cache) and ``fp8`` (an e4m3 cache) set how many programs fit one SM
    (``configs.split_programs_per_sm``). For decode tiles
    ``forward_config`` picks the one-stage 128-key-block loop for splits of at most ``SHORT_SPLIT_KEYS`` keys, the
    splits this rule makes at short contexts. ``kv_pairs``: the decode may take two KV heads per program
    (``configs.fp8_kv_pairs_fit``); where ``configs.fp8_pair_split_count`` takes them (for ``head_dim``), its split
    count (the forward kernel takes the pairs from the same function). ``qv_tile``: the tiles are MLA's
    ``configs.QV_PACKED_TILE`` (``programs`` counts its 64-row tiles), one program per SM."""
    blocks = -(-keys // 128)
    if programs >= sms or blocks < 8:
        return 1
    pair_splits = fp8_pair_split_count(programs, keys, sms, head_dim) if kv_pairs else 0
    if pair_splits:
        return pair_splits
    # Short contexts: one or two 128-key blocks per split while there are at most four programs per SM; the
    # latency of a split's few blocks, not bandwidth, sets the time. H200 (scripts/gpu_splits.py, gpt-oss full
    # decode, page 16, docs/notes/performance-log.md): 1K B=4 8 splits 8.3 us (the long-context rule's 2 splits:
    # 19.5 us), 1K B=16 4 splits 17.0 (21.8), 4K B=4 16 splits 16.9 (21.4).
    short = min(blocks, max(1, split_programs_per_sm(rows_per_tile, True, qv_tile=qv_tile) * sms // programs),
                MAX_SPLITS)
    if -(-keys // short) <= SHORT_SPLIT_KEYS:
        return short
    # Long contexts: about six two-warp programs per SM. H200: B=16 (128 programs) best with 6 splits at 16K
    # (131.7 us, 97% of copy bandwidth; 4: 144.0, 12: 137.8), at 64K (496.5 us; 4: 543.1) and at 4K (41.2 us; 4
    # splits of 128-key blocks: 44.2); B=4 (32 programs) with 24 (16K 41.7 us, 16: 43.2; 64K 132.6 us, 16: 144.1).
    # Never fewer splits than the short rule's: a page table a page longer than the context (1040 keys for 1024)
    # would otherwise drop B=16 from 4 splits (17.2 us) to 2 (21.8), and B=4 at 4K from 16 (17.2) to 8 (21.5).
    # Verify tiles of 32 and 64 rows fit four programs per SM, not six: B=16 k=4 takes 4 splits (512 programs, one
    # wave of 528 slots) where six per SM gave 6 (768 programs, two waves).
    per_sm = split_programs_per_sm(rows_per_tile, False, paged, fp8, qv_tile)
    return max(1, min(per_sm * sms // programs, max(blocks // 4, short), MAX_SPLITS))


def _reads_values(tensor: torch.Tensor, check_inputs) -> bool:
    return True


def _window(causal: bool, window_size) -> tuple[int, int]:
    """``window.normalize_window``; a window given as tensors (FlashAttention 3's tests pass one) is read on the
    host, a data read: ``swattn._replay`` then runs the function on every call instead of replaying the sides it
    read the first time."""
    if isinstance(window_size, torch.Tensor):
        note_data_checks(_reads_values, window_size, None)
    elif isinstance(window_size, (tuple, list)):
        for side in window_size:
            if isinstance(side, torch.Tensor):
                note_data_checks(_reads_values, side, None)
    return normalize_window(causal, window_size)


def _check_out(out, q: torch.Tensor, head_dim_v: int, inputs: tuple) -> None:
    """``out`` (swattn's extension, as FlashAttention 3's internal ``out``): the output's shape (q's, with the value
    head_dim) and dtype (q's; bf16 for e4m3 q), q's device, contiguous and 16-byte aligned (the kernels write it
    as they would their own); not for a call that needs a gradient (as torch's ``out=`` arguments)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a tensor or None, got {type(out).__name__}")
    shape, dtype = (*q.shape[:-1], head_dim_v), torch.bfloat16 if q.dtype == _FP8 else q.dtype
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != q.device:
        raise ValueError(f"out: expected shape {shape}, dtype {dtype} on {q.device} (the output's), got shape "
                         f"{tuple(out.shape)}, dtype {out.dtype} on {out.device}")
    # Traced, the op's result is copied into out (``ops.run_fwd_into``): no address to ask, none needed.
    if not out.is_contiguous() or (not torch.compiler.is_compiling() and out.data_ptr() % 16):
        raise ValueError(f"out: expected a contiguous tensor starting at a 16-byte boundary, got strides "
                         f"{out.stride()}, storage offset {out.storage_offset()}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        raise ValueError("out: not supported for a call that needs a gradient (an input requires grad); leave "
                         "out=None, or call under torch.no_grad()")


def _result(out, lse, return_lse: bool):
    return (out, lse) if return_lse else out


@replayed(dense=(("q", "out"), ("k", "v")))
def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    deterministic: bool = False,
    sm_margin: int = 0,
    return_attn_probs: bool = False,
    sinks: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
    out: torch.Tensor | None = None,
):
    """Sliding-window / causal attention of a batch of equal-length sequences.

    q: ``[B, Sq, H, D]``; k: ``[B, Sk, Hk, D]``, v: ``[B, Sk, Hk, Dv]`` with H a multiple of Hk (GQA/MQA); float16,
    bfloat16 (float32 accepted). D a multiple of 8 up to 256; Dv (FlashAttention 3's ``headdim_v``) D or another
    multiple of 8 up to 256 (up to 512 when D <= 64), 16-bit or float32 inputs only.
    ``window_size=(left, right)``, -1 = unbounded; ``causal`` sets right = 0. ``attention_chunk`` > 0 (Llama 4's
    chunked local attention): a query also sees only the keys of its own chunk, ``[c * chunk, (c + 1) * chunk)``
    with c = (i + Sk - Sq) // chunk, intersected with the window.
    ``softcap > 0``: scores ``softcap * tanh(s / softcap)``. ``sinks``: ``[H]`` per-head logits (float) that join
    the softmax denominator. ``num_splits`` > 1 splits each KV loop (0 = automatic).
    Returns out ``[B, Sq, H, Dv]`` (q's dtype), and ``softmax_lse [B, H, Sq]`` (float32, natural log) when
    ``return_softmax_lse`` or ``return_attn_probs``. ``deterministic`` is accepted: the forward always is, and so
    is the backward (dq, dk ``[..., D]``, dv ``[..., Dv]``; Dv up to 256, as FlashAttention 3's backward: a larger
    one is refused at the backward, naming v). ``sm_margin`` lowers the SM count that automatic split-KV plans for
    (swattn's grids are not persistent, so no SM is reserved beyond that).
    fp8 (forward only): k, v in ``torch.float8_e4m3fn`` with q in fp16/bf16 (out in q's dtype) or e4m3 too (out
    bf16, as FlashAttention 3); ``q_descale`` (e4m3 q), ``k_descale``, ``v_descale``: float32 ``[B, Hk]`` (any
    strides; None = 1), the attention of ``q * q_descale`` over ``k * k_descale`` and ``v * v_descale``. Inputs
    that require grad are accepted (as FlashAttention 3 does); a backward through the call raises.
    ``out`` (swattn's, as FlashAttention 3's internal ``out``): a tensor the output is written into and returned
    as (the output's shape and dtype, q's device, contiguous, 16-byte aligned, not overlapping the inputs; not for
    a call that needs a gradient), instead of a new one.
    ``qv`` ``[B, Sq, H, Dv]`` (FlashAttention 3's, MLA's second query term; q's dtype, 16-bit or float32): scores
    ``(q k^T + qv v^T) * softmax_scale`` (before softcap and masks), default softmax_scale ``(D + Dv) ** -0.5``.
    Forward only, as in FlashAttention 3: inputs that require grad are accepted, a backward through the call raises
    NotImplementedError naming qv.
    """
    _check_qkv(q, k, v, "(B, Sq, H, D)", "(B, Sk, Hk, D)", 4)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected batch {q.shape[0]} to match q, got {k.shape[0]}")
    _check_qv(qv, q, k, v.shape[-1], "(B, Sq, H, Dv)")
    _check_descales(q, k, q.shape[0], q_descale, k_descale, v_descale)
    softmax_scale = _check_scalars(q, softmax_scale, softcap, qv)
    left, right = _window(causal, window_size)
    attention_chunk = check_attention_chunk(attention_chunk)
    sinks = _check_sinks(sinks, q.shape[2], q.device)
    num_splits = _check_int_arg("num_splits", num_splits, 0)
    sm_margin = _check_int_arg("sm_margin", sm_margin, 0)
    choices = functools.partial(_dense_length_choices, pack_gqa, num_splits, q.device, q.shape[2], k.shape[2],
                                q.shape[0], left, right, attention_chunk, sm_margin, qv is not None, q.element_size(),
                                v.shape[-1])
    if qv is None:
        # Everything but these choices depends on the call's signature alone, whatever the lengths (dim 1) and
        # strides of q, k, v and out: swattn._replay then replays the call for other lengths with the same choices
        # (a prefill or a training step of a new length).
        packed, num_splits = note_length_choices(choices, q.shape[1], k.shape[1])
    else:
        packed, num_splits = choices(q.shape[1], k.shape[1])
    arguments = (_contiguous_last(q), _contiguous_last(k), _contiguous_last(v), sinks, None, None, None, q.shape[1],
                 k.shape[1], softmax_scale, left, right, float(softcap), packed, num_splits, None, attention_chunk,
                 q_descale, k_descale, v_descale, bool(return_softmax_lse or return_attn_probs), qv)
    if out is None:
        out, lse = ops.run_fwd(*arguments)
    else:
        _check_out(out, q, v.shape[-1], (q, k, v, sinks, qv))
        out, lse = ops.run_fwd_into(out, *arguments)
    return _result(out, lse, return_softmax_lse or return_attn_probs)


def flash_attn_qkvpacked_func(
    qkv: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    deterministic: bool = False,
    num_heads_q: int | None = None,
    sm_margin: int = 0,
    return_attn_probs: bool = False,
    sinks: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
):
    """``flash_attn_func`` on one packed tensor, FlashAttention 3's ``flash_attn_qkvpacked_func``.

    qkv: ``[B, S, 3, H, D]`` (q, k, v of H heads each), or ``[B, S, H + 2 * Hk, D]`` with ``num_heads_q = H``
    (the q heads, then Hk key heads, then Hk value heads: GQA/MQA). q, k and v are views of qkv, so the gradient
    reaches qkv through autograd. The other arguments and the result are ``flash_attn_func``'s.
    """
    _check_tensor("qkv", qkv, (4, 5), "(B, S, 3, H, D) or (B, S, H + 2 * Hk, D)")
    if qkv.dim() == 5:
        if qkv.shape[2] != 3:
            raise ValueError(f"qkv: a 5-dim qkv is (B, S, 3, H, D), got {tuple(qkv.shape)}")
        if num_heads_q is not None and num_heads_q != qkv.shape[3]:
            raise ValueError(f"num_heads_q: a 5-dim qkv holds {qkv.shape[3]} heads of each of q, k and v, "
                             f"got num_heads_q={num_heads_q!r}")
        q, k, v = qkv.unbind(dim=2)
    else:
        if num_heads_q is None:
            raise ValueError("num_heads_q: required with a 4-dim qkv (B, S, H + 2 * Hk, D), got None")
        _check_int_arg("num_heads_q", num_heads_q, 1)
        num_heads_kv, odd = divmod(qkv.shape[2] - num_heads_q, 2)
        if num_heads_kv < 1 or odd:
            raise ValueError(f"num_heads_q: qkv's {qkv.shape[2]} heads must be num_heads_q + 2 * Hk with Hk >= 1, "
                             f"got num_heads_q={num_heads_q}")
        q, k, v = qkv.split([num_heads_q, num_heads_kv, num_heads_kv], dim=2)
    return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, q_descale=q_descale,
                           k_descale=k_descale, v_descale=v_descale, window_size=window_size,
                           attention_chunk=attention_chunk, softcap=softcap, deterministic=deterministic,
                           sm_margin=sm_margin, return_attn_probs=return_attn_probs, sinks=sinks,
                           return_softmax_lse=return_softmax_lse)


@replayed(lengths=((("q", "out"), ("k", "v")), ("max_seqlen_q", "max_seqlen_k")))
def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    seqused_q: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    deterministic: bool = False,
    sm_margin: int = 0,
    return_attn_probs: bool = False,
    sinks: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
    check_inputs: bool | None = None,
    out: torch.Tensor | None = None,
):
    """Attention over packed sequences of different lengths.

    q: ``[total_q, H, D]``; k: ``[total_k, Hk, D]``, v: ``[total_k, Hk, Dv]`` (Dv as in ``flash_attn_func``);
    ``cu_seqlens_q``, ``cu_seqlens_k``: ``[B + 1]`` int32
    cumulative lengths starting at 0; ``max_seqlen_q/k``: ints >= every sequence's length. ``seqused_k [B]``
    (int32): keys actually used by each sequence (<= its cu_seqlens_k length); ``seqused_q [B]`` (int32): queries
    actually used (<= its cu_seqlens_q length): the rows past it are neither read nor written, so out and lse hold
    unspecified values there (as in FlashAttention 3), and their gradients are 0. Window, softcap, sinks,
    attention_chunk, qv (``[total_q, H, Dv]``) as in ``flash_attn_func``. Returns out ``[total_q, H, Dv]`` (into
    ``out`` when given, as in ``flash_attn_func``) and, when asked, ``softmax_lse [H, total_q]`` float32.
    """
    _check_qkv(q, k, v, "(total_q, H, D)", "(total_k, Hk, D)", 3)
    _check_qv(qv, q, k, v.shape[-1], "(total_q, H, Dv)")
    max_seqlen_q = _check_int_arg("max_seqlen_q", max_seqlen_q, 0)
    max_seqlen_k = _check_int_arg("max_seqlen_k", max_seqlen_k, 0)
    read_data = _checks_read_data(q, check_inputs)
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device, read_data)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device, read_data)
    batch = cu_seqlens_q.numel() - 1
    if cu_seqlens_k.numel() != batch + 1:
        raise ValueError(f"cu_seqlens_k: expected shape ({batch + 1},) to match cu_seqlens_q, "
                         f"got {tuple(cu_seqlens_k.shape)}")
    _check_descales(q, k, batch, q_descale, k_descale, v_descale)
    if seqused_k is not None:
        _check_int32_vector("seqused_k", seqused_k, batch, q.device, "(batch,) of keys used per sequence")
        if read_data:
            lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).cpu()
            used = seqused_k.cpu()
            if (used < 0).any() or (used > lengths).any():
                raise ValueError(f"seqused_k: each entry must lie in [0, its cu_seqlens_k length {lengths.tolist()}]"
                                 f", got {used.tolist()}")
    if seqused_q is not None:
        _check_int32_vector("seqused_q", seqused_q, batch, q.device, "(batch,) of queries used per sequence")
        if read_data:
            lengths = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).cpu()
            used = seqused_q.cpu()
            if (used < 0).any() or (used > lengths).any():
                raise ValueError(f"seqused_q: each entry must lie in [0, its cu_seqlens_q length {lengths.tolist()}]"
                                 f", got {used.tolist()}")
    softmax_scale = _check_scalars(q, softmax_scale, softcap, qv)
    left, right = _window(causal, window_size)
    attention_chunk = check_attention_chunk(attention_chunk)
    sinks = _check_sinks(sinks, q.shape[1], q.device)
    num_splits = _check_int_arg("num_splits", num_splits, 0)
    sm_margin = _check_int_arg("sm_margin", sm_margin, 0)
    choices = functools.partial(_varlen_length_choices, pack_gqa, num_splits, q.device, q.shape[1], k.shape[1], batch,
                                left, right, attention_chunk, sm_margin, qv is not None, q.element_size(), v.shape[-1])
    if qv is None:
        # Everything but these choices depends on the call's signature alone, whatever the lengths and the rows of
        # q and k: swattn._replay then replays the call for other lengths with the same choices.
        packed, num_splits = note_length_choices(choices, max_seqlen_q, max_seqlen_k)
    else:
        packed, num_splits = choices(max_seqlen_q, max_seqlen_k)
    arguments = (_contiguous_last(q), _contiguous_last(k), _contiguous_last(v), sinks, _contiguous(cu_seqlens_q),
                 _contiguous(cu_seqlens_k), _contiguous(seqused_k), max_seqlen_q, max_seqlen_k, softmax_scale, left,
                 right, float(softcap), packed, num_splits, _contiguous(seqused_q), attention_chunk, q_descale,
                 k_descale, v_descale, bool(return_softmax_lse or return_attn_probs), qv)
    if out is None:
        out, lse = ops.run_fwd(*arguments)
    else:
        _check_out(out, q, v.shape[-1], (q, k, v, sinks, qv))
        out, lse = ops.run_fwd_into(out, *arguments)
    return _result(out, lse, return_softmax_lse or return_attn_probs)


@replayed(lengths=((("q", "out"),), ("max_seqlen_q",)), dense=(("k_cache", "v_cache"),))
def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | int | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    rotary_seqlens: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    scheduler_metadata: torch.Tensor | None = None,
    num_splits: int = 0,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
    return_softmax_lse: bool = False,
    sinks: torch.Tensor | None = None,
    check_inputs: bool | None = None,
    out: torch.Tensor | None = None,
):
    """Attention of new queries against a KV cache (decode, extend, speculative verify), appending new k/v.

    q: ``[B, Sq, H, D]``, or ``[total_q, H, D]`` with ``cu_seqlens_q [B + 1]`` (int32) and ``max_seqlen_q``.
    k_cache, v_cache: contiguous ``[B_cache, S_cache, Hk, D]`` (row ``cache_batch_idx[b]`` or b), or paged
    ``[num_pages, page_size, Hk, D]`` with ``page_table [B_cache, max_pages]`` (int32; row ``cache_batch_idx[b]``
    or b lists sequence b's pages), any page_size >= 1; v_cache's last dimension may be a value head_dim Dv of its
    own (as in ``flash_attn_func``; new ``v`` then has it too). cache_seqlens: int or ``[B]`` int32, tokens
    already in the cache (None = the whole cache). k, v (optional): new tokens ``[B, S_new, Hk, D]``, or packed
    ``[total_new, Hk, D]`` with ``cu_seqlens_k_new [B + 1]`` (int32), or (swattn's shorthand, with cu_seqlens_q)
    ``[total_q, Hk, D]`` laid out like q; written in place at ``cache_seqlens[b] ...`` before attending, in one
    launch; the queries are the last rows (bottom-right alignment). ``cache_leftpad [B]`` (int32): sequence b's
    keys start at cache slot ``cache_leftpad[b]`` (slots before it are never read); positions and the window count
    from there.
    ``rotary_cos``/``rotary_sin`` ``[seqlen_ro, rotary_dim / 2]`` (with k, v): new key i of sequence b is rotated at
    position ``rotary_seqlens[b] + i`` (default ``cache_seqlens[b] + i``) before it is written, and q likewise when
    the attention is causal or local (else every query at ``rotary_seqlens[b]``), as FlashAttention 3 does;
    ``rotary_interleaved`` pairs dimensions (0, 1), (2, 3), ... (else i and i + rotary_dim / 2, GPT-NeoX).
    Without rotary_cos / rotary_sin, ``rotary_seqlens`` is ignored (FlashAttention 3's callers pass it anyway).
    ``attention_chunk`` > 0: chunked local attention (see ``flash_attn_func``). An e4m3 cache
    (``torch.float8_e4m3fn``; q in fp16/bf16 or e4m3) takes ``k_descale``/``v_descale`` (and ``q_descale`` for e4m3
    q) as in ``flash_attn_func``; new k/v in q's dtype are quantized into it (``k / k_descale[b, h]``, saturated to
    +-448, rounded to nearest even), e4m3 ones copied. Only pages overlapping the window
    are read, so pages wholly before it may be freed or reused (``swattn.first_readable_page`` says which).
    ``num_splits`` 0 = automatic split-KV, 1 = none;
    ``pack_gqa`` None = automatic. ``sm_margin`` lowers the SM count that automatic split-KV plans for (swattn's
    grids are not persistent, so no SM is reserved beyond that); ``scheduler_metadata`` is accepted and not needed
    (swattn plans from shapes on the host, without reading GPU data). Returns out shaped like q with v_cache's
    head_dim (into ``out`` when given, as in ``flash_attn_func``) and, with
    ``return_softmax_lse``, lse ``[B, H, Sq]`` or ``[H, total_q]`` (float32).
    ``qv`` (FlashAttention 3's, MLA's second query term): laid out like q with v_cache's head_dim, as in
    ``flash_attn_func`` (not rotated; forward only).
    With ``check_inputs`` (default: on for CPU tensors, off on GPU: it synchronises), page indices, cache_seqlens,
    cache_leftpad, cache_batch_idx, cu_seqlens_k_new and rotary positions are checked against their tensors;
    otherwise keeping them in range is the caller's contract.
    """
    varlen = cu_seqlens_q is not None
    paged = page_table is not None
    _check_tensor("k_cache", k_cache, 4, "(num_pages, page_size, Hk, D)" if paged else "(B_cache, S_cache, Hk, D)")
    _check_tensor("v_cache", v_cache, 4, "like k_cache")
    _check_qkv(q, k_cache, v_cache, "(total_q, H, D) with cu_seqlens_q" if varlen else "(B, Sq, H, D)",
               "(num_pages, page_size, Hk, D)" if paged else "(B_cache, S_cache, Hk, D)", 3 if varlen else 4, 4,
               "k_cache", "v_cache")
    _check_qv(qv, q, k_cache, v_cache.shape[-1], "(total_q, H, Dv)" if varlen else "(B, Sq, H, Dv)")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.stride(-1) != 1:
            raise ValueError(f"{name}: the head dimension must be contiguous (stride 1), got strides {cache.stride()};"
                             " the cache is written in place, so swattn will not copy it")
    read_data = _checks_read_data(q, check_inputs)
    if varlen:
        if max_seqlen_q is None:
            raise ValueError("max_seqlen_q: required with cu_seqlens_q")
        max_seqlen_q = _check_int_arg("max_seqlen_q", max_seqlen_q, 0)
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device, read_data)
        batch = cu_seqlens_q.numel() - 1
    else:
        batch, max_seqlen_q = q.shape[0], q.shape[1]
    if cache_batch_idx is not None:
        _check_int32_vector("cache_batch_idx", cache_batch_idx, batch, q.device, "(B,) of cache rows")
    if paged:
        _check_tensor("page_table", page_table, 2, "(B, max_pages_per_seq)")
        if page_table.dtype != torch.int32:
            raise TypeError(f"page_table: expected dtype torch.int32, got {page_table.dtype}")
        if cache_batch_idx is None and page_table.shape[0] != batch:
            raise ValueError(f"page_table: expected {batch} rows (one per sequence), got {page_table.shape[0]}; "
                             "with more rows than sequences pass cache_batch_idx to pick each sequence's row")
        if page_table.device != q.device:
            raise ValueError(f"page_table: expected device {q.device} to match q, got {page_table.device}")
        if k_cache.shape[1] < 1:
            raise ValueError(f"k_cache: page_size (dim 1) must be >= 1 with page_table, got {k_cache.shape[1]}")
        capacity = page_table.shape[1] * k_cache.shape[1]
        cache_rows = page_table.shape[0]
    else:
        capacity = k_cache.shape[1]
        cache_rows = k_cache.shape[0]
        if cache_batch_idx is None and k_cache.shape[0] < batch:
            raise ValueError(f"k_cache: has {k_cache.shape[0]} rows for a batch of {batch}; pass cache_batch_idx")
    if (k is None) != (v is None):
        raise ValueError("k, v: give both new keys and new values, or neither")
    if cu_seqlens_k_new is not None and k is None:
        raise ValueError("cu_seqlens_k_new: given without new keys k, v")
    new_tokens = 0  # per sequence, when the same for every sequence (None: varlen, known only from data)
    if k is not None:
        packed_new = cu_seqlens_k_new is not None or (varlen and k.dim() == 3)
        if packed_new:
            layout = "(total_new, Hk, D) with cu_seqlens_k_new" if cu_seqlens_k_new is not None else (
                "(total_q, Hk, D) like q")
            _check_tensor("k", k, 3, layout)
            _check_tensor("v", v, 3, layout)
            rows = k.shape[0] if cu_seqlens_k_new is not None else q.shape[0]
            leading = (rows,)
            new_tokens = None
        else:
            _check_tensor("k", k, 4, "(B, S_new, Hk, D)")
            _check_tensor("v", v, 4, "(B, S_new, Hk, Dv)")
            leading = (batch, k.shape[1])
            new_tokens = k.shape[1]
        for name, t, cache in (("k", k, k_cache), ("v", v, v_cache)):
            # New values have v_cache's head_dim (which may differ from the keys', FlashAttention 3's headdim_v).
            expected = leading + tuple(cache.shape[2:])
            if tuple(t.shape) != expected:
                raise ValueError(f"{name}: expected shape {expected} for new tokens (heads and head_dim of "
                                 f"{name}_cache), got {tuple(t.shape)}")
            if t.dtype != k_cache.dtype and not (k_cache.dtype == _FP8 and t.dtype == q.dtype):
                allowed = f"{k_cache.dtype} like the cache" + (
                    f" or {q.dtype} like q (quantized with k_descale/v_descale)" if k_cache.dtype == _FP8 else "")
                raise TypeError(f"{name}: expected dtype {allowed}, got {t.dtype}")
            if t.device != k_cache.device:
                raise ValueError(f"{name}: expected device {k_cache.device} like the cache, got {t.device}")
        if cu_seqlens_k_new is not None:
            _check_cu_seqlens("cu_seqlens_k_new", cu_seqlens_k_new, k.shape[0], k.shape[0], q.device, read_data)
            if cu_seqlens_k_new.numel() != batch + 1:
                raise ValueError(f"cu_seqlens_k_new: expected shape ({batch + 1},) (batch + 1), "
                                 f"got {tuple(cu_seqlens_k_new.shape)}")
    if cache_seqlens is None:
        if new_tokens is None and cu_seqlens_k_new is not None:
            raise ValueError("cache_seqlens: required with cu_seqlens_k_new (the new tokens' count varies)")
        appended = max_seqlen_q if new_tokens is None else new_tokens
        if appended > capacity:
            raise ValueError(f"k: {appended} new tokens per sequence exceed the cache capacity {capacity}")
        cache_seqlens = capacity - appended
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        appended = new_tokens or 0
        if not 0 <= cache_seqlens <= capacity - appended:
            raise ValueError(f"cache_seqlens: {cache_seqlens} cached + {appended} new tokens exceed the cache "
                             f"capacity {capacity}")
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    _check_int32_vector("cache_seqlens", cache_seqlens, batch, q.device, "(B,) of tokens already cached")
    if cache_leftpad is not None:
        _check_int32_vector("cache_leftpad", cache_leftpad, batch, q.device, "(B,) of first cache slots")
    _check_descales(q, k_cache, batch, q_descale, k_descale, v_descale, "k_cache")
    softmax_scale = _check_scalars(q, softmax_scale, softcap, qv)
    left, right = _window(causal, window_size)
    attention_chunk = check_attention_chunk(attention_chunk)
    rotary_dim = _check_rotary(rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, k, q, batch)
    sm_margin = _check_int_arg("sm_margin", sm_margin, 0)
    _check_scheduler_metadata(scheduler_metadata)
    sequential = True
    if rotary_dim:
        # FlashAttention 3 rotates query i at offset + i only for causal or local attention, judged after it turns
        # sides that cover the whole cache (left >= capacity - 1) or all queries (right >= Sq - 1) into -1.
        sequential = (0 <= left < capacity - 1) or (0 <= right < max_seqlen_q - 1) or attention_chunk > 0
    if read_data:
        _check_cache_contents(cache_seqlens, cache_batch_idx, page_table, k_cache, k, cu_seqlens_q, capacity,
                              max_seqlen_q, left, cache_rows, cu_seqlens_k_new, cache_leftpad, attention_chunk)
        if rotary_dim:
            _check_rotary_positions(rotary_cos, rotary_seqlens if rotary_seqlens is not None else cache_seqlens,
                                    k, cu_seqlens_k_new, cu_seqlens_q, max_seqlen_q, sequential)
    sinks = _check_sinks(sinks, q.shape[-2], q.device)
    num_splits = _check_int_arg("num_splits", num_splits, 0)
    # Only an automatic split count over an e4m3 cache with 16-bit queries (or e4m3 ones with
    # configs.FP8_QKV_PAIRS) asks whether the decode may take two KV heads per program (the check's stride reads
    # cost ~3 us of host time per call on every other path).
    head_dim = k_cache.shape[-1]
    pairs_possible = k_cache.dtype == _FP8 and (q.dtype != _FP8 or configs.FP8_QKV_PAIRS)
    pairs_layout = (num_splits == 0 and pairs_possible
                    and all(t.stride(-1) == 1 and t.stride(-2) == head_dim for t in (k_cache, v_cache)))
    choices = functools.partial(
        _kvcache_length_choices, pack_gqa, num_splits, q.device, q.shape[-2], k_cache.shape[2], head_dim, batch,
        capacity, left, right, attention_chunk, sm_margin, paged, pairs_possible,
        k_cache.dtype == _FP8, pairs_layout, k is not None, qv is not None, q.element_size(), v_cache.shape[-1],
        q.dtype == _FP8)
    if varlen and k is None and rotary_dim == 0 and qv is None:
        # Everything but these choices depends on the call's signature alone, whatever max_seqlen_q and q's rows:
        # swattn._replay then replays the call for other lengths with the same choices (a serving engine's mixed
        # batches), asking them again for each call's max_seqlen_q.
        packed, num_splits = note_length_choices(choices, max_seqlen_q)
    elif not varlen and not paged and k is None and qv is None and k_cache.dtype != _FP8:
        # A dense cache read as it is (a transformers DynamicCache decode, one token longer every step): everything
        # but these choices depends on the call's signature alone, whatever the caches' length (dim 1) and strides
        # (the capacity enters only the split count here: no rotary, append, pages or e4m3 pairs): swattn._replay
        # then replays the call for other cache lengths with the same choices.
        packed, num_splits = note_length_choices(functools.partial(_dense_cache_choices, choices, max_seqlen_q),
                                                 capacity)
    else:
        packed, num_splits = choices(max_seqlen_q)
    arguments = (
        _contiguous_last(q), k_cache, v_cache, None if k is None else _contiguous_last(k),
        None if v is None else _contiguous_last(v), _contiguous(cache_seqlens), _contiguous(cache_batch_idx),
        _contiguous_last(page_table) if paged else None, _contiguous(cu_seqlens_q),
        max_seqlen_q, sinks, softmax_scale, left, right, float(softcap), packed, num_splits,
        _contiguous(cu_seqlens_k_new), _contiguous(cache_leftpad),
        None if rotary_cos is None else _contiguous_last(rotary_cos),
        None if rotary_sin is None else _contiguous_last(rotary_sin),
        _contiguous(rotary_seqlens) if rotary_dim else None,
        bool(rotary_interleaved), sequential, attention_chunk, q_descale, k_descale, v_descale,
        bool(return_softmax_lse), qv)
    if out is None:
        out, lse = ops.run_fwd_kvcache(*arguments)
    else:
        _check_out(out, q, v_cache.shape[-1], (q, k_cache, v_cache, k, v, sinks, qv))
        out, lse = ops.run_fwd_kvcache_into(out, *arguments)
    return _result(out, lse, return_softmax_lse)


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
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    has_softcap: bool = False,
    num_splits: int = 0,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
) -> torch.Tensor:
    """FlashAttention 3's ``get_scheduler_metadata``, for callers that precompute it once per batch and pass it to
    every layer's ``flash_attn_with_kvcache(..., scheduler_metadata=)``.

    swattn plans each call from shapes alone on the host (no GPU read, nothing to precompute), so the metadata is
    not needed: ``flash_attn_with_kvcache`` accepts it and makes the same plan without it. What is returned is
    that plan, for inspection: an int32 tensor ``[num_splits, pack_gqa]`` on ``cache_seqlens``' device, the split
    count and PackGQA choice ``flash_attn_with_kvcache`` makes for these shapes. Arguments are checked as there
    (``headdim_v``: v_cache's head_dim, as ``check_value_head_dim`` takes it; it does not change the plan). FA3's
    metadata takes no ``qv``: the plan is that of a call without it (a call with qv and V rows longer than 256 over
    packed tiles of 64 rows or more plans for MLA's tile instead, ``configs.qv_packed_tile``).
    """
    for name, value, minimum in (("batch_size", batch_size, 0), ("max_seqlen_q", max_seqlen_q, 0),
                                 ("max_seqlen_k", max_seqlen_k, 0), ("num_heads_q", num_heads_q, 1),
                                 ("num_heads_kv", num_heads_kv, 1), ("headdim", headdim, 8),
                                 ("max_seqlen_k_new", max_seqlen_k_new, 0), ("num_splits", num_splits, 0),
                                 ("sm_margin", sm_margin, 0)):
        _check_int_arg(name, value, minimum)
    if num_heads_q % num_heads_kv != 0:
        raise ValueError(f"num_heads_q: {num_heads_q} must be a multiple of num_heads_kv = {num_heads_kv}")
    if qkv_dtype not in _DTYPES + (_FP8,):
        raise TypeError(f"qkv_dtype: expected float16, bfloat16, float32 or float8_e4m3fn, got {qkv_dtype}")
    if headdim_v is not None:
        _check_int_arg("headdim_v", headdim_v, 8)
        check_value_head_dim("headdim_v", headdim, headdim_v, qkv_dtype == _FP8)
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"cache_seqlens: expected an int32 tensor (B,), got {type(cache_seqlens).__name__}")
    if page_size is not None:
        _check_int_arg("page_size", page_size, 1)
    left, right = _window(causal, window_size)
    attention_chunk = check_attention_chunk(attention_chunk)
    group = num_heads_q // num_heads_kv
    packed = _auto_pack_gqa(pack_gqa, max_seqlen_q, group, left, right)
    rows = max_seqlen_q * (group if packed else 1)
    programs = batch_size * (num_heads_kv if packed else num_heads_q) * max(1, -(-rows // 64))
    splits = _auto_num_splits(num_splits, cache_seqlens.device, programs, max_seqlen_k, left, right, max_seqlen_q,
                              attention_chunk, sm_margin, rows, page_size is not None, qkv_dtype == _FP8)
    return torch.tensor([splits, int(packed)], dtype=torch.int32, device=cache_seqlens.device)


_COMBINE_MAX_HEAD_DIM = 1024


def flash_attn_combine(
    out_partial: torch.Tensor,
    lse_partial: torch.Tensor,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention 3's ``flash_attn_combine``: merge partial attention results over disjoint key sets (split-KV,
    context-parallel shards) by their log-sum-exps.

    out_partial: ``[num_splits, B, Sq, H, D]`` float32 (float16 / bfloat16 accepted), any strides with unit stride
    in D; lse_partial: ``[num_splits, B, Sq, H]`` float32 (natural log), any strides. Also FlashAttention's varlen
    layout, one dimension less: ``[num_splits, total_q, H, D]`` and ``[num_splits, total_q, H]``. Any number of
    splits (merged in chunks: no limit), D up to 1024. ``lse = logsumexp_s(lse_s)``, ``out = sum_s exp(lse_s - lse)
    * out_s``: a split with lse -inf (it saw no key) adds nothing, and a row whose splits are all -inf gives out 0
    and lse -inf. ``out``: ``[B, Sq, H, D]`` (``[total_q, H, D]``) written in place, unit stride in D, or None
    (allocated); ``out_dtype``: float32, float16 or bfloat16, default out's dtype, else out_partial's.
    Returns ``(out, softmax_lse)``: softmax_lse float32 ``[B, Sq, H]`` (``[total_q, H]``), a transposed view of a
    contiguous ``[B, H, Sq]`` (``[H, total_q]``) as in FlashAttention 3. No gradient.
    """
    _check_tensor("out_partial", out_partial, (5, 4), "(num_splits, B, Sq, H, D) or (num_splits, total_q, H, D)")
    if out_partial.dtype not in _DTYPES:
        raise TypeError(f"out_partial: expected dtype float32 (or float16, bfloat16), got {out_partial.dtype}")
    varlen = out_partial.dim() == 4
    layout = "(num_splits, total_q, H)" if varlen else "(num_splits, B, Sq, H)"
    _check_tensor("lse_partial", lse_partial, out_partial.dim() - 1, layout)
    if tuple(lse_partial.shape) != tuple(out_partial.shape[:-1]):
        raise ValueError(f"lse_partial: expected shape {tuple(out_partial.shape[:-1])} {layout} to match "
                         f"out_partial, got {tuple(lse_partial.shape)}")
    if lse_partial.dtype != torch.float32:
        raise TypeError(f"lse_partial: expected dtype torch.float32, got {lse_partial.dtype}")
    if lse_partial.device != out_partial.device:
        raise ValueError(f"lse_partial: expected device {out_partial.device} to match out_partial, "
                         f"got {lse_partial.device}")
    head_dim, heads = out_partial.shape[-1], out_partial.shape[-2]
    if not 1 <= head_dim <= _COMBINE_MAX_HEAD_DIM:
        raise ValueError(f"out_partial: head_dim must lie in [1, {_COMBINE_MAX_HEAD_DIM}], got {head_dim}")
    batch = 1 if varlen else out_partial.shape[1]
    if heads > MAX_GRID_YZ or batch > MAX_GRID_YZ:  # the merge's grid holds them in its second and third dimensions
        raise ValueError(f"out_partial: at most {MAX_GRID_YZ} heads and {MAX_GRID_YZ} sequences per call, got "
                         f"{heads} heads, {batch} sequences (merge in several calls)")
    merged_shape = tuple(out_partial.shape[1:])
    if out_dtype is not None and out_dtype not in _DTYPES:
        raise TypeError(f"out_dtype: expected torch.float32, torch.float16, torch.bfloat16 or None, got {out_dtype}")
    if out is None:
        out = torch.empty(merged_shape, dtype=out_dtype or out_partial.dtype, device=out_partial.device)
    else:
        _check_tensor("out", out, len(merged_shape), "(total_q, H, D)" if varlen else "(B, Sq, H, D)")
        if tuple(out.shape) != merged_shape:
            raise ValueError(f"out: expected shape {merged_shape} (out_partial without its splits), "
                             f"got {tuple(out.shape)}")
        if out_dtype is not None and out.dtype != out_dtype:
            raise TypeError(f"out: expected dtype {out_dtype} (out_dtype), got {out.dtype}")
        if out.dtype not in _DTYPES:
            raise TypeError(f"out: expected dtype float32, float16 or bfloat16, got {out.dtype}")
        if out.device != out_partial.device:
            raise ValueError(f"out: expected device {out_partial.device} to match out_partial, got {out.device}")
        if out.stride(-1) != 1 and out.numel() > 0:
            raise ValueError(f"out: written in place, so its last dimension must have stride 1, got strides "
                             f"{tuple(out.stride())}")
    if varlen:
        lse = torch.empty(heads, merged_shape[0], dtype=torch.float32, device=out_partial.device).t()
    else:
        lse = torch.empty(batch, heads, merged_shape[1], dtype=torch.float32,
                          device=out_partial.device).transpose(1, 2)
    ops.run_combine(_contiguous_last(out_partial), lse_partial, out, lse)
    return out, lse


def _check_rotary(rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, k, q, batch: int) -> int:
    """The rotary arguments agree with each other and with q; returns rotary_dim (0 without rotary)."""
    if rotary_cos is None and rotary_sin is None:
        # FlashAttention 3 ignores rotary_seqlens without rotary_cos / rotary_sin, and its callers (its own tests
        # among them) pass it either way: accepted, checked for shape and dtype, and ignored.
        if rotary_seqlens is not None:
            _check_int32_vector("rotary_seqlens", rotary_seqlens, batch, q.device, "(B,) of rotary position offsets")
        return 0
    if rotary_cos is None or rotary_sin is None:
        raise ValueError("rotary_cos, rotary_sin: give both or neither")
    if k is None:
        raise ValueError("rotary_cos: rotary embedding applies to new keys; pass k and v with it (as in "
                         "FlashAttention 3)")
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        _check_tensor(name, t, 2, "(seqlen_ro, rotary_dim / 2)")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} to match q, got {t.device}")
    if rotary_sin.shape != rotary_cos.shape:
        raise ValueError(f"rotary_sin: expected shape {tuple(rotary_cos.shape)} to match rotary_cos, "
                         f"got {tuple(rotary_sin.shape)}")
    rotary_dim = 2 * rotary_cos.shape[1]
    if not 0 < rotary_dim <= q.shape[-1]:
        raise ValueError(f"rotary_cos: rotary_dim = 2 * {rotary_cos.shape[1]} must lie in [2, head_dim = "
                         f"{q.shape[-1]}]")
    if not isinstance(rotary_interleaved, bool):
        raise TypeError(f"rotary_interleaved: expected a bool, got {type(rotary_interleaved).__name__}")
    if rotary_seqlens is not None:
        _check_int32_vector("rotary_seqlens", rotary_seqlens, batch, q.device, "(B,) of rotary position offsets")
    return rotary_dim


def _check_rotary_positions(rotary_cos, offsets, k_new, cu_seqlens_k_new, cu_seqlens_q, seqlen_q: int,
                            sequential: bool) -> None:
    """Data check: every position rotary reads (offset + new key index; offset + query index when the queries are
    rotated at sequential positions, else the offset alone) has a row in cos."""
    offsets = offsets.cpu().long()
    if (offsets < 0).any():
        raise ValueError(f"rotary_seqlens: entries must be >= 0, got {offsets.tolist()}")
    if cu_seqlens_k_new is not None or (cu_seqlens_q is not None and k_new.dim() == 3):
        cu = (cu_seqlens_k_new if cu_seqlens_k_new is not None else cu_seqlens_q).cpu().long()
        new = cu[1:] - cu[:-1]
    else:
        new = torch.full_like(offsets, k_new.shape[1])
    if cu_seqlens_q is not None:
        cu = cu_seqlens_q.cpu().long()
        queries = cu[1:] - cu[:-1]
    else:
        queries = torch.full_like(offsets, seqlen_q)
    if not sequential:
        queries = queries.clamp(max=1)  # every query of sequence b at position offsets[b]
    needed = int((offsets + torch.maximum(new, queries)).max()) if offsets.numel() else 0
    if needed > rotary_cos.shape[0]:
        raise ValueError(f"rotary_cos: has {rotary_cos.shape[0]} positions, but rotary reads positions up to "
                         f"{needed - 1} (rotary offset + new tokens / queries)")


def _check_scheduler_metadata(scheduler_metadata) -> None:
    if scheduler_metadata is not None and not isinstance(scheduler_metadata, torch.Tensor):
        raise TypeError(f"scheduler_metadata: expected a tensor (from get_scheduler_metadata) or None, "
                        f"got {type(scheduler_metadata).__name__}")


def _check_cache_contents(cache_seqlens, cache_batch_idx, page_table, k_cache, k_new, cu_seqlens_q,
                          capacity: int, seqlen_q: int, left: int, cache_rows: int, cu_seqlens_k_new=None,
                          cache_leftpad=None, attention_chunk: int = 0) -> None:
    """The data checks of ``check_inputs``: every index the kernels will follow lies inside its tensor.

    Page-table entries wholly before the window of a sequence's first query (or before its cache_leftpad) are never
    read, so they may hold anything (freed pages): they are not checked.
    """
    seqlens = cache_seqlens.cpu().long()
    if cu_seqlens_q is None:
        queries = torch.full_like(seqlens, seqlen_q)
    else:
        cu = cu_seqlens_q.cpu().long()
        queries = cu[1:] - cu[:-1]
    if k_new is None:
        new = torch.zeros_like(seqlens)
    elif cu_seqlens_k_new is not None:
        cu = cu_seqlens_k_new.cpu().long()
        new = cu[1:] - cu[:-1]
    elif k_new.dim() == 3:
        new = queries
    else:
        new = torch.full_like(seqlens, k_new.shape[1])
    total = seqlens + new
    if (seqlens < 0).any() or (total > capacity).any():
        raise ValueError(f"cache_seqlens: cached + new tokens per sequence {total.tolist()} must lie in "
                         f"[0, {capacity}] (the cache's capacity)")
    leftpad = torch.zeros_like(seqlens) if cache_leftpad is None else cache_leftpad.cpu().long()
    if (leftpad < 0).any() or (leftpad > seqlens).any():
        raise ValueError(f"cache_leftpad: entries must lie in [0, cache_seqlens[b]] = {seqlens.tolist()}, "
                         f"got {leftpad.tolist()}")
    if cache_batch_idx is not None:
        rows = cache_batch_idx.cpu()
        if (rows < 0).any() or (rows >= cache_rows).any():
            raise ValueError(f"cache_batch_idx: entries must lie in [0, {cache_rows}), got {rows.tolist()}")
    if page_table is not None:
        page_size = k_cache.shape[1]
        table = page_table.cpu()
        for b, length in enumerate(total.tolist()):
            if int(queries[b]) == 0 and int(new[b]) == 0:
                continue  # nothing is read or written for this sequence (e.g. a padding slot)
            start = int(leftpad[b])
            first_key = start + first_visible_key(0, int(queries[b]), length - start, left, attention_chunk)
            if int(new[b]) > 0:
                first_key = min(first_key, int(seqlens[b]))  # the append writes from cache_seqlens on
            row = b if cache_batch_idx is None else int(cache_batch_idx[b])
            used = table[row, first_key // page_size: -(-length // page_size)]
            if (used < 0).any() or (used >= k_cache.shape[0]).any():
                raise ValueError(f"page_table: row {row} uses page indices outside [0, {k_cache.shape[0]}): "
                                 f"{used.tolist()}")
