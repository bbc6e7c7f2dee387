"""Compile the Triton forward kernel of two git revisions for Hopper (sm_90), on any machine, and compare what each
launch costs: SASS instructions (NOPs left out), the instructions of each loop (a backward branch's body), registers
per thread, stack (spill) bytes, shared memory.

    python scripts/compare_kernel_builds.py 7ffcded^ main
    python scripts/compare_kernel_builds.py 7ffcded^ 7ffcded main     # each revision against the one before
    python scripts/compare_kernel_builds.py 7ffcded^ 7ffcded --triton /tmp/t36 --sass /tmp/sass   # Triton 3.6

Each revision is exported with ``git archive`` into a temporary folder and compiled there, in a process of its own
(its own ``swattn``, its own ``scripts/kernel_resources.py`` for the JIT's specialization of the arguments), with
``--triton DIR`` first on the path if given (``pip install --no-deps --target DIR triton==3.6.0``: the H200's
Triton). The launches are the ones ``attention_forward`` makes on an H200 (132 SMs, aligned tensors, programmatic
dependent launch): each revision's own config choice (not a forced one), its own automatic split count for the
full-attention decode, captured instead of launched. A CPU machine never takes the Gluon kernel: every row is the
Triton kernel (on the H200, the W(127,0) D128 prefill goes to the Gluon kernel by default, and the Triton kernel
serves it under ``SWATTN_GLUON=0`` and as its non-finite redo pass).

Rows: the gpt-oss decode layer (B=16, H=64, Hk=8, D=64, pages of 16, sinks, PackGQA) at 16K context with the
window (127, 0) and full attention, the W(127,0) prefill at D=64 (H=64/8) and D=128 (H=32/8) over 16K, each with the
LSE stored and, for decode, without (``flash_attn_with_kvcache``'s default since issue 18); then rows with issue 19's
switches on (cache_leftpad, attention_chunk, seqused_q), which an older revision may not compile ("n/a").
``--sass DIR`` writes each launch's SASS, with addresses, encodings and constant-bank offsets removed, for diff.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

H200_SMS = 132


def targets(torch, has_issue19: bool) -> list[tuple[str, dict]]:
    """(name, attention_forward arguments) on empty tensors (the compiled code depends on shapes only)."""
    bf16 = torch.bfloat16

    def decode(context: int, **extra) -> dict:
        batch, pages = 16, context // 16
        return dict(q=torch.empty(batch, 1, 64, 64, dtype=bf16), k=torch.empty(batch * pages, 16, 8, 64, dtype=bf16),
                    v=torch.empty(batch * pages, 16, 8, 64, dtype=bf16),
                    page_table=torch.arange(batch * pages, dtype=torch.int32).view(batch, pages),
                    seqlens_k=torch.full((batch,), context, dtype=torch.int32), sinks=torch.zeros(64),
                    pack_gqa=True, right=0, **extra)

    def prefill(seqlen: int, heads: int, head_dim: int, **extra) -> dict:
        return dict(q=torch.empty(1, seqlen, heads, head_dim, dtype=bf16),
                    k=torch.empty(1, seqlen, 8, head_dim, dtype=bf16),
                    v=torch.empty(1, seqlen, 8, head_dim, dtype=bf16),
                    left=127, right=0, pack_gqa=True, **extra)

    new_token = dict(new_k=torch.empty(16, 1, 8, 64, dtype=bf16), new_v=torch.empty(16, 1, 8, 64, dtype=bf16))
    rows = [
        ("decode W(127,0) 16K, no LSE", decode(16384, left=127, return_lse=False)),
        ("decode W(127,0) 16K, LSE", decode(16384, left=127, return_lse=True)),
        ("decode W(127,0) 16K, fused append, no LSE", decode(16384, left=127, return_lse=False, **new_token)),
        ("decode full 16K, auto splits", decode(16384, left=-1, return_lse=False)),
        ("prefill W(127,0) D64 16K", prefill(16384, 64, 64, return_lse=True)),
        ("prefill W(127,0) D128 16K", prefill(16384, 32, 128, return_lse=True)),
    ]
    if has_issue19:  # the switches on: what they cost where they are used
        rows += [
            ("on: decode W(127,0) 16K, cache_leftpad + attention_chunk",
             decode(16384, left=127, return_lse=False, cache_leftpad=torch.zeros(16, dtype=torch.int32),
                    attention_chunk=8192)),
            ("on: prefill W(127,0) D64 16K, attention_chunk", prefill(16384, 64, 64, return_lse=True,
                                                                       attention_chunk=8192)),
        ]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Child: compile one tree's launches, print one JSON object per launch.

def _sass_summary(sass: str) -> dict:
    """Instructions (no NOPs), the bodies of backward branches (loops, largest first), opcode counts and the
    normalized text."""
    instructions = []
    for line in sass.splitlines():
        m = re.match(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            instructions.append((int(m.group(1), 16), m.group(2)))
    real = [(a, t) for a, t in instructions if not re.match(r"^(@!?U?P\w+\s+)?NOP\b", t)]
    loops = []
    for address, text in real:
        target = re.search(r"\bBRA\b.*?\b0x([0-9a-f]+)\s*$", text)
        if target and int(target.group(1), 16) < address:
            start = int(target.group(1), 16)
            loops.append(sum(1 for a, _ in real if start <= a <= address))
    opcodes: dict[str, int] = {}
    normalized = []
    for _, text in real:
        op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
        opcodes[op] = opcodes.get(op, 0) + 1
        normalized.append(re.sub(r"c\[0x[0-9a-f]+\]\[0x[0-9a-f]+\]", "c[param]", text))
    # The same instructions with other registers (and branch targets moved): register allocation only.
    renamed = [re.sub(r"\b(U?R|U?P|B)\d+\b", r"\1",
                      re.sub(r"\b0x[0-9a-f]+\s*$", "0x", text) if re.search(r"\b(BRA|BSSY|CALL|JMP)\b", text) else text)
               for text in normalized]
    return dict(instructions=len(real), loops=sorted(loops, reverse=True), opcodes=opcodes,
                normalized="\n".join(normalized), renamed="\n".join(renamed))


def child(tree: str, only: str | None) -> None:
    import importlib.util

    sys.path.insert(0, tree)
    spec = importlib.util.spec_from_file_location("kernel_resources_of_tree",
                                                  os.path.join(tree, "scripts", "kernel_resources.py"))
    kr = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)  # puts the tree first on sys.path; its swattn is the one imported
    import torch
    import triton

    import swattn
    from swattn import interface
    from swattn.kernels import fwd
    from swattn.kernels._launch import clear_plans

    assert os.path.dirname(swattn.__file__).startswith(tree), swattn.__file__
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    forward_parameters = inspect.signature(fwd.attention_forward).parameters
    split_parameters = inspect.signature(interface.split_count).parameters
    kernel = fwd._swa_fwd_kernel
    for name, arguments in targets(torch, "attention_chunk" in forward_parameters):
        if only and only not in name:
            continue
        q, k, v = arguments.pop("q"), arguments.pop("k"), arguments.pop("v")
        if arguments["left"] < 0:  # the decode's automatic split count (interface._auto_num_splits) on an H200
            keys = arguments["page_table"].shape[1] * k.shape[1]
            extra = {key: value for key, value in dict(rows_per_tile=8, paged=True).items() if key in split_parameters}
            arguments["num_splits"] = interface.split_count(16 * 8, keys, H200_SMS, **extra)
        launches = []

        class Capture:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append((grid, args, kwargs))

        saved = fwd.combine_launch, fwd.tma_compatible, fwd.pdl_enabled, fwd._persistent_programs
        fwd._swa_fwd_kernel = Capture()
        fwd.combine_launch = lambda *args, **kwargs: None
        fwd.tma_compatible = lambda *tensors: True  # aligned CUDA tensors on Hopper
        fwd.pdl_enabled = lambda device: True
        fwd._persistent_programs = lambda device: H200_SMS
        clear_plans()
        try:
            fwd.attention_forward(q, k, v, softmax_scale=q.shape[-1] ** -0.5, **arguments)
        except TypeError as exc:  # an argument this revision does not have
            print(json.dumps(dict(target=name, error=f"n/a ({exc})")), flush=True)
            continue
        finally:
            fwd._swa_fwd_kernel = kernel
            fwd.combine_launch, fwd.tma_compatible, fwd.pdl_enabled, fwd._persistent_programs = saved
            clear_plans()
        for index, (grid, args, kwargs) in enumerate(launches):
            source, options = kr._source(kernel, args, kwargs)
            compiled = triton.compile(source, target=kr.HOPPER, options=options)
            with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as cubin:
                cubin.write(compiled.asm["cubin"])
                cubin.flush()
                usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True,
                                       check=True).stdout
                sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True,
                                      check=True).stdout
            switches = {key: value for key, value in kwargs.items() if isinstance(value, (bool, int, str))}
            print(json.dumps(dict(
                target=name, launch=index, grid=[int(g) for g in grid] if isinstance(grid, tuple) else str(grid),
                registers=int(re.findall(r"REG:(\d+)", usage)[0]), stack=int(re.findall(r"STACK:(\d+)", usage)[0]),
                shared=compiled.metadata.shared, switches=switches, **_sass_summary(sass))), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Parent: export each revision, compile it in a child, compare.

def build(repo: str, rev: str, triton_dir: str | None, only: str | None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="swattn-build-") as tree:
        archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", rev], capture_output=True, check=True)
        with tarfile.open(fileobj=__import__("io").BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "PYTHONPATH")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [triton_dir, tree]))
        command = [sys.executable, os.path.abspath(__file__), "--child", tree] + (["--only", only] if only else [])
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{rev}: compile failed\n{result.stderr[-3000:]}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def compare(rows_a: list[dict], rows_b: list[dict], rev_a: str, rev_b: str, sass_dir: str | None) -> None:
    def key(row):
        return row["target"], row.get("launch", 0)

    by_a, by_b = {key(row): row for row in rows_a}, {key(row): row for row in rows_b}
    print("| target (launch) | config | SASS instructions | loops | registers | stack B | shared B |")
    print("|---|---|---|---|---|---|---|")
    details = []
    for target in list(by_a) + [target for target in by_b if target not in by_a]:
        a, b = by_a.get(target, {"error": "n/a"}), by_b.get(target, {"error": "n/a"})
        name = f"{target[0]} ({target[1]})"
        configs = [config(row) for row in (a, b)]
        cells = [name, configs[0] if configs[0] == configs[1] else " -> ".join(configs),
                 *(f"{cell(a, field)} -> {cell(b, field)}" for field in
                   ("instructions", "loops", "registers", "stack", "shared"))]
        print("| " + " | ".join(cells) + " |")
        if "error" in a or "error" in b:
            continue
        changed = {k: (a["switches"].get(k), b["switches"].get(k))
                   for k in sorted(set(a["switches"]) | set(b["switches"]))
                   if a["switches"].get(k) != b["switches"].get(k)}
        ops = {op: b["opcodes"].get(op, 0) - a["opcodes"].get(op, 0)
               for op in sorted(set(a["opcodes"]) | set(b["opcodes"]))}
        ops = {op: d for op, d in ops.items() if d}
        if a["normalized"] == b["normalized"]:
            verdict = "identical SASS (constant-bank offsets aside)"
        elif a["renamed"] == b["renamed"]:
            verdict = "the same instructions in the same order, other registers"
        elif a["opcodes"] == b["opcodes"]:
            verdict = "the same instructions (opcode counts), in another order or with other registers"
        else:
            verdict = "SASS differs"
        details.append(f"- {name}: {verdict}"
                       + (f"; switches {changed}" if changed else "")
                       + (f"; opcodes {ops}" if ops else ""))
        if sass_dir:
            os.makedirs(sass_dir, exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            for rev, row in ((rev_a, a), (rev_b, b)):
                with open(os.path.join(sass_dir, f"{stem}.{re.sub(r'[^A-Za-z0-9]+', '_', rev)}.sass"), "w") as f:
                    f.write(row["normalized"] + "\n")
    print()
    print("\n".join(details))


def config(row: dict) -> str:
    if "error" in row:
        return "n/a"
    s = row["switches"]
    return (f"({s['BLOCK_M']}, {s['BLOCK_N']}, {s['num_warps']}, {s['num_stages']})"
            + (" lse" if s.get("STORE_LSE") else "") + (" split" if s.get("IS_SPLIT") else ""))


def cell(row: dict, field: str) -> str:
    if "error" in row:
        return "n/a"
    value = row[field]
    return "/".join(map(str, value)) if isinstance(value, list) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="*", help="git revisions, each compared with the one before it")
    parser.add_argument("--triton", help="a folder holding another Triton (put first on PYTHONPATH)")
    parser.add_argument("--only", help="only the targets whose name contains this")
    parser.add_argument("--sass", help="write each launch's normalized SASS into this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.only)
        return
    if len(args.revisions) < 2:
        parser.error("give two revisions (or more: each is compared with the one before it)")
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    rows = []
    for rev in args.revisions:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], capture_output=True, text=True,
                                check=True).stdout.strip()
        rows.append(build(repo, commit, args.triton, args.only))
    version = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=args.triton or "")).stdout.strip()
    for index in range(1, len(rows)):
        before, after = args.revisions[index - 1], args.revisions[index]
        print(f"Triton {version}, sm_90, {before} -> {after}\n")
        compare(rows[index - 1], rows[index], before, after, args.sass)
        print()


if __name__ == "__main__":
    main()
