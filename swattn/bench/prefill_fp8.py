"""All-fp8 (e4m3 q, K, V) prefill beside bf16 (``python -m swattn.bench prefill-fp8``): one prompt of 16K tokens,
D=128, H=32, Hk=8, window (4095, 0) and causal (``--seqlens``, ``--lefts``), no sinks.

Providers: ``swattn bf16`` and ``FA3 bf16`` on the bf16 inputs, ``swattn`` (fp8) and ``FA3 fp8`` on the same inputs
quantized to e4m3 with one descale per KV head (q: per KV head's group of query heads), passed as ``[B, Hk]``.
Each is checked against ``swattn.reference`` on its own inputs at the rows ``swattn.bench.prefill`` checks
(``check_blocks``); FA3's fp8 path rounds P to e4m3, so its rows are checked at 5e-2. Timing: one call replayed
from a CUDA graph, L2 cleared before each replay (``time_single_graph``). swattn's fp8 prefill runs the Triton
kernel (Q K^T on e4m3 operands, P @ V in bf16), on sm_90 the Gluon kernel (the same products, e4m3 Q K^T as
warpgroup products, V as a bf16 copy; ``gluon_fwd.FP8_QK``); its bf16 row takes the Gluon kernel where that is the
default.
"""

from __future__ import annotations

import torch

import swattn
from swattn.bench import peers
from swattn.bench.common import Env, Section, measure, time_single_graph, windowed_table
from swattn.bench.common import drop_unavailable as _drop_unavailable
from swattn.bench.decode_fp8 import FA3_FP8_TOLERANCE, quantize_per_head
from swattn.bench.prefill import PrefillShape, check_blocks, work
from swattn.reference import attention_ref
from swattn.testing import relative_error, tolerance_for
from swattn.window import first_visible_key

FP8 = torch.float8_e4m3fn


def shapes(env: Env, seqlens: list[int] | None = None, lefts: list[int] | None = None) -> list[PrefillShape]:
    if env.quick:
        return [PrefillShape(s, 32, 4, 2, left) for s in seqlens or [48] for left in lefts or [7, -1]]
    return [PrefillShape(s, 128, 32, 8, left) for s in seqlens or [16384] for left in lefts or [4095, -1]]


class Fp8PrefillCase:
    """bf16 q, k, v, their e4m3 copies with descales ``[B, Hk]``, and the rows the check compares."""

    def __init__(self, shape: PrefillShape, env: Env, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.shape = shape
        make = lambda h: torch.randn(shape.batch, shape.seqlen, h, shape.head_dim, device=env.device,
                                     dtype=torch.bfloat16)
        self.q, self.k, self.v = make(shape.heads), make(shape.kv_heads), make(shape.kv_heads)
        quantized_q, q_descale = quantize_per_head(self.q.unflatten(2, (shape.kv_heads, -1)), 2)
        self.q8 = quantized_q.flatten(2, 3)
        self.k8, k_descale = quantize_per_head(self.k, 2)
        self.v8, v_descale = quantize_per_head(self.v, 2)
        self.descales = {name: d[None].expand(shape.batch, -1).contiguous()
                         for name, d in (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale))}
        self.blocks = check_blocks(shape.seqlen, generator)
        self.rows = torch.cat([torch.arange(a, b) for a, b in self.blocks]).to(env.device)
        self._references: dict[bool, torch.Tensor] = {}

    def reference(self, env: Env, fp8: bool) -> torch.Tensor:
        if fp8 not in self._references:
            s, left = self.shape.seqlen, self.shape.left
            q, k, v = (self.q8, self.k8, self.v8) if fp8 else (self.q, self.k, self.v)
            descales = self.descales if fp8 else {}
            parts = []
            for a, b in self.blocks:
                c = first_visible_key(a, s, s, left)
                out, _ = attention_ref(q[:, a:b], k[:, c:b], v[:, c:b], causal=True, window_size=(left, 0),
                                       compute_dtype=env.reference_dtype, **descales)
                parts.append(out)
            self._references[fp8] = torch.cat(parts, dim=1)
        return self._references[fp8]

    def compare(self, env: Env, fp8: bool, tolerance: float | None = None):
        def check(out):
            return (relative_error(out[:, self.rows].float(), self.reference(env, fp8).float()),
                    tolerance or tolerance_for(torch.bfloat16))
        return check


def _fa3_fp8(case: Fp8PrefillCase):
    """FA3's fp8 path on dense e4m3 q, k, v with ``[B, Hk]`` descales (the vLLM build's varlen entry)."""
    forward = peers._fa3_forward()
    s = case.shape
    batch, seqlen, heads, head_dim = case.q8.shape
    device = case.q8.device
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, device=device, dtype=torch.int32)
    q3 = case.q8.reshape(batch * seqlen, heads, head_dim)
    k3 = case.k8.reshape(batch * seqlen, s.kv_heads, head_dim)
    v3 = case.v8.reshape(batch * seqlen, s.kv_heads, head_dim)
    d = case.descales

    def run():
        out = forward(q3, k3, v3, None, None, None, None, cu, cu, None, None, None, seqlen, seqlen, None, None,
                      None, None, None, None, d["q_descale"], d["k_descale"], d["v_descale"], head_dim ** -0.5, True,
                      s.left, 0, 0.0, True, None, 1, None, 0, None, 1, 0, None)[0]
        return out.view(batch, seqlen, heads, head_dim)
    return run


def providers(case: Fp8PrefillCase):
    """(name, builder, fp8 inputs, tolerance) tuples."""
    left = case.shape.left
    window = dict(causal=True, window_size=(left, 0))
    return [
        ("swattn bf16", lambda: lambda: swattn.flash_attn_func(case.q, case.k, case.v, **window), False, None),
        ("swattn", lambda: lambda: swattn.flash_attn_func(case.q8, case.k8, case.v8, **case.descales, **window),
         True, None),
        ("FA3 bf16", lambda: peers.fa3(case.q, case.k, case.v, left), False, None),
        ("FA3 fp8", lambda: _fa3_fp8(case), True, FA3_FP8_TOLERANCE),
    ]


def run(env: Env, seqlens: list[int] | None = None, lefts: list[int] | None = None) -> Section:
    rows, windows = [], {}
    for shape in shapes(env, seqlens, lefts):
        key = f"{shape.label} W{shape.window}"
        windows[key] = shape.window
        case = Fp8PrefillCase(shape, env)
        for name, build, fp8, tolerance in providers(case):
            if not env.wants(name):
                continue
            flops, _ = work(shape, 2)
            # q, k, v read at their element size (1 byte in e4m3), o written in bf16.
            tokens = shape.batch * shape.seqlen * shape.head_dim
            nbytes = float(tokens * ((1 if fp8 else 2) * (shape.heads + 2 * shape.kv_heads) + 2 * shape.heads))
            note = "P rounded to e4m3 by FA3: checked at 5e-2" if tolerance else "e4m3 q, k, v" if fp8 else ""
            rows.append(measure(env, key, name, build, case.compare(env, fp8, tolerance),
                                lambda fn: time_single_graph(fn, env), note=note, flops=flops, nbytes=nbytes))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = _drop_unavailable(rows)
    notes = [
        "timed by replaying one call captured in a CUDA graph (L2 cleared before each replay)" if env.graphs else "",
        "TFLOP/s counts only visible (query, key) pairs; floor us = (q + k + v bytes at their element size, o in "
        "bf16) / measured copy bandwidth; time/swattn = this row's time over swattn's fp8 row (> 1: swattn fp8 "
        "is faster).",
        "fp8 rows: q, k, v in e4m3 with one descale per KV head; output bf16.",
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    title = "All-fp8 (e4m3) prefill beside bf16, batch 1, causal (bottom-right), no sinks"
    return Section(title, windowed_table(rows, env, windows, "us median (p20/p80)"), notes, rows)
