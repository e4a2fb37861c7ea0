// Host side of the backward: D = rowsum(dO * O) (whose kernel also zeroes the fp32 dQ sum and the
// turn counters), the main kernel, then the dQ conversion and, for grouped KV heads, the dK/dV
// reduction.
#pragma once

#include <cuda_runtime.h>

#include "../common/launch.h"
#include "../common/schedule.h"
#include "bwd_kernel.h"
#include "bwd_rowwise.h"

namespace fa::sm80 {

template <ArchRow Row, int HeadDim, class Element>
using BwdTraitsFor =
    BwdTraits<HeadDim, bwd_tile(Row, HeadDim).block_m, bwd_tile(Row, HeadDim).block_n, bwd_tile(Row, HeadDim).warps,
              bwd_tile(Row, HeadDim).sdp_warps_m, bwd_tile(Row, HeadDim).dkv_warps_n,
              bwd_tile(Row, HeadDim).dq_warps_m, bwd_tile(Row, HeadDim).dq_passes,
              bwd_tile(Row, HeadDim).q_stages, Element>;

template <class T, bool kAllFeatures, bool kTurns>
cudaError_t launch_main(BwdParams const& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.seqlen_k, T::kBlockN), p.nheads, p.batch);
  return launch_in_waves<&bwd_kernel<T, kAllFeatures, kTurns>>(grid, T::kThreads, T::kSmemBytes, p, stream);
}

template <class T>
cudaError_t launch_bwd(BwdParams const& p, cudaStream_t stream) {
  using Element = typename T::Element;
  // An empty side launches nothing (a zero grid is an error): with no queries the keys' gradients
  // are still written (zeros) and nothing reads the dQ sum; with no keys dQ is converted from the
  // sum the dsum kernel zeroed.
  const dim3 q_rows(ceil_div(p.seqlen_q, kRowsPerBlock), p.nheads, p.batch);
  if (p.seqlen_q > 0) { bwd_dsum_kernel<Element><<<q_rows, kRowKernelThreads, 0, stream>>>(p); }

  if (p.seqlen_k > 0) {
    const cudaError_t err = Features::any(p) ? launch_main<T, true, true>(p, stream)
                            : p.deterministic ? launch_main<T, false, true>(p, stream)
                                              : launch_main<T, false, false>(p, stream);
    if (err != cudaSuccess) { return err; }
  }

  if (p.seqlen_q > 0) { bwd_dq_convert_kernel<T><<<dim3(p.m_blocks, p.nheads, p.batch), T::kThreads, 0, stream>>>(p); }
  if (p.group > 1 && p.seqlen_k > 0) {
    const dim3 k_rows(ceil_div(p.seqlen_k, kRowsPerBlock), p.nheads_k, p.batch);
    bwd_dkv_reduce_kernel<Element, T::kHeadDim><<<k_rows, kRowKernelThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <int HeadDim, class Element>
cudaError_t run_bwd(BwdParams const& p, ArchRow row, cudaStream_t stream) {
  switch (row) {
    case ArchRow::kSm80: return launch_bwd<BwdTraitsFor<ArchRow::kSm80, HeadDim, Element>>(p, stream);
    case ArchRow::kSm86: return launch_bwd<BwdTraitsFor<ArchRow::kSm86, HeadDim, Element>>(p, stream);
    case ArchRow::kSm90: return launch_bwd<BwdTraitsFor<ArchRow::kSm90, HeadDim, Element>>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fa::sm80
