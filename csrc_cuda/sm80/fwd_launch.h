// Host side of the forward: picks the tile of the requested architecture row and launches, or
// the split-KV kernels when the glue chose them (num_splits >= 1).
#pragma once

#include <cuda_runtime.h>

#include "../common/launch.h"
#include "../common/schedule.h"
#include "fwd_kernel.h"
#include "fwd_split.h"

namespace fa::sm80 {

template <ArchRow Row, int HeadDim, class Element, bool kAllFeatures>
using FwdTraitsFor = FwdTraits<HeadDim, fwd_tile(Row, HeadDim).block_m, fwd_tile(Row, HeadDim).block_n,
                               kAllFeatures ? fwd_tile(Row, HeadDim).warps_full : fwd_tile(Row, HeadDim).warps,
                               fwd_tile(Row, HeadDim).kv_stages, Element>;

template <class T, bool kAllFeatures>
cudaError_t launch_fwd(AttnParams const& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.seqlen_q, T::kBlockM), p.nheads, p.batch);
  return launch_in_waves<&fwd_kernel<T, kAllFeatures>>(grid, T::kThreads, T::kSmemBytes, p, stream);
}

// The plain kernel unless the call needs a feature only the full one has.
template <ArchRow Row, int HeadDim, class Element>
cudaError_t launch_fwd(AttnParams const& p, cudaStream_t stream) {
  return Features::any(p) ? launch_fwd<FwdTraitsFor<Row, HeadDim, Element, true>, true>(p, stream)
                          : launch_fwd<FwdTraitsFor<Row, HeadDim, Element, false>, false>(p, stream);
}

template <int HeadDim, class Element>
cudaError_t run_fwd(AttnParams const& p, ArchRow row, cudaStream_t stream) {
  if (p.num_splits > 0) { return launch_fwd_split<HeadDim, Element>(p, stream); }
  switch (row) {
    case ArchRow::kSm80: return launch_fwd<ArchRow::kSm80, HeadDim, Element>(p, stream);
    case ArchRow::kSm86: return launch_fwd<ArchRow::kSm86, HeadDim, Element>(p, stream);
    case ArchRow::kSm90: return launch_fwd<ArchRow::kSm90, HeadDim, Element>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fa::sm80
