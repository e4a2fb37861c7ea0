"""FlashAttention-2's public API (v2.8), argument for argument.

Shapes: q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k, nheads_k, headdim); varlen
q (total_q, nheads, headdim) with int32 cu_seqlens_q of shape (batch + 1,). nheads must be a
multiple of nheads_k (MQA/GQA). Returns out shaped like q, or (out, softmax_lse, S_dmask) when
return_attn_probs is True; softmax_lse is fp32 (batch, nheads, seqlen_q), varlen (nheads, total_q).
S_dmask is returned only when dropout_p > 0, else None (as upstream): the probabilities, negated
where dropped.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _validate as V
from . import _values, fastpath, ops
from .kvcache import flash_attn_with_kvcache  # noqa: F401  (public API)


def _run(q, k, v, *, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
         deterministic, return_attn_probs, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
         max_seqlen_k=0, block_table=None):
    scale = V.scalars(dropout_p, softcap, softmax_scale, q.shape[-1])
    left, right = V.window(window_size, causal)
    batch = q.shape[0] if cu_seqlens_q is None else cu_seqlens_q.numel() - 1
    V.check_alibi(alibi_slopes, batch, q.shape[-2], q.device)
    with_probs = bool(return_attn_probs and dropout_p > 0)
    out, lse, probs = ops.attention(
        q, k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, None, None, None, block_table,
        max_seqlen_q, max_seqlen_k, scale, left, right, float(softcap), float(dropout_p),
        with_probs, 0, bool(deterministic))
    # Upstream returns S_dmask only with dropout (None otherwise: it is a dropout-testing aid).
    return (out, lse, probs if with_probs else None) if return_attn_probs else out


_DENSE_Q = "(batch, seqlen_q, nheads, headdim)"
_DENSE_KV = "(batch, seqlen_k, nheads_k, headdim)"


def _check_dense(q, k, v):
    V.check_qkv(q, k, v, _DENSE_Q, _DENSE_KV)
    V.check_batch("k", k, 0, q.shape[0], "q.shape[0] (batch)")


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """Attention over dense batches. See the module docstring for shapes and return values."""
    if not dropout_p and alibi_slopes is None and not return_attn_probs:
        out = fastpath.dense(q, k, v, softmax_scale, causal, window_size, softcap, deterministic,
                             lambda: _check_dense(q, k, v))
        if out is not None:
            return out
    _check_dense(q, k, v)
    return _run(q, k, v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                deterministic=deterministic, return_attn_probs=return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """qkv: (batch, seqlen, 3, nheads, headdim)."""
    V.check_rank("qkv", qkv, "(batch, seqlen, 3, nheads, headdim)")
    if qkv.shape[2] != 3:
        V.fail(f"qkv.shape[2] is {qkv.shape[2]}; it must be 3 (q, k, v stacked).")
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale,
                           causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """kv: (batch, seqlen_k, 2, nheads_k, headdim)."""
    V.check_rank("kv", kv, "(batch, seqlen_k, 2, nheads_k, headdim)")
    if kv.shape[2] != 2:
        V.fail(f"kv.shape[2] is {kv.shape[2]}; it must be 2 (k, v stacked).")
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """Packed variable-length sequences: q (total_q, nheads, headdim), k/v (total_k, nheads_k,
    headdim), or with block_table, paged k/v (num_blocks, page_block_size, nheads_k, headdim)."""
    def check():
        kv_doc = ("(num_blocks, page_block_size, nheads_k, headdim)" if block_table is not None
                  else "(total_k, nheads_k, headdim)")
        V.check_qkv(q, k, v, "(total_q, nheads, headdim)", kv_doc)
        batch = V.check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device, None)
        V.check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device, batch)
        if block_table is not None:
            V.check_int_tensor("block_table", block_table, (batch, None), q.device,
                               "(batch, max_num_blocks_per_seq)")
        return (V.check_max_seqlen("max_seqlen_q", max_seqlen_q),
                V.check_max_seqlen("max_seqlen_k", max_seqlen_k))

    checking = _values.enabled()
    if not dropout_p and alibi_slopes is None and not return_attn_probs and block_table is None and not checking:
        out = fastpath.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              softmax_scale, causal, window_size, softcap, deterministic, check)
        if out is not None:
            return out
    max_q, max_k = check()
    if checking:
        _values.check_varlen(q, k, cu_seqlens_q, cu_seqlens_k, max_q, max_k, block_table)
    return _run(q, k, v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                deterministic=deterministic, return_attn_probs=return_attn_probs,
                cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_q,
                max_seqlen_k=max_k, block_table=block_table)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv: (total, 3, nheads, headdim)."""
    V.check_rank("qkv", qkv, "(total, 3, nheads, headdim)")
    if qkv.shape[1] != 3:
        V.fail(f"qkv.shape[1] is {qkv.shape[1]}; it must be 3 (q, k, v stacked).")
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens,
                                  max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
                                  window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=0.0, softmax_scale=None, causal=False,
                                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                    deterministic=False, return_attn_probs=False):
    """kv: (total_k, 2, nheads_k, headdim)."""
    V.check_rank("kv", kv, "(total_k, 2, nheads_k, headdim)")
    if kv.shape[1] != 2:
        V.fail(f"kv.shape[1] is {kv.shape[1]}; it must be 2 (k, v stacked).")
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)
