"""swattn's benchmark: ``python -m swattn.bench {prefill,decode,model-step,backward,all} [--quick] [--out FILE.md]``.

Scenarios mirror the entry points: ``prefill`` (``flash_attn_func``), ``decode`` and ``model-step``
(``flash_attn_with_kvcache``, CUDA-graph replay), ``backward`` (``swattn.bench.backward``). Each provider (swattn and
the optional peers in ``swattn.bench.peers``) is checked against ``swattn.reference`` on the same inputs before it
is timed; each table carries the bytes floor at the measured copy bandwidth, the GPU, the date and the commit.
``--quick`` runs tiny shapes on the CPU through the Triton interpreter (CI, the README demo).
"""
