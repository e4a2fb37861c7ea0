"""The native CUDA library (csrc_cuda, through flash_attn/backends/native.py) against a float64
oracle, on a GPU. Skipped where there is no CUDA device or no built library.

Accuracy rule (shared/DESIGN.md): max|ours - fp64| <= 2 * max|baseline - fp64| + 1e-5 for the
output and the logsumexp, 3x for gradients, where the baseline is the same attention computed in
the input dtype. FA_TEST_LOG=path appends one JSON line per check (error ratios for reports).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("_cuda_ref", Path(__file__).with_name("_cuda_ref.py"))
R = importlib.util.module_from_spec(_spec)
sys.modules["_cuda_ref"] = R
_spec.loader.exec_module(R)

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
native, argsmod, rng = R.load_modules()
LIB = native.load("cuda")
if LIB is None:
    pytest.skip("libflash_attn_cuda.so is not built (python csrc_cuda/build.py)", allow_module_level=True)
AttnArgs = argsmod.AttnArgs
INFO = LIB.build_info
BUCKETS = INFO["head_dims"]
DEV = "cuda"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BUILT_DTYPES = [DTYPES[t] for t in INFO["dtypes"]]


def _need(d: int, dtype=None, bwd=False):
    """Skips unless the library has kernels for d: a call runs in the smallest compiled head-dim
    bucket >= d (csrc_cuda/sm80/tile_config.h), so a narrowed build serves smaller dims too."""
    if not any(d <= b for b in BUCKETS):
        pytest.skip(f"head_dim {d}: no compiled bucket holds it (built {BUCKETS})")
    if dtype is not None and dtype not in BUILT_DTYPES:
        pytest.skip(f"{dtype} not compiled")
    if bwd and "bwd" not in INFO["directions"]:
        pytest.skip("backward not compiled")


def _log(record: dict) -> None:
    path = os.environ.get("FA_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def check(name, ours, truth, base, factor, case=""):
    err, berr = R.max_err(ours, truth), R.max_err(base, truth)
    _log({"case": case, "what": name, "err": err, "baseline": berr, "ratio": err / max(berr, 1e-12)})
    assert err <= factor * berr + 1e-5, f"{case} {name}: max err {err:.3e} > {factor} x baseline {berr:.3e}"


def run_fwd(q, k, v, args, arch=0):
    out = torch.empty_like(q)
    if args.cu_seqlens_q is not None:
        lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=DEV)
    else:
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device=DEV)
    LIB.forward(q, k, v, args, out, lse, arch=arch)
    return out, lse


def run_bwd(dout, q, k, v, out, lse, args, arch=0):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    LIB.backward(dout, q, k, v, out, lse, args, dq, dk, dv, arch=arch)
    return dq, dk, dv


def ref_kwargs(args: AttnArgs) -> dict:
    return dict(scale=args.softmax_scale, window=(args.window_left, args.window_right), softcap=args.softcap,
                alibi=args.alibi_slopes, dropout_p=args.dropout_p, seed=args.rng_seed, offset=args.rng_offset,
                cu_q=args.cu_seqlens_q, cu_k=args.cu_seqlens_k, seqused_k=args.seqused_k, rng=rng)


def compare(q, k, v, args: AttnArgs, backward=True, arch=0, case=""):
    """Runs the library forward (and backward) and checks both against the oracle."""
    out, lse = run_fwd(q, k, v, args, arch)
    torch.cuda.synchronize()
    leaves64 = [x.detach().double().requires_grad_(backward) for x in (q, k, v)]
    leaves = [x.detach().clone().requires_grad_(backward) for x in (q, k, v)]
    o64, l64 = R.attention(*leaves64, **ref_kwargs(args), dtype=torch.float64)
    ob, lb = R.attention(*leaves, **ref_kwargs(args), dtype=q.dtype)
    check("out", out, o64, ob, 2, case)
    check("lse", lse, l64, lb, 2, case)
    if not backward:
        return out, lse
    dout = torch.randn_like(q)
    dq, dk, dv = run_bwd(dout, q, k, v, out, lse, args, arch)
    torch.cuda.synchronize()
    g64 = torch.autograd.grad(o64, leaves64, dout.double())
    gb = torch.autograd.grad(ob, leaves, dout)
    for name, ours, t, b in zip(("dq", "dk", "dv"), (dq, dk, dv), g64, gb):
        check(name, ours, t, b, 3, case)
    return out, lse


def rand(*shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def qkv(b, sq, sk, h, hk, d, dtype):
    return rand(b, sq, h, d, dtype=dtype), rand(b, sk, hk, d, dtype=dtype), rand(b, sk, hk, d, dtype=dtype)


# ---------------------------------------------------------------------------------------------
SHAPES = [(1, 1), (1, 77), (113, 203), (203, 113), (256, 256), (517, 300)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", SHAPES)
@pytest.mark.parametrize("d", [32, 40, 59, 64, 96, 111, 128, 160, 192, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_shapes(dtype, d, sq, sk, causal):
    _need(d, dtype, bwd=True)
    q, k, v = qkv(2, sq, sk, 3, 3, d, dtype)
    args = AttnArgs(softmax_scale=d ** -0.5, window_right=0 if causal else -1)
    compare(q, k, v, args, case=f"{dtype} d{d} {sq}x{sk} causal={causal}")


FEATURES = {
    "window_5_3": dict(window_left=5, window_right=3),
    "window_right_only": dict(window_left=-1, window_right=7),
    "window_left_only": dict(window_left=20, window_right=-1),
    "window_0_0": dict(window_left=0, window_right=0),
    "softcap": dict(softcap=3.0),
    "dropout": dict(dropout_p=0.17, rng_seed=0x1234_5678_9ABC, rng_offset=7),
    "causal_dropout_softcap": dict(window_right=0, dropout_p=0.3, rng_seed=99, softcap=5.0),
}


# The plain kernels visit the partially masked blocks first and the whole ones in a loop without
# mask code (KeyOrder, common/mask.h): long enough sequences that both edges of a window, several
# whole blocks between them, and a first block with and without a partial tail occur.
BLOCK_ORDER = {
    "causal_left_window": (1000, 1000, 300, 0),
    "left_window_only": (1000, 1000, 300, -1),
    "no_mask_whole_tail": (700, 1024, -1, -1),
    "causal_longer_keys": (600, 1500, -1, 0),
    "causal_longer_queries": (1500, 600, -1, 0),
}


@pytest.mark.parametrize("case", list(BLOCK_ORDER))
@pytest.mark.parametrize("d", [64, 128, 256])
def test_key_block_order(d, case):
    _need(d, torch.bfloat16, bwd=True)
    sq, sk, left, right = BLOCK_ORDER[case]
    q, k, v = qkv(1, sq, sk, 2, 2, d, torch.bfloat16)
    compare(q, k, v, AttnArgs(softmax_scale=d ** -0.5, window_left=left, window_right=right), case=f"{case} d{d}")


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_features(dtype, d, feature):
    _need(d, dtype, bwd=True)
    kw = dict(FEATURES[feature])
    q, k, v = qkv(2, 173, 250, 4, 4, d, dtype)
    scale = d ** -0.5 * (4.0 if "softcap" in kw else 1.0)  # larger scores, so tanh bends them
    compare(q, k, v, AttnArgs(softmax_scale=scale, **kw), case=f"{feature} {dtype} d{d}")


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_alibi(per_batch, causal):
    _need(128, bwd=True)
    b, h = 2, 4
    q, k, v = qkv(b, 150, 190, h, h, 128, torch.bfloat16)
    slopes = torch.rand(b, h, device=DEV) if per_batch else torch.rand(h, device=DEV)
    args = AttnArgs(softmax_scale=128 ** -0.5, alibi_slopes=slopes, window_right=0 if causal else -1)
    compare(q, k, v, args, case=f"alibi per_batch={per_batch} causal={causal}")


@pytest.mark.parametrize("hk", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa(hk, causal):
    _need(64, torch.float16, bwd=True)
    q, k, v = qkv(2, 130, 210, 6, hk, 64, torch.float16)
    compare(q, k, v, AttnArgs(softmax_scale=0.125, window_right=0 if causal else -1), case=f"gqa hk={hk}")


def _varlen(lens_q, lens_k, h, hk, d, dtype):
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=DEV)
    q = rand(int(cu_q[-1]), h, d, dtype=dtype)
    k, v = rand(int(cu_k[-1]), hk, d, dtype=dtype), rand(int(cu_k[-1]), hk, d, dtype=dtype)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("extra", ["plain", "causal", "all"])
def test_varlen(extra):
    _need(128, bwd=True)
    lens_q, lens_k = [17, 1, 130, 64, 300], [40, 9, 130, 1, 257]
    q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 4, 2, 128, torch.bfloat16)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    if extra != "plain":
        kw["window_right"] = 0
    if extra == "all":
        kw.update(window_left=50, dropout_p=0.1, rng_seed=5, softcap=4.0,
                  alibi_slopes=torch.rand(len(lens_q), 4, device=DEV))
    compare(q, k, v, AttnArgs(softmax_scale=128 ** -0.5 * (3 if extra == "all" else 1), **kw), case=f"varlen {extra}")


@pytest.mark.parametrize("causal", [False, True])
def test_seqused_k(causal):
    _need(64, bwd=True)
    q, k, v = qkv(3, 33, 200, 4, 4, 64, torch.bfloat16)
    used = torch.tensor([50, 200, 1], dtype=torch.int32, device=DEV)
    args = AttnArgs(softmax_scale=0.125, seqused_k=used, window_right=0 if causal else -1)
    compare(q, k, v, args, case=f"seqused_k causal={causal}")


# ---------------------------------------------------------------------------------------------
# KV-cache addressing (forward only): the library reads keys through kv_batch_idx, leftpad_k or a
# page table; the oracle sees the same keys gathered into a dense (batch, keys, hk, d) tensor.
def _paged(k_logical, v_logical, page):
    """Pages of `page` rows holding each sequence's cache row, in a random order, plus two spare
    pages; returns the physical k, v and the (batch, pages per sequence) table."""
    b, cap, hk, d = k_logical.shape
    per_seq = -(-cap // page)
    pad = per_seq * page - cap
    kp = torch.nn.functional.pad(k_logical, (0, 0, 0, 0, 0, pad)).reshape(b * per_seq, page, hk, d)
    vp = torch.nn.functional.pad(v_logical, (0, 0, 0, 0, 0, pad)).reshape(b * per_seq, page, hk, d)
    perm = torch.randperm(b * per_seq + 2, device=DEV)
    k_phys, v_phys = rand(b * per_seq + 2, page, hk, d, dtype=k_logical.dtype), rand(b * per_seq + 2, page, hk, d, dtype=k_logical.dtype)
    k_phys[perm[: b * per_seq]], v_phys[perm[: b * per_seq]] = kp, vp
    return k_phys, v_phys, perm[: b * per_seq].view(b, per_seq).to(torch.int32)


def _cache_keys(k_logical, rows, shift, used):
    """Key j of sequence i is k_logical[rows[i], shift[i] + j], j < used[i] - shift[i] (zeros past it)."""
    cap = k_logical.shape[1]
    pos = (torch.arange(cap, device=DEV)[None, :] + shift[:, None].long()).clamp(max=cap - 1)
    return k_logical[rows.long()[:, None], pos]


def compare_cache(q, k_logical, v_logical, used, *, page=None, batch_idx=None, leftpad=None, case="", **kw):
    b = q.shape[0]
    shift = leftpad if leftpad is not None else torch.zeros(b, dtype=torch.int32, device=DEV)
    rows = batch_idx if batch_idx is not None else torch.arange(b, device=DEV)
    if page is None:
        k_in, v_in, table = k_logical, v_logical, None
    else:
        k_in, v_in, table = _paged(k_logical, v_logical, page)
    args = AttnArgs(seqused_k=used, block_table=table, kv_batch_idx=batch_idx, leftpad_k=leftpad, **kw)
    out, lse = run_fwd(q, k_in, v_in, args)
    torch.cuda.synchronize()
    k_seq, v_seq = _cache_keys(k_logical, rows, shift, used), _cache_keys(v_logical, rows, shift, used)
    oracle = AttnArgs(seqused_k=(used - shift).to(torch.int32), **kw)
    o64, l64 = R.attention(q.double(), k_seq.double(), v_seq.double(), **ref_kwargs(oracle), dtype=torch.float64)
    ob, lb = R.attention(q, k_seq, v_seq, **ref_kwargs(oracle), dtype=q.dtype)
    check("out", out, o64, ob, 2, case)
    check("lse", lse, l64, lb, 2, case)


@pytest.mark.parametrize("sq", [7, 100], ids=["split_kernels", "full_kernel"])
@pytest.mark.parametrize("page", [16, 5, 128, 256])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_paged_kv(causal, d, page, sq):
    """7 queries per sequence run the split kernels (sm80/fwd_split.h), 100 with num_splits=1 the
    full kernel; so do the cache tests below."""
    _need(d, torch.bfloat16)
    q = rand(3, sq, 4, d)
    k, v = rand(3, 700, 2, d), rand(3, 700, 2, d)
    used = torch.tensor([700, 1, 333], dtype=torch.int32, device=DEV)
    compare_cache(q, k, v, used, page=page, softmax_scale=d ** -0.5, window_right=0 if causal else -1,
                  num_splits=0 if sq <= 64 else 1, case=f"paged page={page} d{d} causal={causal} sq={sq}")


@pytest.mark.parametrize("sq", [5, 80], ids=["split_kernels", "full_kernel"])
@pytest.mark.parametrize("page", [None, 16], ids=["dense", "page16"])
def test_leftpad_k(page, sq):
    _need(64, torch.float16)
    q = rand(3, sq, 4, 64, dtype=torch.float16)
    k, v = rand(3, 300, 4, 64, dtype=torch.float16), rand(3, 300, 4, 64, dtype=torch.float16)
    used = torch.tensor([300, 90, 171], dtype=torch.int32, device=DEV)
    leftpad = torch.tensor([0, 89, 40], dtype=torch.int32, device=DEV)
    compare_cache(q, k, v, used, page=page, leftpad=leftpad, softmax_scale=0.125, window_right=0,
                  num_splits=0 if sq <= 64 else 1, case=f"leftpad {page} sq={sq}")


def test_kv_batch_idx_with_features():
    """Cache rows picked per sequence, with the full kernel's other features on top."""
    _need(64, torch.bfloat16)
    k, v = rand(5, 257, 1, 64), rand(5, 257, 1, 64)
    used = torch.tensor([257, 30, 128], dtype=torch.int32, device=DEV)
    rows = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEV)
    for sq, splits in ((9, 0), (70, 1)):  # the split kernels, the full kernel
        compare_cache(rand(3, sq, 4, 64), k, v, used, batch_idx=rows, softmax_scale=0.3, softcap=5.0, window_left=60,
                      window_right=0, alibi_slopes=torch.rand(4, device=DEV), num_splits=splits,
                      case=f"kv_batch_idx sq={sq}")


VARLEN_PAGED = {  # (query lengths, key lengths, heads, key heads)
    "prefill": ([3, 40, 1], [100, 41, 300], 4, 2),
    "decode": ([1, 1, 1], [700, 1, 2049], 8, 2),  # vLLM's decode batch: split and folded
}


@pytest.mark.parametrize("case", list(VARLEN_PAGED))
def test_varlen_paged(case):
    """cu_seqlens_k gives the key counts and the table the rows (flash_attn_varlen_func's block_table)."""
    _need(64, torch.bfloat16)
    lens_q, lens_k, h, hk = VARLEN_PAGED[case]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=DEV)
    q = rand(sum(lens_q), h, 64)
    k_logical, v_logical = rand(3, max(lens_k), hk, 64), rand(3, max(lens_k), hk, 64)
    k_phys, v_phys, table = _paged(k_logical, v_logical, 16)
    seq = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    args = AttnArgs(softmax_scale=0.125, window_right=0, block_table=table, **seq)
    if case == "decode":
        lse = torch.empty(h, sum(lens_q), dtype=torch.float32, device=DEV)
        assert LIB.forward_workspace_size(q, k_phys, v_phys, args, torch.empty_like(q), lse) > 0
    out, lse = run_fwd(q, k_phys, v_phys, args)
    torch.cuda.synchronize()
    k_pack = torch.cat([k_logical[i, :n] for i, n in enumerate(lens_k)])
    v_pack = torch.cat([v_logical[i, :n] for i, n in enumerate(lens_k)])
    oracle = AttnArgs(softmax_scale=0.125, window_right=0, **seq)
    o64, l64 = R.attention(q.double(), k_pack.double(), v_pack.double(), **ref_kwargs(oracle), dtype=torch.float64)
    ob, lb = R.attention(q, k_pack, v_pack, **ref_kwargs(oracle), dtype=q.dtype)
    check("out", out, o64, ob, 2, f"varlen paged {case}")
    check("lse", lse, l64, lb, 2, f"varlen paged {case}")


# ---------------------------------------------------------------------------------------------
# Decoding: one query per sequence with grouped heads runs the group's heads as one block's rows
# (abi_glue.cu fold_query_heads), and grids that leave SMs idle split the keys (sm80/fwd_split.h).
def _split_workspace(q, k, v, args) -> int:
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device=DEV)
    return LIB.forward_workspace_size(q, k, v, args, torch.empty_like(q), lse)


@pytest.mark.parametrize("num_splits", [0, 3, 1000], ids=["auto", "3", "clamped"])
@pytest.mark.parametrize("d", [40, 64, 128, 256])
def test_split_kv_decode(d, num_splits):
    """A decoding step over 3000 keys, 8 query heads on 2 key heads: split (workspace > 0 proves
    the split kernels run), causal, against the oracle; the same call twice is bitwise equal."""
    _need(d, torch.bfloat16)
    q, k, v = qkv(2, 1, 3000, 8, 2, d, torch.bfloat16)
    args = AttnArgs(softmax_scale=d ** -0.5, window_right=0, num_splits=num_splits)
    assert _split_workspace(q, k, v, args) > 0
    out, lse = compare(q, k, v, args, backward=False, case=f"split d{d} num_splits={num_splits}")
    again, lse_again = run_fwd(q, k, v, args)
    assert torch.equal(out, again) and torch.equal(lse, lse_again)


@pytest.mark.parametrize("page", [None, 16, 256], ids=["dense", "page16", "page256"])
def test_split_kv_cache(page):
    """Split decoding through the cache addressing, with a sequence that has no key (all of its
    splits empty: out 0, lse +inf), one with a single key, leftpad and softcap."""
    _need(128, torch.float16)
    q = rand(4, 1, 16, 128, dtype=torch.float16)
    k, v = rand(4, 2100, 4, 128, dtype=torch.float16), rand(4, 2100, 4, 128, dtype=torch.float16)
    used = torch.tensor([2100, 0, 1, 1500], dtype=torch.int32, device=DEV)
    leftpad = torch.tensor([0, 0, 0, 700], dtype=torch.int32, device=DEV)
    compare_cache(q, k, v, used, page=page, leftpad=leftpad, softmax_scale=0.3, softcap=8.0, window_right=0,
                  num_splits=6, case=f"split cache {page}")
    out, lse = run_fwd(q, k, v, AttnArgs(softmax_scale=0.3, seqused_k=used, num_splits=6))
    assert torch.equal(out[1], torch.zeros_like(out[1])) and bool((lse[1] == float("inf")).all())


@pytest.mark.parametrize("rtz", [False, True])
def test_split_kv_chunked_prefill(rtz):
    """37 new queries per sequence over 1000 keys, causal, split 5 ways (the fold does not apply)."""
    _need(64, torch.bfloat16)
    q, k, v = qkv(2, 37, 1000, 4, 4, 64, torch.bfloat16)
    args = AttnArgs(softmax_scale=0.125, window_right=0, num_splits=5, rtz=rtz)
    assert _split_workspace(q, k, v, args) > 0
    compare(q, k, v, args, backward="bwd" in INFO["directions"], case=f"split prefill rtz={rtz}")


FOLD_CASES = {
    "causal": dict(window_right=0),
    "plain": dict(),
    "softcap": dict(softcap=4.0),
    "alibi (not folded)": dict(alibi_slopes="per_head"),
    "left window (not folded)": dict(window_left=100, window_right=0),
}


@pytest.mark.parametrize("case", list(FOLD_CASES))
@pytest.mark.parametrize("heads,hk", [(12, 3), (96, 1)])
def test_decode_query_head_fold(case, heads, hk):
    """One query, 12 heads on 3 key heads or 96 on 1, unsplit (num_splits=1): the folded call is
    the same attention as the unfolded one, and the backward of the folded forward's lse is right.
    A decoding step runs the split kernels with one split where its rows (folded: the group) fit
    their 64-row tile, so 96 heads on one key head fold into the plain or full kernel instead."""
    _need(64, torch.bfloat16)
    kw = dict(FOLD_CASES[case])
    if kw.get("alibi_slopes") == "per_head":
        kw["alibi_slopes"] = torch.rand(heads, device=DEV)
    q, k, v = qkv(3, 1, 500, heads, hk, 64, torch.bfloat16)
    args = AttnArgs(softmax_scale=0.125, num_splits=1, **kw)
    rows = 1 if "not folded" in case else heads // hk
    assert (_split_workspace(q, k, v, args) > 0) == (rows <= 64)
    compare(q, k, v, args, backward="bwd" in INFO["directions"], case=f"fold {case} {heads}/{hk} heads")


def test_forward_workspace_contract():
    """The ABI's promise the planned call paths rely on: a dense call's workspace follows its
    signature (a training-sized grid is not split); a varlen call's follows its max lengths too
    (decoding runs the split kernels, one split over 64 keys)."""
    _need(64, torch.bfloat16)
    q, k, v, cu_q, cu_k = _varlen([1, 1], [3000, 2000], 8, 2, 64, torch.bfloat16)
    lse = torch.empty(8, 2, dtype=torch.float32, device=DEV)
    for max_q, max_k, splits in ((1, 3000, True), (1, 64, True), (2048, 3000, False)):
        args = AttnArgs(softmax_scale=0.125, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                        max_seqlen_k=max_k)
        assert (LIB.forward_workspace_size(q, k, v, args, torch.empty_like(q), lse) > 0) == splits, (max_q, max_k)
    q, k, v = qkv(8, 2048, 2048, 16, 16, 64, torch.bfloat16)
    assert _split_workspace(q, k, v, AttnArgs(softmax_scale=0.125)) == 0


# Varlen decoding, one query per sequence at most (transformers' padded batch decoding, vLLM's
# decode batches): the query heads fold and the keys split as in dense decoding (abi_glue.cu).
VARLEN_DECODE = {
    "gqa causal": dict(h=8, hk=2, window_right=0),
    "gqa softcap": dict(h=8, hk=2, softcap=6.0),
    "mha (not folded)": dict(h=4, hk=4, window_right=0),
    "alibi (not folded)": dict(h=8, hk=2, alibi=True),
}


@pytest.mark.parametrize("num_splits", [0, 1, 4], ids=["auto", "unsplit", "4"])
@pytest.mark.parametrize("case", list(VARLEN_DECODE))
def test_varlen_decode(case, num_splits):
    """Five sequences, one without a query (its 300 keys are skipped) and one with a single key;
    out and lse (nheads, total_q) against the oracle, the backward of that lse, a bitwise repeat."""
    _need(128, torch.bfloat16)
    kw = dict(VARLEN_DECODE[case])
    h, hk = kw.pop("h"), kw.pop("hk")
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.rand(5, h, device=DEV)
    q, k, v, cu_q, cu_k = _varlen([1, 1, 0, 1, 1], [1, 2500, 300, 77, 1800], h, hk, 128, torch.bfloat16)
    args = AttnArgs(softmax_scale=128 ** -0.5 * (3 if "softcap" in kw else 1), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                    max_seqlen_q=1, max_seqlen_k=2500, num_splits=num_splits, **kw)
    lse = torch.empty(h, q.shape[0], dtype=torch.float32, device=DEV)
    if num_splits != 1:
        assert LIB.forward_workspace_size(q, k, v, args, torch.empty_like(q), lse) > 0
    out, lse = compare(q, k, v, args, backward="bwd" in INFO["directions"], case=f"varlen decode {case} {num_splits}")
    again, lse_again = run_fwd(q, k, v, args)
    assert torch.equal(out, again) and torch.equal(lse, lse_again)


def test_fully_masked_rows():
    """Rows that see no key output exactly 0, lse = +inf, and get zero gradients."""
    _need(64, torch.float16, bwd=True)
    q, k, v = qkv(2, 50, 10, 2, 2, 64, torch.float16)
    args = AttnArgs(softmax_scale=0.125, window_right=0)  # row i sees keys j <= i - 40
    out, lse = compare(q, k, v, args, case="fully masked")
    assert torch.equal(out[:, :40], torch.zeros_like(out[:, :40]))
    assert bool(torch.isinf(lse[:, :, :40]).all()) and bool((lse[:, :, :40] > 0).all())
    dq, _, _ = run_bwd(torch.randn_like(q), q, k, v, out, lse, args)
    assert torch.equal(dq[:, :40], torch.zeros_like(dq[:, :40]))


@pytest.mark.parametrize("d", [64, 128])
def test_dropout_mask_is_bit_exact(d):
    """With q = 0 every visible key gets probability 1/sk; one-hot values then make the output
    (forward) and dV (backward) spell out the keep mask, which must equal rng.keep_mask exactly."""
    _need(d, bwd=True)
    b, h, sq, sk, p = 2, 3, 60, d, 0.5
    seed, offset = 0xDEADBEEF_0BADF00D, 0x1_0000_0003
    q = torch.zeros(b, sq, h, d, dtype=torch.bfloat16, device=DEV)
    k = rand(b, sk, h, d)
    v = torch.eye(sk, d, device=DEV).to(torch.bfloat16).view(1, sk, 1, d).expand(b, sk, h, d).contiguous()
    args = AttnArgs(softmax_scale=1.0, dropout_p=p, rng_seed=seed, rng_offset=offset)
    out, lse = run_fwd(q, k, v, args)
    bh = torch.arange(b * h, device=DEV)
    keep = rng.keep_mask(seed, offset, bh, torch.arange(sq, device=DEV), torch.arange(sk, device=DEV), p)
    keep = keep.view(b, h, sq, sk)
    fwd_mask = out.permute(0, 2, 1, 3)[..., :sk] > 0
    assert torch.equal(fwd_mask, keep), f"forward mask differs in {(fwd_mask != keep).sum().item()} places"
    dout = torch.eye(sq, d, device=DEV).to(torch.bfloat16).view(1, sq, 1, d).expand(b, sq, h, d).contiguous()
    _, _, dv = run_bwd(dout, q, k, v, out, lse, args)
    bwd_mask = dv.permute(0, 2, 3, 1)[:, :, :sq, :] > 0  # dv[b, j, h, i] = keep[b, h, i, j] / (sk (1-p))
    assert torch.equal(bwd_mask, keep), "backward regenerates a different mask"


def test_deterministic_is_bitwise_reproducible():
    _need(128, bwd=True)
    q, k, v = qkv(2, 1031, 1031, 4, 2, 128, torch.bfloat16)
    args = AttnArgs(softmax_scale=128 ** -0.5, window_right=0, deterministic=True)
    out, lse = compare(q, k, v, args, case="deterministic")
    dout = torch.randn_like(q)
    first = run_bwd(dout, q, k, v, out, lse, args)
    for _ in range(3):
        again = run_bwd(dout, q, k, v, out, lse, args)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.parametrize("d", [64, 128])
def test_causal_grid_order(d):
    """A causal grid with many (batch, head) pairs runs them in groups, heaviest block first across
    each group (csrc_cuda/common/schedule.h; on an H100 the forward's groups hold 16 pairs, the
    backward's 8 at d 64), the last group short: every block still runs once, and the
    deterministic backward, whose key blocks take turns, still finishes and repeats bitwise."""
    _need(d, torch.bfloat16, bwd=True)
    q, k, v = qkv(3, 2048, 2048, 7, 7, d, torch.bfloat16)
    args = AttnArgs(softmax_scale=d ** -0.5, window_right=0, deterministic=True)
    out, lse = compare(q, k, v, args, case=f"grid order d{d}")
    dout = torch.randn_like(q)
    first = run_bwd(dout, q, k, v, out, lse, args)
    again = run_bwd(dout, q, k, v, out, lse, args)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", [80, 86, 90])
@pytest.mark.parametrize("d", [32, 64, 96, 128, 192, 256])
def test_arch_rows(arch, d):
    """fa_problem.arch picks the tile table row: each row's tiles run (on a newer device)."""
    _need(d, torch.bfloat16, bwd=True)
    major, minor = torch.cuda.get_device_capability()
    if arch > major * 10 + minor:
        pytest.skip("device older than the row")
    q, k, v = qkv(2, 300, 333, 2, 2, d, torch.bfloat16)
    compare(q, k, v, AttnArgs(softmax_scale=d ** -0.5, window_right=0), arch=arch, case=f"arch {arch} d{d}")


def test_rtz():
    _need(128, bwd=True)
    q, k, v = qkv(2, 200, 200, 4, 4, 128, torch.bfloat16)
    rne, _ = run_fwd(q, k, v, AttnArgs(softmax_scale=128 ** -0.5))
    rtz, _ = compare(q, k, v, AttnArgs(softmax_scale=128 ** -0.5, rtz=True), case="rtz")
    assert not torch.equal(rne, rtz)
    assert rtz.float().abs().mean() < rne.float().abs().mean()  # truncation shrinks magnitudes


def test_unaligned_strides_are_handled():
    _need(64, torch.float16, bwd=True)
    big = rand(2, 100, 3, 72, dtype=torch.float16)
    q = big[..., 1:65]  # pointer off by 2 bytes: the binding copies it
    k, v = rand(2, 90, 3, 64, dtype=torch.float16), rand(2, 90, 3, 64, dtype=torch.float16)
    compare(q, k, v, AttnArgs(softmax_scale=0.125), case="unaligned")


def test_unsupported_calls_raise():
    _need(64, torch.float16)
    q, k, v = qkv(1, 16, 16, 1, 1, 64, torch.float16)
    bt = torch.zeros(1, 1, dtype=torch.int32, device=DEV)
    with pytest.raises(RuntimeError, match="block_table is set without seqused_k or cu_seqlens_k"):
        run_fwd(q, k, v, AttnArgs(softmax_scale=0.125, block_table=bt))
    used = torch.full((1,), 16, dtype=torch.int32, device=DEV)
    with pytest.raises(RuntimeError, match="kv_batch_idx selects a row of a dense cache"):
        run_fwd(q, k, v, AttnArgs(softmax_scale=0.125, block_table=bt, seqused_k=used, kv_batch_idx=used * 0))
    if "bwd" in INFO["directions"]:
        out, lse = run_fwd(q, k, v, AttnArgs(softmax_scale=0.125))
        with pytest.raises(RuntimeError, match="the cuda backward has no KV-cache addressing"):
            run_bwd(torch.randn_like(q), q, k, v, out, lse, AttnArgs(softmax_scale=0.125, leftpad_k=used * 0))


def test_build_info():
    assert INFO["backend"] == "cuda"
    assert set(INFO["directions"]) <= {"fwd", "bwd"} and INFO["directions"]
    assert all(d in (32, 64, 96, 128, 192, 256) for d in BUCKETS)
    assert {"paged_kv", "leftpad", "kv_batch_idx", "split_kv"} <= set(INFO["features"])
