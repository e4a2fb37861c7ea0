"""The reference backend's memory stays linear in the sequence length, forward and backward.

At seqlen 16k one materialised fp32 score matrix of one head is 16k x 16k x 4 B = 1 GiB. The call
runs in a fresh subprocess (so nothing else has raised its high-water mark) on the CPU, which
reports the peak resident set size (ru_maxrss) before and after: an O(seqlen^2) implementation
cannot stay under half of that matrix. tracemalloc does not see torch's allocations, hence RSS.
The subprocess also checks a few output rows and their dq against the float64 oracle, so the
test cannot pass by computing nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SEQLEN = 16384
LIMIT_MB = 512  # half of one materialised fp32 score matrix (1 GiB)

SCRIPT = textwrap.dedent(f"""
    import json, resource, sys
    import torch
    from flash_attn import flash_attn_func  # before tests/ joins sys.path: see conftest.py
    sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(__file__)))!r})
    from helpers import Oracle, max_err

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    torch.manual_seed(0)
    s = {SEQLEN}
    q, k, v = (torch.randn(1, s, 1, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, s, 1, 64, dtype=torch.bfloat16)
    # warm up every code path on a small problem so that lazy allocations are not counted
    small = [t[:, :512].detach().requires_grad_() for t in (q, k, v)]
    flash_attn_func(*small).backward(dout[:, :512])
    before = peak_mb()
    out = flash_attn_func(q, k, v)
    after_fwd = peak_mb()
    (dq,) = torch.autograd.grad(out, q, dout)
    after_bwd = peak_mb()
    rows = slice(0, 8)  # non-causal: a query row depends only on itself and all keys
    oracle = Oracle(q[:, rows], k, v, dout[:, rows])
    oracle.check(out[:, rows], None)
    dq_err, dq_base = max_err(dq[:, rows], oracle.grads[0]), max_err(oracle.base_grads[0], oracle.grads[0])
    print(json.dumps(dict(fwd_mb=after_fwd - before, bwd_mb=after_bwd - before,
                          dq_ok=dq_err <= 3 * dq_base + 1e-5)))
""")


def test_forward_and_backward_memory_is_linear_at_16k():
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("FLASH_ATTN_TEST_THREADS", "1"))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["dq_ok"], report
    assert report["fwd_mb"] < LIMIT_MB, report
    assert report["bwd_mb"] < LIMIT_MB, report
