"""Device time per kernel of one decoding step: flash_attn_with_kvcache over a dense cache (at each
num_splits of --splits; 0 lets the library choose) against SDPA over the same keys (enable_gqa),
under torch.profiler: which kernels a step launches and what each costs.

    python benchmarks/decode_kernel_times.py [--batch 1] [--cache 1024,4096,16384] [--splits 0,16]

Prints, per implementation, each kernel's median device time over --steps steps and launches per
step, then their sum per step. Inputs are random; everything runs in this process.
"""
from __future__ import annotations

import argparse
import collections

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import flash_attn


def kernel_times(name: str, fn, steps: int) -> None:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    times = collections.defaultdict(list)
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.device_time > 0:
            times[e.name[:70]].append(e.device_time)
    total = 0.0
    for kernel, ts in times.items():
        ts.sort()
        median = ts[len(ts) // 2]
        total += median * len(ts) / steps
        print(f"   {name:<22} {len(ts) // steps:>2}x {median:7.2f} us  {kernel}")
    print(f"   {name:<22} total/step {total:7.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cache", default="1024,4096,16384")
    ap.add_argument("--heads", default="32,8", help="query heads, key/value heads")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--splits", default="0,16")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    h, hk = (int(x) for x in args.heads.split(","))
    b, d = args.batch, args.headdim
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, batch {b}, heads {h}/{hk}, d {d}, 1 query")
    for cap in (int(x) for x in args.cache.split(",")):
        print(f"== batch {b} cache {cap}")
        q = torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, cap, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        lens = torch.full((b,), cap, dtype=torch.int32, device="cuda")
        for n in (int(x) for x in args.splits.split(",")):
            kernel_times(f"ours splits {n or 'auto'}", lambda n=n: flash_attn.flash_attn_with_kvcache(
                q, k, v, cache_seqlens=lens, num_splits=n), args.steps)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        kernel_times("sdpa", lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True), args.steps)


if __name__ == "__main__":
    main()
