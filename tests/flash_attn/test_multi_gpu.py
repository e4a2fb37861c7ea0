"""Calls whose tensors are on a GPU other than the current one. transformers' device_map="auto"
spreads a model's layers over the GPUs of one process and leaves the current device at 0, so
attention runs on cuda:1 with cuda:0 current. Each call must give what the same call gives with
its GPU current, bitwise (deterministic backward), and leave the current device as it was.
Needs two GPUs: the device tool's nvidia-h200-x2 runs it (tools/gpu_session.sh multigpu)."""
from __future__ import annotations

import pytest
import torch

import flash_attn
from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

B, S, H, HK, D = 2, 97, 4, 2, 64


def _make(device):
    """Inputs drawn on the CPU from one fixed generator, so both runs get the same values."""
    g = torch.Generator().manual_seed(1234)
    q, k, v = (torch.randn(B, S, h, D, generator=g).to(device, torch.bfloat16) for h in (H, HK, HK))
    return q, k, v, torch.randn(B, S, H, D, generator=g).to(device, torch.bfloat16)


def _dense(q, k, v, dout):
    return flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v)


def _alibi(q, k, v, dout):
    slopes = torch.linspace(0.05, 0.5, H, device=q.device)
    return flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes, deterministic=True), (q, k, v)


def _varlen(q, k, v, dout):
    cu = torch.tensor([0, 40, B * S], dtype=torch.int32, device=q.device)
    q, k, v = (t.reshape(B * S, *t.shape[2:]) for t in (q, k, v))
    out = flash_attn_varlen_func(q, k, v, cu, cu, B * S - 40, B * S - 40, causal=True, deterministic=True)
    return out.reshape(B, S, H, D), (q, k, v)


def _kvcache(q, k, v, dout):
    k_cache, v_cache = torch.zeros_like(k), torch.zeros_like(v)
    seqlens = torch.tensor([S - 9, S - 30], dtype=torch.int32, device=q.device)
    out = flash_attn_with_kvcache(q[:, :9], k_cache, v_cache, k[:, :9], v[:, :9], cache_seqlens=seqlens - 9,
                                  causal=True)
    return out, ()


@pytest.mark.parametrize("call", [_dense, _alibi, _varlen, _kvcache], ids=lambda f: f.__name__[1:])
def test_a_call_on_a_gpu_other_than_the_current_one(node, call):
    assert flash_attn.explain(*_make("cuda:1")[:3], causal=True).backend() != "reference", \
        "the native library is not built: this test would only exercise torch's own operators"
    results = []
    for current in (1, 0):  # the reference run first: its GPU current
        with torch.cuda.device(current):
            q, k, v, dout = _make("cuda:1")
            for t in (q, k, v):
                t.requires_grad_(call is not _kvcache)
            out, leaves = call(q, k, v, dout)
            grads = torch.autograd.grad(out, leaves, dout[:, :out.shape[1]]) if leaves else ()
            torch.cuda.synchronize(1)
            assert torch.cuda.current_device() == current
            results.append((out, *grads))
    for want, got in zip(*results):
        assert got.device == torch.device("cuda:1")
        assert torch.equal(want, got)
