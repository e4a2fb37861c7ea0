// Online softmax over key blocks, in registers: each thread owns whole rows of its accumulator
// fragments (rows are split only across the 4 lanes of a quad), so the running max and sum need
// two shuffles per row and no shared memory.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "fast_math.h"

namespace fa {

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // running max of the scores, in score units
  float row_sum[kRows];  // this thread's part of the running sum of exp2 terms

  __device__ OnlineSoftmax() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // s, o: (rows, cols) views of the score and output accumulators. exp2(s * mult) is the
  // unnormalised probability. Replaces s by its probabilities relative to the running reference
  // max and, when that reference moves, rescales o and the sums to it.
  //
  // The reference moves only when some row of the warp gained more than kRescaleLog2 (in log2
  // units) over it, so after the first key blocks o is rarely rescaled: probabilities up to
  // 2^kRescaleLog2 are exact in fp32 and keep the 16-bit relative precision, and the final
  // division by the sum cancels the offset. The rescale (a multiply per accumulator element) sat
  // in every step's critical path before, and ptxas moved the whole accumulator between
  // registers around it.
  static constexpr float kRescaleLog2 = 8.f;

  template <class TensorS, class TensorO>
  __device__ __forceinline__ void update(TensorS& s, TensorO& o, float mult) {
    static_assert(decltype(cute::size<0>(s))::value == kRows);
    float m[kRows];
    bool grew = false;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      m[r] = row_max[r];
#pragma unroll
      for (int c = 0; c < cute::size<1>(s); ++c) { m[r] = fmaxf(m[r], s(r, c)); }
      m[r] = quad_max(m[r]);
      // -inf - -inf (a row with no visible key yet) is NaN: not growth
      grew |= (m[r] - row_max[r]) * mult > kRescaleLog2;
    }
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        // A row still without a visible key is left as it is (1, not exp2 of NaN); a row seeing its
        // first key scales its zeros by exp2(-inf) = 0.
        const float correction = m[r] == -INFINITY ? 1.f : fast_exp2((row_max[r] - m[r]) * mult);
        row_max[r] = m[r];
        row_sum[r] *= correction;
#pragma unroll
        for (int c = 0; c < cute::size<1>(o); ++c) { o(r, c) *= correction; }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      // Subtracting 0 for a row whose max is still -inf keeps exp2(-inf) = 0 instead of NaN.
      const float m_scaled = row_max[r] == -INFINITY ? 0.f : row_max[r] * mult;
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < cute::size<1>(s); ++c) {
        s(r, c) = fast_exp2(s(r, c) * mult - m_scaled);
        sum += s(r, c);
      }
      row_sum[r] += sum;
    }
  }

  // Normalises o (times out_scale, the dropout rescale) and returns each row's natural-log
  // logsumexp of the logits in lse; rows that saw no key get o = 0 and lse = +inf.
  template <class TensorO>
  __device__ __forceinline__ void finalize(TensorO& o, float mult, float out_scale,
                                           float (&lse)[kRows]) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_sum(row_sum[r]);
      const bool empty = sum == 0.f || sum != sum;
      const float inv = empty ? 0.f : out_scale / sum;
      lse[r] = empty ? INFINITY : (row_max[r] * mult + log2f(sum)) * float(M_LN2);
#pragma unroll
      for (int c = 0; c < cute::size<1>(o); ++c) { o(r, c) *= inv; }
    }
  }
};

}  // namespace fa
