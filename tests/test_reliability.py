"""Bad inputs: one table of malformed calls to the three entry points, each rejected with a named exception.

``CASES`` is the table: every row is a small valid call (the builders below) with one argument made bad, the
exception type it must raise and a regex of its message. Each row is run in this process with the kernels patched
out, so a bad input that slipped past the checks would reach the patch and fail the test instead of crashing,
hanging or returning garbage; nothing reaches a kernel, so nothing is written to a KV cache either.

Rows marked ``data`` are the checks that read tensor data (they synchronise on a GPU): they run with
``check_inputs=True`` and must be skipped with ``check_inputs=False``; every other row must raise whatever
``check_inputs`` says. docs/reliability.md's "Bad inputs" table is rendered from ``CASES``
(``python scripts/render_bad_input_table.py --write``), and ``test_doc_table_is_current`` keeps the two in step.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch

import swattn
from swattn import interface

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
REGENERATE = "python scripts/render_bad_input_table.py --write"

B, SQ, SK, H, HK, D = 2, 3, 5, 4, 2, 16
S_CACHE, PAGE_SIZE, NUM_PAGES = 16, 4, 6


# ----------------------------------------------------------------------------------------------------------------
# Valid calls; each case overrides one argument (or two that must agree).


def _half(*shape, dtype=torch.float16):
    return torch.randn(*shape, dtype=dtype)


def i32(*values):
    return torch.tensor(values, dtype=torch.int32)


def dense(**overrides):
    """flash_attn_func: q [2, 3, 4, 16], k/v [2, 5, 2, 16] (GQA 2), float16."""
    args = dict(q=_half(B, SQ, H, D), k=_half(B, SK, HK, D), v=_half(B, SK, HK, D))
    return {**args, **overrides}


def varlen(**overrides):
    """flash_attn_varlen_func: sequences of 2 + 3 queries and 3 + 4 keys."""
    args = dict(q=_half(5, H, D), k=_half(7, HK, D), v=_half(7, HK, D), cu_seqlens_q=i32(0, 2, 5),
                cu_seqlens_k=i32(0, 3, 7), max_seqlen_q=3, max_seqlen_k=4)
    return {**args, **overrides}


def kvcache(**overrides):
    """flash_attn_with_kvcache, one decode step against a contiguous cache [2, 16, 2, 16] holding 8 and 11 tokens."""
    args = dict(q=_half(B, 1, H, D), k_cache=_half(B, S_CACHE, HK, D), v_cache=_half(B, S_CACHE, HK, D),
                cache_seqlens=i32(8, 11))
    return {**args, **overrides}


def paged(**overrides):
    """flash_attn_with_kvcache, paged: 6 pages of 4 tokens, 3 pages per sequence (capacity 12), 5 and 9 tokens."""
    args = dict(q=_half(B, 1, H, D), k_cache=_half(NUM_PAGES, PAGE_SIZE, HK, D),
                v_cache=_half(NUM_PAGES, PAGE_SIZE, HK, D), page_table=i32([0, 1, 2], [3, 4, 5]),
                cache_seqlens=i32(5, 9))
    return {**args, **overrides}


def kv_varlen(**overrides):
    """flash_attn_with_kvcache with packed queries: 1 + 2 queries (cu_seqlens_q), contiguous cache."""
    return kvcache(**{"q": _half(3, H, D), "cu_seqlens_q": i32(0, 1, 3), "max_seqlen_q": 2, **overrides})


def new_kv(seqlen=1, heads=HK, batch=B, dtype=torch.float16):
    """New tokens for the cache: k=..., v=... of shape [batch, seqlen, heads, D]."""
    return dict(k=_half(batch, seqlen, heads, D, dtype=dtype), v=_half(batch, seqlen, heads, D, dtype=dtype))


def _with(make, name, value):
    return lambda: make(**{name: value() if callable(value) else value})


def _paged_table(row, col, value):
    def build():
        table = i32([0, 1, 2], [3, 4, 5])
        table[row, col] = value
        return paged(page_table=table)
    return build


def _all_dtype(make, dtype):
    args = make()
    return make(**{n: args[n].to(dtype) for n in ("q", "k", "v")})


def _all_head_dim(make, dim):
    args = make()
    return make(**{n: _half(*args[n].shape[:-1], dim) for n in ("q", "k", "v")})


# ----------------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # the swattn function called
    bad: str  # one line for the doc: what is wrong
    build: Callable[[], dict]  # the call's keyword arguments
    exc: type[Exception]  # the exact exception type
    match: str  # regex of the message, matched from its start
    data: bool = False  # a check that reads tensor data: runs with check_inputs=True


FUNC, VARLEN, KVCACHE = "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"
DEV = r"\S+"  # a device name (cpu in the doc, cuda:0 when the suite runs on a GPU)

CASES = [
    # --- flash_attn_func -----------------------------------------------------------------------------------------
    Case("func-q-not-tensor", FUNC, "q is a nested list, not a tensor",
         _with(dense, "q", [[1.0]]), TypeError, r"q: expected a torch\.Tensor of shape \(B, Sq, H, D\), got list$"),
    Case("func-q-rank-3", FUNC, "q of rank 3 (the varlen layout)",
         _with(dense, "q", lambda: _half(SQ, H, D)), ValueError,
         r"q: expected shape \(B, Sq, H, D\) \(4 dims\), got 3 dims \(3, 4, 16\)$"),
    Case("func-q-int32", FUNC, "q of dtype int32",
         _with(dense, "q", lambda: torch.ones(B, SQ, H, D, dtype=torch.int32)), TypeError,
         r"q: expected dtype float16, bfloat16, float32 or float8_e4m3fn, got torch\.int32$"),
    Case("func-qkv-float64", FUNC, "q, k, v all float64",
         lambda: _all_dtype(dense, torch.float64), TypeError,
         r"q: expected dtype float16, bfloat16, float32 or float8_e4m3fn, got torch\.float64$"),
    Case("func-k-dtype-mismatch", FUNC, "k float32 while q is float16",
         _with(dense, "k", lambda: _half(B, SK, HK, D, dtype=torch.float32)), TypeError,
         r"k: expected dtype torch\.float16 to match q, got torch\.float32$"),
    Case("func-v-device-mismatch", FUNC, "v on another device than q",
         _with(dense, "v", lambda: _half(B, SK, HK, D).to("meta")), ValueError,
         rf"v: expected device {DEV} to match q, got meta$"),
    Case("func-kv-shape-mismatch", FUNC, "v with fewer keys than k",
         _with(dense, "v", lambda: _half(B, SK - 1, HK, D)), ValueError,
         r"v: expected shape \(2, 5, 2, 'Dv'\) to match k in every dimension but the last \(the value head_dim\), "
         r"got \(2, 4, 2, 16\)$"),
    Case("func-v-head-dim-not-multiple-of-8", FUNC, "v with head_dim 20 (a value head_dim of its own), k with 16",
         _with(dense, "v", lambda: _half(B, SK, HK, 20)), ValueError,
         r"v: the value head_dim \(last dimension\) must be a multiple of 8 in \[8, 256\] \(up to 512 when the key "
         r"head_dim is at most 64\), got 20 with key head_dim 16$"),
    Case("func-batch-mismatch", FUNC, "k, v with batch 1, q with batch 2",
         lambda: dense(k=_half(1, SK, HK, D), v=_half(1, SK, HK, D)), ValueError,
         r"k: expected batch 2 to match q, got 1$"),
    Case("func-heads-not-multiple", FUNC, "H = 4 query heads, Hk = 3 KV heads",
         lambda: dense(k=_half(B, SK, 3, D), v=_half(B, SK, 3, D)), ValueError,
         r"q/k: the number of query heads \(4\) must be a multiple of the number of KV heads \(3\)$"),
    Case("func-head-dim-12", FUNC, "head_dim 12 (not a multiple of 8)",
         lambda: _all_head_dim(dense, 12), ValueError, r"q: head_dim must be a multiple of 8 in \[8, 256\], got 12$"),
    Case("func-head-dim-mismatch", FUNC, "q head_dim 16, k/v head_dim 32",
         lambda: dense(k=_half(B, SK, HK, 32), v=_half(B, SK, HK, 32)), ValueError,
         r"k: expected head_dim 16 to match q, got 32$"),
    Case("func-window-left-below-minus-1", FUNC, "window_size=(-2, 0)",
         _with(dense, "window_size", (-2, 0)), ValueError, r"window_size: left = -2 is not allowed"),
    Case("func-window-float", FUNC, "window_size=(3.0, 0)",
         _with(dense, "window_size", (3.0, 0)), ValueError, r"window_size: left must be an int >= -1"),
    Case("func-softcap-negative", FUNC, "softcap=-1.0",
         _with(dense, "softcap", -1.0), ValueError, r"softcap: expected a finite float >= 0 \(0 = off\), got -1\.0$"),
    Case("func-sinks-wrong-shape", FUNC, "sinks of shape (Hk,) instead of (H,)",
         _with(dense, "sinks", lambda: torch.zeros(HK)), ValueError,
         r"sinks: expected shape \(4,\) \(one logit per query head\), got \(2,\)$"),
    Case("func-sinks-device-mismatch", FUNC, "sinks on another device than q",
         _with(dense, "sinks", lambda: torch.zeros(H, device="meta")), ValueError,
         rf"sinks: expected device {DEV} to match q, got meta$"),
    Case("func-num-splits-float", FUNC, "num_splits=2.0",
         _with(dense, "num_splits", 2.0), ValueError, r"num_splits: expected an int >= 0, got 2\.0$"),
    Case("func-qv-wrong-head-dim", FUNC, "qv with q's head_dim instead of v's",
         _with(dense, "qv", lambda: _half(B, SQ, H, D + 8)), ValueError,
         r"qv: expected shape \(2, 3, 4, 16\) \(B, Sq, H, Dv\) \(q's, with v's head_dim 16 last\), got "
         r"\(2, 3, 4, 24\)$"),
    # --- flash_attn_varlen_func ----------------------------------------------------------------------------------
    Case("varlen-k-rank-4", VARLEN, "k of rank 4 (the dense layout)",
         _with(varlen, "k", lambda: _half(1, 7, HK, D)), ValueError,
         r"k: expected shape \(total_k, Hk, D\) \(3 dims\), got 4 dims \(1, 7, 2, 16\)$"),
    Case("varlen-head-dim-264", VARLEN, "head_dim 264 (> 256)",
         lambda: _all_head_dim(varlen, 264), ValueError,
         r"q: head_dim must be a multiple of 8 in \[8, 256\], got 264$"),
    Case("varlen-zero-kv-heads", VARLEN, "k, v with 0 heads",
         lambda: varlen(k=_half(7, 0, D), v=_half(7, 0, D)), ValueError,
         r"q/k: the number of query heads \(4\) must be a multiple of the number of KV heads \(0\)$"),
    Case("varlen-window-int", VARLEN, "window_size=3 (not a pair)",
         _with(varlen, "window_size", 3), ValueError, r"window_size: expected a pair \(left, right\)"),
    Case("varlen-softmax-scale-nan", VARLEN, "softmax_scale=nan",
         _with(varlen, "softmax_scale", float("nan")), ValueError,
         r"softmax_scale: expected a finite float > 0 or None, got nan$"),
    Case("varlen-sinks-int-dtype", VARLEN, "sinks of dtype int32",
         _with(varlen, "sinks", lambda: torch.zeros(H, dtype=torch.int32)), TypeError,
         r"sinks: expected a floating dtype, got torch\.int32$"),
    Case("varlen-cu-seqlens-q-int64", VARLEN, "cu_seqlens_q of dtype int64",
         _with(varlen, "cu_seqlens_q", lambda: torch.tensor([0, 2, 5])), TypeError,
         r"cu_seqlens_q: expected dtype torch\.int32, got torch\.int64$"),
    Case("varlen-cu-seqlens-k-list", VARLEN, "cu_seqlens_k a Python list",
         _with(varlen, "cu_seqlens_k", [0, 3, 7]), TypeError, r"cu_seqlens_k: expected an int32 tensor"),
    Case("varlen-cu-seqlens-q-2d", VARLEN, "cu_seqlens_q of rank 2",
         _with(varlen, "cu_seqlens_q", lambda: i32([0, 2, 5])), ValueError,
         r"cu_seqlens_q: expected shape \(n,\) .*, got \(1, 3\)$"),
    Case("varlen-cu-seqlens-q-empty", VARLEN, "cu_seqlens_q with no entries",
         _with(varlen, "cu_seqlens_q", lambda: i32()), ValueError, r"cu_seqlens_q: expected at least one entry"),
    Case("varlen-cu-seqlens-k-wrong-length", VARLEN, "cu_seqlens_k of length 2, cu_seqlens_q of length 3",
         lambda: varlen(cu_seqlens_k=i32(0, 7), max_seqlen_k=7), ValueError,
         r"cu_seqlens_k: expected shape \(3,\) to match cu_seqlens_q, got \(2,\)$"),
    Case("varlen-cu-seqlens-k-device-mismatch", VARLEN, "cu_seqlens_k on another device than q",
         _with(varlen, "cu_seqlens_k", lambda: i32(0, 3, 7).to("meta")), ValueError,
         rf"cu_seqlens_k: expected device {DEV} to match q, got meta$"),
    Case("varlen-cu-seqlens-q-not-from-0", VARLEN, "cu_seqlens_q = [1, 2, 5]",
         _with(varlen, "cu_seqlens_q", lambda: i32(1, 2, 5)), ValueError, r"cu_seqlens_q: must start at 0, got 1$",
         data=True),
    Case("varlen-cu-seqlens-k-decreasing", VARLEN, "cu_seqlens_k = [0, 5, 4] (not non-decreasing)",
         _with(varlen, "cu_seqlens_k", lambda: i32(0, 5, 4)), ValueError,
         r"cu_seqlens_k: must be non-decreasing, got \[0, 5, 4\]$", data=True),
    Case("varlen-cu-seqlens-q-beyond-total", VARLEN, "cu_seqlens_q ends at 6, q has 5 rows",
         _with(varlen, "cu_seqlens_q", lambda: i32(0, 2, 6)), ValueError,
         r"cu_seqlens_q: last entry 6 exceeds the 5 rows of the packed tensor$", data=True),
    Case("varlen-max-seqlen-q-too-small", VARLEN, "max_seqlen_q=2 with a sequence of 3 queries",
         _with(varlen, "max_seqlen_q", 2), ValueError,
         r"cu_seqlens_q: a sequence has length 3 > max_seqlen = 2$", data=True),
    Case("varlen-max-seqlen-k-negative", VARLEN, "max_seqlen_k=-1",
         _with(varlen, "max_seqlen_k", -1), ValueError, r"max_seqlen_k: expected an int >= 0, got -1$"),
    Case("varlen-max-seqlen-k-float", VARLEN, "max_seqlen_k=4.0",
         _with(varlen, "max_seqlen_k", 4.0), ValueError, r"max_seqlen_k: expected an int >= 0, got 4\.0$"),
    Case("varlen-seqused-k-int64", VARLEN, "seqused_k of dtype int64",
         _with(varlen, "seqused_k", lambda: torch.tensor([3, 4])), TypeError,
         r"seqused_k: expected dtype torch\.int32, got torch\.int64$"),
    Case("varlen-seqused-k-beyond-length", VARLEN, "seqused_k = [3, 5] with key lengths [3, 4]",
         _with(varlen, "seqused_k", lambda: i32(3, 5)), ValueError,
         r"seqused_k: each entry must lie in \[0, its cu_seqlens_k length \[3, 4\]\], got \[3, 5\]$", data=True),
    Case("varlen-seqused-q-beyond-length", VARLEN, "seqused_q = [2, 4] with query lengths [2, 3]",
         _with(varlen, "seqused_q", lambda: i32(2, 4)), ValueError,
         r"seqused_q: each entry must lie in \[0, its cu_seqlens_q length \[2, 3\]\], got \[2, 4\]$", data=True),
    Case("varlen-seqused-q-int64", VARLEN, "seqused_q of dtype int64",
         _with(varlen, "seqused_q", lambda: torch.tensor([2, 3])), TypeError,
         r"seqused_q: expected dtype torch\.int32, got torch\.int64$"),
    Case("varlen-attention-chunk-negative", VARLEN, "attention_chunk = -1",
         _with(varlen, "attention_chunk", -1), ValueError, r"attention_chunk: expected an int >= 0"),
    # --- flash_attn_with_kvcache: tensors ------------------------------------------------------------------------
    Case("kvcache-q-rank-3", KVCACHE, "q of rank 3 without cu_seqlens_q",
         _with(kvcache, "q", lambda: _half(B, H, D)), ValueError,
         r"q: expected shape \(B, Sq, H, D\) \(4 dims\), got 3 dims \(2, 4, 16\)$"),
    Case("kvcache-k-cache-rank-5", KVCACHE, "k_cache of rank 5",
         _with(kvcache, "k_cache", lambda: _half(1, B, S_CACHE, HK, D)), ValueError,
         r"k_cache: expected shape \(B_cache, S_cache, Hk, D\) \(4 dims\), got 5 dims"),
    Case("kvcache-cache-dtype-mismatch", KVCACHE, "k_cache, v_cache float32 while q is float16",
         lambda: kvcache(k_cache=_half(B, S_CACHE, HK, D, dtype=torch.float32),
                         v_cache=_half(B, S_CACHE, HK, D, dtype=torch.float32)), TypeError,
         r"k_cache: expected dtype torch\.float16 to match q, got torch\.float32$"),
    Case("kvcache-fp8-q-fp16-cache", KVCACHE, "q in float8_e4m3fn over a float16 cache",
         _with(kvcache, "q", lambda: _half(B, 1, H, D).to(torch.float8_e4m3fn)), TypeError,
         r"k_cache: fp8 \(float8_e4m3fn\) q needs fp8 keys and values too, got torch\.float16; with torch\.float16 "
         r"k/v pass q in torch\.float16$"),
    Case("kvcache-fp8-k-descale-shape", KVCACHE, "k_descale of shape (2,) for an e4m3 cache",
         lambda: kvcache(k_cache=_half(B, S_CACHE, HK, D).to(torch.float8_e4m3fn),
                         v_cache=_half(B, S_CACHE, HK, D).to(torch.float8_e4m3fn), k_descale=torch.ones(B)),
         ValueError, r"k_descale: expected shape \(2, 2\) \(B, Hk: one per sequence and KV head; expand a single "
         r"value for one per tensor\), got \(2,\)$"),
    Case("kvcache-fp8-v-descale-float16", KVCACHE, "v_descale in float16",
         lambda: kvcache(k_cache=_half(B, S_CACHE, HK, D).to(torch.float8_e4m3fn),
                         v_cache=_half(B, S_CACHE, HK, D).to(torch.float8_e4m3fn),
                         v_descale=torch.ones(B, HK, dtype=torch.float16)),
         TypeError, r"v_descale: expected dtype torch\.float32, got torch\.float16$"),
    Case("kvcache-descale-not-fp8", KVCACHE, "k_descale for a float16 cache",
         _with(kvcache, "k_descale", lambda: torch.ones(B, HK)), ValueError,
         r"k_descale: given, but k_cache is torch\.float16; descales apply to float8_e4m3fn inputs only"),
    Case("kvcache-k-cache-device-mismatch", KVCACHE, "k_cache on another device than q",
         _with(kvcache, "k_cache", lambda: _half(B, S_CACHE, HK, D).to("meta")), ValueError,
         rf"k_cache: expected device {DEV} to match q, got meta$"),
    Case("kvcache-v-cache-shape-mismatch", KVCACHE, "v_cache with 8 slots, k_cache with 16",
         _with(kvcache, "v_cache", lambda: _half(B, 8, HK, D)), ValueError,
         r"v_cache: expected shape \(2, 16, 2, 'Dv'\) to match k_cache in every dimension but the last \(the value "
         r"head_dim\), got \(2, 8, 2, 16\)$"),
    Case("kvcache-k-cache-strided-head-dim", KVCACHE, "k_cache whose head dimension has stride 2",
         _with(kvcache, "k_cache", lambda: _half(B, S_CACHE, HK, 2 * D)[..., ::2]), ValueError,
         r"k_cache: the head dimension must be contiguous \(stride 1\), got strides \(1024, 64, 32, 2\)"),
    Case("kvcache-v-cache-strided-head-dim", KVCACHE, "v_cache whose head dimension has stride 2",
         _with(kvcache, "v_cache", lambda: _half(B, S_CACHE, HK, D, 2)[..., 0]), ValueError,
         r"v_cache: the head dimension must be contiguous \(stride 1\)"),
    Case("kvcache-heads-not-multiple", KVCACHE, "H = 5 query heads, Hk = 2 in the cache",
         _with(kvcache, "q", lambda: _half(B, 1, 5, D)), ValueError,
         r"q/k_cache: the number of query heads \(5\) must be a multiple of the number of KV heads \(2\)$"),
    Case("kvcache-k-cache-fewer-rows", KVCACHE, "k_cache, v_cache with 1 row for a batch of 2",
         lambda: kvcache(k_cache=_half(1, S_CACHE, HK, D), v_cache=_half(1, S_CACHE, HK, D)), ValueError,
         r"k_cache: has 1 rows for a batch of 2; pass cache_batch_idx$"),
    Case("kvcache-window-right-below-minus-1", KVCACHE, "window_size=(3, -5)",
         _with(kvcache, "window_size", (3, -5)), ValueError, r"window_size: right = -5 is not allowed"),
    Case("kvcache-softmax-scale-zero", KVCACHE, "softmax_scale=0.0",
         _with(kvcache, "softmax_scale", 0.0), ValueError, r"softmax_scale: expected a finite float > 0 or None"),
    Case("kvcache-num-splits-negative", KVCACHE, "num_splits=-1",
         _with(kvcache, "num_splits", -1), ValueError, r"num_splits: expected an int >= 0, got -1$"),
    Case("kvcache-sinks-2d", KVCACHE, "sinks of shape (1, H)",
         _with(kvcache, "sinks", lambda: torch.zeros(1, H)), ValueError,
         r"sinks: expected shape \(4,\) \(one logit per query head\), got \(1, 4\)$"),
    Case("kvcache-rotary-cos-without-sin", KVCACHE, "rotary_cos given without rotary_sin",
         _with(kvcache, "rotary_cos", lambda: torch.ones(S_CACHE, D // 2)), ValueError,
         r"rotary_cos, rotary_sin: give both or neither$"),
    Case("kvcache-rotary-without-new-kv", KVCACHE, "rotary_cos, rotary_sin without new k, v",
         lambda: kvcache(rotary_cos=torch.ones(S_CACHE, D // 2), rotary_sin=torch.ones(S_CACHE, D // 2)),
         ValueError, r"rotary_cos: rotary embedding applies to new keys; pass k and v with it"),
    Case("kvcache-rotary-dim-too-large", KVCACHE, "rotary_cos of rotary_dim 2 * 9 > head_dim 16",
         lambda: kvcache(rotary_cos=torch.ones(S_CACHE, 9), rotary_sin=torch.ones(S_CACHE, 9), **new_kv()),
         ValueError, r"rotary_cos: rotary_dim = 2 \* 9 must lie in \[2, head_dim = 16\]$"),
    Case("kvcache-rotary-positions-beyond-cos", KVCACHE, "rotary_cos of 8 positions, positions up to 11 read",
         lambda: kvcache(rotary_cos=torch.ones(8, 4), rotary_sin=torch.ones(8, 4), **new_kv()), ValueError,
         r"rotary_cos: has 8 positions, but rotary reads positions up to 11", data=True),
    Case("kvcache-rotary-seqlens-int64", KVCACHE, "rotary_seqlens of dtype int64 (checked, then ignored, without "
         "rotary_cos / rotary_sin, as in FA3)", _with(kvcache, "rotary_seqlens", lambda: torch.tensor([1, 1])),
         TypeError, r"rotary_seqlens: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-cache-leftpad-beyond-seqlens", KVCACHE, "cache_leftpad = [9, 0] with cache_seqlens [8, 11]",
         _with(kvcache, "cache_leftpad", lambda: i32(9, 0)), ValueError,
         r"cache_leftpad: entries must lie in \[0, cache_seqlens\[b\]\] = \[8, 11\], got \[9, 0\]$", data=True),
    Case("kvcache-cache-leftpad-int64", KVCACHE, "cache_leftpad of dtype int64",
         _with(kvcache, "cache_leftpad", lambda: torch.tensor([0, 0])), TypeError,
         r"cache_leftpad: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-cu-seqlens-k-new-without-k", KVCACHE, "cu_seqlens_k_new given without new k, v",
         _with(kvcache, "cu_seqlens_k_new", lambda: i32(0, 1, 2)), ValueError,
         r"cu_seqlens_k_new: given without new keys k, v$"),
    Case("kvcache-cu-seqlens-k-new-wrong-length", KVCACHE, "cu_seqlens_k_new of 2 entries for a batch of 2",
         lambda: kvcache(k=_half(3, HK, D), v=_half(3, HK, D), cu_seqlens_k_new=i32(0, 3)), ValueError,
         r"cu_seqlens_k_new: expected shape \(3,\) \(batch \+ 1\), got \(2,\)$"),
    Case("kvcache-cu-seqlens-k-new-beyond-k", KVCACHE, "cu_seqlens_k_new ends at 4, k holds 3 tokens",
         lambda: kvcache(k=_half(3, HK, D), v=_half(3, HK, D), cu_seqlens_k_new=i32(0, 1, 4)), ValueError,
         r"cu_seqlens_k_new: last entry 4 exceeds the 3 rows of the packed tensor$", data=True),
    Case("kvcache-scheduler-metadata-list", KVCACHE, "scheduler_metadata given as a list",
         _with(kvcache, "scheduler_metadata", [0, 1]), TypeError,
         r"scheduler_metadata: expected a tensor \(from get_scheduler_metadata\) or None, got list$"),
    Case("kvcache-sm-margin-negative", KVCACHE, "sm_margin = -1",
         _with(kvcache, "sm_margin", -1), ValueError, r"sm_margin: expected an int >= 0, got -1$"),
    # --- flash_attn_with_kvcache: cache_seqlens, cache_batch_idx ---------------------------------------------------
    Case("kvcache-cache-seqlens-int-beyond-capacity", KVCACHE, "cache_seqlens=17 for a cache of 16 slots",
         _with(kvcache, "cache_seqlens", 17), ValueError,
         r"cache_seqlens: 17 cached \+ 0 new tokens exceed the cache capacity 16$"),
    Case("kvcache-cache-seqlens-beyond-capacity", KVCACHE, "cache_seqlens = [8, 17] for a cache of 16 slots",
         _with(kvcache, "cache_seqlens", lambda: i32(8, 17)), ValueError,
         r"cache_seqlens: cached \+ new tokens per sequence \[8, 17\] must lie in \[0, 16\]", data=True),
    Case("kvcache-cache-seqlens-negative", KVCACHE, "cache_seqlens = [-1, 8]",
         _with(kvcache, "cache_seqlens", lambda: i32(-1, 8)), ValueError,
         r"cache_seqlens: cached \+ new tokens per sequence \[-1, 8\] must lie in \[0, 16\]", data=True),
    Case("kvcache-cache-seqlens-plus-new-beyond", KVCACHE, "cache_seqlens = [8, 15] plus 2 new tokens, 16 slots",
         lambda: kvcache(cache_seqlens=i32(8, 15), **new_kv(2)), ValueError,
         r"cache_seqlens: cached \+ new tokens per sequence \[10, 17\] must lie in \[0, 16\]", data=True),
    Case("kvcache-cache-seqlens-int64", KVCACHE, "cache_seqlens of dtype int64",
         _with(kvcache, "cache_seqlens", lambda: torch.tensor([8, 11])), TypeError,
         r"cache_seqlens: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-cache-seqlens-float", KVCACHE, "cache_seqlens=8.0 (a float)",
         _with(kvcache, "cache_seqlens", 8.0), TypeError,
         r"cache_seqlens: expected an int32 tensor \(B,\) of tokens already cached, got float$"),
    Case("kvcache-cache-seqlens-wrong-length", KVCACHE, "cache_seqlens of length 3 for a batch of 2",
         _with(kvcache, "cache_seqlens", lambda: i32(8, 8, 8)), ValueError,
         r"cache_seqlens: expected shape \(2,\) .*, got \(3,\)$"),
    Case("kvcache-cache-seqlens-device-mismatch", KVCACHE, "cache_seqlens on another device than q",
         _with(kvcache, "cache_seqlens", lambda: i32(8, 11).to("meta")), ValueError,
         rf"cache_seqlens: expected device {DEV} to match q, got meta$"),
    Case("kvcache-cache-batch-idx-out-of-range", KVCACHE, "cache_batch_idx = [0, 2] for a cache of 2 rows",
         _with(kvcache, "cache_batch_idx", lambda: i32(0, 2)), ValueError,
         r"cache_batch_idx: entries must lie in \[0, 2\), got \[0, 2\]$", data=True),
    Case("kvcache-cache-batch-idx-int64", KVCACHE, "cache_batch_idx of dtype int64",
         _with(kvcache, "cache_batch_idx", lambda: torch.tensor([1, 0])), TypeError,
         r"cache_batch_idx: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-cache-batch-idx-wrong-length", KVCACHE, "cache_batch_idx of length 1 for a batch of 2",
         _with(kvcache, "cache_batch_idx", lambda: i32(0)), ValueError,
         r"cache_batch_idx: expected shape \(2,\) .*, got \(1,\)$"),
    # --- flash_attn_with_kvcache: new k, v -----------------------------------------------------------------------
    Case("kvcache-k-without-v", KVCACHE, "new k given without v",
         lambda: kvcache(k=new_kv()["k"]), ValueError, r"k, v: give both new keys and new values, or neither$"),
    Case("kvcache-v-without-k", KVCACHE, "new v given without k",
         lambda: kvcache(v=new_kv()["v"]), ValueError, r"k, v: give both new keys and new values, or neither$"),
    Case("kvcache-new-kv-lengths-differ", KVCACHE, "new k of 1 token, new v of 2",
         lambda: kvcache(k=new_kv(1)["k"], v=new_kv(2)["v"]), ValueError,
         r"v: expected shape \(2, 1, 2, 16\) for new tokens \(heads and head_dim of v_cache\), got \(2, 2, 2, 16\)$"),
    Case("kvcache-new-kv-heads-differ", KVCACHE, "new k, v with 3 heads, the cache has 2",
         lambda: kvcache(**new_kv(heads=3)), ValueError,
         r"k: expected shape \(2, 1, 2, 16\) for new tokens \(heads and head_dim of k_cache\), got \(2, 1, 3, 16\)$"),
    Case("kvcache-new-kv-batch-differs", KVCACHE, "new k, v with batch 3, q with batch 2",
         lambda: kvcache(**new_kv(batch=3)), ValueError,
         r"k: expected shape \(2, 1, 2, 16\) for new tokens \(heads and head_dim of k_cache\), got \(3, 1, 2, 16\)$"),
    Case("kvcache-new-kv-dtype-differs", KVCACHE, "new k, v float32, the cache float16",
         lambda: kvcache(**new_kv(dtype=torch.float32)), TypeError,
         r"k: expected dtype torch\.float16 like the cache, got torch\.float32$"),
    Case("kvcache-new-k-device-mismatch", KVCACHE, "new k on another device than the cache",
         lambda: kvcache(k=new_kv()["k"].to("meta"), v=new_kv()["v"]), ValueError,
         rf"k: expected device {DEV} like the cache, got meta$"),
    Case("kvcache-new-k-not-tensor", KVCACHE, "new k, v Python lists, cache_seqlens=None",
         lambda: kvcache(k=[[1.0]], v=[[1.0]], cache_seqlens=None), TypeError,
         r"k: expected a torch\.Tensor of shape \(B, S_new, Hk, D\), got list$"),
    Case("kvcache-new-kv-longer-than-cache", KVCACHE, "17 new tokens, cache of 16 slots, cache_seqlens=None",
         lambda: kvcache(cache_seqlens=None, **new_kv(17)), ValueError,
         r"k: 17 new tokens per sequence exceed the cache capacity 16$"),
    # --- flash_attn_with_kvcache: page_table ---------------------------------------------------------------------
    Case("kvcache-page-table-int64", KVCACHE, "page_table of dtype int64",
         _with(paged, "page_table", lambda: torch.tensor([[0, 1, 2], [3, 4, 5]])), TypeError,
         r"page_table: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-page-table-1d", KVCACHE, "page_table of rank 1",
         _with(paged, "page_table", lambda: i32(0, 1, 2)), ValueError,
         r"page_table: expected shape \(B, max_pages_per_seq\) \(2 dims\), got 1 dims \(3,\)$"),
    Case("kvcache-page-table-wrong-rows", KVCACHE, "page_table with 1 row for a batch of 2",
         _with(paged, "page_table", lambda: i32([0, 1, 2])), ValueError,
         r"page_table: expected 2 rows \(one per sequence\), got 1; with more rows than sequences pass "
         r"cache_batch_idx"),
    Case("kvcache-page-table-device-mismatch", KVCACHE, "page_table on another device than q",
         _with(paged, "page_table", lambda: i32([0, 1, 2], [3, 4, 5]).to("meta")), ValueError,
         rf"page_table: expected device {DEV} to match q, got meta$"),
    Case("kvcache-page-table-row-out-of-range", KVCACHE, "cache_batch_idx = [0, 2] for a page_table of 2 rows",
         _with(paged, "cache_batch_idx", lambda: i32(0, 2)), ValueError,
         r"cache_batch_idx: entries must lie in \[0, 2\), got \[0, 2\]$", data=True),
    Case("kvcache-page-size-0", KVCACHE, "paged k_cache, v_cache with page_size 0",
         lambda: paged(k_cache=_half(NUM_PAGES, 0, HK, D), v_cache=_half(NUM_PAGES, 0, HK, D), cache_seqlens=0),
         ValueError, r"k_cache: page_size \(dim 1\) must be >= 1 with page_table, got 0$"),
    Case("kvcache-page-table-too-short-int", KVCACHE, "cache_seqlens=13, page_table covers 3 pages of 4",
         _with(paged, "cache_seqlens", 13), ValueError,
         r"cache_seqlens: 13 cached \+ 0 new tokens exceed the cache capacity 12$"),
    Case("kvcache-page-table-too-short", KVCACHE, "cache_seqlens = [5, 13], page_table covers 3 pages of 4",
         _with(paged, "cache_seqlens", lambda: i32(5, 13)), ValueError,
         r"cache_seqlens: cached \+ new tokens per sequence \[5, 13\] must lie in \[0, 12\]", data=True),
    Case("kvcache-page-index-out-of-range", KVCACHE, "page_table entry 6 for a pool of 6 pages",
         _paged_table(1, 2, NUM_PAGES), ValueError,
         r"page_table: row 1 uses page indices outside \[0, 6\): \[3, 4, 6\]$", data=True),
    Case("kvcache-page-index-negative", KVCACHE, "page_table entry -1 in a page the call reads",
         _paged_table(0, 0, -1), ValueError, r"page_table: row 0 uses page indices outside \[0, 6\): \[-1, 1\]$",
         data=True),
    # --- flash_attn_with_kvcache: packed queries (cu_seqlens_q) ----------------------------------------------------
    Case("kvcache-cu-seqlens-q-without-max-seqlen-q", KVCACHE, "cu_seqlens_q given, max_seqlen_q=None",
         _with(kv_varlen, "max_seqlen_q", None), ValueError, r"max_seqlen_q: required with cu_seqlens_q$"),
    Case("kvcache-q-rank-4-with-cu-seqlens-q", KVCACHE, "q of rank 4 with cu_seqlens_q",
         _with(kv_varlen, "q", lambda: _half(B, 1, H, D)), ValueError,
         r"q: expected shape \(total_q, H, D\) with cu_seqlens_q \(3 dims\), got 4 dims"),
    Case("kvcache-cu-seqlens-q-int64", KVCACHE, "cu_seqlens_q of dtype int64",
         _with(kv_varlen, "cu_seqlens_q", lambda: torch.tensor([0, 1, 3])), TypeError,
         r"cu_seqlens_q: expected dtype torch\.int32, got torch\.int64$"),
    Case("kvcache-cu-seqlens-q-decreasing", KVCACHE, "cu_seqlens_q = [0, 2, 1]",
         _with(kv_varlen, "cu_seqlens_q", lambda: i32(0, 2, 1)), ValueError,
         r"cu_seqlens_q: must be non-decreasing, got \[0, 2, 1\]$", data=True),
    Case("kvcache-max-seqlen-q-too-small", KVCACHE, "max_seqlen_q=1 with a sequence of 2 queries",
         _with(kv_varlen, "max_seqlen_q", 1), ValueError,
         r"cu_seqlens_q: a sequence has length 2 > max_seqlen = 1$", data=True),
    Case("kvcache-new-kv-not-like-q", KVCACHE, "packed new k, v of 4 rows, q of 3",
         lambda: kv_varlen(k=_half(4, HK, D), v=_half(4, HK, D)), ValueError,
         r"k: expected shape \(3, 2, 16\) for new tokens \(heads and head_dim of k_cache\), got \(4, 2, 16\)$"),
    Case("kvcache-cache-seqlens-vs-cu-seqlens-q", KVCACHE, "cache_seqlens of length 1, cu_seqlens_q has 2 sequences",
         _with(kv_varlen, "cache_seqlens", lambda: i32(8)), ValueError,
         r"cache_seqlens: expected shape \(2,\) .*, got \(1,\)$"),
    # --- out= (swattn's extension) ----------------------------------------------------------------------------------
    Case("func-out-wrong-shape", FUNC, "out of shape [2, 3, 4, 8] (the output is [2, 3, 4, 16])",
         _with(dense, "out", lambda: _half(B, SQ, H, 8)), ValueError,
         r"out: expected shape \(2, 3, 4, 16\), dtype torch\.float16 on \S+ \(the output's\), got shape "
         r"\(2, 3, 4, 8\), dtype torch\.float16 on \S+$"),
    Case("varlen-out-not-contiguous", VARLEN, "out a transposed view",
         _with(varlen, "out", lambda: _half(5, 16, 4).transpose(1, 2)), ValueError,
         r"out: expected a contiguous tensor starting at a 16-byte boundary, got strides \(64, 1, 4\), "
         r"storage offset 0$"),
    Case("kvcache-out-needs-grad", KVCACHE, "out given while q requires grad",
         lambda: kvcache(q=_half(B, 1, H, D).requires_grad_(), out=_half(B, 1, H, D)), ValueError,
         r"out: not supported for a call that needs a gradient"),
]


# ----------------------------------------------------------------------------------------------------------------
# Running a case


class KernelLaunched(Exception):
    """A bad input reached a kernel instead of being rejected by swattn.interface."""


@contextmanager
def no_kernels():
    """Replace the custom ops with a raise: a bad input must be rejected before any kernel (or cache write) runs."""
    def launched(*args, **kwargs):
        raise KernelLaunched("the call reached a kernel: the bad input was not rejected")

    # The custom ops, and the implementations that eager calls reach directly (swattn.ops.run_fwd*).
    names = ("fwd", "fwd_kvcache", "_fwd_impl", "_fwd_kvcache_impl")
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(interface.ops, name, launched))
        yield


def call_args(case: Case, check_inputs: bool | None = None) -> dict:
    kwargs = case.build()
    if case.data and check_inputs is None:
        check_inputs = True
    if check_inputs is not None:
        kwargs["check_inputs"] = check_inputs
    return kwargs


def raised_by(case: Case, check_inputs: bool | None = None) -> Exception | None:
    """The exception that the case's call raises (kernels patched out), or None."""
    kwargs = call_args(case, check_inputs)
    with no_kernels():
        try:
            getattr(swattn, case.entry)(**kwargs)
        except Exception as err:  # every exception is a result here
            return err
    return None


def _accepts_check_inputs(entry: str) -> bool:
    return "check_inputs" in inspect.signature(getattr(swattn, entry)).parameters


def _params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


# ----------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input_is_rejected(case: Case):
    err = raised_by(case)
    assert err is not None, f"{case.id}: the call returned without raising"
    assert type(err) is case.exc, f"{case.id}: expected {case.exc.__name__}, got {type(err).__name__}: {err}"
    message = str(err)
    assert re.match(case.match, message), f"{case.id}: message {message!r} does not match {case.match!r}"
    # Every message starts with the argument(s) it is about: "cache_seqlens: ...", "k, v: ...", "q/k_cache: ...".
    assert re.match(r"[a-z_]+([/, ]+[a-z_]+)*: ", message), f"{case.id}: message does not name an argument"


_CHECK_INPUTS_CASES = [c for c in CASES if _accepts_check_inputs(c.entry)]


@pytest.mark.parametrize("case", _params(_CHECK_INPUTS_CASES))
def test_check_inputs_false_skips_exactly_the_data_checks(case: Case):
    """The table's ``check_inputs=True`` marks are exact: data checks are skipped without it, the rest are not."""
    err = raised_by(case, check_inputs=False)
    if case.data:
        assert isinstance(err, KernelLaunched), f"{case.id}: raised {err!r} with check_inputs=False"
    else:
        assert type(err) is case.exc and re.match(case.match, str(err)), f"{case.id}: got {err!r}"


@pytest.mark.parametrize("case", _params([c for c in CASES if c.data]))
def test_data_checks_run_by_default_in_the_test_suite(case: Case):
    """check_inputs left at None: on by default for CPU tensors (tests/conftest.py sets SWATTN_CHECK_INPUTS=1 for
    the GPU suite)."""
    kwargs = case.build()
    with no_kernels(), pytest.raises(case.exc, match=case.match):
        getattr(swattn, case.entry)(**kwargs)


@pytest.mark.parametrize("make", [dense, varlen, kvcache, paged, kv_varlen], ids=lambda f: f.__name__)
def test_the_valid_calls_behind_the_cases_run(make):
    """Each case differs from one of these valid calls only in the bad argument."""
    entry = {dense: FUNC, varlen: VARLEN}.get(make, KVCACHE)
    kwargs = make()
    out = getattr(swattn, entry)(**kwargs)
    assert out.shape == kwargs["q"].shape and torch.isfinite(out).all()


def test_the_table_covers_the_issue():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 35
    assert {c.entry for c in CASES} == {FUNC, VARLEN, KVCACHE}
    assert all(c.bad and "|" not in c.bad for c in CASES)


# ----------------------------------------------------------------------------------------------------------------
# The doc table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table() -> str:
    """The markdown table of CASES, with the message each call actually raises (run here, kernels patched out)."""
    lines = ["| id | entry point | bad input | exception | message |", "|---|---|---|---|---|"]
    for case in CASES:
        err = raised_by(case)
        exc = "(none)" if err is None else type(err).__name__
        message = "(returned without raising)" if err is None else str(err)
        bad = case.bad + (" (`check_inputs=True`)" if case.data else "")
        lines.append(f"| `{case.id}` | `{case.entry}` | {_cell(bad)} | `{exc}` | `{_cell(message)}` |")
    return "\n".join(lines) + "\n"


def doc_table(text: str) -> str:
    """The table between the markers of docs/reliability.md."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def with_table(text: str, table: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table + text[end:]


def test_doc_table_is_current():
    if torch.get_default_device().type != "cpu":
        pytest.skip("the doc shows the messages of CPU tensors (device names differ on a GPU)")
    assert DOC.exists(), f"{DOC} is missing"
    current = doc_table(DOC.read_text())
    assert current == render_table(), f"docs/reliability.md's bad-input table is stale; regenerate it: {REGENERATE}"
