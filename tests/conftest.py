"""CPU tests run the Triton kernels through the interpreter; it must be switched on before triton is imported.

``SWATTN_TEST_DEVICE=cuda`` runs the same suite on a GPU instead: tensors the tests create without a device land
there (torch's default device) and the kernels are compiled, not interpreted. fp32 runs in full precision there
too, so the same tolerances hold. tests/gpu/ holds the bf16 checks
at real sizes, which run only on a GPU.
"""

import os

TEST_DEVICE = os.environ.get("SWATTN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    os.environ["TRITON_INTERPRET"] = "0"

import inspect  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def _launch_on_a_fresh_frame_stack_chunk() -> None:
    """A test-speed measure for Triton's interpreter (CPU test mode only): CPython 3.11+ keeps Python frames on
    16 KiB "data stack chunks" that it maps with mmap when a call does not fit in the current chunk and unmaps when
    that call returns. When the interpreter's per-op calls sit on a chunk boundary, every tl op maps, page-faults
    and unmaps a fresh chunk: measured 2026-12-04 on 12 split-KV tests, 222k mmaps, 1.9M page faults and 15 s of
    system time out of 41 s of CPU. Here each launch runs below one Python frame with 3300 (unused) locals: it
    does not fit in a 16 KiB chunk, so CPython gives it a 64 KiB one (a chunk holds the frame plus 1000 words,
    rounded up to a power of two), and the launch's calls run in the ~38 KiB left there, allocated once per
    launch. What runs is unchanged; on Python 3.10 and older the frame is merely one larger heap frame."""
    try:
        from triton.runtime import interpreter
        launch = interpreter.GridExecutor.__call__
    except (ImportError, AttributeError):
        return
    spare_locals = " = ".join(f"_unused{i}" for i in range(3300))
    namespace: dict = {}
    exec(f"def call_in_a_large_frame(call, args, kwargs):\n"  # fixed source: only its frame size matters
         f"    if call is None:\n        {spare_locals} = None\n"
         f"    return call(*args, **kwargs)\n", namespace)
    call_in_a_large_frame = namespace["call_in_a_large_frame"]

    def run_launch(self, *args, **kwargs):
        return call_in_a_large_frame(launch, (self, *args), kwargs)

    interpreter.GridExecutor.__call__ = run_launch


def _patch_the_language_once_per_launch() -> None:
    """A test-speed measure for Triton's interpreter (CPU test mode only; ``SWATTN_TEST_PLAIN_INTERPRETER=1`` turns it
    off): the interpreter patches ``triton.language`` for the duration of a launch, then again on every call of a
    ``@triton.jit`` helper inside it, and the repeats (an ``inspect.getmembers`` of the language per call, the same
    patches) took about 40% of each launch's CPU time. Here a helper's call skips the patching when the launch has
    already patched the language modules that helper sees; what runs is unchanged (same bits). Where Triton's
    internals differ from 3.6-3.9's, nothing is changed."""
    try:
        from triton.runtime import interpreter
        original, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
        empty_scope, tl = interpreter._LangPatchScope, interpreter.tl
    except (ImportError, AttributeError):
        return
    state = {"launching": 0, "patched": frozenset()}
    languages: dict[int, frozenset[int]] = {}  # id(fn) -> ids of the language modules its globals hold

    def run_launch(self, *args, **kwargs):
        outer = state["patched"]
        state["launching"] += 1
        state["patched"] = frozenset()
        try:
            return launch(self, *args, **kwargs)
        finally:
            state["launching"] -= 1
            state["patched"] = outer

    def patch_lang(fn):
        seen = languages.get(id(fn))
        if seen is None:
            seen = languages[id(fn)] = frozenset(
                id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core))
        if state["launching"] and seen <= state["patched"]:
            return empty_scope()
        scope = original(fn)
        if state["launching"]:
            state["patched"] = state["patched"] | seen
        return scope

    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = run_launch


if TEST_DEVICE == "cpu" and os.environ.get("SWATTN_TEST_PLAIN_INTERPRETER", "0") in ("", "0"):
    _patch_the_language_once_per_launch()
if TEST_DEVICE == "cpu":
    _launch_on_a_fresh_frame_stack_chunk()

if TEST_DEVICE != "cpu":
    torch.set_default_device(TEST_DEVICE)
    # The suite's bad-data cases expect the checks that CPU tensors get by default; on a GPU an unchecked
    # out-of-range index is the caller's contract and would fault the context for every later test.
    os.environ["SWATTN_CHECK_INPUTS"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
