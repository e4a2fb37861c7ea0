"""The six attention functions of flash_attn_interface against the float64 oracle.

Accuracy rule (shared/DESIGN.md): max|out - fp64| <= 2 x max|baseline - fp64| + 1e-5, baseline =
plain attention in the input dtype; gradients 3x. Every test draws fresh random inputs and runs on
every device of the `device` fixture through whichever backend the dispatcher picks.
"""
from __future__ import annotations

import pytest
import torch

import flash_attn
from flash_attn import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                        flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                        flash_attn_varlen_qkvpacked_func)
from flash_attn import fastpath
from flash_attn.backends import autograd_node, native, registry
from flash_attn.bert_padding import pad_input, unpad_input
from helpers import DTYPES, Oracle, check_lse, random_padding_mask, randn, round_toward_zero

HEAD_DIMS = [40, 59, 64, 111, 128, 256]
# (seqlen_q, seqlen_k): single tokens, odd lengths, q longer and k longer
SEQLENS = [(1, 1), (1, 239), (239, 1), (113, 203), (203, 113), (128, 128)]


def _qkv(b, sq, sk, h, hk, d, dtype, device, grad=True):
    return (randn(b, sq, h, d, dtype=dtype, device=device, requires_grad=grad),
            randn(b, sk, hk, d, dtype=dtype, device=device, requires_grad=grad),
            randn(b, sk, hk, d, dtype=dtype, device=device, requires_grad=grad))


def _fwd_bwd(fn, inputs, dout=None):
    """Runs fn(), returns (out, lse, grads w.r.t. inputs); lse from return_attn_probs."""
    out, lse, _ = fn()
    dout = torch.randn_like(out) if dout is None else dout
    grads = torch.autograd.grad(out, inputs, dout)
    return out, lse, grads, dout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("sq,sk", SEQLENS)
@pytest.mark.parametrize("causal", [False, True])
def test_func_accuracy(device, dtype, d, sq, sk, causal):
    q, k, v = _qkv(2, sq, sk, 2, 2, d, dtype, device)
    out, lse, grads, dout = _fwd_bwd(
        lambda: flash_attn_func(q, k, v, causal=causal, return_attn_probs=True), (q, k, v))
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (2, 2, sq)
    Oracle(q, k, v, dout, causal=causal).check(out, grads, lse)


FEATURES = {
    "local": dict(window_size=(17, 5)),
    "local_left_only": dict(window_size=(9, -1)),
    "local_right_only": dict(window_size=(-1, 0)),  # causal spelled as a window
    "sliding_causal": dict(causal=True, window_size=(23, -1)),
    "alibi_h": dict(alibi="h"),
    "alibi_bh_causal": dict(alibi="bh", causal=True),
    "softcap": dict(softcap=2.5),
    "softcap_local_alibi": dict(softcap=5.0, window_size=(31, 7), alibi="h"),
    "scale": dict(softmax_scale=0.37),
}


def _feature_kwargs(spec, b, h, device):
    """Call kwargs from a FEATURES-style spec; alibi "h"/"bh" become random slopes of that shape."""
    kw = dict(spec)
    alibi = kw.pop("alibi", None)
    if alibi == "h":
        kw["alibi_slopes"] = torch.rand(h, device=device) * 0.3
    elif alibi == "bh":
        kw["alibi_slopes"] = torch.rand(b, h, device=device) * 0.3
    return kw


def _ref_kwargs(kw):
    ref = {"causal": kw.get("causal", False), "window": kw.get("window_size", (-1, -1)),
           "softcap": kw.get("softcap", 0.0), "softmax_scale": kw.get("softmax_scale")}
    if kw.get("alibi_slopes") is not None:
        ref["alibi_slopes"] = kw["alibi_slopes"]
    return ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("sq,sk", [(113, 203), (203, 113), (1, 65)])
def test_func_features(device, dtype, feature, sq, sk):
    b, h = 2, 4
    q, k, v = _qkv(b, sq, sk, h, 2, 64, dtype, device)
    kw = _feature_kwargs(FEATURES[feature], b, h, device)
    out, lse, grads, dout = _fwd_bwd(lambda: flash_attn_func(q, k, v, return_attn_probs=True, **kw),
                                     (q, k, v))
    Oracle(q, k, v, dout, **_ref_kwargs(kw)).check(out, grads, lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nheads_k", [6, 3, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_mqa_gqa(device, dtype, nheads_k, causal):
    q, k, v = _qkv(2, 97, 131, 6, nheads_k, 64, dtype, device)
    out, lse, grads, dout = _fwd_bwd(
        lambda: flash_attn_func(q, k, v, causal=causal, return_attn_probs=True), (q, k, v))
    assert grads[1].shape == k.shape
    Oracle(q, k, v, dout, causal=causal).check(out, grads, lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_qkvpacked(device, dtype, causal):
    qkv = randn(2, 151, 3, 4, 59, dtype=dtype, device=device, requires_grad=True)
    out, lse, (dqkv,), dout = _fwd_bwd(
        lambda: flash_attn_qkvpacked_func(qkv, causal=causal, return_attn_probs=True), (qkv,))
    assert dqkv.shape == qkv.shape
    q, k, v = qkv.unbind(2)
    Oracle(q, k, v, dout, causal=causal).check(out, dqkv.unbind(2), lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_kvpacked(device, dtype, causal):
    q = randn(2, 77, 6, 40, dtype=dtype, device=device, requires_grad=True)
    kv = randn(2, 143, 2, 2, 40, dtype=dtype, device=device, requires_grad=True)
    out, lse, (dq, dkv), dout = _fwd_bwd(
        lambda: flash_attn_kvpacked_func(q, kv, causal=causal, return_attn_probs=True), (q, kv))
    k, v = kv.unbind(2)
    Oracle(q, k, v, dout, causal=causal).check(out, (dq, *dkv.unbind(2)), lse)


def _unpad(x, mask):
    x_unpad, indices, cu, max_s, _ = unpad_input(x, mask)
    return x_unpad, indices, cu, max_s


def _varlen_lse(lse_ref, indices, b, s, h):
    """(b, h, s) padded reference lse -> (h, total) in the packed row order."""
    return lse_ref.transpose(1, 2).reshape(b * s, h)[indices].t()


VARLEN_CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "local": dict(window_size=(13, 4)),
    "alibi_softcap_causal": dict(causal=True, alibi="bh", softcap=3.0),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(VARLEN_CASES))
@pytest.mark.parametrize("sq,sk", [(97, 97), (61, 150), (150, 61)])
def test_varlen(device, dtype, case, sq, sk):
    b, h, hk, d = 3, 4, 2, 111
    q, k, v = _qkv(b, sq, sk, h, hk, d, dtype, device)
    mq, mk = random_padding_mask(b, sq, device), random_padding_mask(b, sk, device)
    q_u, idx_q, cu_q, max_q = _unpad(q, mq)
    k_u, idx_k, cu_k, max_k = _unpad(k, mk)
    v_u, _, _, _ = _unpad(v, mk)
    assert cu_q.dtype == torch.int32 and max_q == sq and max_k == sk
    kw = _feature_kwargs(VARLEN_CASES[case], b, h, device)
    out_u, lse, _ = flash_attn_varlen_func(q_u, k_u, v_u, cu_q, cu_k, max_q, max_k,
                                           return_attn_probs=True, **kw)
    assert out_u.shape == q_u.shape
    assert lse.shape == (h, q_u.shape[0]), "varlen lse is (nheads, total_q)"
    out = pad_input(out_u, idx_q, b, sq)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    oracle = Oracle(q, k, v, dout, key_padding_mask=mk, query_padding_mask=mq, **_ref_kwargs(kw))
    oracle.check(out, grads)
    check_lse(lse, _varlen_lse(oracle.lse, idx_q, b, sq, h), _varlen_lse(oracle.lse_base, idx_q, b, sq, h))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_qkvpacked(device, dtype, causal):
    b, s, h, d = 3, 83, 4, 64
    qkv = randn(b, s, 3, h, d, dtype=dtype, device=device, requires_grad=True)
    mask = random_padding_mask(b, s, device)
    qkv_u, idx, cu, max_s = _unpad(qkv, mask)
    out_u = flash_attn_varlen_qkvpacked_func(qkv_u, cu, max_s, causal=causal)
    out = pad_input(out_u, idx, b, s)
    dout = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, (qkv,), dout)
    q, k, v = qkv.unbind(2)
    Oracle(q, k, v, dout, causal=causal, key_padding_mask=mask, query_padding_mask=mask).check(
        out, dqkv.unbind(2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_kvpacked(device, dtype, causal):
    b, sq, sk, h, hk, d = 3, 45, 112, 4, 1, 128
    q = randn(b, sq, h, d, dtype=dtype, device=device, requires_grad=True)
    kv = randn(b, sk, 2, hk, d, dtype=dtype, device=device, requires_grad=True)
    mq, mk = random_padding_mask(b, sq, device), random_padding_mask(b, sk, device)
    q_u, idx_q, cu_q, max_q = _unpad(q, mq)
    kv_u, _, cu_k, max_k = _unpad(kv, mk)
    out_u = flash_attn_varlen_kvpacked_func(q_u, kv_u, cu_q, cu_k, max_q, max_k, causal=causal)
    out = pad_input(out_u, idx_q, b, sq)
    dout = torch.randn_like(out)
    dq, dkv = torch.autograd.grad(out, (q, kv), dout)
    k, v = kv.unbind(2)
    Oracle(q, k, v, dout, causal=causal, key_padding_mask=mk, query_padding_mask=mq).check(
        out, (dq, *dkv.unbind(2)))


def test_return_attn_probs_without_dropout(device):
    """(out, softmax_lse, None): S_dmask only exists with dropout, as upstream."""
    q, k, v = _qkv(1, 5, 7, 2, 2, 64, torch.float16, device, grad=False)
    out, lse, s_dmask = flash_attn_func(q, k, v, return_attn_probs=True)
    assert s_dmask is None and lse.dtype == torch.float32 and lse.shape == (1, 2, 5)
    assert torch.equal(out, flash_attn_func(q, k, v))


def test_fully_masked_rows_give_zero(device):
    """Causal with seqlen_q > seqlen_k (bottom-right aligned): the first sq - sk query rows see no
    key; their output and dq are exactly 0 and their lse is +inf, with no NaN anywhere."""
    sq, sk = 37, 11
    q, k, v = _qkv(2, sq, sk, 2, 1, 64, torch.float16, device)
    out, lse, grads, dout = _fwd_bwd(
        lambda: flash_attn_func(q, k, v, causal=True, return_attn_probs=True), (q, k, v))
    assert torch.all(out[:, : sq - sk] == 0)
    assert torch.all(out[:, sq - sk:].abs().sum(-1) > 0)
    assert torch.all(torch.isposinf(lse[:, :, : sq - sk]))
    assert torch.all(grads[0][:, : sq - sk] == 0)
    Oracle(q, k, v, dout, causal=True).check(out, grads, lse)


def test_varlen_empty_key_sequence_gives_zero(device):
    """A sequence with no keys at all (cu_seqlens_k repeats a value): its queries output 0."""
    dtype, h, d = torch.bfloat16, 2, 64
    # sequence lengths: q 5, 7, 3; k 6, 0, 4
    cu_q = torch.tensor([0, 5, 12, 15], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 6, 6, 10], dtype=torch.int32, device=device)
    q = randn(15, h, d, dtype=dtype, device=device)
    k, v = randn(10, h, d, dtype=dtype, device=device), randn(10, h, d, dtype=dtype, device=device)
    out, lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 7, 6, return_attn_probs=True)
    assert torch.all(out[5:12] == 0) and torch.all(torch.isposinf(lse[:, 5:12]))
    for rows, keys in ((slice(0, 5), slice(0, 6)), (slice(12, 15), slice(6, 10))):
        Oracle(q[rows][None], k[keys][None], v[keys][None]).check(out[rows][None])


# --- dropout ---------------------------------------------------------------------------------

P_DROP = 0.17


def _keep_mask(s_dmask):
    """S_dmask holds the probabilities negated where dropped (-0.0 for a dropped zero)."""
    return ~torch.signbit(s_dmask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_reference_with_its_mask(device, dtype, causal):
    b, sq, sk, h, hk, d = 2, 97, 131, 3, 1, 64
    q, k, v = _qkv(b, sq, sk, h, hk, d, dtype, device)
    out, lse, s_dmask = flash_attn_func(q, k, v, P_DROP, causal=causal, return_attn_probs=True)
    assert s_dmask.shape == (b, h, sq, sk)
    keep = _keep_mask(s_dmask)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    oracle = Oracle(q, k, v, dout, causal=causal, keep_mask=keep, dropout_p=P_DROP)
    oracle.check(out, grads, lse)
    # |S_dmask| are the attention probabilities, before dropout scaling
    probs = torch.exp(_scores64(q, k, causal) - oracle.lse.unsqueeze(-1))
    torch.testing.assert_close(s_dmask.abs().double(), probs, atol=2e-3, rtol=1e-2)


def _scores64(q, k, causal):
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    kk = k.double().repeat_interleave(h // hk, 2)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), kk) / d ** 0.5
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        s = s.masked_fill(j > i + sk - sq, float("-inf"))
    return s


def test_dropout_rate_and_mask_statistics(device):
    b, s, h, d = 2, 160, 4, 32
    q, k, v = _qkv(b, s, s, h, h, d, torch.float16, device, grad=False)
    _, _, s_dmask = flash_attn_func(q, k, v, P_DROP, return_attn_probs=True)
    dropped = (~_keep_mask(s_dmask)).double()
    n = dropped.numel()
    sigma = (P_DROP * (1 - P_DROP) / n) ** 0.5
    assert abs(dropped.mean().item() - P_DROP) < 6 * sigma, dropped.mean().item()
    # the mask is not shared between heads, batch entries, rows or columns
    per_bh = dropped.flatten(2)
    assert not torch.equal(per_bh[0, 0], per_bh[0, 1]) and not torch.equal(per_bh[0, 0], per_bh[1, 0])
    assert not torch.equal(dropped[..., 0, :], dropped[..., 1, :])
    assert not torch.equal(dropped[..., 0], dropped[..., 1])
    # every row's rate is near p (no structure such as whole rows dropped)
    row_rate = dropped.mean(-1)
    assert row_rate.max().item() < P_DROP + 0.2 and row_rate.min().item() > P_DROP - 0.15


def test_dropout_reproducible_with_manual_seed(device):
    q, k, v = _qkv(2, 64, 80, 2, 2, 64, torch.bfloat16, device, grad=False)
    torch.manual_seed(1234)
    out1 = flash_attn_func(q, k, v, 0.3)
    out1b = flash_attn_func(q, k, v, 0.3)
    torch.manual_seed(1234)
    out2 = flash_attn_func(q, k, v, 0.3)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out1b), "a second call without reseeding draws a new mask"


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_dropout_matches_reference_with_its_mask(device, dtype):
    b, sq, sk, h, d = 3, 57, 73, 2, 64
    q, k, v = _qkv(b, sq, sk, h, h, d, dtype, device)
    mq, mk = random_padding_mask(b, sq, device), random_padding_mask(b, sk, device)
    q_u, idx_q, cu_q, max_q = _unpad(q, mq)
    k_u, _, cu_k, max_k = _unpad(k, mk)
    v_u, _, _, _ = _unpad(v, mk)
    out_u, _, s_dmask = flash_attn_varlen_func(q_u, k_u, v_u, cu_q, cu_k, max_q, max_k, P_DROP,
                                               causal=True, return_attn_probs=True)
    keep = _keep_mask(s_dmask[:, :, :sq, :sk])
    out = pad_input(out_u, idx_q, b, sq)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    Oracle(q, k, v, dout, causal=True, key_padding_mask=mk, query_padding_mask=mq, keep_mask=keep,
           dropout_p=P_DROP).check(out, grads)


# --- deterministic mode, RTZ, performance mode ------------------------------------------------

def _grads_once(q, k, v, dout, **kw):
    out = flash_attn_func(q, k, v, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


@pytest.mark.parametrize("kind", ["dense", "alibi", "varlen"])
def test_torch_func_grad_and_vjp_match_autograd(device, kind):
    """torch.func.grad and vjp over flash_attn's calls (the fast path steps aside for the general
    path's Function) give autograd's gradients: bitwise for vjp (deterministic backward), within
    the rounding of the summed loss for grad."""
    q, k, v = _qkv(2, 75, 90, 4, 2, 64, torch.bfloat16, device)
    dout = torch.randn_like(q)
    slopes = torch.rand(4, device=device) if kind == "alibi" else None
    cu_q = torch.tensor([0, 75, 150], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 90, 180], dtype=torch.int32, device=device)

    def attn(q_, k_, v_):
        if kind == "varlen":
            out = flash_attn.flash_attn_varlen_func(q_.flatten(0, 1), k_.flatten(0, 1), v_.flatten(0, 1), cu_q, cu_k,
                                                    75, 90, causal=True, deterministic=True)
            return out.unflatten(0, (2, 75))
        return flash_attn_func(q_, k_, v_, causal=True, alibi_slopes=slopes, deterministic=True)

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(attn(*leaves), leaves, dout)
    got = torch.func.grad(lambda *a: (attn(*a).float() * dout.float()).sum(), argnums=(0, 1, 2))(q, k, v)
    out, vjp = torch.func.vjp(attn, q, k, v)
    for w, g, g2 in zip(want, got, vjp(dout)):
        assert torch.allclose(w.float(), g.float(), atol=2e-2, rtol=2e-2)
        assert torch.equal(w, g2)
    assert torch.equal(out, attn(q, k, v))


def test_nested_torch_func_transforms_are_refused(device):
    q, k, v = _qkv(1, 20, 20, 2, 2, 64, torch.float16, device)
    loss = lambda q_: flash_attn_func(q_, k, v).float().sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="nested"):
        torch.func.grad(lambda q_: torch.func.grad(loss)(q_).float().sum())(q)


@pytest.mark.parametrize("how", ["argument", "env"])
def test_deterministic_backward_is_bitwise_reproducible(device, how, monkeypatch):
    q, k, v = _qkv(2, 256, 320, 4, 2, 64, torch.bfloat16, device)
    dout = torch.randn_like(q)
    kw = dict(causal=True, dropout_p=0.1 if how == "argument" else 0.0)
    if how == "env":
        monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "1")
    else:
        kw["deterministic"] = True
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(_grads_once(q, k, v, dout, **kw))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("how,expected", [("argument", True), ("env", True), ("env_off", False)])
def test_deterministic_reaches_the_backend(device, how, expected, monkeypatch):
    """The backward receives deterministic=True from the argument or the environment flag (on the
    CPU every result is reproducible anyway, so watch what the backend is told): through a backend
    object on the general path, through the params struct's flags on the fast path (fastpath.py).
    The spy sits in Python, so planned calls take the Python autograd node here; the C++ node gets
    the same params struct (tests/flash_attn/test_fastpath.py checks it bit for bit)."""
    monkeypatch.setattr(autograd_node, "_state", (None, "the test spies on the Python node's library calls"))
    monkeypatch.setattr(fastpath._local, "plans", {}, raising=False)
    seen = []
    for impl in registry.IMPLEMENTATIONS.values():
        def spy(*a, _real=impl.backward, **kw):
            seen.append(a[6].deterministic)  # (dout, q, k, v, out, lse, args, ...)
            return _real(*a, **kw)
        monkeypatch.setattr(impl, "backward", spy)
    flags_at, = native._offsets(native._BwdParams, "problem.flags")

    def call_spy(self, *pointers, _real=native.PackedCall.__call__):
        if self._what == "backward":
            seen.append(bool(int.from_bytes(self.buf.raw[flags_at:flags_at + 4], "little")
                             & native.FA_FLAG_DETERMINISTIC))
        return _real(self, *pointers)
    monkeypatch.setattr(native.PackedCall, "__call__", call_spy)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "1" if how == "env" else "0")
    q, k, v = _qkv(1, 16, 16, 2, 2, 64, torch.float16, device)
    out = flash_attn_func(q, k, v, deterministic=how == "argument")
    out.backward(torch.randn_like(out))
    assert seen == [expected]


def test_deterministic_varlen_backward(device):
    b, s, h, d = 4, 200, 4, 64
    q, k, v = _qkv(b, s, s, h, 1, d, torch.float16, device)
    mask = random_padding_mask(b, s, device)
    dout = torch.randn(b, s, h, d, dtype=q.dtype, device=device)

    def run():
        q_u, idx, cu, m = _unpad(q, mask)
        k_u, v_u = _unpad(k, mask)[0], _unpad(v, mask)[0]
        out = pad_input(flash_attn_varlen_func(q_u, k_u, v_u, cu, cu, m, m, deterministic=True),
                        idx, b, s)
        return torch.autograd.grad(out, (q, k, v), dout)

    first = run()
    for a, b_ in zip(first, run()):
        assert torch.equal(a, b_)


def _backends(q, k, v):
    """(forward, backward) backend a causal call would use under the flags now set."""
    ex = flash_attn.explain(q, k, v, causal=True)
    return ex.backend("fwd"), ex.backend("bwd")


def _magnitude_bits(x):
    return x.view(torch.int16).int() & 0x7FFF


def _assert_rtz_of_same_value(rne, rtz, name):
    """rne and rtz are one fp32 result rounded two ways: rtz is the rne value or one ulp nearer
    zero, never of another sign, and about half of the values moved."""
    nonzero = rne != 0
    assert torch.equal(torch.signbit(rne[nonzero]), torch.signbit(rtz[nonzero])), name
    step = _magnitude_bits(rne) - _magnitude_bits(rtz)
    assert step.min() >= 0 and step.max() <= 1, f"{name}: steps {step.min()}..{step.max()}"
    frac = step.double().mean().item()
    assert 0.25 < frac < 0.75, f"{name}: {frac:.2f} of values moved toward zero"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rtz_rounds_toward_zero(device, dtype, monkeypatch):
    q, k, v = _qkv(2, 96, 160, 4, 2, 64, dtype, device)
    dout = torch.randn_like(q)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_USE_RTZ", "0")
    backends_rne = _backends(q, k, v)
    out_rne, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    # The backward reads the (rounded) forward output, so compare both roundings of the backward
    # on identical inputs through the op itself.
    bwd_args = (dout, q.detach(), k.detach(), v.detach(), out_rne.detach(), lse,
                torch.zeros(2, dtype=torch.int64), None, None, None, 0, 0, 64 ** -0.5, -1, 0,
                0.0, 0.0, True)
    grads_rne = flash_attn.ops.bwd(*bwd_args)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_USE_RTZ", "1")
    rtz = _grads_once(q, k, v, dout, causal=True, deterministic=True)
    grads_rtz = flash_attn.ops.bwd(*bwd_args)
    oracle = Oracle(q, k, v, dout, causal=True)
    oracle.check(rtz[0], rtz[1:])
    pairs = list(zip(("out", "dq", "dk", "dv"), (out_rne, *grads_rne), (rtz[0], *grads_rtz)))
    if _backends(q, k, v) == backends_rne == ("reference", "reference"):
        # P and dS stay fp32: the same fp32 arithmetic under both roundings, so each result is
        # the RNE value or one ulp nearer zero, and matches the truncated fp64 truth.
        for name, a, z in pairs:
            _assert_rtz_of_same_value(a, z, name)
        match_rtz = (rtz[0] == round_toward_zero(oracle.out, dtype)).double().mean().item()
        match_rne = (out_rne == oracle.out.to(dtype)).double().mean().item()
        assert match_rtz > 0.95 and match_rne > 0.95, (match_rtz, match_rne)
    else:
        # Tensor-core kernels feed 16-bit P and dS to their products, rounded toward zero too, so
        # the fp32 values differ between the modes; what must show is the direction: of the
        # values that changed, most moved toward zero.
        for name, a, z in pairs:
            moved = a != z
            toward_zero = (z.abs() < a.abs()) & moved
            frac = toward_zero.sum().item() / max(1, moved.sum().item())
            assert moved.double().mean() > 0.2 and frac > 0.75, f"{name}: {frac:.2f} moved toward zero"


@pytest.mark.parametrize("dtype", DTYPES)
def test_performance_mode(device, dtype, monkeypatch):
    q, k, v = _qkv(2, 128, 192, 4, 4, 128, dtype, device)
    dout = torch.randn_like(q)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE", "0")
    normal = _grads_once(q, k, v, dout, causal=True, deterministic=True)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE", "1")
    perf = _grads_once(q, k, v, dout, causal=True, deterministic=True)
    Oracle(q, k, v, dout, causal=True).check(perf[0], perf[1:])
    if _backends(q, k, v) == ("reference", "reference"):
        # the reference rounds P (forward) and P, dS (backward) to 16 bits in this mode
        for name, a, b in zip(("out", "dq", "dk", "dv"), normal, perf):
            assert not torch.equal(a, b), f"{name} unchanged by performance mode"
