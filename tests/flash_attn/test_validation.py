"""Bad input is refused before any backend runs, with a message naming the argument and the value
or limit it broke."""
from __future__ import annotations

import pytest
import torch

from flash_attn import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                        flash_attn_varlen_func, flash_attn_with_kvcache)

F16 = torch.float16


def _qkv(device, b=2, s=8, h=4, hk=4, d=64, dtype=F16):
    return (torch.randn(b, s, h, d, device=device).to(dtype),
            torch.randn(b, s, hk, d, device=device).to(dtype),
            torch.randn(b, s, hk, d, device=device).to(dtype))


def _varlen(device, total=10, h=2, d=32):
    q = torch.randn(total, h, d, device=device).to(F16)
    cu = torch.tensor([0, 4, total], dtype=torch.int32, device=device)
    return q, q.clone(), q.clone(), cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.float64])
def test_wrong_dtype(device, dtype):
    q, k, v = _qkv(device, dtype=dtype)
    with pytest.raises(ValueError, match=rf"q has dtype {dtype}; .*torch\.float16 and torch\.bfloat16"):
        flash_attn_func(q, k, v)


def test_mismatched_dtypes(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=r"k has dtype torch\.bfloat16 but q has torch\.float16"):
        flash_attn_func(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match=r"v has dtype torch\.bfloat16 but q has torch\.float16"):
        flash_attn_func(q, k, v.bfloat16())


def test_mismatched_devices(device):
    q, k, v = _qkv(device)
    other = "meta" if device == "cpu" else "cpu"
    with pytest.raises(ValueError, match=rf"k is on {other} but q is on {device}"):
        flash_attn_func(q, k.to(other), v)


@pytest.mark.parametrize("shape,got", [((2, 8, 64), r"\(2, 8, 64\) \(3-D\)"),
                                       ((1, 2, 8, 4, 64), r"\(1, 2, 8, 4, 64\) \(5-D\)")])
def test_wrong_rank(device, shape, got):
    _, k, v = _qkv(device)
    q = torch.randn(*shape, device=device).half()
    expected = r"q must have shape \(batch, seqlen_q, nheads, headdim\), got " + got
    with pytest.raises(ValueError, match=expected):
        flash_attn_func(q, k, v)


def test_wrong_shapes(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=r"k has shape \(2, 8, 4, 64\) but v has \(2, 9, 4, 64\)"):
        flash_attn_func(q, k, torch.randn(2, 9, 4, 64, device=device).half())
    with pytest.raises(ValueError, match=r"head dims differ: q 64, k 32, v 32"):
        flash_attn_func(q, k[..., :32].contiguous(), v[..., :32].contiguous())
    with pytest.raises(ValueError, match=r"k\.shape\[0\] is 1 but q\.shape\[0\] \(batch\) is 2"):
        flash_attn_func(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"qkv\.shape\[2\] is 2; it must be 3"):
        flash_attn_qkvpacked_func(torch.stack((q, k), 2))
    with pytest.raises(ValueError, match=r"kv\.shape\[2\] is 3; it must be 2"):
        flash_attn_kvpacked_func(q, torch.stack((k, v, v), 2))


@pytest.mark.parametrize("d", [257, 512])
def test_head_dim_too_large(device, d):
    q, k, v = _qkv(device, d=d)
    with pytest.raises(ValueError, match=rf"head dim {d} \(q\.shape\[-1\]\) is outside 1\.\.256"):
        flash_attn_func(q, k, v)


def test_nheads_not_divisible(device):
    q, k, v = _qkv(device, h=6, hk=4)
    with pytest.raises(ValueError, match=r"nheads 6 \(q\.shape\[-2\]\) is not divisible by nheads_k 4"):
        flash_attn_func(q, k, v)


def test_non_contiguous_last_dim(device):
    q, k, v = _qkv(device)
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, head dim stride 4
    with pytest.raises(ValueError, match=r"q\.stride\(-1\) is 4; the head dimension must be contiguous"):
        flash_attn_func(q_t, k, v)
    v_t = torch.randn(2, 8, 4, 128, device=device).half()[..., ::2]
    with pytest.raises(ValueError, match=r"v\.stride\(-1\) is 2"):
        flash_attn_func(q, k, v_t)


def test_cu_seqlens(device):
    q, k, v, cu = _varlen(device)
    with pytest.raises(ValueError, match=r"cu_seqlens_q has dtype torch\.int64; it must be torch\.int32"):
        flash_attn_varlen_func(q, k, v, cu.long(), cu, 6, 6)
    with pytest.raises(ValueError, match=r"cu_seqlens_k has dtype torch\.int64"):
        flash_attn_varlen_func(q, k, v, cu, cu.long(), 6, 6)
    longer = torch.tensor([0, 2, 4, 10], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"cu_seqlens_k has 4 entries but cu_seqlens_q has 3"):
        flash_attn_varlen_func(q, k, v, cu, longer, 6, 6)
    with pytest.raises(ValueError, match=r"cu_seqlens_q must have shape \(batch \+ 1,\) .* got \(1,\)"):
        flash_attn_varlen_func(q, k, v, cu[:1], cu[:1], 6, 6)
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be an int32 tensor .* got list"):
        flash_attn_varlen_func(q, k, v, [0, 4, 10], cu, 6, 6)
    with pytest.raises(ValueError, match=r"max_seqlen_q must be a non-negative int, got -1"):
        flash_attn_varlen_func(q, k, v, cu, cu, -1, 6)
    with pytest.raises(ValueError, match=r"q must have shape \(total_q, nheads, headdim\)"):
        flash_attn_varlen_func(q[None], k, v, cu, cu, 6, 6)


def test_block_table(device):
    q, _, _, cu = _varlen(device)
    pages = torch.randn(4, 16, 2, 32, device=device).half()
    good = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"block_table has dtype torch\.int64; it must be torch\.int32"):
        flash_attn_varlen_func(q, pages, pages, cu, cu, 6, 6, block_table=good.long())
    with pytest.raises(ValueError, match=r"block_table must have shape "
                                         r"\(batch, max_num_blocks_per_seq\), got \(3, 2\)"):
        flash_attn_varlen_func(q, pages, pages, cu, cu, 6, 6, block_table=torch.cat((good, good[:1])))
    kq = torch.randn(2, 1, 2, 32, device=device).half()
    with pytest.raises(ValueError, match=r"block_table must have shape .* got \(4,\)"):
        flash_attn_with_kvcache(kq, pages, pages, cache_seqlens=3, block_table=good.flatten())


@pytest.mark.parametrize("window,match", [((-2, 0), r"window_size \(-2, 0\) has a value below -1"),
                                          ((4, -5), r"window_size \(4, -5\) has a value below -1"),
                                          ((3,), r"window_size must be a pair \(left, right\) of ints, "
                                                 r"got \(3,\)"),
                                          ("ab", r"window_size must be a pair .* got 'ab'")])
def test_bad_window(device, window, match):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=match):
        flash_attn_func(q, k, v, window_size=window)


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1])
def test_bad_dropout(device, p):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=rf"dropout_p is {p}; it must be in \[0, 1\)"):
        flash_attn_func(q, k, v, dropout_p=p)


def test_bad_scalars(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=r"softcap is -1\.0; it must be >= 0"):
        flash_attn_func(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match=r"softmax_scale is inf; it must be finite"):
        flash_attn_func(q, k, v, softmax_scale=float("inf"))


def test_bad_alibi(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(4,\) or \(2, 4\) .* got \(3,\)"):
        flash_attn_func(q, k, v, alibi_slopes=torch.rand(3, device=device))
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape .* got \(4, 2\)"):
        flash_attn_func(q, k, v, alibi_slopes=torch.rand(4, 2, device=device))
    with pytest.raises(ValueError, match=r"alibi_slopes has dtype torch\.float16; it must be torch\.float32"):
        flash_attn_func(q, k, v, alibi_slopes=torch.rand(4, device=device).half())


def test_kvcache_arguments(device):
    q = torch.randn(2, 1, 4, 64, device=device).half()
    kc = torch.randn(2, 32, 4, 64, device=device).half()
    new = torch.randn(2, 1, 4, 64, device=device).half()
    with pytest.raises(ValueError, match=r"cache_seqlens has dtype torch\.int64; it must be torch\.int32"):
        flash_attn_with_kvcache(q, kc, kc, cache_seqlens=torch.tensor([3, 4], device=device))
    with pytest.raises(ValueError, match=r"cache_seqlens must have shape \(batch,\), got \(3,\)"):
        flash_attn_with_kvcache(q, kc, kc, cache_seqlens=torch.tensor([3, 4, 5], dtype=torch.int32,
                                                                      device=device))
    with pytest.raises(ValueError, match=r"cache_seqlens must be a non-negative int .* got -3"):
        flash_attn_with_kvcache(q, kc, kc, cache_seqlens=-3)
    with pytest.raises(ValueError, match=r"pass both k and v"):
        flash_attn_with_kvcache(q, kc, kc, k=new, cache_seqlens=3)
    with pytest.raises(ValueError, match=r"k has 2 heads but k_cache has 4"):
        flash_attn_with_kvcache(q, kc, kc, new[:, :, :2], new[:, :, :2], cache_seqlens=3)
    with pytest.raises(ValueError, match=r"cache_batch_idx has dtype torch\.int64"):
        flash_attn_with_kvcache(q, kc, kc, cache_seqlens=3,
                                cache_batch_idx=torch.tensor([1, 0], device=device))
    with pytest.raises(ValueError, match=r"cache_leftpad must have shape \(batch,\), got \(1,\)"):
        flash_attn_with_kvcache(q, kc, kc, cache_seqlens=3,
                                cache_leftpad=torch.zeros(1, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"k_cache\.shape\[0\] is 1 but q\.shape\[0\] \(batch\) is 2"):
        flash_attn_with_kvcache(q, kc[:1], kc[:1], cache_seqlens=3)
    pages = torch.randn(4, 16, 4, 64, device=device).half()
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"cache_batch_idx cannot be combined with block_table"):
        flash_attn_with_kvcache(q, pages, pages, cache_seqlens=3, block_table=table,
                                cache_batch_idx=torch.tensor([1, 0], dtype=torch.int32, device=device))


@pytest.mark.parametrize("name,value,match", [
    ("FLASH_ATTENTION_INTERNAL_USE_RTZ", "maybe",
     r"FLASH_ATTENTION_INTERNAL_USE_RTZ='maybe' is not a valid value; use one of 1, true"),
    ("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "2",
     r"FLASH_ATTENTION_INTERNAL_DETERMINISTIC='2' is not a valid value"),
    ("FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE", "fast",
     r"FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE='fast' is not a valid value"),
    ("FLASH_ATTENTION_BACKEND", "nonsense",
     r"FLASH_ATTENTION_BACKEND='nonsense' names no backend; use one of .*reference"),
    ("FLASH_ATTENTION_BACKEND", "only:nonsense",
     r"FLASH_ATTENTION_BACKEND='only:nonsense' names no backend"),
    ("FLASH_ATTENTION_ARCH_OVERRIDE", "sm99",
     r"FLASH_ATTENTION_ARCH_OVERRIDE='sm99' is not supported; use one of sm75, sm80, sm86, sm89"),
    ("FLASH_ATTENTION_CHECK_VALUES", "all",
     r"FLASH_ATTENTION_CHECK_VALUES='all' is not a valid value"),
])
def test_bad_env_flags(device, monkeypatch, name, value, match):
    q, k, v = _qkv(device)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        flash_attn_func(q, k, v)


def test_kvcache_rotary_arguments(device):
    q = torch.randn(2, 1, 4, 64, device=device).half()
    kc = torch.randn(2, 32, 4, 64, device=device).half()
    new = torch.randn(2, 1, 4, 64, device=device).half()
    cos = torch.ones(32, 16, device=device).half()
    with pytest.raises(ValueError, match=r"rotary_cos/rotary_sin .* pass k and v too"):
        flash_attn_with_kvcache(q, kc, kc, rotary_cos=cos, rotary_sin=cos, cache_seqlens=3)
    with pytest.raises(ValueError, match=r"pass both rotary_cos and rotary_sin"):
        flash_attn_with_kvcache(q, kc, kc, new, new, rotary_cos=cos, cache_seqlens=3)
    with pytest.raises(ValueError, match=r"must both have shape \(seqlen_ro, rotary_dim / 2\), "
                                         r"got \(32, 16\) and \(32, 8\)"):
        flash_attn_with_kvcache(q, kc, kc, new, new, cos, cos[:, :8], cache_seqlens=3)
    with pytest.raises(ValueError, match=r"rotary_cos has 31 rows but the cache holds 32 positions"):
        flash_attn_with_kvcache(q, kc, kc, new, new, cos[:31], cos[:31], cache_seqlens=3)
