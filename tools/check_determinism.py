"""Deterministic backward through the public API: N runs give bitwise-equal dQ, dK, dV.

    python tools/check_determinism.py [--runs 50]

Cases cover what reorders the dQ reduction: many key blocks (long seqlen_k), causal, GQA (dK/dV
summed over the query-head group), varlen and dropout. Prints one line per case and exits 1 if
any gradient differs in any bit. Also prints how far the default (atomic) backward strays, to
show the check could fail.
"""
from __future__ import annotations

import argparse
import sys

import torch

from flash_attn import flash_attn_func, flash_attn_varlen_func

CASES = {
    "b2 s4096 h16 d128 causal": dict(b=2, s=4096, h=16, hk=16, d=128, causal=True),
    "b4 s1024 h16/hk2 d64 GQA": dict(b=4, s=1024, h=16, hk=2, d=64, causal=False),
    "b1 s2048 h8 d256": dict(b=1, s=2048, h=8, hk=8, d=256, causal=False),
    "b3 s777 h8 d96 dropout 0.1": dict(b=3, s=777, h=8, hk=4, d=96, causal=True, dropout_p=0.1),
    "varlen 4 seqs <=1500 h8 d128": dict(b=4, s=1500, h=8, hk=8, d=128, causal=True, varlen=True),
}


def grads(case: dict, deterministic: bool, inputs) -> list:
    q, k, v, dout, cu = inputs
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    torch.manual_seed(11)  # the dropout mask comes from torch's generator
    kw = dict(causal=case["causal"], dropout_p=case.get("dropout_p", 0.0), deterministic=deterministic)
    if cu is None:
        out = flash_attn_func(q, k, v, **kw)
    else:
        m = int((cu[1:] - cu[:-1]).max())
        out = flash_attn_varlen_func(q, k, v, cu, cu, m, m, **kw)
    return list(torch.autograd.grad(out, (q, k, v), dout))


def make_inputs(case: dict):
    b, s, h, hk, d = (case[x] for x in ("b", "s", "h", "hk", "d"))
    cu = None
    if case.get("varlen"):
        lens = torch.randint(1, s + 1, (b,))
        lens[0] = s
        cu = torch.zeros(b + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        cu = cu.cuda()
        shape_q, shape_k = (int(cu[-1]), h, d), (int(cu[-1]), hk, d)
    else:
        shape_q, shape_k = (b, s, h, d), (b, s, hk, d)
    q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(shape_k, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return q, k, v, torch.randn_like(q), cu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    runs = ap.parse_args().runs
    torch.manual_seed(0)
    failed = False
    for name, case in CASES.items():
        inputs = make_inputs(case)
        first = grads(case, True, inputs)
        differing = sum(any(not torch.equal(a, b) for a, b in zip(first, grads(case, True, inputs)))
                        for _ in range(runs - 1))
        atomic = grads(case, False, inputs)
        stray = max((a.float() - b.float()).abs().max().item() for a, b in zip(first, atomic))
        failed |= differing > 0
        verdict = "bitwise equal" if differing == 0 else f"{differing} runs DIFFER"
        print(f"{name:32s} {runs} runs: {verdict}; atomic backward max |diff| {stray:.3e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
