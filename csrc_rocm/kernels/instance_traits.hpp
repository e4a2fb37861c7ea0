// The compile-time description of one kernel instance: which launch sequence (kind), which
// head-dim bucket and dtype, and every feature switch, grouped in one traits struct. The same
// (kind, head_dim, dtype, features) tuple is the instance's key in the registry, so the host
// glue and the generated translation units share one vocabulary. No ck_tile include here.
#pragma once

#include <cstdint>

#include "flash_attn_abi.h"

namespace fa_rocm {

// A launch sequence; each compiled instance implements exactly one.
enum class Kind : uint8_t {
  Fwd,         // one ck_tile forward kernel writing O and LSE
  FwdSplit,    // split-KV partial pass writing fp32 O_acc and LSE_acc per split
  FwdCombine,  // merges the splits into O and LSE
  Bwd,         // dO.O row sums, then dQ/dK/dV, then the dQ fp32 -> dtype conversion
};

// Feature bits of an instance; a call needs exactly the bits its params imply.
enum Feature : uint32_t {
  kFeatRtz = 1u << 0,            // bf16 results truncate toward zero (ck_tile rounding mode)
  kFeatVarlen = 1u << 1,         // group mode: sequence b starts at cu_seqlens[b]
  kFeatAlibi = 1u << 2,          // ALiBi slopes added to the scores
  kFeatDropout = 1u << 3,        // ck_tile's Philox dropout on P
  kFeatDeterministic = 1u << 4,  // backward keeps one dQ partial per key tile, summed in order
  kFeatPagedKV = 1u << 5,        // split-KV reads K/V through block_table pages
  kFeatPadHeadDim = 1u << 6,     // head_dim below the bucket, served with unvectorised loads
};

template <Kind K, int HeadDim, fa_dtype DType, uint32_t Features>
struct InstanceTraits {
  static constexpr Kind kKind = K;
  static constexpr int kHeadDim = HeadDim;  // the bucket; the call's head_dim may be smaller
  static constexpr fa_dtype kDType = DType;
  static constexpr uint32_t kFeatures = Features;

  static constexpr bool kRtz = (Features & kFeatRtz) != 0;
  static constexpr bool kVarlen = (Features & kFeatVarlen) != 0;
  static constexpr bool kAlibi = (Features & kFeatAlibi) != 0;
  static constexpr bool kDropout = (Features & kFeatDropout) != 0;
  static constexpr bool kDeterministic = (Features & kFeatDeterministic) != 0;
  static constexpr bool kPagedKV = (Features & kFeatPagedKV) != 0;
  static constexpr bool kPadHeadDim = (Features & kFeatPadHeadDim) != 0;

  static_assert(!kRtz || DType == FA_DTYPE_BF16, "ck_tile rounds fp16 in hardware (RNE only)");
  static_assert(!kDeterministic || K == Kind::Bwd, "only the backward accumulates across blocks");
  static_assert(!kPagedKV || (K == Kind::FwdSplit && !kVarlen),
                "ck_tile pages K/V only in the batch-mode split-KV kernel");
  static_assert(!kDropout || K == Kind::Fwd || K == Kind::Bwd, "split-KV has no dropout");
};

}  // namespace fa_rocm
