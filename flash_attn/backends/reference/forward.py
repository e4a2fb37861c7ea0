"""Reference forward: online softmax over key tiles, O(seqlen) memory, fp32 accumulation."""
from __future__ import annotations

from typing import Optional

import torch

from ..args import AttnArgs
from . import layout, scores, tiling
from .rounding import to_dtype


def _probs_operand(p: torch.Tensor, dtype: torch.dtype, args: AttnArgs) -> torch.Tensor:
    """Performance mode rounds P to the input dtype before P.V, as tensor-core kernels do."""
    return to_dtype(p, dtype, args.rtz).float() if args.performance else p


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttnArgs, out: torch.Tensor,
            lse: torch.Tensor, probs: Optional[torch.Tensor] = None) -> None:
    """Writes out (q's layout, q's dtype) and lse (fp32, (b, h, sq) or (h, total_q) in varlen).

    probs, when given, is (b, h, sq, sk) and receives the attention probabilities with dropped
    entries negated (FlashAttention-2's S_dmask); it is the only O(seqlen^2) buffer and only exists
    when the caller asks for it.
    """
    bt = layout.gather(q, k, v, args)
    b, sq, h, d = bt.q.shape
    sk = bt.k.shape[1]
    o_pad = torch.zeros(b, h, sq, d, dtype=torch.float32, device=q.device)
    lse_pad = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    bq, bk = tiling.blocks(b, h, sq, sk)
    uniform = bt.len_q is None
    inv_keep = 1.0 / (1.0 - args.dropout_p) if args.dropout_p > 0 else 1.0
    for i0 in range(0, sq, bq):
        i1 = min(sq, i0 + bq)
        qt = bt.q[:, i0:i1].transpose(1, 2).float()
        m = torch.full((b, h, i1 - i0, 1), float("-inf"), device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(b, h, i1 - i0, d, device=q.device)
        for j0 in range(0, sk, bk):
            j1 = min(sk, j0 + bk)
            if tiling.tile_is_masked(i0, i1, j0, j1, sq, sk, args, uniform):
                continue
            kt = scores.expand_kv(bt.k[:, j0:j1].transpose(1, 2).float(), h)
            vt = scores.expand_kv(bt.v[:, j0:j1].transpose(1, 2).float(), h)
            tile = scores.compute(qt, kt, i0, j0, args, bt.len_q, bt.len_k, sq, sk, h, want_keep=True)
            m_new = torch.maximum(m, tile.scores.amax(-1, keepdim=True))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(tile.scores - m_safe)
            alpha = torch.exp(m - m_safe)
            l = l * alpha + p.sum(-1, keepdim=True)
            if tile.keep is not None:
                p = torch.where(tile.keep, p * inv_keep, torch.zeros_like(p))
            acc = acc * alpha + torch.matmul(_probs_operand(p, q.dtype, args), vt)
            m = m_new
        empty = l == 0
        o_pad[:, :, i0:i1] = torch.where(empty, torch.zeros_like(acc), acc / torch.where(empty, 1.0, l))
        lse_pad[:, :, i0:i1] = torch.where(empty, float("inf"), m + torch.log(l)).squeeze(-1)
    _write_outputs(q, args, bt, o_pad, lse_pad, out, lse)
    if probs is not None:
        _write_probs(bt, args, lse_pad, probs)


def _write_outputs(q, args, bt, o_pad, lse_pad, out, lse) -> None:
    o = to_dtype(o_pad, q.dtype, args.rtz).transpose(1, 2)  # (b, sq, h, d)
    if bt.q_rows is None:
        out.copy_(o)
        lse.copy_(lse_pad)
        return
    total = q.shape[0]
    out.copy_(layout.scatter_rows(o, bt.q_rows, bt.len_q, total))
    lse.copy_(layout.scatter_rows(lse_pad.transpose(1, 2), bt.q_rows, bt.len_q, total).t())


def _write_probs(bt: layout.Batch, args: AttnArgs, lse_pad: torch.Tensor, probs: torch.Tensor) -> None:
    b, sq, h, _ = bt.q.shape
    sk = bt.k.shape[1]
    _, bk = tiling.blocks(b, h, sq, sk)
    qt = bt.q.transpose(1, 2).float()
    for j0 in range(0, sk, bk):
        j1 = min(sk, j0 + bk)
        kt = scores.expand_kv(bt.k[:, j0:j1].transpose(1, 2).float(), h)
        tile = scores.compute(qt, kt, 0, j0, args, bt.len_q, bt.len_k, sq, sk, h, want_keep=True)
        p = torch.exp(tile.scores - lse_pad.unsqueeze(-1))
        if tile.keep is not None:
            p = torch.where(tile.keep, p, -p)
        probs[:, :, :, j0:j1] = p.to(probs.dtype)
