"""Every input layout the API accepts, brought to one padded batch form for the reference math.

Queries: dense (b, s, h, d) is used as a view; varlen (total, h, d) is gathered to
(b, max_seqlen_q, h, d). Keys/values may be dense, varlen-packed, a KV cache row picked by
kv_batch_idx, shifted by leftpad_k, or paged through a block table with any page size; all are
gathered to (b, max_keys, h_k, d) rows with a per-sequence key count. Gathers use index tensors
only (no host synchronisation); padded rows are masked by the lengths and dropped on the way out.
Memory stays linear in the sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..args import AttnArgs


@dataclass
class Batch:
    q: torch.Tensor  # (b, sq, h, d)
    k: torch.Tensor  # (b, sk, hk, d)
    v: torch.Tensor
    len_q: Optional[torch.Tensor]  # (b,) int64, None when every sequence is full length
    len_k: Optional[torch.Tensor]
    q_rows: Optional[torch.Tensor]  # (b, sq) row of the packed q for each padded slot (varlen)
    kv_rows: Optional[torch.Tensor]  # (b, sk) row of the flattened k/v source for each slot


def _lengths(cu: torch.Tensor) -> torch.Tensor:
    return (cu[1:] - cu[:-1]).long()


def _kv_rows(k: torch.Tensor, args: AttnArgs, batch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of k flattened over its leading two dims (or one, if packed) for each key slot."""
    dev = k.device
    if args.is_paged:
        bt = args.block_table.long()
        page = k.shape[1]
        cap = bt.shape[1] * page
        # (batch, cap), not (1, cap): gather's output takes the index's shape, so a broadcast row
        # would read every sequence through the first sequence's block table.
        pos = torch.arange(cap, device=dev)[None, :].expand(bt.shape[0], cap)
        if args.leftpad_k is not None:
            pos = pos + args.leftpad_k.long()[:, None]
        pos = pos.clamp(max=cap - 1)
        pages = torch.gather(bt, 1, pos // page)
        # Entries past a sequence's last page are never read and may hold anything (servers pad
        # their tables), so the slots past its keys take page 0 instead.
        if args.cu_seqlens_k is not None:
            pages = torch.where(pos < _lengths(args.cu_seqlens_k)[:, None], pages, 0)
        elif args.seqused_k is not None:
            pages = torch.where(pos < args.seqused_k.long()[:, None], pages, 0)
        return pages * page + pos % page, cap, k.shape[0] * page
    if args.cu_seqlens_k is not None:
        cap = args.max_seqlen_k
        start = args.cu_seqlens_k[:-1].long()[:, None]
        rows = start + torch.arange(cap, device=dev)[None, :]
        return rows.clamp(max=max(k.shape[0] - 1, 0)), cap, k.shape[0]
    cap = k.shape[1]
    cache_row = torch.arange(batch, device=dev) if args.kv_batch_idx is None else args.kv_batch_idx.long()
    pos = torch.arange(cap, device=dev)[None, :]
    if args.leftpad_k is not None:
        pos = pos + args.leftpad_k.long()[:, None]
    rows = cache_row[:, None] * cap + pos.clamp(max=cap - 1)
    return rows, cap, k.shape[0] * cap


def _flat(x: torch.Tensor, packed: bool) -> torch.Tensor:
    return x if packed else x.reshape(-1, *x.shape[-2:])


def gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttnArgs) -> Batch:
    dense_kv = (args.cu_seqlens_k is None and not args.is_paged and args.kv_batch_idx is None
                and args.leftpad_k is None)
    if args.is_varlen:
        batch = args.cu_seqlens_q.shape[0] - 1
        len_q = _lengths(args.cu_seqlens_q)
        q_rows = args.cu_seqlens_q[:-1].long()[:, None] + torch.arange(args.max_seqlen_q, device=q.device)
        q_rows = q_rows.clamp(max=max(q.shape[0] - 1, 0))
        qb = q[q_rows] if q.shape[0] else q.new_zeros(batch, args.max_seqlen_q, *q.shape[1:])
    else:
        batch, len_q, q_rows, qb = q.shape[0], None, None, q

    if dense_kv:
        kb, vb, len_k, kv_rows = k, v, None, None
    else:
        kv_rows, cap, _ = _kv_rows(k, args, batch)
        packed = args.cu_seqlens_k is not None and not args.is_paged
        kb = _flat(k, packed)[kv_rows]
        vb = _flat(v, packed)[kv_rows]
        if args.cu_seqlens_k is not None:
            len_k = _lengths(args.cu_seqlens_k)
        elif args.seqused_k is not None:
            len_k = args.seqused_k.long()
        else:
            len_k = torch.full((batch,), cap, dtype=torch.long, device=k.device)
        if args.leftpad_k is not None:
            len_k = len_k - args.leftpad_k.long()
    if args.seqused_k is not None and dense_kv:
        len_k = args.seqused_k.long()
    if len_k is not None and len_q is None:
        len_q = torch.full_like(len_k, q.shape[1])
    if len_q is not None and len_k is None:
        len_k = torch.full_like(len_q, k.shape[1])
    return Batch(qb, kb, vb, len_q, len_k, q_rows if args.is_varlen else None, kv_rows)


def scatter_rows(padded: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor, total: int,
                 accumulate: bool = False) -> torch.Tensor:
    """Inverse of a gather: (b, s, ...) padded slots back to (total, ...) packed rows.

    Padded slots beyond each length go to one extra dump row that is cut off, so nothing syncs.
    """
    s = padded.shape[1]
    valid = torch.arange(s, device=padded.device)[None, :] < lengths[:, None]
    target = torch.where(valid, rows, torch.full_like(rows, total))
    out = padded.new_zeros(total + 1, *padded.shape[2:])
    flat = padded.reshape(-1, *padded.shape[2:])
    # index_put_ (not index_copy_/index_add_): it has deterministic implementations on every device,
    # so this also runs under torch.use_deterministic_algorithms(True).
    out.index_put_((target.reshape(-1),), flat, accumulate=accumulate)
    return out[:total]
