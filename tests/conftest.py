"""CPU tests run the Triton kernels through the interpreter; it must be switched on before triton is imported.

``SWATTN_TEST_DEVICE=cuda`` runs the same suite on a GPU instead: tensors the tests create without a device land
there (torch's default device) and the kernels are compiled, not interpreted. tests/gpu/ holds the bf16 checks
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
