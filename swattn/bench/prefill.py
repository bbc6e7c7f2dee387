"""Prefill: one prompt (batch 1) attending causally within a window, swattn against its peers.

Shapes: seqlen 4096 and 16384; (D=64, H=64, Hk=8) and (D=128, H=32, Hk=8); window (127, 0), (4095, 0) and full
causal; no sinks (FlexAttention and SDPA have none). Work counted: window-only FLOPs = 4 * D * H * visible (query,
key) pairs, counted exactly through ``swattn.window``; bytes floor = q, k, v read once and o written once.

The check compares each provider with the float32 reference on a subset of query rows (the first 64, the last 256
and 8 random ones): a block of rows ``[a, b)`` is q rows ``a..b-1`` against keys ``c..b-1`` with ``c`` the block's
first visible key, which keeps bottom-right alignment exact (row ``a + r`` sees keys ``[a + r - left, a + r]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import swattn
from swattn.bench import peers
from swattn.bench.common import (
    Env,
    Runner,
    Section,
    Skip,
    compare_outputs,
    measure_windowed_shapes,
    speedup_summary,
    time_single_graph,
    windowed_table,
)
from swattn.kernels import gluon_fwd
from swattn.reference import attention_ref
from swattn.window import first_visible_key, last_visible_key

HEADS = [(64, 64, 8), (128, 32, 8)]  # (head_dim, heads, kv_heads)
QUICK_HEADS = [(32, 4, 2), (64, 4, 1)]


@dataclass(frozen=True)
class PrefillShape:
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
           lefts: list[int] | None = None) -> list[PrefillShape]:
    """The scenario's shapes; ``head_dims`` / ``lefts`` keep only those (a run split across time limits)."""
    if env.quick:
        seqlens, heads, all_lefts = seqlens or [48], QUICK_HEADS, [7, 31, -1]
    else:
        seqlens, heads, all_lefts = seqlens or [4096, 16384], HEADS, [127, 4095, -1]
    return [PrefillShape(s, d, h, hk, left) for s in seqlens for d, h, hk in heads for left in all_lefts
            if (head_dims is None or d in head_dims) and (lefts is None or left in lefts)]


def visible_pairs(seqlen_q: int, seqlen_k: int, left: int, right: int) -> int:
    """Exact count of visible (query, key) pairs of one sequence."""
    return sum(max(0, last_visible_key(i, seqlen_q, seqlen_k, right) - first_visible_key(i, seqlen_q, seqlen_k, left)
                   + 1) for i in range(seqlen_q))


def work(shape: PrefillShape, itemsize: int) -> tuple[float, float]:
    """(window-only FLOPs, bytes floor) of one call."""
    b, s, d = shape.batch, shape.seqlen, shape.head_dim
    flops = 4.0 * d * shape.heads * b * visible_pairs(s, s, shape.left, 0)
    nbytes = float(itemsize * b * s * d * (2 * shape.heads + 2 * shape.kv_heads))
    return flops, nbytes


def check_blocks(seqlen: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Query-row blocks ``[a, b)`` the check compares: all rows up to 1024, else first 64, last 256 (as 64-row
    blocks, to bound the reference's memory) and 8 random single rows."""
    if seqlen <= 1024:
        return [(0, seqlen)]
    blocks = [(0, 64)] + [(a, a + 64) for a in range(seqlen - 256, seqlen, 64)]
    randoms = torch.randint(64, seqlen - 256, (8,), generator=generator).tolist()
    return blocks + [(i, i + 1) for i in sorted(set(randoms))]


@dataclass
class PrefillCase:
    shape: PrefillShape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    blocks: list[tuple[int, int]]
    rows: torch.Tensor
    _reference: torch.Tensor | None = field(default=None, repr=False)

    def reference(self, env: Env) -> torch.Tensor:
        """float32 (GPU) / float64 (CPU) reference at the check rows, ``[B, rows, H, D]``."""
        if self._reference is None:
            s, left = self.shape.seqlen, self.shape.left
            parts = []
            for a, b in self.blocks:
                c = first_visible_key(a, s, s, left)
                out, _ = attention_ref(self.q[:, a:b].to(env.reference_dtype), self.k[:, c:b], self.v[:, c:b],
                                       causal=True, window_size=(left, 0), compute_dtype=env.reference_dtype)
                parts.append(out)
            self._reference = torch.cat(parts, dim=1)
        return self._reference

    def compare(self, env: Env):
        return lambda out: compare_outputs(out[:, self.rows], self.reference(env), env.dtype)


def setup_prefill(shape: PrefillShape, env: Env, seed: int = 0) -> PrefillCase:
    """Random inputs (never zeros) and the rows to check; shared by the check and the timing."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    make = lambda h: torch.randn(shape.batch, shape.seqlen, h, shape.head_dim, device=env.device, dtype=env.dtype)
    q, k, v = make(shape.heads), make(shape.kv_heads), make(shape.kv_heads)
    blocks = check_blocks(shape.seqlen, generator)
    rows = torch.cat([torch.arange(a, b) for a, b in blocks]).to(env.device)
    return PrefillCase(shape, q, k, v, blocks, rows)


def providers(case: PrefillCase):
    """(name, builder) pairs; a builder returns a Runner or raises Skip."""
    q, k, v, left = case.q, case.k, case.v, case.shape.left

    def with_note(result):
        run, note = result
        return Runner(run, note=note)

    def triton_path():
        # The portable Triton kernels, where the Gluon sm_90 kernel would serve the call (A/B in one run).
        if gluon_fwd.GLUON_MODE == "0" or not q.is_cuda:
            raise Skip("the swattn row already runs the Triton kernels")

        def run():
            saved, gluon_fwd.GLUON_MODE = gluon_fwd.GLUON_MODE, "0"
            try:
                return swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
            finally:
                gluon_fwd.GLUON_MODE = saved
        return run

    sink_rows = []
    if case.shape.heads == 64 and case.shape.head_dim == 64:  # gpt-oss's layer: with its sinks, swattn and FA3
        sinks = torch.randn(case.shape.heads, device=q.device)
        note = "timed with sinks; the check ran the same provider without them (sinks: tests/gpu)"

        def fa3_sinks():
            plain, with_sinks = peers.fa3(q, k, v, left), peers.fa3(q, k, v, left, sinks=sinks)
            return Runner(plain, timed=with_sinks, note=note)
        sink_rows = [
            ("swattn, sinks", lambda: Runner(
                lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0)),
                timed=lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0), sinks=sinks),
                note=note)),
            ("FA3, sinks", fa3_sinks),
        ]
    return [
        ("swattn", lambda: lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))),
        ("swattn (Triton)", triton_path),
        *sink_rows,
        ("FA3", lambda: peers.fa3(q, k, v, left)),
        ("FA4", lambda: peers.fa4(q, k, v, left)),
        ("Flex", lambda: with_note(peers.flex_prefill(q, k, v, left))),
        ("SDPA", lambda: with_note(peers.sdpa_prefill(q, k, v, left))),
    ]


def run(env: Env, seqlens: list[int] | None = None, head_dims: list[int] | None = None,
        lefts: list[int] | None = None) -> Section:
    rows, windows, unavailable = measure_windowed_shapes(env, shapes(env, seqlens, head_dims, lefts), setup_prefill,
                                                         providers, work, timer=time_single_graph)
    notes = [
        "timed by replaying one call captured in a CUDA graph (L2 cleared before each replay): GPU time without "
        "the host's dispatch" if env.graphs else "",
        "TFLOP/s counts only visible (query, key) pairs: 4 * D * H * pairs / time; floor us = (q + k + v + o bytes)"
        " / measured copy bandwidth; time/swattn > 1 means swattn is faster.",
        speedup_summary(rows),
        "peers skipped (--quick)" if env.quick else "",
        *unavailable,
    ]
    return Section(f"Prefill, batch 1, {env.dtype}, causal (bottom-right), no sinks",
                   windowed_table(rows, env, windows, "us median (p20/p80)"), notes, rows)
