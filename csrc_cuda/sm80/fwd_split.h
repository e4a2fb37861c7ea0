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

constexpr int kCombineWarps = 4;  // one query row per warp

// Split s's lse of row `at`; a split that saw no key (lse +inf, sm80 finalize) weighs nothing.
__device__ __forceinline__ float split_lse(AttnParams const& p, int s, int64_t at) {
  const float l = p.lse_accum[s * p.lse_rows + at];
  return l == INFINITY ? -INFINITY : l;
}

// grid (ceil(seqlen_q / kCombineWarps), nheads, batch). Lanes share the splits for the row's lse,
// then each lane owns 4 neighbouring columns (of every 128) and sums them over the splits in
// split order, so the result does not depend on timing.
template <class Element, int kHeadDim>
__global__ void __launch_bounds__(32 * kCombineWarps) fwd_combine_kernel(__grid_constant__ const AttnParams p) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kCombineWarps + threadIdx.x / 32, h = blockIdx.y, b = blockIdx.z;
  const SeqInfo seq(p, b);
  if (row >= seq.seqlen_q) { return; }
  const int64_t at = SeqInfo::accum_offset(p, b, h) + row;
  float m = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) { m = fmaxf(m, split_lse(p, s, at)); }
  for (int o = 16; o > 0; o /= 2) { m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o)); }
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int s = lane; s < p.num_splits; s += 32) { sum += expf(split_lse(p, s, at) - m); }
  }
  for (int o = 16; o > 0; o /= 2) { sum += __shfl_xor_sync(0xffffffffu, sum, o); }
  const bool empty = m == -INFINITY;  // no key visible from this row: out 0, lse +inf as unsplit
  const float lse = empty ? INFINITY : m + logf(sum);
  if (lane == 0) { p.lse[seq.lse_offset(p, b, h, p.total_q) + row * p.lse_row_stride] = lse; }

  Element* out = static_cast<Element*>(p.out.ptr) + seq.q_offset(p.out, b) + h * p.out.head_stride +
                 int64_t(row) * p.out.row_stride;
  for (int c = lane * 4; c < p.head_dim; c += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (!empty) {
      for (int s = 0; s < p.num_splits; ++s) {
        const float w = expf(split_lse(p, s, at) - lse);
        const float4 o = *reinterpret_cast<const float4*>(p.o_accum + (s * p.lse_rows + at) * kHeadDim + c);
        acc.x += w * o.x;
        acc.y += w * o.y;
        acc.z += w * o.z;
        acc.w += w * o.w;
      }
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
  const dim3 rows(ceil_div(p.seqlen_q, kCombineWarps), p.nheads, p.batch);
  fwd_combine_kernel<Element, HeadDim><<<rows, 32 * kCombineWarps, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace fa::sm80
