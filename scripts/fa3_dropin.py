"""FlashAttention 3's own tests, run unchanged against swattn through a ``flash_attn_interface`` that is swattn.

swattn copies no FlashAttention code: FA3's test files stay in the git-ignored folder ``.fa3-tests/`` (listed in
``.git/info/exclude``; ``prepare`` copies them from a flash-attention checkout or git dir) and ``run`` puts
swattn's side of the bridge next to them:

- ``flash_attn_interface.py`` (from ``fa3_dropin_interface.py``): swattn's functions under FA3's module name.
- ``conftest.py`` (from ``fa3_dropin_conftest.py``): a deterministic sample of FA3's parameter matrix, part drawn
  from the whole matrix, part from the parametrizations whose arguments swattn accepts, and a per-test log.
- empty ``flash_attn/__init__.py`` files: make FlashAttention's own ``flash_attn/layers/rotary.py`` (the tests'
  rotary reference, a Triton kernel) importable without the rest of flash_attn or its CUDA extension.

Usage::

    python scripts/fa3_dropin.py prepare --source /path/to/flash-attention[/.git] [--rev HEAD]
    # GPU machine (FA3's tests use device="cuda"), swattn importable (PYTHONPATH or installed):
    python scripts/fa3_dropin.py run --log fa3.log --time-limit 65 -- -n 4
    # CPU: the bridge imports and FA3's tests collect
    python scripts/fa3_dropin.py run --collect-only
    python scripts/fa3_dropin.py summary fa3.log

The summary counts passed / failed / skipped per test function and sample and classifies every test that did not
pass by its reason: an argument swattn refuses, something swattn does not have, a skip in FA3's own test, or a
numerical mismatch (FA3's accuracy assertion), the only class that would mean a wrong result.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".fa3-tests"

# FlashAttention's files the tests need, as (path in their repository, path in .fa3-tests).
FA_FILES = (
    ("hopper/test_flash_attn.py", "test_flash_attn.py"),
    ("hopper/test_util.py", "test_util.py"),
    ("hopper/padding.py", "padding.py"),
    ("flash_attn/layers/rotary.py", "flash_attn/layers/rotary.py"),
    ("flash_attn/ops/triton/rotary.py", "flash_attn/ops/triton/rotary.py"),
)

# Per test function of hopper/test_flash_attn.py, the default sample, "U+A": U parametrizations drawn from the whole
# matrix, then A from those whose arguments swattn accepts (fa3_dropin_conftest.py). Sized for about a minute on
# one H200 with -n 4, most of it Triton compiles (the first H200 run, 29 tests, finished 21 in 62 s; 4-39 s a
# test). Left out: test_flash_attn_race_condition (allocates a 70 GiB block and repeats forward + backward 1000
# times: an FA3 scheduling race check, minutes per case) and test_flash3_bw_compatibility (the schemas of FA3's
# C++ ops, torch.ops.flash_attn_3, which swattn does not have).
DEFAULT_SAMPLE = {
    "test_flash_attn_output": "3+3",
    "test_flash_attn_varlen_output": "3+3",
    "test_flash_attn_kvcache": "3+6",
    "test_flash_attn_cluster": "0+1",
    "test_flash_attn_race_condition": "0",
    "test_flash_attn_combine": "1+2",
    "test_flash_attn_varlen_combine_linearize": "0+1",
    "test_flash3_bw_compatibility": "0",
}


def prepare(source: str, rev: str) -> None:
    """Copy FlashAttention's test files from a checkout or a git dir into .fa3-tests."""
    src = Path(source)
    git_dir = src if (src / "HEAD").is_file() and (src / "objects").is_dir() else None
    FOLDER.mkdir(exist_ok=True)
    for theirs, ours in FA_FILES:
        if git_dir is not None:
            text = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{rev}:{theirs}"], check=True,
                                  capture_output=True, text=True).stdout
        else:
            text = (src / theirs).read_text()
        target = FOLDER / ours
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if git_dir is not None:
        commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", rev], check=True,
                                capture_output=True, text=True).stdout.strip()
    else:
        commit = f"checkout {src}"
    (FOLDER / "SOURCE.txt").write_text(f"Dao-AILab/flash-attention {commit}\n"
                                       + "".join(f"{theirs} -> {ours}\n" for theirs, ours in FA_FILES))
    print(f"copied {len(FA_FILES)} files of flash-attention {commit} into {FOLDER}")


def write_bridge() -> None:
    """swattn's side: the flash_attn_interface module, the flash_attn package shell, the conftest."""
    missing = [ours for _, ours in FA_FILES if not (FOLDER / ours).is_file()]
    if missing:
        sys.exit(f"{FOLDER}: missing {missing}; run `python scripts/fa3_dropin.py prepare --source ...` first")
    here = Path(__file__).resolve().parent
    shutil.copyfile(here / "fa3_dropin_interface.py", FOLDER / "flash_attn_interface.py")
    shutil.copyfile(here / "fa3_dropin_conftest.py", FOLDER / "conftest.py")
    for package in ("flash_attn", "flash_attn/layers", "flash_attn/ops", "flash_attn/ops/triton"):
        (FOLDER / package / "__init__.py").write_text("")


def run(args: argparse.Namespace) -> int:
    write_bridge()
    env = dict(os.environ)
    # .fa3-tests first: its flash_attn (rotary only) and flash_attn_interface (swattn) win over installed ones.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FOLDER), str(ROOT), env.get("PYTHONPATH")]))
    env["FA3_DROPIN_SAMPLE"] = args.sample
    if args.log:
        log = Path(args.log).resolve()
        log.write_text("")
        env["FA3_DROPIN_LOG"] = str(log)
    if args.collect_only:
        # FA3's module reads torch.cuda.get_device_capability() at import unless fp8 is disabled by name.
        env.setdefault("FLASH_ATTENTION_DISABLE_FP8", "TRUE")
    command = [sys.executable, "-m", "pytest", "test_flash_attn.py", "-p", "no:cacheprovider", "--tb=short", "-q",
               "-rfE"]
    if args.collect_only:
        command.append("--collect-only")
    command += args.pytest_args
    print("+", " ".join(command), flush=True)
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=FOLDER, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=args.time_limit)
    except subprocess.TimeoutExpired:
        print(f"time limit {args.time_limit} s reached: stopping pytest (tests not logged did not finish)",
              flush=True)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        code = 124
    print(f"pytest exit {code} after {time.monotonic() - start:.0f} s", flush=True)
    if args.log:
        summary(args.log)
    return code


def classify(outcome: str, detail: str) -> str:
    """The reason of a failure (or skip), from the exception's type and first line."""
    if outcome == "PASSED":
        return "passed"
    if outcome == "SKIPPED":
        return f"skipped by FA3's test: {detail.strip()[:90]}"
    reasons = (
        ("qv: not supported with float8_e4m3fn", "refused: qv with float8 inputs (FA3 takes qv in fp16 / bf16 only)"),
        ("qv: a backward through attention with qv", "refused: a backward with qv (FA3 has none; its tests run "
                                                     "none)"),
        ("backward through fp8", "refused: a backward through fp8 attention (neither FA3 nor swattn has one; "
                                  "FA3's tests never run it)"),
        ("the backward takes a value head_dim up to", "refused: a backward with value head_dim > 256 (FA3's tests "
                                                      "skip it too)"),
        ("is not supported with float8_e4m3fn inputs", "refused: float8 with a value head_dim != head_dim (FA3 draws "
                                                        "dv = d for fp8)"),
        ("float8", "refused: float8 (other)"),
        ("the value head_dim (last dimension) must be", "refused: value head_dim out of range"),
        ("head_dim must be a multiple of 8 in [8, 256]", "refused: head_dim > 256"),
        ("flash_attn_3", "FA3 internals: torch.ops.flash_attn_3 (C++ op schema)"),
    )
    for needle, reason in reasons:
        if needle in detail:
            return reason
    if detail.startswith("AssertionError: assert"):  # FA3's own checks, rewritten by pytest
        return "MISMATCH: FA3's accuracy assertion failed"
    return f"other: {detail[:120]}"


def summary(path: str) -> None:
    rows = [line.split("\t") for line in Path(path).read_text().splitlines() if line.strip()]
    by_test: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    reasons: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    for outcome, _when, _seconds, sample, nodeid, *rest in rows:
        detail = rest[0] if rest else ""
        test = nodeid.split("::")[-1]
        by_test[test.split("[")[0], sample][outcome] += 1
        if outcome != "PASSED":
            reason = classify(outcome, detail)
            reasons[f"{reason} [{sample}]"] += 1
            examples.setdefault(f"{reason} [{sample}]", test + ("" if outcome == "SKIPPED" else f": {detail[:200]}"))
    total: collections.Counter = collections.Counter()
    print(f"\n{'test function':42s} {'sample':9s} {'passed':>6s} {'failed':>6s} {'skipped':>7s}")
    for (function, sample), counts in sorted(by_test.items()):
        total.update(counts)
        print(f"{function:42s} {sample:9s} {counts['PASSED']:6d} {counts['FAILED']:6d} {counts['SKIPPED']:7d}")
    print(f"{'total':52s} {total['PASSED']:6d} {total['FAILED']:6d} {total['SKIPPED']:7d}")
    if reasons:
        print("\nnot passed, by reason [sample]:")
        for reason, count in reasons.most_common():
            print(f"  {count:3d}  {reason}\n         e.g. {examples[reason]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="copy FA3's test files into .fa3-tests")
    p.add_argument("--source", required=True, help="flash-attention checkout or git dir")
    p.add_argument("--rev", default="HEAD", help="revision, when --source is a git dir")
    r = commands.add_parser("run", help="write the bridge and run FA3's tests (arguments after -- go to pytest)")
    r.add_argument("--sample", default=",".join(f"{k}={v}" for k, v in DEFAULT_SAMPLE.items()),
                   help="test_function=U+A,... (U from the whole matrix, A from what swattn accepts; '' = FA3's "
                        "whole matrix)")
    r.add_argument("--log", help="per-test log (one line per finished test), summarised at the end")
    r.add_argument("--time-limit", type=float, default=None, help="stop pytest after this many seconds")
    r.add_argument("--collect-only", action="store_true", help="only collect (works on CPU)")
    r.add_argument("pytest_args", nargs="*")
    s = commands.add_parser("summary", help="summarise a per-test log")
    s.add_argument("log")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.source, args.rev)
        return 0
    if args.command == "run":
        return run(args)
    summary(args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
