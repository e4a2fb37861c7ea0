// The element-wise heart of the backward, for one (query block x key block) tile: from the
// recomputed scores S and dP = dO V^T to the probabilities P (dropped ones zeroed, for dV) and
// dS = P * (dP - D) (times d tanh under softcap), both written to shared memory as 16-bit.
#pragma once

#include <cute/tensor.hpp>

#include "../common/convert.h"
#include "../common/features.h"
#include "../common/fast_math.h"
#include "../common/fragment.h"
#include "../common/mask.h"
#include "../common/philox.h"

namespace fa::sm80 {

using namespace cute;

struct TileRows {
  int row0, col0;        // tile origin in the sequence
  bool partial;          // some element needs the visibility mask
  uint32_t bh;           // dropout stream of this (batch, head)
};

// lse * log2(e) of a row, or +inf for a row past seqlen_q (its loaded lse is the last row's), so
// that the row's probabilities come out 0.
__device__ __forceinline__ float row_lse_log2(float lse, int row, int seqlen_q) {
  return row < seqlen_q ? lse * float(M_LOG2E) : INFINITY;
}

// acc_s: raw q.k, acc_dp: dO.v; both (MMA, MMA_M, MMA_N) with coordinates tScS. lse and dsum
// hold, per row of the rowcol view, the row's lse and D (rows past seqlen_q hold the last row's;
// their probabilities are zeroed here, through lse = +inf).
// On return acc_s holds P with dropped entries zeroed and acc_dp holds dS.
// kPartial: some element of the tile needs the visibility mask. The caller branches once per tile
// so that full tiles (nearly all of them) carry no per-element comparisons.
template <bool kPartial, int kRows, class Acc, class Coord>
__device__ __forceinline__ void scores_to_p_ds(Acc& acc_s, Acc& acc_dp, Coord const& tScS, TileRows const& t,
                                               float const (&lse)[kRows], float const (&dsum)[kRows],
                                               Mask const& mask, ScoreMod const& mod, AttnParams const& p,
                                               Features const& f) {
  Tensor s = make_tensor(acc_s.data(), rowcol_layout(acc_s.layout()));
  Tensor dp = make_tensor(acc_dp.data(), rowcol_layout(acc_dp.layout()));
  Tensor c = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
  static_assert(decltype(size<0>(s))::value == kRows);
  const float mult = f.score_mod ? float(M_LOG2E) : p.scale_log2;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float lse_log2 = row_lse_log2(lse[r], t.row0 + get<0>(c(r, 0)), mask.seqlen_q);
#pragma unroll
    for (int j = 0; j < size<1>(s); j += 2) {
      const int row = t.row0 + get<0>(c(r, j)), col = t.col0 + get<1>(c(r, j));
      bool keep[2] = {true, true};
      if (f.dropout) {
        dropout_keep_pair(p.seed_lo, p.seed_hi, p.offset_lo, t.bh, row, col, p.drop_threshold, keep[0], keep[1]);
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = s(r, j + e), dtanh = 1.f;
        if (f.score_mod) { x = mod.logit(x, row, col + e, dtanh); }
        if (kPartial && !mask.visible(row, col + e)) { x = -INFINITY; }
        const float prob = fast_exp2(x * mult - lse_log2);
        const float dprob = !f.dropout ? dp(r, j + e) : keep[e] ? dp(r, j + e) * p.rp_dropout : 0.f;
        dp(r, j + e) = prob * (dprob - dsum[r]) * dtanh;
        s(r, j + e) = keep[e] ? prob : 0.f;
      }
    }
  }
}

// The plain kernel's two halves of scores_to_p_ds (no score modifier, no dropout): P from S
// alone, then dS from P and dP. Splitting lets the exponentials overlap the dP = dO V^T product,
// which runs between the two (FlashAttention-2's order); the fused form needs both products first.
// S of keys the mask hides must be -inf already (apply_mask, in a branch of its own, so that the
// exponentials and the product share one basic block for the scheduler to interleave).
template <int kRows, class Acc, class Coord>
__device__ __forceinline__ void scores_to_p(Acc& acc_s, Coord const& tScS, TileRows const& t,
                                            float const (&lse)[kRows], int seqlen_q, float scale_log2) {
  Tensor s = make_tensor(acc_s.data(), rowcol_layout(acc_s.layout()));
  Tensor c = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
  static_assert(decltype(size<0>(s))::value == kRows);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float lse_log2 = row_lse_log2(lse[r], t.row0 + get<0>(c(r, 0)), seqlen_q);
#pragma unroll
    for (int j = 0; j < size<1>(s); ++j) { s(r, j) = fast_exp2(s(r, j) * scale_log2 - lse_log2); }
  }
}

// acc_dp (dO.v) becomes dS = P * (dP - D); acc_p holds P from scores_to_p.
template <int kRows, class Acc>
__device__ __forceinline__ void p_to_ds(Acc const& acc_p, Acc& acc_dp, float const (&dsum)[kRows]) {
  Tensor prob = make_tensor(acc_p.data(), rowcol_layout(acc_p.layout()));
  Tensor dp = make_tensor(acc_dp.data(), rowcol_layout(acc_dp.layout()));
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < size<1>(dp); ++j) { dp(r, j) = prob(r, j) * (dp(r, j) - dsum[r]); }
  }
}

// Writes a (MMA, MMA_M, MMA_N) fp32 fragment as 16-bit pairs into a (rows, cols) smem tile.
// Addressing: a thread's coordinates are its first coordinate plus static offsets, in disjoint
// bits (the MMA layout puts lane and warp bits and value bits apart), and the tile's layout
// (power-of-two swizzle atoms tiled a power-of-two number of times) maps coordinate bits to offset
// bits linearly over GF(2). So every address is the first one XOR a compile-time constant: one
// live register per tile where a per-pair address kept 16 live across the main loop, and spilled.
template <class Element, class Acc, class Coord, class SmemTensor>
__device__ __forceinline__ void store_fragment_smem(Acc const& acc, Coord const& tScS, SmemTensor& smem, bool rtz) {
  static_assert(has_single_bit(uint32_t(decltype(size<0>(smem))::value)) &&
                has_single_bit(uint32_t(decltype(size<1>(smem))::value)));
  const int row0 = get<0>(tScS(0)), col0 = get<1>(tScS(0));
  const int base = smem.layout()(row0, col0);
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    const int offset = base ^ smem.layout()(get<0>(tScS(2 * i)) - row0, get<1>(tScS(2 * i)) - col0);
    *reinterpret_cast<uint32_t*>(raw_pointer_cast(smem.data() + offset)) = pack_pair<Element>(acc(2 * i), acc(2 * i + 1), rtz);
  }
}

}  // namespace fa::sm80
