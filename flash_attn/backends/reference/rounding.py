"""fp32 -> fp16/bf16 conversion with the rounding the flags ask for.

Round-to-nearest-even is torch's own conversion. Round-toward-zero (FLASH_ATTENTION_INTERNAL_USE_RTZ)
is emulated bit-exactly: bf16 keeps the top 16 bits of the fp32 pattern; fp16 takes torch's RNE
result and steps it one ulp toward zero wherever RNE rounded away from zero (which also turns an
overflow to inf into the largest finite fp16, as RTZ must).
"""
from __future__ import annotations

import torch


def to_dtype(x: torch.Tensor, dtype: torch.dtype, rtz: bool) -> torch.Tensor:
    if not rtz or dtype not in (torch.float16, torch.bfloat16):
        return x.to(dtype)
    x = x.float()
    if dtype == torch.bfloat16:
        truncated = x.view(torch.int32) & -65536  # clear the low 16 bits
        is_nan = torch.isnan(x)
        out = truncated.view(torch.float32).to(torch.bfloat16)  # exact: already representable
        return torch.where(is_nan, x.to(torch.bfloat16), out)
    y = x.to(torch.float16)
    away = y.float().abs() > x.abs()  # NaN compares False, so NaN stays NaN
    stepped = (y.view(torch.int16) - 1).view(torch.float16)  # sign-magnitude: one ulp smaller
    return torch.where(away, stepped, y)
