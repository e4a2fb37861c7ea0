"""Environment flags, read at call time and validated.

FLASH_ATTENTION_INTERNAL_DETERMINISTIC  default for deterministic= (also on under
                                        torch.use_deterministic_algorithms(True))
FLASH_ATTENTION_INTERNAL_USE_RTZ        fp32 -> fp16/bf16 rounds toward zero
FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE  16-bit intermediates where a backend can use them
FLASH_ATTENTION_BACKEND                 NAME: prefer that backend; only:NAME: use it or fail
FLASH_ATTENTION_ARCH_OVERRIDE           sm75|sm80|sm86|sm89: treat a CUDA GPU as that arch
FLASH_ATTENTION_CHECK_VALUES            check index tensors' values (one host sync per call)
The README defines each exactly.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

from .hardware import OVERRIDABLE

DETERMINISTIC = "FLASH_ATTENTION_INTERNAL_DETERMINISTIC"
RTZ = "FLASH_ATTENTION_INTERNAL_USE_RTZ"
PERFORMANCE = "FLASH_ATTENTION_INTERNAL_PERFORMANCE_MODE"
BACKEND = "FLASH_ATTENTION_BACKEND"
ARCH_OVERRIDE = "FLASH_ATTENTION_ARCH_OVERRIDE"
CHECK_VALUES = "FLASH_ATTENTION_CHECK_VALUES"
ALL = (DETERMINISTIC, RTZ, PERFORMANCE, BACKEND, ARCH_OVERRIDE, CHECK_VALUES)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Flags:
    deterministic: bool = False
    rtz: bool = False
    performance: bool = False
    backend: Optional[str] = None
    backend_strict: bool = False
    arch_override: Optional[str] = None
    check_values: bool = False


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a valid value; use one of 1, true, yes, on, "
                     f"0, false, no, off (or unset it)")


@functools.lru_cache(maxsize=64)
def _parse(det: str, rtz: str, perf: str, backend: str, arch: str, check: str) -> Flags:
    from .capabilities import BACKENDS  # late: capabilities imports nothing from here

    strict = backend.startswith("only:")
    name = backend[len("only:"):] if strict else backend
    name = name.strip() or None
    if (name is not None or strict) and name not in BACKENDS:
        raise ValueError(f"{BACKEND}={backend!r} names no backend; use one of {', '.join(BACKENDS)}, "
                         f"optionally as only:NAME to forbid fall-backs (or unset it)")
    arch = arch.strip().lower() or None
    if arch is not None and arch not in OVERRIDABLE:
        raise ValueError(f"{ARCH_OVERRIDE}={arch!r} is not supported; use one of "
                         f"{', '.join(OVERRIDABLE)} (or unset it)")
    return Flags(_bool(DETERMINISTIC, det), _bool(RTZ, rtz), _bool(PERFORMANCE, perf), name, strict, arch,
                 _bool(CHECK_VALUES, check))


@functools.lru_cache(maxsize=64)
def _parse_raw(*raw: Optional[bytes]) -> Flags:
    return _parse(*(os.fsdecode(r) if r is not None else "" for r in raw))


def read(env=None) -> Flags:
    """Current flags; parsing is cached per distinct set of raw values. os.environ.get costs about
    2 µs per name (key encoding, a decode), a third of a small call's host time over its names, so
    the raw bytes dict behind POSIX os.environ (_data, which every os.environ write goes through) is
    read directly where CPython has it."""
    if env is None:
        raw = getattr(os.environ, "_data", None)
        if raw is not None and _RAW_KEYS is not None:
            return _parse_raw(*map(raw.get, _RAW_KEYS))  # map: 0.4 µs less than a generator
        env = os.environ
    return _parse(*(env.get(n, "") for n in ALL))


_encodekey = getattr(os.environ, "encodekey", None)
_RAW_KEYS = tuple(_encodekey(n) for n in ALL) if _encodekey is not None else None
