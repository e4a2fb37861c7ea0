// The flat table of compiled instances: (kind, head-dim bucket, dtype, feature bits) -> launch
// function. Every instance generate.py knows is listed; those a narrowed build did not compile
// have a null function, so lookups and fa_build_info see exactly what was built.
#pragma once

#include <hip/hip_runtime.h>

#include <cstdint>

#include "../kernels/instance_traits.hpp"
#include "plan.hpp"

namespace fa_rocm {

using FwdFn = hipError_t (*)(const fa_fwd_params&, const FwdPlan&);
using BwdFn = hipError_t (*)(const fa_bwd_params&, const BwdPlan&);

struct InstanceKey {
  Kind kind;
  int head_dim;  // bucket
  fa_dtype dtype;
  uint32_t features;
};

// The launch function for key, or nullptr when that instance was not compiled.
FwdFn find_fwd(const InstanceKey& key);
BwdFn find_bwd(const InstanceKey& key);

// "fp16"/"bf16", "rtz", "varlen", ... : the names used in keys' messages and fa_build_info.
const char* dtype_name(fa_dtype dtype);
const char* kind_name(Kind kind);

// The JSON object fa_build_info returns, derived from the non-null table rows.
const char* build_info_json();

}  // namespace fa_rocm
