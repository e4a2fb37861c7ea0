"""A few tiny calls through every kernel of the native CUDA library, for compute-sanitizer:
    compute-sanitizer --tool memcheck python tools/cuda_smoke.py
Prints the max |difference| against the float64 oracle per call; the tests judge accuracy."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
import _cuda_ref as R  # noqa: E402

native, argsmod, rng = R.load_modules()
lib = native.load("cuda")
A = argsmod.AttnArgs
dev = "cuda"


def one(name, b, sq, sk, h, hk, d, varlen=False, **kw):
    torch.manual_seed(0)
    dt = torch.bfloat16
    if varlen:
        lens = [sq, max(1, sq // 3)]
        cu = torch.tensor([0, lens[0], lens[0] + lens[1]], dtype=torch.int32, device=dev)
        q = torch.randn(int(cu[-1]), h, d, device=dev).to(dt)
        k = torch.randn(int(cu[-1]), hk, d, device=dev).to(dt)
        v = torch.randn_like(k)
        kw.update(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens), max_seqlen_k=max(lens))
        lse = torch.empty(h, q.shape[0], device=dev)
    else:
        q = torch.randn(b, sq, h, d, device=dev).to(dt)
        k = torch.randn(b, sk, hk, d, device=dev).to(dt)
        v = torch.randn_like(k)
        lse = torch.empty(b, h, sq, device=dev)
    args = A(softmax_scale=d ** -0.5, **kw)
    out = torch.empty_like(q)
    lib.forward(q, k, v, args, out, lse)
    dout = torch.randn_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    lib.backward(dout, q, k, v, out, lse, args, dq, dk, dv)
    torch.cuda.synchronize()
    ref, _ = R.attention(q.double(), k.double(), v.double(), scale=args.softmax_scale,
                         window=(args.window_left, args.window_right), softcap=args.softcap,
                         dropout_p=args.dropout_p, seed=args.rng_seed, cu_q=args.cu_seqlens_q,
                         cu_k=args.cu_seqlens_k, rng=rng)
    print(f"{name:28s} max|out - fp64| = {R.max_err(out, ref):.2e}", flush=True)


def paged(d, num_splits, sq):
    """Forward only (the KV-cache call has no backward): pages of 5 rows, a shuffled table with pages
    past the used ones left out of it, and a left pad, so a wrong page or row would read outside."""
    torch.manual_seed(0)
    q = torch.randn(2, sq, 4, d, device=dev).to(torch.bfloat16)
    pages = torch.randn(2 * 20 + 1, 5, 2, d, device=dev).to(torch.bfloat16)
    table = torch.randperm(2 * 20, device=dev).view(2, 20).to(torch.int32)
    used = torch.tensor([100, 37], dtype=torch.int32, device=dev)
    leftpad = torch.tensor([0, 11], dtype=torch.int32, device=dev)
    args = A(softmax_scale=d ** -0.5, window_right=0, block_table=table, seqused_k=used, leftpad_k=leftpad,
             num_splits=num_splits)
    out, lse = torch.empty_like(q), torch.empty(2, 4, sq, device=dev)
    lib.forward(q, pages, pages, args, out, lse)
    torch.cuda.synchronize()
    print(f"{f'd{d} paged leftpad sq{sq} {num_splits} split':28s} finite: {bool(out.isfinite().all())}", flush=True)


def varlen_decode(d):
    """One query per sequence but one, keys split, query heads folded (lse rows total_q apart)."""
    torch.manual_seed(0)
    cu_q = torch.tensor([0, 1, 1, 2], dtype=torch.int32, device=dev)
    cu_k = torch.tensor([0, 300, 301, 700], dtype=torch.int32, device=dev)
    q = torch.randn(2, 8, d, device=dev).to(torch.bfloat16)
    k, v = (torch.randn(700, 2, d, device=dev).to(torch.bfloat16) for _ in range(2))
    args = A(softmax_scale=d ** -0.5, window_right=0, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=1,
             max_seqlen_k=399, num_splits=3)
    out, lse = torch.empty_like(q), torch.empty(8, 2, device=dev)
    lib.forward(q, k, v, args, out, lse)
    torch.cuda.synchronize()
    ref, _ = R.attention(q.double(), k.double(), v.double(), scale=args.softmax_scale, window=(-1, 0), cu_q=cu_q,
                         cu_k=cu_k, rng=rng)
    print(f"{f'd{d} varlen decode, split':28s} max|out - fp64| = {R.max_err(out, ref):.2e}", flush=True)


def main():
    for d in lib.build_info["head_dims"]:
        one(f"d{d} causal gqa", 2, 77, 91, 4, 2, d, window_right=0)
    d = lib.build_info["head_dims"][0]
    one(f"d{d - 8} in the d{d} bucket", 1, 33, 45, 1, 1, d - 8)  # zero-filled columns, last row of the buffer
    one(f"d{d} varlen dropout det", 2, 70, 70, 2, 2, d, varlen=True, dropout_p=0.2, deterministic=True)
    one(f"d{d} window softcap", 1, 130, 64, 2, 1, d, window_left=9, window_right=4, softcap=2.0)
    one(f"d{d} decode, keys split", 2, 1, 700, 8, 2, d, window_right=0, num_splits=5)
    paged(d, 1, 70)  # the full kernel
    paged(d, 2, 3)  # the split kernels
    varlen_decode(d)


if __name__ == "__main__":
    main()
