// Epilogues: an accumulator as 16-bit pairs into a shared tile (the forward's O, the backward's
// dK and dV), which then leaves in 16-byte row chunks (tile_io.h store_tile), or as fp32 pairs
// straight to global memory (split-KV partials); one lane per quad writes each row's logsumexp.
#pragma once

#include <cute/tensor.hpp>

#include "../common/convert.h"
#include "../common/fragment.h"

namespace fa::sm80 {

using namespace cute;

// acc: (MMA, MMA_M, MMA_N) fp32 with coordinates tOcO, into the (rows, cols) shared tile s.
template <class Element, class Acc, class Coord, class SmemTensor>
__device__ __forceinline__ void stage_rows(Acc const& acc, Coord const& tOcO, SmemTensor& s, bool rtz) {
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    *reinterpret_cast<uint32_t*>(&s(get<0>(tOcO(2 * i)), get<1>(tOcO(2 * i)))) =
        pack_pair<Element>(acc(2 * i), acc(2 * i + 1), rtz);
  }
}

// acc as fp32 rows of kCols values from base (the split-KV forward's partial O); rows from
// max_rows on are not written. A thread's value pairs are neighbouring columns of one row.
template <int kCols, class Acc, class Coord>
__device__ __forceinline__ void store_rows_fp32(Acc const& acc, Coord const& tOcO, float* base, int max_rows) {
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    const int row = get<0>(tOcO(2 * i)), col = get<1>(tOcO(2 * i));
    if (row < max_rows) {
      *reinterpret_cast<float2*>(base + int64_t(row) * kCols + col) = make_float2(acc(2 * i), acc(2 * i + 1));
    }
  }
}

// lse[r] belongs to row r of the rowcol view of tOcO; lane 0 of each quad writes it, rows
// row_stride apart.
template <int kRows, class Coord>
__device__ __forceinline__ void store_lse(float const (&lse)[kRows], Coord const& tOcO, float* base, int64_t row_stride,
                                          int max_rows) {
  if (threadIdx.x % 4 != 0) { return; }
  Tensor rows = make_tensor(tOcO.data(), rowcol_layout(tOcO.layout()));
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = get<0>(rows(r, 0));
    if (row < max_rows) { base[row * row_stride] = lse[r]; }
  }
}

}  // namespace fa::sm80
