"""What device a call runs on, reduced to the facts the capability tables are written in.

A Target is built from a tensor's device (detect) or, in tests, from simulated properties
(cuda_target, hip_target). FLASH_ATTENTION_ARCH_OVERRIDE makes a CUDA device be treated as an
older architecture, with that architecture's shared-memory limit, so the SM80/SM86/SM75 paths can
be tested on an H100.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

# Shared memory a block may opt into, per architecture (CUDA programming guide, table of
# compute capabilities). The SM86/SM89 limit (99 KB) is what forces their smaller tiles.
SMEM_PER_BLOCK = {"sm75": 64 * 1024, "sm80": 163 * 1024, "sm86": 99 * 1024, "sm89": 99 * 1024,
                  "sm90": 227 * 1024}
OVERRIDABLE = ("sm75", "sm80", "sm86", "sm89")
# AMD targets we build for, matched exactly: gfx90a = MI200, gfx942 = MI300. Other gfx9 parts
# (gfx908, gfx940, gfx941, gfx950) have different MFMA sets or memory and are not assumed to work.
ROCM_ARCHS = ("gfx90a", "gfx942")


@dataclass(frozen=True)
class Target:
    kind: str  # "cuda" | "rocm" | "cpu"
    arch: str  # "sm90", "sm86", "gfx942", "cpu", ...
    smem_per_block: int  # bytes a block can use (opt-in maximum)
    name: str = ""
    overridden_from: Optional[str] = None

    @property
    def sm(self) -> int:
        """Compute capability as an int (90 for sm90); 0 off CUDA."""
        return int(self.arch[2:]) if self.kind == "cuda" else 0

    def describe(self) -> str:
        note = f" (treated as {self.arch}; really {self.overridden_from})" if self.overridden_from else ""
        smem = f", {self.smem_per_block // 1024} KB smem/block" if self.kind != "cpu" else ""
        return f"{self.kind} {self.arch}{note}{smem}" + (f" [{self.name}]" if self.name else "")


CPU = Target("cpu", "cpu", 0, "host CPU")


def cuda_target(major: int, minor: int, smem_per_block: int, name: str = "",
                override: Optional[str] = None) -> Target:
    arch = f"sm{major}{minor}"
    if override is None:
        return Target("cuda", arch, smem_per_block, name)
    if override not in OVERRIDABLE:
        raise ValueError(f"FLASH_ATTENTION_ARCH_OVERRIDE={override!r} is not supported; use one of "
                         f"{', '.join(OVERRIDABLE)} (or unset it)")
    if int(override[2:]) > major * 10 + minor:
        raise ValueError(f"FLASH_ATTENTION_ARCH_OVERRIDE={override!r} is newer than the device "
                         f"({arch}); a device can only be treated as an older architecture")
    return Target("cuda", override, min(smem_per_block, SMEM_PER_BLOCK[override]), name, arch)


def hip_target(gcn_arch_name: str, smem_per_block: int, name: str = "") -> Target:
    # gcnArchName carries feature suffixes, e.g. "gfx90a:sramecc+:xnack-"; the arch is the stem.
    return Target("rocm", gcn_arch_name.split(":")[0], smem_per_block, name)


@functools.lru_cache(maxsize=None)
def _device_target(kind: str, index: int, override: Optional[str]) -> Target:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 0)
    if kind == "rocm":
        return hip_target(props.gcnArchName, smem, props.name)
    return cuda_target(props.major, props.minor, smem, props.name, override)


def detect(device: torch.device, override: Optional[str] = None) -> Target:
    if device.type != "cuda":
        return CPU
    kind = "rocm" if torch.version.hip else "cuda"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_target(kind, index, override if kind == "cuda" else None)
