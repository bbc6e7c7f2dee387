"""Optional peers, each behind ``Skip`` so that a missing one costs a note, not the run.

- FlexAttention: ``torch.compile(flex_attention)`` with a block mask for the same bottom-right window. It has no
  sinks: its rows are checked and timed without them, and say so.
- SDPA: ``scaled_dot_product_attention`` with ``is_causal`` (full causal, Sq == Sk) or an explicit boolean mask
  (windows), ``enable_gqa=True``; the row names the backend PyTorch picks. No sinks either.
- FlashAttention 3, the vLLM build (``torch.ops._vllm_fa3_C.fwd``), loaded from ``SWATTN_FA3_LIB`` or
  ``/tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so`` (see ``.peer-kernels/README.txt``). Sinks as bf16.
- FlashAttention 4, ``flash_attn.cute`` when importable (PYTHONPATH as in ``.peer-kernels/README.txt``).

Layouts in: q ``[B, Sq, H, D]``, k/v ``[B, Sk, Hk, D]`` or paged ``[num_pages, page_size, Hk, D]``, or for the
contiguous-cache peers in decode ``[B, Hk, S, D]``. Every builder returns a callable whose output has q's layout.
"""

from __future__ import annotations

import functools
import os

import torch

from swattn.bench.common import Skip
from swattn.window import is_visible

FA3_LIBRARY = os.environ.get("SWATTN_FA3_LIB", "/tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so")


def _cuda_only(name: str, t: torch.Tensor) -> None:
    if not t.is_cuda:
        raise Skip(f"{name} needs a CUDA tensor")


def _no_sinks_note(sinks) -> str:
    return "no sinks (unsupported): checked and timed without them" if sinks is not None else ""


@functools.cache
def _flex():
    try:
        import torch._dynamo
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        raise Skip(f"FlexAttention not available: {exc}") from exc
    # One compiled graph per shape: raise dynamo's recompile limit (default 8) so the sweep never falls back to eager.
    for name in ("recompile_limit", "accumulated_recompile_limit", "cache_size_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def window_mask_mod(offset: int, left: int):
    """FlexAttention mask_mod of ``swattn.window.is_visible`` with right = 0: row ``i`` sees keys
    ``[i + offset - left, i + offset]`` (bottom-right: ``offset = Sk - Sq``)."""
    def mask_mod(b, h, q_idx, kv_idx):
        row = q_idx + offset
        visible = kv_idx <= row
        if left >= 0:
            visible = visible & (kv_idx >= row - left)
        return visible
    return mask_mod


def flex_block_mask(seqlen_q: int, seqlen_k: int, left: int, device):
    _, create_block_mask = _flex()
    mask_mod = window_mask_mod(seqlen_k - seqlen_q, left)
    try:  # _compile builds the mask without materialising [Sq, Sk]
        return create_block_mask(mask_mod, None, None, seqlen_q, seqlen_k, device=device, _compile=True)
    except TypeError:
        return create_block_mask(mask_mod, None, None, seqlen_q, seqlen_k, device=device)


def flex(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, block_mask):
    """``flex(...)()`` -> out ``[B, Sq, H, D]`` (a transposed view of Flex's ``[B, H, Sq, D]``)."""
    _cuda_only("FlexAttention (compiled)", q_bhsd)
    compiled, _ = _flex()
    return lambda: compiled(q_bhsd, k_bhsd, v_bhsd, block_mask=block_mask, enable_gqa=True).transpose(1, 2)


def flex_prefill(q, k, v, left: int, sinks=None):
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return flex(qt, kt, vt, flex_block_mask(q.shape[1], k.shape[1], left, q.device)), _no_sinks_note(sinks)


_SDPA_NAMES = None


def sdpa_backend(q, k, v, mask, causal: bool, gqa: bool) -> str:
    """The backend ``scaled_dot_product_attention`` dispatches these arguments to (lower-case), or 'unknown'."""
    global _SDPA_NAMES
    try:
        from torch.nn.attention import SDPBackend

        if _SDPA_NAMES is None:
            _SDPA_NAMES = {int(v): n.lower() for n, v in SDPBackend.__members__.items()}
        choice = torch._fused_sdp_choice(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=causal, scale=None,
                                         enable_gqa=gqa)
        return _SDPA_NAMES.get(int(choice), str(choice))
    except Exception:  # private API: its absence only costs the backend's name
        return "unknown"


def sdpa(q_bhsd, k_bhsd, v_bhsd, mask, causal: bool, math_limit_bytes: float = 8e9):
    """``sdpa(...)`` -> (callable giving out ``[B, Sq, H, D]``, note naming the backend). When the GQA call would
    take the math backend, K/V heads are expanded (outside the timing) so a fused backend can run; when even that
    is math and its score matrix would pass ``math_limit_bytes``, Skip."""
    import torch.nn.functional as F

    _cuda_only("SDPA benchmark", q_bhsd)
    gqa = q_bhsd.shape[1] != k_bhsd.shape[1]
    backend = sdpa_backend(q_bhsd, k_bhsd, v_bhsd, mask, causal, gqa)
    note = ""
    if backend == "math" and gqa:
        group = q_bhsd.shape[1] // k_bhsd.shape[1]
        k_full, v_full = (t.repeat_interleave(group, dim=1) for t in (k_bhsd, v_bhsd))
        expanded = sdpa_backend(q_bhsd, k_full, v_full, mask, causal, False)
        if expanded != "math":
            k_bhsd, v_bhsd, gqa, backend = k_full, v_full, False, expanded
            note = f"K/V heads expanded x{group} (GQA would take the math backend)"
    if backend == "math":
        b, h, sq, _ = q_bhsd.shape
        scores = b * h * sq * k_bhsd.shape[2] * 4
        if scores > math_limit_bytes:
            raise Skip(f"SDPA would take the math backend (scores {scores / 1e9:.0f} GB)")
    run = lambda: F.scaled_dot_product_attention(q_bhsd, k_bhsd, v_bhsd, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=gqa).transpose(1, 2)
    return run, "; ".join(n for n in (f"backend {backend}", note) if n)


def sdpa_prefill(q, k, v, left: int, sinks=None):
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    if left < 0 and seqlen_q == seqlen_k:
        mask, causal = None, True  # SDPA's is_causal is top-left aligned: the same as bottom-right when Sq == Sk
    else:
        rows = torch.arange(seqlen_q, device=q.device)[:, None]
        cols = torch.arange(seqlen_k, device=q.device)[None, :]
        mask, causal = is_visible(rows, cols, seqlen_q, seqlen_k, left, 0), False
    run, note = sdpa(qt, kt, vt, mask, causal)
    return run, "; ".join(n for n in (note, _no_sinks_note(sinks)) if n)


def _fa3_forward():
    try:
        return torch.ops._vllm_fa3_C.fwd
    except (AttributeError, RuntimeError):
        pass
    if not os.path.exists(FA3_LIBRARY):
        raise Skip(f"FA3 not found at {FA3_LIBRARY} (unpack .peer-kernels/vllm_fa3.tar.xz into /tmp/site or set "
                   "SWATTN_FA3_LIB)")
    try:
        torch.ops.load_library(FA3_LIBRARY)
        return torch.ops._vllm_fa3_C.fwd
    except Exception as exc:
        raise Skip(f"FA3 failed to load: {exc}") from exc


def fa3(q, k, v, left: int, sinks=None, page_table=None, seqused_k=None, k_new=None, v_new=None, qv=None,
        softmax_scale: float | None = None):
    """FA3 (vLLM build, varlen-only entry): dense k/v ``[B, Sk, Hk, D]`` or paged pools with ``page_table`` and
    ``seqused_k``. Index tensors are made here, outside the timed call. Sinks go in as bf16 (FA3 needs bf16,
    H <= 64). ``k_new``/``v_new`` ``[B, S_new, Hk, D]``: FA3's own append in the attention kernel (its
    ``flash_attn_with_kvcache(k=, v=)``), written at ``seqused_k`` (the lengths before the append); vLLM itself
    writes the cache in a separate launch, and a build without the append path raises. v may have a head dim Dv of
    its own (FA3's ``hdimv``: the output is ``[B, Sq, H, Dv]``); ``qv [B, Sq, H, Dv]`` is FA3's second query term
    (MLA decode: D 64, Dv 512). The default scale is FA3's, ``(D + Dv of qv) ** -0.5``."""
    _cuda_only("FA3", q)
    forward = _fa3_forward()
    batch, seqlen_q, heads, head_dim = q.shape
    device = q.device
    cu_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, device=device, dtype=torch.int32)
    if page_table is None:
        seqlen_k = k.shape[1]
        cu_k, max_k = torch.arange(0, (batch + 1) * seqlen_k, seqlen_k, device=device, dtype=torch.int32), seqlen_k
        k, v = k.reshape(batch * seqlen_k, *k.shape[2:]), v.reshape(batch * seqlen_k, *v.shape[2:])
    else:
        cu_k, max_k = None, page_table.shape[1] * k.shape[1]
    q3 = q.reshape(batch * seqlen_q, heads, head_dim)
    qv3 = None if qv is None else qv.reshape(batch * seqlen_q, heads, qv.shape[-1])
    sinks_bf16 = None if sinks is None else sinks.to(torch.bfloat16)
    scale = softmax_scale if softmax_scale is not None else (head_dim + (0 if qv is None else qv.shape[-1])) ** -0.5
    head_dim_v = v.shape[-1]

    def run():
        out = forward(q3, k, v, k_new, v_new, qv3, None, cu_q, cu_k, None, None, seqused_k, seqlen_q, max_k,
                      page_table, None, None, None, None, None, None, None, None, scale, True, left, 0, 0.0, True,
                      None, 0, None, 0, sinks_bf16, 1, 0, None)[0]
        return out.view(batch, seqlen_q, heads, head_dim_v)
    return run


def fa3_backward(q, k, v, left: int, grad):
    """FA3's backward: ``torch.autograd.grad`` through FlashAttention 3's own ``flash_attn_interface.flash_attn_func``
    (the hopper package's autograd Function, no sinks) on q, k, v requiring grad: returns the call. The vLLM build
    the GPU machine has registers only a forward op (``_vllm_fa3_C::fwd``; its library says "This flash attention
    build does not support backward"), so without the hopper package this is a Skip saying so."""
    _cuda_only("FA3", q)
    try:
        import flash_attn_interface
        flash_attn_func = flash_attn_interface.flash_attn_func
    except Exception as exc:
        has_bwd = False
        try:
            _fa3_forward()
            has_bwd = hasattr(torch.ops._vllm_fa3_C, "bwd")
        except Exception:
            pass
        raise Skip(f"FA3 backward not callable here: flash_attn_interface (FA3's hopper package) not importable "
                   f"({type(exc).__name__}); the vLLM build has {'a' if has_bwd else 'no'} backward op") from exc
    if (getattr(flash_attn_func, "__module__", "") or "").startswith("swattn"):
        raise Skip("flash_attn_interface here is swattn's drop-in bridge, not FA3")
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = flash_attn_func(*inputs, causal=True, window_size=(left, 0))
    out = out[0] if isinstance(out, tuple) else out
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def _fa4():
    try:
        from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
    except Exception as exc:
        raise Skip(f"FA4 (flash_attn.cute) not importable: {type(exc).__name__}: {exc}") from exc
    return flash_attn_func, flash_attn_varlen_func


def _fa4_window(left: int) -> tuple[int | None, int | None]:
    return (left, 0) if left >= 0 else (None, None)  # full causal: causal=True and no window


def fa4(q, k, v, left: int, sinks=None, page_table=None, seqused_k=None):
    """FA4 (CuTe DSL): dense ``flash_attn_func`` or paged ``flash_attn_varlen_func``; the first call of each
    configuration JIT-compiles, which the timers' warm-up absorbs. num_splits stays 1 (no split-KV on SM90)."""
    _cuda_only("FA4", q)
    dense, varlen = _fa4()
    window = _fa4_window(left)
    first = lambda result: result[0] if isinstance(result, (tuple, list)) else result
    if page_table is None:
        return lambda: first(dense(q, k, v, causal=True, window_size=window, learnable_sink=sinks))
    return lambda: first(varlen(q, k, v, page_table=page_table, seqused_k=seqused_k, causal=True,
                                window_size=window, learnable_sink=sinks))
