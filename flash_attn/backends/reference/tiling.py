"""Tile sizes and the tiles a causal/local mask leaves out, for the reference loops."""
from __future__ import annotations

from ..args import AttnArgs

# Elements of one fp32 score tile (b * h * block_q * block_k): 4M elements = 16 MB per
# temporary, a handful of temporaries per tile. Large enough that small problems are one tile
# (fast on CPU), small enough that memory stays linear in seqlen at 16k and beyond.
TILE_ELEMENTS = 1 << 22
BLOCK_K = 256


def blocks(batch: int, nheads: int, sq: int, sk: int) -> tuple[int, int]:
    bk = max(1, min(sk, BLOCK_K))
    bq = max(16, TILE_ELEMENTS // max(1, batch * nheads * bk))
    return max(1, min(sq, bq)), bk


def tile_is_masked(i0: int, i1: int, j0: int, j1: int, sq: int, sk: int, args: AttnArgs,
                   uniform_lengths: bool) -> bool:
    """True when the window mask removes every (i, j) of the tile. Only decidable on the host when
    all sequences share (sq, sk); otherwise nothing is skipped (correct, just slower)."""
    if not uniform_lengths:
        return False
    off = sk - sq
    if args.window_right >= 0 and j0 > (i1 - 1) + off + args.window_right:
        return True
    if args.window_left >= 0 and (j1 - 1) < i0 + off - args.window_left:
        return True
    return False
