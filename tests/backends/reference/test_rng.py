"""Philox4x32-10 dropout RNG: known-answer vectors, an independent scalar implementation, and the
keep-mask contract of reference/rng.py (which every native backend must match bit for bit)."""
from __future__ import annotations

import pytest
import torch

from flash_attn.backends.reference import rng

M32 = 0xFFFFFFFF


def philox_scalar(counter, key):
    """Philox4x32-10 on Python ints, written from the Random123 paper (Salmon et al., SC'11)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _library(counter, key):
    cs = [torch.tensor([c], dtype=torch.int64) for c in counter]
    seed = key[0] | (key[1] << 32)
    return tuple(int(w) for w in rng.philox4x32_10(*cs, seed))


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(counter, key, expected):
    assert philox_scalar(counter, key) == expected
    assert _library(counter, key) == expected


def test_random_counters_match_scalar():
    g = torch.Generator().manual_seed(11)
    ctr = torch.randint(0, 2**32, (4, 64), generator=g, dtype=torch.int64)
    for seed in (0, 1, 0xDEADBEEFCAFEF00D, 2**64 - 1):
        words = rng.philox4x32_10(*ctr, seed)
        for i in range(0, 64, 7):
            expected = philox_scalar([int(c[i]) for c in ctr], (seed & M32, seed >> 32))
            assert tuple(int(w[i]) for w in words) == expected


def test_keep_mask_contract():
    """dropped iff philox((j // 4, i, bh, offset), seed)[j % 4] < floor(p * 2**32)."""
    seed, offset, p = 0x0123456789ABCDEF, 0x1_0000_0007, 0.3
    bh = torch.tensor([0, 5])
    rows = torch.tensor([0, 3, 17])
    cols = torch.arange(9)
    keep = rng.keep_mask(seed, offset, bh, rows, cols, p)
    assert keep.shape == (2, 3, 9) and keep.dtype == torch.bool
    threshold = int(p * 2**32)
    for a, h in enumerate(bh.tolist()):
        for b, i in enumerate(rows.tolist()):
            for j in cols.tolist():
                word = philox_scalar((j // 4, i, h, offset & M32), (seed & M32, seed >> 32))[j % 4]
                assert bool(keep[a, b, j]) == (word >= threshold), (h, i, j)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_drop_rate(p):
    bh, rows, cols = torch.arange(4), torch.arange(128), torch.arange(256)
    keep = rng.keep_mask(1234, 0, bh, rows, cols, p)
    n = keep.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((~keep).double().mean().item() - p) < 6 * sigma


def test_masks_depend_on_seed_and_offset_and_no_dropout_keeps_all():
    args = (torch.arange(2), torch.arange(32), torch.arange(64))
    base = rng.keep_mask(1, 0, *args, 0.5)
    assert not torch.equal(base, rng.keep_mask(2, 0, *args, 0.5))
    assert not torch.equal(base, rng.keep_mask(1, 1, *args, 0.5))
    assert torch.equal(base, rng.keep_mask(1, 0, *args, 0.5))
    assert rng.keep_mask(1, 0, *args, 0.0).all()
