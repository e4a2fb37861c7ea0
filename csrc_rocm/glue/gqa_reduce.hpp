// MQA/GQA backward epilogue: ck_tile writes dK/dV once per query head; the caller wants them
// per KV head. This sums each group of nheads / nheads_k consecutive query heads (ck_tile maps
// query head h to KV head h / group) in a fixed order, so the result stays deterministic.
#pragma once

#include <hip/hip_runtime.h>

#include "flash_attn_abi.h"

namespace fa_rocm {

// expanded: (rows, nheads, head_dim) per batch, as BwdPlan lays it out; out: the caller's
// (rows, nheads_k, head_dim) tensor. Varlen sums the cu_seqlens_k[batch] rows of one packed
// batch; the rounding of the fp32 sum follows FA_FLAG_RTZ like every other output.
hipError_t reduce_gqa(const fa_problem& p, const fa_tensor& expanded, const fa_tensor& out);

}  // namespace fa_rocm
