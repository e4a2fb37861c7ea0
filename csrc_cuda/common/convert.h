// fp32 -> fp16/bf16 with the rounding chosen at run time (FA_FLAG_RTZ), one value or a pair.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/numeric/numeric_types.hpp>

namespace fa {

template <class Element>
struct Half2;  // the 32-bit pair type of a 16-bit element
template <>
struct Half2<cute::half_t> {
  using type = __half2;
};
template <>
struct Half2<cute::bfloat16_t> {
  using type = __nv_bfloat162;
};

__device__ __forceinline__ __half2 pack_pair(float a, float b, bool rtz, __half2*) {
  return rtz ? __halves2half2(__float2half_rz(a), __float2half_rz(b)) : __floats2half2_rn(a, b);
}
__device__ __forceinline__ __nv_bfloat162 pack_pair(float a, float b, bool rtz, __nv_bfloat162*) {
  return rtz ? __halves2bfloat162(__float2bfloat16_rz(a), __float2bfloat16_rz(b))
             : __floats2bfloat162_rn(a, b);
}

// The 32 bits of (a, b) converted to Element; a at the lower address.
template <class Element>
__device__ __forceinline__ uint32_t pack_pair(float a, float b, bool rtz) {
  using H2 = typename Half2<Element>::type;
  const H2 h = pack_pair(a, b, rtz, static_cast<H2*>(nullptr));
  return *reinterpret_cast<uint32_t const*>(&h);
}

// Converts an fp32 fragment into a 16-bit fragment of the same layout, pairwise.
template <class Element, class TensorF, class TensorH>
__device__ __forceinline__ void convert_fragment(TensorF const& src, TensorH& dst, bool rtz) {
  static_assert(decltype(cute::size(src))::value % 2 == 0);
  auto dst32 = cute::recast<uint32_t>(dst);
#pragma unroll
  for (int i = 0; i < cute::size(dst32); ++i) {
    dst32(i) = pack_pair<Element>(src(2 * i), src(2 * i + 1), rtz);
  }
}

}  // namespace fa
