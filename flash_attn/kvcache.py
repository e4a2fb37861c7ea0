"""flash_attn_with_kvcache: decoding and chunked prefill over a KV cache, as FlashAttention-2.

New keys/values are rotated (optional) and written into the cache in place, then attention runs
over the first cache_seqlens + seqlen_new keys of each sequence (from cache_leftpad on). The cache
is dense (batch_cache, seqlen_cache, nheads_k, headdim), or paged (num_blocks, page_block_size,
nheads_k, headdim) through block_table with any page size.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _validate as V
from . import ops
from .layers.rotary import apply_rotary_emb


def _cache_positions(k_cache, block_table, cache_rows, start, s_new):
    """Index tensors (batch, s_new) addressing the slots the new tokens go to."""
    pos = start.long()[:, None] + torch.arange(s_new, device=start.device)[None, :]
    if block_table is None:
        return cache_rows[:, None].expand_as(pos), pos
    page = k_cache.shape[1]
    return torch.gather(block_table.long(), 1, pos // page), pos % page


def _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table):
    paged = block_table is not None
    cache_doc = ("(num_blocks, page_block_size, nheads_k, headdim)" if paged
                 else "(batch_cache, seqlen_cache, nheads_k, headdim)")
    V.check_qkv(q, k_cache, v_cache, "(batch, seqlen_q, nheads, headdim)", cache_doc)
    batch = q.shape[0]
    if (k is None) != (v is None):
        V.fail("pass both k and v (new tokens to append) or neither.")
    if k is not None:
        V.check_qkv(q, k, v, "(batch, seqlen_q, nheads, headdim)", "(batch, seqlen_new, nheads_k, headdim)")
        V.check_batch("k", k, 0, batch, "q.shape[0] (batch)")
        if k.shape[-2] != k_cache.shape[-2]:
            V.fail(f"k has {k.shape[-2]} heads but k_cache has {k_cache.shape[-2]}; they must match.")
    if paged:
        V.check_int_tensor("block_table", block_table, (batch, None), q.device, "(batch, max_num_blocks_per_seq)")
        if cache_batch_idx is not None:
            V.fail("cache_batch_idx cannot be combined with block_table: the block table already "
                   "says where each sequence's cache lives.")
    elif cache_batch_idx is None:
        V.check_batch("k_cache", k_cache, 0, batch, "q.shape[0] (batch)")
    for name, t in (("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad)):
        if t is not None:
            V.check_int_tensor(name, t, (batch,), q.device, "(batch,)")
    if isinstance(cache_seqlens, torch.Tensor):
        V.check_int_tensor("cache_seqlens", cache_seqlens, (batch,), q.device, "(batch,)")
    elif cache_seqlens is not None and (not isinstance(cache_seqlens, int) or cache_seqlens < 0):
        V.fail(f"cache_seqlens must be a non-negative int or an int32 tensor of shape (batch,), "
               f"got {cache_seqlens!r}.")


def _check_rotary(cos, sin, k, capacity: int) -> None:
    if cos is None and sin is None:
        return
    if cos is None or sin is None:
        V.fail("pass both rotary_cos and rotary_sin, or neither.")
    if k is None:
        V.fail("rotary_cos/rotary_sin rotate the new keys (and q) at their cache positions: "
               "pass k and v too (as FlashAttention-2 requires), or rotate q yourself.")
    if cos.shape != sin.shape or cos.dim() != 2:
        V.fail(f"rotary_cos and rotary_sin must both have shape (seqlen_ro, rotary_dim / 2), got "
               f"{tuple(cos.shape)} and {tuple(sin.shape)}.")
    if cos.shape[0] < capacity:
        V.fail(f"rotary_cos has {cos.shape[0]} rows but the cache holds {capacity} positions; "
               f"seqlen_ro must be at least the cache's seqlen.")


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
                            cache_batch_idx: Optional[torch.Tensor] = None,
                            cache_leftpad: Optional[torch.Tensor] = None,
                            block_table: Optional[torch.Tensor] = None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """Returns out (batch, seqlen_q, nheads, headdim), and softmax_lse (batch, nheads, seqlen_q)
    when return_softmax_lse. Rotary (rotary_cos/sin: (seqlen_ro, rotary_dim / 2)) rotates k at
    positions cache_seqlens + i, and q at the same positions when causal/local, else at
    cache_seqlens for every query."""
    _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    batch, s_new = q.shape[0], 0 if k is None else k.shape[1]
    capacity = block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]
    _check_rotary(rotary_cos, rotary_sin, k, capacity)
    if cache_seqlens is None:
        cache_seqlens = capacity - s_new
    if isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    scale = V.scalars(0.0, softcap, softmax_scale, q.shape[-1])
    left, right = V.window(window_size, causal)
    V.check_alibi(alibi_slopes, batch, q.shape[-2], q.device)
    if rotary_cos is not None and k is not None:
        local = right >= 0 or left >= 0
        q = apply_rotary_emb(q, rotary_cos, rotary_sin, rotary_interleaved,
                             seqlen_offsets=cache_seqlens) if local else \
            apply_rotary_emb(q.reshape(batch, 1, -1, q.shape[-1]), rotary_cos, rotary_sin,
                             rotary_interleaved, seqlen_offsets=cache_seqlens).reshape(q.shape)
        k = apply_rotary_emb(k, rotary_cos, rotary_sin, rotary_interleaved, seqlen_offsets=cache_seqlens)
    if k is not None:
        rows = (torch.arange(batch, device=q.device) if cache_batch_idx is None else cache_batch_idx.long())
        index = _cache_positions(k_cache, block_table, rows, cache_seqlens, s_new)
        k_cache[index] = k
        v_cache[index] = v
    seqused_k = (cache_seqlens + s_new if s_new else cache_seqlens).to(torch.int32)  # no add kernel to decode
    out, lse, _ = ops.attention(q, k_cache, v_cache, alibi_slopes, None, None, seqused_k,
                             cache_leftpad, cache_batch_idx, block_table, 0, 0, scale, left, right,
                             float(softcap), 0.0, False, int(num_splits), False)
    return (out, lse) if return_softmax_lse else out
