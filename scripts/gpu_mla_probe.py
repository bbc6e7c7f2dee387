"""Block shapes of the DeepSeek rows beside the shipped ones, on a GPU: MLA's decode with qv (D 64, Dv 512, 128
query heads on one KV head, 64-token pages, 8K context) and the D 192 / Dv 128 causal prefill (H 128, 8K tokens), each
variant under ``configs.forced_config`` (and a split count), checked against the reference and timed as
``python -m swattn.bench decode-mla`` / ``prefill-dv`` time theirs (CUDA-graph replay over input sets; one captured
prefill call replayed). Prints a line per variant as it ends (a timeout keeps the finished ones) and writes a table.

    python scripts/gpu_mla_probe.py --out probe.md            # on the H200
    TRITON_INTERPRET=1 python scripts/gpu_mla_probe.py --quick  # tiny shapes on a CPU (a dry run of the code)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's swattn

import swattn  # noqa: E402
from swattn.bench import mla  # noqa: E402
from swattn.bench.common import (  # noqa: E402
    Runner,
    make_env,
    markdown_table,
    measure,
    rotating,
    time_graph,
    time_single_graph,
)
from swattn.kernels import configs  # noqa: E402
from swattn.kernels.configs import FwdConfig, forced_config  # noqa: E402

# (label, config or None for the shipped choice, num_splits: 0 automatic), most telling first.
DECODE_VARIANTS = {
    16: [("shipped", None, 0),
         ("(64,32,8,2) one loop, 8 splits", configs.QV_PACKED_TILE, 8),
         ("(64,16,8,2) one loop, 4 splits", FwdConfig(64, 16, 8, 2, single_loop=True), 4),
         ("(64,32,8,3) three loops, 4 splits", FwdConfig(64, 32, 8, 3), 4),
         ("session 13's (32,16,8,2), 12 splits", FwdConfig(32, 16, 8, 2), 12)],
    64: [("shipped", None, 0),
         ("(64,32,8,2) one loop, 2 splits", configs.QV_PACKED_TILE, 2)],
}
PREFILL_VARIANTS = [("shipped", None),
                    ("(128,64,8,3)", FwdConfig(128, 64, 8, 3)),
                    ("session 13's (64,64,8,2)", FwdConfig(64, 64, 8, 2))]


def forced(config: FwdConfig | None, fn):
    """``fn`` called under ``config`` (None: the shipped choice)."""
    if config is None:
        return fn

    def call():
        with forced_config(config):
            return fn()
    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a CPU dry run under TRITON_INTERPRET=1)")
    parser.add_argument("--out", help="write the table here too")
    parser.add_argument("--skip-prefill", action="store_true")
    args = parser.parse_args()
    env = make_env(args.quick, peers=False)
    rows, started = [], time.perf_counter()
    itemsize = env.dtype.itemsize
    for batch, variants in DECODE_VARIANTS.items():
        shape = mla.decode_shapes(env, batches=[2 if env.quick else batch])[0]
        case = mla.setup_decode_mla(shape, env)
        warmup_calls = len(case.q) + 2
        for label, config, splits in variants:
            def build(config=config, splits=splits, case=case):
                fns = [forced(config, lambda r=r: swattn.flash_attn_with_kvcache(
                    case.q[r], case.k_pool, case.v_pool, qv=case.qv[r], cache_seqlens=case.cache_seqlens,
                    page_table=case.tables[r], causal=True, softmax_scale=case.scale, num_splits=splits))
                    for r in range(len(case.q))]
                return Runner(fns[0], rotating(fns))
            row = measure(env, shape.label, label, build, case.compare(env),
                          lambda fn, n=warmup_calls: time_graph(fn, env, warmup_calls=n),
                          nbytes=shape.kv_bytes(itemsize))
            rows.append(row)
            print(f"decode {shape.label} {label}: {row.timing or row.note} ({time.perf_counter() - started:.1f} s)",
                  flush=True)
        del case
    if not args.skip_prefill:
        shape = mla.prefill_shapes(env, [48 if env.quick else 8192])[0]
        case = mla.setup_prefill_dv(shape, env)
        flops = mla.prefill_work(shape, itemsize)[0]
        for label, config in PREFILL_VARIANTS:
            def build(config=config, case=case):
                return forced(config, lambda: swattn.flash_attn_func(case.q, case.k, case.v, causal=True))
            row = measure(env, shape.label, label, build, case.compare(env), lambda fn: time_single_graph(fn, env),
                          flops=flops)
            rows.append(row)
            tflops = flops / (row.timing.median_us * 1e6) if row.timing else float("nan")
            print(f"prefill {shape.label} {label}: {row.timing or row.note} {tflops:.0f} TFLOP/s "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    table = markdown_table(["shape", "variant", "us (p20/p80)", "status", "check (rel err)", "note"],
                           [[r.shape, r.provider, str(r.timing) if r.timing else "-", r.status,
                             f"{r.error:.1e}" if r.error is not None else "", r.note] for r in rows])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
