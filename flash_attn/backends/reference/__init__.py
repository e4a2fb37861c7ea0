"""The memory-linear PyTorch reference backend: every feature, any device, deterministic.

It is the CPU backend and the fallback anywhere a native kernel cannot serve a call. It computes
in fp32 from the 16-bit inputs and rounds outputs as the flags say (see rounding.py).
"""
from .backward import backward
from .forward import forward

__all__ = ["forward", "backward"]
