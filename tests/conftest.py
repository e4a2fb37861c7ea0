"""Fixtures shared by every test: the devices to run on and per-test seeding.

`device` is "cpu" everywhere plus "cuda" where a GPU is present: the same test then runs through
whichever backend the dispatcher picks for that device. Every test is seeded from its own node id
(and FLASH_ATTN_TEST_SEED, default 0), so inputs are random, differ between tests, and a failure
reproduces with the same seed; set FLASH_ATTN_TEST_SEED to draw a fresh set of inputs.
"""
from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch



def _import_installed_flash_attn():
    """tests/flash_attn/ mirrors the source tree, and tests/ is on sys.path (for helpers.py): with an
    editable install, whose import hook runs after the path search, that folder would be imported
    as an empty namespace package named flash_attn. Import the real one first, without tests/."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import flash_attn  # noqa: F401
    finally:
        sys.path[:] = saved


_import_installed_flash_attn()

# One CPU thread unless told otherwise: the tests run many small ops, and measured on the 2-core
# CI machine while other jobs kept both cores busy, an attention forward of 2x113x203, hd 256 took
# 212 ms with torch's default 2 threads (OpenMP spin-waiting) and 7 ms with 1.
torch.set_num_threads(int(os.environ.get("FLASH_ATTN_TEST_THREADS", "1")))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BASE_SEED = int(os.environ.get("FLASH_ATTN_TEST_SEED", "0"))


def pytest_report_header(config):
    return f"flash_attn: devices {DEVICES}, FLASH_ATTN_TEST_SEED={BASE_SEED}"


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def seed(request) -> int:
    """The seed this test's random inputs come from (torch.manual_seed seeds CUDA too)."""
    value = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(value)
    return value


@pytest.fixture(params=["cpp", "python"])
def node(request, monkeypatch):
    """The call path planned dense, varlen and KV-cache calls take: the C++ one (csrc_torch/, skipped where it is not
    built for this torch) or the Python one."""
    from flash_attn.backends import autograd_node

    if request.param == "python":
        monkeypatch.setattr(autograd_node, "_state", (None, "the test asks for the Python node"))
    else:
        module, why = autograd_node.load()
        if module is None:
            pytest.skip(f"the C++ autograd node is not built: {why}")
    return request.param
