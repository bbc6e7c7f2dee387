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

import pytest  # noqa: E402
import torch  # noqa: E402

if TEST_DEVICE != "cpu":
    torch.set_default_device(TEST_DEVICE)
    # The suite's bad-data cases expect the checks that CPU tensors get by default; on a GPU an unchecked
    # out-of-range index is the caller's contract and would fault the context for every later test.
    os.environ["SWATTN_CHECK_INPUTS"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
