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

// dst[0] += a, dst[1] += b as fire-and-forget reductions (RED). nvcc 13.0 compiles an atomicAdd
// of a float2 whose result is unused to ATOMG, which holds its source registers until L2 answers;
// on an H100 that cost the d 128 backward 12 % and d 256 27 % (benchmarks/results, run h).
__device__ __forceinline__ void red_add_pair(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
  asm volatile("red.global.add.f32 [%0], %1;" ::"l"(dst), "f"(a) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;" ::"l"(dst + 1), "f"(b) : "memory");
#endif
}

// acc: (MMA, MMA_M, MMA_N) of dS K with coordinates tdQcdQ; base: row 0 of this query block and
// head in the accumulation buffer, row_stride apart. kBounded: some row or column of the tile is
// past max_rows or head_dim (the caller branches once per tile, so full tiles skip the checks and
// the divergence bookkeeping around each reduction).
template <bool kBounded, class Acc, class Coord>
__device__ __forceinline__ void add_dq(Acc const& acc, Coord const& tdQcdQ, float* base, int64_t row_stride,
                                       int max_rows, int head_dim) {
#pragma unroll
  for (int i = 0; i < size(acc) / 2; ++i) {
    const int row = get<0>(tdQcdQ(2 * i)), col = get<1>(tdQcdQ(2 * i));
    if (!kBounded || (row < max_rows && col < head_dim)) {
      red_add_pair(base + row * row_stride + col, acc(2 * i), acc(2 * i + 1));
    }
  }
}

}  // namespace fa::sm80
