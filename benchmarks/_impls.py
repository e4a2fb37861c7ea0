"""What is benchmarked: problem sizes in the FlashAttention convention, and the implementations.

Every implementation gets contiguous inputs in its own preferred layout (flash_attn: (b, s, h, d);
torch SDPA, FlexAttention and the naive one: (b, h, s, d)), so no one pays for a transpose.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import flash_attn

HIDDEN = 2048  # the convention: nheads = HIDDEN / headdim
# FLOPs of each direction relative to the forward's 4·b·h·s²·d (halved when causal).
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}
OURS = "flash_attn"
CONVENTION = ("nheads = 2048 / headdim; batch = tokens / seqlen (tokens = 16384 by convention); "
              "FLOPs: forward 4*b*h*s^2*d (halved when causal), backward 2.5x, forward+backward 3.5x")


@dataclass(frozen=True)
class Point:
    d: int
    causal: bool
    s: int
    b: int
    h: int
    device: str
    dtype: torch.dtype

    def flops(self, direction: str) -> float:
        fwd = 4 * self.b * self.h * self.s ** 2 * self.d
        return fwd * FLOP_FACTOR[direction] / (2 if self.causal else 1)

    def label(self) -> str:
        return f"d={self.d} causal={int(self.causal)} s={self.s} b={self.b} h={self.h}"

    def shape(self, layout: str) -> tuple:
        return (self.b, self.s, self.h, self.d) if layout == "bshd" else (self.b, self.h, self.s, self.d)


def convention_point(d: int, causal: bool, s: int, tokens: int, device: str, dtype) -> Point:
    """batch = tokens / seqlen (at least 1), nheads = HIDDEN / headdim."""
    return Point(d, causal, s, max(1, tokens // s), HIDDEN // d, device, dtype)


@dataclass(frozen=True)
class Impl:
    name: str
    layout: str                                   # "bshd" or "bhsd"
    build: Callable[[Point], Callable]            # point -> attention(q, k, v) -> out
    context: Callable = contextlib.nullcontext    # entered once around all of a point's calls


def _flash_attn_build(p: Point):
    return functools.partial(flash_attn.flash_attn_func, causal=p.causal)


def _sdpa(name: str, backend: str) -> Impl:
    def context():
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(getattr(SDPBackend, backend))

    def build(p: Point):
        return functools.partial(F.scaled_dot_product_attention, is_causal=p.causal)

    return Impl(name, "bhsd", build, context)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    # dynamic=False compiles one kernel per shape, as a fixed-shape training run would; a sweep
    # needs more shapes than dynamo's default recompile limit.
    torch._dynamo.config.recompile_limit = 1024
    return torch.compile(flex_attention, dynamic=False)


def _causal_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _flex_build(p: Point):
    from torch.nn.attention.flex_attention import create_block_mask
    mask = create_block_mask(_causal_mod, None, None, p.s, p.s, device=p.device) if p.causal else None
    flex = _compiled_flex()
    return lambda q, k, v: flex(q, k, v, block_mask=mask)


def _naive_build(p: Point):
    """softmax(Q·Kᵀ·scale)·V in the input dtype, the (s × s) scores materialized."""
    scale = p.d ** -0.5
    future = torch.ones(p.s, p.s, dtype=torch.bool, device=p.device).triu(1) if p.causal else None

    def naive(q, k, v):
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        if future is not None:
            scores = scores.masked_fill(future, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    return naive


IMPLS = {impl.name: impl for impl in (
    Impl(OURS, "bshd", _flash_attn_build),
    _sdpa("sdpa_flash", "FLASH_ATTENTION"),
    _sdpa("sdpa_cudnn", "CUDNN_ATTENTION"),
    _sdpa("sdpa_efficient", "EFFICIENT_ATTENTION"),
    _sdpa("sdpa_math", "MATH"),
    Impl("flex", "bhsd", _flex_build),
    Impl("naive", "bhsd", _naive_build),
)}
DEFAULT_PEERS = {
    "cpu": ("sdpa_math", "naive"),
    "cuda": ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex", "naive"),
}


def flash_attn_backends(p: Point) -> dict:
    """The backend flash_attn would choose for each direction at this point (never assumed)."""
    q, k, v = (torch.empty(p.shape("bshd"), device=p.device, dtype=p.dtype) for _ in range(3))
    why = flash_attn.explain(q, k, v, causal=p.causal)
    return {"fwd": why.backend("fwd"), "bwd": why.backend("bwd")}
