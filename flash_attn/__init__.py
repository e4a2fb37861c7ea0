"""FlashAttention everywhere: FlashAttention-2's API on NVIDIA, AMD and the CPU.

`python -m flash_attn info` shows what was detected and which backend each call would use.
"""
__version__ = "2.8.3"  # the FlashAttention-2 API version implemented (see README)

from .flash_attn_interface import (  # noqa: E402
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from .explain import explain  # noqa: E402

__all__ = [
    "flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache", "explain", "__version__",
]
