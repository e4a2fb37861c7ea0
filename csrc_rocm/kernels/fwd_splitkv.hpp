// Split-KV forward for decoding: a partial pass per (query tile, head, split) writing fp32
// O_acc and LSE_acc, then a combine pass merging the splits into O and LSE. The partial pass
// is ck_tile's batch-mode kernel, the only one that reads paged K/V (block_table), a cache row
// per sequence (kv_batch_idx) and per-sequence key counts (seqused_k) without cu_seqlens.
#pragma once

#include "ck_common.hpp"

#include "../glue/plan.hpp"

namespace fa_rocm {

template <class T>
struct SplitInstance {
  static_assert(T::kKind == Kind::FwdSplit && !T::kVarlen && !T::kDropout);
  static_assert(RoundingMatchesTraits<T>::value, "FA_ROCM_BF16_RTZ disagrees with the traits");

  static constexpr FwdTile kTile = split_tile(T::kHeadDim);
  static_assert(kTile.head_dim == T::kHeadDim, "head dim is not a bucket of the tile table");
  static_assert(kTile.pipeline == FwdPipeline::Qr, "ck_tile has only the qr split-KV pipeline");
  static_assert(kTile.n0 <= kPageBlockMultiple && kPageBlockMultiple % kTile.n0 == 0,
                "pages must hold whole key tiles");

  using DType = typename CkType<T::kDType>::type;
  using Shape = FwdTileShape<kTile>;
  // kHasUnevenSplits: a split's key range need not be whole tiles (checked per tile at run time,
  // one instance for every seqlen_k / num_splits).
  using Features = ck_tile::TileFmhaFwdSplitKVTraits<
      /*kPadSeqLenQ=*/true, /*kPadSeqLenK=*/true, T::kPadHeadDim, T::kPadHeadDim,
      kBias<T::kAlibi>, /*kHasBiasGrad=*/false, /*kStoreLSE=*/true, /*kDoFp8StaticQuant=*/false,
      T::kPagedKV, /*kHasUnevenSplits=*/true>;
  using Problem = ck_tile::BlockFmhaFwdSplitKVPipelineProblem<
      DType, DType, DType, /*SaccDataType=*/float, /*SMPLComputeDataType=*/float,
      /*BiasDataType=*/DType, /*LSEDataType=*/float, /*PDataType=*/DType, /*OaccDataType=*/float,
      /*ODataType=*/float, Shape, /*kIsGroupMode=*/false, Mask, Features>;
  using Pipeline = ck_tile::BlockFmhaFwdSplitKVPipelineQRKSVS<Problem>;
  using Epilogue = ck_tile::Default2DEpilogue<
      ck_tile::Default2DEpilogueProblem<float, float, /*kPadM=*/true, T::kPadHeadDim>>;
  using Kernel = ck_tile::FmhaFwdSplitKVKernel<ck_tile::FmhaFwdSplitKVTilePartitioner<Shape>,
                                               Pipeline, Epilogue>;
};

// The combine kernel for at most 2^kLogMaxSplits splits. Always pads the head dim: it reads
// fp32 O_acc once per call, small next to the K/V cache the partial pass streams.
template <class T, int kLogMaxSplits>
struct CombineInstance {
  static_assert(T::kKind == Kind::FwdCombine && !T::kVarlen);
  static_assert(RoundingMatchesTraits<T>::value, "FA_ROCM_BF16_RTZ disagrees with the traits");

  static constexpr CombineTile kTile = combine_tile(T::kHeadDim);
  static_assert(kTile.head_dim == T::kHeadDim, "head dim is not a bucket of the tile table");

  using DType = typename CkType<T::kDType>::type;
  using Features = ck_tile::TileFmhaFwdSplitKVCombineTraits<
      /*kPadSeqLenQ=*/true, /*kPadHeadDimV=*/true, /*kStoreLSE=*/true,
      /*kDoFp8StaticQuant=*/false, kLogMaxSplits>;
  using Problem = ck_tile::BlockFmhaSplitKVCombinePipelineProblem<
      /*LSEDataType=*/float, /*OaccDataType=*/float, /*ODataType=*/DType, T::kHeadDim, kTile.m0,
      kTile.n1, /*kIsGroupMode=*/false, Features>;
  using Pipeline = ck_tile::BlockFmhaFwdSplitKVCombinePipeline<Problem>;
  using Epilogue = ck_tile::Default2DEpilogue<
      ck_tile::Default2DEpilogueProblem<float, DType, /*kPadM=*/true, /*kPadN=*/true>>;
  using Kernel = ck_tile::FmhaFwdSplitKVCombineKernel<
      ck_tile::FmhaFwdSplitKVCombineTilePartitioner<kTile.m0, kTile.n1>, Pipeline, Epilogue>;
};

template <class T>
hipError_t run_fwd_split(const fa_fwd_params& a, const FwdPlan& plan) {
  using Kernel = typename SplitInstance<T>::Kernel;
  const fa_problem& p = a.problem;
  const Strides& ls = plan.lse_acc_strides;
  const Strides& os = plan.o_acc_strides;
  auto kargs = Kernel::MakeKargs(
      a.q.ptr, a.k.ptr, a.v.ptr, p.alibi_slopes, plan.lse_acc, plan.o_acc, p.batch, p.seqlen_q,
      p.seqlen_k, p.seqused_k, p.head_dim, p.head_dim, p.nheads, p.nheads / p.nheads_k,
      plan.num_splits, p.block_table, static_cast<int32_t>(p.block_table_batch_stride),
      p.page_block_size, p.kv_batch_idx, p.softmax_scale, /*scale_p=*/1.f, a.q.row_stride,
      a.k.row_stride, a.v.row_stride, static_cast<int32_t>(p.alibi_batch_stride), os.row,
      a.q.head_stride, a.k.head_stride, a.v.head_stride, /*nhead_stride_bias=*/0, ls.head,
      os.head, a.q.batch_stride, a.k.batch_stride, a.v.batch_stride, /*batch_stride_bias=*/0,
      ls.batch, os.batch, ls.split, os.split, p.window_left, p.window_right, kMaskBottomRight);
  const dim3 grid = Kernel::GridSize(p.batch, p.nheads, p.seqlen_q, p.head_dim, plan.num_splits);
  return launch<Kernel>(grid, kargs, static_cast<hipStream_t>(p.stream));
}

template <class T, int kLogMaxSplits>
hipError_t run_combine_for(const fa_fwd_params& a, const FwdPlan& plan) {
  using Kernel = typename CombineInstance<T, kLogMaxSplits>::Kernel;
  const fa_problem& p = a.problem;
  const Strides& ls = plan.lse_acc_strides;
  const Strides& os = plan.o_acc_strides;
  auto kargs = Kernel::MakeKargs(
      plan.lse_acc, plan.o_acc, plan.lse, const_cast<void*>(a.out.ptr), p.batch, p.seqlen_q,
      p.head_dim, plan.num_splits, /*scale_o=*/1.f, os.row, a.out.row_stride, ls.head, os.head,
      plan.lse_strides.head, a.out.head_stride, ls.batch, os.batch, plan.lse_strides.batch,
      a.out.batch_stride, ls.split, os.split);
  const dim3 grid = Kernel::GridSize(p.batch, p.nheads, p.seqlen_q, p.head_dim);
  return launch<Kernel>(grid, kargs, static_cast<hipStream_t>(p.stream));
}

template <class T>
hipError_t run_fwd_combine(const fa_fwd_params& a, const FwdPlan& plan) {
  static_assert(kCombineLogMaxSplits[2] == 7 && (1 << 7) == kMaxSplits);
  if (plan.num_splits <= (1 << kCombineLogMaxSplits[0])) {
    return run_combine_for<T, kCombineLogMaxSplits[0]>(a, plan);
  }
  if (plan.num_splits <= (1 << kCombineLogMaxSplits[1])) {
    return run_combine_for<T, kCombineLogMaxSplits[1]>(a, plan);
  }
  return run_combine_for<T, kCombineLogMaxSplits[2]>(a, plan);
}

}  // namespace fa_rocm
