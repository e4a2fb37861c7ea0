"""fp32 -> fp16/bf16 conversion: round-to-nearest-even is torch's; round-toward-zero (the
FLASH_ATTENTION_INTERNAL_USE_RTZ flag) against an oracle that searches all values of the dtype."""
from __future__ import annotations

import pytest
import torch

from flash_attn.backends.reference.rounding import to_dtype
from helpers import DTYPES, round_toward_zero


def _same(a, b):
    """Equal bit patterns, except that any NaN equals any NaN."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a.view(torch.int16)[~nan],
                                                             b.view(torch.int16)[~nan])


def _samples(dtype):
    info = torch.finfo(dtype)
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(20000, generator=g) * s for s in (1e-3, 1.0, 100.0, info.max / 4)]
    parts.append(torch.rand(5000, generator=g) * info.tiny * 4)  # subnormals of the 16-bit type
    parts.append(-torch.rand(5000, generator=g) * info.tiny * 4)
    return torch.cat(parts).float()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rtz_matches_oracle(dtype):
    x = _samples(dtype)
    out = to_dtype(x, dtype, rtz=True)
    assert out.dtype == dtype
    assert _same(out, round_toward_zero(x, dtype))
    assert torch.all(out.float().abs() <= x.abs())
    # not the same as RNE: about half of the random values round differently
    frac = (out != x.to(dtype)).double().mean().item()
    assert 0.3 < frac < 0.7


@pytest.mark.parametrize("dtype", DTYPES)
def test_rne_is_torch_conversion(dtype):
    x = _samples(dtype)
    assert _same(to_dtype(x, dtype, rtz=False), x.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_values_unchanged(dtype):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    vals = bits.view(dtype)
    vals = vals[torch.isfinite(vals)]
    assert _same(to_dtype(vals.float(), dtype, rtz=True), vals)


def test_fp16_overflow_saturates_to_65504():
    x = torch.tensor([65504.0, 65519.0, 65520.0, 70000.0, 3e38, -65520.0, -1e30, float("inf"), float("-inf")])
    out = to_dtype(x, torch.float16, rtz=True)
    assert out.tolist() == [65504.0, 65504.0, 65504.0, 65504.0, 65504.0, -65504.0, -65504.0,
                            float("inf"), float("-inf")]
    assert x.half()[2].item() == float("inf")  # where RNE would overflow


def test_bf16_top_of_range():
    big = torch.finfo(torch.float32).max
    out = to_dtype(torch.tensor([big, -big]), torch.bfloat16, rtz=True)
    assert out.tolist() == [torch.finfo(torch.bfloat16).max, -torch.finfo(torch.bfloat16).max]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_signed_values(dtype):
    x = torch.tensor([float("nan"), -float("nan"), -0.0, 0.0, -1.0009765625, 1.0009765625, -2.7, 2.7, -1e-9])
    out = to_dtype(x, dtype, rtz=True)
    assert torch.isnan(out[:2]).all()
    assert torch.equal(torch.signbit(out[2:]), torch.signbit(x[2:]))  # -0.0 and tiny negatives keep the sign
    assert torch.equal(out[4:8], -out[[5, 4, 7, 6]])  # symmetric: rtz(-x) == -rtz(x)
    assert _same(out[2:], round_toward_zero(x[2:], dtype))
