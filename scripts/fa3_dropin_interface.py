"""FlashAttention 3's ``flash_attn_interface`` module, served by swattn.

scripts/fa3_dropin.py copies this file to ``.fa3-tests/flash_attn_interface.py`` so that FA3's tests, which
import ``flash_attn_interface``, call swattn.
"""

from swattn import (
    flash_attn_combine,
    flash_attn_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    get_scheduler_metadata,
)

__all__ = ["flash_attn_combine", "flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
           "flash_attn_with_kvcache", "get_scheduler_metadata"]
