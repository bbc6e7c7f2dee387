"""Backward: forward + backward of one causal sliding-window sequence (batch 1), swattn against FlexAttention and SDPA.

Shapes: seqlen 8192 and 32768; (D=64, H=64, Hk=8) and (D=128, H=32, Hk=8); window (127, 0), (4095, 0) and full
causal; bf16; no sinks (FlexAttention and SDPA have none). One timed call = the forward and
``torch.autograd.grad(out, (q, k, v), dout)``. FlexAttention runs compiled with the same block mask; SDPA with
``is_causal`` (full causal) or a boolean mask (windows). Work counted: window-only FLOPs = 3.5 x the forward's
4 * D * H * visible pairs (the backward's five matmuls against the forward's two); bytes floor = q, k, v read and o
written by the forward, q, k, v, o, dO read and dQ, dK, dV written by the backward.

The check, before any timing: each provider's dQ (at the check rows), dK and dV against torch.autograd through the
float32 reference (float64 on the CPU), with dO zero except at the check rows (the first 64, the last 256 and 4
random ones), so that the reference only needs those rows and the keys they see; the timed calls use a dense dO.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

import swattn
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Runner,
    Section,
    Skip,
    make_env,
    measure_windowed_shapes,
    speedup_summary,
    windowed_table,
)
from swattn.bench.prefill import visible_pairs
from swattn.reference import attention_ref
from swattn.testing import relative_error, tolerance_for
from swattn.window import first_visible_key, is_visible

SEQLENS = [8192, 32768]
HEADS = [(64, 64, 8), (128, 32, 8)]  # (head_dim, heads, kv_heads)
LEFTS = [127, 4095, -1]
QUICK_HEADS = [(32, 4, 2), (64, 4, 1)]
BACKWARD_FLOP_FACTOR = 3.5  # forward + backward FLOPs over forward FLOPs: (2 + 5) matmuls / 2


@dataclass(frozen=True)
class BackwardShape:
    seqlen: int
    head_dim: int
    heads: int
    kv_heads: int
    left: int  # window_size = (left, 0); -1 = full causal
    batch: int = 1

    @property
    def label(self) -> str:
        return f"S={self.seqlen} D={self.head_dim} H={self.heads}/{self.kv_heads}"

    @property
    def window(self) -> str:
        return f"({self.left},0)" if self.left >= 0 else "causal"


def shapes(env: Env, seqlens: list[int] | None = None, head_dims: list[int] | None = None,
           lefts: list[int] | None = None) -> list[BackwardShape]:
    """The scenario's shapes; ``head_dims`` / ``lefts`` keep only those (a run split across time limits)."""
    if env.quick:
        seqlens, heads, all_lefts = seqlens or [48], QUICK_HEADS, [7, 31, -1]
    else:
        seqlens, heads, all_lefts = seqlens or SEQLENS, HEADS, LEFTS
    return [BackwardShape(s, d, h, hk, left) for s in seqlens for d, h, hk in heads for left in all_lefts
            if (head_dims is None or d in head_dims) and (lefts is None or left in lefts)]


def work(shape: BackwardShape, itemsize: int) -> tuple[float, float]:
    """(window-only FLOPs, bytes floor) of one forward + backward."""
    b, s, d = shape.batch, shape.seqlen, shape.head_dim
    flops = BACKWARD_FLOP_FACTOR * 4.0 * d * shape.heads * b * visible_pairs(s, s, shape.left, 0)
    q_like, kv_like = b * s * d * shape.heads, b * s * d * shape.kv_heads
    forward_elements = 2 * q_like + 2 * kv_like  # q, k, v, o
    backward_elements = 4 * q_like + 4 * kv_like  # q, k, v, o, dO read; dQ, dK, dV written
    return flops, float(itemsize * (forward_elements + backward_elements))


def check_blocks(seqlen: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Query-row blocks ``[a, b)`` whose dO is non-zero in the check: all rows up to 512, else the first 64, the
    last 256 (as 64-row blocks, to bound the reference's memory) and 4 random single rows."""
    if seqlen <= 512:
        return [(0, seqlen)]
    blocks = [(0, 64)] + [(a, a + 64) for a in range(seqlen - 256, seqlen, 64)]
    randoms = torch.randint(64, seqlen - 256, (4,), generator=generator).tolist()
    return blocks + [(i, i + 1) for i in sorted(set(randoms))]


@dataclass
class BackwardCase:
    shape: BackwardShape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # dense, for the timed calls
    dout_check: torch.Tensor  # zero except at the check rows
    blocks: list[tuple[int, int]]
    rows: torch.Tensor
    _reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def reference(self, env: Env) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dQ at the check rows, dK, dV) of the reference under ``dout_check``, by torch.autograd, block by block:
        a block of rows ``[a, b)`` sees only keys ``[first_visible_key(a), b)``, and with right = 0 the sub-problem
        keeps bottom-right alignment exact."""
        if self._reference is None:
            s, left, dtype = self.shape.seqlen, self.shape.left, env.reference_dtype
            dk = torch.zeros(self.k.shape, device=self.k.device, dtype=dtype)
            dv = torch.zeros_like(dk)
            dq_parts = []
            for a, b in self.blocks:
                c = first_visible_key(a, s, s, left)
                q = self.q[:, a:b].to(dtype).requires_grad_()
                k = self.k[:, c:b].to(dtype).requires_grad_()
                v = self.v[:, c:b].to(dtype).requires_grad_()
                out, _ = attention_ref(q, k, v, causal=True, window_size=(left, 0), compute_dtype=dtype)
                grad_q, grad_k, grad_v = torch.autograd.grad(out, (q, k, v), self.dout_check[:, a:b].to(dtype))
                dq_parts.append(grad_q)
                dk[:, c:b] += grad_k
                dv[:, c:b] += grad_v
                del out, q, k, v
            self._reference = (torch.cat(dq_parts, dim=1), dk, dv)
        return self._reference

    def compare(self, env: Env):
        """Worst relative error of (dQ at the check rows, dK, dV); a provider's output is in q's layout."""
        def check(grads):
            dq, dk, dv = grads
            expected = self.reference(env)
            error = max(relative_error(g.float(), e.float()) for g, e in zip((dq[:, self.rows], dk, dv), expected))
            return error, tolerance_for(env.dtype)
        return check


def setup_backward(shape: BackwardShape, env: Env, seed: int = 0) -> BackwardCase:
    """Random inputs (never zeros), the dense and the check dO; shared by the check and the timing."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    make = lambda h: torch.randn(shape.batch, shape.seqlen, h, shape.head_dim, device=env.device, dtype=env.dtype)
    q, k, v, dout = make(shape.heads), make(shape.kv_heads), make(shape.kv_heads), make(shape.heads)
    blocks = check_blocks(shape.seqlen, generator)
    rows = torch.cat([torch.arange(a, b) for a, b in blocks]).to(env.device)
    dout_check = torch.zeros_like(dout)
    dout_check[:, rows] = dout[:, rows]
    return BackwardCase(shape, q, k, v, dout, dout_check, blocks, rows)


def _runner(forward, leaves, dout, dout_check, to_q_layout, note: str = "") -> Runner:
    """Runner of ``forward(*leaves)`` then ``autograd.grad``: check with ``dout_check``, time with ``dout``."""
    def step(grad_out):
        out = forward(*leaves)
        return torch.autograd.grad(out, leaves, grad_out)

    return Runner(check=lambda: tuple(to_q_layout(g) for g in step(dout_check)), timed=lambda: step(dout), note=note)


def swattn_runner(case: BackwardCase) -> Runner:
    left = case.shape.left
    leaves = tuple(t.detach().requires_grad_() for t in (case.q, case.k, case.v))
    forward = lambda q, k, v: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
    return _runner(forward, leaves, case.dout, case.dout_check, lambda g: g)


def _heads_first(case: BackwardCase):
    """q, k, v as ``[B, H, S, D]`` leaves, dO and the check's dO in the same layout."""
    leaves = tuple(t.transpose(1, 2).contiguous().requires_grad_() for t in (case.q, case.k, case.v))
    return leaves, case.dout.transpose(1, 2).contiguous(), case.dout_check.transpose(1, 2).contiguous()


def flex_runner(case: BackwardCase) -> Runner:
    if not case.q.is_cuda:
        raise Skip("FlexAttention (compiled) needs a CUDA tensor")
    compiled, _ = peers._flex()
    s = case.shape.seqlen
    block_mask = peers.flex_block_mask(s, s, case.shape.left, case.q.device)
    leaves, dout, dout_check = _heads_first(case)
    forward = lambda q, k, v: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
    return _runner(forward, leaves, dout, dout_check, lambda g: g.transpose(1, 2))


def sdpa_runner(case: BackwardCase, math_limit_bytes: float = 8e9) -> Runner:
    """SDPA's fused backends; GQA K/V heads are expanded *inside* the timed call when the GQA call would take the
    math backend (the expansion and its backward are then part of SDPA's time, and the row says so)."""
    import torch.nn.functional as F

    if not case.q.is_cuda:
        raise Skip("SDPA benchmark needs a CUDA tensor")
    s, left = case.shape.seqlen, case.shape.left
    leaves, dout, dout_check = _heads_first(case)
    q, k, v = leaves
    if left < 0:
        mask, causal = None, True  # top-left is_causal == bottom-right when Sq == Sk
    else:
        positions = torch.arange(s, device=q.device)
        mask, causal = is_visible(positions[:, None], positions[None, :], s, s, left, 0), False
    group = q.shape[1] // k.shape[1]
    gqa = group > 1
    with torch.no_grad():
        backend = peers.sdpa_backend(q, k, v, mask, causal, gqa)
        expand = backend == "math" and gqa
        if expand:
            full = k.detach().repeat_interleave(group, dim=1)
            backend = peers.sdpa_backend(q, full, full, mask, causal, False)
            del full
    if backend == "math" and q.shape[0] * q.shape[1] * s * s * 4 > math_limit_bytes:
        raise Skip(f"SDPA would take the math backend (scores {q.shape[0] * q.shape[1] * s * s * 4 / 1e9:.0f} GB)")

    def forward(q, k, v):
        if expand:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa and not expand)

    note = f"backend {backend}" + (f"; K/V heads expanded x{group} inside the timed call" if expand else "")
    return _runner(forward, leaves, dout, dout_check, lambda g: g.transpose(1, 2), note=note)


def providers(case: BackwardCase):
    """(name, builder) pairs; a builder returns a Runner or raises Skip."""
    return [("swattn", lambda: swattn_runner(case)), ("Flex", lambda: flex_runner(case)),
            ("SDPA", lambda: sdpa_runner(case))]


def run(env: Env, seqlens: list[int] | None = None, head_dims: list[int] | None = None,
        lefts: list[int] | None = None) -> Section:
    rows, windows, unavailable = measure_windowed_shapes(env, shapes(env, seqlens, head_dims, lefts), setup_backward,
                                                         providers, work)
    notes = [
        f"one call = forward + backward (autograd.grad of q, k, v); TFLOP/s counts only visible (query, key) pairs: "
        f"{BACKWARD_FLOP_FACTOR} * 4 * D * H * pairs / time; floor us = bytes (forward: q, k, v, o; backward: q, k, "
        "v, o, dO, dQ, dK, dV) / measured copy bandwidth; time/swattn > 1 means swattn is faster.",
        speedup_summary(rows),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    return Section(f"Backward (forward + backward), batch 1, {env.dtype}, causal (bottom-right), no sinks",
                   windowed_table(rows, env, windows, "fwd+bwd us median (p20/p80)"), notes, rows)


def main(args: argparse.Namespace) -> Section:
    """Entry point of ``python -m swattn.bench backward``: ``args.quick``, ``args.providers``, ``args.no_peers`` and,
    when the scenario is ``backward`` alone, ``args.seqlens`` (default 8192,32768), ``args.head_dims`` and
    ``args.lefts``."""
    env = make_env(args.quick, peers=not getattr(args, "no_peers", False), graphs=False,
                   providers=getattr(args, "providers", None))
    alone = getattr(args, "scenario", "backward") == "backward"
    section = run(env, getattr(args, "seqlens", None) if alone else None,
                  getattr(args, "head_dims", None) if alone else None, getattr(args, "lefts", None) if alone else None)
    if alone:  # the dispatcher prints no environment header
        section.notes.extend(line.removeprefix("- ") for line in env.header)
    return section
