// Planning: the checks only this backend can make (ck_tile's int32 strides, its feature limits),
// the split-KV decision and the workspace layout. Python has validated shapes and dtypes.
#include "plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "../kernels/tile_table.hpp"

namespace fa_rocm {
namespace {

constexpr size_t kWorkspaceAlign = 256;
// ck_tile's ALiBi on the one-pass forward and the backward takes |i - j| with a 16-bit SAD.
constexpr int64_t kAlibiMaxSeqlen = 1 << 16;
// The grid's y and z dimensions carry heads (times splits) and batch.
constexpr int64_t kMaxGridYZ = 65535;

using NamedTensor = std::pair<const char*, const fa_tensor*>;

Status fail(fa_status code, std::string message) { return Status{code, std::move(message)}; }

bool fits_i32(int64_t v) {
  return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max();
}

// Hands out aligned byte ranges of the caller's workspace; with base == nullptr it only counts.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <class T>
  T* take(size_t count) {
    size_t offset = used_;
    used_ = (used_ + count * sizeof(T) + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    return base_ ? reinterpret_cast<T*>(base_ + offset) : nullptr;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

Status check_tensor(const char* name, const fa_tensor& t) {
  if (!fits_i32(t.batch_stride) || !fits_i32(t.row_stride) || !fits_i32(t.head_stride)) {
    return fail(FA_ERR_UNSUPPORTED, std::string(name) +
                                        ": a stride exceeds 2^31 elements; ck_tile addresses "
                                        "tensors with 32-bit strides");
  }
  return {};
}

Status to_i32(int64_t v, const char* what, int32_t* out) {
  if (!fits_i32(v)) {
    return fail(FA_ERR_UNSUPPORTED, std::string(what) + " needs more than 2^31 elements; "
                                                        "ck_tile addresses it with 32-bit strides");
  }
  *out = static_cast<int32_t>(v);
  return {};
}

// Checks shared by both directions; sets the bucket and whether padded instances are needed.
Status check_problem(const fa_problem& p, int* bucket) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  *bucket = head_dim_bucket(p.head_dim);
  if (*bucket == 0 || p.head_dim % kHeadDimMultiple != 0) {
    return fail(FA_ERR_UNSUPPORTED, "head_dim " + std::to_string(p.head_dim) +
                                        ": the ROCm backend needs a multiple of 8 up to 256");
  }
  if (p.dtype != FA_DTYPE_FP16 && p.dtype != FA_DTYPE_BF16) {
    return fail(FA_ERR_INVALID_ARGUMENT, "dtype is neither fp16 nor bf16");
  }
  if ((p.flags & FA_FLAG_RTZ) && p.dtype == FA_DTYPE_FP16) {
    return fail(FA_ERR_UNSUPPORTED,
                "RTZ with fp16: ck_tile converts to fp16 in hardware, round-to-nearest only");
  }
  if (p.softcap != 0.0f) {
    return fail(FA_ERR_UNSUPPORTED, "softcap: not in ck_tile's FMHA at the pinned commit");
  }
  if (p.leftpad_k != nullptr) {
    return fail(FA_ERR_UNSUPPORTED, "leftpad_k: not in ck_tile's FMHA at the pinned commit");
  }
  if (varlen != (p.cu_seqlens_k != nullptr)) {
    return fail(FA_ERR_INVALID_ARGUMENT, "varlen needs both cu_seqlens_q and cu_seqlens_k");
  }
  if (varlen && p.total_q <= 0) {
    return fail(FA_ERR_INVALID_ARGUMENT, "varlen needs problem.total_q (ABI v2)");
  }
  if (p.nheads_k <= 0 || p.nheads % p.nheads_k != 0) {
    return fail(FA_ERR_INVALID_ARGUMENT, "nheads must be a multiple of nheads_k");
  }
  if (p.alibi_slopes && std::max(p.seqlen_q, p.seqlen_k) > kAlibiMaxSeqlen) {
    return fail(FA_ERR_UNSUPPORTED, "ALiBi beyond 65536 positions: ck_tile measures distances "
                                    "with a 16-bit SAD");
  }
  if (p.batch > kMaxGridYZ || p.nheads > kMaxGridYZ) {
    return fail(FA_ERR_UNSUPPORTED, "batch or nheads above 65535 (grid y/z limit)");
  }
  if (!fits_i32(p.alibi_batch_stride)) {
    return fail(FA_ERR_UNSUPPORTED, "alibi_batch_stride exceeds 2^31");
  }
  return {};
}

// LSE (and the backward's D, which ck_tile addresses with the same strides).
Strides lse_strides(const fa_problem& p) {
  Strides s;
  if (p.cu_seqlens_q) {
    s.head = p.total_q;
  } else {
    s.head = p.seqlen_q;
    s.batch = p.nheads * p.seqlen_q;
  }
  return s;
}

// Splits that balance batch * heads * query tiles over the CUs. A split count is worth trying
// only where it changes the number of key tiles per split; among those, the fewest splits that
// reach 85% of the best wave efficiency win, since every split costs an O_acc round trip.
int choose_num_splits(const fa_problem& p, int num_cus, const FwdTile& tile) {
  const int64_t blocks = int64_t(p.batch) * p.nheads * ((p.seqlen_q + tile.m0 - 1) / tile.m0);
  const int key_tiles = (p.seqlen_k + tile.n0 - 1) / tile.n0;
  if (num_cus <= 0 || blocks >= num_cus || key_tiles < 2) return 1;
  const int max_splits = std::min({kMaxSplits, key_tiles, int(kMaxGridYZ / p.nheads)});
  auto efficiency = [&](int s) {
    const double waves = double(blocks * s) / num_cus;
    return waves / std::ceil(waves);
  };
  auto eligible = [&](int s) {
    return s == 1 || (key_tiles + s - 1) / s != (key_tiles + s - 2) / (s - 1);
  };
  double best = 0.0;
  for (int s = 1; s <= max_splits; ++s) {
    if (eligible(s)) best = std::max(best, efficiency(s));
  }
  for (int s = 1; s <= max_splits; ++s) {
    if (eligible(s) && efficiency(s) >= 0.85 * best) return s;
  }
  return 1;
}

}  // namespace

Status plan_fwd(const fa_fwd_params& params, void* workspace, int num_cus, FwdPlan* plan) {
  const fa_problem& p = params.problem;
  Status st = check_problem(p, &plan->bucket);
  const NamedTensor tensors[] = {{"q", &params.q}, {"k", &params.k}, {"v", &params.v},
                                 {"out", &params.out}};
  for (const auto& [name, t] : tensors) {
    if (st.ok()) st = check_tensor(name, *t);
  }
  if (!st.ok()) return st;

  const bool varlen = p.cu_seqlens_q != nullptr;
  const bool paged = p.block_table != nullptr;
  const bool dropout = p.dropout_p > 0.0f;
  // Only ck_tile's batch-mode split-KV kernel reads pages, a cache row index or per-sequence
  // key counts without cu_seqlens; group mode reads seqused_k in the one-pass kernel.
  const bool needs_split_kernel = paged || p.kv_batch_idx || (p.seqused_k && !varlen);
  if (needs_split_kernel && (varlen || dropout)) {
    return fail(FA_ERR_UNSUPPORTED, "paged KV / kv_batch_idx / seqused_k without varlen use "
                                    "ck_tile's batch-mode split-KV kernel, which has neither "
                                    "varlen nor dropout");
  }
  if (paged && p.page_block_size % kPageBlockMultiple != 0) {
    return fail(FA_ERR_UNSUPPORTED, "page_block_size " + std::to_string(p.page_block_size) +
                                        " is not a multiple of 128");
  }
  if (paged && !fits_i32(p.block_table_batch_stride)) {
    return fail(FA_ERR_UNSUPPORTED, "block_table_batch_stride exceeds 2^31");
  }
  const FwdTile& stile = split_tile(plan->bucket);
  // num_splits is a speed hint: varlen and dropout calls run the one-pass kernel regardless.
  int splits = 1;
  if (!varlen && !dropout) {
    splits = params.num_splits > 0 ? std::min(params.num_splits, kMaxSplits)
                                   : choose_num_splits(p, num_cus, stile);
  }
  plan->num_splits = splits;
  plan->use_split = needs_split_kernel || splits > 1;
  if (plan->use_split && int64_t(p.nheads) * splits > kMaxGridYZ) {
    return fail(FA_ERR_UNSUPPORTED, "nheads * num_splits above 65535 (grid y limit)");
  }
  plan->pad_head_dim = p.head_dim != plan->bucket &&
                       !(!plan->use_split && pads_head_dim_natively(fwd_tile(plan->bucket).pipeline));

  WorkspaceCarver carver(workspace);
  plan->lse_strides = lse_strides(p);
  const int64_t lse_count = varlen ? int64_t(p.nheads) * p.total_q
                                   : int64_t(p.batch) * p.nheads * p.seqlen_q;
  plan->lse = params.lse ? params.lse : carver.take<float>(lse_count);
  if (plan->use_split) {
    const int64_t rows = int64_t(p.batch) * p.nheads * p.seqlen_q;  // per split
    Strides& ls = plan->lse_acc_strides;
    ls.head = p.seqlen_q;
    ls.batch = p.nheads * p.seqlen_q;
    Strides& os = plan->o_acc_strides;
    os.row = p.head_dim;
    if (!(st = to_i32(rows, "split LSE_acc", &ls.split)).ok()) return st;
    if (!(st = to_i32(int64_t(p.seqlen_q) * p.head_dim, "split O_acc head", &os.head)).ok()) return st;
    if (!(st = to_i32(int64_t(p.nheads) * os.head, "split O_acc batch", &os.batch)).ok()) return st;
    if (!(st = to_i32(rows * p.head_dim, "split O_acc", &os.split)).ok()) return st;
    plan->lse_acc = carver.take<float>(size_t(rows) * splits);
    plan->o_acc = carver.take<float>(size_t(rows) * p.head_dim * splits);
  }
  plan->workspace_bytes = carver.used();
  return {};
}

Status plan_bwd(const fa_bwd_params& params, void* workspace, BwdPlan* plan) {
  const fa_problem& p = params.problem;
  Status st = check_problem(p, &plan->bucket);
  const NamedTensor tensors[] = {{"q", &params.q},     {"k", &params.k},   {"v", &params.v},
                                 {"out", &params.out}, {"dout", &params.dout}, {"dq", &params.dq},
                                 {"dk", &params.dk},   {"dv", &params.dv}};
  for (const auto& [name, t] : tensors) {
    if (st.ok()) st = check_tensor(name, *t);
  }
  if (!st.ok()) return st;
  if (p.block_table || p.kv_batch_idx) {
    return fail(FA_ERR_UNSUPPORTED, "no backward through a paged or indexed KV cache");
  }
  if (p.seqused_k && !p.cu_seqlens_q) {
    return fail(FA_ERR_UNSUPPORTED, "seqused_k in the backward needs varlen (group mode)");
  }
  const bool varlen = p.cu_seqlens_q != nullptr;
  const BwdTile& tile = bwd_tile(plan->bucket);
  plan->pad_head_dim = p.head_dim != plan->bucket;
  plan->lse_strides = lse_strides(p);

  WorkspaceCarver carver(workspace);
  const int64_t q_rows = varlen ? p.total_q : int64_t(p.batch) * p.seqlen_q;
  plan->d = carver.take<float>(size_t(q_rows) * p.nheads);

  // Deterministic: one dQ partial per key tile (a block's keys), summed in tile order later.
  const int splits = (p.flags & FA_FLAG_DETERMINISTIC) ? (p.seqlen_k + tile.n0 - 1) / tile.n0 : 1;
  Strides& qs = plan->dq_acc_strides;
  qs.row = p.head_dim;
  const int64_t head = (varlen ? int64_t(p.total_q) : int64_t(p.seqlen_q)) * p.head_dim;
  if (!(st = to_i32(head, "dQ accumulator head", &qs.head)).ok()) return st;
  if (!(st = to_i32(varlen ? 0 : int64_t(p.nheads) * head, "dQ accumulator batch", &qs.batch)).ok()) return st;
  if (!(st = to_i32(q_rows * p.nheads * p.head_dim, "dQ accumulator", &qs.split)).ok()) return st;
  plan->dq_acc_bytes = size_t(q_rows) * p.nheads * p.head_dim * splits * sizeof(float);
  plan->dq_acc = carver.take<float>(plan->dq_acc_bytes / sizeof(float));

  // ck_tile writes dK/dV per query head; MQA/GQA sum groups of them afterwards.
  plan->expand_kv_heads = p.nheads != p.nheads_k;
  plan->dk_out = params.dk;
  plan->dv_out = params.dv;
  if (plan->expand_kv_heads) {
    // Varlen keys start at cu_seqlens_k[b] <= batch * seqlen_k rows; sized for that bound.
    const int64_t k_rows = int64_t(p.batch) * p.seqlen_k;
    const size_t count = size_t(k_rows) * p.nheads * p.head_dim;
    fa_tensor e{};
    e.row_stride = int64_t(p.nheads) * p.head_dim;
    e.head_stride = p.head_dim;
    e.batch_stride = varlen ? 0 : int64_t(p.seqlen_k) * e.row_stride;
    if (!(st = check_tensor("expanded dK/dV", e)).ok()) return st;
    plan->dk_out = e;
    plan->dv_out = e;
    plan->dk_out.ptr = carver.take<uint16_t>(count);
    plan->dv_out.ptr = carver.take<uint16_t>(count);
  }
  plan->workspace_bytes = carver.used();
  return {};
}

}  // namespace fa_rocm
