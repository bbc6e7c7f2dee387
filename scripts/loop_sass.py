"""SASS instructions per loop iteration of the forward kernel's decode launch, compiled for Hopper (sm_90) on any
machine: the launch ``attention_forward`` makes for a gpt-oss decode layer (B=16, H=64, Hk=8, D=64, pages of 16,
sinks, PackGQA; 16K context) as on an H200 (132 SMs, programmatic dependent launch, inline PTX allowed), under
module settings of ``swattn.kernels.fwd`` and a forced config. Prints registers, stack, shared memory and, per loop
(a backward branch's body, NOPs left out), its instruction count and its most frequent opcodes.

    PYTHONPATH=/tmp/triton36:. python scripts/loop_sass.py --cache fp8-kv                  # shipped full decode
    PYTHONPATH=/tmp/triton36:. python scripts/loop_sass.py --cache fp8-kv --set FP8_FENCED_WIDENING=1
    PYTHONPATH=/tmp/triton36:. python scripts/loop_sass.py --cache fp8-kv --window 127 --config 16,128,4,2
    PYTHONPATH=/tmp/triton36:. python scripts/loop_sass.py --cache bf16 --sass /tmp/bf16.sass
    PYTHONPATH=/tmp/triton36:. python scripts/loop_sass.py --cache fp8 --splits 16 --qkv-pairs 1   # all-fp8 pairs

(/tmp/triton36: Triton 3.6, the H200's, unpacked; without it the installed Triton compiles.) The split loop's
three loops are the masked head, the interior and the masked tail; the interior (the smallest) is what a long
context runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("loop_sass.py compiles real kernels: run it without TRITON_INTERPRET")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernel_resources, compare_kernel_builds

import torch  # noqa: E402
import triton  # noqa: E402
from compare_kernel_builds import _sass_summary  # noqa: E402
from kernel_resources import compile_for_hopper  # noqa: E402

from swattn.kernels import configs, fwd  # noqa: E402
from swattn.kernels._launch import clear_plans  # noqa: E402
from swattn.kernels.configs import FwdConfig, forced_config  # noqa: E402

H200_SMS = 132


def decode_inputs(cache: str, context: int, left: int, num_splits: int, tokens: int = 1,
                  batch: int = 16) -> tuple[tuple, dict]:
    """q, k, v and attention_forward's arguments of the decode layer (``tokens`` > 1: a speculative verify of that
    many query positions per sequence) for ``batch`` sequences; ``cache``: bf16, fp8-kv (bf16 q over e4m3) or fp8
    (q, K, V e4m3)."""
    pages = context // 16
    q = torch.empty(batch, tokens, 64, 64, dtype=torch.bfloat16)
    k = torch.empty(batch * pages, 16, 8, 64, dtype=torch.bfloat16)
    extra = dict(page_table=torch.arange(batch * pages, dtype=torch.int32).view(batch, pages),
                 seqlens_k=torch.full((batch,), context, dtype=torch.int32), sinks=torch.zeros(64), pack_gqa=True,
                 left=left, right=0, return_lse=False)
    if left < 0:
        extra["num_splits"] = num_splits
    if cache != "bf16":
        k = k.to(torch.float8_e4m3fn)
        extra.update(k_descale=torch.ones(batch, 8), v_descale=torch.ones(batch, 8))
        if cache == "fp8":
            q = q.to(torch.float8_e4m3fn)
            extra["q_descale"] = torch.ones(batch, 8)
    return (q, k, torch.empty_like(k)), extra


def captured_launch(inputs: tuple, arguments: dict, settings: dict, config: FwdConfig | None,
                    grids: list | None = None) -> tuple:
    """The main launch's (args, kwargs), captured instead of launched, as on an H200; each launch's grid appended
    to ``grids`` if given."""
    launches = []

    class Capture:
        def __getitem__(self, grid):
            if grids is not None:
                grids.append(grid)
            return lambda *args, **kwargs: launches.append((args, kwargs))

    names = ("_swa_fwd_kernel", "combine_launch", "tma_compatible", "pdl_enabled", "_persistent_programs",
             "_e4m3_widening", "_prefetches_partner", *settings)
    saved = {name: getattr(fwd, name) for name in names}
    fwd._swa_fwd_kernel = Capture()
    fwd.combine_launch = lambda *args, **kwargs: None
    fwd.tma_compatible = lambda *tensors: True
    fwd.pdl_enabled = lambda device: True
    fwd._persistent_programs = lambda device: H200_SMS
    for name, value in settings.items():
        setattr(fwd, name, value)
    # As on sm_90, where inline PTX compiles (the interpreter's CPU tensors would turn these off).
    fwd._e4m3_widening = lambda device, kv_pair=0: (
        fwd._FENCED_MODES[fwd._fenced_mode(kv_pair)] if fwd._fenced_mode(kv_pair) else
        fwd.WIDEN_IN_PAIRS.value if fwd.WIDEN_E4M3_PAIRS else fwd.WIDEN_TO.value)
    fwd._prefetches_partner = lambda device: fwd.FP8_PREFETCH_PARTNER
    clear_plans()
    try:
        q, k, v = inputs
        if config is None:
            fwd.attention_forward(q, k, v, softmax_scale=0.125, **arguments)
        else:
            with forced_config(config):
                fwd.attention_forward(q, k, v, softmax_scale=0.125, **arguments)
    finally:
        for name, value in saved.items():
            setattr(fwd, name, value)
        clear_plans()
    return launches[0]


def loop_opcodes(sass: str) -> list[dict[str, int]]:
    """Each loop's opcode counts (the bodies of backward branches, NOPs left out), in program order."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in
                    (re.match(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line) for line in sass.splitlines()) if m]
    real = [(a, t) for a, t in instructions if not re.match(r"^(@!?U?P\w+\s+)?NOP\b", t)]
    loops = []
    for address, text in real:
        target = re.search(r"\bBRA\b.*?\b0x([0-9a-f]+)\s*$", text)
        if target and int(target.group(1), 16) < address:
            counts: dict[str, int] = {}
            for a, t in real:
                if int(target.group(1), 16) <= a <= address:
                    op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0]
                    counts[op] = counts.get(op, 0) + 1
            loops.append(counts)
    return loops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", choices=("bf16", "fp8-kv", "fp8"), default="fp8-kv")
    parser.add_argument("--window", type=int, default=-1, help="left window side (-1: full decode)")
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--splits", type=int, default=4, help="full decode's split count")
    parser.add_argument("--batch", type=int, default=16, help="sequences (the pairs' block shape depends on it)")
    parser.add_argument("--tokens", type=int, default=1, help="query positions per sequence (k of a verify)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a swattn.kernels.fwd setting during the capture (an integer or a string), e.g. "
                             "FP8_FENCED_WIDENING=1 or SPLIT_MERGE=fold")
    parser.add_argument("--config", help="a forced config: block_m,block_n,warps,stages[,maxnreg]")
    parser.add_argument("--kv-pairs", type=int, choices=(0, 1), default=1,
                        help="configs.FP8_KV_PAIRS: 1 (default) two KV heads per program where the shipped rule "
                             "takes them (fp8-kv full decode), 0 one KV head per program")
    parser.add_argument("--qkv-pairs", type=int, choices=(0, 1), default=int(configs.FP8_QKV_PAIRS),
                        help="configs.FP8_QKV_PAIRS: 1 the all-fp8 (--cache fp8) full decode on the same pairs (q "
                             "widened in the kernel), 0 one KV head per program on the all-fp8 loop")
    parser.add_argument("--top", type=int, default=16, help="opcodes shown per loop")
    parser.add_argument("--sass", help="also write the SASS to this file")
    args = parser.parse_args()
    settings = {name: int(value) if value.lstrip("-").isdigit() else value
                for name, value in (item.split("=", 1) for item in args.set)}
    config = None
    if args.config:
        fields = [int(x) for x in args.config.split(",")]
        config = FwdConfig(*fields[:4], maxnreg=fields[4] if len(fields) > 4 and fields[4] else None)
    inputs, arguments = decode_inputs(args.cache, args.context, args.window, args.splits, args.tokens,
                                     args.batch)
    configs.FP8_KV_PAIRS = bool(args.kv_pairs)
    configs.FP8_QKV_PAIRS = bool(args.qkv_pairs)
    launch_args, launch_kwargs = captured_launch(inputs, arguments, settings, config)
    compiled, options, usage, sass = compile_for_hopper(fwd._swa_fwd_kernel, launch_args, launch_kwargs)
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(sass)
    shown = {name: launch_kwargs.get(name) for name in ("BLOCK_M", "BLOCK_N", "SINGLE_LOOP", "FP8", "WIDEN",
                                                         "PRELOAD_L2", "KV_PAIR", "LATE_DEPENDENTS")}
    print(f"triton {triton.__version__}, sm_90, {args.cache}, window {args.window}, settings {settings}: "
          f"config ({shown['BLOCK_M']}, {shown['BLOCK_N']}, {options['num_warps']}, {options['num_stages']})"
          f"{' maxnreg=' + str(options['maxnreg']) if options.get('maxnreg') else ''}, {shown}")
    registers, stack = re.findall(r"REG:(\d+)", usage)[0], re.findall(r"STACK:(\d+)", usage)[0]
    print(f"  {registers} registers, {stack} B stack, {compiled.metadata.shared} B shared; "
          f"{_sass_summary(sass)['instructions']} instructions in all")
    for index, counts in enumerate(loop_opcodes(sass)):
        top = sorted(counts.items(), key=lambda item: -item[1])[:args.top]
        print(f"  loop {index}: {sum(counts.values())} instructions per iteration and warp; "
              + ", ".join(f"{op} {n}" for op, n in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
