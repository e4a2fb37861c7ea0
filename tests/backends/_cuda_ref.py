"""Oracle and loader for the native CUDA backend tests.

attention() is plain O(s^2) attention, one sequence at a time, written independently of the
kernels: in float64 it is the truth, in the input dtype it is the baseline of the accuracy rule
(max|ours - truth| <= 2 * max|baseline - truth| + 1e-5; gradients 3x). The dropout keep mask comes
from flash_attn/backends/reference/rng.py, the specification the kernels must match bit for bit.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[2]


def _load(modname: str, path: Path):
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def load_modules():
    """(native, args, rng) modules. Through the flash_attn package when it imports; else by file
    path, so these tests do not depend on the rest of the package being importable."""
    try:
        from flash_attn.backends import args, native
        from flash_attn.backends.reference import rng
        return native, args, rng
    except Exception:  # the package is work in progress elsewhere: load our three files alone
        pkg = types.ModuleType("_fa_native_pkg")
        pkg.__path__ = [str(REPO / "flash_attn" / "backends")]
        sys.modules["_fa_native_pkg"] = pkg
        args = _load("_fa_native_pkg.args", REPO / "flash_attn/backends/args.py")
        native = _load("_fa_native_pkg.native", REPO / "flash_attn/backends/native.py")
        rng = _load("_fa_native_rng", REPO / "flash_attn/backends/reference/rng.py")
        return native, args, rng


def _lengths(cu: Optional[torch.Tensor], batch: int, fixed: int) -> list[int]:
    if cu is None:
        return [fixed] * batch
    c = cu.tolist()
    return [c[i + 1] - c[i] for i in range(batch)]


def attention(q, k, v, *, scale: float, window=(-1, -1), softcap=0.0, alibi=None, dropout_p=0.0,
              seed=0, offset=0, cu_q=None, cu_k=None, max_q=0, seqused_k=None, rng=None,
              dtype=torch.float64):
    """Returns (out, lse) in the kernels' layouts: out like q; lse (b, h, sq) padded with +inf past
    each sequence, or (h, total_q) when cu_q is given. Differentiable in q, k, v.

    q: (b, sq, h, d) or (total_q, h, d) with cu_q; k, v: (b, sk, hk, d) or (total_k, hk, d)."""
    varlen = cu_q is not None
    batch = cu_q.numel() - 1 if varlen else q.shape[0]
    h, hk = q.shape[-2], k.shape[-2]
    lq = _lengths(cu_q, batch, q.shape[1] if not varlen else 0)
    lk = _lengths(cu_k, batch, k.shape[1] if cu_k is None else 0)
    if seqused_k is not None:
        lk = seqused_k.tolist()
    cq = cu_q.tolist() if varlen else None
    ck = cu_k.tolist() if cu_k is not None else None
    outs, lses = [], []
    for b in range(batch):
        qb = q[cq[b]:cq[b + 1]] if varlen else q[b]
        kb = k[ck[b]:ck[b] + lk[b]] if ck is not None else k[b, :lk[b]]
        vb = v[ck[b]:ck[b] + lk[b]] if ck is not None else v[b, :lk[b]]
        o, l = _one(qb, kb, vb, h // hk, scale, window, softcap, alibi, b, dropout_p, seed, offset,
                    b * h, rng, dtype)
        outs.append(o)
        lses.append(l)
    if varlen:
        return torch.cat(outs, 0), torch.cat(lses, 1)
    return torch.stack(outs, 0), torch.stack(lses, 0)


def _one(q, k, v, group, scale, window, softcap, alibi, b, dropout_p, seed, offset, bh0, rng, dtype):
    """One sequence: q (sq, h, d), k/v (sk, hk, d) -> out (sq, h, d), lse (h, sq)."""
    sq, h, _ = q.shape
    sk = k.shape[0]
    qf = q.to(dtype).transpose(0, 1)
    kf = k.to(dtype).transpose(0, 1).repeat_interleave(group, 0)
    vf = v.to(dtype).transpose(0, 1).repeat_interleave(group, 0)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (h, sq, sk)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device).view(-1, 1)
    j = torch.arange(sk, device=q.device).view(1, -1)
    diag = i + sk - sq
    if alibi is not None:
        slopes = (alibi[b] if alibi.dim() == 2 else alibi).to(dtype).view(h, 1, 1)
        s = s - slopes * (diag - j).abs().to(dtype)
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if window[1] >= 0:
        visible &= j <= diag + window[1]
    if window[0] >= 0:
        visible &= j >= diag - window[0]
    s = s.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1).view(1, sq, 1)
    p = torch.softmax(s, dim=-1).masked_fill(~any_visible, 0.0)
    lse = torch.logsumexp(s.float() if dtype != torch.float64 else s, dim=-1)
    lse = torch.where(any_visible.view(1, sq), lse, torch.full_like(lse, float("inf")))
    if dropout_p > 0:
        bh = torch.arange(bh0, bh0 + h, device=q.device)
        keep = rng.keep_mask(seed, offset, bh, torch.arange(sq, device=q.device),
                             torch.arange(sk, device=q.device), dropout_p)
        p = p * keep.to(dtype) / (1.0 - dropout_p)
    out = torch.matmul(p.to(vf.dtype), vf)  # (h, sq, d)
    return out.transpose(0, 1).to(q.dtype if dtype != torch.float64 else dtype), lse.float()


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| over finite reference entries; infinite entries must match exactly."""
    x, ref = x.double(), ref.double()
    inf = torch.isinf(ref)
    if inf.any() and not torch.equal(x[inf], ref[inf]):
        return float("inf")
    if x.numel() == 0 or bool(inf.all()):
        return 0.0
    return (x[~inf] - ref[~inf]).abs().max().item()
