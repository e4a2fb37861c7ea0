// Hardware approximations where their error is far below the 16-bit data they feed.
#pragma once

namespace fa {

// 2^x by the SFU (ex2.approx, ~2 ulp, flushes denormals): probabilities end up in fp16/bf16.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace fa
