"""``python -m swattn.bench [{prefill,decode,verify,append,decode-fp8,prefill-fp8,prefill-dv,decode-mla,model-step,
backward,host,all}] [--quick] [--out FILE.md] [--plot FILE.png]``.

Without a scenario: ``decode`` (the gpt-oss decode layer). ``decode-fp8`` / ``prefill-fp8``: an e4m3 KV cache /
all-e4m3 prefill beside bf16 (not part of ``all``). ``prefill-dv`` / ``decode-mla``: DeepSeek's prefill with a value
head dim of its own (D=192, Dv=128) and MLA decode with ``qv`` (D=64, Dv=512), beside FA3 (not part of ``all``).
``--plot`` draws the measured times (matplotlib, the ``plot`` extra). ``torchrun --nproc-per-node=N -m swattn.bench
context-parallel`` (several GPUs; not part of ``all``).

On the GPU machine, with the peers of ``.peer-kernels/README.txt`` unpacked into /tmp/site::

    PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages python -m swattn.bench all --out bench.md

CPU only (CI, README): ``TRITON_INTERPRET=1 python -m swattn.bench all --quick``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time

from swattn.bench.common import Env, Section, make_env

SCENARIOS = ("prefill", "decode", "verify", "append", "decode-fp8", "prefill-fp8", "prefill-dv", "decode-mla",
             "model-step", "backward", "host", "context-parallel", "all")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m swattn.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="decode", choices=SCENARIOS,
                        help="what to time (default: decode)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, few reps, no CUDA graphs, no peers: seconds on a CPU-only machine")
    parser.add_argument("--out", metavar="FILE.md", help="also write the tables (markdown) to this file")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the measured times as a bar chart (needs matplotlib: the plot extra)")
    parser.add_argument("--providers", type=lambda s: [p for p in s.split(",") if p],
                        help="comma-separated subset, e.g. swattn,fa3,fa4,flex,sdpa (default: all available)")
    parser.add_argument("--no-peers", action="store_true", help="time swattn only")
    parser.add_argument("--no-graphs", action="store_true", help="time decode with events instead of graph replay")
    parser.add_argument("--seqlens", type=_ints, help="prefill sequence lengths (default 4096,16384)")
    parser.add_argument("--head-dims", type=_ints, help="prefill/backward: only these head dims (default 64,128)")
    parser.add_argument("--lefts", type=_ints,
                        help="prefill/backward: only these window lefts, -1 = full causal (default 127,4095,-1)")
    parser.add_argument("--contexts", type=_ints, help="decode contexts (default 1024,4096,16384,65536,131072)")
    parser.add_argument("--page-sizes", type=_ints, help="decode page sizes (default 16,1; verify: 16)")
    parser.add_argument("--verify-tokens", type=_ints,
                        help="verify: new tokens per sequence, 1 = decode (default 1,2,4,8); contexts default "
                             "1024,16384,131072. model-step: the steps to time (default 1)")
    parser.add_argument("--batches", type=_ints,
                        help="append: batch sizes (with --contexts, --page-sizes, --verify-tokens: their product "
                             "for both layers, instead of the default subset); decode-mla: batch sizes (default 16,64)")
    parser.add_argument("--context", type=int, help="model-step context (default 8192)")
    parser.add_argument("--layers", type=int, help="model-step layers (default 36)")
    parser.add_argument("--rows", type=lambda s: [r for r in s.split(",") if r],
                        help="host: only these row groups, of decode,op,prefill,backward (default: all)")
    return parser.parse_args(argv)


def run_backward(args: argparse.Namespace) -> tuple[str | None, int, Section | None]:
    """Dispatch to ``swattn.bench.backward.main(args)``. It may return markdown (a str or a ``Section``: the
    dispatcher prints it and writes it to --out with the rest), an exit code, or None (it printed its own output
    and wrote ``args.out`` itself if it wanted to).
    Under ``all`` it gets ``args.out = None``: the dispatcher writes the one file."""
    if importlib.util.find_spec("swattn.bench.backward") is None:
        message = ("backward: swattn/bench/backward.py is not there yet (the backward benchmark is written "
                   "separately); skipped")
        return f"## Backward\n\n{message}\n", 0 if args.scenario == "all" else 2, None
    result = importlib.import_module("swattn.bench.backward").main(args)
    if isinstance(result, str):
        return result, 0, None
    if isinstance(result, Section):
        return result.markdown(), 0, result
    return None, int(result or 0), None


def run_scenario(name: str, env: Env, args: argparse.Namespace) -> Section:
    if name == "prefill":
        from swattn.bench import prefill
        return prefill.run(env, seqlens=args.seqlens, head_dims=args.head_dims, lefts=args.lefts)
    if name == "decode":
        from swattn.bench import decode
        return decode.run(env, contexts=args.contexts, page_sizes=args.page_sizes)
    if name == "verify":
        from swattn.bench import decode
        return decode.run_verify(env, contexts=args.contexts, page_sizes=args.page_sizes, tokens=args.verify_tokens)
    if name == "append":
        from swattn.bench import append
        return append.run(env, contexts=args.contexts, page_sizes=args.page_sizes, batches=args.batches,
                          tokens=args.verify_tokens)
    if name == "decode-fp8":
        from swattn.bench import decode_fp8
        return decode_fp8.run(env, contexts=args.contexts)
    if name == "prefill-fp8":
        from swattn.bench import prefill_fp8
        return prefill_fp8.run(env, seqlens=args.seqlens, lefts=args.lefts)
    if name == "prefill-dv":
        from swattn.bench import mla
        return mla.run_prefill(env, seqlens=args.seqlens, lefts=args.lefts)
    if name == "decode-mla":
        from swattn.bench import mla
        return mla.run_decode(env, contexts=args.contexts, page_sizes=args.page_sizes, batches=args.batches)
    if name == "host":
        from swattn.bench import host
        return host.run(env, rows=args.rows)
    from swattn.bench import model_step
    return model_step.run(env, context=args.context, layers=args.layers, tokens=args.verify_tokens)


def _write(path: str | None, env: Env | None, parts: list[str]) -> None:
    """(Re)write --out after every scenario, so a run cut short keeps what it measured."""
    if path and parts:
        header = "# swattn benchmark\n\n" + ("\n".join(env.header) + "\n\n" if env else "")
        with open(path, "w") as f:
            f.write(header + "\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario == "context-parallel":
        from swattn.bench import context_parallel
        return context_parallel.main(args)
    names = ["prefill", "decode", "model-step", "backward", "host"] if args.scenario == "all" else [args.scenario]
    env = None
    parts: list[str] = []
    sections: list[Section] = []
    status = 0
    if args.plot:
        from swattn.bench.plot import _pyplot
        _pyplot()  # fail before measuring when matplotlib is missing
    for name in names:
        start = time.perf_counter()
        if name == "backward":
            alone = args.scenario == "backward"
            text, code, section = run_backward(args if alone else argparse.Namespace(**{**vars(args), "out": None}))
            status = status or code
            if section is not None:
                sections.append(section)
            if text:
                print(text, flush=True)
                parts.append(text)
                _write(args.out, env, parts)
            continue
        if env is None:
            env = make_env(args.quick, peers=not args.no_peers, graphs=not args.no_graphs, providers=args.providers)
            print("# swattn benchmark\n\n" + "\n".join(env.header) + "\n", flush=True)
        section = run_scenario(name, env, args)
        print(section.markdown(), flush=True)
        print(f"({name}: {time.perf_counter() - start:.1f} s)\n", file=sys.stderr, flush=True)
        parts.append(section.markdown())
        sections.append(section)
        _write(args.out, env, parts)
        if any(r.provider == "swattn" and r.status in ("fail", "error") for r in section.rows):
            status = 1
    if args.out and parts:
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot and sections:
        from swattn.bench.plot import plot_sections
        plot_sections(sections, args.plot, env.header if env else [])
        print(f"wrote {args.plot}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
