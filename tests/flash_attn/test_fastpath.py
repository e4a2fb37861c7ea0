"""The per-signature fast paths (flash_attn/fastpath.py, and flash_attn_with_kvcache's in
flash_attn/kvcache.py) against the general path, on the CPU: a
stub library with the C ABI records the params struct of each call, and the dispatcher is told
the device is an sm90 GPU. A plan must pass the library exactly what the general path passes
(pointers aside, which are checked against the tensors), and fall back where it does not apply.
Calls with autograd run under both autograd nodes (the `node` fixture): the C++ one
(csrc_torch/autograd_node.cpp, built for this torch) and the Python one."""
from __future__ import annotations

import ctypes
import importlib.util
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch

import flash_attn
from flash_attn import fastpath, kvcache, ops
from flash_attn.backends import native, registry
from flash_attn.dispatch import hardware

REPO = Path(__file__).resolve().parents[2]
STUB = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
static unsigned char last[2][4096];
int fa_abi_version(void) { return %d; }
const char* fa_build_info(void) { return %s; }
const char* fa_last_error(void) { return getenv("FA_STUB_FAIL") ? "the stub was told to fail" : ""; }
int fa_fwd_workspace_size(const void* p, size_t* b) {
  const char* keys_at = getenv("FA_STUB_FWD_WS_KEYS_AT");  /* scratch when seqlen_k there >= 100 */
  if (keys_at) { *b = *(const int*)((const char*)p + atoi(keys_at)) >= 100 ? 512 : 0; return 0; }
  *b = getenv("FA_STUB_FWD_WS") ? 512 : 0;
  return 0;
}
int fa_bwd_workspace_size(const void* p, size_t* b) { *b = 4096; return 0; }
static int keep(int which, const void* p) {
  if (getenv("FA_STUB_FAIL")) { return 7; }
  memcpy(last[which], p, ((const unsigned*)p)[1]);
  return 0;
}
int fa_fwd(const void* p) { return keep(0, p); }
int fa_bwd(const void* p) { return keep(1, p); }
void stub_last(int which, void* out, size_t n) { memcpy(out, last[which], n); }
"""


@pytest.fixture
def stub(tmp_path, monkeypatch):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the stub library cannot be built")
    spec = importlib.util.spec_from_file_location("cuda_generate", REPO / "csrc_cuda" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    info = generate.build_info([80, 90], 90, list(generate.HEAD_DIMS), ["fp16", "bf16"], ["fwd", "bwd"])
    src = tmp_path / "stub.c"
    src.write_text(STUB % (native.ABI_VERSION, json.dumps(json.dumps(info))))
    lib_path = tmp_path / "libflash_attn_cuda.so"
    subprocess.run([gcc, "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    monkeypatch.setenv("FLASH_ATTENTION_LIB_DIR", str(tmp_path))
    sm90 = hardware.cuda_target(9, 0, 227 * 1024, "stub", None)
    monkeypatch.setattr(registry.dispatch, "detect", lambda device, override=None: sm90)
    monkeypatch.setattr(native, "_stream", lambda device: 0)

    def reset():
        registry._load.cache_clear()
        registry._select.cache_clear()
        fastpath.clear()

    reset()
    lib = ctypes.CDLL(str(lib_path))
    lib.stub_last.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    yield lib
    reset()


_NODE_TYPE = {"cpp": "CppFunction", "python": "_PlannedAttentionBackward"}


def _last(lib, which: int) -> bytes:
    size = ctypes.sizeof(native._FwdParams if which == 0 else native._BwdParams)
    buf = ctypes.create_string_buffer(size)
    lib.stub_last(which, buf, size)
    return buf.raw


def _pointers(raw: bytes, offsets) -> list:
    return [int.from_bytes(raw[o:o + 8], "little") for o in offsets]


def _without_pointers(raw: bytes, offsets) -> bytes:
    b = bytearray(raw)
    for o in offsets:
        b[o:o + 8] = bytes(8)
    return bytes(b)


def _qkv(b=2, sq=37, sk=53, h=4, hk=2, d=64, grad=False):
    make = lambda s, n: torch.randn(b, s, n, d, dtype=torch.bfloat16).requires_grad_(grad)  # noqa: E731
    return make(sq, h), make(sk, hk), make(sk, hk)


@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window_size": (8, 0), "softcap": 30.0},
                                {"softmax_scale": 0.3}])
def test_forward_struct_matches_general_path(stub, kw):
    q, k, v = _qkv()
    out = flash_attn.flash_attn_func(q, k, v, **kw)
    fast = _last(stub, 0)
    plan = next(iter(fastpath._local.plans.values()))
    assert plan, "the call should have been planned"
    assert _pointers(fast, native._FWD_POINTERS)[1:5] == [q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()]
    # the general path, on the same tensors
    out2, lse, _, _ = ops.forward_impl(q, k, v, None, None, None, None, None, None, None, 0, 0,
                                       kw.get("softmax_scale", 64 ** -0.5),
                                       *flash_attn._validate.window(kw.get("window_size", (-1, -1)),
                                                                    kw.get("causal", False)),
                                       kw.get("softcap", 0.0), 0.0, False, 0)
    general = _last(stub, 0)
    assert _without_pointers(fast, native._FWD_POINTERS) == _without_pointers(general, native._FWD_POINTERS)
    assert out.shape == out2.shape and out.stride() == out2.stride()


@pytest.mark.parametrize("grad", [False, True])
def test_forward_workspace_reaches_planned_calls(stub, node, monkeypatch, grad):
    """A forward that needs scratch (the CUDA library's split-KV partials) gets it on the planned
    path too, C++ or Python, with or without autograd; one that needs none gets NULL."""
    for needs in (False, True):
        if needs:
            monkeypatch.setenv("FA_STUB_FWD_WS", "1")
        fastpath.clear()
        q, k, v = _qkv(grad=grad)
        for _ in range(2):  # the first call plans, the second is served from the plan
            flash_attn.flash_attn_func(q, k, v)
            assert next(iter(fastpath._local.plans.values())), "the call should have been planned"
            assert (_pointers(_last(stub, 0), native._FWD_POINTERS)[6] != 0) == needs


def test_backward_struct_matches_general_path(stub, node):
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v, causal=True)
    assert type(out.grad_fn).__name__ == _NODE_TYPE[node]
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    fast = _last(stub, 1)
    ptrs = _pointers(fast, native._BWD_POINTERS)
    assert ptrs[1:4] == [q.data_ptr(), k.data_ptr(), v.data_ptr()]
    assert ptrs[5] == dout.data_ptr() and ptrs[7:10] == [dq.data_ptr(), dk.data_ptr(), dv.data_ptr()]
    assert ptrs[10] != 0  # the stub asked for a workspace
    lse = torch.empty(ops._lse_shape(q, None), dtype=torch.float32)
    ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, None, None, 0, 0, 64 ** -0.5, -1, 0, 0.0, 0.0,
                      False)
    general = _last(stub, 1)
    assert _without_pointers(fast, native._BWD_POINTERS) == _without_pointers(general, native._BWD_POINTERS)


def test_inference_calls_share_the_plans_lse_buffer_and_grad_calls_do_not(stub, node):
    q, k, v = _qkv()
    lse_ptrs = []
    for _ in range(2):
        flash_attn.flash_attn_func(q, k, v)
        lse_ptrs.append(_pointers(_last(stub, 0), native._FWD_POINTERS)[5])
    assert lse_ptrs[0] == lse_ptrs[1] != 0
    qg, kg, vg = _qkv(grad=True)
    out = flash_attn.flash_attn_func(qg, kg, vg)
    lse_ptr = _pointers(_last(stub, 0), native._FWD_POINTERS)[5]
    assert lse_ptr != lse_ptrs[0]
    torch.autograd.grad(out, (qg, kg, vg), torch.randn_like(out))
    assert _pointers(_last(stub, 1), native._BWD_POINTERS)[6] == lse_ptr  # the backward reads its forward's lse


def test_one_plan_per_signature_and_checks_on_first_sight(stub):
    q, k, v = _qkv()
    for _ in range(3):
        flash_attn.flash_attn_func(q, k, v)
    flash_attn.flash_attn_func(q, k, v, causal=True)
    assert len(fastpath._local.plans) == 2
    with pytest.raises(ValueError, match="dtype"):
        flash_attn.flash_attn_func(q.float(), k.float(), v.float())


def test_misaligned_and_unplannable_calls_take_the_general_path(stub):
    q, k, v = _qkv()
    big = torch.randn(2, 37, 4, 72, dtype=torch.bfloat16)
    q_off = big[..., 1:65]  # pointer off by 2 bytes: the general path copies it
    assert fastpath.dense(q_off, k, v, None, False, (-1, -1), 0.0, False, lambda *a: None) is None
    flash_attn.flash_attn_func(q_off, k, v)  # runs (general path)
    q60, k60, v60 = _qkv(d=60)  # head dim not a multiple of 8: padded by the general path
    assert fastpath.dense(q60, k60, v60, None, False, (-1, -1), 0.0, False, lambda *a: None) is None
    assert fastpath.dense(q, k, v, None, False, [-1, -1], 0.0, False, lambda *a: None) is None  # a list


def test_reference_backend_is_not_planned():
    q, k, v = _qkv()
    fastpath.clear()
    assert fastpath.dense(q, k, v, None, False, (-1, -1), 0.0, False, lambda *a: None) is None
    assert list(fastpath._local.plans.values()) == [False]


def _varlen_general(q, k, v, cu_q, cu_k, max_q, max_k):
    return ops.forward_impl(q, k, v, None, cu_q, cu_k, None, None, None, None, max_q, max_k, 64 ** -0.5, -1, 0,
                            0.0, 0.0, False, 0)


def test_varlen_forward_struct_matches_general_path_per_call(stub, node):
    """One plan serves calls with other max_seqlens and cu_seqlens: those fields are per call."""
    h, hk, d = 4, 2, 64
    q = torch.randn(90, h, d, dtype=torch.bfloat16)
    k, v = torch.randn(120, hk, d, dtype=torch.bfloat16), torch.randn(120, hk, d, dtype=torch.bfloat16)
    for lens_q, lens_k in (([30, 60], [50, 70]), ([89, 1], [3, 117])):
        cu_q = torch.tensor([0, lens_q[0], 90], dtype=torch.int32)
        cu_k = torch.tensor([0, lens_k[0], 120], dtype=torch.int32)
        max_q, max_k = max(lens_q), max(lens_k)
        out = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=True)
        fast = _last(stub, 0)
        _varlen_general(q, k, v, cu_q, cu_k, max_q, max_k)
        general = _last(stub, 0)
        assert _pointers(fast, native._FWD_POINTERS)[1:5] == [q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                                              out.data_ptr()]
        cu_at = native._offsets(native._FwdParams, "problem.cu_seqlens_q", "problem.cu_seqlens_k")
        assert _pointers(fast, cu_at) == [cu_q.data_ptr(), cu_k.data_ptr()]
        offsets = native._FWD_POINTERS + cu_at
        assert _without_pointers(fast, offsets) == _without_pointers(general, offsets)
    assert len(fastpath._local.plans) == 1


@pytest.mark.parametrize("grad", [False, True])
def test_varlen_forward_workspace_is_asked_per_call(stub, node, monkeypatch, grad):
    """A varlen forward's workspace follows its max lengths (the ABI): one plan serves calls
    with and without split keys, and each gets scratch only when the library asks for it."""
    at = native._offsets(native._FwdParams, "problem.seqlen_k")[0]
    monkeypatch.setenv("FA_STUB_FWD_WS_KEYS_AT", str(at))
    q = torch.randn(3, 8, 64, dtype=torch.bfloat16, requires_grad=grad)
    k, v = (torch.randn(400, 2, 64, dtype=torch.bfloat16, requires_grad=grad) for _ in range(2))
    cu_q = torch.arange(4, dtype=torch.int32)
    for max_k, needs in ((50, False), (300, True), (60, False)):
        cu_k = torch.tensor([0, max_k, max_k + 1, max_k + 2], dtype=torch.int32)
        flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 1, max_k)
        assert (_pointers(_last(stub, 0), native._FWD_POINTERS)[6] != 0) == needs, max_k
    plan = next(iter(fastpath._local.plans.values()))
    assert plan and plan.fwd_ws_bytes is None and len(fastpath._local.plans) == 1


def test_varlen_backward_struct_matches_general_path_per_call(stub, node):
    """The planned varlen backward writes each call's max_seqlens and cu_seqlens and asks for that
    call's workspace, as the general path does."""
    q = torch.randn(90, 4, 64, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(120, 2, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu_at = native._offsets(native._BwdParams, "problem.cu_seqlens_q", "problem.cu_seqlens_k")
    for lens_q, lens_k in (([30, 60], [50, 70]), ([89, 1], [3, 117])):
        cu_q = torch.tensor([0, lens_q[0], 90], dtype=torch.int32)
        cu_k = torch.tensor([0, lens_k[0], 120], dtype=torch.int32)
        max_q, max_k = max(lens_q), max(lens_k)
        out = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=True)
        assert type(out.grad_fn).__name__ == _NODE_TYPE[node]
        plan = next(iter(fastpath._local.plans.values()))
        assert plan and plan.bwd is not None and plan.ws_bytes is None
        dout = torch.randn_like(out)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        fast = _last(stub, 1)
        ptrs = _pointers(fast, native._BWD_POINTERS)
        assert ptrs[5] == dout.data_ptr() and ptrs[7:10] == [dq.data_ptr(), dk.data_ptr(), dv.data_ptr()]
        assert ptrs[10] != 0  # the stub asked for a workspace
        assert _pointers(fast, cu_at) == [cu_q.data_ptr(), cu_k.data_ptr()]
        lse = torch.empty(ops._lse_shape(q, cu_q), dtype=torch.float32)
        ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, cu_q, cu_k, max_q, max_k, 64 ** -0.5, -1, 0,
                          0.0, 0.0, False)
        general = _last(stub, 1)
        offsets = native._BWD_POINTERS + cu_at
        assert _without_pointers(fast, offsets) == _without_pointers(general, offsets)
    assert len(fastpath._local.plans) == 1


def test_flags_changed_before_backward_reach_it(stub, node, monkeypatch):
    """The backward honours FLASH_ATTENTION_INTERNAL_DETERMINISTIC as set when it runs, as the
    general path does, even though the forward's plan was made without it."""
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "0")
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "1")
    torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    flags_at, = native._offsets(native._BwdParams, "problem.flags")
    flags = int.from_bytes(_last(stub, 1)[flags_at:flags_at + 4], "little")
    assert flags & native.FA_FLAG_DETERMINISTIC


def test_autograd_node_comes_from_the_c_apply(stub, node):
    """The Python node is made without torch's Python wrapper of Function.apply; under a functorch
    transform the fast path steps aside (either node) for the general path, whose Function takes
    torch.func.grad (tests/flash_attn/test_interface.py checks its numbers), instead of a failed
    data_ptr on a wrapper tensor."""
    assert fastpath._APPLY is not None, "torch lost _FunctionBase.apply: the fast path pays the Python wrapper"
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    assert type(out.grad_fn).__name__ == _NODE_TYPE[node]
    plans = len(fastpath._local.plans)
    dq = torch.func.grad(lambda q_: flash_attn.flash_attn_func(q_, k, v).float().sum())(q)
    assert dq.shape == q.shape and len(fastpath._local.plans) == plans


def test_dout_laid_out_unlike_out_takes_the_general_path(stub, node):
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    dout = torch.randn(out.shape[0], out.shape[2], out.shape[1], out.shape[3], dtype=out.dtype).transpose(1, 2)
    torch.autograd.grad(out, (q, k, v), dout)
    fast = _last(stub, 1)
    assert _pointers(fast, native._BWD_POINTERS)[5] == dout.data_ptr()
    lse = torch.empty(ops._lse_shape(q, None), dtype=torch.float32)
    ops.backward_impl(dout, q, k, v, out, lse, (0, 0, 0), None, None, None, 0, 0, 64 ** -0.5, -1, -1, 0.0, 0.0, False)
    assert _without_pointers(fast, native._BWD_POINTERS) == _without_pointers(_last(stub, 1), native._BWD_POINTERS)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_argument_reaches_the_backward(stub, node, deterministic):
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v, deterministic=deterministic)
    torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    flags_at, = native._offsets(native._BwdParams, "problem.flags")
    flags = int.from_bytes(_last(stub, 1)[flags_at:flags_at + 4], "little")
    assert bool(flags & native.FA_FLAG_DETERMINISTIC) == deterministic


def test_deterministic_algorithms_enabled_before_backward_reach_it(stub, node):
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    torch.use_deterministic_algorithms(True)
    try:
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    finally:
        torch.use_deterministic_algorithms(False)
    flags_at, = native._offsets(native._BwdParams, "problem.flags")
    flags = int.from_bytes(_last(stub, 1)[flags_at:flags_at + 4], "little")
    assert flags & native.FA_FLAG_DETERMINISTIC


def test_library_failures_raise_its_message(stub, node, monkeypatch):
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    monkeypatch.setenv("FA_STUB_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"flash_attn cuda backend: backward failed \(status 7\): "
                                           r"the stub was told to fail"):
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    with pytest.raises(RuntimeError, match=r"forward failed \(status 7\): the stub was told to fail"):
        flash_attn.flash_attn_func(q, k, v)


def test_graph_semantics_match_torch(stub, node):
    """retain_graph keeps the saved tensors for a second backward; without it they are freed; an
    input changed in place after the forward is caught, as for any torch op."""
    q, k, v = _qkv(grad=True)
    out = flash_attn.flash_attn_func(q, k, v)
    dout = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v), dout)
    assert [g.shape for g in first] == [g.shape for g in second] == [q.shape, k.shape, v.shape]
    with pytest.raises(RuntimeError, match="second time|freed"):
        torch.autograd.grad(out, (q, k, v), dout)
    out = flash_attn.flash_attn_func(q, k, v)
    with torch.no_grad():
        k.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, (q, k, v), dout)


def test_gradients_reach_only_inputs_that_require_them(stub, node):
    q, k, v = _qkv(grad=True)
    k.requires_grad_(False)
    out = flash_attn.flash_attn_func(q, k, v)
    out.backward(torch.randn_like(out))
    assert q.grad is not None and v.grad is not None and k.grad is None


def _fwd_flags(stub) -> int:
    flags_at, = native._offsets(native._FwdParams, "problem.flags")
    return int.from_bytes(_last(stub, 0)[flags_at:flags_at + 4], "little")


def test_a_known_signature_sees_flags_set_since(stub, node, monkeypatch):
    """A call's cached plan is keyed by the flags too: setting one between two calls of the same
    signature reaches the second call."""
    q, k, v = _qkv()
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_USE_RTZ", "0")
    flash_attn.flash_attn_func(q, k, v)
    assert not _fwd_flags(stub) & native.FA_FLAG_RTZ
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_USE_RTZ", "1")
    flash_attn.flash_attn_func(q, k, v)
    assert _fwd_flags(stub) & native.FA_FLAG_RTZ
    monkeypatch.delenv("FLASH_ATTENTION_INTERNAL_USE_RTZ")
    flash_attn.flash_attn_func(q, k, v)
    assert not _fwd_flags(stub) & native.FA_FLAG_RTZ


def test_a_known_signature_with_a_misaligned_pointer_takes_the_general_path(stub, node):
    q, k, v = _qkv()
    assert fastpath.dense(q, k, v, None, False, (-1, -1), 0.0, False, lambda: None) is not None
    q_off = torch.empty(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape).copy_(q)  # same strides, 2 bytes off
    assert q_off.stride() == q.stride() and q_off.data_ptr() % 16
    assert fastpath.dense(q_off, k, v, None, False, (-1, -1), 0.0, False, lambda: None) is None


def test_scalars_of_other_types_mean_the_same_call(stub, node):
    """causal=1 is causal=True, an int scale is that float; a list window is left to the general
    path, which checks it."""
    q, k, v = _qkv()
    flash_attn.flash_attn_func(q, k, v, causal=True, softmax_scale=1.0)
    as_bool = _without_pointers(_last(stub, 0), native._FWD_POINTERS)
    flash_attn.flash_attn_func(q, k, v, causal=1, softmax_scale=1)
    assert _without_pointers(_last(stub, 0), native._FWD_POINTERS) == as_bool
    assert fastpath.dense(q, k, v, None, False, [-1, -1], 0.0, False, lambda: None) is None


def test_other_threads_plan_their_own_calls(stub, node):
    q, k, v = _qkv(grad=True)
    flash_attn.flash_attn_func(q, k, v, causal=True)
    here = _without_pointers(_last(stub, 0), native._FWD_POINTERS)
    result = {}

    def worker():
        out = flash_attn.flash_attn_func(q, k, v, causal=True)
        result["fwd"] = _without_pointers(_last(stub, 0), native._FWD_POINTERS)
        result["grads"] = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result["fwd"] == here and [g.shape for g in result["grads"]] == [q.shape, k.shape, v.shape]


# flash_attn_with_kvcache's planned path (flash_attn/kvcache.py)
def _cache_call(**kw):
    b, cap, page = 3, 64, 16
    q = torch.randn(b, 1, 8, 64, dtype=torch.bfloat16)
    kc, vc = (torch.randn(b * cap // page, page, 2, 64, dtype=torch.bfloat16) for _ in range(2))
    table = torch.randperm(b * cap // page).view(b, cap // page).to(torch.int32)
    lens = torch.tensor([5, 40, 60], dtype=torch.int32)
    args = dict(cache_seqlens=lens, block_table=table, cache_leftpad=torch.tensor([0, 3, 1], dtype=torch.int32),
                causal=True, softcap=5.0, num_splits=2)
    args.update(kw)
    return q, kc, vc, args


def _cache_slots(raw: bytes) -> list:
    return _pointers(raw, native._offsets(native._FwdParams, *native._CACHE_FIELDS))


def test_kvcache_plan_passes_what_the_general_path_passes(stub, node, monkeypatch):
    q, kc, vc, args = _cache_call()
    kvcache._local.plans = {}
    flash_attn.flash_attn_with_kvcache(q, kc, vc, **args)  # the general path; the call is planned
    general = _last(stub, 0)
    assert next(iter(kvcache._local.plans.values())), "the call should have been planned"
    if node == "cpp":  # a call without new tokens is served from C++, without the Python plan
        monkeypatch.setattr(kvcache, "_plan_key", lambda *a: pytest.fail("the Python plan was consulted"))
    out = flash_attn.flash_attn_with_kvcache(q, kc, vc, **args)
    fast = _last(stub, 0)
    slots = native._FWD_POINTERS + native._offsets(native._FwdParams, *native._CACHE_FIELDS)
    assert _without_pointers(fast, slots) == _without_pointers(general, slots)
    assert _pointers(fast, native._FWD_POINTERS)[1:5] == [q.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr()]
    seqused, leftpad, batch_idx, table = _cache_slots(fast)
    assert seqused != 0 and batch_idx == 0
    assert (leftpad, table) == (args["cache_leftpad"].data_ptr(), args["block_table"].data_ptr())


def test_kvcache_plan_appends_new_tokens(stub, node):
    q, kc, vc, args = _cache_call(block_table=None, cache_leftpad=None)
    kc, vc = torch.zeros(3, 64, 2, 64, dtype=torch.bfloat16), torch.zeros(3, 64, 2, 64, dtype=torch.bfloat16)
    kvcache._local.plans = {}
    for step in range(2):  # general path, then planned
        k, v = torch.randn(3, 1, 2, 64, dtype=torch.bfloat16), torch.randn(3, 1, 2, 64, dtype=torch.bfloat16)
        lens = args["cache_seqlens"] + step
        flash_attn.flash_attn_with_kvcache(q, kc, vc, k, v, **{**args, "cache_seqlens": lens})
        for i in range(3):
            assert torch.equal(kc[i, int(lens[i])], k[i, 0]) and torch.equal(vc[i, int(lens[i])], v[i, 0])
    assert next(iter(kvcache._local.plans.values()))


def test_kvcache_signatures_the_plan_does_not_cover_take_the_general_path(stub, node):
    q, kc, vc, args = _cache_call()
    kvcache._local.plans = {}
    flash_attn.flash_attn_with_kvcache(q, kc, vc, **args)
    with pytest.raises(ValueError, match="cache_leftpad"):  # another dtype: a new signature, checked again
        flash_attn.flash_attn_with_kvcache(q, kc, vc, **{**args, "cache_leftpad": args["cache_leftpad"].long()})
    big = torch.empty(q.numel() + 8, dtype=q.dtype)
    q_off = big[1:1 + q.numel()].view(q.shape).copy_(q)  # misaligned: the general path copies it
    flash_attn.flash_attn_with_kvcache(q_off, kc, vc, **args)
    assert _pointers(_last(stub, 0), native._FWD_POINTERS)[1] != q_off.data_ptr()
