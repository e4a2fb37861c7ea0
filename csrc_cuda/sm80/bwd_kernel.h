// The backward main kernel: one block per (key block, query head, batch entry) keeps K, V and the
// dK, dV accumulators on chip and walks the query blocks that see its keys. Per query block:
// recompute S and dP, form P and dS (bwd_step.h), accumulate dV += P^T dO and dK += dS^T Q from
// shared memory, and add dQ = dS K to an fp32 buffer (bwd_dq_accum.h). With grouped KV heads each
// query head writes fp32 dK, dV partials that bwd_postprocess.h sums in a fixed order.
// kAllFeatures: the full or the plain kernel (common/features.h). kTurns: the code of the
// deterministic dQ sum (turn counters, bwd_dq_accum.h) is there; the full kernel always has it
// and reads p.deterministic, the plain one is compiled with and without it: never taken, that
// code alone cost the plain kernel 4-8 % (runs ig, ih).
#pragma once

#include <cute/tensor.hpp>

#include "../common/features.h"
#include "../common/mask.h"
#include "../common/params.h"
#include "../common/schedule.h"
#include "../common/seqlen.h"
#include "bwd_dq_accum.h"
#include "bwd_step.h"
#include "fwd_epilogue.h"
#include "kernel_traits.h"
#include "score_ops.h"
#include "tile_io.h"

namespace fa::sm80 {

using namespace cute;

// Query blocks [m_lo, m_hi) whose key range contains n_block: an interval, because both ends of
// a query block's key range grow with the block index.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ void visiting_query_blocks(Mask const& mask, int n_block, int& m_lo, int& m_hi) {
  mask.query_blocks<kBlockM, kBlockN>(n_block, m_lo, m_hi);
  auto sees = [&](int m) {
    int n_min, n_max;
    mask.key_blocks<kBlockM, kBlockN>(m, n_min, n_max);
    return n_min <= n_block && n_block < n_max;
  };
  while (m_lo < m_hi && !sees(m_lo)) { ++m_lo; }
  while (m_hi > m_lo && !sees(m_hi - 1)) { --m_hi; }
}

// lse or D of query rows row0 .. row0 + kBlockM into s_stat[0, kBlockM), by cp.async in the
// caller's group (the Q or dO load's): read from shared memory where they are used, they hold no
// registers across the S and dP products and cost no global load at the loop top. Rows past the
// end read the last row's; their P and dS are zeroed anyway.
template <int kBlockM>
__device__ __forceinline__ void load_row_stat(float* s_stat, const float* stat, int row0, int seqlen_q) {
  const int tid = threadIdx.x;
  if (tid < kBlockM) {
    const uint32_t dst = uint32_t(__cvta_generic_to_shared(s_stat + tid));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(stat + min(row0 + tid, seqlen_q - 1)));
  }
}

// dK or dV of this key block as fp32 into this query head's slot of the partial buffer
// (rows_k, nheads, kHeadDim), for key heads that serve several query heads (bwd_rowwise.h sums them).
template <int kHeadDim, class Acc, class Coord>
__device__ __forceinline__ void store_dkv_partial(Acc const& acc, Coord const& tcC, BwdParams const& p, float* accum,
                                                  SeqInfo const& seq, int h, int row0) {
  const int max_rows = seq.seqlen_k_rows - row0;  // keys past seqused_k get their zero gradient too
  const int64_t row_stride = int64_t(p.nheads) * kHeadDim;
  float* base = accum + (seq.k_row0 + row0) * row_stride + h * kHeadDim;
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    const int row = get<0>(tcC(2 * i)), col = get<1>(tcC(2 * i));
    if (row < max_rows) {
      *reinterpret_cast<float2*>(base + row * row_stride + col) = make_float2(acc(2 * i), acc(2 * i + 1));
    }
  }
}

template <class T, bool kAllFeatures, bool kTurns>
__global__ void __launch_bounds__(T::kThreads) bwd_kernel(__grid_constant__ const BwdParams p) {
  using Element = typename T::Element;
  const Features f = features_of<kAllFeatures>(p);
  const bool deterministic = kTurns && (!kAllFeatures || p.deterministic);
  constexpr int kBlockM = T::kBlockM, kBlockN = T::kBlockN, kHeadDim = T::kHeadDim;
  // The first key block first: under a causal mask the most query blocks see it (common/schedule.h).
  const int tid = threadIdx.x;
  int n_block = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  if (p.wave_group > 1) {
    int pair;
    wave_order(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), gridDim.x, gridDim.y * gridDim.z,
               p.wave_group, n_block, pair);
    h = pair % gridDim.y;
    b = pair / gridDim.y;
  }

  const SeqInfo seq(p, b);
  if (n_block * kBlockN >= seq.seqlen_k_rows) { return; }
  const Mask mask{seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right};
  int m_lo, m_hi;
  visiting_query_blocks<kBlockM, kBlockN>(mask, n_block, m_lo, m_hi);
  const int col0 = n_block * kBlockN;

  // Global tiles
  const int hk = h / p.group;
  Tensor mQ = head_tensor<Element, kHeadDim>(p.q, seq.q_offset(p.q, b) + h * p.q.head_stride, seq.seqlen_q);
  Tensor mdO = head_tensor<Element, kHeadDim>(p.dout, seq.q_offset(p.dout, b) + h * p.dout.head_stride, seq.seqlen_q);
  Tensor mK = head_tensor<Element, kHeadDim>(p.k, seq.k_offset(p.k) + hk * p.k.head_stride, seq.seqlen_k);
  Tensor mV = head_tensor<Element, kHeadDim>(p.v, seq.k_offset(p.v) + hk * p.v.head_stride, seq.seqlen_k);
  Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, 0));    // (kBlockM, kHeadDim, m)
  Tensor gdO = local_tile(mdO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockM, kHeadDim, m)
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));  // (kBlockN, kHeadDim)
  Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));

  // Shared tiles, and the transposed views that feed the dK, dV and dQ products
  extern __shared__ __align__(128) char smem[];
  using LQ = typename T::SmemQ;
  using LKV = typename T::SmemKV;
  using LPdS = typename T::SmemPdS;
  Tensor sK = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename LKV::Layout{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename LKV::Layout{});
  constexpr int kQStages = T::kQStages;
  Tensor sQ = make_tensor(sV.data() + size(sV), typename LQ::Layout{});  // stage 0; stage 1 follows it
  Tensor sdO = make_tensor(sQ.data() + kQStages * size(sQ), typename LQ::Layout{});
  Tensor sP = make_tensor(sdO.data() + size(sdO), typename LPdS::Layout{});
  Tensor sdS = make_tensor(sP.data() + size(sP), typename LPdS::Layout{});
  float* s_lse = reinterpret_cast<float*>(sdS.data().get() + size(sdS));  // kBlockM per Q stage
  float* s_dsum = s_lse + kQStages * kBlockM;
  // A tensor over Q's shared tile (or a partition of it) moved to Q buffer `stage`: a whole tile
  // further on, so the swizzle pattern, which repeats every 8-row atom, is unchanged.
  auto q_stage = [&](auto const& t, int stage) { return make_tensor(t.data() + stage * size(sQ), t.layout()); };
  Tensor sQt = make_tensor(sQ.data(), typename LQ::LayoutT{});       // (kHeadDim, kBlockM)
  Tensor sdOt = make_tensor(sdO.data(), typename LQ::LayoutT{});     // (kHeadDim, kBlockM)
  Tensor sPt = make_tensor(sP.data(), typename LPdS::LayoutT{});     // (kBlockN, kBlockM)
  Tensor sdSt = make_tensor(sdS.data(), typename LPdS::LayoutT{});   // (kBlockN, kBlockM)

  // Global -> shared copies
  typename T::GmemCopy gmem_copy;
  auto gmem_thr = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = gmem_thr.partition_S(gQ);  // (CPY, CPY_M, CPY_K, m)
  Tensor tQsQ = gmem_thr.partition_D(sQ);
  Tensor tQgdO = gmem_thr.partition_S(gdO);
  Tensor tQsdO = gmem_thr.partition_D(sdO);
  Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY, CPY_N, CPY_K)
  Tensor tKsK = gmem_thr.partition_D(sK);
  Tensor tKgV = gmem_thr.partition_S(gV);
  Tensor tKsV = gmem_thr.partition_D(sV);
  Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));

  // S = Q K^T and dP = dO V^T: (kBlockM x kBlockN)
  typename T::MmaSdP mma_sdp;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);     // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_sdp.partition_fragment_B(sK);     // (MMA, MMA_N, MMA_K)
  Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
  Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
  auto s2r_sdp_a = make_tiled_copy_A(LdsmAtom<Element>{}, mma_sdp);
  auto s2r_sdp_b = make_tiled_copy_B(LdsmAtom<Element>{}, mma_sdp);
  Tensor tSsQ = s2r_sdp_a.get_thread_slice(tid).partition_S(sQ);
  Tensor tdPsdO = s2r_sdp_a.get_thread_slice(tid).partition_S(sdO);
  Tensor tSsK = s2r_sdp_b.get_thread_slice(tid).partition_S(sK);
  Tensor tdPsV = s2r_sdp_b.get_thread_slice(tid).partition_S(sV);
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));

  // dV += P^T dO and dK += dS^T Q: (kBlockN x kHeadDim), both operands read transposed
  typename T::MmaDkv mma_dkv;
  auto thr_dkv = mma_dkv.get_thread_slice(tid);
  Tensor tdVrPt = thr_dkv.partition_fragment_A(make_tensor(sP.data(), typename LPdS::LayoutTNoSwizzle{}));
  Tensor tdVrdOt = thr_dkv.partition_fragment_B(make_tensor(sdO.data(), typename LQ::LayoutTNoSwizzle{}));
  Tensor tdKrdSt = thr_dkv.partition_fragment_A(make_tensor(sdS.data(), typename LPdS::LayoutTNoSwizzle{}));
  Tensor tdKrQt = thr_dkv.partition_fragment_B(make_tensor(sQ.data(), typename LQ::LayoutTNoSwizzle{}));
  auto s2r_dkv_a = make_tiled_copy_A(LdsmTransAtom<Element>{}, mma_dkv);
  auto s2r_dkv_b = make_tiled_copy_B(LdsmTransAtom<Element>{}, mma_dkv);
  Tensor tdVsPt = s2r_dkv_a.get_thread_slice(tid).partition_S(sPt);
  Tensor tdKsdSt = s2r_dkv_a.get_thread_slice(tid).partition_S(sdSt);
  Tensor tdVsdOt = s2r_dkv_b.get_thread_slice(tid).partition_S(sdOt);
  Tensor tdKsQt = s2r_dkv_b.get_thread_slice(tid).partition_S(sQt);
  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});  // (MMA, MMA_N, MMA_K)
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  Tensor tdKcdK = thr_dkv.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  clear(acc_dk);
  clear(acc_dv);

  // dQ = dS K in kDqPasses column slices of (kBlockM x kDqCols), K read transposed. A slice of K
  // is whole swizzle atoms (atoms tile the rows first), so slice j is slice 0's layout j * kBlockN
  // * kDqCols elements further on.
  constexpr int kDqCols = T::kDqCols;
  using LKslice = SmemTile<kBlockN, kDqCols>;
  static_assert(T::kDqPasses == 1 || (kDqCols % LKV::kAtomCols == 0 && LKslice::kAtomCols == LKV::kAtomCols));
  typename T::MmaDq mma_dq;
  auto thr_dq = mma_dq.get_thread_slice(tid);
  Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
  Tensor tdQrKt = thr_dq.partition_fragment_B(make_tensor(sK.data(), typename LKslice::LayoutTNoSwizzle{}));
  auto s2r_dq_a = make_tiled_copy_A(LdsmAtom<Element>{}, mma_dq);
  auto s2r_dq_b = make_tiled_copy_B(LdsmTransAtom<Element>{}, mma_dq);
  Tensor tdQsdS = s2r_dq_a.get_thread_slice(tid).partition_S(sdS);
  Tensor tdQsKt = s2r_dq_b.get_thread_slice(tid).partition_S(make_tensor(sK.data(), typename LKslice::LayoutT{}));

  const ScoreMod mod(p, b, h, mask.diag());
  const float* lse = p.lse + seq.lse_offset(p, b, h, p.total_q);
  const float* dsum = p.dsum + seq.lse_offset(p, b, h, p.rows_q_bound);
  Tensor rows_of_s = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
  constexpr int kRows = decltype(size<0>(rows_of_s))::value;

  // Q(m) and its lse into Q buffer q_buffer(m); dO(m) and its D
  auto q_buffer = [](int m) { return kQStages == 1 ? 0 : m % 2; };
  auto load_q = [&](int m) {
    const int stage = q_buffer(m);
    load_tile(gmem_copy, tQgQ(_, _, _, m), q_stage(tQsQ, stage), tQcQ, seq.seqlen_q - m * kBlockM, p.head_dim);
    load_row_stat<kBlockM>(s_lse + stage * kBlockM, lse, m * kBlockM, seq.seqlen_q);
  };
  auto load_do = [&](int m) {
    load_tile(gmem_copy, tQgdO(_, _, _, m), tQsdO, tQcQ, seq.seqlen_q - m * kBlockM, p.head_dim);
    load_row_stat<kBlockM>(s_dsum, dsum, m * kBlockM, seq.seqlen_q);
  };

  load_tile(gmem_copy, tKgK, tKsK, tKcK, seq.seqlen_k - col0, p.head_dim);
  load_tile(gmem_copy, tKgV, tKsV, tKcK, seq.seqlen_k - col0, p.head_dim);
  if (m_lo < m_hi) {
    load_q(m_lo);
    load_do(m_lo);
  }
  cp_async_fence();

  // One step over query block m; `masked` (some of its scores hidden) is a bool or, in the plain
  // kernel's loops, true_type / false_type, so that its loop over whole blocks has no mask code.
  auto step = [&](int m, auto masked_c) __attribute__((always_inline)) {
    const TileRows tile{m * kBlockM, col0, masked_c, uint32_t(b * p.nheads + h)};
    float lse_r[kRows], dsum_r[kRows];
    const int stage = q_buffer(m);
    const float* s_lse_m = s_lse + stage * kBlockM;
    Tensor tSsQ_m = q_stage(tSsQ, stage);
    cp_async_wait<0>();
    __syncthreads();  // Q(m), dO(m) (and K, V) landed; every warp is done reading dS(m-1) and Q(m-1)
    if (kQStages == 2 && m + 1 < m_hi) {
      load_q(m + 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});   // (MMA, MMA_M, MMA_N)
    Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    clear(acc_dp);
    if constexpr (kAllFeatures) {
      for (int r = 0; r < kRows; ++r) {
        lse_r[r] = s_lse_m[get<0>(rows_of_s(r, 0))];
        dsum_r[r] = s_dsum[get<0>(rows_of_s(r, 0))];
      }
      gemm_ss(acc_dp, tdPrdO, tdPrV, tdPsdO, tdPsV, mma_sdp, s2r_sdp_a, s2r_sdp_b, tid);
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ_m, tSsK, mma_sdp, s2r_sdp_a, s2r_sdp_b, tid);
      if (tile.partial) {
        scores_to_p_ds<true>(acc_s, acc_dp, tScS, tile, lse_r, dsum_r, mask, mod, p, f);
      } else {
        scores_to_p_ds<false>(acc_s, acc_dp, tScS, tile, lse_r, dsum_r, mask, mod, p, f);
      }
    } else {  // the exponentials of P overlap the dP product (+2-5 %, run m)
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ_m, tSsK, mma_sdp, s2r_sdp_a, s2r_sdp_b, tid);
      if (tile.partial) { apply_mask(acc_s, tScS, tile.row0, tile.col0, mask); }
      for (int r = 0; r < kRows; ++r) { lse_r[r] = s_lse_m[get<0>(rows_of_s(r, 0))]; }
      scores_to_p(acc_s, tScS, tile, lse_r, seq.seqlen_q, p.scale_log2);
      gemm_ss(acc_dp, tdPrdO, tdPrV, tdPsdO, tdPsV, mma_sdp, s2r_sdp_a, s2r_sdp_b, tid);
      for (int r = 0; r < kRows; ++r) { dsum_r[r] = s_dsum[get<0>(rows_of_s(r, 0))]; }
      p_to_ds(acc_s, acc_dp, dsum_r);
    }
    store_fragment_smem<Element>(acc_s, tScS, sP, f.rtz);
    store_fragment_smem<Element>(acc_dp, tScS, sdS, f.rtz);
    __syncthreads();  // P and dS visible to every warp

    gemm_ss(acc_dv, tdVrPt, tdVrdOt, tdVsPt, tdVsdOt, mma_dkv, s2r_dkv_a, s2r_dkv_b, tid);
    if constexpr (kQStages == 2) {
      __syncthreads();  // every warp is done reading dO(m)
      if (m + 1 < m_hi) {
        load_do(m + 1);
        cp_async_fence();
      }
    }
    gemm_ss(acc_dk, tdKrdSt, tdKrQt, tdKsdSt, q_stage(tdKsQt, stage), mma_dkv, s2r_dkv_a, s2r_dkv_b, tid);
    if constexpr (kQStages == 1) {
      __syncthreads();  // every warp is done reading Q(m) and dO(m)
      if (m + 1 < m_hi) {
        load_q(m + 1);
        load_do(m + 1);
        cp_async_fence();
      }
    }

    int32_t* turn = nullptr;
    float* dq_sum = dq_chunk<kBlockM, kHeadDim>(p, seq, b, m, h);
#pragma unroll
    for (int j = 0; j < T::kDqPasses; ++j) {
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kDqCols>>{});  // (MMA, MMA_M, MMA_K)
      clear(acc_dq);
      Tensor tdQsKt_j = make_tensor(tdQsKt.data() + j * kBlockN * kDqCols, tdQsKt.layout());
      gemm_ss(acc_dq, tdQrdS, tdQrKt, tdQsdS, tdQsKt_j, mma_dq, s2r_dq_a, s2r_dq_b, tid);
      if (j == 0 && deterministic) {
        int n_first, n_end;
        mask.key_blocks<kBlockM, kBlockN>(m, n_first, n_end);
        turn = p.dq_locks + (int64_t(b) * p.nheads + h) * p.m_blocks + m;
        wait_turn(turn, n_block - n_first);
      }
      add_dq<T::kThreads>(acc_dq, dq_sum + j * kBlockM * kDqCols);
    }
    if (deterministic) { pass_turn(turn); }
  };
  // The plain kernel runs the query blocks that see this key block whole in a loop without mask
  // code: with the turn code compiled out, d 64 +4-5 %, d 128 +6-7.5 %, d 256 +8-10 % (run ih;
  // without this loop the turn code's removal alone lost d 64 2-3 %).
  if constexpr (!kAllFeatures) {
    int lo, hi;
    mask.full_query_blocks<kBlockM, kBlockN>(n_block, lo, hi);
    lo = max(lo, m_lo);
    hi = min(hi, m_hi - 1);
    for (int m = m_lo; m < m_hi;) {
      if (m >= lo && m <= hi) {
        for (; m <= hi; ++m) { step(m, false_type{}); }
      } else {
        step(m, true_type{});
        ++m;
      }
    }
  } else {
    for (int m = m_lo; m < m_hi; ++m) { step(m, mask.tile_is_partial<kBlockM, kBlockN>(m, n_block)); }
  }
  cp_async_wait<0>();  // K and V are still pending when no query block sees this key block

  // dK = scale * sum dS^T Q (the score scale of S = scale * q.k); dV = sum P^T dO / (1 - p_drop)
  const float dv_scale = f.dropout ? p.rp_dropout : 1.f;
  for (int i = 0; i < size(acc_dk); ++i) {
    acc_dk(i) *= p.softmax_scale;
    acc_dv(i) *= dv_scale;
  }
  if (p.group > 1) {
    store_dkv_partial<kHeadDim>(acc_dk, tdKcdK, p, p.dk_accum, seq, h, col0);
    store_dkv_partial<kHeadDim>(acc_dv, tdKcdK, p, p.dv_accum, seq, h, col0);
    return;
  }
  // 16-bit dK, dV through K's and V's shared tiles, in 16-byte row chunks (keys past seqused_k get
  // their zero gradient too)
  __syncthreads();  // every warp is done reading K and V, and every thread's part of their load landed
  stage_rows<Element>(acc_dk, tdKcdK, sK, f.rtz);
  stage_rows<Element>(acc_dv, tdKcdK, sV, f.rtz);
  __syncthreads();
  Tensor mdK = head_tensor<Element, kHeadDim>(p.dk, seq.k_offset(p.dk) + h * p.dk.head_stride, seq.seqlen_k_rows);
  Tensor mdV = head_tensor<Element, kHeadDim>(p.dv, seq.k_offset(p.dv) + h * p.dv.head_stride, seq.seqlen_k_rows);
  Tensor gdK = local_tile(mdK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));
  Tensor gdV = local_tile(mdV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));
  store_tile(tKsK, gmem_thr.partition_D(gdK), tKcK, seq.seqlen_k_rows - col0, p.head_dim);
  store_tile(tKsV, gmem_thr.partition_D(gdV), tKcK, seq.seqlen_k_rows - col0, p.head_dim);
}

}  // namespace fa::sm80
