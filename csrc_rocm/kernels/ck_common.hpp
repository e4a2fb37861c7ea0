// What every generated instance needs before and around ck_tile: the bf16 rounding mode (a
// ck_tile compile-time default, so it must be fixed before the first ck_tile include), the
// dtype mapping, the shared mask type and a kernel entry with internal linkage.
#pragma once

// ck_tile reads CK_TILE_FLOAT_TO_BFLOAT16_DEFAULT once, as the default template argument of
// every fp32 -> bf16 conversion. RNE uses its round-to-nearest-even asm path (3); RTZ uses
// truncation that keeps NaNs NaN (1): plain truncation (2) would turn NaNs whose payload sits in
// the low 16 bits into infinities. The generated file defines FA_ROCM_BF16_RTZ.
#ifndef FA_ROCM_BF16_RTZ
#error "define FA_ROCM_BF16_RTZ (0 or 1) before including ck_common.hpp"
#endif
#ifdef CK_TILE_FLOAT_TO_BFLOAT16_DEFAULT
#error "ck_tile was included before ck_common.hpp; the bf16 rounding mode would be ignored"
#endif
#define CK_TILE_FLOAT_TO_BFLOAT16_DEFAULT (FA_ROCM_BF16_RTZ ? 1 : 3)

#include <hip/hip_runtime.h>

#include <type_traits>
#include <utility>

#include "ck_tile/core.hpp"
#include "ck_tile/ops/epilogue.hpp"
#include "ck_tile/ops/fmha.hpp"

#include "instance_traits.hpp"
#include "tile_table.hpp"

namespace fa_rocm {

template <fa_dtype D>
struct CkType;
template <>
struct CkType<FA_DTYPE_FP16> {
  using type = ck_tile::fp16_t;
};
template <>
struct CkType<FA_DTYPE_BF16> {
  using type = ck_tile::bf16_t;
};

template <class T>
struct RoundingMatchesTraits {
  static constexpr bool value = T::kDType != FA_DTYPE_BF16 || T::kRtz == (FA_ROCM_BF16_RTZ != 0);
};

// One mask type for every instance: with both windows unbounded it masks only the padding, and
// its per-tile checks are scalar work next to the MFMAs, so causal/local/none share one kernel.
// Windows are always bottom-right aligned (FlashAttention's convention for seqlen_q != seqlen_k).
using Mask = ck_tile::SimplifiedGenericAttentionMask</*IsMasking=*/true>;
constexpr int kMaskBottomRight = static_cast<int>(ck_tile::GenericAttentionMaskEnum::MASK_FROM_BOTTOM_RIGHT);

template <bool kAlibi>
constexpr auto kBias = kAlibi ? ck_tile::BlockAttentionBiasEnum::ALIBI
                              : ck_tile::BlockAttentionBiasEnum::NO_BIAS;

template <int M, int N, int K>
using Seq3 = ck_tile::sequence<M, N, K>;

// ck_tile's tile shape for a forward tile-table entry (one-pass and split-KV). kTile refers to a
// constexpr FwdTile of static storage, such as an instance's kTile member: C++17 takes no
// class-type template parameters, but a reference to such an object is one.
template <const FwdTile& kTile>
using FwdTileShape = ck_tile::TileFmhaShape<
    ck_tile::sequence<kTile.m0, kTile.n0, kTile.k0, kTile.n1, kTile.k1, kTile.k0_max>,
    Seq3<kTile.warps_m, kTile.warps_n, kTile.warps_k>, Seq3<kTile.warp_m, kTile.warp_n, kTile.warp_k>,
    Seq3<kTile.warps_m, kTile.warps_n, kTile.warps_k>, Seq3<kTile.warp_m, kTile.warp_n, kTile.warp_k>,
    /*IsVLayoutRowMajor=*/true>;

namespace {

// Internal linkage: two translation units may instantiate the same ck_tile kernel type with a
// different bf16 rounding default; each keeps its own device code and host stub.
template <class Kernel>
__global__ __launch_bounds__(Kernel::kBlockSize, Kernel::kBlockPerCu) void kernel_entry(
    typename Kernel::Kargs kargs) {
  Kernel{}(kargs);
}

template <class Kernel>
hipError_t launch(const dim3& grid, const typename Kernel::Kargs& kargs, hipStream_t stream) {
  static_assert(Kernel::GetSmemSize() <= kLdsBytes, "tile does not fit the LDS of gfx90a/gfx94x");
  hipLaunchKernelGGL(kernel_entry<Kernel>, grid, dim3(Kernel::kBlockSize), 0, stream, kargs);
  return hipGetLastError();
}

}  // namespace
}  // namespace fa_rocm
