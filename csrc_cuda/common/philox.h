// Philox4x32-10, the dropout RNG; bit-exact with flash_attn/backends/reference/rng.py.
// Element (bh, i, j) is decided by word (j % 4) of philox((j / 4, i, bh, offset), seed), so the
// backward regenerates the forward's mask from positions alone.
#pragma once

#include <cstdint>

namespace fa {

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint32_t hi0 = __umulhi(kM0, c.x), lo0 = kM0 * c.x;
    const uint32_t hi1 = __umulhi(kM1, c.z), lo1 = kM1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

// Keep bits of the two adjacent columns (col, col + 1), col even, of one row: both lie in the
// same group of four columns, so one Philox call decides both.
__device__ __forceinline__ void dropout_keep_pair(uint32_t seed_lo, uint32_t seed_hi,
                                                  uint32_t offset_lo, uint32_t bh, int row, int col,
                                                  uint32_t threshold, bool& keep0, bool& keep1) {
  const uint4 w = philox4x32_10(make_uint4(uint32_t(col) >> 2, uint32_t(row), bh, offset_lo),
                                seed_lo, seed_hi);
  const bool upper = (col & 2) != 0;
  keep0 = (upper ? w.z : w.x) >= threshold;
  keep1 = (upper ? w.w : w.y) >= threshold;
}

}  // namespace fa
