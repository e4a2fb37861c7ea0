"""Loading the C++ autograd node (flash_attn/backends/autograd_node.py): only a module built for
this exact torch and Python is imported; anything else leaves the Python node and says why. What
the node does is tested against the Python node in tests/flash_attn/test_fastpath.py."""
from __future__ import annotations

import sys

import pytest
import torch

from flash_attn.backends import autograd_node
from flash_attn.explain import info_text


@pytest.fixture
def fresh(monkeypatch):
    """Loads anew, whatever this process loaded and whatever the environment asks for."""
    monkeypatch.setattr(autograd_node, "_state", None)
    monkeypatch.delenv(autograd_node.DISABLE, raising=False)
    yield
    autograd_node._state = None


def test_file_name_names_torch_and_python():
    name = autograd_node.file_name("2.11.0+cu130", "cpython-312")
    assert name == "flash_attn_autograd-torch2.11.0+cu130-cpython-312.so"
    assert autograd_node.file_name() == autograd_node.file_name(torch.__version__, sys.implementation.cache_tag)
    assert autograd_node.file_name("2.11.0+cu130") != autograd_node.file_name("2.13.0+cpu")


def test_a_module_for_another_torch_is_not_loaded(fresh, monkeypatch, tmp_path):
    (tmp_path / autograd_node.file_name("1.0.0")).write_bytes(b"not a module")
    monkeypatch.setenv("FLASH_ATTENTION_LIB_DIR", str(tmp_path))
    monkeypatch.setattr(autograd_node.native, "_LIB_DIR", tmp_path)
    module, why = autograd_node.load()
    assert module is None
    assert f"not built for torch {torch.__version__}" in why and "python csrc_torch/build.py" in why


def test_a_broken_module_says_rebuild(fresh, monkeypatch, tmp_path):
    (tmp_path / autograd_node.file_name()).write_bytes(b"not a module")
    monkeypatch.setenv("FLASH_ATTENTION_LIB_DIR", str(tmp_path))
    module, why = autograd_node.load()
    assert module is None and "does not load" in why and "rebuild" in why


def test_a_module_of_an_older_plan_version_says_rebuild(fresh, monkeypatch):
    built, _ = autograd_node.load()
    if built is None:
        pytest.skip("the C++ autograd node is not built")
    autograd_node._state = None
    monkeypatch.setattr(autograd_node, "PLAN_VERSION", autograd_node.PLAN_VERSION + 1)
    module, why = autograd_node.load()
    assert module is None and "older flash_attn" in why and "python csrc_torch/build.py" in why


def test_it_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv(autograd_node.DISABLE, "0")
    assert autograd_node.load() == (None, f"{autograd_node.DISABLE}=0")
    assert f"Python ({autograd_node.DISABLE}=0)" in info_text()


def test_info_names_the_node_in_use():
    module, why = autograd_node.load()
    expected = f"C++ ({autograd_node.path().name})" if module is not None else f"Python ({why})"
    assert f"autograd node of planned dense and varlen calls: {expected}" in info_text()


def test_a_bad_switch_value_is_an_error_naming_it(fresh, monkeypatch):
    monkeypatch.setenv(autograd_node.DISABLE, "of")
    with pytest.raises(ValueError, match=r"FLASH_ATTENTION_AUTOGRAD_NODE='of': use 1/true/yes/on .* or 0/false/no/off"):
        autograd_node.load()
