// Host side of the forward: picks the tile of the requested architecture row and launches.
#pragma once

#include <cuda_runtime.h>

#include "../common/launch.h"
#include "fwd_kernel.h"

namespace fa::sm80 {

template <ArchRow Row, int HeadDim, class Element>
using FwdTraitsFor = FwdTraits<HeadDim, fwd_tile(Row, HeadDim).block_m, fwd_tile(Row, HeadDim).block_n,
                               fwd_tile(Row, HeadDim).warps, Element>;

template <class T>
cudaError_t launch_fwd(AttnParams const& p, cudaStream_t stream) {
  static_assert(T::kSmemBytes == int(fwd_tile(ArchRow::kSm80, T::kHeadDim).smem_bytes()) ||
                T::kSmemBytes == int(fwd_tile(ArchRow::kSm86, T::kHeadDim).smem_bytes()));
  auto kernel = &fwd_kernel<T>;
  cudaError_t err = allow_smem<&fwd_kernel<T>>(T::kSmemBytes);
  if (err != cudaSuccess) { return err; }
  const dim3 grid(ceil_div(p.seqlen_q, T::kBlockM), p.nheads, p.batch);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <int HeadDim, class Element>
cudaError_t run_fwd(AttnParams const& p, ArchRow row, cudaStream_t stream) {
  switch (row) {
    case ArchRow::kSm80: return launch_fwd<FwdTraitsFor<ArchRow::kSm80, HeadDim, Element>>(p, stream);
    case ArchRow::kSm86: return launch_fwd<FwdTraitsFor<ArchRow::kSm86, HeadDim, Element>>(p, stream);
    case ArchRow::kSm90: return launch_fwd<FwdTraitsFor<ArchRow::kSm90, HeadDim, Element>>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fa::sm80
