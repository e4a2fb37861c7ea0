"""Rotary position embedding, as flash_attn.layers.rotary.apply_rotary_emb upstream.

Plain PyTorch ops, so autograd and every device work; computed in fp32 and cast back.
"""
from __future__ import annotations

from typing import Optional, Union

import torch


def _positions(x: torch.Tensor, seqlen_offsets, cu_seqlens: Optional[torch.Tensor]) -> torch.Tensor:
    """Position of every token: (batch, seqlen), or (total,) for packed sequences."""
    dev = x.device
    if cu_seqlens is None:
        pos = torch.arange(x.shape[1], device=dev)[None, :]
        if isinstance(seqlen_offsets, torch.Tensor):
            return pos + seqlen_offsets.long().view(-1, 1)
        return pos + int(seqlen_offsets)
    tokens = torch.arange(x.shape[0], device=dev)
    seq = torch.searchsorted(cu_seqlens[1:].long(), tokens, right=True)
    pos = tokens - cu_seqlens.long()[seq]
    if isinstance(seqlen_offsets, torch.Tensor):
        return pos + seqlen_offsets.long()[seq]
    return pos + int(seqlen_offsets)


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False,
                     inplace: bool = False, seqlen_offsets: Union[int, torch.Tensor] = 0,
                     cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None):
    """x: (batch, seqlen, nheads, headdim), or (total, nheads, headdim) with cu_seqlens.
    cos, sin: (seqlen_rotary, rotary_dim / 2). Rotates the first rotary_dim features of each head:
    halves (GPT-NeoX) by default, adjacent pairs (GPT-J) when interleaved. seqlen_offsets shifts the
    positions (an int, or (batch,) per sequence, as for a KV cache)."""
    half = cos.shape[-1]
    rotary_dim = 2 * half
    if rotary_dim > x.shape[-1]:
        raise ValueError(f"rotary_dim {rotary_dim} (2 * cos.shape[-1]) exceeds headdim {x.shape[-1]}; "
                         f"cos/sin must have at most headdim / 2 columns.")
    if cos.shape != sin.shape:
        raise ValueError(f"cos has shape {tuple(cos.shape)} but sin has {tuple(sin.shape)}; they must match.")
    if cu_seqlens is None and isinstance(seqlen_offsets, int) and x.shape[1] + seqlen_offsets > cos.shape[0]:
        raise ValueError(f"positions reach {x.shape[1] + seqlen_offsets} but cos/sin have "
                         f"{cos.shape[0]} rows; pass tables covering seqlen + seqlen_offsets.")
    pos = _positions(x, seqlen_offsets, cu_seqlens)
    c = cos.float()[pos].unsqueeze(-2)  # (..., 1, half): broadcast over heads
    s = sin.float()[pos].unsqueeze(-2)
    xr = x[..., :rotary_dim].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    rotated = rotated.to(x.dtype)
    if inplace:
        x[..., :rotary_dim] = rotated
        return x
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)
