"""flash_attn_with_kvcache: decoding and chunked prefill over a KV cache, as FlashAttention-2.

New keys/values are rotated (optional) and written into the cache in place, then attention runs
over the first cache_seqlens + seqlen_new keys of each sequence (from cache_leftpad on). The cache
is dense (batch_cache, seqlen_cache, nheads_k, headdim), or paged (num_blocks, page_block_size,
nheads_k, headdim) through block_table with any page size.
"""
from __future__ import annotations

import threading
from typing import Optional, Union

import torch

from . import _validate as V
from . import _values
from . import ops
from .backends import autograd_node, native, registry
from .dispatch import flags as flagmod
from .layers.rotary import apply_rotary_emb


def _cache_positions(k_cache, block_table, cache_rows, start, s_new):
    """Index tensors (batch, s_new) addressing the slots the new tokens go to."""
    pos = start.long()[:, None] + torch.arange(s_new, device=start.device)[None, :]
    if block_table is None:
        return cache_rows[:, None].expand_as(pos), pos
    page = k_cache.shape[1]
    return torch.gather(block_table.long(), 1, pos // page), pos % page


def _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table):
    paged = block_table is not None
    cache_doc = ("(num_blocks, page_block_size, nheads_k, headdim)" if paged
                 else "(batch_cache, seqlen_cache, nheads_k, headdim)")
    V.check_qkv(q, k_cache, v_cache, "(batch, seqlen_q, nheads, headdim)", cache_doc)
    batch = q.shape[0]
    if (k is None) != (v is None):
        V.fail("pass both k and v (new tokens to append) or neither.")
    if k is not None:
        V.check_qkv(q, k, v, "(batch, seqlen_q, nheads, headdim)", "(batch, seqlen_new, nheads_k, headdim)")
        V.check_batch("k", k, 0, batch, "q.shape[0] (batch)")
        if k.shape[-2] != k_cache.shape[-2]:
            V.fail(f"k has {k.shape[-2]} heads but k_cache has {k_cache.shape[-2]}; they must match.")
    if paged:
        V.check_int_tensor("block_table", block_table, (batch, None), q.device, "(batch, max_num_blocks_per_seq)")
        if cache_batch_idx is not None:
            V.fail("cache_batch_idx cannot be combined with block_table: the block table already "
                   "says where each sequence's cache lives.")
    elif cache_batch_idx is None:
        V.check_batch("k_cache", k_cache, 0, batch, "q.shape[0] (batch)")
    for name, t in (("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad)):
        if t is not None:
            V.check_int_tensor(name, t, (batch,), q.device, "(batch,)")
    if isinstance(cache_seqlens, torch.Tensor):
        V.check_int_tensor("cache_seqlens", cache_seqlens, (batch,), q.device, "(batch,)")
    elif cache_seqlens is not None and (not isinstance(cache_seqlens, int) or cache_seqlens < 0):
        V.fail(f"cache_seqlens must be a non-negative int or an int32 tensor of shape (batch,), "
               f"got {cache_seqlens!r}.")


def _check_rotary(cos, sin, k, capacity: int) -> None:
    if cos is None and sin is None:
        return
    if cos is None or sin is None:
        V.fail("pass both rotary_cos and rotary_sin, or neither.")
    if k is None:
        V.fail("rotary_cos/rotary_sin rotate the new keys (and q) at their cache positions: "
               "pass k and v too (as FlashAttention-2 requires), or rotate q yourself.")
    if cos.shape != sin.shape or cos.dim() != 2:
        V.fail(f"rotary_cos and rotary_sin must both have shape (seqlen_ro, rotary_dim / 2), got "
               f"{tuple(cos.shape)} and {tuple(sin.shape)}.")
    if cos.shape[0] < capacity:
        V.fail(f"rotary_cos has {cos.shape[0]} rows but the cache holds {capacity} positions; "
               f"seqlen_ro must be at least the cache's seqlen.")


def _append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table) -> None:
    """Writes the new tokens k, v at positions cache_seqlens + i of their sequences' caches."""
    batch = k.shape[0]
    rows = torch.arange(batch, device=k.device) if cache_batch_idx is None else cache_batch_idx.long()
    index = _cache_positions(k_cache, block_table, rows, cache_seqlens, k.shape[1])
    k_cache[index] = k
    v_cache[index] = v


def _seqlens(cache_seqlens, batch: int, capacity: int, s_new: int, device) -> torch.Tensor:
    """cache_seqlens as an int32 tensor (batch,): None means the cache is full after the new tokens."""
    if cache_seqlens is None:
        cache_seqlens = capacity - s_new
    if isinstance(cache_seqlens, int):
        return torch.full((batch,), cache_seqlens, dtype=torch.int32, device=device)
    return cache_seqlens


def _seqused(cache_seqlens: torch.Tensor, s_new: int) -> torch.Tensor:
    """Keys per sequence after the new tokens, int32 (no add kernel when decoding reads only)."""
    return (cache_seqlens + s_new if s_new else cache_seqlens).to(torch.int32)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
                            cache_batch_idx: Optional[torch.Tensor] = None,
                            cache_leftpad: Optional[torch.Tensor] = None,
                            block_table: Optional[torch.Tensor] = None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """Returns out (batch, seqlen_q, nheads, headdim), and softmax_lse (batch, nheads, seqlen_q)
    when return_softmax_lse. Rotary (rotary_cos/sin: (seqlen_ro, rotary_dim / 2)) rotates k at
    positions cache_seqlens + i, and q at the same positions when causal/local, else at
    cache_seqlens for every query."""
    key, cpp = None, None
    checking = _values.enabled()
    scalars = (softmax_scale, causal, window_size, softcap, num_splits)
    cached = (q, k_cache, v_cache, cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    if rotary_cos is None and rotary_sin is None and alibi_slopes is None and not checking:
        # A reading call (no new tokens) whose plan the C++ module holds costs one C++ call.
        cpp = autograd_node.serving() if k is None and type(cache_seqlens) is torch.Tensor else None
        result = cpp.run_kvcache(*cached, *scalars) if cpp is not None else None
        if result:
            return result if return_softmax_lse else result[0]
        key = _plan_key(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
                        *scalars)
        plan = _plans().get(key) if key is not None else None
        if plan and result is None and plan.node is not None:  # the module forgot it (a full cache)
            cpp.register_kvcache_call(*cached, *scalars, plan.node)
        result = plan(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table) \
            if plan else None
        if result is not None:
            return result if return_softmax_lse else result[0]
    _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    batch, s_new = q.shape[0], 0 if k is None else k.shape[1]
    capacity = block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]
    _check_rotary(rotary_cos, rotary_sin, k, capacity)
    cache_seqlens = _seqlens(cache_seqlens, batch, capacity, s_new, q.device)
    if checking:
        _values.check_kvcache(k_cache, s_new, capacity, cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    scale = V.scalars(0.0, softcap, softmax_scale, q.shape[-1])
    left, right = V.window(window_size, causal)
    V.check_alibi(alibi_slopes, batch, q.shape[-2], q.device)
    if rotary_cos is not None and k is not None:
        local = right >= 0 or left >= 0
        q = apply_rotary_emb(q, rotary_cos, rotary_sin, rotary_interleaved,
                             seqlen_offsets=cache_seqlens) if local else \
            apply_rotary_emb(q.reshape(batch, 1, -1, q.shape[-1]), rotary_cos, rotary_sin,
                             rotary_interleaved, seqlen_offsets=cache_seqlens).reshape(q.shape)
        k = apply_rotary_emb(k, rotary_cos, rotary_sin, rotary_interleaved, seqlen_offsets=cache_seqlens)
    if k is not None:
        _append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    seqused_k = _seqused(cache_seqlens, s_new)
    args = (scale, left, right, float(softcap), int(num_splits))
    out, lse, _ = ops.attention(q, k_cache, v_cache, alibi_slopes, None, None, seqused_k, cache_leftpad,
                                cache_batch_idx, block_table, 0, 0, *args[:4], 0.0, False, args[4], False)
    if key is not None:  # the call was valid: later calls of its signature skip the checks and the choice
        plan = _make_plan(q, k_cache, v_cache, seqused_k, cache_leftpad, cache_batch_idx, block_table, capacity,
                          args, cpp is not None)
        _plans()[key] = plan or False
        if plan and plan.node is not None:
            cpp.register_kvcache_call(*cached, *scalars, plan.node)
    return (out, lse) if return_softmax_lse else out


# ---------------------------------------------------------------------------------------------
# The planned path (as fastpath.py's for flash_attn_func): host time matters most when decoding,
# one token per call. The first valid call of a signature (shapes, strides, dtypes, devices, which
# cache tensors it passes, the scalars, the flags) keeps its backend choice and packed params
# struct; later calls append the new tokens, allocate the outputs and set the pointers. Calls
# with rotary embedding, ALiBi, autograd or tensors on another GPU take the general path. Where
# the C++ module of csrc_torch/ is built, a plan made from a call without new tokens (decoding
# over a cache filled elsewhere, or cache_seqlens as a tensor and no k, v) also gets a C++ twin
# that serves later such calls in one C++ call (6 against 22 us on this repository's CPU with
# the stub library).
_MAX_PLANS = 512
_local = threading.local()


def _plans() -> dict:
    plans = getattr(_local, "plans", None)
    if plans is None:
        plans = _local.plans = {}
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    return plans


_UNPLANNABLE = object()
_SCALAR_TYPES = (float, int, bool, tuple, type(None))


def _meta(t):
    if t is None:
        return None
    if type(t) is torch.Tensor:
        return (t.shape, t.stride(), t.dtype, t.device)
    return int if type(t) is int else _UNPLANNABLE  # an int cache_seqlens' value changes per call


def _plan_key(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
              softmax_scale, causal, window_size, softcap, num_splits):
    if (torch.compiler.is_compiling() or type(q) is not torch.Tensor or native.elsewhere(q.device)
            or (torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad))
            or type(softmax_scale) not in _SCALAR_TYPES or type(causal) not in _SCALAR_TYPES
            or type(window_size) is not tuple or type(softcap) not in _SCALAR_TYPES
            or type(num_splits) is not int):
        return None
    tensors = (_meta(q), _meta(k_cache), _meta(v_cache), _meta(k), _meta(v), _meta(cache_seqlens),
               _meta(cache_batch_idx), _meta(cache_leftpad), _meta(block_table))
    if _UNPLANNABLE in tensors:
        return None
    return (tensors, softmax_scale, causal, window_size, softcap, num_splits, flagmod.read(),
            torch.are_deterministic_algorithms_enabled())


class _Plan:
    def __init__(self, call, ws_bytes, lse_shape, mask, device, capacity):
        self.call, self.ws_bytes, self.lse_shape, self.mask = call, ws_bytes, lse_shape, mask
        self.device, self.capacity = device, capacity
        self.node = None  # the C++ module's twin, for reading calls (no new tokens)

    def __call__(self, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table):
        """(out, lse), or None where a pointer misses the library's alignment (the general path copies)."""
        if (q.data_ptr() | k_cache.data_ptr() | v_cache.data_ptr()) & self.mask:
            return None
        s_new = 0 if k is None else k.shape[1]
        cache_seqlens = _seqlens(cache_seqlens, q.shape[0], self.capacity, s_new, self.device)
        if k is not None:
            _append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
        seqused_k = _seqused(cache_seqlens, s_new)
        out = torch.empty_like(q)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
        ws = torch.empty(self.ws_bytes, dtype=torch.uint8, device=self.device) if self.ws_bytes else None
        self.call(native._stream(self.device), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
                  lse.data_ptr(), 0 if ws is None else ws.data_ptr(), seqused_k.data_ptr(), native._ptr(cache_leftpad),
                  native._ptr(cache_batch_idx), native._ptr(block_table))
        return out, lse


def _make_plan(q, k_cache, v_cache, seqused_k, cache_leftpad, cache_batch_idx, block_table, capacity, scalars,
               twin: bool):
    """The plan of a valid call's signature, None where it cannot have one; twin: also its C++ plan
    (plan.node), which serves the signature's calls without new tokens."""
    scale, left, right, softcap, num_splits = scalars
    args, flags = ops._args(scale, left, right, softcap, None, 0.0, 0, 0, None, None, 0, 0, seqused_k, cache_leftpad,
                            cache_batch_idx, block_table, num_splits)
    impl, choice = registry.choose(registry.request("fwd", q, k_cache, args, v=v_cache), q.device, flags)
    if not isinstance(impl, registry.NativeBackend):
        return None
    lib = registry.native_library(impl.library)
    if (q.data_ptr() | k_cache.data_ptr() | v_cache.data_ptr()) & lib.pointer_mask:
        return None
    lse_shape = ops._lse_shape(q, None)
    out, lse = torch.empty_like(q), torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    packed = lib.packed_forward(q, k_cache, v_cache, args, out, lse, choice.target.sm, cache=True)
    if packed is None:
        return None
    plan = _Plan(packed[0], packed[1], lse_shape, lib.pointer_mask, q.device, capacity)
    if twin:
        call = packed[0]
        slots = list(native._FWD_POINTERS) + list(native._offsets(native._FwdParams, *native._CACHE_FIELDS))
        plan.node = autograd_node.load()[0].make_plan(
            lib.name, lib.last_error_address, 2, call.fn_address, call.size_fn_address, call.params, slots, [],
            0, 0, b"", [], [], packed[1], 0, list(lse_shape), lib.pointer_mask, None)
    return plan
