"""Selection for AMD targets against what libflash_attn_rocm.so reports (csrc_rocm/glue/
registry.cpp): per-direction feature lists, the compiled archs, head dims without padded
instances, feature pairs ck_tile cannot combine, and dropout masks that only ck_tile can
regenerate. Simulated devices and libraries; nothing runs on a GPU."""
from __future__ import annotations

import pytest
import torch

from flash_attn import ops
from flash_attn.backends import registry
from flash_attn.dispatch import capabilities as C
from flash_attn.dispatch import flags as F
from flash_attn.dispatch import hardware as H
from flash_attn.dispatch import select as S

MI250X = H.hip_target("gfx90a:sramecc+:xnack-", 64 * 1024, "MI250X")
MI300X = H.hip_target("gfx942:sramecc+:xnack-", 64 * 1024, "MI300X")
MI100 = H.hip_target("gfx908:sramecc+:xnack-", 64 * 1024, "MI100")
CK_RNG = C.ROCM_DROPOUT_RNG

# What registry.cpp reports for the default build (FLASH_ATTENTION_ROCM_SKIP_FEATURES=rtz).
_COMMON = ["alibi", "causal", "dropout", "gqa", "performance", "varlen", "window"]
DEFAULT_BUILD = {
    "backend": "rocm", "kernels": "ck_tile", "archs": ["gfx90a", "gfx942"],
    "head_dims": [32, 64, 128, 256], "head_dims_exact": False, "dtypes": ["bf16", "fp16"],
    "directions": ["bwd", "fwd"],
    "features": sorted(_COMMON + ["deterministic", "kv_batch_idx", "paged_kv", "seqused_k",
                                  "split_kv"]),
    "features_fwd": sorted(_COMMON + ["kv_batch_idx", "paged_kv", "seqused_k", "split_kv"]),
    "features_bwd": sorted(_COMMON + ["deterministic"]),
    "requires": {"head_dim_multiple": 8, "stride_multiple": 8, "ptr_align": 16},
}


@pytest.fixture
def rocm_library(monkeypatch):
    monkeypatch.setattr(registry, "_select", registry._select.__wrapped__)

    def install(**overrides):
        info = {**DEFAULT_BUILD, **overrides}
        monkeypatch.setattr(S, "library_info", lambda name: info if name == "rocm" else None)
    install()
    return install


def req(direction="fwd", head_dim=128, features=(), dropout_rng="", page_block_size=0):
    return S.Request(direction, "bfloat16", head_dim, frozenset(features), (), dropout_rng,
                     page_block_size)


@pytest.mark.parametrize("target", [MI250X, MI300X])
def test_default_build_serves_fa2_calls(rocm_library, target):
    for r in (req(features={"causal", "gqa", "varlen", "alibi", "dropout"}),
              req(features={"paged_kv", "split_kv", "seqused_k"}, head_dim=96, page_block_size=256),
              req("bwd", features={"causal", "deterministic", "dropout"}, dropout_rng=CK_RNG)):
        assert S.select(r, target, F.Flags()).backend == "rocm_ck", r


def test_rtz_left_out_of_the_default_build_falls_back_with_the_reason(rocm_library):
    choice = S.select(req(features={"causal", "rtz"}), MI300X, F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["rocm_ck"] == ["rtz not implemented by the built library"]


def test_backward_reads_the_backward_list(rocm_library):
    """A backward built without deterministic instances is refused even though the union list
    (and older readers of it) could suggest otherwise."""
    rocm_library(features_bwd=[f for f in DEFAULT_BUILD["features_bwd"] if f != "deterministic"])
    choice = S.select(req("bwd", features={"deterministic"}), MI250X, F.Flags())
    assert choice.rejected["rocm_ck"] == ["deterministic not implemented by the built library"]
    assert S.select(req("fwd", features={"causal"}), MI250X, F.Flags()).backend == "rocm_ck"


def test_arch_not_compiled(rocm_library):
    rocm_library(archs=["gfx942"])
    assert S.select(req(), MI300X, F.Flags()).backend == "rocm_ck"
    choice = S.select(req(), MI250X, F.Flags())
    assert choice.rejected["rocm_ck"] == [
        "arch gfx90a not compiled (built: ['gfx942']; set FLASH_ATTENTION_ROCM_ARCHS at build time)"]


def test_other_gfx_is_refused_by_the_table_and_named_in_the_warning(rocm_library, monkeypatch):
    monkeypatch.setattr(S, "_warned", set())
    choice = S.select(req(), MI100, F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["rocm_ck"] == ["arch gfx908 is not one of gfx90a, gfx942"]
    with pytest.warns(RuntimeWarning, match=r"rocm gfx908.*rocm_ck: arch gfx908 is not one of"):
        S.warn_if_fallback(choice)


@pytest.mark.parametrize("head_dim,served", [(64, True), (60, True), (128, True), (96, False),
                                             (256, False)])
def test_build_without_padded_instances_serves_exact_buckets(rocm_library, head_dim, served):
    rocm_library(head_dims=[64, 128], head_dims_exact=True)
    choice = S.select(req(head_dim=head_dim), MI300X, F.Flags())
    assert (choice.backend == "rocm_ck") == served
    if not served:
        assert choice.rejected["rocm_ck"][0].startswith(
            f"head_dim {head_dim} not compiled (built head dims: [64, 128] exactly;")


@pytest.mark.parametrize("page", [128, 256, 16, 200])
def test_page_size(rocm_library, page):
    choice = S.select(req(features={"paged_kv"}, page_block_size=page), MI300X, F.Flags())
    if page % 128 == 0:
        assert choice.backend == "rocm_ck"
    else:
        assert choice.rejected["rocm_ck"] == [f"page_block_size {page} is not a multiple of 128"]


@pytest.mark.parametrize("pair", [("paged_kv", "varlen"), ("paged_kv", "dropout"),
                                  ("kv_batch_idx", "varlen"), ("kv_batch_idx", "dropout")])
def test_pairs_ck_tile_cannot_combine(rocm_library, pair):
    page = 128 if pair[0] == "paged_kv" else 0
    assert S.select(req(features={pair[0]}, page_block_size=page), MI300X, F.Flags()).backend == "rocm_ck"
    choice = S.select(req(features=set(pair), page_block_size=page), MI300X, F.Flags())
    assert choice.backend == "reference"
    assert choice.rejected["rocm_ck"] == [
        f"does not implement {pair[0]} with {pair[1]}: ck_tile reads them only in its batch-mode "
        f"split-KV kernel, which has no {pair[1]}"]


def test_dropout_backward_stays_with_the_forwards_generator(rocm_library):
    ours = req("bwd", features={"dropout"}, dropout_rng=CK_RNG)
    assert S.select(ours, MI300X, F.Flags()).backend == "rocm_ck"
    # the forward ran elsewhere (e.g. on the reference backend): ck_tile cannot redraw its mask
    theirs = req("bwd", features={"dropout"}, dropout_rng="philox4x32-10")
    choice = S.select(theirs, MI300X, F.Flags())
    assert choice.backend == "reference"
    assert "the forward's dropout mask came from philox4x32-10" in choice.rejected["rocm_ck"][0]
    # a ck_tile mask whose backward the library cannot run is an error, not wrong gradients
    rocm_library(features_bwd=[f for f in DEFAULT_BUILD["features_bwd"] if f != "deterministic"])
    with pytest.raises(S.BackendUnavailableError, match=r"reference: the forward's dropout mask "
                                                        r"came from ck_tile"):
        S.select(req("bwd", features={"dropout", "deterministic"}, dropout_rng=CK_RNG), MI300X,
                 F.Flags())


def test_forward_records_its_generator_and_the_backward_honours_it():
    q, k, v = (torch.randn(1, 16, 2, 32, dtype=torch.bfloat16) for _ in range(3))
    out, lse, rng_state, _ = ops.fwd(q, k, v, None, None, None, None, None, None, None, 16, 16,
                                     0.2, -1, -1, 0.0, 0.1, False, 0, False)
    assert C.DROPOUT_RNGS[int(rng_state[2])] == C.rows("reference", "fwd").dropout_rng
    forged = rng_state.clone()
    forged[2] = C.DROPOUT_RNGS.index(CK_RNG)
    with pytest.raises(S.BackendUnavailableError, match="dropout mask came from ck_tile"):
        ops.bwd(torch.ones_like(out), q, k, v, out, lse, forged, None, None, None, 16, 16, 0.2,
                -1, -1, 0.0, 0.1, False)
