"""swattn: Triton kernels for sliding-window attention, with FlashAttention 3's API.

    from swattn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, flash_attn_combine
"""

from swattn.interface import (
    flash_attn_combine,
    flash_attn_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    get_scheduler_metadata,
)
from swattn.window import first_readable_page, normalize_window, tile_plan, window_size_from_sliding_window

__all__ = [
    "flash_attn_combine",
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "first_readable_page",
    "get_scheduler_metadata",
    "normalize_window",
    "tile_plan",
    "window_size_from_sliding_window",
]
__version__ = "0.1.0"
