"""One 16K prefill call of a row of ``gpu_gluon_probe.py`` (or FlashAttention 3's), bracketed by
cudaProfilerStart/Stop after a warm-up call, for Nsight Compute (GPU only):

    ncu --clock-control none --profile-from-start off --set full -o REPORT python scripts/gpu_ncu.py ROW PROVIDER
    ncu -i REPORT.ncu-rep --page details

ROW: a substring of a probe row's label (``_`` for a space, e.g. ``causal_D128``); PROVIDER: ``gluon`` (the shipped
Gluon kernel), ``triton`` or ``fa3``. ``key=value`` arguments after them are ``gluon_fwd.forward``'s tuning overrides
(integers or true/false), e.g. ``consumers=2 per_sm=2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_gluon_probe import ROWS, with_mode  # noqa: E402

import swattn  # noqa: E402
from swattn.bench import peers  # noqa: E402


def profile_once(calls) -> None:
    """Each of ``calls`` once to warm up (compile, plan), then each once more between cudaProfilerStart/Stop: what
    ``ncu --profile-from-start off`` measures."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def main() -> None:
    row, provider = sys.argv[1].replace("_", " "), sys.argv[2]
    overrides = {}
    for item in sys.argv[3:]:
        name, value = item.split("=")
        overrides[name] = {"true": True, "false": False}.get(value.lower()) if value.lower() in ("true", "false") \
            else int(value)
    label, head_dim, heads, kv_heads, left, with_sinks = next(r for r in ROWS if row in r[0])
    torch.manual_seed(0)
    q = torch.randn(1, 16384, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 16384, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(heads, device="cuda") if with_sinks else None
    if provider == "fa3":
        call = peers.fa3(q, k, v, left, sinks=sinks)
    else:
        call = with_mode("1" if provider == "gluon" else "0",
                         lambda: swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, 0), sinks=sinks),
                         **overrides)
    profile_once([call])
    print(f"{label} / {provider} {overrides}: profiled one call")


if __name__ == "__main__":
    main()
