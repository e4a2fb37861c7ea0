"""The per-signature fast path of eager calls without dropout, ALiBi, a block table or returned
probabilities: flash_attn_func, flash_attn_varlen_func and their packed variants.

Host time matters for decoding and small shapes, and the general path spends tens of
microseconds per call re-deriving what a call's signature (shapes, strides, dtypes, devices,
scalars, flags) already determines: the argument checks, the backend choice and the params
struct. The first call of a signature runs the general path's checks and choice and keeps the
outcome as a plan; later calls pay a dict lookup, the output allocations and the library call.
A varlen signature leaves out the max sequence lengths, which change from call to call and are
written into the struct with the pointers; its forward and backward ask the library for their
workspace per call (it follows the max lengths).
Whatever a plan does not cover (a backend other than a native library, a head dim that needs
padding, a misaligned pointer, a dout laid out unlike out, flags changed between forward and
backward) takes the general path, which is unchanged. Plans are per thread, since a plan's
params struct is rewritten by each call; a plan's backward runs on the autograd engine's thread
for the device, one at a time, with a struct of its own.
Where the C++ module of csrc_torch/ is built for the running torch (backends/autograd_node.py),
dense and varlen calls go through it instead: it keeps a C++ twin of each plan in a per-thread
cache keyed in C++, serves known calls without the Python key, and records them with a C++
autograd node; this module still plans each new signature (and runs its checks) and registers
the plan.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

import torch

from . import _validate as V
from . import ops
from .backends import autograd_node, native, registry
from .dispatch import flags as flagmod

_MAX_PLANS = 512
_local = threading.local()
_SCALAR_TYPES = (float, int, type(None))
_DENSE = (None, None, 0, 0)  # a dense call's (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


class _Plan:
    def __init__(self, mask, device, fwd, fwd_ws_bytes, lse_shape, bwd, ws_bytes, bwd_state, general_args):
        self.mask, self.device, self.fwd, self.lse_shape = mask, device, fwd, lse_shape
        self.fwd_ws_bytes = fwd_ws_bytes  # a split-KV forward's partial results; None: ask per call (varlen)
        self.bwd, self.ws_bytes, self.bwd_state = bwd, ws_bytes, bwd_state  # ws_bytes None: ask per call (varlen)
        self.general_args = general_args  # backward_impl's scalars, for the general path
        self.lse_sink = None
        self.node = None  # the C++ module's plan (autograd_node.py), where it is built

    def forward(self, q, k, v, seq, lse=None):
        """(out, lse). seq: None, or varlen's (cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k); lse: where the kernel writes it, a new tensor when None."""
        if native.elsewhere(self.device):
            with torch.cuda.device(self.device):
                return self.forward(q, k, v, seq, lse)
        out = torch.empty_like(q)
        if lse is None:
            lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
        ptrs = [native._stream(self.device), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
                0]
        if seq is not None:
            ptrs += [seq[2], seq[3], seq[0].data_ptr(), seq[1].data_ptr()]
        self._call(self.fwd, self.fwd_ws_bytes, ptrs, 6)
        return out, lse

    def _call(self, call, nbytes, ptrs, at):
        """Runs a packed call with its scratch, whose pointer goes to ptrs[at]: nbytes, or where
        that is None (a varlen signature) what the library asks for with these per-call fields."""
        if nbytes is None:
            nbytes = call.workspace_size(*ptrs)
        ws = torch.empty(nbytes, dtype=torch.uint8, device=self.device) if nbytes else None
        ptrs[at] = 0 if ws is None else ws.data_ptr()
        call(*ptrs)

    def infer(self, q, k, v, seq):
        """out of a call without autograd. Nothing reads its lse, so the kernels write it into one
        buffer the plan keeps (concurrent calls may overwrite each other's: no one reads it): one
        allocation less per call, 3.4 µs of host time on the H100 machine (run ah)."""
        if self.lse_sink is None:
            self.lse_sink = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
        return self.forward(q, k, v, seq, self.lse_sink)[0]

    def backward(self, dout, q, k, v, out, lse, seq):
        if (self.bwd is None or dout.stride() != out.stride() or dout.data_ptr() & self.mask
                or _bwd_state() != self.bwd_state):
            return ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, *(seq or _DENSE),
                                     *self.general_args)
        if native.elsewhere(self.device):  # autograd runs it on the device's thread; a direct call may not
            with torch.cuda.device(self.device):
                return self.backward(dout, q, k, v, out, lse, seq)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ptrs = [native._stream(self.device), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                dout.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), 0]
        if seq is not None:
            ptrs += [seq[2], seq[3], seq[0].data_ptr(), seq[1].data_ptr()]
        self._call(self.bwd, self.ws_bytes, ptrs, 10)
        return dq, dk, dv


class _PlannedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, seq):
        out, lse = plan.forward(q, k, v, seq)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.seq = plan, seq
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ctx.plan.backward(dout, q, k, v, out, lse, ctx.seq), None, None)


_APPLY = ops.c_apply(_PlannedAttention)


def _bwd_state() -> tuple:
    """What the backend choice of a backward reads besides the signature."""
    return flagmod.read(), torch.are_deterministic_algorithms_enabled()


def dense(q, k, v, softmax_scale, causal, window_size, softcap, deterministic, check) -> Optional[torch.Tensor]:
    """out, or None when the call must take the general path. check(): the caller's argument
    checks, run when a signature is first seen (they raise as the general path would)."""
    cpp = autograd_node.serving()
    if cpp is None:
        return _run(q, k, v, None, (), softmax_scale, causal, window_size, softcap, deterministic, check)
    # The C++ module keeps this thread's planned calls too: a known call costs one C++ call.
    out = cpp.run(q, k, v, softmax_scale, causal, window_size, softcap, deterministic)
    if out is None:  # a signature its cache has not seen: plan it here (checks included), once
        plan, _ = _plan(q, k, v, None, (), softmax_scale, causal, window_size, softcap, deterministic, check)
        cpp.register_call(q, k, v, softmax_scale, causal, window_size, softcap, deterministic,
                          plan.node if plan else None)
        out = cpp.run(q, k, v, softmax_scale, causal, window_size, softcap, deterministic)
    return None if out is None or out is False else out


def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
           window_size, softcap, deterministic, check) -> Optional[torch.Tensor]:
    """As dense, for flash_attn_varlen_func's arguments."""
    if (type(cu_seqlens_q) is not torch.Tensor or type(cu_seqlens_k) is not torch.Tensor
            or type(max_seqlen_q) is not int or type(max_seqlen_k) is not int or max_seqlen_q < 0 or max_seqlen_k < 0):
        return None  # the general path checks (or converts) these
    seq = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scalars = (softmax_scale, causal, window_size, softcap, deterministic)
    cpp = autograd_node.serving()
    if cpp is None:
        return _run(q, k, v, seq, _seq_sig(cu_seqlens_q, cu_seqlens_k), *scalars, check)
    out = cpp.run_varlen(q, k, v, *seq, *scalars)
    if out is None:  # not seen: plan it (checks included) and register it, as dense() does
        plan, _ = _plan(q, k, v, seq, _seq_sig(cu_seqlens_q, cu_seqlens_k), *scalars, check)
        cpp.register_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, *scalars, plan.node if plan else None)
        out = cpp.run_varlen(q, k, v, *seq, *scalars)
    return None if out is None or out is False else out


def _seq_sig(cu_q, cu_k) -> tuple:
    return (cu_q.shape, cu_k.shape, cu_q.dtype, cu_k.dtype, cu_q.device, cu_k.device)


def _run(q, k, v, seq, seq_sig, softmax_scale, causal, window_size, softcap, deterministic, check):
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    plan, grad = _plan(q, k, v, seq, seq_sig, softmax_scale, causal, window_size, softcap, deterministic, check)
    if not plan or (q.data_ptr() | k.data_ptr() | v.data_ptr()) & plan.mask:
        return None
    if grad:
        if _APPLY is not None:
            return _APPLY(q, k, v, plan, seq)
        return _PlannedAttention.apply(q, k, v, plan, seq)
    return plan.infer(q, k, v, seq)


def _plan(q, k, v, seq, seq_sig, softmax_scale, causal, window_size, softcap, deterministic, check):
    """(plan, grad): this thread's plan for the call (False: not plannable), made now if it is new;
    plan None where the fast path does not take such scalars."""
    if type(softmax_scale) not in _SCALAR_TYPES or type(softcap) not in _SCALAR_TYPES or type(window_size) is not tuple:
        return None, False
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    key = (q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype,
           q.device, k.device, v.device, softmax_scale, bool(causal), window_size, softcap,
           bool(deterministic), grad, _bwd_state(), seq_sig)
    plans = getattr(_local, "plans", None)
    if plans is None:
        plans = _local.plans = {}
    plan = plans.get(key)
    if plan is None:
        check()
        plan = _make_plan(q, k, v, seq, softmax_scale, causal, window_size, softcap, deterministic, grad) or False
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plans[key] = plan
    return plan, grad


def clear() -> None:
    """Forgets this thread's plans (tests that swap libraries or nodes)."""
    _local.plans = {}
    cpp = autograd_node.load()[0]
    if cpp is not None:
        cpp.clear_calls()


def _make_plan(q, k, v, seq, softmax_scale, causal, window_size, softcap, deterministic, grad) -> Optional[_Plan]:
    scale = V.scalars(0.0, softcap, softmax_scale, q.shape[-1])
    left, right = V.window(window_size, causal)
    softcap = float(softcap)
    cu_q, cu_k, max_q, max_k = seq or _DENSE
    fwd_args, flags = ops._args(scale, left, right, softcap, None, 0.0, 0, 0, cu_q, cu_k, max_q, max_k)
    impl, choice = registry.choose(registry.request("fwd", q, k, fwd_args, v=v), q.device, flags)
    if not isinstance(impl, registry.NativeBackend):
        return None
    lib = registry.native_library(impl.library)
    out = torch.empty_like(q)
    lse_shape = ops._lse_shape(q, cu_q)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    packed = lib.packed_forward(q, k, v, fwd_args, out, lse, choice.target.sm)
    if packed is None:
        return None
    fwd, fwd_ws_bytes = packed
    general_args = (scale, left, right, softcap, 0.0, bool(deterministic))
    bwd, ws_bytes = None, 0
    if grad:
        bwd_args, bflags = ops._args(scale, left, right, softcap, None, 0.0, 0, 0, cu_q, cu_k, max_q, max_k,
                                     deterministic=bool(deterministic))
        bimpl, bchoice = registry.choose(registry.request("bwd", q, k, bwd_args, v=v, out=out, dout=out),
                                         q.device, bflags)
        if isinstance(bimpl, registry.NativeBackend):
            blib = registry.native_library(bimpl.library)
            packed = blib.packed_backward(out, q, k, v, out, lse, bwd_args, torch.empty_like(q), torch.empty_like(k),
                                          torch.empty_like(v), bchoice.target.sm)
            if packed is not None:
                bwd, ws_bytes = packed
    plan = _Plan(lib.pointer_mask, q.device, fwd, fwd_ws_bytes, lse_shape, bwd, ws_bytes, _bwd_state(), general_args)
    _attach_node(plan, lib, seq is not None)
    return plan


def _attach_node(plan: _Plan, lib, varlen: bool) -> None:
    """Gives a plan its C++ twin where the module is built for this torch: dense() and varlen()
    then serve the call from C++, and a grad call's node runs the planned backward without Python.
    Slots: the 8-byte per-call fields (pointers, then a varlen call's cu_seqlens), then the 4-byte
    ones (its max lengths); workspace bytes -1: asked per call (varlen)."""
    module, _ = autograd_node.load()
    if module is None:
        return
    bwd = plan.bwd

    def slots(cls, pointers):
        if not varlen:
            return list(pointers), []
        return (list(pointers) + list(native._offsets(cls, "problem.cu_seqlens_q", "problem.cu_seqlens_k")),
                list(native._offsets(cls, "problem.seqlen_q", "problem.seqlen_k")))

    fwd_slots, fwd_slots32 = slots(native._FwdParams, native._FWD_POINTERS)
    bwd_slots, bwd_slots32 = slots(native._BwdParams, native._BWD_POINTERS)
    general = _general_backward_varlen if varlen else _general_backward
    plan.node = module.make_plan(
        lib.name, lib.last_error_address, int(varlen), plan.fwd.fn_address, plan.fwd.size_fn_address, plan.fwd.params,
        fwd_slots, fwd_slots32, 0 if bwd is None else bwd.fn_address, 0 if bwd is None else bwd.size_fn_address,
        b"" if bwd is None else bwd.params, bwd_slots, bwd_slots32,
        -1 if plan.fwd_ws_bytes is None else plan.fwd_ws_bytes, -1 if plan.ws_bytes is None else plan.ws_bytes,
        list(plan.lse_shape), plan.mask, functools.partial(general, plan.general_args))


def _general_backward(general_args, dout, q, k, v, out, lse):
    """The C++ node's backward where its plan does not apply (a dout laid out unlike out, changed
    flags): the general path, as _Plan.backward takes it."""
    return ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, *_DENSE, *general_args)


def _general_backward_varlen(general_args, dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k):
    return ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, cu_q, cu_k, max_q, max_k, *general_args)
