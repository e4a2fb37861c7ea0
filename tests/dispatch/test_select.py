"""Backend selection over simulated hardware and simulated native libraries: the choice and the
reasons given against every rejected backend."""
from __future__ import annotations

import warnings

import pytest
import torch

from flash_attn import dispatch, flash_attn_func
from flash_attn.backends import registry
from flash_attn.dispatch import flags as F
from flash_attn.dispatch import hardware as H
from flash_attn.dispatch import select as S
from flash_attn.dispatch.capabilities import FEATURES
from helpers import Oracle

KB = 1024
ALL_FEATURES = list(FEATURES)


def build_info(backend, archs, **overrides):
    info = {"backend": backend, "archs": archs, "head_dims": [64, 128, 256],
            "dtypes": ["fp16", "bf16"], "directions": ["fwd", "bwd"], "features": ALL_FEATURES}
    info.update(overrides)
    return info


CUDA_LIB = build_info("cuda", ["sm80", "sm90"])
ROCM_LIB = build_info("rocm", ["gfx90a", "gfx942"])


@pytest.fixture
def libraries(monkeypatch):
    """libraries(cuda=info|None, rocm=info|None): simulate which native libraries are built."""
    monkeypatch.setattr(registry, "_select", registry._select.__wrapped__)  # no stale verdicts

    def install(cuda=None, rocm=None):
        found = {"cuda": cuda, "rocm": rocm}
        monkeypatch.setattr(S, "library_info", lambda name: found[name])
    install()
    return install


TARGETS = {
    "sm75": H.cuda_target(7, 5, 64 * KB, "T4"),
    "sm80": H.cuda_target(8, 0, 163 * KB, "A100"),
    "sm86": H.cuda_target(8, 6, 99 * KB, "A6000"),
    "sm89": H.cuda_target(8, 9, 99 * KB, "L40"),
    "sm90": H.cuda_target(9, 0, 227 * KB, "H100"),
    "sm100": H.cuda_target(10, 0, 227 * KB, "B200"),
    "gfx90a": H.hip_target("gfx90a:sramecc+:xnack-", 64 * KB, "MI250X"),
    "gfx942": H.hip_target("gfx942:sramecc+:xnack-", 64 * KB, "MI300X"),
    "gfx908": H.hip_target("gfx908:sramecc+:xnack-", 64 * KB, "MI100"),
    "gfx940": H.hip_target("gfx940", 64 * KB, "MI300A-engineering"),
    "gfx950": H.hip_target("gfx950", 160 * KB, "MI355X"),
    "cpu": H.CPU,
}
# With both libraries built: the backend each target gets, and the reasons against the others.
EXPECTED = {
    "sm75": ("reference", {"cuda_sm80": ["arch sm75 is older than sm80"]}),
    "sm80": ("cuda_sm80", {}),
    "sm86": ("cuda_sm80", {}),
    "sm89": ("cuda_sm80", {}),
    "sm90": ("cuda_sm80", {}),
    "sm100": ("cuda_sm80", {}),
    "gfx90a": ("rocm_ck", {}),
    "gfx942": ("rocm_ck", {}),
    "gfx908": ("reference", {"rocm_ck": ["arch gfx908 is not one of gfx90a, gfx942"]}),
    "gfx940": ("reference", {"rocm_ck": ["arch gfx940 is not one of gfx90a, gfx942"]}),
    "gfx950": ("reference", {"rocm_ck": ["arch gfx950 is not one of gfx90a, gfx942"]}),
    "cpu": ("reference", {}),
}


def req(direction="fwd", dtype="bfloat16", head_dim=128, features=(), layout=()):
    return S.Request(direction, dtype, head_dim, frozenset(features), tuple(layout))


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_every_target_with_libraries_built(libraries, name, direction):
    libraries(cuda=CUDA_LIB, rocm=ROCM_LIB)
    choice = S.select(req(direction, features={"causal", "gqa"}), TARGETS[name], F.Flags())
    assert (choice.backend, choice.rejected) == EXPECTED[name]
    assert choice.target is TARGETS[name]


@pytest.mark.parametrize("name,lib", [("sm90", "cuda"), ("sm80", "cuda"), ("gfx942", "rocm")])
def test_library_missing(libraries, name, lib):
    libraries()
    choice = S.select(req(), TARGETS[name], F.Flags())
    assert choice.backend == "reference"
    (backend, reasons), = choice.rejected.items()
    assert reasons == [f"native library libflash_attn_{lib}.so is not installed (built with "
                       f"FLASH_ATTENTION_SKIP_{lib.upper()}_BUILD=1, or no compiler at install)"]


def test_library_that_cannot_load_is_a_reason(libraries):
    why = "libflash_attn_cuda.so could not be loaded (GLIBCXX_3.4.32 not found); rebuild it"
    libraries(cuda={"load_error": why})
    choice = S.select(req(), TARGETS["sm90"], F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["cuda_sm80"] == [why]


def test_unloadable_library_file_is_reported_not_raised(tmp_path, monkeypatch):
    """A file that is not a loadable library: info and calls keep working, the reason says why."""
    (tmp_path / "libflash_attn_cuda.so").write_bytes(b"not an ELF file")
    monkeypatch.setenv("FLASH_ATTENTION_LIB_DIR", str(tmp_path))
    registry._load.cache_clear()
    try:
        info = S.library_info("cuda")
        assert "could not be loaded" in info["load_error"] and "pip install ." in info["load_error"]
    finally:
        registry._load.cache_clear()


@pytest.mark.parametrize("head_dim,compiled", [(32, True), (59, True), (64, True), (96, True),
                                               (128, True), (129, False), (256, False)])
def test_head_dim_not_compiled(libraries, head_dim, compiled):
    """A call runs in the smallest compiled head dim that holds it (zero-padded)."""
    libraries(cuda=build_info("cuda", ["sm90"], head_dims=[64, 128]))
    choice = S.select(req(head_dim=head_dim), TARGETS["sm90"], F.Flags())
    if compiled:
        assert choice.backend == "cuda_sm80"
    else:
        assert choice.backend == "reference"
        assert choice.rejected["cuda_sm80"] == [
            f"head_dim {head_dim} not compiled (built head dims: [64, 128]; set "
            f"FLASH_ATTENTION_HEAD_DIMS at build time)"]


def test_head_dim_beyond_every_backend(libraries):
    libraries(cuda=CUDA_LIB)
    with pytest.raises(S.BackendUnavailableError,
                       match=r"no backend can run this fwd call on cuda sm90.*cuda_sm80: head_dim 300 "
                             r"exceeds 256.*reference: head_dim 300 exceeds 256"):
        S.select(req(head_dim=300), TARGETS["sm90"], F.Flags())


def test_dtype_not_compiled(libraries):
    libraries(cuda=build_info("cuda", ["sm80"], dtypes=["fp16"]))
    assert S.select(req(dtype="float16"), TARGETS["sm80"], F.Flags()).backend == "cuda_sm80"
    choice = S.select(req(dtype="bfloat16"), TARGETS["sm80"], F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["cuda_sm80"] == ["dtype bfloat16 not compiled (built: ['fp16'])"]


@pytest.mark.parametrize("with_library", [False, True])
def test_unsupported_dtype_is_a_reason_for_every_backend(libraries, with_library):
    libraries(cuda=CUDA_LIB if with_library else None)
    for backend in ("cuda_sm80", "reference"):
        reasons = S.reasons_against(backend, req(dtype="float32"), TARGETS["sm90"])
        assert "dtype float32 is not one of float16, bfloat16" in reasons, backend
    with pytest.raises(S.BackendUnavailableError, match=r"reference: dtype float32 is not one of"):
        S.select(req(dtype="float32"), TARGETS["sm90"], F.Flags())


def test_direction_not_compiled(libraries):
    libraries(cuda=build_info("cuda", ["sm90"], directions=["fwd"]))
    assert S.select(req("fwd"), TARGETS["sm90"], F.Flags()).backend == "cuda_sm80"
    choice = S.select(req("bwd"), TARGETS["sm90"], F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["cuda_sm80"] == ["direction bwd not compiled"]


def test_feature_not_in_the_built_library(libraries):
    built = [f for f in ALL_FEATURES if f not in ("dropout", "paged_kv")]
    libraries(cuda=build_info("cuda", ["sm90"], features=built))
    assert S.select(req(features={"causal", "alibi"}), TARGETS["sm90"], F.Flags()).backend == "cuda_sm80"
    choice = S.select(req(features={"causal", "dropout", "paged_kv"}), TARGETS["sm90"], F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["cuda_sm80"] == ["dropout not implemented by the built library",
                                            "paged_kv not implemented by the built library"]


@pytest.mark.parametrize("direction,feature", [("fwd", "return_probs"), ("bwd", "paged_kv"),
                                               ("bwd", "seqused_k"), ("bwd", "return_probs")])
def test_feature_not_in_the_capability_table(libraries, direction, feature):
    libraries(cuda=CUDA_LIB, rocm=ROCM_LIB)
    for target, backend in (("sm90", "cuda_sm80"), ("gfx942", "rocm_ck")):
        choice = S.select(req(direction, features={feature}), TARGETS[target], F.Flags())
        assert choice.backend == "reference"
        assert choice.rejected[backend] == [f"does not implement {feature}"]


def test_layout_problems_reject_native_backends_only(libraries):
    libraries(cuda=CUDA_LIB)
    problem = "q strides (7, 1) are not multiples of 8 elements"
    choice = S.select(req(layout=[problem]), TARGETS["sm90"], F.Flags())
    assert choice.backend == "reference" and choice.rejected["cuda_sm80"] == [problem]


def test_reasons_accumulate(libraries):
    libraries(cuda=build_info("cuda", ["sm75"], head_dims=[64], dtypes=["fp16"]))
    reasons = S.reasons_against("cuda_sm80", req(head_dim=128, features={"return_probs"}), TARGETS["sm75"])
    assert reasons[:2] == ["arch sm75 is older than sm80", "does not implement return_probs"]
    assert any(r.startswith("head_dim 128 not compiled") for r in reasons)
    assert any(r.startswith("dtype bfloat16 not compiled") for r in reasons)


def test_wrong_platform_is_the_only_reason(libraries):
    libraries(cuda=CUDA_LIB, rocm=ROCM_LIB)
    assert S.reasons_against("rocm_ck", req(head_dim=300), TARGETS["sm90"]) == [
        "runs on rocm devices only, this is cuda"]
    assert S.reasons_against("cuda_sm80", req(), H.CPU) == ["runs on cuda devices only, this is cpu"]


# --- FLASH_ATTENTION_BACKEND -------------------------------------------------------------------

def test_prefer_a_usable_backend(libraries):
    libraries(cuda=CUDA_LIB)
    choice = S.select(req(), TARGETS["sm90"], F.read({F.BACKEND: "reference"}))
    assert choice.backend == "reference" and choice.rejected == {}


@pytest.mark.parametrize("target", ["sm75", "cpu", "gfx942"])
def test_prefer_an_unusable_backend_falls_back(libraries, target):
    libraries(cuda=CUDA_LIB, rocm=ROCM_LIB)
    choice = S.select(req(), TARGETS[target], F.read({F.BACKEND: "cuda_sm80"}))
    assert choice.backend == ("rocm_ck" if target == "gfx942" else "reference")
    assert list(choice.rejected) == ["cuda_sm80"] and choice.rejected["cuda_sm80"]


@pytest.mark.parametrize("target,backend,match", [
    ("sm75", "cuda_sm80", r"no backend can run this fwd call on cuda sm75.*cuda_sm80: arch sm75 is "
                          r"older than sm80\. Unset FLASH_ATTENTION_BACKEND"),
    ("sm90", "rocm_ck", r"on cuda sm90.*rocm_ck: runs on rocm devices only, this is cuda"),
    ("cpu", "cuda_sm80", r"on cpu cpu.*cuda_sm80: runs on cuda devices only, this is cpu"),
    ("gfx908", "rocm_ck", r"rocm_ck: arch gfx908 is not one of gfx90a, gfx942"),
])
def test_strict_backend_raises_with_reasons(libraries, target, backend, match):
    libraries(cuda=CUDA_LIB, rocm=ROCM_LIB)
    with pytest.raises(S.BackendUnavailableError, match=match):
        S.select(req(), TARGETS[target], F.read({F.BACKEND: f"only:{backend}"}))


def test_strict_backend_library_missing(libraries):
    libraries()
    with pytest.raises(S.BackendUnavailableError,
                       match=r"cuda_sm80: native library libflash_attn_cuda\.so is not installed"):
        S.select(req(), TARGETS["sm90"], F.read({F.BACKEND: "only:cuda_sm80"}))
    choice = S.select(req(), TARGETS["sm90"], F.read({F.BACKEND: "only:reference"}))
    assert choice.backend == "reference" and choice.rejected == {}


def test_strict_backend_end_to_end(monkeypatch):
    q = torch.randn(1, 8, 2, 64, dtype=torch.float16)
    monkeypatch.setenv(F.BACKEND, "only:cuda_sm80")
    with pytest.raises(S.BackendUnavailableError, match=r"cuda_sm80: runs on cuda devices only, this is cpu"):
        flash_attn_func(q, q, q)


# --- FLASH_ATTENTION_ARCH_OVERRIDE -------------------------------------------------------------

@pytest.mark.parametrize("override,backend", [("sm75", "reference"), ("sm80", "cuda_sm80"),
                                              ("sm86", "cuda_sm80"), ("sm89", "cuda_sm80")])
def test_arch_override_selects_as_that_arch(libraries, override, backend):
    libraries(cuda=CUDA_LIB)
    flags = F.read({F.ARCH_OVERRIDE: override})
    target = H.cuda_target(9, 0, 227 * KB, "H100", flags.arch_override)
    choice = S.select(req(), target, flags)
    assert choice.backend == backend and choice.target.arch == override
    if override == "sm75":
        assert choice.rejected["cuda_sm80"] == ["arch sm75 is older than sm80"]
    if override in ("sm86", "sm89"):
        assert choice.target.smem_per_block == 99 * KB


# --- the fall-back warning ---------------------------------------------------------------------

@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(S, "_warned", set())


def _warned(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_fallback_warning_on_gpu_fires_once_with_reasons(libraries, fresh_warnings):
    libraries()
    choice = S.select(req(), TARGETS["sm90"], F.Flags())
    first = _warned(lambda: S.warn_if_fallback(choice))
    assert len(first) == 1
    assert first[0].startswith("flash_attn: fwd on cuda sm90")
    assert "falls back to the slow reference backend (cuda_sm80: native library " \
           "libflash_attn_cuda.so is not installed" in first[0]
    assert _warned(lambda: S.warn_if_fallback(choice)) == []
    # another reason (or direction) is news: it warns again, once
    other = S.select(req(head_dim=256), TARGETS["sm75"], F.Flags())
    assert len(_warned(lambda: S.warn_if_fallback(other))) == 1
    assert _warned(lambda: S.warn_if_fallback(other)) == []


def test_fallback_warning_names_the_amd_arch(libraries, fresh_warnings):
    libraries(rocm=ROCM_LIB)
    choice = S.select(req(), TARGETS["gfx908"], F.Flags())
    (msg,) = _warned(lambda: S.warn_if_fallback(choice))
    assert "rocm_ck: arch gfx908 is not one of gfx90a, gfx942" in msg


def test_no_warning_on_cpu(libraries, fresh_warnings):
    libraries()
    choice = S.select(req(), H.CPU, F.Flags())
    assert choice.backend == "reference"
    assert _warned(lambda: S.warn_if_fallback(choice)) == []
    q = torch.randn(1, 8, 2, 64, dtype=torch.float16)
    assert _warned(lambda: flash_attn_func(q, q, q)) == []


def test_fallback_end_to_end(libraries, fresh_warnings, monkeypatch):
    """A call on a (simulated) H100 without the CUDA library runs the reference backend, right,
    and warns once, naming why."""
    libraries()
    monkeypatch.setattr(dispatch, "detect", lambda device, override=None: TARGETS["sm90"])
    q, k, v = (torch.randn(2, 33, 2, 64, dtype=torch.bfloat16) for _ in range(3))
    msgs = _warned(lambda: [flash_attn_func(q, k, v, causal=True) for _ in range(3)])
    assert len(msgs) == 1 and "libflash_attn_cuda.so is not installed" in msgs[0]
    Oracle(q, k, v, causal=True).check(flash_attn_func(q, k, v, causal=True))


def test_num_splits_is_a_hint_not_a_requirement():
    """num_splits does not change results, so no backend is refused for lacking a split-KV path."""
    from flash_attn.backends.args import AttnArgs
    assert "split_kv" not in registry.features(AttnArgs(softmax_scale=1.0, num_splits=4), 8, 8, "fwd", False)
