// How one call is carried out: which instance kind, how many KV splits, and where every
// intermediate lives in the caller's workspace. Planning is pure host arithmetic on the params
// (and the device's CU count), so fa_*_workspace_size and fa_* always agree. No ck_tile here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "flash_attn_abi.h"

namespace fa_rocm {

struct Status {
  fa_status code = FA_OK;
  std::string message;
  bool ok() const { return code == FA_OK; }
};

// Row/head/batch/split strides in elements of a buffer ck_tile addresses with int32 strides.
struct Strides {
  int32_t row = 0;
  int32_t head = 0;
  int32_t batch = 0;
  int32_t split = 0;
};

struct FwdPlan {
  int bucket = 0;         // head-dim bucket of the instances used
  bool pad_head_dim = false;
  bool use_split = false; // split-KV partial pass + combine instead of the one-pass kernel
  int num_splits = 1;
  float* lse = nullptr;   // params->lse, or the workspace when the caller passed none
  Strides lse_strides;    // (batch, nheads, seqlen_q) or (nheads, total_q)
  float* lse_acc = nullptr;  // (splits, batch, nheads, seqlen_q)
  Strides lse_acc_strides;
  float* o_acc = nullptr;    // (splits, batch, nheads, seqlen_q, head_dim)
  Strides o_acc_strides;
  size_t workspace_bytes = 0;
};

struct BwdPlan {
  int bucket = 0;
  bool pad_head_dim = false;
  float* d = nullptr;        // rowsum(dO * O), laid out exactly like lse (ck_tile shares strides)
  Strides lse_strides;
  float* dq_acc = nullptr;   // fp32 dQ: (splits, batch, nheads, seqlen_q, d) or
                             // (splits, nheads, total_q, d); splits = 1 unless deterministic
  Strides dq_acc_strides;
  size_t dq_acc_bytes = 0;   // zeroed before the backward runs
  // Where the dQ/dK/dV kernel writes dK/dV: the caller's tensors, or for MQA/GQA a per-q-head
  // expansion in the workspace that reduce_gqa() sums into the caller's tensors afterwards.
  fa_tensor dk_out{};
  fa_tensor dv_out{};
  bool expand_kv_heads = false;
  size_t workspace_bytes = 0;
};

// Fills plan for params with workspace at `workspace` (nullptr while only sizing). num_cus, the
// device's compute units, drives the split-KV choice when params.num_splits is 0.
Status plan_fwd(const fa_fwd_params& params, void* workspace, int num_cus, FwdPlan* plan);
Status plan_bwd(const fa_bwd_params& params, void* workspace, BwdPlan* plan);

}  // namespace fa_rocm
