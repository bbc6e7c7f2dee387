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

if TEST_DEVICE != "cpu":
    torch.set_default_device(TEST_DEVICE)
    # The suite's bad-data cases expect the checks that CPU tensors get by default; on a GPU an unchecked
    # out-of-range index is the caller's contract and would fault the context for every later test.
    os.environ["SWATTN_CHECK_INPUTS"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
