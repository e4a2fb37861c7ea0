"""One (query block x key block) tile of attention scores with every score modifier applied.

Shared by forward and backward so both see exactly the same function of (q, k):
    S = softcap * tanh(scale * q.k / softcap)   (or scale * q.k without softcap)
        - slope * |i + len_k - len_q - j|       (ALiBi)
    masked to -inf outside the key length and outside the causal/local window, whose diagonal is
    aligned to the bottom-right corner: query i sees key j iff
    i + len_k - len_q - window_left <= j <= i + len_k - len_q + window_right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..args import AttnArgs
from . import rng


@dataclass
class Tile:
    scores: torch.Tensor  # (b, h, bq, bk) fp32, -inf where masked
    tanh: Optional[torch.Tensor]  # tanh(scale * q.k / softcap), kept for the softcap gradient
    keep: Optional[torch.Tensor]  # dropout keep mask, None without dropout


def _offsets(len_q, len_k, sq: int, sk: int, device) -> torch.Tensor:
    """(b or 1, 1, 1, 1) shift of the diagonal: len_k - len_q per sequence."""
    if len_q is None:
        return torch.tensor(sk - sq, device=device).view(1, 1, 1, 1)
    return (len_k - len_q).view(-1, 1, 1, 1)


def compute(qt: torch.Tensor, kt: torch.Tensor, i0: int, j0: int, args: AttnArgs, len_q, len_k,
            sq: int, sk: int, nheads: int, want_keep: bool) -> Tile:
    """qt: (b, h, bq, d) fp32; kt: (b, h, bk, d) fp32 (key heads already expanded for GQA)."""
    dev = qt.device
    s = torch.matmul(qt, kt.transpose(-1, -2)) * args.softmax_scale
    th = None
    if args.softcap > 0:
        th = torch.tanh(s / args.softcap)
        s = th * args.softcap
    rows = torch.arange(i0, i0 + qt.shape[2], device=dev).view(1, 1, -1, 1)
    cols = torch.arange(j0, j0 + kt.shape[2], device=dev).view(1, 1, 1, -1)
    diag = rows + _offsets(len_q, len_k, sq, sk, dev)
    if args.alibi_slopes is not None:
        slopes = args.alibi_slopes.float().reshape(-1, nheads, 1, 1)
        s = s - slopes * (diag - cols).abs()
    valid = cols < sk
    if len_k is not None:
        valid = valid & (cols < len_k.view(-1, 1, 1, 1))
    if args.window_right >= 0:
        valid = valid & (cols <= diag + args.window_right)
    if args.window_left >= 0:
        valid = valid & (cols >= diag - args.window_left)
    s = s.masked_fill(~valid, float("-inf"))
    keep = None
    if want_keep and args.dropout_p > 0:
        b, h = qt.shape[0], qt.shape[1]
        bh = torch.arange(b * h, device=dev)
        keep = rng.keep_mask(args.rng_seed, args.rng_offset, bh, rows.flatten(), cols.flatten(),
                             args.dropout_p).view(b, h, qt.shape[2], kt.shape[2])
    return Tile(s, th, keep)


def expand_kv(x: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, hk, n, d) -> (b, h, n, d): query head h reads key head h // (h / hk)."""
    groups = nheads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def reduce_kv(x: torch.Tensor, nheads_k: int) -> torch.Tensor:
    """(b, h, n, d) -> (b, hk, n, d): sum the query-head group of each key head."""
    b, h = x.shape[:2]
    return x if h == nheads_k else x.view(b, nheads_k, h // nheads_k, *x.shape[2:]).sum(2)
