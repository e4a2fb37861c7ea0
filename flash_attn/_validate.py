"""Argument checks for the public API, run once per call before anything reaches a backend.

Every error names the argument, the value it had, the limit, and what to do instead. Checks read
only shapes, dtypes, strides and devices, never tensor values, so nothing synchronises with a GPU
(FLASH_ATTENTION_CHECK_VALUES adds the value checks of _values.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

MAX_HEAD_DIM = 256
HALF_DTYPES = (torch.float16, torch.bfloat16)


def fail(msg: str):
    raise ValueError(msg)


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in HALF_DTYPES:
        fail(f"{name} has dtype {t.dtype}; flash_attn supports torch.float16 and torch.bfloat16. "
             f"Convert it, e.g. {name}.to(torch.bfloat16).")


def check_rank(name: str, t: torch.Tensor, shape_doc: str) -> None:
    if t.dim() != shape_doc.count(",") + 1:
        fail(f"{name} must have shape {shape_doc}, got {tuple(t.shape)} ({t.dim()}-D).")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        fail(f"{name}.stride(-1) is {t.stride(-1)}; the head dimension must be contiguous. "
             f"Pass {name}.contiguous().")


def check_head_dim(name: str, d: int) -> None:
    if d > MAX_HEAD_DIM or d < 1:
        fail(f"head dim {d} ({name}.shape[-1]) is outside 1..{MAX_HEAD_DIM}; split the heads "
             f"into more heads of at most {MAX_HEAD_DIM}.")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        fail(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; all must match.")
    if t.device != ref.device:
        fail(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device.")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_doc: str, kv_doc: str) -> None:
    """q: (..., nheads, d); k, v: (..., nheads_k, d); leading dims checked by the caller."""
    check_dtype("q", q)
    check_rank("q", q, q_doc)
    for name, t in (("k", k), ("v", v)):
        check_same(name, t, "q", q)
        check_rank(name, t, kv_doc)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    check_head_dim("q", q.shape[-1])
    if k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        fail(f"head dims differ: q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]}; they must be "
             f"equal.")
    if k.shape != v.shape:
        fail(f"k has shape {tuple(k.shape)} but v has {tuple(v.shape)}; they must be equal.")
    nheads, nheads_k = q.shape[-2], k.shape[-2]
    if nheads_k < 1 or nheads % nheads_k:
        fail(f"nheads {nheads} (q.shape[-2]) is not divisible by nheads_k {nheads_k} "
             f"(k.shape[-2]); MQA/GQA needs every key head to serve the same number of query heads.")


def check_batch(name: str, t: torch.Tensor, dim: int, batch: int, what: str) -> None:
    if t.shape[dim] != batch:
        fail(f"{name}.shape[{dim}] is {t.shape[dim]} but {what} is {batch}; they must be equal.")


def check_cu_seqlens(name: str, cu: torch.Tensor, device: torch.device, batch: Optional[int]) -> int:
    if not isinstance(cu, torch.Tensor):
        fail(f"{name} must be an int32 tensor of shape (batch + 1,), got {type(cu).__name__}.")
    if cu.dtype != torch.int32:
        fail(f"{name} has dtype {cu.dtype}; it must be torch.int32. Convert with "
             f"{name}.to(torch.int32).")
    if cu.dim() != 1 or cu.numel() < 2:
        fail(f"{name} must have shape (batch + 1,) with batch >= 1, got {tuple(cu.shape)}.")
    if cu.device != device:
        fail(f"{name} is on {cu.device} but q is on {device}; move it to q's device.")
    if batch is not None and cu.numel() != batch + 1:
        fail(f"{name} has {cu.numel()} entries but cu_seqlens_q has {batch + 1}; both must be "
             f"(batch + 1,).")
    return cu.numel() - 1


def check_int_tensor(name: str, t, shape: Sequence[Optional[int]], device, doc: str) -> None:
    """shape: expected sizes, None where any size is allowed; doc: the shape as users read it."""
    if not isinstance(t, torch.Tensor):
        fail(f"{name} must be an int32 tensor of shape {doc}, got {type(t).__name__}.")
    if t.dtype != torch.int32:
        fail(f"{name} has dtype {t.dtype}; it must be torch.int32. Convert with {name}.to(torch.int32).")
    if t.dim() != len(shape) or any(s is not None and t.shape[i] != s for i, s in enumerate(shape)):
        fail(f"{name} must have shape {doc}, got {tuple(t.shape)}.")
    if t.device != device:
        fail(f"{name} is on {t.device} but q is on {device}; move it to q's device.")


def check_max_seqlen(name: str, value) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(f"{name} must be a non-negative int, got {value!r}.")
    return value


def window(window_size, causal: bool) -> tuple[int, int]:
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        fail(f"window_size must be a pair (left, right) of ints, got {window_size!r}.")
    if left < -1 or right < -1:
        fail(f"window_size {window_size!r} has a value below -1; use -1 for unbounded.")
    if causal:
        right = 0  # causal is a window with no keys to the right of the diagonal
    return left, right


def scalars(dropout_p: float, softcap: float, softmax_scale, head_dim: int) -> float:
    if not 0.0 <= dropout_p < 1.0:
        fail(f"dropout_p is {dropout_p}; it must be in [0, 1).")
    if softcap < 0 or math.isnan(softcap):
        fail(f"softcap is {softcap}; it must be >= 0 (0 turns it off).")
    if softmax_scale is None:
        return head_dim ** -0.5
    if not math.isfinite(softmax_scale):
        fail(f"softmax_scale is {softmax_scale}; it must be finite.")
    return float(softmax_scale)


def check_alibi(slopes: Optional[torch.Tensor], batch: int, nheads: int, device) -> None:
    if slopes is None:
        return
    if slopes.dtype != torch.float32:
        fail(f"alibi_slopes has dtype {slopes.dtype}; it must be torch.float32.")
    if tuple(slopes.shape) not in ((nheads,), (batch, nheads)):
        fail(f"alibi_slopes must have shape ({nheads},) or ({batch}, {nheads}) (nheads or "
             f"batch x nheads), got {tuple(slopes.shape)}.")
    if slopes.device != device:
        fail(f"alibi_slopes is on {slopes.device} but q is on {device}; move it to q's device.")
