"""FLASH_ATTENTION_CHECK_VALUES: index tensors' values out of range raise a ValueError naming the
argument, the entry and the limit, before any kernel reads through them; valid values (including a
block table padded with garbage past each sequence's pages) run as without the flag."""
from __future__ import annotations

import pytest
import torch

from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

BF16 = torch.bfloat16
FLAG = "FLASH_ATTENTION_CHECK_VALUES"


def _i32(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _rand(*shape, device):
    return torch.randn(*shape, device=device).to(BF16)


@pytest.mark.parametrize("cu_q,cu_k,max_q,max_k,match", [
    ([1, 3, 10], [0, 5, 12], 7, 7, r"cu_seqlens_q\[0\] is 1; it must be 0"),
    ([0, 5, 3], [0, 5, 12], 7, 7, r"cu_seqlens_q\[2\] is 3, below cu_seqlens_q\[1\] = 5; .*non-decreasing"),
    ([0, 3, 10], [0, 5, 12], 6, 7,
     r"sequence 1 has 7 tokens \(cu_seqlens_q\[2\] - cu_seqlens_q\[1\]\) but max_seqlen_q is 6; "
     r"pass max_seqlen_q >= the longest sequence \(7\)"),
    ([0, 3, 10], [0, 5, 12], 7, 6, r"sequence 1 has 7 tokens \(cu_seqlens_k.*max_seqlen_k is 6"),
    ([0, 3, 11], [0, 5, 12], 8, 7, r"cu_seqlens_q\[-1\] is 11 but q.shape\[0\] \(total_q\) is 10"),
    ([0, 3, 10], [0, 5, 13], 7, 8, r"cu_seqlens_k\[-1\] is 13 but k.shape\[0\] \(total_k\) is 12"),
])
def test_varlen_values(device, monkeypatch, cu_q, cu_k, max_q, max_k, match):
    monkeypatch.setenv(FLAG, "1")
    q, k = _rand(10, 4, 64, device=device), _rand(12, 2, 64, device=device)
    with pytest.raises(ValueError, match=match):
        flash_attn_varlen_func(q, k, k, _i32(cu_q, device), _i32(cu_k, device), max_q, max_k)


def _paged(device, pages=5, page=4):
    return _rand(pages, page, 2, 64, device=device), _rand(pages, page, 2, 64, device=device)


def test_paged_varlen_values(device, monkeypatch):
    monkeypatch.setenv(FLAG, "1")
    kp, vp = _paged(device)
    q = _rand(2, 4, 64, device=device)
    cu_q = _i32([0, 1, 2], device)
    table = _i32([[0, 1, 9], [2, 3, 4]], device)
    with pytest.raises(ValueError, match=r"block_table\[0, 2\] is 9, outside 0..4 \(the cache has 5 pages"):
        flash_attn_varlen_func(q, kp, vp, cu_q, _i32([0, 9, 21], device), 1, 12, block_table=table)
    with pytest.raises(ValueError, match=r"sequence 1 has 13 keys \(cu_seqlens_k\) but block_table's 3 pages "
                                         r"of 4 rows hold 12"):
        flash_attn_varlen_func(q, kp, vp, cu_q, _i32([0, 8, 21], device), 1, 13, block_table=table)


@pytest.mark.parametrize("case,match", [
    ("seqlens_over", r"cache_seqlens\[1\] is 17: sequence 1 needs 17 cache rows but the cache holds 16 "
                     r"per sequence"),
    ("seqlens_new_over", r"cache_seqlens\[1\] is 5 and 12 new tokens come: sequence 1 needs 17 cache rows"),
    ("seqlens_negative", r"cache_seqlens\[1\] is -1; it must be >= 0"),
    ("batch_idx", r"cache_batch_idx\[1\] is 4, outside 0..3 \(k_cache.shape\[0\]"),
    ("leftpad", r"cache_leftpad\[1\] is 6, outside 0..5"),
    ("table_entry", r"block_table\[1, 0\] is -1, outside 0..4"),
])
def test_kvcache_values(device, monkeypatch, case, match):
    monkeypatch.setenv(FLAG, "1")
    q = _rand(2, 1, 4, 64, device=device)
    cache = _rand(2, 16, 2, 64, device=device)
    kw = {"cache_seqlens": _i32([3, 5], device)}
    if case == "seqlens_over":
        kw["cache_seqlens"] = _i32([3, 17], device)
    elif case == "seqlens_new_over":
        kw["k"] = kw["v"] = _rand(2, 12, 2, 64, device=device)
    elif case == "seqlens_negative":
        kw["cache_seqlens"] = _i32([3, -1], device)
    elif case == "batch_idx":
        cache = _rand(4, 16, 2, 64, device=device)
        kw["cache_batch_idx"] = _i32([0, 4], device)
    elif case == "leftpad":
        kw["cache_leftpad"] = _i32([0, 6], device)
    else:
        cache = _paged(device)[0]
        kw["block_table"] = _i32([[0, 1, 2], [-1, 3, 4]], device)
    with pytest.raises(ValueError, match=match):
        flash_attn_with_kvcache(q, cache, cache.clone(), **kw)


@pytest.mark.parametrize("checking", ["0", "1"])
def test_padded_table_runs_as_dense(device, monkeypatch, checking):
    """Table entries past a sequence's last page are never read: garbage there changes nothing, with
    or without the checks."""
    monkeypatch.setenv(FLAG, checking)
    kp, vp = _paged(device)
    q = _rand(2, 1, 4, 64, device=device)
    table = _i32([[3, 1, -7], [0, 4, 2]], device)
    seqlens = _i32([7, 12], device)
    out = flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table)
    for b, n in enumerate((7, 12)):
        rows = torch.cat([kp[p] for p in table[b].tolist()[:(n + 3) // 4]])[:n]
        vrows = torch.cat([vp[p] for p in table[b].tolist()[:(n + 3) // 4]])[:n]
        want = flash_attn_func(q[b:b + 1], rows[None], vrows[None])
        torch.testing.assert_close(out[b:b + 1], want, atol=2e-2, rtol=0)


def test_planned_calls_are_checked(device, monkeypatch):
    """A signature planned without the flag still has its values checked once the flag is set."""
    q, k = _rand(10, 4, 64, device=device), _rand(12, 2, 64, device=device)
    cu_k = _i32([0, 5, 12], device)
    flash_attn_varlen_func(q, k, k, _i32([0, 3, 10], device), cu_k, 7, 7)
    monkeypatch.setenv(FLAG, "1")
    with pytest.raises(ValueError, match=r"max_seqlen_q is 6"):
        flash_attn_varlen_func(q, k, k, _i32([0, 3, 10], device), cu_k, 6, 7)
    cache = _rand(2, 16, 2, 64, device=device)
    seqlens = _i32([3, 5], device)
    flash_attn_with_kvcache(q[:2, None], cache, cache, cache_seqlens=seqlens)
    monkeypatch.setenv(FLAG, "0")
    flash_attn_with_kvcache(q[:2, None], cache, cache, cache_seqlens=seqlens)
    monkeypatch.setenv(FLAG, "1")
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\] is 30"):
        flash_attn_with_kvcache(q[:2, None], cache, cache, cache_seqlens=_i32([30, 5], device))
