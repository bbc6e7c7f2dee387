"""Same-process A/B of the forward kernel: this checkout's ``swattn/kernels/fwd.py`` against another version of that
file (e.g. ``git show HEAD~1:swattn/kernels/fwd.py > /tmp/fwd_before.py``), on the prefill targets, graph-replayed
(one call per replay, so no host gaps), interleaved over three rounds; outputs are compared too.

Run: ``python scripts/gpu_ab.py OTHER_FWD.py``. The other file must import only modules that both versions share.
"""

from __future__ import annotations

import importlib.util
import sys

import torch
import triton

from swattn.interface import _auto_pack_gqa
from swattn.kernels import fwd as this_fwd

DEVICE, DTYPE = "cuda", torch.bfloat16
SHAPES = [  # (name, seqlen, heads, kv_heads, head_dim, left, sinks); PackGQA as flash_attn_func picks it
    ("W(127,0) D64 H64/8 16K, sinks", 16384, 64, 8, 64, 127, True),
    ("W(127,0) D128 H32/8 16K", 16384, 32, 8, 128, 127, False),
    ("W(4095,0) D128 H32/8 16K", 16384, 32, 8, 128, 4095, False),
]


def load_other(path: str):
    spec = importlib.util.spec_from_file_location("swattn.kernels._fwd_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph_us(fn) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # a non-blocking stream: after fn's inputs are written
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=300, return_mode="median") * 1e3


def main() -> None:
    other = load_other(sys.argv[1])
    print(f"A/B on {torch.cuda.get_device_name()}; triton {triton.__version__}; other = {sys.argv[1]}")
    for name, seqlen, heads, kv_heads, head_dim, left, with_sinks in SHAPES:
        q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=DTYPE)
        k, v = (torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(2))
        sinks = torch.randn(heads, device=DEVICE) if with_sinks else None
        packed = _auto_pack_gqa(None, seqlen, heads // kv_heads, left, 0)
        kwargs = dict(softmax_scale=head_dim ** -0.5, left=left, right=0, sinks=sinks, pack_gqa=packed)
        outs = {label: module.attention_forward(q, k, v, **kwargs)[0].float()
                for label, module in (("this", this_fwd), ("other", other))}
        diff = ((outs["this"] - outs["other"]).norm() / outs["other"].norm()).item()
        times = {"this": [], "other": []}
        for _ in range(3):
            for label, module in (("this", this_fwd), ("other", other)):
                times[label].append(graph_us(lambda m=module: m.attention_forward(q, k, v, **kwargs)))
        print(f"{name}: this {' '.join(f'{t:.1f}' for t in times['this'])} us; other "
              f"{' '.join(f'{t:.1f}' for t in times['other'])} us; rel diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
