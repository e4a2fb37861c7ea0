// The optional features one call uses, as the kernels read them. Every kernel is compiled twice:
// the full kernel reads the flags from the call, the plain one fixes them off at compile time.
// Run-time branches alone are not enough: ptxas hoists the predicated Philox and tanh arithmetic
// into the softmax, and predicated-off instructions still take issue slots (and registers) in
// every call that uses none of it.
#pragma once

#include "params.h"

namespace fa {

struct Features {
  bool score_mod, dropout, rtz;
  bool kv_cache;  // kv_batch_idx, leftpad_k or a block table
  bool paged;

  __host__ __device__ static bool cache(AttnParams const& p) {
    return p.kv_batch_idx != nullptr || p.leftpad_k != nullptr || p.block_table != nullptr;
  }
  __host__ __device__ static bool any(AttnParams const& p) { return p.score_mod || p.dropout || p.rtz || cache(p); }
};

template <bool kAllFeatures>
__device__ __forceinline__ Features features_of(AttnParams const& p) {
  if constexpr (kAllFeatures) {
    return {p.score_mod, p.dropout, p.rtz, Features::cache(p), p.block_table != nullptr};
  } else {
    return {false, false, false, false, false};
  }
}

}  // namespace fa
