"""FlashAttention 3's ``flash_attn_interface`` module, served by swattn.

scripts/fa3_dropin.py copies this file to ``.fa3-tests/flash_attn_interface.py`` so that FA3's tests, which
import ``flash_attn_interface``, call swattn. ``flash_attn_combine`` (FA3's public merge of split-KV partial
results) is not part of swattn's API: it raises, so its tests count as refused, not as missing.
"""

from swattn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, get_scheduler_metadata

__all__ = ["flash_attn_combine", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
           "get_scheduler_metadata"]


def flash_attn_combine(out_partial, lse_partial, out=None, out_dtype=None):
    raise NotImplementedError("flash_attn_combine: not part of swattn's API (swattn merges split-KV partial results "
                              "inside flash_attn_with_kvcache / flash_attn_varlen_func)")
