"""Full-attention decode over FA3's paged cache (gpt-oss layer: B=16, H=64/8, D=64, sinks, 16K context, pages of 16
in random order) bracketed by cudaProfilerStart/Stop after a warm-up call, for Nsight Compute on the H200 (GPU
only): is the e4m3 decode's split loop bound by HBM (DRAM throughput, L2 hit rate of the twin / chunk prefetches) or
by its warps' stalls? One call each, in order, of the bf16 cache, the e4m3 cache (bf16 queries, the shipped loop)
the e4m3 cache with ``fwd.FP8_PREFETCH_PARTNER`` 1 (twin rows) and 2 (page chunks), and two KV heads per program
with their tiles loaded on their own (``fwd.FP8_TWO_KV_HEADS`` 3, (16, 64, 4, 2) capped at 128, 8 splits):

    ncu --clock-control none --profile-from-start off --set full --kernel-name regex:_swa_fwd \\
        -o REPORT python scripts/gpu_ncu_fp8.py [CASE ...]
    ncu -i REPORT.ncu-rep --page details

CASE: ``bf16``, ``fp8kv``, ``twin``, ``chunk``, ``pair3`` (all by default); since session 8 ``fp8kv`` is the
default two KV heads per program (configs.FP8_KV_PAIRS, 8 splits), and ``onehead`` the e4m3 loop with one KV head
per program (FP8_KV_PAIRS off: the previous default, 4 splits), ``fenced`` the default pairs with K and V fenced
(``fwd.FP8_FENCED_WIDENING`` 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_fp8_decode import fp8_sets  # noqa: E402
from gpu_ncu import profile_once  # noqa: E402
from gpu_probe import full_decode_inputs  # noqa: E402

import swattn  # noqa: E402
from swattn.kernels import configs, fwd  # noqa: E402
from swattn.kernels.configs import FwdConfig, forced_config  # noqa: E402

MODES = {"bf16": 0, "fp8kv": 0, "twin": 1, "chunk": 2, "pair3": 0, "onehead": 0, "fenced": 0}


def main() -> None:
    names = sys.argv[1:] or list(MODES)
    bf16 = dict(full_decode_inputs(16, 16384), causal=True)
    e4m3 = fp8_sets([bf16], quantize_q=False)[0]

    def call(name):
        fwd.FP8_PREFETCH_PARTNER = MODES[name]  # part of the plans' key (fwd.settings)
        fwd.FP8_TWO_KV_HEADS = 3 if name == "pair3" else 0
        configs.FP8_KV_PAIRS = name != "onehead"  # part of the plans' key (fwd.settings)
        fwd.FP8_FENCED_WIDENING = 1 if name == "fenced" else 0  # part of the plans' key (fwd.settings)
        if name == "pair3":
            with forced_config(FwdConfig(16, 64, 4, 2, maxnreg=128)):
                swattn.flash_attn_with_kvcache(**e4m3, num_splits=8)
        else:
            swattn.flash_attn_with_kvcache(**(bf16 if name == "bf16" else e4m3))

    profile_once([lambda name=name: call(name) for name in names])
    fwd.FP8_PREFETCH_PARTNER = fwd.FP8_TWO_KV_HEADS = fwd.FP8_FENCED_WIDENING = 0
    configs.FP8_KV_PAIRS = True
    print(f"profiled one call each: {', '.join(names)}")


if __name__ == "__main__":
    main()
