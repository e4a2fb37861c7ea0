// Backward: three ck_tile kernels in order on the caller's stream.
//   1. OGradDotO:  D = rowsum(dO * O) * (1 - p_drop), laid out like LSE
//   2. DQDKDV:     dK, dV per query head; dQ accumulated in fp32 (atomically, or one partial
//                  per key tile when deterministic)
//   3. ConvertQGrad: dQ_acc (summed over the partials in order when deterministic) -> dQ
// The dQ accumulator is zeroed by the glue before step 2.
#pragma once

#include "ck_common.hpp"

#include "../glue/plan.hpp"

namespace fa_rocm {

template <class T>
struct BwdInstance {
  static_assert(T::kKind == Kind::Bwd);
  static_assert(RoundingMatchesTraits<T>::value, "FA_ROCM_BF16_RTZ disagrees with the traits");

  static constexpr BwdTile kTile = bwd_tile(T::kHeadDim);
  static_assert(kTile.head_dim == T::kHeadDim, "head dim is not a bucket of the tile table");
  static constexpr bool kPadD = T::kPadHeadDim;
  using DType = typename CkType<T::kDType>::type;

  using Warps0 = Seq3<kTile.warps0_m, kTile.warps0_n, kTile.warps0_k>;
  using Warps1 = Seq3<kTile.warps1_m, kTile.warps1_n, kTile.warps1_k>;
  using Warps2 = Seq3<kTile.warps2_m, kTile.warps2_n, kTile.warps2_k>;
  using Warp0 = Seq3<kTile.warp0_m, kTile.warp0_n, kTile.warp0_k>;
  using Warp1 = Seq3<kTile.warp1_m, kTile.warp1_n, kTile.warp1_k>;
  // GEMM order: 0 S = Q K^T, 1 dV += P^T dO, 2 dP = dO V^T, 3 dK += dS^T Q, 4 dQ += dS K.
  using Shape = ck_tile::TileFmhaBwdShape<
      ck_tile::sequence<kTile.m0, kTile.n0, kTile.k0, kTile.k1, kTile.k2, kTile.k3, kTile.k4,
                        T::kHeadDim, T::kHeadDim>,
      Warps0, Warp0, Warps1, Warp1, Warps0, Warp0, Warps1, Warp1, Warps2, Warp0>;
  using Features = ck_tile::TileFmhaTraits</*kPadSeqLenQ=*/true, /*kPadSeqLenK=*/true, kPadD, kPadD,
                                           kBias<T::kAlibi>, /*kHasBiasGrad=*/false,
                                           /*kStoreLSE=*/false, /*kHasDropout=*/false,
                                           /*kDoFp8StaticQuant=*/false, kTile.blocks_per_cu>;
  // The 16x16 warp GEMM variant of ck_tile's dropout, matching Warp0; never stores randvals.
  using Dropout = ck_tile::BlockDropoutBwd<T::kDropout, /*IsWG32=*/!T::kDropout,
                                           /*IsStoreRandval=*/false>;
  static_assert(!T::kDropout || kTile.warp0_m == 16, "dropout variant assumes 16x16 warp GEMMs");
  using Problem = ck_tile::BlockFmhaBwdPipelineProblem<
      DType, DType, DType, /*GemmDataType=*/DType, /*LSEDataType=*/float, /*AccDataType=*/float,
      /*DDataType=*/float, /*BiasDataType=*/DType, /*RandValOutputDataType=*/uint8_t,
      /*ODataType=*/DType, /*OGradDataType=*/DType, /*QGradDataType=*/DType,
      /*KGradDataType=*/DType, /*VGradDataType=*/DType, /*BiasGradDataType=*/DType, Shape,
      T::kVarlen, T::kDeterministic, Mask, Dropout, Features>;
  // The instruction-group-scheduled pipeline is ck_tile's fast path for exact buckets; padded
  // head dims take the plain one (tile_table.hpp keeps the reason).
  using Pipeline = std::conditional_t<kPadD, ck_tile::BlockFmhaBwdDQDKDVPipelineKRKTRVR<Problem>,
                                      ck_tile::BlockFmhaBwdDQDKDVPipelineKRKTRVRIGLP<Problem>>;
  using GradEpilogue = ck_tile::Default2DEpilogue<
      ck_tile::Default2DEpilogueProblem<float, DType, /*kPadM=*/true, /*kPadN=*/kPadD>>;
  using Kernel = ck_tile::FmhaBwdDQDKDVKernel<Pipeline, GradEpilogue, GradEpilogue>;

  using DotDoO = ck_tile::FmhaBwdOGradDotOKernel<
      ck_tile::BlockFmhaBwdOGradDotO<ck_tile::BlockFmhaBwdOGradDotOPipelineProblem<
          DType, DType, /*DDataType=*/float, kDotDoOBlockSize, T::kHeadDim, T::kVarlen,
          ck_tile::TileFmhaBwdOGradDotOTraits</*kPadSeqLenQ=*/true, kPadD,
                                              kBwdHelperBlocksPerCu>>>>;

  using ConvertDq = ck_tile::FmhaBwdConvertQGradKernel<
      ck_tile::BlockFmhaBwdConvertQGrad<ck_tile::BlockFmhaBwdConvertQGradPipelineProblem<
          /*AccDataType=*/float, DType, kConvertDqBlockSize, kConvertDqM0, kTile.n0, T::kHeadDim,
          T::kVarlen, T::kDeterministic,
          ck_tile::TileFmhaBwdConvertQGradTraits</*kPadSeqLenQ=*/true, kPadD,
                                                 kBwdHelperBlocksPerCu>>>>;
};

template <class T>
hipError_t run_dot_do_o(const fa_bwd_params& a, const BwdPlan& plan, hipStream_t stream) {
  using Kernel = typename BwdInstance<T>::DotDoO;
  const fa_problem& p = a.problem;
  const float keep = 1.f - p.dropout_p;
  auto kargs = [&] {
    if constexpr (T::kVarlen) {
      return Kernel::MakeKargs(a.out.ptr, a.dout.ptr, plan.d, keep, p.cu_seqlens_q, p.head_dim,
                               a.dout.row_stride, a.out.row_stride, a.dout.head_stride,
                               a.out.head_stride, plan.lse_strides.head);
    } else {
      return Kernel::MakeKargs(a.out.ptr, a.dout.ptr, plan.d, keep, p.seqlen_q, p.head_dim,
                               a.dout.row_stride, a.out.row_stride, a.dout.head_stride,
                               a.out.head_stride, plan.lse_strides.head, a.dout.batch_stride,
                               a.out.batch_stride, plan.lse_strides.batch);
    }
  }();
  return launch<Kernel>(Kernel::GridSize(p.batch, p.nheads, p.seqlen_q), kargs, stream);
}

template <class T>
hipError_t run_dq_dk_dv(const fa_bwd_params& a, const BwdPlan& plan, hipStream_t stream) {
  using Kernel = typename BwdInstance<T>::Kernel;
  const fa_problem& p = a.problem;
  const int ratio = p.nheads / p.nheads_k;
  const std::pair<uint64_t, uint64_t> seed_offset{p.rng_seed, p.rng_offset};
  const int32_t alibi_stride = static_cast<int32_t>(p.alibi_batch_stride);
  void* dk = const_cast<void*>(plan.dk_out.ptr);
  void* dv = const_cast<void*>(plan.dv_out.ptr);
  const Strides& qs = plan.dq_acc_strides;
  auto kargs = [&] {
    if constexpr (T::kVarlen) {
      return Kernel::MakeKargs(
          a.q.ptr, a.k.ptr, a.v.ptr, p.alibi_slopes, a.lse, a.dout.ptr, plan.d,
          /*rand_val_ptr=*/nullptr, dk, dv, /*dbias_ptr=*/nullptr, plan.dq_acc, p.cu_seqlens_q,
          p.cu_seqlens_k, p.seqused_k, p.head_dim, p.head_dim, p.nheads, ratio, p.softmax_scale,
          a.q.row_stride, a.k.row_stride, a.v.row_stride, alibi_stride, /*stride_randval=*/0,
          a.dout.row_stride, qs.row, plan.dk_out.row_stride, plan.dv_out.row_stride,
          /*stride_dbias=*/0, a.q.head_stride, a.k.head_stride, a.v.head_stride,
          /*nhead_stride_bias=*/0, /*nhead_stride_randval=*/0, a.dout.head_stride,
          plan.lse_strides.head, qs.head, plan.dk_out.head_stride, plan.dv_out.head_stride,
          /*nhead_stride_dbias=*/0, qs.split, p.window_left, p.window_right, kMaskBottomRight,
          p.dropout_p, seed_offset);
    } else {
      return Kernel::MakeKargs(
          a.q.ptr, a.k.ptr, a.v.ptr, p.alibi_slopes, a.lse, a.dout.ptr, plan.d,
          /*rand_val_ptr=*/nullptr, dk, dv, /*dbias_ptr=*/nullptr, plan.dq_acc, p.seqlen_q,
          p.seqlen_k, p.head_dim, p.head_dim, p.nheads, ratio, p.softmax_scale, a.q.row_stride,
          a.k.row_stride, a.v.row_stride, alibi_stride, /*stride_randval=*/0, a.dout.row_stride,
          qs.row, plan.dk_out.row_stride, plan.dv_out.row_stride, /*stride_dbias=*/0,
          a.q.head_stride, a.k.head_stride, a.v.head_stride, /*nhead_stride_bias=*/0,
          /*nhead_stride_randval=*/0, a.dout.head_stride, plan.lse_strides.head, qs.head,
          plan.dk_out.head_stride, plan.dv_out.head_stride, /*nhead_stride_dbias=*/0,
          a.q.batch_stride, a.k.batch_stride, a.v.batch_stride, /*batch_stride_bias=*/0,
          /*batch_stride_randval=*/0, a.dout.batch_stride, plan.lse_strides.batch, qs.batch,
          plan.dk_out.batch_stride, plan.dv_out.batch_stride, /*batch_stride_dbias=*/0, qs.split,
          p.window_left, p.window_right, kMaskBottomRight, p.dropout_p, seed_offset);
    }
  }();
  return launch<Kernel>(Kernel::GridSize(p.batch, p.nheads, p.seqlen_k), kargs, stream);
}

template <class T>
hipError_t run_convert_dq(const fa_bwd_params& a, const BwdPlan& plan, hipStream_t stream) {
  using Kernel = typename BwdInstance<T>::ConvertDq;
  const fa_problem& p = a.problem;
  const Strides& qs = plan.dq_acc_strides;
  void* dq = const_cast<void*>(a.dq.ptr);
  auto kargs = [&] {
    if constexpr (T::kVarlen) {
      return Kernel::MakeKargs(plan.dq_acc, dq, p.cu_seqlens_q, p.cu_seqlens_k, p.head_dim,
                               a.dq.row_stride, qs.row, a.dq.head_stride, qs.head, qs.split);
    } else {
      return Kernel::MakeKargs(plan.dq_acc, dq, p.seqlen_q, p.seqlen_k, p.head_dim,
                               a.dq.row_stride, qs.row, a.dq.head_stride, qs.head,
                               a.dq.batch_stride, qs.batch, qs.split);
    }
  }();
  return launch<Kernel>(Kernel::GridSize(p.batch, p.nheads, p.seqlen_q), kargs, stream);
}

template <class T>
hipError_t run_bwd(const fa_bwd_params& a, const BwdPlan& plan) {
  const auto stream = static_cast<hipStream_t>(a.problem.stream);
  hipError_t err = run_dot_do_o<T>(a, plan, stream);
  if (err == hipSuccess) err = run_dq_dk_dv<T>(a, plan, stream);
  if (err == hipSuccess) err = run_convert_dq<T>(a, plan, stream);
  return err;
}

}  // namespace fa_rocm
