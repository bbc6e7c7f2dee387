"""torch.library custom ops: the one place where swattn meets the dispatcher (torch.compile, CUDA graphs, opcheck).

``swattn::fwd`` (dense and varlen prefill; differentiable, its autograd formula calls ``swattn::bwd``) and
``swattn::fwd_kvcache`` (mutates the caches when new k/v are appended). CUDA tensors run the Triton kernels; CPU
tensors run them under ``TRITON_INTERPRET=1`` and the float64 reference otherwise (the backward then differentiates
the reference with torch.autograd). The fake implementations give ``_out_like(q, v)`` and ``lse_shape``, whose
layouts the real path returns too. Arguments arrive already checked by ``swattn.interface``, through ``run_fwd``
/ ``run_fwd_kvcache``, which skip the dispatcher for plain eager calls (it costs about 75 us of host time a call
on a fast CPU): the implementation directly, or ``_EagerAttention`` (the same forward and backward) when a
gradient is needed.
"""

from __future__ import annotations

import os

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from swattn import reference
from swattn._compat import uses_triton
from swattn.kernels import fwd as forward_kernels
from swattn.kernels._launch import ASK, stream_key, tensor_signature
from swattn.kernels.append import append_plan
from swattn.kernels.bwd import attention_backward, backward_plan
from swattn.kernels.combine import combine_splits
from swattn.kernels.fwd import attention_forward, forward_plan
from swattn.kernels.fwd import settings as forward_settings

# The fused append: ``flash_attn_with_kvcache(..., k=, v=)`` with one new token per query (decode, speculative
# verify) can append inside the attention kernel (each program writes the new tokens it reads), one launch instead
# of the append launch before the attention launch. ``FUSED_APPEND``: None (the default) takes the per-case table
# below; True / False (SWATTN_FUSED_APPEND=1 / 0 at import, or tests setting it) take the fused append wherever it
# applies / never.
FUSED_APPEND: bool | None = (None if os.environ.get("SWATTN_FUSED_APPEND", "") == ""
                             else os.environ["SWATTN_FUSED_APPEND"] != "0")

# Where the fused append is the default: (step, layer, page_size) -> the largest batch size it is the default at.
# step "decode" (one new token per sequence) or "verify" (several), layer "window" (a bounded left side) or "full",
# page_size 0 for a contiguous cache; anything else takes the append launch. From the H200 run of 2026-12-03
# (``python -m swattn.bench append``, graph-replayed, cold caches; docs/notes/2026-12-03-serving-step.md), fused /
# launch: window decode 0.83-0.91 at B=1 and 16 (pages 1, 16, 64; 1K and 128K), at B=64 0.73 on 1-token pages but
# 1.07 / 1.04 on 16- / 64-token pages; window verify k=4 B=16 page 16: 0.88. Full-attention decode stays on the
# launch: the fused kernel lost 8-11% at B=16 1K (pages 16, 64) and 26-32% at 16K (B=4, B=16: split-KV grids),
# and won only at B=16 1K on 1-token pages (0.92) and B=1 128K (0.97), one context each; full verify lost (1.08).
# Those losses were the fused kernel's registers (its new tokens copied in 64-row chunks: 196 against 162, a program
# per SM less, the split grid in two waves); copied in the tile's rows (session 5) it won on the model step's full
# layer (H200, 22:54 UTC, scripts/gpu_probe.py fused_append_splits, B=16 8K page 16: 72.6 us against 74.2 with the
# append launch) and in the 36-layer step (fused in every layer 1406.3 us against 1418.2 with the launch in the full
# ones): full decode on 16-token pages up to B=16 takes it; other full cases are not measured since.
# Full verify on 16-token pages (H200 s7-call11, scripts/gpu_probe.py serving_s7, B=16 k=4): 1K 27.71 us fused
# against 29.46 with the append launch (16 cold sets), 8K 96.5 against 96.2 (one set).
FUSED_APPEND_DEFAULTS: dict[tuple[str, str, int], int] = {
    ("decode", "window", 1): 64, ("decode", "window", 16): 16, ("decode", "window", 64): 16,
    ("decode", "full", 16): 16,
    ("verify", "window", 16): 16, ("verify", "full", 16): 16,
}


def fused_append_default(left: int, page_size: int, batch: int, new_per_sequence: int) -> bool:
    """Whether a call that may take the fused append does: ``FUSED_APPEND`` when set, else the table above.
    ``left`` the window's left side (< 0: unbounded), ``page_size`` 0 for a contiguous cache, ``batch`` sequences,
    ``new_per_sequence`` new tokens per sequence (the longest, varlen)."""
    if FUSED_APPEND is not None:
        return FUSED_APPEND
    step = "decode" if new_per_sequence <= 1 else "verify"
    layer = "window" if left >= 0 else "full"
    return batch <= FUSED_APPEND_DEFAULTS.get((step, layer, page_size), 0)


def lse_shape(q: torch.Tensor, varlen_q: bool) -> tuple[int, ...]:
    """LSE is ``[B, H, Sq]`` for dense q ``[B, Sq, H, D]`` and ``[H, total_q]`` for varlen q ``[total_q, H, D]``."""
    if varlen_q:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


def _like_fake(q: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's results in the layouts the fake implementations promise (``_out_like(q, v)`` and a
    contiguous LSE): compiled graphs assert them, and the reference builds its output as a transposed view."""
    return _out_like(q, v).copy_(out), lse.contiguous()


def _reference_kwargs(softmax_scale: float, left: int, right: int, softcap: float, sinks, attention_chunk: int = 0,
                      q_descale=None, k_descale=None, v_descale=None):
    return dict(softmax_scale=softmax_scale, window_size=(left, right), softcap=softcap, sinks=sinks,
                attention_chunk=attention_chunk, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)


def _out_like(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An output like q (fp8 q: bf16, as FlashAttention 3) with v's head_dim: ``empty_like(q)``, or contiguous
    ``[..., Dv]`` when the value head_dim Dv differs from q's (the kernels' layouts, both)."""
    dtype = torch.bfloat16 if q.dtype == torch.float8_e4m3fn else q.dtype
    if v.shape[-1] != q.shape[-1]:
        return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=dtype)
    return torch.empty_like(q, dtype=dtype)


def _fwd_impl(
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
    seqused_q: torch.Tensor | None = None,
    attention_chunk: int = 0,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    return_lse: bool = True,
    qv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (q ``[B, Sq, H, D]``) or varlen (q ``[total_q, H, D]`` with cu_seqlens) forward -> (out, lse); fp8
    inputs with their descales (forward only). Without ``return_lse`` the LSE is neither computed nor allocated
    (lse: an empty tensor); callers that need a gradient pass True (``run_fwd`` sees to it). ``qv``: FlashAttention
    3's second query term (laid out like q with v's head_dim; forward only, ``backward_refusal``)."""
    varlen = cu_seqlens_q is not None
    if not uses_triton(q):
        kwargs = _reference_kwargs(softmax_scale, left, right, softcap, sinks, attention_chunk, q_descale, k_descale,
                                   v_descale)
        kwargs["qv"] = qv
        if varlen:
            result = reference.attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k=seqused_k,
                                                    seqused_q=seqused_q, **kwargs)
        elif seqused_k is not None:
            result = reference.attention_kvcache_ref(q, k, v, seqused_k, **kwargs)
        else:
            result = reference.attention_ref(q, k, v, **kwargs)
        out, lse = _like_fake(q, v, *result)
        return out, lse if return_lse else _no_lse(q)
    out, lse, _ = attention_forward(
        q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
        seqlens_k=seqused_k, pack_gqa=pack_gqa, num_splits=num_splits, return_lse=return_lse, seqused_q=seqused_q,
        attention_chunk=attention_chunk, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, qv=qv)
    return out, _no_lse(q) if lse is None else lse


fwd = torch.library.custom_op("swattn::fwd", mutates_args=(), device_types=None)(_fwd_impl)


@fwd.register_fake
def _fwd_fake(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
              left, right, softcap, pack_gqa, num_splits, seqused_q=None, attention_chunk=0, q_descale=None,
              k_descale=None, v_descale=None, return_lse=True, qv=None):
    if not return_lse:
        return _out_like(q, v), _no_lse(q)
    return _out_like(q, v), q.new_empty(lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)


def _reference_backward(dout, q, k, v, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, softmax_scale, left, right,
                        softcap, seqused_q=None, attention_chunk=0):
    """The backward of the float64 reference (CPU without the interpreter).

    ``torch.func.vjp``, not ``torch.autograd.grad``: a custom op's implementation runs below the autograd dispatch
    keys, where tensors do not record a graph; a function transform differentiates there all the same.
    """
    def forward(q64, k64, v64, *sinks64):
        kwargs = _reference_kwargs(softmax_scale, left, right, softcap, sinks64[0] if sinks64 else None,
                                   attention_chunk)
        if cu_seqlens_q is not None:
            return reference.attention_varlen_ref(q64, k64, v64, cu_seqlens_q, cu_seqlens_k, seqused_k=seqused_k,
                                                  seqused_q=seqused_q, **kwargs)
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


def _bwd_impl(
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
    seqused_q: torch.Tensor | None = None,
    attention_chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``swattn::fwd`` -> (dq, dk, dv, dsinks); dsinks is fp32 ``[H]``, or empty without sinks."""
    if not uses_triton(q):
        return _reference_backward(dout, q, k, v, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, softmax_scale,
                                   left, right, softcap, seqused_q, attention_chunk)
    dq, dk, dv, dsinks = attention_backward(
        dout, q, k, v, out, lse, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
        seqused_k=seqused_k, dlse=dlse, seqused_q=seqused_q, attention_chunk=attention_chunk)
    return dq, dk, dv, dsinks if dsinks is not None else q.new_empty(0, dtype=torch.float32)


bwd = torch.library.custom_op("swattn::bwd", mutates_args=(), device_types=None)(_bwd_impl)


@bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, dlse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
              max_seqlen_k, softmax_scale, left, right, softcap, seqused_q=None, attention_chunk=0):
    dsinks = q.new_empty(0 if sinks is None else sinks.shape[0], dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks


def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale, left, right,
     softcap, pack_gqa, num_splits, seqused_q, attention_chunk, *rest) = inputs
    descales = rest[:3]
    ctx.num_inputs = len(inputs)  # one gradient each (the op's schema has 21; a direct apply may pass fewer)
    # fp8 has no backward; as in FlashAttention 3, inputs that require grad are accepted and only a backward
    # through the call is refused (``_fwd_backward``): nothing is saved for it.
    ctx.fp8 = any(d is not None for d in descales) or k.dtype == torch.float8_e4m3fn
    # A value head_dim the backward does not take, or qv (``backward_refusal``): refused, as fp8, only at the
    # backward.
    ctx.refusal = backward_refusal(q, v, rest[4] if len(rest) > 4 else None)
    if ctx.refusal is not None:
        return
    # Called through the dispatcher with return_lse=False (run_fwd never does that when a gradient is needed).
    ctx.without_lse = len(rest) > 3 and not rest[3]
    if ctx.fp8 or ctx.without_lse:
        return
    out, lse = output
    # Unused outputs (usually the LSE) then arrive as None instead of a tensor of zeros to read.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, seqused_q)
    ctx.scalars = dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, softmax_scale=softmax_scale, left=left,
                       right=right, softcap=softcap, attention_chunk=attention_chunk)


def _needs_input_grad(ctx) -> tuple[bool, ...]:
    """``ctx.needs_input_grad`` of swattn::fwd's inputs (``_EagerAttention`` has its plan in front of them)."""
    return ctx.needs_input_grad[getattr(ctx, "input_offset", 0):]


# The largest value head_dim (v's last dimension, when it differs from q's) the backward takes.
MAX_BACKWARD_HEAD_DIM_V = 256


def backward_refusal(q: torch.Tensor, v: torch.Tensor, qv: torch.Tensor | None = None) -> str | None:
    """Why the backward cannot take these inputs (None when it can): FlashAttention 3's ``qv``, or a value head_dim
    Dv (v's last dimension) other than q's beyond what the backward takes."""
    if qv is not None:
        # FlashAttention 3's backward has no qv: it recomputes the probabilities from q k^T alone (its tests run no
        # backward with qv), so swattn refuses rather than give gradients of another function.
        return ("qv: a backward through attention with qv (the second query term) is not supported (FlashAttention "
                "3 has none either); run the forward under torch.no_grad() or detach its inputs")
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    if head_dim_v != head_dim and head_dim_v > MAX_BACKWARD_HEAD_DIM_V:
        # As FlashAttention 3, whose backward takes head dims up to 256 (its tests run none with Dv > 256).
        return (f"v: the backward takes a value head_dim up to {MAX_BACKWARD_HEAD_DIM_V}, got {head_dim_v} (key "
                f"head_dim {head_dim}); run the forward under torch.no_grad() or detach its inputs")
    return None


def _fwd_backward(ctx, grad_out, grad_lse, backward=None):
    if getattr(ctx, "refusal", None) is not None:
        raise NotImplementedError(ctx.refusal)
    if ctx.fp8:
        name = next((n for n, wanted in zip(("q", "k", "v", "sinks"), _needs_input_grad(ctx)) if wanted), "q")
        raise NotImplementedError(f"{name}: a backward through fp8 (float8_e4m3fn) attention is not supported "
                                  "(swattn's fp8 is forward only, as FlashAttention 3's); detach the fp8 inputs or "
                                  "run the forward under torch.no_grad()")
    if ctx.without_lse:
        raise RuntimeError("swattn::fwd: called with return_lse=False, so there is no LSE for its backward; pass "
                           "return_lse=True when a gradient is needed")
    q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, seqused_q = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    wants_dsinks = sinks is not None and _needs_input_grad(ctx)[3]
    # The kernels read the sinks only for their gradient (dQ, dK, dV take them through the saved LSE): without it
    # wanted they get none, and skip a launch and an allocation. The reference recomputes the forward: it needs them.
    sinks_in = sinks if wants_dsinks or not uses_triton(q) else None
    dq, dk, dv, dsinks = (backward or bwd)(grad_out, q, k, v, out, lse, grad_lse, sinks_in, cu_seqlens_q,
                                           cu_seqlens_k, seqused_k, seqused_q=seqused_q, **ctx.scalars)
    dsinks = dsinks.to(sinks.dtype) if wants_dsinks else None
    # One gradient per input of swattn::fwd: q, k, v, sinks, then the non-differentiable arguments.
    return (dq, dk, dv, dsinks) + (None,) * (ctx.num_inputs - 4)


torch.library.register_autograd("swattn::fwd", _fwd_backward, setup_context=_fwd_setup_context)


class _EagerAttention(torch.autograd.Function):
    """``swattn::fwd`` with its autograd formula, without the dispatcher: for plain eager calls that need a
    gradient (training loops). The custom op's autograd path costs several hundred us of host time per
    forward + backward on the H100 host (docs/notes/performance-log.md), which short sequences cannot hide.

    ``apply(plan, *op_arguments)``: ``plan`` is the forward plan of the call's signature when the caller holds it
    (``swattn._replay``'s planned op), else None (looked up here). On the Triton path the forward hands its plan (a
    third, non-tensor output) to the backward, which keeps its own plans there by the gradients' signature: the
    backward then looks up two tensors' signatures instead of twelve."""

    # The forward takes ctx itself (no setup_context): torch's apply then skips binding the arguments to the
    # forward's signature (inspect.signature on every call: ~15 us of CPU time per training forward), which only
    # functorch transforms need, and those take the custom op instead (``_may_skip_dispatcher``).
    @staticmethod
    def forward(ctx, plan, *inputs):
        if plan is None:
            if not uses_triton(inputs[0]):
                out, lse = _fwd_impl(*inputs)
                _fwd_setup_context(ctx, inputs, (out, lse))
                ctx.forward_plan, ctx.input_offset = None, 1
                return out, lse, None
            plan = _forward_plan(inputs)
        out, lse, _ = plan.run(*_forward_run_arguments(inputs), qv=_qv_argument(inputs))
        _fwd_setup_context(ctx, inputs, (out, lse))
        ctx.forward_plan, ctx.input_offset = plan, 1
        # Decided here, once: whether the sinks want their gradient (needs_input_grad: the plan, then the inputs).
        ctx.wants_dsinks = inputs[3] is not None and ctx.needs_input_grad[4]
        return out, lse, plan

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _plan):
        if ctx.forward_plan is None or ctx.fp8 or ctx.refusal:  # the reference's backward, or a refusal
            return None, *_fwd_backward(ctx, grad_out, grad_lse, backward=_bwd_impl)
        return None, *_planned_backward(ctx, grad_out, grad_lse)


def _forward_plan(args: tuple):
    """``kernels.fwd.forward_plan`` for ``swattn::fwd``'s arguments (in the op's order)."""
    (q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale, left, right,
     softcap, pack_gqa, num_splits, *rest) = args
    # seqused_q, attention_chunk, q/k/v_descale, return_lse, qv
    rest = tuple(rest) + (None, 0, None, None, None, True, None)[len(rest):]
    return forward_plan(q, k, v, softmax_scale=softmax_scale, left=left, right=right, softcap=softcap, sinks=sinks,
                        cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, cu_seqlens_k=cu_seqlens_k,
                        max_seqlen_k=max_seqlen_k, seqlens_k=seqused_k, pack_gqa=pack_gqa, num_splits=num_splits,
                        return_lse=rest[5], seqused_q=rest[0], attention_chunk=rest[1], q_descale=rest[2],
                        k_descale=rest[3], v_descale=rest[4], qv=rest[6])


# swattn::fwd's argument that holds qv (after return_lse).
_QV_ARGUMENT = 21


def _qv_argument(args: tuple) -> torch.Tensor | None:
    """``swattn::fwd``'s qv (None when the call passes fewer arguments)."""
    return args[_QV_ARGUMENT] if len(args) > _QV_ARGUMENT else None


def _forward_run_arguments(args: tuple) -> tuple:
    """A forward plan's ``run`` arguments from ``swattn::fwd``'s."""
    rest = tuple(args[15:]) + (None, 0, None, None, None)[len(args) - 15:]
    return (*args[:7], None, None, None, None, rest[0], None, *rest[2:5])


# Backward plans kept per forward plan (gradient layouts seen): a bound for callers whose gradients change layout.
_MAX_BACKWARD_PLANS = 8


def _planned_backward(ctx, grad_out, grad_lse):
    """``_fwd_backward`` for the Triton path of ``_EagerAttention``, with the backward plan kept by the forward's
    plan (see ``kernels.fwd._ForwardPlan.backward_plans``)."""
    q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, seqused_q = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    elif grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()  # the kernels take strides, but D must be unit-stride
    if grad_lse is not None:
        grad_lse = grad_lse.to(torch.float32).contiguous()
    wants_dsinks = ctx.wants_dsinks
    # As _fwd_backward: without their gradient wanted the kernels need no sinks (dQ, dK, dV read them through lse).
    sinks_in = sinks if wants_dsinks else None
    plans = ctx.forward_plan.backward_plans
    # grad_out has out's shape and device (the engine checks them against the output's, and casts the dtype): its
    # strides, dtype and 16-byte alignment pick the plan, with dLSE's signature.
    key = (grad_out.stride(), grad_out.dtype, grad_out.data_ptr() & 15,
           None if grad_lse is None else tensor_signature(grad_lse), wants_dsinks)
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= _MAX_BACKWARD_PLANS:
            plans.clear()
        # A forward plan of a new length (its family's other lengths: a training step of a new length) has no
        # backward plan yet: the family's latest one of these gradients' dtypes and alignment (what Triton
        # specializes them on; their strides follow the length) is rebased where it can be (dense q, k, v:
        # ``_BackwardPlan.rebased``), else the new plan takes its compiled kernels where Triton compiles alike.
        family = ctx.forward_plan.family()
        template_key = (grad_out.dtype, key[2], None if grad_lse is None else (grad_lse.dtype, key[3][3]),
                        wants_dsinks)
        template = (None if family is None or not forward_kernels.REBASE_PLANS
                    else family.backward_templates.get(template_key))
        if template is not None and template.rebase is not None:
            plan = template.rebased(grad_out, q, k, v, out, lse)
        if plan is None:
            plan = backward_plan(
                grad_out, q, k, v, out, lse, sinks=sinks_in, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                seqused_k=seqused_k, dlse=grad_lse, seqused_q=seqused_q, **ctx.scalars)
            if template is not None:
                plan.take_compiled(template)
        plans[key] = plan
        if family is not None:
            if len(family.backward_templates) >= _MAX_BACKWARD_PLANS:
                family.backward_templates.clear()
            family.backward_templates[template_key] = plan
    dq, dk, dv, dsinks = plan.run(grad_out, q, k, v, out, lse, sinks_in, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                  grad_lse, seqused_q)
    # One gradient per input of swattn::fwd: q, k, v, sinks, then the non-differentiable arguments.
    return (dq, dk, dv, dsinks.to(sinks.dtype) if wants_dsinks else None) + (None,) * (ctx.num_inputs - 4)


def _fwd_kvcache_impl(
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
    cu_seqlens_k_new: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_seqlens: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    rotary_sequential_q: bool = True,
    attention_chunk: int = 0,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    return_lse: bool = True,
    qv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cache forward: append ``k``/``v`` (if given, rotated with ``rotary_cos``/``rotary_sin``; into an fp8
    cache quantized with ``k_descale``/``v_descale``) at ``cache_seqlens``, rotate q likewise, then attend ->
    (out, lse); without ``return_lse`` the LSE is neither computed nor allocated (lse: an empty tensor). ``qv``
    (FlashAttention 3's second query term, laid out like q with v_cache's head_dim) is not rotated."""
    if uses_triton(q):
        args = (q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q, max_seqlen_q,
                sinks, softmax_scale, left, right, softcap, pack_gqa, num_splits, cu_seqlens_k_new, cache_leftpad,
                rotary_cos, rotary_sin, rotary_seqlens, rotary_interleaved, rotary_sequential_q, attention_chunk,
                q_descale, k_descale, v_descale, return_lse, qv)
        out, lse = _KVCachePlan(*args).run(*args)
        return out, _no_lse(q) if lse is None else lse
    rotary = dict(rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_seqlens=rotary_seqlens,
                  rotary_interleaved=rotary_interleaved)
    if k is None:
        seqlens_k = cache_seqlens.to(torch.int32)
    else:
        seqlens_k = reference.append_kv_ref(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx=cache_batch_idx,
                                            page_table=page_table, cu_seqlens_q=cu_seqlens_q,
                                            cu_seqlens_k_new=cu_seqlens_k_new, k_descale=k_descale,
                                            v_descale=v_descale, **rotary)
    if rotary_cos is not None:
        q = reference.rotate_queries_ref(q, rotary_cos, rotary_sin,
                                         cache_seqlens if rotary_seqlens is None else rotary_seqlens,
                                         rotary_sequential_q, rotary_interleaved, cu_seqlens_q)
    out, lse = _like_fake(q, v_cache, *reference.attention_kvcache_ref(
        q, k_cache, v_cache, seqlens_k, cache_batch_idx=cache_batch_idx, page_table=page_table,
        cu_seqlens_q=cu_seqlens_q, cache_leftpad=cache_leftpad, qv=qv,
        **_reference_kwargs(softmax_scale, left, right, softcap, sinks, attention_chunk, q_descale, k_descale,
                            v_descale)))
    return out, lse if return_lse else _no_lse(q)


def _no_lse(q: torch.Tensor) -> torch.Tensor:
    """The LSE output of a call that did not ask for it (the op must return a tensor): empty, float32."""
    return q.new_empty(0, dtype=torch.float32)


class _KVCachePlan:
    """The Triton kernels of one ``swattn::fwd_kvcache`` call signature: the append launch (or the fused append,
    or none), then the attention; ``run`` takes the op's arguments. The generic path makes one per call (its kernel
    plans are looked up by their own keys); ``planned_op`` keeps one per signature for ``swattn._replay``."""

    def __init__(self, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
                 max_seqlen_q, sinks, softmax_scale, left, right, softcap, pack_gqa, num_splits,
                 cu_seqlens_k_new=None, cache_leftpad=None, rotary_cos=None, rotary_sin=None, rotary_seqlens=None,
                 rotary_interleaved=True, rotary_sequential_q=True, attention_chunk=0, q_descale=None, k_descale=None,
                 v_descale=None, return_lse=True, qv=None):
        if k is None:
            one_new_token_per_query = False
        elif cu_seqlens_q is not None:
            one_new_token_per_query = k.dim() == 3 and cu_seqlens_k_new is None
        else:
            one_new_token_per_query = k.shape[1] == q.shape[1] and cu_seqlens_k_new is None
        # The fused append's case (fused_append_default's arguments), asked again by a kept plan's every run: the
        # setting and its table may change between calls.
        self.fused_case = None
        # The fused append copies tokens as they are: an e4m3 cache takes the append launch, which quantizes them.
        # It reads k and v through one set of strides and head_dim: a value head_dim of its own (v_cache's last
        # dimension other than k_cache's) takes the append launch too, and so does a call with qv (which travels in
        # the fused append's slot of the attention kernel).
        if (one_new_token_per_query and rotary_cos is None and cache_leftpad is None and qv is None
                and k_cache.dtype != torch.float8_e4m3fn and v_cache.shape[-1] == k_cache.shape[-1]):
            self.fused_case = (left, 0 if page_table is None else k_cache.shape[1],
                               q.shape[0] if cu_seqlens_q is None else cu_seqlens_q.shape[0] - 1,
                               q.shape[1] if cu_seqlens_q is None else max_seqlen_q)
        self.fused = self.fused_case is not None and fused_append_default(*self.fused_case)
        # The fused kernel reads both through one set of strides.
        self.copy_new = self.fused and k.stride() != v.stride()
        self.append = None
        if k is not None and not self.fused:
            self.append = append_plan(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table,
                                      cu_seqlens_q, cu_seqlens_k_new, q, rotary_cos, rotary_sin, rotary_seqlens,
                                      rotary_interleaved, rotary_sequential_q, k_descale, v_descale)
        # (max_seqlen_q is each run's: a replay serving other lengths passes its call's.)
        self.forward_arguments = dict(softmax_scale=softmax_scale, left=left, right=right, softcap=softcap,
                                      pack_gqa=pack_gqa, num_splits=num_splits, return_lse=return_lse,
                                      attention_chunk=attention_chunk)
        self.max_seqlen_q = self.tokens = None  # the lengths of the kept forward plan
        # A dense KV cache read as it is (no pages, no new tokens): a replay may serve other cache lengths
        # (``swattn._replay``'s ``dense``), whose plans come from the kept plan's family. (The cache's length and
        # strides of the kept forward plan.)
        self.dense_cache = page_table is None and k is None and cu_seqlens_q is None
        self.cache_key = None
        # Looked up at the first run: it is keyed on tensors made there (the new lengths, a rotated q), whose
        # layouts follow from the signature.
        self.forward = None
        # Without new tokens the kernels read cache_seqlens as the lengths (int32, as the interface checks it; the
        # op called through the dispatcher may pass int64).
        self.lengths_as_given = cache_seqlens.dtype == torch.int32

    def fused_changed(self) -> bool:
        return self.fused_case is not None and fused_append_default(*self.fused_case) != self.fused

    def run(self, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
            max_seqlen_q=None, sinks=None, softmax_scale=None, left=None, right=None, softcap=None, pack_gqa=None,
            num_splits=None, cu_seqlens_k_new=None, cache_leftpad=None, rotary_cos=None, rotary_sin=None,
            rotary_seqlens=None, rotary_interleaved=None, rotary_sequential_q=None, attention_chunk=None,
            q_descale=None, k_descale=None, v_descale=None, return_lse=None, qv=None, out=None):
        """-> (out, lse), lse None when the plan was made without ``return_lse``; ``out`` given: written there."""
        q_attend, new_k, new_v = q, None, None  # q_attend: q, or its rotated copy
        stream = ASK  # stream_key, asked once for the append's and the attention's kept scratch
        if self.fused:
            if self.copy_new:
                k, v = k.contiguous(), v.contiguous()
            seqlens_k, new_k, new_v = cache_seqlens, k, v  # lengths before the append
        elif k is None:
            seqlens_k = cache_seqlens if self.lengths_as_given else cache_seqlens.to(torch.int32)
        else:
            stream = stream_key(q.device)
            seqlens_k, q_rotated = self.append.run(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx,
                                                   page_table, cu_seqlens_q, cu_seqlens_k_new, q, rotary_cos,
                                                   rotary_sin, rotary_seqlens, k_descale, v_descale,
                                                   scratch_lengths=True, stream=stream)
            if q_rotated is not None:
                q_attend = q_rotated
        forward, kept = self.forward, False
        if forward is None:
            kept, self.max_seqlen_q, self.tokens = True, max_seqlen_q, q.shape[0]
            if self.dense_cache:
                self.cache_key = _cache_key(k_cache, v_cache)
        elif ((cu_seqlens_q is not None and (max_seqlen_q != self.max_seqlen_q or q.shape[0] != self.tokens))
              or (self.dense_cache and _cache_key(k_cache, v_cache) != self.cache_key)):
            # A replay serving other lengths (swattn._replay's ``lengths``: q's rows and max_seqlen_q; ``dense``: the
            # cache's length and strides): this call's plan from the kept one's family (rebased where it can be), a
            # family of the signature up to them (varlen q, or a dense one: any other keeps exact lengths).
            family = forward.family()  # None once evicted from kernels.fwd's cache
            forward = None
            if family is not None and (family.varlen_q or family.dense):
                forward = family.lookup(q_attend, k_cache, v_cache, max_seqlen_q, rebase=True)
        if forward is None:
            forward = forward_plan(
                q_attend, k_cache, v_cache, sinks=sinks, seqlens_k=seqlens_k, cache_batch_idx=cache_batch_idx,
                page_table=page_table, cu_seqlens_q=cu_seqlens_q, new_k=new_k, new_v=new_v,
                cache_leftpad=cache_leftpad, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, qv=qv,
                max_seqlen_q=max_seqlen_q, **self.forward_arguments)
            if kept:
                self.forward = forward
        out, lse, _ = forward.run(q_attend, k_cache, v_cache, sinks, cu_seqlens_q, None, seqlens_k, cache_batch_idx,
                                  page_table, new_k, new_v, None, cache_leftpad, q_descale, k_descale, v_descale,
                                  stream, out, qv=qv)
        return out, lse


def _cache_key(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple:
    """A dense KV cache's length and strides (what its forward plan is kept by in its family)."""
    return k_cache.shape[1], k_cache.stride(), v_cache.stride()


fwd_kvcache = torch.library.custom_op("swattn::fwd_kvcache", mutates_args=("k_cache", "v_cache"),
                                      device_types=None)(_fwd_kvcache_impl)


@fwd_kvcache.register_fake
def _fwd_kvcache_fake(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, page_table, cu_seqlens_q,
                      max_seqlen_q, sinks, softmax_scale, left, right, softcap, pack_gqa, num_splits,
                      cu_seqlens_k_new=None, cache_leftpad=None, rotary_cos=None, rotary_sin=None,
                      rotary_seqlens=None, rotary_interleaved=True, rotary_sequential_q=True, attention_chunk=0,
                      q_descale=None, k_descale=None, v_descale=None, return_lse=True, qv=None):
    if not return_lse:
        return _out_like(q, v_cache), _no_lse(q)
    return _out_like(q, v_cache), q.new_empty(lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)


def _may_skip_dispatcher(tensors) -> bool:
    """Whether an eager call may run the implementation directly: the dispatcher path of a Python custom op costs
    about 75 us of host time per call (measured on the CPU with the kernels stubbed out: 115 us per decode call
    through it, 40 us direct), which an eager decode loop pays once per layer. Anything that traces or
    transforms the call (torch.compile, export, make_fx, fake tensors, functorch, tensor subclasses) goes through
    the custom op, which it knows how to handle."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if is_in_torch_dispatch_mode():
        return False
    return all(t is None or type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def run_fwd(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """``swattn::fwd`` with its arguments in order (q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, the
    scalars, seqused_q, attention_chunk, q/k/v_descale, return_lse, qv; positional, so ``swattn._replay`` can
    record the call). Plain eager calls skip the dispatcher (see ``_may_skip_dispatcher``): the implementation
    directly when no gradient is needed, else ``_EagerAttention``, the same forward and backward. A call that needs
    a gradient computes the LSE whatever ``return_lse`` says (the backward reads it); one whose qv requires grad
    takes the autograd path too, whose backward refuses it (``backward_refusal``)."""
    q, k, v, sinks = args[:4]
    qv = _qv_argument(args)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, sinks, qv))
    if needs_grad and len(args) > 20 and not args[20]:
        args = (*args[:20], True, *args[21:])
    if not _may_skip_dispatcher(args[:7] + (args[15],) + tuple(args[17:20]) + (qv,)):
        return fwd(*args)
    if needs_grad:
        return _EagerAttention.apply(None, *args)[:2]
    return _fwd_impl(*args)


def _increment_versions(*tensors: torch.Tensor) -> None:
    """Record the tensors' in-place update (the caches', or a merge's outputs), as the dispatcher does for a mutating
    op (one call for all; inference tensors, which have no version counter, are skipped by torch)."""
    try:
        torch.autograd.graph.increment_version(tensors)
    except RuntimeError:  # a torch whose increment_version refuses inference tensors: one by one, skipping them
        for tensor in tensors:
            if not tensor.is_inference():
                torch.autograd.graph.increment_version(tensor)


def _bump_versions_in_kernel(op, implementation) -> bool:
    """Give the mutating custom op ``op`` (made from ``implementation``) torch's C++ ``ADInplaceOrView`` kernel, and
    bump its mutated arguments' version counters in its implementation's kernel instead; returns whether it did.

    ``custom_op`` registers a Python ``ADInplaceOrView`` kernel for a mutating op that bumps those counters on every
    dispatched call: on torch 2.13 it first fills in the call's defaults (``torch._library.utils.fill_defaults``,
    quadratic in the op's ~30 arguments: 220 of the 283 us of a decode with the append through the dispatcher, CPU,
    kernels stubbed), on torch 2.11 it is a Python round trip around the C++ kernel. The C++ fallback (which
    ``custom_op`` registers first and then overrides) tracks views but bumps no counter, so the kernel below it does:
    the op's implementation is wrapped (``register_kernel``) to bump the mutated arguments after the launches, where
    the dispatcher's ``ADInplaceOrView`` kernel would have bumped them before (nothing reads the counters between).
    The mutated arguments must be positional without defaults (the dispatcher then always passes them positionally,
    as torch 2.11's own kernel assumes). Where a torch lacks any of this, ``custom_op``'s kernel stays."""
    try:
        library = op._lib.m
        register_fallback = library.register_ad_inplace_or_view_fallback
        arguments = op._opoverload._schema.arguments
        mutated = [index for index, argument in enumerate(arguments)
                   if argument.alias_info is not None and argument.alias_info.is_write]
        if (not mutated or not hasattr(torch.autograd.graph, "increment_version")
                or any(argument.kwarg_only or argument.has_default_value()
                       for argument in arguments[:max(mutated) + 1])):
            return False
    except AttributeError:
        return False

    def bumping_implementation(*args, **kwargs):
        result = implementation(*args, **kwargs)
        _increment_versions(*(args[index] for index in mutated))
        return result

    op.register_kernel(None, bumping_implementation)
    register_fallback(op._name)
    return True


def run_fwd_kvcache(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """``swattn::fwd_kvcache`` with its arguments in order (positional, as ``run_fwd``), called directly in eager
    mode (see ``_may_skip_dispatcher``)."""
    k, k_cache, v_cache = args[3], args[1], args[2]
    if _may_skip_dispatcher(tuple(a for a in args if a is None or isinstance(a, torch.Tensor))):
        result = _fwd_kvcache_impl(*args)
        if k is not None:  # the dispatcher records the caches' in-place update; so must the direct call
            _increment_versions(k_cache, v_cache)
        return result
    return fwd_kvcache(*args)


def run_fwd_into(out: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """``run_fwd(*args)`` with the attention output in ``out`` (the interface checked it: the output's shape,
    dtype and device, contiguous, 16-byte aligned, and that no gradient is needed). Plain eager calls on the Triton
    path have the kernels write it; the others (through the dispatcher: torch.compile, functorch, subclasses; the
    CPU reference) copy the op's result into it. -> (out, lse)."""
    if uses_triton(args[0]) and _may_skip_dispatcher(args[:7] + (args[15],) + tuple(args[17:20])
                                                     + (_qv_argument(args), out)):
        _, lse, _ = _forward_plan(args).run(*_forward_run_arguments(args), out=out, qv=_qv_argument(args))
        _increment_versions(out)
        return out, _no_lse(args[0]) if lse is None else lse
    result, lse = run_fwd(*args)
    out.copy_(result)
    return out, lse


def run_fwd_kvcache_into(out: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """``run_fwd_kvcache(*args)`` with the attention output in ``out``, as ``run_fwd_into``."""
    if uses_triton(args[0]) and _may_skip_dispatcher(
            tuple(a for a in args if a is None or isinstance(a, torch.Tensor)) + (out,)):
        _, lse = _KVCachePlan(*args).run(*args, out=out)
        _increment_versions(*((out,) if args[3] is None else (out, args[1], args[2])))
        return out, _no_lse(args[0]) if lse is None else lse
    result, lse = run_fwd_kvcache(*args)
    out.copy_(result)
    return out, lse


def _combine_impl(out_partial: torch.Tensor, lse_partial: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """FlashAttention 3's ``flash_attn_combine``: merge ``out_partial [S, B, L, H, D]`` and ``lse_partial [S, B, L,
    H]`` (or the varlen layout without B) into ``out`` and ``lse`` (float32), in place."""
    if uses_triton(out_partial):
        combine_splits(out_partial, lse_partial, out, lse)
        return
    merged, merged_lse = reference.combine_ref(out_partial, lse_partial)
    out.copy_(merged)
    lse.copy_(merged_lse)


combine = torch.library.custom_op("swattn::combine", mutates_args=("out", "lse"), device_types=None)(_combine_impl)
# The mutating ops whose version counters their kernels bump (``_bump_versions_in_kernel``; the others keep
# custom_op's Python ADInplaceOrView kernel). SWATTN_KERNEL_VERSION_BUMP=0 at import keeps custom_op's kernel for all
# (A/B runs of the dispatcher's host cost).
KERNEL_VERSION_BUMPS = tuple(name for name, op, implementation in (
    ("fwd_kvcache", fwd_kvcache, _fwd_kvcache_impl), ("combine", combine, _combine_impl))
    if os.environ.get("SWATTN_KERNEL_VERSION_BUMP", "1") != "0" and _bump_versions_in_kernel(op, implementation))


@combine.register_fake
def _combine_fake(out_partial, lse_partial, out, lse):
    return None


def run_combine(out_partial: torch.Tensor, lse_partial: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """``swattn::combine``, called directly in eager mode (see ``_may_skip_dispatcher``)."""
    if not _may_skip_dispatcher((out_partial, lse_partial, out, lse)):
        combine(out_partial, lse_partial, out, lse)
        return
    _combine_impl(out_partial, lse_partial, out, lse)
    for t in (out, lse):  # the dispatcher records the in-place writes; so must the direct call
        if not t.is_inference():
            torch.autograd.graph.increment_version(t)


def plan_settings() -> tuple:
    """The module-level settings the kernels' plans are made with (``swattn._replay`` keys on them: a planned op
    serves only calls made under the settings it was planned with)."""
    return FUSED_APPEND, forward_settings()


def _plain_tensors(args) -> bool:
    return all(type(a) in (torch.Tensor, torch.nn.Parameter) for a in args if isinstance(a, torch.Tensor))


def _plain_eager() -> bool:
    """Nothing transforms the call (functorch, a dispatch mode): ``_may_skip_dispatcher``'s checks that a call
    signature does not decide."""
    return not (torch._C._are_functorch_transforms_active() or is_in_torch_dispatch_mode())


def planned_op(op, args: tuple):
    """For ``swattn._replay``: a function that makes ``op(*args)``'s launches for later calls of the same signature
    (every tensor's shape, strides, dtype, device, type and 16-byte alignment, every other argument's value, and
    ``plan_settings()``), or None (the op itself is called). The kernels' plans are looked up here, once, instead of
    by their keys on every call. Calls it cannot serve (a gradient is needed, something transforms the call, the
    fused-append setting changed, CPU tensors without the interpreter) go through ``op``."""
    if not uses_triton(args[0]) or not _plain_tensors(args):
        return None
    if op is run_fwd_kvcache:
        return _planned_fwd_kvcache(args)
    if op is run_fwd:
        return _planned_fwd(args)
    if op is run_fwd_kvcache_into:
        return _planned_fwd_kvcache_into(args[1:])
    if op is run_fwd_into:
        return _planned_fwd_into(args[1:])
    return None


def _planned_fwd_kvcache(args: tuple):
    plan = _KVCachePlan(*args)
    appends = args[3] is not None

    def run(*args):
        if not (uses_triton(args[0]) and _plain_eager()) or plan.fused_changed():
            return run_fwd_kvcache(*args)
        result = plan.run(*args)
        if appends:  # as run_fwd_kvcache: the caches' in-place update is recorded
            _increment_versions(args[1], args[2])
        return result
    return run


def _planned_fwd_kvcache_into(args: tuple):
    plan = _KVCachePlan(*args)
    appends = args[3] is not None

    def run(out, *args):
        if not (uses_triton(args[0]) and _plain_eager()) or plan.fused_changed():
            return run_fwd_kvcache_into(out, *args)
        _, lse = plan.run(*args, out=out)
        _increment_versions(*((out, args[1], args[2]) if appends else (out,)))
        return out, lse
    return run


def _plan_for_lengths(kept, args: tuple):
    """The forward plan of a call whose signature is the ``kept`` plan's up to its lengths (a replay serving other
    lengths, ``swattn._replay``'s ``lengths`` and ``dense``: the lengths, and the rows or strides that follow them):
    from the kept plan's family (a varlen family, or a dense one, ``_PlanFamily.dense``, whose lookup holds the
    rest), else made (``forward_plan``: a family of exact shapes)."""
    family = kept.family()  # None once evicted from kernels.fwd's cache
    plan = None
    if family is not None and (family.varlen_q or family.dense):
        plan = family.lookup(args[0], args[1], args[2], args[7], args[8], rebase=True)
    return _forward_plan(args) if plan is None else plan


def _planned_fwd_into(args: tuple):
    plan = _forward_plan(args)  # no gradient: the interface refuses out= for calls that need one

    def run(out, *args):
        """A call of the recorded signature (``swattn._replay``'s exact key): the recorded shapes and strides."""
        if not (uses_triton(args[0]) and _plain_eager()):
            return run_fwd_into(out, *args)
        _, lse, _ = plan.run(*_forward_run_arguments(args), out=out, qv=_qv_argument(args))
        _increment_versions(out)
        return out, lse

    def run_other_lengths(out, *args):
        """A call the replay serves up to its lengths (and the tensors' rows or strides that follow them)."""
        if not (uses_triton(args[0]) and _plain_eager()):
            return run_fwd_into(out, *args)
        _, lse, _ = _plan_for_lengths(plan, args).run(*_forward_run_arguments(args), out=out, qv=_qv_argument(args))
        _increment_versions(out)
        return out, lse
    run.other_lengths = run_other_lengths
    return run


def _planned_fwd(args: tuple):
    (q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale, left, right,
     softcap, pack_gqa, num_splits, *rest) = args
    has_seqused_q = bool(rest) and rest[0] is not None
    return_lse = rest[5] if len(rest) > 5 else True
    # Planned at the first call of the recorded signature that needs it: without a gradient (the LSE as asked), with
    # one (the LSE stored, for the backward; the call takes _EagerAttention with this plan, its backward keeps its
    # plans there). A call of other lengths (a replay serving them: ``run.other_lengths``) takes its lengths' plan
    # from the kept plan's family.
    plans = {}
    # A plan of the same signature up to lengths per gradient need, made by the first call of other lengths when the
    # recorded signature's is not planned yet: the family those calls look their lengths' plans up in.
    anchors = {}

    def run_with(args, other_lengths: bool):
        q, k, v, sinks = args[:4]
        if not (uses_triton(q) and _plain_eager()):
            return run_fwd(*args)
        qv = _qv_argument(args)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                                   or (sinks is not None and sinks.requires_grad)
                                                   or (qv is not None and qv.requires_grad))
        if needs_grad and not return_lse:
            args = (*args[:20], True, *args[21:])  # the backward reads the LSE
        plan = plans.get(needs_grad)
        if not other_lengths:
            if plan is None:  # (only the recorded signature's plan is kept here: its calls take it unchecked)
                plan = plans[needs_grad] = _forward_plan(args)
        else:
            anchor = anchors.get(needs_grad) or plan
            if anchor is None or anchor.family() is None:  # (none yet, or its family evicted: this call's)
                plan = anchors[needs_grad] = _forward_plan(args)
            else:
                plan = _plan_for_lengths(anchor, args)
        if needs_grad:
            return _EagerAttention.apply(plan, *args)[:2]
        out, lse, _ = plan.run(q, k, v, sinks, args[4], args[5], args[6], None, None, None, None,
                               args[15] if has_seqused_q else None, None, *args[17:20], qv=qv)
        return out, lse

    def run(*args):
        """A call of the recorded signature (``swattn._replay``'s exact key): the recorded shapes and strides."""
        return run_with(args, False)

    def run_other_lengths(*args):
        """A call the replay serves up to its lengths (and the tensors' rows or strides that follow them)."""
        return run_with(args, True)
    run.other_lengths = run_other_lengths
    return run
