// Division by a number fixed per call but known only at run time (a paged cache's page size), as
// a multiply-high, an add and a shift. An integer division costs about 20 instructions on the GPU,
// and the paged loads divide every row's key index by the page size at every key block.
#pragma once

#include <cstdint>

namespace fa {

struct FastDiv {
  int divisor;
  uint32_t mul;
  int shift;

  // For 1 <= d < 2^31: shift = ceil(log2 d), mul = floor(2^32 (2^shift - d) / d) + 1, the
  // round-up method, exact for every 0 <= n < 2^31. 0 (no divisor) gives a FastDiv never used.
  static FastDiv of(int d) {
    if (d <= 0) { return {d, 0u, 0}; }
    int s = 0;
    while ((int64_t(1) << s) < d) { ++s; }
    const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - uint64_t(d))) / uint64_t(d) + 1;
    return {d, uint32_t(m), s};
  }

  // n / divisor for 0 <= n < 2^31 (mulhi(n, mul) < n, so the sum stays below 2^32)
  __device__ __forceinline__ int div(int n) const {
    return int((__umulhi(uint32_t(n), mul) + uint32_t(n)) >> shift);
  }
};

}  // namespace fa
