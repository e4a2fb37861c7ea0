// Host helpers shared by the kernel launchers.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace fa {

// Opts a kernel into more than 48 KB of dynamic shared memory, once per device: the attribute
// is per device, and setting it on every call would add a driver call to each launch. The kernel
// is a template argument so that each kernel has its own flag (every kernel has the same
// function type, so a flag keyed by type would be shared, and later kernels would launch
// without the attribute).
template <auto Kernel>
cudaError_t allow_smem(int bytes) {
  static std::atomic<uint64_t> done{0};  // bit d: set on device d
  if (bytes <= 48 * 1024) { return cudaSuccess; }
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) { return err; }
  const uint64_t bit = device < 64 ? (uint64_t(1) << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit)) { return cudaSuccess; }
  err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) { done.fetch_or(bit, std::memory_order_relaxed); }
  return err;
}

}  // namespace fa
