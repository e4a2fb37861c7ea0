"""The validated description of one attention call, as every backend receives it.

The public API (flash_attn_interface) checks user arguments once and builds an AttnArgs; the
dispatcher reads it to choose a backend; the chosen backend's ``forward``/``backward`` consume it.
Tensors referenced here already have the dtype, device and layout the backends expect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class AttnArgs:
    softmax_scale: float
    window_left: int = -1  # -1 = unbounded
    window_right: int = -1  # -1 = unbounded; causal is window_right == 0
    softcap: float = 0.0  # 0 = off
    alibi_slopes: Optional[torch.Tensor] = None  # fp32 (nheads,) or (batch, nheads)
    dropout_p: float = 0.0
    rng_seed: int = 0  # Philox key, see reference/rng.py
    rng_offset: int = 0
    # varlen: int32 (batch + 1) prefix sums; max_seqlen_* bound every sequence
    cu_seqlens_q: Optional[torch.Tensor] = None
    cu_seqlens_k: Optional[torch.Tensor] = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    # KV cache: keys used per sequence, keys skipped at the left, cache row per sequence, pages
    seqused_k: Optional[torch.Tensor] = None
    leftpad_k: Optional[torch.Tensor] = None
    kv_batch_idx: Optional[torch.Tensor] = None
    block_table: Optional[torch.Tensor] = None
    deterministic: bool = False
    rtz: bool = False
    performance: bool = False
    num_splits: int = 0  # 0 = the backend chooses

    @property
    def is_causal(self) -> bool:
        return self.window_right == 0 and self.window_left < 0

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def is_paged(self) -> bool:
        return self.block_table is not None
