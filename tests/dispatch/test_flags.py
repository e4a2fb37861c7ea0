"""Environment flags: parsed from the raw strings, validated, read at call time."""
from __future__ import annotations

import pytest

from flash_attn.dispatch import flags as F

BOOLS = [F.DETERMINISTIC, F.RTZ, F.PERFORMANCE]
FIELD = {F.DETERMINISTIC: "deterministic", F.RTZ: "rtz", F.PERFORMANCE: "performance"}


def test_defaults():
    f = F.read({})
    assert f == F.Flags()
    assert (f.deterministic, f.rtz, f.performance, f.backend, f.backend_strict, f.arch_override) == \
        (False, False, False, None, False, None)


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("YES", True), (" on ", True),
                                       ("0", False), ("false", False), ("No", False), ("off", False),
                                       ("", False)])
def test_boolean_flags(name, raw, value):
    f = F.read({name: raw})
    assert getattr(f, FIELD[name]) is value
    assert all(getattr(f, FIELD[other]) is False for other in BOOLS if other != name)


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("raw", ["maybe", "2", "enable", "-1"])
def test_invalid_boolean(name, raw):
    with pytest.raises(ValueError, match=rf"{name}='{raw}' is not a valid value; use one of 1, true, yes, "
                                         rf"on, 0, false, no, off"):
        F.read({name: raw})


@pytest.mark.parametrize("raw,backend,strict", [("reference", "reference", False),
                                                ("only:reference", "reference", True),
                                                ("cuda_sm80", "cuda_sm80", False),
                                                ("only:rocm_ck", "rocm_ck", True), ("", None, False)])
def test_backend(raw, backend, strict):
    f = F.read({F.BACKEND: raw})
    assert (f.backend, f.backend_strict) == (backend, strict)


@pytest.mark.parametrize("raw", ["nonsense", "only:", "only:cuda", "Reference", "sdpa"])
def test_invalid_backend(raw):
    with pytest.raises(ValueError, match=rf"FLASH_ATTENTION_BACKEND='{raw}' names no backend; use one of "
                                         r"cuda_sm80, rocm_ck, reference, optionally as only:NAME"):
        F.read({F.BACKEND: raw})


@pytest.mark.parametrize("raw,arch", [("sm80", "sm80"), ("SM86", "sm86"), (" sm75 ", "sm75"),
                                      ("sm89", "sm89"), ("", None)])
def test_arch_override(raw, arch):
    assert F.read({F.ARCH_OVERRIDE: raw}).arch_override == arch


@pytest.mark.parametrize("raw", ["sm99", "sm90", "gfx90a", "80"])
def test_invalid_arch_override(raw):
    with pytest.raises(ValueError, match=rf"FLASH_ATTENTION_ARCH_OVERRIDE='{raw.lower()}' is not supported"):
        F.read({F.ARCH_OVERRIDE: raw})


def test_read_follows_the_environment(monkeypatch):
    monkeypatch.delenv(F.RTZ, raising=False)
    assert F.read().rtz is False
    monkeypatch.setenv(F.RTZ, "1")
    assert F.read().rtz is True
    monkeypatch.setenv(F.RTZ, "0")
    assert F.read().rtz is False
