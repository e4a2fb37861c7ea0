"""Backend name -> implementation, and the glue that turns a call into a dispatcher Request.

Native backends get tensors whose head dim is a multiple of 8 (16-byte rows): other head dims are
zero-padded here, as FlashAttention-2 does, which leaves scores and outputs unchanged.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import dispatch
from ..dispatch import flags as flagmod
from ..dispatch import select as selmod
from . import reference
from .args import AttnArgs

NATIVE_LIBRARY = {"cuda_sm80": "cuda", "rocm_ck": "rocm"}


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple:
    """(library or None, why it could not be loaded or None). Imported lazily: a CPU-only install
    never touches ctypes. A library that exists but cannot load (built for another libstdc++, ABI
    version mismatch) is reported through the dispatcher's reasons instead of failing every call."""
    try:
        from . import native
    except ImportError:
        return None, None
    try:
        return native.load(name), None
    except (OSError, RuntimeError) as e:
        return None, f"{native.library_path(name)} could not be loaded ({e}); rebuild it on this machine (pip install .)"


def native_library(name: str):
    """The loaded native library, or None when it was not built or cannot load."""
    return _load(name)[0]


def _library_info(name: str) -> Optional[dict]:
    lib, error = _load(name)
    if error is not None:
        return {"load_error": error}
    return None if lib is None else lib.build_info


selmod.library_info = _library_info


def _pad8(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if x is None or x.shape[-1] % 8 == 0:
        return x
    return F.pad(x, (0, 8 - x.shape[-1] % 8))


class NativeBackend:
    def __init__(self, library: str):
        self.library = library

    def forward(self, q, k, v, args: AttnArgs, out, lse, probs=None, arch: int = 0) -> None:
        lib = native_library(self.library)
        d = q.shape[-1]
        if d % 8 == 0:
            lib.forward(q, k, v, args, out, lse, arch=arch)
            return
        out_p = torch.empty(*q.shape[:-1], q.shape[-1] + 8 - d % 8, dtype=q.dtype, device=q.device)
        lib.forward(_pad8(q), _pad8(k), _pad8(v), args, out_p, lse, arch=arch)
        out.copy_(out_p[..., :d])

    def backward(self, dout, q, k, v, out, lse, args, dq, dk, dv, arch: int = 0) -> None:
        lib = native_library(self.library)
        d = q.shape[-1]
        if d % 8 == 0:
            lib.backward(dout, q, k, v, out, lse, args, dq, dk, dv, arch=arch)
            return
        grads = [torch.empty_like(_pad8(t)) for t in (q, k, v)]
        lib.backward(_pad8(dout), _pad8(q), _pad8(k), _pad8(v), _pad8(out), lse, args, *grads, arch=arch)
        for g, g_p in zip((dq, dk, dv), grads):
            g.copy_(g_p[..., :d])


class ReferenceBackend:
    def forward(self, q, k, v, args, out, lse, probs=None, arch: int = 0) -> None:
        reference.forward(q, k, v, args, out, lse, probs)

    def backward(self, dout, q, k, v, out, lse, args, dq, dk, dv, arch: int = 0) -> None:
        reference.backward(dout, q, k, v, out, lse, args, dq, dk, dv)


IMPLEMENTATIONS = {"reference": ReferenceBackend(), **{n: NativeBackend(l) for n, l in NATIVE_LIBRARY.items()}}


_FEATURE_NAMES = ("causal", "window", "alibi", "softcap", "dropout", "return_probs", "varlen", "gqa", "seqused_k",
                  "leftpad", "kv_batch_idx", "paged_kv", "rtz", "performance", "deterministic")


@functools.lru_cache(maxsize=None)
def _feature_set(on: tuple) -> frozenset:
    return frozenset(n for n, flag in zip(_FEATURE_NAMES, on) if flag)


def features(args: AttnArgs, nheads: int, nheads_k: int, direction: str, return_probs: bool) -> frozenset:
    causal = args.is_causal
    return _feature_set((
        causal, not causal and (args.window_left >= 0 or args.window_right >= 0),
        args.alibi_slopes is not None, args.softcap > 0, args.dropout_p > 0, return_probs,
        args.is_varlen, nheads_k != nheads, args.seqused_k is not None,
        args.leftpad_k is not None, args.kv_batch_idx is not None, args.is_paged, args.rtz,
        args.performance, args.deterministic and direction == "bwd"))


def _layout_problems(tensors: dict) -> tuple:
    """Code checks a native kernel needs: 16-byte aligned base pointers and row strides."""
    problems = []
    for name, t in tensors.items():
        if t is None or t.shape[-1] % 8:
            continue  # head dims not a multiple of 8 are padded (copied) before a native call
        strides = t.stride()
        if t.data_ptr() % 16:
            problems.append(f"{name} data pointer is not 16-byte aligned")
        # the gcd of the outer strides is a multiple of 8 iff each of them is (one C call)
        if math.gcd(*strides[:-1]) % 8:
            problems.append(f"{name} strides {tuple(strides)} are not multiples of 8 elements")
    return tuple(problems)


_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def request(direction: str, q, k, args: AttnArgs, return_probs: bool = False, dropout_rng: str = "",
            **tensors) -> dispatch.Request:
    dtype = _DTYPE_NAMES.get(q.dtype) or str(q.dtype).replace("torch.", "")
    return _request(direction, dtype, q.shape[-1],
                    features(args, q.shape[-2], k.shape[-2], direction, return_probs),
                    _layout_problems({"q": q, "k": k, **tensors}), dropout_rng,
                    k.shape[1] if args.is_paged else 0)


@functools.lru_cache(maxsize=1024)
def _request(*fields) -> dispatch.Request:
    # One Request object per distinct call kind: building a frozen dataclass costs microseconds,
    # and _select's cache hashes an identical object faster.
    return dispatch.Request(*fields)


def dropout_rng_index(choice: dispatch.Choice) -> int:
    """Which dropout generator the chosen forward backend draws masks with (an index that fits
    the forward's int64 RNG state tensor; dropout_rng_name maps it back for the backward)."""
    rng = dispatch.capabilities.rows(choice.backend, "fwd").dropout_rng
    return dispatch.capabilities.DROPOUT_RNGS.index(rng)


def dropout_rng_name(index: int) -> str:
    return dispatch.capabilities.DROPOUT_RNGS[index]


@functools.lru_cache(maxsize=1024)
def _select(req: dispatch.Request, target: dispatch.Target, flags: flagmod.Flags) -> dispatch.Choice:
    # A call's verdict depends only on these three hashable values (libraries load once), so
    # repeated calls of the same kind skip re-deriving every reason.
    return selmod.select(req, target, flags)


def choose(req: dispatch.Request, device: torch.device, flags: flagmod.Flags):
    target = dispatch.detect(device, flags.arch_override)
    choice = _select(req, target, flags)
    selmod.warn_if_fallback(choice)
    return IMPLEMENTATIONS[choice.backend], choice
