"""Choosing a backend: the first in the platform's priority whose list of reasons is empty.

Reasons come from three places, in this order: the capability table (platform, arch, dtype, head
dim, features), the native library (absent, or compiled without what the call needs), and code
checks on the tensors (strides, alignment). explain() returns the same lists the selector used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

from .capabilities import BACKENDS, PRIORITY, Capability, rows
from .flags import Flags
from .hardware import Target


@dataclass(frozen=True)
class Request:
    """What one call needs, independent of tensors: built by flash_attn from its arguments."""
    direction: str  # "fwd" | "bwd"
    dtype: str  # "float16" | "bfloat16"
    head_dim: int
    features: frozenset
    layout_problems: tuple = ()  # from code checks: strides/alignment a native kernel can't take
    dropout_rng: str = ""  # backward with dropout: the generator that drew the forward's mask
    page_block_size: int = 0  # paged KV: tokens per page


@dataclass
class Choice:
    backend: str
    target: Target
    request: Request
    rejected: dict = field(default_factory=dict)  # backend -> [reasons], in priority order

    def __str__(self) -> str:
        lines = [f"{self.request.direction}: {self.backend} on {self.target.describe()}"]
        for name, reasons in self.rejected.items():
            lines.append(f"  not {name}: " + "; ".join(reasons))
        return "\n".join(lines)


class BackendUnavailableError(RuntimeError):
    pass


# Set by flash_attn at import: backend name -> build_info dict of its loaded native library, None
# when the library is absent, or {"load_error": why} when it exists but cannot be loaded. Kept as a hook so this package never imports the binding.
library_info: Callable[[str], Optional[dict]] = lambda name: None


def _table_reasons(cap: Capability, req: Request, target: Target) -> list:
    reasons = []
    if cap.platform != "any" and cap.platform != target.kind:
        return [f"runs on {cap.platform} devices only, this is {target.kind}"]
    if cap.archs is not None and target.arch not in cap.archs:
        reasons.append(f"arch {target.arch} is not one of {', '.join(cap.archs)}")
    if cap.min_sm and target.sm < cap.min_sm:
        reasons.append(f"arch {target.arch} is older than sm{cap.min_sm}")
    if req.dtype not in cap.dtypes:
        reasons.append(f"dtype {req.dtype} is not one of {', '.join(cap.dtypes)}")
    if req.head_dim > cap.max_head_dim:
        reasons.append(f"head_dim {req.head_dim} exceeds {cap.max_head_dim}")
    for feat in sorted(req.features - cap.features):
        reasons.append(f"does not implement {feat}")
    for pair, why in cap.conflicts:
        if pair <= req.features:
            reasons.append(f"does not implement {why}")
    if "paged_kv" in req.features and req.page_block_size % cap.page_block_multiple:
        reasons.append(f"page_block_size {req.page_block_size} is not a multiple of "
                       f"{cap.page_block_multiple}")
    if "dropout" in req.features and req.dropout_rng and req.dropout_rng != cap.dropout_rng:
        reasons.append(f"the forward's dropout mask came from {req.dropout_rng}, this backend "
                       f"draws {cap.dropout_rng}: the backward could not regenerate it")
    return reasons


def _library_reasons(cap: Capability, req: Request, target: Target) -> list:
    if cap.library is None:
        return []
    info = library_info(cap.library)
    if info is None:
        return [f"native library libflash_attn_{cap.library}.so is not installed (built with "
                f"FLASH_ATTENTION_SKIP_{cap.library.upper()}_BUILD=1, or no compiler at install)"]
    if "load_error" in info:
        return [info["load_error"]]
    reasons = []
    # AMD code objects run only on the gfx they were compiled for (CUDA's sm80 code runs on later
    # archs, so its library lists no such restriction here). An arch the table already refused
    # needs no second reason.
    table_ok = cap.archs is None or target.arch in cap.archs
    if target.kind == "rocm" and table_ok and target.arch not in info.get("archs", [target.arch]):
        reasons.append(f"arch {target.arch} not compiled (built: {info['archs']}; set "
                       f"FLASH_ATTENTION_ROCM_ARCHS at build time)")
    dims = info.get("head_dims", [])
    if info.get("head_dims_exact"):  # no padded instances: only the buckets themselves
        served = -(-req.head_dim // 8) * 8 in dims  # the binding pads head dims to 8
    else:
        served = any(req.head_dim <= d for d in dims)
    if not served:
        reasons.append(f"head_dim {req.head_dim} not compiled (built head dims: {dims}"
                       f"{' exactly' if info.get('head_dims_exact') else ''}; set "
                       f"FLASH_ATTENTION_HEAD_DIMS at build time)")
    short = {"float16": "fp16", "bfloat16": "bf16"}.get(req.dtype, req.dtype)
    if short not in info.get("dtypes", []):
        reasons.append(f"dtype {req.dtype} not compiled (built: {info.get('dtypes')})")
    if req.direction not in info.get("directions", []):
        reasons.append(f"direction {req.direction} not compiled")
    # Per-direction lists where the library gives them (a feature of one direction only, e.g.
    # a backward built without "deterministic", must not be read off the forward's list).
    built = set(info.get(f"features_{req.direction}", info.get("features", [])))
    for feat in sorted((req.features & cap.features) - built):
        reasons.append(f"{feat} not implemented by the built library")
    return reasons


def reasons_against(backend: str, req: Request, target: Target) -> list:
    cap = rows(backend, req.direction)
    reasons = _table_reasons(cap, req, target)
    if reasons and reasons[0].startswith("runs on"):
        return reasons
    reasons += _library_reasons(cap, req, target)
    if cap.library is not None:
        reasons += list(req.layout_problems)
    return reasons


def priority(target: Target, flags: Flags) -> tuple:
    order = PRIORITY[target.kind]
    if flags.backend is None:
        return order
    if flags.backend_strict:
        return (flags.backend,)
    return (flags.backend,) + tuple(b for b in order if b != flags.backend)


def select(req: Request, target: Target, flags: Flags) -> Choice:
    rejected = {}
    for backend in priority(target, flags):
        reasons = reasons_against(backend, req, target)
        if not reasons:
            return Choice(backend, target, req, rejected)
        rejected[backend] = reasons
    detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in rejected.items())
    raise BackendUnavailableError(
        f"no backend can run this {req.direction} call on {target.describe()}: {detail}. "
        f"Unset FLASH_ATTENTION_BACKEND or change the call.")


_warned: set = set()


def warn_if_fallback(choice: Choice) -> None:
    """A GPU call served by the reference backend warns once per distinct set of reasons."""
    if choice.backend != "reference" or choice.target.kind == "cpu":
        return
    key = (choice.request.direction, choice.target.arch, tuple(map(tuple, choice.rejected.values())))
    if key in _warned:
        return
    _warned.add(key)
    why = "; ".join(f"{b}: {', '.join(r)}" for b, r in choice.rejected.items())
    if not why and choice.target.kind == "rocm":
        why = f"no native backend for arch {choice.target.arch}"
    warnings.warn(f"flash_attn: {choice.request.direction} on {choice.target.describe()} falls back "
                  f"to the slow reference backend ({why})", RuntimeWarning, stacklevel=4)


__all__ = ["Request", "Choice", "select", "reasons_against", "priority", "BACKENDS",
           "BackendUnavailableError", "warn_if_fallback"]
