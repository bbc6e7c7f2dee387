"""``python -m swattn.selfcheck``: random configurations of every entry point against the reference, on this GPU.

Each case is drawn from ``random.Random(f"{seed}:{index}")``, so ``--seed S --case I`` re-runs exactly case I of a
run; every mismatch prints that one-line reproducer. Entry points: dense and varlen prefill, KV cache (contiguous
with cache_batch_idx, paged with page sizes 1..256, appending new k/v, varlen extend, split-KV) and the backward;
across windows, causal, softcap, sinks, GQA ratios 1..16, head_dim 64/128/256, a value head_dim of its own (up to
512 with head_dim 64), FlashAttention 3's ``qv`` (forward), ``out=`` (forward) and fp16/bf16. Without a GPU it runs
tiny shapes through the Triton interpreter (``--quick``), as CI does.

Exit status: 0 when every case matched, 1 on any mismatch (an exception on a valid case counts as one).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

ENTRY_POINTS = ["dense", "varlen", "kvcache", "kvcache-paged", "append", "extend", "split-kv", "backward"]


@dataclass
class Case:
    entry_point: str
    dtype: str
    batch: int
    lengths_q: list[int]
    lengths_k: list[int]
    heads: int
    kv_heads: int
    head_dim: int
    window: tuple[int, int]
    softcap: float
    sinks: bool
    page_size: int = 0  # 0: contiguous cache
    num_splits: int = 1
    head_dim_v: int = 0  # 0: head_dim (v's own head_dim otherwise)
    qv: bool = False  # FlashAttention 3's qv (forward only)
    out: bool = False  # the forward writes a given out= tensor

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items() if k not in ("lengths_q", "lengths_k")) + (
            f" Sq={self.lengths_q[:4]}{'...' if len(self.lengths_q) > 4 else ''}"
            f" Sk={self.lengths_k[:4]}{'...' if len(self.lengths_k) > 4 else ''}")


def draw_case(seed: int, index: int, quick: bool) -> Case:
    """Case ``index`` of a run with ``seed``: the entry point cycles, everything else is drawn."""
    rng = random.Random(f"{seed}:{index}")
    entry_point = ENTRY_POINTS[index % len(ENTRY_POINTS)]
    if quick:
        head_dim, dtype = rng.choice([16, 32]), rng.choice(["float16", "float32"])
        max_len, group, kv_heads, batch = 40, rng.choice([1, 2, 4]), rng.choice([1, 2]), rng.randint(1, 3)
    else:
        head_dim, dtype = rng.choice([64, 64, 128, 128, 256, 80]), rng.choice(["bfloat16", "float16"])
        max_len, group, kv_heads = 3000, rng.choice([1, 2, 4, 8, 16]), rng.choice([1, 2, 8])
        batch = rng.randint(1, 16)
        if entry_point == "backward":
            max_len, batch = 1500, rng.randint(1, 3)
    window = rng.choice([(-1, -1), (-1, 0), (rng.randint(0, 300 if not quick else 12), 0),
                         (rng.randint(0, 64), rng.randint(0, 64)), (127, 0), (max_len + 5, 0)])
    decode_like = entry_point in ("kvcache", "kvcache-paged", "append", "split-kv")
    lengths_k = [rng.choice([0, 1, rng.randint(1, max_len), max_len]) for _ in range(batch)]
    if decode_like:
        lengths_q = [rng.choice([1, 1, 2, 4]) if entry_point != "split-kv" else 1] * batch
        if not quick:
            lengths_k = [min(k * 8, 32768) for k in lengths_k]
    elif entry_point == "extend":
        lengths_q = [rng.randint(0, 16) for _ in range(batch)]
    elif entry_point in ("dense", "backward"):
        lengths_q = [rng.randint(1, max_len)] * batch
        lengths_k = [rng.choice([lengths_q[0], rng.randint(1, max_len)])] * batch
    else:
        lengths_q = [rng.choice([0, 1, rng.randint(1, max_len)]) for _ in range(batch)]
        lengths_k = [rng.choice([q, rng.randint(0, max_len)]) for q in lengths_q]
    if entry_point == "split-kv":
        window = rng.choice([(-1, 0), (-1, -1)])
    page_size = rng.choice([1, 2, 3, 7, 16, 32, 64, 128, 256]) if entry_point in (
        "kvcache-paged", "append", "split-kv", "extend") and rng.random() < 0.8 else 0
    num_splits = rng.choice([0, 2, 3, 8]) if entry_point == "split-kv" else rng.choice([0, 1])
    if entry_point in ("dense", "backward"):
        # The reference materialises [B, H, Sq, Sk] scores (twice with autograd): keep them near 1 GiB in fp32.
        batch = max(1, min(batch, 2**28 // (group * kv_heads * lengths_q[0] * lengths_k[0])))
        lengths_q, lengths_k = lengths_q[:batch], lengths_k[:batch]
    softcap, sinks = rng.choice([0.0, 0.0, 30.0]), rng.random() < 0.5
    # Drawn last, so that the draws above stay those of earlier versions for a given (seed, index).
    forward_only = entry_point != "backward"
    head_dim_v = 0
    if rng.random() < 0.25:  # a value head_dim of its own: at most 256 (512 with head_dim <= 64, forward only)
        choices = [8, 24, 48] if quick else [64, 128, 256] + ([512] if head_dim <= 64 and forward_only else [])
        head_dim_v = rng.choice([dv for dv in choices if dv != head_dim] or [0])
    qv = forward_only and rng.random() < 0.15
    out = forward_only and rng.random() < 0.3
    return Case(entry_point, dtype, batch, lengths_q, lengths_k, group * kv_heads, kv_heads, head_dim, window,
                softcap, sinks, page_size, num_splits, head_dim_v, qv, out)


def _sees_keys(ref) -> bool:
    """Whether some row of the case saw a key (the reference's output is not all 0): a case whose rows all see
    nothing (no keys, windows past them) checks only the empty-row convention, not the attention."""
    return bool(ref.ne(0).any())


def run_case(case: Case, device: str, seed: int, index: int) -> tuple[float, float, bool]:
    """(worst relative error of the outputs / gradients, worst LSE abs error, whether some row saw a key); raises on
    a malformed result."""
    import torch

    import swattn
    from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref
    from swattn.testing import relative_error

    torch.manual_seed(hash((seed, index)) % 2**31)
    dtype = getattr(torch, case.dtype)
    ref_dtype = torch.float64 if device == "cpu" else torch.float32
    h, hk, d = case.heads, case.kv_heads, case.head_dim
    dv = case.head_dim_v or d
    scale = 2.0 if case.softcap else 1.0

    def randn(*shape):
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    sinks = torch.randn(h, device=device) if case.sinks else None
    common = dict(window_size=case.window, softcap=case.softcap, sinks=sinks)
    ref_common = dict(common, compute_dtype=ref_dtype)

    def forward_extras(q):
        """qv (drawn) for the call and the reference, and out= (drawn) for the call: ``(call kwargs, ref kwargs)``."""
        extras = {}
        if case.qv:
            extras["qv"] = randn(*q.shape[:-1], dv)
        call = dict(extras)
        if case.out:
            call["out"] = torch.full((*q.shape[:-1], dv), float("nan"), device=device, dtype=dtype)
        return call, extras

    def written(result, call):
        """The call's output; with out=, it must be that tensor."""
        out = result[0]
        if "out" in call and out is not call["out"]:
            raise AssertionError("out=: the result is not the given tensor")
        return out

    def lse_error(lse, ref_lse):
        if not torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)) or torch.isnan(lse).any():
            return float("inf")
        finite = torch.isfinite(ref_lse)
        return (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0

    if case.entry_point in ("dense", "backward"):
        sq, sk = case.lengths_q[0], case.lengths_k[0]
        q, k, v = randn(case.batch, sq, h, d), randn(case.batch, sk, hk, d), randn(case.batch, sk, hk, dv)
        if case.entry_point == "dense":
            call, extras = forward_extras(q)
            result = swattn.flash_attn_func(q, k, v, return_softmax_lse=True, **common, **call)
            out, lse = written(result, call), result[1]
            ref, ref_lse = attention_ref(q, k, v, **ref_common, **extras)
            return relative_error(out, ref), lse_error(lse, ref_lse), _sees_keys(ref)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)] + ([sinks.clone().requires_grad_()] if
                                                                       case.sinks else [])
        out = swattn.flash_attn_func(*leaves[:3], window_size=case.window, softcap=case.softcap,
                                     sinks=leaves[3] if case.sinks else None)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)
        ref_leaves = [t.detach().to(ref_dtype).requires_grad_() for t in leaves]
        ref_out, ref_lse = attention_ref(*ref_leaves[:3], window_size=case.window, softcap=case.softcap,
                                         sinks=ref_leaves[3] if case.sinks else None, compute_dtype=ref_dtype)
        # The kernels' softmax backward takes each row's delta = rowsum(dO * O) from the output as stored (q's
        # dtype), as FlashAttention's do. Where a row's probabilities are nearly one-hot, that rounding is most of
        # what is left of dS = P (dP - delta) (float16: a few percent of the exact gradients, seed 1505 case 759),
        # so the reference's gradients take the same delta: d(c * LSE)/dS = c * P, and subtracting each row's delta
        # difference times its LSE moves dS to P (dP - delta_stored). The output itself is checked exactly.
        grad_out = dout.to(ref_dtype)
        stored = (grad_out * out.detach().to(ref_dtype)).sum(-1) - (grad_out * ref_out.detach()).sum(-1)
        finite = torch.isfinite(ref_lse)
        correction = torch.where(finite, stored.transpose(1, 2), 0.0)
        objective = (ref_out * grad_out).sum() - (correction * torch.where(finite, ref_lse.to(ref_dtype), 0.0)).sum()
        ref_grads = torch.autograd.grad(objective, ref_leaves, allow_unused=True)
        errors = [relative_error(g, r if r is not None else torch.zeros_like(g)) for g, r in zip(grads, ref_grads)]
        # gradients: 2x the tolerance
        return max([relative_error(out, ref_out)] + [e / 2 for e in errors]), 0.0, _sees_keys(ref_out)

    if case.entry_point == "varlen":
        cu_q = torch.tensor([0] + case.lengths_q, device=device).cumsum(0).to(torch.int32)
        cu_k = torch.tensor([0] + case.lengths_k, device=device).cumsum(0).to(torch.int32)
        q, k, v = randn(int(cu_q[-1]), h, d), randn(int(cu_k[-1]), hk, d), randn(int(cu_k[-1]), hk, dv)
        call, extras = forward_extras(q)
        result = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(case.lengths_q), max(case.lengths_k),
                                               return_softmax_lse=True, **common, **call)
        out, lse = written(result, call), result[1]
        ref, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, **ref_common, **extras)
        return relative_error(out, ref), lse_error(lse, ref_lse), _sees_keys(ref)

    # KV cache: lengths_k are the tokens already cached; append/extend add lengths_q new ones.
    appending = case.entry_point in ("append", "extend")
    varlen_q = case.entry_point == "extend"
    new = case.lengths_q if appending else [0] * case.batch
    capacity = max(k + n for k, n in zip(case.lengths_k, new)) + 3
    if case.page_size:
        pages = -(-capacity // case.page_size)
        k_cache, v_cache = (randn(case.batch * pages + 2, case.page_size, hk, dim) for dim in (d, dv))
        page_table = torch.randperm(case.batch * pages + 2, device=device, dtype=torch.int32)[
            :case.batch * pages].view(case.batch, pages)
        layout = dict(page_table=page_table)
    else:
        rows = case.batch + 2
        k_cache, v_cache = (randn(rows, capacity, hk, dim) for dim in (d, dv))
        layout = dict(cache_batch_idx=torch.randperm(rows, device=device, dtype=torch.int32)[:case.batch])
    seqlens = torch.tensor(case.lengths_k, device=device, dtype=torch.int32)
    if varlen_q:
        cu_q = torch.tensor([0] + case.lengths_q, device=device).cumsum(0).to(torch.int32)
        q = randn(int(cu_q[-1]), h, d)
        k_new, v_new = randn(int(cu_q[-1]), hk, d), randn(int(cu_q[-1]), hk, dv)
        query = dict(cu_seqlens_q=cu_q, max_seqlen_q=max(case.lengths_q))
    else:
        sq = case.lengths_q[0]
        q = randn(case.batch, sq, h, d)
        k_new, v_new = randn(case.batch, sq, hk, d), randn(case.batch, sq, hk, dv)
        query = {}
    extra = dict(k=k_new, v=v_new) if appending else {}
    call, extras = forward_extras(q)
    result = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, num_splits=case.num_splits,
                                            return_softmax_lse=True, **extra, **layout, **query, **common, **call)
    out, lse = written(result, call), result[1]
    total = seqlens + torch.tensor(new, device=device, dtype=torch.int32)
    ref, ref_lse = attention_kvcache_ref(q, k_cache, v_cache, total, **layout,
                                         cu_seqlens_q=query.get("cu_seqlens_q"), **ref_common, **extras)
    error = relative_error(out, ref)
    if appending:  # the cache must hold the new tokens where the reference read them
        from swattn.reference import gather_kv_cache
        starts = [0] + torch.tensor(new).cumsum(0).tolist()
        for b, (k_b, _) in enumerate(gather_kv_cache(k_cache, v_cache, total, **layout)):
            written = k_b[case.lengths_k[b]:]
            expected = k_new[starts[b]:starts[b + 1]] if varlen_q else k_new[b]
            if not torch.equal(written, expected):
                return float("inf"), 0.0, True
    return error, lse_error(lse, ref_lse), _sees_keys(ref)


def _progress(done: int, mismatches: int, started: float, total: str) -> None:
    sys.stderr.write(f"\r[{done}/{total}] mismatches {mismatches}  {time.time() - started:6.1f} s")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swattn.selfcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="run cases until this much time has passed")
    parser.add_argument("--configs", type=int, default=None, help="run this many cases (default 64)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--case", type=int, default=None, help="run only this case index of --seed")
    parser.add_argument("--entry-points", default=",".join(ENTRY_POINTS))
    parser.add_argument("--quick", action="store_true", help="tiny shapes (the interpreter; default without a GPU)")
    args = parser.parse_args(argv)

    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            print("no GPU: set TRITON_INTERPRET=1 to run the kernels through the Triton interpreter", file=sys.stderr)
            return 2
        args.quick = True
    from swattn.testing import tolerance_for

    seed = args.seed if args.seed is not None else random.randrange(10**6)
    wanted = set(args.entry_points.split(","))
    unknown = wanted - set(ENTRY_POINTS)
    if unknown:
        parser.error(f"--entry-points: unknown {sorted(unknown)}; choose from {ENTRY_POINTS}")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"swattn.selfcheck seed={seed} device={device} ({name}) profile={'quick' if args.quick else 'gpu'}")
    indices = [args.case] if args.case is not None else None
    limit = args.configs if args.configs is not None else (None if args.minutes else 64)
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    # runs, runs where some row saw a key, mismatches, worst output error, worst LSE error (over the former)
    stats = {name: [0, 0, 0, 0.0, 0.0] for name in ENTRY_POINTS if name in wanted}
    started, index, done, mismatches = time.time(), -1, 0, 0
    while True:
        index += 1
        if indices is not None:
            if done:
                break
            index = indices[0]
        elif (limit is not None and done >= limit) or (deadline is not None and time.time() >= deadline):
            break
        case = draw_case(seed, index, args.quick)
        if case.entry_point not in wanted:
            continue
        tolerance = tolerance_for(getattr(torch, case.dtype))
        try:
            error, lse_err, sees_keys = run_case(case, device, seed, index)
            problem = None if error <= tolerance and lse_err <= 2e-3 else f"rel err {error:.2e}, lse err {lse_err:.2e}"
        except Exception as exc:  # noqa: BLE001  (a valid case must never raise)
            error, lse_err, sees_keys = float("inf"), float("inf"), True
            problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        entry = stats[case.entry_point]
        entry[0] += 1
        if sees_keys:
            entry[1] += 1
            entry[3], entry[4] = max(entry[3], error), max(entry[4], lse_err)
        done += 1
        if problem:
            entry[2] += 1
            mismatches += 1
            sys.stderr.write("\n")
            print(f"MISMATCH python -m swattn.selfcheck --seed {seed} --case {index}  # {case.describe()}: {problem}")
        _progress(done, mismatches, started, str(limit) if limit else f"{args.minutes} min")
    sys.stderr.write("\n")
    print("\n| entry point | cases | cases with keys seen | mismatches | worst rel err | worst LSE err |\n"
          "|---|---|---|---|---|---|")
    unchecked = []
    for name, (runs, seen, bad, worst, worst_lse) in stats.items():
        errors = f"{worst:.2e} | {worst_lse:.2e}" if seen else "not checked | not checked"
        print(f"| {name} | {runs} | {seen} | {bad} | {errors} |")
        if not seen:
            unchecked.append(name)
    print(f"\n{done} cases, {mismatches} mismatches, seed {seed}, {time.time() - started:.0f} s")
    if unchecked:
        print(f"NOT CHECKED: {', '.join(unchecked)}: no drawn case had a row that sees a key (only the empty-row "
              "convention was tested); run more cases (--configs, --minutes) or another --seed")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
