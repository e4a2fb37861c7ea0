"""ctypes binding of a native backend library (libflash_attn_{cuda,rocm}.so, C ABI of
dispatch/include/flash_attn_abi.h).

The library links no torch, so it loads under any torch build. Per call this module packs one
params struct (a precompiled struct.Struct over a per-thread buffer: one pack_into call instead of
~60 ctypes attribute stores), asks for the workspace size, allocates the workspace from torch's
caching allocator, and calls the library on torch's current stream.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import struct
import threading
from pathlib import Path
from typing import Optional

import torch

from .args import AttnArgs

ABI_VERSION = 3  # FA_ABI_VERSION of the header this binding mirrors

FA_FLAG_RTZ, FA_FLAG_DETERMINISTIC, FA_FLAG_PERFORMANCE = 1, 2, 4
_DTYPE = {torch.float16: 0, torch.bfloat16: 1}
_LIB_DIR = Path(__file__).resolve().parent.parent / "_lib"


class _Tensor(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("batch_stride", ctypes.c_int64),
                ("row_stride", ctypes.c_int64), ("head_stride", ctypes.c_int64)]


class _Problem(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int32), ("flags", ctypes.c_int32), ("arch", ctypes.c_int32),
        ("batch", ctypes.c_int32), ("nheads", ctypes.c_int32), ("nheads_k", ctypes.c_int32),
        ("head_dim", ctypes.c_int32), ("seqlen_q", ctypes.c_int32), ("seqlen_k", ctypes.c_int32),
        ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
        ("seqused_k", ctypes.c_void_p), ("leftpad_k", ctypes.c_void_p),
        ("kv_batch_idx", ctypes.c_void_p), ("block_table", ctypes.c_void_p),
        ("block_table_batch_stride", ctypes.c_int64), ("page_block_size", ctypes.c_int32),
        ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
        ("softmax_scale", ctypes.c_float), ("softcap", ctypes.c_float),
        ("alibi_slopes", ctypes.c_void_p), ("alibi_batch_stride", ctypes.c_int64),
        ("dropout_p", ctypes.c_float), ("rng_seed", ctypes.c_uint64), ("rng_offset", ctypes.c_uint64),
        ("stream", ctypes.c_void_p), ("total_q", ctypes.c_int32),
    ]


class _FwdParams(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("problem", _Problem), ("q", _Tensor), ("k", _Tensor), ("v", _Tensor),
                ("out", _Tensor), ("lse", ctypes.c_void_p), ("num_splits", ctypes.c_int32),
                ("workspace", ctypes.c_void_p)]


class _BwdParams(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("problem", _Problem), ("q", _Tensor), ("k", _Tensor), ("v", _Tensor),
                ("out", _Tensor), ("dout", _Tensor), ("lse", ctypes.c_void_p),
                ("dq", _Tensor), ("dk", _Tensor), ("dv", _Tensor), ("workspace", ctypes.c_void_p)]


_CODES = {ctypes.c_int32: "i", ctypes.c_uint32: "I", ctypes.c_int64: "q", ctypes.c_uint64: "Q",
          ctypes.c_float: "f", ctypes.c_void_p: "Q"}


def _flatten(cls, base=0):
    for name, ctype in cls._fields_:
        off = base + getattr(cls, name).offset
        if issubclass(ctype, ctypes.Structure):
            yield from _flatten(ctype, off)
        else:
            yield off, ctype


def _packer(cls) -> struct.Struct:
    """A struct.Struct with exactly cls's C layout (explicit padding), fields in declaration order."""
    fmt, at = "<", 0
    for off, ctype in _flatten(cls):
        fmt += "x" * (off - at) + _CODES[ctype]
        at = off + ctypes.sizeof(ctype)
    fmt += "x" * (ctypes.sizeof(cls) - at)
    packer = struct.Struct(fmt)
    assert packer.size == ctypes.sizeof(cls)
    return packer


_FWD = _packer(_FwdParams)
_BWD = _packer(_BwdParams)
_FWD_HEAD = (ABI_VERSION, ctypes.sizeof(_FwdParams))
_FWD_WORKSPACE_AT = _FwdParams.workspace.offset
_BWD_HEAD = (ABI_VERSION, ctypes.sizeof(_BwdParams))
_BWD_WORKSPACE_AT = _BwdParams.workspace.offset


def _offsets(cls, *paths: str) -> tuple:
    """Byte offsets of (possibly nested, dotted) fields of a params struct."""
    def one(path):
        c, off = cls, 0
        for name in path.split("."):
            off += getattr(c, name).offset
            c = dict(c._fields_)[name]
        return off
    return tuple(one(p) for p in paths)


# The fields that change from call to call, in the order PackedCall takes them: the pointers, and
# for varlen calls the max sequence lengths and the cu_seqlens pointers. Everything else in a params
# struct follows from shapes, strides, dtypes, scalars and flags.
_FWD_POINTERS = _offsets(_FwdParams, "problem.stream", "q.ptr", "k.ptr", "v.ptr", "out.ptr", "lse", "workspace")
_BWD_POINTERS = _offsets(_BwdParams, "problem.stream", "q.ptr", "k.ptr", "v.ptr", "out.ptr", "dout.ptr", "lse",
                         "dq.ptr", "dk.ptr", "dv.ptr", "workspace")
_VARLEN_FIELDS = ("problem.seqlen_q", "problem.seqlen_k", "problem.cu_seqlens_q", "problem.cu_seqlens_k")
_VARLEN_TYPES = (ctypes.c_int32, ctypes.c_int32, ctypes.c_uint64, ctypes.c_uint64)
# A KV-cache call's per-call tensors (NULL where the signature has none)
_CACHE_FIELDS = ("problem.seqused_k", "problem.leftpad_k", "problem.kv_batch_idx", "problem.block_table")


def _slots(cls, pointer_offsets: tuple, varlen: bool, cache: bool = False) -> tuple:
    slots = tuple((off, ctypes.c_uint64) for off in pointer_offsets)
    if varlen:
        slots += tuple(zip(_offsets(cls, *_VARLEN_FIELDS), _VARLEN_TYPES))
    if cache:
        slots += tuple((off, ctypes.c_uint64) for off in _offsets(cls, *_CACHE_FIELDS))
    return slots


class PackedCall:
    """A params struct packed once for one call signature; a call sets only the fields that
    change per call (slots: (offset, ctype) pairs). Not shared between threads (the fields are
    written into the struct)."""

    def __init__(self, fn, packer: struct.Struct, values: tuple, slots: tuple, check, what: str, size_fn=None):
        self.buf = ctypes.create_string_buffer(packer.size)
        packer.pack_into(self.buf, 0, *values)
        self.addr = ctypes.addressof(self.buf)
        self._slots = tuple(ctype.from_buffer(self.buf, off) for off, ctype in slots)
        self._fn, self._check, self._what = fn, check, what
        self._size_fn, self._size = size_fn, ctypes.c_size_t(0)
        self._size_addr = ctypes.addressof(self._size)

    @property
    def fn_address(self) -> int:
        """The C function's address (for the C++ autograd node, which calls it directly)."""
        return ctypes.cast(self._fn, ctypes.c_void_p).value

    @property
    def size_fn_address(self) -> int:
        """The workspace query's address (0 where there is none)."""
        return 0 if self._size_fn is None else ctypes.cast(self._size_fn, ctypes.c_void_p).value

    @property
    def params(self) -> bytes:
        return self.buf.raw

    def __call__(self, *values: int) -> None:
        for slot, value in zip(self._slots, values):
            slot.value = value
        status = self._fn(self.addr)
        if status:
            self._check(status, self._what)

    def workspace_size(self, *values: int) -> int:
        """Sets the per-call fields as __call__ does and asks the library for the workspace this
        call needs (a varlen backward's grows with max_seqlen_q, which changes per call)."""
        for slot, value in zip(self._slots, values):
            slot.value = value
        status = self._size_fn(self.addr, self._size_addr)
        if status:
            self._check(status, self._what + " workspace query")
        return self._size.value


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _stream(device: torch.device) -> int:
    try:  # the raw handle without building a torch.cuda.Stream object: ~10x cheaper
        return torch._C._cuda_getCurrentRawStream(device.index)
    except AttributeError:
        return torch.cuda.current_stream(device).cuda_stream


_current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def elsewhere(device: torch.device) -> bool:
    """Whether `device` is a GPU other than the current one, as under transformers'
    device_map="auto" (layers spread over the GPUs of one process, the current device left at 0).
    The libraries launch on the current device, so such a call makes its device current first
    (torch.cuda.device), as torch's own operators do. The C++ call path guards by itself."""
    return device.type != "cpu" and device.index != _current_device()


def _problem(q, k, args: AttnArgs, arch: int, stream: int) -> tuple:
    qs, ks = q.shape, k.shape
    if args.cu_seqlens_q is not None:
        batch, seqlen_q = args.cu_seqlens_q.shape[0] - 1, args.max_seqlen_q
        seqlen_k = args.max_seqlen_k if args.cu_seqlens_k is not None else ks[1]
    else:
        batch, seqlen_q, seqlen_k = qs[0], qs[1], ks[1]
    bt = args.block_table
    if bt is not None and args.cu_seqlens_k is None:
        seqlen_k = bt.shape[1] * ks[1]  # the cache's capacity (ks[1] is the page size)
    flags = ((FA_FLAG_RTZ if args.rtz else 0) | (FA_FLAG_DETERMINISTIC if args.deterministic else 0)
             | (FA_FLAG_PERFORMANCE if args.performance else 0))
    alibi = args.alibi_slopes
    return (_DTYPE[q.dtype], flags, arch, batch, qs[-2], ks[-2], qs[-1], seqlen_q, seqlen_k,
            _ptr(args.cu_seqlens_q), _ptr(args.cu_seqlens_k), _ptr(args.seqused_k), _ptr(args.leftpad_k),
            _ptr(args.kv_batch_idx), _ptr(bt), 0 if bt is None else bt.stride(0),
            0 if bt is None else ks[1], args.window_left, args.window_right,
            args.softmax_scale, args.softcap, _ptr(alibi),
            alibi.stride(0) if alibi is not None and alibi.dim() == 2 else 0,
            args.dropout_p, args.rng_seed & 0xFFFFFFFFFFFFFFFF, args.rng_offset & 0xFFFFFFFFFFFFFFFF, stream,
            qs[0] if args.cu_seqlens_q is not None else 0)


def _tensor(t: torch.Tensor) -> tuple:
    """(ptr, batch_stride, row_stride, head_stride); (total, h, d) varlen tensors get batch_stride 0."""
    s = t.stride()
    if t.dim() == 3:
        return (t.data_ptr(), 0, s[0], s[1])
    return (t.data_ptr(), s[0], s[1], s[2])


def _fwd_values(q, k, v, args: AttnArgs, out, lse, arch: int, stream: int) -> tuple:
    return (*_FWD_HEAD, *_problem(q, k, args, arch, stream), *_tensor(q), *_tensor(k), *_tensor(v), *_tensor(out),
            lse.data_ptr(), args.num_splits, 0)


def _bwd_values(dout, q, k, v, out, lse, args: AttnArgs, dq, dk, dv, arch: int, stream: int) -> tuple:
    return (*_BWD_HEAD, *_problem(q, k, args, arch, stream), *_tensor(q), *_tensor(k), *_tensor(v), *_tensor(out),
            *_tensor(dout), lse.data_ptr(), *_tensor(dq), *_tensor(dk), *_tensor(dv), 0)


class NativeLibrary:
    def __init__(self, path: Path, name: str):
        self.name, self.path = name, path
        lib = ctypes.CDLL(str(path))
        lib.fa_abi_version.restype = ctypes.c_int
        lib.fa_build_info.restype = ctypes.c_char_p
        lib.fa_last_error.restype = ctypes.c_char_p
        for fn in ("fa_fwd", "fa_bwd"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_int
        for fn in ("fa_fwd_workspace_size", "fa_bwd_workspace_size"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_int
        version = lib.fa_abi_version()
        if version != ABI_VERSION:
            raise RuntimeError(f"{path} implements flash_attn C ABI version {version}, but this flash_attn "
                               f"expects version {ABI_VERSION}: rebuild the library (pip install . again)")
        self._lib = lib
        self.build_info: dict = json.loads(lib.fa_build_info().decode())
        req = self.build_info.get("requires", {})
        self._dim_multiple = int(req.get("head_dim_multiple", 1))
        self._stride_multiple = int(req.get("stride_multiple", 1))
        self._ptr_align = int(req.get("ptr_align", 1))
        # Only a split-KV forward needs scratch; without it the size query is a wasted foreign call.
        self._fwd_workspace = "split_kv" in self.build_info.get("features", ())
        self._local = threading.local()

    # One params buffer per thread and direction, reused across calls.
    def _buffers(self):
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            fwd = ctypes.create_string_buffer(_FWD.size)
            bwd = ctypes.create_string_buffer(_BWD.size)
            size = ctypes.c_size_t(0)
            bufs = self._local.bufs = (fwd, ctypes.addressof(fwd), bwd, ctypes.addressof(bwd), size,
                                       ctypes.addressof(size))
        return bufs

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            msg = self._lib.fa_last_error().decode(errors="replace")
            raise RuntimeError(f"flash_attn {self.name} backend: {what} failed (status {status}): {msg}")

    def _fits(self, *tensors) -> bool:
        """Whether every tensor meets the library's alignment needs (16-byte chunks of a row)."""
        a = self._ptr_align
        return self.strides_fit(*tensors) and not any(t.data_ptr() % a for t in tensors)

    def strides_fit(self, *tensors) -> bool:
        m = self._stride_multiple
        for t in tensors:
            s = t.stride()
            # the gcd of the outer strides is a multiple of m iff each of them is (one C call)
            if s[-1] != 1 or math.gcd(*s[:-1]) % m:
                return False
        return True

    @property
    def last_error_address(self) -> int:
        return ctypes.cast(self._lib.fa_last_error, ctypes.c_void_p).value

    @property
    def pointer_mask(self) -> int:
        """A pointer p meets the library's alignment iff p & pointer_mask == 0."""
        return self._ptr_align - 1

    def packed_forward(self, q, k, v, args: AttnArgs, out, lse, arch: int, cache: bool = False) -> Optional[tuple]:
        """(PackedCall, workspace bytes) for the forward of this signature (pointers: stream, q, k,
        v, out, lse, workspace; for varlen then max_seqlen_q, max_seqlen_k and the cu_seqlens
        pointers; with cache then seqused_k, leftpad_k, kv_batch_idx, block_table), or None when
        it needs what a PackedCall does not carry (padding, copies). By the ABI the workspace
        (split-KV partials) follows from the signature, so it is asked once here; varlen: None,
        since it also follows the max sequence lengths (PackedCall.workspace_size asks per call)."""
        if q.shape[-1] % self._dim_multiple or not self.strides_fit(q, k, v, out):
            return None
        varlen = args.cu_seqlens_q is not None
        call = PackedCall(self._lib.fa_fwd, _FWD, _fwd_values(q, k, v, args, out, lse, arch, 0),
                          _slots(_FwdParams, _FWD_POINTERS, varlen, cache), self._check,
                          "forward", self._lib.fa_fwd_workspace_size)
        if not self._fwd_workspace:
            return call, 0
        return call, None if varlen else call.workspace_size()

    def packed_backward(self, dout, q, k, v, out, lse, args: AttnArgs, dq, dk, dv,
                        arch: int) -> Optional[tuple]:
        """(PackedCall, workspace bytes) for the backward of this signature (pointers: stream, q,
        k, v, out, dout, lse, dq, dk, dv, workspace; for varlen then the fields packed_forward's
        take), or None as packed_forward. Varlen: workspace bytes None, since the workspace grows
        with max_seqlen_q, which changes from call to call (PackedCall.workspace_size asks per call)."""
        if q.shape[-1] % self._dim_multiple or not self.strides_fit(dout, q, k, v, out, dq, dk, dv):
            return None
        varlen = args.cu_seqlens_q is not None
        call = PackedCall(self._lib.fa_bwd, _BWD, _bwd_values(dout, q, k, v, out, lse, args, dq, dk, dv, arch, 0),
                          _slots(_BwdParams, _BWD_POINTERS, varlen), self._check, "backward",
                          self._lib.fa_bwd_workspace_size)
        return call, None if varlen else call.workspace_size()

    def forward_workspace_size(self, q, k, v, args: AttnArgs, out, lse, arch: int = 0) -> int:
        """Bytes of scratch this call's forward needs (split-KV partial results; 0 unsplit)."""
        fwd, fwd_addr, _, _, size, size_addr = self._buffers()
        _FWD.pack_into(fwd, 0, *_fwd_values(q, k, v, args, out, lse, arch, 0))
        self._check(self._lib.fa_fwd_workspace_size(fwd_addr, size_addr), "forward workspace query")
        return size.value

    def forward(self, q, k, v, args: AttnArgs, out, lse, arch: int = 0) -> None:
        if elsewhere(q.device):
            with torch.cuda.device(q.device):
                return self.forward(q, k, v, args, out, lse, arch)
        d = q.shape[-1]
        if d % self._dim_multiple or not self._fits(q, k, v, out):
            return self._forward_aligned(q, k, v, args, out, lse, arch)
        fwd, fwd_addr, _, _, size, size_addr = self._buffers()
        _FWD.pack_into(fwd, 0, *_fwd_values(q, k, v, args, out, lse, arch, _stream(q.device)))
        if self._fwd_workspace:
            self._check(self._lib.fa_fwd_workspace_size(fwd_addr, size_addr), "forward workspace query")
        if self._fwd_workspace and size.value:
            ws = torch.empty(size.value, dtype=torch.uint8, device=q.device)
            struct.pack_into("<Q", fwd, _FWD_WORKSPACE_AT, ws.data_ptr())
        self._check(self._lib.fa_fwd(fwd_addr), "forward")

    def backward(self, dout, q, k, v, out, lse, args: AttnArgs, dq, dk, dv, arch: int = 0) -> None:
        if elsewhere(q.device):
            with torch.cuda.device(q.device):
                return self.backward(dout, q, k, v, out, lse, args, dq, dk, dv, arch)
        d = q.shape[-1]
        if d % self._dim_multiple or not self._fits(dout, q, k, v, out, dq, dk, dv):
            return self._backward_aligned(dout, q, k, v, out, lse, args, dq, dk, dv, arch)
        _, _, bwd, bwd_addr, size, size_addr = self._buffers()
        _BWD.pack_into(bwd, 0, *_bwd_values(dout, q, k, v, out, lse, args, dq, dk, dv, arch, _stream(q.device)))
        self._check(self._lib.fa_bwd_workspace_size(bwd_addr, size_addr), "backward workspace query")
        ws = None
        if size.value:
            ws = torch.empty(size.value, dtype=torch.uint8, device=q.device)
            struct.pack_into("<Q", bwd, _BWD_WORKSPACE_AT, ws.data_ptr())
        self._check(self._lib.fa_bwd(bwd_addr), "backward")
        del ws  # the caching allocator keeps it stream-ordered: safe to release after the launch

    # Slow paths: head dims that are not a multiple of 8 are zero-padded (scores and outputs do not
    # change), and misaligned tensors are copied, then results are copied back.
    def _aligned(self, t: torch.Tensor) -> torch.Tensor:
        pad = -t.shape[-1] % self._dim_multiple
        if pad:
            return torch.nn.functional.pad(t, (0, pad))
        return t if self._fits(t) else t.clone(memory_format=torch.contiguous_format)

    def _forward_aligned(self, q, k, v, args, out, lse, arch) -> None:
        out_a = self._aligned(out)
        self.forward(self._aligned(q), self._aligned(k), self._aligned(v), args, out_a, lse, arch)
        if out_a is not out:
            out.copy_(out_a[..., :out.shape[-1]])

    def _backward_aligned(self, dout, q, k, v, out, lse, args, dq, dk, dv, arch) -> None:
        grads = [self._aligned(g) for g in (dq, dk, dv)]
        self.backward(self._aligned(dout), self._aligned(q), self._aligned(k), self._aligned(v),
                      self._aligned(out), lse, args, *grads, arch=arch)
        for g, g_a in zip((dq, dk, dv), grads):
            if g_a is not g:
                g.copy_(g_a[..., :g.shape[-1]])


def library_path(name: str) -> Path:
    base = os.environ.get("FLASH_ATTENTION_LIB_DIR")
    return (Path(base) if base else _LIB_DIR) / f"libflash_attn_{name}.so"


def load(name: str) -> Optional[NativeLibrary]:
    """The library for backend `name` ("cuda" or "rocm"), or None when it is not built.
    Raises RuntimeError when it exists but cannot be used (ABI version, missing symbols)."""
    path = library_path(name)
    if not path.exists():
        return None
    return NativeLibrary(path, name)
