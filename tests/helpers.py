"""Shared test oracle: plain O(s^2) attention, written independently of the library.

attention_ref computes in any dtype: float64 gives the "truth", the input dtype gives the
"baseline" of the accuracy rule (shared/DESIGN.md): a result passes when
max|out - truth| <= 2 * max|baseline - truth| + 1e-5 (gradients: 3x).
"""
from __future__ import annotations

import math

import torch

DTYPES = [torch.float16, torch.bfloat16]


def attention_ref(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                  softmax_scale=None, key_padding_mask=None, query_padding_mask=None,
                  keep_mask=None, dropout_p=0.0, dtype=torch.float64):
    """q: (b, sq, h, d), k/v: (b, sk, hk, d); masks (b, s) bool True = valid; keep_mask
    (b, h, sq, sk) bool. Returns (out (b, sq, h, d) in dtype, lse (b, h, sq) in dtype)."""
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    qf, kf, vf = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    if hk != h:
        kf = kf.repeat_interleave(h // hk, 1)
        vf = vf.repeat_interleave(h // hk, 1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    len_q = (query_padding_mask.sum(-1) if query_padding_mask is not None
             else torch.full((b,), sq, device=q.device))
    len_k = (key_padding_mask.sum(-1) if key_padding_mask is not None
             else torch.full((b,), sk, device=q.device))
    i = torch.arange(sq, device=q.device).view(1, 1, -1, 1)
    j = torch.arange(sk, device=q.device).view(1, 1, 1, -1)
    diag = i + (len_k - len_q).view(-1, 1, 1, 1)
    if alibi_slopes is not None:
        s = s - alibi_slopes.to(dtype).reshape(-1, h, 1, 1) * (diag - j).abs().to(dtype)
    valid = torch.ones_like(s, dtype=torch.bool)
    if key_padding_mask is not None:
        valid &= key_padding_mask.view(b, 1, 1, sk)
    left, right = window
    if causal:
        right = 0
    if right >= 0:
        valid &= j <= diag + right
    if left >= 0:
        valid &= j >= diag - left
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    if keep_mask is not None:
        p = torch.where(keep_mask, p / (1 - dropout_p), torch.zeros_like(p))
    out = torch.matmul(p, vf).transpose(1, 2)
    if query_padding_mask is not None:
        out = out.masked_fill(~query_padding_mask.view(b, sq, 1, 1), 0.0)
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return out.to(dtype), lse


def max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_rule(out, truth, baseline, factor=2.0, what="out", floor=1e-5):
    err = max_err(out, truth)
    base = max_err(baseline, truth)
    assert not torch.isnan(out).any(), f"{what} has NaN"
    assert err <= factor * base + floor, (
        f"{what}: max error {err:.3e} exceeds {factor} x baseline error {base:.3e} + {floor:.1e}")


def randn(*shape, dtype, device="cpu", requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


class Oracle:
    """fp64 truth and input-dtype baseline of one attention call, and of its gradients.

    The truth is computed on float64 copies of the inputs, so its gradients are float64 too
    (gradients taken through a cast back to 16-bit leaves would be rounded)."""

    def __init__(self, q, k, v, dout=None, **kw):
        grad = dout is not None
        leaves64 = [x.detach().double().requires_grad_(grad) for x in (q, k, v)]
        leaves16 = [x.detach().clone().requires_grad_(grad) for x in (q, k, v)]
        self.out, self.lse = attention_ref(*leaves64, **kw)
        self.base, _ = attention_ref(*leaves16, **kw, dtype=q.dtype)
        _, self.lse_base = attention_ref(*(x.detach() for x in leaves16), **kw, dtype=torch.float32)
        self.grads = self.base_grads = None
        if grad:
            self.grads = torch.autograd.grad(self.out, leaves64, dout.double())
            self.base_grads = torch.autograd.grad(self.base, leaves16, dout)

    def check(self, out, grads=None, lse=None, what=""):
        assert_close_rule(out, self.out, self.base, 2.0, f"{what}out")
        if grads is not None:
            # The absolute floor scales with the largest true gradient: rounding noise in one
            # gradient follows the magnitudes that flow through the whole backward, and a gradient
            # whose truth is identically zero (dK with a single key: dS = P (dP - D) = 0) has no
            # magnitude of its own, while the input-dtype baseline can hit that zero exactly.
            floor = 1e-5 * max(1.0, max(t.abs().max().item() for t in self.grads if t.numel()))
            for name, g, t, b in zip(("dq", "dk", "dv"), grads, self.grads, self.base_grads):
                assert g.dtype == b.dtype, f"{name} has dtype {g.dtype}, not {b.dtype}"
                assert_close_rule(g, t, b, 3.0, f"{what}{name}", floor)
        if lse is not None:
            check_lse(lse, self.lse, self.lse_base)


def check_lse(lse, truth, baseline):
    """lse is fp32: +inf exactly where the reference's is (rows with no key), elsewhere within
    2x the error of an fp32 baseline computed from the same 16-bit inputs (+1e-4 for the
    different summation order of a tiled softmax)."""
    assert lse.dtype == torch.float32, f"lse dtype {lse.dtype}"
    assert lse.shape == truth.shape, f"lse shape {tuple(lse.shape)} != {tuple(truth.shape)}"
    inf = torch.isinf(truth)
    assert torch.equal(torch.isposinf(lse.cpu()), inf.cpu()), "lse is +inf exactly on rows with no key"
    finite = ~inf
    assert_close_rule(lse[finite], truth[finite], baseline[finite], 2.0, "lse")


def random_padding_mask(batch: int, seqlen: int, device="cpu", min_len: int = 1):
    """(batch, seqlen) bool, True = valid, valid tokens first; random lengths in [min_len, seqlen]
    with one sequence of full length (so max_seqlen == seqlen)."""
    lengths = torch.randint(min_len, seqlen + 1, (batch,), device=device)
    lengths[torch.randint(0, batch, (1,)).item()] = seqlen
    return torch.arange(seqlen, device=device)[None, :] < lengths[:, None]


def _finite_values(dtype: torch.dtype) -> torch.Tensor:
    """Every non-negative finite value of a 16-bit float dtype, ascending, as float64."""
    bits = torch.arange(0, 0x8000, dtype=torch.int32).to(torch.int16)
    vals = bits.view(dtype).double()
    return vals[torch.isfinite(vals)].sort().values


def round_toward_zero(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Oracle for RTZ conversion, by search over all values of dtype (independent of bit tricks):
    the representable value of largest magnitude not above |x|, with x's sign; NaN stays NaN,
    +-inf stays +-inf, finite values beyond the range give the largest finite value."""
    table = _finite_values(dtype).to(x.device)
    xd = x.double()
    mag = xd.abs()
    idx = torch.searchsorted(table, mag.nan_to_num(0.0, posinf=0.0).contiguous(), right=True) - 1
    out = table[idx.clamp(min=0)] * torch.where(torch.signbit(xd), -1.0, 1.0)
    out = torch.where(torch.isinf(xd), xd, out)
    out = torch.where(torch.isnan(xd), xd, out)
    return out.to(dtype)
