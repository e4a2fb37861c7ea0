// Split-KV forward, for calls whose grid would leave SMs idle (a decoding step: few sequences, one
// query each, thousands of keys). num_splits blocks share each query block's key blocks, each
// writing its normalised O and lse in fp32 (fwd_kernel<..., kSplit>); the combine kernel then
// weighs split s by exp(lse_s - lse), lse = log(sum_s exp(lse_s)), and writes out and lse.
// The glue (common/abi_glue.cu) chooses num_splits and places o_accum / lse_accum.
#pragma once

#include <cuda_runtime.h>

#include "../common/convert.h"
#include "../common/launch.h"
#include "../common/seqlen.h"
#include "fwd_kernel.h"

namespace fa::sm80 {

template <int HeadDim, class Element>
using SplitTraitsFor = FwdTraits<HeadDim, split_tile(HeadDim).block_m, split_tile(HeadDim).block_n,
                                 split_tile(HeadDim).warps, split_tile(HeadDim).kv_stages, Element>;

// Split s's lse of row `at`; a split that saw no key (lse +inf, sm80 finalize) weighs nothing.
__device__ __forceinline__ float split_lse(AttnParams const& p, int s, int64_t at) {
  const float l = p.lse_accum[s * p.lse_rows + at];
  return l == INFINITY ? -INFINITY : l;
}

constexpr int kCombineThreads = 128;  // one per split at most (kMaxSplits)
constexpr int kCombineWarps = kCombineThreads / 32;
static_assert(kMaxSplits <= kCombineThreads, "the combine kernel reads one split's lse per thread");

// grid (seqlen_q, nheads, batch): one block per row, so that all of a row's loads are in flight
// at once (a decoding step has few rows; one warp per row walking the splits took 5.8 us for 32
// splits, a chain of L2 round trips; run fc). Thread s turns split s's lse into its weight
// exp(lse_s - lse); warp w sums splits w, w + 4, ... for 4 neighbouring columns per lane (of every
// 128), and the four warps' sums are added in warp order: a fixed order, so the result does not
// depend on timing.
template <class Element, int kHeadDim>
__global__ void __launch_bounds__(kCombineThreads) fwd_combine_kernel(__grid_constant__ const AttnParams p) {
  __shared__ float weight[kCombineThreads];
  __shared__ float reduce[kCombineWarps];
  __shared__ float4 partial[kCombineWarps][kHeadDim / 4];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int row = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  grid_dependency_wait();
  const SeqInfo seq(p, b);
  if (row >= seq.seqlen_q) { return; }
  const int64_t at = SeqInfo::accum_offset(p, b, h) + row;

  const float l = tid < p.num_splits ? split_lse(p, tid, at) : -INFINITY;
  float m = l;
  for (int o = 16; o > 0; o /= 2) { m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o)); }
  if (lane == 0) { reduce[warp] = m; }
  __syncthreads();
  for (int w = 0; w < kCombineWarps; ++w) { m = fmaxf(m, reduce[w]); }
  const bool empty = m == -INFINITY;  // no key visible from this row: out 0, lse +inf as unsplit
  float sum = empty ? 0.f : expf(l - m);
  for (int o = 16; o > 0; o /= 2) { sum += __shfl_xor_sync(0xffffffffu, sum, o); }
  __syncthreads();  // every thread has read the maxima
  if (lane == 0) { reduce[warp] = sum; }
  __syncthreads();
  sum = reduce[0];
  for (int w = 1; w < kCombineWarps; ++w) { sum += reduce[w]; }
  const float lse = empty ? INFINITY : m + logf(sum);
  weight[tid] = empty ? 0.f : expf(l - lse);
  if (tid == 0) { p.lse[seq.lse_offset(p, b, h, p.total_q) + row * p.lse_row_stride] = lse; }
  __syncthreads();

  const float* o_row = p.o_accum + at * kHeadDim;
  const int64_t split_stride = p.lse_rows * kHeadDim;
  for (int c = lane * 4; c < kHeadDim; c += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s = warp; s < p.num_splits; s += kCombineWarps) {
      const float w = weight[s];
      const float4 o = *reinterpret_cast<const float4*>(o_row + s * split_stride + c);
      acc.x += w * o.x;
      acc.y += w * o.y;
      acc.z += w * o.z;
      acc.w += w * o.w;
    }
    partial[warp][c / 4] = acc;
  }
  __syncthreads();
  Element* out = static_cast<Element*>(p.out.ptr) + seq.q_offset(p.out, b) + h * p.out.head_stride +
                 int64_t(row) * p.out.row_stride;
  for (int c = tid * 4; c < p.head_dim; c += 4 * kCombineThreads) {
    float4 acc = partial[0][c / 4];
    for (int w = 1; w < kCombineWarps; ++w) {
      const float4 o = partial[w][c / 4];
      acc.x += o.x;
      acc.y += o.y;
      acc.z += o.z;
      acc.w += o.w;
    }
    *reinterpret_cast<uint2*>(out + c) =
        make_uint2(pack_pair<Element>(acc.x, acc.y, p.rtz), pack_pair<Element>(acc.z, acc.w, p.rtz));
  }
}

// The split blocks (the full kernel: decoding calls carry cache addressing, softcap, ALiBi as
// often as not, and the step is bound by reading K and V), then the combine.
template <int HeadDim, class Element>
cudaError_t launch_fwd_split(AttnParams const& p, cudaStream_t stream) {
  using T = SplitTraitsFor<HeadDim, Element>;
  const dim3 grid(ceil_div(p.seqlen_q, T::kBlockM), p.nheads, p.batch * p.num_splits);
  const cudaError_t err = launch_with_smem<&fwd_kernel<T, true, true>>(grid, T::kThreads, T::kSmemBytes, p, stream);
  if (err != cudaSuccess) { return err; }
  cudaLaunchAttribute early{};
  early.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t combine{};
  combine.gridDim = dim3(p.seqlen_q, p.nheads, p.batch);
  combine.blockDim = dim3(kCombineThreads);
  combine.stream = stream;
  combine.attrs = &early;
  combine.numAttrs = p.dependent_launch ? 1 : 0;
  return cudaLaunchKernelEx(&combine, fwd_combine_kernel<Element, HeadDim>, p);
}

}  // namespace fa::sm80
