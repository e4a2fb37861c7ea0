"""The runtime dispatcher: hardware detection, environment flags, capability tables, selection.

Installed as flash_attn.dispatch. The C ABI every native backend implements is
include/flash_attn_abi.h beside this file.
"""
from . import capabilities, flags, hardware, select
from .hardware import Target, detect
from .select import BackendUnavailableError, Choice, Request

__all__ = ["capabilities", "flags", "hardware", "select", "Target", "detect", "Request", "Choice",
           "BackendUnavailableError"]
