"""One decoding step over a KV cache: flash_attn_with_kvcache with a dense cache (at each num_splits
of --splits; 0 lets the library choose) and a paged one, flash_attn_func over the whole cache (how
transformers' flash_attention_2 decodes), the reference backend on the paged cache (what a paged
call ran before the CUDA kernels read pages), flash_attn_varlen_func with one query per sequence
over the packed keys (how it decodes a batch with a padding mask), and SDPA over the same dense
keys (GQA, every sequence at full length, so no mask).

    python benchmarks/kvcache_decode.py [--cache 1024,4096,16384] [--batch 8] [--pages 16,256] [--splits 0,1]

Prints microseconds per call (median of --repeats CUDA-event timings after warm-up): eager, host
time included, and per call of a CUDA graph of 10 calls (device time; the K/V bytes read per
second are from it). Inputs are random; every implementation runs in this process.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn.functional as F

import flash_attn


def timed(fn, repeats: int) -> float:
    """Median microseconds per eager call, CUDA events around each: host time included, as a
    decoding loop without graphs sees it."""
    for _ in range(3):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def graph_timed(fn, repeats: int, calls: int = 10) -> float:
    """Median microseconds per call of `calls` calls captured in one CUDA graph (as serving engines
    run decoding steps): the device time, host overhead amortised away. NaN if capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        return float("nan")
    return timed(graph.replay, repeats) / calls


def paged(k: torch.Tensor, v: torch.Tensor, page: int):
    """The cache rows of k and v in pages of `page` rows, shuffled, with their block table."""
    b, cap, hk, d = k.shape
    per_seq = cap // page
    perm = torch.randperm(b * per_seq, device=k.device)
    kp, vp = torch.empty_like(k).view(-1, page, hk, d), torch.empty_like(v).view(-1, page, hk, d)
    kp[perm], vp[perm] = k.reshape(-1, page, hk, d), v.reshape(-1, page, hk, d)
    return kp, vp, perm.view(b, per_seq).to(torch.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="1024,4096,16384")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", default="32,8", help="query heads, key/value heads")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--pages", default="16,256")
    ap.add_argument("--splits", default="0,1", help="num_splits values for the dense cache (0: the library's choice)")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    h, hk = (int(x) for x in args.heads.split(","))
    b, d = args.batch, args.headdim
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, batch {b}, heads {h}/{hk}, d {d}, 1 query")
    print(f"{'cache':>6} {'implementation':<28} {'call us':>8} {'graph us':>8} {'GB/s':>7}")
    for cap in (int(x) for x in args.cache.split(",")):
        q = torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, cap, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        lens = torch.full((b,), cap, dtype=torch.int32, device="cuda")
        kv_bytes = 2 * k.numel() * k.element_size()
        runs = {}
        for n in (int(x) for x in args.splits.split(",")):
            runs[f"flash_attn dense, splits {n or 'auto'}"] = (
                lambda n=n: flash_attn.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, num_splits=n))
        pages = [int(x) for x in args.pages.split(",")]
        for page in pages:
            kp, vp, table = paged(k, v, page)
            runs[f"flash_attn paged {page}"] = (lambda kp=kp, vp=vp, t=table: flash_attn.flash_attn_with_kvcache(
                q, kp, vp, cache_seqlens=lens, block_table=t))
        # transformers' flash_attention_2 decodes this way: flash_attn_func over the whole cache,
        # or with a padding mask flash_attn_varlen_func over the unpadded keys, one query each
        runs["flash_attn_func (no cache)"] = lambda: flash_attn.flash_attn_func(q, k, v, causal=True)
        cu_q = torch.arange(b + 1, dtype=torch.int32, device="cuda")
        cu_k = cu_q * cap
        qv, kv, vv = q.view(b, h, d), k.view(b * cap, hk, d), v.view(b * cap, hk, d)
        runs["flash_attn_varlen_func"] = lambda: flash_attn.flash_attn_varlen_func(
            qv, kv, vv, cu_q, cu_k, 1, cap, causal=True).view(b, 1, h, d)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        runs["sdpa dense (enable_gqa)"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True).transpose(1, 2)
        want = next(iter(runs.values()))()
        for fn in runs.values():
            torch.testing.assert_close(fn(), want, atol=2e-2, rtol=2e-2)  # the same attention
        for name, fn in runs.items():
            us, dev_us = timed(fn, args.repeats), graph_timed(fn, args.repeats)
            print(f"{cap:>6} {name:<28} {us:>8.1f} {dev_us:>8.1f} {kv_bytes / dev_us / 1e3:>7.0f}")
        os.environ["FLASH_ATTENTION_BACKEND"] = "only:reference"
        us = timed(runs[f"flash_attn paged {pages[0]}"], max(3, args.repeats // 10))
        del os.environ["FLASH_ATTENTION_BACKEND"]
        print(f"{cap:>6} {f'reference paged {pages[0]}':<28} {us:>8.1f} {'-':>8} {kv_bytes / us / 1e3:>7.0f}")


if __name__ == "__main__":
    main()
