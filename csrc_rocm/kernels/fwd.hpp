// One-pass forward: ck_tile's FmhaFwdKernel writing O and LSE, composed from the tile table
// and one InstanceTraits. Covers batch and group (varlen) mode, every mask, ALiBi and dropout.
#pragma once

#include "ck_common.hpp"

#include "../glue/plan.hpp"

namespace fa_rocm {

template <class T>
struct FwdInstance {
  static_assert(T::kKind == Kind::Fwd);
  static_assert(RoundingMatchesTraits<T>::value, "FA_ROCM_BF16_RTZ disagrees with the traits");

  static constexpr FwdTile kTile = fwd_tile(T::kHeadDim);
  static_assert(kTile.head_dim == T::kHeadDim, "head dim is not a bucket of the tile table");
  static constexpr bool kAsync = kTile.pipeline == FwdPipeline::QrAsync;
  static_assert(!(kAsync && T::kPadHeadDim), "the async pipeline pads natively; no pad variant");
  // The async pipeline always masks the row tail in registers (and requires the flags set).
  static constexpr bool kPadD = kAsync || T::kPadHeadDim;

  using DType = typename CkType<T::kDType>::type;
  using Shape = FwdTileShape<kTile>;
  // Sequence tails are masked at run time: varlen cannot know them at compile time, and in
  // batch mode the check costs less than a second instance per shape.
  using Features = ck_tile::TileFmhaTraits</*kPadSeqLenQ=*/true, /*kPadSeqLenK=*/true, kPadD, kPadD,
                                           kBias<T::kAlibi>, /*kHasBiasGrad=*/false,
                                           /*kStoreLSE=*/true, T::kDropout,
                                           /*kDoFp8StaticQuant=*/false>;
  using Problem = ck_tile::BlockFmhaPipelineProblem<
      DType, DType, DType, /*SaccDataType=*/float, /*SMPLComputeDataType=*/float,
      /*BiasDataType=*/DType, /*RandValOutputDataType=*/uint8_t, /*LSEDataType=*/float,
      /*PDataType=*/DType, /*OaccDataType=*/float, /*ODataType=*/DType, Shape, T::kVarlen, Mask,
      Features>;
  using Pipeline = std::conditional_t<kAsync, ck_tile::BlockFmhaPipelineQRKSVSAsync<Problem>,
                                      ck_tile::BlockFmhaPipelineQRKSVS<Problem>>;
  using Epilogue = ck_tile::Default2DEpilogue<
      ck_tile::Default2DEpilogueProblem<float, DType, /*kPadM=*/true, /*kPadN=*/kPadD>>;
  using Kernel =
      ck_tile::FmhaFwdKernel<ck_tile::FmhaFwdTilePartitioner<Shape>, Pipeline, Epilogue>;
};

template <class T>
hipError_t run_fwd(const fa_fwd_params& a, const FwdPlan& plan) {
  using Kernel = typename FwdInstance<T>::Kernel;
  const fa_problem& p = a.problem;
  const int ratio = p.nheads / p.nheads_k;
  const std::pair<uint64_t, uint64_t> seed_offset{p.rng_seed, p.rng_offset};
  const int32_t alibi_stride = static_cast<int32_t>(p.alibi_batch_stride);
  const int32_t lse_head = plan.lse_strides.head;
  auto kargs = [&] {
    if constexpr (T::kVarlen) {
      return Kernel::MakeKargs(
          a.q.ptr, a.k.ptr, a.v.ptr, p.alibi_slopes, /*rand_val_ptr=*/nullptr, plan.lse,
          const_cast<void*>(a.out.ptr), p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.head_dim,
          p.head_dim, p.nheads, ratio, p.softmax_scale, /*scale_p=*/1.f, /*scale_o=*/1.f,
          a.q.row_stride, a.k.row_stride, a.v.row_stride, alibi_stride, /*stride_randval=*/0,
          a.out.row_stride, a.q.head_stride, a.k.head_stride, a.v.head_stride,
          /*nhead_stride_bias=*/0, /*nhead_stride_randval=*/0, lse_head, a.out.head_stride,
          p.window_left, p.window_right, kMaskBottomRight, p.dropout_p, /*s_randval=*/false,
          seed_offset);
    } else {
      return Kernel::MakeKargs(
          a.q.ptr, a.k.ptr, a.v.ptr, p.alibi_slopes, /*rand_val_ptr=*/nullptr, plan.lse,
          const_cast<void*>(a.out.ptr), p.seqlen_q, p.seqlen_k, p.head_dim, p.head_dim, p.nheads,
          ratio, p.softmax_scale, /*scale_p=*/1.f, /*scale_o=*/1.f, a.q.row_stride,
          a.k.row_stride, a.v.row_stride, alibi_stride, /*stride_randval=*/0, a.out.row_stride,
          a.q.head_stride, a.k.head_stride, a.v.head_stride, /*nhead_stride_bias=*/0,
          /*nhead_stride_randval=*/0, lse_head, a.out.head_stride, a.q.batch_stride,
          a.k.batch_stride, a.v.batch_stride, /*batch_stride_bias=*/0,
          /*batch_stride_randval=*/0, plan.lse_strides.batch, a.out.batch_stride, p.window_left,
          p.window_right, kMaskBottomRight, p.dropout_p, /*s_randval=*/false, seed_offset);
    }
  }();
  const dim3 grid = Kernel::GridSize(p.batch, p.nheads, p.seqlen_q, p.head_dim);
  return launch<Kernel>(grid, kargs, static_cast<hipStream_t>(p.stream));
}

}  // namespace fa_rocm
