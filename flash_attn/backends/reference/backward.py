"""Reference backward: recomputes each score tile from the saved LSE, O(seqlen) memory.

dS = P * (dP - D) with D = rowsum(dO * O) (FlashAttention-2's preprocess), where dropout scales
both P (for dV) and dP by keep / (1 - p). The loop order is fixed, so results are deterministic.
"""
from __future__ import annotations

import torch

from ..args import AttnArgs
from . import layout, scores, tiling
from .rounding import to_dtype


def _round(x: torch.Tensor, dtype: torch.dtype, args: AttnArgs) -> torch.Tensor:
    """Performance mode rounds P and dS to the input dtype before their products."""
    return to_dtype(x, dtype, args.rtz).float() if args.performance else x


def backward(dout, q, k, v, out, lse, args: AttnArgs, dq, dk, dv) -> None:
    bt = layout.gather(q, k, v, args)
    b, sq, h, d = bt.q.shape
    sk, hk = bt.k.shape[1], bt.k.shape[2]
    if bt.q_rows is None:
        do_pad, o_pad, lse_pad = dout, out, lse
    else:
        # Slots past a sequence's length hold another sequence's rows (the gather clamps): zero
        # their dO so that they add nothing to dK and dV (their dQ is dropped on the way out).
        past_end = torch.arange(sq, device=q.device)[None, :] >= bt.len_q[:, None]
        do_pad = dout[bt.q_rows].masked_fill(past_end[:, :, None, None], 0)
        o_pad = out[bt.q_rows]
        lse_pad = lse.t()[bt.q_rows].transpose(1, 2)  # (b, h, sq)
    delta = (do_pad.float() * o_pad.float()).sum(-1).transpose(1, 2)  # (b, h, sq)
    dq_pad = torch.zeros(b, h, sq, d, device=q.device)
    dk_acc = torch.zeros(b, h, sk, d, device=q.device)
    dv_acc = torch.zeros(b, h, sk, d, device=q.device)
    bq, bk = tiling.blocks(b, h, sq, sk)
    uniform = bt.len_q is None
    keep_scale = 1.0 / (1.0 - args.dropout_p) if args.dropout_p > 0 else 1.0
    for i0 in range(0, sq, bq):
        i1 = min(sq, i0 + bq)
        qt = bt.q[:, i0:i1].transpose(1, 2).float()
        dot = do_pad[:, i0:i1].transpose(1, 2).float()
        lse_t = lse_pad[:, :, i0:i1].unsqueeze(-1)
        delta_t = delta[:, :, i0:i1].unsqueeze(-1)
        for j0 in range(0, sk, bk):
            j1 = min(sk, j0 + bk)
            if tiling.tile_is_masked(i0, i1, j0, j1, sq, sk, args, uniform):
                continue
            kt = scores.expand_kv(bt.k[:, j0:j1].transpose(1, 2).float(), h)
            vt = scores.expand_kv(bt.v[:, j0:j1].transpose(1, 2).float(), h)
            tile = scores.compute(qt, kt, i0, j0, args, bt.len_q, bt.len_k, sq, sk, h, want_keep=True)
            p = torch.exp(tile.scores - lse_t)
            dp = torch.matmul(dot, vt.transpose(-1, -2))
            if tile.keep is not None:
                p_used = torch.where(tile.keep, p * keep_scale, torch.zeros_like(p))
                dp = torch.where(tile.keep, dp * keep_scale, torch.zeros_like(dp))
            else:
                p_used = p
            dv_acc[:, :, j0:j1] += torch.matmul(_round(p_used, q.dtype, args).transpose(-1, -2), dot)
            ds = p * (dp - delta_t)
            if tile.tanh is not None:
                ds = ds * (1 - tile.tanh * tile.tanh)
            ds = _round(ds, q.dtype, args) * args.softmax_scale
            dq_pad[:, :, i0:i1] += torch.matmul(ds, kt)
            dk_acc[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2), qt)
    _write_grads(q, k, args, bt, dq_pad, scores.reduce_kv(dk_acc, hk), scores.reduce_kv(dv_acc, hk),
                 dq, dk, dv)


def _write_grads(q, k, args, bt, dq_pad, dk_pad, dv_pad, dq, dk, dv) -> None:
    dq_b = to_dtype(dq_pad, q.dtype, args.rtz).transpose(1, 2)
    dk_b = to_dtype(dk_pad, k.dtype, args.rtz).transpose(1, 2)
    dv_b = to_dtype(dv_pad, k.dtype, args.rtz).transpose(1, 2)
    if bt.q_rows is None:
        dq.copy_(dq_b)
    else:
        dq.copy_(layout.scatter_rows(dq_b, bt.q_rows, bt.len_q, q.shape[0]))
    if bt.kv_rows is None:
        dk.copy_(dk_b)
        dv.copy_(dv_b)
    else:
        dk.copy_(layout.scatter_rows(dk_b, bt.kv_rows, bt.len_k, k.shape[0]))
        dv.copy_(layout.scatter_rows(dv_b, bt.kv_rows, bt.len_k, k.shape[0]))
