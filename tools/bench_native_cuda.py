"""Speed of the native CUDA library against torch SDPA's flash backend (FlashAttention-2's own
kernels), same process, same inputs; FlashAttention convention: hidden 2048, batch = 16k / seqlen,
FLOPs = 4 b h s^2 d (halved when causal), x2.5 for the backward; median of timed runs after warm-up.
Also: per-call host overhead on a tiny shape, and a bitwise-determinism check at full size.

    python tools/bench_native_cuda.py [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
import _cuda_ref as R  # noqa: E402

native, argsmod, _ = R.load_modules()
LIB = native.load("cuda")
A = argsmod.AttnArgs


def gpu_time_ms(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_us(fn, iters: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / iters * 1e6


def bench_case(d, s, causal, iters):
    b, h = max(1, 16384 // s), 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dout = torch.randn_like(q)
    args = A(softmax_scale=d ** -0.5, window_right=0 if causal else -1)
    out, lse = torch.empty_like(q), torch.empty(b, h, s, device="cuda")
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    flops = 4 * b * h * s * s * d / (2 if causal else 1)
    row = {"d": d, "seqlen": s, "causal": causal, "batch": b, "nheads": h}
    row["ours_fwd"] = flops / gpu_time_ms(lambda: LIB.forward(q, k, v, args, out, lse), iters) / 1e9
    row["ours_bwd"] = 2.5 * flops / gpu_time_ms(
        lambda: LIB.backward(dout, q, k, v, out, lse, args, dq, dk, dv), iters) / 1e9
    qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa_fwd"] = flops / gpu_time_ms(
                lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal), iters) / 1e9
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            dot = dout.transpose(1, 2)
            row["sdpa_bwd"] = 2.5 * flops / gpu_time_ms(
                lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True), iters) / 1e9
    except RuntimeError as e:  # SDPA flash does not take every head dim on every GPU
        row["sdpa_error"] = str(e).splitlines()[0]
    return row


def host_overhead():
    q, k, v = (torch.randn(1, 128, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    args = A(softmax_scale=0.125)
    out, lse = torch.empty_like(q), torch.empty(1, 16, 128, device="cuda")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        sdpa = host_us(lambda: F.scaled_dot_product_attention(qt, kt, vt))
    return {"ours_fwd_us": host_us(lambda: LIB.forward(q, k, v, args, out, lse)), "sdpa_flash_fwd_us": sdpa}


def determinism():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4096, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    args = A(softmax_scale=128 ** -0.5, window_right=0, deterministic=True)
    out, lse = torch.empty_like(q), torch.empty(2, 16, 4096, device="cuda")
    LIB.forward(q, k, v, args, out, lse)
    dout = torch.randn_like(q)
    runs = []
    for _ in range(3):
        g = [torch.empty_like(x) for x in (q, k, v)]
        LIB.backward(dout, q, k, v, out, lse, args, *g)
        runs.append(g)
    equal = all(torch.equal(a, b) for r in runs[1:] for a, b in zip(runs[0], r))
    nondet = [torch.empty_like(x) for x in (q, k, v)]
    LIB.backward(dout, q, k, v, out, lse, A(softmax_scale=128 ** -0.5, window_right=0), *nondet)
    diff = (nondet[0].float() - runs[0][0].float()).abs().max().item()
    return {"bitwise_equal_3_runs": equal, "max_dq_diff_vs_atomic": diff}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    dims = [d for d in (64, 128, 256) if any(d <= x for x in LIB.build_info["head_dims"])]
    seqlens = (2048, 16384) if a.quick else (2048, 4096, 8192, 16384)
    rows = []
    for d in dims:
        for causal in (False, True):
            for s in seqlens:
                rows.append(bench_case(d, s, causal, iters=5 if s >= 8192 else 10))
                print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows,
              "host_overhead": host_overhead(), "determinism": determinism()}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"\nhost overhead per forward call (us): {result['host_overhead']}")
    print(f"determinism: {result['determinism']}")
    print(f"\n{'d':>4} {'seqlen':>6} {'causal':>6} | {'fwd ours':>8} {'fwd sdpa':>8} | {'bwd ours':>8} {'bwd sdpa':>8}  TFLOP/s")
    for r in rows:
        print(f"{r['d']:>4} {r['seqlen']:>6} {str(r['causal']):>6} | {r['ours_fwd']:8.1f} {r.get('sdpa_fwd', 0):8.1f} |"
              f" {r['ours_bwd']:8.1f} {r.get('sdpa_bwd', 0):8.1f}")


if __name__ == "__main__":
    main()
