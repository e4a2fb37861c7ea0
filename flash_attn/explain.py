"""flash_attn.explain(...) and `python -m flash_attn info`: what would run, where, and why."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import _validate as V
from . import ops
from .backends import autograd_node, registry
from .dispatch import flags as flagmod, hardware, select as selmod


@dataclass
class Explanation:
    target: hardware.Target
    verdicts: dict  # direction -> (chosen backend or None, {backend: reasons} for every candidate)

    def backend(self, direction: str = "fwd"):
        return self.verdicts[direction][0]

    def reasons(self, backend: str, direction: str = "fwd") -> list:
        return self.verdicts[direction][1].get(backend, [])

    def __str__(self) -> str:
        lines = [f"device: {self.target.describe()}"]
        for direction, (chosen, table) in self.verdicts.items():
            lines.append(f"{direction}: {chosen or 'NO BACKEND'}")
            for name, reasons in table.items():
                mark = "chosen" if name == chosen else ("; ".join(reasons) or "usable")
                lines.append(f"  {name:<10} {mark}")
        return "\n".join(lines)


def _verdicts(req, target, flags) -> tuple:
    table = {b: selmod.reasons_against(b, req, target) for b in selmod.priority(target, flags)}
    chosen = next((b for b, r in table.items() if not r), None)
    return chosen, table


def explain(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
            softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
            cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, block_table=None,
            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, num_splits=0) -> Explanation:
    """Takes the arguments of any flash_attn_* call (q, k, v as that call takes them) and returns
    the backend each direction would use, with every rejected backend's reasons."""
    left, right = V.window(window_size, causal)
    seqused = cache_seqlens if isinstance(cache_seqlens, torch.Tensor) else (
        torch.zeros(q.shape[0], dtype=torch.int32) if cache_seqlens is not None else None)
    # The same AttnArgs and flags the call itself would build (ops._args).
    args, flags = ops._args(V.scalars(dropout_p, softcap, softmax_scale, q.shape[-1]), left, right,
                            softcap, alibi_slopes, dropout_p, 0, 0, cu_seqlens_q, cu_seqlens_k,
                            max_seqlen_q, max_seqlen_k, seqused, cache_leftpad, cache_batch_idx,
                            block_table, num_splits, deterministic)
    target = hardware.detect(q.device, flags.arch_override)
    verdicts = {"fwd": _verdicts(registry.request("fwd", q, k, args, return_attn_probs and dropout_p > 0, v=v),
                                 target, flags)}
    if seqused is None and block_table is None:
        verdicts["bwd"] = _verdicts(registry.request("bwd", q, k, args, v=v), target, flags)
    return Explanation(target, verdicts)


# Kinds of call `info` reports on: (label, direction, head_dim, features).
SAMPLE_CALLS = (
    ("forward, bf16, hd128, causal", "fwd", 128, {"causal"}),
    ("backward, bf16, hd128, causal", "bwd", 128, {"causal"}),
    ("backward, deterministic", "bwd", 128, {"deterministic"}),
    ("varlen forward, GQA", "fwd", 128, {"varlen", "gqa"}),
    ("forward with dropout", "fwd", 64, {"dropout"}),
    ("KV cache, paged, decoding", "fwd", 128, {"paged_kv", "seqused_k", "causal"}),
    ("forward, hd256, ALiBi + softcap", "fwd", 256, {"alibi", "softcap"}),
)


def _targets(flags) -> list:
    if not torch.cuda.is_available():
        return [hardware.CPU]
    devs = [hardware.detect(torch.device("cuda", i), flags.arch_override)
            for i in range(torch.cuda.device_count())]
    return devs + [hardware.CPU]


def info_text() -> str:
    from . import __version__

    lines = [f"flash_attn {__version__} (FlashAttention-2 API) on torch {torch.__version__}"]
    lines.append("environment flags:")
    for name in flagmod.ALL:
        lines.append(f"  {name}={os.environ.get(name, '')!r}")
    try:
        flags = flagmod.read()
    except ValueError as err:
        lines.append(f"  INVALID: {err}")
        return "\n".join(lines)
    lines.append(f"  in force: deterministic={flags.deterministic} rtz={flags.rtz} "
                 f"performance={flags.performance} backend={flags.backend or 'auto'}"
                 f"{' (strict)' if flags.backend_strict else ''} arch_override={flags.arch_override} "
                 f"check_values={flags.check_values}")
    lines.append("native libraries:")
    for name, lib in registry.NATIVE_LIBRARY.items():
        info = selmod.library_info(lib)
        lines.append(f"  {name}: {'not installed' if info is None else info}")
    lines.append(f"autograd node of planned dense and varlen calls: {autograd_node.describe()}")
    for target in _targets(flags):
        lines.append(f"device: {target.describe()}")
        for label, direction, head_dim, feats in SAMPLE_CALLS:
            extra = {"rtz"} if flags.rtz else set()
            extra |= {"performance"} if flags.performance else set()
            extra |= {"deterministic"} if flags.deterministic and direction == "bwd" else set()
            req = selmod.Request(direction, "bfloat16", head_dim, frozenset(feats | extra))
            chosen, table = _verdicts(req, target, flags)
            why = "; ".join(f"not {b}: {', '.join(r)}" for b, r in table.items() if r and b != chosen)
            lines.append(f"  {label:<34} -> {chosen or 'NO BACKEND'}" + (f"  ({why})" if why else ""))
    return "\n".join(lines)
