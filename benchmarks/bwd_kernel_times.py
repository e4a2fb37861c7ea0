"""Device time per kernel of one backward, flash_attn against SDPA's FlashAttention-2 kernels, under
torch.profiler: the main kernel and the row kernels around it (D = rowsum(dO * O), the dQ
conversion) side by side.

    python benchmarks/bwd_kernel_times.py [--points 256:16384:1:0,64:2048:8:0] [--steps 10]

A point is head_dim:seqlen:batch:causal, with nheads = 2048 / head_dim (the main benchmark's
shapes). Prints each kernel's median device time over --steps backwards, then their sum. bf16,
random inputs, everything in this process.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_attn
from decode_kernel_times import kernel_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default="256:16384:1:0,64:2048:8:0,128:16384:1:0")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
    for point in args.points.split(","):
        d, s, b, causal = (int(x) for x in point.split(":"))
        h = 2048 // d
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dout = torch.randn_like(q)
        out = flash_attn.flash_attn_func(q, k, v, causal=bool(causal))
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out_t = F.scaled_dot_product_attention(qt, kt, vt, is_causal=bool(causal))
            print(f"== d {d} seqlen {s} batch {b} heads {h} causal {bool(causal)}")
            kernel_times("flash_attn bwd", lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                         args.steps)
            kernel_times("sdpa flash bwd", lambda: torch.autograd.grad(out_t, (qt, kt, vt), dout.transpose(1, 2),
                                                                       retain_graph=True), args.steps)


if __name__ == "__main__":
    main()
