// The backward's memory-bound row kernels around the main kernel: D = rowsum(dO * O) before it,
// and after it the fixed-order sum of grouped dK, dV partials (dQ's conversion follows the main
// kernel's layout: bwd_dq_accum.h). Eight threads share a row, 8 elements (16 bytes of 16-bit data) each per step.
#pragma once

#include <cute/numeric/numeric_types.hpp>

#include "../common/convert.h"
#include "../common/params.h"
#include "../common/seqlen.h"

namespace fa::sm80 {

constexpr int kRowThreads = 8;
constexpr int kRowKernelThreads = 256;
constexpr int kRowsPerBlock = kRowKernelThreads / kRowThreads;

template <class Element>
__device__ __forceinline__ void load8(Element const* src, float (&dst)[8]) {
  const uint4 raw = *reinterpret_cast<uint4 const*>(src);
  Element const* e = reinterpret_cast<Element const*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) { dst[i] = float(e[i]); }
}

template <class Element>
__device__ __forceinline__ void store8(Element* dst, float const (&src)[8], bool rtz) {
  uint4 raw;
  uint32_t* w = reinterpret_cast<uint32_t*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) { w[i] = pack_pair<Element>(src[2 * i], src[2 * i + 1], rtz); }
  *reinterpret_cast<uint4*>(dst) = raw;
}

// grid (ceil(seqlen_q / kRowsPerBlock), nheads, batch). It also zeroes the fp32 dQ sum and the
// turn counters the main kernel adds into (p.zeroed_words from p.dq_accum, a grid-stride loop of
// 16-byte stores), which a separate memset did before: one launch less per backward.
template <class Element>
__global__ void __launch_bounds__(kRowKernelThreads) bwd_dsum_kernel(__grid_constant__ const BwdParams p) {
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t stride = int64_t(gridDim.x) * gridDim.y * gridDim.z * kRowKernelThreads;
  uint4* zeroed = reinterpret_cast<uint4*>(p.dq_accum);
  for (int64_t i = block * kRowKernelThreads + threadIdx.x; i < p.zeroed_words / 4; i += stride) {
    zeroed[i] = make_uint4(0, 0, 0, 0);
  }

  const int h = blockIdx.y, b = blockIdx.z, lane = threadIdx.x % kRowThreads;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kRowThreads;
  const SeqInfo seq(p, b);
  float sum = 0.f;
  if (row < seq.seqlen_q) {
    Element const* o = static_cast<Element const*>(p.out.ptr) + seq.q_offset(p.out, b) + h * p.out.head_stride +
                       row * p.out.row_stride;
    Element const* d = static_cast<Element const*>(p.dout.ptr) + seq.q_offset(p.dout, b) +
                       h * p.dout.head_stride + row * p.dout.row_stride;
    for (int c = lane * 8; c < p.head_dim; c += kRowThreads * 8) {
      float ov[8], dv[8];
      load8(o + c, ov);
      load8(d + c, dv);
#pragma unroll
      for (int i = 0; i < 8; ++i) { sum += ov[i] * dv[i]; }
    }
  }
#pragma unroll
  for (int s = 1; s < kRowThreads; s *= 2) { sum += __shfl_xor_sync(0xffffffffu, sum, s); }
  if (row < seq.seqlen_q && lane == 0) { p.dsum[seq.lse_offset(p, b, h, p.rows_q_bound) + row] = sum; }
}

// dK, dV of key head hk = sum over its query heads, in head order. grid (ceil(seqlen_k / kRowsPerBlock), nheads_k, batch)
template <class Element, int kHeadDim>
__global__ void __launch_bounds__(kRowKernelThreads) bwd_dkv_reduce_kernel(__grid_constant__ const BwdParams p) {
  const int hk = blockIdx.y, b = blockIdx.z, lane = threadIdx.x % kRowThreads;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kRowThreads;
  const SeqInfo seq(p, b);
  if (row >= seq.seqlen_k_rows) { return; }
  const int64_t src_row = ((seq.k_row0 + row) * p.nheads + int64_t(hk) * p.group) * kHeadDim;
  for (int c = lane * 8; c < p.head_dim; c += kRowThreads * 8) {
    float dk[8] = {}, dv[8] = {};
    for (int g = 0; g < p.group; ++g) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        dk[i] += p.dk_accum[src_row + g * kHeadDim + c + i];
        dv[i] += p.dv_accum[src_row + g * kHeadDim + c + i];
      }
    }
    store8(static_cast<Element*>(p.dk.ptr) + seq.k_offset(p.dk) + hk * p.dk.head_stride + row * p.dk.row_stride + c,
           dk, p.rtz);
    store8(static_cast<Element*>(p.dv.ptr) + seq.k_offset(p.dv) + hk * p.dv.head_stride + row * p.dv.row_stride + c,
           dv, p.rtz);
  }
}

}  // namespace fa::sm80
