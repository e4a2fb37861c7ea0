"""flash_attn.layers.rotary.apply_rotary_emb against the rotary formula evaluated in float64.

GPT-NeoX style (interleaved=False) rotates the pair (x[i], x[i + r/2]); GPT-J style
(interleaved=True) rotates (x[2i], x[2i + 1]); both by angle theta[pos, i] with cos/sin given as
(seqlen_ro, r/2) tables. Features past rotary_dim r pass through unchanged.
"""
from __future__ import annotations

import pytest
import torch

from flash_attn.layers.rotary import apply_rotary_emb
from helpers import DTYPES


def _rotary64(x, cos, sin, positions, interleaved):
    """The formula in float64 from cos/sin tables (seqlen_ro, r/2); positions broadcast to x's
    token dims."""
    half = cos.shape[1]
    r = 2 * half
    c, s = cos[positions].unsqueeze(-2), sin[positions].unsqueeze(-2)
    out = x.clone()
    if interleaved:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2], out[..., 1:r:2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., :half], x[..., half:r]
        out[..., :half], out[..., half:r] = a * c - b * s, a * s + b * c
    return out


def _tables(seqlen_ro, rotary_dim, device):
    theta = torch.rand(seqlen_ro, rotary_dim // 2, device=device, dtype=torch.float64) * 6.3
    return theta


def _check(out, x, ref64, dtype):
    """Computed in fp32 and rounded once: within one rounding of the exact value."""
    assert out.dtype == dtype and out.shape == x.shape
    err = (out.double() - ref64).abs()
    ulp = ref64.abs().clamp(min=1e-3) * torch.finfo(dtype).eps
    assert torch.all(err <= ulp + 1e-6), f"max error {err.max().item():.3e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim,d", [(64, 64), (32, 80), (16, 40)])
@pytest.mark.parametrize("offsets", ["none", "int", "tensor"])
def test_matches_formula(device, dtype, interleaved, rotary_dim, d, offsets):
    b, s, h = 3, 11, 2
    x = torch.randn(b, s, h, d, device=device).to(dtype)
    theta = _tables(40, rotary_dim, device)
    cos, sin = theta.cos().to(dtype), theta.sin().to(dtype)
    pos = torch.arange(s, device=device)[None, :].expand(b, s)
    kw = {}
    if offsets == "int":
        kw["seqlen_offsets"] = 7
        pos = pos + 7
    elif offsets == "tensor":
        off = torch.randint(0, 40 - s, (b,), dtype=torch.int32, device=device)
        kw["seqlen_offsets"] = off
        pos = pos + off.long()[:, None]
    out = apply_rotary_emb(x, cos, sin, interleaved, **kw)
    # the tables themselves are rounded to dtype: evaluate the formula on their exact values
    ref = _rotary64(x.double(), cos.double(), sin.double(), pos, interleaved)
    _check(out, x, ref, dtype)
    assert torch.equal(out[..., rotary_dim:], x[..., rotary_dim:])
    # and the tables' rounding aside, it is the rotation by theta
    exact = _rotary64(x.double(), theta.cos(), theta.sin(), pos, interleaved)
    assert (out.double() - exact).abs().max() < 0.05


def test_fp64_tables_are_the_rotation(device):
    """With exact (float64) inputs, the result is the rotation itself, up to fp32 arithmetic."""
    x = torch.randn(2, 9, 3, 32, device=device, dtype=torch.float64)
    theta = _tables(9, 32, device)
    out = apply_rotary_emb(x, theta.cos(), theta.sin(), interleaved=False)
    ref = _rotary64(x, theta.cos(), theta.sin(), torch.arange(9, device=device)[None, :].expand(2, 9), False)
    assert (out - ref).abs().max() < 1e-5
    # a rotation keeps each pair's norm
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_varlen_cu_seqlens(device, interleaved):
    lengths = [5, 1, 8]
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32, device=device)
    x = torch.randn(14, 2, 32, device=device).to(torch.float16)
    theta = _tables(20, 32, device)
    cos, sin = theta.cos().half(), theta.sin().half()
    out = apply_rotary_emb(x, cos, sin, interleaved, seqlen_offsets=3, cu_seqlens=cu, max_seqlen=8)
    pos = torch.cat([torch.arange(n, device=device) for n in lengths]) + 3
    ref = _rotary64(x.double(), cos.double(), sin.double(), pos, interleaved)
    _check(out, x, ref, torch.float16)


def test_inplace_and_gradient(device):
    x = torch.randn(2, 6, 2, 16, device=device, dtype=torch.float64)
    theta = _tables(6, 16, device)
    cos, sin = theta.cos(), theta.sin()
    y = x.clone()
    ret = apply_rotary_emb(y, cos, sin, inplace=True)
    assert ret.data_ptr() == y.data_ptr()
    torch.testing.assert_close(y, apply_rotary_emb(x, cos, sin))
    # the gradient of a rotation is the inverse rotation: rotating by -theta
    xg = x.clone().float().requires_grad_()
    g = torch.randn_like(xg)
    (dx,) = torch.autograd.grad(apply_rotary_emb(xg, cos.float(), sin.float()), xg, g)
    torch.testing.assert_close(dx, apply_rotary_emb(g, cos.float(), -sin.float()), atol=1e-5, rtol=1e-5)


def test_bad_tables_are_rejected(device):
    x = torch.randn(1, 4, 1, 16, device=device)
    cos = torch.ones(4, 10, device=device)
    with pytest.raises(ValueError, match=r"rotary_dim 20 .* exceeds headdim 16"):
        apply_rotary_emb(x, cos, cos)
    with pytest.raises(ValueError, match=r"positions reach 6 but cos/sin have 4 rows"):
        apply_rotary_emb(x, cos[:, :4], cos[:, :4], seqlen_offsets=2)
    with pytest.raises(ValueError, match=r"cos has shape \(4, 4\) but sin has \(4, 3\)"):
        apply_rotary_emb(x, cos[:, :4], cos[:, :3])
