"""What each backend supports, per direction, as data.

The selector compares a call's needs with these rows; every mismatch becomes a human-readable
reason. A native backend's row is further narrowed at run time by the library's own fa_build_info
(head dims, dtypes and features actually compiled), so a narrowed build can never be chosen for a
call it cannot serve.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Every feature a call can need. Names are shared with fa_build_info's "features" list.
FEATURES = (
    "causal",         # window_right == 0, bottom-right aligned
    "window",         # local attention, either side bounded
    "alibi",
    "softcap",
    "dropout",
    "return_probs",   # S_dmask materialised (testing aid, O(seqlen^2))
    "varlen",         # cu_seqlens
    "gqa",            # nheads_k < nheads
    "seqused_k",      # KV cache with per-sequence lengths
    "leftpad",        # cache_leftpad
    "kv_batch_idx",   # cache_batch_idx
    "paged_kv",       # block_table, any page size
    "split_kv",       # honours num_splits > 1; never required: num_splits is a speed hint
                      # and results do not depend on it, so a backend without it ignores it
    "deterministic",  # bitwise-reproducible backward
    "rtz",
    "performance",
)


@dataclass(frozen=True)
class Capability:
    backend: str
    direction: str  # "fwd" | "bwd"
    platform: str  # "cuda" | "rocm" | "any"
    archs: Optional[tuple[str, ...]]  # None = any arch of the platform
    min_sm: int  # CUDA: lowest compute capability (80 = sm80); 0 otherwise
    dtypes: tuple[str, ...]
    max_head_dim: int
    features: frozenset[str]
    library: Optional[str]  # native library name ("cuda" -> libflash_attn_cuda.so), None = Python
    note: str = ""
    # Pairs of features the backend has separately but not together, each with the reason.
    conflicts: tuple[tuple[frozenset, str], ...] = ()
    # Whose dropout mask the backend draws. A backward must regenerate the forward's mask, so
    # it can only run where the forward's generator is (select.Request.dropout_rng).
    dropout_rng: str = "philox4x32-10"
    # Paged KV: the page size (block_table's page_block_size) must be a multiple of this.
    page_block_multiple: int = 1


_ALL = frozenset(FEATURES)
_KERNEL_FWD = frozenset({"causal", "window", "alibi", "softcap", "dropout", "varlen", "gqa",
                         "seqused_k", "leftpad", "kv_batch_idx", "paged_kv", "split_kv", "rtz",
                         "performance", "deterministic"})
_KERNEL_BWD = frozenset({"causal", "window", "alibi", "softcap", "dropout", "varlen", "gqa",
                         "deterministic", "rtz", "performance"})
_HALF = ("float16", "bfloat16")

# ck_tile at the pinned commit (docs/rocm_backend.md): no softcap, no leftpad_k; pages, a cache
# row index and per-sequence key counts without varlen only in its batch-mode split-KV kernel.
_ROCM_FWD = _KERNEL_FWD - {"softcap", "leftpad"}
_ROCM_BWD = _KERNEL_BWD - {"softcap"}
_ROCM_SPLIT_ONLY = "ck_tile reads them only in its batch-mode split-KV kernel, which has no"
_ROCM_CONFLICTS = tuple(
    (frozenset({cache, other}), f"{cache} with {other}: {_ROCM_SPLIT_ONLY} {other}")
    for cache in ("paged_kv", "kv_batch_idx") for other in ("varlen", "dropout"))
# ck_tile's Philox (7 rounds, its own counter layout): masks match no other backend's.
ROCM_DROPOUT_RNG = "ck_tile-philox4x32-7"
# ck_tile moves a K/V window to the next page only between key tiles (kPageBlockMultiple in
# csrc_rocm/kernels/tile_table.hpp).
ROCM_PAGE_BLOCK_MULTIPLE = 128

TABLE = (
    Capability("cuda_sm80", "fwd", "cuda", None, 80, _HALF, 256, _KERNEL_FWD, "cuda",
               "CuTe FA2-class kernels for sm80/86/89; also the sm90 path until Hopper kernels land"),
    Capability("cuda_sm80", "bwd", "cuda", None, 80, _HALF, 256, _KERNEL_BWD, "cuda"),
    Capability("rocm_ck", "fwd", "rocm", ("gfx90a", "gfx942"), 0, _HALF, 256, _ROCM_FWD, "rocm",
               "Composable Kernel ck_tile FMHA", _ROCM_CONFLICTS, ROCM_DROPOUT_RNG,
               ROCM_PAGE_BLOCK_MULTIPLE),
    Capability("rocm_ck", "bwd", "rocm", ("gfx90a", "gfx942"), 0, _HALF, 256, _ROCM_BWD, "rocm",
               dropout_rng=ROCM_DROPOUT_RNG),
    Capability("reference", "fwd", "any", None, 0, _HALF, 256, _ALL, None,
               "PyTorch, memory-linear, every feature; slow on GPUs"),
    Capability("reference", "bwd", "any", None, 0, _HALF, 256, _ALL, None),
)

BACKENDS = tuple(dict.fromkeys(c.backend for c in TABLE))
# Dropout generators by index: the forward op records its backend's in the RNG state it returns.
DROPOUT_RNGS = tuple(dict.fromkeys(c.dropout_rng for c in TABLE))

# Per-platform order of preference; the first backend with no reasons against it is chosen.
PRIORITY = {
    "cuda": ("cuda_sm80", "reference"),
    "rocm": ("rocm_ck", "reference"),
    "cpu": ("reference",),
}


def rows(backend: str, direction: str) -> Capability:
    for c in TABLE:
        if c.backend == backend and c.direction == direction:
            return c
    raise KeyError(f"no capability row for {backend}/{direction}")
