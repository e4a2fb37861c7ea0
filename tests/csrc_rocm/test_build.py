"""build.py without a compiler: how the environment becomes a build's choices, where ck_tile is
looked for, and the error when it is nowhere."""
from __future__ import annotations

import pytest


def test_defaults(build, generate):
    opts = build.resolve(env={"MAX_JOBS": "3"})
    assert opts.archs == ["gfx90a", "gfx942"]
    assert (opts.head_dims, opts.dtypes, opts.directions) == (None, None, None)
    assert opts.skip_features == list(generate.DEFAULT_SKIP)
    assert opts.jobs == 3


def test_environment(build):
    opts = build.resolve(env={"FLASH_ATTENTION_ROCM_ARCHS": "gfx942", "GPU_ARCHS": "gfx90a",
                              "FLASH_ATTENTION_HEAD_DIMS": "64;128", "FLASH_ATTENTION_DTYPES": "bf16",
                              "FLASH_ATTENTION_DIRECTIONS": "fwd",
                              "FLASH_ATTENTION_ROCM_SKIP_FEATURES": "deterministic, pad"})
    assert opts.archs == ["gfx942"]  # the specific variable wins over the ROCm fork's
    assert (opts.head_dims, opts.dtypes, opts.directions) == ([64, 128], ["bf16"], ["fwd"])
    assert opts.skip_features == ["deterministic", "pad"]


def test_rocm_fork_arch_variable(build):
    assert build.resolve(env={"GPU_ARCHS": "gfx90a;gfx942"}).archs == ["gfx90a", "gfx942"]


def test_skip_nothing_or_the_default(build, generate):
    assert build.resolve(env={"FLASH_ATTENTION_ROCM_SKIP_FEATURES": "none"}).skip_features == []
    empty = build.resolve(env={"FLASH_ATTENTION_ROCM_SKIP_FEATURES": " "})
    assert empty.skip_features == list(generate.DEFAULT_SKIP)


def test_arguments_win(build):
    env = {"FLASH_ATTENTION_ROCM_ARCHS": "gfx942", "FLASH_ATTENTION_DTYPES": "bf16"}
    opts = build.resolve(archs=["gfx90a"], dtypes=["fp16"], skip_features=[], env=env)
    assert (opts.archs, opts.dtypes, opts.skip_features) == (["gfx90a"], ["fp16"], [])


@pytest.mark.parametrize("env,match", [({"FLASH_ATTENTION_DTYPES": "fp8"}, "unknown dtype"),
                                       ({"FLASH_ATTENTION_ROCM_SKIP_FEATURES": "causal"},
                                        "unknown features to skip"),
                                       ({"FLASH_ATTENTION_HEAD_DIMS": "320"}, "largest bucket")])
def test_bad_values_are_errors(build, env, match):
    with pytest.raises(ValueError, match=match):
        build.resolve(env=env)


@pytest.mark.parametrize("layout", ["checkout", "include"])
def test_ck_from_ck_dir(build, tmp_path, monkeypatch, layout):
    include = tmp_path / "ck" / "include" if layout == "checkout" else tmp_path / "ck"
    (include / "ck_tile" / "ops").mkdir(parents=True)
    (include / "ck_tile" / "ops" / "fmha.hpp").touch()
    monkeypatch.setenv("CK_DIR", str(tmp_path / "ck"))
    monkeypatch.setenv("ROCM_PATH", str(tmp_path / "rocm"))
    assert build.find_ck_include() == include


def test_ck_from_rocm_path(build, tmp_path, monkeypatch):
    (tmp_path / "include" / "ck_tile" / "ops").mkdir(parents=True)
    (tmp_path / "include" / "ck_tile" / "ops" / "fmha.hpp").touch()
    monkeypatch.delenv("CK_DIR", raising=False)
    monkeypatch.setenv("ROCM_PATH", str(tmp_path))
    assert build.find_ck_include() == tmp_path / "include"


def test_missing_ck_names_both_variables_before_compiling(build, tmp_path, monkeypatch):
    monkeypatch.setenv("CK_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ROCM_PATH", str(tmp_path / "rocm"))
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: pytest.fail("compiled anyway"))
    with pytest.raises(build.BuildError) as err:
        build.build(build_dir=tmp_path / "b", out_lib=tmp_path / "b" / "lib.so")  # as setup.py calls it
    message = str(err.value)
    assert "CK_DIR" in message and "ROCM_PATH" in message
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "rocm") in message
    assert not (tmp_path / "b").exists()
