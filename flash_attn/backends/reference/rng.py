"""Counter-based dropout RNG (Philox4x32-10), bit-exact with the native kernels.

Each attention probability P[b, h, i, j] (i = query row, j = key column, both counted from the
start of the sequence; bh = b * nheads + h) is kept or dropped by one 32-bit random word:

    key     = (rng_seed & 0xffffffff, rng_seed >> 32)
    counter = (j // 4, i, bh, rng_offset & 0xffffffff)
    word    = philox4x32_10(counter, key)[j % 4]
    dropped = word < floor(dropout_p * 2**32)

Every backend must reproduce exactly this, so a dropout mask is a pure function of
(seed, offset, position): the backward regenerates the forward's mask and backends agree bitwise.
Arithmetic runs on int64 tensors holding uint32 values; a 64-bit product that wraps still has the
right low 64 bits, so the high and low words come out right.
"""
from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
ROUNDS = 10


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prod = x * m
    return (prod >> 32) & _MASK32, prod & _MASK32


def philox4x32_10(c0, c1, c2, c3, seed: int):
    """Returns the four output words for counters (c0..c3: int64 tensors of uint32 values)."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def drop_threshold(dropout_p: float) -> int:
    return min(int(dropout_p * 2.0**32), _MASK32)


def keep_mask(seed: int, offset: int, bh: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              dropout_p: float) -> torch.Tensor:
    """Bool mask, True where kept, broadcast over bh[:, None, None], rows[:, None], cols[None, :].

    bh: (n,), rows: (m,), cols: (k,) int64 tensors; result (n, m, k).
    """
    bh3 = bh.view(-1, 1, 1)
    r3 = rows.view(1, -1, 1)
    c3 = cols.view(1, 1, -1)
    shape = torch.broadcast_shapes(bh3.shape, r3.shape, c3.shape)
    ctr0 = (c3 >> 2).expand(shape)
    ctr1 = r3.expand(shape)
    ctr2 = bh3.expand(shape)
    ctr3 = torch.full(shape, offset & _MASK32, dtype=torch.int64, device=bh.device)
    words = philox4x32_10(ctr0, ctr1, ctr2, ctr3, seed)
    lane = (c3 & 3).expand(shape)
    word = torch.where(lane == 0, words[0], torch.where(lane == 1, words[1],
                       torch.where(lane == 2, words[2], words[3])))
    return word >= drop_threshold(dropout_p)
