"""torch.library custom ops for forward and backward, with fake implementations and autograd.

Registering the ops makes torch.compile(fullgraph=True) trace through attention as one opaque node
per direction. Backend choice and environment flags are read inside the ops, at run time, so a
compiled graph honours flags set after compilation. The dropout RNG state (seed, offset) is drawn
from torch's default generator inside the forward op and returned as a CPU int64 tensor: the
backward regenerates the same mask from it, and torch.manual_seed reproduces a run.

Eager calls skip the custom-op machinery: `attention` runs the same forward and backward bodies
through a torch.autograd.Function, whose dispatch costs a few microseconds where a Python custom op
with autograd costs tens (per-call host time matters for decoding and small shapes). Under
torch.compile, `attention` calls the custom op, which the compiler can trace.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import registry
from .backends.args import AttnArgs
from .dispatch import flags as flagmod


def _args(softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p, seed, offset,
          cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k=None, leftpad_k=None,
          kv_batch_idx=None, block_table=None, num_splits=0, deterministic=False) -> AttnArgs:
    flags = flagmod.read()
    return AttnArgs(
        softmax_scale=softmax_scale, window_left=window_left, window_right=window_right,
        softcap=softcap, alibi_slopes=alibi_slopes, dropout_p=dropout_p, rng_seed=seed,
        rng_offset=offset, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, seqused_k=seqused_k,
        leftpad_k=leftpad_k, kv_batch_idx=kv_batch_idx, block_table=block_table,
        deterministic=(deterministic or flags.deterministic
                       or torch.are_deterministic_algorithms_enabled()),
        rtz=flags.rtz, performance=flags.performance, num_splits=num_splits), flags


def _lse_shape(q: Tensor, cu_seqlens_q: Optional[Tensor]) -> tuple:
    if cu_seqlens_q is not None:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


def _probs_shape(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, block_table) -> tuple:
    if cu_seqlens_q is not None:
        return (cu_seqlens_q.shape[0] - 1, q.shape[1], max_seqlen_q, max_seqlen_k)
    sk = block_table.shape[1] * k.shape[1] if block_table is not None else k.shape[1]
    return (q.shape[0], q.shape[2], q.shape[1], sk)


def forward_impl(q, k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k,
                 kv_batch_idx, block_table, max_seqlen_q, max_seqlen_k, softmax_scale, window_left,
                 window_right, softcap, dropout_p, return_probs, num_splits):
    """(out, lse, (seed, offset, dropout generator index), probs or None)."""
    seed = offset = 0
    if dropout_p > 0:
        seed, offset = torch.randint(0, 2**62, (2,), dtype=torch.int64).tolist()
    args, flags = _args(softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p,
                        seed, offset, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        seqused_k, leftpad_k, kv_batch_idx, block_table, num_splits)
    out = torch.empty_like(q)
    lse = torch.empty(_lse_shape(q, cu_seqlens_q), dtype=torch.float32, device=q.device)
    probs = None
    if return_probs:
        probs = torch.zeros(_probs_shape(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, block_table),
                            dtype=q.dtype, device=q.device)
    req = registry.request("fwd", q, k, args, return_probs, v=v)
    impl, choice = registry.choose(req, q.device, flags)
    impl.forward(q, k, v, args, out, lse, probs, arch=choice.target.sm)
    return out, lse, (seed, offset, registry.dropout_rng_index(choice) if dropout_p > 0 else 0), probs


def backward_impl(dout, q, k, v, out, lse, rng, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                  max_seqlen_q, max_seqlen_k, softmax_scale, window_left, window_right, softcap,
                  dropout_p, deterministic):
    """(dq, dk, dv); rng is the forward's (seed, offset, dropout generator index)."""
    args, flags = _args(softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p,
                        rng[0], rng[1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        deterministic=deterministic)
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dropout_rng = registry.dropout_rng_name(rng[2]) if dropout_p > 0 else ""
    req = registry.request("bwd", q, k, args, dropout_rng=dropout_rng, v=v, out=out, dout=dout)
    impl, choice = registry.choose(req, q.device, flags)
    impl.backward(dout, q, k, v, out, lse, args, dq, dk, dv, arch=choice.target.sm)
    return dq, dk, dv


@torch.library.custom_op("flash_attn::fwd", mutates_args=())
def fwd(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor],
        cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor], seqused_k: Optional[Tensor],
        leftpad_k: Optional[Tensor], kv_batch_idx: Optional[Tensor], block_table: Optional[Tensor],
        max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, window_left: int,
        window_right: int, softcap: float, dropout_p: float, return_probs: bool,
        num_splits: int, deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # deterministic is unused here; it is an input so that the backward can see it.
    out, lse, rng, probs = forward_impl(q, k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                        leftpad_k, kv_batch_idx, block_table, max_seqlen_q,
                                        max_seqlen_k, softmax_scale, window_left, window_right,
                                        softcap, dropout_p, return_probs, num_splits)
    rng_state = torch.tensor(rng, dtype=torch.int64)
    return out, lse, rng_state, probs if probs is not None else q.new_empty(0)


@fwd.register_fake
def _(q, k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, kv_batch_idx,
      block_table, max_seqlen_q, max_seqlen_k, softmax_scale, window_left, window_right, softcap,
      dropout_p, return_probs, num_splits, deterministic):
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q), dtype=torch.float32)
    probs = (q.new_empty(_probs_shape(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, block_table))
             if return_probs else q.new_empty(0))
    return torch.empty_like(q), lse, torch.empty(3, dtype=torch.int64), probs


@torch.library.custom_op("flash_attn::bwd", mutates_args=())
def bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, rng_state: Tensor,
        alibi_slopes: Optional[Tensor], cu_seqlens_q: Optional[Tensor],
        cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
        window_left: int, window_right: int, softcap: float, dropout_p: float,
        deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    return backward_impl(dout, q, k, v, out, lse, rng_state.tolist(), alibi_slopes, cu_seqlens_q,
                         cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, window_left,
                         window_right, softcap, dropout_p, deterministic)


@bwd.register_fake
def _(dout, q, k, v, out, lse, rng_state, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
      max_seqlen_k, softmax_scale, window_left, window_right, softcap, dropout_p, deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# fwd's inputs by name, in signature order (setup_context receives them positionally).
_FWD_INPUTS = ("q", "k", "v", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "seqused_k",
               "leftpad_k", "kv_batch_idx", "block_table", "max_seqlen_q", "max_seqlen_k",
               "softmax_scale", "window_left", "window_right", "softcap", "dropout_p",
               "return_probs", "num_splits", "deterministic")


def _setup_context(ctx, inputs, output):
    named = dict(zip(_FWD_INPUTS, inputs))
    out, lse, rng_state, _ = output
    ctx.save_for_backward(named["q"], named["k"], named["v"], out, lse, rng_state,
                          named["alibi_slopes"], named["cu_seqlens_q"], named["cu_seqlens_k"])
    ctx.scalars = {n: named[n] for n in ("max_seqlen_q", "max_seqlen_k", "softmax_scale",
                                         "window_left", "window_right", "softcap", "dropout_p")}
    ctx.deterministic = named["deterministic"]
    ctx.no_backward = _no_backward(*(named[n] for n in _KV_CACHE))


_KV_CACHE = ("seqused_k", "leftpad_k", "kv_batch_idx", "block_table")


def _no_backward(*kv_cache_inputs) -> Optional[str]:
    """Why a backward must be refused (attention over a KV cache), or None."""
    used = [n for n, t in zip(_KV_CACHE, kv_cache_inputs) if t is not None]
    return (f"attention over a KV cache ({', '.join(used)}) has no backward; "
            f"call it under torch.no_grad() or detach the inputs") if used else None


def _backward(ctx, dout, dlse, drng, dprobs):
    if ctx.no_backward:
        raise RuntimeError(f"flash_attn: {ctx.no_backward}.")
    q, k, v, out, lse, rng_state, alibi, cu_q, cu_k = ctx.saved_tensors
    s = ctx.scalars
    dq, dk, dv = bwd(dout, q, k, v, out, lse, rng_state, alibi, cu_q, cu_k, s["max_seqlen_q"],
                     s["max_seqlen_k"], s["softmax_scale"], s["window_left"], s["window_right"],
                     s["softcap"], s["dropout_p"], ctx.deterministic)
    return (dq, dk, dv) + (None,) * (len(_FWD_INPUTS) - 3)


fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The eager path: the custom ops' bodies without the custom-op dispatch. The ten tensor
    inputs come first; the scalars travel as one tuple (apply's cost grows with its arguments).
    forward and setup_context are apart, as torch.func.grad and vjp need (they run forward on the
    tensors underneath their wrappers); the dropout RNG state leaves forward as a fourth, non-tensor
    output for setup_context to keep."""

    @staticmethod
    def forward(q, k, v, alibi, cu_q, cu_k, seqused_k, leftpad_k, kv_batch_idx, block_table, scalars):
        max_q, max_k, scale, wl, wr, softcap, dropout_p, return_probs, num_splits, _ = scalars
        out, lse, rng, probs = forward_impl(q, k, v, alibi, cu_q, cu_k, seqused_k, leftpad_k,
                                            kv_batch_idx, block_table, max_q, max_k, scale, wl, wr,
                                            softcap, dropout_p, return_probs, num_splits)
        return out, lse, probs, rng

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, alibi, cu_q, cu_k, seqused_k, leftpad_k, kv_batch_idx, block_table, scalars = inputs
        out, lse, probs, rng = output
        ctx.save_for_backward(q, k, v, out, lse, alibi, cu_q, cu_k)
        ctx.rng = rng
        ctx.scalars = scalars[:7] + scalars[9:]  # without return_probs and num_splits
        ctx.no_backward = _no_backward(seqused_k, leftpad_k, kv_batch_idx, block_table)
        ctx.mark_non_differentiable(lse, *([probs] if probs is not None else []))
        # lse and probs get no gradient; materialising zeros for them cost a fill per call
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dout, dlse, dprobs, drng):
        if ctx.no_backward:
            raise RuntimeError(f"flash_attn: {ctx.no_backward}.")
        if dout is None:  # only lse or probs were used: nothing flows back
            return (None,) * 11
        tensors = (dout, *ctx.saved_tensors)
        if not torch._C._functorch.is_functorch_wrapped_tensor(tensors[1]):
            return backward_impl(*tensors[:6], ctx.rng, *tensors[6:], *ctx.scalars) + (None,) * 8
        # q was saved under a transform: the tensors underneath, with the transform's dispatch off
        # (tensors made inside, such as the gradients, would otherwise be wrapped too)
        tensors = _under_transform(tensors)
        with torch._C._DisableFuncTorch():
            return backward_impl(*tensors[:6], ctx.rng, *tensors[6:], *ctx.scalars) + (None,) * 8


def _under_transform(tensors: tuple) -> tuple:
    """After a forward under torch.func.grad or vjp the backward receives tensors wrapped for the
    transform's level; the kernels need the tensors underneath, and return gradients that cannot be
    differentiated again, so a second level (grad of grad) is refused rather than given zero second
    derivatives."""
    from torch._C import _functorch as F

    if F.maybe_current_level() not in (None, 1):
        raise NotImplementedError("flash_attn: nested torch.func transforms (grad of grad, jacrev, vmap) are not "
                                  "supported; use one torch.func.grad or vjp, or torch.autograd")
    out = []
    for t in tensors:
        while t is not None and F.is_functorch_wrapped_tensor(t):
            if not F.is_gradtrackingtensor(t):
                raise NotImplementedError("flash_attn: torch.func.vmap and jvp are not supported; use "
                                          "torch.func.grad or vjp, or torch.autograd")
            t = F.get_unwrapped(t)
        out.append(t)
    return tuple(out)


def c_apply(fn_cls):
    """fn_cls.apply without torch's Python wrapper around it, or None where torch lacks the C
    method. The wrapper binds a setup_context Function's arguments by signature and unwraps
    functorch wrappers (callers take the wrapper instead while a transform is active); skipping it
    saves microseconds per call (the fast path's node: about 3.5 of the 10 µs the autograd
    boundary costs, CPU, torch 2.13)."""
    apply = getattr(getattr(torch._C, "_FunctionBase", None), "__dict__", {}).get("apply")
    return apply.__get__(None, fn_cls) if apply is not None else None


_EAGER_APPLY = c_apply(_EagerAttention)


_RETURN_PROBS = _FWD_INPUTS.index("return_probs")


def attention(*inputs):
    """fwd's arguments, in order -> (out, lse, probs or None), differentiable in q, k, v."""
    if torch.compiler.is_compiling():
        out, lse, _, probs = fwd(*inputs)
        return out, lse, probs if inputs[_RETURN_PROBS] else None
    q, k, v = inputs[:3]
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        out, lse, _, probs = forward_impl(*inputs[:-1])  # inference: no graph to record
        return out, lse, probs
    if _EAGER_APPLY is None or torch._C._are_functorch_transforms_active():
        return _EagerAttention.apply(*inputs[:10], inputs[10:])[:3]
    return _EAGER_APPLY(*inputs[:10], inputs[10:])[:3]
