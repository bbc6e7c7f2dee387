"""Every side stream the repository's code makes (``torch.cuda.Stream()``, for a CUDA-graph warm-up or a
concurrency check) waits for the current stream before it is used.

torch's pool streams are non-blocking: a kernel queued on one does not wait for work still queued on the default
stream. A warm-up that runs a call on a fresh side stream right after that call's inputs were made on the current
stream can read them before they are written (a page table or lengths still holding whatever their memory held
before: page indices far outside the pool). scripts/gpu_probe.py's ``graph_calls_us`` did that, and
scripts/gpu_fp8_decode.py's first bf16 graph after a new section's inputs raised an illegal memory access twice
on the H200 (s5-call4, s6-call4), never under ``CUDA_LAUNCH_BLOCKING=1`` (which serializes the two streams' work).
This check reads the source (no GPU needed): in each function that assigns ``torch.cuda.Stream(...)`` to a name,
``name.wait_stream(...)`` comes before any other use of the name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("swattn", "scripts", "tests", "examples")


def _is_stream_constructor(node: ast.AST) -> bool:
    """``torch.cuda.Stream(...)``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Stream"
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "cuda")


def unwaited_side_streams(source: str, filename: str = "<source>") -> list[str]:
    """``file:line name`` for each side stream assigned in a function whose first use is not its ``wait_stream``."""
    problems = []
    for function in ast.walk(ast.parse(source, filename)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not (isinstance(node, ast.Assign) and _is_stream_constructor(node.value)
                    and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            name = node.targets[0].id
            uses = sorted((use.lineno, use.col_offset, use) for use in ast.walk(function)
                          if isinstance(use, ast.Name) and use.id == name and isinstance(use.ctx, ast.Load)
                          and use.lineno >= node.lineno)
            first = uses[0][2] if uses else None
            waits = any(isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "wait_stream" and call.func.value is first
                        for call in ast.walk(function))
            if first is not None and not waits:
                problems.append(f"{filename}:{node.lineno} {name}")
    return problems


def test_the_check_tells_a_waiting_side_stream_from_one_that_does_not_wait():
    racy = ("def warm(calls):\n    stream = torch.cuda.Stream()\n    with torch.cuda.stream(stream):\n"
            "        calls()\n")
    safe = ("def warm(calls):\n    stream = torch.cuda.Stream()\n"
            "    stream.wait_stream(torch.cuda.current_stream())\n    with torch.cuda.stream(stream):\n"
            "        calls()\n")
    late = ("def warm(calls):\n    stream = torch.cuda.Stream()\n    with torch.cuda.stream(stream):\n"
            "        calls()\n    stream.wait_stream(torch.cuda.current_stream())\n")
    assert unwaited_side_streams(racy) == ["<source>:2 stream"]
    assert unwaited_side_streams(safe) == []
    assert unwaited_side_streams(late) == ["<source>:2 stream"]


def test_every_side_stream_waits_for_the_current_stream_first():
    problems = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            problems += unwaited_side_streams(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, ("side streams used before waiting for the current stream (their kernels may read inputs "
                          f"not yet written): {problems}")
