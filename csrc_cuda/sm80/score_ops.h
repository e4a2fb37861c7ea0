// Element-wise passes over a score accumulator fragment (MMA, MMA_M, MMA_N), each element
// located by the matching fragment of an identity tensor (tScS): its (row, col) inside the tile.
#pragma once

#include <cute/tensor.hpp>

#include "../common/fragment.h"
#include "../common/mask.h"
#include "../common/philox.h"

namespace fa::sm80 {

using namespace cute;

template <class Frag, class Coord>
__device__ __forceinline__ void apply_score_mod(Frag& s, Coord const& tScS, int row0, int col0,
                                                ScoreMod const& mod) {
#pragma unroll
  for (int i = 0; i < size(s); ++i) {
    float unused_dtanh;
    s(i) = mod.logit(s(i), row0 + get<0>(tScS(i)), col0 + get<1>(tScS(i)), unused_dtanh);
  }
}

// Scores of keys the mask hides become -inf; the tile starts at (row0, col0).
template <class Frag, class Coord>
__device__ __forceinline__ void apply_mask(Frag& s, Coord const& tScS, int row0, int col0, Mask const& mask) {
  Tensor v = make_tensor(s.data(), rowcol_layout(s.layout()));
  Tensor c = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
#pragma unroll
  for (int r = 0; r < size<0>(v); ++r) {
    int lo, hi;
    mask.key_range(row0 + get<0>(c(r, 0)), lo, hi);
#pragma unroll
    for (int j = 0; j < size<1>(v); ++j) {
      const int col = col0 + get<1>(c(r, j));
      v(r, j) = (col < lo) | (col > hi) ? -INFINITY : v(r, j);
    }
  }
}

// Zeroes dropped probabilities. Values 2i and 2i+1 of an accumulator are the column pair
// (col, col + 1) of one row, col even, so one Philox call decides both.
template <class Frag, class Coord>
__device__ __forceinline__ void apply_dropout(Frag& p, Coord const& tScS, int row0, int col0, uint32_t bh,
                                              AttnParams const& params) {
  static_assert(decltype(size(p))::value % 2 == 0);
#pragma unroll
  for (int i = 0; i < size(p) / 2; ++i) {
    bool keep0, keep1;
    dropout_keep_pair(params.seed_lo, params.seed_hi, params.offset_lo, bh, row0 + get<0>(tScS(2 * i)),
                      col0 + get<1>(tScS(2 * i)), params.drop_threshold, keep0, keep1);
    if (!keep0) { p(2 * i) = 0.f; }
    if (!keep1) { p(2 * i + 1) = 0.f; }
  }
}

}  // namespace fa::sm80
