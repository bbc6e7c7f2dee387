"""Context-parallel sliding-window attention on torch.distributed (NCCL on GPUs, gloo on CPUs).

    from swattn.distributed import sliding_window_attention, split_sequence
    out = sliding_window_attention(q, k, v, group, window_size=(4095, 0))   # each rank: its [B, S_rank, H, D]

See ``swattn.distributed.api`` for the layouts, the methods (halo, ring) and what each rank sends.
"""

from swattn.distributed.api import (
    all_gather_sequence,
    bytes_sent,
    gather_sequence,
    sliding_window_attention,
    split_sequence,
)
from swattn.distributed.attention import record_traffic
from swattn.distributed.plan import shard_lengths_for

__all__ = [
    "all_gather_sequence",
    "bytes_sent",
    "gather_sequence",
    "record_traffic",
    "shard_lengths_for",
    "sliding_window_attention",
    "split_sequence",
]
