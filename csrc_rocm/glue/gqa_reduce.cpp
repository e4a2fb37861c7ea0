// The group-sum kernel behind reduce_gqa (gqa_reduce.hpp). Plain HIP, no ck_tile: it moves
// 16-bit values and needs only the two conversions below.
#include "gqa_reduce.hpp"

#include <hip/hip_fp16.h>

#include <cstdint>

namespace fa_rocm {
namespace {

constexpr int kBlock = 256;

enum class Out { Fp16, Bf16Rne, Bf16Rtz };

template <Out O>
__device__ float load(uint16_t bits) {
  if constexpr (O == Out::Fp16) {
    return __half2float(__ushort_as_half(bits));
  } else {
    return __uint_as_float(uint32_t(bits) << 16);
  }
}

template <Out O>
__device__ uint16_t store(float x) {
  const uint32_t u = __float_as_uint(x);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  if constexpr (O == Out::Fp16) {
    return __half_as_ushort(__float2half(x));
  } else if constexpr (O == Out::Bf16Rne) {
    return nan ? uint16_t((u >> 16) | 0x40) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  } else {
    return nan ? uint16_t((u >> 16) | 0x40) : uint16_t(u >> 16);
  }
}

struct Layout {
  int64_t row, head, batch;  // element strides
};

// grid: (ceil(rows * heads_k * head_dim / kBlock), batch); one output element per thread.
template <Out O>
__global__ __launch_bounds__(kBlock) void sum_head_groups(const uint16_t* expanded, Layout in,
                                                          uint16_t* out, Layout to, int rows,
                                                          const int32_t* rows_on_device,
                                                          int heads_k, int group, int head_dim) {
  const int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  const int64_t per_row = int64_t(heads_k) * head_dim;
  const int64_t row = i / per_row;
  const int hk = int((i % per_row) / head_dim);
  const int d = int(i % head_dim);
  const int limit = rows_on_device ? *rows_on_device : rows;
  if (row >= limit) return;
  const uint16_t* src = expanded + blockIdx.y * in.batch + row * in.row + d;
  float sum = 0.f;
  for (int g = 0; g < group; ++g) {
    sum += load<O>(src[int64_t(hk * group + g) * in.head]);
  }
  out[blockIdx.y * to.batch + row * to.row + hk * to.head + d] = store<O>(sum);
}

template <Out O>
hipError_t launch(const fa_problem& p, const fa_tensor& e, const fa_tensor& o) {
  const bool varlen = p.cu_seqlens_k != nullptr;
  const int batches = varlen ? 1 : p.batch;
  const int rows = varlen ? p.batch * p.seqlen_k : p.seqlen_k;
  const int64_t elements = int64_t(rows) * p.nheads_k * p.head_dim;
  const dim3 grid(unsigned((elements + kBlock - 1) / kBlock), unsigned(batches));
  hipLaunchKernelGGL(sum_head_groups<O>, grid, dim3(kBlock), 0,
                     static_cast<hipStream_t>(p.stream),
                     static_cast<const uint16_t*>(e.ptr), Layout{e.row_stride, e.head_stride, e.batch_stride},
                     static_cast<uint16_t*>(const_cast<void*>(o.ptr)),
                     Layout{o.row_stride, o.head_stride, varlen ? 0 : o.batch_stride}, rows,
                     varlen ? p.cu_seqlens_k + p.batch : nullptr, p.nheads_k,
                     p.nheads / p.nheads_k, p.head_dim);
  return hipGetLastError();
}

}  // namespace

hipError_t reduce_gqa(const fa_problem& p, const fa_tensor& expanded, const fa_tensor& out) {
  if (p.dtype == FA_DTYPE_FP16) return launch<Out::Fp16>(p, expanded, out);
  if (p.flags & FA_FLAG_RTZ) return launch<Out::Bf16Rtz>(p, expanded, out);
  return launch<Out::Bf16Rne>(p, expanded, out);
}

}  // namespace fa_rocm
