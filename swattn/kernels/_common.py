"""Triton helpers shared by the forward, split-KV combine and backward kernels.

The window functions are the ``@triton.jit`` twins of the ones in ``swattn.window`` (same names, same clamping);
``tests/test_window.py`` runs both on the same inputs. Scores are kept in log2 units (``qk * softmax_scale *
log2(e)``) so the loop uses ``exp2``; LSE is converted to natural log when it is stored.
"""

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def wait_for_previous_grid(USE_PDL: tl.constexpr):
    """With programmatic dependent launch (``swattn._compat.pdl_enabled``): block until the previous kernel's
    writes are visible (before any read: q, caches, lengths and tables may all come from it), then let the next
    kernel start launching; its own wait keeps it from reading what this one has not written yet."""
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()


# Diagnostic only (scripts/gpu_probe.py stamps): the device address of an int64 buffer that the split launches'
# programs and the merge's write per-program time stamps into (``record_stamps``), or 0: no stamps (the default; the
# kernels take it as a constexpr, so at 0 every stamp compiles away). Part of the forward plans' key (fwd.settings).
# The buffer: two arrival counters (split programs, merge programs), then per region STAMP_RECORDS records of
# STAMP_FIELDS int64 each, at STAMP_HEADER + region * STAMP_RECORDS * STAMP_FIELDS. Bit 0 of the address (16-byte
# aligned otherwise): the split programs also stamp their first K row's arrival, through a load chain of their own
# whose wait delays the program's own loads (a perturbed ramp: time it with and without).
STAMPS_ADDRESS = 0
STAMP_HEADER, STAMP_RECORDS, STAMP_FIELDS = tl.constexpr(16), tl.constexpr(1 << 16), tl.constexpr(16)


@triton.jit
def time_stamp(after):
    """The low 32 bits of %globaltimer (ns), read once ``after`` (an int32 scalar: a loaded value makes this wait for
    its load; the read is predicated on it, so ptxas cannot move it before the value arrives). 32 bits: a stamp held
    across the KV loop costs one register (the split decode program has ~6 to spare before it loses its sixth
    program per SM; three 64-bit stamps took it from 162 to 198, Triton 3.6)."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u64 t; setp.ne.s32 p, $1, 2147483647; mov.u32 $0, 0; @p mov.u64 t, %globaltimer;"
        " @p cvt.u32.u64 $0, t; }",
        "=r,r", [after], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def record_stamps(ADDRESS: tl.constexpr, REGION: tl.constexpr, program, start, waited, first):
    """One program's record in region ``REGION`` of the stamp buffer at ``ADDRESS``, written at its end: its arrival
    ticket (the region's counter, so consecutive calls' programs fill consecutive records), ``program`` (its linear
    id), %globaltimer now (64 bits: the end), the 32-bit stamps ``start``, ``waited`` (past the PDL wait), ``first``
    (first K row arrived, or ``waited``) and the end's, and %smid."""
    end = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [program], dtype=tl.int64, is_pure=False,
                                    pack=1)
    sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [program], dtype=tl.int32, is_pure=False, pack=1)
    base = tl.full([], ADDRESS - ADDRESS % 16, tl.int64).to(tl.pointer_type(tl.int64))  # low bits: options
    ticket = tl.atomic_add(base + REGION, 1).to(tl.int64)
    record = base + STAMP_HEADER + (REGION * STAMP_RECORDS + ticket % STAMP_RECORDS) * STAMP_FIELDS
    field = tl.arange(0, 16)
    values = tl.where(field == 0, ticket, 0) + tl.where(field == 1, program.to(tl.int64), 0)
    values += tl.where(field == 2, end, 0) + tl.where(field == 3, start.to(tl.int64) & 0xFFFFFFFF, 0)
    values += tl.where(field == 4, waited.to(tl.int64) & 0xFFFFFFFF, 0)
    values += tl.where(field == 5, first.to(tl.int64) & 0xFFFFFFFF, 0)
    values += tl.where(field == 6, end & 0xFFFFFFFF, 0) + tl.where(field == 7, sm.to(tl.int64), 0)
    tl.store(record + field, values)


@triton.jit
def wait_only_for_previous_grid(USE_PDL: tl.constexpr):
    """``wait_for_previous_grid`` without letting the next kernel launch: the program does that itself later
    (``let_dependents_launch``), or at its exit."""
    if USE_PDL:
        gdc_wait()


@triton.jit
def let_dependents_launch(USE_PDL: tl.constexpr):
    """The next kernel may start launching once every program of this one has passed here or exited."""
    if USE_PDL:
        gdc_launch_dependents()


@triton.jit
def let_dependents_launch_then_wait(USE_PDL: tl.constexpr):
    """``wait_for_previous_grid`` in the other order: the next kernel may start launching as soon as every program
    of this one has started, before this one's programs pass their own wait (its wait still holds it until this grid
    has completed: only where it runs, not what it reads, changes)."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def chunk_start(pos, chunk):
    """First key of the attention chunk holding key-space position ``pos``: ``floor(pos / chunk) * chunk``, floored
    as Python's ``//`` is (Triton's ``%`` truncates toward zero, so a negative position needs the second ``%``)."""
    return pos - ((pos % chunk) + chunk) % chunk


@triton.jit
def first_visible_key(row, seqlen_q, seqlen_k, left, HAS_LEFT: tl.constexpr, chunk=0, HAS_CHUNK: tl.constexpr = False):
    """First key that query row ``row`` sees, clamped to ``[0, seqlen_k]``; with ``HAS_CHUNK`` no earlier than the
    first key of the row's attention chunk."""
    if HAS_CHUNK:
        first = chunk_start(row + seqlen_k - seqlen_q, chunk)
        if HAS_LEFT:
            first = tl.maximum(first, row + seqlen_k - seqlen_q - left)
        return tl.minimum(tl.maximum(first, 0), seqlen_k)
    elif HAS_LEFT:
        return tl.minimum(tl.maximum(row + seqlen_k - seqlen_q - left, 0), seqlen_k)
    else:
        return row * 0


@triton.jit
def last_visible_key(row, seqlen_q, seqlen_k, right, HAS_RIGHT: tl.constexpr, chunk=0, HAS_CHUNK: tl.constexpr = False):
    """Last key that query row ``row`` sees, clamped to ``[-1, seqlen_k - 1]``; with ``HAS_CHUNK`` no later than the
    last key of the row's attention chunk."""
    if HAS_CHUNK:
        last = chunk_start(row + seqlen_k - seqlen_q, chunk) + chunk - 1
        if HAS_RIGHT:
            last = tl.minimum(last, row + seqlen_k - seqlen_q + right)
        return tl.maximum(tl.minimum(last, seqlen_k - 1), -1)
    elif HAS_RIGHT:
        return tl.maximum(tl.minimum(row + seqlen_k - seqlen_q + right, seqlen_k - 1), -1)
    else:
        return row * 0 + seqlen_k - 1


@triton.jit
def sequence_bounds(batch, seqlen_q, seqlen_k, CU_SEQLENS_Q, CU_SEQLENS_K, SEQLENS_K, IS_VARLEN_Q: tl.constexpr,
                    IS_VARLEN_K: tl.constexpr, HAS_SEQLENS_K: tl.constexpr, SEQUSED_Q=None,
                    HAS_SEQUSED_Q: tl.constexpr = False, LEFTPAD_K=None, HAS_LEFTPAD_K: tl.constexpr = False):
    """``(q_begin, seqlen_q, k_begin, seqlen_k)`` of sequence ``batch``: packed offsets and lengths for varlen
    inputs, 0 and the dense lengths otherwise; ``SEQLENS_K`` (seqused_k / cache lengths) overrides the key count,
    ``SEQUSED_Q`` the query count (rows past it are neither read nor written). ``LEFTPAD_K`` (cache_leftpad): the
    sequence's keys start that many tokens into its cache row, so ``k_begin`` moves by it and ``seqlen_k`` (the
    end, from SEQLENS_K) shrinks by it; key indices stay relative to the first valid key, as FlashAttention 3's."""
    q_begin = batch * 0
    k_begin = batch * 0
    if IS_VARLEN_Q:
        q_begin = tl.load(CU_SEQLENS_Q + batch)
        seqlen_q = tl.load(CU_SEQLENS_Q + batch + 1) - q_begin
    if HAS_SEQUSED_Q:
        seqlen_q = tl.load(SEQUSED_Q + batch)
    if IS_VARLEN_K:
        k_begin = tl.load(CU_SEQLENS_K + batch)
        if not HAS_SEQLENS_K:
            seqlen_k = tl.load(CU_SEQLENS_K + batch + 1) - k_begin
    if HAS_SEQLENS_K:
        seqlen_k = tl.load(SEQLENS_K + batch)
    if HAS_LEFTPAD_K:
        leftpad = tl.load(LEFTPAD_K + batch)
        k_begin = k_begin + leftpad
        seqlen_k = seqlen_k - leftpad
    return q_begin, seqlen_q, k_begin, seqlen_k


@triton.jit
def in_window(mask, key, row, offset, left, right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, chunk=0,
              HAS_CHUNK: tl.constexpr = False):
    """``mask`` and-ed with "query ``row`` sees ``key``" by the window (``offset = seqlen_k - seqlen_q``, bottom-right
    alignment) and, with ``HAS_CHUNK``, by the attention chunk (query and key in the same ``chunk``-key chunk): the
    per-element mask of an edge block. Arguments broadcast, so one helper serves the forward's and dQ's [rows, keys]
    tiles and dK/dV's [keys, rows] tiles (the chunk start is computed on ``row``'s own shape, once per row)."""
    if HAS_LEFT:
        mask = mask & (key >= row + offset - left)
    if HAS_RIGHT:
        mask = mask & (key <= row + offset + right)
    if HAS_CHUNK:
        start = chunk_start(row + offset, chunk)
        mask = mask & (key >= start) & (key < start + chunk)
    return mask


@triton.jit
def block_ranges(first_row, last_row, seqlen_q, seqlen_k, left, right, BLOCK_N: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, chunk=0, HAS_CHUNK: tl.constexpr = False,
                 ALIGN: tl.constexpr = 1):
    """The KV loop of a tile of query rows ``first_row..last_row`` (positions, inclusive).

    Returns ``(kv_start, kv_end, masked_head_end, unmasked_end, num_blocks)``: block ``b`` covers keys
    ``[kv_start + b*BLOCK_N, kv_start + (b+1)*BLOCK_N)``; blocks ``[masked_head_end, unmasked_end)`` are visible to
    every row of the tile and need no mask, the others are masked (per row) and load only keys ``< kv_end``.
    ``ALIGN`` > 1 rounds the start down to a multiple of it (the Gluon kernel's page-sized TMA boxes must not
    straddle a page); keys before the first visible one then fall in block 0, which the masked range covers.
    """
    kv_start = first_visible_key(first_row, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK)
    if ALIGN > 1:
        kv_start = kv_start - kv_start % ALIGN
    kv_end = last_visible_key(last_row, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK) + 1
    span = tl.maximum(kv_end - kv_start, 0)
    num_blocks = tl.cdiv(span, BLOCK_N)
    # Keys seen by every row: from the last row's first key to the first row's last key.
    shared_start = first_visible_key(last_row, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK)
    shared_end = last_visible_key(first_row, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK) + 1
    masked_head_end = tl.minimum(tl.cdiv(shared_start - kv_start, BLOCK_N), num_blocks)
    # max(0, .) before the division: Triton's integer division truncates toward zero.
    unmasked_end = tl.maximum(tl.minimum(tl.maximum(shared_end - kv_start, 0) // BLOCK_N, num_blocks),
                              masked_head_end)
    return kv_start, kv_end, masked_head_end, unmasked_end, num_blocks


@triton.jit
def first_query_seeing(key, seqlen_q, seqlen_k, right, HAS_RIGHT: tl.constexpr, chunk=0,
                       HAS_CHUNK: tl.constexpr = False):
    """First query row whose window (and, with ``HAS_CHUNK``, chunk) contains ``key``, clamped to ``[0, seqlen_q]``."""
    if HAS_CHUNK:
        first = chunk_start(key, chunk)
        if HAS_RIGHT:
            first = tl.maximum(first, key - right)
        return tl.minimum(tl.maximum(first + seqlen_q - seqlen_k, 0), seqlen_q)
    elif HAS_RIGHT:
        return tl.minimum(tl.maximum(key + seqlen_q - seqlen_k - right, 0), seqlen_q)
    else:
        return key * 0


@triton.jit
def last_query_seeing(key, seqlen_q, seqlen_k, left, HAS_LEFT: tl.constexpr, chunk=0, HAS_CHUNK: tl.constexpr = False):
    """Last query row whose window (and, with ``HAS_CHUNK``, chunk) contains ``key``, clamped to
    ``[-1, seqlen_q - 1]``."""
    if HAS_CHUNK:
        last = chunk_start(key, chunk) + chunk - 1
        if HAS_LEFT:
            last = tl.minimum(last, key + left)
        return tl.maximum(tl.minimum(last + seqlen_q - seqlen_k, seqlen_q - 1), -1)
    elif HAS_LEFT:
        return tl.maximum(tl.minimum(key + seqlen_q - seqlen_k + left, seqlen_q - 1), -1)
    else:
        return key * 0 + seqlen_q - 1


@triton.jit
def query_block_ranges(first_key, last_key, seqlen_q, seqlen_k, left, right, BLOCK_M: tl.constexpr,
                       HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, chunk=0, HAS_CHUNK: tl.constexpr = False):
    """The query loop of the backward's dK/dV program for keys ``first_key..last_key`` (inclusive, in range).

    The mirror of ``block_ranges``: returns ``(q_start, q_end, masked_head_end, unmasked_end, num_blocks)``;
    block ``b`` covers query rows ``[q_start + b*BLOCK_M, q_start + (b+1)*BLOCK_M)``, blocks
    ``[masked_head_end, unmasked_end)`` see every key of the block, the others are masked and load only rows
    ``< q_end``.
    """
    q_start = first_query_seeing(first_key, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK)
    q_end = last_query_seeing(last_key, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK) + 1
    span = tl.maximum(q_end - q_start, 0)
    num_blocks = tl.cdiv(span, BLOCK_M)
    # Rows that see every key: from the one that sees the last key first to the last one that sees the first key.
    shared_start = first_query_seeing(last_key, seqlen_q, seqlen_k, right, HAS_RIGHT, chunk, HAS_CHUNK)
    shared_end = last_query_seeing(first_key, seqlen_q, seqlen_k, left, HAS_LEFT, chunk, HAS_CHUNK) + 1
    masked_head_end = tl.minimum(tl.cdiv(shared_start - q_start, BLOCK_M), num_blocks)
    # max(0, .) before the division: Triton's integer division truncates toward zero.
    unmasked_end = tl.maximum(tl.minimum(tl.maximum(shared_end - q_start, 0) // BLOCK_M, num_blocks),
                              masked_head_end)
    return q_start, q_end, masked_head_end, unmasked_end, num_blocks


@triton.jit
def softcap_scores(qk, softmax_scale, softcap):
    """``softcap * tanh(qk * softmax_scale / softcap)``, in log2 units; tanh through sigmoid (no tl.tanh)."""
    x = qk * (softmax_scale / softcap)
    return (softcap * LOG2E) * (2.0 * tl.sigmoid(2.0 * x) - 1.0)


@triton.jit
def fast_log2(x):
    """``log2`` through the SFU (``lg2.approx``: relative error ~2^-22, one MUFU instruction and a few fix-ups)
    instead of ``tl.log2``'s libdevice polynomial (~30 instructions per value). Compiled kernels only: the
    interpreter does not run inline PTX."""
    return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def finish_rows(m_i, l_i, sink, HAS_SINK: tl.constexpr, FAST_LOG2: tl.constexpr = False):
    """A tile's row statistics after its last block -> ``(row_factor, lse)``: the sink (log2 units) joins the
    denominator once (it has no value vector); ``row_factor`` scales the accumulator by the sink's rescale and the
    normalization together (one division per row, not one per element); rows that saw nothing (sum 0) get factor
    1 over an all-zero accumulator and LSE -inf. Shared by the Triton and Gluon epilogues. ``FAST_LOG2``: the LSE's
    logarithm through ``fast_log2`` (compiled kernels only)."""
    acc_scale = tl.where(l_i == 0.0, 1.0, 1.0)  # ones shaped (and laid out) as the rows; m_i * 0 is NaN at -inf
    if HAS_SINK:
        m_new = tl.maximum(m_i, sink)
        acc_scale = tl.exp2(m_i - m_new)
        l_i = l_i * acc_scale + tl.exp2(sink - m_new)
        m_i = m_new
    no_key = l_i == 0.0
    if FAST_LOG2:
        log2_sum = fast_log2(tl.where(no_key, 1.0, l_i))
    else:
        log2_sum = tl.log2(tl.where(no_key, 1.0, l_i))
    lse = tl.where(no_key, float("-inf"), (m_i + log2_sum) * LN2)
    return acc_scale / tl.where(no_key, 1.0, l_i), lse


@triton.jit
def kept_max(m_i, m_new, RESCALE_THRESHOLD: tl.constexpr):
    """The lazy rescale's running row max (log2 units): ``m_new`` only where it exceeds ``m_i`` by more than
    ``RESCALE_THRESHOLD`` (0: always ``m_new``), so a row that kept its max rescales by exp2(0) = 1 exactly (a row
    that has seen no key keeps -inf until its first). The Gluon kernel's loop and the Triton redo pass after it both
    take it from here: the redo pass recomputes rows of the Gluon kernel's tiles, and non-finite isolation needs
    their bits to be the Gluon kernel's."""
    if RESCALE_THRESHOLD > 0:
        m_new = tl.where(m_new > m_i + RESCALE_THRESHOLD, m_new, m_i)
    return m_new


@triton.jit
def safe_pivot(m):
    """Rows that have seen no key yet keep max = -inf; subtract 0 instead so exp2 gives 0, never NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def dot(a, b):
    """``tl.dot``, in full fp32 precision for fp32 operands (torch's default for fp32 matmuls; Triton's default
    rounds them to TF32, a 1e-3 relative error)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


def token_strides(t, packed: bool) -> tuple[int, int, int]:
    """Host side: the (batch, token, head) strides of ``[B, S, H, D]``, or of packed ``[total, H, D]`` (batch
    stride 0). One ``stride()`` call: each one builds a tuple, and a decode call read 35 of them one by one."""
    strides = t.stride()
    return (0, strides[0], strides[1]) if packed else strides[:3]


def lse_strides(lse, varlen: bool) -> tuple[int, int, int]:
    """Host side: the (batch, position, head) strides of lse ``[B, H, Sq]``, or of varlen ``[H, total_q]`` (batch
    stride 0); the forward, backward and split-combine kernels all address lse this way."""
    strides = lse.stride()
    return (0, strides[1], strides[0]) if varlen else (strides[0], strides[2], strides[1])


@functools.cache
def ones_descale(device: torch.device) -> torch.Tensor:
    """Host side: a float32 1, the descale of an fp8 input given none (read with zero strides)."""
    return torch.ones(1, device=device, dtype=torch.float32)


def descale_strides(descale) -> tuple[int, int]:
    """Host side: the (sequence, KV head) strides of a ``[B, Hk]`` descale; zeros for ``ones_descale`` or none."""
    if descale is None or descale.dim() == 1:
        return 0, 0
    return descale.stride(0), descale.stride(1)
