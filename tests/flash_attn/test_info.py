"""`python -m flash_attn info|explain` and flash_attn.explain(): what would run, and why."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import flash_attn
from flash_attn.__main__ import main
from flash_attn.dispatch import flags as flagmod
from flash_attn.dispatch import hardware
from flash_attn.dispatch import select as selmod
from flash_attn.explain import SAMPLE_CALLS

FULL_LIB = {"backend": "cuda", "archs": ["sm80", "sm90"], "head_dims": [64, 128, 256],
            "dtypes": ["fp16", "bf16"], "directions": ["fwd", "bwd"],
            "features": ["causal", "window", "alibi", "softcap", "dropout", "varlen", "gqa",
                         "seqused_k", "leftpad", "kv_batch_idx", "paged_kv", "split_kv",
                         "deterministic", "rtz", "performance"]}


def _cli(*args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_ATTENTION_")}
    clean.update(env, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "flash_attn", *args], capture_output=True,
                         text=True, env=clean, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def info_default():
    return _cli("info")


def test_info_shows_flags_libraries_and_choices(info_default):
    out = info_default
    for name in flagmod.ALL:
        assert f"{name}=''" in out
    assert "in force: deterministic=False rtz=False performance=False backend=auto" in out
    assert "native libraries:" in out and "cuda_sm80:" in out and "rocm_ck:" in out
    assert "device: cpu" in out
    cpu_part = out[out.index("device: cpu"):]
    for label, *_ in SAMPLE_CALLS:
        assert label in cpu_part
    assert cpu_part.count("-> reference") == len(SAMPLE_CALLS)
    if torch.cuda.is_available():
        assert "device: cuda" in out


def _main(capsys, *argv):
    """The same entry point in this process (a subprocess costs seconds of torch import)."""
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_info_reports_flags_in_force(monkeypatch, capsys):
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_DETERMINISTIC", "1")
    monkeypatch.setenv("FLASH_ATTENTION_INTERNAL_USE_RTZ", "yes")
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "only:reference")
    monkeypatch.setenv("FLASH_ATTENTION_CHECK_VALUES", "on")
    out = _main(capsys, "info")
    assert "FLASH_ATTENTION_INTERNAL_USE_RTZ='yes'" in out
    assert "in force: deterministic=True rtz=True performance=False backend=reference (strict)" in out
    assert "check_values=True" in out


def test_info_reports_invalid_flags(monkeypatch, capsys):
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "nonsense")
    assert "INVALID: FLASH_ATTENTION_BACKEND='nonsense' names no backend" in _main(capsys, "info")


def test_explain_cli(capsys):
    out = _cli("explain", "--causal", "--head-dim", "64", "--device", "cpu")
    assert "device: cpu" in out
    assert "fwd: reference" in out and "bwd: reference" in out
    out = _main(capsys, "explain", "--head-dim", "300", "--device", "cpu")
    assert "fwd: NO BACKEND" in out and "head_dim 300 exceeds 256" in out


def test_explain_on_this_device(device):
    q = torch.randn(2, 16, 4, 64, device=device, dtype=torch.bfloat16)
    ex = flash_attn.explain(q, q, q, causal=True)
    assert ex.backend("fwd") in selmod.BACKENDS and ex.backend("bwd") in selmod.BACKENDS
    assert ex.target.kind == "cpu" if device == "cpu" else ex.target.kind in ("cuda", "rocm")
    assert str(ex).startswith(f"device: {ex.target.describe()}")
    assert f"fwd: {ex.backend('fwd')}" in str(ex)
    if device == "cpu":
        assert ex.backend("fwd") == "reference" and ex.reasons("reference") == []


@pytest.fixture
def simulated_h100(monkeypatch):
    """explain() on CPU tensors as if they lived on an sm90 GPU with the given native library."""
    target = hardware.cuda_target(9, 0, 227 * 1024, "simulated H100")
    monkeypatch.setattr(hardware, "detect", lambda device, override=None: target)

    def with_library(info):
        monkeypatch.setattr(selmod, "library_info", lambda name: info if name == "cuda" else None)
    return with_library


def test_explain_names_backend_and_reasons(simulated_h100):
    q = torch.randn(1, 32, 4, 64, dtype=torch.float16)
    simulated_h100(None)
    ex = flash_attn.explain(q, q, q, causal=True)
    assert ex.backend("fwd") == "reference"
    assert any("libflash_attn_cuda.so is not installed" in r for r in ex.reasons("cuda_sm80"))
    text = str(ex)
    assert "device: cuda sm90" in text and "cuda_sm80" in text and "not installed" in text

    simulated_h100(FULL_LIB)
    ex = flash_attn.explain(q, q, q, causal=True)
    assert ex.backend("fwd") == "cuda_sm80" and ex.backend("bwd") == "cuda_sm80"
    assert ex.reasons("cuda_sm80") == []

    simulated_h100(dict(FULL_LIB, head_dims=[64, 128]))
    q256 = torch.randn(1, 32, 4, 256, dtype=torch.float16)
    ex = flash_attn.explain(q256, q256, q256, dropout_p=0.1, return_attn_probs=True)
    assert ex.backend("fwd") == "reference"
    reasons = ex.reasons("cuda_sm80")
    assert "does not implement return_probs" in reasons
    assert any(r.startswith("head_dim 256 not compiled (built head dims: [64, 128]") for r in reasons)
