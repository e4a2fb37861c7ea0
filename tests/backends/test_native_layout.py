"""The binding's alignment checks (NativeLibrary._fits) and the dispatcher's layout reasons, on
tensors of every relevant kind. CPU only: neither needs a built library or a GPU."""
from __future__ import annotations

import pytest
import torch

from flash_attn.backends import native, registry


def _checker(stride_multiple=8, ptr_align=16):
    lib = native.NativeLibrary.__new__(native.NativeLibrary)  # no library: only the check's inputs
    lib._stride_multiple, lib._ptr_align = stride_multiple, ptr_align
    return lib


def _cases():
    base = torch.zeros(2, 40, 4, 64, dtype=torch.bfloat16)
    return {
        "contiguous": (base, True),
        "head slice (row stride 4*64, head stride 64)": (base[:, :, 1:3], True),
        "kv slice of a packed tensor": (torch.zeros(2, 40, 2, 4, 64, dtype=torch.bfloat16)[:, :, 0], True),
        "head dim not contiguous": (base.transpose(-1, -2), False),
        "outer stride not a multiple of 8": (torch.zeros(2, 40, 4, 68, dtype=torch.bfloat16)[..., :64], False),
        "pointer off by 2 bytes": (torch.zeros(2 * 40 * 4 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 40, 4, 64), False),
        "varlen (3-D)": (torch.zeros(100, 4, 64, dtype=torch.bfloat16), True),
        "head dim 24 (head stride 24: a multiple of 8, not of 16)": (torch.zeros(2, 40, 4, 24, dtype=torch.bfloat16), True),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_fits_matches_the_rule(name):
    t, ok = _cases()[name]
    assert _checker()._fits(t) is ok
    assert _checker(stride_multiple=1, ptr_align=1)._fits(t) is (t.stride(-1) == 1)


@pytest.mark.parametrize("name", list(_cases()))
def test_layout_problems_agree_with_fits(name):
    t, ok = _cases()[name]
    if t.stride(-1) != 1:
        return  # the public API rejects a non-contiguous head dim before any layout check
    problems = registry._layout_problems({"q": t})
    assert (problems == ()) is ok, problems
    for p in problems:
        assert p.startswith("q ")
