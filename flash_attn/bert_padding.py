"""Padding helpers with FlashAttention-2's signatures and return values.

unpad_input turns a padded batch plus attention mask into the packed rows and cu_seqlens that the
varlen functions take; pad_input scatters packed rows back. Plain indexing, so autograd works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """input[indices] along the first axis (rows of a (total, ...) tensor)."""
    return input[indices]


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """A (first_axis_dim, ...) zero tensor with values written at the given rows."""
    out = values.new_zeros(first_axis_dim, *values.shape[1:])
    return out.index_put((indices,), values)


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """hidden_states: (batch, seqlen, ...); attention_mask: (batch, seqlen), 1/True = valid;
    unused_mask: (batch, seqlen), tokens allocated but not attended to (kept in the packing).

    Returns (hidden_states (total, ...), indices (total,), cu_seqlens int32 (batch + 1,),
    max_seqlen_in_batch int, used_seqlens_in_batch int32 (batch,)).
    """
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """hidden_states: (total, ...) rows at indices of a flattened (batch, seqlen) grid.
    Returns (batch, seqlen, ...) with zeros where no row was given."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.view(batch, seqlen, *hidden_states.shape[1:])
