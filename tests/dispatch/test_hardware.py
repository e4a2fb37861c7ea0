"""Targets built from simulated device properties, as dispatch.hardware.detect builds them."""
from __future__ import annotations

import pytest
import torch

from flash_attn.dispatch import hardware

KB = 1024


@pytest.mark.parametrize("major,minor,smem,arch", [
    (7, 5, 64 * KB, "sm75"), (8, 0, 163 * KB, "sm80"), (8, 6, 99 * KB, "sm86"),
    (8, 9, 99 * KB, "sm89"), (9, 0, 227 * KB, "sm90"), (10, 0, 227 * KB, "sm100")])
def test_cuda_targets(major, minor, smem, arch):
    t = hardware.cuda_target(major, minor, smem, "gpu")
    assert (t.kind, t.arch, t.smem_per_block, t.sm) == ("cuda", arch, smem, major * 10 + minor)
    assert t.overridden_from is None
    assert t.describe() == f"cuda {arch}, {smem // KB} KB smem/block [gpu]"


@pytest.mark.parametrize("gcn,arch", [("gfx90a:sramecc+:xnack-", "gfx90a"),
                                      ("gfx942:sramecc+:xnack-", "gfx942"),
                                      ("gfx942", "gfx942"), ("gfx908:sramecc+:xnack-", "gfx908"),
                                      ("gfx950", "gfx950")])
def test_hip_targets_take_the_arch_stem(gcn, arch):
    t = hardware.hip_target(gcn, 64 * KB, "MI")
    assert (t.kind, t.arch, t.sm) == ("rocm", arch, 0)
    assert "rocm " + arch in t.describe()


def test_cpu_target():
    assert hardware.detect(torch.device("cpu")) is hardware.CPU
    assert hardware.detect(torch.device("cpu"), "sm80") is hardware.CPU  # override is CUDA-only
    assert hardware.CPU.kind == "cpu" and hardware.CPU.sm == 0


@pytest.mark.parametrize("override,smem", [("sm86", 99 * KB), ("sm89", 99 * KB), ("sm80", 163 * KB),
                                           ("sm75", 64 * KB)])
def test_override_to_older_arch_caps_shared_memory(override, smem):
    t = hardware.cuda_target(9, 0, 227 * KB, "H100", override=override)
    assert t.arch == override and t.sm == int(override[2:]) and t.smem_per_block == smem
    assert t.overridden_from == "sm90"
    assert f"treated as {override}; really sm90" in t.describe()


def test_override_never_raises_shared_memory():
    t = hardware.cuda_target(8, 6, 99 * KB, override="sm80")  # older arch, but smem stays the device's
    assert t.arch == "sm80" and t.smem_per_block == 99 * KB


@pytest.mark.parametrize("major,minor,override", [(8, 0, "sm86"), (8, 6, "sm89"), (7, 5, "sm80")])
def test_override_to_newer_arch_is_refused(major, minor, override):
    with pytest.raises(ValueError, match=rf"FLASH_ATTENTION_ARCH_OVERRIDE='{override}' is newer than "
                                         rf"the device \(sm{major}{minor}\)"):
        hardware.cuda_target(major, minor, 164 * KB, override=override)


@pytest.mark.parametrize("override", ["sm90", "sm100", "gfx90a"])
def test_override_outside_the_list_is_refused(override):
    with pytest.raises(ValueError, match=rf"FLASH_ATTENTION_ARCH_OVERRIDE='{override}' is not supported; "
                                         r"use one of sm75, sm80, sm86, sm89"):
        hardware.cuda_target(9, 0, 227 * KB, override=override)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_detect_this_gpu():
    t = hardware.detect(torch.device("cuda"))
    props = torch.cuda.get_device_properties(0)
    if torch.version.hip:
        assert t.kind == "rocm" and props.gcnArchName.startswith(t.arch)
    else:
        assert t.kind == "cuda" and t.sm == props.major * 10 + props.minor
        assert t.smem_per_block >= 48 * KB
        if t.sm >= 86:
            older = hardware.detect(torch.device("cuda"), "sm86")
            assert older.arch == "sm86" and older.smem_per_block <= 99 * KB
