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


def assert_close_rule(out, truth, baseline, factor=2.0, what="out"):
    err = max_err(out, truth)
    base = max_err(baseline, truth)
    assert not torch.isnan(out).any(), f"{what} has NaN"
    assert err <= factor * base + 1e-5, (
        f"{what}: max error {err:.3e} exceeds {factor} x baseline error {base:.3e} + 1e-5")


def randn(*shape, dtype, device="cpu", requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)
