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

// Blocks of Kernel the device holds at once (SMs x blocks per SM), queried once per device; 0
// when the query fails (the caller then keeps its default order).
template <auto Kernel>
int resident_blocks(int threads, int smem_bytes) {
  static std::atomic<int> cache[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device >= 64) { return 0; }
  int blocks = cache[device].load(std::memory_order_relaxed);
  if (blocks > 0) { return blocks; }
  int per_sm = 0, sms = 0;
  if (allow_smem<Kernel>(smem_bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, threads, smem_bytes) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // not sticky; cleared so that the launch reports its own
    return 0;
  }
  blocks = per_sm * sms;
  cache[device].store(blocks, std::memory_order_relaxed);
  return blocks;
}

// Launches a main kernel with its dynamic shared memory (opted into first where it needs more
// than 48 KB); the launch's own error, if any, is returned.
template <auto Kernel, class Params>
cudaError_t launch_with_smem(dim3 grid, int threads, int smem_bytes, Params const& p, cudaStream_t stream) {
  cudaError_t err = allow_smem<Kernel>(smem_bytes);
  if (err != cudaSuccess) { return err; }
  Kernel<<<grid, threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

// Programmatic dependent launch (sm90 and newer; no-ops below): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start once every block of the kernel
// before it has called allow_dependent_launch() or exited, and must call grid_dependency_wait()
// before it reads what that kernel wrote (it returns when that kernel has finished and its
// writes are visible).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace fa
