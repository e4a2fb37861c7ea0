"""torch.compile(fullgraph=True) traces attention as custom ops: no graph break, eager's results.

fullgraph=True turns any graph break into an error. The backend is "aot_eager": it runs Dynamo
and AOTAutograd (the parts that must handle the custom ops, their fake implementations and the
autograd formula) but not Inductor's C++ code generation, which takes tens of seconds per graph on
a 2-core CPU machine and tests nothing of ours. The ops then run the same kernels as in eager, so
results must agree bitwise (deterministic=True makes the GPU backward reproducible too).
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

from flash_attn import flash_attn_func, flash_attn_varlen_func


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    """Also unloads the C++ call path, as in a process whose first call is compiled: finding that
    module (a file lookup) must not happen inside the trace."""
    from flash_attn.backends import autograd_node

    monkeypatch.setattr(autograd_node, "_state", None)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(fn):
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _fwd_bwd(fn, inputs, dout):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, dout))


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_func(device, causal):
    q = torch.randn(2, 67, 4, 64, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, 93, 2, 64, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)

    def attn(q, k, v):
        return flash_attn_func(q, k, v, causal=causal, softcap=3.0, deterministic=True) * 2

    compiled, counter = _compiled(attn)
    got = _fwd_bwd(compiled, _leaves(q, k, v), dout)
    want = _fwd_bwd(attn, _leaves(q, k, v), dout)
    assert counter.frame_count == 1 and counter.op_count >= 2
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_flash_attn_func_dropout_follows_manual_seed(device):
    """The dropout RNG state is drawn inside the op, so a compiled call reseeded like an eager one
    draws the same mask."""
    q, k, v = (torch.randn(1, 40, 2, 32, device=device, dtype=torch.float16) for _ in range(3))
    compiled, _ = _compiled(lambda q, k, v: flash_attn_func(q, k, v, dropout_p=0.2))
    torch.manual_seed(5)
    got = compiled(q, k, v)
    torch.manual_seed(5)
    want = flash_attn_func(q, k, v, dropout_p=0.2)
    assert torch.equal(got, want)


def test_flash_attn_varlen_func(device):
    h, d = 4, 40
    cu = torch.tensor([0, 13, 14, 50], dtype=torch.int32, device=device)
    q = torch.randn(50, h, d, device=device, dtype=torch.float16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    dout = torch.randn_like(q)

    def attn(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu, cu, 36, 36, causal=True, deterministic=True)

    compiled, counter = _compiled(attn)
    got = _fwd_bwd(compiled, _leaves(q, k, v), dout)
    want = _fwd_bwd(attn, _leaves(q, k, v), dout)
    assert counter.frame_count == 1
    for g, w in zip(got, want):
        assert torch.equal(g, w)
