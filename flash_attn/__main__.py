"""`python -m flash_attn info` and `python -m flash_attn explain [options]`."""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flash_attn")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="hardware found, flags in force, backend per kind of call")
    ex = sub.add_parser("explain", help="which backend one call would use, and why")
    ex.add_argument("--batch", type=int, default=2)
    ex.add_argument("--seqlen-q", type=int, default=128)
    ex.add_argument("--seqlen-k", type=int, default=None)
    ex.add_argument("--nheads", type=int, default=16)
    ex.add_argument("--nheads-k", type=int, default=None)
    ex.add_argument("--head-dim", type=int, default=128)
    ex.add_argument("--dtype", choices=("float16", "bfloat16"), default="bfloat16")
    ex.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ex.add_argument("--causal", action="store_true")
    ex.add_argument("--dropout", type=float, default=0.0)
    ex.add_argument("--softcap", type=float, default=0.0)
    ex.add_argument("--window", type=int, nargs=2, default=(-1, -1), metavar=("LEFT", "RIGHT"))
    ex.add_argument("--deterministic", action="store_true")
    args = parser.parse_args(argv)

    from . import explain
    from .explain import info_text

    if args.command == "info":
        print(info_text())
        return 0
    dtype = getattr(torch, args.dtype)
    sk = args.seqlen_k or args.seqlen_q
    hk = args.nheads_k or args.nheads
    q = torch.empty(args.batch, args.seqlen_q, args.nheads, args.head_dim, dtype=dtype, device=args.device)
    k = torch.empty(args.batch, sk, hk, args.head_dim, dtype=dtype, device=args.device)
    print(explain(q, k, k, dropout_p=args.dropout, causal=args.causal, softcap=args.softcap,
                  window_size=tuple(args.window), deterministic=args.deterministic))
    return 0


if __name__ == "__main__":
    sys.exit(main())
