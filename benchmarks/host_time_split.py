"""Host time per call at a tiny shape (b=1 s=128 h=16 d=64 bf16, GPU time far below host time),
split into parts: flash_attn's forward with grad and forward+backward beside SDPA flash's, the
planned backward and the bare library calls without autograd, a varlen call (one sequence of 128)
with its planned backward and with the general one, and torch's own floor (an allocation, a C++
and a Python autograd node around a clone). Three passes, medians of 7 loops.

    python benchmarks/host_time_split.py                                # the C++ call path
    FLASH_ATTENTION_AUTOGRAD_NODE=0 python benchmarks/host_time_split.py  # the Python one
"""
import statistics
import time

import torch
import torch.nn.functional as F

from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_attn
from flash_attn import fastpath
from flash_attn.backends import native

q, k, v = (torch.randn(1, 128, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
dout = torch.randn_like(q)
qtg, ktg, vtg = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
doutt = dout.transpose(1, 2)
f = flash_attn.flash_attn_func
f(qg, kg, vg)  # plans the call
plan = [p for p in fastpath._local.plans.values() if p and p.bwd is not None][0]
o, lse = plan.forward(q, k, v, None)
dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
ws = torch.empty(plan.ws_bytes, dtype=torch.uint8, device="cuda")
stream = native._stream(q.device)
raw_args = (stream, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), dout.data_ptr(), lse.data_ptr(),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), ws.data_ptr())
fwd_args = (stream, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr())


cu = torch.tensor([0, 128], dtype=torch.int32, device="cuda")
qv, kv, vv = (t.detach().reshape(128, 16, 64).requires_grad_() for t in (q, k, v))
doutv = dout.reshape(128, 16, 64)
fv = lambda: flash_attn.flash_attn_varlen_func(qv, kv, vv, cu, cu, 128, 128)  # noqa: E731
fv()
plan_v = [p for p in fastpath._local.plans.values() if p and p.ws_bytes is None][0]
planned_bwd_v = plan_v.bwd


def varlen_general_bwd():
    plan_v.bwd = None  # the plan's backward falls back to the general path
    try:
        torch.autograd.grad(fv(), (qv, kv, vv), doutv)
    finally:
        plan_v.bwd = planned_bwd_v


class PyIdent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


x = torch.randn(1024, device="cuda", requires_grad=True)
gx = torch.randn(1024, device="cuda")
sd = lambda a, b, c: F.scaled_dot_product_attention(a, b, c)
cases = {
    "fa grad fwd": lambda: f(qg, kg, vg),
    "fa fwd+bwd (autograd.grad)": lambda: torch.autograd.grad(f(qg, kg, vg), (qg, kg, vg), dout),
    "fa plan.backward direct": lambda: plan.backward(dout, q, k, v, o, lse, None),
    "fa raw bwd call": lambda: plan.bwd(*raw_args),
    "fa raw fwd call": lambda: plan.fwd(*fwd_args),
    "fa varlen fwd+bwd": lambda: torch.autograd.grad(fv(), (qv, kv, vv), doutv),
    "fa varlen fwd+bwd, general bwd": varlen_general_bwd,
    "sdpa grad fwd": lambda: sd(qtg, ktg, vtg),
    "sdpa fwd+bwd (autograd.grad)": lambda: torch.autograd.grad(sd(qtg, ktg, vtg), (qtg, ktg, vtg), doutt),
    "torch.empty_like": lambda: torch.empty_like(q),
    "clone fwd+bwd (C++ node)": lambda: torch.autograd.grad(x.clone(), (x,), gx),
    "PyIdent fwd+bwd (Py node)": lambda: torch.autograd.grad(PyIdent.apply(x), (x,), gx),
    "torch.zeros 1 elem": lambda: torch.zeros(1, device="cuda"),
}


def per_call(fn, n):
    for _ in range(30):
        fn()
    torch.cuda.synchronize()
    r = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        r.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(r)


ctx = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
ctx.__enter__()
res = {name: [] for name in cases}
for rep in range(3):
    for name, fn in cases.items():
        res[name].append(per_call(fn, 300))
for name, r in res.items():
    print(f"{name:32s} " + " ".join(f"{t:7.1f}" for t in r) + " us")
