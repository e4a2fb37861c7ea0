"""generate.py's instance table against the C++ it must agree with: the committed generated/
files, the feature bits of instance_traits.hpp, the buckets of tile_table.hpp, and the feature
names registry.cpp reports to the dispatcher. Nothing here compiles."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from flash_attn.dispatch import capabilities


def test_committed_table_is_current(generate, csrc_rocm):
    assert generate.is_current(), "csrc_rocm/generated is stale: run python csrc_rocm/generate.py"
    assert [p.name for p in (csrc_rocm / "generated").iterdir()] == ["instances.inc"]


def test_full_set_counts(generate):
    instances = generate.all_instances()
    assert len({i.name for i in instances}) == len(instances) == 612
    assert Counter(i.kind for i in instances) == {"Fwd": 120, "FwdSplit": 96, "FwdCombine": 12,
                                                  "Bwd": 384}


def test_default_build_counts(build, generate):
    opts = build.resolve(env={})
    picked = generate.select(opts.head_dims, opts.dtypes, opts.directions, opts.skip_features)
    assert opts.skip_features == list(generate.DEFAULT_SKIP) == ["rtz"]
    assert Counter(i.kind for i in picked) == {"Fwd": 80, "FwdSplit": 64, "FwdCombine": 8,
                                               "Bwd": 256}


def test_table_rows_name_the_generated_functions(generate, csrc_rocm, tmp_path):
    table = (csrc_rocm / "generated" / "instances.inc").read_text()
    rows = re.findall(r"^FA_ROCM_(FWD|BWD)\((\w+), (\d+), (\w+), ([^,]+), (\w+)\)$", table, re.M)
    instances = generate.all_instances()
    assert len(rows) == len(instances)
    paths = generate.write_sources(instances, tmp_path)
    assert [p.stem for p in paths] == [fn for *_, fn in rows]
    for (macro, kind, head_dim, dtype, bits, fn), path in zip(rows, paths):
        assert (macro == "BWD") == (kind == "Bwd")
        source = path.read_text()
        assert f"hipError_t {fn}(" in source
        assert f"InstanceTraits<Kind::{kind}, {head_dim}, {dtype}," in source
        assert f"#define FA_ROCM_BF16_RTZ {int('kFeatRtz' in bits)}" in source


def test_instances_by_name(generate):
    (inst,) = generate.by_names(["bwd_d128_bf16_rtz_varlen_alibi_dropout_deterministic_pad"])
    assert (inst.kind, inst.head_dim, inst.dtype) == ("Bwd", 128, "bf16")
    with pytest.raises(ValueError, match="unknown instances"):
        generate.by_names(["fwd_d96_bf16"])


def test_feature_bits_match_instance_traits(generate, csrc_rocm):
    header = (csrc_rocm / "kernels" / "instance_traits.hpp").read_text()
    declared = set(re.findall(r"^\s*(kFeat\w+) = 1u << \d+,", header, re.M))
    assert declared == set(generate.FEATURES.values())


def test_buckets_match_tile_table(generate, csrc_rocm):
    table = (csrc_rocm / "kernels" / "tile_table.hpp").read_text()
    buckets = re.search(r"kHeadDimBuckets\[\] = \{([^}]*)\}", table).group(1)
    assert tuple(int(b) for b in buckets.split(",")) == generate.BUCKETS
    fwd = table[table.index("kFwdTiles[]"):table.index("kSplitTiles[]")]
    rows = re.findall(r"\{(\d+),[^{}]*FwdPipeline::(\w+)", fwd)
    assert tuple(int(d) for d, p in rows if p == "QrAsync") == generate.FWD_NATIVE_PAD


@pytest.mark.parametrize("head_dims,buckets", [([64], {64}), ([8, 96], {32, 128}), ([256], {256})])
def test_head_dims_select_their_buckets(generate, head_dims, buckets):
    assert {i.head_dim for i in generate.select(head_dims=head_dims)} == buckets


def test_skips(generate):
    assert not any(i.kind.startswith("FwdSplit") or i.kind == "FwdCombine"
                   for i in generate.select(skip_features=["split_kv"]))
    assert not any("pad" in i.features for i in generate.select(skip_features=["pad"]))
    with pytest.raises(ValueError, match="unknown features to skip"):
        generate.select(skip_features=["softcap"])
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        generate.select(head_dims=[512])


def test_registry_feature_names_are_the_dispatchers(csrc_rocm):
    """Every name fa_build_info can report is one dispatch knows, and every feature the rocm_ck
    capability rows claim is one fa_build_info can report (else the row could never be chosen)."""
    source = (csrc_rocm / "glue" / "registry.cpp").read_text()
    body = source[source.index("const char* const kAlways"):source.index("std::string json_list")]
    reported = set(re.findall(r'"(\w+)"', body))
    assert reported <= set(capabilities.FEATURES)
    for direction in ("fwd", "bwd"):
        assert capabilities.rows("rocm_ck", direction).features <= reported


def test_dispatch_page_size_rule_is_the_tile_tables(csrc_rocm):
    table = (csrc_rocm / "kernels" / "tile_table.hpp").read_text()
    multiple = int(re.search(r"kPageBlockMultiple = (\d+);", table).group(1))
    assert capabilities.rows("rocm_ck", "fwd").page_block_multiple == multiple
