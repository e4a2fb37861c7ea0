// dQ of one query block, summed over key blocks into an fp32 buffer by atomics. In deterministic
// mode the key blocks take turns per query block (a counter in global memory), so the additions
// happen in key-block order and the sum is bitwise reproducible. Blocks are dispatched in
// launch order and key blocks are the fastest grid dimension, so the block a turn waits for has
// always started: the wait cannot deadlock.
#pragma once

#include <cute/tensor.hpp>

namespace fa::sm80 {

using namespace cute;

__device__ __forceinline__ void wait_turn(int32_t* counter, int turn) {
  if (threadIdx.x == 0) {
    while (atomicAdd(counter, 0) != turn) { __nanosleep(64); }
  }
  __syncthreads();
}

__device__ __forceinline__ void pass_turn(int32_t* counter) {
  __threadfence();  // this block's additions are visible before the next block may start its own
  __syncthreads();
  if (threadIdx.x == 0) { atomicAdd(counter, 1); }
}

// acc: (MMA, MMA_M, MMA_N) of dS K with coordinates tdQcdQ; base: row 0 of this query block and
// head in the accumulation buffer, row_stride apart. kBounded: some row or column of the tile is
// past max_rows or head_dim (the caller branches once per tile, so full tiles skip the checks and
// the divergence bookkeeping around each atomic).
template <bool kBounded, class Acc, class Coord>
__device__ __forceinline__ void add_dq(Acc const& acc, Coord const& tdQcdQ, float* base, int64_t row_stride,
                                       int max_rows, int head_dim) {
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    const int row = get<0>(tdQcdQ(2 * i)), col = get<1>(tdQcdQ(2 * i));
    if (!kBounded || (row < max_rows && col < head_dim)) {
      float* dst = base + row * row_stride + col;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(dst), make_float2(acc(2 * i), acc(2 * i + 1)));
#else
      atomicAdd(dst, acc(2 * i));
      atomicAdd(dst + 1, acc(2 * i + 1));
#endif
    }
  }
}

}  // namespace fa::sm80
