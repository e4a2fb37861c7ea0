"""csrc_rocm's Python build scripts, loaded by path (they are not part of the installed package),
the way setup.py loads them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CSRC_ROCM = Path(__file__).resolve().parents[2] / "csrc_rocm"


def _load(name: str):
    # Exactly setup.py's loader: no sys.modules entry for the module itself.
    spec = importlib.util.spec_from_file_location(f"_test_csrc_rocm_{name}", CSRC_ROCM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def csrc_rocm() -> Path:
    return CSRC_ROCM


@pytest.fixture(scope="session")
def build():
    return _load("build")


@pytest.fixture(scope="session")
def generate(build):
    return build.generate
