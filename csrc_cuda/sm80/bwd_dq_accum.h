// dQ of one query block, summed over key blocks into an fp32 buffer by atomics. In deterministic
// mode the key blocks take turns per query block (a counter in global memory), so the additions
// happen in key-block order and the sum is bitwise reproducible. Blocks are dispatched in
// launch order and a head's key blocks are launched in key-block order (common/schedule.h keeps
// it), so the block a turn waits for has always started: the wait cannot deadlock.
#pragma once

#include <cute/tensor.hpp>

#include "../common/convert.h"
#include "../common/params.h"
#include "../common/seqlen.h"

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

// The fp32 dQ sum is laid out per query block and head in the order the main kernel's threads
// hold it, not by (row, column): each (sequence, query block, head) owns a chunk of
// kBlockM x kHeadDim floats, and element i of thread tid's accumulator sits at slot
// (i / kVec) * kThreads * kVec + tid * kVec + i % kVec of it (each dQ pass its own sub-chunk). So a
// warp's reduction covers whole contiguous cache lines (FlashAttention-2's layout), where the
// fragment's (row, column) order spread each over 8 rows; the conversion kernel reads the same
// slots back through the same thread partition. kVec: floats per reduction, 16 bytes on sm_90.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kDqVec = 4;
#else
constexpr int kDqVec = 1;
#endif

// The chunk of (sequence b, query block m, head h): block m of sequence b is row slot
// seq.q_row0 + (b + m) * kBlockM, so every sequence's last, partial block has a whole slot
// (dq_accum_rows in tile_config.h counts the padding).
template <int kBlockM, int kHeadDim>
__device__ __forceinline__ float* dq_chunk(BwdParams const& p, SeqInfo const& seq, int b, int m, int h) {
  const int64_t slot_row = seq.q_row0 + int64_t(b + m) * kBlockM;
  return p.dq_accum + (slot_row * p.nheads + int64_t(h) * kBlockM) * kHeadDim;
}

// chunk[slots of this thread] += acc, as fire-and-forget reductions (RED): nvcc 13.0 compiles an
// atomicAdd whose result is unused to ATOMG, which holds its source registers until L2 answers
// (on an H100 that cost the d 128 backward 12 % and d 256 27 %, benchmarks/results run h). Every
// slot is added, padding rows and columns past head_dim too: they belong to this chunk alone and
// the conversion skips them.
template <int kThreads, class Acc>
__device__ __forceinline__ void add_dq(Acc const& acc, float* chunk) {
  float* dst = chunk + threadIdx.x * kDqVec;
#pragma unroll
  for (int i = 0; i < size(acc); i += kDqVec) {
    float* at = dst + (i / kDqVec) * kThreads * kDqVec;
    if constexpr (kDqVec == 4) {
      asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(at), "f"(acc(i)), "f"(acc(i + 1)),
                   "f"(acc(i + 2)), "f"(acc(i + 3))
                   : "memory");
    } else {
      asm volatile("red.global.add.f32 [%0], %1;" ::"l"(at), "f"(acc(i)) : "memory");
    }
  }
}

// dQ = softmax_scale * (fp32 sum), converted: block (m, h, b) reads the chunk of query block m
// with the main kernel's thread count, so each thread finds its slots where the main kernel's
// thread of the same index put them (one vector load per kDqVec slots, the warp's loads
// contiguous) and knows their coordinates from the same MMA partition. The converted pairs go to
// a shared tile first and leave in 16-byte row chunks: stored from the MMA layout directly, 4
// bytes each, the kernel took 170-180 us per backward on the H100 where FlashAttention-2's
// takes 80 (run gc). Rows of the tile are padded by 16 bytes so that a quad's 8 rows fall in
// different banks. grid (m_blocks, nheads, batch), T::kThreads threads.
template <class T>
__global__ void __launch_bounds__(T::kThreads) bwd_dq_convert_kernel(__grid_constant__ const BwdParams p) {
  using Element = typename T::Element;
  constexpr int kBlockM = T::kBlockM, kDqCols = T::kDqCols, kThreads = T::kThreads, kHeadDim = T::kHeadDim;
  constexpr int kStride = kHeadDim + 8;           // tile row, in elements
  constexpr int kStep = kDqVec == 4 ? 4 : 2;      // slots per load: a float4, or a pair kThreads apart
  __shared__ __align__(16) Element tile[kBlockM * kStride];
  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const SeqInfo seq(p, b);
  const int row0 = m * kBlockM;
  if (row0 >= seq.seqlen_q) { return; }
  typename T::MmaDq mma_dq;
  Tensor coord = mma_dq.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDqCols>>{}));
  constexpr int kSlots = decltype(size(coord))::value;
  const float* chunk = dq_chunk<kBlockM, kHeadDim>(p, seq, b, m, h) + tid * kDqVec;
#pragma unroll
  for (int j = 0; j < T::kDqPasses; ++j) {
#pragma unroll
    for (int i = 0; i < kSlots; i += kStep) {
      const float* src = chunk + j * kBlockM * kDqCols + (i / kDqVec) * kThreads * kDqVec;
      float v[kStep];
      if constexpr (kDqVec == 4) {
        const float4 x = *reinterpret_cast<const float4*>(src);
        v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
      } else {
        v[0] = src[0], v[1] = src[kThreads];
      }
#pragma unroll
      for (int e = 0; e < kStep; e += 2) {  // accumulator pairs are adjacent columns
        const int row = get<0>(coord(i + e)), col = j * kDqCols + get<1>(coord(i + e));
        *reinterpret_cast<uint32_t*>(&tile[row * kStride + col]) =
            pack_pair<Element>(v[e] * p.softmax_scale, v[e + 1] * p.softmax_scale, p.rtz);
      }
    }
  }
  __syncthreads();
  Element* dst =
      static_cast<Element*>(p.dq.ptr) + seq.q_offset(p.dq, b) + h * p.dq.head_stride + row0 * p.dq.row_stride;
  const int max_rows = seq.seqlen_q - row0;
  constexpr int kRowChunks = kHeadDim / 8;
  for (int c = tid; c < kBlockM * kRowChunks; c += kThreads) {
    const int row = c / kRowChunks, col = c % kRowChunks * 8;
    if (row < max_rows && col < p.head_dim) {
      *reinterpret_cast<uint4*>(dst + row * p.dq.row_stride + col) =
          *reinterpret_cast<const uint4*>(&tile[row * kStride + col]);
    }
  }
}

}  // namespace fa::sm80
