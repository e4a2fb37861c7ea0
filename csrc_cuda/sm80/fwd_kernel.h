// The forward kernel: one block per (query block, head, batch entry). Q stays in shared memory;
// key blocks stream through from the last to the first (the partially masked ones come first).
// With one K/V buffer, V(n) loads during S = Q K^T and K(n-1) during O += P V; with two, K(n-1)
// and V(n-1) load into the other buffer during the whole step, behind one barrier instead of two.
// P never leaves registers.
// kAllFeatures: the full or the plain kernel (common/features.h). kSplit: one of num_splits blocks
// sharing a query block's key blocks, writing fp32 partial results (sm80/fwd_split.h).
#pragma once

#include <cute/tensor.hpp>

#include "../common/features.h"
#include "../common/fragment.h"
#include "../common/launch.h"
#include "../common/mask.h"
#include "../common/params.h"
#include "../common/schedule.h"
#include "../common/seqlen.h"
#include "../common/softmax.h"
#include "fwd_epilogue.h"
#include "kernel_traits.h"
#include "score_ops.h"
#include "tile_io.h"

namespace fa::sm80 {

using namespace cute;

template <class T, bool kAllFeatures, bool kSplit = false>
__global__ void __launch_bounds__(T::kThreads) fwd_kernel(__grid_constant__ const AttnParams p) {
  using Element = typename T::Element;
  const Features f = features_of<kAllFeatures>(p);
  constexpr int kBlockM = T::kBlockM, kBlockN = T::kBlockN, kHeadDim = T::kHeadDim;
  // Q's fragments read from shared memory once and kept in registers, instead of once per key
  // block, where they are small (a d 64 warp's 32 rows: 32 registers): the causal d 64 forward
  // at 2k +0.4-2 % (runs hb, hc). The full kernel's extra state would spill them, and so would
  // d 32's 128-key tile (16 bytes); wider heads do not fit.
  constexpr bool kQInRegs = !kAllFeatures && kHeadDim == 64;
  // The last query block first: under a causal mask it sees the most keys; causal grids run in
  // groups of pairs (common/schedule.h). This remap costs the d 128 forward 2 % where it is not
  // taken (non-causal; runs hf-hh): ptxas schedules that kernel's spilling loop differently.
  const int tid = threadIdx.x;
  int m_block = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;
  int b = kSplit ? blockIdx.z / p.num_splits : blockIdx.z;
  if (!kSplit && p.wave_group > 1) {
    int rank, pair;
    wave_order(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), gridDim.x, gridDim.y * gridDim.z,
               p.wave_group, rank, pair);
    m_block = gridDim.x - 1 - rank;
    h = pair % gridDim.y;
    b = pair / gridDim.y;
  }

  const SeqInfo seq(p, b, f.kv_cache);
  if (m_block * kBlockM >= seq.seqlen_q) { return; }
  const Mask mask{seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right};
  int n_min, n_max;
  mask.key_blocks<kBlockM, kBlockN>(m_block, n_min, n_max);
  if constexpr (kSplit) {  // this block's consecutive share; the last ones may get none
    const int per = max(0, ceil_div(n_max - n_min, p.num_splits));
    n_min += int(blockIdx.z % p.num_splits) * per;
    n_max = min(n_max, n_min + per);
  }
  const int row0 = m_block * kBlockM;
  constexpr bool kWholeApart = !kAllFeatures && !kSplit;  // the loops at the end of the kernel say why
  KeyOrder order{};
  if constexpr (kWholeApart) { order = KeyOrder::make<kBlockM, kBlockN>(mask, m_block, n_min, n_max); }

  // Global tiles
  const int hk = h / p.group;
  Tensor mQ = head_tensor<Element, kHeadDim>(p.q, seq.q_offset(p.q, b) + h * p.q.head_stride, seq.seqlen_q);
  Tensor mK = head_tensor<Element, kHeadDim>(p.k, seq.k_offset(p.k) + hk * p.k.head_stride, seq.seqlen_k);
  Tensor mV = head_tensor<Element, kHeadDim>(p.v, seq.k_offset(p.v) + hk * p.v.head_stride, seq.seqlen_k);
  Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));  // (kBlockM, kHeadDim)
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)
  Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)

  // Shared tiles
  extern __shared__ __align__(128) char smem[];
  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename T::SmemQ::Layout{});
  constexpr int kStages = T::kKVStages;
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename T::SmemKV::Layout{});  // stage 0; stage 1 follows it
  Tensor sV = make_tensor(sK.data() + kStages * size(sK), typename T::SmemKV::Layout{});
  Tensor sVt = make_tensor(sV.data(), typename T::SmemKV::LayoutT{});                 // (kHeadDim, kBlockN)
  Tensor sVtShape = make_tensor(sV.data(), typename T::SmemKV::LayoutTNoSwizzle{});

  // Global -> shared copies, with coordinates for predication
  typename T::GmemCopy gmem_copy;
  auto gmem_thr = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = gmem_thr.partition_S(gQ);  // (CPY, CPY_M, CPY_K)
  Tensor tQsQ = gmem_thr.partition_D(sQ);
  Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY, CPY_N, CPY_K, n)
  Tensor tKsK = gmem_thr.partition_D(sK);
  Tensor tVgV = gmem_thr.partition_S(gV);
  Tensor tVsV = gmem_thr.partition_D(sV);
  Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));

  // MMA fragments and the ldmatrix partitions that feed them
  typename T::Mma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);         // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);         // (MMA, MMA_N, MMA_K)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtShape);  // (MMA, MMA_K over d, MMA_N over keys)
  auto s2r_q = make_tiled_copy_A(LdsmAtom<Element>{}, mma);
  auto s2r_k = make_tiled_copy_B(LdsmAtom<Element>{}, mma);
  auto s2r_v = make_tiled_copy_B(LdsmTransAtom<Element>{}, mma);
  Tensor tSsQ = s2r_q.get_thread_slice(tid).partition_S(sQ);
  Tensor tSsK = s2r_k.get_thread_slice(tid).partition_S(sK);
  Tensor tOsVt = s2r_v.get_thread_slice(tid).partition_S(sVt);
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));

  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA, MMA_M, MMA_K)
  clear(acc_o);
  Tensor o_rc = make_tensor(acc_o.data(), rowcol_layout(acc_o.layout()));
  OnlineSoftmax<decltype(size<0>(o_rc))::value> softmax;
  const float mult = f.score_mod ? float(M_LOG2E) : p.scale_log2;
  const ScoreMod mod(p, b, h, mask.diag());
  const uint32_t bh = uint32_t(b * p.nheads + h);

  // A tensor over K's or V's shared tile (or a partition of it) moved to buffer `stage`: a whole
  // tile further on, so the swizzle pattern, which repeats every 8-row atom, is unchanged.
  auto kv_stage = [&](auto const& t, int stage) { return make_tensor(t.data() + stage * size(sK), t.layout()); };
  // Key block n of K or V (t, its global partition tXgX) into the shared partition dst, rows from
  // max_rows on zero-filled; check_rows false: a full block. A paged cache is read through its
  // page table instead.
  const int32_t* page_table = f.paged ? p.block_table + b * p.block_table_batch_stride : nullptr;
  auto load_keys = [&](auto check_rows, TensorRef const& t, auto const& tXgX, int n, auto&& dst, int max_rows) {
    if (f.paged) {
      load_paged(dst, tKcK, t, hk * t.head_stride, page_table, p.page_size, n * kBlockN + seq.k_shift, max_rows,
                 p.head_dim);
    } else {
      load_tile<decltype(check_rows)::value>(gmem_copy, tXgX(_, _, _, n), dst, tKcK, max_rows, p.head_dim);
    }
  };
  auto load_kv = [&](int n, int stage) {  // K(n) and V(n) of a full block into buffer `stage`
    load_keys(false_type{}, p.k, tKgK, n, kv_stage(tKsK, stage), kBlockN);
    load_keys(false_type{}, p.v, tVgV, n, kv_stage(tVsV, stage), kBlockN);
  };

  // Q with the first K, then that block's V in a group of its own, so that the first S = Q K^T
  // does not wait for V (with two buffers, the next block's K and V in a third group, empty when
  // there is none). Only this first (last-keyed) block can end past seqlen_k.
  load_tile(gmem_copy, tQgQ, tQsQ, tQcQ, seq.seqlen_q - row0, p.head_dim);
  if (n_max > n_min) {
    load_keys(true_type{}, p.k, tKgK, n_max - 1, tKsK, seq.seqlen_k - (n_max - 1) * kBlockN);
  }
  cp_async_fence();
  if (n_max > n_min) {
    load_keys(true_type{}, p.v, tVgV, n_max - 1, tVsV, seq.seqlen_k - (n_max - 1) * kBlockN);
  }
  cp_async_fence();
  if constexpr (kStages == 2) {
    const int second = kWholeApart ? order.next(0) : (n_max - 1 > n_min ? n_max - 2 : -1);
    if (second >= 0) { load_kv(second, 1); }
    cp_async_fence();
  }

  // Step i of `order`, over key block n; `next` is step i + 1's block (below n_min: none). `first` (step 0,
  // the block the prologue loaded) and `masked` (some of its scores hidden) are bools or, in the
  // plain kernel's loops, true_type / false_type, so that those loops branch on neither.
  auto step = [&](int i, int n, int next, auto first_c, auto masked_c) __attribute__((always_inline)) {
    const bool first = first_c, masked = masked_c;
    const int col0 = n * kBlockN;
    const int stage = kStages == 2 ? i % 2 : 0;
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
    clear(acc_s);
    if (first) {
      cp_async_wait<kStages>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // K(n) (two buffers: and V(n)) landed; every warp is done with the last step
    if (!first) {
      if constexpr (kStages == 1) {
        load_keys(false_type{}, p.v, tVgV, n, tVsV, kBlockN);
        cp_async_fence();
      } else if (next >= n_min) {
        load_kv(next, stage ^ 1);
        cp_async_fence();
      }
    }

    if constexpr (kQInRegs) {
      if (first) { cute::copy(s2r_q, tSsQ, s2r_q.get_thread_slice(tid).retile_D(tSrQ)); }
      gemm_rs(acc_s, tSrQ, tSrK, kv_stage(tSsK, stage), mma, s2r_k, tid);
    } else {
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, kv_stage(tSsK, stage), mma, s2r_q, s2r_k, tid);
    }
    if (f.score_mod) { apply_score_mod(acc_s, tScS, row0, col0, mod); }
    if (masked) { apply_mask(acc_s, tScS, row0, col0, mask); }

    if constexpr (kStages == 1) {
      cp_async_wait<0>();
      __syncthreads();  // V(n) landed; every warp is done reading K(n)
      if (next >= n_min) {
        load_keys(false_type{}, p.k, tKgK, next, tKsK, kBlockN);
        cp_async_fence();
      }
    } else if (first) {
      cp_async_wait<1>();
      __syncthreads();  // V(n) landed
    }

    Tensor s_rc = make_tensor(acc_s.data(), rowcol_layout(acc_s.layout()));
    softmax.update(s_rc, o_rc, mult);
    if (f.dropout) { apply_dropout(acc_s, tScS, row0, col0, bh, p); }
    Tensor rP = make_tensor<Element>(acc_s.layout());
    convert_fragment<Element>(acc_s, rP, f.rtz);
    Tensor tOrP = make_tensor(rP.data(), acc_as_operand_a(rP.layout()));  // (MMA, MMA_M, MMA_N / 2)
    gemm_rs(acc_o, tOrP, tOrVt, kv_stage(tOsVt, stage), mma, s2r_v, tid);
  };
  // The plain kernel peels step 0 off its loop (+1-3 % at d 64, +0-2 % at d 128, run ib) and
  // runs the whole blocks in a loop without mask code (d 64 +1-2 %, d 128 +1-2.5 %, d 256
  // +1.5-3 %, runs ic-if). The full and split kernels keep one loop: peeled, their bodies spill
  // 50-80 bytes more.
  if constexpr (kWholeApart) {
    if (order.steps > 0) { step(0, n_max - 1, order.next(0), true_type{}, order.first_masked); }
    for (int i = 1; i < order.masked_end; ++i) {
      step(i, order.masked_block(i), order.next(i), false_type{}, true_type{});
    }
    for (int i = max(1, order.masked_end); i < order.steps; ++i) {
      const int n = order.whole_block(i);
      step(i, n, i + 1 < order.steps ? n - 1 : -1, false_type{}, false_type{});
    }
  } else {
    for (int n = n_max - 1; n >= n_min; --n) {
      step(n_max - 1 - n, n, n - 1, n == n_max - 1, mask.tile_is_partial<kBlockM, kBlockN>(m_block, n));
    }
  }
  cp_async_wait<0>();  // the Q load is still pending when no key block is visible
  if constexpr (kSplit) { allow_dependent_launch(); }  // the combine kernel's blocks may start

  float lse[decltype(size<0>(o_rc))::value];
  softmax.finalize(o_rc, mult, f.dropout ? p.rp_dropout : 1.f, lse);
  if constexpr (kSplit) {
    const int64_t at = int64_t(blockIdx.z % p.num_splits) * p.lse_rows + SeqInfo::accum_offset(p, b, h) + row0;
    store_rows_fp32<kHeadDim>(acc_o, tOcO, p.o_accum + at * kHeadDim, seq.seqlen_q - row0);
    store_lse(lse, tOcO, p.lse_accum + at, 1, seq.seqlen_q - row0);
    return;
  }
  // O leaves through Q's shared tile: 16-byte row chunks instead of 4-byte pairs per thread
  __syncthreads();  // no warp reads Q any more, and every thread's part of the Q load has landed
  stage_rows<Element>(acc_o, tOcO, sQ, f.rtz);
  __syncthreads();
  Tensor mO = head_tensor<Element, kHeadDim>(p.out, seq.q_offset(p.out, b) + h * p.out.head_stride, seq.seqlen_q);
  Tensor gO = local_tile(mO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
  store_tile(tQsQ, gmem_thr.partition_D(gO), tQcQ, seq.seqlen_q - row0, p.head_dim);
  store_lse(lse, tOcO, p.lse + seq.lse_offset(p, b, h, p.total_q) + row0 * p.lse_row_stride, p.lse_row_stride,
            seq.seqlen_q - row0);
}

}  // namespace fa::sm80
