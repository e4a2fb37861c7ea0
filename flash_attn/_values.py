"""Checks of index tensors' values, on where FLASH_ATTENTION_CHECK_VALUES is set.

The argument checks (_validate.py) read shapes, never values, so that no call waits for its GPU.
Values out of range in cu_seqlens, cache_seqlens, cache_batch_idx, cache_leftpad or block_table
make a kernel read or write outside its tensors (on CUDA an illegal address, which ends the
process's CUDA context) or leave output rows unwritten, as in FlashAttention-2. With the flag set,
each call copies those tensors to the host (one synchronisation) and raises a ValueError naming the
argument, the entry, its value and the limit. The copy cannot run inside a torch.compile'd graph
or during CUDA graph capture, so the checks are skipped there.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._validate import fail
from .dispatch import flags as flagmod


def enabled() -> bool:
    return flagmod.read().check_values and not torch.compiler.is_compiling() and not _capturing()


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _host(*tensors: Optional[torch.Tensor]) -> list:
    """The tensors on the host as int64, through one device-to-host copy."""
    present = [t for t in tensors if t is not None]
    if not present:
        return [None] * len(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in present]).cpu()
    out, at = [], 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        out.append(flat[at:at + t.numel()].reshape(t.shape))
        at += t.numel()
    return out


def _first(mask: torch.Tensor) -> Optional[tuple]:
    """Index (a tuple) of the first True entry of mask, or None."""
    hits = mask.nonzero()
    return tuple(int(i) for i in hits[0]) if len(hits) else None


def _check_cu(name: str, cu: torch.Tensor, max_name: str, max_len: int, rows: Optional[int], rows_doc: str):
    if int(cu[0]) != 0:
        fail(f"{name}[0] is {int(cu[0])}; it must be 0 ({name} holds each sequence's first token "
             f"offset, then the total: 0, len_0, len_0 + len_1, ...).")
    lens = cu[1:] - cu[:-1]
    bad = _first(lens < 0)
    if bad is not None:
        i = bad[0]
        fail(f"{name}[{i + 1}] is {int(cu[i + 1])}, below {name}[{i}] = {int(cu[i])}; {name} must be "
             f"non-decreasing (a running sum of sequence lengths).")
    bad = _first(lens > max_len)
    if bad is not None:
        i = bad[0]
        fail(f"sequence {i} has {int(lens[i])} tokens ({name}[{i + 1}] - {name}[{i}]) but {max_name} is "
             f"{max_len}; pass {max_name} >= the longest sequence ({int(lens.max())}), or its rows past "
             f"{max_name} are not computed.")
    if rows is not None and int(cu[-1]) > rows:
        fail(f"{name}[-1] is {int(cu[-1])} but {rows_doc} is {rows}; the sequences must fit in the packed "
             f"tensor.")
    return lens


def _check_table(table: torch.Tensor, keys: torch.Tensor, page: int, pages: int, keys_doc: str) -> None:
    """The entries sequence b reads (its first ceil(keys[b] / page) pages) must name pages that exist;
    entries past them are never read and may hold anything."""
    width = table.shape[1]
    over = _first(keys > width * page)
    if over is not None:
        b = over[0]
        fail(f"sequence {b} has {int(keys[b])} keys ({keys_doc}) but block_table's {width} pages of "
             f"{page} rows hold {width * page}; widen block_table or shorten the sequence.")
    used = torch.arange(width)[None, :] < (keys[:, None] + page - 1) // page
    bad = _first(used & ((table < 0) | (table >= pages)))
    if bad is not None:
        b, j = bad
        fail(f"block_table[{b}, {j}] is {int(table[b, j])}, outside 0..{pages - 1} (the cache has "
             f"{pages} pages, k_cache.shape[0]); sequence {b} reads that page for its keys "
             f"{j * page}..{min(int(keys[b]), (j + 1) * page) - 1}.")


def check_varlen(q: torch.Tensor, k: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                 max_seqlen_q: int, max_seqlen_k: int, block_table: Optional[torch.Tensor]) -> None:
    cu_q, cu_k, table = _host(cu_seqlens_q, cu_seqlens_k, block_table)
    _check_cu("cu_seqlens_q", cu_q, "max_seqlen_q", max_seqlen_q, q.shape[0], "q.shape[0] (total_q)")
    paged = table is not None
    lens_k = _check_cu("cu_seqlens_k", cu_k, "max_seqlen_k", max_seqlen_k, None if paged else k.shape[0],
                       "k.shape[0] (total_k)")
    if paged:
        _check_table(table, lens_k, k.shape[1], k.shape[0], "cu_seqlens_k")


def check_kvcache(k_cache: torch.Tensor, s_new: int, capacity: int, cache_seqlens: torch.Tensor,
                  cache_batch_idx: Optional[torch.Tensor], cache_leftpad: Optional[torch.Tensor],
                  block_table: Optional[torch.Tensor]) -> None:
    seqlens, rows, leftpad, table = _host(cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    bad = _first(seqlens < 0)
    if bad is not None:
        fail(f"cache_seqlens[{bad[0]}] is {int(seqlens[bad[0]])}; it must be >= 0.")
    keys = seqlens + s_new
    bad = _first(keys > capacity)
    if bad is not None:
        b = bad[0]
        new = f" and {s_new} new tokens come" if s_new else ""
        fail(f"cache_seqlens[{b}] is {int(seqlens[b])}{new}: sequence {b} needs {int(keys[b])} cache rows but "
             f"the cache holds {capacity} per sequence; use a longer cache or fewer tokens.")
    if rows is not None:
        bad = _first((rows < 0) | (rows >= k_cache.shape[0]))
        if bad is not None:
            fail(f"cache_batch_idx[{bad[0]}] is {int(rows[bad[0]])}, outside 0..{k_cache.shape[0] - 1} "
                 f"(k_cache.shape[0], the cache's batch).")
    if leftpad is not None:
        bad = _first((leftpad < 0) | (leftpad > keys))
        if bad is not None:
            b = bad[0]
            fail(f"cache_leftpad[{b}] is {int(leftpad[b])}, outside 0..{int(keys[b])} (sequence {b}'s "
                 f"cache_seqlens + new tokens); the padding must lie before the sequence's last key.")
    if table is not None:
        _check_table(table, keys, k_cache.shape[1], k_cache.shape[0], "cache_seqlens + new tokens")
