"""flash_attn_with_kvcache: in-place append, rotary, paged caches, cache_batch_idx, cache_leftpad.

Semantics under test (FlashAttention-2's): the keys of sequence b are cache positions
[cache_leftpad[b], cache_seqlens[b] + seqlen_new); new token t is written at cache position
cache_seqlens[b] + t and rotated at that absolute position; queries are rotated at
cache_seqlens[b] + i when causal/local, else all at cache_seqlens[b]; causal and local masks are
aligned bottom-right over the valid keys. The expected output is built by hand from
flash_attn.layers.rotary.apply_rotary_emb (tested on its own in test_rotary.py) and the float64
oracle with a key padding mask.
"""
from __future__ import annotations

import math

import pytest
import torch

from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
from flash_attn.layers.rotary import apply_rotary_emb
from helpers import Oracle, randn

D = 64


def _rotary_tables(seqlen, rotary_dim, dtype, device):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = torch.arange(seqlen, device=device).float()[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Cache:
    """A KV cache, dense (batch_cache, capacity, hk, d) or paged through a random block table."""

    def __init__(self, batch, capacity, hk, dtype, device, page=None, spare_pages=3):
        self.page = page
        if page is None:
            self.k = randn(batch, capacity, hk, D, dtype=dtype, device=device)
            self.v = randn(batch, capacity, hk, D, dtype=dtype, device=device)
            self.block_table = None
        else:
            per_seq = math.ceil(capacity / page)
            num_blocks = batch * per_seq + spare_pages
            self.k = randn(num_blocks, page, hk, D, dtype=dtype, device=device)
            self.v = randn(num_blocks, page, hk, D, dtype=dtype, device=device)
            perm = torch.randperm(num_blocks, device=device)[: batch * per_seq]
            self.block_table = perm.view(batch, per_seq).to(torch.int32)

    def logical(self, x):
        """(batch, capacity, hk, d): the cache as each sequence sees it."""
        if self.block_table is None:
            return x
        b, n = self.block_table.shape
        return x[self.block_table.long()].reshape(b, n * self.page, *x.shape[2:])

    @property
    def capacity(self):
        return self.k.shape[1] if self.page is None else self.block_table.shape[1] * self.page


def _expected(q, cache, k_before, v_before, k_new, v_new, seqlens, batch_idx=None, leftpad=None,
              rotary=None, causal=False, window=(-1, -1)):
    """Returns (q as attended, keys (b, n, hk, d), values, key_padding_mask, logical caches after)."""
    b = q.shape[0]
    k_after, v_after = k_before.clone(), v_before.clone()
    rows = torch.arange(b) if batch_idx is None else batch_idx.cpu().long()
    seqlens = seqlens.cpu().long()
    s_new = 0 if k_new is None else k_new.shape[1]
    if k_new is not None:
        if rotary is not None:
            cos, sin, interleaved = rotary
            k_new = apply_rotary_emb(k_new, cos, sin, interleaved, seqlen_offsets=seqlens.to(q.device))
            if causal or window != (-1, -1):
                q = apply_rotary_emb(q, cos, sin, interleaved, seqlen_offsets=seqlens.to(q.device))
            else:  # every query at position cache_seqlens[b]
                q = torch.cat([apply_rotary_emb(q[:, t:t + 1], cos, sin, interleaved,
                                                seqlen_offsets=seqlens.to(q.device))
                               for t in range(q.shape[1])], dim=1)
        for i in range(b):
            k_after[rows[i], seqlens[i]:seqlens[i] + s_new] = k_new[i]
            v_after[rows[i], seqlens[i]:seqlens[i] + s_new] = v_new[i]
    start = torch.zeros(b, dtype=torch.long) if leftpad is None else leftpad.cpu().long()
    end = seqlens + s_new
    n = int((end - start).max())
    keys = k_after.new_zeros(b, n, *k_after.shape[2:])
    values = torch.zeros_like(keys)
    mask = torch.zeros(b, n, dtype=torch.bool, device=q.device)
    for i in range(b):
        length = int(end[i] - start[i])
        keys[i, :length] = k_after[rows[i], start[i]:end[i]]
        values[i, :length] = v_after[rows[i], start[i]:end[i]]
        mask[i, :length] = True
    return q, keys, values, mask, k_after, v_after


def _check_cache(cache, k_before_raw, k_after_logical, what):
    """The cache holds the expected logical contents; pages outside the block table are untouched."""
    assert torch.equal(cache.logical(cache.k if what == "k" else cache.v), k_after_logical), what
    if cache.block_table is not None:
        unused = torch.ones(cache.k.shape[0], dtype=torch.bool, device=cache.k.device)
        unused[cache.block_table.long().flatten()] = False
        now = cache.k if what == "k" else cache.v
        assert torch.equal(now[unused], k_before_raw[unused]), f"{what}: spare pages were written"


ROTARY = {"none": None, "interleaved": True, "halves": False}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page", [None, 16, 256, 5], ids=["dense", "page16", "page256", "page5"])
@pytest.mark.parametrize("rotary", list(ROTARY))
@pytest.mark.parametrize("causal", [False, True])
def test_append_and_attend(device, dtype, page, rotary, causal):
    b, h, hk, s_new, capacity = 3, 4, 2, 3, 300
    cache = Cache(b, capacity, hk, dtype, device, page)
    cap = cache.capacity
    seqlens = torch.randint(0, cap - s_new + 1, (b,), dtype=torch.int32, device=device)
    seqlens[0] = cap - s_new  # one sequence fills its cache to the end
    q = randn(b, s_new, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, s_new, hk, D, dtype=dtype, device=device) for _ in range(2))
    rot = None
    kw = {}
    if ROTARY[rotary] is not None:
        cos, sin = _rotary_tables(cap, D // 2, dtype, device)  # rotary_dim 32 of 64
        rot = (cos, sin, ROTARY[rotary])
        kw = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=ROTARY[rotary])
    k_raw, v_raw = cache.k.clone(), cache.v.clone()
    k_before, v_before = cache.logical(k_raw), cache.logical(v_raw)
    out, lse = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cache_seqlens=seqlens,
                                       block_table=cache.block_table, causal=causal,
                                       return_softmax_lse=True, **kw)
    q_ref, keys, values, mask, k_after, v_after = _expected(
        q, cache, k_before, v_before, k_new, v_new, seqlens, rotary=rot, causal=causal)
    _check_cache(cache, k_raw, k_after, "k")
    _check_cache(cache, v_raw, v_after, "v")
    assert out.shape == q.shape and lse.shape == (b, h, s_new) and lse.dtype == torch.float32
    Oracle(q_ref, keys, values, key_padding_mask=mask, causal=causal).check(out, lse=lse)


def test_int_cache_seqlens_decode(device):
    b, h, hk, cap, dtype = 2, 8, 1, 97, torch.bfloat16
    cache = Cache(b, cap, hk, dtype, device)
    k_before, v_before = cache.k.clone(), cache.v.clone()
    q = randn(b, 1, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, 1, hk, D, dtype=dtype, device=device) for _ in range(2))
    out = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cache_seqlens=41, causal=True)
    seqlens = torch.full((b,), 41, dtype=torch.int32)
    q_ref, keys, values, mask, k_after, _ = _expected(q, cache, k_before, v_before, k_new, v_new,
                                                      seqlens, causal=True)
    assert torch.equal(cache.k, k_after)
    assert mask.sum(1).tolist() == [42, 42]
    Oracle(q_ref, keys, values, key_padding_mask=mask, causal=True).check(out)


@pytest.mark.parametrize("causal", [False, True])
def test_cache_batch_idx(device, causal):
    b, b_cache, h, hk, cap, s_new, dtype = 3, 5, 4, 4, 64, 2, torch.float16
    cache = Cache(b_cache, cap, hk, dtype, device)
    k_before, v_before = cache.k.clone(), cache.v.clone()
    batch_idx = torch.randperm(b_cache, device=device)[:b].to(torch.int32)
    seqlens = torch.randint(0, cap - s_new + 1, (b,), dtype=torch.int32, device=device)
    cos, sin = _rotary_tables(cap, D // 2, dtype, device)
    q = randn(b, s_new, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, s_new, hk, D, dtype=dtype, device=device) for _ in range(2))
    out = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cos, sin,
                                  cache_seqlens=seqlens, cache_batch_idx=batch_idx, causal=causal,
                                  rotary_interleaved=False)
    q_ref, keys, values, mask, k_after, v_after = _expected(
        q, cache, k_before, v_before, k_new, v_new, seqlens, batch_idx=batch_idx,
        rotary=(cos, sin, False), causal=causal)
    assert torch.equal(cache.k, k_after) and torch.equal(cache.v, v_after)
    Oracle(q_ref, keys, values, key_padding_mask=mask, causal=causal).check(out)


@pytest.mark.parametrize("page", [None, 16], ids=["dense", "page16"])
@pytest.mark.parametrize("causal", [False, True])
def test_cache_leftpad(device, page, causal):
    b, h, hk, cap, s_new, dtype = 3, 2, 2, 80, 4, torch.bfloat16
    cache = Cache(b, cap, hk, dtype, device, page)
    k_raw, v_raw = cache.k.clone(), cache.v.clone()
    k_before, v_before = cache.logical(k_raw), cache.logical(v_raw)
    seqlens = torch.randint(20, cap - s_new + 1, (b,), dtype=torch.int32, device=device)
    leftpad = torch.randint(0, 20, (b,), dtype=torch.int32, device=device)
    cos, sin = _rotary_tables(cache.capacity, D // 2, dtype, device)
    q = randn(b, s_new, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, s_new, hk, D, dtype=dtype, device=device) for _ in range(2))
    out = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cos, sin,
                                  cache_seqlens=seqlens, cache_leftpad=leftpad,
                                  block_table=cache.block_table, causal=causal)
    q_ref, keys, values, mask, k_after, v_after = _expected(
        q, cache, k_before, v_before, k_new, v_new, seqlens, leftpad=leftpad,
        rotary=(cos, sin, True), causal=causal)
    _check_cache(cache, k_raw, k_after, "k")
    assert mask.sum(1).tolist() == (seqlens + s_new - leftpad).tolist()
    Oracle(q_ref, keys, values, key_padding_mask=mask, causal=causal).check(out)


def test_attend_without_new_tokens(device):
    """k=None: attention over the first cache_seqlens keys; the cache is not written; a sequence
    with an empty cache outputs zeros (lse +inf)."""
    b, h, cap, dtype = 3, 4, 50, torch.float16
    cache = Cache(b, cap, h, dtype, device)
    k_before, v_before = cache.k.clone(), cache.v.clone()
    seqlens = torch.tensor([17, 0, 50], dtype=torch.int32, device=device)
    q = randn(b, 2, h, D, dtype=dtype, device=device)
    out, lse = flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=seqlens, causal=True,
                                       return_softmax_lse=True)
    assert torch.equal(cache.k, k_before) and torch.equal(cache.v, v_before)
    assert torch.all(out[1] == 0) and torch.all(torch.isposinf(lse[1]))
    for i in (0, 2):
        n = int(seqlens[i])
        Oracle(q[i:i + 1], k_before[i:i + 1, :n], v_before[i:i + 1, :n], causal=True).check(
            out[i:i + 1], lse=lse[i:i + 1])


def test_local_alibi_softcap(device):
    b, h, hk, cap, s_new, dtype = 2, 4, 2, 128, 5, torch.bfloat16
    cache = Cache(b, cap, hk, dtype, device, page=16)
    k_before, v_before = cache.logical(cache.k.clone()), cache.logical(cache.v.clone())
    seqlens = torch.randint(30, cap - s_new + 1, (b,), dtype=torch.int32, device=device)
    slopes = torch.rand(b, h, device=device) * 0.3
    q = randn(b, s_new, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, s_new, hk, D, dtype=dtype, device=device) for _ in range(2))
    out = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cache_seqlens=seqlens,
                                  block_table=cache.block_table, window_size=(21, 2), softcap=4.0,
                                  alibi_slopes=slopes)
    q_ref, keys, values, mask, _, _ = _expected(q, cache, k_before, v_before, k_new, v_new, seqlens)
    Oracle(q_ref, keys, values, key_padding_mask=mask, window=(21, 2), softcap=4.0,
           alibi_slopes=slopes).check(out)


@pytest.mark.parametrize("num_splits", [0, 1, 4])
def test_num_splits_accepted(device, num_splits):
    b, h, cap, dtype = 2, 2, 300, torch.float16
    cache = Cache(b, cap, h, dtype, device)
    k_before, v_before = cache.k.clone(), cache.v.clone()
    seqlens = torch.tensor([299, 150], dtype=torch.int32, device=device)
    q = randn(b, 1, h, D, dtype=dtype, device=device)
    k_new, v_new = (randn(b, 1, h, D, dtype=dtype, device=device) for _ in range(2))
    out = flash_attn_with_kvcache(q, cache.k, cache.v, k_new, v_new, cache_seqlens=seqlens,
                                  num_splits=num_splits)
    q_ref, keys, values, mask, _, _ = _expected(q, cache, k_before, v_before, k_new, v_new, seqlens)
    Oracle(q_ref, keys, values, key_padding_mask=mask).check(out)


@pytest.mark.parametrize("page", [16, 5])
def test_varlen_func_with_block_table(device, page):
    """flash_attn_varlen_func over a paged KV cache: sequence b's keys are the first
    cu_seqlens_k[b+1] - cu_seqlens_k[b] positions of its pages."""
    b, h, hk, cap, dtype = 3, 4, 2, 90, torch.bfloat16
    cache = Cache(b, cap, hk, dtype, device, page)
    lens_q = torch.tensor([3, 1, 6])
    lens_k = torch.tensor([cache.capacity, 41, 9])
    cu_q = torch.nn.functional.pad(lens_q.cumsum(0), (1, 0)).to(torch.int32).to(device)
    cu_k = torch.nn.functional.pad(lens_k.cumsum(0), (1, 0)).to(torch.int32).to(device)
    q = randn(int(lens_q.sum()), h, D, dtype=dtype, device=device)
    out = flash_attn_varlen_func(q, cache.k, cache.v, cu_q, cu_k, int(lens_q.max()),
                                 int(lens_k.max()), causal=True, block_table=cache.block_table)
    k_log, v_log = cache.logical(cache.k), cache.logical(cache.v)
    for i in range(b):
        rows = slice(int(cu_q[i]), int(cu_q[i + 1]))
        n = int(lens_k[i])
        Oracle(q[rows][None], k_log[i:i + 1, :n], v_log[i:i + 1, :n], causal=True).check(out[rows][None])
